"""Cost of a LOBSTER epoch vs a plain SGD epoch of the same model, side by side in one run.

Target (issue 3): LOBSTER epoch <= 1.10x plain SGD epoch on LeNet-300 / MNIST, threshold searches
excluded (the plateau patience is set out of reach). Reference: the official PyTorch LOBSTER code
took ~3.8 s per LeNet-300 epoch (1.34x its plain epoch) and 24.9 s per LeNet-5 epoch on this kind
of machine.

Three contenders train the same model from the same initial weights on the full MNIST training
split (54,000 images, batch 100, lr 0.1), each epoch followed by validation on 6,000 images:
  sgd        keras.optimizers.SGD
  lobster    Lobster(SGD) optimizer only (sensitivity term + masks)
  lobster+cb Lobster(SGD) + LobsterPruning (sparsity report, TensorBoard values, plateau rule,
             operating-point bookkeeping written to a temporary folder)
Measured three ways, each interleaving the contenders so load from other processes hits all alike:
  1. the training step alone: chunks of steps, alternating sgd / lobster; median per-chunk ratio
     (the least noisy figure: the sensitivity term and masks are per-step work);
  2. LobsterPruning's per-epoch work, timed directly, added to (1) with one validation pass into an
     estimated epoch ratio;
  3. whole epochs (steps + validation + callbacks, timed from on_epoch_begin to the end of every
     callback's on_epoch_end), one per contender per round, order rotated; median per-round ratio.

usage:
  KERASPRUNE_DATA_DIR=../shared/datasets python bench/bench_lobster_overhead.py [--model lenet300]
      [--rounds 5] [--chunks 30] [--steps 40] [--max-train-examples N]
  --model lenet5 --rounds 0: parts 1 and 2 only (whole LeNet-5 epochs take minutes each)
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from kerasprune._keras import keras  # noqa: E402
from kerasprune import data, models, training  # noqa: E402
from kerasprune.lobster import Lobster, LobsterPruning  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch: steps, validation and the on_epoch_end of earlier callbacks."""

    def __init__(self):
        super().__init__()
        self.seconds, self.cpu_seconds = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu)


def step_ratio(models_by_name, splits, chunks, steps):
    """Per-step cost: chunks of ``steps`` training steps, alternating the contenders."""
    import tensorflow as tf  # noqa: F401  (already loaded through kerasprune._keras)

    functions, iterators = {}, {}
    for name, model in models_by_name.items():
        functions[name] = model.make_train_function()
        iterators[name] = iter(splits.train.repeat())
        for _ in range(3):  # trace and warm up
            functions[name](iterators[name])
    times = {name: [] for name in models_by_name}
    cpu = {name: [] for name in models_by_name}
    names = list(models_by_name)
    for c in range(chunks):
        for name in (names if c % 2 == 0 else names[::-1]):
            fn, it = functions[name], iterators[name]
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                logs = fn(it)
            float(logs["loss"])  # wait for the last step
            times[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - cpu_start) / steps)
    return ({name: np.array(t) for name, t in times.items()},
            {name: np.array(t) for name, t in cpu.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=30)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--max-train-examples", type=int, default=None)
    args = parser.parse_args()

    splits = data.load("mnist", batch_size=100, max_train_examples=args.max_train_examples,
                       eval_batch_size=1000)
    tmp = tempfile.mkdtemp(prefix="bench_lobster_")
    contenders = {}
    for name in ("sgd", "lobster", "lobster+cb"):
        model = models.build(args.model, seed=0)
        optimizer = keras.optimizers.SGD(0.1)
        callbacks = []
        if name != "sgd":
            optimizer = Lobster(optimizer, lmbda=1e-4)
        if name == "lobster+cb":
            callbacks.append(LobsterPruning(splits.validation, splits.test, pwe=10 ** 9,
                                            run_dir=tmp, verbose=0))
        training.compile_model(model, optimizer)
        timer = EpochTimer()
        contenders[name] = (model, callbacks + [timer], timer)

    def epoch(name, index):
        model, callbacks, _ = contenders[name]
        model.fit(splits.train, validation_data=splits.validation, epochs=index + 1, initial_epoch=index,
                  callbacks=callbacks, verbose=0)

    names = list(contenders)
    if args.rounds:
        for name in names:  # warm-up epoch: tracing and first-call costs
            epoch(name, 0)
    batches = len(list(splits.train))

    # 1. Training step alone, finely interleaved (the sensitivity term + masks are per step).
    steps, steps_cpu = step_ratio({n: contenders[n][0] for n in ("sgd", "lobster")}, splits, args.chunks, args.steps)
    step_ratios = steps["lobster"] / steps["sgd"]
    cpu_ratios = steps_cpu["lobster"] / steps_cpu["sgd"]
    # 2. The callback's per-epoch work (sparsity report, summaries, plateau rule, operating point).
    model, callbacks, _ = contenders["lobster+cb"]
    pruning = callbacks[0]
    pruning.set_model(model)
    pruning.on_train_begin()
    model.optimizer.build(model.trainable_variables)
    val = model.evaluate(splits.validation, verbose=0, return_dict=True)
    cb_seconds = []
    for i in range(5):
        model.optimizer.level_best_accuracy.assign(-1.0)  # force the point bookkeeping every time
        logs = {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": 0.1}
        start = time.perf_counter()
        pruning.on_epoch_end(100 + i, logs)
        cb_seconds.append(time.perf_counter() - start)
    val_seconds = np.median([timed(lambda: model.evaluate(splits.validation, verbose=0)) for _ in range(3)])
    # 3. Whole epochs (steps + validation + callbacks), interleaved per round.
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            epoch(name, r + 1)
    seconds = {n: np.array(contenders[n][2].seconds[1:]) for n in names}
    cpu_seconds = {n: np.array(contenders[n][2].cpu_seconds[1:]) for n in names}

    print(f"{args.model} on MNIST, {batches} batches of 100 per epoch + validation on 6,000 images")
    print(f"1. training step, {args.chunks} interleaved chunks of {args.steps} steps:")
    print(f"   sgd {1e3 * np.median(steps['sgd']):.2f} ms, lobster {1e3 * np.median(steps['lobster']):.2f} ms;"
          f" median per-chunk ratio {np.median(step_ratios):.3f} (quartiles "
          f"{np.percentile(step_ratios, 25):.3f}-{np.percentile(step_ratios, 75):.3f})")
    print(f"   process CPU time: sgd {1e3 * np.median(steps_cpu['sgd']):.2f} ms, lobster "
          f"{1e3 * np.median(steps_cpu['lobster']):.2f} ms; median per-chunk ratio {np.median(cpu_ratios):.3f} "
          f"(quartiles {np.percentile(cpu_ratios, 25):.3f}-{np.percentile(cpu_ratios, 75):.3f})")
    plain = batches * np.median(steps["sgd"]) + val_seconds
    lob = batches * np.median(steps["lobster"]) + val_seconds + np.median(cb_seconds)
    print(f"2. LobsterPruning.on_epoch_end (with operating-point write): median "
          f"{1e3 * np.median(cb_seconds):.1f} ms; validation {val_seconds:.2f} s")
    print(f"   => epoch estimate: sgd {plain:.2f} s, lobster {lob:.2f} s, ratio {lob / plain:.3f}"
          f"  (target <= 1.10)")
    if not args.rounds:
        return
    print(f"3. whole epochs, {args.rounds} interleaved rounds (noisy on a shared CPU):")
    for name in names:
        print(f"   {name:11s} median epoch {np.median(seconds[name]):6.2f} s   "
              f"(all: {', '.join(f'{s:.2f}' for s in seconds[name])})")
    for name in ("lobster", "lobster+cb"):
        ratios = seconds[name] / seconds["sgd"]
        cpu_ratios = cpu_seconds[name] / cpu_seconds["sgd"]
        print(f"   {name} / sgd: median per-round ratio {np.median(ratios):.3f} "
              f"(per round: {', '.join(f'{x:.3f}' for x in ratios)}); process CPU time: "
              f"{np.median(cpu_ratios):.3f} (per round: {', '.join(f'{x:.3f}' for x in cpu_ratios)})")


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
