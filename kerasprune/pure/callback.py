"""The LobsterPruning callback's bookkeeping, shared by Keras 2 and Keras 3 (no Keras import).

:class:`LobsterPruningBase` is what the two callbacks do alike: settings and config, the epoch rule,
the threshold search on NumPy copies, operating points and the end of a level. Each Keras version
subclasses it with its ``keras.callbacks.Callback`` and defines a few hooks (``_numpy``,
``_evaluate``, ``_report``, ``_uncompiled_twin``, ``_point_loss_and_lr``); Keras 2 also overrides
the file-writing ones for its chief and TensorBoard. One copy keeps the two callbacks in step.
"""
import math
import os

import numpy as np

from kerasprune.pure import points
from kerasprune.pure import schedule
from kerasprune.pure.schedule import SEARCH_RULES, Plateau, search_threshold, start_interval
from kerasprune.pure.sparsity import DEFAULT_KINDS, check_kinds


class LobsterPruningBase:
    """Mixin placed before ``keras.callbacks.Callback``: the callback's logic on ``self.model``, whose
    optimizer is a Lobster (``level``, ``threshold``, ``best_loss``... variables, ``prune_below``)."""

    def __init__(self, validation_data=None, test_data=None, pwe=schedule.DEFAULT_PWE, twt=schedule.DEFAULT_TWT,
                 good_margin=schedule.DEFAULT_GOOD_MARGIN, tolerance=schedule.DEFAULT_TOLERANCE,
                 kinds=DEFAULT_KINDS, run_dir=None, verbose=1,
                 threshold_search=schedule.DEFAULT_SEARCH_RULE, stop_at_pruned=None):
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
        self.kinds, self.run_dir, self.verbose = check_kinds(kinds), run_dir, verbose
        self.operating_points = []  # rows (dicts) of operating_points.csv
        self.searches = []  # SearchResult of every pruning of this session
        self._level_weights = None  # (level, weights) of the current level's best point, in memory
        self._twin = None  # optimizer-free copy of the model that point files are saved through

    def get_config(self):
        return dict(pwe=self.pwe, twt=self.twt, good_margin=self.good_margin, tolerance=self.tolerance,
                    kinds=list(self.kinds), run_dir=self.run_dir, verbose=self.verbose,
                    threshold_search=self.threshold_search, stop_at_pruned=self.stop_at_pruned)

    @classmethod
    def from_config(cls, config, validation_data=None, test_data=None):
        return cls(validation_data=validation_data, test_data=test_data, **config)

    # -- hooks of each Keras version -----------------------------------------------------------------
    def _numpy(self, variable):
        """The NumPy value of a model or optimizer variable."""
        raise NotImplementedError

    def _evaluate(self, data):
        """``model.evaluate`` of ``data`` as a dict (``loss``, accuracy...)."""
        raise NotImplementedError

    def _report(self):
        """The model's current :class:`~kerasprune.pure.sparsity.SparsityReport` over ``self.kinds``."""
        raise NotImplementedError

    def _uncompiled_twin(self):
        """A copy of the model without optimizer to save point weights through (smaller, faster files)."""
        raise NotImplementedError

    def _point_loss_and_lr(self, val_loss, logs):
        """The ``val_loss`` and ``lr`` cells of an operating point, in the types that side writes."""
        raise NotImplementedError

    def _save_point_weights(self, path, weights):
        points.save_weights_atomic(self._weights_twin(), path, weights)

    def _write_points(self):
        points.write_points(self.run_dir, self.operating_points)

    def _points_finished(self, rows):
        """Called (with ``run_dir``) once ``rows`` got their test metrics and the table is written."""

    def _searched(self, result, newly):
        """Called after a pruning at ``result.threshold`` that cut ``newly`` parameters."""

    def _float(self, variable):
        return float(self._numpy(variable))

    def _int(self, variable):
        return int(self._numpy(variable))

    # -- Keras hooks -------------------------------------------------------------------------------
    def _compiled_optimizer(self, lobster_class, description):
        """The model's optimizer, after one-line errors if it is no ``lobster_class`` or there is no
        validation data (called first in ``on_train_begin``)."""
        optimizer = self.model.optimizer
        if not isinstance(optimizer, lobster_class):
            raise ValueError(f"LobsterPruning needs the model compiled with a {description} optimizer, "
                             f"got {type(optimizer).__name__}")
        if self.validation_data is None:
            raise ValueError("LobsterPruning needs validation_data: the threshold search evaluates "
                             "the validation loss on it")
        return optimizer

    def _start(self, variables, weight_variables):
        """The end of ``on_train_begin``: the prunable ``variables`` the search cuts, which of them
        are "weight" tensors (the reference start statistics use PyTorch's kernels and BN gammas
        only), and the rows of an earlier session of ``run_dir``."""
        self._vars = list(variables)
        weights = {id(v) for v in weight_variables}
        self._is_weight = [id(v) in weights for v in self._vars]
        if self.run_dir:
            self.operating_points = points.read_operating_points(self.run_dir)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        opt = self.model.optimizer
        val_loss, val_acc = logs.get("val_loss"), accuracy_in(logs, "val_")
        if val_loss is None:  # fit without validation_data: measure it ourselves
            result = self._evaluate(self.validation_data)
            val_loss, val_acc = result["loss"], accuracy_in(result, "")
        report = self._report()
        logs.update(self._summaries(report, opt))

        level = self._int(opt.level)
        score = val_acc if val_acc is not None else -val_loss
        if score > self._float(opt.level_best_accuracy):
            opt.level_best_accuracy.assign(score)
            row_loss, lr = self._point_loss_and_lr(val_loss, logs)
            self._record_point(level, epoch, report, row_loss, val_acc, lr)
            if self.stop_at_pruned is not None and report.pruned_params_pct >= self.stop_at_pruned:
                self.stopped_at_pruned = self.model.stop_training = True
                return  # no pruning past the target: the point just recorded is the run's last

        plateau = Plateau(self.pwe, self.good_margin, self._float(opt.best_loss), self._int(opt.bad_epochs))
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
        result = self.search(self._float(opt.best_loss))
        if result is not None:
            newly = opt.prune_below(result.threshold)
            opt.threshold.assign(result.threshold)
            opt.level.assign(self._int(opt.level) + 1)
            opt.level_best_accuracy.assign(-math.inf)
            self.searches.append(result)
            self._searched(result, newly)
            if self.verbose:
                pct = self._report().pruned_params_pct
                where = "" if epoch is None else f"epoch {epoch + 1}: "
                loss = "" if math.isnan(result.loss) else f"val loss {result.loss:.4f}, "
                print(f"LOBSTER {where}pruned {newly} parameters below T={result.threshold:.3g} "
                      f"({loss}bound {result.bound:.4f}, {len(result.trials)} evaluations, "
                      f"{self.threshold_search} rule); {pct:.2f}% pruned, level {self._int(opt.level)}")
        opt.best_loss.assign(math.inf)
        opt.bad_epochs.assign(0)
        return result

    def search(self, val_loss):
        """The threshold search on the current weights (left unchanged); ``val_loss`` is theirs."""
        originals = [self._numpy(v) for v in self._vars]
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

    # -- operating points --------------------------------------------------------------------------
    def _record_point(self, level, epoch, report, val_loss, val_acc, lr):
        threshold = self._float(self.model.optimizer.threshold)
        row = points.point_row(level, epoch, report, val_loss, val_acc, threshold, lr)
        self.operating_points = [r for r in self.operating_points if r["point"] != level] + [row]
        self._level_weights = (level, self.model.get_weights())
        if self.run_dir:
            self._save_point_weights(os.path.join(self.run_dir, row["weights"]), self._level_weights[1])
            self._write_points()

    def _finish_level(self):
        """Measures the test metrics of points that lack them (the current level's; after a kill,
        possibly older ones, read from disk) and rewrites the table."""
        level = self._int(self.model.optimizer.level)
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
            acc = accuracy_in(result, "")
            row.update(test_loss=result["loss"], test_error=math.nan if acc is None else 1.0 - acc)
        self.model.set_weights(current)
        if self.run_dir:
            self._write_points()
            self._points_finished(todo)

    def _weights_twin(self):
        if self._twin is None:
            self._twin = self._uncompiled_twin()
        return self._twin

    def _summaries(self, report, opt):
        """The values added to the epoch logs (so CSVLogger and TensorBoard record them)."""
        out = {"pruned_params_pct": report.pruned_params_pct,
               "pruned_neurons_pct": report.pruned_neurons_pct,
               "pruned_neurons_ref_pct": report.pruned_neurons_ref_pct,
               "threshold": self._float(opt.threshold), "lmbda": self._float(opt.lmbda),
               "pruning_level": self._int(opt.level)}
        out.update({f"pruned_params_pct/{k}": v for k, v in report.per_layer.items()})
        out.update({f"pruned_neurons_pct/{k}": v for k, v in report.per_layer_neurons.items()})
        return out


def accuracy_in(logs, prefix):
    """The accuracy in ``logs`` (``accuracy``/``acc``/``sparse_categorical_accuracy``...), or None;
    ``prefix`` ``"val_"`` reads the validation one, ``""`` the other."""
    for key, value in logs.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is not None and (name in ("accuracy", "acc") or name.endswith("_accuracy")):
            if prefix or not key.startswith("val_"):
                return float(value)
    return None
