"""Sparsity accounting of Keras 3 models: the counts of :mod:`kerasprune.sparsity`, same rules.

Prunable parameters are the kernels and biases of Dense/Conv layers and the gamma/beta of
BatchNormalization layers; a parameter is pruned when it is exactly zero. A neuron (hidden Dense
unit or Conv channel) is pruned when all its incoming weights are zero or all its outgoing weights
are zero or lead only to pruned neurons (ours, ``pruned_neurons_pct``); the authors' count
(``pruned_neurons_ref_pct``) is every Dense/Conv unit, logits included, with all incoming weights
zero. See :mod:`kerasprune.sparsity` for the reasons. Reads the Keras 3 graph, so a layer shared
between several models is followed through all of its calls.
"""
import dataclasses
from typing import Dict

import keras
import numpy as np

DEFAULT_KINDS = ("kernel", "bias", "norm")
DENSE_CONV = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
NORMS = (keras.layers.BatchNormalization,)
# Layers (and the ``keras.ops.relu`` operation) that keep a channel a channel.
PASSTHROUGH = (keras.layers.ReLU, keras.layers.Activation, keras.layers.MaxPooling1D,
               keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
               keras.layers.Flatten)


def check_kinds(kinds):
    unknown = set(kinds) - set(DEFAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown parameter kinds {sorted(unknown)}; valid: {DEFAULT_KINDS}")
    return tuple(kinds)


def all_layers(model):
    """Every leaf layer of ``model``, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
        else:
            yield layer


def prunable_variables(model, kinds=DEFAULT_KINDS):
    """``[(layer_name, variable)]`` of the parameters that pruning acts on and sparsity counts."""
    kinds = check_kinds(kinds)
    out = []
    for layer in all_layers(model):
        if isinstance(layer, DENSE_CONV):
            if "kernel" in kinds:
                out.append((layer.name, layer.kernel))
            if "bias" in kinds and layer.use_bias:
                out.append((layer.name, layer.bias))
        elif isinstance(layer, NORMS) and "norm" in kinds:
            out += [(layer.name, v) for v in (layer.gamma, layer.beta) if v is not None]
    return out


def weight_variables(model):
    """The tensors PyTorch calls "weight" (Dense/Conv kernels, BatchNorm gammas): the reference
    threshold search takes its start statistics over these."""
    out = []
    for layer in all_layers(model):
        if isinstance(layer, DENSE_CONV):
            out.append(layer.kernel)
        elif isinstance(layer, NORMS) and layer.gamma is not None:
            out.append(layer.gamma)
    return out


@dataclasses.dataclass
class SparsityReport:
    """Counts over the prunable parameters and neurons of one model (fields as Keras 2's)."""

    params: int
    pruned_params: int
    neurons: int
    pruned_neurons: int
    per_layer: Dict[str, float]
    per_layer_neurons: Dict[str, float]
    neurons_ref: int = 0
    pruned_neurons_ref: int = 0

    @property
    def pruned_params_pct(self):
        return 100.0 * self.pruned_params / max(self.params, 1)

    @property
    def pruned_neurons_ref_pct(self):
        return 100.0 * self.pruned_neurons_ref / max(self.neurons_ref, 1)

    @property
    def pruned_neurons_pct(self):
        return 100.0 * self.pruned_neurons / max(self.neurons, 1)


def report(model, kinds=DEFAULT_KINDS):
    """The :class:`SparsityReport` of ``model``'s current weights."""
    totals, zeros = {}, {}
    for name, var in prunable_variables(model, kinds):
        value = keras.ops.convert_to_numpy(var)
        totals[name] = totals.get(name, 0) + value.size
        zeros[name] = zeros.get(name, 0) + int(np.count_nonzero(value == 0))
    kernels = {l.name: keras.ops.convert_to_numpy(l.kernel) for l in all_layers(model) if isinstance(l, DENSE_CONV)}
    dead_ref = {n: _incoming_dead(k) for n, k in kernels.items()}
    dead = pruned_neurons(model, kernels)
    return SparsityReport(
        params=sum(totals.values()), pruned_params=sum(zeros.values()),
        neurons=sum(d.size for d in dead.values()), pruned_neurons=int(sum(d.sum() for d in dead.values())),
        per_layer={n: 100.0 * zeros[n] / totals[n] for n in totals},
        per_layer_neurons={n: 100.0 * d.mean() for n, d in dead.items()},
        neurons_ref=sum(d.size for d in dead_ref.values()),
        pruned_neurons_ref=int(sum(d.sum() for d in dead_ref.values())))


def _incoming_dead(kernel):
    return ~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)


def pruned_neurons(model, kernels=None):
    """``{layer_name: bool array over output units}`` for every hidden Dense/Conv layer."""
    layers = [l for l in all_layers(model) if isinstance(l, DENSE_CONV)]
    kernels = kernels or {l.name: keras.ops.convert_to_numpy(l.kernel) for l in layers}
    hidden = [l for l in layers if _reaches_any(l, layers)]
    dead = {}
    for layer in reversed(hidden):  # from the output backwards: downstream deaths are known
        d = _incoming_dead(kernels[layer.name])
        succ = _successor(layer)
        if succ is not None:
            w_next = kernels[succ.name]
            rows = w_next.reshape(-1, d.size, w_next.shape[-1])  # [position, unit, next unit]
            live_next = ~dead[succ.name] if succ.name in dead else np.ones(w_next.shape[-1], bool)
            d |= ~np.any(rows[:, :, live_next] != 0, axis=(0, 2))
        dead[layer.name] = d
    return {l.name: dead[l.name] for l in hidden}


def _consumers(op):
    return [node.operation for node in op._outbound_nodes]


def _successor(layer):
    """The next Dense/Conv layer if ``layer`` feeds exactly one through channel-preserving ops."""
    current = layer
    while True:
        following = _consumers(current)
        if len(following) != 1:
            return None
        current = following[0]
        if isinstance(current, DENSE_CONV):
            return current
        if not (isinstance(current, PASSTHROUGH) or type(current).__name__ == "Relu"):
            return None


def _reaches_any(layer, candidates):
    ids = {id(c) for c in candidates}
    seen, stack = set(), _consumers(layer)
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if id(current) in ids:
            return True
        stack += _consumers(current)
    return False
