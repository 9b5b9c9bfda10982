"""LobsterPruning for Keras 3: plateau rule, threshold search, masks and operating points.

The rule, the search and the table are the Keras 2 callback's (:mod:`kerasprune.pure.schedule`,
:mod:`kerasprune.pure.points`); only the model access is Keras 3.
"""
import math
import os

import keras
import numpy as np

from kerasprune.keras3 import sparsity
from kerasprune.keras3.optimizer import Lobster
from kerasprune.pure import points
from kerasprune.pure.schedule import SEARCH_RULES, Plateau, search_threshold, start_interval


class LobsterPruning(keras.callbacks.Callback):
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
        self.validation_data, self.test_data = validation_data, test_data
        self.pwe, self.twt, self.good_margin, self.tolerance = pwe, twt, good_margin, tolerance
        self.kinds, self.run_dir, self.verbose = sparsity.check_kinds(kinds), run_dir, verbose
        self.threshold_search, self.stop_at_pruned = threshold_search, stop_at_pruned
        self.stopped_at_pruned = False
        self.operating_points = []  # rows (dicts) of operating_points.csv
        self.searches = []  # SearchResult of every pruning of this session
        self._level_weights = None  # (level, weights) of the current level's best point
        self._twin = None

    def get_config(self):
        return dict(pwe=self.pwe, twt=self.twt, good_margin=self.good_margin, tolerance=self.tolerance,
                    kinds=list(self.kinds), run_dir=self.run_dir, verbose=self.verbose,
                    threshold_search=self.threshold_search, stop_at_pruned=self.stop_at_pruned)

    @classmethod
    def from_config(cls, config, validation_data=None, test_data=None):
        return cls(validation_data=validation_data, test_data=test_data, **config)

    # -- Keras hooks -------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        opt = self.model.optimizer
        if not isinstance(opt, Lobster):
            raise ValueError("LobsterPruning needs the model compiled with a kerasprune.keras3.Lobster "
                             f"optimizer, got {type(opt).__name__}")
        if self.validation_data is None:
            raise ValueError("LobsterPruning needs validation_data: the threshold search evaluates "
                             "the validation loss on it")
        wanted = [v for _, v in sparsity.prunable_variables(self.model, self.kinds)]
        if not opt.built:  # fit() builds it before callbacks run; a hand-driven loop may not
            opt.set_prunable(wanted)
            opt.build(self.model.trainable_variables)
        # The search must cut exactly what prune_below() masks: the optimizer's variables.
        self._vars = opt.prunable_variables()
        if {id(v) for v in self._vars} != {id(v) for v in wanted}:
            raise ValueError(f"the optimizer masks {len(self._vars)} variables, the callback's kinds "
                             f"{self.kinds} select {len(wanted)}; give Lobster and LobsterPruning the same "
                             "kinds (or call optimizer.set_prunable() before fit)")
        weights = {id(v) for v in sparsity.weight_variables(self.model)}
        self._is_weight = [id(v) in weights for v in self._vars]
        # Rewinding to the best epoch restores BatchNorm's moving statistics too (not RNG states).
        opt.set_rewound_state([v for v in self.model.non_trainable_variables if "float" in str(v.dtype)])
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

        level = _int(opt.level)
        score = val_acc if val_acc is not None else -val_loss
        if score > _float(opt.level_best_accuracy):
            opt.level_best_accuracy.assign(score)
            self._record_point(level, epoch, report, val_loss, val_acc, logs.get("learning_rate"))
            if self.stop_at_pruned is not None and report.pruned_params_pct >= self.stop_at_pruned:
                self.stopped_at_pruned = self.model.stop_training = True
                return

        plateau = Plateau(self.pwe, self.good_margin, _float(opt.best_loss), _int(opt.bad_epochs))
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
        :class:`~kerasprune.pure.schedule.SearchResult` (None when no cut keeps the loss admissible)."""
        opt = self.model.optimizer
        self._finish_level()
        opt.rewind_to_best()
        result = self.search(_float(opt.best_loss))
        if result is not None:
            newly = opt.prune_below(result.threshold)
            opt.threshold.assign(result.threshold)
            opt.level.assign(_int(opt.level) + 1)
            opt.level_best_accuracy.assign(-math.inf)
            self.searches.append(result)
            if self.verbose:
                pct = sparsity.report(self.model, self.kinds).pruned_params_pct
                where = "" if epoch is None else f"epoch {epoch + 1}: "
                print(f"LOBSTER {where}pruned {newly} parameters below T={result.threshold:.3g} "
                      f"(bound {result.bound:.4f}, {len(result.trials)} evaluations, {self.threshold_search} "
                      f"rule); {pct:.2f}% pruned, level {_int(opt.level)}")
        opt.best_loss.assign(math.inf)
        opt.bad_epochs.assign(0)
        return result

    def search(self, val_loss):
        """The threshold search on the current weights (left unchanged); ``val_loss`` is theirs."""
        originals = [keras.ops.convert_to_numpy(v) for v in self._vars]
        magnitudes = np.concatenate([np.abs(o[o != 0]).ravel() for o in originals])
        rule = self.threshold_search
        start = start_interval([o for o, w in zip(originals, self._is_weight) if w or rule != "reference"], rule)

        def loss_at(threshold):
            for var, value in zip(self._vars, originals):
                cut = np.abs(value).astype(np.float64) < threshold  # float64, as prune_below compares
                var.assign(np.where(cut, np.zeros_like(value), value))
            return self._evaluate(self.validation_data)["loss"]

        try:
            if start is None:
                return None
            return search_threshold(loss_at, magnitudes, val_loss, self.twt, self.tolerance, rule=rule,
                                    start=start)
        finally:
            for var, value in zip(self._vars, originals):
                var.assign(value)

    def _evaluate(self, data):
        if isinstance(data, (tuple, list)) and len(data) == 2:
            return self.model.evaluate(*data, verbose=0, return_dict=True)
        return self.model.evaluate(data, verbose=0, return_dict=True)

    # -- operating points --------------------------------------------------------------------------
    def _record_point(self, level, epoch, report, val_loss, val_acc, lr):
        opt = self.model.optimizer
        if lr is None:
            lr = _float(opt.learning_rate)
        row = dict(point=level, pruned_params_pct=report.pruned_params_pct,
                   pruned_neurons_pct=report.pruned_neurons_pct,
                   val_error=math.nan if val_acc is None else 1.0 - val_acc, val_loss=float(val_loss),
                   test_error=math.nan, test_loss=math.nan, epoch=epoch + 1,
                   weights=points.weights_name(level), pruned_params=report.pruned_params,
                   params=report.params, pruned_neurons=report.pruned_neurons, neurons=report.neurons,
                   threshold=_float(opt.threshold), lr=float(lr),
                   pruned_neurons_ref_pct=report.pruned_neurons_ref_pct,
                   pruned_neurons_ref=report.pruned_neurons_ref, neurons_ref=report.neurons_ref)
        self.operating_points = [r for r in self.operating_points if r["point"] != level] + [row]
        self._level_weights = (level, self.model.get_weights())
        if self.run_dir:
            points.save_weights_atomic(self._weights_twin(), os.path.join(self.run_dir, row["weights"]),
                                       self._level_weights[1])
            points.write_points(self.run_dir, self.operating_points)

    def _finish_level(self):
        """Measures the test metrics of points that lack them and rewrites the table."""
        level = _int(self.model.optimizer.level)
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
        if self.run_dir:
            points.write_points(self.run_dir, self.operating_points)

    def _weights_twin(self):
        """An uncompiled clone to save point weights through (a compiled model's file would also hold
        every optimizer variable)."""
        if self._twin is None:
            try:
                self._twin = keras.models.clone_model(self.model)
            except (ValueError, TypeError):  # subclassed models cannot be cloned
                self._twin = self.model
        return self._twin

    def _summaries(self, report, opt):
        out = {"pruned_params_pct": report.pruned_params_pct,
               "pruned_neurons_pct": report.pruned_neurons_pct,
               "pruned_neurons_ref_pct": report.pruned_neurons_ref_pct,
               "threshold": _float(opt.threshold), "lmbda": _float(opt.lmbda),
               "pruning_level": _int(opt.level)}
        out.update({f"pruned_params_pct/{k}": v for k, v in report.per_layer.items()})
        out.update({f"pruned_neurons_pct/{k}": v for k, v in report.per_layer_neurons.items()})
        return out


def _float(variable):
    return float(keras.ops.convert_to_numpy(variable))


def _int(variable):
    return int(keras.ops.convert_to_numpy(variable))


def _accuracy(logs, prefix):
    """The accuracy in ``logs`` (``accuracy``/``acc``/``*_accuracy``), or None."""
    for key, value in logs.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is not None and (name in ("accuracy", "acc") or name.endswith("_accuracy")):
            if prefix or not key.startswith("val_"):
                return float(value)
    return None
