"""Compaction removes exactly the removable neurons/filters and keeps the outputs (on real test data)."""
import numpy as np
import pytest

from kerasprune import compaction, models, sparsity, training
from kerasprune._keras import keras, tf, tfmot


@pytest.fixture(scope="module")
def mnist_images(mnist_small):
    return np.concatenate([x.numpy() for x, _ in mnist_small.test])


@pytest.fixture(scope="module")
def cifar_images():
    from kerasprune import data

    splits = data.load("cifar10", batch_size=100, max_train_examples=10, max_test_examples=200)
    return np.concatenate([x.numpy() for x, _ in splits.test])


def tiny_lenet300(edit):
    """A 784-8-5-10 LeNet-300 with all fc1 biases 0.5; ``edit(W1, b1, W2, b2)`` prunes in place."""
    model = models.build("lenet300", hidden=(8, 5), seed=0)
    w1, b1, w2, b2, w3, b3 = model.get_weights()
    b1[:] = 0.5
    edit(w1, b1, w2, b2)
    model.set_weights([w1, b1, w2, b2, w3, b3])
    return model


def assert_same_outputs(a, b, x, atol=1e-5):
    np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), rtol=1e-5, atol=atol)


def units(model):
    return {l.name: (l.units if hasattr(l, "units") else l.filters)
            for l in model.layers if isinstance(l, sparsity.DENSE_CONV)}


def test_input_dead_neuron_is_removed_and_its_relu_bias_folded_into_the_next_bias(mnist_images):
    def edit(w1, b1, w2, b2):
        w1[:, 2] = 0

    model = tiny_lenet300(edit)
    small = compaction.compact(model)
    assert units(small) == {"fc1": 7, "fc2": 5, "logits": 10}
    # Hand computation: unit 2 outputs relu(0.5) = 0.5, so fc2's bias grows by 0.5 * W2[2, :].
    w2, b2 = model.get_layer("fc2").get_weights()
    np.testing.assert_allclose(small.get_layer("fc2").bias.numpy(), b2 + 0.5 * w2[2], rtol=1e-6)
    np.testing.assert_array_equal(small.get_layer("fc2").kernel.numpy(), np.delete(w2, 2, axis=0))
    assert_same_outputs(model, small, mnist_images)


def test_output_dead_neuron_is_removed(mnist_images):
    def edit(w1, b1, w2, b2):
        w2[3, :] = 0

    model = tiny_lenet300(edit)
    small = compaction.compact(model)
    assert units(small)["fc1"] == 7
    np.testing.assert_array_equal(small.get_layer("fc2").bias.numpy(), model.get_layer("fc2").bias.numpy())
    assert_same_outputs(model, small, mnist_images)


def test_neuron_dead_both_ways_and_one_with_negative_bias_are_removed(mnist_images):
    def edit(w1, b1, w2, b2):
        w1[:, 5], w2[5, :] = 0, 0  # dead both ways
        w1[:, 6], b1[6] = 0, -1.0  # constant relu(-1) = 0: nothing to fold

    model = tiny_lenet300(edit)
    p = compaction.plan(model)
    assert p.layers["fc1"].removed_incoming_dead == 2 and p.layers["fc1"].removed_outgoing_dead == 0
    small = compaction.compact(model)
    assert units(small)["fc1"] == 6
    assert_same_outputs(model, small, mnist_images)


def test_neuron_feeding_only_removed_neurons_is_removed_too(mnist_images):
    def edit(w1, b1, w2, b2):
        w2[:, 1] = 0  # fc2 unit 1: incoming-dead (folded)
        w2[4, :] = 0  # fc1 unit 4: outgoing-dead
        w2[0, :] = 0
        w2[0, 2] = 1.5  # fc1 unit 0 feeds only fc2 unit 2 ...

    model = tiny_lenet300(edit)
    w3, b3 = model.get_layer("logits").get_weights()
    w3[2, :] = 0  # ... which feeds nothing: both go
    model.get_layer("logits").set_weights([w3, b3])
    dead = sparsity.pruned_neurons(model)
    assert np.flatnonzero(dead["fc1"]).tolist() == [0, 4] and np.flatnonzero(dead["fc2"]).tolist() == [1, 2]
    small = compaction.compact(model)
    assert units(small) == {"fc1": 6, "fc2": 3, "logits": 10}
    assert_same_outputs(model, small, mnist_images)


def test_a_unit_fed_only_by_constant_units_is_removed_in_a_second_pass(mnist_images):
    def edit(w1, b1, w2, b2):
        w1[:, 2] = 0  # fc1 unit 2 outputs relu(0.5) ...
        w2[:, 3] = 0
        w2[2, 3] = 2.0  # ... and fc2 unit 3 hears only it: a constant too, once unit 2 is folded

    model = tiny_lenet300(edit)
    assert not sparsity.pruned_neurons(model)["fc2"][3]
    small, plans = compaction.compact(model, return_plans=True)
    assert [p.removed for p in plans] == [1, 1, 0]
    assert units(small) == {"fc1": 7, "fc2": 4, "logits": 10}
    assert_same_outputs(model, small, mnist_images)
    # Out of passes: the last plan still describes the returned model (and what is left to remove).
    once, plans = compaction.compact(model, max_passes=1, return_plans=True)
    assert [p.removed for p in plans] == [1, 1] and plans[-1].units_by_layer() == units(once)
    assert_same_outputs(model, once, mnist_images)


def test_dead_conv_filters_are_folded_through_relu_max_pool_and_flatten(mnist_images):
    model = models.build("lenet5", seed=0)
    k1, b1 = model.get_layer("conv1").get_weights()
    k1[..., 3], b1[3] = 0, 0.3  # conv1 filter 3 outputs relu(0.3) everywhere
    model.get_layer("conv1").set_weights([k1, b1])
    k2, b2 = model.get_layer("conv2").get_weights()
    k2[..., 7], b2[7] = 0, 0.2  # conv2 filter 7: through pool2 and flatten into fc1
    k2[:, :, 11, :] = 0  # conv1 filter 11: no outgoing weights
    model.get_layer("conv2").set_weights([k2, b2])
    small = compaction.compact(model)
    assert units(small) == {"conv1": 18, "conv2": 49, "fc1": 500, "logits": 10}
    # conv2 is 'valid': the constant 0.3 meets every one of the 5x5 taps of filter 3.
    expected = b2 + 0.3 * k2[:, :, 3, :].sum(axis=(0, 1))
    np.testing.assert_allclose(small.get_layer("conv2").bias.numpy(), np.delete(expected, 7), rtol=1e-5)
    assert_same_outputs(model, small, mnist_images, atol=1e-4)
    assert sparsity.pruned_neurons(model)["conv1"].sum() == 2


def test_removed_units_are_exactly_the_pruned_neurons_of_a_trained_pruned_lenet300(mnist_small, mnist_images):
    # Glorot: the accuracy bar below was set on a Keras-default LeNet-300; after one epoch on the small
    # split, the authors' init (smaller first-layer weights) keeps 67% once pruned this hard.
    model = models.build("lenet300", seed=0, init="glorot")
    training.compile_model(model, training.make_optimizer("sgd", lr=0.1))
    model.fit(mnist_small.train, epochs=1, verbose=0)
    weights = model.get_weights()
    # Magnitude pruning (80% of fc1, 50% of fc2), plus the weakest neurons cut whole as LOBSTER does.
    for i, fraction in ((0, 0.8), (2, 0.5)):
        weights[i][np.abs(weights[i]) < np.quantile(np.abs(weights[i]), fraction)] = 0
    weights[0][:, np.argsort(np.abs(weights[0]).sum(0))[:100]] = 0
    weights[2][:, np.argsort(np.abs(weights[2]).sum(0))[:30]] = 0
    model.set_weights(weights)
    dead = sparsity.pruned_neurons(model)
    small, plans = compaction.compact(model, return_plans=True)
    k1, k2 = 300 - dead["fc1"].sum(), 100 - dead["fc2"].sum()
    assert k1 <= 200 and k2 <= 70
    assert units(small) == {"fc1": k1, "fc2": k2, "logits": 10}
    (top, bottom), (left, right) = plans[-1].input_crop or ((0, 0), (0, 0))
    pixels = (28 - top - bottom) * (28 - left - right)
    assert small.count_params() == pixels * k1 + k1 + k1 * k2 + k2 + k2 * 10 + 10
    assert_same_outputs(model, small, mnist_images, atol=1e-4)
    labels = np.concatenate([y.numpy() for _, y in mnist_small.test])
    acc = [np.mean(m.predict(mnist_images, verbose=0, batch_size=500).argmax(-1) == labels)
           for m in (model, small)]
    assert acc[0] == acc[1] > 0.7


def test_input_border_that_no_weight_reads_is_cropped_with_a_standard_layer(mnist_images):
    model = models.build("lenet300", hidden=(8, 5), seed=0)
    weights = model.get_weights()
    kernel = weights[0].reshape(28, 28, 1, 8)
    kernel[:3], kernel[-2:], kernel[:, :4], kernel[:, -1:] = 0, 0, 0, 0
    kernel[10, 10] = 0  # an inner dead pixel stays: cropping removes a frame only
    model.set_weights(weights)
    small, plans = compaction.compact(model, return_plans=True)
    assert plans[-1].input_crop == ((3, 2), (4, 1))
    crop = small.get_layer("image_crop")
    assert isinstance(crop, keras.layers.Cropping2D) and crop.cropping == ((3, 2), (4, 1))
    assert small.get_layer("fc1").kernel.shape == (23 * 23, 8)
    assert small.input_names == ["image"] and small.input_shape == (None, 28, 28, 1)
    assert_same_outputs(model, small, mnist_images)


def test_tfmot_wrapped_model_is_stripped_with_masks_folded_before_compaction(mnist_images):
    model = tiny_lenet300(lambda w1, b1, w2, b2: None)
    wrapped = tfmot().sparsity.keras.prune_low_magnitude(model)
    for layer in wrapped.layers:
        if hasattr(layer, "pruning_vars") and layer.layer.name == "fc1":
            weight, mask, _ = layer.pruning_vars[0]
            m = np.ones(mask.shape, np.float32)
            m[:, [1, 4]] = 0
            mask.assign(m)  # weights still hold non-zeros: strip must fold the mask in
    small = compaction.compact(wrapped)
    assert units(small)["fc1"] == 6
    reference = tiny_lenet300(lambda w1, b1, w2, b2: w1.__setitem__((slice(None), [1, 4]), 0))
    assert_same_outputs(reference, small, mnist_images)


def test_models_from_tfmot_strip_pruning_count_and_compact_like_plain_ones(mnist_images):
    # strip_pruning reuses the wrapped model's ReLU and Flatten layers, so they are called in two
    # graphs; counting and compaction must follow the stripped model's own graph.
    def edit(w1, b1, w2, b2):
        w2[[0, 2], :] = 0  # fc1 units 0 and 2 are dead by their outgoing weights only
        w1[:, 5] = 0  # fc1 unit 5 by its incoming weights

    model = tiny_lenet300(edit)
    assert not sparsity.shares_layers(model)
    stripped = tfmot().sparsity.keras.strip_pruning(tfmot().sparsity.keras.prune_low_magnitude(model))
    assert sparsity.shares_layers(stripped) and sparsity.shares_layers(model)  # the wrapping shares too
    expected = [True, False, True, False, False, True, False, False]
    np.testing.assert_array_equal(sparsity.pruned_neurons(model)["fc1"], expected)
    np.testing.assert_array_equal(sparsity.pruned_neurons(stripped)["fc1"], expected)
    assert sparsity.report(stripped).pruned_neurons == sparsity.report(model).pruned_neurons == 3
    small = compaction.compact(stripped)
    assert units(small)["fc1"] == 5
    assert_same_outputs(model, small, mnist_images)


def resnet8(seed=0):
    """ResNet-8 (one block per stage) with non-trivial BatchNorm statistics."""
    model = models.build("resnet32", input_shape=(32, 32, 3), blocks_per_stage=1, seed=seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                               rng.normal(0, 0.1, beta.shape).astype(np.float32),
                               rng.normal(0, 0.1, mean.shape).astype(np.float32),
                               rng.uniform(0.5, 2, var.shape).astype(np.float32)])
    return model


def test_resnet_inner_block_channels_go_residual_channels_stay(cifar_images):
    model = resnet8()
    conv1, bn1 = model.get_layer("stage2_block1_conv1"), model.get_layer("stage2_block1_bn1")
    k = conv1.kernel.numpy()
    k[..., [0, 5]] = 0
    conv1.kernel.assign(k)
    gamma, beta, mean, var = bn1.get_weights()
    gamma[0] = beta[0] = 0  # channel 0: BN outputs exactly 0 -> removable before the 'same' conv2
    gamma[5], beta[5] = 0.0, 0.7  # channel 5: constant relu(0.7) meets zero padding -> must stay
    bn1.set_weights([gamma, beta, mean, var])
    k2 = model.get_layer("stage3_block1_conv2").kernel.numpy()
    k2[:, :, 9, :] = 0  # an inner channel of stage 3 with no outgoing weights
    model.get_layer("stage3_block1_conv2").kernel.assign(k2)
    stem = model.get_layer("stem_conv").kernel.numpy()
    stem[..., 2] = 0  # residual-stream channel: feeds an Add, never removed
    model.get_layer("stem_conv").kernel.assign(stem)

    p = compaction.plan(model)
    assert p.layers["stage2_block1_conv1"].kept == 31
    assert p.layers["stage2_block1_conv1"].kept_incoming_dead == 1
    assert p.layers["stage3_block1_conv1"].kept == 63
    assert p.layers["stem_conv"].successor is None and "feeds 2 layers" in p.layers["stem_conv"].reason
    small = compaction.compact(model)
    assert small.get_layer("stage2_block1_conv1").filters == 31
    assert small.get_layer("stage2_block1_bn1").gamma.shape == (31,)
    assert small.get_layer("stem_conv").filters == 16
    assert_same_outputs(model, small, cifar_images, atol=1e-4)


def test_plan_refuses_a_wrapped_model_and_compact_keeps_layer_names():
    model = tiny_lenet300(lambda *a: None)
    with pytest.raises(ValueError, match="strip pruning wrappers first"):
        compaction.plan(tfmot().sparsity.keras.prune_low_magnitude(model))
    small = compaction.compact(model)
    assert [l.name for l in small.layers] == [l.name for l in model.layers]
    assert small.input_names == ["image"] and small.output_names == ["logits"]
