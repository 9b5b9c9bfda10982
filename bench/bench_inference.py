"""Inference latency of LeNet-300: dense vs sparse-masked vs compacted, side by side in one run.

    KERASPRUNE_DATA_DIR=../shared/datasets python bench/bench_inference.py [--lobster-run DIR]

The pruned model is the sparsest operating point of a LOBSTER run folder when one exists with at
least --min-sparsity % pruned parameters (default runs/lobster_lenet300_mnist). Otherwise it is made
here, and the output says so: dense training, the weakest 64% of hidden neurons cut and global
magnitude pruning to 98% of the parameters (the paper's LeNet-300 operating point, Fig. 1a), then
fine-tuning with the mask held fixed.

Variants, each a concrete ``tf.function`` of ``model(x, training=False)`` on the same inputs, with
the result fetched as numpy:
  dense    LeNet-300 with dense weights (what you pay without pruning);
  masked   the pruned model inside TF-MOT's PruneLowMagnitude wrappers (how it trains);
  sparse   the exported model: standard layers, zeros stored densely;
  compact  the compacted model (dead neurons removed, biases folded, dead input border cropped);
  tf_call  a concrete function that only slices its input to the logits' shape: TensorFlow's fixed
           cost per call (dispatch, executor, result to numpy), which every variant pays too;
and tflite_dense / tflite_sparse / tflite_compact: the three exports converted to TFLite (float32)
and run by the TFLite interpreter, whose per-call overhead is far smaller than TensorFlow's.
The last table subtracts tf_call's median from the median TF times: the speed-up of the compute
itself, which is what a lower-overhead TF runtime could show at most.
Each round times every variant once, in rotating order, so load from other processes hits all
alike. The table shows, per variant, the best round (the one least disturbed by other processes)
and the median round, each with its speed-up over dense. On a shared CPU read the ratios, not the
milliseconds.
"""
import argparse
import json
import os
import sys
import shutil
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kerasprune import compaction, data, export, models, runs, sparsity, training  # noqa: E402
from kerasprune._keras import keras, tf, tfmot  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lobster-run", default="runs/lobster_lenet300_mnist")
    p.add_argument("--min-sparsity", type=float, default=90.0,
                   help="use a LOBSTER point only if it prunes at least this %% of parameters")
    p.add_argument("--point", type=int, default=None,
                   help="use this operating point of the LOBSTER run (default: its sparsest finished one)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--seconds", type=float, default=0.05, help="target time per variant per round")
    p.add_argument("--fallback-epochs", type=int, default=3, help="dense epochs of the fallback model")
    p.add_argument("--threads", type=int, default=0,
                   help="TensorFlow intra-op threads (0: TF's default, all cores)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    return p.parse_args()


def lobster_point(run_dir, min_sparsity, point=None):
    from kerasprune.lobster import load_operating_point, read_operating_points

    if not os.path.isfile(os.path.join(run_dir, "operating_points.csv")):
        return None, None
    rows = [r for r in read_operating_points(run_dir) if r["pruned_params_pct"] >= min_sparsity
            and (point is None or r["point"] == point)]
    if not rows:
        return None, None
    best = max(rows, key=lambda r: r["pruned_params_pct"])
    dense = load_operating_point(run_dir, min(r["point"] for r in read_operating_points(run_dir)))
    return dense, (load_operating_point(run_dir, best["point"]),
                   f"LOBSTER {run_dir} point {best['point']} ({best['pruned_params_pct']:.2f}% pruned)")


class KeepMask(keras.callbacks.Callback):
    """Re-zeroes the pruned weights after every batch (fine-tuning with a fixed mask)."""

    def __init__(self, masks):
        super().__init__()
        self.masks = masks

    def on_train_batch_end(self, batch, logs=None):
        for var, mask in self.masks:
            var.assign(var * mask)


def fallback_models(splits, epochs):
    """A dense LeNet-300 and a LOBSTER-like pruned copy (98% params, 64% neurons), made here."""
    dense = models.build("lenet300", seed=0)
    training.compile_model(dense, training.make_optimizer("sgd", lr=0.1))
    dense.fit(splits.train, epochs=epochs, verbose=2)
    pruned = models.build("lenet300", seed=0)
    pruned.set_weights(dense.get_weights())
    w = pruned.get_weights()  # fc1 kernel, bias, fc2 kernel, bias, logits kernel, bias
    for k, b, n_cut in ((0, 1, 192), (2, 3, 64)):  # 256 of 400 hidden neurons = 64%
        cut = np.argsort(np.abs(w[k]).sum(0))[:n_cut]
        w[k][:, cut], w[b][cut] = 0, 0
    kernels = np.concatenate([np.abs(w[i]).ravel() for i in (0, 2, 4)])
    keep = int(round(0.02 * sum(x.size for x in w)))  # 98% of all parameters pruned
    threshold = np.sort(kernels)[-keep]
    for i in (0, 2, 4):
        w[i][np.abs(w[i]) < threshold] = 0
    pruned.set_weights(w)
    training.compile_model(pruned, training.make_optimizer("sgd", lr=0.05))
    masks = [(v, tf.constant((v.numpy() != 0).astype(np.float32))) for _, v in sparsity.prunable_variables(pruned)]
    pruned.fit(splits.train, epochs=2, verbose=2, callbacks=[KeepMask(masks)])
    rep = sparsity.report(pruned)
    return dense, (pruned, f"fallback (no LOBSTER point >= the threshold yet): magnitude pruning to "
                           f"{rep.pruned_params_pct:.2f}% params / {rep.pruned_neurons_pct:.2f}% neurons "
                           f"+ 2 epochs fixed-mask fine-tuning")


def wrapped_copy(model):
    """The pruned model in TF-MOT wrappers with masks = (weight != 0), as during pruning."""
    wrapped = tfmot().sparsity.keras.prune_low_magnitude(keras.models.clone_model(model))
    for layer in wrapped.layers:
        inner = getattr(layer, "layer", layer)
        if inner.weights:
            inner.set_weights(model.get_layer(inner.name).get_weights())
        for weight, mask, _ in getattr(layer, "pruning_vars", []):
            mask.assign(tf.cast(weight != 0, mask.dtype))
    return wrapped


def time_variants(fns, rounds, seconds):
    """``{variant: (best, median, median CPU)}`` seconds per call, measured in interleaved rounds.

    Every call returns its result as a numpy array, so a call is the whole latency. CPU is this
    process's CPU time (all threads): it counts the work done, not the waiting for a core that other
    processes hold, so it is the steadier figure on a shared machine."""
    calls = {}
    for name, fn in fns.items():
        fn()  # warm up
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            fn()
            n += 1
        calls[name] = max(3, int(n * 3))
    samples = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = fns[name], calls[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
            cpu[name].append((time.process_time() - start_cpu) / n)
    return {name: (float(np.min(s)), float(np.median(s)), float(np.median(cpu[name])))
            for name, s in samples.items()}


def keras_call(model, x):
    """The model's forward pass on ``x`` as a concrete function (least Python overhead per call)."""
    concrete = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32))
    x = tf.constant(x)
    return lambda: concrete(x).numpy()


def fixed_cost_call(x, classes):
    """A concrete function as cheap as TF allows with the models' input and output shapes."""
    concrete = tf.function(lambda t: tf.reshape(t, (t.shape[0], -1))[:, :classes]).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32))
    x = tf.constant(x)
    return lambda: concrete(x).numpy()


def tflite_call(tflite_path, x, threads):
    """One TFLite interpreter invocation on ``x`` (batch resized to ``len(x)``)."""
    interpreter = tf.lite.Interpreter(model_path=tflite_path, num_threads=threads or None)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()

    def call():
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return call


def net_speedups(timings):
    """Median speed-up over dense of each TF variant once the fixed per-call cost is taken off both."""
    floor = timings["tf_call"][1]
    dense = timings["dense"][1] - floor
    # Within the noise of the floor (batch 1) a ratio means nothing: NaN then.
    return {k: dense / (timings[k][1] - floor) if min(dense, timings[k][1] - floor) > 0.05 * floor
            else float("nan") for k in ("masked", "sparse", "compact")}


def main():
    args = parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    splits = data.load("mnist", batch_size=100, eval_batch_size=1000)
    dense, found = lobster_point(args.lobster_run, args.min_sparsity, args.point)
    if found is None:
        dense, found = fallback_models(splits, args.fallback_epochs)
    pruned, source = found
    sparse = export.strip(pruned)
    compact, plans = compaction.compact(sparse, return_plans=True)
    variants = {"dense": dense, "masked": wrapped_copy(sparse), "sparse": sparse, "compact": compact}

    x_test = np.concatenate([x.numpy() for x, _ in splits.test])
    y_test = np.concatenate([y.numpy() for _, y in splits.test])
    logits = {k: m.predict(x_test, batch_size=1000, verbose=0) for k, m in variants.items()}
    accuracy = {k: float(np.mean(v.argmax(-1) == y_test)) for k, v in logits.items()}

    sizes, tflite_files = {}, {}
    tmp = tempfile.mkdtemp(prefix="bench_inference_")
    for k in ("dense", "sparse", "compact"):
        path = export.save(variants[k], os.path.join(tmp, k))
        tflite_files[k] = export.to_tflite(path, path + ".tflite")
        sizes[k] = export.size_report(variants[k], path, tflite_files[k])

    timings = {}
    for batch in (1, 256):
        x = x_test[:batch]
        fns = {k: keras_call(m, x) for k, m in variants.items()}
        fns["tf_call"] = fixed_cost_call(x, dense.output_shape[-1])
        fns.update({f"tflite_{k}": tflite_call(f, x, args.threads) for k, f in tflite_files.items()})
        for k in ("sparse", "compact"):  # the TFLite files compute what the models compute
            np.testing.assert_allclose(fns[f"tflite_{k}"](), fns[k](), rtol=1e-4, atol=1e-4)
        timings[batch] = time_variants(fns, args.rounds, args.seconds)
    shutil.rmtree(tmp, ignore_errors=True)

    rep = sparsity.report(sparse)
    print(f"\nsparse model: {source}")
    print(f"  {rep.pruned_params_pct:.2f}% of prunable parameters and {rep.pruned_neurons_pct:.2f}% of hidden "
          f"neurons pruned; compacted units {plans[0].units_by_layer()} -> {plans[-1].units_by_layer()}")
    print(f"  test accuracy (10,000 images): dense {accuracy['dense']:.4f}, sparse {accuracy['sparse']:.4f}, "
          f"masked {accuracy['masked']:.4f}, compact {accuracy['compact']:.4f}; max |logit(compact) - "
          f"logit(sparse)| = {np.max(np.abs(logits['compact'] - logits['sparse'])):.2e}")
    print(f"\n{'variant':8s} {'params':>8s} {'nonzero':>8s} {'SavedModel B':>13s} {'gzip B':>9s} {'TFLite B':>9s} "
          f"{'gzip B':>8s}")
    for k, s in sizes.items():
        print(f"{k:8s} {s.params:8d} {s.nonzero_params:8d} {s.saved_model_bytes:13d} {s.saved_model_gzip_bytes:9d} "
              f"{s.tflite_bytes:9d} {s.tflite_gzip_bytes:8d}")
    print("\nms per batch (speed-up over the dense model of the same runtime): best and median "
          "wall-clock round, median CPU time")
    for b, t in timings.items():
        print(f"batch {b}:")
        for k in t:
            base = t["tflite_dense" if k.startswith("tflite") else "dense"]
            print(f"  {k:14s} " + "  ".join(f"{label} {1e3 * t[k][i]:8.4f} ({base[i] / t[k][i]:4.2f}x)"
                                             for i, label in enumerate(("best", "median", "cpu"))))
    print("\nTensorFlow compute alone (median minus tf_call's median), speed-up over dense:")
    for b, t in timings.items():
        net = net_speedups(t)
        print(f"  batch {b}: " + "  ".join(f"{k} {v:4.2f}x" for k, v in net.items()))
    print(f"\n({args.rounds} interleaved rounds; {args.threads or 'default'} intra-op threads; TF {tf.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end)")
    if args.out:
        result = {"source": source, "accuracy": accuracy, "timings_s": timings,
                  "speedup_vs_dense": {stat: {b: {k: t["tflite_dense" if k.startswith("tflite") else "dense"][i]
                                                      / t[k][i] for k in t} for b, t in timings.items()}
                                       for i, stat in enumerate(("best", "median", "cpu"))},
                  "net_of_tf_call_speedup_median": {b: net_speedups(t) for b, t in timings.items()},
                  "threads": args.threads,
                  "sizes": {k: vars(s) for k, s in sizes.items()},
                  "units_before": plans[0].units_by_layer(), "units_after": plans[-1].units_by_layer()}
        runs.write_json(args.out, result)


if __name__ == "__main__":
    main()
