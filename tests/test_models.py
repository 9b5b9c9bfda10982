import numpy as np
import pytest

from kerasprune import models
from kerasprune._keras import keras
from kerasprune.errors import KerasPruneError


@pytest.mark.parametrize("name,shape,params", [
    ("lenet300", (28, 28, 1), 266_610),
    ("lenet5", (28, 28, 1), 431_080),
    # He et al.'s ResNet-32 has 0.46M trainable parameters; Keras also counts BN moving statistics.
    ("resnet32", (32, 32, 3), 464_154),
])
def test_models_have_the_paper_parameter_counts_and_build_for_their_data(name, shape, params):
    model = models.build(name, input_shape=shape, num_classes=10)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == params
    out = model(np.zeros((2,) + shape, np.float32))
    assert out.shape == (2, 10)
    assert model.optimizer is None  # uncompiled


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet32"])
def test_every_relu_is_its_own_layer_fed_by_a_linear_output(name):
    model = models.build(name)
    relus = [l for l in model.layers if isinstance(l, keras.layers.ReLU)]
    assert relus
    for layer in model.layers:
        activation = getattr(layer, "activation", None)
        assert activation in (None, keras.activations.linear), f"{layer.name} hides an activation"
    for relu in relus:
        producer = relu._inbound_nodes[0].inbound_layers
        assert isinstance(producer, (keras.layers.Dense, keras.layers.Conv2D,
                                     keras.layers.BatchNormalization, keras.layers.Add))


def test_resnet32_has_32_weight_layers_and_option_a_shortcuts():
    model = models.build("resnet32")
    weighted = [l for l in model.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(weighted) == 32  # 31 convolutions + the classifier
    assert model.get_layer("stage3_block5_relu2").output.shape[1:] == (8, 8, 64)


def test_same_seed_same_weights():
    a = models.build("lenet5", seed=3).get_weights()
    b = models.build("lenet5", seed=3).get_weights()
    c = models.build("lenet5", seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(KerasPruneError, match="valid names are: lenet300, lenet5, resnet32"):
        models.build("vgg16")


def test_resnet32_starts_as_the_authors_pytorch_module_does():
    """EIDOSlab/LOBSTER's ResNet-32 keeps PyTorch's defaults: weights and the linear bias U(+-1/sqrt(fan_in))
    (std 1/sqrt(3 fan_in)), BatchNorm momentum 0.1 (Keras 0.9) and eps 1e-5."""
    model = models.build("resnet32", seed=0)
    conv = model.get_layer("stage3_block5_conv2").kernel.numpy()  # fan_in = 3 * 3 * 64
    fan_in = 3 * 3 * 64
    assert np.abs(conv).max() <= 1 / np.sqrt(fan_in)
    assert conv.std() == pytest.approx(1 / np.sqrt(3 * fan_in), rel=0.02)  # 36,864 draws
    logits = model.get_layer("logits")
    assert np.abs(logits.bias.numpy()).max() <= 1 / 8 and np.abs(logits.bias.numpy()).min() > 0
    for bn in (l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)):
        assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
    he = models.build("resnet32", seed=0, init="he")
    assert he.get_layer("stage3_block5_conv2").kernel.numpy().std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.03)
    assert not he.get_layer("logits").bias.numpy().any()
    with pytest.raises(ValueError, match="init must be one of authors, glorot, he, got 'pytorch'"):
        models.build("resnet32", init="pytorch")


def test_lenets_start_as_the_authors_pytorch_modules_do():
    """EIDOSlab/LOBSTER's LeNet300 and LeNet5 set no init: PyTorch's nn.Linear / nn.Conv2d default,
    kernels and biases U(+-1/sqrt(fan_in)), fan_in = inputs per output (k x k x channels for a conv)."""
    lenet5 = models.build("lenet5", seed=0)
    for name, fan_in in [("conv1", 5 * 5 * 1), ("conv2", 5 * 5 * 20), ("fc1", 4 * 4 * 50), ("logits", 500)]:
        layer = lenet5.get_layer(name)
        bound = 1 / np.sqrt(fan_in)
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound and np.abs(bias).min() > 0, name
        if kernel.size > 10_000:  # enough draws for the uniform's std, bound / sqrt(3)
            assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.02), name
    lenet300 = models.build("lenet300", seed=0)
    for name, fan_in in [("fc1", 784), ("fc2", 300), ("logits", 100)]:
        weights = lenet300.get_layer(name).get_weights()
        assert all(np.abs(w).max() <= 1 / np.sqrt(fan_in) for w in weights) and weights[1].all(), name


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_glorot_init_is_the_keras_default_draw_for_draw(name):
    """init="glorot" gives the weights kerasprune's LeNets had before the init setting (Keras's layer
    defaults), draw for draw, so the runs of earlier sessions resume and reproduce."""
    glorot = models.build(name, seed=5, init="glorot").get_weights()
    keras.utils.set_random_seed(5)
    inputs = keras.Input((28, 28, 1))
    if name == "lenet300":
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(100)(keras.layers.Dense(300)(x))  # no activation needed: weights only
    else:
        x = keras.layers.Conv2D(50, 5)(keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(20, 5)(inputs)))
        x = keras.layers.Dense(500)(keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(x)))
    default = keras.Model(inputs, keras.layers.Dense(10)(x)).get_weights()
    assert len(glorot) == len(default) and all(np.array_equal(a, b) for a, b in zip(glorot, default))
    assert not any(b.any() for b in glorot[1::2])  # zero biases
    authors = models.build(name, seed=5).get_weights()
    assert not np.array_equal(authors[0], glorot[0])
