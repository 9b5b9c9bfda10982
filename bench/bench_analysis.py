"""Speed of the analysis, as ratios measured side by side in one run (the CPU may be shared).

1. One HVP vs one gradient of the same loss on the same batch (LeNet-5, 1,000 MNIST training
   images). Target: HVP <= 1.6x gradient (PyHessian's ratio on this kind of machine).
2. First-order PSP-entropy over the 10,000 MNIST test images vs one ``model.evaluate`` of them.
   Target: <= 1.5x.
3. Top-5 Hessian eigenvalues of LeNet-5 on 1,000 images by deflated power iteration and by Lanczos
   (tolerance 1e-3): HVP counts, wall time, agreement. PyHessian: 88 HVPs, 71 s, 2nd/3rd out of order.

Timings of (1) and (2) alternate the two contenders and report the median of per-round ratios, so
load from other processes hits both alike.

usage:
  KERASPRUNE_DATA_DIR=../shared/datasets python bench/bench_analysis.py [--model SAVEDMODEL]
      [--rounds 7] [--train-examples 6000] [--skip-eigen]
Without --model, LeNet-5 is trained for one epoch on --train-examples MNIST images first, so the
eigenvalues are those of a (briefly) trained network.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from kerasprune._keras import keras, tf
from kerasprune import analysis, data, models, training


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(a, b, rounds):
    """Median over rounds of time(a), time(b) and time(b)/time(a); both warmed up first. The order
    alternates between rounds, so neither contender always runs right after the other."""
    a(), b()
    ta, tb = [], []
    pair = [(a, ta), (b, tb)]
    for r in range(rounds):
        for fn, times in (pair if r % 2 == 0 else pair[::-1]):
            times.append(timed(fn))
    ratios = np.array(tb) / np.array(ta)
    print(f"    per round: {', '.join(f'{x:.3f}/{y:.3f}' for x, y in zip(ta, tb))} s", flush=True)
    return float(np.median(ta)), float(np.median(tb)), float(np.median(ratios))


def get_model(args):
    if args.model:
        return keras.models.load_model(args.model, compile=False)
    splits = data.load("mnist", max_train_examples=args.train_examples, batch_size=100)
    model = models.build("lenet5", seed=0)
    training.compile_model(model, training.make_optimizer("sgd", 0.1))
    model.fit(splits.train, epochs=1, verbose=0)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a LeNet-5 SavedModel (default: train one briefly)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--train-examples", type=int, default=6000)
    parser.add_argument("--skip-eigen", action="store_true")
    args = parser.parse_args()
    model = get_model(args)
    arrays = data.load_arrays("mnist")
    spec = data.spec("mnist")
    norm = lambda x: ((x.astype(np.float32) / 255.0 - spec.mean[0]) / spec.std[0]).astype(np.float32)
    x, y = norm(arrays.x_train[:1000]), arrays.y_train[:1000]
    results = {}

    # 1. HVP vs gradient, same loss, same 1,000 examples in one batch, both tf.function-compiled.
    op = analysis.Hessian(model, (x, y), batch_size=1000)
    v = op.unflatten(op.random_vector(np.random.default_rng(0)))
    v = [tf.constant(t) for t in v]
    grad = lambda: [t.numpy() for t in op.gradient()[0]]
    hvp = lambda: [t.numpy() for t in op.hvp(v)]
    t_grad, t_hvp, ratio = interleaved(grad, hvp, args.rounds)
    results["hvp_vs_gradient"] = {"gradient_s": t_grad, "hvp_s": t_hvp, "ratio": ratio, "target": 1.6}
    print(f"[1] gradient {t_grad:.3f} s, HVP {t_hvp:.3f} s: HVP/gradient = {ratio:.2f} (target <= 1.6)",
          flush=True)

    # 2. First-order PSP-entropy over the 10,000 test images vs model.evaluate, same batches.
    test = data.pipeline(arrays.x_test, arrays.y_test, spec, batch_size=500)
    test = test.cache()
    for _ in test:
        pass
    training.compile_model(model, training.make_optimizer("sgd", 0.1))
    evaluate = lambda: model.evaluate(test, verbose=0)
    entropy = lambda: analysis.psp_entropy_first_order(analysis.psp_statistics(model, test))
    t_eval, t_psp, ratio = interleaved(evaluate, entropy, args.rounds)
    results["psp_entropy_vs_evaluate"] = {"evaluate_s": t_eval, "psp_entropy_s": t_psp, "ratio": ratio,
                                          "target": 1.5}
    print(f"[2] evaluate {t_eval:.3f} s, PSP-entropy {t_psp:.3f} s: ratio = {ratio:.2f} (target <= 1.5)",
          flush=True)

    # 3. Top-5 eigenvalues, both solvers, same operator and tolerance.
    if not args.skip_eigen:
        eig = {}
        for method in ("lanczos", "power"):
            r = analysis.top_eigenvalues(op, k=5, method=method, tol=1e-3, max_iter=100, seed=0)
            eig[method] = r.as_dict()
            print(f"[3] {method}: {[round(e, 4) for e in r.eigenvalues]} in {r.hvps} HVPs, "
                  f"{r.seconds:.1f} s, converged={r.converged}", flush=True)
        lz, pw = np.array(eig["lanczos"]["eigenvalues"]), np.array(eig["power"]["eigenvalues"])
        agreement = float(np.max(np.abs(lz - pw) / np.abs(lz)))
        eig["max_relative_difference"] = agreement
        eig["sorted"] = bool(np.all(np.diff(lz) <= 0) and np.all(np.diff(pw) <= 0))
        eig["hvp_seconds_median"] = t_hvp
        results["top5"] = eig
        print(f"[3] max relative difference {100 * agreement:.3f}% (target < 1%); Lanczos "
              f"{eig['lanczos']['hvps']} HVPs vs power {eig['power']['hvps']} (PyHessian: 88)", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
