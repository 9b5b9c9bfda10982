"""The comparison of two solutions, e.g. LOBSTER's (G) and a one-shot retraining's (1-S), as in
Figures 2 to 4 of the paper (Sec. 5.2-5.3): the analysis stage that ``kerasprune analyze`` runs.

``compare(AnalysisConfig(dataset="mnist"), g, oneshot, out)`` takes the two models (SavedModel
folders or loaded Keras models; G is the origin of the maps) and runs, in this order:

1. per model, the top-k Hessian eigenvalues (and optionally the trace) of the mean training loss
   over a seeded sample of the training split, or all of it (:func:`hessian_summary`);
2. per model, PSP L2 and PSP-entropies (first and second order), training loss and error on the
   maps' training sample, and test error (:func:`psp_summary`);
3. the 2D maps on the plane through G and 1-S (:mod:`~kerasprune.analysis.landscape`).

It writes into ``out`` analysis.json, map_<metric>.png, eigenvalues.png and tensorboard/, and
returns the analysis.json dict. Steps 1 and 2 are kept in ``out/parts`` (``hessian_<name>.json``,
``psp_<name>.json``), and the grid's progress point by point (``grid_<key>.npz``), each under a key
of the model's identity (path and export time of a SavedModel, a hash of the weights of a model
passed in) and the settings it depends on: calling again with the same arguments reads them back,
so a killed run resumes, and a changed setting recomputes only what it affects. The keys are those
of the earlier ``kerasprune analyze``, so its ``parts/`` stay valid.

No TensorFlow is imported until :func:`compare` runs (``kerasprune analyze --help`` reads the
presets here). See docs/analysis.md.
"""
import dataclasses
import hashlib
import json
import os
import time
import warnings
from typing import Optional, Tuple, Union

from kerasprune import runs
from kerasprune.errors import KerasPruneError

# The two presets of the sizes: FULL is the default, QUICK (``AnalysisConfig.quick()``,
# ``kerasprune analyze --quick``) takes minutes on 2 CPU cores. None: every test example.
QUICK = {"grid": 7, "hessian_examples": 500, "grid_train_examples": 500, "grid_test_examples": 1000,
         "pair_samples": 1000}
FULL = {"grid": 21, "hessian_examples": 1000, "grid_train_examples": 5000, "grid_test_examples": None,
        "pair_samples": 2000}
PRESETS = {"quick": QUICK, "full": FULL}
# eigen_method: the solvers it runs; the first one's values are hessian_top5.
EIGEN_METHODS = {"lanczos": ["lanczos"], "arpack": ["arpack"], "power": ["power"],
                 "both": ["lanczos", "power"], "all": ["lanczos", "arpack", "power"]}
SUPPORTS = ("union", "all")  # landscape.make_plane's support
METRICS_PNG = "map_{}.png"
# The settings the Hessian step depends on (its cache key): not the maps' or the PSP measures'.
HESSIAN_KEYS = ("hessian_examples", "top_k", "eigen_method", "tol", "max_iter", "trace", "trace_tol",
                "trace_max_iter", "masked", "seed", "dataset", "split_seed", "val_fraction", "max_train_examples")
# Settings added after parts/ existed, at the value that was implicit before: left out of the cache keys.
IMPLICIT = {"psp_entropy": "kerasprune", "train_loss": "mean", "psp_l2": "mean", "psp_entropy_aggregate": "neurons"}


@dataclasses.dataclass
class AnalysisConfig:
    """The settings of a comparison: one field per ``kerasprune analyze`` flag.

    The sizes left at None (``grid``, ``hessian_examples``, ``grid_train_examples``,
    ``grid_test_examples``, ``pair_samples``) take the values of ``preset`` (:data:`FULL`, or
    :data:`QUICK` with ``preset="quick"`` or :meth:`quick`) when the config is made, as flags
    override ``--quick``. Every field but ``data_dir``, ``batch_size`` and ``strategy`` is recorded
    in analysis.json (``settings``, see :meth:`settings`) and keys the cached steps.
    """

    # data: a seeded sample of the training split (after the validation split) and of the test split
    dataset: Optional[str] = None  # the models' own: mnist, fashion_mnist, cifar10 or an image tree
    data_dir: Optional[str] = None  # local data dir (None: $KERASPRUNE_DATA_DIR; unset: TFDS download)
    val_fraction: float = 0.1  # fraction of the training set held out for validation (not sampled)
    split_seed: int = 0  # seed of the train/validation split
    max_train_examples: Optional[int] = None  # only the first N training examples (quick runs)
    max_test_examples: Optional[int] = None  # only the first N test examples (quick runs)
    # run
    preset: str = "full"  # "full" or "quick": the sizes left at None (recorded as settings["quick"])
    seed: int = 0  # seed of the data samples, the random vectors and the random direction
    batch_size: int = 500  # evaluation batch size (the numbers do not depend on it)
    strategy: str = "default"  # tf.distribute strategy the SavedModels are loaded under
    # Hessian
    # training examples the loss is averaged over (full 1000); "all" (or 0): the whole training split
    hessian_examples: Optional[Union[int, str]] = None
    top_k: int = 5  # number of top eigenvalues
    eigen_method: str = "lanczos"  # a key of EIGEN_METHODS; its first solver gives hessian_top5
    tol: float = 1e-3  # eigen-solver tolerance
    max_iter: int = 100  # HVP cap of Lanczos and ARPACK, or per eigenvalue of power iteration
    trace: bool = False  # also estimate the Hessian trace (Hutchinson)
    trace_tol: float = 0.02  # stop the trace estimate at this relative standard error
    trace_max_iter: int = 100  # HVP cap of the trace
    masked: bool = True  # Hessian over the unpruned parameters only (False: all, pruned ones too)
    # maps
    grid: Optional[int] = None  # points per axis, at least 2 (full 21, quick 7)
    alpha_range: Tuple[float, float] = (-0.5, 1.5)  # along G -> 1-S (G at 0, 1-S at 1)
    beta_range: Tuple[float, float] = (-1.0, 1.0)  # along the random orthogonal direction
    filter_normalize: bool = False  # filter-normalise the random direction (Li et al.)
    support: str = "union"  # where the random direction may be nonzero: "union" of G's and 1-S's, or "all"
    grid_train_examples: Optional[int] = None  # training examples for loss and PSP maps (full 5000, quick 500)
    grid_test_examples: Optional[int] = None  # test examples for the error map (full: all, quick 1000)
    pair_samples: Optional[int] = None  # sampled neuron pairs per wide layer, second order (full 2000)
    max_exact_units: int = 1024  # layers up to this width get exact second-order entropy
    # PSP-entropy
    psp_entropy: str = "kerasprune"  # first-order convention: "kerasprune" or "reference" (the authors' code)
    psp_entropy_aggregate: str = "neurons"  # first-order "overall": mean over "neurons" or over "layers"
    # units (docs/analysis.md, "The paper's units")
    train_loss: str = "mean"  # "mean" over examples, or "per-batch": batch means summed / N (the PSP code)
    loss_batch: int = 100  # the batch size of the per-batch training loss
    psp_l2: str = "mean"  # "mean" z^2 over hidden values, or "sum-units": E[z^2] summed over units (the PSP code)

    def __post_init__(self):
        from kerasprune.config import _check_types
        from kerasprune.distribute import parse_strategy
        from kerasprune.pure.psp import ENTROPY_AGGREGATES, PSP_CONVENTIONS, PSP_L2_CONVENTIONS, TRAIN_LOSS_CONVENTIONS

        if self.preset not in PRESETS:
            raise KerasPruneError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        _check_types(self)
        if self.hessian_examples == 0 or self.hessian_examples == "all":
            self.hessian_examples = "all"
        elif isinstance(self.hessian_examples, str):
            raise KerasPruneError(f"hessian_examples must be a count or 'all', got {self.hessian_examples!r}")
        choices = (("eigen_method", tuple(EIGEN_METHODS)), ("support", SUPPORTS), ("psp_entropy", PSP_CONVENTIONS),
                   ("psp_entropy_aggregate", ENTROPY_AGGREGATES), ("train_loss", TRAIN_LOSS_CONVENTIONS),
                   ("psp_l2", PSP_L2_CONVENTIONS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise KerasPruneError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("alpha_range", "beta_range"):
            if len(getattr(self, name)) != 2:
                raise KerasPruneError(f"{name} must be (min, max), got {getattr(self, name)!r}")
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        self.tol, self.trace_tol, self.val_fraction = float(self.tol), float(self.trace_tol), float(self.val_fraction)
        for name in ("hessian_examples", "top_k", "max_iter", "trace_max_iter", "grid_train_examples",
                     "grid_test_examples", "pair_samples", "max_exact_units", "batch_size",
                     "max_train_examples", "max_test_examples", "loss_batch"):
            value = getattr(self, name)
            if value is not None and value != "all" and value < 1:
                raise KerasPruneError(f"{name} must be >= 1, got {value}")
        if self.grid < 2:
            raise KerasPruneError(f"grid must be at least 2 (points per axis), got {self.grid}")
        parse_strategy(self.strategy)

    @classmethod
    def quick(cls, **fields):
        """The quick preset (:data:`QUICK`: minutes on 2 CPU cores), with ``fields`` set."""
        return cls(preset="quick", **fields)

    def settings(self):
        """analysis.json's ``settings``: everything the numbers depend on, as ``kerasprune analyze``
        has always recorded them (``quick`` for the preset, lists for the ranges)."""
        return {
            "dataset": self.dataset, "split_seed": self.split_seed, "val_fraction": self.val_fraction,
            "seed": self.seed, "quick": self.preset == "quick", "masked": self.masked,
            "hessian_examples": self.hessian_examples, "top_k": self.top_k, "eigen_method": self.eigen_method,
            "tol": self.tol, "max_iter": self.max_iter, "trace": self.trace,
            "trace_tol": self.trace_tol, "trace_max_iter": self.trace_max_iter,
            "grid": self.grid, "alpha_range": list(self.alpha_range), "beta_range": list(self.beta_range),
            "filter_normalize": self.filter_normalize, "support": self.support,
            "grid_train_examples": self.grid_train_examples, "grid_test_examples": self.grid_test_examples,
            "pair_samples": self.pair_samples, "max_exact_units": self.max_exact_units,
            "max_train_examples": self.max_train_examples, "max_test_examples": self.max_test_examples,
            "psp_entropy": self.psp_entropy, "psp_entropy_aggregate": self.psp_entropy_aggregate,
            "train_loss": self.train_loss, "loss_batch": self.loss_batch, "psp_l2": self.psp_l2,
        }

    def conventions(self):
        """The variants behind the numbers of analysis.json (its ``conventions``; docs/analysis.md)."""
        return {
            "psp_entropy": self.psp_entropy,  # psp_entropy_1 (per model and map)
            "psp_entropy_2": "kerasprune",  # the reference has no second order
            "support": self.support,
            "eigen_method": EIGEN_METHODS[self.eigen_method][0],  # hessian_top5
            "hessian_parameters": "unpruned" if self.masked else "all",
            "train_loss": self.train_loss,  # performance.train_loss and the train_loss map (settings: loss_batch)
            "psp_l2": self.psp_l2,  # psp_l2 (per model and map)
            "psp_entropy_aggregate": self.psp_entropy_aggregate,  # psp_entropy_1's overall (per model and map)
        }


# ---------------------------------------------------------------------------------------------
# Cached steps.

def _keyed(settings):
    """``settings`` for the cache keys: a setting added later is left out at the value that was
    implicit before (:data:`IMPLICIT`; ``loss_batch`` whenever the loss is the mean, which ignores it),
    so parts computed before it existed stay valid."""
    keyed = {k: v for k, v in settings.items() if not (k in IMPLICIT and v == IMPLICIT[k])}
    if settings.get("train_loss", "mean") == "mean":
        keyed.pop("loss_batch", None)
    return keyed


def _key(*parts):
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path, key, compute):
    """Result of ``compute()``, stored at ``path`` with ``key``; reused when the key matches."""
    from kerasprune.distribute import is_chief

    if os.path.isfile(path):
        saved = runs.read_json(path)
        if saved.get("key") == key:
            return saved["value"]
    value = compute()
    if is_chief():
        runs.write_json(path, {"key": key, "value": value})
    return json.loads(json.dumps(value, default=_plain))


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value).__name__)


def _weights_hash(model):
    """The identity of a model passed in (no path): a hash of its weights, shapes and dtypes."""
    digest = hashlib.sha1()
    for value in model.get_weights():
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _is_path(source):
    return isinstance(source, (str, os.PathLike))


def _open_model(name, source, strategy):
    """(model, path or None, identity) of a SavedModel folder or a Keras model."""
    from kerasprune._keras import keras

    if _is_path(source):
        path = os.path.abspath(os.fspath(source))
        saved = os.path.join(path, "saved_model.pb")
        if not os.path.isfile(saved):
            raise KerasPruneError(f"{name}: {path!r} is not a SavedModel folder (no saved_model.pb)")
        with strategy.scope():
            model = keras.models.load_model(path, compile=False)
        # A SavedModel is known by path and export time: a re-export invalidates its parts. The path
        # with its links resolved, so a worktree or a `runs` symlink reaches the same parts.
        return model, path, [os.path.realpath(path), os.path.getmtime(saved)]
    if not isinstance(source, keras.Model):
        raise KerasPruneError(f"{name} must be a SavedModel folder or a Keras model, got {type(source).__name__}")
    return source, None, ["weights", _weights_hash(source)]


# ---------------------------------------------------------------------------------------------
# Data.

def samples(config):
    """The normalised numpy samples :func:`compare` analyses by default, from ``config.dataset``:
    ``((x, y) for the Hessian, (x, y) for the maps' training sample, (x, y) for the test error)``.

    One seeded permutation (``config.seed``) of the training split (after the validation split,
    and cut to ``max_train_examples``): the Hessian sample is its head, and so is the maps'
    training sample (the smaller one is a subset of the larger). The test sample is the head of
    the test split.
    """
    import numpy as np

    from kerasprune import data

    arrays = data.load_arrays(config.dataset, config.data_dir, config.val_fraction, config.split_seed)
    dspec = data.spec(config.dataset, config.data_dir)
    x_tr, y_tr, x_te, y_te = arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test
    if config.max_train_examples:
        x_tr, y_tr = x_tr[:config.max_train_examples], y_tr[:config.max_train_examples]
    if config.max_test_examples:
        x_te, y_te = x_te[:config.max_test_examples], y_te[:config.max_test_examples]
    order = np.random.default_rng(config.seed).permutation(len(x_tr))
    mean = np.asarray(dspec.mean, np.float32)
    std = np.asarray(dspec.std, np.float32)
    norm = lambda x: ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    take = lambda n: np.sort(order[:min(n, len(order))])
    h_idx = take(len(order) if config.hessian_examples == "all" else config.hessian_examples)
    g_idx = take(config.grid_train_examples)
    n_test = config.grid_test_examples or len(x_te)
    return ((norm(x_tr[h_idx]), y_tr[h_idx]), (norm(x_tr[g_idx]), y_tr[g_idx]),
            (norm(x_te[:n_test]), y_te[:n_test]))


def _dataset(xy, batch_size):
    from kerasprune._keras import tf

    return tf.data.Dataset.from_tensor_slices(xy).batch(batch_size).prefetch(2)


# ---------------------------------------------------------------------------------------------
# The steps.

def _say(level):
    """print, flushed, or nothing at verbosity 0."""
    if not level:
        return lambda *args, **kwargs: None
    return lambda *args, **kwargs: print(*args, **kwargs, flush=True)


def hessian_summary(model, xy, config, say=print):
    """Top-k Hessian eigenvalues by every solver of ``config.eigen_method`` (``top``: the first
    one's), the operator's sizes and, with ``config.trace``, the Hutchinson trace."""
    from kerasprune import analysis

    op = analysis.Hessian(model, xy, masked=config.masked, batch_size=config.batch_size)
    out = {"parameters": op.dim, "free_parameters": op.free, "examples": op.num_examples}
    methods = EIGEN_METHODS[config.eigen_method]
    for method in methods:
        with warnings.catch_warnings():  # reported by eigen_warnings, as a WARNING line and in analysis.json
            warnings.simplefilter("ignore", analysis.EigenConvergenceWarning)
            result = analysis.top_eigenvalues(op, k=config.top_k, method=method, tol=config.tol,
                                              max_iter=config.max_iter, seed=config.seed)
        out[method] = result.as_dict()
        say(f"  {method}: top-{config.top_k} {[f'{v:.4g}' for v in result.eigenvalues]} "
            f"({result.hvps} HVPs, {result.seconds:.1f} s){'' if result.converged else ' NOT CONVERGED'}")
    out["top"] = out[methods[0]]["eigenvalues"]
    if config.trace:
        out["trace"] = analysis.hutchinson_trace(op, tol=config.trace_tol, max_iter=config.trace_max_iter,
                                                 seed=config.seed)
        say(f"  trace {out['trace']['trace']:.4g} +- {out['trace']['stderr']:.2g}")
    return out


def eigen_warnings(name, hessian, config):
    """One line per top-k result of ``hessian`` (a :func:`hessian_summary`) that did not converge."""
    lines = []
    for method in EIGEN_METHODS[config.eigen_method]:
        result = hessian[method]
        if not result["converged"]:
            values = ", ".join(f"{v:.4g}" for v in result["eigenvalues"])
            lines.append(f"{name}: {method} top-{config.top_k} Hessian eigenvalues did not converge "
                         f"(tol {config.tol}, {result['hvps']} HVPs; values {values}): they may be "
                         "wrong; raise --max-iter or --tol")
    return lines


def psp_summary(model, train_xy, test_xy, config):
    """Loss and error on the training sample, test error, PSP L2 and PSP-entropies of ``model``."""
    from kerasprune import analysis

    stats = analysis.psp_statistics(model, _dataset(train_xy, config.batch_size), second_order=True,
                                    max_exact_units=config.max_exact_units,
                                    pair_samples=max(config.pair_samples, 20000), seed=config.seed,
                                    example_losses=config.train_loss == "per-batch")
    test = analysis.psp_statistics(model, _dataset(test_xy, config.batch_size), first_order=False)
    entropy = dict(convention=config.psp_entropy, aggregate=config.psp_entropy_aggregate)
    first = analysis.psp_entropy_first_order(stats, **entropy)
    channel = analysis.psp_entropy_first_order(stats, per_channel=True, **entropy)
    second = analysis.psp_entropy_second_order(stats)
    return {
        "train_loss": analysis.training_loss(stats, config.train_loss, config.loss_batch),
        "train_error": stats.error, "test_error": test.error,
        "psp_l2": analysis.psp_l2(stats, config.psp_l2),
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


# ---------------------------------------------------------------------------------------------
# The stage.

def compare(config, g, oneshot, out, data=None, verbose="auto"):
    """Compares two solutions: Hessian spectra, PSP measures and 2D maps (module docstring).

    Args:
      config: an :class:`AnalysisConfig`.
      g: the gradual solution, origin of the maps: a SavedModel folder or a Keras model (with ReLU
        hidden activations). A model passed in is used in place: the maps set its weights point by
        point and restore them at the end.
      oneshot: the one-shot solution (1-S), at (1, 0) of the maps; likewise.
      out: output folder, made if needed; call again with the same arguments to resume.
      data: None to draw the samples from ``config.dataset`` (:func:`samples`); or the three
        ``(x, y)`` samples :func:`samples` returns (normalised numpy arrays), or a function of no
        arguments returning them, called once the models have loaded. The cached steps are keyed
        by the settings, not by these arrays: analyse other data into another ``out``.
      verbose: "auto" (a progress bar on a terminal, one line per grid row otherwise), 1 (progress
        bar), 2 (lines) or 0 (silent).

    Returns:
      The dict written to ``out/analysis.json`` (``models`` holds None for a model passed in).
      ``warnings`` lists what the numbers should be read with (e.g. an eigen-solve that did not
      converge); it is empty when all is well.

    Raises:
      KerasPruneError: a wrong config or model, e.g. no ``config.dataset`` and no ``data``, a path
        without a SavedModel, or a hidden non-ReLU activation (before any Hessian).
    """
    from kerasprune import sparsity
    from kerasprune._keras import keras
    from kerasprune.analysis import landscape, plots
    from kerasprune.analysis import psp as psp_module
    from kerasprune.distribute import get_strategy, is_chief
    from kerasprune.training import _verbosity

    if not isinstance(config, AnalysisConfig):
        raise KerasPruneError(f"config must be an AnalysisConfig, got {type(config).__name__}")
    if config.dataset is None and data is None:
        raise KerasPruneError("AnalysisConfig.dataset is not set: name the dataset the models were trained on "
                              "(or pass data)")
    level = _verbosity(verbose)
    say = _say(level)
    settings = config.settings()
    parts = os.path.join(out, "parts")
    os.makedirs(parts, exist_ok=True)
    sources = {"g": g, "oneshot": oneshot}
    # The strategy is for loading SavedModels: models passed in are used as they are.
    strategy = get_strategy(config.strategy) if any(map(_is_path, sources.values())) else None
    models, paths, identity = {}, {}, {}
    for name, source in sources.items():
        models[name], paths[name], identity[name] = _open_model(name, source, strategy)
    for model in models.values():  # before hours of Hessians: PSPs need ReLU activations
        psp_module.relu_layers(model)
    if data is None:
        data = samples(config)
    elif callable(data):
        data = data()
    hessian_xy, train_xy, test_xy = data
    start = time.time()

    results, warning_lines = {}, []
    for name, model in models.items():
        say(f"{name}: Hessian on {len(hessian_xy[1])} training examples")
        key = _key(identity[name], {k: settings[k] for k in HESSIAN_KEYS})
        hessian = _cached(os.path.join(parts, f"hessian_{name}.json"), key,
                          lambda: hessian_summary(model, hessian_xy, config, say))
        warning_lines += eigen_warnings(name, hessian, config)
        say(f"{name}: PSP statistics")
        key = _key(identity[name], _keyed(settings))
        psp = _cached(os.path.join(parts, f"psp_{name}.json"), key,
                      lambda: psp_summary(model, train_xy, test_xy, config))
        results[name] = {"hessian": hessian, "psp": psp,
                         "pruned_params_pct": sparsity.report(model).pruned_params_pct}

    alphas, betas = landscape.grid_coordinates(config.alpha_range, config.beta_range, config.grid)
    plane = landscape.make_plane(models["g"], models["oneshot"], seed=config.seed,
                                 filter_normalize=config.filter_normalize, support=config.support)
    say(f"maps: {len(alphas)} x {len(betas)} points; |d1| = {plane.norms()['d1']:.4g}")
    state = os.path.join(parts, f"grid_{_key(identity, _keyed(settings))}.npz")
    total = len(alphas) * len(betas)
    if level == 1:
        progress = keras.utils.Progbar(total, verbose=1, unit_name="point")
    elif level:  # logs and CI: a line per grid row (Keras' verbose=2 would print only at the end)
        progress = RowLog(total, len(alphas))
    else:
        progress = None
    maps = landscape.evaluate_grid(
        models["g"], plane, alphas, betas, _dataset(train_xy, config.batch_size),
        _dataset(test_xy, config.batch_size), max_exact_units=config.max_exact_units,
        pair_samples=config.pair_samples, seed=config.seed, state_path=state, progress=progress,
        psp_convention=config.psp_entropy, train_loss=config.train_loss, loss_batch=config.loss_batch,
        psp_l2=config.psp_l2, entropy_aggregate=config.psp_entropy_aggregate)

    figures = []
    if is_chief():
        for metric, values in maps.items():
            figures.append(plots.plot_map(alphas, betas, values, metric,
                                          os.path.join(out, METRICS_PNG.format(metric))))
        figures.append(plots.plot_eigenvalues(results["g"]["hessian"]["top"], results["oneshot"]["hessian"]["top"],
                                              os.path.join(out, "eigenvalues.png"), log=True))
    analysis = {
        "models": paths, "settings": settings, "conventions": config.conventions(), "warnings": warning_lines,
        "hessian_top5": {n: r["hessian"]["top"] for n, r in results.items()},
        "hessian": {n: r["hessian"] for n, r in results.items()},
        "psp_l2": {n: r["psp"]["psp_l2"] for n, r in results.items()},
        "psp_entropy_1": {n: r["psp"]["psp_entropy_1"] | {"convention": config.psp_entropy}
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
        runs.write_json(os.path.join(out, "analysis.json"), analysis)
        write_tensorboard(os.path.join(out, "tensorboard"), analysis, figures)
    return analysis


__all__ = ["AnalysisConfig", "compare", "samples", "hessian_summary", "psp_summary", "eigen_warnings",
           "write_tensorboard", "QUICK", "FULL", "PRESETS", "EIGEN_METHODS"]
