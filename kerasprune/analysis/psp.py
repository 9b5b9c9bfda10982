"""Post-synaptic potentials (PSP) of ReLU networks and the paper's PSP-entropy (Sec. 4, eq. 2-5).

The PSP of a hidden neuron is the tensor that feeds its ReLU (eq. 2). :func:`psp_model` exposes
every such tensor of a Keras functional/Sequential model as an extra output of a sub-model built
from the model's own graph (it shares the model's variables). :func:`psp_statistics` streams a
dataset through it once and keeps only sums and counts, so memory does not grow with the dataset:

- ``z^2`` summed per layer and for the logits (the paper's "PSP L2 norm", Fig. 3, in either convention);
- per neuron n and class c, the count of examples with ``z_n > 0`` (the state phi'(z) of eq. 3);
- optionally, per class, the counts of the joint state of pairs of neurons of the same layer.

Entropies (in bits), with the convention ``0 log 0 = 0`` (the limit), so a neuron that is always
on or always off within a class has entropy 0 there; classes absent from the data are skipped:

- first order (eq. 4-5): ``H(n|c) = h(P[z_n > 0 | c])`` with ``h`` the binary entropy and
  ``H(n) = sum_c H(n|c)``. A conv "neuron" is one output unit (position x channel); the per-channel
  reading pools the positions: ``p = P[z_{pos,ch} > 0 | c]`` over examples and positions.
- second order (our definition; the paper's code for it never ran): for neurons i != j of one
  layer, ``H(i,j|c)`` is the entropy of the 4-valued joint state ``(z_i > 0, z_j > 0)`` within class
  c and ``H(i,j) = sum_c H(i,j|c)``. Counts of state (1,1) for all pairs are the matrix product
  ``S_c^T S_c`` of the binary state matrix of class c; (1,0), (0,1), (0,0) follow from the
  first-order counts. Layers wider than ``max_exact_units`` use a seeded uniform sample of pairs
  instead, and report the standard error of the sampled mean.

"Overall" means average over every hidden neuron (or pair) of the model, so wide layers weigh in
proportion to their size; per-layer means are reported too (the first order's ``aggregate="layers"``
averages those instead). The units of the loss and PSP L2 have variants too (``training_loss``,
``psp_l2``; docs/analysis.md, "The paper's units").

First-order conventions (``convention=``): ``"kerasprune"`` is the above. ``"reference"`` is the
authors' code (EIDOSlab/PSP-entropy), which hooks the output of every top-level module, so the
output layer's units (logits, "on" when > 0) count as neurons too, and clamps ``p`` and ``1 - p`` to
``[1e-4, 0.9999]`` (an always-on or always-off neuron gets 0.0015 bits per class, not 0). Absent
classes are skipped in both (the reference's 0/0 would make them NaN). The reference has no second
order, so that one has a single convention.

The capture (sub-model, one pass on device) is Keras 2 code; the numbers computed from its counts
(:class:`PSPStats`, the norms and entropies) are NumPy in :mod:`kerasprune.pure.psp`, shared with
the Keras 3 analysis (:mod:`kerasprune.keras3.analysis`) and re-exported here.
"""
import warnings

import numpy as np

from kerasprune._keras import keras, tf
from kerasprune.errors import KerasPruneError
from kerasprune.pure.psp import (ENTROPY_AGGREGATES, LINEAR_ACTIVATIONS, PSP_CONVENTIONS,  # noqa: F401
                                 PSP_L2_CONVENTIONS, PSP_LAYERS_ATTR, REFERENCE_CLAMP, TRAIN_LOSS_CONVENTIONS,
                                 PSPStats, _check_convention, _joint_entropy, _pair_sample, _plogp, _present,
                                 activation_name, binary_entropy, capture_plan, find_relus, neuron_class_entropy,
                                 pair_plan, per_batch_loss, psp_entropy_first_order, psp_entropy_second_order,
                                 psp_l2, psp_layer_names, stats_from_totals, training_loss)

_ACTIVATION_LAYERS = ("ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU", "Softmax")


# Functions that, called on a Keras tensor, make a TFOpLambda (``tf.nn.relu(x)``) or that people
# wrap in ``Lambda``: the ReLUs, and the other activations (an error, as for Activation layers).
_RELU_FUNCTIONS = (tf.nn.relu, keras.activations.relu)
_OTHER_ACTIVATIONS = ("sigmoid", "tanh", "elu", "selu", "gelu", "softplus", "softsign", "swish", "silu",
                      "relu6", "leaky_relu", "crelu", "hard_sigmoid", "exponential", "softmax",
                      "log_softmax", "mish")


# Ops that can implement an activation (tf.maximum(z, 0) is a ReLU): not analysed, but warned about.
_MAYBE_ACTIVATIONS = ("maximum", "minimum", "clip_by_value", "where")


def _op_function(layer):
    """The function a ``TFOpLambda``/``Lambda`` layer applies, or None for other layers."""
    if type(layer).__name__ in ("TFOpLambda", "Lambda"):
        return getattr(layer, "function", None)
    return None


def _is_plain_relu(layer):
    if isinstance(layer, keras.layers.ReLU):
        return (layer.max_value is None and float(layer.negative_slope) == 0.0
                and float(layer.threshold) == 0.0)
    if isinstance(layer, keras.layers.Activation):
        return activation_name(layer.activation) == "relu"
    fn = _op_function(layer)
    # Lambda(..., arguments={...}) or keyword arguments of a TFOpLambda could change the ReLU
    # (alpha, max_value, threshold), so only the bare call counts.
    return (fn is not None and any(fn is f for f in _RELU_FUNCTIONS) and not getattr(layer, "arguments", None)
            and all(not node.call_kwargs or set(node.call_kwargs) <= {"name"} for node in layer._inbound_nodes))


def relu_layers(model, skip_non_relu=False):
    """The layers of ``model`` that apply a plain ReLU, in graph order.

    Raises a :class:`KerasPruneError` naming the first layer with a hidden non-ReLU activation (a
    separate activation layer, or one fused into Dense/Conv) unless ``skip_non_relu``: the PSP
    state z > 0 is only meaningful for ReLU. Activations that produce a model output (a softmax
    head) are not hidden and are allowed.
    """
    if not getattr(model, "_is_graph_network", False):
        raise KerasPruneError(f"model {model.name!r} is subclassed; PSPs need a functional or "
                              "Sequential model (a graph whose ReLU inputs are tensors)")
    outputs = {id(t) for t in model.outputs}
    opaque = []  # layers that may apply an activation PSP analysis cannot see (a warning, not an error)

    def hidden_activation(layer):
        is_output = any(id(t) in outputs for node in layer._inbound_nodes
                        for t in tf.nest.flatten(node.output_tensors))
        fused = getattr(layer, "activation", None)
        kind = type(layer).__name__
        op = _op_function(layer)
        if op is not None:
            fused = op if activation_name(op) in _OTHER_ACTIVATIONS or any(op is f for f in _RELU_FUNCTIONS) else None
            if fused is None and (kind == "Lambda" or activation_name(op) in _MAYBE_ACTIVATIONS):
                opaque.append(layer.name)
        non_relu = (kind in _ACTIVATION_LAYERS or
                    (fused is not None and activation_name(fused) not in LINEAR_ACTIVATIONS))
        if not non_relu or is_output:
            return None
        hint = (" fused into the layer (keep ReLU as its own layer)"
                if not isinstance(layer, keras.layers.Activation) and fused is not None and op is None else "")
        what = activation_name(fused) if fused is not None else kind
        return f"{what!r}{hint}"

    found = find_relus(model.name, model.layers, lambda layer: isinstance(layer, keras.Model), _is_plain_relu,
                       hidden_activation, skip_non_relu)
    if opaque:
        warnings.warn(f"PSP analysis cannot tell whether the layers {opaque} of model {model.name!r} "
                      "(Lambda, or ops such as tf.maximum) apply an activation: a ReLU written that way is "
                      "not analysed (use a ReLU layer or tf.nn.relu directly)", stacklevel=3)
    return found


def psp_model(model, skip_non_relu=False):
    """A model returning ``[logits, z_1, ..., z_L]``: the output of ``model`` and the input tensor
    of each of its ReLU layers, from the model's own graph (it shares the model's variables, so
    weights changed in place are seen). The ReLU layer names are in ``psp_layer_names(result)``."""
    if hasattr(model, PSP_LAYERS_ATTR):
        return model
    layers = relu_layers(model, skip_non_relu)
    if len(model.outputs) != 1:
        raise KerasPruneError(f"model {model.name!r} has {len(model.outputs)} outputs; expected one "
                              "(the logits)")
    outputs = [model.outputs[0]] + [layer.input for layer in layers]
    sub = keras.Model(model.inputs, outputs, name=f"{model.name}_psp")
    setattr(sub, PSP_LAYERS_ATTR, [layer.name for layer in layers])
    return sub


def _output_layer(sub):
    """Name of the layer producing the model's output (the key of its counts in ``positive``)."""
    history = getattr(sub.outputs[0], "_keras_history", None)
    return history.layer.name if history is not None else "output"


def psp_statistics(model, dataset, num_classes=None, first_order=True, second_order=False,
                   max_exact_units=1024, pair_samples=20000, seed=0, skip_non_relu=False, example_losses=False):
    """One pass of ``dataset`` (batches of ``(x, integer labels)``) through ``model``'s PSPs.

    Args:
      model: a ReLU Keras model (or a :func:`psp_model` of one). Runs in inference mode.
      num_classes: number of classes (default: the model's number of logits).
      first_order: count ``z > 0`` per neuron and class (needed by both entropies).
      second_order: also count joint states of pairs of neurons of a layer.
      max_exact_units: layers with at most this many units count all pairs exactly
        (``[classes, units, units]`` memory); wider layers sample ``pair_samples`` pairs.
      seed: seed of the pair sample.
      example_losses: also keep every example's loss, in data order (``stats.example_losses``, for
        the per-batch training loss; one float per example).

    Returns:
      :class:`PSPStats`.
    """
    sub = psp_model(model, skip_non_relu)
    plan = capture_plan(psp_layer_names(sub), [t.shape for t in sub.outputs], _output_layer(sub), num_classes,
                        first_order, second_order, max_exact_units, pair_samples, seed)
    names, units, num_classes, second_order, pairs = (plan.names, plan.units, plan.num_classes,
                                                      plan.second_order, plan.pairs)
    output_units = int(np.prod(plan.output_shape))
    pair_index = {n: tf.constant(p, tf.int32) for n, p in pairs.items() if p is not None}
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    def step(x, y):
        outs = sub(x, training=False)
        logits, zs = outs[0], outs[1:]
        y = tf.reshape(tf.cast(y, tf.int32), [-1])
        onehot = tf.one_hot(y, num_classes, dtype=tf.float32)
        losses = loss_fn(y, logits)
        result = {
            "class": tf.reduce_sum(onehot, 0),
            "loss": tf.reduce_sum(losses),
            "correct": tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y),
                                             tf.float32)),
            "out_sq": tf.reduce_sum(tf.square(tf.cast(logits, tf.float32))),
        }
        if example_losses:
            result["losses"] = losses
        if first_order:  # the output layer's states, for the reference entropy convention
            on = tf.cast(tf.reshape(logits, [-1, output_units]) > 0, tf.float32)
            result["out_pos"] = tf.matmul(onehot, on, transpose_a=True)
        for i, (n, z) in enumerate(zip(names, zs)):
            z = tf.reshape(tf.cast(z, tf.float32), [-1, units[n]])
            result[f"sq{i}"] = tf.reduce_sum(tf.square(z))
            if not first_order:
                continue
            s = tf.cast(z > 0, tf.float32)
            result[f"pos{i}"] = tf.matmul(onehot, s, transpose_a=True)
            if not second_order:
                continue
            if n in pair_index:
                a = tf.gather(s, pair_index[n][:, 0], axis=1)
                b = tf.gather(s, pair_index[n][:, 1], axis=1)
                result[f"n11_{i}"] = tf.matmul(onehot, a * b, transpose_a=True)
            else:
                parts = tf.dynamic_partition(s, y, num_classes)
                result[f"n11_{i}"] = tf.stack([tf.matmul(p, p, transpose_a=True) for p in parts])
        return result

    strategy = sub.distribute_strategy
    # One compiled step per configuration, kept on the sub-model: a grid evaluates the same
    # configuration hundreds of times, and retracing each time would dominate small evaluations.
    cache = sub.__dict__.setdefault("_kerasprune_psp_steps", {})
    pair_key = tuple((n, p.tobytes()) for n, p in sorted(pairs.items()) if p is not None)
    key = (num_classes, first_order, second_order, pair_key, example_losses)
    if key not in cache:
        cache[key] = tf.function(lambda x, y: strategy.run(step, args=(x, y)), reduce_retracing=True)
    compiled = cache[key]
    totals = {}
    for x, y in strategy.experimental_distribute_dataset(dataset):
        per_replica = compiled(x, y)
        for key, value in per_replica.items():
            if key == "losses":  # per example, in order: the replicas' parts one after the other
                value = np.concatenate([v.numpy() for v in strategy.experimental_local_results(value)])
                totals[key] = np.concatenate([totals[key], value]) if key in totals else value.astype(np.float64)
                continue
            value = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy()
            totals[key] = totals[key] + value if key in totals else value.astype(np.float64)
    return plan.stats(totals)
