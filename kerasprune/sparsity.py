"""Sparsity accounting shared by the whole project: % pruned parameters and % pruned neurons.

Which parameters count (and which LOBSTER regularises by default): kernels and biases of Dense and
Conv layers and the gamma/beta of BatchNormalization layers. A parameter is pruned when its value is
exactly zero (LOBSTER's masks and TF-MOT's wrappers both write zeros into the variable).

A *neuron* is an output unit of a hidden Dense layer or an output channel (filter) of a hidden Conv
layer; the logits layer has none. A neuron is pruned when it cannot carry information to the output:
  - all its incoming weights are zero (its output is the constant ReLU(bias), foldable into the next
    layer's bias), or
  - all its outgoing weights are zero, or lead only to neurons that are pruned this way.
Outgoing connections are followed through ReLU, pooling, dropout and flatten layers; a neuron whose
output reaches a merge (Add, Concatenate) or a normalisation layer is judged on incoming weights only,
since zero outgoing weights on one path do not silence it there.

The authors' code (EIDOSlab/LOBSTER ``evaluation/architecture_stat.py``) counts differently: a unit
of *every* Dense/Conv layer, the logits layer included, is pruned when all its incoming weights are
zero (bias ignored). :class:`SparsityReport` carries both, ours as ``pruned_neurons_pct`` and theirs
as ``pruned_neurons_ref_pct``; the paper's neuron percentages are theirs.
"""
from kerasprune._keras import keras
from kerasprune.pure import sparsity as pure
from kerasprune.pure.sparsity import DEFAULT_KINDS, SparsityReport  # noqa: F401  (their old home)

DENSE_CONV = pure.layer_classes(keras.layers, pure.DENSE_CONV_LAYERS)
NORMS = pure.layer_classes(keras.layers, pure.NORM_LAYERS)
# Layers that keep a channel a channel (so outgoing weights of a unit can be traced through them).
PASSTHROUGH = pure.layer_classes(keras.layers, pure.PASSTHROUGH_LAYERS)


def unwrap(layer):
    """The layer inside a TF-MOT pruning wrapper (or the layer itself)."""
    while isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    return layer


def is_pruning_wrapper(layer):
    """TF-MOT's ``PruneLowMagnitude`` (and its subclasses), recognised without importing TF-MOT (it
    is slow to import; :mod:`kerasprune._tfmot` imports it)."""
    return isinstance(layer, keras.layers.Wrapper) and hasattr(layer, "pruning_vars")


def has_wrappers(model):
    return any(is_pruning_wrapper(l) for l in all_layers(model))


def prunable_variables(model, kinds=DEFAULT_KINDS):
    """``[(layer_name, variable)]`` of the parameters that pruning acts on and sparsity counts.

    Args:
      kinds: subset of ``("kernel", "bias", "norm")``: Dense/Conv kernels, their biases, and the
        gamma/beta of BatchNormalization layers.
    """
    return pure.parameters_of([(l.name, unwrap(l)) for l in all_layers(model)], kinds, DENSE_CONV, NORMS)


def weight_variables(model):
    """The tensors PyTorch calls "weight" (Dense/Conv kernels, BatchNorm gammas), whatever is pruned:
    the authors' LOBSTER takes its threshold search's start statistics over these."""
    return pure.weights_of([unwrap(l) for l in all_layers(model)], DENSE_CONV, NORMS)


def report(model, kinds=DEFAULT_KINDS):
    """The :class:`SparsityReport` of ``model``'s current weights (each variable read once)."""
    read = pure.read_once(lambda variable: variable.numpy())
    kernels = _kernels(model, read)
    parameters = [(name, read(var)) for name, var in prunable_variables(model, kinds)]
    return pure.sparsity_report(parameters, kernels, pruned_neurons(model, kernels))


def _kernels(model, read=lambda variable: variable.numpy()):
    """``{layer_name: kernel array}`` of every Dense/Conv layer, logits included."""
    return {l.name: read(unwrap(l).kernel) for l in all_layers(model) if isinstance(unwrap(l), DENSE_CONV)}


def incoming_dead_units(model):
    """``{layer_name: bool array over output units}`` for every Dense/Conv layer, logits included:
    True where all incoming weights are zero (the authors' ``architecture_stat`` rule)."""
    return {name: pure.incoming_dead(kernel) for name, kernel in _kernels(model).items()}


def pruned_neurons(model, kernels=None):
    """``{layer_name: bool array over output units}`` for every hidden Dense/Conv layer (``kernels``:
    the :func:`_kernels` already read, if any)."""
    layers = [l for l in all_layers(model) if isinstance(unwrap(l), DENSE_CONV)]
    nodes = graph_nodes(model)
    hidden, successor = pure.hidden_dense_conv(
        layers, lambda layer: consumers(layer, nodes), lambda layer: isinstance(unwrap(layer), DENSE_CONV),
        lambda layer: isinstance(unwrap(layer), PASSTHROUGH), key=lambda layer: layer.name)
    return pure.dead_neurons(hidden, successor, kernels or _kernels(model))


def all_layers(model):
    """Every leaf layer of ``model``, descending into nested models (the one walker all modules use)."""
    return pure.leaf_layers(model, keras.Model)


def graph_nodes(model):
    """The keys of the nodes (layer calls) of ``model``'s own graph, nested models' included, or
    None for a model without a graph (subclassed).

    A layer object can belong to several models: TF-MOT's ``strip_pruning`` reuses the wrapped
    model's ReLU and Flatten layers, so those have one call in each model. Walks of the graph must
    follow only this model's calls, or every such layer looks like a branch."""
    if not getattr(model, "_is_graph_network", False):
        return None
    keys = set(model._network_nodes)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            nested = graph_nodes(layer)
            if nested is None:
                return None
            keys |= nested
    return keys


def _in_graph(node, nodes):
    return nodes is None or f"{node.layer.name}_ib-{node.layer._inbound_nodes.index(node)}" in nodes


def consumers(layer, nodes=None):
    """The layers that take ``layer``'s output, in the graph whose :func:`graph_nodes` are ``nodes``
    (None: in every model the layer belongs to)."""
    return [node.outbound_layer for node in layer._outbound_nodes if _in_graph(node, nodes)]


def calls(layer, nodes=None):
    """How many times ``layer`` is called in the graph whose :func:`graph_nodes` are ``nodes``."""
    return sum(_in_graph(node, nodes) for node in layer._inbound_nodes)


def shares_layers(model):
    """True if a layer of ``model`` is also called in another model's graph (as after TF-MOT's
    ``strip_pruning``): such a layer has more than one input and output, so code that reads
    ``layer.output`` or counts its calls needs a copy of the model (``clone_model``) instead."""
    nodes = graph_nodes(model)
    return nodes is not None and any(calls(l) != calls(l, nodes) for l in all_layers(model))


class SparsityLogger(keras.callbacks.Callback):
    """Puts the model's sparsity into the epoch logs (so ``history.csv`` and TensorBoard show what a
    retraining trains at): ``pruned_params_pct``, ``pruned_neurons_pct``, ``pruned_neurons_ref_pct``.
    Place it after TF-MOT's ``UpdatePruningStep``, which writes the masks into the weights at epoch end."""

    def __init__(self, kinds=DEFAULT_KINDS):
        super().__init__()
        self.kinds = tuple(kinds)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            rep = report(self.model, self.kinds)
            logs.update(pruned_params_pct=rep.pruned_params_pct, pruned_neurons_pct=rep.pruned_neurons_pct,
                        pruned_neurons_ref_pct=rep.pruned_neurons_ref_pct)
