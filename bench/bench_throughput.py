"""Throughput of training runs: today's code path against the path before issue 14, in one run.

Prints three ratios (new / old; lower is faster):
  1. LeNet-300 LOBSTER epoch + validation (target <= 0.55)
  2. LeNet-5 LOBSTER epoch + validation (target <= 0.85)
  3. `kerasprune sweep experiments/quick.toml` wall time (target <= 0.5; with --sweep only: it
     runs the whole quick sweep twice, ~10-30 min; best on an otherwise idle machine)

The old path is kept callable here: the reshuffling tf.data pipeline (``splits.train``: shuffle,
batch, normalise per epoch), one step per Keras execution and the LOBSTER update as Keras ran it
(a weight-decay pass with a decay of 0 and SGD's momentum slot, both every step: see
``as_before_issue_14``), in one process with TensorFlow's default threads. The new path is what
runs use now: the in-memory epoch stream (``splits.train_epochs``: whole batches gathered from
uint8 arrays, order a function of (seed, epoch)) with ``training.STEPS_PER_EXECUTION`` steps per
call and, for sweeps, ``--jobs auto``.

Epochs (parts 1-2) run with one TensorFlow thread (``KERASPRUNE_THREADS=1``), both paths in the
same process, alternating their order each round, each epoch followed by validation and
LobsterPruning's epoch-end work (no pruning: patience out of reach); the ratio is the median over
rounds of per-round ratios, so load from other processes hits both alike.

usage:
  KERASPRUNE_DATA_DIR=../shared/datasets python bench/bench_throughput.py [--rounds 5] [--lenet5-rounds 2]
      [--sweep] [--sweep-out DIR]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout
os.environ.setdefault("KERASPRUNE_THREADS", "1")

# The old sweep path, for a subprocess: the reshuffling pipeline and one step per execution.
OLD_PATH = """
import sys
import kerasprune.data as data, kerasprune.training as training
from kerasprune import cli
training.STEPS_PER_EXECUTION = 1
from kerasprune.lobster import optimizer as lobster_optimizer
_init = lobster_optimizer.Lobster.__init__
def _old_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.weight_decay, self._skip_unused_momentum = 0, False
lobster_optimizer.Lobster.__init__ = _old_init
_load = data.load
data.load = lambda *a, **k: _load(*a, **k)._replace()  # drops the train_epochs attribute: the reshuffling pipeline
sys.exit(cli.main(sys.argv[1:]))
"""


def as_before_issue_14(optimizer):
    """A Lobster optimizer that steps as before issue 14 (the same weights, more work): Keras's
    decoupled weight-decay pass with a decay of 0, and tf_keras SGD's momentum slot written every step."""
    optimizer.weight_decay, optimizer._skip_unused_momentum = 0, False
    return optimizer


def epoch_seconds(model_name, splits, new, epochs=1):
    """Seconds of one LOBSTER epoch + validation (+ LobsterPruning) after a warm-up epoch."""
    from kerasprune import models, training
    from kerasprune._keras import keras
    from kerasprune.lobster import Lobster, LobsterPruning

    model = models.build(model_name, input_shape=splits.spec.input_shape, seed=0)
    optimizer = Lobster(keras.optimizers.SGD(0.1), lmbda=1e-4)
    training.compile_model(model, optimizer if new else as_before_issue_14(optimizer),
                           steps_per_execution=None if new else 1)
    callback = LobsterPruning(splits.validation, pwe=10**6, verbose=0)
    if new:
        stream = splits.train_epochs
        train, steps = stream(0), stream.steps_per_epoch
    else:
        train, steps = splits.train, None
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(train, steps_per_epoch=steps, validation_data=splits.validation, epochs=1 + epochs,
              callbacks=[callback, Timer()], verbose=0)
    return statistics.median(times[1:])  # the first epoch traces the functions


def epoch_ratio(model_name, rounds):
    from kerasprune import data

    splits = data.load("mnist", batch_size=100, eval_batch_size=1000)
    ratios, old_s, new_s = [], [], []
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        seconds = {new: epoch_seconds(model_name, splits, new) for new in order}
        old_s.append(seconds[False])
        new_s.append(seconds[True])
        ratios.append(seconds[True] / seconds[False])
        print(f"  {model_name} round {r + 1}: old {seconds[False]:.2f} s, new {seconds[True]:.2f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    return statistics.median(ratios), statistics.median(old_s), statistics.median(new_s)


def sweep_ratio(out_root):
    config = os.path.join(ROOT, "experiments", "quick.toml")
    env = dict(os.environ)
    env.pop("KERASPRUNE_THREADS", None)  # the old path ran with TensorFlow's default threads
    seconds = {}
    os.makedirs(out_root, exist_ok=True)
    for name, argv in (("old", [sys.executable, "-c", OLD_PATH, "sweep", config, "--jobs", "1"]),
                       ("new", [sys.executable, "-m", "kerasprune", "sweep", config])):
        out = os.path.join(out_root, name)
        start = time.perf_counter()
        with open(out + ".log", "w") as log:
            subprocess.run(argv + ["--out", out], env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
        seconds[name] = time.perf_counter() - start
        print(f"  quick sweep, {name} path: {seconds[name] / 60:.1f} min ({out})", flush=True)
    return seconds["new"] / seconds["old"], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="LeNet-300 rounds (default 5)")
    parser.add_argument("--lenet5-rounds", type=int, default=2, help="LeNet-5 rounds (default 2; 0 skips)")
    parser.add_argument("--sweep", action="store_true", help="also time the quick sweep, old vs new path")
    parser.add_argument("--sweep-out", default=None, help="where the two sweeps go (default: a temp folder)")
    args = parser.parse_args()
    lines = []
    ratio, old, new = epoch_ratio("lenet300", args.rounds)
    lines.append(f"LeNet-300 LOBSTER epoch + validation: {ratio:.3f}x (old {old:.2f} s, new {new:.2f} s; target <= 0.55)")
    if args.lenet5_rounds:
        ratio, old, new = epoch_ratio("lenet5", args.lenet5_rounds)
        lines.append(f"LeNet-5 LOBSTER epoch + validation: {ratio:.3f}x (old {old:.2f} s, new {new:.2f} s; target <= 0.85)")
    if args.sweep:
        out = args.sweep_out or tempfile.mkdtemp(prefix="bench_sweep_")
        ratio, seconds = sweep_ratio(out)
        lines.append(f"quick sweep wall: {ratio:.3f}x (old {seconds['old'] / 60:.1f} min, new "
                     f"{seconds['new'] / 60:.1f} min; target <= 0.5); results.csv in {out}/old and {out}/new")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
