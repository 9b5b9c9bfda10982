"""Compaction: a pruned model rebuilt as an ordinary, smaller Keras model with the same outputs.

A 98%-sparse model stored densely is as large and as slow as the dense one. Many of its neurons are
dead (see :mod:`kerasprune.sparsity`), and a dead neuron can be removed outright:

- *incoming-dead* (all incoming weights zero): the unit outputs the constant ``act(bias)``; the
  layers between it and the next Dense/Conv layer (ReLU, BatchNorm, pooling, dropout, flatten) map a
  constant to a constant, so its whole contribution is a constant added to the next layer's bias.
  That fold is exact when the next layer sees the constant at every position: always for Dense, and
  for Conv with ``padding="valid"``. A ``"same"``-padded Conv sees zeros at the borders, so there the
  unit is removed only if its constant is exactly 0 (e.g. ReLU of a negative bias, or a BatchNorm
  whose gamma and beta were pruned).
- *outgoing-dead* (every weight to a kept unit of the next layer is zero): removing it changes nothing.

A unit is removable only where its output flows into exactly one Dense/Conv layer through such
channel-wise layers. Units whose output reaches a merge (``Add``, ``Concatenate``) or several
consumers are kept: in ResNets this means only the inner channels of a basic block (conv1 -> bn1 ->
relu1 -> conv2) are compacted, while the residual-stream channels (stem, conv2 of each block, the
shortcuts) keep their width. :func:`plan` says per layer what was removed and what was kept and why.

The compacted model is a ``clone_model`` of the original with smaller ``units``/``filters`` (and a bias
added where a fold needs one): standard layers, same layer names, same input/output names.
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np

from kerasprune import _tfmot, sparsity
from kerasprune._keras import keras, tf

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
# Exact classes: transposed and depthwise convolutions subclass these with other kernel layouts.
_COMPACTABLE = (keras.layers.Dense,) + _CONV
_POOLING = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
            keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D)
# Map a constant to a constant, unit by unit, on any rank.
_ELEMENTWISE = (keras.layers.ReLU, keras.layers.Activation, keras.layers.Dropout)


@dataclasses.dataclass
class LayerPlan:
    """What compaction does to the output units of one Dense/Conv layer."""

    name: str
    units: int
    successor: Optional[str]  # the Dense/Conv layer fed by this one; None: not compactable
    reason: str = ""  # why the layer is not compactable (empty when it is)
    chain: List[str] = dataclasses.field(default_factory=list)  # channel-wise layers in between
    keep: Optional[np.ndarray] = None  # bool over units
    incoming_dead: Optional[np.ndarray] = None  # bool over units: all incoming weights zero
    constant: Optional[np.ndarray] = None  # output of each unit at the successor's input if incoming-dead

    @property
    def kept(self):
        return self.units if self.keep is None else int(self.keep.sum())

    @property
    def removed_incoming_dead(self):
        """Units removed whose constant output was folded into the successor's bias."""
        return 0 if self.keep is None else int((~self.keep & self.incoming_dead).sum())

    @property
    def removed_outgoing_dead(self):
        return 0 if self.keep is None else int((~self.keep & ~self.incoming_dead).sum())

    @property
    def kept_incoming_dead(self):
        """Incoming-dead units that stay: a non-zero constant in front of a zero-padded conv."""
        return 0 if self.keep is None else int((self.keep & self.incoming_dead).sum())

    def as_dict(self):
        return {"name": self.name, "units": self.units, "kept": self.kept, "successor": self.successor,
                "chain": self.chain, "reason": self.reason,
                "removed_incoming_dead": self.removed_incoming_dead,
                "removed_outgoing_dead": self.removed_outgoing_dead,
                "kept_incoming_dead": self.kept_incoming_dead}


@dataclasses.dataclass
class CompactionPlan:
    """Per-layer plan of :func:`compact`, in the model's layer order."""

    layers: Dict[str, LayerPlan]
    # ((top, bottom), (left, right)) pixels cropped from the input (see crop_input), if any.
    input_crop: Optional[tuple] = None

    @property
    def units(self):
        return sum(p.units for p in self.layers.values() if p.successor)

    @property
    def removed(self):
        return sum(p.units - p.kept for p in self.layers.values())

    def units_by_layer(self):
        """``{layer: units}`` of every Dense/Conv layer, before this pass."""
        return {name: p.units for name, p in self.layers.items()}

    def as_dict(self):
        return {"hidden_units": self.units, "removed_units": self.removed, "input_crop": self.input_crop,
                "layers": [p.as_dict() for p in self.layers.values()]}


def plan(model):
    """The :class:`CompactionPlan` of a plain (unwrapped) model: which units go and why."""
    _require_plain(model)
    model = _own_graph(model)
    layers = [l for l in model.layers if _compactable(l)]
    plans = {l.name: _link(model, l) for l in layers}
    # Backwards, so a unit's outgoing weights are judged against the units the successor keeps.
    for layer in reversed(layers):
        p = plans[layer.name]
        if p.successor is None:
            continue
        kernel = layer.kernel.numpy()
        n = kernel.shape[-1]
        p.incoming_dead = ~np.any(kernel.reshape(-1, n) != 0, axis=0)
        p.constant = _constant_through(layer, [model.get_layer(c) for c in p.chain])
        succ = model.get_layer(p.successor)
        rows = _rows(succ.kernel.numpy(), n)
        succ_plan = plans[succ.name]
        succ_keep = succ_plan.keep if succ_plan.keep is not None else np.ones(rows.shape[-1], bool)
        outgoing_dead = ~np.any(rows[:, :, succ_keep] != 0, axis=(0, 2))
        foldable = np.ones(n, bool) if _sees_constant(succ) else (p.constant == 0)
        remove = (p.incoming_dead & foldable) | outgoing_dead
        if remove.all():  # a Keras layer needs one unit; keeping one unchanged is still exact
            remove[0] = False
        p.keep = ~remove
    return CompactionPlan(plans)


def compact(model, max_passes=10, return_plans=False):
    """An ordinary Keras model without the removable neurons/filters of ``model``; same outputs.

    ``model`` may hold TF-MOT pruning wrappers (they are stripped and their masks folded in first).
    Compaction repeats until nothing is removable: folding a removed unit's constant can leave a
    next-layer unit with no incoming weights, removable in turn. With ``return_plans`` it returns
    ``(model, [CompactionPlan of each pass])``; the last plan describes the returned model's units
    and removes nothing unless ``max_passes`` ran out.
    """
    if sparsity.has_wrappers(model):
        model = _tfmot.plain_copy(model)
    else:
        model = _own_graph(model)
    plans = []
    for _ in range(max_passes):
        plans.append(plan(model))
        if plans[-1].removed == 0:
            break
        model = _compact_once(model, plans[-1])
    else:  # out of passes: the last plan was applied, so plan the result (its units are what is left)
        plans.append(plan(model))
    model, plans[-1].input_crop = crop_input(model)
    return (model, plans) if return_plans else model


def crop_input(model):
    """``(model, crop)``: ``model`` with the input border that no weight reads cropped away.

    Applies to a chain ``image -> Flatten -> Dense -> ...`` (LeNet-300): pixels whose rows of the
    first kernel are all zero do not affect the output, and when they frame the image a standard
    ``Cropping2D`` layer (named ``<input>_crop``) removes them before the Flatten, shrinking the first
    kernel. The input signature is unchanged. Returns ``(model, None)`` when nothing can be cropped.
    """
    model = _own_graph(model)
    chain = _linear_chain(model)
    if chain is None or len(chain) < 2 or len(model.inputs[0].shape) != 4:
        return model, None
    flatten, dense = chain[0], chain[1]
    if not (isinstance(flatten, keras.layers.Flatten) and _channels_last(flatten)
            and type(dense) is keras.layers.Dense):
        return model, None
    height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
    kernel = dense.kernel.numpy().reshape(height, width, channels, -1)
    live = np.any(kernel != 0, axis=(2, 3))
    if not live.any():
        return model, None
    rows, cols = np.flatnonzero(live.any(1)), np.flatnonzero(live.any(0))
    crop = ((int(rows[0]), height - 1 - int(rows[-1])), (int(cols[0]), width - 1 - int(cols[-1])))
    if crop == ((0, 0), (0, 0)):
        return model, None
    input_layer = model.layers[0]
    with model.distribute_strategy.scope():
        inputs = keras.Input(model.inputs[0].shape[1:], name=input_layer.name, dtype=model.inputs[0].dtype)
        x = keras.layers.Cropping2D(crop, name=f"{input_layer.name}_crop")(inputs)
        layers = {}
        for layer in chain:
            layers[layer.name] = layer.__class__.from_config(layer.get_config())
            x = layers[layer.name](x)
        cropped = keras.Model(inputs, x, name=model.name)
    (top, bottom), (left, right) = crop
    first = [kernel[top:height - bottom, left:width - right].reshape(-1, kernel.shape[-1])]
    layers[dense.name].set_weights(first + dense.get_weights()[1:])
    for layer in chain[2:]:
        if layer.weights:
            layers[layer.name].set_weights(layer.get_weights())
    return cropped, crop


def _own_graph(model):
    """``model``, or a copy with the same weights if some of its layers are also called in another
    model (TF-MOT's ``strip_pruning`` reuses the wrapped model's ReLU/Flatten layers): the walks
    below follow a layer's calls and outputs, which must be this model's only."""
    if not sparsity.shares_layers(model):
        return model
    with model.distribute_strategy.scope():
        copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _linear_chain(model):
    """The layers after the single input if the model is one unbranched chain, else None."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    chain, current = [], model.layers[0]
    if not isinstance(current, keras.layers.InputLayer):
        return None
    while True:
        consumers = sparsity.consumers(current)
        if not consumers:
            return chain if current.output is model.outputs[0] else None
        if len(consumers) != 1 or len(consumers[0]._inbound_nodes) != 1 or isinstance(consumers[0], keras.Model):
            return None
        current = consumers[0]
        chain.append(current)


def _compact_once(model, p):
    weights, configs = _new_weights(model, p)

    def clone(layer):
        config = layer.get_config()
        config.update(configs.get(layer.name, {}))
        return layer.__class__.from_config(config)

    with model.distribute_strategy.scope():
        compacted = keras.models.clone_model(model, clone_function=clone)
    for layer in compacted.layers:
        if layer.weights:
            layer.set_weights(weights.get(layer.name) or model.get_layer(layer.name).get_weights())
    return compacted


# ---------------------------------------------------------------------------------------------


def _require_plain(model):
    if any(isinstance(l, keras.layers.Wrapper) for l in model.layers):
        raise ValueError("plan() needs a plain model; strip pruning wrappers first (export.plain_copy)")
    if any(isinstance(l, keras.Model) for l in model.layers):
        raise ValueError("compaction does not support nested models; flatten the model first")


def _compactable(layer):
    return type(layer) in _COMPACTABLE


def _is_output(model, layer):
    return any(out is layer.output for out in model.outputs)


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _link(model, layer):
    """The plan skeleton of ``layer``: its successor and the channel-wise chain to it, or a reason."""
    units = int(layer.kernel.shape[-1])
    p = LayerPlan(layer.name, units, None)
    if len(layer._inbound_nodes) != 1:
        p.reason = "layer is shared (called more than once)"
        return p
    if isinstance(layer, _CONV) and (layer.groups != 1 or not _channels_last(layer)):
        p.reason = "grouped or channels-first convolution"
        return p
    if _mixes_units(layer):
        p.reason = f"its activation {layer.activation.__name__} mixes units"
        return p
    chain, current, flattened = [], layer, False
    while True:
        consumers = sparsity.consumers(current)
        if not consumers:
            p.reason = "output layer" if current is layer else f"{current.name} is a model output"
            return p
        if len(consumers) != 1 or _is_output(model, current):
            p.reason = f"{current.name} feeds {len(consumers)} layers (residual or branching path)"
            return p
        nxt = consumers[0]
        if len(nxt._inbound_nodes) != 1:
            p.reason = f"{nxt.name} is shared"
            return p
        if isinstance(nxt, sparsity.DENSE_CONV):
            if not _compactable(nxt):
                p.reason = f"{nxt.name} ({type(nxt).__name__}) has an unsupported kernel layout"
                return p
            if isinstance(nxt, _CONV) and (flattened or nxt.groups != 1 or not _channels_last(nxt)):
                p.reason = f"{nxt.name}: unsupported convolution layout"
                return p
            if int(nxt.kernel.shape[-2]) % units:
                p.reason = f"{nxt.name}'s inputs are not whole copies of {layer.name}'s units"
                return p
            p.successor, p.chain = nxt.name, [c.name for c in chain]
            return p
        channel_wise = (isinstance(nxt, _ELEMENTWISE) and not _mixes_units(nxt)) or (
            not flattened and (isinstance(nxt, _POOLING) and _channels_last(nxt)
                               or isinstance(nxt, keras.layers.BatchNormalization)
                               and list(nxt.axis) == [len(nxt.input_shape) - 1]))
        if isinstance(nxt, keras.layers.Flatten) and _channels_last(nxt):
            flattened = True
        elif not channel_wise:
            p.reason = f"{nxt.name} ({type(nxt).__name__}) mixes or merges channels"
            return p
        chain.append(nxt)
        current = nxt


def _mixes_units(layer):
    """True for activations that are not unit-wise (softmax): removing a unit would change others."""
    return getattr(getattr(layer, "activation", None), "__name__", "") in ("softmax", "log_softmax")


def _constant_through(layer, chain):
    """What each unit of ``layer`` outputs at the successor's input when its incoming weights are all
    zero: ``bias`` through the layer's activation and the chain (pooling, dropout, flatten: identity)."""
    n = int(layer.kernel.shape[-1])
    bias = layer.bias.numpy() if layer.use_bias else np.zeros(n, np.float32)
    x = layer.activation(tf.constant(bias[None, :])).numpy()[0]
    for c in chain:
        if isinstance(c, (keras.layers.ReLU, keras.layers.Activation)):
            x = c(tf.constant(x[None, :])).numpy()[0]
        elif isinstance(c, keras.layers.BatchNormalization):
            gamma = c.gamma.numpy() if c.scale else 1.0
            beta = c.beta.numpy() if c.center else 0.0
            x = gamma * (x - c.moving_mean.numpy()) / np.sqrt(c.moving_variance.numpy() + c.epsilon) + beta
            x = x.astype(np.float32)
    return x


def _sees_constant(successor):
    """True if a constant input channel reaches every output position of ``successor`` unpadded."""
    return not isinstance(successor, _CONV) or successor.padding == "valid"


def _rows(kernel, units):
    """The successor's kernel as ``[position, unit of the previous layer, output unit]``.

    Keras is channels-last, so this one reshape covers Dense->Dense, Conv->Conv (position = kernel
    tap) and Conv->Flatten->Dense (position = pixel of the flattened map)."""
    return kernel.reshape(-1, units, kernel.shape[-1])


def _new_weights(model, p):
    """``({layer: new weights}, {layer: config changes})`` of the compacted model."""
    weights, configs = {}, {}
    keep_in = {}  # successor -> keep mask over its previous layer's units
    delta = {}  # successor -> constant folded into its bias
    for lp in p.layers.values():
        if lp.successor is None:
            continue
        layer, succ = model.get_layer(lp.name), model.get_layer(lp.successor)
        keep_in[succ.name] = lp.keep
        rows = _rows(succ.kernel.numpy(), lp.units)
        folded = ~lp.keep & lp.incoming_dead
        delta[succ.name] = np.einsum("u,puo->o", np.where(folded, lp.constant, 0).astype(np.float64),
                                     rows.astype(np.float64))
        for name in lp.chain:
            c = model.get_layer(name)
            if isinstance(c, keras.layers.BatchNormalization):
                weights[name] = [w[lp.keep] for w in c.get_weights()]
    for layer in model.layers:
        if not _compactable(layer):
            continue
        kernel = layer.kernel.numpy()
        n_out = kernel.shape[-1]
        keep_out = p.layers[layer.name].keep
        keep_out = np.ones(n_out, bool) if keep_out is None else keep_out
        if layer.name not in keep_in and keep_out.all():
            continue
        if layer.name in keep_in:
            prev_keep = keep_in[layer.name]
            rows = _rows(kernel, prev_keep.size)[:, prev_keep, :]
            kernel = rows.reshape(kernel.shape[:-2] + (-1, n_out))
        kernel = kernel[..., keep_out]
        bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(n_out)
        bias = (bias + delta.get(layer.name, 0.0))[keep_out].astype(np.float32)
        needs_bias = layer.use_bias or bool(np.any(bias != 0))
        weights[layer.name] = [kernel, bias] if needs_bias else [kernel]
        key = "units" if isinstance(layer, keras.layers.Dense) else "filters"
        configs[layer.name] = {key: int(keep_out.sum()), "use_bias": needs_bias}
    return weights, configs


__all__ = ["compact", "plan", "crop_input", "CompactionPlan", "LayerPlan"]
