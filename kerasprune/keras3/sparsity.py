"""Sparsity accounting of Keras 3 models: the counts of :mod:`kerasprune.sparsity`, same rules.

Prunable parameters are the kernels and biases of Dense/Conv layers and the gamma/beta of
BatchNormalization layers; a parameter is pruned when it is exactly zero. A neuron (hidden Dense
unit or Conv channel) is pruned when all its incoming weights are zero or all its outgoing weights
are zero or lead only to pruned neurons (ours, ``pruned_neurons_pct``); the authors' count
(``pruned_neurons_ref_pct``) is every Dense/Conv unit, logits included, with all incoming weights
zero. See :mod:`kerasprune.sparsity` for the reasons. Reads the Keras 3 graph, so a layer shared
between several models is followed through all of its calls.
"""
import keras

from kerasprune.pure import sparsity as pure
from kerasprune.pure.sparsity import DEFAULT_KINDS, SparsityReport, check_kinds  # noqa: F401  (their old home)

DENSE_CONV = pure.layer_classes(keras.layers, pure.DENSE_CONV_LAYERS)
NORMS = pure.layer_classes(keras.layers, pure.NORM_LAYERS)
# Layers (and the ``keras.ops.relu`` operation) that keep a channel a channel.
PASSTHROUGH = pure.layer_classes(keras.layers, pure.PASSTHROUGH_LAYERS)


def all_layers(model):
    """Every leaf layer of ``model``, descending into nested models."""
    return pure.leaf_layers(model, keras.Model)


def prunable_variables(model, kinds=DEFAULT_KINDS):
    """``[(layer_name, variable)]`` of the parameters that pruning acts on and sparsity counts."""
    return pure.parameters_of([(l.name, l) for l in all_layers(model)], kinds, DENSE_CONV, NORMS)


def weight_variables(model):
    """The tensors PyTorch calls "weight" (Dense/Conv kernels, BatchNorm gammas): the reference
    threshold search takes its start statistics over these."""
    return pure.weights_of(all_layers(model), DENSE_CONV, NORMS)


def report(model, kinds=DEFAULT_KINDS):
    """The :class:`SparsityReport` of ``model``'s current weights (each variable read once)."""
    read = pure.read_once(keras.ops.convert_to_numpy)
    kernels = {l.name: read(l.kernel) for l in all_layers(model) if isinstance(l, DENSE_CONV)}
    parameters = [(name, read(var)) for name, var in prunable_variables(model, kinds)]
    return pure.sparsity_report(parameters, kernels, pruned_neurons(model, kernels))


def pruned_neurons(model, kernels=None):
    """``{layer_name: bool array over output units}`` for every hidden Dense/Conv layer."""
    layers = [l for l in all_layers(model) if isinstance(l, DENSE_CONV)]
    kernels = kernels or {l.name: keras.ops.convert_to_numpy(l.kernel) for l in layers}
    hidden, successor = pure.hidden_dense_conv(layers, _consumers, lambda op: isinstance(op, DENSE_CONV),
                                               _is_passthrough, key=id)
    return pure.dead_neurons(hidden, successor, kernels)


def _consumers(op):
    return [node.operation for node in op._outbound_nodes]


def _is_passthrough(op):
    return isinstance(op, PASSTHROUGH) or type(op).__name__ == "Relu"
