"""The minima analysis for Keras 3 models: PSP L2, PSP-entropies and top Hessian eigenvalues.

The same functions as :mod:`kerasprune.analysis` (definitions there and in docs/analysis.md), for
Keras 3 functional and Sequential models. Only the capture is Keras 3 code: a sub-model returns the
logits and the input of every ReLU, and each batch is reduced to the sums and counts of
:class:`PSPStats` in NumPy, so the PSP part runs on every backend. Norms, entropies, eigen-solvers
and the trace estimate are :mod:`kerasprune.pure`'s, the Keras 2 code's own.

The Hessian-vector product is the one backend-specific piece: it is implemented for the TensorFlow
backend (nested ``tf.GradientTape``, as Keras 2's); on JAX or PyTorch :class:`Hessian` says so in
one line. Masked like Keras 2's: zeros of the prunable parameters are not free parameters.
"""
import keras
import numpy as np

from kerasprune.errors import KerasPruneError
from kerasprune.keras3 import sparsity
from kerasprune.pure.eigen import (EigenConvergenceWarning, EigenResult, FlatOperator, arpack,  # noqa: F401
                                   hutchinson, lanczos, power_iteration, solver)
from kerasprune.pure.psp import (LINEAR_ACTIVATIONS, PSP_CONVENTIONS, PSP_LAYERS_ATTR,  # noqa: F401
                                 REFERENCE_CLAMP, PSPStats, activation_name, add_totals, batch_totals,
                                 binary_entropy, capture_plan, find_relus, neuron_class_entropy, pair_plan,
                                 psp_entropy_first_order, psp_entropy_second_order, psp_l2, psp_layer_names,
                                 stats_from_totals)

_ACTIVATION_LAYERS = ("ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "Softmax")
# keras.ops activations, which appear in a functional graph as operations (not layers).
_ACTIVATION_OPS = ("Relu6", "Sigmoid", "Softplus", "Softsign", "Silu", "LeakyRelu", "HardSigmoid", "Elu",
                   "Selu", "Gelu", "Softmax", "LogSoftmax", "Tanh", "Celu", "Glu", "HardSilu", "Mish")


def _graph(model):
    """The functional graph of ``model`` (a Sequential model's inner one)."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "operations") or not getattr(graph, "outputs", None):
        raise KerasPruneError(f"model {model.name!r} is subclassed or unbuilt; PSPs need a built functional "
                              "or Sequential model (a graph whose ReLU inputs are tensors)")
    return graph


def _is_plain_relu(op):
    if isinstance(op, keras.layers.ReLU):
        return op.max_value is None and float(op.negative_slope) == 0.0 and float(op.threshold) == 0.0
    if isinstance(op, keras.layers.Activation):
        return activation_name(op.activation) == "relu"
    return type(op).__name__ == "Relu"  # keras.ops.relu(x) in a functional graph


def relu_layers(model, skip_non_relu=False):
    """The layers (or ``keras.ops.relu`` operations) of ``model`` that apply a plain ReLU, in graph
    order; a hidden non-ReLU activation is an error unless ``skip_non_relu`` (as Keras 2's)."""
    graph = _graph(model)
    outputs = {id(t) for t in graph.outputs}

    def hidden_activation(op):
        kind = type(op).__name__
        is_output = any(id(t) in outputs for node in op._inbound_nodes for t in node.output_tensors)
        fused = getattr(op, "activation", None)
        non_relu = (kind in _ACTIVATION_LAYERS or kind in _ACTIVATION_OPS
                    or (fused is not None and activation_name(fused) not in LINEAR_ACTIVATIONS))
        if not non_relu or is_output:
            return None
        return repr(activation_name(fused) if fused is not None else kind)

    return find_relus(model.name, graph.operations, lambda op: isinstance(op, keras.Model), _is_plain_relu,
                      hidden_activation, skip_non_relu)


def psp_model(model, skip_non_relu=False):
    """A model returning ``[logits, z_1, ..., z_L]``: the output of ``model`` and the input of each
    ReLU, from the model's own graph (it shares the model's variables). The ReLU names are in
    ``psp_layer_names(result)``."""
    if hasattr(model, PSP_LAYERS_ATTR):
        return model
    graph = _graph(model)
    relus = relu_layers(model, skip_non_relu)
    if len(graph.outputs) != 1:
        raise KerasPruneError(f"model {model.name!r} has {len(graph.outputs)} outputs; expected one (the logits)")
    inputs = graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs
    sub = keras.Model(inputs, [graph.outputs[0]] + [op.input for op in relus], name=f"{model.name}_psp")
    object.__setattr__(sub, PSP_LAYERS_ATTR, tuple(op.name for op in relus))
    return sub


def _output_layer(sub):
    history = getattr(sub.outputs[0], "_keras_history", None)
    return history.operation.name if history is not None else "output"


def _batches(data, batch_size):
    """``(x, y)`` arrays -> batches of them; anything else is iterated as ``(x, y)`` batches (a
    ``tf.data.Dataset``, a list...), each brought to NumPy so any backend's model can take it."""
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape"):
        x, y = data
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return ((np.asarray(x), np.asarray(y)) for x, y in data)


def psp_statistics(model, data, num_classes=None, first_order=True, second_order=False, max_exact_units=1024,
                   pair_samples=20000, seed=0, skip_non_relu=False, batch_size=1000):
    """One pass of ``data`` (``(x, integer labels)`` arrays, or batches of them) through ``model``'s
    PSPs, in inference mode; arguments and result (:class:`PSPStats`) as Keras 2's
    :func:`kerasprune.analysis.psp_statistics`."""
    sub = psp_model(model, skip_non_relu)
    plan = capture_plan(psp_layer_names(sub), [t.shape for t in sub.outputs], _output_layer(sub), num_classes,
                        first_order, second_order, max_exact_units, pair_samples, seed)
    totals = {}
    for x, y in _batches(data, batch_size):
        outs = [keras.ops.convert_to_numpy(t) for t in sub(x, training=False)]
        add_totals(totals, batch_totals(outs[0], outs[1:], np.asarray(y), plan.names, plan.num_classes,
                                        first_order, plan.second_order, plan.pairs))
    return plan.stats(totals)


# -- Hessian ----------------------------------------------------------------------------------------
def hessian_parameters(model, masked=True):
    """``(variables, masks)``: the trainable variables and per variable a 0/1 NumPy mask of its free
    entries; with ``masked``, zeros of the prunable variables are pruned, hence not free."""
    prunable = {id(v) for _, v in sparsity.prunable_variables(model)} if masked else set()
    variables = list(model.trainable_variables)
    masks = []
    for v in variables:
        value = keras.ops.convert_to_numpy(v)
        masks.append((value != 0).astype(value.dtype) if id(v) in prunable else np.ones_like(value))
    return variables, masks


class Hessian(FlatOperator):
    """The (masked) Hessian of the mean loss (sparse cross-entropy of the logits) of ``model`` over
    ``data`` (``(x, y)`` arrays or batches), as an operator for the eigen-solvers. TensorFlow backend."""

    def __init__(self, model, data, masked=True, batch_size=1000):
        if keras.backend.backend() != "tensorflow":
            raise KerasPruneError(f"the Keras 3 Hessian-vector product is implemented for the TensorFlow "
                                  f"backend only; this process runs Keras on {keras.backend.backend()!r}")
        import tensorflow as tf

        self.model = model
        self.variables, masks = hessian_parameters(model, masked)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.mask_flat = np.concatenate([m.ravel() for m in masks]).astype(np.float64)
        self.dim, self.free, self.num_hvps = int(self.mask_flat.size), int(self.mask_flat.sum()), 0
        self.batches = [(tf.constant(x), tf.constant(y)) for x, y in _batches(data, batch_size)]
        self.num_examples = sum(int(y.shape[0]) for _, y in self.batches)
        if self.num_examples == 0:
            raise KerasPruneError("no examples to compute the Hessian on")
        tf_masks = [tf.constant(m) for m in masks]
        tf_vars = [v.value for v in self.variables]
        scale = 1.0 / self.num_examples

        def batch_hvp(x, y, vector):
            vector = [v * m for v, m in zip(vector, tf_masks)]
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    logits = model(x, training=False)
                    loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
                    loss = loss * scale
                grads = inner.gradient(loss, tf_vars)
                dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
            return [h * m for h, m in zip(outer.gradient(dot, tf_vars), tf_masks)]

        self._tf = tf
        self._hvp_step = tf.function(batch_hvp, reduce_retracing=True)

    def hvp(self, vector):
        """``P H P v`` for ``vector`` a list of arrays shaped like the variables."""
        self.num_hvps += 1
        vector = [self._tf.convert_to_tensor(v, self._tf.float32) for v in vector]
        total = None
        for x, y in self.batches:
            out = self._hvp_step(x, y, vector)
            total = out if total is None else [a + b for a, b in zip(total, out)]
        return total


def _operator(model_or_op, data, masked, batch_size):
    if hasattr(model_or_op, "hvp_flat"):
        return model_or_op
    return Hessian(model_or_op, data, masked, batch_size)


def top_eigenvalues(model_or_op, data=None, k=5, method="lanczos", tol=1e-3, max_iter=100, seed=0, masked=True,
                    batch_size=1000):
    """Top-``k`` Hessian eigenvalues (descending) of ``model``'s mean loss on ``data``: Keras 2's
    :func:`kerasprune.analysis.top_eigenvalues` (same solvers, same arguments) on a Keras 3 model."""
    op = _operator(model_or_op, data, masked, batch_size)
    return solver(method)(op, k=k, tol=tol, max_iter=max_iter, seed=seed)


def hutchinson_trace(model_or_op, data=None, tol=1e-2, min_iter=10, max_iter=200, seed=0, masked=True,
                     batch_size=1000):
    """Hutchinson's estimate of ``trace(P H P)`` (see Keras 2's :func:`kerasprune.analysis.hutchinson_trace`)."""
    return hutchinson(_operator(model_or_op, data, masked, batch_size), tol, min_iter, max_iter, seed)


def hvp(model, x, y, vector, masked=True):
    """One HVP of the mean loss of ``model`` on ``(x, y)``: ``P H P v`` (a list like the variables)."""
    op = Hessian(model, (np.asarray(x), np.asarray(y)), masked, batch_size=max(len(x), 1))
    return [np.asarray(t) for t in op.hvp(vector)]


__all__ = [
    "EigenConvergenceWarning", "EigenResult", "Hessian", "arpack", "hessian_parameters", "hutchinson_trace",
    "hvp", "lanczos", "power_iteration", "top_eigenvalues", "PSP_CONVENTIONS", "REFERENCE_CLAMP", "PSPStats",
    "binary_entropy", "neuron_class_entropy", "psp_entropy_first_order", "psp_entropy_second_order", "psp_l2",
    "psp_layer_names", "psp_model", "psp_statistics", "relu_layers",
]
