"""PSP statistics to numbers: PSP L2 and the PSP-entropies of both orders, in NumPy.

The definitions (the paper's eq. 2-5, our second order, the two first-order conventions) are in
:mod:`kerasprune.analysis.psp` and docs/analysis.md. The Keras 2 (:mod:`kerasprune.analysis.psp`)
and Keras 3 (:mod:`kerasprune.keras3.analysis`) captures both reduce a dataset to the sums and
counts of :class:`PSPStats`; everything reported is computed from those here, so the two sides give
the same numbers from the same counts.
"""
import dataclasses
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np

from kerasprune.errors import KerasPruneError

PSP_CONVENTIONS = ("kerasprune", "reference")
# The unit conventions of the reported numbers (docs/analysis.md, "The paper's units"); the first is the default.
TRAIN_LOSS_CONVENTIONS = ("mean", "per-batch")  # mean over examples, or the PSP code's batch means / N
PSP_L2_CONVENTIONS = ("mean", "sum-units")  # mean z^2 over hidden values, or the PSP code's sum over units
ENTROPY_AGGREGATES = ("neurons", "layers")  # first-order "overall": mean over neurons, or over layer means
REFERENCE_CLAMP = (1e-4, 0.9999)  # of p = P[z > 0 | c] in the authors' code
PSP_LAYERS_ATTR = "_kerasprune_psp_layers"  # where a PSP sub-model keeps the names of its ReLUs


@dataclasses.dataclass
class PSPStats:
    """Sums and counts from one pass over a dataset; every reported number derives from these.

    ``positive[name]`` is ``[classes, units]``: examples of each class with ``z > 0``.
    ``positive[output_layer]`` counts the model's outputs (logits) ``> 0`` the same way (first order
    only) and ``output_sum_sq`` sums their squares; the output layer is not in ``layers`` (it is no PSP)
    and is used only by the reference entropy convention and the ``sum-units`` PSP L2.
    ``example_losses`` holds the per-example losses in data order when they were asked for (the
    ``per-batch`` training loss needs them).
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
    output_sum_sq: Optional[float] = None
    example_losses: Optional[np.ndarray] = None

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

    def positions(self, name):
        """Units per channel (the last axis): a conv layer's spatial positions, 1 for a dense layer."""
        shape = self.unit_shapes[name]
        return self.units(name) // shape[-1] if shape else 1


def _pair_sample(units, count, rng):
    """``count`` uniform pairs (i, j), i != j, drawn with replacement."""
    i = rng.integers(0, units, count)
    j = rng.integers(0, units - 1, count)
    j = j + (j >= i)
    return np.stack([i, j], axis=1)



LINEAR_ACTIVATIONS = ("linear", None)  # names of activations that leave a layer linear


def activation_name(fn):
    """``relu``, ``softmax``...: the name of an activation function (or of its class)."""
    return getattr(fn, "__name__", type(fn).__name__)


def find_relus(model_name, operations, is_nested_model, is_plain_relu, hidden_activation, skip_non_relu):
    """The ``operations`` (a model's layers, in graph order) that apply a plain ReLU.

    One-line errors for a nested model, for a model without ReLU and, unless ``skip_non_relu``, for an
    operation whose ``hidden_activation(op)`` names a hidden non-ReLU activation (None: there is none),
    since the PSP state z > 0 is only meaningful for ReLU.
    """
    found = []
    for op in operations:
        if is_nested_model(op):
            raise KerasPruneError(f"layer {op.name!r} is a nested model; build the model as one flat "
                                  "functional graph to read its PSPs")
        if is_plain_relu(op):
            found.append(op)
            continue
        what = hidden_activation(op)
        if what is not None and not skip_non_relu:
            raise KerasPruneError(f"layer {op.name!r} ({type(op).__name__}) has a non-ReLU or fused activation "
                                  f"{what}; PSP analysis needs separate ReLU layers (pass skip_non_relu=True to "
                                  "ignore such layers)")
    if not found:
        raise KerasPruneError(f"model {model_name!r} has no ReLU layer: nothing to analyse")
    return found


def psp_layer_names(sub_model):
    """The names of the ReLUs whose inputs a PSP sub-model (``psp_model``) returns after the logits."""
    return list(getattr(sub_model, PSP_LAYERS_ATTR))


@dataclasses.dataclass
class CapturePlan:
    """What one PSP pass records, from the sub-model's output shapes (see :func:`capture_plan`)."""

    names: List[str]  # the ReLUs, in the sub-model's output order
    shapes: Dict[str, Tuple[int, ...]]  # unit shape of each ReLU's input
    units: Dict[str, int]
    num_classes: int
    first_order: bool
    second_order: bool  # only with first_order
    pairs: Dict[str, Optional[np.ndarray]]  # see pair_plan
    output_name: str  # key of the logits' counts in PSPStats.positive
    output_shape: Tuple[int, ...]  # unit shape of the logits

    def stats(self, totals):
        """The :class:`PSPStats` of a pass whose summed batch totals are ``totals``."""
        return stats_from_totals(totals, self.names, self.shapes, self.num_classes, self.first_order,
                                 self.second_order, self.pairs, self.output_name, self.output_shape, stacklevel=4)


def capture_plan(names, output_shapes, output_layer, num_classes=None, first_order=True, second_order=False,
                 max_exact_units=1024, pair_samples=20000, seed=0):
    """The :class:`CapturePlan` of a sub-model with outputs ``[logits, z_1...]`` of shapes ``output_shapes``
    (batch first) for the ReLUs ``names``; ``output_layer`` names the logits' layer. Arguments as
    ``psp_statistics``; ``num_classes`` defaults to the number of logits."""
    shapes = {n: tuple(int(d) for d in shape[1:]) for n, shape in zip(names, output_shapes[1:])}
    units = {n: int(np.prod(s)) for n, s in shapes.items()}
    second_order = second_order and first_order
    return CapturePlan(
        names=names, shapes=shapes, units=units, num_classes=num_classes or int(output_shapes[0][-1]),
        first_order=first_order, second_order=second_order,
        pairs=pair_plan(names, units, second_order, max_exact_units, pair_samples, seed),
        output_name=f"{output_layer}:output" if output_layer in names else output_layer,
        output_shape=tuple(int(d) for d in output_shapes[0][1:]))


def pair_plan(names, units, second_order, max_exact_units, pair_samples, seed):
    """``{layer: None (all pairs, exact) or [pairs, 2] sampled indices}`` for the second order
    (empty without it): layers wider than ``max_exact_units`` get ``pair_samples`` seeded pairs."""
    rng = np.random.default_rng(seed)
    pairs = {}
    if second_order:
        for n in names:
            exact = units[n] <= max_exact_units
            pairs[n] = None if exact else _pair_sample(units[n], pair_samples, rng)
    return pairs


def batch_totals(logits, zs, y, names, num_classes, first_order, second_order, pairs):
    """The sums and counts of one batch, in NumPy, keyed as :func:`stats_from_totals` reads them.

    ``logits`` is ``[batch, outputs]``, ``zs`` the PSP tensors of ``names`` (any unit shape), ``y``
    the integer labels. The Keras 2 capture computes the same keys with TensorFlow ops on device.
    """
    y = np.asarray(y).reshape(-1).astype(np.int64)
    logits = np.asarray(logits, np.float64).reshape(len(y), -1)
    onehot = np.eye(num_classes)[y]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    out = {"class": onehot.sum(0),
           "loss": float(np.sum(log_norm - shifted[np.arange(len(y)), y])),
           "correct": float(np.sum(np.argmax(logits, -1) == y)),
           "out_sq": float(np.sum(np.square(logits)))}
    if first_order:
        out["out_pos"] = onehot.T @ (logits > 0)
    for i, (n, z) in enumerate(zip(names, zs)):
        z = np.asarray(z, np.float32).reshape(len(y), -1)
        out[f"sq{i}"] = float(np.sum(np.square(z, dtype=np.float64)))
        if not first_order:
            continue
        s = (z > 0).astype(np.float64)
        out[f"pos{i}"] = onehot.T @ s
        if not second_order:
            continue
        if pairs.get(n) is not None:
            out[f"n11_{i}"] = onehot.T @ (s[:, pairs[n][:, 0]] * s[:, pairs[n][:, 1]])
        else:
            out[f"n11_{i}"] = np.stack([s[y == c].T @ s[y == c] for c in range(num_classes)])
    return out


def add_totals(totals, batch):
    """Adds one batch's sums and counts into ``totals`` (float64), in place."""
    for key, value in batch.items():
        value = np.asarray(value, np.float64)
        totals[key] = totals[key] + value if key in totals else value


def stats_from_totals(totals, names, shapes, num_classes, first_order, second_order, pairs, output_name,
                      output_shape, stacklevel=3):
    """The :class:`PSPStats` of a whole pass from its summed batch totals (see :func:`batch_totals`);
    ``stacklevel`` points the warning about absent classes at the caller of ``psp_statistics``."""
    if not totals:
        raise KerasPruneError("the dataset is empty: no PSP statistics")
    absent = np.flatnonzero(totals["class"] == 0)
    if absent.size:  # the entropies sum over classes: fewer classes, smaller entropies
        warnings.warn(f"classes {absent.tolist()} have no example in the PSP data; the PSP-entropies "
                      "sum over the other classes only, so they do not compare with values over all "
                      f"{num_classes} classes", stacklevel=stacklevel)
    positive = {n: totals[f"pos{i}"] for i, n in enumerate(names)} if first_order else {}
    if first_order:
        positive[output_name] = totals["out_pos"]
    shapes[output_name] = tuple(output_shape)
    losses = totals.get("losses")
    return PSPStats(
        layers=names, unit_shapes=shapes, class_counts=totals["class"],
        sum_sq={n: float(totals[f"sq{i}"]) for i, n in enumerate(names)}, positive=positive,
        pair_n11={n: totals[f"n11_{i}"] for i, n in enumerate(names)} if second_order else {},
        pairs=pairs, loss_sum=float(totals["loss"]), correct=float(totals["correct"]),
        output_layer=output_name, output_sum_sq=float(totals["out_sq"]) if "out_sq" in totals else None,
        example_losses=None if losses is None else np.asarray(losses, np.float64))


def _check_choice(kind, value, allowed):
    if value not in allowed:
        raise KerasPruneError(f"unknown {kind} convention {value!r}; valid names are: {', '.join(allowed)}")


def per_batch_loss(losses, batch):
    """``(1/N) sum_b mean_{i in b} loss_i`` over consecutive batches of ``batch`` examples (the last
    may be shorter): the PSP code's training loss (batch means summed, divided by the dataset size)."""
    losses = np.asarray(losses, np.float64).ravel()
    if losses.size == 0 or batch < 1:
        raise KerasPruneError(f"per-batch loss needs examples and a batch size >= 1, got {losses.size} and {batch}")
    starts = np.arange(0, losses.size, batch)
    sizes = np.diff(np.append(starts, losses.size))
    return float(np.sum(np.add.reduceat(losses, starts) / sizes) / losses.size)


def training_loss(stats, convention="mean", batch=100):
    """The training loss of ``stats`` in one of :data:`TRAIN_LOSS_CONVENTIONS`: ``"mean"`` over
    examples (``stats.loss``), or ``"per-batch"`` (:func:`per_batch_loss` with ``batch``, which needs
    ``psp_statistics(..., example_losses=True)``)."""
    _check_choice("training-loss", convention, TRAIN_LOSS_CONVENTIONS)
    if convention == "mean":
        return stats.loss
    if stats.example_losses is None:
        raise KerasPruneError("these PSP statistics have no per-example losses, which the per-batch loss "
                              "needs (psp_statistics(..., example_losses=True))")
    return per_batch_loss(stats.example_losses, batch)


def psp_l2(stats, convention="mean"):
    """PSP L2 (Fig. 3) in one of :data:`PSP_L2_CONVENTIONS`: ``{"per_layer": {...}, "overall": ...}``.

    ``"mean"``: mean z^2 per hidden layer and over all hidden PSP values. ``"sum-units"`` (the PSP
    code's, enzotarta/PSP): per unit (a conv layer: per channel, averaged over positions) E_x[z^2],
    summed over the units of each hidden layer and of the output layer (its logits, keyed by
    ``stats.output_layer``); ``overall`` is the sum over those layers.
    """
    _check_choice("PSP L2", convention, PSP_L2_CONVENTIONS)
    if convention == "sum-units":
        if stats.output_sum_sq is None or stats.output_layer is None:
            raise KerasPruneError("these PSP statistics have no sum of the logits' squares, which the sum-units "
                                  "PSP L2 needs (recompute them with psp_statistics)")
        sums = dict(stats.sum_sq, **{stats.output_layer: stats.output_sum_sq})
        per_layer = {n: sums[n] / (stats.examples * stats.positions(n)) for n in [*stats.layers, stats.output_layer]}
        return {"per_layer": per_layer, "overall": float(sum(per_layer.values()))}
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


def psp_entropy_first_order(stats, per_channel=False, convention="kerasprune", aggregate="neurons"):
    """First-order PSP-entropy (eq. 4-5) from :func:`psp_statistics` output.

    ``convention``: ``"kerasprune"`` (hidden ReLU inputs, ``0 log 0 = 0``) or ``"reference"`` (the
    authors' code: the output layer counts too, and p is clamped; see the module docstring).
    ``aggregate`` (:data:`ENTROPY_AGGREGATES`): ``overall`` is the mean over every neuron counted
    (``"neurons"``) or the mean of the per-layer means (``"layers"``); the authors' code stops at
    per-neuron values, so this is an undecided convention.

    Returns ``{"per_neuron": {layer: H(n) shaped like the layer's units (or [channels])},
    "neuron_class": {layer: [units, classes] H(n|c)}, "per_layer": {layer: mean H(n)},
    "overall": see ``aggregate``, "convention": convention, "aggregate": aggregate}``.
    """
    _check_convention(convention)
    _check_choice("PSP-entropy aggregate", aggregate, ENTROPY_AGGREGATES)
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
    per_layer = {n: float(v.mean()) for n, v in per_neuron.items()}
    if aggregate == "layers":
        overall = float(np.mean(list(per_layer.values())))
    else:
        overall = float(np.concatenate([v.ravel() for v in per_neuron.values()]).mean())
    return {"per_neuron": per_neuron, "neuron_class": matrices, "per_layer": per_layer,
            "overall": overall, "convention": convention, "aggregate": aggregate}


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
