"""kerasprune.runs: files written whole, a run folder's start (config.json first, other settings
refused), the finished markers, and config.json files as kerasprune wrote them before this module."""
import dataclasses
import json
import os

import numpy as np
import pytest

from kerasprune import runs
from kerasprune.config import RunSettings
from kerasprune.errors import KerasPruneError
from kerasprune.lobster.runner import LobsterConfig
from kerasprune.training import TrainConfig

# config.json of a LOBSTER run as the code before kerasprune.runs wrote it (LOBSTER runs in progress
# hold such files: they must resume). Byte for byte what that code wrote for these settings.
LOBSTER_CONFIG_JSON = """{
  "batch_size": 50,
  "data_dir": null,
  "dataset": "mnist",
  "epochs": 4,
  "good_margin": 0.01,
  "kinds": [
    "kernel",
    "bias",
    "norm"
  ],
  "lmbda": 0.0001,
  "lr": 0.3,
  "lr_plateau": false,
  "max_test_examples": 200,
  "max_train_examples": 600,
  "model": "lenet300",
  "momentum": 0.0,
  "optimizer": "sgd",
  "pwe": 1,
  "seed": 1,
  "split_seed": 0,
  "stop_at_pruned": null,
  "strategy": "default",
  "threshold_search": "reference",
  "tolerance": 0.05,
  "twt": 0.05,
  "val_fraction": 0.1,
  "weight_decay": 0.0
}"""
LOBSTER_SETTINGS = dict(model="lenet300", dataset="mnist", epochs=4, pwe=1, lr=0.3, seed=1, batch_size=50,
                        max_train_examples=600, max_test_examples=200)


def _dies(*args, **kwargs):
    raise OSError("killed before the rename")


# -- writing files whole ---------------------------------------------------------------------------
def test_a_write_that_dies_before_the_rename_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    runs.write_json(str(path), {"test_accuracy": 0.5})
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", _dies)
    with pytest.raises(OSError, match="killed before the rename"):
        runs.write_json(str(path), {"test_accuracy": 0.9})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]  # and no temporary file left behind


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "figure1.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="full disk"):
        with runs.atomic_path(str(path), suffix=".png") as tmp:
            assert tmp.endswith(".tmp.png") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("full disk")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["figure1.png"]


def test_save_weights_writes_a_whole_hdf5_file_and_a_failed_save_keeps_the_old_one(tmp_path):
    from kerasprune._keras import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = str(tmp_path / "final.weights.h5")
    runs.save_weights(model, path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"  # HDF5 although the temporary name ends otherwise
    before = open(path, "rb").read()

    class Dies:
        def save_weights(self, tmp):
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise OSError("killed mid-write")

    with pytest.raises(OSError, match="killed mid-write"):
        runs.save_weights(Dies(), path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["final.weights.h5"]


def test_a_folder_written_through_atomic_path_replaces_the_old_folder(tmp_path):
    path = tmp_path / "final"  # a SavedModel folder
    path.mkdir()
    (path / "old.pb").write_text("old")
    with runs.atomic_path(str(path)) as tmp:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
            f.write("new")
    assert os.listdir(path) == ["saved_model.pb"] and os.listdir(tmp_path) == ["final"]


def test_json_files_keep_their_format_and_synced_writes_fsync(tmp_path, monkeypatch):
    path = str(tmp_path / "x.json")
    runs.write_json(path, {"b": np.float32(1.5), "a": np.arange(2), "c": np.int64(2)})
    assert open(path).read() == '{\n  "a": [\n    0,\n    1\n  ],\n  "b": 1.5,\n  "c": 2\n}'
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    runs.write_atomic(str(tmp_path / "results.csv"), "method,seed\n", sync=True)
    assert len(synced) == 1 and (tmp_path / "results.csv").read_text() == "method,seed\n"


# -- starting a run ----------------------------------------------------------------------------------
def test_start_writes_config_json_first_and_refuses_other_settings_once_an_epoch_finished(tmp_path):
    out = str(tmp_path / "run")
    config = TrainConfig(epochs=2, lr=0.1)
    assert runs.start(out, config, "retrain") is None
    assert os.listdir(out) == [runs.CONFIG]
    assert runs.read_config(out) == dataclasses.asdict(config)
    (tmp_path / "run" / runs.HISTORY).write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(KerasPruneError) as refused:
        runs.start(out, TrainConfig(epochs=2, lr=0.05), "retrain")
    assert str(refused.value) == (f"{out} holds a run with another configuration (lr: 0.1 -> 0.05); "
                                  "rerun the same command to resume, or choose another --out")
    assert runs.start(out, TrainConfig(epochs=5, lr=0.1), "retrain") is None  # more epochs: resumable


def test_start_clears_a_folder_that_never_finished_an_epoch_and_returns_a_finished_result(tmp_path, capsys):
    out = str(tmp_path / "run")
    runs.start(out, TrainConfig(seed=5), "train")
    assert runs.start(out, TrainConfig(seed=0), "train") is None
    printed = capsys.readouterr().out
    assert "no finished epoch under the old configuration (seed: 5 -> 0); starting afresh" in printed
    assert runs.read_config(out)["seed"] == 0
    runs.mark_finished(out, "train", {"epochs_completed": 10})
    assert runs.start(out, TrainConfig(seed=0), "train") == {"epochs_completed": 10}


def test_each_stage_has_one_finished_marker(tmp_path):
    run = str(tmp_path)
    markers = {s: os.path.basename(runs.finished_marker(run, s)) for s in ("train", "lobster", "transfer", "retrain")}
    assert markers == {"train": "metrics.json", "lobster": "metrics.json", "transfer": "metrics.json",
                       "retrain": "result.json"}
    export_report = runs.export_path(run, None, "point_003") + ".export.json"
    assert runs.finished_marker(run, "export", tag="point_003") == export_report
    assert runs.finished(run, "retrain") is None
    runs.mark_finished(run, "retrain", {"test_error": 0.25})
    assert runs.finished(run, "retrain") == {"test_error": 0.25}


# -- run folders written before kerasprune.runs ------------------------------------------------------
def test_a_lobster_config_json_as_written_before_reads_back_and_resumes(tmp_path):
    out = tmp_path / "lobster"
    out.mkdir()
    (out / runs.CONFIG).write_text(LOBSTER_CONFIG_JSON)
    (out / runs.HISTORY).write_text("epoch,loss\n0,1.0\n")  # it had finished an epoch: no restart
    # It predates the init setting: its LeNet-300 was drawn with Keras's Glorot defaults.
    config = LobsterConfig(**LOBSTER_SETTINGS, init="glorot")
    assert runs.read_config(str(out), LobsterConfig) == config
    assert runs.read_config(str(out), RunSettings) == RunSettings(**config.settings())
    with pytest.raises(KerasPruneError, match=r"another configuration \(init: 'glorot' -> 'authors'\)"):
        runs.start(str(out), LobsterConfig(**LOBSTER_SETTINGS), "lobster")  # today's default init
    assert runs.start(str(out), config, "lobster", legacy={"threshold_search": "conservative"}) is None
    # Rewritten as it was, plus the init it ran with.
    assert json.loads((out / runs.CONFIG).read_text()) == {**json.loads(LOBSTER_CONFIG_JSON), "init": "glorot"}
    with pytest.raises(KerasPruneError, match=r"another configuration \(lmbda: 0.0001 -> 0.5\)"):
        runs.start(str(out), LobsterConfig(**{**LOBSTER_SETTINGS, "lmbda": 0.5, "init": "glorot"}), "lobster")
    resnet = {**json.loads(LOBSTER_CONFIG_JSON), "model": "resnet32", "dataset": "cifar10"}
    assert LobsterConfig.older_folder_settings(resnet)["init"] == "authors"  # its init since session 7


def test_the_model_of_a_run_folder_is_built_from_its_config(tmp_path):
    from kerasprune import models

    (tmp_path / runs.CONFIG).write_text(LOBSTER_CONFIG_JSON)
    model = models.build_for(runs.read_config(str(tmp_path), RunSettings), seed=0)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    same = models.build("lenet300", seed=0).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), same))
    with pytest.raises(KerasPruneError, match=f"{tmp_path / 'none'} is not a run folder: it has no config.json"):
        runs.read_config(str(tmp_path / "none"))


def test_a_transfer_resumes_through_another_checkouts_runs_symlink(tmp_path):
    """Each worktree has its own ``runs`` symlink to one shared folder: the source path a transfer
    recorded through one of them names the same source as the path through another."""
    from kerasprune.config import TransferConfig

    (tmp_path / "shared" / "source").mkdir(parents=True)
    for checkout in ("a", "b"):
        (tmp_path / checkout).mkdir()
        (tmp_path / checkout / "runs").symlink_to(tmp_path / "shared")
    out = tmp_path / "cell"
    out.mkdir()
    written = dataclasses.asdict(TransferConfig(source=str(tmp_path / "a" / "runs" / "source")))
    written["source"] = str(tmp_path / "a" / "runs" / "source")  # as the code before realpath wrote it
    runs.write_json(str(out / runs.CONFIG), written)
    (out / runs.HISTORY).write_text("epoch,loss\n0,1.0\n")  # an epoch finished: a refusal would be kept
    config = TransferConfig(source=str(tmp_path / "b" / "runs" / "source"))
    assert config.source == str((tmp_path / "shared" / "source").resolve())
    assert runs.start(str(out), config, "transfer", resumable=("epochs", "export_dir")) is None
    assert runs.read_config(str(out), TransferConfig).source == config.source
    with pytest.raises(KerasPruneError, match="another configuration"):  # a different source still is one
        (tmp_path / "shared" / "other").mkdir()
        runs.start(str(out), TransferConfig(source=str(tmp_path / "shared" / "other")), "transfer")
