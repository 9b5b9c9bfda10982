"""Plain training of a model on a dataset, with the run folder every other stage builds on.

``train(TrainConfig(...), out)`` writes into ``out``: ``config.json``, TensorBoard logs, ``history.csv``,
the best checkpoint by validation loss, the initial weights (for lottery-ticket rewinding),
``metrics.json``, and a SavedModel export of the final model. Running it again on the same folder
resumes a killed run (Keras ``BackupAndRestore``) and returns at once if the run had finished.

The pieces (:func:`compile_model`, :func:`run_callbacks`, :func:`fit_and_record`) are what LOBSTER
and the one-shot baselines reuse, so all runs share one folder layout (:mod:`kerasprune.runs`).
Optimizers by name come from :mod:`kerasprune.optimizers` (``training.make_optimizer`` still works).
"""
import csv
import math
import os
import sys
import time

from kerasprune import models, runs
from kerasprune._keras import keras, tf
from kerasprune.distribute import chief_path, declare_strategy, get_strategy, is_chief
from kerasprune.errors import KerasPruneError
# Older homes of these names, still used by scripts, tests and docs (README: training.make_optimizer).
from kerasprune.config import TrainConfig  # noqa: F401
from kerasprune.optimizers import check_optimizer_name, make_optimizer  # noqa: F401
from kerasprune.runs import check_same_config, read_json, write_json  # noqa: F401


# Training steps per call of Keras' compiled train function. Keras' per-step dispatch (the Python
# loop, callbacks, progress) costs more than a LeNet-300 step's arithmetic on one core; a loop of
# steps inside one tf.function does the same arithmetic (LOBSTER's term and masks, TF-MOT's
# pruning_step and mask updates all run inside the step), measured bit-for-bit identical and about
# 1.5x faster on LeNet-300 (bench/bench_throughput.py). Per-batch callbacks then run once per
# chunk: StopOnNaN still sees a NaN loss (a NaN stays NaN), at the chunk's last batch.
STEPS_PER_EXECUTION = 50


def compile_model(model, optimizer, steps_per_execution=None, **kwargs):
    """Compiles for classification from logits (all kerasprune models output logits).

    ``steps_per_execution``: default :data:`STEPS_PER_EXECUTION`."""
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  steps_per_execution=steps_per_execution or STEPS_PER_EXECUTION, **kwargs)
    return model


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the current learning rate into the epoch logs (so TensorBoard and the CSV show it)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            lr = self.model.optimizer.learning_rate
            if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
                lr = lr(self.model.optimizer.iterations)
            logs["lr"] = float(keras.backend.get_value(lr))


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss and remembers where, so the run fails clearly."""

    def __init__(self):
        super().__init__()
        self.where = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (self._epoch, batch)
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def raise_if_stopped(self, run_dir=None):
        """Raises if the loss diverged, after marking ``run_dir`` (``diverged.json``): Keras has
        deleted the backup, so rerunning there would silently start over on top of the old files."""
        if self.where is not None:
            epoch, batch = self.where
            if run_dir and is_chief():
                runs.write_json(runs.run_file(run_dir, runs.DIVERGED), {"epoch": epoch + 1, "batch": batch + 1})
            raise KerasPruneError(f"the loss became NaN/inf at epoch {epoch + 1}, batch {batch + 1}: "
                                  "training diverged; try a lower --lr (in a new --out)")


def refuse_diverged(run_dir):
    """Raises if the run in ``run_dir`` diverged before (see :meth:`StopOnNaN.raise_if_stopped`)."""
    path = runs.run_file(run_dir, runs.DIVERGED)
    if os.path.isfile(path):
        where = runs.read_json(path)
        raise KerasPruneError(f"{run_dir} holds a run whose loss became NaN/inf at epoch {where['epoch']}, "
                              f"batch {where['batch']}; to try again with other settings, use another "
                              f"output folder, or delete {run_dir}")


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` whose counters (best value, wait, cooldown) survive a kill.

    Keras keeps them in Python attributes, which ``BackupAndRestore`` does not checkpoint: a resumed
    run would restart its patience and cooldown. They are written to ``state_path`` after every
    epoch and read back when training starts. The learning rate itself lives in the optimizer and
    is checkpointed. After a kill between this write and the checkpoint's, the counters are one
    epoch ahead of the restored weights.
    """

    def __init__(self, state_path, **kwargs):
        super().__init__(**kwargs)
        self.state_path = state_path

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if os.path.isfile(self.state_path):
            state = runs.read_json(self.state_path)
            self.best, self.wait, self.cooldown_counter = state["best"], state["wait"], state["cooldown_counter"]

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if is_chief():
            runs.write_json(self.state_path, {"best": float(self.best), "wait": int(self.wait),
                                         "cooldown_counter": int(self.cooldown_counter), "epoch": epoch + 1})


def run_callbacks(run_dir, monitor="val_loss", backup=True, best_checkpoint=True):
    """The callbacks every run gets: LR logging, NaN guard, elapsed time, CSV history, TensorBoard,
    best checkpoint by ``monitor`` and (optionally) BackupAndRestore in ``run_dir``."""
    history_path = runs.run_file(run_dir, runs.HISTORY)
    callbacks = [LearningRateLogger(), StopOnNaN(), ElapsedTime(run_dir)]
    # Every record of an epoch before its backup: a kill in between then repeats the epoch (its
    # history row comes twice; read_history keeps the last) instead of losing the row or the best
    # checkpoint, which would leave the run one epoch short, or its best weights unsaved, forever.
    if is_chief():
        callbacks.append(keras.callbacks.CSVLogger(history_path, append=True))
    # TensorBoard and ModelCheckpoint run on every worker of a multi-worker run: they change the
    # traced train step (summaries) or save collectively, so a chief-only copy deadlocks the
    # collectives. Keras sends a non-chief's writes to a temporary folder it deletes afterwards.
    callbacks.append(keras.callbacks.TensorBoard(runs.run_file(run_dir, runs.TENSORBOARD)))
    if best_checkpoint:
        best_path = runs.run_file(run_dir, runs.BEST_WEIGHTS)
        if is_chief():
            os.makedirs(os.path.dirname(best_path), exist_ok=True)
        callbacks.append(keras.callbacks.ModelCheckpoint(
            best_path, monitor=monitor, save_best_only=True, save_weights_only=True,
            initial_value_threshold=best_in_history(history_path, monitor)))
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(runs.run_file(run_dir, runs.BACKUP)))
    callbacks.append(ShortConsoleLine())
    return callbacks


def elapsed_seconds(run_dir):
    """Seconds the finished epochs of ``run_dir`` took over all its sessions (0 before the first)."""
    path = runs.run_file(run_dir, runs.ELAPSED)
    return float(read_json(path)["seconds"]) if os.path.isfile(path) else 0.0


class ElapsedTime(keras.callbacks.Callback):
    """Keeps ``elapsed.json`` at each epoch's end, so a run killed and resumed can report the time
    of all its sessions, not of its last one alone (a Figure 1 cost is the sum of its runs')."""

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir
        self.before = self.started = 0.0

    def on_train_begin(self, logs=None):
        self.before, self.started = elapsed_seconds(self.run_dir), time.time()

    def on_epoch_end(self, epoch, logs=None):
        if is_chief():
            write_json(runs.run_file(self.run_dir, runs.ELAPSED),
                       {"seconds": self.before + time.time() - self.started})


class ShortConsoleLine(keras.callbacks.Callback):
    """Drops per-layer values (``name/layer`` keys) from the epoch logs once the history and
    TensorBoard have them, so Keras' console line (its progress bar runs last) stays readable: a
    ResNet-32's per-layer sparsities made it 5,000 characters long."""

    def on_epoch_end(self, epoch, logs=None):
        for key in [k for k in (logs or {}) if "/" in k]:
            del logs[key]


def read_history(run_dir, every_row=False):
    """The rows of ``history.csv``, one per finished epoch in epoch order, as dicts of floats.

    An epoch repeated after a kill (see :func:`run_callbacks`) appears once, with its last row;
    ``every_row`` returns the file's rows as they are."""
    path = runs.run_file(run_dir, runs.HISTORY)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    if every_row or not all("epoch" in r for r in rows):
        return rows
    last = {int(r["epoch"]): r for r in rows}
    return [last[e] for e in sorted(last)]


def best_in_history(history_path, monitor):
    """Lowest ``monitor`` so far (so a resumed run keeps the best checkpoint it already had)."""
    # Every row: a repeated epoch's first attempt may be the one whose weights the checkpoint holds.
    rows = read_history(os.path.dirname(history_path), every_row=True)
    values = [r[monitor] for r in rows if monitor in r and math.isfinite(r[monitor])]
    return min(values) if values else None


def fit_and_record(model, splits, run_dir, epochs, callbacks=(), verbose="auto", best_checkpoint=True):
    """``model.fit`` with the run callbacks plus ``callbacks``; returns the full epoch history rows.

    Trains on ``splits.train_epochs`` (when the splits have it, as :func:`kerasprune.data.load`'s
    do), started at the epoch the backup resumes from, so epoch ``e`` sees the batches of
    ``(shuffle seed, e)`` whether or not the run was killed before it.

    ``best_checkpoint=False`` drops the best-by-validation-loss checkpoint, for runs (LOBSTER) that
    keep their own best weights per sparsity level and where one best over all levels means nothing.
    """
    refuse_diverged(run_dir)
    standard = run_callbacks(run_dir, best_checkpoint=best_checkpoint)
    all_callbacks = standard[:1] + list(callbacks) + standard[1:]
    if splits.train_epochs is not None:
        stream = splits.train_epochs
        train, steps = stream(resume_epoch(run_dir)), stream.steps_per_epoch
    else:
        train, steps = splits.train, None
    start = time.time()
    model.fit(train, steps_per_epoch=steps, validation_data=splits.validation, epochs=epochs,
              callbacks=all_callbacks, verbose=_verbosity(verbose))
    next(c for c in standard if isinstance(c, StopOnNaN)).raise_if_stopped(run_dir)
    return read_history(run_dir), time.time() - start


def resume_epoch(run_dir):
    """The epoch (0-based) ``BackupAndRestore`` resumes ``run_dir`` at: 0 without a backup.

    Reads the whole backup first, so a damaged one (a copy cut short, a full disk) is a one-line
    error here rather than an IndexError deep inside Keras' restore."""
    backup = runs.run_file(run_dir, runs.BACKUP)
    latest = tf.train.latest_checkpoint(os.path.join(backup, "chief"))
    if latest is None:
        return 0
    key = "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"  # tf_keras' WorkerTrainingState counter
    try:
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
        epoch = int(reader.get_tensor(key))
    except Exception as exc:  # noqa: BLE001  (TF raises several kinds for a damaged file)
        raise KerasPruneError(f"the backup {latest} is damaged ({type(exc).__name__}), so {run_dir} cannot "
                              f"resume; restore {backup} from a copy (experiments/carry.py archives hold "
                              f"one), or delete {run_dir} to start over") from None
    return epoch + 1


def _verbosity(verbose):
    # Progress bars on a terminal; one line per epoch in logs and CI.
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return verbose


def export_saved_model(model, path):
    """Writes a SavedModel loadable with ``tf.saved_model.load`` and ``tf_keras.models.load_model``.

    Call it on every worker of a multi-worker run: saving runs collective ops, so a chief-only save
    hangs. Only the chief's copy is kept; other workers save to a temporary folder and delete it.
    """
    if not is_chief():
        with chief_path(path) as scratch:
            model.save(scratch, save_format="tf", include_optimizer=False)
        return path
    with runs.atomic_path(path) as tmp:
        model.save(tmp, save_format="tf", include_optimizer=False)
    return path


def evaluate(model, dataset):
    """``{"loss": ..., "accuracy": ...}`` of a compiled model on a dataset."""
    return model.evaluate(dataset, verbose=0, return_dict=True)


def train(config, out, verbose="auto"):
    """Runs (or resumes, or returns the result of) one plain training run in folder ``out``."""
    declare_strategy(config.strategy)
    with runs.exclusive(out, enabled=is_chief()):  # one process per run folder
        return _train_in(config, out, verbose)


def _train_in(config, out, verbose):
    done = runs.start(out, config, "train", resumable=("epochs", "export_dir"))
    if done is not None:
        return runs.already_finished(out, done, config.epochs)
    strategy = get_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)  # before the pipelines: their shuffle seeds derive from it
    splits = config.load_data(shuffle_seed=config.seed)
    with strategy.scope():
        model = models.build_for(config, seed=config.seed, dspec=splits.spec)
        compile_model(model, config.make_optimizer())
    # Every worker saves (see runs.save_weights); on resume the true initial weights stay.
    runs.save_weights(model, runs.run_file(out, runs.INITIAL_WEIGHTS), keep_existing=True)
    history, seconds = fit_and_record(model, splits, out, config.epochs, verbose=verbose)
    test = evaluate(model, splits.test)
    metrics = {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "epochs_completed": len(history),
        "best_val_loss": min((r["val_loss"] for r in history), default=None),
        "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "seconds_this_session": seconds,
        "model": config.model, "dataset": config.dataset, "params": model.count_params(),
    }
    saved_model = export_saved_model(model, runs.export_path(out, config.export_dir))  # all workers
    if is_chief():
        metrics["saved_model"] = os.path.abspath(saved_model)  # readable from any working directory
        runs.mark_finished(out, "train", metrics)
    return metrics
