"""PSP sub-model, streaming statistics and PSP-entropies against brute force on real MNIST."""
import itertools

import numpy as np
import pytest

from kerasprune._keras import keras, tf
from kerasprune import analysis, data, models
from kerasprune.errors import KerasPruneError


@pytest.fixture(scope="module")
def mnist_arrays():
    """400 real MNIST test images (normalised) and labels."""
    splits = data.load("mnist", max_train_examples=100, max_test_examples=400, batch_size=400)
    x, y = next(iter(splits.test))
    return x.numpy(), y.numpy()


def small_convnet(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 5, strides=4, name="conv")(inputs)
    x = keras.layers.ReLU(name="relu_conv")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, name="fc")(x)
    x = keras.layers.Activation("relu", name="relu_fc")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def batches(x, y, size):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(size)


def brute_states(model, x):
    sub = analysis.psp_model(model)
    outs = sub.predict(x, verbose=0)
    return {n: z.reshape(len(x), -1) for n, z in zip(analysis.psp_layer_names(sub), outs[1:])}


def test_psp_model_exposes_the_linear_input_of_each_relu(mnist_arrays):
    x, _ = mnist_arrays
    model = models.build("lenet300", seed=0)
    sub = analysis.psp_model(model)
    assert analysis.psp_layer_names(sub) == ["relu1", "relu2"]
    logits, z1, z2 = sub.predict(x[:50], verbose=0)
    fc1, fc2 = model.get_layer("fc1"), model.get_layer("fc2")
    expected1 = x[:50].reshape(50, -1) @ fc1.kernel.numpy() + fc1.bias.numpy()
    expected2 = np.maximum(expected1, 0) @ fc2.kernel.numpy() + fc2.bias.numpy()
    np.testing.assert_allclose(z1, expected1, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(z2, expected2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, model.predict(x[:50], verbose=0), rtol=1e-5, atol=1e-5)


def test_psp_model_finds_relus_after_residual_additions():
    model = models.build("resnet32", blocks_per_stage=1)
    names = analysis.psp_layer_names(analysis.psp_model(model))
    assert names[0] == "stem_relu" and "stage3_block1_relu2" in names
    assert len(names) == 1 + 3 * 2
    add_out = model.get_layer("stage2_block1_add").output
    sub = analysis.psp_model(model)
    assert sub.outputs[1 + names.index("stage2_block1_relu2")] is add_out


def test_hidden_non_relu_activation_is_an_error_naming_the_layer_unless_skipped():
    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, activation="tanh", name="hidden_tanh")(inputs)
    h = keras.layers.Dense(3, name="fc")(h)
    h = keras.layers.ReLU(name="r")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(h))
    with pytest.raises(KerasPruneError, match="'hidden_tanh'.*tanh"):
        analysis.psp_model(model)
    assert analysis.psp_layer_names(analysis.psp_model(model, skip_non_relu=True)) == ["r"]
    fused = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu", name="fused"),
                              keras.layers.Dense(2)])
    with pytest.raises(KerasPruneError, match="'fused'.*fused into the layer"):
        analysis.psp_model(fused)


def test_relus_called_as_tf_ops_are_found_and_opaque_lambdas_are_warned_about(mnist_arrays):
    x, _ = mnist_arrays
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(inputs)
    z1 = keras.layers.Dense(8, name="fc1")(h)
    h = tf.nn.relu(z1)  # a TFOpLambda layer
    z2 = keras.layers.Dense(6, name="fc2")(h)
    h = keras.layers.Lambda(tf.nn.relu, name="lambda_relu")(z2)
    h = keras.layers.Dense(5, name="fc3")(h)
    h = keras.layers.ReLU(name="relu3")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    sub = analysis.psp_model(model)
    names = analysis.psp_layer_names(sub)
    assert len(names) == 3 and names[1:] == ["lambda_relu", "relu3"]
    _, got1, got2, _ = sub.predict(x[:20], verbose=0)
    np.testing.assert_allclose(got1, keras.Model(inputs, z1).predict(x[:20], verbose=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got2, keras.Model(inputs, z2).predict(x[:20], verbose=0), rtol=1e-5, atol=1e-5)

    inputs = keras.Input((5,))
    h = tf.math.sigmoid(keras.layers.Dense(4, name="fc")(inputs))
    with pytest.raises(KerasPruneError, match="sigmoid"):
        analysis.psp_model(keras.Model(inputs, keras.layers.Dense(2)(keras.layers.ReLU()(h))))

    inputs = keras.Input((5,))
    h = keras.layers.Lambda(lambda t: tf.nn.relu(t), name="opaque")(keras.layers.Dense(4)(inputs))
    h = keras.layers.ReLU(name="r")(keras.layers.Dense(3)(h))
    with pytest.warns(UserWarning, match="'opaque'"):
        assert analysis.psp_layer_names(analysis.psp_model(keras.Model(inputs, keras.layers.Dense(2)(h)))) == ["r"]
    inputs = keras.Input((5,))
    h = keras.layers.ReLU(name="r")(keras.layers.Dense(3)(tf.maximum(keras.layers.Dense(4)(inputs), 0.0)))
    with pytest.warns(UserWarning, match=r"\['tf.math.maximum'\]"):
        assert analysis.psp_layer_names(analysis.psp_model(keras.Model(inputs, keras.layers.Dense(2)(h)))) == ["r"]


def test_statistics_warn_about_classes_without_examples(mnist_arrays):
    x, y = mnist_arrays
    keep = y != 3
    with pytest.warns(UserWarning, match=r"classes \[3\] have no example"):
        analysis.psp_statistics(small_convnet(), batches(x[keep], y[keep], 100))


def test_binary_entropy_is_one_bit_at_half_and_zero_at_certainty():
    np.testing.assert_allclose(analysis.binary_entropy([0.0, 1.0, 0.5, 0.25]),
                               [0.0, 0.0, 1.0, -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))])


def test_statistics_do_not_depend_on_batching_and_match_numpy(mnist_arrays):
    x, y = mnist_arrays
    model = small_convnet()
    states = brute_states(model, x)
    a = analysis.psp_statistics(model, batches(x, y, 400))
    b = analysis.psp_statistics(model, batches(x, y, 37))
    for name, z in states.items():
        np.testing.assert_array_equal(a.positive[name], b.positive[name])
        expected = np.stack([(z[y == c] > 0).sum(0) for c in range(10)])
        np.testing.assert_array_equal(a.positive[name], expected)
    l2 = analysis.psp_l2(a)
    for name, z in states.items():
        assert l2["per_layer"][name] == pytest.approx(np.mean(z.astype(np.float64) ** 2), rel=1e-5)
    all_z = np.concatenate([z.ravel() for z in states.values()]).astype(np.float64)
    assert l2["overall"] == pytest.approx(np.mean(all_z ** 2), rel=1e-5)
    np.testing.assert_array_equal(a.class_counts, np.bincount(y, minlength=10))
    logits = model.predict(x, verbose=0)
    assert a.error == pytest.approx(np.mean(logits.argmax(1) != y))


def brute_first_order(z, y, classes=10):
    h = np.zeros(z.shape[1])
    for c in range(classes):
        if np.any(y == c):
            p = (z[y == c] > 0).mean(0)
            h += np.array([0 if q in (0, 1) else -q * np.log2(q) - (1 - q) * np.log2(1 - q) for q in p])
    return h


def test_first_order_entropy_equals_the_per_neuron_brute_force(mnist_arrays):
    x, y = mnist_arrays
    model = small_convnet()
    states = brute_states(model, x)
    result = analysis.psp_entropy_first_order(analysis.psp_statistics(model, batches(x, y, 128)))
    per_neuron = {n: brute_first_order(z, y) for n, z in states.items()}
    for name in states:
        np.testing.assert_allclose(result["per_neuron"][name].ravel(), per_neuron[name], atol=1e-12)
        assert result["per_layer"][name] == pytest.approx(per_neuron[name].mean())
        assert result["neuron_class"][name].shape == (states[name].shape[1], 10)
    assert result["per_neuron"]["relu_conv"].shape == (6, 6, 4)
    assert result["overall"] == pytest.approx(np.concatenate(list(per_neuron.values())).mean())


def test_per_channel_entropy_pools_positions_of_a_channel(mnist_arrays):
    x, y = mnist_arrays
    model = small_convnet()
    z = brute_states(model, x)["relu_conv"].reshape(len(x), 36, 4)
    pooled = np.transpose(z, (0, 2, 1))  # [examples, channel, position]
    expected = np.zeros(4)
    for c in range(10):
        p = (pooled[y == c] > 0).mean(axis=(0, 2))
        expected += analysis.binary_entropy(p)
    stats = analysis.psp_statistics(model, batches(x, y, 100))
    got = analysis.psp_entropy_first_order(stats, per_channel=True)["per_neuron"]["relu_conv"]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def brute_pair_entropy(z, y, i, j, classes=10):
    h = 0.0
    for c in range(classes):
        s = z[y == c] > 0
        if len(s) == 0:
            continue
        for a, b in itertools.product((False, True), repeat=2):
            q = np.mean((s[:, i] == a) & (s[:, j] == b))
            h += -q * np.log2(q) if q > 0 else 0.0
    return h


def test_exact_second_order_entropy_equals_brute_force_over_all_pairs(mnist_arrays):
    x, y = mnist_arrays
    model = small_convnet()
    z = brute_states(model, x)["relu_fc"]
    stats = analysis.psp_statistics(model, batches(x, y, 64), second_order=True, max_exact_units=10)
    result = analysis.psp_entropy_second_order(stats)
    pairs = list(itertools.combinations(range(6), 2))
    expected = np.mean([brute_pair_entropy(z, y, i, j) for i, j in pairs])
    assert result["exact"]["relu_fc"] and result["per_layer_stderr"]["relu_fc"] == 0
    assert result["per_layer_pairs"]["relu_fc"] == 15
    assert result["per_layer"]["relu_fc"] == pytest.approx(expected, abs=1e-10)


def test_sampled_second_order_entropy_is_brute_force_on_its_pairs_and_near_the_exact_mean(mnist_arrays):
    x, y = mnist_arrays
    model = small_convnet()
    z = brute_states(model, x)["relu_conv"]  # 144 units: 10,296 pairs
    sampled = analysis.psp_statistics(model, batches(x, y, 100), second_order=True, max_exact_units=100,
                                      pair_samples=300, seed=3)
    exact = analysis.psp_statistics(model, batches(x, y, 100), second_order=True, max_exact_units=200)
    pairs = sampled.pairs["relu_conv"]
    assert pairs.shape == (300, 2) and np.all(pairs[:, 0] != pairs[:, 1])
    result = analysis.psp_entropy_second_order(sampled)
    est, err = result["per_layer"]["relu_conv"], result["per_layer_stderr"]["relu_conv"]
    brute = [brute_pair_entropy(z, y, i, j) for i, j in pairs]
    assert est == pytest.approx(np.mean(brute), abs=1e-10)
    assert err == pytest.approx(np.std(brute, ddof=1) / np.sqrt(len(brute)), rel=1e-9)
    assert not result["exact"]["relu_conv"] and result["exact"]["relu_fc"]
    truth = analysis.psp_entropy_second_order(exact)["per_layer"]["relu_conv"]
    assert abs(est - truth) < 4 * err
    again = analysis.psp_statistics(model, batches(x, y, 100), second_order=True, max_exact_units=100,
                                    pair_samples=300, seed=3)
    np.testing.assert_array_equal(again.pairs["relu_conv"], pairs)


def test_psp_monitor_logs_l2_and_entropy_to_logs_and_tensorboard(mnist_arrays, tmp_path):
    x, y = mnist_arrays
    model = small_convnet()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    monitor = analysis.callbacks.PSPMonitor(batches(x[:100], y[:100], 50), log_dir=str(tmp_path / "tb"))
    history = model.fit(x[:100], y[:100], epochs=2, batch_size=50, verbose=0, callbacks=[monitor])
    assert len(history.history["psp_l2"]) == 2
    expected = analysis.psp_entropy_first_order(
        analysis.psp_statistics(model, batches(x[:100], y[:100], 100)))["overall"]
    assert history.history["psp_entropy_1"][-1] == pytest.approx(expected, rel=1e-6)
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def hand_stats():
    """A hand-made PSP sample: 3 classes (the last absent), a hidden layer of 3 units and 2 logits."""
    return analysis.PSPStats(
        layers=["hidden"], unit_shapes={"hidden": (3,), "logits": (2,)}, class_counts=np.array([4.0, 2.0, 0.0]),
        sum_sq={"hidden": 1.0},
        positive={"hidden": np.array([[0.0, 4.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
                  "logits": np.array([[4.0, 2.0], [0.0, 1.0], [0.0, 0.0]])},
        output_layer="logits")


def test_reference_convention_clamps_p_and_counts_the_output_layer():
    stats = hand_stats()

    def h(p):  # by hand, as the authors' code: p and 1 - p clamped to [1e-4, 0.9999] separately
        p, q = min(max(p, 1e-4), 0.9999), min(max(1 - p, 1e-4), 0.9999)
        return -p * np.log2(p) - q * np.log2(q)

    floor = h(0.0)
    assert floor == pytest.approx(0.0014730335283281598, rel=1e-12) and h(1.0) == pytest.approx(floor)
    hidden = [h(0 / 4) + h(1 / 2), h(4 / 4) + h(1 / 2), h(1 / 4) + h(0 / 2)]  # class 2 is absent: skipped
    logits = [h(4 / 4) + h(0 / 2), h(2 / 4) + h(1 / 2)]
    got = analysis.psp_entropy_first_order(stats, convention="reference")
    assert got["convention"] == "reference"
    np.testing.assert_allclose(got["per_neuron"]["hidden"], hidden, rtol=1e-12)
    np.testing.assert_allclose(got["per_neuron"]["logits"], logits, rtol=1e-12)
    assert got["per_layer"] == pytest.approx({"hidden": np.mean(hidden), "logits": np.mean(logits)}, rel=1e-12)
    assert got["overall"] == pytest.approx(np.mean(hidden + logits), rel=1e-12)
    ours = analysis.psp_entropy_first_order(stats)  # 0 log 0 = 0, hidden layers only
    assert ours["convention"] == "kerasprune" and set(ours["per_layer"]) == {"hidden"}
    np.testing.assert_allclose(ours["per_neuron"]["hidden"], [1.0, 1.0, analysis.binary_entropy(0.25)], rtol=1e-12)
    np.testing.assert_allclose(analysis.binary_entropy([0.0, 0.5, 1.0], clamp=analysis.REFERENCE_CLAMP),
                               [floor, 1.0, floor], rtol=1e-12)
    with pytest.raises(KerasPruneError, match="unknown PSP-entropy convention 'authors'"):
        analysis.psp_entropy_first_order(stats, convention="authors")
    with pytest.raises(KerasPruneError, match="valid names are: kerasprune, reference"):
        analysis.PSPMonitor(None, convention="authors")


def test_statistics_count_the_output_layer_for_the_reference_convention(mnist_arrays):
    x, y = mnist_arrays
    model = small_convnet()
    stats = analysis.psp_statistics(model, batches(x, y, 128))
    assert stats.output_layer == "logits" and "logits" not in stats.layers
    logits = model.predict(x, verbose=0)
    expected = np.stack([(logits[y == c] > 0).sum(0) for c in range(10)])
    np.testing.assert_array_equal(stats.positive["logits"], expected)
    reference = analysis.psp_entropy_first_order(stats, convention="reference")
    clamped = lambda z: sum(analysis.binary_entropy((z[y == c] > 0).mean(0), clamp=(1e-4, 0.9999))
                            for c in range(10))
    states = brute_states(model, x)
    every = np.concatenate([clamped(z) for z in states.values()] + [clamped(logits)])
    assert reference["overall"] == pytest.approx(every.mean(), rel=1e-12)
    assert list(reference["per_layer"]) == ["relu_conv", "relu_fc", "logits"]
    assert analysis.psp_l2(stats)["per_layer"].keys() == {"relu_conv", "relu_fc"}  # the output is no PSP
