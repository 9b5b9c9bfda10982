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
import dataclasses
from typing import Dict

import numpy as np

from kerasprune._keras import keras

DENSE_CONV = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
NORMS = (keras.layers.BatchNormalization,)
# Layers that keep a channel a channel (so outgoing weights of a unit can be traced through them).
PASSTHROUGH = (keras.layers.ReLU, keras.layers.Activation, keras.layers.MaxPooling1D,
               keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
               keras.layers.Flatten)
DEFAULT_KINDS = ("kernel", "bias", "norm")


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
    unknown = set(kinds) - set(DEFAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown parameter kinds {sorted(unknown)}; valid: {DEFAULT_KINDS}")
    out = []
    for layer in all_layers(model):
        inner = unwrap(layer)
        if isinstance(inner, DENSE_CONV):
            if "kernel" in kinds:
                out.append((layer.name, inner.kernel))
            if "bias" in kinds and inner.use_bias:
                out.append((layer.name, inner.bias))
        elif isinstance(inner, NORMS) and "norm" in kinds:
            out += [(layer.name, v) for v in (inner.gamma, inner.beta) if v is not None]
    return out


def weight_variables(model):
    """The tensors PyTorch calls "weight" (Dense/Conv kernels, BatchNorm gammas), whatever is pruned:
    the authors' LOBSTER takes its threshold search's start statistics over these."""
    out = []
    for layer in all_layers(model):
        inner = unwrap(layer)
        if isinstance(inner, DENSE_CONV):
            out.append(inner.kernel)
        elif isinstance(inner, NORMS) and inner.gamma is not None:
            out.append(inner.gamma)
    return out


@dataclasses.dataclass
class SparsityReport:
    """Counts over the prunable parameters and hidden neurons of one model."""

    params: int
    pruned_params: int
    neurons: int
    pruned_neurons: int
    per_layer: Dict[str, float]  # % pruned parameters of each layer
    per_layer_neurons: Dict[str, float]  # % pruned neurons of each hidden Dense/Conv layer
    neurons_ref: int = 0  # units of every Dense/Conv layer, logits included (the authors' count)
    pruned_neurons_ref: int = 0  # of those, units whose incoming weights are all zero

    @property
    def pruned_params_pct(self):
        return 100.0 * self.pruned_params / max(self.params, 1)

    @property
    def pruned_neurons_ref_pct(self):
        return 100.0 * self.pruned_neurons_ref / max(self.neurons_ref, 1)

    @property
    def pruned_neurons_pct(self):
        return 100.0 * self.pruned_neurons / max(self.neurons, 1)

    def as_dict(self):
        d = dataclasses.asdict(self)
        d.update(pruned_params_pct=self.pruned_params_pct, pruned_neurons_pct=self.pruned_neurons_pct,
                 pruned_neurons_ref_pct=self.pruned_neurons_ref_pct)
        return d


def report(model, kinds=DEFAULT_KINDS):
    """The :class:`SparsityReport` of ``model``'s current weights."""
    totals, zeros = {}, {}
    for name, var in prunable_variables(model, kinds):
        value = var.numpy()
        totals[name] = totals.get(name, 0) + value.size
        zeros[name] = zeros.get(name, 0) + int(np.count_nonzero(value == 0))
    dead = pruned_neurons(model)
    dead_ref = incoming_dead_units(model)
    return SparsityReport(
        params=sum(totals.values()), pruned_params=sum(zeros.values()),
        neurons=sum(d.size for d in dead.values()), pruned_neurons=int(sum(d.sum() for d in dead.values())),
        per_layer={n: 100.0 * zeros[n] / totals[n] for n in totals},
        per_layer_neurons={n: 100.0 * d.mean() for n, d in dead.items()},
        neurons_ref=sum(d.size for d in dead_ref.values()),
        pruned_neurons_ref=int(sum(d.sum() for d in dead_ref.values())))


def incoming_dead_units(model):
    """``{layer_name: bool array over output units}`` for every Dense/Conv layer, logits included:
    True where all incoming weights are zero (the authors' ``architecture_stat`` rule)."""
    out = {}
    for layer in all_layers(model):
        inner = unwrap(layer)
        if isinstance(inner, DENSE_CONV):
            kernel = inner.kernel.numpy()
            out[layer.name] = ~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)
    return out


def pruned_neurons(model):
    """``{layer_name: bool array over output units}`` for every hidden Dense/Conv layer."""
    layers = [l for l in all_layers(model) if isinstance(unwrap(l), DENSE_CONV)]
    nodes = graph_nodes(model)
    successors = {l.name: _successor(l, nodes) for l in layers}
    hidden = [l for l in layers if _reaches_any(l, layers, nodes)]
    kernels = {l.name: unwrap(l).kernel.numpy() for l in layers}
    incoming_dead = {l.name: ~np.any(kernels[l.name].reshape(-1, kernels[l.name].shape[-1]) != 0, axis=0)
                     for l in hidden}
    # Outgoing: walk from the output backwards, so "leads only to pruned neurons" is known downstream.
    dead = {}
    for layer in reversed(hidden):
        d = incoming_dead[layer.name].copy()
        succ = successors[layer.name]
        if succ is not None:
            w_next = kernels[succ.name]
            # The next kernel's rows fed by each unit, as [position, unit, next_unit]: channels are
            # last in Keras, so this one reshape serves Dense->Dense, Conv->Conv and Conv->Flatten->Dense.
            rows = w_next.reshape(-1, d.size, w_next.shape[-1])
            live_next = ~dead[succ.name] if succ.name in dead else np.ones(w_next.shape[-1], bool)
            reaches_live = np.any(rows[:, :, live_next] != 0, axis=(0, 2))
            d |= ~reaches_live
        dead[layer.name] = d
    return {l.name: dead[l.name] for l in hidden}


def all_layers(model):
    """Every leaf layer of ``model``, descending into nested models (the one walker all modules use)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
        else:
            yield layer


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


def _successor(layer, nodes=None):
    """The next Dense/Conv layer if this layer's output feeds exactly one, through channel-preserving
    layers only; else None."""
    current = layer
    while True:
        following = consumers(current, nodes)
        if len(following) != 1:
            return None
        current = following[0]
        inner = unwrap(current)
        if isinstance(inner, DENSE_CONV):
            return current
        if not isinstance(inner, PASSTHROUGH):
            return None


def _reaches_any(layer, candidates, nodes=None):
    """True if some Dense/Conv layer lies downstream of ``layer`` (so ``layer`` is hidden)."""
    names = {c.name for c in candidates}
    seen, stack = set(), consumers(layer, nodes)
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        if current.name in names:
            return True
        stack += consumers(current, nodes)
    return False


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
