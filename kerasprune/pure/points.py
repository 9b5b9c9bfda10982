"""The operating-point table of a LOBSTER run (``operating_points.csv``), for Keras 2 and Keras 3.

One row (and one weights file) per sparsity level reached. Layout inside a run folder (the shared
contract other stages read):
  operating_points.csv            one row per level, rewritten atomically
  points/point_XXX.weights.h5     that level's best-validation-accuracy weights, pruned params = 0

:mod:`kerasprune.lobster.points` re-exports these names and adds the Keras 2 model helpers.
"""
import csv
import math
import os

from kerasprune import runs
from kerasprune.runs import POINTS_CSV, POINTS_DIR  # noqa: F401  (the names live with the others)
COLUMNS = ("point", "pruned_params_pct", "pruned_neurons_pct", "val_error", "val_loss", "test_error",
           "test_loss", "epoch", "weights", "pruned_params", "params", "pruned_neurons", "neurons",
           "threshold", "lr", "pruned_neurons_ref_pct", "pruned_neurons_ref", "neurons_ref")
_INTS = ("point", "epoch", "pruned_params", "params", "pruned_neurons", "neurons", "pruned_neurons_ref",
         "neurons_ref")


def weights_name(point):
    """Path of a point's weights, relative to the run folder."""
    return os.path.join(POINTS_DIR, f"point_{point:03d}.weights.h5")


def point_row(level, epoch, report, val_loss, val_acc, threshold, lr):
    """The row of level ``level``'s operating point at 0-based ``epoch``, its test metrics still NaN
    (measured when the level ends); ``report`` is the model's sparsity report."""
    return dict(point=level, pruned_params_pct=report.pruned_params_pct,
                pruned_neurons_pct=report.pruned_neurons_pct,
                val_error=math.nan if val_acc is None else 1.0 - val_acc, val_loss=val_loss,
                test_error=math.nan, test_loss=math.nan, epoch=epoch + 1,
                weights=weights_name(level), pruned_params=report.pruned_params,
                params=report.params, pruned_neurons=report.pruned_neurons, neurons=report.neurons,
                threshold=threshold, lr=lr,
                pruned_neurons_ref_pct=report.pruned_neurons_ref_pct,
                pruned_neurons_ref=report.pruned_neurons_ref, neurons_ref=report.neurons_ref)


def write_points(run_dir, rows):
    """Writes all rows at once (temporary file + rename: a kill never leaves half a table)."""
    with runs.atomic_path(os.path.join(run_dir, POINTS_CSV)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})


def _fmt(value):
    return "" if _missing(value) else value


def read_operating_points(run_dir, finished=False):
    """The rows of ``operating_points.csv`` as dicts (ints, floats; NaN where not measured); [] if
    there is no table. ``finished``: only the operating points (see :func:`finished_points`)."""
    path = os.path.join(run_dir, POINTS_CSV)
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, newline="") as f:
        for number, raw in enumerate(csv.DictReader(f), start=2):
            if None in raw.values() or None in raw:  # fewer (or more) cells than the header
                from kerasprune.errors import KerasPruneError

                raise KerasPruneError(f"{path} is damaged: line {number} does not match its header (the file "
                                      "was cut short?); restore it from a copy (experiments/carry.py archives "
                                      "hold one), or rerun the LOBSTER run, which rewrites it")
            row = {}
            for key, value in raw.items():
                if key == "weights":
                    row[key] = value
                elif key in _INTS:
                    row[key] = int(value) if value != "" else None
                else:
                    row[key] = float(value) if value != "" else math.nan
            rows.append(row)
    return finished_points(rows) if finished else rows


def finished_points(rows):
    """The rows that are operating points: the level LOBSTER is still in has no test error yet (and
    its weights file is rewritten at each better epoch)."""
    return [r for r in rows if not _missing(r.get("test_error"))]


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def save_weights_atomic(model, path, weights=None):
    """``model.save_weights`` (of ``weights`` if given) to a temporary file, renamed over ``path``.

    ``model`` should be optimizer-free (an uncompiled clone of the trained model): a compiled model's
    ``.weights.h5`` also stores every optimizer variable, which makes each write several times
    slower and the file several times larger.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if weights is not None:
        model.set_weights(weights)
    runs.save_weights(model, path)
