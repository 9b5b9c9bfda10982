"""Operating points of a LOBSTER run: one row (and one weights file) per sparsity level reached.

Layout inside a run folder (the shared contract other stages read):
  operating_points.csv            one row per level, rewritten atomically
  points/point_XXX.weights.h5     that level's best-validation-accuracy weights, pruned params = 0
"""
import csv
import math
import os

POINTS_CSV = "operating_points.csv"
POINTS_DIR = "points"
PLOT = "progression.png"
COLUMNS = ("point", "pruned_params_pct", "pruned_neurons_pct", "val_error", "val_loss", "test_error",
           "test_loss", "epoch", "weights", "pruned_params", "params", "pruned_neurons", "neurons",
           "threshold", "lr", "pruned_neurons_ref_pct", "pruned_neurons_ref", "neurons_ref")
_INTS = ("point", "epoch", "pruned_params", "params", "pruned_neurons", "neurons", "pruned_neurons_ref",
         "neurons_ref")


def weights_name(point):
    """Path of a point's weights, relative to the run folder."""
    return os.path.join(POINTS_DIR, f"point_{point:03d}.weights.h5")


def write_points(run_dir, rows):
    """Writes all rows at once (temporary file + rename: a kill never leaves half a table)."""
    path = os.path.join(run_dir, POINTS_CSV)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    os.replace(tmp, path)


def _fmt(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def read_operating_points(run_dir):
    """The rows of ``operating_points.csv`` as dicts (ints, floats; NaN where not measured)."""
    path = os.path.join(run_dir, POINTS_CSV)
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                if key == "weights":
                    row[key] = value
                elif key in _INTS:
                    row[key] = int(value) if value != "" else None
                else:
                    row[key] = float(value) if value != "" else math.nan
            rows.append(row)
    return rows


def save_weights_atomic(model, path, weights=None):
    """``model.save_weights`` (of ``weights`` if given) to a temporary file, renamed over ``path``.

    ``model`` should be optimizer-free (see :func:`weights_only_twin`): a compiled model's
    ``.weights.h5`` also stores every optimizer variable, which makes each write several times
    slower and the file several times larger.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.getpid()}.tmp.weights.h5")
    if weights is not None:
        model.set_weights(weights)
    model.save_weights(tmp)
    os.replace(tmp, path)


def weights_only_twin(model):
    """An uncompiled copy of ``model``'s architecture to save its weights through (the model itself
    for subclassed models, which cannot be cloned)."""
    from kerasprune._keras import keras

    try:
        return keras.models.clone_model(model)
    except (ValueError, TypeError):
        return model


def load_operating_point(run_dir, point):
    """The model of ``run_dir``'s config with operating point ``point``'s weights (uncompiled)."""
    from kerasprune import data, models
    from kerasprune.errors import KerasPruneError
    from kerasprune.training import read_json

    config = read_json(os.path.join(run_dir, "config.json"))
    rows = {r["point"]: r for r in read_operating_points(run_dir)}
    if point not in rows:
        raise KerasPruneError(f"{run_dir} has no operating point {point}; it has {sorted(rows) or 'none'}")
    spec = data.spec(config["dataset"], config.get("data_dir"))
    model = models.build(config["model"], input_shape=spec.input_shape, num_classes=spec.num_classes)
    model.load_weights(os.path.join(run_dir, rows[point]["weights"]))
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
    tmp = os.path.join(run_dir, f".{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
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
