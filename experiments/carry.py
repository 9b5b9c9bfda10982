"""Carries long runs across machines: a run folder's resumable state in one small committed archive.

A session's machine may be replaced by a fresh one, and ``runs/`` goes with it. ``pack`` writes what
a resume needs into ``experiments/carry/<name>.tar.xz``: config, history, operating points, the
metrics, the initial weights, the Keras backup (weights, masks, best weights, plateau state) and
the weights of the points named with ``--points`` (default: the last one, whose test error is
measured when its level ends). Pruned weights are exact zeros, so xz shrinks them. ``unpack``
lays it out again, after which the run's own command resumes it. A running run is paused
(SIGSTOP) while it is packed, so the archive holds one consistent epoch.

A sweep folder (``sweep_config.json``) packs whole, every retraining in it; a finished retraining
(``result.json``) keeps its model (``final.weights.h5``), config, history and result but not its
resume state (``backup/``, ``checkpoints/``), which is most of its size and no longer needed.
An IMP chain (``runs/<sweep>/runs/imp/seed_S``, one ``level_KK`` folder a round) packs the same
way, except that of its finished rounds only the last keeps its weights: the next round prunes from
those alone (``oneshot.imp``), and the earlier rounds' results and histories stay. Unpacking compares
a sweep by the rows of its ``results.csv``, a chain by its finished rounds, a run by its epochs.

usage:
  python experiments/carry.py pack runs/lobster_lenet5_mnist_reference [--points 0,64,last]
  python experiments/carry.py unpack experiments/carry/lobster_lenet5_mnist_reference.tar.xz runs/
  python experiments/carry.py pack runs/lenet5_budget          # a sweep folder and its retrainings
  python experiments/carry.py pack runs/lenet300_mnist/runs/lottery_rewind/point_032/seed_7   # one of them
  python experiments/carry.py pack runs/lenet5_mnist/runs/imp/seed_2      # an IMP chain cut halfway
  python experiments/carry.py unpack-all runs/      # every archive whose run folder is missing or older
  python experiments/carry.py restore-table experiments/results/lenet5_mnist/results.csv runs/lenet5_mnist

``restore-table`` is for a sweep whose retrainings are not carried, only its committed table: the
sweep skips every run in its ``results.csv``, so the committed rows go there. They are merged by run
key (the local table may have rows the committed copy has not yet), under the table's lock (a sweep
may be appending).
"""
import argparse
import contextlib
import csv
import io
import os
import signal
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from kerasprune import results, runs  # noqa: E402  (no TensorFlow import)

CARRY = os.path.join(HERE, "carry")
SKIP = (runs.POINTS_DIR, "saved_models")  # points are chosen one by one; exports are rebuilt by `export`
DONE_SKIP = (runs.BACKUP, runs.CHECKPOINTS)  # a finished retraining's resume state: its model is final.weights.h5
ROOT_FILES = (runs.CONFIG, runs.SWEEP_CONFIG, runs.IMP_CHAIN)  # what marks the carried folder at the archive's top
UNITS = {"sweep": "results.csv rows", "chain": "finished rounds", "run": "epochs"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="archive a run folder's resumable state")
    p.add_argument("run_dir")
    p.add_argument("--points", default="last", help="point numbers to keep, comma-separated, 'last' for the "
                                                     "last one, 'all' for every one (default: last)")
    p.add_argument("--out", default=None, help="archive path (default experiments/carry/<run name>.tar.xz)")
    u = sub.add_parser("unpack", help="restore a run folder from its archive")
    u.add_argument("archive")
    u.add_argument("parent", help="folder to create the run folder in (e.g. runs/)")
    a = sub.add_parser("unpack-all", help="restore every archive in experiments/carry/")
    a.add_argument("parent")
    t = sub.add_parser("restore-table", help="merge a committed results.csv into a sweep folder's own")
    t.add_argument("committed", help="e.g. experiments/results/lenet5_mnist/results.csv")
    t.add_argument("sweep", help="the sweep folder (created if missing), e.g. runs/lenet5_mnist")
    args = parser.parse_args(argv)
    if args.command == "pack":
        path = pack(args.run_dir, args.points, args.out)
        print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB, {progress_text(args.run_dir)}")
    elif args.command == "unpack":
        print(unpack(args.archive, args.parent))
    elif args.command == "restore-table":
        print(restore_table(args.committed, args.sweep))
    else:
        for name in sorted(os.listdir(CARRY)):
            if name.endswith(".tar.xz"):
                print(unpack(os.path.join(CARRY, name), args.parent))


def pack(run_dir, points="last", out=None):
    run_dir = os.path.normpath(run_dir)
    name = _name_under_runs(run_dir)  # e.g. search_rules/reference_seed0: unpacked there under runs/
    out = out or os.path.join(CARRY, f"{name.replace('/', '__')}.tar.xz")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    keep = _chosen_points(run_dir, points)
    superseded = set()  # an IMP chain's finished rounds before its last: their weights are not needed
    with runs.atomic_path(out) as tmp, _paused(run_dir), tarfile.open(tmp, "w:xz") as tar:
        for root, dirs, files in os.walk(run_dir):
            rel = os.path.relpath(root, run_dir)
            if rel == ".":
                dirs[:] = [d for d in dirs if d not in SKIP]
            if runs.RESULT in files:  # a finished retraining (of a sweep): its model, not its resume state
                dirs[:] = [d for d in dirs if d not in DONE_SKIP]
            if runs.IMP_CHAIN in files:
                superseded |= {os.path.join(root, d) for d in runs.finished_rounds(root)[:-1]}
            for f in files:
                if f.endswith(".tmp") or ".tmp." in f:
                    continue
                if f == runs.FINAL_WEIGHTS and root in superseded:
                    continue
                tar.add(os.path.join(root, f), arcname=os.path.normpath(os.path.join(name, rel, f)))
        for weights in keep:
            tar.add(os.path.join(run_dir, weights), arcname=os.path.join(name, weights))
    return out


def _name_under_runs(run_dir):
    """``run_dir`` relative to its outermost ``runs`` ancestor (else its own name): a retraining
    inside a sweep, ``runs/<sweep>/runs/<method>/...``, keeps its sweep's path."""
    parts = os.path.abspath(run_dir).split(os.sep)
    if "runs" in parts[:-1]:
        return "/".join(parts[parts.index("runs") + 1:])
    return parts[-1]


def unpack(archive, parent):
    """Restores ``archive`` under ``parent`` unless a run folder there has as many epochs or more."""
    with tarfile.open(archive, "r:xz") as tar:
        # The carried folder: the shortest path holding a config.json, sweep_config.json or chain.json
        # (its tensorboard/, a sweep's retrainings, a chain's rounds etc. are deeper).
        members = tar.getmembers()
        name = min((m.name.rsplit("/", 1)[0] for m in members if m.name.rsplit("/", 1)[-1] in ROOT_FILES),
                   key=len)
        target = os.path.join(parent, name)
        kind = _kind({m.name[len(name) + 1:] for m in members if m.name.startswith(name + "/")})
        if kind == "chain":
            carried = sum(1 for m in members if m.name.startswith(name + "/")
                          and m.name[len(name) + 1:].count("/") == 1 and m.name.endswith("/" + runs.RESULT))
        else:
            counted = runs.RESULTS if kind == "sweep" else runs.HISTORY
            member = next((m for m in members if m.name == f"{name}/{counted}"), None)
            carried = _count(tar.extractfile(member).read().decode(), kind == "sweep") if member else 0
        there = progress_in(target)
        unit = UNITS[kind]
        if there >= carried and os.path.isdir(target):
            return f"{target}: kept ({there} {unit} there, {carried} in the archive)"
        if os.path.isdir(target):
            raise SystemExit(f"{target} exists with {there} {unit}, fewer than the archive's {carried}: "
                             "move it away first, then unpack again")
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        tar.extractall(parent, filter="data")
    return f"{target}: restored ({carried} {unit}); rerun its command to resume"


def restore_table(committed, sweep):
    """Appends to ``SWEEP/results.csv`` every row of ``committed`` whose run is not there yet."""
    if not os.path.isfile(committed):
        return f"{committed}: no committed table (nothing to restore)"
    table = results.ResultsTable(os.path.join(sweep, runs.RESULTS))
    rows = results.ResultsTable(committed).rows()
    added = sum(table.append(row) for row in rows)
    return f"{table.path}: {added} of {len(rows)} committed rows added, {len(table.rows())} rows now"


def progress_in(folder):
    """A run folder's epochs, a chain's finished rounds, or the rows of a sweep folder's results.csv."""
    kind = _kind(os.listdir(folder) if os.path.isdir(folder) else ())
    if kind == "chain":
        return len(runs.finished_rounds(folder))
    path = os.path.join(folder, runs.RESULTS if kind == "sweep" else runs.HISTORY)
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return _count(f.read(), kind == "sweep")


def progress_text(folder):
    return f"{progress_in(folder)} {UNITS[_kind(os.listdir(folder))]}"


def _kind(names):
    """``"sweep"``, ``"chain"`` (IMP) or ``"run"``, from the names in the folder's top level."""
    return "sweep" if runs.SWEEP_CONFIG in names else "chain" if runs.IMP_CHAIN in names else "run"


def _count(text, sweep=False):
    rows = list(csv.DictReader(io.StringIO(text)))
    return len(rows) if sweep else len({row.get("epoch") for row in rows})


def _chosen_points(run_dir, spec):
    path = os.path.join(run_dir, runs.POINTS_CSV)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if spec == "all":
        wanted = {r["point"] for r in rows}
    else:
        wanted = {rows[-1]["point"] if p == "last" and rows else p for p in spec.split(",") if p}
    return [r["weights"] for r in rows if r["point"] in wanted
            and os.path.isfile(os.path.join(run_dir, r["weights"]))]


@contextlib.contextmanager
def _paused(run_dir):
    """SIGSTOP the processes writing ``run_dir`` (found by ``--out`` on their command line: the
    folder itself, or the sweep it belongs to)."""
    pids = []
    target = os.path.realpath(run_dir)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if "--out" in argv[:-1] and "python" in os.path.basename(argv[0]):
            out = argv[argv.index("--out") + 1]
            out = os.path.realpath(os.path.join(cwd, out))
            if target == out or target.startswith(out + os.sep):
                pids.append(int(pid))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


if __name__ == "__main__":
    sys.exit(main())
