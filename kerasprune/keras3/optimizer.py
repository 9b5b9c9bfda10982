"""The LOBSTER optimizer for Keras 3: any Keras 3 optimizer's step, then the sensitivity term, then
the masks, written with ``keras.ops`` so it runs on every backend (see docs/keras3.md).

The same update as Keras 2's :class:`kerasprune.lobster.Lobster` (Tartaglione et al., arXiv:2011.09905).
"""
import math

import keras
import numpy as np
from keras import ops

from kerasprune.keras3.sparsity import DEFAULT_KINDS
from kerasprune.pure.optimizer import LobsterOptimizerBase, check_lobster_arguments
from kerasprune.pure.schedule import DEFAULT_LMBDA

_BASE_ONLY = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "gradient_accumulation_steps")


@keras.saving.register_keras_serializable(package="kerasprune")
class Lobster(LobsterOptimizerBase, keras.optimizers.Optimizer):
    """Wraps a Keras 3 optimizer with LOBSTER's loss-based sensitivity regulariser and pruning masks.

    Each step is Keras 2's (:class:`kerasprune.lobster.Lobster`): the base optimizer's step, then
    ``w <- w * mask * (1 - lmbda * max(0, 1 - |g|))`` (``lmbda`` not multiplied by the learning rate)
    with ``g`` the mini-batch gradient, on the prunable parameters only (Dense/Conv kernels and biases
    and BatchNorm gamma/beta; :class:`~kerasprune.keras3.LobsterPruning` names them). The wrapper
    shares the base's step counter and learning rate, so schedules and ``ReduceLROnPlateau`` work
    unchanged.
    Masks, the best weights to rewind to and the pruning schedule's state are optimizer variables, so
    ``model.save("x.keras")`` keeps them and ``keras.models.load_model`` restores them.

    Args:
      base_optimizer: a ``keras.optimizers.Optimizer`` (default ``SGD(0.1)``) without clipping,
        decoupled weight decay, EMA or gradient accumulation of its own (pass those to ``Lobster``:
        the wrapper, not the base, applies them).
      lmbda: strength of the sensitivity term (paper default 1e-4).
      kinds: parameter kinds regularised and masked unless :meth:`set_prunable` named the variables
        before ``build``: those of ``("kernel", "bias", "norm")`` recognised by variable name.
      prunable: paths of the variables to regularise and mask (set by :meth:`set_prunable`; kept in
        the config so a loaded model masks the same ones).
      rewound_shapes: shapes of the non-trainable model variables (BatchNorm statistics) rewound with
        the weights (set by :meth:`set_rewound_state`; kept in the config for the same reason).
      **kwargs: the base ``keras.optimizers.Optimizer`` arguments (``weight_decay``, ``clipnorm``...).
    """

    def __init__(self, base_optimizer=None, lmbda=DEFAULT_LMBDA, kinds=DEFAULT_KINDS, prunable=None,
                 rewound_shapes=None, name="lobster", **kwargs):
        kwargs.pop("learning_rate", None)  # the base's (configs written by get_config carry none)
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        if base_optimizer is None:
            base_optimizer = keras.optimizers.SGD(0.1)
        elif isinstance(base_optimizer, dict):
            base_optimizer = keras.optimizers.deserialize(base_optimizer)
        if not isinstance(base_optimizer, keras.optimizers.Optimizer) or isinstance(base_optimizer, Lobster):
            raise ValueError(f"Lobster wraps a (non-Lobster) Keras 3 optimizer, got {type(base_optimizer).__name__}")
        own = [a for a in _BASE_ONLY if getattr(base_optimizer, a, None)]
        if own:
            raise ValueError(f"the base optimizer sets {', '.join(own)}, which only the wrapper applies; "
                             "pass them to Lobster instead")
        self.kinds = check_lobster_arguments(lmbda, kinds)
        self.base_optimizer = base_optimizer
        # One step counter and one learning rate, the base's: the wrapper's apply() increments the
        # counter once per step, and the base's schedule (or Adam's bias correction) reads it.
        self._untrack_variable(self._iterations)
        self._untrack_variable(self._learning_rate)
        self._iterations = base_optimizer._iterations
        self._untrack_variable(self._iterations)  # tracked again by the assignment; it is the base's
        self._learning_rate = base_optimizer._learning_rate
        if isinstance(self._learning_rate, keras.Variable):
            self._untrack_variable(self._learning_rate)
        self._lmbda = self._scalar("lmbda", float(lmbda))
        # The pruning schedule's state lives here too, so one .keras file (or BackupAndRestore)
        # restores masks, best weights and schedule together.
        self.threshold = self._scalar("threshold", 0.0)  # last pruning threshold T
        self.level = self._scalar("level", 0, "int")  # number of prunings done
        self.best_loss = self._scalar("best_loss", math.inf)  # best val loss since the last pruning
        self.bad_epochs = self._scalar("bad_epochs", 0, "int")  # consecutive non-good epochs
        self.level_best_accuracy = self._scalar("level_best_accuracy", -math.inf)
        self._prunable_paths = None if prunable is None else list(prunable)
        self._rewound_shapes = None if rewound_shapes is None else [tuple(s) for s in rewound_shapes]
        self._hold(_rewound_state=[], _prunable_vars=[], _mask_index={}, _model_vars=[])

    def _hold(self, **refs):
        """Keeps references to model variables without tracking them as optimizer variables."""
        for name, value in refs.items():
            object.__setattr__(self, name, value)

    def _scalar(self, name, value, dtype=None):
        return self.add_variable((), initializer=keras.initializers.Constant(value), dtype=dtype,
                                 aggregation="only_first_replica", name=name)

    # -- hyperparameters shared with the base optimizer (learning_rate, lmbda: LobsterOptimizerBase) -
    @property
    def variables(self):
        """The wrapper's variables (lmbda, schedule state, masks, best weights) then the base's."""
        return self._variables[:] + self.base_optimizer.variables

    # -- which parameters are pruned ------------------------------------------------------------
    def set_prunable(self, variables):
        """Regularise and mask exactly ``variables`` (Keras 3 variables of the model being trained)."""
        paths = [v.path for v in variables]
        if self.built and set(paths) != {v.path for v in self._prunable_vars}:
            raise ValueError("set_prunable() after the optimizer was built with another set of prunable "
                             "variables; call it before training starts")
        self._prunable_paths = paths

    def set_rewound_state(self, variables):
        """Non-trainable model variables (BatchNorm moving statistics) that :meth:`rewind_to_best`
        restores with the weights. ``fit`` builds the optimizer before any callback runs, so after
        ``build`` this adds their slots (before the first step; a loaded optimizer has them already)."""
        variables = list(variables)
        shapes = [tuple(v.shape) for v in variables]
        if self.built and not self.best_state and shapes:
            self.best_state = [self.add_variable(s, name=f"best_state_{i}") for i, s in enumerate(shapes)]
            for var, best in zip(variables, self.best_state):
                best.assign(var)
        elif self.built and shapes != [tuple(b.shape) for b in self.best_state]:
            raise ValueError(f"set_rewound_state() with shapes {shapes} on an optimizer that rewinds "
                             f"{[tuple(b.shape) for b in self.best_state]}")
        self._rewound_shapes = shapes
        self._hold(_rewound_state=variables)

    def _is_prunable(self, variable):
        if self._prunable_paths is not None:
            return variable.path in self._prunable_paths
        return self._is_kind(variable.name)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.base_optimizer.build(var_list)
        self._hold(_prunable_vars=[], _mask_index={}, _model_vars=list(var_list))
        self.masks = []
        for var in var_list:
            if self._is_prunable(var):
                self._mask_index[self._var_key(var)] = len(self.masks)
                self._prunable_vars.append(var)
                self.masks.append(self.add_variable_from_reference(var, "mask", initializer="ones"))
        if self._prunable_paths is not None and len(self._prunable_vars) != len(self._prunable_paths):
            missing = set(self._prunable_paths) - {v.path for v in self._prunable_vars}
            raise ValueError(f"prunable variables {sorted(missing)} are not trainable variables of this model")
        # Weights of the best validation loss since the last pruning: pruning rewinds to them.
        self.best_weights = [self.add_variable_from_reference(v, "best") for v in var_list]
        self.best_state = [self.add_variable(s, name=f"best_state_{i}")
                           for i, s in enumerate(self._rewound_shapes or [])]
        self.remember_best()

    # -- the update -----------------------------------------------------------------------------
    def update_step(self, gradient, variable, learning_rate):
        self.base_optimizer.update_step(gradient, variable, learning_rate)
        index = self._mask_index.get(self._var_key(variable))
        if index is None:
            return
        if type(gradient).__name__ == "IndexedSlices":  # TensorFlow's sparse gradients (embeddings)
            import tensorflow as tf

            gradient = tf.convert_to_tensor(gradient)
        gradient = ops.cast(gradient, variable.dtype)
        lmbda = ops.cast(self._lmbda, variable.dtype)
        # w * mask * (1 - lmbda * insensitivity): the sensitivity step and the mask in one write,
        # the same expression as the Keras 2 optimizer.
        insensitivity = ops.relu(ops.subtract(1.0, ops.abs(gradient)))
        self.assign(variable, ops.multiply(ops.multiply(variable, self.masks[index]),
                                          ops.subtract(1.0, ops.multiply(lmbda, insensitivity))))

    # -- pruning state (called by the callback, between steps) ----------------------------------
    def _cut_below(self, var, mask, threshold):
        value, old = ops.convert_to_numpy(var), ops.convert_to_numpy(mask)
        # float64, as the search compares: a threshold rounding onto a magnitude cuts the same.
        keep = (np.abs(value).astype(np.float64) >= threshold).astype(value.dtype) * old
        return keep, value * keep, int(np.sum(old - keep))  # before the writes, which may share memory

    def reset_masks_from_weights(self):
        """Masks := (w != 0): adopts the zeros of loaded weights as pruned."""
        for var, mask in zip(self._prunable_vars, self.masks):
            mask.assign(ops.cast(ops.not_equal(var, 0), mask.dtype))

    def _rewind_pairs(self):
        return zip(self._model_vars + list(self._rewound_state), self.best_weights + self.best_state)

    def get_config(self):
        config = super().get_config()
        config.pop("learning_rate", None)
        config.update(base_optimizer=keras.optimizers.serialize(self.base_optimizer),
                      lmbda=float(ops.convert_to_numpy(self._lmbda)), kinds=list(self.kinds),
                      prunable=self._prunable_paths,
                      rewound_shapes=None if self._rewound_shapes is None else [list(s) for s in self._rewound_shapes])
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["base_optimizer"] = keras.optimizers.deserialize(config["base_optimizer"],
                                                                custom_objects=custom_objects)
        return cls(**config)
