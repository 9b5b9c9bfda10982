"""LOBSTER: update rule, masks, threshold search, plateau rule, sparsity counts, run folders."""
import csv
import math
import os

import numpy as np
import pytest

from kerasprune import cli, runs, sparsity
from kerasprune._keras import keras, tf
from kerasprune.errors import KerasPruneError
from kerasprune.lobster import (Lobster, LobsterConfig, LobsterPruning, Plateau, load_operating_point,
                                read_operating_points, run, search_threshold)
from kerasprune.lobster.schedule import start_interval


def tiny_dense(kernel=((1.0,), (-2.0,)), bias=(0.5,)):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")])
    model.layers[0].set_weights([np.array(kernel, np.float32), np.array(bias, np.float32)])
    return model


# -- the update rule -------------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [0.5, 0.05])
def test_one_step_matches_hand_computation_and_lambda_is_not_scaled_by_lr(lr):
    model = tiny_dense()
    lmbda = 0.1
    model.compile(Lobster(keras.optimizers.SGD(lr), lmbda=lmbda), loss="mse")
    x, y = np.array([[0.3, 0.1]], np.float32), np.array([[0.0]], np.float32)
    w, b = np.array([1.0, -2.0]), 0.5
    residual = x[0] @ w + b - y[0, 0]
    g_w, g_b = 2 * residual * x[0], 2 * residual  # d/dw of (x.w + b - y)^2
    model.train_on_batch(x, y)
    w1, b1 = w - lr * g_w, b - lr * g_b
    expected_w = w1 - lmbda * w1 * np.maximum(0, 1 - np.abs(g_w))
    expected_b = b1 - lmbda * b1 * max(0.0, 1 - abs(g_b))
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(kernel[:, 0], expected_w, rtol=1e-6)
    np.testing.assert_allclose(bias, [expected_b], rtol=1e-6, atol=1e-7)
    # |g_b| = 1.2 > 1: the bias is fully "sensitive" and gets the plain SGD step only.
    assert abs(g_b) > 1 and bias[0] == pytest.approx(b1, abs=1e-7)


def test_lambda_zero_is_plain_sgd_bit_for_bit(mnist_small):
    from kerasprune import models

    batches = list(mnist_small.train.take(3))  # fixed: the pipeline reshuffles on each pass
    results = []
    for optimizer in (keras.optimizers.SGD(0.1, momentum=0.5),
                      Lobster(keras.optimizers.SGD(0.1, momentum=0.5), lmbda=0.0)):
        model = models.build("lenet300", seed=3)
        model.compile(optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for x, y in batches:
            model.train_on_batch(x, y)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_sgd_step_without_the_zero_decay_pass_and_momentum_slot_keeps_the_weights(mnist_small):
    """Lobster(SGD(lr)) skips tf_keras' weight-decay pass (decay 0) and SGD's momentum slot (momentum
    0): the weights are those of Keras's own path (as before issue 14), pruned zeros included."""
    from kerasprune import models

    batches = list(mnist_small.train.take(3))  # fixed: the pipeline reshuffles on each pass
    results = []
    for skip in (True, False):
        model = models.build("lenet300", seed=3)
        opt = Lobster(keras.optimizers.SGD(0.1), lmbda=1e-3)
        if not skip:
            opt.weight_decay, opt._skip_unused_momentum = 0, False  # bench_throughput's old path
        model.compile(opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(*batches[0])
        assert opt.prune_below(0.02) > 10000
        for step in range(8):
            model.train_on_batch(*batches[step % 3])
        results.append(model.get_weights())
        slot = opt.base_optimizer.momentums[0].numpy()
        assert (opt.weight_decay is None and not slot.any()) if skip else slot.any()
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_pruned_weights_stay_zero_through_many_steps_with_momentum(mnist_small):
    from kerasprune import models

    model = models.build("lenet300", seed=1)
    opt = Lobster(keras.optimizers.SGD(0.1, momentum=0.9), lmbda=1e-4)
    model.compile(opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = list(mnist_small.train.take(2))
    model.train_on_batch(*batches[0])  # builds the optimizer and fills the momentum
    newly = opt.prune_below(0.02)
    zeros = [w.numpy() == 0 for w in model.trainable_weights]
    assert newly == sum(int(z.sum()) for z in zeros) > 10000
    for step in range(25):
        model.train_on_batch(*batches[step % 2])
    for var, was_zero in zip(model.trainable_weights, zeros):
        assert np.all(var.numpy()[was_zero] == 0), var.name
    # The momentum of pruned weights is non-zero: without the mask they would have moved.
    momentum = opt.base_optimizer.momentums[0].numpy()
    assert np.any(momentum[zeros[0]] != 0)


def test_optimizer_config_round_trip_keeps_every_argument():
    base = keras.optimizers.Adam(learning_rate=0.003, beta_1=0.8)
    opt = Lobster(base, lmbda=3e-4, kinds=("kernel",), clipnorm=2.0, name="lob")
    config = keras.optimizers.serialize(opt, use_legacy_format=False)
    assert config["registered_name"] == "kerasprune>Lobster"
    clone = keras.optimizers.deserialize(config, use_legacy_optimizer=False)
    assert isinstance(clone, Lobster) and isinstance(clone.base_optimizer, keras.optimizers.Adam)
    assert clone.get_config() == opt.get_config()
    assert clone.lmbda.numpy() == pytest.approx(3e-4)
    assert clone.kinds == ("kernel",) and clone.clipnorm == 2.0 and clone.name == "lob"
    assert clone.base_optimizer.beta_1 == pytest.approx(0.8)
    # The learning rate is the base's: ReduceLROnPlateau writes it through `lr`.
    keras.backend.set_value(clone.lr, 0.0005)
    assert clone.base_optimizer.learning_rate.numpy() == pytest.approx(0.0005)


def test_pruning_callback_config_round_trip():
    callback = LobsterPruning(pwe=7, twt=0.1, good_margin=0.02, tolerance=0.01, kinds=("kernel",),
                              run_dir="somewhere", verbose=0)
    clone = LobsterPruning.from_config(callback.get_config())
    assert clone.get_config() == callback.get_config()


def test_the_command_line_defaults_are_the_library_defaults():
    """`kerasprune lobster` with no flags runs what Lobster() and LobsterPruning() do in a user's script."""
    config, callback = LobsterConfig(model="lenet300", dataset="mnist"), LobsterPruning(verbose=0)
    for name in ("pwe", "twt", "good_margin", "tolerance", "threshold_search", "stop_at_pruned"):
        assert getattr(callback, name) == getattr(config, name), name
    assert tuple(callback.kinds) == tuple(config.kinds)
    assert Lobster(keras.optimizers.SGD(0.1)).lmbda.numpy() == pytest.approx(config.lmbda)
    assert (config.pwe, config.twt, config.lmbda, config.threshold_search) == (20, 0.05, 1e-4, "reference")


def test_masks_best_weights_and_schedule_state_survive_a_checkpoint(tmp_path):
    model = tiny_dense(kernel=((0.01,), (-2.0,)))
    opt = Lobster(keras.optimizers.SGD(0.1))
    model.compile(opt, loss="mse")
    x, y = np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32)
    model.train_on_batch(x, y)
    assert opt.prune_below(0.5) == 1  # the kernel is ~[0.31, -1.70] after the step
    opt.level.assign(3)
    opt.best_loss.assign(0.25)
    opt.remember_best()
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))

    fresh = tiny_dense(kernel=((9.0,), (9.0,)), bias=(9.0,))
    fresh_opt = Lobster(keras.optimizers.SGD(0.1))
    fresh.compile(fresh_opt, loss="mse")
    tf.train.Checkpoint(model=fresh).restore(path)
    fresh_opt.build(fresh.trainable_variables)  # masks are created, then restored (deferred)
    assert int(fresh_opt.level.numpy()) == 3 and fresh_opt.best_loss.numpy() == pytest.approx(0.25)
    np.testing.assert_array_equal(fresh_opt.mask_of(fresh.layers[0].kernel).numpy(), [[0.0], [1.0]])
    for a, b in zip(fresh_opt.best_weights, opt.best_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_pruning_rewinds_batchnorm_moving_statistics_with_the_weights():
    """Rewinding to the best epoch must restore the BN statistics that go with its weights; else
    the threshold search evaluates the best weights under later statistics."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    opt = Lobster(keras.optimizers.SGD(0.1))
    model.compile(opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32), np.arange(32) % 2
    callback = LobsterPruning(validation_data=tf.data.Dataset.from_tensors((x, y)), verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    opt.remember_best()
    best = [v.numpy() for v in model.variables]
    model.fit(x + 3.0, y, batch_size=8, epochs=1, verbose=0)  # shifts the moving mean and the weights
    moving_mean = model.layers[1].moving_mean
    assert not np.allclose(moving_mean.numpy(), best[[v.name for v in model.variables].index(moving_mean.name)])
    callback.prune()
    for before, var in zip(best, model.variables):
        np.testing.assert_allclose(var.numpy() if "moving" in var.name else var.numpy() * (var.numpy() != 0),
                                   before if "moving" in var.name else before * (var.numpy() != 0), rtol=1e-6)


# -- threshold search and plateau rule -------------------------------------------------------------
MAGNITUDES = np.arange(1, 101, dtype=np.float64)  # 100 parameters with |w| = 1..100


def counting_loss(t):
    """Loss 1 + 0.01 per parameter cut: cutting k parameters gives 1 + k/100."""
    return 1.0 + 0.01 * np.count_nonzero(MAGNITUDES < t)


def test_search_finds_the_largest_admissible_threshold_exactly_with_zero_tolerance():
    result = search_threshold(counting_loss, MAGNITUDES, val_loss=1.0, twt=0.3, tolerance=0.0,
                              rule="conservative")
    assert result.bound == pytest.approx(1.3)
    assert np.count_nonzero(MAGNITUDES < result.threshold) == 30  # 1 + 30/100 = 1.3 <= B; 31 is not
    assert result.loss == pytest.approx(1.3)
    # B >= loss(T_mean) (cutting 50 gives 1.5 > 1.3): the search stayed in [T_min, T_mean].
    assert all(t <= MAGNITUDES.mean() for t, _ in result.trials)


def test_search_stops_within_tolerance_of_the_bound():
    result = search_threshold(counting_loss, MAGNITUDES, val_loss=1.0, twt=0.8, tolerance=0.05,
                              rule="conservative")
    bound = 1.8
    assert result.loss <= bound and abs(result.loss - bound) <= 0.05 * bound
    # 50 cut -> 1.5 <= 1.8, so the search started from [T_mean, T_max].
    assert result.trials[0][0] == pytest.approx(MAGNITUDES.mean())
    assert all(t >= MAGNITUDES.mean() for t, _ in result.trials)
    assert len(result.trials) < 12


def test_search_with_the_paper_defaults_prunes_when_the_mean_cut_is_just_above_the_bound():
    # twt = tolerance = 0.05: the uncut loss 1.0 is within 5% of B = 1.05, and so is the loss of the
    # mean cut (50 cut: 1.055). The search must still bisect to a cut that removes something.
    def loss(t):
        return 1.0 + 0.0011 * np.count_nonzero(MAGNITUDES < t)

    result = search_threshold(loss, MAGNITUDES, val_loss=1.0, twt=0.05, tolerance=0.05, rule="conservative")
    assert result is not None and result.loss <= 1.05
    # By hand: [T_min, T_mean] = [1, 50.5] (50 cut: 1.055 > B); mid 25.75 cuts 25 (1.0275 <= B), and
    # both ends are then within 5% of B: prune at the lower end, 25 parameters.
    assert np.count_nonzero(MAGNITUDES < result.threshold) == 25
    assert result.trials == [(50.5, pytest.approx(1.055)), (25.75, pytest.approx(1.0275))]


def test_reference_search_prunes_at_the_unevaluated_midpoint_by_hand():
    # The authors' rule on the same losses: [a, b] = [1, 50.5], l_a = 1.0 (uncut), l_b = 1.055;
    # |l_a - l_b| = 0.055 >= 0.05 B = 0.0525: bisect. mid 25.75 (25 cut, 1.0275 <= B) -> a. Now
    # |1.0275 - 1.055| = 0.0275 < 0.0525: stop and prune at (25.75 + 50.5) / 2 = 38.125: 38 cut.
    def loss(t):
        return 1.0 + 0.0011 * np.count_nonzero(MAGNITUDES < t)

    result = search_threshold(loss, MAGNITUDES, val_loss=1.0, twt=0.05, tolerance=0.05)  # the default
    assert result.threshold == pytest.approx(38.125)
    assert np.count_nonzero(MAGNITUDES < result.threshold) == 38
    assert result.trials == [(50.5, pytest.approx(1.055)), (25.75, pytest.approx(1.0275))]
    assert math.isnan(result.loss)  # never evaluated


def test_reference_search_from_the_upper_interval_by_hand():
    # B = 1.8; loss(T_mean = 50.5) = 1.5 < B: [a, b] = [50.5, T_max = 100], l_b = inf (not evaluated).
    # mid 75.25: 1.75 -> a; mid 87.625: 1.87 -> b (|1.75 - 1.87| = 0.12 >= 0.09); mid 81.4375: 1.81
    # -> b; |1.75 - 1.81| = 0.06 < 0.09: prune at (75.25 + 81.4375) / 2 = 78.34375.
    result = search_threshold(counting_loss, MAGNITUDES, val_loss=1.0, twt=0.8, tolerance=0.05,
                              rule="reference")
    assert [t for t, _ in result.trials] == [50.5, 75.25, 87.625, 81.4375]
    assert result.threshold == pytest.approx(78.34375)


def test_reference_search_prunes_at_a_once_the_midpoint_stops_moving():
    # The loss jumps from 1.0 to 5.0 past the 30th parameter: |l_a - l_b| = 4 never gets within
    # tolerance, so bisection runs until the midpoint stops moving and the reference returns a,
    # the largest admissible threshold: just below 30.5, cutting 30.
    result = search_threshold(lambda t: 1.0 if t <= 30.5 else 5.0, MAGNITUDES, val_loss=1.0, twt=0.05)
    assert 30.5 - 1e-6 < result.threshold <= 30.5
    assert np.count_nonzero(MAGNITUDES < result.threshold) == 30


def test_start_interval_reference_averages_per_tensor_means_of_non_zero_weights():
    tensors = [np.array([1.0, 0.0, -3.0]), np.array([[10.0]])]
    assert start_interval(tensors, "reference") == (1.0, 6.0, 10.0)  # mean of 2 and 10
    assert start_interval(tensors, "conservative") == (1.0, pytest.approx(14 / 3), 10.0)  # pooled
    assert start_interval([np.zeros(3)]) is None


@pytest.mark.parametrize("rule, t_mean", [("reference", 2.0), ("conservative", 104 / 3)])
def test_callback_takes_the_reference_start_from_kernels_only(rule, t_mean):
    # Kernel |w| = 1, 3 and a bias of 100: the authors' T_mean ignores biases ("weight" tensors only).
    model = tiny_dense(kernel=((1.0,), (-3.0,)), bias=(100.0,))
    model.compile(Lobster(keras.optimizers.SGD(0.0)), loss="mse")
    val = tf.data.Dataset.from_tensor_slices((np.ones((2, 2), np.float32), np.zeros((2, 1), np.float32))).batch(2)
    callback = LobsterPruning(val, twt=0.05, threshold_search=rule, verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    model.optimizer.build(model.trainable_variables)
    result = callback.search(val_loss=model.evaluate(val, verbose=0))
    assert result is not None and result.trials[0][0] == pytest.approx(t_mean)


def test_unknown_threshold_search_rule_is_refused():
    with pytest.raises(KerasPruneError, match="threshold_search"):
        LobsterConfig(threshold_search="bisect")
    with pytest.raises(ValueError, match="unknown threshold-search rule"):
        search_threshold(counting_loss, MAGNITUDES, 1.0, rule="bisect")


def test_search_never_prunes_on_a_diverged_loss():
    # A NaN/inf validation loss would make the bound B infinite and every cut admissible.
    for val_loss in (math.nan, math.inf):
        assert search_threshold(counting_loss, MAGNITUDES, val_loss) is None


def test_search_returns_none_when_no_cut_is_admissible():
    for rule in ("reference", "conservative"):
        assert search_threshold(lambda t: 1.0 if t <= 1.0 else 5.0, MAGNITUDES, 1.0, twt=0.05, rule=rule) is None


def test_search_on_a_model_whose_loss_as_a_function_of_t_is_known():
    # y = sum(w) on an input of ones, target sum(w) + 0.1: cutting the weights below T gives the
    # MSE (0.1 + sum of the cut weights)^2. With B = 0.01 * (1 + 19) = 0.2, cutting 0.1 and 0.2
    # (loss 0.16) is admissible and cutting 0.3 too (loss 0.49) is not.
    w = np.array([0.1, 0.2, 0.3, 0.4, 2.0, 3.0], np.float32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].set_weights([w[:, None]])
    model.compile(Lobster(keras.optimizers.SGD(0.0)), loss="mse")
    val = tf.data.Dataset.from_tensor_slices((np.ones((4, 6), np.float32),
                                              np.full((4, 1), w.sum() + 0.1, np.float32))).batch(4)
    callback = LobsterPruning(val, twt=19.0, tolerance=0.0, verbose=0, threshold_search="conservative")
    callback.set_model(model)
    callback.on_train_begin()
    model.optimizer.build(model.trainable_variables)
    assert model.evaluate(val, verbose=0) == pytest.approx(0.01, rel=1e-4)
    result = callback.search(val_loss=0.01)
    np.testing.assert_array_equal(model.layers[0].kernel.numpy()[:, 0], w)  # weights left as they were
    assert np.count_nonzero(w < result.threshold) == 2
    assert result.loss == pytest.approx(0.16, rel=1e-4)
    assert all(loss == pytest.approx((0.1 + w[w < t].sum()) ** 2, rel=1e-4) for t, loss in result.trials)
    # Pruning for real below it zeroes exactly those two weights, in the weights and the mask.
    model.optimizer.prune_below(result.threshold)
    np.testing.assert_array_equal(model.layers[0].kernel.numpy()[:, 0], np.where(w < 0.25, 0, w))
    np.testing.assert_array_equal(model.optimizer.masks[0].numpy()[:, 0], (w > 0.25).astype(np.float32))


def test_epoch_is_good_within_one_percent_of_best_and_plateau_after_pwe_bad_epochs():
    plateau = Plateau(patience=3, margin=0.01)
    assert plateau.update(1.0) == (True, False)
    assert plateau.update(1.009) == (False, False) and plateau.bad_epochs == 0  # good: < 1.01
    assert plateau.update(1.02) == (False, False) and plateau.bad_epochs == 1
    assert plateau.update(1.01) == (False, False) and plateau.bad_epochs == 2  # not < 1.01 * 1.0
    assert plateau.update(0.995) == (True, False) and plateau.bad_epochs == 0  # a new best resets
    assert plateau.best == 0.995
    for _ in range(2):
        assert plateau.update(1.1)[1] is False
    assert plateau.update(1.1) == (False, True)  # third consecutive bad epoch: prune
    plateau.reset()
    assert plateau.best == math.inf and plateau.bad_epochs == 0


# -- sparsity and pruned neurons on hand-built masks -----------------------------------------------
def small_convnet():
    # Biases start at one, so every zero comes from a mask (a zero bias would count as pruned).
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, bias_initializer="ones", name="conv")(inputs)  # 3 filters: 27 + 3 parameters
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)  # 4 * 4 * 3 = 48 features, channels last
    x = keras.layers.Dense(4, bias_initializer="ones", name="fc")(x)  # 192 + 4
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(2, bias_initializer="ones", name="out")(x)  # 8 + 2
    return keras.Model(inputs, outputs)


def test_sparsity_and_pruned_neurons_of_hand_built_masks_on_dense_and_conv():
    model = small_convnet()
    opt = Lobster(keras.optimizers.SGD(0.01))
    model.compile(opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    opt.build(model.trainable_variables)
    conv, fc, out = (model.get_layer(n) for n in ("conv", "fc", "out"))
    masks = {v.name: np.ones(v.shape, np.float32) for v in model.trainable_variables}
    masks[conv.kernel.name][..., 1] = 0  # filter 1: all incoming weights pruned -> pruned neuron
    masks[conv.kernel.name][0, 0, 0, 0] = 0  # one more weight of filter 0
    masks[fc.kernel.name][:, 2] = 0  # fc unit 2: incoming all zero
    masks[out.kernel.name][3, :] = 0  # fc unit 3: outgoing all zero
    masks[out.bias.name][1] = 0
    for var in model.trainable_variables:
        opt.mask_of(var).assign(masks[var.name])
        var.assign(var * masks[var.name])
    # A training step keeps exactly these zeros.
    x = np.asarray(np.random.default_rng(0).normal(size=(8, 6, 6, 1)), np.float32)
    model.train_on_batch(x, np.arange(8) % 2)
    report = sparsity.report(model)
    assert report.params == 30 + 196 + 10
    assert report.pruned_params == (9 + 1) + 48 + (2 + 1)
    assert report.pruned_params_pct == pytest.approx(100 * 61 / 236)
    assert report.per_layer["conv"] == pytest.approx(100 * 10 / 30)
    assert report.per_layer["fc"] == pytest.approx(100 * 48 / 196)
    assert report.per_layer["out"] == pytest.approx(100 * 3 / 10)
    # Neurons: 3 filters + 4 fc units. Filter 1 (incoming) and fc units 2 (incoming), 3 (outgoing).
    assert (report.neurons, report.pruned_neurons) == (7, 3)
    assert report.per_layer_neurons == pytest.approx({"conv": 100 / 3, "fc": 50.0})
    dead = sparsity.pruned_neurons(model)
    np.testing.assert_array_equal(dead["conv"], [False, True, False])
    np.testing.assert_array_equal(dead["fc"], [False, False, True, True])
    # The authors' count: units of every layer, the 2 logits included (3 + 4 + 2), pruned when all
    # incoming weights are zero: filter 1 and fc unit 2. fc unit 3 (outgoing only) does not count.
    assert (report.neurons_ref, report.pruned_neurons_ref) == (9, 2)
    assert report.pruned_neurons_ref_pct == pytest.approx(100 * 2 / 9)
    assert report.as_dict()["pruned_neurons_ref_pct"] == pytest.approx(100 * 2 / 9)


def test_authors_neuron_count_includes_the_logits_and_ignores_biases():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="h"), keras.layers.ReLU(),
                              keras.layers.Dense(2, bias_initializer="ones", name="out")])
    out = model.get_layer("out")
    kernel = out.kernel.numpy()
    kernel[:, 0] = 0  # logit 0: no incoming weight left, only its bias
    out.kernel.assign(kernel)
    dead = sparsity.incoming_dead_units(model)
    np.testing.assert_array_equal(dead["out"], [True, False])
    np.testing.assert_array_equal(dead["h"], [False, False])
    report = sparsity.report(model)
    assert (report.neurons_ref, report.pruned_neurons_ref) == (4, 1)
    assert (report.neurons, report.pruned_neurons) == (2, 0)  # ours: hidden units only, both alive


# -- run folders -----------------------------------------------------------------------------------
def small_config(**kw):
    # lr 0.3: the validation loss of this tiny run wavers, so it plateaus (pwe 1) within 6 epochs.
    base = dict(model="lenet300", dataset="mnist", epochs=6, pwe=1, max_train_examples=400, batch_size=20,
                max_test_examples=300, seed=0, lr=0.3)
    base.update(kw)
    return LobsterConfig(**base)


CONTRACT_COLUMNS = ("point", "pruned_params_pct", "pruned_neurons_pct", "val_error", "val_loss",
                    "test_error", "test_loss", "epoch", "weights")


def test_run_writes_operating_points_that_reload_with_their_zeros_and_errors(tmp_path):
    out = str(tmp_path / "run")
    rows = run(small_config(), out, verbose=0)
    with open(os.path.join(out, "operating_points.csv")) as f:
        header = next(csv.reader(f))
    assert set(CONTRACT_COLUMNS) <= set(header)
    assert rows == read_operating_points(out) and len(rows) >= 2
    assert [r["point"] for r in rows] == list(range(len(rows)))
    # The per-level points are the checkpoints; no best-over-all-levels file is written.
    assert not os.path.exists(os.path.join(out, runs.BEST_WEIGHTS))
    pcts = [r["pruned_params_pct"] for r in rows]
    assert pcts == sorted(pcts) and pcts[-1] > pcts[0]
    for name in ("config.json", "initial.weights.h5", "progression.png", "history.csv", "metrics.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    from kerasprune import data
    splits = data.load("mnist", max_train_examples=400, max_test_examples=300, eval_batch_size=500)
    for row in rows:
        assert 0 <= row["val_error"] <= 1 and 0 <= row["test_error"] <= 1
        assert row["weights"] == f"points/point_{row['point']:03d}.weights.h5"
        model = load_operating_point(out, row["point"])
        params = [v.numpy() for _, v in sparsity.prunable_variables(model)]
        zeros = sum(int((p == 0).sum()) for p in params)
        assert zeros == row["pruned_params"]
        assert sparsity.report(model).pruned_params_pct == pytest.approx(row["pruned_params_pct"])
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        loss, acc = model.evaluate(splits.test, verbose=0)
        assert 1 - acc == pytest.approx(row["test_error"], abs=1e-6)
        assert loss == pytest.approx(row["test_loss"], rel=1e-4)
    history = read_history_rows(out)
    assert len(history) == 6 and "pruned_params_pct/fc1" in history[0]
    assert os.listdir(os.path.join(out, "tensorboard"))


def read_history_rows(out):
    with open(os.path.join(out, "history.csv")) as f:
        return list(csv.DictReader(f))


class _Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated kill")


def test_killed_run_resumes_without_losing_operating_points(tmp_path, monkeypatch):
    from kerasprune import training

    out = str(tmp_path / "run")
    original = training.fit_and_record

    def crashing(model, splits, run_dir, epochs, callbacks=(), verbose="auto", **kwargs):
        return original(model, splits, run_dir, epochs, list(callbacks) + [_Crash(3)], verbose, **kwargs)

    monkeypatch.setattr(training, "fit_and_record", crashing)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(small_config(), out, verbose=0)
    before = read_operating_points(out)
    assert before and not os.path.isfile(os.path.join(out, "metrics.json"))
    monkeypatch.setattr(training, "fit_and_record", original)
    rows = run(small_config(), out, verbose=0)
    assert len(read_history_rows(out)) == 6  # epochs 1-4 once (the 4th's backup was written), 5-6
    # The data order is a function of (seed, epoch): the resumed run is the uninterrupted one, bit
    # for bit (the 4th epoch ran twice; its second pass saw the same batches as its first).
    whole = str(tmp_path / "whole")
    assert run(small_config(), whole, verbose=0) == rows
    assert [{k: v for k, v in r.items() if k != "epoch"} for r in training.read_history(out)] == [
        {k: v for k, v in r.items() if k != "epoch"} for r in training.read_history(whole)]
    for name in [r["weights"] for r in rows]:
        a, b = load_operating_point(out, int(name[-14:-11])), load_operating_point(whole, int(name[-14:-11]))
        for x, y in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(x, y)
    # A finished run returns its points at once.
    assert run(small_config(), out, verbose=0) == read_operating_points(out)


def test_resuming_with_another_configuration_is_refused(tmp_path):
    import dataclasses

    from kerasprune import training

    out = tmp_path / "run"
    out.mkdir()
    runs.write_json(str(out / "config.json"), dataclasses.asdict(small_config(epochs=1)))
    (out / "history.csv").write_text("epoch,loss\n0,1.0\n")  # an epoch was finished (else: restart)
    out = str(out)
    with pytest.raises(KerasPruneError, match="another configuration .*lmbda"):
        run(small_config(epochs=1, lmbda=0.5), out, verbose=0)


def test_config_rejects_bad_values_with_the_value_in_the_message():
    with pytest.raises(KerasPruneError, match="pwe must be >= 1, got 0"):
        LobsterConfig(pwe=0)
    with pytest.raises(KerasPruneError, match="kinds must be .* got weights"):
        LobsterConfig(kinds=("weights",))


def test_callback_refuses_a_plain_optimizer():
    model = tiny_dense()
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    callback = LobsterPruning(verbose=0)
    callback.set_model(model)
    with pytest.raises(ValueError, match="Lobster optimizer, got SGD"):
        callback.on_train_begin()
    model.compile(Lobster(), loss="mse")
    with pytest.raises(ValueError, match="needs validation_data"):
        callback.on_train_begin()


def test_cli_lobster_runs_and_prints_its_points(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["lobster", "--model", "lenet300", "--dataset", "mnist", "--epochs", "1",
                     "--max-train-examples", "300", "--max-test-examples", "200", "--out", str(out)])
    assert code == 0
    assert "point   0:" in capsys.readouterr().out
    assert read_operating_points(str(out))
    code = cli.main(["lobster", "--model", "lenet300", "--dataset", "mnist", "--prune", "kernel,wat",
                     "--out", str(tmp_path / "bad")])
    assert code == 2 and "kinds must be" in capsys.readouterr().err


def test_run_stops_at_the_first_point_past_stop_at_pruned_and_counts_as_finished(tmp_path):
    out = str(tmp_path / "run")
    rows = run(small_config(epochs=20, stop_at_pruned=30.0), out, verbose=0)
    assert rows[-1]["pruned_params_pct"] >= 30.0
    assert all(r["pruned_params_pct"] < 30.0 for r in rows[:-1])  # nothing pruned past the target
    metrics = json_of(out, "metrics.json")
    assert metrics["stopped_at_pruned"] and metrics["epochs_completed"] < 20
    assert metrics["epochs_completed"] == rows[-1]["epoch"]
    assert run(small_config(epochs=20, stop_at_pruned=30.0), out, verbose=0) == read_operating_points(out)


def test_a_folder_from_before_threshold_search_resumes_as_conservative(tmp_path):
    import dataclasses

    from kerasprune import training

    old = dataclasses.asdict(small_config(epochs=1))
    del old["threshold_search"], old["stop_at_pruned"]  # config.json written before the options
    out = tmp_path / "run"
    out.mkdir()
    runs.write_json(str(out / "config.json"), old)
    (out / "history.csv").write_text("epoch,loss\n0,1.0\n")  # it had finished an epoch
    with pytest.raises(KerasPruneError, match="threshold_search: 'conservative' -> 'reference'"):
        run(small_config(epochs=1), str(out), verbose=0)
    (out / "history.csv").unlink()  # the stand-in row would not match the real history's columns
    run(small_config(epochs=1, threshold_search="conservative"), str(out), verbose=0)


def json_of(out, name):
    import json

    with open(os.path.join(out, name)) as f:
        return json.load(f)
