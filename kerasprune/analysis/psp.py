"""Post-synaptic potentials (PSP) of ReLU networks and the paper's PSP-entropy (Sec. 4, eq. 2-5).

The PSP of a hidden neuron is the tensor that feeds its ReLU (eq. 2). :func:`psp_model` exposes
every such tensor of a Keras functional/Sequential model as an extra output of a sub-model built
from the model's own graph (it shares the model's variables). :func:`psp_statistics` streams a
dataset through it once and keeps only sums and counts, so memory does not grow with the dataset:

- ``mean z^2`` per layer and overall (the paper's "PSP L2 norm", Fig. 3);
- per neuron n and class c, the count of examples with ``z_n > 0`` (the state phi'(z) of eq. 3);
- optionally, per class, the counts of the joint state of pairs of neurons of the same layer.

Entropies (in bits), with the convention ``0 log 0 = 0`` (the limit), so a neuron that is always
on or always off within a class has entropy 0 there; classes absent from the data are skipped:

- first order (eq. 4-5): ``H(n|c) = h(P[z_n > 0 | c])`` with ``h`` the binary entropy and
  ``H(n) = sum_c H(n|c)``. A conv "neuron" is one output unit (position x channel); the per-channel
  reading pools the positions: ``p = P[z_{pos,ch} > 0 | c]`` over examples and positions.
- second order (our definition; the paper's code for it never ran): for neurons i != j of one
  layer, ``H(i,j|c)`` is the entropy of the 4-valued joint state ``(z_i > 0, z_j > 0)`` within class
  c and ``H(i,j) = sum_c H(i,j|c)``. Counts of state (1,1) for all pairs are the matrix product
  ``S_c^T S_c`` of the binary state matrix of class c; (1,0), (0,1), (0,0) follow from the
  first-order counts. Layers wider than ``max_exact_units`` use a seeded uniform sample of pairs
  instead, and report the standard error of the sampled mean.

"Overall" means average over every hidden neuron (or pair) of the model, so wide layers weigh in
proportion to their size; per-layer means are reported too.

First-order conventions (``convention=``): ``"kerasprune"`` is the above. ``"reference"`` is the
authors' code (EIDOSlab/PSP-entropy), which hooks the output of every top-level module, so the
output layer's units (logits, "on" when > 0) count as neurons too, and clamps ``p`` and ``1 - p`` to
``[1e-4, 0.9999]`` (an always-on or always-off neuron gets 0.0015 bits per class, not 0). Absent
classes are skipped in both (the reference's 0/0 would make them NaN). The reference has no second
order, so that one has a single convention.
"""
import dataclasses
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np

from kerasprune._keras import keras, tf
from kerasprune.errors import KerasPruneError

PSP_LAYERS_ATTR = "_kerasprune_psp_layers"
_LINEAR = ("linear", None)
PSP_CONVENTIONS = ("kerasprune", "reference")
REFERENCE_CLAMP = (1e-4, 0.9999)  # of p = P[z > 0 | c] in the authors' code
_ACTIVATION_LAYERS = ("ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU", "Softmax")


def _activation_name(fn):
    return getattr(fn, "__name__", type(fn).__name__)


# Functions that, called on a Keras tensor, make a TFOpLambda (``tf.nn.relu(x)``) or that people
# wrap in ``Lambda``: the ReLUs, and the other activations (an error, as for Activation layers).
_RELU_FUNCTIONS = (tf.nn.relu, keras.activations.relu)
_OTHER_ACTIVATIONS = ("sigmoid", "tanh", "elu", "selu", "gelu", "softplus", "softsign", "swish", "silu",
                      "relu6", "leaky_relu", "crelu", "hard_sigmoid", "exponential", "softmax",
                      "log_softmax", "mish")


# Ops that can implement an activation (tf.maximum(z, 0) is a ReLU): not analysed, but warned about.
_MAYBE_ACTIVATIONS = ("maximum", "minimum", "clip_by_value", "where")


def _op_function(layer):
    """The function a ``TFOpLambda``/``Lambda`` layer applies, or None for other layers."""
    if type(layer).__name__ in ("TFOpLambda", "Lambda"):
        return getattr(layer, "function", None)
    return None


def _is_plain_relu(layer):
    if isinstance(layer, keras.layers.ReLU):
        return (layer.max_value is None and float(layer.negative_slope) == 0.0
                and float(layer.threshold) == 0.0)
    if isinstance(layer, keras.layers.Activation):
        return _activation_name(layer.activation) == "relu"
    fn = _op_function(layer)
    # Lambda(..., arguments={...}) or keyword arguments of a TFOpLambda could change the ReLU
    # (alpha, max_value, threshold), so only the bare call counts.
    return (fn is not None and any(fn is f for f in _RELU_FUNCTIONS) and not getattr(layer, "arguments", None)
            and all(not node.call_kwargs or set(node.call_kwargs) <= {"name"} for node in layer._inbound_nodes))


def relu_layers(model, skip_non_relu=False):
    """The layers of ``model`` that apply a plain ReLU, in graph order.

    Raises a :class:`KerasPruneError` naming the first layer with a hidden non-ReLU activation (a
    separate activation layer, or one fused into Dense/Conv) unless ``skip_non_relu``: the PSP
    state z > 0 is only meaningful for ReLU. Activations that produce a model output (a softmax
    head) are not hidden and are allowed.
    """
    if not getattr(model, "_is_graph_network", False):
        raise KerasPruneError(f"model {model.name!r} is subclassed; PSPs need a functional or "
                              "Sequential model (a graph whose ReLU inputs are tensors)")
    outputs = {id(t) for t in model.outputs}
    found, opaque = [], []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise KerasPruneError(f"layer {layer.name!r} is a nested model; build the model as one flat "
                                  "functional graph to read its PSPs")
        if _is_plain_relu(layer):
            found.append(layer)
            continue
        is_output = any(id(t) in outputs for node in layer._inbound_nodes
                        for t in tf.nest.flatten(node.output_tensors))
        fused = getattr(layer, "activation", None)
        kind = type(layer).__name__
        op = _op_function(layer)
        if op is not None:
            fused = op if _activation_name(op) in _OTHER_ACTIVATIONS or any(op is f for f in _RELU_FUNCTIONS) else None
            if fused is None and (kind == "Lambda" or _activation_name(op) in _MAYBE_ACTIVATIONS):
                opaque.append(layer.name)
        non_relu = (kind in _ACTIVATION_LAYERS or
                    (fused is not None and _activation_name(fused) not in _LINEAR))
        if non_relu and not is_output and not skip_non_relu:
            what = _activation_name(fused) if fused is not None else kind
            hint = (" fused into the layer (keep ReLU as its own layer)"
                    if not isinstance(layer, keras.layers.Activation) and fused is not None and op is None
                    else "")
            raise KerasPruneError(f"layer {layer.name!r} ({kind}) has a non-ReLU or fused activation "
                                  f"{what!r}{hint}; PSP analysis needs separate ReLU layers "
                                  "(pass skip_non_relu=True to ignore such layers)")
    if not found:
        raise KerasPruneError(f"model {model.name!r} has no ReLU layer: nothing to analyse")
    if opaque:
        warnings.warn(f"PSP analysis cannot tell whether the layers {opaque} of model {model.name!r} "
                      "(Lambda, or ops such as tf.maximum) apply an activation: a ReLU written that way is "
                      "not analysed (use a ReLU layer or tf.nn.relu directly)", stacklevel=3)
    return found


def psp_model(model, skip_non_relu=False):
    """A model returning ``[logits, z_1, ..., z_L]``: the output of ``model`` and the input tensor
    of each of its ReLU layers, from the model's own graph (it shares the model's variables, so
    weights changed in place are seen). The ReLU layer names are in ``psp_layer_names(result)``."""
    if hasattr(model, PSP_LAYERS_ATTR):
        return model
    layers = relu_layers(model, skip_non_relu)
    if len(model.outputs) != 1:
        raise KerasPruneError(f"model {model.name!r} has {len(model.outputs)} outputs; expected one "
                              "(the logits)")
    outputs = [model.outputs[0]] + [layer.input for layer in layers]
    sub = keras.Model(model.inputs, outputs, name=f"{model.name}_psp")
    setattr(sub, PSP_LAYERS_ATTR, [layer.name for layer in layers])
    return sub


def psp_layer_names(sub_model):
    return list(getattr(sub_model, PSP_LAYERS_ATTR))


@dataclasses.dataclass
class PSPStats:
    """Sums and counts from one pass over a dataset; every reported number derives from these.

    ``positive[name]`` is ``[classes, units]``: examples of each class with ``z > 0``.
    ``positive[output_layer]`` counts the model's outputs (logits) ``> 0`` the same way; the output
    layer is not in ``layers`` (it is no PSP) and is used only by the reference entropy convention.
    ``pair_n11[name]`` is ``[classes, units, units]`` (exact) or ``[classes, pairs]`` (sampled, the
    pairs in ``pairs[name]`` as an ``[pairs, 2]`` index array).
    """

    layers: List[str]
    unit_shapes: Dict[str, Tuple[int, ...]]
    class_counts: np.ndarray
    sum_sq: Dict[str, float]
    positive: Dict[str, np.ndarray]
    pair_n11: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    pairs: Dict[str, Optional[np.ndarray]] = dataclasses.field(default_factory=dict)
    loss_sum: float = 0.0
    correct: float = 0.0
    output_layer: Optional[str] = None

    @property
    def examples(self):
        return float(self.class_counts.sum())

    @property
    def loss(self):
        """Mean cross-entropy of the logits (models output logits)."""
        return self.loss_sum / max(self.examples, 1)

    @property
    def error(self):
        return 1.0 - self.correct / max(self.examples, 1)

    def units(self, name):
        return int(np.prod(self.unit_shapes[name]))


def _output_name(sub, names):
    """Name of the layer producing the model's output (the key of its counts in ``positive``)."""
    history = getattr(sub.outputs[0], "_keras_history", None)
    name = history.layer.name if history is not None else "output"
    return f"{name}:output" if name in names else name


def _pair_sample(units, count, rng):
    """``count`` uniform pairs (i, j), i != j, drawn with replacement."""
    i = rng.integers(0, units, count)
    j = rng.integers(0, units - 1, count)
    j = j + (j >= i)
    return np.stack([i, j], axis=1)


def psp_statistics(model, dataset, num_classes=None, first_order=True, second_order=False,
                   max_exact_units=1024, pair_samples=20000, seed=0, skip_non_relu=False):
    """One pass of ``dataset`` (batches of ``(x, integer labels)``) through ``model``'s PSPs.

    Args:
      model: a ReLU Keras model (or a :func:`psp_model` of one). Runs in inference mode.
      num_classes: number of classes (default: the model's number of logits).
      first_order: count ``z > 0`` per neuron and class (needed by both entropies).
      second_order: also count joint states of pairs of neurons of a layer.
      max_exact_units: layers with at most this many units count all pairs exactly
        (``[classes, units, units]`` memory); wider layers sample ``pair_samples`` pairs.
      seed: seed of the pair sample.

    Returns:
      :class:`PSPStats`.
    """
    sub = psp_model(model, skip_non_relu)
    names = psp_layer_names(sub)
    num_classes = num_classes or int(sub.outputs[0].shape[-1])
    shapes = {n: tuple(int(d) for d in t.shape[1:]) for n, t in zip(names, sub.outputs[1:])}
    units = {n: int(np.prod(s)) for n, s in shapes.items()}
    output_name = _output_name(sub, names)
    output_units = int(np.prod(sub.outputs[0].shape[1:]))
    second_order = second_order and first_order
    rng = np.random.default_rng(seed)
    pairs = {}
    if second_order:
        for n in names:
            exact = units[n] <= max_exact_units
            pairs[n] = None if exact else _pair_sample(units[n], pair_samples, rng)
    pair_index = {n: tf.constant(p, tf.int32) for n, p in pairs.items() if p is not None}
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    def step(x, y):
        outs = sub(x, training=False)
        logits, zs = outs[0], outs[1:]
        y = tf.reshape(tf.cast(y, tf.int32), [-1])
        onehot = tf.one_hot(y, num_classes, dtype=tf.float32)
        result = {
            "class": tf.reduce_sum(onehot, 0),
            "loss": tf.reduce_sum(loss_fn(y, logits)),
            "correct": tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y),
                                             tf.float32)),
        }
        if first_order:  # the output layer's states, for the reference entropy convention
            on = tf.cast(tf.reshape(logits, [-1, output_units]) > 0, tf.float32)
            result["out_pos"] = tf.matmul(onehot, on, transpose_a=True)
        for i, (n, z) in enumerate(zip(names, zs)):
            z = tf.reshape(tf.cast(z, tf.float32), [-1, units[n]])
            result[f"sq{i}"] = tf.reduce_sum(tf.square(z))
            if not first_order:
                continue
            s = tf.cast(z > 0, tf.float32)
            result[f"pos{i}"] = tf.matmul(onehot, s, transpose_a=True)
            if not second_order:
                continue
            if n in pair_index:
                a = tf.gather(s, pair_index[n][:, 0], axis=1)
                b = tf.gather(s, pair_index[n][:, 1], axis=1)
                result[f"n11_{i}"] = tf.matmul(onehot, a * b, transpose_a=True)
            else:
                parts = tf.dynamic_partition(s, y, num_classes)
                result[f"n11_{i}"] = tf.stack([tf.matmul(p, p, transpose_a=True) for p in parts])
        return result

    strategy = sub.distribute_strategy
    # One compiled step per configuration, kept on the sub-model: a grid evaluates the same
    # configuration hundreds of times, and retracing each time would dominate small evaluations.
    cache = sub.__dict__.setdefault("_kerasprune_psp_steps", {})
    pair_key = tuple((n, p.tobytes()) for n, p in sorted(pairs.items()) if p is not None)
    key = (num_classes, first_order, second_order, pair_key)
    if key not in cache:
        cache[key] = tf.function(lambda x, y: strategy.run(step, args=(x, y)), reduce_retracing=True)
    compiled = cache[key]
    totals = {}
    for x, y in strategy.experimental_distribute_dataset(dataset):
        per_replica = compiled(x, y)
        for key, value in per_replica.items():
            value = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy()
            totals[key] = totals[key] + value if key in totals else value.astype(np.float64)
    if not totals:
        raise KerasPruneError("the dataset is empty: no PSP statistics")
    absent = np.flatnonzero(totals["class"] == 0)
    if absent.size:  # the entropies sum over classes: fewer classes, smaller entropies
        warnings.warn(f"classes {absent.tolist()} have no example in the PSP data; the PSP-entropies "
                      "sum over the other classes only, so they do not compare with values over all "
                      f"{num_classes} classes", stacklevel=2)
    positive = {n: totals[f"pos{i}"] for i, n in enumerate(names)} if first_order else {}
    if first_order:
        positive[output_name] = totals["out_pos"]
        shapes[output_name] = tuple(int(d) for d in sub.outputs[0].shape[1:])
    return PSPStats(
        layers=names, unit_shapes=shapes, class_counts=totals["class"],
        sum_sq={n: float(totals[f"sq{i}"]) for i, n in enumerate(names)}, positive=positive,
        pair_n11={n: totals[f"n11_{i}"] for i, n in enumerate(names)} if second_order else {},
        pairs=pairs, loss_sum=float(totals["loss"]), correct=float(totals["correct"]),
        output_layer=output_name if first_order else None)


def psp_l2(stats):
    """``{"per_layer": {name: mean z^2}, "overall": mean z^2 over all PSP values}`` (Fig. 3)."""
    per_layer = {n: stats.sum_sq[n] / (stats.examples * stats.units(n)) for n in stats.layers}
    total_values = stats.examples * sum(stats.units(n) for n in stats.layers)
    return {"per_layer": per_layer, "overall": sum(stats.sum_sq.values()) / total_values}


def binary_entropy(p, clamp=None):
    """``h(p) = -p log2 p - (1-p) log2 (1-p)`` elementwise, with ``0 log 0 = 0``; with ``clamp``
    ``(lo, hi)``, ``p`` and ``1 - p`` are each clipped to it first (the authors' code, with
    :data:`REFERENCE_CLAMP`)."""
    p = np.asarray(p, np.float64)
    if clamp is not None:
        return _plogp(np.clip(p, *clamp)) + _plogp(np.clip(1.0 - p, *clamp))
    return _plogp(p) + _plogp(1.0 - p)


def _plogp(q):
    """``-q log2 q`` with the limit 0 at q = 0."""
    q = np.asarray(q, np.float64)
    out = np.zeros_like(q)
    positive = q > 0
    out[positive] = -q[positive] * np.log2(q[positive])
    return out


def _present(stats):
    return stats.class_counts > 0


def _check_convention(convention):
    if convention not in PSP_CONVENTIONS:
        raise KerasPruneError(f"unknown PSP-entropy convention {convention!r}; valid names are: "
                              f"{', '.join(PSP_CONVENTIONS)}")


def neuron_class_entropy(stats, name, per_channel=False, convention="kerasprune"):
    """``H(n|c)`` as ``[units, classes]`` (or ``[channels, classes]``) for layer ``name``; absent
    classes get 0. ``convention="reference"`` clamps p as the authors' code does."""
    _check_convention(convention)
    present = _present(stats)
    counts = stats.positive[name]  # [C, U]
    totals = stats.class_counts
    if per_channel:
        channels = stats.unit_shapes[name][-1]
        positions = stats.units(name) // channels
        counts = counts.reshape(counts.shape[0], positions, channels).sum(axis=1)
        totals = totals * positions
    p = np.divide(counts, np.where(present, totals, 1)[:, None])
    clamp = REFERENCE_CLAMP if convention == "reference" else None
    return np.where(present[:, None], binary_entropy(p, clamp), 0.0).T


def psp_entropy_first_order(stats, per_channel=False, convention="kerasprune"):
    """First-order PSP-entropy (eq. 4-5) from :func:`psp_statistics` output.

    ``convention``: ``"kerasprune"`` (hidden ReLU inputs, ``0 log 0 = 0``) or ``"reference"`` (the
    authors' code: the output layer counts too, and p is clamped; see the module docstring).

    Returns ``{"per_neuron": {layer: H(n) shaped like the layer's units (or [channels])},
    "neuron_class": {layer: [units, classes] H(n|c)}, "per_layer": {layer: mean H(n)},
    "overall": mean H(n) over every neuron counted, "convention": convention}``.
    """
    _check_convention(convention)
    if not stats.positive:
        raise KerasPruneError("these PSP statistics have no z > 0 counts (first_order=False)")
    layers = list(stats.layers)
    if convention == "reference":
        if stats.output_layer is None:
            raise KerasPruneError("these PSP statistics have no output-layer counts, which the reference "
                                  "convention needs (recompute them with psp_statistics)")
        layers.append(stats.output_layer)
    per_neuron, matrices = {}, {}
    for n in layers:
        h = neuron_class_entropy(stats, n, per_channel, convention)
        matrices[n] = h
        per_neuron[n] = h.sum(axis=1) if per_channel else h.sum(axis=1).reshape(stats.unit_shapes[n])
    everything = np.concatenate([v.ravel() for v in per_neuron.values()])
    return {"per_neuron": per_neuron, "neuron_class": matrices,
            "per_layer": {n: float(v.mean()) for n, v in per_neuron.items()},
            "overall": float(everything.mean()), "convention": convention}


def _joint_entropy(n11, n1i, n1j, total):
    """Entropy (bits) of the 4-valued joint state from counts; arrays broadcast."""
    n10 = n1i - n11
    n01 = n1j - n11
    n00 = total - n1i - n1j + n11
    return sum(_plogp(np.clip(c, 0, None) / total) for c in (n11, n10, n01, n00))


def psp_entropy_second_order(stats):
    """Second-order PSP-entropy: mean over pairs of neurons of a layer of ``H(i,j) = sum_c H(i,j|c)``.

    Returns ``{"per_layer": {layer: mean}, "per_layer_stderr": {layer: 0 if exact else the standard
    error of the sampled mean}, "per_layer_pairs": {layer: number of pairs i < j},
    "exact": {layer: bool}, "overall": mean over all pairs, "overall_stderr": ...}``.
    """
    if not stats.pair_n11:
        raise KerasPruneError("these PSP statistics have no pair counts (second_order=False)")
    present = _present(stats)
    means, errors, npairs, exact = {}, {}, {}, {}
    for n in stats.layers:
        u = stats.units(n)
        npairs[n] = u * (u - 1) // 2
        pos, n11 = stats.positive[n], stats.pair_n11[n]
        sampled = stats.pairs.get(n)
        exact[n] = sampled is None
        if npairs[n] == 0:
            means[n], errors[n] = 0.0, 0.0
            continue
        if sampled is None:
            h = np.zeros((u, u))
            for c in np.flatnonzero(present):
                h += _joint_entropy(n11[c], pos[c][:, None], pos[c][None, :], stats.class_counts[c])
            upper = h[np.triu_indices(u, k=1)]
            means[n], errors[n] = float(upper.mean()), 0.0
        else:
            h = np.zeros(len(sampled))
            for c in np.flatnonzero(present):
                h += _joint_entropy(n11[c], pos[c][sampled[:, 0]], pos[c][sampled[:, 1]],
                                    stats.class_counts[c])
            means[n] = float(h.mean())
            errors[n] = float(h.std(ddof=1) / np.sqrt(len(h))) if len(h) > 1 else float("nan")
    total = sum(npairs.values())
    weights = {n: npairs[n] / total for n in stats.layers} if total else {n: 0.0 for n in stats.layers}
    overall = sum(weights[n] * means[n] for n in stats.layers)
    overall_err = float(np.sqrt(sum((weights[n] * errors[n]) ** 2 for n in stats.layers)))
    return {"per_layer": means, "per_layer_stderr": errors, "per_layer_pairs": npairs, "exact": exact,
            "overall": float(overall), "overall_stderr": overall_err}
