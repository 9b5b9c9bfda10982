"""Operating points of a LOBSTER run: one row (and one weights file) per sparsity level reached.

Layout inside a run folder (the shared contract other stages read):
  operating_points.csv            one row per level, rewritten atomically
  points/point_XXX.weights.h5     that level's best-validation-accuracy weights, pruned params = 0

The table itself is read and written by :mod:`kerasprune.pure.points` (no Keras import, shared with
:mod:`kerasprune.keras3`); this module adds the Keras 2 model helpers and the progression plot.
"""
import math
import os

from kerasprune import models, runs
from kerasprune._keras import keras
from kerasprune.errors import KerasPruneError
from kerasprune.pure.points import (COLUMNS, POINTS_CSV, POINTS_DIR, _INTS, _fmt,  # noqa: F401
                                    finished_points, read_operating_points, save_weights_atomic,
                                    weights_name, write_points)

PLOT = runs.PROGRESSION_PLOT


def weights_only_twin(model):
    """An uncompiled copy of ``model``'s architecture to save its weights through (the model itself
    for subclassed models, which cannot be cloned)."""
    try:
        return keras.models.clone_model(model)
    except (ValueError, TypeError):
        return model


def load_operating_point(run_dir, point):
    """The model of ``run_dir``'s config with operating point ``point``'s weights (uncompiled)."""
    rows = {r["point"]: r for r in read_operating_points(run_dir)}
    if point not in rows:
        raise KerasPruneError(f"{run_dir} has no operating point {point}; it has {sorted(rows) or 'none'}")
    model, _ = models.build_for_run(run_dir)  # as the run built it: a transfer head copies its initializers
    path = os.path.join(run_dir, rows[point]["weights"])
    try:
        model.load_weights(path)
    except OSError as exc:  # h5py: a truncated or missing file
        raise KerasPruneError(f"{path} cannot be read ({str(exc).splitlines()[0][:120]}): the file is damaged "
                              "or missing; restore it, or rerun the LOBSTER run that wrote it") from None
    return model


def plot_progression(run_dir, rows, title=""):
    """``progression.png``: validation/test error and pruned neurons vs % pruned parameters.

    The x axis is logarithmic in the parameters that remain (labelled as % pruned), so the levels
    between 90% and 99%, where LOBSTER spends most of its epochs, are spread out and readable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["pruned_params_pct"])
    remaining = [max(100.0 - r["pruned_params_pct"], 1e-3) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("val_error", "validation"), ("test_error", "test")):
        ax1.plot(remaining, [100 * _nan(r[key]) for r in rows], marker="o", markersize=3, linewidth=0.8,
                 label=label)
    ax1.set_ylabel("error [%]")
    ax1.legend()
    ax2.plot(remaining, [_nan(r.get("pruned_neurons_ref_pct")) for r in rows], marker="o", markersize=3,
             linewidth=0.8, color="C2", label="incoming weights all zero, logits included (authors' count)")
    ax2.plot(remaining, [_nan(r["pruned_neurons_pct"]) for r in rows], marker="o", markersize=3,
             linewidth=0.8, color="C3", label="dead on inputs or outputs, hidden units (kerasprune's)")
    ax2.set_ylabel("pruned neurons [%]")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        _pruned_axis(ax, min(remaining, default=100.0))
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(run_dir, PLOT)
    with runs.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def _pruned_axis(ax, smallest_remaining):
    """Log axis of remaining parameters, inverted and labelled as % pruned."""
    ax.set_xscale("log")
    ticks = [r for r in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if r >= smallest_remaining / 1.5]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{100 - r:g}" for r in ticks])
    ax.minorticks_off()
    ax.set_xlim(110, min(ticks[-1], smallest_remaining) / 1.2)
    ax.set_xlabel("pruned parameters [%] (log scale of the remaining ones)")
    ax.grid(alpha=0.3)


def _nan(value):
    return math.nan if value is None else value
