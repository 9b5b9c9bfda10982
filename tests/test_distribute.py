"""kerasprune.distribute: strategy specs, chief detection, batch arithmetic, chief-only paths, and
same-result-as-one-device checks under MirroredStrategy on two logical CPU devices.

The two-device cases run in one subprocess (tests/_two_device_cases.py): TensorFlow can split the CPU
only before it initialises, and this pytest process has long initialised it.
"""
import argparse
import json
import os
import subprocess
import sys

import pytest

from kerasprune import cli, distribute
from kerasprune.errors import KerasPruneError

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------
# Specs and flags (no TensorFlow needed).

@pytest.mark.parametrize("spec, expected", [
    ("default", ("default", ())),
    ("", ("default", ())),
    ("mirrored", ("mirrored", ())),
    ("mirrored:/gpu:0,/gpu:1", ("mirrored", ("/gpu:0", "/gpu:1"))),
    ("mirrored: /cpu:0 , /cpu:1", ("mirrored", ("/cpu:0", "/cpu:1"))),
    ("one_device:/gpu:3", ("one_device", ("/gpu:3",))),
    ("multiworker", ("multiworker", ())),
    ("tpu:grpc://10.0.0.2:8470", ("tpu", ("grpc://10.0.0.2:8470",))),
])
def test_strategy_specs_parse_to_name_and_devices(spec, expected):
    assert distribute.parse_strategy(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("horovod", "unknown strategy 'horovod'; valid names are: default, one_device, mirrored"),
    ("multiworker:/gpu:0", "strategy 'multiworker' takes no device list"),
    ("mirrored:,", "names no devices"),
    ("one_device:/gpu:0,/gpu:1", "one_device takes exactly one device, got 2"),
])
def test_bad_strategy_specs_say_what_is_wrong(spec, message):
    with pytest.raises(KerasPruneError, match=message):
        distribute.parse_strategy(spec)
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        distribute.strategy_flag(spec)


def test_cli_rejects_an_unknown_strategy_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model", "lenet300", "--dataset", "mnist", "--strategy", "horovod",
                  "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "argument --strategy: unknown strategy 'horovod'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.fixture(autouse=True)
def no_strategy_made_yet(monkeypatch):
    """Each test starts as a process that has made no strategy (is_chief reads TF_CONFIG)."""
    monkeypatch.setattr(distribute, "_MULTIWORKER", None)


def test_a_stale_tf_config_does_not_silence_a_single_process_run(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert not distribute.is_chief()
    with pytest.warns(UserWarning, match="TF_CONFIG is set but the strategy is 'default'"):
        distribute.get_strategy("default")
    assert distribute.is_chief()
    monkeypatch.setattr(distribute, "_MULTIWORKER", None)
    with pytest.warns(UserWarning, match="strategy is 'mirrored'"):
        distribute.declare_strategy("mirrored")  # what sweep and export do before their first write
    assert distribute.is_chief()


def test_multiworker_without_or_with_a_broken_tf_config_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(KerasPruneError, match="needs TF_CONFIG"):
        distribute.get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(KerasPruneError, match="TF_CONFIG is not a valid cluster description"):
        distribute.get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}))
    with pytest.raises(KerasPruneError, match="KeyError: 'task'"):
        distribute.get_strategy("multiworker")


def test_naming_devices_the_machine_lacks_is_an_error_not_a_silent_cpu_fallback():
    from kerasprune._keras import tf

    have = len(tf.config.list_logical_devices("CPU"))  # TF is initialised: the CPU can't be split now
    with pytest.raises(KerasPruneError, match="device /gpu:98, /gpu:99 not found; this machine has: "):
        distribute.get_strategy("mirrored:/gpu:98,/gpu:99")
    with pytest.raises(KerasPruneError, match=f"{have + 1} CPU devices requested but TensorFlow was "
                                              f"initialised with {have}; split the CPU before"):
        distribute.get_strategy(f"mirrored:/cpu:0,/cpu:{have}")


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"worker": ["a:1"], "evaluator": ["e:1"]}, "task": {"type": "evaluator", "index": 0}},
     False),
])
def test_only_the_chief_or_worker_zero_without_a_chief_is_chief(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert distribute.is_chief() is chief


class _Replicas:
    def __init__(self, n):
        self.num_replicas_in_sync = n


def test_global_batch_is_per_replica_batch_times_replicas():
    assert distribute.per_replica_batch(100, _Replicas(4)) == 25
    assert distribute.global_batch(25, _Replicas(4)) == 100
    assert distribute.per_replica_batch(100) == 100  # the default strategy has one replica
    with pytest.raises(KerasPruneError, match="global batch 100 does not split evenly over 3 replicas"):
        distribute.per_replica_batch(100, _Replicas(3))


def test_chief_path_keeps_the_chiefs_file_and_deletes_a_workers_scratch_copy(tmp_path, monkeypatch):
    target = tmp_path / "out" / "model.weights.h5"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    with distribute.chief_path(str(target)) as where:
        assert where != str(target) and os.path.basename(where) == "model.weights.h5"
        with open(where, "w") as f:
            f.write("worker copy")
    assert not os.path.exists(where) and not os.path.exists(os.path.dirname(where))
    assert not target.exists()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with distribute.chief_path(str(target)) as where:
        assert where == str(target)


def test_data_sharded_pipelines_use_data_auto_sharding():
    from kerasprune._keras import tf

    ds = distribute.data_sharded(tf.data.Dataset.range(8).batch(4))
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [b.numpy().tolist() for b in ds] == [[0, 1, 2, 3], [4, 5, 6, 7]]


# ---------------------------------------------------------------------------------------------
# MirroredStrategy on two logical CPUs vs one device, same global batch.

@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    """Runs every case of tests/_two_device_cases.py once in a fresh process; returns its results."""
    out = tmp_path_factory.mktemp("two_devices")
    env = dict(os.environ, KERASPRUNE_SAVED_MODELS=str(out / "saved_models"))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_two_device_cases.py"), str(out)],
                          capture_output=True, text=True, timeout=420, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"case script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


def _case(results, name):
    result = results[name]
    assert result["ok"], f"case {name} raised:\n{result['error']}"
    return result


def test_mirrored_training_on_two_cpus_gives_the_single_device_weights(two_devices):
    r = _case(two_devices, "plain_training")
    assert r["replicas"] == 2 and r["per_replica_batch"] == 50
    assert r["moved_by_training"] > 0.01  # training really changed the weights (1000x the tolerance below)...
    assert r["max_weight_diff"] < 1e-5  # ...and both strategies changed them the same way
    assert r["test_loss"][0] == pytest.approx(r["test_loss"][1], rel=1e-5)
    assert r["epochs_completed"] == [1, 1]


def test_replica_sum_over_two_cpus_equals_the_numpy_sum(two_devices):
    r = _case(two_devices, "replica_sum")
    for key in ("sum_sq", "count"):
        assert r["mirrored"][key] == pytest.approx(r["numpy"][key], rel=1e-6)
        assert r["single"][key] == pytest.approx(r["numpy"][key], rel=1e-6)


def test_lobster_under_mirrored_strategy_gives_the_single_device_masks_and_weights(two_devices):
    r = _case(two_devices, "lobster")
    assert r["replicas"] == [1, 2]
    assert r["threshold"][0] is not None and r["threshold"][0] == pytest.approx(r["threshold"][1], rel=1e-6)
    assert r["pruned"][0] > 0 and r["pruned"][0] == r["pruned"][1]
    assert r["masks_equal"]  # the same parameters pruned, bit for bit
    assert r["pruned_weights_zero"]  # and they stayed zero through two more epochs of training
    assert r["max_weight_diff"] < 1e-5


def test_tfmot_fixed_mask_retraining_under_mirrored_strategy_matches_one_device(two_devices):
    r = _case(two_devices, "tfmot")
    assert r["masks_held"]
    assert r["pruned_params_pct"][0] == pytest.approx(r["pruned_params_pct"][1]) and r["pruned_params_pct"][0] > 30
    assert r["moved_by_training"] > 0.01
    assert r["max_weight_diff"] < 1e-5
    assert r["test_loss"][0] == pytest.approx(r["test_loss"][1], rel=1e-5)


def test_hessian_vector_product_under_mirrored_strategy_equals_the_single_device_one(two_devices):
    r = _case(two_devices, "hvp")
    assert r["max_abs"] > 0.1
    assert r["max_diff"] <= 1e-5 * r["max_abs"] + 1e-6


def test_psp_statistics_reduced_across_replicas_equal_the_single_device_ones(two_devices):
    r = _case(two_devices, "psp")
    assert r["examples"] == [200.0, 200.0]
    assert r["class_counts_equal"] and r["positive_equal"] and r["pairs_equal"]  # exact counts
    for one, two in zip(*r["sum_sq"]):
        assert one == pytest.approx(two, rel=1e-5)
    assert r["loss_sum"][0] == pytest.approx(r["loss_sum"][1], rel=1e-5)
