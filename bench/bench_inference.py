"""Inference latency of LeNet-300: dense vs sparse-masked vs compacted, side by side in one run.

    KERASPRUNE_DATA_DIR=../shared/datasets python bench/bench_inference.py [--lobster-run DIR]

The pruned model is the sparsest operating point of a LOBSTER run folder when one exists with at
least --min-sparsity % pruned parameters (default runs/lobster_lenet300_mnist). Otherwise it is made
here, and the output says so: dense training, the weakest 64% of hidden neurons cut and global
magnitude pruning to 98% of the parameters (the paper's LeNet-300 operating point, Fig. 1a), then
fine-tuning with the mask held fixed.

Variants, all called as ``tf.function(model)(x, training=False)`` on the same inputs:
  dense    LeNet-300 with dense weights (what you pay without pruning);
  masked   the pruned model inside TF-MOT's PruneLowMagnitude wrappers (how it trains);
  sparse   the exported model: standard layers, zeros stored densely;
  compact  the compacted model (dead neurons removed, biases folded).
Each round times every variant once, in rotating order, so load from other processes hits all
alike; the table shows medians over rounds and each variant's speed-up over dense. Timings on a
shared CPU are noisy: read the ratios, not the milliseconds.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kerasprune import compaction, data, export, models, sparsity, training  # noqa: E402
from kerasprune._keras import keras, tf, tfmot  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lobster-run", default="runs/lobster_lenet300_mnist")
    p.add_argument("--min-sparsity", type=float, default=90.0,
                   help="use a LOBSTER point only if it prunes at least this %% of parameters")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--seconds", type=float, default=0.3, help="target time per variant per round")
    p.add_argument("--fallback-epochs", type=int, default=3, help="dense epochs of the fallback model")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    return p.parse_args()


def lobster_point(run_dir, min_sparsity):
    from kerasprune.lobster import load_operating_point, read_operating_points

    if not os.path.isfile(os.path.join(run_dir, "operating_points.csv")):
        return None, None
    rows = [r for r in read_operating_points(run_dir) if r["pruned_params_pct"] >= min_sparsity]
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


def time_variants(fns, x, rounds, seconds):
    """Median seconds per call of each function, measured in interleaved rounds."""
    calls = {}
    for name, fn in fns.items():
        fn(x)  # trace
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            fn(x).numpy()
            n += 1
        calls[name] = max(3, int(n * 3))
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = fns[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                out = fn(x)
            out.numpy()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: float(np.median(s)) for name, s in samples.items()}


def main():
    args = parse_args()
    splits = data.load("mnist", batch_size=100, eval_batch_size=1000)
    dense, found = lobster_point(args.lobster_run, args.min_sparsity)
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

    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in ("dense", "sparse", "compact"):
            path = export.save(variants[k], os.path.join(tmp, k))
            sizes[k] = export.size_report(variants[k], path)

    fns = {k: tf.function(lambda x, m=m: m(x, training=False)) for k, m in variants.items()}
    timings = {}
    for batch in (1, 256):
        x = tf.constant(x_test[:batch])
        timings[batch] = time_variants(fns, x, args.rounds, args.seconds)

    rep = sparsity.report(sparse)
    print(f"\nsparse model: {source}")
    print(f"  {rep.pruned_params_pct:.2f}% of prunable parameters and {rep.pruned_neurons_pct:.2f}% of hidden "
          f"neurons pruned; compacted units {plans[0].units_by_layer()} -> {plans[-1].units_by_layer()}")
    print(f"  test accuracy (10,000 images): dense {accuracy['dense']:.4f}, sparse {accuracy['sparse']:.4f}, "
          f"masked {accuracy['masked']:.4f}, compact {accuracy['compact']:.4f}; max |logit(compact) - "
          f"logit(sparse)| = {np.max(np.abs(logits['compact'] - logits['sparse'])):.2e}")
    print(f"\n{'variant':8s} {'params':>8s} {'nonzero':>8s} {'SavedModel B':>13s} {'gzip B':>9s}")
    for k, s in sizes.items():
        print(f"{k:8s} {s.params:8d} {s.nonzero_params:8d} {s.saved_model_bytes:13d} {s.saved_model_gzip_bytes:9d}")
    print(f"\n{'variant':8s} " + " ".join(f"{'batch ' + str(b) + ' ms':>12s} {'x dense':>8s}" for b in timings))
    for k in variants:
        cells = [f"{1e3 * timings[b][k]:12.4f} {timings[b]['dense'] / timings[b][k]:8.2f}" for b in timings]
        print(f"{k:8s} " + " ".join(cells))
    print(f"\n(medians of {args.rounds} interleaved rounds; TF {tf.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end)")
    if args.out:
        result = {"source": source, "accuracy": accuracy, "timings_s": timings,
                  "speedup_vs_dense": {b: {k: t["dense"] / t[k] for k in t} for b, t in timings.items()},
                  "sizes": {k: vars(s) for k, s in sizes.items()},
                  "units_before": plans[0].units_by_layer(), "units_after": plans[-1].units_by_layer()}
        training.write_json(args.out, result)


if __name__ == "__main__":
    main()
