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
