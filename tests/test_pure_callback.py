"""kerasprune.pure.callback and .optimizer: the LOBSTER bookkeeping both Keras versions share, run on
NumPy stand-ins for the model and the optimizer (no Keras)."""
import math

import numpy as np
import pytest

from kerasprune.pure import optimizer, points, sparsity
from kerasprune.pure.callback import LobsterPruningBase, accuracy_in


class Variable:
    def __init__(self, value):
        self.value = np.array(value, np.float64)

    def assign(self, value):
        self.value = np.array(value, np.float64)


class Optimizer:
    """The Lobster state the callback reads and writes, on one prunable variable."""

    def __init__(self, weights):
        self.weights = weights
        self.level, self.threshold, self.lmbda = Variable(0), Variable(0.0), Variable(1e-4)
        self.best_loss, self.bad_epochs = Variable(math.inf), Variable(0)
        self.level_best_accuracy = Variable(-math.inf)
        self.best = None

    def remember_best(self):
        self.best = self.weights.value.copy()

    def rewind_to_best(self):
        self.weights.assign(self.best)

    def prune_below(self, threshold):
        cut = (np.abs(self.weights.value) < threshold) & (self.weights.value != 0)
        self.weights.assign(np.where(cut, 0.0, self.weights.value))
        return int(cut.sum())


class Model:
    name = "numpy"

    def __init__(self, w):
        self.weights = Variable(w)
        self.optimizer = Optimizer(self.weights)
        self.stop_training = False

    def get_weights(self):
        return [self.weights.value.copy()]

    def set_weights(self, weights):
        self.weights.assign(weights[0])


class NumpyPruning(LobsterPruningBase):
    """Validation loss 1 + 0.1 per zero weight; test loss 2 + the same."""

    def _numpy(self, variable):
        return variable.value

    def _evaluate(self, data):
        zeros = int(np.sum(self.model.weights.value == 0))
        base = 1.0 if data == "val" else 2.0
        return {"loss": base + 0.1 * zeros, "accuracy": 0.9 - 0.1 * zeros}

    def _report(self):
        return sparsity.sparsity_report([("d", self.model.weights.value)], {}, {})

    def _point_loss_and_lr(self, val_loss, logs):
        return val_loss, logs.get("lr")


def test_a_plateau_prunes_at_the_hand_computed_threshold_and_each_level_keeps_one_point():
    model = Model([0.1, 0.2, 0.3, 5.0])
    callback = NumpyPruning("val", "test", pwe=2, twt=0.15, tolerance=0.1, verbose=0)
    callback.model = model
    callback._start([model.weights], [model.weights])
    logs = {"val_loss": 1.0, "val_accuracy": 0.9, "lr": 0.1}
    callback.on_epoch_end(0, logs)  # first epoch: level 0's point, and the best loss
    assert logs["pruned_params_pct"] == 0.0 and logs["pruning_level"] == 0
    callback.on_epoch_end(1, {"val_loss": 1.02, "val_accuracy": 0.85})  # not good (>= 1.01): 1 bad epoch
    assert callback.searches == []
    callback.on_epoch_end(2, {"val_loss": 1.03, "val_accuracy": 0.85})  # 2 bad epochs: plateau, prune
    # B = 1.15: T_mean = 1.4 cuts three (1.3), then [0.1, 1.4] is bisected: 0.75 and 0.425 cut three,
    # 0.2625 two (1.2 > B), 0.18125 one (1.1); |1.1 - 1.2| < 0.1 * B stops at the midpoint 0.221875.
    (result,) = callback.searches
    assert [t for t, _ in result.trials] == pytest.approx([1.4, 0.75, 0.425, 0.2625, 0.18125])
    assert result.threshold == pytest.approx(0.221875) and result.bound == pytest.approx(1.15)
    np.testing.assert_array_equal(model.weights.value, [0, 0, 0.3, 5.0])
    assert int(model.optimizer.level.value) == 1 and model.optimizer.best_loss.value == math.inf
    # Level 0 ended: its point (epoch 1, the dense weights) got its test metrics.
    (row,) = callback.operating_points
    assert row["epoch"] == 1 and row["test_loss"] == 2.0 and row["test_error"] == pytest.approx(0.1)
    assert row["lr"] == 0.1 and row["weights"] == points.weights_name(0)

    callback.on_epoch_end(3, {"val_loss": 1.2, "val_accuracy": 0.7})  # level 1's first epoch is its point
    callback.on_train_end()
    last = callback.operating_points[-1]
    assert (last["point"], last["epoch"], last["pruned_params"], last["pruned_params_pct"]) == (1, 4, 2, 50.0)
    assert last["threshold"] == pytest.approx(0.221875) and last["test_loss"] == pytest.approx(2.2)


def test_stop_at_pruned_stops_at_the_first_point_past_it():
    model = Model([0.0, 0.2, 0.3, 5.0])
    callback = NumpyPruning("val", stop_at_pruned=25.0, verbose=0)
    callback.model = model
    callback._start([model.weights], [model.weights])
    callback.on_epoch_end(0, {"val_loss": 1.1, "val_accuracy": 0.8})
    assert callback.stopped_at_pruned and model.stop_training


def test_settings_are_checked_and_round_trip():
    with pytest.raises(ValueError, match="pwe must be >= 1"):
        NumpyPruning(pwe=0)
    with pytest.raises(ValueError, match="threshold_search must be one of"):
        NumpyPruning(threshold_search="bisect")
    with pytest.raises(ValueError, match="unknown parameter kinds"):
        NumpyPruning(kinds=("weights",))
    callback = NumpyPruning(pwe=7, kinds=("kernel",), stop_at_pruned=90.0)
    assert NumpyPruning.from_config(callback.get_config()).get_config() == callback.get_config()


def test_accuracy_in_reads_the_validation_or_the_training_accuracy():
    logs = {"loss": 1.0, "sparse_categorical_accuracy": 0.5, "val_loss": 2.0, "val_acc": 0.25}
    assert accuracy_in(logs, "val_") == 0.25 and accuracy_in(logs, "") == 0.5
    assert accuracy_in({"loss": 1.0}, "") is None


def test_optimizer_arguments_and_kind_names():
    assert optimizer.check_lobster_arguments(0.0, ["kernel", "norm"]) == ("kernel", "norm")
    with pytest.raises(ValueError, match="lmbda must be >= 0"):
        optimizer.check_lobster_arguments(-1e-4, ["kernel"])
    assert sparsity.is_kind_name("gamma", ("norm",)) and not sparsity.is_kind_name("bias", ("kernel", "norm"))
