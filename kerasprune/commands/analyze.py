"""``kerasprune analyze``: Hessian spectrum, PSP measures and 2D maps of two solutions (paper Sec. 5.2-5.3)."""
import hashlib
import json
import os
import time
import warnings

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
Hessian: of the mean training loss over a seeded sample of the training split, batch norm in
inference mode, over the unpruned parameters only (--all-params to include pruned ones).
See docs/analysis.md for definitions.

examples:
  kerasprune analyze --g runs/sweep/exports/g --oneshot runs/sweep/exports/oneshot \\
      --dataset mnist --out runs/analysis --quick
  kerasprune analyze --sweep runs/sweep --dataset mnist --out runs/analysis
"""

QUICK = {"grid": 7, "hessian_examples": 500, "grid_train_examples": 500, "grid_test_examples": 1000,
         "pair_samples": 1000}
FULL = {"grid": 21, "hessian_examples": 1000, "grid_train_examples": 5000, "grid_test_examples": None,
        "pair_samples": 2000}
METRICS_PNG = "map_{}.png"
# --eigen-method: the solvers it runs; the first one's values are hessian_top5.
EIGEN_METHODS = {"lanczos": ["lanczos"], "arpack": ["arpack"], "power": ["power"],
                 "both": ["lanczos", "power"], "all": ["lanczos", "arpack", "power"]}


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
    h.add_argument("--hessian-examples", type=_common.positive_int, default=None,
                   help=f"training examples the loss is averaged over (default {FULL['hessian_examples']})")
    h.add_argument("--top-k", type=_common.positive_int, default=5, help="number of top eigenvalues (default 5)")
    h.add_argument("--eigen-method", choices=tuple(EIGEN_METHODS), default="lanczos",
                   help="lanczos (default: fewest HVPs), arpack (scipy eigsh, the paper's solver), power, "
                        "both (lanczos and power) or all; the first one listed gives hessian_top5")
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


def resolve_model_path(path):
    """A SavedModel folder, or a run folder whose metrics.json names one."""
    if path is None:
        raise KerasPruneError("give --g and --oneshot, or --sweep")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    metrics = os.path.join(path, "metrics.json")
    if os.path.isfile(metrics):
        with open(metrics) as f:
            saved = json.load(f).get("saved_model")
        for candidate in (saved, saved and os.path.join(path, saved)):
            if candidate and os.path.isfile(os.path.join(candidate, "saved_model.pb")):
                return candidate
        raise KerasPruneError(f"{metrics} names no existing SavedModel (saved_model={saved!r})")
    raise KerasPruneError(f"{path!r} is neither a SavedModel nor a run folder with metrics.json")


def resolve_sweep(sweep_dir):
    exports = os.path.join(sweep_dir, "exports.json")
    if not os.path.isfile(exports):
        raise KerasPruneError(f"{exports} does not exist: has the sweep finished its exports?")
    with open(exports) as f:
        info = json.load(f)
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
    for folder, name in ((path, "config.json"), (path, "sweep_config.json"),
                         (os.path.dirname(os.path.dirname(path)), "sweep_config.json")):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f).get("dataset")
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


def load_model(path, strategy):
    from kerasprune._keras import keras

    with strategy.scope():
        return keras.models.load_model(path, compile=False)


def _settings(args):
    base = QUICK if args.quick else FULL
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else base[name]
    return {
        "dataset": args.dataset, "split_seed": args.split_seed, "val_fraction": args.val_fraction,
        "seed": args.seed, "quick": args.quick, "masked": not args.all_params,
        "hessian_examples": pick("hessian_examples"), "top_k": args.top_k, "eigen_method": args.eigen_method,
        "tol": args.tol, "max_iter": args.max_iter, "trace": args.trace,
        "trace_tol": args.trace_tol, "trace_max_iter": args.trace_max_iter,
        "grid": pick("grid"), "alpha_range": list(args.alpha_range), "beta_range": list(args.beta_range),
        "filter_normalize": args.filter_normalize, "support": args.support,
        "grid_train_examples": pick("grid_train_examples"), "grid_test_examples": pick("grid_test_examples"),
        "pair_samples": pick("pair_samples"), "max_exact_units": args.max_exact_units,
        "max_train_examples": args.max_train_examples, "max_test_examples": args.max_test_examples,
        "psp_entropy": args.psp_entropy,
    }


def _keyed(settings):
    """``settings`` for the cache keys: a setting added later is left out at the value that was
    implicit before, so parts computed before it existed stay valid."""
    return {k: v for k, v in settings.items() if not (k == "psp_entropy" and v == "kerasprune")}


def conventions(settings):
    """The variants behind the numbers of ``analysis.json`` (docs/analysis.md)."""
    return {
        "psp_entropy": settings["psp_entropy"],  # psp_entropy_1 (per model and map)
        "psp_entropy_2": "kerasprune",  # the reference has no second order
        "support": settings["support"],
        "eigen_method": EIGEN_METHODS[settings["eigen_method"]][0],  # hessian_top5
        "hessian_parameters": "unpruned" if settings["masked"] else "all",
    }


def eigen_warnings(name, hessian, settings):
    """One line per top-k result of ``hessian`` (a :func:`hessian_summary`) that did not converge."""
    lines = []
    for method in EIGEN_METHODS[settings["eigen_method"]]:
        result = hessian[method]
        if not result["converged"]:
            values = ", ".join(f"{v:.4g}" for v in result["eigenvalues"])
            lines.append(f"{name}: {method} top-{settings['top_k']} Hessian eigenvalues did not converge "
                         f"(tol {settings['tol']}, {result['hvps']} HVPs; values {values}): they may be "
                         "wrong; raise --max-iter or --tol")
    return lines


def _key(*parts):
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path, key, compute):
    """Result of ``compute()``, stored at ``path`` with ``key``; reused when the key matches."""
    from kerasprune.distribute import is_chief
    from kerasprune.training import read_json, write_json

    if os.path.isfile(path):
        saved = read_json(path)
        if saved.get("key") == key:
            return saved["value"]
    value = compute()
    if is_chief():
        write_json(path, {"key": key, "value": value})
    return json.loads(json.dumps(value, default=_plain))


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value).__name__)


def _samples(settings, data_dir):
    """Normalised numpy samples: (hessian x, y), (grid train x, y), (grid test x, y), spec."""
    import numpy as np

    from kerasprune import data

    arrays = data.load_arrays(settings["dataset"], data_dir, settings["val_fraction"], settings["split_seed"])
    dspec = data.spec(settings["dataset"], data_dir)
    x_tr, y_tr, x_te, y_te = arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test
    if settings["max_train_examples"]:
        x_tr, y_tr = x_tr[:settings["max_train_examples"]], y_tr[:settings["max_train_examples"]]
    if settings["max_test_examples"]:
        x_te, y_te = x_te[:settings["max_test_examples"]], y_te[:settings["max_test_examples"]]
    # One seeded permutation of the training split: the Hessian sample is its head, and so is the
    # grid's training sample (the smaller one is a subset of the larger).
    order = np.random.default_rng(settings["seed"]).permutation(len(x_tr))
    mean = np.asarray(dspec.mean, np.float32)
    std = np.asarray(dspec.std, np.float32)
    norm = lambda x: ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    take = lambda n: np.sort(order[:min(n, len(order))])
    h_idx, g_idx = take(settings["hessian_examples"]), take(settings["grid_train_examples"])
    n_test = settings["grid_test_examples"] or len(x_te)
    return ((norm(x_tr[h_idx]), y_tr[h_idx]), (norm(x_tr[g_idx]), y_tr[g_idx]),
            (norm(x_te[:n_test]), y_te[:n_test]))


def _dataset(xy, batch_size):
    from kerasprune._keras import tf

    return tf.data.Dataset.from_tensor_slices(xy).batch(batch_size).prefetch(2)


def hessian_summary(model, xy, settings, batch_size):
    from kerasprune import analysis

    op = analysis.Hessian(model, xy, masked=settings["masked"], batch_size=batch_size)
    out = {"parameters": op.dim, "free_parameters": op.free, "examples": op.num_examples}
    methods = EIGEN_METHODS[settings["eigen_method"]]
    for method in methods:
        with warnings.catch_warnings():  # run() reports it, as a WARNING line and in analysis.json
            warnings.simplefilter("ignore", analysis.EigenConvergenceWarning)
            result = analysis.top_eigenvalues(op, k=settings["top_k"], method=method, tol=settings["tol"],
                                              max_iter=settings["max_iter"], seed=settings["seed"])
        out[method] = result.as_dict()
        print(f"  {method}: top-{settings['top_k']} {[f'{v:.4g}' for v in result.eigenvalues]} "
              f"({result.hvps} HVPs, {result.seconds:.1f} s){'' if result.converged else ' NOT CONVERGED'}",
              flush=True)
    out["top"] = out[methods[0]]["eigenvalues"]
    if settings["trace"]:
        out["trace"] = analysis.hutchinson_trace(op, tol=settings["trace_tol"],
                                                 max_iter=settings["trace_max_iter"], seed=settings["seed"])
        print(f"  trace {out['trace']['trace']:.4g} +- {out['trace']['stderr']:.2g}", flush=True)
    return out


def psp_summary(model, train_xy, test_xy, settings, batch_size):
    from kerasprune import analysis

    stats = analysis.psp_statistics(model, _dataset(train_xy, batch_size), second_order=True,
                                    max_exact_units=settings["max_exact_units"],
                                    pair_samples=max(settings["pair_samples"], 20000), seed=settings["seed"])
    test = analysis.psp_statistics(model, _dataset(test_xy, batch_size), first_order=False)
    first = analysis.psp_entropy_first_order(stats, convention=settings["psp_entropy"])
    channel = analysis.psp_entropy_first_order(stats, per_channel=True, convention=settings["psp_entropy"])
    second = analysis.psp_entropy_second_order(stats)
    return {
        "train_loss": stats.loss, "train_error": stats.error, "test_error": test.error,
        "psp_l2": analysis.psp_l2(stats),
        "psp_entropy_1": {"overall": first["overall"], "per_layer": first["per_layer"],
                          "per_channel_overall": channel["overall"], "per_channel_per_layer": channel["per_layer"]},
        "psp_entropy_2": second,
    }


class RowLog:
    """Progress for logs: one line per finished grid row (the ``Progbar.add`` interface)."""

    def __init__(self, total, row):
        self.total, self.row, self.seen, self.start = total, row, 0, time.time()

    def add(self, n, values=None):
        self.seen += n
        if self.seen % self.row == 0 or self.seen == self.total:
            last = "" if not values else " - " + " - ".join(f"{k}: {v:.4g}" for k, v in values)
            print(f"grid {self.seen}/{self.total} points - {time.time() - self.start:.0f}s{last}", flush=True)


def write_tensorboard(log_dir, analysis, figures):
    """The headline numbers as scalars (one run per model) and the figures as images."""
    from kerasprune._keras import tf

    for name in ("g", "oneshot"):
        with tf.summary.create_file_writer(os.path.join(log_dir, name)).as_default():
            for i, value in enumerate(analysis["hessian_top5"][name], start=1):
                tf.summary.scalar("hessian/eigenvalue", value, step=i)
            for key in ("psp_l2", "psp_entropy_1", "psp_entropy_2"):
                tf.summary.scalar(f"psp/{key}", analysis[key][name]["overall"], step=0)
    with tf.summary.create_file_writer(os.path.join(log_dir, "figures")).as_default():
        for path in figures:
            image = tf.io.decode_png(tf.io.read_file(path), channels=4)[None]
            tf.summary.image(os.path.splitext(os.path.basename(path))[0], image, step=0)


def run(args):
    from kerasprune import sparsity
    from kerasprune._keras import keras
    from kerasprune.analysis import landscape, plots
    from kerasprune.distribute import get_strategy, is_chief
    from kerasprune.training import _verbosity, write_json

    if args.sweep:
        if args.g or args.oneshot:
            raise KerasPruneError("give either --sweep or --g/--oneshot, not both")
        g_path, s_path = resolve_sweep(args.sweep)
        args.dataset = choose_dataset(args.dataset, [args.sweep, g_path, s_path])
    else:
        g_path, s_path = args.g, args.oneshot
        args.dataset = choose_dataset(args.dataset, [g_path, s_path])
    g_path, s_path = resolve_model_path(g_path), resolve_model_path(s_path)
    settings = _settings(args)
    if settings["grid"] < 2:
        raise KerasPruneError(f"--grid must be at least 2, got {settings['grid']}")
    parts = os.path.join(args.out, "parts")
    os.makedirs(parts, exist_ok=True)
    strategy = get_strategy(args.strategy)
    models = {"g": load_model(g_path, strategy), "oneshot": load_model(s_path, strategy)}
    for name, model in models.items():  # before hours of Hessians: PSPs need ReLU activations
        from kerasprune.analysis import psp as psp_module

        psp_module.relu_layers(model)
    hessian_xy, train_xy, test_xy = _samples(settings, args.data_dir)
    paths = {"g": os.path.abspath(g_path), "oneshot": os.path.abspath(s_path)}
    # Cached parts are keyed by model identity: path and export time (a re-export invalidates them).
    identity = {n: [p, os.path.getmtime(os.path.join(p, "saved_model.pb"))] for n, p in paths.items()}
    start = time.time()

    results, warning_lines = {}, []
    for name, model in models.items():
        print(f"{name}: Hessian on {len(hessian_xy[1])} training examples", flush=True)
        h_keys = ("hessian_examples", "top_k", "eigen_method", "tol", "max_iter", "trace", "trace_tol",
                  "trace_max_iter", "masked", "seed",
                  "dataset", "split_seed", "val_fraction", "max_train_examples")
        key = _key(identity[name], {k: settings[k] for k in h_keys})
        hessian = _cached(os.path.join(parts, f"hessian_{name}.json"), key,
                          lambda: hessian_summary(model, hessian_xy, settings, args.batch_size))
        warning_lines += eigen_warnings(name, hessian, settings)
        print(f"{name}: PSP statistics", flush=True)
        key = _key(identity[name], _keyed(settings))
        psp = _cached(os.path.join(parts, f"psp_{name}.json"), key,
                      lambda: psp_summary(model, train_xy, test_xy, settings, args.batch_size))
        results[name] = {"hessian": hessian, "psp": psp,
                         "pruned_params_pct": sparsity.report(model).pruned_params_pct}

    alphas, betas = landscape.grid_coordinates(settings["alpha_range"], settings["beta_range"], settings["grid"])
    plane = landscape.make_plane(models["g"], models["oneshot"], seed=settings["seed"],
                                 filter_normalize=settings["filter_normalize"], support=settings["support"])
    print(f"maps: {len(alphas)} x {len(betas)} points; |d1| = {plane.norms()['d1']:.4g}", flush=True)
    grid_key = _key(identity, _keyed(settings))
    state = os.path.join(parts, f"grid_{grid_key}.npz")
    total = len(alphas) * len(betas)
    if _verbosity("auto") == 1:
        progress = keras.utils.Progbar(total, verbose=1, unit_name="point")
    else:  # logs and CI: a line per grid row (Keras' verbose=2 would print only at the end)
        progress = RowLog(total, len(alphas))
    maps = landscape.evaluate_grid(
        models["g"], plane, alphas, betas, _dataset(train_xy, args.batch_size),
        _dataset(test_xy, args.batch_size), max_exact_units=settings["max_exact_units"],
        pair_samples=settings["pair_samples"], seed=settings["seed"], state_path=state, progress=progress,
        psp_convention=settings["psp_entropy"])

    figures = []
    if is_chief():
        for metric, values in maps.items():
            figures.append(plots.plot_map(alphas, betas, values, metric,
                                          os.path.join(args.out, METRICS_PNG.format(metric))))
        figures.append(plots.plot_eigenvalues(results["g"]["hessian"]["top"], results["oneshot"]["hessian"]["top"],
                                              os.path.join(args.out, "eigenvalues.png")))
    analysis = {
        "models": paths, "settings": settings, "conventions": conventions(settings), "warnings": warning_lines,
        "hessian_top5": {n: r["hessian"]["top"] for n, r in results.items()},
        "hessian": {n: r["hessian"] for n, r in results.items()},
        "psp_l2": {n: r["psp"]["psp_l2"] for n, r in results.items()},
        "psp_entropy_1": {n: r["psp"]["psp_entropy_1"] | {"convention": settings["psp_entropy"]}
                          for n, r in results.items()},
        "psp_entropy_2": {n: r["psp"]["psp_entropy_2"] for n, r in results.items()},
        "performance": {n: {k: r["psp"][k] for k in ("train_loss", "train_error", "test_error")}
                        | {"pruned_params_pct": r["pruned_params_pct"]} for n, r in results.items()},
        "plane": plane.norms(),
        "grid": {"alphas": alphas, "betas": betas, "points": {"g": [0.0, 0.0], "oneshot": [1.0, 0.0]},
                 "maps": maps, "layout": "maps[metric][i][j] is at (alphas[j], betas[i])"},
        "figures": [os.path.basename(f) for f in figures],
        "seconds_this_session": time.time() - start,
    }
    analysis = json.loads(json.dumps(analysis, default=_plain))  # numpy -> lists and floats
    if is_chief():
        write_json(os.path.join(args.out, "analysis.json"), analysis)
        write_tensorboard(os.path.join(args.out, "tensorboard"), analysis, figures)
    summary = {n: {"hessian_top": [round(v, 4) for v in analysis["hessian_top5"][n]],
                   "psp_l2": round(analysis["psp_l2"][n]["overall"], 5),
                   "psp_entropy_1": round(analysis["psp_entropy_1"][n]["overall"], 4),
                   "psp_entropy_2": round(analysis["psp_entropy_2"][n]["overall"], 4)} for n in results}
    print(json.dumps(summary))
    for line in warning_lines:
        print(f"WARNING: {line}", flush=True)
    print(f"wrote {os.path.join(args.out, 'analysis.json')} and {len(figures)} figures")
