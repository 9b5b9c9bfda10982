"""``kerasprune sweep``: the paper's Figure 1 for one setup (LOBSTER vs one-shot retrainings)."""
import argparse
import os
import shlex
import subprocess
import sys
import tomllib

from kerasprune import config, report, results, runs, sweep
from kerasprune.commands import _common
from kerasprune.errors import KerasPruneError

HELP = "run every one-shot baseline at every LOBSTER operating point (Figure 1)"
DESCRIPTION = """Run the Figure 1 sweep of a setup described by a TOML file (see docs/sweep.md).

LOBSTER runs first (into OUT/lobster) unless the config names an existing run (lobster_dir);
then every baseline (lottery_rewind, random_reinit, random_structure, magnitude_oneshot, imp,
polynomial_decay) runs at every operating point for every seed. Each finished run is appended
at once to OUT/results.csv; OUT/figure1.png is drawn at the end, and OUT/exports.json records
SavedModels of the G (LOBSTER) and best 1-S solutions at the highest sparsity.
Killed, run the same command again: finished runs are skipped, unfinished ones resume. Two
sweeps on the same OUT share the work: --jobs N starts N processes that do (default: one per
core, each with one thread). On a cluster, --list-runs prints one resumable command per pending
run (--only RUN_ID) for any scheduler; a plain run afterwards assembles the table's figure and
exports (docs/distributed.md has SLURM and GNU parallel examples).

examples:
  kerasprune sweep experiments/quick.toml --out runs/quick
  kerasprune sweep experiments/lenet300_mnist.toml --out runs/lenet300_mnist
  kerasprune sweep experiments/quick.toml --out runs/quick --plot-only
  kerasprune sweep experiments/quick.toml --out runs/quick --list-runs
  kerasprune sweep experiments/quick.toml --out runs/quick --only random_reinit/point_003/seed_1
  kerasprune sweep experiments/lenet300_mnist.toml --out runs/lenet300_mnist \\
      --lobster-dir runs/lobster_lenet300_mnist
  kerasprune sweep experiments/lenet300_mnist_g_vs_1s.toml --out runs/g_vs_1s_p48 \\
      --lobster-dir runs/lobster_lenet300_mnist_pwe5 --points 48
"""

# The settings a flag may replace in the config file (all others are set in the file).
OVERRIDES = ("data_dir", "seeds", "methods", "points", "strategy", "lobster_dir")


def add_arguments(parser):
    parser.add_argument("config", help="sweep config (TOML), e.g. experiments/quick.toml")
    parser.add_argument("--out", required=True, help="sweep folder (rerun the same command to resume)")
    config.add_arguments(parser, sweep.SweepConfig, OVERRIDES, overrides=True)
    parser.add_argument("--plot-only", action="store_true",
                        help="only redraw OUT/figure1.png from OUT/results.csv")
    parser.add_argument("--jobs", type=_jobs, default="auto", metavar="N",
                        help="processes running the sweep's runs side by side, each with cores/N threads "
                             "(default auto: one per core)")
    parser.add_argument("--list-runs", action="store_true",
                        help="print one command per pending run (for a scheduler) and exit")
    parser.add_argument("--only", metavar="RUN_ID",
                        help="run only this run (an id from --list-runs, or 'lobster'); no figure")
    parser.add_argument("--no-assemble", action="store_true", help=argparse.SUPPRESS)


def _jobs(text):
    if text == "auto":
        return text
    return _common.positive_int(text)


def run(args):
    if args.plot_only:
        table = os.path.join(args.out, runs.RESULTS)
        if not os.path.isfile(table):
            raise KerasPruneError(f"{table} does not exist: run the sweep first")
        print(report.figure1(results.read(table), os.path.join(args.out, runs.FIGURE1)))
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = cores if args.jobs == "auto" else args.jobs
    if args.list_runs or args.only:
        jobs = 1
    argv = [a for a in getattr(args, "_argv", sys.argv[1:]) if a != "--list-runs"]
    if jobs > 1 and "KERASPRUNE_THREADS" not in os.environ:  # before TensorFlow loads (kerasprune._keras)
        os.environ["KERASPRUNE_THREADS"] = str(max(1, cores // jobs))
    setup = _setup(args)  # every setting checked here (TensorFlow loads), before any process starts
    if jobs > 1:
        # LOBSTER, a single sequential run the retrainings wait for, first, with every core; then
        # no more processes than runs are left (none left: this process only assembles).
        if not _lobster_ready(args):
            _spawn([*_without(argv, "--jobs", "--only"), "--jobs", "1", "--only", "lobster"], threads=None)
        jobs = min(jobs, len(sweep.pending_runs(setup, args.out)))
    if args.list_runs:
        pending = sweep.pending_runs(setup, args.out)
        base = ["kerasprune", *_without(argv, "--jobs", "--only")]
        for run_id in pending:
            print(shlex.join(base + ["--only", run_id]))
        if pending == [sweep.LOBSTER_RUN_ID]:
            print("# LOBSTER first; then --list-runs again for the retrainings", file=sys.stderr)
        elif not pending:
            print(f"# every run is done; `kerasprune {shlex.join(_without(argv, '--jobs', '--only'))}` "
                  "assembles the figure and exports", file=sys.stderr)
        return 0
    if jobs <= 1:
        sweep.run(setup, args.out, only=args.only, assemble=not args.no_assemble)
        return 0
    # Worker processes run the same sweep on the same folder: the per-run locks share the runs out.
    worker = [*_without(argv, "--jobs"), "--jobs", "1", "--no-assemble"]
    children = [_spawn(worker, threads=os.environ["KERASPRUNE_THREADS"], wait=False) for _ in range(jobs - 1)]
    try:
        sweep.run(setup, args.out, assemble=False)
    finally:
        codes = [c.wait() for c in children]
    if any(codes):
        raise KerasPruneError(f"{sum(1 for c in codes if c)} of the sweep's worker processes failed "
                              f"(exit codes {codes}); run the same command again to resume")
    sweep.run(setup, args.out)  # every run is done: the table's figure and exports
    return 0


def _lobster_ready(args):
    """True if the sweep's LOBSTER stage has nothing to run (read without loading TensorFlow)."""
    try:
        with open(args.config, "rb") as f:
            given = args.lobster_dir or tomllib.load(f).get("lobster_dir")
    except (OSError, tomllib.TOMLDecodeError):
        return True  # the sweep itself reports the bad file
    return bool(given) or os.path.isfile(runs.finished_marker(os.path.join(args.out, runs.SWEEP_LOBSTER),
                                                              "lobster"))


def _setup(args):
    """The sweep's config: its TOML file, with the settings given as flags replacing the file's."""
    return sweep.load_config(args.config, **{name: getattr(args, name) for name in OVERRIDES})


def _spawn(argv, threads, wait=True):
    """``kerasprune ARGV`` in a child process with ``threads`` TensorFlow threads (None: default)."""
    env = {k: v for k, v in os.environ.items() if k != "KERASPRUNE_THREADS"}
    if threads is not None:
        env["KERASPRUNE_THREADS"] = str(threads)
    child = subprocess.Popen([sys.executable, "-m", "kerasprune", *argv], env=env)
    if not wait:
        return child
    if child.wait():
        raise KerasPruneError(f"`kerasprune {' '.join(argv)}` failed (exit code {child.returncode})")
    return child


def _without(argv, *flags):
    """``argv`` without ``flags`` and their values (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in flags:
            skip = True
            continue
        if any(arg.startswith(f + "=") for f in flags):
            continue
        out.append(arg)
    return out
