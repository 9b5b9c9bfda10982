"""``run(LobsterConfig(...), out)``: a whole LOBSTER run in a resumable run folder."""
import math

from kerasprune import data, models, runs, training
from kerasprune._keras import keras
from kerasprune.config import LobsterConfig  # noqa: F401  (kerasprune.lobster.LobsterConfig)
from kerasprune.distribute import declare_strategy, get_strategy, is_chief
from kerasprune.errors import KerasPruneError
from kerasprune.lobster.callback import LobsterPruning
from kerasprune.lobster.optimizer import Lobster
from kerasprune.lobster.points import read_operating_points


# Fields a resumed run may change (more epochs), every other one must match the folder's config.
_RESUMABLE = ("epochs",)
# Folders from before these options existed ran kerasprune's first rule, with no stop.
_LEGACY = {"threshold_search": "conservative", "stop_at_pruned": None}


def run(config, out, verbose="auto"):
    """Runs or resumes a LOBSTER run in folder ``out``; returns its operating points.

    Writes ``config.json``, ``initial.weights.h5``, ``operating_points.csv``, ``points/``,
    ``progression.png``, ``history.csv``, ``tensorboard/`` and ``metrics.json`` (at the end). A
    killed run resumes (Keras ``BackupAndRestore``) when run again with the same config. One
    process at a time per folder (:func:`kerasprune.runs.exclusive`).
    """
    declare_strategy(config.strategy)
    with runs.exclusive(out, enabled=is_chief()):
        return _run_in(config, out, verbose)


def _run_in(config, out, verbose):
    done = runs.start(out, config, "lobster", _RESUMABLE, legacy=_LEGACY)
    if done is not None:
        if done.get("epochs_completed", -1) >= config.epochs or done.get("stopped_at_pruned"):
            print(f"{out}: already finished ({done['epochs_completed']} epochs); remove it to rerun")
            return read_operating_points(out)
        raise KerasPruneError(f"{out} holds a finished run of {done.get('epochs_completed')} epochs; "
                              f"it cannot be extended to {config.epochs}: choose another --out")
    strategy = get_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    splits = config.load_data(shuffle_seed=config.seed, eval_batch_size=data.EVAL_BATCH_SIZE)
    with strategy.scope():
        model = models.build_for(config, seed=config.seed, dspec=splits.spec)
        base = config.make_optimizer()
        training.compile_model(model, Lobster(base, lmbda=config.lmbda, kinds=config.kinds))
    # Every worker saves (see runs.save_weights); on resume the true initial weights stay.
    runs.save_weights(model, runs.run_file(out, runs.INITIAL_WEIGHTS), keep_existing=True)
    pruning = LobsterPruning(splits.validation, splits.test, pwe=config.pwe, twt=config.twt,
                             good_margin=config.good_margin, tolerance=config.tolerance,
                             kinds=config.kinds, run_dir=out, threshold_search=config.threshold_search,
                             stop_at_pruned=config.stop_at_pruned)
    callbacks = [pruning]
    if config.lr_plateau:
        callbacks.append(training.ResumableReduceLROnPlateau(
            runs.run_file(out, runs.LR_PLATEAU_STATE), monitor="val_loss", factor=0.1, patience=10,
            cooldown=50, verbose=1))
    # No best-by-val-loss checkpoint: operating points already keep the best epoch of each level.
    history, seconds = training.fit_and_record(model, splits, out, config.epochs, callbacks, verbose,
                                               best_checkpoint=False)
    rows = pruning.operating_points
    best = [r for r in rows if not math.isnan(r["test_error"])]
    metrics = {
        "epochs_completed": len(history), "seconds_this_session": seconds,
        "operating_points": len(rows),
        "max_pruned_params_pct": max((r["pruned_params_pct"] for r in rows), default=None),
        "test_error_at_max": (max(best, key=lambda r: r["pruned_params_pct"])["test_error"]
                              if best else None),
        "model": config.model, "dataset": config.dataset, "stopped_at_pruned": pruning.stopped_at_pruned,
    }
    if is_chief() and (len(history) >= config.epochs or pruning.stopped_at_pruned):
        runs.mark_finished(out, "lobster", metrics)
    return rows
