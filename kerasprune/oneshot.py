"""One-shot pruning baselines and retraining with a fixed mask, on TF-MOT's pruning wrappers.

Masks are ``{key: bool array}`` over :func:`kerasprune._tfmot.masked_parameters` (True = kept); their
maths (``mask_of``, ``random_structure_mask``, ``global_magnitude_mask``, ...) is in
:mod:`kerasprune.masks`, importable from here too.
Every method trains in a run folder (``training.fit_and_record``: TensorBoard, history, best
checkpoint, BackupAndRestore), started as every run is (:func:`kerasprune.runs.start`: ``config.json``
first, other settings refused) and finished by writing ``result.json`` there; calling it again on a
finished folder returns that result without training, and a killed run resumes.

Methods (the names are the ``method`` column of a sweep's results table):
  - ``lottery_rewind`` (Frankle & Carbin): a given mask, kept weights rewound to their initial values.
  - ``random_reinit`` (Liu et al.): a given mask, a fresh random initialisation per seed.
  - ``random_structure``: a random mask with the same number of kept entries in every parameter
    tensor as the given one, fresh initialisation.
  - ``magnitude_oneshot``: train dense, prune the kernels by magnitude once (``scope="layer"``:
    TF-MOT's per-layer ``ConstantSparsity``; ``scope="global"``: one threshold over all kernels, as
    open_lth does), fine-tune with the mask fixed.
  - ``imp``: iterative magnitude pruning with rewinding (lottery-ticket rounds of 20% of the kept
    kernels, global magnitude), until each target sparsity.
  - ``polynomial_decay``: TF-MOT's gradual PolynomialDecay schedule (Zhu & Gupta) from the dense
    model to the target sparsity, per layer.
Fixed-mask methods mask kernels, biases and BatchNorm gamma/beta (all of LOBSTER's zeros stay
zeros); magnitude methods prune kernels only, as TF-MOT's registry and open_lth do.
"""
import functools
import json
import os
import time

import numpy as np

from kerasprune import _tfmot, data, models, optimizers, runs, sparsity, training
from kerasprune._keras import keras
from kerasprune.distribute import get_strategy, is_chief
from kerasprune.errors import KerasPruneError
from kerasprune.masks import (count_kept, global_magnitude_mask, kernel_target,  # noqa: F401  (old home)
                              mask_of, prunable_counts, random_structure_mask)

RESULT = runs.RESULT  # written last: its presence means the run finished
FINAL_WEIGHTS = runs.FINAL_WEIGHTS  # the stripped model's weights (pruned entries exactly zero)
METHODS = ("lottery_rewind", "random_reinit", "random_structure", "magnitude_oneshot", "imp",
           "polynomial_decay")


# ---------------------------------------------------------------------------------------------
# Running one retraining.

def build_model(config, strategy=None):
    """The config's model (:func:`kerasprune.models.build_for`), initialised from ``config.seed``,
    built in the strategy's scope."""
    strategy = strategy or get_strategy(config.strategy)
    with strategy.scope():
        return models.build_for(config, seed=config.seed)


def build(config, strategy=None):
    """``(model, splits)``: :func:`build_model` and the config's data (shuffled by ``config.seed``)."""
    keras.utils.set_random_seed(config.seed)
    return build_model(config, strategy), load_data(config)


def load_data(config):
    """The config's ``DatasetSplits``, as ``data.load`` makes them, from arrays read once per
    process (a sweep retrains hundreds of times on the same data)."""
    arrays = _arrays(config.dataset, config.data_dir, config.val_fraction, config.split_seed)
    dspec = data.spec(config.dataset, config.data_dir)
    return data.splits_from_arrays(arrays, dspec, config.batch_size, shuffle_seed=config.seed,
                                   max_train_examples=config.max_train_examples,
                                   max_test_examples=config.max_test_examples, val_fraction=config.val_fraction)


@functools.lru_cache(maxsize=4)
def _arrays(dataset, data_dir, val_fraction, split_seed):
    return data.load_arrays(dataset, data_dir=data_dir, val_fraction=val_fraction, split_seed=split_seed)


def read_result(run_dir):
    """What a finished retraining (or dense run) in ``run_dir`` recorded, or None."""
    return runs.finished(run_dir, "retrain")


def prepare(config, mask=None, weights=None, schedule=None, kinds=_tfmot.ALL_KINDS):
    """``(wrapped compiled model, splits)`` ready to retrain: see :func:`retrain` for the arguments."""
    model, splits = build(config)
    if weights is not None:
        model.load_weights(weights)
    wrapped = _tfmot.wrap(model, schedule=schedule, kinds=kinds)
    if mask is not None:
        _tfmot.set_masks(wrapped, mask)
    with wrapped.distribute_strategy.scope():
        training.compile_model(wrapped, config.make_optimizer())
    return wrapped, splits


def retrain(config, run_dir, mask=None, weights=None, schedule=None, kinds=_tfmot.ALL_KINDS,
            select="best", extra=None, verbose="auto"):
    """Trains ``config.model`` inside TF-MOT wrappers in ``run_dir`` and returns its result dict.

    Args:
      config: a ``training.TrainConfig`` (``epochs`` = retraining epochs; ``seed`` = init and data
        order).
      mask: ``{key: bool}`` written into the wrappers before training (None: TF-MOT's all-ones).
      weights: a weights file (``save_weights`` of the unwrapped model) to start from instead of the
        seed's fresh initialisation (rewinding, or a trained dense model).
      schedule: TF-MOT pruning schedule of the wrappers; default ``FixedMask`` (mask never changes).
      kinds: which parameters the wrappers mask.
      select: ``"best"`` (checkpoint with the lowest validation loss) or ``"final"`` weights.
      extra: more fields for result.json.
    """
    done = runs.start(run_dir, config, "retrain")
    if done is not None:
        return done
    start = time.time() - training.elapsed_seconds(run_dir)  # a resumed run counts its earlier sessions
    wrapped, splits = prepare(config, mask, weights, schedule, kinds)
    history, _ = training.fit_and_record(wrapped, splits, run_dir, config.epochs,
                                         callbacks=_tfmot.callbacks() + [sparsity.SparsityLogger()],
                                         verbose=verbose)
    best = runs.run_file(run_dir, runs.BEST_WEIGHTS)
    if select == "best" and os.path.isfile(best):
        wrapped.load_weights(best)
    final = _tfmot.strip_shared(wrapped)
    training.compile_model(final, optimizers.make_optimizer(config.optimizer, config.lr))
    test = training.evaluate(final, splits.test)
    val = training.evaluate(final, splits.validation)
    rep = sparsity.report(final)
    result = dict(
        test_error=1.0 - test["accuracy"], test_loss=test["loss"],
        val_error=1.0 - val["accuracy"], val_loss=val["loss"],
        pruned_params_pct=rep.pruned_params_pct, pruned_neurons_pct=rep.pruned_neurons_pct,
        pruned_neurons_ref_pct=rep.pruned_neurons_ref_pct, epochs=len(history), seconds=time.time() - start, run_dir=run_dir,
        weights=FINAL_WEIGHTS, seed=config.seed)
    if mask is not None:
        kept = mask_of(final, tuple(k for k in kinds))
        broken = [k for k in mask if np.any(kept.get(k, mask[k]) & ~np.asarray(mask[k], bool))]
        if broken:  # a pruned entry came back: the mask was not held
            raise RuntimeError(f"masked parameters became nonzero during retraining: {broken}")
    result.update(extra or {})
    if is_chief():
        runs.save_weights(final, runs.run_file(run_dir, FINAL_WEIGHTS))
        runs.mark_finished(run_dir, "retrain", result)
    return result


# ---------------------------------------------------------------------------------------------
# The methods.

def lottery_rewind(config, run_dir, mask, initial_weights, **kw):
    """Frankle & Carbin: ``mask`` kept fixed, surviving weights rewound to ``initial_weights``."""
    return retrain(config, run_dir, mask=mask, weights=initial_weights,
                   extra={"method": "lottery_rewind"}, **kw)


def random_reinit(config, run_dir, mask, **kw):
    """Liu et al.: ``mask`` kept fixed, fresh initialisation from ``config.seed``."""
    return retrain(config, run_dir, mask=mask, extra={"method": "random_reinit"}, **kw)


def random_structure(config, run_dir, mask, mask_seed, **kw):
    """A random mask with ``mask``'s per-tensor kept counts (drawn from ``mask_seed``), fresh init."""
    return retrain(config, run_dir, mask=random_structure_mask(mask, mask_seed),
                   extra={"method": "random_structure", "mask_seed": mask_seed}, **kw)


def dense(config, run_dir, verbose="auto"):
    """Trains the dense model the magnitude baselines (and IMP) start from, in ``run_dir``.

    Returns ``(initial weights path, trained weights path)``; trained = best by validation loss.
    Lighter than ``training.train`` (no SavedModel export: a sweep trains one per seed).
    """
    initial = runs.run_file(run_dir, runs.INITIAL_WEIGHTS)
    trained = runs.run_file(run_dir, FINAL_WEIGHTS)
    if runs.start(run_dir, config, "retrain") is not None:
        return initial, trained
    start = time.time() - training.elapsed_seconds(run_dir)  # a resumed run counts its earlier sessions
    model, splits = build(config)
    if is_chief() and not os.path.isfile(initial):  # on resume, keep the true initial weights
        runs.save_weights(model, initial)
    with model.distribute_strategy.scope():
        training.compile_model(model, config.make_optimizer())
    history, _ = training.fit_and_record(model, splits, run_dir, config.epochs, verbose=verbose)
    best = runs.run_file(run_dir, runs.BEST_WEIGHTS)
    if os.path.isfile(best):
        model.load_weights(best)
    test = training.evaluate(model, splits.test)
    if is_chief():
        runs.save_weights(model, trained)
        runs.mark_finished(run_dir, "retrain", dict(
            test_error=1.0 - test["accuracy"], test_loss=test["loss"], epochs=len(history),
            seconds=time.time() - start, method="dense", seed=config.seed))
    return initial, trained


def _trained_kernels(config, weights):
    model = build_model(config)
    model.load_weights(weights)
    return model, {k: v.numpy() for k, v in _tfmot.masked_parameters(model, _tfmot.KERNEL_ONLY).items()}


def magnitude_oneshot(config, run_dir, dense_weights, pruned_params_pct=None, scope="global", kept_kernels=None,
                      **kw):
    """Prunes the trained dense model once by kernel magnitude and fine-tunes with the mask fixed.

    ``scope="layer"`` lets TF-MOT compute the masks (``ConstantSparsity`` at the first step only:
    the same fraction of every kernel); ``"global"`` uses one threshold over all kernels. The
    target is ``pruned_params_pct`` of all parameters or ``kept_kernels`` (:func:`kernel_target`).
    """
    if scope not in ("layer", "global"):
        raise KerasPruneError(f"unknown magnitude scope {scope!r}; valid: layer, global")
    done = runs.start(run_dir, config, "retrain")
    if done is not None:
        return done
    model, kernels = _trained_kernels(config, dense_weights)
    n, total = kernel_target(model, pruned_params_pct, kept_kernels)
    extra = {"method": "magnitude_oneshot", "variant": scope, "kept_kernels": total - n}
    if scope == "layer":
        return retrain(config, run_dir, weights=dense_weights, schedule=_tfmot.constant_once(n / total),
                       kinds=_tfmot.KERNEL_ONLY, extra=extra, **kw)
    mask = global_magnitude_mask(kernels, n)
    return retrain(config, run_dir, mask=mask, weights=dense_weights, kinds=_tfmot.KERNEL_ONLY,
                   extra=extra, **kw)


def polynomial_decay(config, run_dir, dense_weights, pruned_params_pct=None, end_fraction=0.7, kept_kernels=None,
                     **kw):
    """TF-MOT's gradual pruning from the trained dense model: sparsity rises as Zhu & Gupta's cubic
    from 0 to the target over the first ``end_fraction`` of the fine-tuning steps, mask updates
    every ~1/10 epoch, then training continues with the final mask. Final weights are used (earlier
    checkpoints are less sparse). The target as :func:`magnitude_oneshot`'s."""
    done = runs.start(run_dir, config, "retrain")
    if done is not None:
        return done
    model, _ = _trained_kernels(config, dense_weights)
    n, total = kernel_target(model, pruned_params_pct, kept_kernels)
    steps_per_epoch = _steps_per_epoch(config)
    end = max(1, int(end_fraction * config.epochs * steps_per_epoch))
    schedule = _tfmot.polynomial_decay(n / total, begin_step=0, end_step=end,
                                       frequency=max(1, min(steps_per_epoch // 10, end)))
    return retrain(config, run_dir, weights=dense_weights, schedule=schedule, kinds=_tfmot.KERNEL_ONLY,
                   select="final", extra={"method": "polynomial_decay", "kept_kernels": total - n}, **kw)


def _steps_per_epoch(config):
    n = len(_arrays(config.dataset, config.data_dir, config.val_fraction, config.split_seed).x_train)
    if config.max_train_examples:
        n = min(n, config.max_train_examples)
    return max(1, -(-n // config.batch_size))


def imp_levels(targets_pct, total, kernels, rate=0.2):
    """The kernel-pruned counts of an IMP chain: rounds pruning ``rate`` of the kept kernels, with
    each target (a % of all prunable parameters) inserted as an exact level. Returns a sorted list of
    ``(n_pruned, target_pct or None)``."""
    if not 0 < rate < 1:
        raise KerasPruneError(f"the IMP rate must be in (0, 1), got {rate}")
    targets = {int(round(p / 100.0 * total)): p for p in targets_pct}
    top = max(targets)
    if top >= kernels:
        raise KerasPruneError(f"{targets[top]:.2f}% of {total} parameters is more than all {kernels} "
                              "kernel entries")
    levels, kept = set(targets), kernels
    while True:
        # At least one more kernel per round: round(2 * 0.8) == 2 would otherwise never end.
        kept = min(kept - 1, int(round(kept * (1 - rate))))
        if kernels - kept >= top:
            break
        levels.add(kernels - kept)
    return [(n, targets.get(n)) for n in sorted(levels)]


def _check_chain(root, levels, rate):
    """Records the chain's levels in ``root/chain.json``, or checks them against the recorded ones.

    Round folders are numbered (``level_KK``); another set of targets (e.g. a sweep rerun with other
    points) gives another chain, whose round KK is a different experiment: reusing the folder would
    file its result under the wrong target. A chain that only grows (more, sparser targets) goes on."""
    path = os.path.join(root, runs.IMP_CHAIN)
    wanted = json.loads(json.dumps({"rate": rate, "levels": [[n, t] for n, t in levels]}))
    if os.path.isfile(path):
        recorded = runs.read_json(path)
        # A chain may grow (LOBSTER finished sparser points since): its rounds so far stay valid.
        grows = (recorded["rate"] == wanted["rate"]
                 and recorded["levels"] == wanted["levels"][:len(recorded["levels"])])
        if grows and is_chief() and recorded != wanted:
            runs.write_json(path, wanted)
        if not grows:
            raise KerasPruneError(
                f"the IMP chain in {root} was made for other targets or rate "
                f"({[t for _, t in recorded['levels'] if t is not None]} at rate {recorded['rate']}; now "
                f"{[t for _, t in levels if t is not None]} at rate {rate}); use another output folder")
    elif is_chief():
        os.makedirs(root, exist_ok=True)
        runs.write_json(path, wanted)


def chain_levels(config, targets_pct, rate=0.2):
    """The levels (rounds) of an IMP chain on ``config``'s model: :func:`imp_levels` of its counts."""
    total, kernels = prunable_counts(build_model(config))
    return imp_levels(targets_pct, total, kernels, rate)


def _level_dir(root, index):
    return os.path.join(root, f"level_{index:02d}")


def imp(config, root, dense_dir, targets_pct, rate=0.2, on_level=None, on_round=None, **kw):
    """Iterative magnitude pruning with rewinding to the dense run's initial weights.

    Each round prunes ``rate`` of the kept kernels (global magnitude of the previous round's
    trained weights), rewinds and retrains ``config.epochs``; levels for the targets are inserted
    exactly. Each round is a run folder ``root/level_KK``, so a killed chain resumes at its last
    unfinished round; of the finished rounds before it, only the last one's weights are read (a chain
    carried to another machine keeps only those). Returns ``{target_pct: result}``;
    ``on_level(target_pct, result)`` is called as each target level finishes, ``on_round(round,
    rounds, result)`` as each round trained by this call does (most rounds are at no target, and a
    chain is hours of them).
    """
    initial, trained = dense(config, dense_dir, verbose=kw.get("verbose", "auto"))
    levels = chain_levels(config, targets_pct, rate)
    _check_chain(root, levels, rate)
    out, previous, mask = {}, trained, None
    for index, (n, target) in enumerate(levels, start=1):
        level_dir = _level_dir(root, index)
        result = read_result(level_dir)
        if result is None:
            model, values = _trained_kernels(config, previous)
            if mask is None and index > 1:  # resumed after finished rounds: the last one's mask is its zeros
                mask = mask_of(model, _tfmot.KERNEL_ONLY)
            mask = global_magnitude_mask(values, n, current=mask)
            extra = {"method": "imp", "imp_round": index, "target_pct": target}
            result = retrain(config, level_dir, mask=mask, weights=initial, kinds=_tfmot.KERNEL_ONLY,
                             extra=extra, **kw)
            if on_round is not None:
                on_round(index, len(levels), result)
        else:
            mask = None  # read from this round's weights if a later round has to train
        previous = os.path.join(level_dir, FINAL_WEIGHTS)
        if target is not None:
            out[target] = result
            if on_level is not None:
                on_level(target, result)
    return out
