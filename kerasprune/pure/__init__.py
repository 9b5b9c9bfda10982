"""Backend-free code shared by the Keras 2 modules and :mod:`kerasprune.keras3`.

Everything here is NumPy (and the standard library): importing it loads neither TensorFlow nor any
Keras, so the Keras 3 side can use it without switching the process to ``tf_keras`` (which
:mod:`kerasprune._keras` does). The Keras 2 modules re-export these names from their old places.

Modules: ``schedule`` (LOBSTER's plateau rule and threshold search), ``points`` (the
``operating_points.csv`` table and its rows), ``callback`` (LobsterPruning's bookkeeping, as a mixin
with a few hooks per Keras version), ``optimizer`` (what the two Lobster optimizers share besides the
update), ``sparsity`` (parameter and neuron counts on kernel arrays, graph walks given a consumers
function), ``psp`` (PSP capture plan, statistics to norms and entropies), ``eigen`` (eigen-solvers
and trace estimate on a matrix-free operator), ``inits`` (the names of the initial-weight draws
and what older run folders used).
"""
