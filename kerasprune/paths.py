"""Every file and folder name inside a run folder, in one place (no TensorFlow import)."""
import hashlib
import os

CONFIG = "config.json"  # the resolved configuration, written before any work starts
METRICS = "metrics.json"  # final numbers of the run
DIVERGED = "diverged.json"  # where a run's loss became NaN/inf (such a folder is not reused)
HISTORY = "history.csv"  # one row per epoch (Keras CSVLogger, appended across resumes)
TENSORBOARD = "tensorboard"
BACKUP = "backup"  # BackupAndRestore state: a killed run resumes from here
BEST_WEIGHTS = os.path.join("checkpoints", "best.weights.h5")  # best by validation loss
INITIAL_WEIGHTS = "initial.weights.h5"  # weights at initialisation, for lottery-ticket rewinding

# A LOBSTER run folder (read and written by kerasprune.pure.points).
POINTS_CSV = "operating_points.csv"  # one row per sparsity level reached
POINTS_DIR = "points"  # point_XXX.weights.h5, one per operating point

# A sweep's output folder OUT (kerasprune.sweep, docs/sweep.md).
SWEEP_CONFIG = "sweep_config.json"  # the resolved sweep config
RESULTS = "results.csv"  # one row per finished run (kerasprune.results)
EXPORTS = "exports.json"  # the SavedModels of the G and 1-S solutions
FIGURE1 = "figure1.png"
SWEEP_LOBSTER = "lobster"  # LOBSTER's run folder, unless the config names one
SWEEP_DENSE = "dense"  # dense/seed_S/: the dense models the magnitude baselines start from
SWEEP_RUNS = "runs"  # runs/<method>[_<variant>]/point_XXX/seed_S/: one folder per retraining

SAVED_MODELS_ENV = "KERASPRUNE_SAVED_MODELS"


def run_file(run_dir, name):
    return os.path.join(run_dir, name)


def saved_models_root(export_dir=None):
    """Root of SavedModel exports: ``export_dir``, ``$KERASPRUNE_SAVED_MODELS`` or ``./saved_models``."""
    return export_dir or os.environ.get(SAVED_MODELS_ENV) or "saved_models"


def export_path(run_dir, export_dir=None, tag="final"):
    """``<root>/<run folder name>_<hash of its absolute path>/<tag>``: readable and collision-free."""
    run_dir = os.path.abspath(run_dir)
    digest = hashlib.sha1(run_dir.encode()).hexdigest()[:8]
    return os.path.join(saved_models_root(export_dir), f"{os.path.basename(run_dir)}_{digest}", tag)
