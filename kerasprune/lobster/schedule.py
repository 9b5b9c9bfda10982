"""When LOBSTER prunes and how much: the plateau rule and the threshold search (no TensorFlow).

Both are pure so they can be tested against hand computations; the callback feeds them validation
losses measured on the model.
"""
import dataclasses
import math
from typing import Callable, List, Optional, Tuple

import numpy as np


@dataclasses.dataclass
class Plateau:
    """LOBSTER's plateau rule on the validation loss ``l``.

    An epoch is *good* if ``l < (1 + margin) * best``; a better loss (``l < best``) also becomes
    the new best (the caller keeps those weights). After ``patience`` consecutive non-good epochs
    the loss has plateaued: time to prune (the caller then calls :meth:`reset`).
    """

    patience: int = 20
    margin: float = 0.01
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


@dataclasses.dataclass
class SearchResult:
    threshold: float  # the largest admissible threshold found (cut everything with |w| < it)
    loss: float  # validation loss with that cut
    bound: float  # admissible loss bound B = l_val * (1 + twt)
    trials: List[Tuple[float, float]]  # every (T, loss) evaluated, in order


def search_threshold(loss_at: Callable[[float], float], magnitudes, val_loss, twt=0.05,
                     tolerance=0.05, max_steps=40) -> Optional[SearchResult]:
    """Bisection for the largest threshold ``T`` whose cut keeps the validation loss <= ``B``.

    Args:
      loss_at: ``T -> validation loss`` with every prunable parameter ``|w| < T`` set to zero (the
        caller restores the weights afterwards).
      magnitudes: the non-zero ``|w|`` of all prunable parameters (any shape).
      val_loss: validation loss of the weights being pruned; ``B = val_loss * (1 + twt)``.
      tolerance: stop once both ends' losses are within ``tolerance * B`` of ``B``.
      max_steps: safety cap on bisection steps.

    Returns:
      The :class:`SearchResult`, or None when there is nothing to prune.

    The interval starts at ``[T_mean, T_max]`` if cutting below the mean magnitude is admissible,
    else ``[T_min, T_mean]``. Bisection also stops when no magnitude lies between the two ends:
    every T in between would cut the same parameters, so T has stopped moving.
    """
    m = np.sort(np.abs(np.asarray(magnitudes, np.float64)).ravel())
    m = m[m > 0]
    if m.size == 0:
        return None
    bound = float(val_loss) * (1.0 + twt)
    trials = []

    def loss(t):
        value = float(loss_at(t))
        trials.append((float(t), value))
        return value

    def cuts_between(lo, hi):  # parameters cut at hi but not at lo
        return np.searchsorted(m, hi, "left") - np.searchsorted(m, lo, "left")

    t_min, t_mean, t_max = float(m[0]), float(m.mean()), float(m[-1])
    l_mean = loss(t_mean)
    if _admissible(l_mean, bound):
        lo, l_lo, hi = t_mean, l_mean, t_max
        l_hi = loss(hi)
        if _admissible(l_hi, bound):
            return SearchResult(hi, l_hi, bound, trials)
    else:
        hi, l_hi = t_mean, l_mean
        lo, l_lo = t_min, float(val_loss)  # |w| < T_min cuts nothing: the loss is val_loss itself
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
    if cuts_between(0.0, lo) == 0:  # the best admissible cut removes nothing
        return None
    return SearchResult(lo, l_lo, bound, trials)


def _admissible(loss, bound):
    return math.isfinite(loss) and loss <= bound
