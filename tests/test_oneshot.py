import os

import numpy as np
import pytest

from kerasprune import _tfmot, oneshot, runs, sparsity, training
from kerasprune._keras import keras, tf
from kerasprune.errors import KerasPruneError


def small(**kw):
    base = dict(model="lenet300", dataset="mnist", epochs=1, max_train_examples=500,
                max_test_examples=200, lr=0.1, momentum=0.9, seed=0)
    base.update(kw)
    return training.TrainConfig(**base)


def half_mask(model, seed=0):
    """A random 50% mask over kernels, biases (all of LOBSTER's parameter kinds)."""
    rng = np.random.default_rng(seed)
    return {k: rng.random(v.shape) < 0.5 for k, v in _tfmot.masked_parameters(model).items()}


def values(model, kinds=_tfmot.ALL_KINDS):
    return {k: v.numpy() for k, v in _tfmot.masked_parameters(model, kinds).items()}


def test_masks_cover_kernels_and_biases_of_every_dense_layer():
    model = oneshot.build_model(small())
    assert list(_tfmot.masked_parameters(model)) == [
        "fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias", "logits/kernel", "logits/bias"]
    assert list(_tfmot.masked_parameters(model, _tfmot.KERNEL_ONLY)) == [
        "fc1/kernel", "fc2/kernel", "logits/kernel"]


def test_rewinding_restores_exactly_the_initial_values_on_surviving_weights(tmp_path):
    config = small(seed=3)
    initial = oneshot.build_model(config)
    path = str(tmp_path / "initial.weights.h5")
    initial.save_weights(path)
    mask = half_mask(initial)
    # A different seed builds different weights, which rewinding must overwrite.
    wrapped, _ = oneshot.prepare(small(seed=11), mask=mask, weights=path)
    got, want = values(wrapped), values(initial)
    for key, m in mask.items():
        np.testing.assert_array_equal(got[key][m], want[key][m])
        assert not np.any(got[key][~m])


def test_random_structure_keeps_exact_per_tensor_counts_at_new_positions():
    rng = np.random.default_rng(0)
    mask = {"a/kernel": rng.random((30, 20)) < 0.1, "a/bias": rng.random(20) < 0.7,
            "b/kernel": np.zeros((5, 4), bool)}
    first = oneshot.random_structure_mask(mask, seed=1)
    second = oneshot.random_structure_mask(mask, seed=2)
    assert oneshot.count_kept(first) == oneshot.count_kept(mask) == oneshot.count_kept(second)
    assert {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in mask.items()}
    assert not np.array_equal(first["a/kernel"], mask["a/kernel"])
    assert not np.array_equal(first["a/kernel"], second["a/kernel"])
    np.testing.assert_array_equal(oneshot.random_structure_mask(mask, seed=1)["a/kernel"], first["a/kernel"])


class MaskRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.masks, self.zero_violations = [], 0

    def on_train_batch_end(self, batch, logs=None):
        self.masks.append(_tfmot.get_masks(self.model))


def test_fixed_mask_never_changes_and_pruned_weights_stay_zero_through_training(monkeypatch):
    from kerasprune import training

    monkeypatch.setattr(training, "STEPS_PER_EXECUTION", 1)  # a batch-end callback after every step
    config = small(epochs=2, momentum=0.9)
    model = oneshot.build_model(config)
    mask = half_mask(model)
    wrapped, splits = oneshot.prepare(config, mask=mask)
    before = values(wrapped)
    recorder = MaskRecorder()
    wrapped.fit(splits.train, epochs=2, callbacks=_tfmot.callbacks() + [recorder], verbose=0)
    assert len(recorder.masks) == 10  # 450 training examples, batch 100, 2 epochs
    for masks in recorder.masks:
        for key in mask:
            np.testing.assert_array_equal(masks[key], mask[key])
    stripped = _tfmot.strip(wrapped)
    after = values(stripped)
    for key, m in mask.items():
        assert not np.any(after[key][~m]), key  # biases included: TF-MOT alone would not mask them
        assert np.mean(after[key][m] != before[key][m]) > 0.5, key  # the kept weights did train


def test_seeds_change_initialisation_but_not_the_mask():
    model = oneshot.build_model(small())
    mask = half_mask(model)
    runs = [oneshot.prepare(small(seed=s), mask=mask)[0] for s in (1, 2)]
    a, b = values(runs[0]), values(runs[1])
    for key in mask:
        np.testing.assert_array_equal(a[key] != 0, b[key] != 0) if "kernel" in key else None
        np.testing.assert_array_equal(_tfmot.get_masks(runs[0])[key], _tfmot.get_masks(runs[1])[key])
    assert not np.array_equal(a["fc1/kernel"], b["fc1/kernel"])


def test_a_resumed_retraining_reports_the_seconds_of_all_its_sessions(tmp_path, monkeypatch):
    # Figure 1's costs are sums of `seconds`: a run cut by a session's end and resumed must count the
    # epochs of its first session too, not only its last (which could be seconds long).
    import time

    config, run_dir = small(epochs=2), str(tmp_path / "run")

    class KilledAfterFirstEpoch(sparsity.SparsityLogger):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch == 1:
                raise KeyboardInterrupt  # a kill in epoch 1, after epoch 0 was recorded

    with monkeypatch.context() as patch:
        patch.setattr(sparsity, "SparsityLogger", KilledAfterFirstEpoch)
        with pytest.raises(KeyboardInterrupt):
            oneshot.retrain(config, run_dir, verbose=0)
    first = training.elapsed_seconds(run_dir)
    assert first > 0 and len(training.read_history(run_dir)) == 1
    # Pretend the first session was long, so the check does not hang on timing noise.
    runs.write_json(os.path.join(run_dir, runs.ELAPSED), {"seconds": first + 1000.0})
    started = time.time()
    result = oneshot.retrain(config, run_dir, verbose=0)
    second = time.time() - started
    assert result["epochs"] == 2
    assert first + 1000.0 < result["seconds"] <= first + 1000.0 + second


def test_global_magnitude_mask_prunes_the_smallest_entries_over_all_tensors():
    values_ = {"a": np.array([[0.5, -0.1], [3.0, 0.2]]), "b": np.array([-0.05, 1.0, -0.3])}
    mask = oneshot.global_magnitude_mask(values_, 3)
    np.testing.assert_array_equal(mask["a"], [[True, False], [True, False]])
    np.testing.assert_array_equal(mask["b"], [False, True, True])
    # Already-pruned entries count first, whatever their value (IMP's next round).
    current = {"a": np.array([[False, True], [True, True]]), "b": np.ones(3, bool)}
    mask = oneshot.global_magnitude_mask(values_, 2, current=current)
    np.testing.assert_array_equal(mask["a"], [[False, True], [True, True]])
    np.testing.assert_array_equal(mask["b"], [False, True, True])
    with pytest.raises(Exception, match="cannot prune 7 of 7"):
        oneshot.global_magnitude_mask(values_, 7)


def test_imp_levels_prune_20_percent_of_kept_kernels_and_hit_targets_exactly():
    # 1000 kernels + 10 other parameters; targets are % of all 1010 prunable parameters.
    levels = oneshot.imp_levels([50.0, 60.0], total=1010, kernels=1000, rate=0.2)
    assert levels == [(200, None), (360, None), (488, None), (505, 50.0), (590, None), (606, 60.0)]


def test_imp_levels_end_near_all_kernels_pruned_and_refuse_impossible_targets():
    # 10 kernels + 2 biases; 8 of 12 = 66.7%: from 2 kept, round(2 * 0.8) == 2 must not stall.
    levels = oneshot.imp_levels([100 * 9 / 12], total=12, kernels=10, rate=0.2)
    assert levels == [(2, None), (4, None), (5, None), (6, None), (7, None), (8, None), (9, 75.0)]
    with pytest.raises(KerasPruneError, match="more than all 10 kernel entries"):
        oneshot.imp_levels([90.0], total=12, kernels=10)
    with pytest.raises(KerasPruneError, match="rate"):
        oneshot.imp_levels([50.0], total=12, kernels=10, rate=1.0)


def test_an_imp_chain_folder_refuses_a_chain_for_other_targets(tmp_path):
    root = str(tmp_path / "imp")
    chain = oneshot.imp_levels([60.0], total=1010, kernels=1000)
    oneshot._check_chain(root, chain, 0.2)
    oneshot._check_chain(root, chain, 0.2)  # the same chain resumes
    other = oneshot.imp_levels([50.0, 60.0], total=1010, kernels=1000)
    with pytest.raises(KerasPruneError, match=r"made for other targets.*\[60.0\] at rate 0.2; now \[50.0, 60.0\]"):
        oneshot._check_chain(root, other, 0.2)
    longer = oneshot.imp_levels([60.0, 80.0], total=1010, kernels=1000)  # LOBSTER went further
    assert longer[:len(chain)] == chain
    oneshot._check_chain(root, longer, 0.2)
    with pytest.raises(KerasPruneError, match="made for other targets"):
        oneshot._check_chain(root, chain + [(900, None)], 0.2)


def test_an_imp_chain_resumes_from_its_last_finished_round_alone(tmp_path):
    """A chain carried to another machine keeps only its last finished round's weights
    (experiments/carry.py): growing it (LOBSTER went sparser) reads no earlier round, keeps the
    earlier rounds' results, and prunes on from that round's mask."""
    config = small()
    root, dense_dir = str(tmp_path / "imp"), str(tmp_path / "dense")
    first = oneshot.imp(config, root, dense_dir, [40.0], verbose=0)
    assert sorted(os.listdir(root)) == ["chain.json", "level_01", "level_02", "level_03"]
    for carried_without in ("level_01", "level_02"):
        os.remove(os.path.join(root, carried_without, oneshot.FINAL_WEIGHTS))
    assert len(runs.finished_rounds(root)) == 3
    seen, rounds = [], []
    grown = oneshot.imp(config, root, dense_dir, [40.0, 55.0], verbose=0,
                        on_level=lambda pct, result: seen.append(pct),
                        on_round=lambda index, total, result: rounds.append((index, total)))
    assert seen == [40.0, 55.0] and grown[40.0] == first[40.0]
    # Rounds 1-3 were done: only the rounds trained now are reported, out of the whole chain's.
    n = len(oneshot.chain_levels(config, [40.0, 55.0]))
    assert rounds == [(k, n) for k in range(4, n + 1)] and len(runs.finished_rounds(root)) == n

    def pruned(level):
        model = oneshot.build_model(config)
        model.load_weights(os.path.join(root, level, oneshot.FINAL_WEIGHTS))
        return {k: ~m for k, m in oneshot.mask_of(model, _tfmot.KERNEL_ONLY).items()}

    before, after = pruned("level_03"), pruned("level_04")
    assert all((after[k] >= before[k]).all() for k in before)  # pruned stays pruned
    kernels = 784 * 300 + 300 * 100 + 100 * 10
    levels = oneshot.imp_levels([40.0, 55.0], total=266610, kernels=kernels)
    assert levels[2] == (round(0.4 * 266610), 40.0) and levels[3] == (kernels - round(0.8 ** 3 * kernels), None)
    assert sum(int(m.sum()) for m in after.values()) == levels[3][0]


def test_kernel_target_turns_a_percentage_of_all_parameters_into_kernel_entries():
    model = oneshot.build_model(small())
    n, kernels = oneshot.kernel_target(model, 50.0)
    assert kernels == 784 * 300 + 300 * 100 + 100 * 10
    assert n == round(0.5 * 266610)


def test_kernel_target_can_keep_another_masks_kernel_count_and_says_what_is_wrong():
    model = oneshot.build_model(small())
    kernels = 784 * 300 + 300 * 100 + 100 * 10
    assert oneshot.kernel_target(model, kept_kernels=1807) == (kernels - 1807, kernels)
    with pytest.raises(KerasPruneError, match="^give one of pruned_params_pct and kept_kernels$"):
        oneshot.kernel_target(model, 50.0, kept_kernels=1807)
    with pytest.raises(KerasPruneError, match="^give one of"):
        oneshot.kernel_target(model)
    with pytest.raises(KerasPruneError, match=f"^cannot keep 0 of {kernels} kernel entries$"):
        oneshot.kernel_target(model, kept_kernels=0)


def test_tfmot_layer_oneshot_prunes_every_kernel_to_the_target_and_keeps_the_mask(tmp_path):
    config = small(epochs=1)
    dense = oneshot.build_model(config)
    path = str(tmp_path / "dense.weights.h5")
    dense.save_weights(path)
    result = oneshot.magnitude_oneshot(config, str(tmp_path / "run"), path, 60.0, scope="layer",
                                       verbose=0)
    model = oneshot.build_model(config)
    model.load_weights(str(tmp_path / "run" / oneshot.FINAL_WEIGHTS))
    kernel_sparsity = [np.mean(v == 0) for v in values(model, _tfmot.KERNEL_ONLY).values()]
    target = round(0.6 * 266610) / (784 * 300 + 300 * 100 + 100 * 10)
    assert kernel_sparsity == pytest.approx([target] * 3, abs=2e-3)
    # The kept kernel entries are the largest of the dense model's, layer by layer (TF-MOT's rule).
    dense_kernel = dense.get_layer("fc2").kernel.numpy()
    kept = model.get_layer("fc2").kernel.numpy() != 0
    assert np.abs(dense_kernel[kept]).min() >= np.abs(dense_kernel[~kept]).max()
    assert result["pruned_params_pct"] == pytest.approx(60.0, abs=0.3)
    assert os.listdir(tmp_path / "run" / "tensorboard")


def test_polynomial_decay_reaches_the_target_sparsity_with_the_final_weights(tmp_path):
    config = small(epochs=2)
    dense = oneshot.build_model(config)
    path = str(tmp_path / "dense.weights.h5")
    dense.save_weights(path)
    result = oneshot.polynomial_decay(config, str(tmp_path / "run"), path, 80.0, verbose=0)
    assert result["pruned_params_pct"] == pytest.approx(80.0, abs=0.3)
    assert result["method"] == "polynomial_decay"


def test_finished_retraining_returns_its_result_without_training_again(tmp_path, monkeypatch):
    config = small()
    model = oneshot.build_model(config)
    mask = half_mask(model)
    first = oneshot.random_reinit(config, str(tmp_path / "run"), mask, verbose=0)
    assert first["pruned_params_pct"] == pytest.approx(
        100 * sum((~m).sum() for m in mask.values()) / 266610, abs=1e-9)
    monkeypatch.setattr(oneshot, "prepare", lambda *a, **k: pytest.fail("trained again"))
    assert oneshot.random_reinit(config, str(tmp_path / "run"), mask, verbose=0) == first


def test_stripped_export_keeps_the_zeros(tmp_path):
    config = small()
    model = oneshot.build_model(config)
    mask = half_mask(model)
    wrapped, _ = oneshot.prepare(config, mask=mask)
    stripped = _tfmot.strip(wrapped)
    assert not any(isinstance(l, _tfmot.wrapper_class()) for l in stripped.layers)
    path = training.export_saved_model(stripped, str(tmp_path / "export"))
    loaded = keras.models.load_model(path)
    # Fresh biases are zero, so more than the masked entries are zero; the export keeps all of them.
    zeros = sum(int(np.sum(v == 0)) for v in values(stripped).values())
    assert zeros >= sum(int((~m).sum()) for m in mask.values())
    assert sparsity.report(loaded).pruned_params == zeros


def test_fixed_mask_schedule_survives_the_wrapper_config_round_trip():
    model = oneshot.build_model(small())
    wrapped = _tfmot.wrap(model)
    layer = wrapped.get_layer("prune_low_magnitude_fc1")
    with keras.utils.custom_object_scope({}):
        clone = type(layer).from_config(layer.get_config())
    assert isinstance(clone.pruning_schedule, _tfmot.FixedMask)
    assert not bool(clone.pruning_schedule(tf.constant(5, tf.int64))[0])
