"""The plane through two solutions and maps of the loss and PSP measures on it (paper Fig. 2a, 3, 4).

Coordinates ``(a, b)`` name the weights ``G + a d1 + b d2``: origin G (the gradual/LOBSTER solution),
``d1 = 1S - G`` (so ``(1, 0)`` is the one-shot solution), ``d2`` a seeded Gaussian direction made
orthogonal to ``d1`` (Gram-Schmidt on the flattened trainable weights) and scaled to ``|d1|``, as in
Goodfellow et al. / Li et al. Options:
- ``filter_normalize``: before orthogonalisation, each filter of ``d2`` (a slice along the *last*
  axis of a kernel: Keras is channels-last) is rescaled to the norm of G's filter (Li et al.); 1-D
  variables (biases, BN) get no random component, as Li et al.'s default ignores them. The whole
  ``d2`` is then scaled to ``|d1|`` as without the option, so the filters' norms are proportional
  to G's (Li et al.'s shape), not equal to them: ``b`` is in units of ``|d1|`` either way.
- ``support="union"`` (the default): ``d2`` is zero on prunable entries that are zero in both G and
  1-S, so the plane stays in the union of the two sparse supports (``d1`` already is) and no pruned
  weight or dead neuron comes back off the G-1-S line; ``support="all"`` lets ``d2`` use every
  weight (the plain Goodfellow/Li plane, which revives them).
Non-trainable state (batch-norm moving statistics) is not a parameter: it follows the first
coordinate, ``G + clip(a, 0, 1) (1S - G)``, so ``(1, 0)`` is exactly 1-S and variances stay positive.

Grid points are evaluated by assigning the weights in place (one compiled assignment, no model
rebuild), and :func:`evaluate_grid` can save its progress so a killed run resumes.
"""
import dataclasses
import os
from typing import List, Optional

import numpy as np

from kerasprune import runs, sparsity
from kerasprune._keras import keras, tf
from kerasprune.analysis import psp as psp_lib
from kerasprune.errors import KerasPruneError

METRICS = ("train_loss", "test_error", "psp_l2", "psp_entropy_1", "psp_entropy_2")


@dataclasses.dataclass
class Plane:
    """Per-weight arrays of the origin and the two directions, in ``model.weights`` order."""

    names: List[str]
    trainable: List[bool]
    origin: List[np.ndarray]
    d1: List[np.ndarray]
    d2: List[np.ndarray]

    def point(self, a, b):
        """The weight arrays at ``(a, b)``."""
        clipped = min(max(a, 0.0), 1.0)
        return [o + a * x + b * y if t else o + clipped * x
                for o, x, y, t in zip(self.origin, self.d1, self.d2, self.trainable)]

    def norms(self):
        flat = lambda ds: np.sqrt(sum(float(np.sum(np.square(d))) for d, t in zip(ds, self.trainable) if t))
        dot = sum(float(np.sum(x * y)) for x, y, t in zip(self.d1, self.d2, self.trainable) if t)
        return {"d1": flat(self.d1), "d2": flat(self.d2), "d1_dot_d2": dot}


def _matching_weights(model_g, model_s):
    wg, ws = model_g.weights, model_s.weights
    if len(wg) != len(ws) or any(a.shape != b.shape for a, b in zip(wg, ws)):
        raise KerasPruneError(f"models {model_g.name!r} and {model_s.name!r} do not have the same "
                              "architecture (weights differ in number or shape)")
    return wg, ws


def make_plane(model_g, model_s, seed=0, filter_normalize=False, support="union"):
    """The :class:`Plane` through ``model_g`` (origin) and ``model_s`` (at ``(1, 0)``)."""
    if support not in ("all", "union"):
        raise KerasPruneError(f"support must be 'all' or 'union', got {support!r}")
    wg, ws = _matching_weights(model_g, model_s)
    trainable_refs = {v.ref() for v in model_g.trainable_weights}
    prunable_refs = {v.ref() for _, v in sparsity.prunable_variables(model_g)}
    rng = np.random.default_rng(seed)
    origin = [v.numpy().astype(np.float64) for v in wg]
    d1 = [s.numpy().astype(np.float64) - o for s, o in zip(ws, origin)]
    trainable = [v.ref() in trainable_refs for v in wg]
    d2, allowed = [], []  # allowed: entries where d2 may be nonzero
    for v, o, s, t in zip(wg, origin, ws, trainable):
        ok = np.full(o.shape, bool(t and not (filter_normalize and o.ndim <= 1)))
        if ok.any() and support == "union" and v.ref() in prunable_refs:
            ok &= (o != 0) | (s.numpy() != 0)
        r = rng.standard_normal(o.shape) * ok
        if filter_normalize and ok.any():
            axes = tuple(range(o.ndim - 1))
            scale = np.sqrt(np.sum(o ** 2, axis=axes)) / (np.sqrt(np.sum(r ** 2, axis=axes)) + 1e-10)
            r = r * scale
        d2.append(r)
        allowed.append(ok)
    flat1 = np.concatenate([d.ravel() for d, t in zip(d1, trainable) if t])
    flat2 = np.concatenate([d.ravel() for d, t in zip(d2, trainable) if t])
    ok = np.concatenate([a.ravel() for a, t in zip(allowed, trainable) if t])
    n1 = np.linalg.norm(flat1)
    if n1 == 0:
        raise KerasPruneError("the two models have identical trainable weights: no plane through them")
    # Gram-Schmidt against d1's part on the allowed entries: d2 stays zero elsewhere, and since it
    # is zero there, orthogonality to that part is orthogonality to d1.
    d1_allowed = flat1 * ok
    if np.dot(d1_allowed, d1_allowed) > 0:
        flat2 = flat2 - np.dot(flat2, d1_allowed) / np.dot(d1_allowed, d1_allowed) * d1_allowed
    if np.linalg.norm(flat2) == 0:
        raise KerasPruneError("no random direction orthogonal to 1-S minus G is left on the allowed weights")
    flat2 *= n1 / np.linalg.norm(flat2)
    sizes = [d.size for d, t in zip(d2, trainable) if t]
    parts = iter(np.split(flat2, np.cumsum(sizes)[:-1]))
    d2 = [next(parts).reshape(d.shape) if t else d for d, t in zip(d2, trainable)]
    return Plane([v.name for v in wg], trainable, origin, d1, d2)


class PlaneSetter:
    """Sets ``model``'s weights to a point of ``plane`` in place, with one compiled assignment.

    The plane's arrays live in non-trainable variables created in the model's strategy scope.
    """

    def __init__(self, model, plane):
        self.variables = model.weights
        if len(self.variables) != len(plane.origin):
            raise KerasPruneError("the plane was made for another architecture")
        with model.distribute_strategy.scope():
            make = lambda arrays, tag: [tf.Variable(a.astype(np.float32), trainable=False,
                                                    name=f"plane_{tag}_{i}")
                                        for i, a in enumerate(arrays)]
            self._origin, self._d1, self._d2 = (make(plane.origin, "o"), make(plane.d1, "d1"),
                                                make(plane.d2, "d2"))
        self._trainable = plane.trainable

        @tf.function
        def assign(a, b):
            clipped = tf.clip_by_value(a, 0.0, 1.0)
            for var, o, x, y, t in zip(self.variables, self._origin, self._d1, self._d2, self._trainable):
                var.assign(o + a * x + b * y if t else o + clipped * x)

        self._assign = assign

    def set(self, a, b):
        self._assign(tf.constant(a, tf.float32), tf.constant(b, tf.float32))


def grid_coordinates(alpha_range=(-0.5, 1.5), beta_range=(-1.0, 1.0), points=21):
    """``(alphas, betas)``: ``points`` evenly spaced values on each axis (a square grid)."""
    return np.linspace(*alpha_range, points), np.linspace(*beta_range, points)


def evaluate_point(sub_model, train_data, test_data, second_order=True, max_exact_units=1024,
                   pair_samples=2000, seed=0, psp_convention="kerasprune", train_loss="mean", loss_batch=100,
                   psp_l2="mean", entropy_aggregate="neurons"):
    """The :data:`METRICS` of the model's current weights: training loss and PSP measures on
    ``train_data``, error on ``test_data``. The conventions: ``psp_convention`` and
    ``entropy_aggregate`` of the first-order entropy, ``train_loss`` (with ``loss_batch``) of the
    loss, ``psp_l2`` of the PSP L2 (see :mod:`kerasprune.pure.psp`)."""
    stats = psp_lib.psp_statistics(sub_model, train_data, second_order=second_order,
                                   max_exact_units=max_exact_units, pair_samples=pair_samples, seed=seed,
                                   example_losses=train_loss == "per-batch")
    test = psp_lib.psp_statistics(sub_model, test_data, first_order=False)
    entropy = psp_lib.psp_entropy_first_order(stats, convention=psp_convention, aggregate=entropy_aggregate)
    out = {"train_loss": psp_lib.training_loss(stats, train_loss, loss_batch), "test_error": test.error,
           "psp_l2": psp_lib.psp_l2(stats, psp_l2)["overall"], "psp_entropy_1": entropy["overall"]}
    out["psp_entropy_2"] = (psp_lib.psp_entropy_second_order(stats)["overall"] if second_order
                            else float("nan"))
    return out


def evaluate_grid(model_g, plane, alphas, betas, train_data, test_data, second_order=True,
                  max_exact_units=1024, pair_samples=2000, seed=0, state_path=None, progress=None,
                  psp_convention="kerasprune", train_loss="mean", loss_batch=100, psp_l2="mean",
                  entropy_aggregate="neurons"):
    """Evaluates :data:`METRICS` at every ``(alpha, beta)``; returns ``{metric: [len(betas),
    len(alphas)] array}`` (rows are betas, for ``contour(alphas, betas, map)``). The conventions
    are :func:`evaluate_point`'s.

    ``model_g``'s weights are changed in place during the evaluation and restored at the end.
    With ``state_path`` (a ``.npz``), progress is saved after every point (atomically, by the
    chief) and already computed points are skipped when the same grid is evaluated again.
    """
    from kerasprune.distribute import is_chief

    sub = psp_lib.psp_model(model_g)
    setter = PlaneSetter(model_g, plane)
    shape = (len(betas), len(alphas))
    maps = {m: np.full(shape, np.nan) for m in METRICS}
    done = np.zeros(shape, bool)
    key = np.concatenate([np.asarray(alphas, np.float64), np.asarray(betas, np.float64)])
    if state_path and os.path.isfile(state_path):
        with np.load(state_path) as saved:
            if saved["key"].shape == key.shape and np.allclose(saved["key"], key):
                done = saved["done"]
                maps = {m: saved[m] for m in METRICS}
    try:
        for i, b in enumerate(betas):
            for j, a in enumerate(alphas):
                if done[i, j]:
                    if progress is not None:
                        progress.add(1)
                    continue
                setter.set(float(a), float(b))
                values = evaluate_point(sub, train_data, test_data, second_order, max_exact_units,
                                        pair_samples, seed, psp_convention, train_loss=train_loss,
                                        loss_batch=loss_batch, psp_l2=psp_l2, entropy_aggregate=entropy_aggregate)
                for m in METRICS:
                    maps[m][i, j] = values[m]
                done[i, j] = True
                if state_path and is_chief():
                    _save_state(state_path, key, done, maps)
                if progress is not None:
                    progress.add(1, values=[("loss", values["train_loss"]), ("err", values["test_error"])])
    finally:
        setter.set(0.0, 0.0)
    return maps


def _save_state(path, key, done, maps):
    with runs.atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, key=key, done=done, **maps)
