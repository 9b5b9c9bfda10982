"""Epoch time of LeNet-300 on MNIST: MirroredStrategy over N logical CPU devices vs one device.

    KERASPRUNE_DATA_DIR=/work/shared/datasets python bench/bench_distribute.py [--devices 2] [--repeats 3]

Splits the CPU into N logical devices (before TensorFlow starts), builds three identical models and
times full training epochs of each, interleaved round by round so that load from other processes
hits all of them alike:

  one_device      default strategy, batch 100;
  same_global     MirroredStrategy on N CPUs, global batch 100 (100/N per replica): the same
                  optimisation as one_device (tests/test_distribute.py checks the weights match);
  same_per_rep    MirroredStrategy on N CPUs, 100 per replica (global batch 100*N): fewer steps.

Prints the median wall and CPU time per epoch of each, and their ratios to one_device (< 1 is
faster); the CPU time of the process is the steadier number on a machine shared with other jobs.
Logical CPU devices share the same cores and thread pools, so this measures tf.distribute's overhead
(splitting batches, all-reducing gradients), not a speed-up: real gains need devices with their own
compute (GPUs, or workers on separate machines). The first epoch of each model (tracing) is not timed.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="logical CPU devices (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per model (default 3)")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help="train on the first N images only (default: all 54,000)")
    args = parser.parse_args(argv)

    from kerasprune import distribute

    devices = distribute.logical_cpu_devices(args.devices)  # must come before any other TF call
    from kerasprune import data, models, training
    from kerasprune._keras import keras, tf

    mirrored = distribute.get_strategy("mirrored:" + ",".join(devices))
    setups = {"one_device": (tf.distribute.get_strategy(), 100),
              "same_global": (mirrored, 100),
              "same_per_rep": (mirrored, distribute.global_batch(100, mirrored))}
    runs = {}
    for name, (strategy, batch) in setups.items():
        splits = data.load("mnist", batch_size=batch, max_train_examples=args.max_train_examples)
        with strategy.scope():
            model = models.build("lenet300", seed=0)
            training.compile_model(model, keras.optimizers.SGD(0.1))
        model.fit(splits.train, epochs=1, verbose=0)  # warm-up: tracing and first-epoch caches
        runs[name] = (model, splits.train, [])
    cpu = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (model, train, times) in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            model.fit(train, epochs=1, verbose=0)
            times.append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

    examples = sum(int(y.shape[0]) for _, y in runs["one_device"][1])
    base, base_cpu = statistics.median(runs["one_device"][2]), statistics.median(cpu["one_device"])
    print(f"LeNet-300 on MNIST, {examples} training images, {args.devices} logical CPU devices, "
          f"{os.cpu_count()} CPU cores, median of {args.repeats} timed epochs each; ratios to one_device "
          "(wall time, and CPU time of this process, which other load disturbs less)")
    for name, (strategy, batch) in setups.items():
        wall, used = statistics.median(runs[name][2]), statistics.median(cpu[name])
        print(f"  {name:13s} replicas={strategy.num_replicas_in_sync} global_batch={batch:4d}  "
              f"wall {wall:6.2f} s/epoch ({examples / wall:6.0f} img/s) ratio {wall / base:5.2f}  "
              f"cpu {used:6.2f} s/epoch ratio {used / base_cpu:5.2f}  "
              f"[wall {', '.join(f'{t:.1f}' for t in runs[name][2])}]")

if __name__ == "__main__":
    main()
