"""The LOBSTER optimizer: any Keras optimizer's step, then the sensitivity term, then the masks.

Tartaglione et al., "LOss-Based SensiTivity rEgulaRization: towards deep sparse neural networks"
(Neural Networks 2022; arXiv:2011.09905), as used in "Pruning artificial neural networks: a way to
find well-generalizing, high-entropy sharp minima" (arXiv:2004.14765).
"""
import math
import platform

from kerasprune._keras import keras, tf
from kerasprune.pure.optimizer import LobsterOptimizerBase, check_lobster_arguments
from kerasprune.pure.schedule import DEFAULT_LMBDA
from kerasprune.sparsity import DEFAULT_KINDS


def _is_sgd_without_momentum(optimizer):
    """Keras's own SGD (not a subclass) with a plain momentum of 0 and no Nesterov."""
    momentum = optimizer.momentum if type(optimizer) is keras.optimizers.SGD else None
    return isinstance(momentum, (int, float)) and momentum == 0 and not optimizer.nesterov


def _xla_available():
    return not (platform.system() == "Darwin" and "arm" in platform.processor().lower())


@keras.utils.register_keras_serializable(package="kerasprune")
class Lobster(LobsterOptimizerBase, keras.optimizers.Optimizer):
    """Wraps a base optimizer with LOBSTER's loss-based sensitivity regulariser and pruning masks.

    Each step, with ``g`` the (replica-aggregated) mini-batch gradient of parameter ``w``:

        w <- base_step(w, g)                          # e.g. w - lr * g for plain SGD
        w <- w - lmbda * w * max(0, 1 - |g|)          # lmbda is NOT multiplied by the lr
        w <- w * mask                                 # pruned parameters stay exactly zero

    The last two lines apply to the prunable parameters only (by default Dense/Conv kernels and
    biases and BatchNorm gamma/beta, as :func:`kerasprune.sparsity.prunable_variables` lists them).
    Masks are non-trainable optimizer variables, so checkpoints (and ``BackupAndRestore``) keep
    them; :class:`~kerasprune.lobster.LobsterPruning` sets them with :meth:`prune_below`.

    The wrapper shares the base optimizer's iteration counter and learning rate (``lr`` reads and
    writes the base's), so learning-rate schedules and ``ReduceLROnPlateau`` work unchanged. The
    base's own clipping / Keras (decoupled) weight decay / EMA are not applied: pass those arguments to
    ``Lobster``. A base from ``training.make_optimizer(weight_decay=...)`` (coupled, PyTorch-style) keeps
    its decay, which lives in its update step.

    Args:
      base_optimizer: a ``keras.optimizers.Optimizer`` (not a legacy one); default ``SGD(0.1)``.
      lmbda: strength of the sensitivity term (paper default 1e-4).
      kinds: which parameters are regularised and masked when :meth:`set_prunable` is not called:
        those of the kinds in ``("kernel", "bias", "norm")`` recognised by variable name.
      jit_compile: compile each update with XLA (also on CPU, where it makes LOBSTER's extra
        work nearly free).
      weight_decay: Keras's decoupled weight decay; None (or 0) applies none.
      **kwargs: the base ``keras.optimizers.Optimizer`` arguments (``clipnorm``...).
    """

    def __init__(self, base_optimizer=None, lmbda=DEFAULT_LMBDA, kinds=DEFAULT_KINDS, name="Lobster",
                 jit_compile=True, weight_decay=None, **kwargs):
        # tf_keras' Optimizer defaults weight_decay to 0, and a 0 still runs its decay pass every step
        # (w -= w * 0 * lr: a read, two products and a write of every variable, about a fifth of a
        # LeNet-300 step). None skips the pass: the same weights (w - 0 == w).
        super().__init__(name=name, jit_compile=jit_compile, weight_decay=weight_decay or None, **kwargs)
        # XLA fuses the base step, the sensitivity term and the mask into one pass per tensor:
        # without it the extra elementwise ops cost ~1.2x a plain SGD step of LeNet-300 on CPU, with
        # it ~1.0x (bench/bench_lobster_overhead.py). Keras turns XLA off on CPU-only machines; we
        # keep it wherever XLA compiles (not on Apple-silicon Macs).
        self.jit_compile = bool(jit_compile) and _xla_available()
        if base_optimizer is None:
            base_optimizer = keras.optimizers.SGD(0.1)
        elif isinstance(base_optimizer, dict):
            base_optimizer = keras.optimizers.deserialize(base_optimizer, use_legacy_optimizer=False)
        if not isinstance(base_optimizer, keras.optimizers.Optimizer) or isinstance(base_optimizer, Lobster):
            raise ValueError("Lobster wraps a (non-legacy, non-Lobster) keras.optimizers.Optimizer, "
                             f"got {type(base_optimizer).__name__}")
        self.kinds = check_lobster_arguments(lmbda, kinds)
        self.base_optimizer = base_optimizer
        self._skip_unused_momentum = True  # see update_step; False takes Keras's own SGD step
        # One step counter for both: the base reads it (e.g. Adam's bias correction, schedules),
        # the wrapper's distributed apply increments it once per step.
        self._iterations = base_optimizer.iterations
        self._variables.append(self._iterations)
        with tf.init_scope():
            self._lmbda = tf.Variable(float(lmbda), name="lmbda", dtype=keras.backend.floatx(),
                                      trainable=False)
        self._variables.append(self._lmbda)
        # The pruning schedule's state lives here too, so one checkpoint (BackupAndRestore)
        # restores masks, best weights and schedule together: a resumed run continues where it
        # was (only the data order differs: the shuffle restarts from its seed's first epoch).
        self.threshold = self._scalar("threshold", 0.0)  # last pruning threshold T
        self.level = self._scalar("level", 0, tf.int64)  # number of prunings done
        self.best_loss = self._scalar("best_loss", math.inf)  # best val loss since last pruning
        self.bad_epochs = self._scalar("bad_epochs", 0, tf.int64)  # consecutive non-good epochs
        self.level_best_accuracy = self._scalar("level_best_accuracy", -math.inf)
        self._prunable_keys = None  # set by set_prunable(); None: recognise by variable name
        self._rewound_state = self._no_dependency([])  # set by set_rewound_state()

    def _create_iteration_variable(self):
        """No counter of its own: ``__init__`` adopts the base optimizer's."""

    def _scalar(self, name, value, dtype=None):
        with tf.init_scope():
            var = tf.Variable(value, name=name, dtype=dtype or keras.backend.floatx(), trainable=False,
                              synchronization=tf.VariableSynchronization.ON_WRITE,
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._variables.append(var)
        return var

    # -- hyperparameters shared with the base optimizer (learning_rate, lmbda: LobsterOptimizerBase) -
    def _compute_current_learning_rate(self):
        self.base_optimizer._compute_current_learning_rate()

    @property
    def variables(self):
        """The wrapper's variables (counter, lmbda, masks) then the base's slots."""
        own = list(self._variables)
        ids = {id(v) for v in own}
        return own + [v for v in self.base_optimizer.variables if id(v) not in ids]

    # -- which parameters are pruned ------------------------------------------------------------
    def set_prunable(self, variables):
        """Regularise and mask exactly ``variables`` (call before the first training step)."""
        keys = [self._var_key(v) for v in variables]
        if getattr(self, "_built", False) and set(keys) != set(self._mask_index):
            raise ValueError("set_prunable() after the optimizer was built with another set of "
                             "prunable variables; call it before training starts")
        self._prunable_keys = keys

    def set_rewound_state(self, variables):
        """Non-trainable model variables (BatchNorm moving statistics) that :meth:`rewind_to_best`
        restores with the weights, so the best epoch is rewound whole (call before training)."""
        if getattr(self, "_built", False):
            raise ValueError("set_rewound_state() after the optimizer was built; call it before "
                             "training starts")
        self._rewound_state = self._no_dependency(list(variables))

    def _is_prunable(self, variable):
        if self._prunable_keys is not None:
            return self._var_key(variable) in self._prunable_keys
        return self._is_kind(variable.name.split("/")[-1].split(":")[0])

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self.base_optimizer.build(var_list)
        self.masks = []
        self._mask_index = self._no_dependency({})
        self._prunable_vars = self._no_dependency([])
        self._model_vars = self._no_dependency({self._var_key(v): v for v in var_list})
        for var in var_list:
            if not self._is_prunable(var):
                continue
            self._mask_index[self._var_key(var)] = len(self.masks)
            self._prunable_vars.append(var)
            self.masks.append(self._add_mask(var))
        # Weights of the best validation loss since the last pruning: pruning rewinds to them.
        self.best_weights = [self.add_variable_from_reference(v, "best", initial_value=v)
                             for v in list(var_list) + self._rewound_state]
        self._built = True

    def _add_mask(self, var):
        # ONLY_FIRST_REPLICA: masks are written in cross-replica context by the pruning callback
        # and only read inside the replicated step, so every replica holds the same mask.
        with tf.init_scope(), tf.distribute.get_strategy().extended.colocate_vars_with(var):
            mask = tf.Variable(tf.ones(var.shape, var.dtype), name=f"mask/{var._shared_name}",
                               trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._variables.append(mask)
        return mask

    # -- the update -----------------------------------------------------------------------------
    def update_step(self, gradient, variable):
        base = self.base_optimizer
        if (self._skip_unused_momentum and _is_sgd_without_momentum(base)
                and not isinstance(gradient, tf.IndexedSlices)):
            # tf_keras' SGD.update_step without its slot: SGD keeps a momentum slot and, even with
            # momentum 0, writes m = -g*lr + m*momentum and adds m to w, every step. Here g*momentum
            # stands in for m*momentum (a zero either way): the step keeps its value and rounding and
            # the slot is neither read nor written (one pass over every parameter less per step). The
            # "+ g*0" also keeps XLA from fusing w + (-g*lr) into one rounding (an FMA), as a plain
            # w - g*lr would be: that changes the weights.
            lr = tf.cast(base.learning_rate, variable.dtype)
            momentum = tf.cast(base.momentum, variable.dtype)
            variable.assign_add(-gradient * lr + gradient * momentum)
        else:
            base.update_step(gradient, variable)
        index = self._mask_index.get(self._var_key(variable))
        if index is None:
            return
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        lmbda = tf.cast(self._lmbda, variable.dtype)
        # w * mask * (1 - lmbda * insensitivity): the sensitivity step and the mask in one write.
        insensitivity = tf.nn.relu(1.0 - tf.abs(gradient))
        variable.assign(variable * self.masks[index] * (1.0 - lmbda * insensitivity))

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        # On one device, one XLA computation updates every variable: per-variable XLA calls cost
        # more in launch overhead than LOBSTER's arithmetic. Replicated variables keep Keras's
        # per-variable path (distribution.extended.update).
        if (not self.jit_compile or self.use_ema
                or distribution is not tf.distribute.get_strategy()
                or tf.distribute.has_strategy()):
            return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        grads, variables = zip(*grads_and_vars)
        self._update_all_xla(list(grads), list(variables))
        return self.iterations.assign_add(1)

    @tf.function(jit_compile=True)
    def _update_all_xla(self, gradients, variables):
        for gradient, variable in zip(gradients, variables):
            self._update_step(gradient, variable)

    def _cut_below(self, var, mask, threshold):
        # Compared in float64, as the threshold search does: a float32 T could round onto a
        # magnitude and keep (or cut) one parameter the search evaluated the other way.
        magnitude = tf.cast(tf.abs(tf.convert_to_tensor(var)), tf.float64)
        keep = tf.cast(magnitude >= tf.constant(threshold, tf.float64), var.dtype) * mask
        return keep, var * keep, int(tf.reduce_sum(mask - keep).numpy())

    def reset_masks_from_weights(self):
        """Masks := (w != 0): adopts the zeros of loaded weights (e.g. an operating point) as pruned."""
        for var, mask in zip(self._prunable_vars, self.masks):
            mask.assign(tf.cast(tf.not_equal(var, 0), var.dtype))

    def _rewind_pairs(self):
        order = sorted(self._index_dict.items(), key=lambda kv: kv[1])  # best_weights follow var_list
        rewound = [self._model_vars[key] for key, _ in order] + self._rewound_state
        return zip(rewound, self.best_weights)

    def get_config(self):
        config = super().get_config()
        config.update(base_optimizer=keras.optimizers.serialize(self.base_optimizer, use_legacy_format=False),
                      lmbda=float(self._lmbda.numpy()), kinds=list(self.kinds))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["base_optimizer"] = keras.optimizers.deserialize(
            config["base_optimizer"], custom_objects=custom_objects, use_legacy_optimizer=False)
        return cls(**config)
