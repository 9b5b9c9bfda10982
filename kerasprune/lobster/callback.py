"""LobsterPruning: plateau detection, threshold search, mask update and operating points.

The logic is :class:`kerasprune.pure.callback.LobsterPruningBase`, shared with Keras 3; this module adds
the Keras 2 model access, the multi-worker chief rules, TensorBoard and the progression plot.
"""
import os

from kerasprune import sparsity
from kerasprune._keras import keras, tf
from kerasprune.distribute import chief_path, is_chief
from kerasprune.lobster import points
from kerasprune.lobster.optimizer import Lobster
from kerasprune.pure.callback import LobsterPruningBase


@keras.utils.register_keras_serializable(package="kerasprune")
class LobsterPruning(LobsterPruningBase, keras.callbacks.Callback):
    """Prunes at plateaus of the validation loss and keeps one operating point per sparsity level.

    Use with a :class:`~kerasprune.lobster.Lobster` optimizer and ``model.fit(...,
    validation_data=...)``. After each epoch (validation loss ``l``):

    - the epoch is good if ``l < (1 + good_margin) * best``; a new best is remembered (in the
      optimizer, so checkpoints keep it);
    - after ``pwe`` consecutive non-good epochs: rewind to the best weights, find by bisection the
      largest threshold ``T`` whose cut (every prunable ``|w| < T``) keeps the validation loss
      ``<= best * (1 + twt)`` (:func:`~kerasprune.lobster.schedule.search_threshold`), prune for
      good below it, and start a new sparsity level;
    - operating points: per level, the epoch with the best validation accuracy (weights, sparsity,
      validation metrics; test metrics are measured once the level ends) is kept in
      ``operating_points`` and, if ``run_dir`` is given, in its ``operating_points.csv`` and
      ``points/`` (see :mod:`kerasprune.lobster.points`).

    Epoch logs (so CSVLogger and TensorBoard record them) gain ``pruned_params_pct``,
    ``pruned_neurons_pct`` (total and ``/<layer>``), ``pruned_neurons_ref_pct``, ``threshold``,
    ``lmbda`` and ``pruning_level``.

    Args:
      validation_data: the validation dataset (the threshold search evaluates the loss on it).
      test_data: optional test dataset for the operating points' test error.
      pwe: plateau patience in epochs (paper: 20).
      twt: admissible relative increase of the validation loss per pruning (paper: 0.05).
      good_margin: an epoch is good if its loss is below ``(1 + good_margin) * best``.
      tolerance: fraction of the bound in the search's stop rule.
      threshold_search: ``reference`` (the authors' rule, default) or ``conservative`` (see
        :func:`~kerasprune.lobster.schedule.search_threshold`).
      stop_at_pruned: stop training once an operating point has at least this % of the parameters
        pruned (``stopped_at_pruned`` is then True); None trains for the whole budget.
      kinds: parameter kinds pruned and counted (see :func:`kerasprune.sparsity.prunable_variables`).
      run_dir: folder for the operating points (written by the chief only); None keeps them in memory.
      verbose: 1 prints one line per pruning.
    """

    _writer = None  # TensorBoard writer of operating points and threshold searches

    def on_train_begin(self, logs=None):
        optimizer = self._compiled_optimizer(Lobster, "kerasprune Lobster")
        variables = [v for _, v in sparsity.prunable_variables(self.model, self.kinds)]
        optimizer.set_prunable(variables)
        if not getattr(optimizer, "_built", False):
            # Rewinding to the best epoch restores BatchNorm's moving statistics too.
            optimizer.set_rewound_state(self.model.non_trainable_variables)
        self._start(variables, sparsity.weight_variables(self.model))

    # -- hooks of LobsterPruningBase ---------------------------------------------------------------
    def _numpy(self, variable):
        return variable.numpy()

    def _evaluate(self, dataset):
        # model.evaluate reuses the model's compiled test function: one graph for all evaluations.
        return self.model.evaluate(dataset, verbose=0, return_dict=True)

    def _report(self):
        return sparsity.report(self.model, self.kinds)

    def _uncompiled_twin(self):
        return points.weights_only_twin(self.model)

    def _point_loss_and_lr(self, val_loss, logs):
        return val_loss, logs.get("lr")  # as they are: the table has always written them so

    def _save_point_weights(self, path, weights):
        # Every worker saves (creating and writing variables may take collective ops under a
        # multi-worker strategy); only the chief's file is kept.
        with chief_path(path) as where:
            points.save_weights_atomic(self._weights_twin(), where, weights)

    def _write_points(self):
        if is_chief():
            points.write_points(self.run_dir, self.operating_points)

    def _points_finished(self, rows):
        if not is_chief():
            return
        points.plot_progression(self.run_dir, self.operating_points, title=self.model.name)
        for row in rows:  # step: the point's number (one per sparsity level)
            self._scalars(row["point"], {f"operating_point/{k}": row[k] for k in (
                "test_error", "val_error", "pruned_params_pct", "pruned_neurons_pct",
                "pruned_neurons_ref_pct") if row.get(k) is not None})

    def _searched(self, result, newly):
        if not (self.run_dir and is_chief()):
            return
        level = int(self.model.optimizer.level.numpy())  # step: the level the cut starts
        self._scalars(level, {
            "threshold_search/threshold": result.threshold, "threshold_search/bound": result.bound,
            "threshold_search/evaluations": len(result.trials), "threshold_search/pruned_now": newly})
        for i, (t, loss) in enumerate(result.trials):  # every bisection step, in order
            self._scalars(level * 100 + i, {"threshold_search/trial_threshold": t,
                                            "threshold_search/trial_loss": loss})

    def _scalars(self, step, values):
        """Writes ``values`` to ``RUN/tensorboard/lobster`` at ``step`` (operating points, searches)."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.run_dir, "tensorboard", "lobster"))
        with self._writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, float(value), step=int(step))
        self._writer.flush()
