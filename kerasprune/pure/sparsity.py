"""Sparsity counting shared by :mod:`kerasprune.sparsity` (Keras 2) and :mod:`kerasprune.keras3.sparsity`.

The rules (which parameters count, when a neuron is pruned, the authors' count) are explained in
:mod:`kerasprune.sparsity`. Here they are NumPy on kernel arrays, plus graph walks that take the
model's layers and a ``consumers`` function: the two Keras versions differ only in how a layer's
consumers and its classes are read, so they pass those in and get the same counts.
"""
import dataclasses
from typing import Dict

import numpy as np

DEFAULT_KINDS = ("kernel", "bias", "norm")
# Variable names of each parameter kind, for optimizers that must recognise them without a model.
KIND_NAMES = {"kernel": ("kernel",), "bias": ("bias",), "norm": ("gamma", "beta")}
# Layer classes by name (each side takes them from its own ``keras.layers``, see :func:`layer_classes`).
DENSE_CONV_LAYERS = ("Dense", "Conv1D", "Conv2D", "Conv3D")
NORM_LAYERS = ("BatchNormalization",)
# Layers that keep a channel a channel (so outgoing weights of a unit can be traced through them).
PASSTHROUGH_LAYERS = ("ReLU", "Activation", "MaxPooling1D", "MaxPooling2D", "AveragePooling2D", "Dropout",
                      "Flatten")


def layer_classes(layers_module, names):
    """The classes called ``names`` in ``layers_module`` (``keras.layers`` of either Keras)."""
    return tuple(getattr(layers_module, name) for name in names)


def check_kinds(kinds):
    """``kinds`` as a tuple, or a one-line error naming the unknown ones."""
    unknown = set(kinds) - set(DEFAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown parameter kinds {sorted(unknown)}; valid: {DEFAULT_KINDS}")
    return tuple(kinds)


def is_kind_name(name, kinds):
    """True if a variable called ``name`` (``kernel``, ``gamma``...) is of one of ``kinds``."""
    return any(name in KIND_NAMES[k] for k in kinds)


def leaf_layers(model, model_class):
    """Every leaf layer of ``model``, descending into nested models (instances of ``model_class``)."""
    for layer in model.layers:
        if isinstance(layer, model_class):
            yield from leaf_layers(layer, model_class)
        else:
            yield layer


def parameters_of(named_layers, kinds, dense_conv, norms):
    """``[(name, variable)]`` of the ``kinds`` of parameters of ``[(name, layer)]``: Dense/Conv
    (``dense_conv`` classes) kernels and biases, normalisation (``norms``) gamma and beta."""
    kinds = check_kinds(kinds)
    out = []
    for name, layer in named_layers:
        if isinstance(layer, dense_conv):
            if "kernel" in kinds:
                out.append((name, layer.kernel))
            if "bias" in kinds and layer.use_bias:
                out.append((name, layer.bias))
        elif isinstance(layer, norms) and "norm" in kinds:
            out += [(name, v) for v in (layer.gamma, layer.beta) if v is not None]
    return out


def weights_of(layers, dense_conv, norms):
    """The tensors PyTorch calls "weight" (Dense/Conv kernels, norm gammas), whatever is pruned:
    the authors' LOBSTER takes its threshold search's start statistics over these."""
    out = []
    for layer in layers:
        if isinstance(layer, dense_conv):
            out.append(layer.kernel)
        elif isinstance(layer, norms) and layer.gamma is not None:
            out.append(layer.gamma)
    return out


def read_once(read):
    """``read`` (variable -> NumPy array) remembered per variable: a report reads each kernel once,
    though it counts parameters, the authors' neurons and ours from it."""
    cache = {}

    def cached(variable):
        if id(variable) not in cache:
            cache[id(variable)] = (variable, read(variable))  # the variable is held, so its id stays its own
        return cache[id(variable)][1]
    return cached


# -- the graph of Dense/Conv layers -------------------------------------------------------------------
def next_dense_conv(layer, consumers, is_dense_conv, is_passthrough):
    """The next Dense/Conv layer if ``layer``'s output feeds exactly one, through channel-preserving
    layers only (``is_passthrough``); else None. ``consumers(layer)`` lists the layers taking its output."""
    current = layer
    while True:
        following = consumers(current)
        if len(following) != 1:
            return None
        current = following[0]
        if is_dense_conv(current):
            return current
        if not is_passthrough(current):
            return None


def reaches_any(layer, candidates, consumers, key):
    """True if one of ``candidates`` lies downstream of ``layer`` (layers compared by ``key``)."""
    wanted = {key(c) for c in candidates}
    seen, stack = set(), list(consumers(layer))
    while stack:
        current = stack.pop()
        if key(current) in seen:
            continue
        seen.add(key(current))
        if key(current) in wanted:
            return True
        stack += consumers(current)
    return False


def hidden_dense_conv(layers, consumers, is_dense_conv, is_passthrough, key):
    """``(hidden, successor)`` for the Dense/Conv ``layers`` of a model: the names of those with another
    one downstream (the logits layer is not hidden), and for each the name of the next Dense/Conv
    layer it alone feeds (:func:`next_dense_conv`; None if there is none)."""
    hidden = [l for l in layers if reaches_any(l, layers, consumers, key)]
    successor = {}
    for layer in hidden:
        following = next_dense_conv(layer, consumers, is_dense_conv, is_passthrough)
        successor[layer.name] = None if following is None else following.name
    return [l.name for l in hidden], successor


# -- counting ------------------------------------------------------------------------------------------
def incoming_dead(kernel):
    """Per output unit of ``kernel`` (channels last), True where all its incoming weights are zero."""
    return ~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)


def dead_neurons(hidden, successor, kernels):
    """``{layer: bool array over output units}`` of the ``hidden`` layers (graph order): dead when
    all incoming weights are zero or all outgoing ones are zero or lead to dead units only.

    ``successor[layer]``: the next Dense/Conv layer's name or None; ``kernels``: ``{layer: kernel}``.
    """
    dead = {}
    for name in reversed(hidden):  # from the output backwards: downstream deaths are known
        d = incoming_dead(kernels[name])
        following = successor[name]
        if following is not None:
            w_next = kernels[following]
            # The next kernel's rows fed by each unit, as [position, unit, next_unit]: channels are
            # last in Keras, so this one reshape serves Dense->Dense, Conv->Conv and Conv->Flatten->Dense.
            rows = w_next.reshape(-1, d.size, w_next.shape[-1])
            live_next = ~dead[following] if following in dead else np.ones(w_next.shape[-1], bool)
            d |= ~np.any(rows[:, :, live_next] != 0, axis=(0, 2))
        dead[name] = d
    return {name: dead[name] for name in hidden}


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


def sparsity_report(parameters, kernels, dead):
    """The :class:`SparsityReport` of ``[(layer, parameter array)]``, the ``{layer: kernel}`` of every
    Dense/Conv layer (logits included, for the authors' count) and our ``dead`` (:func:`dead_neurons`)."""
    totals, zeros = {}, {}
    for name, value in parameters:
        totals[name] = totals.get(name, 0) + value.size
        zeros[name] = zeros.get(name, 0) + int(np.count_nonzero(value == 0))
    dead_ref = {name: incoming_dead(kernel) for name, kernel in kernels.items()}
    return SparsityReport(
        params=sum(totals.values()), pruned_params=sum(zeros.values()),
        neurons=sum(d.size for d in dead.values()), pruned_neurons=int(sum(d.sum() for d in dead.values())),
        per_layer={n: 100.0 * zeros[n] / totals[n] for n in totals},
        per_layer_neurons={n: 100.0 * d.mean() for n, d in dead.items()},
        neurons_ref=sum(d.size for d in dead_ref.values()),
        pruned_neurons_ref=int(sum(d.sum() for d in dead_ref.values())))
