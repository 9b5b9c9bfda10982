"""The Figure 1 sweep: every baseline at every LOBSTER operating point, for N seeds.

A sweep is described by a TOML file (``experiments/<setup>.toml``, see docs/sweep.md) and runs in an
output folder ``OUT``:
  - ``OUT/lobster/``: LOBSTER's run folder (run first with ``kerasprune.lobster.run`` unless the
    config's ``lobster_dir`` points at an existing one); its ``operating_points.csv`` gives the points.
  - ``OUT/dense/seed_S/``: the dense model the magnitude baselines (and IMP) start from.
  - ``OUT/runs/<method>[_<variant>]/point_XXX/seed_S/``: one run folder per retraining (TensorBoard
    logs, history, result.json); ``OUT/runs/imp/seed_S/level_KK/``: the IMP chain's rounds.
  - ``OUT/results.csv``: one row per finished run, appended at once (:mod:`kerasprune.results`).
  - ``OUT/figure1.png``, ``OUT/exports.json`` (SavedModels of the G and best 1-S solutions).
Killed and rerun, a sweep skips every (method, variant, point, seed) already in the table and
resumes unfinished runs; two sweeps on one folder split the work through per-run file locks.

The baselines are the :data:`METHODS` registry. The modules that train (``oneshot``, ``masks``,
``lobster``, ``training``) import TensorFlow, so they are imported inside the functions that use them:
``kerasprune sweep --help`` reads :class:`SweepConfig`'s fields from here, and the command sets each
worker's thread count before TensorFlow loads.
"""
import dataclasses
import math
import os
import time
import tomllib
from typing import Callable, Dict, List, Optional

from kerasprune import report, results, runs
from kerasprune.config import LobsterConfig, RunSettings, TrainConfig, setting
from kerasprune.distribute import declare_strategy, is_chief, parse_strategy
from kerasprune.errors import KerasPruneError
from kerasprune.pure.inits import INITS, init_of_run
from kerasprune.pure.points import read_operating_points as read_points
from kerasprune.registry import Registry
from kerasprune.results import ResultsTable, file_lock, key_of

# Fresh initialisations use seed FRESH_INIT_SEED_OFFSET + s, away from LOBSTER's (small) seeds.
FRESH_INIT_SEED_OFFSET = 10_000
# The paper's "1-S": "the best one-shot solution (Frankle and Carbin)" (Fig. 2's caption), so only
# rewinds compete for it; a re-init or random structure with a lower validation error is not 1-S.
ONESHOT_FOR_EXPORT = ("lottery_rewind",)
MAGNITUDE_COUNTS = ("params", "kernels")  # SweepConfig.magnitude_count


@dataclasses.dataclass(frozen=True)
class Method:
    """How the sweep runs one baseline. ``retrain(ctx, job, config, run_dir, verbose)`` returns the
    run's result (None: it recorded its rows itself, as IMP's chain does once per level)."""

    retrain: Callable
    fresh_init: bool = False  # initialised from a fresh seed, never LOBSTER's (:meth:`_Context.fresh_init_seed`)
    variants: Optional[str] = None  # the SweepConfig field that lists its variants (one run each)
    per_seed: bool = False  # one run per seed covers every point (a chain of rounds)
    uses_mask: bool = False  # needs LOBSTER's weights at its point (:meth:`_Context.mask`)
    counted: bool = False  # prunes kernels to a count taken from the point (SweepConfig.magnitude_count)


METHODS = Registry("sweep method")  # registered in Figure 1's order, which a sweep runs and results.csv keeps


def method(name, **kind):
    """Registers the decorated ``retrain`` function as the baseline ``name`` (``kind``: :class:`Method` fields)."""
    def decorator(retrain):
        METHODS.register(name)(Method(retrain, **kind))
        return retrain

    return decorator


@dataclasses.dataclass
class SweepConfig(RunSettings):
    """One setup of Figure 1: the shared :class:`~kerasprune.config.RunSettings` (they apply to the
    dense runs and to every retraining) plus these, the top-level keys of its TOML file."""

    name: str = setting("sweep", "the setup's name, in the figure's title (load_config: the file's name)")
    seeds: List[int] = setting(help="seeds of every baseline; LOBSTER uses the first", factory=lambda: [0, 1])
    method_seeds: Dict[str, List[int]] = setting(
        help="seeds of the baselines named here (a [method_seeds] table, e.g. imp = [0, 1, 2]); the others "
             "use seeds. Issue 18 runs the lottery baselines at 10 seeds and the rest at 3", factory=dict)
    methods: List[str] = setting(help="baselines to run", factory=lambda: list(METHODS),
                                 shown_default="every baseline")
    magnitude_scopes: List[str] = setting(help="variants of magnitude_oneshot: layer (TF-MOT), global (open_lth)",
                                          factory=lambda: ["layer", "global"])
    points: Optional[List[int]] = setting(None, "LOBSTER operating points (indices) to run",
                                          shown_default="every finished point with sparsity > 0")
    epochs: int = setting(10, "retraining epochs of every baseline (and of each IMP round)")
    dense_epochs: int = setting(10, "training epochs of the dense model the magnitude baselines prune")
    imp_rate: float = setting(0.2, "fraction of the kept kernels each IMP round prunes")
    # LOBSTER prunes biases too, so at its count of pruned parameters a kernel-only method keeps
    # fewer kernel weights than LOBSTER's mask (32% fewer at LeNet-5's 99.58%); "kernels" compares
    # them at equal kernel weights instead. "params" is TF-MOT's and open_lth's way, the default.
    magnitude_count: str = setting("params", "what magnitude_oneshot and polynomial_decay match at a LOBSTER point: "
                                             "params (its pruned share of all parameters, kernels alone carrying "
                                             "it) or kernels (the kernel weights its mask keeps)",
                                   choices=MAGNITUDE_COUNTS)
    lobster_dir: Optional[str] = setting(None, "use this existing LOBSTER run folder (its finished operating "
                                               "points) instead of running LOBSTER in OUT/lobster")
    # One init for the LOBSTER run and every fresh model of the sweep (re-inits, random structures,
    # dense runs): a rewind starts from LOBSTER's initial weights, so comparing it with a re-init
    # drawn another way would compare inits, not structures.
    init: Optional[str] = setting(None, "initial weights of LOBSTER and of every fresh model (see kerasprune train "
                                        "--help)", choices=INITS,
                                  shown_default="lobster_dir's, else authors (the [lobster] table's if it sets one)")
    # The [lobster] table: a dict of LobsterConfig fields becomes the LobsterConfig, checked here.
    lobster: Optional[LobsterConfig] = setting(None, "the LOBSTER run's settings: the [lobster] table's, else "
                                                     "the shared settings above and the first seed")

    def __post_init__(self):
        super().__post_init__()
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise KerasPruneError(f"unknown methods {sorted(unknown)}; valid names are: {', '.join(METHODS)}")
        bad = set(self.magnitude_scopes) - {"layer", "global"}
        if bad:
            raise KerasPruneError(f"unknown magnitude_scopes {sorted(bad)}; valid: layer, global")
        if not self.seeds:
            raise KerasPruneError("seeds must list at least one seed")
        unknown = set(self.method_seeds) - set(METHODS)
        if unknown:
            raise KerasPruneError(f"[method_seeds] has unknown methods {sorted(unknown)}; valid names are: "
                                  f"{', '.join(METHODS)}")
        empty = sorted(name for name, seeds in self.method_seeds.items() if not seeds)
        if empty:
            raise KerasPruneError(f"[method_seeds] must list at least one seed for {empty}")
        if not 0 < self.imp_rate < 1:
            raise KerasPruneError(f"imp_rate must be in (0, 1), got {self.imp_rate}")
        if self.magnitude_count not in MAGNITUDE_COUNTS:
            raise KerasPruneError(f"magnitude_count must be one of {', '.join(MAGNITUDE_COUNTS)}, "
                                  f"got {self.magnitude_count!r}")
        if self.magnitude_count == "kernels" and "imp" in self.methods:
            raise KerasPruneError("magnitude_count = 'kernels' applies to magnitude_oneshot and polynomial_decay; "
                                  "an IMP chain's levels are shares of all parameters: drop imp from methods")
        if parse_strategy(self.strategy)[0] == "multiworker":
            # Every worker would take the sweep's file locks on its own and pick its own next
            # run, so the workers' collectives fall out of step (or wait on each other's lock).
            raise KerasPruneError("a sweep cannot run under multiworker: its runs are independent, so start "
                                  "one sweep process per machine or device on the same --out instead "
                                  "(docs/distributed.md); use multiworker for single train/lobster runs")
        if self.init is None:
            self.init = self._inherited_init()
        if self.init not in INITS:
            raise KerasPruneError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not isinstance(self.lobster, LobsterConfig):
            self.lobster = self._lobster_config(self.lobster or {})
        if self.lobster.init != self.init:
            raise KerasPruneError(f"[lobster] init {self.lobster.init!r} differs from the sweep's {self.init!r}: set "
                                  "init once, at the top level (LOBSTER and the fresh models share it)")

    def _inherited_init(self):
        """``init`` when the file does not set it: the LOBSTER run's (``lobster_dir``), else the [lobster]
        table's, else LobsterConfig's default."""
        if self.lobster_dir:
            return init_of_run({"model": self.model, **_lobster_config(self.lobster_dir)})
        if isinstance(self.lobster, LobsterConfig):
            return self.lobster.init
        table = self.lobster if isinstance(self.lobster, dict) else {}  # another type: _lobster_config says so
        return table.get("init") or LobsterConfig.__dataclass_fields__["init"].default

    def _lobster_config(self, table):
        """The LOBSTER run's config: the sweep's shared settings and first seed, then ``table``'s values."""
        if not isinstance(table, dict):
            raise KerasPruneError(f"lobster must be a table of LobsterConfig fields, got {table!r}")
        valid = {f.name for f in dataclasses.fields(LobsterConfig)}
        unknown = set(table) - valid
        if unknown:
            raise KerasPruneError(f"[lobster] has unknown keys {sorted(unknown)}; valid: {', '.join(sorted(valid))}")
        try:
            return LobsterConfig(**{**self.settings(), "seed": self.seeds[0], "init": self.init, **table})
        except KerasPruneError as exc:
            raise KerasPruneError(f"[lobster] {exc}") from None

    def seeds_of(self, method):
        """The seeds ``method`` runs with: its ``method_seeds`` entry, else ``seeds``."""
        return list(self.method_seeds.get(method, self.seeds))

    def train_config(self, seed, epochs=None):
        return TrainConfig(**self.settings(), seed=seed, init=self.init,
                           epochs=self.epochs if epochs is None else epochs)


def load_config(path, **overrides):
    """A :class:`SweepConfig` from a TOML file: top-level keys are its fields, ``[lobster]`` the
    LobsterConfig fields. ``overrides`` (non-None) replace file values."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise KerasPruneError(f"sweep config {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise KerasPruneError(f"{path}: not valid TOML: {exc}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    valid = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = set(raw) - valid
    if unknown:
        raise KerasPruneError(f"{path}: unknown keys {sorted(unknown)}; valid keys are: {', '.join(sorted(valid))}")
    raw.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return SweepConfig(**raw)


# ---------------------------------------------------------------------------------------------
# LOBSTER's operating points (the shared run-folder contract).

def read_operating_points(lobster_dir):
    """The finished operating points of ``lobster_dir`` (rows with a test error), numbers parsed:
    :func:`kerasprune.pure.points.read_operating_points` with ``finished=True``."""
    return read_points(lobster_dir, finished=True)


def ensure_lobster(config, out, verbose="auto"):
    """The LOBSTER run folder of the sweep.

    ``lobster_dir`` from the config is used as it is. Otherwise ``OUT/lobster`` is run (or resumed,
    or found finished) with ``kerasprune.lobster.run`` and the config's nested ``lobster`` settings.
    """
    if config.lobster_dir:
        if not os.path.isfile(os.path.join(config.lobster_dir, runs.POINTS_CSV)):
            raise KerasPruneError(f"lobster_dir {config.lobster_dir!r} has no {runs.POINTS_CSV}")
        _check_same_setup(config, config.lobster_dir)
        return config.lobster_dir
    from kerasprune import lobster

    lobster_dir = os.path.join(out, runs.SWEEP_LOBSTER)
    with file_lock(lobster_dir + ".lock"):
        print(f"[sweep] LOBSTER run {lobster_dir} (its operating points drive the sweep)", flush=True)
        lobster.run(config.lobster, lobster_dir, verbose=verbose)
    return lobster_dir


def point_mask(config, lobster_dir, row):
    """LOBSTER's mask at an operating point: nonzero over all prunable parameters."""
    from kerasprune import masks, oneshot

    model = oneshot.build_model(config.train_config(0))
    model.load_weights(os.path.join(lobster_dir, row["weights"]))
    return masks.mask_of(model)


# ---------------------------------------------------------------------------------------------
# The runner.

@dataclasses.dataclass
class Job:
    method: str
    variant: str
    point: Optional[int]  # None for IMP: one job per seed covers all points
    seed: int

    def keys(self, points):
        pts = [p["point"] for p in points] if self.point is None else [self.point]
        return [key_of({"method": self.method, "variant": self.variant, "point": p, "seed": self.seed})
                for p in pts]

    def is_done(self, points, done):
        """Every row this job writes is among ``done`` (:meth:`ResultsTable.done`'s keys)."""
        return all(k in done for k in self.keys(points))

    @property
    def run_id(self):
        """``method[_variant]/point_NNN/seed_S`` (IMP: ``imp/seed_S``): the run's folder under
        ``OUT/runs/`` and its name for ``--only``."""
        name = self.method + (f"_{self.variant}" if self.variant else "")
        if self.point is None:
            return f"{name}/seed_{self.seed}"
        return f"{name}/point_{self.point:03d}/seed_{self.seed}"

    def run_dir(self, out):
        return os.path.join(out, runs.SWEEP_RUNS, *self.run_id.split("/"))


def jobs_for(config, points):
    """Every run of the sweep, point by point (so a partial sweep already covers the low sparsities)."""
    jobs = []
    for row in points:
        for name in config.methods:
            kind = METHODS[name]
            if kind.per_seed:
                continue
            for variant in getattr(config, kind.variants) if kind.variants else [""]:
                jobs += [Job(name, variant, row["point"], s) for s in config.seeds_of(name)]
    for name in config.methods:
        if METHODS[name].per_seed:
            jobs += [Job(name, "", None, s) for s in config.seeds_of(name)]
    return jobs


def _check_same_count(config, out, table):
    """Refuses to mix magnitude counts in one folder: a run's folder and row do not say which count
    made them, so the table would mix two experiments under one method name."""
    path = os.path.join(out, runs.SWEEP_CONFIG)
    if not os.path.isfile(path):
        return
    before = runs.read_json(path).get("magnitude_count", "params")  # folders older than the setting
    counted = [m for m in METHODS if METHODS[m].counted]
    if before != config.magnitude_count and any(r["method"] in counted for r in table.rows()):
        raise KerasPruneError(f"{out} has {', '.join(counted)} rows made with magnitude_count = {before!r}, not "
                              f"{config.magnitude_count!r}; use another --out")


LOBSTER_RUN_ID = "lobster"  # --only lobster: the LOBSTER run the sweep's points come from


def run(config, out, verbose="auto", only=None, assemble=True):
    """Runs (or resumes) the sweep in ``out``; returns the rows of the results table.

    ``only``: run just the job with this run id (``Job.run_id``, or ``lobster``), for schedulers
    that run a sweep's runs one by one (see :func:`pending_runs`). ``assemble=False`` skips the
    figure and the exports (a worker beside other processes of the same sweep); a plain run on a
    folder whose runs are all done only assembles them.
    """
    declare_strategy(config.strategy)  # before the first write (a stale TF_CONFIG must not mute it)
    os.makedirs(out, exist_ok=True)
    table = ResultsTable(os.path.join(out, runs.RESULTS))
    _check_same_count(config, out, table)
    if is_chief():
        runs.write_json(os.path.join(out, runs.SWEEP_CONFIG), dataclasses.asdict(config))
    lobster_dir = ensure_lobster(config, out, verbose)
    all_points = read_operating_points(lobster_dir)
    for row in all_points:
        # A cell LOBSTER left empty stays empty in results.csv (the reader gives NaN for it).
        measured = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        _append(table, _row("lobster", "", row["point"], int(_lobster_seed(lobster_dir, config)), measured,
                            row["pruned_params_pct"], os.path.relpath(lobster_dir, out)))
    if only == LOBSTER_RUN_ID:
        return table.rows()
    points = _chosen_points(config, lobster_dir, all_points)
    ctx = _Context(config, out, lobster_dir, points, table, verbose)
    jobs = jobs_for(config, points)
    if only is not None:
        chosen = [j for j in jobs if j.run_id == only]
        if not chosen:
            raise KerasPruneError(f"no run {only!r} in this sweep; `kerasprune sweep CONFIG --out {out} "
                                  "--list-runs` prints the pending ones")
        jobs = chosen
    ctx.start(jobs)
    deferred = [job for job in jobs if not ctx.run_job(job, blocking=False)]
    for job in deferred:  # another sweep held them: wait for it, then do what it left undone
        ctx.run_job(job, blocking=True)
    rows = table.rows()
    if only is None and assemble and is_chief():
        with file_lock(os.path.join(out, "exports.lock")):  # two sweeps finishing together
            report.figure1(results.read(table.path), os.path.join(out, runs.FIGURE1),
                           title=f"{config.name}: {config.model} on {config.dataset}")
            export_solutions(config, out, lobster_dir, points, results.read(table.path))
        print(f"[sweep] done: {len(rows)} rows in {table.path}; figure {os.path.join(out, runs.FIGURE1)}")
    return rows


def _chosen_points(config, lobster_dir, all_points):
    points = [p for p in all_points
              if (p["point"] in config.points if config.points is not None else p["pruned_params_pct"] > 0)]
    missing = sorted(set(config.points or ()) - {p["point"] for p in all_points})
    if missing:
        raise KerasPruneError(f"points {missing} are not finished operating points of {lobster_dir} "
                              f"(it has {all_points[0]['point'] if all_points else '-'}.."
                              f"{all_points[-1]['point'] if all_points else '-'}); if LOBSTER is still "
                              "running, rerun the sweep once it has finished them")
    if not points:
        raise KerasPruneError(f"{lobster_dir} has no finished operating point to run (selected: "
                              f"{config.points or 'all with sparsity > 0'}); if LOBSTER is still running, "
                              "rerun the sweep once it has finished a sparsity level")
    return points


def pending_runs(config, out):
    """Run ids of the sweep's runs not yet in ``OUT/results.csv``, in the order a sweep runs them;
    ``["lobster"]`` while the LOBSTER run the points come from has not finished."""
    lobster_dir = config.lobster_dir or os.path.join(out, runs.SWEEP_LOBSTER)
    if config.lobster_dir is not None:  # given: it must already hold the points (--only lobster can't help)
        ensure_lobster(config, out)
    elif not (os.path.isfile(runs.finished_marker(lobster_dir, "lobster"))
              and os.path.isfile(runs.run_file(lobster_dir, runs.POINTS_CSV))):
        return [LOBSTER_RUN_ID]
    points = _chosen_points(config, lobster_dir, read_operating_points(lobster_dir))
    done = ResultsTable(os.path.join(out, runs.RESULTS)).done()
    return [j.run_id for j in jobs_for(config, points) if not j.is_done(points, done)]


# The settings a LOBSTER run must share with the sweep for its masks and initial weights to mean
# anything there: same network, same data, same validation split, same init (a re-init must be
# drawn as LOBSTER's initial weights were).
SAME_SETUP = ("model", "dataset", "split_seed", "val_fraction", "init")


def _lobster_config(lobster_dir):
    """The LOBSTER folder's ``config.json``, or {} (a folder made by hand or by an older version)."""
    if not os.path.isfile(runs.run_file(lobster_dir, runs.CONFIG)):
        return {}
    return runs.read_config(lobster_dir)


def _check_same_setup(config, lobster_dir):
    theirs = _lobster_config(lobster_dir)
    if theirs:  # a folder from before the init setting ran with the init of its time
        theirs = {**theirs, "init": init_of_run(theirs)}
    ours = {**config.settings(), "init": config.init}
    wrong = [f"{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in SAME_SETUP
             if k in theirs and theirs[k] != ours[k]]
    if wrong:
        raise KerasPruneError(f"lobster_dir {lobster_dir!r} was run with other settings than this sweep "
                              f"({'; '.join(wrong)})")


def _lobster_seed(lobster_dir, config):
    return _lobster_config(lobster_dir).get("seed", config.seeds[0])


def _row(method, variant, point, seed, result, target_pct, run_dir):
    return {"method": method, "variant": variant, "point": point, "seed": seed,
            "pruned_params_pct": result["pruned_params_pct"],
            "pruned_neurons_pct": result["pruned_neurons_pct"], "test_error": result["test_error"],
            "pruned_neurons_ref_pct": result.get("pruned_neurons_ref_pct"),
            "val_error": result.get("val_error"), "test_loss": result.get("test_loss"),
            "target_pruned_params_pct": target_pct, "epochs": result.get("epochs", result.get("epoch")),
            "seconds": result.get("seconds"), "run_dir": run_dir}


def _append(table, row):
    return table.append(row) if is_chief() else False


class _Context:
    """State shared by the jobs of one sweep: config, points, masks (cached), progress."""

    def __init__(self, config, out, lobster_dir, points, table, verbose):
        self.config, self.out, self.lobster_dir = config, out, lobster_dir
        self.points, self.table, self.verbose = points, table, verbose
        self.by_point = {p["point"]: p for p in points}
        self._masks = {}
        self.total = self.finished = 0
        self.keys = set()
        self.jobs, self.chain_rounds, self.work_before = [], 0, 0
        self.started = time.time()

    def start(self, jobs):
        done = self.table.done()
        self.jobs = jobs
        self.keys = {k for j in jobs for k in j.keys(self.points)}
        self.total = len(self.keys)
        self.finished = len(self.keys & done)
        if any(METHODS[j.method].per_seed for j in jobs):
            from kerasprune import oneshot

            self.chain_rounds = len(oneshot.chain_levels(self.config.train_config(0), self.imp_targets(),
                                                         self.config.imp_rate))
        self.work_before = self.work(done)[0]
        self._check_point_weights([j for j in jobs if not j.is_done(self.points, done)])
        print(f"[sweep] {self.total} runs, {self.finished} already done", flush=True)

    def imp_targets(self):
        """``{% pruned: point}`` of the points an IMP chain stops at."""
        return {p["pruned_params_pct"]: p["point"] for p in self.points}

    def work(self, done):
        """``(retrainings finished, retrainings in all)`` of this sweep's jobs, for the time left: a
        one-shot run is one retraining, an IMP chain all its rounds (most of which write no row),
        counted in its folder. ``done``: the table's keys."""
        finished = total = 0
        for job in self.jobs:
            if METHODS[job.method].per_seed:
                chain = job.run_dir(self.out)
                total += self.chain_rounds
                finished += min(len(runs.finished_rounds(chain)) if os.path.isdir(chain) else 0,
                                self.chain_rounds)
            else:
                total += 1
                finished += job.is_done(self.points, done)
        return finished, total

    def _time_left(self, done):
        """``", ~N min left"`` at this session's pace over all processes on the folder, or ``""``."""
        finished, total = self.work(done)
        return time_left_text(time.time() - self.started, finished - self.work_before, total - finished)

    def _check_point_weights(self, pending):
        """Fails in one line before any run if a pending run needs a LOBSTER point whose weights are
        gone (a run carried across machines keeps only the points packed with it), not at that run."""
        users = [m for m in METHODS if METHODS[m].uses_mask
                 or (METHODS[m].counted and self.config.magnitude_count == "kernels")]
        needed = sorted({j.point for j in pending if j.method in users})
        missing = [p for p in needed
                   if not os.path.isfile(os.path.join(self.lobster_dir, self.by_point[p]["weights"]))]
        if missing:
            raise KerasPruneError(
                f"{self.lobster_dir} has no weights of points {missing}, which runs of "
                f"{', '.join(users)} still need (a carried run keeps only "
                "the points packed with `experiments/carry.py pack --points`); restore them, or rerun only "
                "--methods that do not use LOBSTER's masks")

    def mask(self, point):
        if point not in self._masks:
            self._masks[point] = point_mask(self.config, self.lobster_dir, self.by_point[point])
        return self._masks[point]

    def magnitude_target(self, point):
        """The target of a kernel-only method at ``point``: keyword arguments of
        :func:`kerasprune.oneshot.magnitude_oneshot` (``magnitude_count``)."""
        if self.config.magnitude_count == "kernels":
            from kerasprune import masks

            kept = masks.count_kept(self.mask(point))
            return {"kept_kernels": sum(n for key, n in kept.items() if key.endswith("/kernel"))}
        return {"pruned_params_pct": self.by_point[point]["pruned_params_pct"]}

    def fresh_init_seed(self, seed):
        """Init seed of a *fresh* initialisation (Liu et al., random structure) for sweep seed ``seed``.

        Never LOBSTER's own seed: initialised from it, "random re-init" would be lottery rewinding.
        """
        fresh = FRESH_INIT_SEED_OFFSET + seed
        original = int(_lobster_seed(self.lobster_dir, self.config))
        if fresh == original:
            raise KerasPruneError(f"sweep seed {seed} would re-use LOBSTER's initialisation seed {original}")
        return fresh

    def dense(self, seed):
        from kerasprune import oneshot

        dense_dir = os.path.join(self.out, runs.SWEEP_DENSE, f"seed_{seed}")
        cfg = self.config.train_config(seed, self.config.dense_epochs)
        with file_lock(dense_dir + ".lock"):
            return dense_dir, cfg, oneshot.dense(cfg, dense_dir, verbose=self.verbose)

    def run_job(self, job, blocking):
        """Runs ``job`` unless done; returns False if another process holds its lock."""
        if job.is_done(self.points, self.table.done()):
            return True
        run_dir = job.run_dir(self.out)
        with file_lock(run_dir.rstrip("/") + ".lock", blocking=blocking) as held:
            if not held:
                return False
            self._execute(job, run_dir)
        return True

    def record(self, job, point, result, run_dir):
        row = _row(job.method, job.variant, point, job.seed, result,
                   self.by_point[point]["pruned_params_pct"], os.path.relpath(run_dir, self.out))
        if _append(self.table, row):
            # Count from the table: another sweep on the same folder may have finished runs too,
            # and the time-left estimate should follow the table's pace, not this process's alone.
            done = self.table.done()
            self.finished = len(self.keys & done)
            self._progress(job, point, result, done)

    def _execute(self, job, run_dir):
        method = METHODS[job.method]
        config = self.config.train_config(job.seed)
        print(f"[sweep] run {self.finished + 1}/{self.total}: {job.method}"
              f"{' ' + job.variant if job.variant else ''} point "
              f"{job.point if job.point is not None else 'all'} seed {job.seed} -> {run_dir}", flush=True)
        if method.fresh_init:
            config = dataclasses.replace(config, seed=self.fresh_init_seed(job.seed))
        result = method.retrain(self, job, config, run_dir, self.verbose)
        if result is not None:
            self.record(job, job.point, result, run_dir)

    def _progress(self, job, point, result, done):
        name = job.method + (f"_{job.variant}" if job.variant else "")
        print(f"[sweep] run {self.finished}/{self.total} done: {name} point {point} seed {job.seed}: "
              f"test error {100 * result['test_error']:.2f}% at {result['pruned_params_pct']:.2f}% "
              f"pruned ({(time.time() - self.started) / 60:.1f} min this session{self._time_left(done)})", flush=True)

    def round_done(self, job, index, rounds, result):
        """One line per IMP round: a chain is hours of rounds, most of them at no point of the table."""
        print(f"[sweep] imp seed {job.seed}: round {index}/{rounds} done: test error "
              f"{100 * result['test_error']:.2f}% at {result['pruned_params_pct']:.2f}% pruned "
              f"({(time.time() - self.started) / 60:.1f} min this session{self._time_left(self.table.done())})",
              flush=True)


def time_left_text(elapsed, finished_here, left):
    """``", ~N min left"`` if ``left`` retrainings go at the pace of the ``finished_here`` done in
    ``elapsed`` seconds, else ``""``."""
    if finished_here <= 0 or left <= 0:
        return ""
    return f", ~{elapsed / finished_here * left / 60:.1f} min left"


# ---------------------------------------------------------------------------------------------
# The baselines (Figure 1's order). ``config`` is the run's TrainConfig; docs/sweep.md describes each.

@method("lottery_rewind", uses_mask=True)
def _lottery_rewind(ctx, job, config, run_dir, verbose):
    """Frankle & Carbin: LOBSTER's mask on LOBSTER's initial weights."""
    from kerasprune import oneshot

    initial = runs.run_file(ctx.lobster_dir, runs.INITIAL_WEIGHTS)
    return oneshot.lottery_rewind(config, run_dir, ctx.mask(job.point), initial, verbose=verbose)


@method("random_reinit", fresh_init=True, uses_mask=True)
def _random_reinit(ctx, job, config, run_dir, verbose):
    """Liu et al.: LOBSTER's mask on a fresh initialisation."""
    from kerasprune import oneshot

    return oneshot.random_reinit(config, run_dir, ctx.mask(job.point), verbose=verbose)


@method("random_structure", fresh_init=True, uses_mask=True)
def _random_structure(ctx, job, config, run_dir, verbose):
    """A random mask keeping LOBSTER's count in every tensor, drawn from (seed, point), on a fresh init."""
    from kerasprune import oneshot

    return oneshot.random_structure(config, run_dir, ctx.mask(job.point), mask_seed=[job.seed, job.point],
                                    verbose=verbose)


@method("magnitude_oneshot", variants="magnitude_scopes", counted=True)
def _magnitude_oneshot(ctx, job, config, run_dir, verbose):
    """The trained dense model's kernels pruned once to the point's count (per layer or global), fine-tuned."""
    from kerasprune import oneshot

    _, _, (_, trained) = ctx.dense(job.seed)
    return oneshot.magnitude_oneshot(config, run_dir, trained, scope=job.variant, verbose=verbose,
                                     **ctx.magnitude_target(job.point))


@method("imp", per_seed=True)
def _imp(ctx, job, config, run_dir, verbose):
    """Iterative magnitude pruning from the dense model: one chain per seed, a row per point it passes."""
    from kerasprune import oneshot

    dense_dir, _, _ = ctx.dense(job.seed)
    targets = ctx.imp_targets()
    oneshot.imp(config, run_dir, dense_dir, sorted(targets), rate=ctx.config.imp_rate, verbose=verbose,
                on_level=lambda pct, result: ctx.record(job, targets[pct], result, result["run_dir"]),
                on_round=lambda index, rounds, result: ctx.round_done(job, index, rounds, result))


@method("polynomial_decay", counted=True)
def _polynomial_decay(ctx, job, config, run_dir, verbose):
    """TF-MOT's gradual PolynomialDecay from the trained dense model to the point's count."""
    from kerasprune import oneshot

    _, _, (_, trained) = ctx.dense(job.seed)
    return oneshot.polynomial_decay(config, run_dir, trained, verbose=verbose, **ctx.magnitude_target(job.point))


BASELINES = tuple(METHODS)


# ---------------------------------------------------------------------------------------------
# Exports for the analysis (G vs 1-S at the highest sparsity).

def export_solutions(config, out, lobster_dir, points, rows):
    """SavedModels of the highest-sparsity point among the swept LOBSTER ``points`` (G) and of the
    best Frankle & Carbin rewind at that point by validation error (1-S, :data:`ONESHOT_FOR_EXPORT`);
    their paths go to ``OUT/exports.json``."""
    from kerasprune import oneshot, training

    top = max(points, key=lambda p: p["pruned_params_pct"])
    candidates = [r for r in rows if r["method"] in ONESHOT_FOR_EXPORT and r["point"] == top["point"]
                  and r.get("val_error") is not None]
    exports_path = os.path.join(out, runs.EXPORTS)
    current = runs.read_json(exports_path) if os.path.isfile(exports_path) else {}
    info = dict(current)
    g_source = os.path.join(lobster_dir, top["weights"])
    if current.get("g_source") != g_source:
        model = oneshot.build_model(config.train_config(0))
        model.load_weights(g_source)
        info.update(g=training.export_saved_model(model, os.path.join(out, "exports", "g")),
                    g_source=g_source, g_point=top["point"], g_pruned_params_pct=top["pruned_params_pct"],
                    g_test_error=top["test_error"])
    if candidates:
        best = min(candidates, key=lambda r: (r["val_error"], r["test_error"]))
        source = os.path.join(out, best["run_dir"], oneshot.FINAL_WEIGHTS)
        if current.get("oneshot_source") != source:
            if not os.path.isfile(source):  # a table carried to another machine without its run folders
                raise KerasPruneError(f"cannot export 1-S: {source} is missing (its run folder is gone); delete "
                                      f"the row of {best['run_dir']} from {runs.RESULTS} and rerun the sweep to redo it")
            model = oneshot.build_model(config.train_config(0))
            model.load_weights(source)
            info.update(oneshot=training.export_saved_model(model, os.path.join(out, "exports", "oneshot")),
                        oneshot_source=source, oneshot_method=best["method"], oneshot_seed=int(best["seed"]),
                        oneshot_point=int(best["point"]), oneshot_test_error=best["test_error"])
    if info != current:
        runs.write_json(exports_path, info)
    return info
