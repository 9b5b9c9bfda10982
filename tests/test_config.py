"""The shared run settings: one name, one default and one check for every kind of run."""
import argparse
import dataclasses

import pytest

from kerasprune import config, sweep
from kerasprune.commands import _common
from kerasprune.errors import KerasPruneError
from kerasprune.lobster import LobsterConfig
from kerasprune.training import TrainConfig

SHARED = {f.name for f in dataclasses.fields(config.RunSettings)}


@pytest.mark.parametrize("cls", [TrainConfig, LobsterConfig, sweep.SweepConfig])
def test_every_config_has_the_shared_settings_and_checks(cls):
    assert SHARED <= {f.name for f in dataclasses.fields(cls)}
    with pytest.raises(KerasPruneError, match="lr must be positive, got 0"):
        cls(lr=0)
    with pytest.raises(KerasPruneError, match="batch_size must be >= 1"):
        cls(batch_size=0)
    with pytest.raises(KerasPruneError, match=r"val_fraction must be in \(0, 1\), got 0"):
        cls(val_fraction=0)
    with pytest.raises(KerasPruneError, match="weight_decay must be >= 0, got -0.1"):
        cls(weight_decay=-0.1)
    with pytest.raises(KerasPruneError, match="max_test_examples must be >= 1"):
        cls(max_test_examples=0)
    with pytest.raises(KerasPruneError, match="max_train_examples 4 leaves no validation example"):
        cls(max_train_examples=4)
    with pytest.raises(KerasPruneError, match="unknown dataset 'mnsit'; valid names are"):
        cls(dataset="mnsit")


def test_sweep_passes_every_shared_setting_to_its_training_runs():
    values = dict(model="lenet5", dataset="fashion_mnist", batch_size=50, lr=0.05, momentum=0.9,
                  weight_decay=1e-4, optimizer="rmsprop", val_fraction=0.2, split_seed=3, data_dir="/data",
                  max_train_examples=7, max_test_examples=9, strategy="one_device")
    assert set(values) == SHARED  # a new shared setting must be added to this test
    cfg = sweep.SweepConfig(**values, epochs=4).train_config(seed=2)
    assert cfg.settings() == values
    assert (cfg.seed, cfg.epochs) == (2, 4)
    assert sweep.SweepConfig(**values, dense_epochs=6).train_config(seed=1, epochs=6).epochs == 6


def test_cli_arguments_fill_the_shared_settings():
    parser = argparse.ArgumentParser()
    _common.add_training_arguments(parser)
    _common.add_data_arguments(parser)
    _common.add_run_arguments(parser)
    args = parser.parse_args(["--model", "lenet5", "--dataset", "mnist", "--lr", "0.01", "--out", "x",
                              "--max-train-examples", "100", "--weight-decay", "1e-4"])
    settings = config.settings_from_args(args)
    assert set(settings) == SHARED
    assert (settings["model"], settings["lr"], settings["max_train_examples"]) == ("lenet5", 0.01, 100)
    assert settings["weight_decay"] == 1e-4
    assert TrainConfig(**settings).settings() == settings
