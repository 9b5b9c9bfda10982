"""An append-only CSV results table that several processes can share (no TensorFlow import).

Each finished run is one row, appended at once: the row is written with a single ``write`` of a
whole line while an exclusive ``fcntl.flock`` is held on ``<table>.lock``, then flushed and synced.
A killed process therefore leaves either the whole row or nothing, and two sweeps appending to one
table never interleave. A row whose key (``method, variant, point, seed``) is already present is
not appended again, so a run finished twice (two sweeps racing, or a restart) is recorded once.
"""
import contextlib
import csv
import fcntl
import io
import os

import numpy as np

from kerasprune.runs import write_atomic

COLUMNS = ("method", "variant", "point", "seed", "pruned_params_pct", "pruned_neurons_pct",
           "test_error", "val_error", "test_loss", "target_pruned_params_pct", "epochs", "seconds",
           "run_dir", "pruned_neurons_ref_pct")
KEY = ("method", "variant", "point", "seed")


@contextlib.contextmanager
def file_lock(path, blocking=True):
    """Holds an exclusive lock on ``path`` (created if missing); yields False if ``blocking`` is
    False and another process holds it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def key_of(row):
    """The identity of a run: ``(method, variant, point, seed)`` as strings."""
    return tuple(_text(row.get(k, "")) for k in KEY)


def _text(value):
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class ResultsTable:
    """``DIR/results.csv``: :meth:`append` rows, :meth:`rows` to read, :meth:`done` for keys."""

    def __init__(self, path, columns=COLUMNS):
        self.path = path
        self.columns = tuple(columns)
        self.lock_path = path + ".lock"

    def rows(self):
        """All complete rows, as dicts of strings (a torn last line, if any, is ignored)."""
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline="") as f:
            text = f.read()
        if text and not text.endswith("\n"):  # only possible if a writer died mid-line
            text = text[:text.rfind("\n") + 1]
        return list(csv.DictReader(io.StringIO(text)))

    def done(self):
        """The set of keys already in the table."""
        return {key_of(r) for r in self.rows()}

    def append(self, row):
        """Appends ``row`` unless its key is present; returns True if it was appended."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}; table has {self.columns}")
        with file_lock(self.lock_path):
            if key_of(row) in self.done():
                return False
            self._repair_torn_line()  # first: a torn header leaves an empty file, which needs one
            self._migrate_header()
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
            if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
                writer.writeheader()
            writer.writerow({c: _cell(row.get(c)) for c in self.columns})
            data = buffer.getvalue().encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                while data:  # os.write may write less than asked (a full disk raises later)
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            return True

    def _migrate_header(self):
        """Rewrites a table written with fewer columns (an older kerasprune) under today's header,
        the new cells empty, so appended rows line up with their column names."""
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return
        with open(self.path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) == self.columns:
            return
        extra = set(header) - set(self.columns)
        if extra:
            raise ValueError(f"{self.path} has columns this table does not know: {sorted(extra)}")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({c: row.get(c, "") for c in self.columns})
        write_atomic(self.path, buffer.getvalue(), sync=True)

    def _repair_torn_line(self):
        """Drops a partial last line (a writer killed mid-write) so the next row starts clean."""
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            f.seek(0)
            f.truncate(data.rfind(b"\n") + 1)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, np.generic):  # repr(np.float64(0.25)) is "np.float64(0.25)" in NumPy 2
        value = value.item()
    if isinstance(value, float):
        return repr(value)
    return value


def read(path):
    """Rows of a results CSV with numeric columns converted to float (empty -> None)."""
    out = []
    for row in ResultsTable(path).rows():
        parsed = {}
        for k, v in row.items():
            if v in ("", None):
                parsed[k] = None
                continue
            try:
                parsed[k] = float(v) if k not in ("method", "variant", "run_dir") else v
            except ValueError:
                parsed[k] = v
        out.append(parsed)
    return out
