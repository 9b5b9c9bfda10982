"""``kerasprune analyze``: Hessian spectrum, PSP measures and 2D maps of two solutions (paper Sec. 5.2-5.3).

The analysis itself is :func:`kerasprune.analysis.compare`; this command resolves the models (run
folders, sweep exports) and their dataset, builds the :class:`~kerasprune.analysis.AnalysisConfig`
from the flags and prints a summary.
"""
import json
import os

from kerasprune import runs
from kerasprune.analysis.compare import EIGEN_METHODS, FULL, QUICK  # no TensorFlow at import
from kerasprune.commands import _common
from kerasprune.errors import KerasPruneError

HELP = "compare two solutions (G vs 1-S): Hessian top eigenvalues, PSP norms/entropies, 2D maps"
DESCRIPTION = """Analyse the minima of two pruned models, e.g. LOBSTER's (G) and the best one-shot
retraining (1-S), as in Figures 2 to 4 of the paper.

Models: SavedModels (as `kerasprune train`/`sweep` export them) or run folders whose metrics.json
has a "saved_model" path; --sweep DIR reads DIR/exports.json ("g" and "oneshot") instead.

Writes into --out:
  analysis.json  hessian_top5, psp_l2, psp_entropy_1, psp_entropy_2 (for "g" and "oneshot"),
                 the grid maps (train_loss, test_error, psp_l2, psp_entropy_1, psp_entropy_2),
                 "conventions" (the variants every number used) and "warnings" (e.g. an
                 eigen-solve that did not converge; also printed as WARNING lines)
  map_<metric>.png (contours with G and 1-S marked), eigenvalues.png (Fig. 2b)
  tensorboard/   the same numbers and figures for TensorBoard
  parts/         finished steps and grid progress: rerun the same command to resume
Hessian: of the mean training loss over a seeded sample of the training split (--hessian-examples
all: the whole split), batch norm in inference mode, over the unpruned parameters only (--all-params
to include pruned ones). --train-loss, --psp-l2 and --psp-entropy-aggregate choose the units of the
reported numbers; analysis.json's "conventions" records them.
See docs/analysis.md for definitions.

examples:
  kerasprune analyze --g runs/sweep/exports/g --oneshot runs/sweep/exports/oneshot \\
      --dataset mnist --out runs/analysis --quick
  kerasprune analyze --sweep runs/sweep --dataset mnist --out runs/analysis
"""


def add_arguments(parser):
    g = parser.add_argument_group("models")
    g.add_argument("--g", help="SavedModel or run folder of the gradual solution (origin of the maps)")
    g.add_argument("--oneshot", help="SavedModel or run folder of the one-shot solution (1-S)")
    g.add_argument("--sweep", help="sweep folder: take --g/--oneshot from its exports.json")
    _common.add_data_arguments(parser, dataset_required=False)
    g = parser.add_argument_group("analysis")
    g.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    g.add_argument("--quick", action="store_true",
                   help=f"small grid and data samples (minutes on 2 CPU cores): {QUICK}")
    g.add_argument("--seed", type=int, default=0, help="seed of data samples, random vectors, directions")
    g.add_argument("--batch-size", type=_common.positive_int, default=500, help="evaluation batch size")
    g.add_argument("--strategy", default="default", type=_common.strategy_flag, metavar="SPEC",
                   help="tf.distribute strategy (default: one device)")
    h = parser.add_argument_group("hessian")
    h.add_argument("--hessian-examples", type=examples_flag, default=None, metavar="N|all",
                   help=f"training examples the loss is averaged over (default {FULL['hessian_examples']}); "
                        "all (or 0): the whole training split, as the paper's data loader")
    h.add_argument("--top-k", type=_common.positive_int, default=5, help="number of top eigenvalues (default 5)")
    h.add_argument("--eigen-method", choices=tuple(EIGEN_METHODS), default="lanczos",
                   help="lanczos (default: fewest HVPs), arpack (scipy eigsh, as hessian-eigenthings' lanczos "
                        "mode), power (as its default mode), both (lanczos and power) or all; the first one "
                        "listed gives hessian_top5")
    h.add_argument("--tol", type=float, default=1e-3, help="eigen-solver tolerance (default 1e-3)")
    h.add_argument("--max-iter", type=_common.positive_int, default=100,
                   help="HVP cap: of Lanczos and ARPACK, or per eigenvalue of power iteration (default 100)")
    h.add_argument("--trace", action="store_true",
                   help="also estimate the Hessian trace (Hutchinson; up to --trace-max-iter HVPs per model)")
    h.add_argument("--trace-tol", type=float, default=0.02,
                   help="stop the trace estimate at this relative standard error (default 0.02)")
    h.add_argument("--trace-max-iter", type=_common.positive_int, default=100, help="HVP cap of the trace (default 100)")
    h.add_argument("--all-params", action="store_true",
                   help="Hessian over all parameters, pruned ones included (default: unpruned only)")
    m = parser.add_argument_group("maps")
    m.add_argument("--grid", type=_common.positive_int, default=None, help="points per axis (default 21; --quick 7)")
    m.add_argument("--alpha-range", type=float, nargs=2, default=(-0.5, 1.5), metavar=("MIN", "MAX"),
                   help="range along G -> 1-S (G at 0, 1-S at 1; default -0.5 1.5)")
    m.add_argument("--beta-range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("MIN", "MAX"),
                   help="range along the random orthogonal direction (default -1 1)")
    m.add_argument("--filter-normalize", action="store_true",
                   help="filter-normalise the random direction (Li et al.)")
    m.add_argument("--support", choices=("union", "all"), default="union",
                   help="where the random direction may be nonzero. union (default): only weights nonzero "
                        "in G or 1-S, the reading to use for pruned models; all: every weight, so points "
                        "off the G-1-S line revive pruned weights and dead neurons (docs/analysis.md)")
    m.add_argument("--grid-train-examples", type=_common.positive_int, default=None,
                   help="training examples for loss and PSP maps (default 5000; --quick 500)")
    m.add_argument("--grid-test-examples", type=_common.positive_int, default=None,
                   help="test examples for the error map (default all; --quick 1000)")
    m.add_argument("--pair-samples", type=_common.positive_int, default=None,
                   help="sampled neuron pairs per wide layer for second-order entropy (default 2000)")
    m.add_argument("--max-exact-units", type=_common.positive_int, default=1024,
                   help="layers up to this width get exact second-order entropy (default 1024)")
    p = parser.add_argument_group("PSP-entropy")
    p.add_argument("--psp-entropy", choices=("kerasprune", "reference"), default="kerasprune",
                   help="first-order convention, per model and in the map. kerasprune (default): hidden ReLU "
                        "inputs, 0 log 0 = 0; reference: the authors' code (EIDOSlab/PSP-entropy), which "
                        "also counts the output layer's units and clamps p to [1e-4, 0.9999]")
    p.add_argument("--psp-entropy-aggregate", choices=("neurons", "layers"), default="neurons",
                   help="first-order overall value: mean over all neurons (default) or mean of the per-layer "
                        "means (the authors' code stops at per-neuron values)")
    u = parser.add_argument_group("units (docs/analysis.md, \"The paper's units\")")
    u.add_argument("--train-loss", choices=("mean", "per-batch"), default="mean",
                   help="reported training loss (per model and map): mean over examples (default) or per-batch, "
                        "the batch means summed and divided by the examples (the PSP code's; about mean / "
                        "--loss-batch)")
    u.add_argument("--loss-batch", type=_common.positive_int, default=100,
                   help="batch size of --train-loss per-batch (default 100)")
    u.add_argument("--psp-l2", choices=("mean", "sum-units"), default="mean",
                   help="PSP L2 (per model and map): mean z^2 over hidden values (default) or sum-units, E[z^2] "
                        "per unit (conv: per channel, mean over positions) summed over hidden and output units "
                        "(the PSP code's)")


def examples_flag(text):
    """argparse type of --hessian-examples: a count >= 1, or "all" (also 0) for the whole training split."""
    if text.strip().lower() in ("all", "0"):
        return "all"
    return _common.positive_int(text)


def resolve_model_path(path):
    """A SavedModel folder, or a run folder whose metrics.json names one."""
    if path is None:
        raise KerasPruneError("give --g and --oneshot, or --sweep")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    metrics = runs.finished_marker(path, "train")  # a transfer run records its SavedModel alike
    if os.path.isfile(metrics):
        saved = runs.read_json(metrics).get("saved_model")
        for candidate in (saved, saved and os.path.join(path, saved)):
            if candidate and os.path.isfile(os.path.join(candidate, "saved_model.pb")):
                return candidate
        raise KerasPruneError(f"{metrics} names no existing SavedModel (saved_model={saved!r})")
    raise KerasPruneError(f"{path!r} is neither a SavedModel nor a run folder with metrics.json")


def resolve_sweep(sweep_dir):
    exports = os.path.join(sweep_dir, runs.EXPORTS)
    if not os.path.isfile(exports):
        raise KerasPruneError(f"{exports} does not exist: has the sweep finished its exports?")
    info = runs.read_json(exports)
    out = {}
    for key in ("g", "oneshot"):
        if not info.get(key):
            raise KerasPruneError(f"{exports} has no {key!r} export yet")
        candidates = [info[key], os.path.join(sweep_dir, info[key]), os.path.join(sweep_dir, "exports", key)]
        out[key] = next((c for c in candidates if os.path.isfile(os.path.join(c, "saved_model.pb"))), info[key])
    return out["g"], out["oneshot"]


def recorded_dataset(path):
    """The dataset a model's folder records: its run's ``config.json``, or the ``sweep_config.json``
    of the sweep it was exported from (``SWEEP/exports/g``); None when nothing says."""
    path = os.path.abspath(path)
    for folder, name in ((path, runs.CONFIG), (path, runs.SWEEP_CONFIG),
                         (os.path.dirname(os.path.dirname(path)), runs.SWEEP_CONFIG)):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return runs.read_json(candidate).get("dataset")
    return None


def choose_dataset(flag, sources):
    """The dataset to analyse on: the one the models' folders record (refusing a contradicting
    ``--dataset``), else ``--dataset``; an error when neither says."""
    recorded = {s: d for s in sources if s for d in [recorded_dataset(s)] if d}
    names = set(recorded.values())
    if len(names) > 1:
        raise KerasPruneError(f"the models were trained on different datasets ({recorded}); analyse "
                              "models of one dataset")
    if names and flag is not None and flag not in names:
        raise KerasPruneError(f"--dataset {flag} contradicts the models' own dataset {names.pop()!r} "
                              f"(recorded in {', '.join(recorded)}); drop --dataset")
    if names:
        return names.pop()
    if flag is None:
        raise KerasPruneError("no run folder records the models' dataset: give --dataset")
    return flag


def analysis_config(args):
    """The :class:`~kerasprune.analysis.AnalysisConfig` the flags describe (``args.dataset`` chosen)."""
    from kerasprune.analysis import AnalysisConfig

    return AnalysisConfig(
        dataset=args.dataset, data_dir=args.data_dir, val_fraction=args.val_fraction, split_seed=args.split_seed,
        max_train_examples=args.max_train_examples, max_test_examples=args.max_test_examples,
        preset="quick" if args.quick else "full", seed=args.seed, batch_size=args.batch_size,
        strategy=args.strategy, hessian_examples=args.hessian_examples, top_k=args.top_k,
        eigen_method=args.eigen_method, tol=args.tol, max_iter=args.max_iter, trace=args.trace,
        trace_tol=args.trace_tol, trace_max_iter=args.trace_max_iter, masked=not args.all_params,
        grid=args.grid, alpha_range=tuple(args.alpha_range), beta_range=tuple(args.beta_range),
        filter_normalize=args.filter_normalize, support=args.support,
        grid_train_examples=args.grid_train_examples, grid_test_examples=args.grid_test_examples,
        pair_samples=args.pair_samples, max_exact_units=args.max_exact_units, psp_entropy=args.psp_entropy,
        psp_entropy_aggregate=args.psp_entropy_aggregate, train_loss=args.train_loss, loss_batch=args.loss_batch,
        psp_l2=args.psp_l2)


def _samples(config, data_dir):
    """The samples analysed (:func:`kerasprune.analysis.compare.samples`; ``data_dir`` is
    ``config.data_dir``). The command's seam for them: tests replace it to skip reading a dataset."""
    from kerasprune.analysis.compare import samples

    return samples(config)


def run(args):
    from kerasprune.analysis import compare

    if args.sweep:
        if args.g or args.oneshot:
            raise KerasPruneError("give either --sweep or --g/--oneshot, not both")
        g_path, s_path = resolve_sweep(args.sweep)
        args.dataset = choose_dataset(args.dataset, [args.sweep, g_path, s_path])
    else:
        g_path, s_path = args.g, args.oneshot
        args.dataset = choose_dataset(args.dataset, [g_path, s_path])
    g_path, s_path = resolve_model_path(g_path), resolve_model_path(s_path)
    config = analysis_config(args)
    analysis = compare(config, g_path, s_path, args.out, data=lambda: _samples(config, config.data_dir))
    summary = {n: {"hessian_top": [round(v, 4) for v in analysis["hessian_top5"][n]],
                   "psp_l2": round(analysis["psp_l2"][n]["overall"], 5),
                   "psp_entropy_1": round(analysis["psp_entropy_1"][n]["overall"], 4),
                   "psp_entropy_2": round(analysis["psp_entropy_2"][n]["overall"], 4)} for n in ("g", "oneshot")}
    print(json.dumps(summary))
    for line in analysis["warnings"]:
        print(f"WARNING: {line}", flush=True)
    print(f"wrote {os.path.join(args.out, 'analysis.json')} and {len(analysis['figures'])} figures")
