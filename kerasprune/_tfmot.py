"""The only module that touches TF-MOT's pruning-wrapper internals.

Everything else in kerasprune talks about masks as ``{key: bool array}`` over
:func:`kerasprune.sparsity.prunable_variables` (key ``"<layer>/<kernel|bias|gamma|beta>"``; the mask
maths is in :mod:`kerasprune.masks`) and calls :func:`wrap`, :func:`set_masks`, :func:`get_masks`,
:func:`strip_shared` and :func:`plain_copy` from here. (:func:`kerasprune.sparsity.is_pruning_wrapper`
recognises a wrapper without importing TF-MOT.)

How a mask is held fixed. TF-MOT's ``PruneLowMagnitude`` recomputes its masks whenever its
schedule says so (``pruning_impl.conditional_mask_update``). :class:`FixedMask` is a schedule that
never says so, so the mask variables keep exactly what :func:`set_masks` wrote; the wrapper still
multiplies the weights by the mask on every call and at every epoch end (``UpdatePruningStep``),
so pruned entries stay zero.

Which parameters a wrapper masks. TF-MOT's registry prunes kernels only, while LOBSTER's mask also
covers biases and BatchNorm gamma/beta. ``wrap(..., kinds=("kernel", "bias", "norm"))`` gives each
layer a ``get_prunable_weights`` (the ``PrunableLayer`` protocol TF-MOT checks before its registry)
that returns all of them, so every masked parameter goes through the same TF-MOT mask machinery.
The attribute is set on the layer instance, so the stripped model keeps standard Keras layers.
"""
import numpy as np

from kerasprune import sparsity
from kerasprune._keras import keras, tf, tfmot

KERNEL_ONLY = ("kernel",)
ALL_KINDS = sparsity.DEFAULT_KINDS


_api = tfmot().sparsity.keras


@keras.utils.register_keras_serializable(package="kerasprune")
class FixedMask(_api.PruningSchedule):
    """A TF-MOT pruning schedule that never updates the mask (retraining with a given mask)."""

    def __call__(self, step):
        return tf.constant(False), tf.constant(0.0, tf.float32)

    def get_config(self):
        return {"class_name": keras.utils.get_registered_name(type(self)), "config": {}}


def param_key(layer, attr):
    return f"{sparsity.unwrap(layer).name}/{attr}"


def masked_parameters(model, kinds=ALL_KINDS):
    """``{key: variable}`` of the parameters a mask covers, in ``prunable_variables`` order."""
    out = {}
    for layer in sparsity.all_layers(model):
        inner = sparsity.unwrap(layer)
        for attr in _attrs(inner, kinds):
            out[param_key(inner, attr)] = getattr(inner, attr)
    return out


def _attrs(inner, kinds):
    if isinstance(inner, sparsity.DENSE_CONV):
        return [a for a, k in (("kernel", "kernel"), ("bias", "bias"))
                if k in kinds and getattr(inner, a, None) is not None]
    if isinstance(inner, sparsity.NORMS) and "norm" in kinds:
        return [a for a in ("gamma", "beta") if getattr(inner, a, None) is not None]
    return []


def wrap(model, schedule=None, kinds=ALL_KINDS):
    """A clone of ``model`` whose Dense/Conv (and, with ``"norm"``, BatchNorm) layers sit in TF-MOT
    ``PruneLowMagnitude`` wrappers masking the parameters of ``kinds``; weights are copied.

    Args:
      schedule: a TF-MOT ``PruningSchedule`` for every wrapper; default :class:`FixedMask`.
      kinds: which parameters the masks cover: ``("kernel",)`` is TF-MOT's own choice, the default
        also covers biases and BatchNorm gamma/beta (LOBSTER's mask).
    """
    schedule = schedule or FixedMask()

    def clone(layer):
        attrs = _attrs(layer, kinds)
        if not attrs:
            return layer.__class__.from_config(layer.get_config())
        copy = layer.__class__.from_config(layer.get_config())
        copy.get_prunable_weights = lambda c=copy, a=tuple(attrs): [getattr(c, n) for n in a]
        return _api.prune_low_magnitude(copy, pruning_schedule=schedule)

    with model.distribute_strategy.scope():
        wrapped = keras.models.clone_model(model, clone_function=clone)
    copy_weights(model, wrapped)
    return wrapped


def copy_weights(source, target):
    """Copies layer weights between two models of the same architecture, wrapped or not (matched
    by the inner layer's name; masks and TF-MOT state are left alone)."""
    by_name = {sparsity.unwrap(l).name: sparsity.unwrap(l) for l in sparsity.all_layers(source)}
    for layer in sparsity.all_layers(target):
        inner = sparsity.unwrap(layer)
        if inner.weights:
            inner.set_weights(by_name[inner.name].get_weights())


def wrapper_class():
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

    return pruning_wrapper.PruneLowMagnitude


def wrappers(model):
    return [l for l in sparsity.all_layers(model) if isinstance(l, wrapper_class())]


def _mask_vars(model):
    """``{key: (weight, mask variable)}`` of every wrapper of ``model`` (TF-MOT's ``pruning_vars``)."""
    out = {}
    for layer in wrappers(model):
        inner = sparsity.unwrap(layer)
        names = {id(getattr(inner, a)): a for a in ("kernel", "bias", "gamma", "beta")
                 if getattr(inner, a, None) is not None}
        for weight, mask, _threshold in layer.pruning_vars:
            out[f"{inner.name}/{names[id(weight)]}"] = (weight, mask)
    return out


def get_masks(model):
    """``{key: bool array}`` read from the wrappers' mask variables."""
    return {k: m.numpy() != 0 for k, (_, m) in _mask_vars(model).items()}


def set_masks(model, masks):
    """Writes ``masks`` into the wrappers' mask variables and zeroes the masked weights now.

    Every wrapped parameter must get a mask (a missing one would leave TF-MOT's all-ones default,
    silently training a parameter the caller meant to prune).
    """
    found = _mask_vars(model)
    missing, extra = set(found) - set(masks), set(masks) - set(found)
    if missing or extra:
        raise ValueError(f"masks do not match the wrapped parameters: missing {sorted(missing)}, "
                         f"unexpected {sorted(extra)}")
    # Under a distribution strategy the variables are mirrored: assign in the model's scope.
    with model.distribute_strategy.scope():
        for key, (weight, mask) in found.items():
            value = np.asarray(masks[key])
            if value.shape != tuple(weight.shape):
                raise ValueError(f"mask {key} has shape {value.shape}, parameter has {tuple(weight.shape)}")
            mask.assign(value.astype(mask.dtype.as_numpy_dtype))
    apply_masks(model)


def apply_masks(model):
    """Multiplies every wrapped weight by its mask (what the wrapper does on each call)."""
    with model.distribute_strategy.scope():
        for layer in wrappers(model):
            layer.pruning_obj.weight_mask_op()


def callbacks():
    """The callbacks a model with wrappers needs during ``fit`` (TF-MOT's step counter)."""
    return [_api.UpdatePruningStep()]


def strip_shared(model):
    """The model without wrappers (TF-MOT ``strip_pruning``), masks applied first so it keeps its
    zeros; shares variables (and layers) with ``model``. :func:`plain_copy` makes a separate model."""
    apply_masks(model)
    return _api.strip_pruning(model)


strip = strip_shared  # the older name


def folded_weights(model):
    """``{weight.ref(): weight * mask}`` of every wrapped weight (TF-MOT's ``pruning_vars``): the
    weight variable may hold non-zeros where the mask is 0 until the next masking op, so the mask is
    multiplied in here; ``model`` is left untouched."""
    folded = {}
    for layer in wrappers(model):
        for weight, mask, _ in layer.pruning_vars:
            folded[weight.ref()] = weight.numpy() * mask.numpy().astype(weight.dtype.as_numpy_dtype)
    return folded


def plain_copy(model):
    """A fresh copy of ``model`` without wrappers, each wrapped weight multiplied by its mask; shares
    nothing with ``model``, which is left untouched (:func:`strip_shared` shares its variables)."""
    folded = folded_weights(model)
    source = _api.strip_pruning(model) if folded else model
    with model.distribute_strategy.scope():
        plain = keras.models.clone_model(source)
    plain.set_weights([folded[v.ref()] if v.ref() in folded else v.numpy() for v in source.weights])
    return plain


def wrap_default(model):
    """A clone of ``model`` in TF-MOT's own default wrappers (``prune_low_magnitude``: its default
    schedule, kernels only): the layout of weight files saved from a model pruned with plain TF-MOT."""
    with model.distribute_strategy.scope():
        return _api.prune_low_magnitude(keras.models.clone_model(model))


def polynomial_decay(final_sparsity, begin_step, end_step, frequency):
    """TF-MOT's PolynomialDecay (Zhu & Gupta 2017) from 0 to ``final_sparsity``."""
    return _api.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=final_sparsity, begin_step=begin_step,
        end_step=end_step, frequency=frequency)


def constant_once(target_sparsity, step=1):
    """TF-MOT's ConstantSparsity computing its magnitude masks at ``step`` only (one-shot).

    TF-MOT increments the wrapper's step before the mask update, so the first training batch is
    step 1.
    """
    return _api.ConstantSparsity(target_sparsity, begin_step=step, end_step=step,
                                                   frequency=1)
