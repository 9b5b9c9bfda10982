"""LobsterPruning: plateau detection, threshold search, mask update and operating points."""
import math
import os

import numpy as np

from kerasprune import sparsity
from kerasprune._keras import keras
from kerasprune.distribute import chief_path, is_chief
from kerasprune.lobster import points
from kerasprune.lobster.optimizer import Lobster
from kerasprune.lobster.schedule import SEARCH_RULES, Plateau, search_threshold, start_interval


@keras.utils.register_keras_serializable(package="kerasprune")
class LobsterPruning(keras.callbacks.Callback):
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
    ``pruned_neurons_pct`` (total and ``/<layer>``), ``pruned_neurons_ref_pct``, ``threshold``, ``lmbda`` and ``pruning_level``.

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

    def __init__(self, validation_data=None, test_data=None, pwe=20, twt=0.05, good_margin=0.01,
                 tolerance=0.05, kinds=sparsity.DEFAULT_KINDS, run_dir=None, verbose=1,
                 threshold_search="reference", stop_at_pruned=None):
        super().__init__()
        if pwe < 1:
            raise ValueError(f"pwe must be >= 1 epoch, got {pwe}")
        if twt < 0:
            raise ValueError(f"twt must be >= 0, got {twt}")
        if threshold_search not in SEARCH_RULES:
            raise ValueError(f"threshold_search must be one of {', '.join(SEARCH_RULES)}, got {threshold_search!r}")
        self.threshold_search, self.stop_at_pruned = threshold_search, stop_at_pruned
        self.stopped_at_pruned = False
        self.validation_data, self.test_data = validation_data, test_data
        self.pwe, self.twt, self.good_margin, self.tolerance = pwe, twt, good_margin, tolerance
        self.kinds, self.run_dir, self.verbose = tuple(kinds), run_dir, verbose
        self.operating_points = []  # rows (dicts) of operating_points.csv
        self.searches = []  # SearchResult of every pruning of this session
        self._level_weights = None  # (level, weights) of the current level's best point, in memory
        self._twin = None  # optimizer-free copy of the model that point files are saved through
        self._writer = None  # TensorBoard writer of operating points and threshold searches

    def get_config(self):
        return dict(pwe=self.pwe, twt=self.twt, good_margin=self.good_margin, tolerance=self.tolerance,
                    kinds=list(self.kinds), run_dir=self.run_dir, verbose=self.verbose,
                    threshold_search=self.threshold_search, stop_at_pruned=self.stop_at_pruned)

    @classmethod
    def from_config(cls, config, validation_data=None, test_data=None):
        return cls(validation_data=validation_data, test_data=test_data, **config)

    # -- Keras hooks -------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if not isinstance(optimizer, Lobster):
            raise ValueError("LobsterPruning needs the model compiled with a kerasprune Lobster "
                             f"optimizer, got {type(optimizer).__name__}")
        if self.validation_data is None:
            raise ValueError("LobsterPruning needs validation_data: the threshold search evaluates "
                             "the validation loss on it")
        self._vars = [v for _, v in sparsity.prunable_variables(self.model, self.kinds)]
        # The reference's start statistics use PyTorch's "weight" tensors only: kernels, BN gammas.
        weights = {id(v) for v in sparsity.weight_variables(self.model)}
        self._is_weight = [id(v) in weights for v in self._vars]
        optimizer.set_prunable(self._vars)
        if not getattr(optimizer, "_built", False):
            # Rewinding to the best epoch restores BatchNorm's moving statistics too.
            optimizer.set_rewound_state(self.model.non_trainable_variables)
        if self.run_dir:
            self.operating_points = points.read_operating_points(self.run_dir)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        opt = self.model.optimizer
        val_loss, val_acc = logs.get("val_loss"), _accuracy(logs, "val_")
        if val_loss is None:  # fit without validation_data: measure it ourselves
            result = self._evaluate(self.validation_data)
            val_loss, val_acc = result["loss"], _accuracy(result, "")
        report = sparsity.report(self.model, self.kinds)
        logs.update(self._summaries(report, opt))

        level = int(opt.level.numpy())
        score = val_acc if val_acc is not None else -val_loss
        if score > float(opt.level_best_accuracy.numpy()):
            opt.level_best_accuracy.assign(score)
            self._record_point(level, epoch, report, val_loss, val_acc, logs.get("lr"))
            if self.stop_at_pruned is not None and report.pruned_params_pct >= self.stop_at_pruned:
                self.stopped_at_pruned = self.model.stop_training = True
                return  # no pruning past the target: the point just recorded is the run's last

        plateau = Plateau(self.pwe, self.good_margin, float(opt.best_loss.numpy()), int(opt.bad_epochs.numpy()))
        improved, plateaued = plateau.update(val_loss)
        if improved:
            opt.remember_best()
        opt.best_loss.assign(plateau.best)
        opt.bad_epochs.assign(plateau.bad_epochs)
        if plateaued:
            self.prune(epoch)

    def on_train_end(self, logs=None):
        self._finish_level()

    # -- pruning -----------------------------------------------------------------------------------
    def prune(self, epoch=None):
        """Rewinds to the best weights, searches the threshold and prunes below it; returns the
        :class:`SearchResult` (None when no cut keeps the loss admissible)."""
        opt = self.model.optimizer
        self._finish_level()
        opt.rewind_to_best()
        result = self.search(float(opt.best_loss.numpy()))
        if result is not None:
            newly = opt.prune_below(result.threshold)
            opt.threshold.assign(result.threshold)
            opt.level.assign_add(1)
            opt.level_best_accuracy.assign(-math.inf)
            self.searches.append(result)
            if self.run_dir and is_chief():  # step: the level the cut starts
                self._scalars(int(opt.level.numpy()), {
                    "threshold_search/threshold": result.threshold, "threshold_search/bound": result.bound,
                    "threshold_search/evaluations": len(result.trials), "threshold_search/pruned_now": newly})
                for i, (t, loss) in enumerate(result.trials):  # every bisection step, in order
                    self._scalars(int(opt.level.numpy()) * 100 + i, {"threshold_search/trial_threshold": t,
                                                                 "threshold_search/trial_loss": loss})
            if self.verbose:
                pct = sparsity.report(self.model, self.kinds).pruned_params_pct
                where = "" if epoch is None else f"epoch {epoch + 1}: "
                loss = "" if math.isnan(result.loss) else f"val loss {result.loss:.4f}, "
                print(f"LOBSTER {where}pruned {newly} parameters below T={result.threshold:.3g} "
                      f"({loss}bound {result.bound:.4f}, {len(result.trials)} evaluations, "
                      f"{self.threshold_search} rule); {pct:.2f}% pruned, level {int(opt.level.numpy())}")
        opt.best_loss.assign(math.inf)
        opt.bad_epochs.assign(0)
        return result

    def search(self, val_loss):
        """The threshold search on the current weights (left unchanged); ``val_loss`` is theirs."""
        originals = [v.numpy() for v in self._vars]
        magnitudes = np.concatenate([np.abs(o[o != 0]).ravel() for o in originals])
        rule = self.threshold_search
        start = start_interval([o for o, w in zip(originals, self._is_weight) if w or rule != "reference"], rule)

        def loss_at(threshold):
            for var, value in zip(self._vars, originals):
                # float64, as prune_below compares: NumPy 2 would compare a float32 array with a
                # Python float in float32, and a threshold that rounds onto a magnitude would
                # then keep here what prune_below cuts.
                cut = np.abs(value).astype(np.float64) < threshold
                var.assign(np.where(cut, np.zeros_like(value), value))
            return self._evaluate(self.validation_data)["loss"]

        try:
            if start is None:  # no non-zero weight tensor left to take the statistics from
                return None
            return search_threshold(loss_at, magnitudes, val_loss, self.twt, self.tolerance, rule=rule,
                                    start=start)
        finally:
            for var, value in zip(self._vars, originals):
                var.assign(value)

    def _evaluate(self, dataset):
        # model.evaluate reuses the model's compiled test function: one graph for all evaluations.
        return self.model.evaluate(dataset, verbose=0, return_dict=True)

    # -- operating points --------------------------------------------------------------------------
    def _record_point(self, level, epoch, report, val_loss, val_acc, lr):
        row = dict(point=level, pruned_params_pct=report.pruned_params_pct,
                   pruned_neurons_pct=report.pruned_neurons_pct,
                   val_error=math.nan if val_acc is None else 1.0 - val_acc, val_loss=val_loss,
                   test_error=math.nan, test_loss=math.nan, epoch=epoch + 1,
                   weights=points.weights_name(level), pruned_params=report.pruned_params,
                   params=report.params, pruned_neurons=report.pruned_neurons, neurons=report.neurons,
                   threshold=float(self.model.optimizer.threshold.numpy()), lr=lr,
                   pruned_neurons_ref_pct=report.pruned_neurons_ref_pct,
                   pruned_neurons_ref=report.pruned_neurons_ref, neurons_ref=report.neurons_ref)
        self.operating_points = [r for r in self.operating_points if r["point"] != level] + [row]
        self._level_weights = (level, self.model.get_weights())
        if self.run_dir:
            # Every worker saves (creating and writing variables may take collective ops under a
            # multi-worker strategy); only the chief's file is kept.
            with chief_path(os.path.join(self.run_dir, row["weights"])) as where:
                points.save_weights_atomic(self._weights_twin(), where, self._level_weights[1])
            if is_chief():
                points.write_points(self.run_dir, self.operating_points)

    def _finish_level(self):
        """Measures the test metrics of points that lack them (the current level's; after a kill,
        possibly older ones, read from disk) and writes table + plot."""
        level = int(self.model.optimizer.level.numpy())
        todo = [r for r in self.operating_points if math.isnan(r["test_error"])
                and (r["point"] == level or self.run_dir)]
        if not todo or self.test_data is None:
            return
        current = self.model.get_weights()
        for row in todo:
            if self._level_weights is not None and self._level_weights[0] == row["point"]:
                self.model.set_weights(self._level_weights[1])
            else:  # resumed run: the point is on disk
                twin = self._weights_twin()
                twin.load_weights(os.path.join(self.run_dir, row["weights"]))
                self.model.set_weights(twin.get_weights())
            result = self._evaluate(self.test_data)
            acc = _accuracy(result, "")
            row.update(test_loss=result["loss"], test_error=math.nan if acc is None else 1.0 - acc)
        self.model.set_weights(current)
        if self.run_dir and is_chief():
            points.write_points(self.run_dir, self.operating_points)
            points.plot_progression(self.run_dir, self.operating_points, title=self.model.name)
            for row in todo:  # step: the point's number (one per sparsity level)
                self._scalars(row["point"], {f"operating_point/{k}": row[k] for k in (
                    "test_error", "val_error", "pruned_params_pct", "pruned_neurons_pct",
                    "pruned_neurons_ref_pct") if row.get(k) is not None})

    def _scalars(self, step, values):
        """Writes ``values`` to ``RUN/tensorboard/lobster`` at ``step`` (operating points, searches)."""
        from kerasprune._keras import tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.run_dir, "tensorboard", "lobster"))
        with self._writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, float(value), step=int(step))
        self._writer.flush()

    def _weights_twin(self):
        if self._twin is None:
            self._twin = points.weights_only_twin(self.model)
        return self._twin

    def _summaries(self, report, opt):
        out = {"pruned_params_pct": report.pruned_params_pct,
               "pruned_neurons_pct": report.pruned_neurons_pct,
               "pruned_neurons_ref_pct": report.pruned_neurons_ref_pct,
               "threshold": float(opt.threshold.numpy()), "lmbda": float(opt.lmbda.numpy()),
               "pruning_level": int(opt.level.numpy())}
        out.update({f"pruned_params_pct/{k}": v for k, v in report.per_layer.items()})
        out.update({f"pruned_neurons_pct/{k}": v for k, v in report.per_layer_neurons.items()})
        return out


def _accuracy(logs, prefix):
    """The accuracy in ``logs`` (``accuracy``/``acc``/``sparse_categorical_accuracy``...), or None."""
    for key, value in logs.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is not None and (name in ("accuracy", "acc") or name.endswith("_accuracy")):
            if prefix or not key.startswith("val_"):
                return float(value)
    return None
