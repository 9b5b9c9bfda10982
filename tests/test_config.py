"""The shared run settings: one name, one default and one check for every kind of run."""
import dataclasses

import pytest

from kerasprune import cli, config, sweep
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
    args = cli.build_parser().parse_args(["train", "--model", "lenet5", "--dataset", "mnist", "--lr", "0.01",
                                          "--out", "x", "--max-train-examples", "100", "--weight-decay", "1e-4"])
    train_config = config.from_args(TrainConfig, args)
    assert SHARED <= set(vars(args))
    assert (train_config.model, train_config.lr, train_config.max_train_examples) == ("lenet5", 0.01, 100)
    assert train_config.weight_decay == 1e-4


@pytest.mark.parametrize("command, cls", [("train", TrainConfig), ("lobster", LobsterConfig)])
def test_flags_take_their_defaults_from_the_config_fields(command, cls):
    args = cli.build_parser().parse_args([command, "--model", "lenet300", "--dataset", "mnist", "--out", "x"])
    assert config.from_args(cls, args) == cls()  # every default in one place: the dataclass


def test_lobster_flags_spell_the_kinds_as_one_comma_separated_word():
    args = cli.build_parser().parse_args(["lobster", "--model", "lenet300", "--dataset", "mnist", "--out", "x",
                                          "--prune", "kernel, bias", "--stop-at-pruned", "98", "--lr-plateau"])
    lobster = config.from_args(LobsterConfig, args)
    assert (lobster.kinds, lobster.stop_at_pruned, lobster.lr_plateau) == (("kernel", "bias"), 98.0, True)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["lobster", "--model", "lenet300", "--dataset", "mnist", "--out", "x",
                                       "--pwe", "0"])


@pytest.mark.parametrize("cls", [TrainConfig, LobsterConfig, sweep.SweepConfig])
def test_every_setting_has_its_help_text_beside_it(cls):
    assert [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")] == []


def test_sweep_flags_override_the_file_only_when_given():
    args = cli.build_parser().parse_args(["sweep", "s.toml", "--out", "x", "--seeds", "3", "4"])
    assert (args.seeds, args.methods, args.points, args.strategy, args.data_dir) == ([3, 4], None, None, None, None)


def test_init_flag_and_its_choices():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--model", "lenet5", "--dataset", "mnist", "--out", "x", "--init", "glorot"])
    assert config.from_args(TrainConfig, args).init == "glorot"
    assert TrainConfig().init == LobsterConfig().init == "authors"  # the authors' code: PyTorch's default
    with pytest.raises(SystemExit):
        parser.parse_args(["lobster", "--model", "lenet5", "--dataset", "mnist", "--out", "x", "--init", "xavier"])
    with pytest.raises(KerasPruneError, match="init must be one of authors, glorot, he, got 'xavier'"):
        TrainConfig(init="xavier")
    with pytest.raises(SystemExit):  # a transfer's weights are its source's: there is nothing to draw
        parser.parse_args(["transfer", "--source", "s", "--dataset", "mnist", "--out", "x", "--init", "he"])


def _lobster_folder(path, **saved):
    import json

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model": "lenet300", "dataset": "mnist", "split_seed": 0,
                                                  "val_fraction": 0.1, **saved}))
    return str(path)


def test_a_sweep_draws_its_fresh_models_as_its_lobster_run_did(tmp_path):
    """A re-init is compared with a rewind of LOBSTER's initial weights: both must be drawn one way."""
    old = _lobster_folder(tmp_path / "old")  # written before the init setting: Glorot
    swept = sweep.SweepConfig(lobster_dir=old)
    assert (swept.init, swept.lobster.init, swept.train_config(0).init) == ("glorot", "glorot", "glorot")
    assert sweep.SweepConfig(lobster_dir=_lobster_folder(tmp_path / "new", init="he")).init == "he"
    assert sweep.SweepConfig().init == sweep.SweepConfig().lobster.init == "authors"  # it runs its own LOBSTER
    assert sweep.SweepConfig(lobster={"init": "glorot"}).train_config(1).init == "glorot"
    with pytest.raises(KerasPruneError, match=r"\[lobster\] init 'he' differs from the sweep's 'glorot'"):
        sweep.SweepConfig(init="glorot", lobster={"init": "he"})
    with pytest.raises(KerasPruneError,
                       match=r"other settings than this sweep \(init: 'glorot' there, 'authors' here\)"):
        sweep._check_same_setup(sweep.SweepConfig(lobster_dir=old, init="authors"), old)
    sweep._check_same_setup(swept, old)  # inherited: the same
