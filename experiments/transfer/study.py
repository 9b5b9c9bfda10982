"""Issue 19's transfer study: runs every (source x regime x seed) cell of study.toml, one at a time.

The study is data (``experiments/transfer/study.toml``: sources, directions, regimes, seeds); this
driver only turns it into ``kerasprune transfer`` commands, so that which cells exist, which are done
and which sources are still missing is decided in one place, without TensorFlow. Each cell is a
subprocess (cwd = the repository root) writing into
``runs/transfer/<direction>/<source name>/<regime>/seed_<S>/``, its output appended to
``transfer.log`` there, next to ``cell.json`` (what the cell is, for summarize.py). A cell is finished
once its ``metrics.json`` exists, or once the committed ``experiments/results/transfer/results.csv``
holds its row (summarize.py writes it), so a fresh machine without the earlier sessions' run folders
does not run them again; the command resumes a killed run, so rerunning the driver continues where it
stopped. A source that does not exist yet is skipped with one line; a failed cell is logged
and the driver goes on, then exits nonzero listing the failed cells. A driver claims each cell
before it runs it (a lock file in the cell's folder, held until the cell ends) and leaves a cell
that another driver claimed, or that a ``kerasprune transfer`` of its own runs (its run lock), to
that process: several drivers can share the cores on one study.

  python experiments/transfer/study.py                     # everything not yet finished
  python experiments/transfer/study.py --only mnist/g/p12  # cells whose id contains the text
  python experiments/transfer/study.py --list              # every cell and its state
  python experiments/transfer/study.py --dry-run           # the commands, run nothing

Environment of the cells: ``KERASPRUNE_THREADS`` (default 1) and ``KERASPRUNE_DATA_DIR`` (default
/work/shared/datasets), unless already set.
"""
import argparse
import csv
import dataclasses
import fcntl
import glob
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from kerasprune.pure.points import read_operating_points  # noqa: E402  (no TensorFlow import)
from kerasprune.runs import CONFIG, FINAL_WEIGHTS, LOCK, METRICS, POINTS_CSV, RESULT  # noqa: E402  (nor here)

STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study.toml")
COMMITTED = os.path.join(ROOT, "experiments", "results", "transfer", "results.csv")
ENV_DEFAULTS = {"KERASPRUNE_THREADS": "1", "KERASPRUNE_DATA_DIR": "/work/shared/datasets"}
CELL, LOG = "cell.json", "transfer.log"
CLAIM = ".study.lock"  # a driver's claim on a cell; the run's own lock (LOCK) is taken by its subprocess
KINDS = ("dense", "g", "oneshot", "reinit", "random_structure")  # the order of tables and legends


@dataclasses.dataclass
class Source:
    """One source model of the study, resolved: ``skip`` says why it cannot run yet (else None)."""

    name: str
    direction: str
    level: str
    kind: str
    path: str  # relative to the repository root (or absolute)
    point: int | None = None  # LOBSTER operating point; None for a retraining run folder
    skip: str | None = None


def cell_id(direction, source, regime, seed):
    """``<direction>/<source name>/<regime>/seed_<S>``: a cell's name, in the driver and in results.csv's rows."""
    return f"{direction}/{source}/{regime}/seed_{int(seed)}"


@dataclasses.dataclass
class Cell:
    """One (source x regime x seed) run of ``kerasprune transfer``."""

    source: Source
    regime: str
    seed: int
    target: str  # the command's --dataset
    args: list  # the regime's extra arguments
    out: str  # run folder, relative to the repository root
    export_dir: str | None = None

    @property
    def id(self):
        """:func:`cell_id` of this cell: what --only matches and the lines show."""
        return cell_id(self.source.direction, self.source.name, self.regime, self.seed)

    def command(self, python=sys.executable):
        cmd = [python, "-m", "kerasprune", "transfer", "--source", self.source.path]
        if self.source.point is not None:
            cmd += ["--point", str(self.source.point)]
        cmd += ["--dataset", self.target, *self.args, "--seed", str(self.seed), "--out", self.out]
        if self.export_dir:
            cmd += ["--export-dir", self.export_dir]
        return cmd

    def description(self):
        """What summarize.py needs to know of the cell beyond its metrics.json."""
        return {"direction": self.source.direction, "source": self.source.name, "level": self.source.level,
                "kind": self.source.kind, "source_path": self.source.path, "point": self.source.point,
                "regime": self.regime, "seed": self.seed, "target": self.target,
                "command": shlex.join(self.command("python"))}


def load_study(path=STUDY):
    with open(path, "rb") as f:
        study = tomllib.load(f)
    for key in ("out", "directions", "regimes", "sources"):
        if key not in study:
            raise SystemExit(f"{path}: no `{key}`")
    directions = {d["name"] for d in study["directions"]}
    for s in study["sources"]:
        if s["direction"] not in directions:
            raise SystemExit(f"{path}: source {s['name']} has unknown direction {s['direction']!r}")
        if s["kind"] not in KINDS:
            raise SystemExit(f"{path}: source {s['name']} has kind {s['kind']!r}, not one of {', '.join(KINDS)}")
    return study


class _Unknown:
    """Stands for a field of an exports.json that does not exist yet: formats as P."""

    def __format__(self, spec):
        return "P"


class _Fields(dict):
    """Format fields; a key it lacks formats as P and is remembered in ``missing``."""

    def __init__(self):
        super().__init__()
        self.missing = set()

    def __missing__(self, key):
        self.missing.add(key)
        return _Unknown()


def _fill(template, fields):
    return template.format_map(fields) if isinstance(template, str) else template


def exports_fields(pattern, root=ROOT):
    """The fields of the exports.json matching ``pattern`` (the highest ``g_point`` if several), with
    ``sweep``, ``g_run`` and ``oneshot_run`` added; None if none matches."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, pattern))):
        try:
            with open(path) as f:
                fields = json.load(f)
        except (OSError, ValueError) as exc:  # being written, or damaged: as if not there yet
            print(f"ignoring {path}: {type(exc).__name__}: {exc}")
            continue
        sweep = os.path.relpath(os.path.dirname(path), root)
        fields["sweep"] = sweep
        if fields.get("g_source"):  # <LOBSTER run>/points/point_PPP.weights.h5
            fields["g_run"] = os.path.dirname(os.path.dirname(fields["g_source"]))
        if fields.get("oneshot_source"):  # <retraining run folder>/final.weights.h5
            fields["oneshot_run"] = os.path.dirname(fields["oneshot_source"])
        found.append(fields)
    return max(found, key=lambda f: int(f.get("g_point", -1))) if found else None


def readiness(path, point, root=ROOT, dataset=None):
    """Why the source at ``path`` (``point``: a LOBSTER operating point) cannot be transferred yet, in a
    few words; None if it can. A LOBSTER point must be finished and a retraining run folder must have
    its final weights and its ``result.json``, the sweep's mark of a finished retraining
    (`kerasprune transfer` refuses both otherwise; this says it in one line, without TensorFlow). With ``dataset``, the run's config.json must
    name it (the direction's source dataset: a wrong path in study.toml is caught here)."""
    folder = os.path.join(root, path)
    if not os.path.isdir(folder):
        return f"{path} does not exist"
    config_path = os.path.join(folder, CONFIG)
    if not os.path.isfile(config_path):
        return f"{path} has no {CONFIG} yet"
    if point is None:
        if not os.path.isfile(os.path.join(folder, FINAL_WEIGHTS)):
            return f"{path} has no {FINAL_WEIGHTS} yet"
        if not os.path.isfile(os.path.join(folder, RESULT)):  # the retraining's finished mark, written last
            return f"{path} has no {RESULT} yet (the retraining has not finished)"
    else:
        table = os.path.join(folder, POINTS_CSV)
        if not os.path.isfile(table):
            return f"{path} has no {POINTS_CSV}"
        try:
            finished = [r["point"] for r in read_operating_points(folder, finished=True)]
        except Exception as exc:  # a damaged table: one line, as kerasprune says it
            return f"{table}: {str(exc).splitlines()[0]}"
        if point not in finished:
            last = max(finished) if finished else "none"
            return f"point {point} of {path} is not finished yet (last finished point: {last})"
    if dataset is not None:
        try:
            with open(config_path) as f:
                trained_on = json.load(f).get("dataset")
        except (OSError, ValueError) as exc:
            return f"{config_path} is unreadable ({type(exc).__name__})"
        if trained_on != dataset:
            return f"{path} was trained on {trained_on}, not {dataset} as its direction says"
    return None


def resolve_sources(study, root=ROOT):
    """Every source of the study as a :class:`Source`, exports.json templates filled in where they exist."""
    datasets = {d["name"]: d.get("source_dataset") for d in study["directions"]}
    out = []
    for entry in study["sources"]:
        fields, skip = _Fields(), None
        if "exports" in entry:
            found = exports_fields(entry["exports"], root)
            if found is None:
                skip = f"no {entry['exports']} yet (its sweep has not run)"
            else:
                fields.update(found)
        name, path = _fill(entry["name"], fields), _fill(entry["path"], fields)
        point = _fill(entry.get("point"), fields)
        if skip is None and fields.missing:
            skip = f"{entry['exports']} has no {', '.join(sorted(fields.missing))}"
        if skip is not None:
            point = None
        elif point is not None:
            try:
                point = int(point)
            except ValueError:
                skip, point = f"point {point!r} is not a number", None
        source = Source(name, entry["direction"], entry["level"], entry["kind"], path, point, skip)
        if source.skip is None:
            source.skip = readiness(path, point, root, datasets[source.direction])
        out.append(source)
    return out


def enumerate_cells(study, sources):
    """Every (source x regime x seed) cell, in the study's order: source by source, regime by regime."""
    targets = {d["name"]: d["target"] for d in study["directions"]}
    cells = []
    for source in sources:
        for regime in study["regimes"]:
            for seed in regime["seeds"]:
                cell = Cell(source, regime["name"], int(seed), targets[source.direction], list(regime["args"]),
                            out="", export_dir=study.get("export_dir"))
                cell.out = os.path.join(study["out"], cell.id)
                cells.append(cell)
    return cells


def select(cells, only):
    """The cells whose id contains any of the ``only`` texts (all cells when ``only`` is empty)."""
    return [c for c in cells if not only or any(text in c.id for text in only)]


def committed_cells(path=COMMITTED):
    """The ids of the cells that the committed results table holds (none if it does not exist)."""
    if not os.path.isfile(path):
        return frozenset()
    with open(path, newline="") as f:
        return frozenset(cell_id(r["direction"], r["source"], r["regime"], r["seed"]) for r in csv.DictReader(f))


def is_finished(cell, root=ROOT, committed=frozenset()):
    """Its ``metrics.json`` exists here, or its row is among ``committed`` (see committed_cells)."""
    return cell.id in committed or os.path.isfile(os.path.join(root, cell.out, METRICS))


def _lock(path):
    """An open file of ``path`` holding its lock (``fcntl.flock``, freed when the process dies), or None
    if another process holds it. "a+": opening does not truncate the holder's pid line."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim(cell, root=ROOT):
    """This driver's claim on ``cell``: an open file to close when the cell ends, or None if another
    driver claimed it or a process holds its run lock (a ``kerasprune transfer`` started by hand).
    Taking the claim is atomic, so two drivers never start one cell; the subprocess that runs it
    takes the run lock a few seconds later, when TensorFlow has loaded."""
    folder = os.path.join(root, cell.out)
    os.makedirs(folder, exist_ok=True)
    handle = _lock(os.path.join(folder, CLAIM))
    if handle is None:
        return None
    run_lock = os.path.join(folder, LOCK)
    if os.path.isfile(run_lock):
        probe = _lock(run_lock)
        if probe is None:  # a transfer is running the cell
            handle.close()
            return None
        probe.close()  # closing frees the lock at once
    return handle


def env_for_cells(base=None):
    env = dict(os.environ if base is None else base)
    for key, value in ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def skip_lines(cells):
    """One line per skipped source, with how many of the selected cells it holds back."""
    counts = {}
    for cell in cells:
        if cell.source.skip is not None:
            key = (cell.source.direction, cell.source.name, cell.source.skip)
            counts[key] = counts.get(key, 0) + 1
    return [f"skip {d}/{name}: {why} ({n} cells)" for (d, name, why), n in counts.items()]


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_cell(cell, env, root=ROOT):
    """Runs one cell to the end; returns (exit code, last line of its log)."""
    folder = os.path.join(root, cell.out)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CELL), "w") as f:
        json.dump(cell.description(), f, indent=2)
    log_path = os.path.join(folder, LOG)
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cell.command('python'))}\n")
        log.flush()
        code = subprocess.run(cell.command(), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    with open(log_path, "rb") as f:  # its end only: the log grows with every resume
        f.seek(max(0, os.path.getsize(log_path) - 4096))
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    return code, (lines[-1] if lines else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=STUDY, help="the study's TOML (default: study.toml beside this script)")
    parser.add_argument("--only", action="append", default=[], metavar="SUBSTRING",
                        help="only the cells whose id (direction/source/regime/seed_S) contains this text; "
                             "may repeat (any matches)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands of the unfinished cells, run nothing")
    parser.add_argument("--list", action="store_true", help="print every selected cell and its state, run nothing")
    parser.add_argument("--committed", default=COMMITTED, metavar="CSV",
                        help="results table whose cells count as finished (default: the committed one; "
                             "'' for none: run every cell without a metrics.json here)")
    args = parser.parse_args(argv)
    config = load_study(args.study)
    committed = committed_cells(args.committed) if args.committed else frozenset()
    cells = select(enumerate_cells(config, resolve_sources(config)), args.only)
    if args.list:
        for cell in cells:
            state = ("skipped: " + cell.source.skip if cell.source.skip else
                     "done" if is_finished(cell, committed=committed) else "to do")
            print(f"{cell.id}  {state}")
        return 0
    for line in skip_lines(cells):
        print(line)
    runnable = [c for c in cells if c.source.skip is None]
    env = env_for_cells()
    start, failed, busy, ran = time.time(), [], [], 0
    for k, cell in enumerate(runnable, start=1):
        head = f"[{k}/{len(runnable)} {_clock(time.time() - start)}]"
        if is_finished(cell, committed=committed):
            print(f"{head} done {cell.id}", flush=True)
            continue
        if args.dry_run:
            print(f"{head} would run: {shlex.join(cell.command('python'))}", flush=True)
            continue
        claimed = claim(cell)
        if claimed is None:
            busy.append(cell.id)
            print(f"{head} busy {cell.id}: another process runs it", flush=True)
            continue
        print(f"{head} started {cell.id}", flush=True)
        began = time.time()
        with claimed:
            code, last = run_cell(cell, env)
        ran += 1
        if code == 0 and is_finished(cell):
            with open(os.path.join(ROOT, cell.out, METRICS)) as f:
                accuracy = json.load(f).get("test_accuracy")
            print(f"{head} finished {cell.id} in {_clock(time.time() - began)}, test accuracy {accuracy:.4f}",
                  flush=True)
        else:
            failed.append(cell.id)
            print(f"{head} FAILED {cell.id} (exit {code}, {os.path.join(cell.out, LOG)}): {last}", flush=True)
    skipped = len(cells) - len(runnable)
    print(f"{len(cells)} cells selected: {sum(is_finished(c, committed=committed) for c in runnable)} finished, {ran} run now, "
          f"{len(failed)} failed, {len(busy)} left to another process, {skipped} skipped (source missing); "
          f"{_clock(time.time() - start)}")
    if failed:
        print("failed cells: " + " ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
