"""Transfer of a trained (sparse) model's features to another dataset: linear probe or fine-tuning.

``run(TransferConfig(source=..., dataset=...), out)`` takes a trained model (a run folder or a
SavedModel), replaces its classifier layer with a fresh one for the target dataset's classes
(:func:`replace_head`) and trains on the target:

- ``probe="linear"``: the body (every layer but the head) is frozen (``trainable = False``, so
  BatchNorm runs in inference mode and its moving statistics stay too); only the head learns. The
  standard linear-probe measure of how good the features are. The body's weights come out bit for
  bit as they went in (checked at the end).
- ``probe="finetune"``: the whole model trains, inside TF-MOT pruning wrappers whose masks hold the
  source's zeros fixed, as the sweep's retrainings do (:mod:`kerasprune.oneshot`, :mod:`_tfmot`).
  The mask is "kept = nonzero in the source" over ``mask_kinds``; the new head is dense (all ones).

``shots=N`` trains on N examples per class of the target's training split, drawn with a seed
(:func:`draw_shots`); validation (model selection: the best epoch by validation loss) stays the
normal seeded held-out split, so it holds more labelled examples than the shots. The run folder is
resumable and refuses other settings, as ``kerasprune train``'s; see docs/transfer.md.
"""
import dataclasses
import functools
import os
import time
from typing import Optional

import numpy as np

from kerasprune import _tfmot, analysis, data, export, models, runs, sparsity, training
from kerasprune._keras import keras, tf
from kerasprune.config import PROBES, PSP_SPLITS, SELECTIONS, TransferConfig  # defined there, TF-free for --help
from kerasprune.distribute import declare_strategy, get_strategy, is_chief
from kerasprune.errors import KerasPruneError
from kerasprune.pure.points import read_operating_points

# The same file name as the sweep's retrainings: ``kerasprune export`` and another transfer read a
# transfer folder the way they read those (when its config names a registered model).
FINAL_WEIGHTS = runs.FINAL_WEIGHTS
LOBSTER_POINTS = runs.POINTS_CSV


# ---------------------------------------------------------------------------------------------
# Sources.

@dataclasses.dataclass
class SourceInfo:
    """Where a source model comes from (read without loading it)."""

    kind: str  # "saved_model", "lobster" or "run"
    path: str
    weights: Optional[str] = None  # the weights file of a run folder
    point: Optional[int] = None
    model: Optional[str] = None  # registered model name (run folders)
    dataset: Optional[str] = None  # the dataset it was trained on (run folders)
    data_dir: Optional[str] = None

    def as_dict(self):
        return dataclasses.asdict(self)


def describe_source(path, point=None):
    """The :class:`SourceInfo` of ``path``: a SavedModel directory (``saved_model.pb``) or a run folder.

    Run folders are read as ``kerasprune export`` reads them (:func:`kerasprune.export.run_sources`):
    a LOBSTER run (``operating_points.csv``) gives operating point ``point`` (required); a sweep
    retraining (or transfer) run its ``final.weights.h5``; a ``kerasprune train`` run its best
    checkpoint by validation loss.
    """
    if not os.path.isdir(path):
        raise KerasPruneError(f"source {path} does not exist (give a run folder or a SavedModel directory)")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        if point is not None:
            raise KerasPruneError(f"--point is for LOBSTER run folders; {path} is a SavedModel")
        return SourceInfo("saved_model", path)
    config_path = runs.run_file(path, runs.CONFIG)
    if not os.path.isfile(config_path):
        raise KerasPruneError(f"source {path} is neither a SavedModel (no saved_model.pb) nor a run folder "
                              f"(no {runs.CONFIG})")
    config = runs.read_config(path)
    base = dict(path=path, model=config.get("model"), dataset=config.get("dataset"),
                data_dir=config.get("data_dir"))
    if os.path.isfile(os.path.join(path, LOBSTER_POINTS)):
        if point is None:
            finished = [r["point"] for r in read_operating_points(path, finished=True)]
            raise KerasPruneError(f"{path} is a LOBSTER run: choose an operating point with --point N "
                                  f"(finished points: {finished or 'none'})")
        (found,) = export.run_sources(path, points=str(point))
        return SourceInfo("lobster", weights=found.weights, point=point, **base)
    if point is not None:
        raise KerasPruneError(f"--point is for LOBSTER run folders; {path} has no {LOBSTER_POINTS}")
    if base["model"] is None:  # e.g. a transfer from a SavedModel: no registered architecture
        raise KerasPruneError(f"{config_path} names no registered model; use the run's SavedModel "
                              "(metrics.json: saved_model) as the source")
    sweep = _sweep_of(path)
    if sweep and runs.finished(path, "retrain") is None:  # its checkpoint is a retraining's, not a model to use
        raise KerasPruneError(f"{path} is a retraining of the sweep {sweep} that has not finished (no "
                              f"{runs.RESULT}): resume the sweep, or wait for it")
    if not any(os.path.isfile(os.path.join(path, f)) for f in (runs.FINAL_WEIGHTS, runs.BEST_WEIGHTS)):
        raise KerasPruneError(f"run folder {path} has no {runs.FINAL_WEIGHTS} or {runs.BEST_WEIGHTS}: "
                              "no trained model to transfer (has the run finished an epoch?)")
    found = export.run_sources(path)[0]
    return SourceInfo("run", weights=found.weights, **base)


def _sweep_of(path):
    """The sweep folder (the one with ``sweep_config.json``) that run folder ``path`` lies in, or None."""
    here = os.path.abspath(path)
    while os.path.dirname(here) != here:
        here = os.path.dirname(here)
        if os.path.isfile(os.path.join(here, runs.SWEEP_CONFIG)):
            return here
    return None


def load_source(info):
    """The plain (unwrapped, uncompiled) model of a :class:`SourceInfo`, outside any strategy."""
    if info.kind == "saved_model":
        try:
            return keras.models.load_model(info.path, compile=False)
        except Exception as exc:  # TF raises many types; one line says what failed
            raise KerasPruneError(f"could not load the SavedModel {info.path} as a Keras model "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if info.kind == "lobster":
        return export.load_source(info.path, export.Source(f"point_{info.point:03d}", info.weights, info.point))
    model, _ = models.build_for_run(info.path)
    return export.load_weights(model, info.weights)


def resolve(config):
    """``config`` with ``model`` filled in from the source run's config.json (None for a SavedModel).

    Raises if ``config.model`` names another architecture than the source's."""
    info = describe_source(config.source, config.point)
    if config.model is not None and config.model != info.model:
        raise KerasPruneError(f"model {config.model!r} is not the source's ({info.model!r}); "
                              "a transfer keeps the source's architecture: leave model unset")
    return dataclasses.replace(config, model=info.model), info


def check_input_shape(model, dspec, source=""):
    """Raises a one-line error unless ``model`` takes examples of ``dspec``'s shape."""
    if len(model.inputs) != 1:
        raise KerasPruneError(f"the source model {source} has {len(model.inputs)} inputs; a transfer needs one")
    got = tuple(int(d) for d in model.inputs[0].shape[1:])
    if got != tuple(dspec.input_shape):
        raise KerasPruneError(f"the source model {source} takes inputs of shape {got}, but {dspec.name} "
                              f"examples have shape {tuple(dspec.input_shape)}: transfer to a dataset of the "
                              "same image size and channels")


# ---------------------------------------------------------------------------------------------
# The new head.

def classifier_layer(model):
    """The layer producing ``model``'s single output: a Dense layer without activation (the logits)."""
    if not getattr(model, "_is_graph_network", False):
        raise KerasPruneError(f"model {model.name!r} is subclassed; a transfer needs a functional or "
                              "Sequential model")
    if len(model.outputs) != 1:
        raise KerasPruneError(f"model {model.name!r} has {len(model.outputs)} outputs; expected one (the logits)")
    head = model.outputs[0]._keras_history.layer
    activation = getattr(head, "activation", None)
    if not isinstance(head, keras.layers.Dense) or getattr(activation, "__name__", "") != "linear":
        raise KerasPruneError(f"the output of model {model.name!r} comes from {head.name!r} "
                              f"({type(head).__name__}); a transfer replaces a Dense classifier that outputs "
                              "logits (no activation)")
    if len(head._inbound_nodes) != 1:
        raise KerasPruneError(f"the classifier layer {head.name!r} is called more than once")
    return head


def _seeded(initializer, seed):
    """A copy of a (serialised) initializer with ``seed`` (unchanged if it takes none)."""
    init = keras.initializers.get(initializer)
    config = init.get_config()
    if "seed" not in config:
        return init
    config["seed"] = seed
    return type(init).from_config(config)


def replace_head(model, num_classes, seed=0):
    """A model computing ``model``'s features followed by a fresh classifier of ``num_classes`` logits.

    The new head is a copy of the old one's configuration (name, initializers, regularizers) with
    ``num_classes`` units and initial weights drawn from ``seed`` (same seed, same head). The body's
    layers are shared with ``model`` (the same layer objects and variables), so build the result in
    the strategy scope ``model`` was built in (it is entered here).

    Raises:
      KerasPruneError: the model is not a functional graph ending in one Dense layer of logits.
    """
    head = classifier_layer(model)
    config = head.get_config()
    config.update(units=int(num_classes), kernel_initializer=_seeded(config["kernel_initializer"], seed),
                  bias_initializer=_seeded(config["bias_initializer"], seed + 1))
    with model.distribute_strategy.scope():
        new_head = type(head).from_config(config)
        outputs = new_head(head.input)
        return keras.Model(model.inputs, outputs, name=model.name)


def body_layers(model):
    """Every layer of ``model`` but its classifier (the feature extractor)."""
    head = sparsity.unwrap(model.outputs[0]._keras_history.layer)
    return [l for l in model.layers if sparsity.unwrap(l) is not head]


def freeze_body(model):
    """Makes only the classifier trainable (the linear probe); returns ``model``."""
    for layer in body_layers(model):
        layer.trainable = False
    return model


def source_mask(model, kinds=sparsity.DEFAULT_KINDS):
    """``{key: bool}`` over :func:`kerasprune._tfmot.masked_parameters`: kept = nonzero, except the
    classifier's parameters, all kept (the new head is dense)."""
    head = classifier_layer(model).name
    return {k: (np.ones(v.shape, bool) if k.rsplit("/", 1)[0] == head else v.numpy() != 0)
            for k, v in _tfmot.masked_parameters(model, kinds).items()}


# ---------------------------------------------------------------------------------------------
# Target data.

def draw_shots(labels, shots, seed, num_classes=None):
    """Sorted indices of exactly ``shots`` examples of each class of ``labels``, drawn with ``seed``.

    Raises if a class (of ``range(num_classes)``, default: the classes present) has fewer examples.
    """
    labels = np.asarray(labels).reshape(-1)
    classes = range(num_classes) if num_classes is not None else np.unique(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        where = np.flatnonzero(labels == c)
        if len(where) < shots:
            raise KerasPruneError(f"class {c} has {len(where)} training examples, fewer than shots={shots} "
                                  "(with --max-train-examples, raise it or lower --shots)")
        chosen.append(rng.choice(where, size=shots, replace=False))
    return np.sort(np.concatenate(chosen))


@functools.lru_cache(maxsize=4)
def _arrays(dataset, data_dir, val_fraction, split_seed):
    return data.load_arrays(dataset, data_dir=data_dir, val_fraction=val_fraction, split_seed=split_seed)


def target_arrays(config):
    """The target's :class:`kerasprune.data.Arrays`, cut to ``max_train_examples`` and
    ``max_test_examples`` as :func:`kerasprune.data.load` cuts them (read once per process)."""
    arrays = _arrays(config.dataset, data.resolve_data_dir(config.data_dir), config.val_fraction,
                     config.split_seed)
    if not len(arrays.x_test):
        raise KerasPruneError(f"{config.dataset} has no test examples (an image tree needs a test/<class>/ folder)")
    if config.max_train_examples:
        n_val = int(round(config.max_train_examples * config.val_fraction))
        arrays = arrays._replace(x_train=arrays.x_train[:config.max_train_examples],
                                 y_train=arrays.y_train[:config.max_train_examples],
                                 x_val=arrays.x_val[:n_val], y_val=arrays.y_val[:n_val])
    if config.max_test_examples:
        arrays = arrays._replace(x_test=arrays.x_test[:config.max_test_examples],
                                 y_test=arrays.y_test[:config.max_test_examples])
    return arrays


def load_target(config):
    """``(splits, arrays, shots)``: the target's ``DatasetSplits`` (training on the shots when
    ``config.shots``; validation and test as usual), the arrays they were made from (the whole cut
    training split) and the indices of the shots in ``arrays.x_train`` (None without shots)."""
    arrays = target_arrays(config)
    dspec = data.spec(config.dataset, config.data_dir)
    x, y, index = arrays.x_train, arrays.y_train, None
    if config.shots:
        index = draw_shots(y, config.shots, config.draw_seed, dspec.num_classes)
        x, y = x[index], y[index]
    splits = data.DatasetSplits(
        train=data.pipeline(x, y, dspec, config.batch_size, training=True, seed=config.seed,
                            augment=dspec.augment),
        validation=data.pipeline(arrays.x_val, arrays.y_val, dspec, data.EVAL_BATCH_SIZE),
        test=data.pipeline(arrays.x_test, arrays.y_test, dspec, data.EVAL_BATCH_SIZE),
        spec=dspec,
        train_epochs=data.EpochStream(x, y, dspec, config.batch_size, seed=config.seed, augment=dspec.augment))
    return splits, arrays, index


# ---------------------------------------------------------------------------------------------
# The run.

def prepare(config, source_model, num_classes, strategy=None):
    """``(model to fit, plain model, mask or None)``: the source with a new head, set up for the probe.

    ``model to fit`` is compiled. Under ``"linear"`` it is the plain model with its body frozen;
    under ``"finetune"`` a TF-MOT-wrapped copy whose masks hold :func:`source_mask` (the plain model
    then only gives the architecture).
    """
    strategy = strategy or get_strategy(config.strategy)
    with strategy.scope():  # a copy in the strategy's scope: the source was loaded outside it
        body = keras.models.clone_model(source_model)
        body.set_weights(source_model.get_weights())
        model = replace_head(body, num_classes, seed=config.seed)
    if config.probe == "linear":
        freeze_body(model)
        with strategy.scope():
            training.compile_model(model, config.make_optimizer())
        return model, model, None
    mask = source_mask(model, config.mask_kinds)
    wrapped = _tfmot.wrap(model, kinds=config.mask_kinds)
    _tfmot.set_masks(wrapped, mask)
    with strategy.scope():
        training.compile_model(wrapped, config.make_optimizer())
    return wrapped, model, mask


def _body_values(model):
    return {w.name: w.numpy() for layer in body_layers(model) for w in sparsity.unwrap(layer).weights}


def _pruned_pct(model, exclude=None):
    pairs = [(n, v.numpy()) for n, v in sparsity.prunable_variables(model) if n != exclude]
    total = sum(v.size for _, v in pairs)
    return 100.0 * sum(int(np.count_nonzero(v == 0)) for _, v in pairs) / max(total, 1)


def psp_summary(model, arrays, config, dspec):
    """First- and second-order PSP-entropy (and PSP L2) of ``model``'s hidden ReLU inputs on a seeded
    sample of ``config.psp_split`` (kerasprune convention; see docs/analysis.md)."""
    x, y = {"train": (arrays.x_train, arrays.y_train), "validation": (arrays.x_val, arrays.y_val),
            "test": (arrays.x_test, arrays.y_test)}[config.psp_split]
    if len(x) > config.psp_examples:
        index = np.sort(np.random.default_rng(config.seed).permutation(len(x))[:config.psp_examples])
        x, y = x[index], y[index]
    stats = analysis.psp_statistics(model, data.pipeline(x, y, dspec, data.EVAL_BATCH_SIZE),
                                    num_classes=dspec.num_classes, second_order=True,
                                    max_exact_units=config.psp_max_exact_units,
                                    pair_samples=config.psp_pair_samples, seed=config.seed)
    first = analysis.psp_entropy_first_order(stats)
    second = analysis.psp_entropy_second_order(stats)
    return {"split": config.psp_split, "examples": int(stats.examples),
            "psp_entropy_1": first["overall"], "psp_entropy_1_per_layer": first["per_layer"],
            "psp_entropy_2": second["overall"], "psp_entropy_2_stderr": second["overall_stderr"],
            "psp_entropy_2_per_layer": second["per_layer"], "psp_l2": analysis.psp_l2(stats)["overall"],
            "convention": "kerasprune"}


def run(config, out, verbose="auto"):
    """Runs (or resumes, or returns the result of) one transfer in folder ``out``; returns metrics.

    Writes ``config.json`` (the config with ``model`` resolved), TensorBoard logs, ``history.csv``,
    the best checkpoint by validation loss, ``final.weights.h5`` (the selected weights, plain layers,
    source zeros kept under fine-tuning), a SavedModel export, and last ``metrics.json``. One
    process at a time per folder (:func:`kerasprune.runs.exclusive`).
    """
    config, info = resolve(config)
    declare_strategy(config.strategy)
    with runs.exclusive(out, enabled=is_chief()):  # one process per run folder
        return _run_in(config, info, out, verbose)


def _run_in(config, info, out, verbose):
    start = time.time()
    strategy = get_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    source_model = load_source(info)
    dspec = data.spec(config.dataset, config.data_dir)
    check_input_shape(source_model, dspec, info.path)
    head_name = classifier_layer(source_model).name
    analysis.relu_layers(source_model)  # PSPs need separate ReLU layers: fail now, not after training
    # After the source's checks, so a source that cannot be transferred pins no config.json.
    done = runs.start(out, config, "transfer", resumable=("epochs", "export_dir"))
    if done is not None:
        return runs.already_finished(out, done, config.epochs, what="transfer")
    source_report = sparsity.report(source_model)
    splits, arrays, shots = load_target(config)
    fit_model, model, mask = prepare(config, source_model, dspec.num_classes, strategy)
    body_before = _body_values(model) if config.probe == "linear" else None
    # Under finetune, as the sweep's retrainings: TF-MOT's step counter, then the sparsity per epoch.
    callbacks = _tfmot.callbacks() + [sparsity.SparsityLogger(config.mask_kinds)] if mask is not None else []
    history, _ = training.fit_and_record(fit_model, splits, out, config.epochs, callbacks=callbacks,
                                         verbose=verbose)
    best = runs.run_file(out, runs.BEST_WEIGHTS)
    if config.select == "best" and os.path.isfile(best):
        load_checkpoint(fit_model, best, twin=lambda: (keras.models.clone_model(model) if mask is None else
                                                       _tfmot.wrap(keras.models.clone_model(model),
                                                                   kinds=config.mask_kinds)))
    # A fresh plain copy, masks folded in (TF-MOT's strip_pruning shares its inner layers with the
    # wrapped graph, whose tensors a PSP sub-model cannot be built from).
    final = export.plain_copy(fit_model) if mask is not None else model
    _check_body(final, body_before, mask, config.mask_kinds)
    for layer in final.layers:  # the saved model trains as a whole when loaded
        layer.trainable = True
    with final.distribute_strategy.scope():  # metrics are made in the model's strategy
        training.compile_model(final, config.make_optimizer())
    test = training.evaluate(final, splits.test)
    val = training.evaluate(final, splits.validation)
    psp = psp_summary(final, arrays, config, dspec)
    metrics = {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "val_accuracy": val["accuracy"], "val_loss": val["loss"],
        "epochs_completed": len(history),
        "best_val_loss": min((r["val_loss"] for r in history if "val_loss" in r), default=None),
        "probe": config.probe, "shots": config.shots,
        "train_examples": int(len(arrays.x_train) if shots is None else len(shots)),
        "source": info.as_dict(), "source_model_name": source_model.name,
        "source_classes": int(source_model.outputs[0].shape[-1]),
        "source_pruned_params_pct": source_report.pruned_params_pct,
        "source_pruned_neurons_pct": source_report.pruned_neurons_pct,
        "source_pruned_neurons_ref_pct": source_report.pruned_neurons_ref_pct,
        "source_body_pruned_params_pct": _pruned_pct(source_model, exclude=head_name),
        "pruned_params_pct": sparsity.report(final).pruned_params_pct,
        "psp_entropy_1": psp["psp_entropy_1"], "psp_entropy_2": psp["psp_entropy_2"], "psp": psp,
        "seconds_this_session": time.time() - start,
        "model": config.model, "dataset": config.dataset, "params": final.count_params(),
    }
    saved_model = training.export_saved_model(final, runs.export_path(out, config.export_dir))  # all workers
    if is_chief():
        runs.save_weights(final, runs.run_file(out, FINAL_WEIGHTS))
        _log_summary(out, metrics)
        metrics["saved_model"] = os.path.abspath(saved_model)
        runs.mark_finished(out, "transfer", metrics)
    return metrics


def load_checkpoint(model, path, twin):
    """Loads a weights file that a compiled ``model`` wrote (``ModelCheckpoint``) back into it.

    Through ``twin()``, an uncompiled model of the same construction built outside any strategy: a
    compiled model's file also holds its metric variables, and tf_keras cannot assign those
    (sync-on-read under MirroredStrategy) from the file ("unsupported operand type(s) for /:
    'Dataset' and 'int'"). The twin skips them and its values are copied over, variable by variable.
    """
    copy = twin()
    copy.load_weights(path)
    names = [v.name for v in model.weights]
    if names != [v.name for v in copy.weights]:
        raise RuntimeError(f"the checkpoint twin of {model.name} has other variables: {names} vs "
                           f"{[v.name for v in copy.weights]}")
    model.set_weights(copy.get_weights())


def _check_body(final, body_before, mask, kinds):
    """Raises if the probe's promise broke: the frozen body changed, or a source zero came back."""
    if body_before is not None:
        after = _body_values(final)
        changed = sorted(k for k, v in body_before.items() if not np.array_equal(v, after[k]))
        if changed:
            raise RuntimeError(f"the frozen body changed under the linear probe: {changed}")
    if mask is not None:
        values = _tfmot.masked_parameters(final, kinds)
        broken = sorted(k for k, m in mask.items() if np.any(values[k].numpy()[~m] != 0))
        if broken:
            raise RuntimeError(f"masked parameters became nonzero during fine-tuning: {broken}")


def _log_summary(out, metrics):
    """The headline numbers as TensorBoard scalars (``tensorboard/transfer``)."""
    writer = tf.summary.create_file_writer(os.path.join(runs.run_file(out, runs.TENSORBOARD), "transfer"))
    with writer.as_default():
        for key in ("test_accuracy", "test_loss", "val_accuracy", "source_pruned_params_pct",
                    "psp_entropy_1", "psp_entropy_2"):
            tf.summary.scalar(f"transfer/{key}", metrics[key], step=metrics["epochs_completed"])
    writer.close()


__all__ = ["TransferConfig", "run", "replace_head", "classifier_layer", "freeze_body", "body_layers",
           "source_mask", "draw_shots", "describe_source", "load_source", "resolve", "check_input_shape",
           "load_target", "prepare", "psp_summary", "PROBES", "SELECTIONS", "PSP_SPLITS", "FINAL_WEIGHTS"]
