"""kerasprune.transfer: MNIST-trained LeNet-300 sources transferred to real Fashion-MNIST subsets."""
import dataclasses
import json
import os
import time

import numpy as np
import pytest

from kerasprune import cli, config, models, runs, training, transfer
from kerasprune._keras import keras
from kerasprune.errors import KerasPruneError

# Small real-data runs: 300 training, 30 validation, 200 test images; PSPs on 200 training images.
TARGET = dict(dataset="fashion_mnist", epochs=1, max_train_examples=300, max_test_examples=200,
              psp_examples=200)
TARGET_FLAGS = ["--dataset", "fashion_mnist", "--epochs", "1", "--max-train-examples", "300",
                "--max-test-examples", "200", "--psp-examples", "200"]
BODY = ("fc1", "fc2")


@pytest.fixture(scope="module")
def dense_source(tmp_path_factory):
    """A ``kerasprune train`` run folder: LeNet-300, 1 epoch on 300 real MNIST images (3 steps).

    Glorot init: so barely trained a net's features are mostly its initial weights, and the
    authors' init (half Glorot's scale on fc1) leaves them too faint, once 80% pruned, for the
    30 probe steps below to beat chance by a clear margin (18.5% in one try)."""
    root = tmp_path_factory.mktemp("sources")
    out = str(root / "dense")
    training.train(training.TrainConfig(model="lenet300", dataset="mnist", epochs=1, init="glorot",
                                        max_train_examples=300,
                                        max_test_examples=100, export_dir=str(root / "saved_models")),
                   out, verbose=0)
    return out


@pytest.fixture(scope="module")
def pruned_source(dense_source, tmp_path_factory):
    """The dense source with 80% of its kernels and 30% of its biases zeroed, written as a sweep
    retraining run folder (config.json + final.weights.h5). Returns (folder, {key: zero mask})."""
    out = tmp_path_factory.mktemp("sources") / "pruned"
    out.mkdir()
    model = transfer.load_source(transfer.describe_source(dense_source))
    rng = np.random.default_rng(0)
    zeros = {}
    for layer in ("fc1", "fc2", "logits"):
        kernel, bias = model.get_layer(layer).get_weights()
        zeros[f"{layer}/kernel"] = rng.random(kernel.shape) < 0.8
        zeros[f"{layer}/bias"] = rng.random(bias.shape) < 0.3
        model.get_layer(layer).set_weights([np.where(zeros[f"{layer}/kernel"], 0, kernel),
                                            np.where(zeros[f"{layer}/bias"], 0, bias)])
    model.save_weights(str(out / transfer.FINAL_WEIGHTS))
    config = runs.read_json(os.path.join(dense_source, runs.CONFIG))
    runs.write_json(str(out / runs.CONFIG), config)
    return str(out), zeros


def small(source, **kw):
    return transfer.TransferConfig(source=source, **{**TARGET, **kw})


def final_model(out, num_classes=10):
    model = models.build("lenet300", input_shape=(28, 28, 1), num_classes=num_classes)
    model.load_weights(os.path.join(out, transfer.FINAL_WEIGHTS))
    return model


def test_linear_probe_trains_only_the_head_and_leaves_the_body_bit_for_bit(pruned_source, tmp_path):
    source_dir, _ = pruned_source
    config = small(source_dir, probe="linear", batch_size=10, momentum=0.9)  # 30 steps, to beat chance
    source = transfer.load_source(transfer.describe_source(source_dir))
    fit_model, _, mask = transfer.prepare(config, source, 10)
    assert mask is None
    assert [v.name for v in fit_model.trainable_variables] == ["logits/kernel:0", "logits/bias:0"]
    fresh_head = fit_model.get_layer("logits").get_weights()

    out = str(tmp_path / "linear")
    metrics = transfer.run(config, out, verbose=0)
    final = final_model(out)
    for name in BODY:
        for got, want in zip(final.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            assert np.array_equal(got, want), name  # bit for bit
    assert not np.array_equal(final.get_layer("logits").get_weights()[0], fresh_head[0])  # the head trained
    assert metrics["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert 60 < metrics["source_pruned_params_pct"] < 90
    assert metrics["source_body_pruned_params_pct"] == pytest.approx(
        100 * sum(int(np.sum(z)) for k, z in pruned_source[1].items() if not k.startswith("logits"))
        / sum(z.size for k, z in pruned_source[1].items() if not k.startswith("logits")))


def test_finetune_keeps_the_source_zeros_zero_and_trains_the_rest(pruned_source, tmp_path):
    source_dir, zeros = pruned_source
    out = str(tmp_path / "finetune")
    metrics = transfer.run(small(source_dir, probe="finetune", momentum=0.9), out, verbose=0)
    source = transfer.load_source(transfer.describe_source(source_dir))
    final = final_model(out)
    for name in BODY:
        kernel, bias = final.get_layer(name).get_weights()
        assert not np.any(kernel[zeros[f"{name}/kernel"]]) and not np.any(bias[zeros[f"{name}/bias"]]), name
        kept = ~zeros[f"{name}/kernel"]
        assert not np.array_equal(kernel[kept], source.get_layer(name).get_weights()[0][kept]), name
    assert metrics["probe"] == "finetune"
    assert metrics["pruned_params_pct"] > 60  # the body's zeros, the new dense head counted too


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated kill")


def test_a_killed_finetune_resumes_with_its_mask(pruned_source, tmp_path, monkeypatch):
    source_dir, zeros = pruned_source
    out = str(tmp_path / "killed")
    original = training.fit_and_record
    monkeypatch.setattr(training, "fit_and_record", lambda *a, callbacks=(), **kw: original(
        *a, callbacks=list(callbacks) + [_Crash()], **kw))
    with pytest.raises(RuntimeError, match="simulated kill"):
        transfer.run(small(source_dir, probe="finetune", epochs=2), out, verbose=0)
    monkeypatch.setattr(training, "fit_and_record", original)
    metrics = transfer.run(small(source_dir, probe="finetune", epochs=2), out, verbose=0)
    assert metrics["epochs_completed"] == 2
    # Epoch 1 ended but crashed before its backup: it is redone, and its row is read once.
    assert [int(r["epoch"]) for r in training.read_history(out)] == [0, 1]
    kernel = final_model(out).get_layer("fc1").get_weights()[0]
    assert not np.any(kernel[zeros["fc1/kernel"]])


def test_shots_draw_exactly_n_per_class_from_a_seed():
    config = small(os.getcwd(), shots=7, max_train_examples=2000)  # any existing folder: no source read
    labels = transfer.target_arrays(config).y_train
    first = transfer.draw_shots(labels, 7, seed=0, num_classes=10)
    assert np.array_equal(np.bincount(labels[first], minlength=10), np.full(10, 7))
    assert np.array_equal(first, transfer.draw_shots(labels, 7, seed=0, num_classes=10))
    assert not np.array_equal(first, transfer.draw_shots(labels, 7, seed=1, num_classes=10))
    splits, arrays, shots = transfer.load_target(config)  # shot_seed None: the draw of --seed
    assert np.array_equal(shots, first) and np.array_equal(arrays.y_train, labels)
    assert sum(int(y.shape[0]) for _, y in splits.train) == 70
    assert len(arrays.y_val) == 200  # validation stays the normal held-out split
    with pytest.raises(KerasPruneError, match="fewer than shots=500"):
        transfer.draw_shots(labels, 500, seed=0, num_classes=10)


def test_a_source_of_another_input_shape_is_a_one_line_error(tmp_path, capsys):
    source = tmp_path / "cifar_source"
    source.mkdir()
    models.build("lenet300", input_shape=(32, 32, 3), seed=0).save_weights(str(source / transfer.FINAL_WEIGHTS))
    runs.write_json(str(source / runs.CONFIG), {"model": "lenet300", "dataset": "cifar10"})
    out = tmp_path / "t"
    code = cli.main(["transfer", "--source", str(source), "--out", str(out)] + TARGET_FLAGS)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "takes inputs of shape (32, 32, 3)" in err and "(28, 28, 1)" in err
    assert not (out / runs.CONFIG).exists()


def test_cli_runs_end_to_end_returns_at_once_when_rerun_and_refuses_other_settings(
        pruned_source, tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["transfer", "--source", pruned_source[0], "--shots", "5", "--out", out] + TARGET_FLAGS
    assert cli.main(argv) == 0
    metrics = json.loads(open(os.path.join(out, runs.METRICS)).read())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["epochs_completed"] == 1
    assert metrics["train_examples"] == 50 and metrics["shots"] == 5
    assert metrics["psp"]["examples"] == 200 and metrics["psp_entropy_1"] > 0 and metrics["psp_entropy_2"] > 0
    assert os.path.isfile(os.path.join(metrics["saved_model"], "saved_model.pb"))
    assert os.listdir(os.path.join(out, runs.TENSORBOARD))
    history = open(os.path.join(out, runs.HISTORY)).read()
    assert "test_accuracy" in capsys.readouterr().out

    start = time.time()
    assert cli.main(argv) == 0
    assert time.time() - start < 5
    assert "already finished" in capsys.readouterr().out
    assert open(os.path.join(out, runs.HISTORY)).read() == history

    assert cli.main(argv + ["--lr", "0.05"]) == 2
    assert "another configuration (lr: 0.1 -> 0.05)" in capsys.readouterr().err


def test_lobster_sources_need_a_finished_point(dense_source, tmp_path):
    from kerasprune.lobster.points import weights_name, write_points

    run = tmp_path / "lobster"
    (run / "points").mkdir(parents=True)
    model = transfer.load_source(transfer.describe_source(dense_source))
    model.save_weights(str(run / weights_name(0)))
    runs.write_json(str(run / runs.CONFIG), {"model": "lenet300", "dataset": "mnist"})
    write_points(str(run), [{"point": 0, "pruned_params_pct": 0.0, "test_error": 0.2, "weights": weights_name(0)},
                            {"point": 1, "pruned_params_pct": 50.0, "weights": weights_name(1)}])
    with pytest.raises(KerasPruneError, match=r"choose an operating point with --point N \(finished points: \[0\]\)"):
        transfer.describe_source(str(run))
    with pytest.raises(KerasPruneError, match="no finished operating point"):
        transfer.describe_source(str(run), point=1)
    info = transfer.describe_source(str(run), point=0)
    assert (info.kind, info.model, info.dataset) == ("lobster", "lenet300", "mnist")
    loaded = transfer.load_source(info)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights()))
    with pytest.raises(KerasPruneError, match="--point is for LOBSTER"):
        transfer.describe_source(dense_source, point=0)


def test_an_unfinished_sweep_retraining_is_refused_and_a_finished_one_taken(pruned_source, tmp_path):
    # A retraining still running has checkpoints/best.weights.h5 but no result.json: a source would
    # silently be whatever epoch it had reached.
    sweep = tmp_path / "sweep"
    run = sweep / "runs" / "lottery_rewind" / "point_001" / "seed_0"
    (run / "checkpoints").mkdir(parents=True)
    runs.write_json(str(sweep / runs.SWEEP_CONFIG), {"model": "lenet300"})
    runs.write_json(str(run / runs.CONFIG), runs.read_json(os.path.join(pruned_source[0], runs.CONFIG)))
    with open(os.path.join(pruned_source[0], transfer.FINAL_WEIGHTS), "rb") as f:
        (run / "checkpoints" / "best.weights.h5").write_bytes(f.read())
    with pytest.raises(KerasPruneError, match=r"retraining of the sweep .*sweep that has not finished \(no result.json\)"):
        transfer.describe_source(str(run))
    (run / transfer.FINAL_WEIGHTS).write_bytes((run / "checkpoints" / "best.weights.h5").read_bytes())
    runs.mark_finished(str(run), "retrain", {"test_error": 0.1})
    info = transfer.describe_source(str(run))
    assert (info.kind, info.weights) == ("run", os.path.join(str(run), transfer.FINAL_WEIGHTS))


def test_replace_head_on_a_saved_model_source_is_seeded_and_shares_the_body(dense_source):
    saved = runs.read_json(os.path.join(dense_source, runs.METRICS))["saved_model"]
    info = transfer.describe_source(saved)
    assert info.kind == "saved_model"
    source = transfer.load_source(info)
    first, again, other = (transfer.replace_head(source, 3, seed=s) for s in (0, 0, 1))
    assert first.output_shape == (None, 3) and first.get_layer("logits").get_config()["units"] == 3
    assert first.get_layer("fc1") is source.get_layer("fc1")
    assert np.array_equal(first.get_layer("logits").get_weights()[0], again.get_layer("logits").get_weights()[0])
    assert not np.array_equal(first.get_layer("logits").get_weights()[0], other.get_layer("logits").get_weights()[0])


def test_transfer_config_has_the_shared_settings_and_its_own_checks():
    shared = {f.name for f in dataclasses.fields(config.RunSettings)}
    assert shared <= {f.name for f in dataclasses.fields(transfer.TransferConfig)}
    with pytest.raises(KerasPruneError, match="lr must be positive, got 0"):
        transfer.TransferConfig(source="x", lr=0)
    with pytest.raises(KerasPruneError, match="a transfer needs a source"):
        transfer.TransferConfig()
    with pytest.raises(KerasPruneError, match="probe must be one of linear, finetune, got 'full'"):
        transfer.TransferConfig(source="x", probe="full")
    with pytest.raises(KerasPruneError, match="mask_kinds must be a non-empty subset"):
        transfer.TransferConfig(source="x", mask_kinds=("weights",))
    assert transfer.TransferConfig(source="x").model is None  # the source's architecture
    args = cli.build_parser().parse_args(["transfer", "--source", "x", "--dataset", "mnist", "--out", "o"])
    assert shared - {"model"} <= set(vars(args))  # a flag for every shared setting but the model


def test_flags_are_made_from_the_config_fields_so_their_defaults_cannot_drift():
    def parse(*flags):
        return cli.build_parser().parse_args(["transfer", "--source", "x", "--dataset", "mnist", "--out", "o", *flags])

    fields = dataclasses.fields(transfer.TransferConfig)
    assert [f.name for f in fields if not f.metadata.get("help")] == []
    assert {f.name for f in fields} - {"model"} <= set(vars(parse()))  # a flag for every setting but the model
    assert config.from_args(transfer.TransferConfig, parse()) == transfer.TransferConfig(source="x", dataset="mnist")
    values = dict(point=3, probe="finetune", shots=5, shot_seed=7, mask_kinds=("kernel", "bias"), select="final",
                  epochs=4, seed=2, lr=0.05, psp_split="test", psp_examples=100, psp_pair_samples=50,
                  psp_max_exact_units=64, export_dir="e")
    args = parse("--point", "3", "--probe", "finetune", "--shots", "5", "--shot-seed", "7", "--mask-kinds",
                 "kernel, bias", "--select", "final", "--epochs", "4", "--seed", "2", "--lr", "0.05",
                 "--psp-split", "test", "--psp-examples", "100", "--psp-pair-samples", "50",
                 "--psp-max-exact-units", "64", "--export-dir", "e")
    assert config.from_args(transfer.TransferConfig, args) == transfer.TransferConfig(source="x", dataset="mnist",
                                                                                      **values)
    for bad in (["--probe", "full"], ["--shots", "0"], ["--psp-split", "val"]):
        with pytest.raises(SystemExit):
            parse(*bad)
    with pytest.raises(SystemExit):  # --source is required
        cli.build_parser().parse_args(["transfer", "--dataset", "mnist", "--out", "o"])


def test_a_source_is_rebuilt_with_its_runs_init_so_the_new_head_is_drawn_alike(tmp_path):
    """The new head copies the source classifier's initializers, and a source is rebuilt from its run
    folder before its weights are loaded: rebuilt with today's default init, a Glorot run (every run
    from before the init setting) would get heads drawn another way than the study's earlier cells."""
    from kerasprune.lobster import load_operating_point

    for init, bias in [(None, "Zeros"), ("glorot", "Zeros"), ("authors", "RandomUniform")]:
        folder = tmp_path / f"run_{init}"
        folder.mkdir()
        runs.write_json(str(folder / runs.CONFIG), {"model": "lenet5", "dataset": "mnist",
                                                    **({"init": init} if init else {})})
        model, _ = models.build_for_run(str(folder))
        head = transfer.classifier_layer(transfer.replace_head(model, 10, seed=0))
        assert type(head.bias_initializer).__name__ == bias, init
        # A LOBSTER folder's operating point too.
        model.save_weights(str(folder / "p0.weights.h5"))
        (folder / "operating_points.csv").write_text("point,pruned_params_pct,weights\n0,0.0,p0.weights.h5\n")
        point = load_operating_point(str(folder), 0)
        assert type(point.get_layer("logits").bias_initializer).__name__ == bias, init


def test_a_run_folder_without_model_or_dataset_is_a_one_line_error(tmp_path):
    runs.write_json(str(tmp_path / runs.CONFIG), {"dataset": "mnist"})
    with pytest.raises(KerasPruneError, match=r"^\S+config.json names no model: it is not the config"):
        models.build_for_run(str(tmp_path))
