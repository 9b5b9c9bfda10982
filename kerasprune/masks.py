"""Mask maths shared by the sweep, the one-shot baselines and IMP (numpy; no TF-MOT wrappers).

A mask is ``{key: bool array}`` over :func:`kerasprune._tfmot.masked_parameters` (key
``"<layer>/<kernel|bias|gamma|beta>"``, True = kept). :mod:`kerasprune._tfmot` writes masks into
TF-MOT's wrappers and reads them back; everything here only computes them.
"""
import numpy as np

from kerasprune import _tfmot, sparsity
from kerasprune.errors import KerasPruneError


def mask_of(model, kinds=_tfmot.ALL_KINDS):
    """The mask of a pruned model's current weights: kept = nonzero."""
    return {k: v.numpy() != 0 for k, v in _tfmot.masked_parameters(model, kinds).items()}


def count_kept(mask):
    return {k: int(np.count_nonzero(m)) for k, m in mask.items()}


def random_structure_mask(mask, seed):
    """A random mask keeping exactly as many entries of every tensor as ``mask`` does."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, m in mask.items():
        flat = np.zeros(m.size, bool)
        flat[rng.choice(m.size, size=int(np.count_nonzero(m)), replace=False)] = True
        out[key] = flat.reshape(m.shape)
    return out


def global_magnitude_mask(values, n_pruned, current=None):
    """Prunes the ``n_pruned`` smallest-magnitude entries over all tensors of ``values`` together
    (already-pruned entries of ``current`` count first), as open_lth's ``sparse_global``."""
    keys = list(values)
    scores = np.concatenate([np.abs(np.asarray(values[k], np.float64)).ravel() for k in keys])
    if current is not None:
        alive = np.concatenate([np.asarray(current[k], bool).ravel() for k in keys])
        scores = np.where(alive, scores, -1.0)
    total = scores.size
    if not 0 <= n_pruned < total:
        raise KerasPruneError(f"cannot prune {n_pruned} of {total} parameters")
    keep = np.ones(total, bool)
    keep[np.argsort(scores, kind="stable")[:n_pruned]] = False
    out, start = {}, 0
    for k in keys:
        size = np.asarray(values[k]).size
        out[k] = keep[start:start + size].reshape(np.shape(values[k]))
        start += size
    return out


def prunable_counts(model):
    """``(all prunable parameters, kernel entries)`` of ``model`` (the sparsity report's count)."""
    total = sum(int(np.prod(v.shape)) for _, v in sparsity.prunable_variables(model))
    kernels = sum(int(np.prod(v.shape)) for _, v in sparsity.prunable_variables(model, ("kernel",)))
    return total, kernels


def kernel_target(model, pruned_params_pct=None, kept_kernels=None):
    """How many kernel entries to prune, and of how many: either so that ``pruned_params_pct`` of
    all prunable parameters (kernels, biases, norms: the sparsity report's count) are pruned,
    kernels alone carrying it (TF-MOT's and open_lth's way), or so that exactly ``kept_kernels``
    kernel entries stay (another mask's kernel count, e.g. LOBSTER's, which prunes biases too)."""
    if (pruned_params_pct is None) == (kept_kernels is None):
        raise KerasPruneError("give one of pruned_params_pct and kept_kernels")
    total, kernels = prunable_counts(model)
    if kept_kernels is not None:
        if not 0 < kept_kernels <= kernels:
            raise KerasPruneError(f"cannot keep {kept_kernels} of {kernels} kernel entries")
        return kernels - int(kept_kernels), kernels
    n = int(round(pruned_params_pct / 100.0 * total))
    if n >= kernels:
        raise KerasPruneError(f"{pruned_params_pct:.2f}% of {total} parameters is more than all "
                              f"{kernels} kernel entries")
    return n, kernels
