"""Run folders: the one module that knows their file names, how a run starts, when a stage counts as
finished, and how their files are written whole. No TensorFlow import (``kerasprune --help`` stays fast).

- Names: every file and folder name inside a run folder or a sweep's folder (below), and where
  SavedModel exports go (:func:`export_path`).
- Writing: :func:`atomic_path` (temporary name + ``os.replace``), :func:`write_atomic`,
  :func:`write_json`; reading: :func:`read_json` (a damaged file is a one-line error).
- Starting: :func:`start` checks ``config.json`` against the command's settings (refusing others) or
  writes it, before any other file of the run; :func:`read_config` reads it back, as written or typed.
- Finishing: :func:`finished` / :func:`mark_finished`: which file marks which stage finished.
- One process per folder: :func:`exclusive` holds ``OUT/.lock`` (``fcntl.flock``; the kernel drops
  it when its process dies, however it dies, so a killed run never leaves a stale lock).
  :func:`clear_unstarted` empties a folder whose run never finished an epoch, so a command fixed
  after a failed first attempt (another seed, lr, ...) starts afresh there instead of being refused.
"""
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket

from kerasprune.distribute import chief_path, is_chief
from kerasprune.errors import KerasPruneError

# ---------------------------------------------------------------------------------------------
# Names.

CONFIG = "config.json"  # the resolved configuration, written before any other file of the run
METRICS = "metrics.json"  # final numbers of a train, LOBSTER or transfer run (written last)
RESULT = "result.json"  # final numbers of a one-shot retraining or its dense run (written last)
DIVERGED = "diverged.json"  # where a run's loss became NaN/inf (such a folder is not reused)
HISTORY = "history.csv"  # one row per epoch (Keras CSVLogger, appended across resumes)
TENSORBOARD = "tensorboard"
BACKUP = "backup"  # BackupAndRestore state: a killed run resumes from here
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = os.path.join(CHECKPOINTS, "best.weights.h5")  # best by validation loss
ELAPSED = "elapsed.json"  # seconds of the finished epochs over every session (a resumed run's whole time)
INITIAL_WEIGHTS = "initial.weights.h5"  # weights at initialisation, for lottery-ticket rewinding
FINAL_WEIGHTS = "final.weights.h5"  # a retraining's or transfer's selected weights, plain layers
LR_PLATEAU_STATE = "lr_plateau_state.json"  # ResumableReduceLROnPlateau's counters

# A LOBSTER run folder (read and written by kerasprune.pure.points).
POINTS_CSV = "operating_points.csv"  # one row per sparsity level reached
POINTS_DIR = "points"  # point_XXX.weights.h5, one per operating point
PROGRESSION_PLOT = "progression.png"

# A sweep's output folder OUT (kerasprune.sweep, docs/sweep.md).
SWEEP_CONFIG = "sweep_config.json"  # the resolved sweep config
RESULTS = "results.csv"  # one row per finished run (kerasprune.results)
EXPORTS = "exports.json"  # the SavedModels of the G and 1-S solutions
FIGURE1 = "figure1.png"
SWEEP_LOBSTER = "lobster"  # LOBSTER's run folder, unless the config names one
SWEEP_DENSE = "dense"  # dense/seed_S/: the dense models the magnitude baselines start from
SWEEP_RUNS = "runs"  # runs/<method>[_<variant>]/point_XXX/seed_S/: one folder per retraining
IMP_CHAIN = "chain.json"  # runs/imp/seed_S/chain.json: an IMP chain's levels; its rounds are level_KK/

EXPORT_REPORT_SUFFIX = ".export.json"  # <export path of tag T>.export.json: T's export finished
SAVED_MODELS_ENV = "KERASPRUNE_SAVED_MODELS"
LOCK = ".lock"

# What a run leaves before its first finished epoch; removed when it restarts with other settings.
_UNSTARTED = (CONFIG, INITIAL_WEIGHTS, BACKUP, TENSORBOARD, HISTORY, ELAPSED, CHECKPOINTS, POINTS_DIR, POINTS_CSV,
              PROGRESSION_PLOT, LR_PLATEAU_STATE)


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


# ---------------------------------------------------------------------------------------------
# Writing files whole.

@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temporary name beside ``path`` for the block to write to (a file, or a folder such as a
    SavedModel), renamed over ``path`` when the block ends: readers and a killed writer see the old
    ``path`` or the new one, never half of one. If the block or the rename fails, the temporary is
    removed and ``path`` is left as it was.

    ``suffix`` ends the temporary name, for writers that choose the format by it (``savefig``:
    ``.png``) or append one otherwise (``np.savez``: ``.npz``). The name holds ``.tmp`` (what
    ``experiments/carry.py`` skips) and the process id (two writers of one path never share it).
    """
    tmp = f"{os.fspath(path).rstrip(os.sep)}.{os.getpid()}.tmp{suffix}"
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):  # os.replace cannot replace a non-empty folder
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        raise


def save_weights(model, path, keep_existing=False):
    """``model.save_weights(path)`` whole (:func:`atomic_path`): a kill mid-write, or a reader such as
    a transfer from a retraining that is finishing, never finds half a weights file at ``path``.

    In a multi-worker run call it on every worker: a save runs collective ops (reading BatchNorm's
    sync-on-read moving statistics all-reduces them), so a chief-only save leaves the other workers'
    collectives out of step ("Collective instance ... expected type"). Only the chief's file is kept
    (:func:`~kerasprune.distribute.chief_path`); chief-only callers (``if is_chief():``) may use it too.
    With ``keep_existing`` an existing file is left as it is (e.g. the true initial weights of a
    resumed run) while every worker still saves.
    """
    with chief_path(path, keep=not (keep_existing and os.path.isfile(path))) as where:
        if where != path:  # a scratch copy, deleted on exit
            model.save_weights(where)
            return
        with atomic_path(path, suffix=".weights.h5") as tmp:  # Keras picks the format by the suffix
            model.save_weights(tmp)


def write_atomic(path, data, sync=False):
    """Writes ``data`` (str or bytes) to ``path`` whole (:func:`atomic_path`). ``sync``: on disk
    (``fsync``) before the rename, so even a power cut leaves the old file or the new one."""
    text = isinstance(data, str)
    with atomic_path(path) as tmp:
        with open(tmp, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())


def write_json(path, data):
    """Writes ``data`` as indented, key-sorted JSON, whole (numpy values become lists and numbers)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=json_default))


def json_default(value):
    """``json``'s ``default`` for numpy arrays and scalars and eager tensors."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars (a scalar's tolist() is its item)
        return value.tolist()
    if hasattr(value, "numpy"):  # eager tensors
        return value.numpy().tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path):
    """The JSON in ``path``; a damaged file is a one-line error naming it (not a JSONDecodeError)."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise KerasPruneError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); it was "
                              "damaged (a full disk, or a copy cut short): restore it, or delete the "
                              "run folder to start over") from None


# ---------------------------------------------------------------------------------------------
# Starting a run, and reading its settings back.

def start(out, config, stage, resumable=("epochs",), legacy=None):
    """Opens run folder ``out`` for ``config`` (a settings dataclass) before the run writes anything.

    A ``config.json`` already there must hold the same settings but ``resumable``
    (:func:`check_same_config`). A setting it lacks was added since the folder was written, when
    every run behaved as ``config.older_folder_settings`` says (e.g. ``weight_decay`` 0, a LeNet's
    ``init`` glorot) or as ``legacy`` says (LOBSTER's first threshold rule): ``config.read_saved``,
    here and in :func:`read_config`, does that defaulting for every run kind. Returns what ``stage`` recorded if it has finished in ``out``
    (:func:`finished`; the caller decides whether that run is the one asked for). Otherwise it
    writes ``config.json`` (the chief of a multi-worker run only) and returns None: the run goes on.
    """
    path = run_file(out, CONFIG)
    wanted = dataclasses.asdict(config)
    if os.path.isfile(path):
        saved = config.read_saved(read_json(path), legacy)
        check_same_config(saved, wanted, out, resumable)
    done = finished(out, stage)
    if done is not None:
        return done
    make_folder(out)
    if is_chief():
        write_json(path, wanted)
    return None


def already_finished(out, done, epochs, what="run"):
    """``done`` (what :func:`start` returned for a finished run) if that run trained ``epochs``
    epochs, else a one-line refusal: a finished run is not extended."""
    if done.get("epochs_completed", -1) == epochs:
        print(f"{out}: already finished ({epochs} epochs); remove it to rerun")
        return done
    raise KerasPruneError(f"{out} holds a finished {what} of {done.get('epochs_completed')} epochs, not {epochs}; "
                          "choose another --out")


def check_same_config(saved, wanted, out, resumable=("epochs",)):
    """Raises unless the run folder's ``config.json`` (``saved``) matches the config of the command
    resuming it (``wanted``) in every field but ``resumable``: resuming with other settings would
    continue the old weights under a config.json that no longer describes them. ``wanted`` is
    compared as JSON holds it (tuples become lists). A folder that never finished an epoch holds
    nothing to keep: it is cleared (:func:`clear_unstarted`) and the run starts afresh."""
    wanted = json.loads(json.dumps(wanted, default=json_default))
    diff = [k for k in wanted if k not in resumable and saved.get(k) != wanted[k]]
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in diff)
        if not has_finished_epoch(out):  # a failed first attempt: nothing to keep
            if is_chief():  # other workers of a multi-worker run must not delete the chief's files
                print(f"{out}: no finished epoch under the old configuration ({details}); starting afresh")
                clear_unstarted(out)
            return
        raise KerasPruneError(f"{out} holds a run with another configuration ({details}); "
                              "rerun the same command to resume, or choose another --out")


def read_config(run_dir, kind=None, legacy=None):
    """``run_dir``'s ``config.json``: the dict as written, or with ``kind`` (a settings dataclass such
    as :class:`~kerasprune.config.RunSettings`) an instance of it, checked as any new config is. Fields ``kind`` lacks
    are left out (a LOBSTER folder read as ``RunSettings``); fields the file lacks take ``legacy``'s
    value, else what ``kind.older_folder_settings`` says, else the dataclass default (the folder
    predates them)."""
    path = run_file(run_dir, CONFIG)
    if not os.path.isfile(path):
        raise KerasPruneError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    saved = read_json(path)
    if kind is None:
        return saved
    names = {f.name for f in dataclasses.fields(kind) if f.init}
    values = kind.read_saved(saved, legacy) if hasattr(kind, "read_saved") else {**(legacy or {}), **saved}
    return kind(**{k: v for k, v in values.items() if k in names})


# ---------------------------------------------------------------------------------------------
# Finishing: the file whose presence means a stage finished. Written last and atomically, it holds
# the stage's result; committed results and older folders use these same files.

_FINISHED_BY = {"train": METRICS, "lobster": METRICS, "transfer": METRICS, "retrain": RESULT}
STAGES = tuple(_FINISHED_BY) + ("export",)


def finished_marker(run_dir, stage, tag=None, export_dir=None):
    """The path of the file that marks ``stage`` finished: ``run_dir/metrics.json`` (``train``,
    ``lobster``, ``transfer``), ``run_dir/result.json`` (``retrain``: a one-shot retraining or the
    dense run it starts from), or for ``export`` the report beside the SavedModel of ``tag``."""
    if stage == "export":
        return export_path(run_dir, export_dir, tag) + EXPORT_REPORT_SUFFIX
    if stage not in _FINISHED_BY:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    return run_file(run_dir, _FINISHED_BY[stage])


def finished(run_dir, stage, **where):
    """What ``stage`` recorded when it finished in ``run_dir`` (its marker's JSON), or None."""
    path = finished_marker(run_dir, stage, **where)
    return read_json(path) if os.path.isfile(path) else None


def finished_rounds(chain):
    """An IMP chain's finished ``level_KK`` folders, in order (a round is finished when it has its
    result; rounds finish one after another)."""
    return sorted((d for d in os.listdir(chain) if os.path.isfile(os.path.join(chain, d, RESULT))),
                  key=lambda d: (len(d), d))  # level_100 after level_99


def mark_finished(run_dir, stage, record, **where):
    """Writes ``record`` as ``stage``'s marker: call it last, once everything else is written."""
    write_json(finished_marker(run_dir, stage, **where), record)


# ---------------------------------------------------------------------------------------------
# One process per folder, and folders that never started.

def make_folder(out):
    """Creates ``out`` (and parents), or says in one line why it cannot be a run folder."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise KerasPruneError(f"--out {out} is an existing file, not a folder: choose another --out")
    os.makedirs(out, exist_ok=True)


@contextlib.contextmanager
def exclusive(out, enabled=True):
    """Holds ``out``'s lock for the block; raises ``KerasPruneError`` (``... in use ...``) if another
    process holds it. ``enabled=False`` (non-chief workers of one multi-worker run, which share the
    folder with their chief) makes it a no-op."""
    if not enabled:
        yield
        return
    make_folder(out)
    path = os.path.join(out, LOCK)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise KerasPruneError(f"{out} is in use by {holder}: wait for it to finish, or stop it "
                                  "(a stopped or killed process frees the folder at once)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def has_finished_epoch(out):
    """True if the run in ``out`` has recorded at least one epoch (or finished)."""
    if any(os.path.isfile(run_file(out, name)) for name in set(_FINISHED_BY.values())):
        return True
    history = run_file(out, HISTORY)
    if not os.path.isfile(history):
        return False
    with open(history) as f:
        return sum(1 for line in f if line.strip()) > 1  # a header and at least one row


def clear_unstarted(out):
    """Removes what a run that never finished an epoch left in ``out`` (nothing of value)."""
    for name in _UNSTARTED:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
