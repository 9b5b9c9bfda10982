"""Analysis of the minima pruning reaches (paper Sec. 4-5): Hessian spectrum, PSP norms and
PSP-entropies, and 2D maps of the plane through two solutions. Works on any ReLU Keras model.

See docs/analysis.md for the definitions and the ``kerasprune analyze`` command.
"""
from kerasprune.analysis.callbacks import PSPMonitor
from kerasprune.analysis.hessian import (EigenConvergenceWarning, EigenResult, Hessian, arpack,
                                         hessian_parameters, hutchinson_trace, hvp, lanczos, power_iteration,
                                         top_eigenvalues)
from kerasprune.analysis.psp import (PSP_CONVENTIONS, REFERENCE_CLAMP, PSPStats, binary_entropy,
                                     neuron_class_entropy, psp_entropy_first_order, psp_entropy_second_order,
                                     psp_l2, psp_layer_names, psp_model, psp_statistics, relu_layers)

__all__ = [
    "PSPMonitor",
    "EigenConvergenceWarning", "EigenResult", "Hessian", "arpack", "hessian_parameters", "hutchinson_trace",
    "hvp", "lanczos", "power_iteration", "top_eigenvalues", "PSP_CONVENTIONS", "REFERENCE_CLAMP", "PSPStats",
    "binary_entropy", "neuron_class_entropy", "psp_entropy_first_order",
    "psp_entropy_second_order", "psp_l2", "psp_layer_names", "psp_model", "psp_statistics", "relu_layers",
]
