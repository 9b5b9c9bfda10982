"""LobsterPruning for Keras 3: plateau rule, threshold search, masks and operating points.

The rule, the search, the table and the bookkeeping are the Keras 2 callback's
(:class:`kerasprune.pure.callback.LobsterPruningBase`); only the model access is Keras 3.
"""
import keras

from kerasprune.keras3 import sparsity
from kerasprune.keras3.optimizer import Lobster
from kerasprune.pure.callback import LobsterPruningBase


class LobsterPruning(LobsterPruningBase, keras.callbacks.Callback):
    """Prunes at plateaus of the validation loss and keeps one operating point per sparsity level.

    Use with a :class:`~kerasprune.keras3.Lobster` optimizer in ``model.fit(...,
    validation_data=...)``. The rule is Keras 2's :class:`kerasprune.lobster.LobsterPruning`: an
    epoch is good if its validation loss ``l < (1 + good_margin) * best``; after ``pwe``
    consecutive non-good epochs, rewind to the best weights, find the threshold ``T`` by the
    reference bisection (largest cut keeping ``l <= best * (1 + twt)``, start statistics over the
    "weight" tensors: kernels and BatchNorm gammas), prune every prunable ``|w| < T`` for good and
    start a new level. Per level, the epoch of best validation accuracy is an operating point
    (``operating_points`` and, with ``run_dir``, ``operating_points.csv`` and ``points/``, the
    columns of :data:`kerasprune.pure.points.COLUMNS`); its test metrics are measured when the level
    ends. Epoch logs gain ``pruned_params_pct``, ``pruned_neurons_pct``, ``pruned_neurons_ref_pct``,
    ``threshold``, ``lmbda`` and ``pruning_level``.

    Args:
      validation_data: ``(x, y)`` arrays or a dataset the threshold search evaluates the loss on.
      test_data: optional, for the operating points' test error.
      pwe, twt, good_margin, tolerance, threshold_search, stop_at_pruned, kinds, run_dir, verbose:
        as in Keras 2's callback (paper defaults: pwe 20, twt 0.05).
    """

    # -- Keras hooks -------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        opt = self._compiled_optimizer(Lobster, "kerasprune.keras3.Lobster")
        wanted = [v for _, v in sparsity.prunable_variables(self.model, self.kinds)]
        if not opt.built:  # fit() builds it before callbacks run; a hand-driven loop may not
            opt.set_prunable(wanted)
            opt.build(self.model.trainable_variables)
        # The search must cut exactly what prune_below() masks: the optimizer's variables.
        variables = opt.prunable_variables()
        if {id(v) for v in variables} != {id(v) for v in wanted}:
            raise ValueError(f"the optimizer masks {len(variables)} variables, the callback's kinds "
                             f"{self.kinds} select {len(wanted)}; give Lobster and LobsterPruning the same "
                             "kinds (or call optimizer.set_prunable() before fit)")
        # Rewinding to the best epoch restores BatchNorm's moving statistics too (not RNG states).
        opt.set_rewound_state([v for v in self.model.non_trainable_variables if "float" in str(v.dtype)])
        self._start(variables, sparsity.weight_variables(self.model))

    # -- hooks of LobsterPruningBase ---------------------------------------------------------------
    def _numpy(self, variable):
        return keras.ops.convert_to_numpy(variable)

    def _evaluate(self, data):
        if isinstance(data, (tuple, list)) and len(data) == 2:
            return self.model.evaluate(*data, verbose=0, return_dict=True)
        return self.model.evaluate(data, verbose=0, return_dict=True)

    def _report(self):
        return sparsity.report(self.model, self.kinds)

    def _uncompiled_twin(self):
        """An uncompiled clone (a compiled model's file would also hold every optimizer variable)."""
        try:
            return keras.models.clone_model(self.model)
        except (ValueError, TypeError):  # subclassed models cannot be cloned
            return self.model

    def _point_loss_and_lr(self, val_loss, logs):
        lr = logs.get("learning_rate")
        return float(val_loss), float(self._float(self.model.optimizer.learning_rate) if lr is None else lr)
