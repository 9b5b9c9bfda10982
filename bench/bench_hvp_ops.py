"""Where an HVP's time goes: per-op profile of one gradient vs one HVP of the same loss and batch.

Issue 5 asks for HVP <= 1.6x a gradient (LeNet-5, 1,000 MNIST images). ``bench_analysis.py``
measures 2.3-2.35x. This bench says why, op by op: it builds the same computation as
``kerasprune.analysis.Hessian`` (nested ``tf.GradientTape``, inference mode, mean cross-entropy,
all trainable variables: a dense model has no pruned entries to mask) and times every op with
``RunOptions(FULL_TRACE)``.

Why a TF1 ``Session``: its step statistics are TensorFlow's one per-op timer that needs no extra
package (the TF2 profiler writes an XPlane file that only the TensorBoard profile plugin reads).
The HVP is checked against ``kerasprune.analysis.hvp`` on the same weights before it is timed.

Reading it: an exact HVP differentiates the backward pass again. Each Conv2D/MatMul of the
gradient (forward, backprop-input, backprop-filter) is bilinear, so its derivative costs two ops of
the same size; per layer the HVP runs about three times the gradient's convolution arithmetic. It
prints the op time per op type and the HVP's convolution + matmul time over the gradient's: the
part no implementation of an exact HVP can avoid.

usage:
  KERASPRUNE_DATA_DIR=../shared/datasets python bench/bench_hvp_ops.py [--model lenet5] [--examples 1000]
"""
import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from kerasprune._keras import keras, tf  # noqa: E402
from kerasprune import analysis, data, models  # noqa: E402

tf1 = tf.compat.v1
ARITHMETIC = ("Conv2D", "MatMul")  # substrings of the op types of convolutions and matmuls (oneDNN or not)


def is_arithmetic(op_type):
    return any(a in op_type for a in ARITHMETIC)


def profile(session, fetches, feed, repeats):
    """``(best wall seconds, {op type: mean op microseconds})`` over ``repeats`` traced runs."""
    session.run(fetches, feed)
    walls, per_op = [], collections.Counter()
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(fetches, feed)
        walls.append(time.perf_counter() - start)
    for _ in range(repeats):
        meta = tf1.RunMetadata()
        session.run(fetches, feed, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE),
                    run_metadata=meta)
        for device in meta.step_stats.dev_stats:
            for node in device.node_stats:
                label = node.timeline_label
                op_type = label.split(" = ")[1].split("(")[0] if " = " in label else node.node_name
                per_op[op_type] += node.all_end_rel_micros / repeats
    return min(walls), per_op


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="op types listed per computation")
    args = parser.parse_args()

    splits = data.load("mnist", batch_size=args.examples)
    x, y = (t.numpy() for t in next(iter(splits.train)))
    eager = models.build(args.model, seed=0)
    vector = [np.random.RandomState(i).randn(*v.shape).astype(np.float32)
              for i, v in enumerate(eager.trainable_variables)]
    expected = analysis.hvp(eager, x, y, vector, masked=False)  # fresh biases are 0: not "pruned" here
    weights = eager.get_weights()

    graph = tf.Graph()
    with graph.as_default():
        model = models.build(args.model, seed=0)
        xs, ys = tf1.placeholder(tf.float32, x.shape), tf1.placeholder(tf.int64, y.shape)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        params = model.trainable_variables
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = loss_fn(ys, model(xs, training=False))
            grads = inner.gradient(loss, params)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
        hvp = outer.gradient(dot, params)
        session = tf1.Session(graph=graph)
        session.run(tf1.global_variables_initializer())
        for variable, value in zip(model.weights, weights):
            variable.load(value, session)
        feed = {xs: x, ys: y}
        for got, want in zip(session.run(hvp, feed), expected):
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5 * np.abs(want).max())
        results = {name: profile(session, fetches, feed, args.repeats)
                   for name, fetches in (("gradient", grads), ("hvp", hvp))}

    grad_wall, hvp_wall = results["gradient"][0], results["hvp"][0]
    print(f"{args.model}, {args.examples} MNIST training images, TF {tf.__version__}, {os.cpu_count()} CPUs "
          f"(HVP checked against kerasprune.analysis.hvp)")
    print(f"wall clock, best of {args.repeats}: gradient {1e3 * grad_wall:.1f} ms, HVP {1e3 * hvp_wall:.1f} ms, "
          f"ratio {hvp_wall / grad_wall:.2f}")
    total = {name: sum(ops.values()) for name, (_, ops) in results.items()}
    print(f"summed op time (all threads): gradient {total['gradient'] / 1e3:.1f} ms, HVP {total['hvp'] / 1e3:.1f} ms, "
          f"ratio {total['hvp'] / total['gradient']:.2f}")
    conv = {name: sum(us for op_type, us in ops.items() if is_arithmetic(op_type))
            for name, (_, ops) in results.items()}
    print(f"conv/matmul op time: gradient {conv['gradient'] / 1e3:.1f} ms, HVP {conv['hvp'] / 1e3:.1f} ms, "
          f"ratio {conv['hvp'] / conv['gradient']:.2f}; HVP without any other op: "
          f"{conv['hvp'] / total['gradient']:.2f}x the gradient's total op time")
    for name, (_, ops) in results.items():
        print(f"\n{name}: op time by type (ms, mean of {args.repeats} traced runs)")
        for op_type, us in ops.most_common(args.top):
            print(f"  {op_type:40s} {us / 1e3:8.1f}")


if __name__ == "__main__":
    main()
