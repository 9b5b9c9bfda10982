"""When LOBSTER prunes and how much: the plateau rule and the threshold search (no TensorFlow).

Both are pure so they can be tested against hand computations; the callbacks (Keras 2's
:mod:`kerasprune.lobster.callback`, Keras 3's :mod:`kerasprune.keras3.callback`) feed them
validation losses measured on the model.
"""
import dataclasses
import math
from typing import Callable, List, Optional, Tuple

import numpy as np


# LOBSTER's default settings, the paper code's (EIDOSlab/LOBSTER, LeNet): the one copy that the
# optimizers (Keras 2 and 3), the LobsterPruning callbacks and kerasprune.config.LobsterConfig read.
DEFAULT_LMBDA = 1e-4  # sensitivity regularisation strength
DEFAULT_PWE = 20  # plateau patience (epochs)
DEFAULT_TWT = 0.05  # admissible relative validation-loss increase per pruning
DEFAULT_GOOD_MARGIN = 0.01  # an epoch is good if val loss < (1 + margin) * best
DEFAULT_TOLERANCE = 0.05  # the threshold search's stop rule
DEFAULT_SEARCH_RULE = "reference"  # the authors' threshold search (docs/lobster.md)


@dataclasses.dataclass
class Plateau:
    """LOBSTER's plateau rule on the validation loss ``l``.

    An epoch is *good* if ``l < (1 + margin) * best``; a better loss (``l < best``) also becomes
    the new best (the caller keeps those weights). After ``patience`` consecutive non-good epochs
    the loss has plateaued: time to prune (the caller then calls :meth:`reset`).
    """

    patience: int = DEFAULT_PWE
    margin: float = DEFAULT_GOOD_MARGIN
    best: float = math.inf
    bad_epochs: int = 0

    def update(self, loss):
        """Returns ``(improved, plateaued)`` after an epoch with validation loss ``loss``."""
        improved = loss < self.best
        if loss < (1.0 + self.margin) * self.best:
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if improved:
            self.best = float(loss)
        return improved, self.bad_epochs >= self.patience

    def reset(self):
        """Forgets the best loss (after pruning, the next epoch starts a new level)."""
        self.best, self.bad_epochs = math.inf, 0


# The threshold-search rules (``--threshold-search``). ``reference`` is the authors' code
# (EIDOSlab/LOBSTER, ``thresholding/threshold_scheduler.py``), the default; ``conservative`` is
# kerasprune's first rule, kept because it never prunes at an untried threshold.
SEARCH_RULES = ("reference", "conservative")


@dataclasses.dataclass
class SearchResult:
    threshold: float  # cut everything with |w| < it
    loss: float  # validation loss with that cut (NaN under the reference rule: it is never evaluated)
    bound: float  # admissible loss bound B = l_val * (1 + twt)
    trials: List[Tuple[float, float]]  # every (T, loss) evaluated, in order


def start_interval(tensors, rule=DEFAULT_SEARCH_RULE):
    """``(T_min, T_mean, T_max)`` over the non-zero magnitudes of ``tensors``, where the search starts.

    ``reference``: ``tensors`` are the "weight" tensors (kernels, BatchNorm gammas; no biases), T_mean
    is the mean of their per-tensor means and T_min / T_max the extremes, as the authors' code.
    ``conservative``: every prunable tensor pooled into one mean. None when all are zero.
    """
    nonzero = [m[m > 0] for m in (np.abs(np.asarray(t, np.float64)).ravel() for t in tensors)]
    nonzero = [m for m in nonzero if m.size]
    if not nonzero:
        return None
    pooled = np.concatenate(nonzero)
    mean = float(np.mean([m.mean() for m in nonzero])) if rule == "reference" else float(pooled.mean())
    return float(pooled.min()), mean, float(pooled.max())


def search_threshold(loss_at: Callable[[float], float], magnitudes, val_loss, twt=DEFAULT_TWT,
                     tolerance=DEFAULT_TOLERANCE, max_steps=40, rule=DEFAULT_SEARCH_RULE, start=None) -> Optional[SearchResult]:
    """Bisection for a threshold ``T`` whose cut keeps the validation loss <= ``B``.

    Args:
      loss_at: ``T -> validation loss`` with every prunable parameter ``|w| < T`` set to zero (the
        caller restores the weights afterwards).
      magnitudes: the non-zero ``|w|`` of all prunable parameters (any shape).
      val_loss: validation loss of the weights being pruned; ``B = val_loss * (1 + twt)``.
      tolerance: the stop rule's fraction of ``B`` (see ``rule``).
      max_steps: safety cap on bisection steps.
      rule: ``reference`` (default) or ``conservative``:

        - ``reference``, the authors' code: the interval ``[a, b]`` starts at ``[T_mean, T_max]``
          (``l_b`` = inf) if ``loss(T_mean) < B``, else at ``[T_min, T_mean]`` (``l_a`` = val_loss);
          bisect (``loss(mid) <= B`` moves ``a``) until ``|l_a - l_b| < tolerance * B`` and prune at
          the midpoint ``(a + b) / 2``, which is never evaluated (its loss may exceed ``B``). If the
          midpoint stops moving (within 1e-10), prune at ``a``.
        - ``conservative``: the same interval, but stop only once both ends' losses are within
          ``tolerance * B`` of ``B`` (or no magnitude lies between the ends) and prune at the
          admissible lower end, so every cut made was evaluated and kept the loss <= ``B``. With
          twt <= tolerance it stops at the first admissible cut: it cuts less per plateau.
      start: ``(T_min, T_mean, T_max)`` (see :func:`start_interval`); default: from ``magnitudes``.

    Returns:
      The :class:`SearchResult`, or None when the threshold found cuts nothing.
    """
    if rule not in SEARCH_RULES:
        raise ValueError(f"unknown threshold-search rule {rule!r}; valid: {', '.join(SEARCH_RULES)}")
    m = np.sort(np.abs(np.asarray(magnitudes, np.float64)).ravel())
    m = m[m > 0]
    start = start or start_interval([m], rule)
    if m.size == 0 or start is None or not math.isfinite(val_loss):  # a diverged run: nothing to bound
        return None
    bound = float(val_loss) * (1.0 + twt)
    trials = []

    def loss(t):
        value = float(loss_at(t))
        trials.append((float(t), value))
        return value

    def cuts_between(lo, hi):  # parameters cut at hi but not at lo
        return np.searchsorted(m, hi, "left") - np.searchsorted(m, lo, "left")

    search = _reference if rule == "reference" else _conservative
    threshold, cut_loss = search(loss, cuts_between, start, float(val_loss), bound, tolerance, max_steps)
    if threshold is None or cuts_between(0.0, threshold) == 0:  # the cut removes nothing
        return None
    return SearchResult(threshold, cut_loss, bound, trials)


def _reference(loss, cuts_between, start, val_loss, bound, tolerance, max_steps):
    """The authors' bisection (see :func:`search_threshold`); returns ``(T, NaN)``."""
    t_min, t_mean, t_max = start
    l_mean = loss(t_mean)
    if l_mean < bound:  # strict here, ``<=`` inside the loop: as the reference
        a, l_a, b, l_b = t_mean, l_mean, t_max, math.inf
    else:
        a, l_a, b, l_b = t_min, val_loss, t_mean, l_mean
    previous = math.inf
    for _ in range(max_steps):
        if abs(l_a - l_b) < tolerance * bound:  # False while l_b is inf or a loss is NaN
            break
        mid = 0.5 * (a + b)
        if abs(previous - mid) <= 1e-10:
            return a, math.nan
        previous = mid
        l_mid = loss(mid)
        if l_mid <= bound:
            a, l_a = mid, l_mid
        else:
            b, l_b = mid, l_mid
    return 0.5 * (a + b), math.nan


def _conservative(loss, cuts_between, start, val_loss, bound, tolerance, max_steps):
    """kerasprune's first rule (see :func:`search_threshold`); returns ``(T, loss(T))``."""
    t_min, t_mean, t_max = start
    l_mean = loss(t_mean)
    if _admissible(l_mean, bound):
        lo, l_lo, hi = t_mean, l_mean, t_max
        l_hi = loss(hi)
        if _admissible(l_hi, bound):
            return hi, l_hi
    else:
        hi, l_hi = t_mean, l_mean
        lo, l_lo = t_min, val_loss  # |w| < T_min cuts nothing: the loss is val_loss itself
    for _ in range(max_steps):
        # The tolerance stop needs an admissible end that cuts something: with twt <= tolerance the
        # uncut loss is already "within tolerance" of B, and stopping there would never prune.
        if (cuts_between(0.0, lo) > 0 and abs(l_lo - bound) <= tolerance * bound
                and abs(l_hi - bound) <= tolerance * bound):
            break
        if cuts_between(lo, hi) <= 1:  # any T in (lo, hi] cuts what lo or hi cuts
            break
        mid = 0.5 * (lo + hi)
        l_mid = loss(mid)
        if _admissible(l_mid, bound):
            lo, l_lo = mid, l_mid
        else:
            hi, l_hi = mid, l_mid
    return lo, l_lo


def _admissible(loss, bound):
    return math.isfinite(loss) and loss <= bound
