"""Optimizers by name, as every run's settings name them: :func:`make_optimizer` (``sgd``, ``adam``, ...,
with PyTorch's coupled weight decay when asked) and :func:`check_optimizer_name`.

Its own module so the imports go one way: :mod:`kerasprune.config` checks names here (lazily: it
imports no TensorFlow), :mod:`kerasprune.training` and every run build optimizers here.
"""
import inspect

from kerasprune._keras import keras, tf
from kerasprune.errors import KerasPruneError


def optimizer_classes():
    """Every current (non-legacy) Keras optimizer class, by lower-case name."""
    return {n.lower(): c for n, c in vars(keras.optimizers).items()
            if isinstance(c, type) and issubclass(c, keras.optimizers.Optimizer)
            and c is not keras.optimizers.Optimizer}


class _CoupledWeightDecay:
    """Mixin for a Keras optimizer: L2 weight decay folded into the gradient, as PyTorch's
    ``torch.optim.SGD(weight_decay=wd)`` (and Adam, RMSprop, ...) does it: ``g <- g + wd * w``,
    then the optimizer's own update (momentum, then the step) on that gradient. Keras's own
    ``weight_decay`` argument is the decoupled form (``w <- w - lr * wd * w`` next to the update,
    never through the momentum), which is not what PyTorch recipes mean.

    Mechanism: we override ``update_step``, the per-variable update every Keras optimizer
    implements, because it is the one hook both ways of stepping go through: Keras's own
    ``apply_gradients`` (``_update_step``/``_update_step_xla`` -> ``update_step``, after the
    replicas' gradients are aggregated) and kerasprune's ``Lobster`` wrapper, which calls
    ``base_optimizer.update_step(g, w)`` directly and so skips everything the base does in
    ``apply_gradients`` (clipping, Keras's ``_apply_weight_decay``, EMA). tf_keras optimizers have
    no ``gradient_transformers`` hook (only the legacy ones do), so a subclass is the smallest change.

    Which variables decay: every variable the optimizer updates, i.e. all the model's trainable
    variables (kernels, biases, BatchNorm gamma/beta), as the PyTorch reference does by passing
    ``model.parameters()`` to SGD. Pruned (masked) parameters are zero, so their decay is zero.
    Under ``Lobster`` the decay changes only the base step: LOBSTER's sensitivity term still sees the
    raw loss gradient (``Lobster.update_step`` keeps its own ``gradient``).
    """

    def __init__(self, *args, coupled_weight_decay=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices):  # sparse gradient: the decay touches every row
            gradient = tf.convert_to_tensor(gradient)
        decay = tf.cast(self.coupled_weight_decay, variable.dtype)
        return super().update_step(gradient + decay * tf.convert_to_tensor(variable), variable)

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        return config


def _with_coupled_decay(cls):
    name = f"{cls.__name__}CoupledDecay"
    sub = type(name, (_CoupledWeightDecay, cls), {"__module__": __name__, "__doc__": (
        f"``{cls.__name__}`` with coupled (L2, PyTorch-style) weight decay: see make_optimizer.")})
    # Registered so a serialised optimizer (e.g. the base inside Lobster.get_config) deserialises.
    return keras.utils.register_keras_serializable(package="kerasprune", name=name)(sub)


# Made once, at import: registration must happen before any config naming them is deserialised.
_COUPLED_DECAY_CLASSES = {cls: _with_coupled_decay(cls) for cls in optimizer_classes().values()}


def check_optimizer_name(name, momentum=0.0):
    """The optimizer class ``name`` stands for, or a one-line error (unknown name, no momentum)."""
    classes = optimizer_classes()
    if name.lower() not in classes:
        raise KerasPruneError(f"unknown optimizer {name!r}; valid names are: {', '.join(sorted(classes))}")
    cls = classes[name.lower()]
    if momentum and "momentum" not in inspect.signature(cls).parameters:
        raise KerasPruneError(f"optimizer {name!r} has no momentum; drop --momentum")
    return cls


def make_optimizer(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0):
    """A Keras optimizer by class name, case-insensitive (``sgd``, ``adam``, ``rmsprop``, ...).

    ``momentum`` applies to optimizers that have one (SGD, RMSprop). We look the class up ourselves:
    ``keras.optimizers.get`` returns the legacy (v2) classes for names, and kerasprune's optimizers
    (LOBSTER) wrap the current ``keras.optimizers.Optimizer``.

    ``weight_decay`` > 0 is PyTorch's coupled L2 decay (``g <- g + weight_decay * w`` before the
    optimizer's update, for every trainable variable; see :class:`_CoupledWeightDecay`), not Keras's
    decoupled ``weight_decay`` argument. The optimizer is then a subclass of the named class (still
    an instance of it); with 0 it is the plain Keras class.
    """
    cls = check_optimizer_name(name, momentum)
    if weight_decay < 0:
        raise KerasPruneError(f"weight_decay must be >= 0, got {weight_decay}")
    kwargs = {"momentum": momentum} if "momentum" in inspect.signature(cls).parameters else {}
    if weight_decay:
        return _COUPLED_DECAY_CLASSES[cls](learning_rate=lr, coupled_weight_decay=weight_decay, **kwargs)
    return cls(learning_rate=lr, **kwargs)
