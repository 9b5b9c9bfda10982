"""Cross-strategy cases run in their own process: the CPU is split into two logical devices, which
TensorFlow only allows before it initialises, so pytest (whose TF is already up) cannot do it.

``python tests/_two_device_cases.py OUT_DIR CASE [CASE ...]`` prints one JSON object:
``{case: {"ok": true, ...numbers...} | {"ok": false, "error": traceback}}``. Each case compares a
run under ``MirroredStrategy`` over ``/cpu:0,/cpu:1`` with the same run on one device and the same
global batch; tests/test_distribute.py asserts on the numbers.
"""
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kerasprune import distribute  # noqa: E402

DEVICES = distribute.logical_cpu_devices(2)  # first TF call of the process
MIRRORED = "mirrored:/cpu:0,/cpu:1"

import numpy as np  # noqa: E402

from kerasprune._keras import keras, tf  # noqa: E402

SMALL = dict(model="lenet300", dataset="mnist", max_train_examples=1000, max_test_examples=200)


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def case_plain_training(out):
    """training.train for one epoch: default strategy vs MirroredStrategy on 2 CPUs."""
    from kerasprune import models, training

    strategy = distribute.get_strategy(MIRRORED)
    weights, metrics = {}, {}
    for name in ("default", MIRRORED):
        config = training.TrainConfig(epochs=1, batch_size=100, **SMALL, strategy=name)
        metrics[name] = training.train(config, os.path.join(out, name.split(":")[0]), verbose=0)
        weights[name] = keras.models.load_model(metrics[name]["saved_model"], compile=False).get_weights()
    one, two = metrics["default"], metrics[MIRRORED]
    initial = models.build("lenet300", input_shape=(28, 28, 1), num_classes=10, seed=0).get_weights()
    return {"replicas": strategy.num_replicas_in_sync,
            "per_replica_batch": distribute.per_replica_batch(100, strategy),
            "max_weight_diff": _max_abs_diff(weights["default"], weights[MIRRORED]),
            "moved_by_training": _max_abs_diff(initial, weights["default"]),
            "test_loss": [one["test_loss"], two["test_loss"]],
            "epochs_completed": [one["epochs_completed"], two["epochs_completed"]]}


def case_replica_sum(out):
    """distribute.replica_sum over an uneven last batch equals the numpy sum."""
    from kerasprune import data

    arrays = data.load_arrays("mnist")
    x = arrays.x_test[:250].astype(np.float32) / 255.0
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(100)  # 100, 100, 50: last one uneven

    def fn(batch):
        return {"sum_sq": tf.reduce_sum(batch ** 2), "count": tf.cast(tf.shape(batch)[0], tf.float32)}

    mirrored = distribute.replica_sum(fn, dataset, distribute.get_strategy(MIRRORED))
    single = distribute.replica_sum(fn, dataset)
    return {"mirrored": {k: float(v) for k, v in mirrored.items()},
            "single": {k: float(v) for k, v in single.items()},
            "numpy": {"sum_sq": float(np.sum(x.astype(np.float64) ** 2)), "count": float(len(x))}}


CASES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


def main(argv):
    out, names = argv[0], argv[1:] or sorted(CASES)
    results = {}
    for name in names:
        try:
            results[name] = {"ok": True, **CASES[name](os.path.join(out, name))}
        except Exception:  # reported to the test, which fails with this traceback
            results[name] = {"ok": False, "error": traceback.format_exc()}
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
