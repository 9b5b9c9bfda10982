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


def _small_splits(batch_size=100):
    from kerasprune import data

    keras.utils.set_random_seed(0)  # fresh pipelines per run: their shuffle order derives from it
    return data.load("mnist", batch_size=batch_size, max_train_examples=SMALL["max_train_examples"],
                     max_test_examples=SMALL["max_test_examples"])


def case_lobster(out):
    """Lobster + LobsterPruning: 2 epochs, one pruning (threshold search), 2 masked epochs."""
    from kerasprune import models, training
    from kerasprune.lobster import Lobster, LobsterPruning

    runs = {}
    for name in ("default", MIRRORED):
        splits = _small_splits()
        strategy = distribute.get_strategy(name)
        with strategy.scope():
            model = models.build("lenet300", seed=0)
            training.compile_model(model, Lobster(keras.optimizers.SGD(0.1), lmbda=1e-3))
        pruning = LobsterPruning(splits.validation, pwe=100, twt=0.05, verbose=0)
        model.fit(splits.train, validation_data=splits.validation, epochs=2, callbacks=[pruning], verbose=0)
        result = pruning.prune()
        model.fit(splits.train, validation_data=splits.validation, epochs=2, callbacks=[pruning], verbose=0)
        optimizer = model.optimizer
        runs[name] = dict(
            threshold=None if result is None else float(result.threshold),
            masks=[optimizer.mask_of(v).numpy() for v in optimizer.prunable_variables()],
            prunable=[v.numpy() for v in optimizer.prunable_variables()],
            weights=model.get_weights(), replicas=strategy.num_replicas_in_sync)
    one, two = runs["default"], runs[MIRRORED]
    return {"replicas": [one["replicas"], two["replicas"]],
            "threshold": [one["threshold"], two["threshold"]],
            "pruned": [int(sum((m == 0).sum() for m in r["masks"])) for r in (one, two)],
            "masks_equal": all(np.array_equal(a, b) for a, b in zip(one["masks"], two["masks"])),
            "pruned_weights_zero": all(bool(np.all(w[m == 0] == 0)) for w, m in zip(
                two["prunable"], two["masks"])),
            "max_weight_diff": _max_abs_diff(one["weights"], two["weights"])}


def _pruned_lenet300(strategy):
    """LeNet-300 from seed 0 in ``strategy``'s scope, with every kernel entry below 0.03 zeroed."""
    from kerasprune import models

    with strategy.scope():
        model = models.build("lenet300", seed=0)
    model.set_weights([np.where(np.abs(w) < 0.03, 0.0, w) if w.ndim == 2 else w for w in model.get_weights()])
    return model


def case_tfmot(out):
    """oneshot.retrain: one epoch of TF-MOT fixed-mask retraining from the same start and mask."""
    from kerasprune import models, oneshot, training

    start = _pruned_lenet300(distribute.get_strategy("default"))
    mask = oneshot.mask_of(start, kinds=("kernel",))
    start_path = os.path.join(out, "start.weights.h5")
    os.makedirs(out, exist_ok=True)
    start.save_weights(start_path)
    finals, results = {}, {}
    for name in ("default", MIRRORED):
        run_dir = os.path.join(out, name.split(":")[0])
        config = training.TrainConfig(epochs=1, batch_size=100, **SMALL, strategy=name)
        results[name] = oneshot.retrain(config, run_dir, mask=mask, weights=start_path, kinds=("kernel",),
                                        select="final", verbose=0)
        final = models.build("lenet300")
        final.load_weights(os.path.join(run_dir, oneshot.FINAL_WEIGHTS))
        finals[name] = final
    kept = {name: oneshot.mask_of(m, kinds=("kernel",)) for name, m in finals.items()}
    return {"masks_held": all(np.array_equal(kept[n][k], mask[k]) for n in kept for k in mask),
            "pruned_params_pct": [results[n]["pruned_params_pct"] for n in finals],
            "max_weight_diff": _max_abs_diff(finals["default"].get_weights(), finals[MIRRORED].get_weights()),
            "moved_by_training": _max_abs_diff(start.get_weights(), finals["default"].get_weights()),
            "test_loss": [results[n]["test_loss"] for n in finals]}


def case_hvp(out):
    """Masked HVP of the mean loss over 300 examples in batches of 128 (the last one uneven)."""
    from kerasprune import data
    from kerasprune.analysis.hessian import Hessian

    arrays = data.load_arrays("mnist")
    spec = data.spec("mnist")
    x = ((arrays.x_train[:300].astype(np.float32) / 255.0 - spec.mean[0]) / spec.std[0])
    y = arrays.y_train[:300].astype(np.int64)
    results = {}
    for name in ("default", MIRRORED):
        model = _pruned_lenet300(distribute.get_strategy(name))
        op = Hessian(model, (x, y), masked=True, batch_size=128)
        vector = op.unflatten(op.random_vector(np.random.default_rng(0)))
        results[name] = [t.numpy() for t in op.hvp(vector)]
    one, two = results["default"], results[MIRRORED]
    return {"max_diff": _max_abs_diff(one, two), "max_abs": max(float(np.max(np.abs(t))) for t in one)}


def case_psp(out):
    """PSP statistics (first and second order) over 200 test images in batches of 64 (uneven)."""
    from kerasprune.analysis.psp import psp_statistics

    stats = {}
    for name in ("default", MIRRORED):
        model = _pruned_lenet300(distribute.get_strategy(name))
        splits = _small_splits()
        test = splits.test.unbatch().batch(64)
        stats[name] = psp_statistics(model, test, second_order=True)
    one, two = stats["default"], stats[MIRRORED]
    return {"class_counts_equal": bool(np.array_equal(one.class_counts, two.class_counts)),
            "examples": [one.examples, two.examples],
            "positive_equal": all(np.array_equal(one.positive[n], two.positive[n]) for n in one.layers),
            "pairs_equal": all(np.array_equal(one.pair_n11[n], two.pair_n11[n]) for n in one.layers),
            "sum_sq": [[one.sum_sq[n] for n in one.layers], [two.sum_sq[n] for n in two.layers]],
            "loss_sum": [one.loss_sum, two.loss_sum]}


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
