"""The paper's networks, built by name: ``build("lenet300")``, ``build("lenet5")``, ``build("resnet32")``.

Every model outputs logits and keeps each ReLU as its own ``ReLU`` layer, so the linear output that
feeds it (the post-synaptic potential of the paper's eq. 2) is a tensor of the functional graph that
a sub-model can expose. Models are built uncompiled and with standard layers only, so exported
SavedModels load without kerasprune installed.
"""

from kerasprune import data, runs
from kerasprune._keras import keras
from kerasprune.errors import KerasPruneError
from kerasprune.pure.inits import DEFAULT_INIT, INITS, authors_bound, init_of_run
from kerasprune.registry import Registry

MODELS = Registry("model")

# Input shape each model expects when no dataset says otherwise.
DEFAULT_INPUT_SHAPES = {"lenet300": (28, 28, 1), "lenet5": (28, 28, 1), "resnet32": (32, 32, 3)}


def build(name, input_shape=None, num_classes=10, seed=None, **options):
    """Returns the uncompiled Keras model registered as ``name``.

    Args:
      name: a registered model name (see ``MODELS``).
      input_shape: shape of one example, channels last; defaults to the model's paper dataset.
      num_classes: number of output logits.
      seed: if given, weights are initialised from this seed (the same seed gives the same weights).
      **options: model-specific options (e.g. ``depth`` for ``resnet32``'s family).
    """
    factory = MODELS.get_or_raise(name)
    if input_shape is None:
        input_shape = DEFAULT_INPUT_SHAPES.get(name)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return factory(tuple(input_shape), num_classes, **options)


def build_for(config, seed=None, dspec=None, init=None):
    """The uncompiled model a run's settings describe: ``config.model`` (a :class:`~kerasprune.config.RunSettings`
    or any config with ``model``, ``dataset`` and ``data_dir``) shaped for ``config.dataset``'s inputs and
    classes (``dspec``: that dataset's spec, when the caller has it already).

    The one place a config becomes a model: training, LOBSTER and the one-shot retrainings build
    through it, and every reader of a run folder through :func:`build_for_run`. ``init`` (else
    ``config.init``, else the builder's default) matters to a reader too: the weights it loads replace
    the draw, but the layers keep their initializers, which a transfer's new head copies.
    """
    dspec = dspec or data.spec(config.dataset, config.data_dir)
    init = init or getattr(config, "init", None)  # neither: the builder's default
    options = {"init": init} if init else {}
    return build(config.model, input_shape=dspec.input_shape, num_classes=dspec.num_classes, seed=seed, **options)


def build_for_run(run_dir):
    """``(model, saved)``: the uncompiled model of the run folder ``run_dir`` as the run built it (its
    model and dataset, and the init it drew with: :func:`~kerasprune.pure.inits.init_of_run`), and
    its ``config.json`` as written. It lives here, not in the TensorFlow-free :mod:`kerasprune.runs`,
    because building a model imports Keras anyway."""
    saved = runs.read_config(run_dir)
    # model and dataset: every run folder's config.json has them (no RunSettings defaults needed, and
    # kerasprune.config, which checks model names against MODELS, stays the one importing the other)
    missing = [k for k in ("model", "dataset") if not saved.get(k)]
    if missing:
        raise KerasPruneError(f"{run_dir}/{runs.CONFIG} names no {' or '.join(missing)}: it is not the "
                              "config of a run that built a model")
    dspec = data.spec(saved["dataset"], saved.get("data_dir"))
    return build(saved["model"], input_shape=dspec.input_shape, num_classes=dspec.num_classes,
                 init=init_of_run(saved)), saved


# ---------------------------------------------------------------------------------------------
# Initial weights (kerasprune.pure.inits). Every initializer is a fresh object per layer with no seed of its
# own, so each draws from the global seed ``build`` sets: the same seed gives the same weights.

def _check_init(init):
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def _kernel_init(init):
    """Kernels: PyTorch's default for "authors" (its kaiming_uniform with a=sqrt(5) is
    U(+-1/sqrt(fan_in)), Keras's VarianceScaling(1/3, fan_in, uniform)), else Glorot- or He-normal's Keras names."""
    if init == "authors":
        return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")
    return {"glorot": "glorot_uniform", "he": "he_normal"}[init]


def _bias_init(init, fan_in):
    """Biases: PyTorch's default U(+-1/sqrt(fan_in)) for "authors" (fan_in: the layer's inputs per
    output, kernel height x width x input channels for a convolution), zeros otherwise."""
    if init != "authors":
        return "zeros"
    bound = authors_bound(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _dense(x, units, name, init):
    fan_in = int(x.shape[-1])
    return keras.layers.Dense(units, kernel_initializer=_kernel_init(init), bias_initializer=_bias_init(init, fan_in),
                              name=name)(x)


@MODELS.register("lenet300")
def lenet300(input_shape, num_classes, hidden=(300, 100), init=DEFAULT_INIT):
    """LeNet-300-100: a 784-300-100-10 perceptron (266,610 parameters on MNIST); ``init``: see
    :data:`~kerasprune.pure.inits.INITS` (default: the authors', PyTorch's)."""
    _check_init(init)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(hidden, start=1):
        x = _dense(x, units, f"fc{i}", init)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    outputs = _dense(x, num_classes, "logits", init)
    return keras.Model(inputs, outputs, name="lenet300")


@MODELS.register("lenet5")
def lenet5(input_shape, num_classes, init=DEFAULT_INIT):
    """Caffe's LeNet-5 as LOBSTER's code uses it (431,080 parameters on MNIST); ``init`` as lenet300's.

    conv 20@5x5 -> ReLU -> max-pool 2 -> conv 50@5x5 -> ReLU -> max-pool 2 -> dense 500 -> ReLU -> dense.
    """
    _check_init(init)
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, filters in enumerate((20, 50), start=1):
        fan_in = 5 * 5 * int(x.shape[-1])
        x = keras.layers.Conv2D(filters, 5, kernel_initializer=_kernel_init(init),
                                bias_initializer=_bias_init(init, fan_in), name=f"conv{i}")(x)
        x = keras.layers.ReLU(name=f"relu_conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _dense(x, 500, "fc1", init)
    x = keras.layers.ReLU(name="relu_fc1")(x)
    outputs = _dense(x, num_classes, "logits", init)
    return keras.Model(inputs, outputs, name="lenet5")


def _shortcut_a(x, filters, stride, name):
    """He et al.'s option-A shortcut: subsample by ``stride`` and zero-pad the new channels.

    Built from standard layers (a 1x1 max-pool subsamples, ``Rescaling(0)`` makes the zero
    channels), so no custom object is needed to load the model. Option A only ever doubles the
    channels, so the zeros are appended rather than split on both sides: a permutation of channels
    that the following convolutions learn around.
    """
    if stride != 1:
        x = keras.layers.MaxPooling2D(1, strides=stride, name=f"{name}_subsample")(x)
    missing = filters - x.shape[-1]
    if missing == 0:
        return x
    if missing != x.shape[-1]:
        raise ValueError(f"option-A shortcut doubles channels; got {x.shape[-1]} -> {filters}")
    zeros = keras.layers.Rescaling(0.0, name=f"{name}_zeros")(x)
    return keras.layers.Concatenate(name=f"{name}_pad")([x, zeros])


# The authors' ResNet-32 (EIDOSlab/LOBSTER, src/utilities/architectures.py) is a PyTorch module built
# with PyTorch's defaults: its He-normal `_weights_init` is commented out, so every conv and the linear
# layer keep PyTorch's default init, U(+-1/sqrt(fan_in)) for weights and the linear bias, and its
# BatchNorm2d layers PyTorch's momentum 0.1 (Keras: 0.9) and eps 1e-5. kerasprune follows them
# (init="authors"); init="he" is He-normal kernels (akamaster's `_weights_init`) with a zero logits bias,
# kerasprune's init before session 7. With Keras's BatchNorm
# defaults (momentum 0.99, eps 1e-3) and He-normal init, a run on a small subset diverged in its
# first steps (loss 6-7) and its validation loss read 1e7-1e9 for epochs: moving statistics that
# follow 1% per step.
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # PyTorch's BatchNorm2d defaults (momentum 0.1) in Keras's terms


def _batch_norm(name):
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _basic_block(x, filters, stride, name, init):
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                            kernel_initializer=_kernel_init(init), name=f"{name}_conv1")(x)
    y = _batch_norm(f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=_kernel_init(init),
                            name=f"{name}_conv2")(y)
    y = _batch_norm(f"{name}_bn2")(y)
    y = keras.layers.Add(name=f"{name}_add")([y, _shortcut_a(x, filters, stride, f"{name}_short")])
    return keras.layers.ReLU(name=f"{name}_relu2")(y)


@MODELS.register("resnet32")
def resnet32(input_shape, num_classes, blocks_per_stage=5, widths=(16, 32, 64), init=DEFAULT_INIT):
    """He et al.'s CIFAR ResNet-(6n+2), n=5: 3 stages of basic blocks, 16/32/64 filters,
    batch norm and option-A (parameter-free) shortcuts, as in akamaster/pytorch_resnet_cifar10 and
    the authors' code; ``init``: see :data:`~kerasprune.pure.inits.INITS` (default: the authors')."""
    _check_init(init)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False, kernel_initializer=_kernel_init(init),
                            name="stem_conv")(inputs)
    x = _batch_norm("stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate(widths, start=1):
        for block in range(1, blocks_per_stage + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, stride, name=f"stage{stage}_block{block}", init=init)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _dense(x, num_classes, "logits", init)
    return keras.Model(inputs, outputs, name=f"resnet{6 * blocks_per_stage + 2}")
