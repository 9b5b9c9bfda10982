"""Exporting pruned models: plain SavedModels, compacted SavedModels, size reports, TFLite.

:func:`plain_copy` (or :func:`strip`, its older name) turns any pruned model (TF-MOT wrappers or
plain layers with zeros) into a fresh model of standard Keras layers with its masks multiplied into
the weights, so the zeros are real zeros.
:func:`save` writes it as a SavedModel whose ``serving_default`` signature takes the model's input
by name (``image``) and returns its output by name (``logits``); it loads with
``tf.saved_model.load`` and ``tf_keras.models.load_model`` without kerasprune installed.
:func:`size_report` measures what users care about: parameters, non-zeros, bytes on disk and
gzip-compressed bytes (TF-MOT's way of showing what sparsity buys: zeros compress).
:func:`export_run` does all of it for the models of a run folder (see ``docs/export.md``).
"""
import dataclasses
import io
import os
import tarfile
from typing import Optional

import numpy as np

from kerasprune import _tfmot, compaction, data, models, runs, sparsity
from kerasprune._keras import keras, tf
from kerasprune.distribute import is_chief
from kerasprune.errors import KerasPruneError
from kerasprune.lobster import load_operating_point
from kerasprune.pure.points import read_operating_points
from kerasprune.sparsity import has_wrappers  # noqa: F401  (export.has_wrappers, as before)
from kerasprune.training import export_saved_model

LOBSTER_POINTS = runs.POINTS_CSV  # the LOBSTER run-folder contract (kerasprune.pure.points)
COMPACT_SUFFIX = "_compact"
REPORT_SUFFIX = runs.EXPORT_REPORT_SUFFIX  # T.export.json, written last: T's export finished


def plain_copy(model):
    """A fresh copy of ``model`` of standard Keras layers: TF-MOT pruning wrappers removed, each
    wrapped weight multiplied by its mask (:func:`kerasprune._tfmot.plain_copy`). ``model`` itself is
    left untouched."""
    if has_wrappers(model):
        plain = _tfmot.plain_copy(model)
    else:
        with model.distribute_strategy.scope():
            plain = keras.models.clone_model(model)
        plain.set_weights([v.numpy() for v in model.weights])
    _require_standard_layers(plain)
    return plain


strip = plain_copy  # the older name


def save(model, path):
    """Writes ``model`` (wrappers stripped, masks folded) as a SavedModel at ``path``, atomically.

    Only the chief writes (under multi-worker training every worker calls this). Returns ``path``.
    """
    plain = plain_copy(model) if has_wrappers(model) else model
    _require_standard_layers(plain)
    if is_chief():
        export_saved_model(plain, path)
    return path


@dataclasses.dataclass
class SizeReport:
    """How big one exported model is."""

    params: int  # all weights of the model (trainable and not)
    nonzero_params: int
    prunable_params: int  # the parameters pruning acts on (kerasprune.sparsity)
    pruned_params_pct: float
    pruned_neurons_pct: float
    saved_model_bytes: int  # the SavedModel directory on disk
    saved_model_gzip_bytes: int  # the same directory as a .tar.gz
    tflite_bytes: Optional[int] = None
    tflite_gzip_bytes: Optional[int] = None


def size_report(model, saved_model_dir, tflite_path=None):
    """The :class:`SizeReport` of ``model`` and its SavedModel (and TFLite file, if given)."""
    plain = plain_copy(model) if has_wrappers(model) else model
    weights = plain.get_weights()
    rep = sparsity.report(plain)
    out = SizeReport(
        params=int(sum(w.size for w in weights)),
        nonzero_params=int(sum(np.count_nonzero(w) for w in weights)),
        prunable_params=rep.params, pruned_params_pct=rep.pruned_params_pct,
        pruned_neurons_pct=rep.pruned_neurons_pct,
        saved_model_bytes=dir_bytes(saved_model_dir), saved_model_gzip_bytes=gzip_bytes(saved_model_dir))
    if tflite_path:
        out.tflite_bytes = os.path.getsize(tflite_path)
        out.tflite_gzip_bytes = gzip_bytes(tflite_path)
    return out


def dir_bytes(path):
    """Total size of the files under ``path`` (or of the file ``path``)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def gzip_bytes(path):
    """Bytes of ``path`` (a file or a directory, tarred) compressed with gzip at level 9.

    Tar headers get a fixed mtime and owner, so the number depends on the content only."""
    def normalise(info):
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as tar:
        tar.add(path, arcname=os.path.basename(path.rstrip("/")), filter=normalise)
    return buffer.tell()


def to_tflite(saved_model_dir, path):
    """Converts a SavedModel to a TFLite flatbuffer at ``path`` (float32, no quantisation)."""
    runs.write_atomic(path, tf.lite.TFLiteConverter.from_saved_model(saved_model_dir).convert())
    return path


def serving_logits(saved_model_dir):
    """A function ``x -> logits`` calling the SavedModel's ``serving_default`` signature by name."""
    loaded = tf.saved_model.load(saved_model_dir)
    signature = loaded.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1]
    (output_name,) = signature.structured_outputs

    def call(x):
        return signature(**{input_name: tf.convert_to_tensor(x)})[output_name].numpy()

    call.loaded = loaded  # keeps the restored object (and its variables) alive
    return call


# ---------------------------------------------------------------------------------------------
# Run folders.

ONESHOT_FINAL = runs.FINAL_WEIGHTS  # kerasprune.oneshot's stripped final model (one-shot baselines)


@dataclasses.dataclass
class Source:
    """One model to export: where its weights are, and the tag its export is named by."""

    tag: str
    weights: str
    point: Optional[int] = None  # LOBSTER operating point


def run_sources(run_dir, points="all", weights=()):
    """The :class:`Source` models of a run folder.

    A LOBSTER run folder (``operating_points.csv``) gives one source per operating point (``points``:
    ``all``, ``last`` or comma-separated indices); a one-shot baseline run its ``final.weights.h5``;
    a training run its best checkpoint. Extra ``weights`` files are exported as given (tag: the file
    name), instead of those defaults when the folder is not a LOBSTER run.
    """
    sources = []
    csv_path = os.path.join(run_dir, LOBSTER_POINTS)
    if os.path.isfile(csv_path):
        # Not the level LOBSTER is still in (a later run would skip it as already exported).
        rows = read_operating_points(run_dir, finished=True)
        if points == "last":
            rows = rows[-1:]
        elif points != "all":
            try:
                wanted = {int(p) for p in str(points).split(",")}
            except ValueError:
                raise KerasPruneError(f"points must be all, last or comma-separated point numbers, "
                                      f"got {points!r}") from None
            missing = wanted - {r["point"] for r in rows}
            if missing:
                raise KerasPruneError(f"{csv_path} has no finished operating point {sorted(missing)}; it "
                                      f"has {[r['point'] for r in rows]}")
            rows = [r for r in rows if r["point"] in wanted]
        sources += [Source(f"point_{r['point']:03d}", os.path.join(run_dir, r["weights"]), r["point"])
                    for r in rows]
    elif not weights:
        for tag, name in (("final", ONESHOT_FINAL), ("best", runs.BEST_WEIGHTS)):
            if os.path.isfile(os.path.join(run_dir, name)):
                sources.append(Source(tag, os.path.join(run_dir, name)))
                break
    for w in weights:
        tag = os.path.basename(w)
        for suffix in (".weights.h5", ".h5"):
            tag = tag[: -len(suffix)] if tag.endswith(suffix) else tag
        sources.append(Source(tag, w))
    if not sources:
        raise KerasPruneError(f"{run_dir} has no finished point in {LOBSTER_POINTS}, no {ONESHOT_FINAL} or "
                              f"{runs.BEST_WEIGHTS}, and no --weights were given: nothing to export")
    tags = [s.tag for s in sources]
    twice = sorted({t for t in tags if tags.count(t) > 1})
    if twice:  # the second would find the first's report and be skipped
        raise KerasPruneError(f"two models to export have the same tag {twice}: rename a --weights file")
    return sources


def load_source(run_dir, source):
    """The plain model of one :class:`Source` (TF-MOT-wrapped weight files are stripped)."""
    if source.point is not None:
        return load_operating_point(run_dir, source.point)
    return load_weights(models.build_for_run(run_dir)[0], source.weights)


def load_weights(model, weights):
    """Loads ``weights`` into ``model``; files saved from a TF-MOT-wrapped model are loaded into a
    wrapped copy and stripped. Returns the plain model holding the weights."""
    if not os.path.exists(weights):
        raise KerasPruneError(f"weights file {weights} does not exist")
    try:
        model.load_weights(weights)
        return model
    except OSError as exc:  # h5py: a truncated or overwritten file
        raise KerasPruneError(f"{weights} cannot be read ({str(exc).splitlines()[0][:120]}): the file is "
                              "damaged; restore it or rerun the run that wrote it") from None
    except (ValueError, KeyError) as plain_error:
        wrapped = _tfmot.wrap_default(model)
        try:
            wrapped.load_weights(weights)
        except (ValueError, KeyError):
            raise KerasPruneError(f"{weights} does not hold weights of {model.name} (plain or TF-MOT-"
                                  f"wrapped): {str(plain_error).splitlines()[0][:200]}") from None
        return plain_copy(wrapped)


def export_run(run_dir, export_dir=None, points="all", weights=(), compact=True, tflite=False,
               evaluate=True, force=False, max_test_examples=None, verbose=True):
    """Exports every source model of ``run_dir``; returns ``{tag: report dict}``.

    For each source tag T, under ``runs.export_path(run_dir, export_dir, T)``'s parent it writes
    ``T/`` (the pruned model, zeros kept), ``T_compact/`` (compacted), optionally ``T.tflite`` and
    ``T_compact.tflite``, and last ``T.export.json``: sizes, the compaction plan, and (``evaluate``)
    test accuracy and the largest logit difference of the two SavedModels as loaded back. A tag whose
    report exists is skipped unless ``force``, so rerunning a killed export finishes it.
    """
    results = {}
    for source in run_sources(run_dir, points, weights):
        sparse_dir = runs.export_path(run_dir, export_dir, source.tag)
        where = {"tag": source.tag, "export_dir": export_dir}
        done = None if force else runs.finished(run_dir, "export", **where)
        if done is not None:
            results[source.tag] = done
            _say(verbose, f"{source.tag}: already exported ({runs.finished_marker(run_dir, 'export', **where)})")
            continue
        config = runs.read_config(run_dir)
        plain = plain_copy(load_source(run_dir, source))
        report = {"tag": source.tag, "weights": source.weights, "run_dir": os.path.abspath(run_dir),
                  "model": config["model"], "dataset": config["dataset"], "saved_model": sparse_dir}
        save(plain, sparse_dir)
        sparse_tflite = to_tflite(sparse_dir, sparse_dir + ".tflite") if tflite else None
        report["sparse"] = dataclasses.asdict(size_report(plain, sparse_dir, sparse_tflite))
        if compact:
            compact_dir = runs.export_path(run_dir, export_dir, source.tag + COMPACT_SUFFIX)
            small, plans = compaction.compact(plain, return_plans=True)
            save(small, compact_dir)
            compact_tflite = to_tflite(compact_dir, compact_dir + ".tflite") if tflite else None
            report["compact"] = dataclasses.asdict(size_report(small, compact_dir, compact_tflite))
            report["compact_saved_model"] = compact_dir
            report["compaction"] = {"units_before": plans[0].units_by_layer(),
                                    "units_after": plans[-1].units_by_layer(),
                                    "input_crop": plans[-1].input_crop,
                                    "passes": [p.as_dict() for p in plans]}
        if evaluate:
            report["evaluation"] = _evaluate_exports(report, config, max_test_examples)
        if is_chief():
            runs.mark_finished(run_dir, "export", report, **where)
        results[source.tag] = report
        _say(verbose, summary_line(report))
    return results


def _evaluate_exports(report, config, max_test_examples):
    """Test accuracy of the exported SavedModels as loaded back, and their largest logit gap."""
    splits = data.load(config["dataset"], data_dir=config.get("data_dir"), batch_size=1000,
                       val_fraction=config.get("val_fraction", 0.1), split_seed=config.get("split_seed", 0),
                       max_test_examples=max_test_examples)
    dirs = {"sparse": report["saved_model"]}
    if "compact_saved_model" in report:
        dirs["compact"] = report["compact_saved_model"]
    calls = {k: serving_logits(d) for k, d in dirs.items()}
    logits = {k: [] for k in calls}
    labels = []
    for x, y in splits.test:
        labels.append(y.numpy())
        for k, call in calls.items():
            logits[k].append(call(x))
    labels = np.concatenate(labels)
    out = {"test_examples": int(labels.size)}
    for k in calls:
        logits[k] = np.concatenate(logits[k])
        out[f"{k}_test_accuracy"] = float(np.mean(logits[k].argmax(-1) == labels))
    if "compact" in logits:
        out["max_abs_logit_difference"] = float(np.max(np.abs(logits["compact"] - logits["sparse"])))
        out["same_predictions"] = bool(np.all(logits["compact"].argmax(-1) == logits["sparse"].argmax(-1)))
    return out


def summary_line(report):
    """One line per export: sizes of sparse and compact models and their test accuracies."""
    s = report["sparse"]
    text = (f"{report['tag']}: {s['pruned_params_pct']:.2f}% pruned params, {s['pruned_neurons_pct']:.2f}% "
            f"pruned neurons; SavedModel {s['saved_model_bytes']:,} B (gzip {s['saved_model_gzip_bytes']:,})")
    if "compact" in report:
        c = report["compact"]
        text += (f"; compact {c['params']:,} params, {c['saved_model_bytes']:,} B "
                 f"(gzip {c['saved_model_gzip_bytes']:,})")
    ev = report.get("evaluation")
    if ev:
        text += f"; test acc {ev['sparse_test_accuracy']:.4f}"
        if "compact_test_accuracy" in ev:
            text += f" / compact {ev['compact_test_accuracy']:.4f} (max |dlogit| {ev['max_abs_logit_difference']:.1e})"
    return text


def _say(verbose, text):
    if verbose:
        print(text, flush=True)


# ---------------------------------------------------------------------------------------------


def _require_standard_layers(model):
    """An export must load without kerasprune: refuse layers that are not part of Keras."""
    for layer in sparsity.all_layers(model):
        module = type(layer).__module__
        if not module.startswith("tf_keras.") or sparsity.is_pruning_wrapper(layer):
            raise KerasPruneError(f"layer {layer.name} is a {type(layer).__name__} from {module}, not a "
                                  "standard Keras layer; the SavedModel would not load without that code")


__all__ = ["plain_copy", "strip", "has_wrappers", "save", "size_report", "SizeReport", "to_tflite", "serving_logits",
           "export_run", "run_sources", "load_source", "load_weights", "gzip_bytes", "dir_bytes"]
