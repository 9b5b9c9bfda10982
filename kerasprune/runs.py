"""Run folders: one process at a time in each, and never a half-made folder that blocks its own fix.

- :func:`exclusive` holds ``OUT/.lock`` (``fcntl.flock``) while a ``train`` or ``lobster`` run works
  in ``OUT``: a second process on the same folder is refused with one line naming the holder. The
  kernel drops the lock when its process dies, however it dies, so a killed run never leaves a
  stale lock behind.
- :func:`clear_unstarted` empties a folder whose run never finished an epoch, so a command fixed
  after a failed first attempt (another seed, lr, ...) starts afresh there instead of being refused.

No TensorFlow import.
"""
import contextlib
import fcntl
import os
import shutil
import socket

from kerasprune import paths
from kerasprune.errors import KerasPruneError

LOCK = ".lock"
# What a run leaves before its first finished epoch; removed when it restarts with other settings.
_UNSTARTED = (paths.CONFIG, paths.INITIAL_WEIGHTS, paths.BACKUP, paths.TENSORBOARD, paths.HISTORY,
              "checkpoints", paths.POINTS_DIR, paths.POINTS_CSV, "progression.png", "lr_plateau_state.json")


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
    if os.path.isfile(os.path.join(out, paths.METRICS)):
        return True
    history = os.path.join(out, paths.HISTORY)
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
