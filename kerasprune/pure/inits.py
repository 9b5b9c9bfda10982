"""How a model's fresh weights are drawn: the names of the inits and what older run folders used.

The names are settings (``kerasprune.config``: ``--init``, a sweep's ``init``) and the model
builders (``kerasprune.models``) draw them, so they live here, below both, without TensorFlow.

- ``authors``: PyTorch's default, which the authors' code keeps for every network
  (EIDOSlab/LOBSTER's LeNet-300, LeNet-5 and ResNet-32 set no init of their own): kernels
  U(+-1/sqrt(fan_in)) (``kaiming_uniform_`` with a=sqrt(5)) and biases U(+-1/sqrt(fan_in)), fan_in
  being the inputs of one output unit (kernel height x width x input channels for a convolution);
- ``glorot``: Keras's default (Glorot-uniform kernels, zero biases), kerasprune's LeNet init before
  session 10;
- ``he``: He-normal kernels, zero biases, kerasprune's ResNet-32 init before session 7.
"""
import math

INITS = ("authors", "glorot", "he")
DEFAULT_INIT = "authors"


def init_of_older_folder(model):
    """The init a run folder written before the ``init`` setting existed (session 10) trained with:
    the LeNets were built with Keras's defaults, ResNet-32 with the authors' since session 7."""
    return "authors" if model == "resnet32" else "glorot"


def init_of_run(saved):
    """The init the run whose ``config.json`` holds ``saved`` drew its model with: its ``init``, else
    (a folder from before the setting, or a run kind without one) :func:`init_of_older_folder`."""
    return saved.get("init") or init_of_older_folder(saved.get("model"))


def authors_bound(fan_in):
    """Half-width of PyTorch's default uniform draws for a layer with ``fan_in`` inputs per unit."""
    return 1.0 / math.sqrt(fan_in)
