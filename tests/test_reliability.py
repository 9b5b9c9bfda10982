"""What a user's mistakes and a machine's accidents must not cost (docs/reliability.md): typos,
twin processes, damaged files, resumes. Each test names the issue-15 item it pins."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kerasprune import cli, runs, training
from kerasprune.errors import KerasPruneError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--max-train-examples", "200", "--max-test-examples", "100"]


def train_args(out, *extra):
    return ["train", "--model", "lenet300", "--dataset", "mnist", "--epochs", "1", *SMALL, "--out", str(out),
            *extra]


# -- 1. a typo never pins a folder -----------------------------------------------------------------
@pytest.mark.parametrize("typo", [["--model", "lenet999"], ["--optimizer", "adamm"]])
def test_a_typo_is_refused_before_anything_is_written(tmp_path, capsys, typo):
    out = tmp_path / "run"
    args = train_args(out)
    if typo[0] == "--model":
        args[args.index("--model") + 1] = typo[1]
    else:
        args += typo
    assert cli.main(args) == 2
    assert "unknown" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_without_a_finished_epoch_restarts_with_the_corrected_settings(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    # What a first attempt that died before its first epoch leaves: a config with other settings.
    runs.write_json(str(out / "config.json"), dict(model="lenet300", dataset="mnist", seed=5, lr=0.5))
    (out / "initial.weights.h5").write_bytes(b"stale")
    assert cli.main(train_args(out)) == 0
    assert "starting afresh" in capsys.readouterr().out
    assert runs.read_json(str(out / "config.json"))["seed"] == 0
    # Once an epoch is finished, other settings are refused as before.
    assert cli.main(train_args(out, "--lr", "0.05")) == 2
    assert "another configuration" in capsys.readouterr().err


def test_a_sweep_toml_typo_stops_before_lobster_runs(tmp_path, capsys):
    config = tmp_path / "typo.toml"
    config.write_text('model = "lenet30"\n')
    out = tmp_path / "sweep"
    assert cli.main(["sweep", str(config), "--out", str(out)]) == 2
    assert "unknown model 'lenet30'" in capsys.readouterr().err
    assert not (out / "lobster").exists()


def test_wrong_types_in_a_config_are_one_line_errors():
    from kerasprune import sweep

    with pytest.raises(KerasPruneError, match=r"epochs must be int, got '2' \(str\)"):
        sweep.SweepConfig(epochs="2")
    with pytest.raises(KerasPruneError, match="lr must be float or int, got True"):
        training.TrainConfig(lr=True)


# -- 2. one process per run folder -------------------------------------------------------------------
HOLD = "import sys, time; from kerasprune import runs\nwith runs.exclusive(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n"


def test_a_second_process_on_a_busy_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (train_args(out), ["lobster", "--model", "lenet300", "--dataset", "mnist", *SMALL,
                                          "--out", str(out)]):
            assert cli.main(command) == 2
            err = capsys.readouterr().err.strip()
            assert "in use" in err and f"pid {holder.pid}" in err and len(err.splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock
        holder.wait()
    with runs.exclusive(str(out)):
        pass


# -- 4. damaged files and bad arguments: one line, what and where ----------------------------------
def test_damaged_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model": "lenet3')
    with pytest.raises(KerasPruneError, match=f"{path} is not valid JSON"):
        runs.read_json(str(path))


def test_out_naming_a_file_and_zero_epochs_are_one_line_errors(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli.main(train_args(a_file)) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage line and one error line
        cli.main(train_args(tmp_path / "zero", "--epochs", "0"))
    assert exit_info.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()


def test_a_damaged_backup_stops_the_resume_with_what_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    backup = out / "backup" / "chief"
    backup.mkdir(parents=True)
    (backup / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-3"\n')
    (backup / "ckpt-3.index").write_bytes(b"\x00" * 40)
    (backup / "ckpt-3.data-00000-of-00001").write_bytes(b"\x00" * 10)
    with pytest.raises(KerasPruneError, match="backup .* is damaged .* cannot resume"):
        training.resume_epoch(str(out))


def test_a_damaged_operating_point_file_is_a_one_line_error_at_export(tmp_path):
    from kerasprune import export
    from kerasprune.lobster import LobsterConfig, run

    out = str(tmp_path / "lob")
    run(LobsterConfig(model="lenet300", dataset="mnist", epochs=1, max_train_examples=200,
                      max_test_examples=100), out, verbose=0)
    weights = os.path.join(out, "points", "point_000.weights.h5")
    with open(weights, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(KerasPruneError, match="point_000.weights.h5 cannot be read"):
        export.load_source(out, export.run_sources(out)[0])


def test_a_cut_short_operating_points_table_is_a_one_line_error(tmp_path):
    from kerasprune.lobster import read_operating_points, points

    points.write_points(str(tmp_path), [dict(point=0, pruned_params_pct=0.0, test_error=0.1, weights="w")])
    path = tmp_path / "operating_points.csv"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(KerasPruneError, match="operating_points.csv is damaged: line 2"):
        read_operating_points(str(tmp_path))


# -- 5. analyse on the data the models were trained on ------------------------------------------------
def test_analyze_takes_the_dataset_from_the_run_folders_and_refuses_a_contradicting_flag(tmp_path):
    from kerasprune.commands import analyze

    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "exports" / "g").mkdir(parents=True)
    (sweep_dir / "sweep_config.json").write_text(json.dumps({"dataset": "mnist"}))
    g = str(sweep_dir / "exports" / "g")
    assert analyze.choose_dataset(None, [g, g]) == "mnist"
    assert analyze.choose_dataset("mnist", [g, g]) == "mnist"
    with pytest.raises(KerasPruneError, match="--dataset fashion_mnist contradicts the models' own dataset 'mnist'"):
        analyze.choose_dataset("fashion_mnist", [str(sweep_dir), g])
    with pytest.raises(KerasPruneError, match="give --dataset"):
        analyze.choose_dataset(None, [str(tmp_path / "elsewhere")])


# -- 6. the promised Python -------------------------------------------------------------------------
def test_the_promised_python_is_the_one_running():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        promised = tomllib.load(f)["project"]["requires-python"]
    assert promised == ">=3.11" and sys.version_info >= (3, 11)
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "Python 3.11+" in f.read()


# -- 7. what the console and --help show ------------------------------------------------------------
def test_help_shows_defaults_and_the_console_line_has_no_per_layer_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "epochs to train (default: 10)" in text
    logs = {"loss": 1.0, "pruned_params_pct": 50.0, "pruned_params_pct/fc1": 60.0}
    training.ShortConsoleLine().on_epoch_end(0, logs)
    assert logs == {"loss": 1.0, "pruned_params_pct": 50.0}


def test_multi_line_examples_in_help_are_not_folded_into_one_line():
    import re

    for name, module in cli.command_modules().items():
        # A lone backslash at a line end inside a Python string joins the lines: "out       --flag".
        assert not re.search(r"\S {3,}--", module.DESCRIPTION), name


# -- 8. the same flags everywhere, and TensorBoard shows what the tables hold ---------------------------
def test_export_accepts_out_and_lobster_tensorboard_has_points_and_searches(tmp_path):
    from kerasprune.lobster import LobsterConfig, run

    args = cli.build_parser().parse_args(["export", "some_run", "--out", "exports_here"])
    assert args.export_dir == "exports_here"
    out = str(tmp_path / "lob")
    run(LobsterConfig(model="lenet300", dataset="mnist", epochs=4, pwe=1, lr=0.3, max_train_examples=400,
                      batch_size=20, max_test_examples=100), out, verbose=0)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(out, "tensorboard", "lobster"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"operating_point/test_error", "threshold_search/threshold", "threshold_search/trial_loss"} <= tags


# -- fault injection: kills at random moments, one of them in the middle of a write ------------------
LOBSTER_CLI = ["lobster", "--model", "lenet300", "--dataset", "mnist", "--epochs", "8", "--pwe", "1", "--lr", "0.3",
               "--batch-size", "20", "--max-train-examples", "400", "--max-test-examples", "100"]
# Dies in the middle of the k-th write of operating_points.csv: the temporary file is written, the
# rename never happens (what a kill inside write_points leaves).
DIE_IN_WRITE = """
import os, sys
import kerasprune.pure.points as points
calls = [0]
def dying_write(run_dir, rows):
    calls[0] += 1
    if calls[0] == int(os.environ["DIE_AT_WRITE"]):
        with open(os.path.join(run_dir, points.POINTS_CSV) + ".partial.tmp", "w") as f:
            f.write("point,pruned")
        os._exit(9)
    return original(run_dir, rows)
original = points.write_points
points.write_points = dying_write
import kerasprune.lobster.points as lobster_points
lobster_points.write_points = dying_write
from kerasprune import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _cli(args, env=None, code=None):
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "kerasprune", *args]
    return subprocess.Popen(argv, env={**os.environ, "KERASPRUNE_THREADS": "1", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after_epochs(out, epochs, seconds=240):
    """Starts the LOBSTER command and SIGKILLs it once ``history.csv`` has ``epochs`` more rows."""
    start_rows = _rows(out)
    child = _cli(LOBSTER_CLI + ["--out", out])
    deadline = time.time() + seconds
    while time.time() < deadline and child.poll() is None and _rows(out) < start_rows + epochs:
        time.sleep(0.05)
    child.kill()
    child.wait()


def _rows(out):
    path = os.path.join(out, "history.csv")
    return sum(1 for _ in open(path)) - 1 if os.path.isfile(path) else 0


@pytest.mark.slow
def test_lobster_killed_at_random_moments_ends_with_the_uninterrupted_table(tmp_path):
    import random

    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    assert _cli(LOBSTER_CLI + ["--out", whole]).wait() == 0
    rng = random.Random(0)
    assert _cli(LOBSTER_CLI + ["--out", killed], env={"DIE_AT_WRITE": "2"}, code=DIE_IN_WRITE).wait() == 9
    for _ in range(3):  # SIGKILL after 1-2 more epochs, wherever the process is then
        _kill_after_epochs(killed, rng.randint(1, 2))
    assert _cli(LOBSTER_CLI + ["--out", killed]).wait() == 0
    with open(os.path.join(whole, "operating_points.csv")) as a, open(os.path.join(killed, "operating_points.csv")) as b:
        assert a.read() == b.read()
    assert training.read_history(whole) == training.read_history(killed)


@pytest.mark.slow
def test_sweep_killed_at_random_moments_ends_with_the_uninterrupted_table(tmp_path):
    import random

    from kerasprune import results

    config = tmp_path / "s.toml"
    config.write_text('seeds = [0, 1]\nepochs = 1\nmax_train_examples = 400\nmax_test_examples = 100\n'
                      'methods = ["lottery_rewind", "random_reinit"]\nbatch_size = 20\n'
                      '[lobster]\nepochs = 6\npwe = 1\nlr = 0.3\n')
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    assert _cli(["sweep", str(config), "--out", whole, "--jobs", "1"]).wait() == 0
    rng = random.Random(1)
    for _ in range(4):
        child = _cli(["sweep", str(config), "--out", killed, "--jobs", "1"])
        time.sleep(rng.uniform(8, 25))
        child.kill()
        child.wait()
    assert _cli(["sweep", str(config), "--out", killed, "--jobs", "1"]).wait() == 0

    def table(out):
        keep = ("method", "variant", "point", "seed", "pruned_params_pct", "test_error", "val_error", "test_loss")
        return sorted(tuple(r[k] for k in keep) for r in results.ResultsTable(os.path.join(out, "results.csv")).rows())

    assert table(whole) == table(killed)
