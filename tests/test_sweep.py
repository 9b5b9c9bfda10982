import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kerasprune import cli, oneshot, report, results, sweep, training
from kerasprune.config import LobsterConfig
from kerasprune.errors import KerasPruneError
from kerasprune.pure import points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = dict(model="lenet300", dataset="mnist", max_train_examples=500, max_test_examples=200)


@pytest.fixture(scope="session")
def lobster_dir(tmp_path_factory):
    """A LOBSTER run folder in the shared contract's format, made without LOBSTER: LeNet-300 trained
    briefly on real MNIST, then magnitude-pruned (kernels and biases) to 50% and 80%."""
    out = tmp_path_factory.mktemp("lobster")
    config = training.TrainConfig(epochs=1, seed=0, **DATA)
    model, splits = oneshot.build(config)
    model.save_weights(str(out / "initial.weights.h5"))
    training.compile_model(model, training.make_optimizer("sgd", 0.1))
    model.fit(splits.train, epochs=1, verbose=0)
    os.makedirs(out / "points")
    params = oneshot._tfmot.masked_parameters(model)
    rows = []
    for point, pct in enumerate((0.0, 50.0, 80.0)):
        n = int(round(pct / 100 * sum(int(np.prod(v.shape)) for v in params.values())))
        mask = oneshot.global_magnitude_mask({k: v.numpy() for k, v in params.items()}, n)
        for key, var in params.items():
            var.assign(var.numpy() * mask[key])
        weights = f"points/point_{point:03d}.weights.h5"
        model.save_weights(str(out / weights))
        rep = oneshot.sparsity.report(model)
        val, test = training.evaluate(model, splits.validation), training.evaluate(model, splits.test)
        rows.append(dict(point=point, pruned_params_pct=rep.pruned_params_pct,
                         pruned_neurons_pct=rep.pruned_neurons_pct, val_error=1 - val["accuracy"],
                         val_loss=val["loss"], test_error=1 - test["accuracy"], test_loss=test["loss"],
                         epoch=point, weights=weights))
    points.write_points(str(out), rows)
    (out / "config.json").write_text(json.dumps(dict(seed=0, batch_size=100, lr=0.1, momentum=0.0,
                                                     data_dir=None, val_fraction=0.1, split_seed=0, **DATA)))
    return str(out)


def tiny(lobster_dir, **kw):
    base = dict(name="tiny", seeds=[0, 1], epochs=1, dense_epochs=1, imp_rate=0.5, lobster_dir=lobster_dir,
                **DATA)
    base.update(kw)
    return sweep.SweepConfig(**base)


# ---------------------------------------------------------------------------------------------
# The results table.

def row(method="random_reinit", point=1, seed=0, **kw):
    base = dict(method=method, variant="", point=point, seed=seed, pruned_params_pct=50.0,
                pruned_neurons_pct=1.0, test_error=0.1)
    base.update(kw)
    return base


def test_results_table_appends_rows_once_per_key(tmp_path):
    table = results.ResultsTable(str(tmp_path / "results.csv"))
    assert table.append(row(seed=0)) and table.append(row(seed=1))
    assert not table.append(row(seed=0, test_error=0.5))  # same run again: not recorded twice
    assert table.append(row(seed=0, method="magnitude_oneshot", variant="layer"))
    rows = results.read(table.path)
    assert [(r["method"], r["seed"], r["test_error"]) for r in rows] == [
        ("random_reinit", 0.0, 0.1), ("random_reinit", 1.0, 0.1), ("magnitude_oneshot", 0.0, 0.1)]
    with pytest.raises(ValueError, match="unknown result columns"):
        table.append(row(colour="red"))


def test_a_torn_last_line_is_ignored_and_repaired_on_the_next_append(tmp_path):
    table = results.ResultsTable(str(tmp_path / "results.csv"))
    table.append(row(seed=0))
    with open(table.path, "a") as f:
        f.write("random_reinit,,1,1,50.0,1")  # a writer killed mid-row
    assert len(table.rows()) == 1
    table.append(row(seed=2))
    assert [r["seed"] for r in table.rows()] == ["0", "2"]


def test_a_torn_header_is_rewritten_and_numpy_floats_are_stored_as_numbers(tmp_path):
    table = results.ResultsTable(str(tmp_path / "results.csv"))
    with open(table.path, "w") as f:
        f.write("method,variant,po")  # the first writer was killed inside the header
    table.append(row(seed=0, test_error=np.float64(0.25)))
    table.append(row(seed=1))
    got = results.read(table.path)
    assert [(r["seed"], r["test_error"]) for r in got] == [(0.0, 0.25), (1.0, 0.1)]


def test_two_processes_appending_at_once_lose_and_duplicate_nothing(tmp_path):
    path = str(tmp_path / "results.csv")
    code = ("import sys; from kerasprune import results; t = results.ResultsTable(sys.argv[1])\n"
            "for i in range(60): t.append(dict(method='imp', point=i % 30, seed=int(sys.argv[2]) + i // 30,"
            " test_error=0.1, run_dir='x' * 300))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", code, path, s], env=env) for s in ("0", "0", "2")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    keys = [results.key_of(r) for r in results.ResultsTable(path).rows()]
    assert len(keys) == 120 and len(set(keys)) == 120  # seeds 0,1 (twice each: deduplicated), 2,3


def test_a_held_run_lock_is_reported_busy_to_a_second_sweep(tmp_path):
    path = str(tmp_path / "run.lock")
    with results.file_lock(path) as held:
        assert held
        with results.file_lock(path, blocking=False) as second:
            assert second is False
    with results.file_lock(path, blocking=False) as again:
        assert again


# ---------------------------------------------------------------------------------------------
# Configs.

def assert_config_refused(path, text, match):
    """``text`` as the sweep config at ``path`` is refused with a one-line error matching ``match``."""
    path.write_text(text)
    with pytest.raises(KerasPruneError, match=match):
        sweep.load_config(str(path))


def test_every_experiment_config_loads():
    folder = os.path.join(ROOT, "experiments")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".toml"))
    assert {"quick.toml", "lenet300_mnist.toml", "lenet5_mnist.toml", "lenet5_fashion_mnist.toml",
            "resnet32_cifar10.toml"} <= set(names)
    for name in names:
        config = sweep.load_config(os.path.join(folder, name))
        assert config.name == name[:-5] and config.seeds


def test_command_line_overrides_replace_config_values(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('model = "lenet300"\nseeds = [0, 1]\npoints = [3]\n')
    args = cli.build_parser().parse_args(["sweep", str(path), "--out", "x", "--points", "15", "48",
                                          "--seeds", "2"])
    config = sweep.load_config(str(path), points=args.points, seeds=args.seeds, methods=args.methods)
    assert (config.points, config.seeds, config.methods) == ([15, 48], [2], list(sweep.BASELINES))


def test_the_lobster_table_is_a_lobster_config_checked_when_the_file_loads(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('model = "lenet300"\nseeds = [3, 4]\nlr = 0.2\n[lobster]\nepochs = 7\npwe = 2\nlr = 0.3\n')
    lobster = sweep.load_config(str(path)).lobster
    assert isinstance(lobster, LobsterConfig)
    assert (lobster.seed, lobster.epochs, lobster.pwe, lobster.lr, lobster.lmbda) == (3, 7, 2, 0.3, 1e-4)
    assert_config_refused(path, 'model = "lenet300"\n[lobster]\npatience = 2\n',
                          r"^\[lobster\] has unknown keys \['patience'\]; valid: .*pwe")
    assert_config_refused(path, 'model = "lenet300"\n[lobster]\npwe = 0\n',
                          r"^\[lobster\] pwe must be >= 1, got 0$")


def test_method_seeds_give_chosen_baselines_their_own_seeds_and_are_checked(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('model = "lenet300"\nseeds = [0, 1, 2, 3]\nmagnitude_scopes = ["global"]\n'
                    '[method_seeds]\nimp = [0, 1]\nmagnitude_oneshot = [5]\n')
    config = sweep.load_config(str(path))
    jobs = sweep.jobs_for(config, [{"point": 1}, {"point": 2}])
    seeds = {}
    for job in jobs:
        seeds.setdefault(job.method, set()).add((job.point, job.seed))
    assert seeds["lottery_rewind"] == {(p, s) for p in (1, 2) for s in range(4)}
    assert seeds["magnitude_oneshot"] == {(1, 5), (2, 5)}
    assert seeds["imp"] == {(None, 0), (None, 1)}  # one chain per seed covers every point
    assert seeds["polynomial_decay"] == {(p, s) for p in (1, 2) for s in range(4)}
    assert_config_refused(path, 'model = "lenet300"\n[method_seeds]\nimp_chain = [0]\n',
                          r"^\[method_seeds\] has unknown methods \['imp_chain'\]; valid.*imp")
    assert_config_refused(path, 'model = "lenet300"\n[method_seeds]\nimp = []\n',
                          r"at least one seed for \['imp'\]")


def test_methods_are_registered_in_figure_1s_order_with_results_csv_names():
    assert sweep.BASELINES == tuple(sweep.METHODS) == (
        "lottery_rewind", "random_reinit", "random_structure", "magnitude_oneshot", "imp", "polynomial_decay")


def test_config_errors_name_the_bad_key_and_the_valid_ones(tmp_path):
    path = tmp_path / "bad.toml"
    assert_config_refused(path, 'model = "lenet300"\nepoch = 3\n', r"unknown keys \['epoch'\].*epochs")
    assert_config_refused(path, 'methods = ["lottery"]\n', "unknown methods.*lottery_rewind")


# ---------------------------------------------------------------------------------------------
# Sweeps.

def test_tiny_sweep_writes_every_method_a_figure_and_exports(tmp_path, lobster_dir):
    out = str(tmp_path / "sweep")
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(
        f'seeds = [0, 1]\nepochs = 1\ndense_epochs = 1\nimp_rate = 0.5\nlobster_dir = "{lobster_dir}"\n'
        'max_train_examples = 500\nmax_test_examples = 200\n'
        'magnitude_scopes = ["global"]\n')  # the "layer" scope has its own test (test_oneshot.py)
    assert cli.main(["sweep", str(config_path), "--out", out]) == 0
    rows = results.read(os.path.join(out, "results.csv"))
    for column in ("method", "seed", "pruned_params_pct", "pruned_neurons_pct", "test_error", "point",
                   "val_error", "epochs", "seconds", "run_dir"):
        assert column in rows[0]
    count = {}
    for r in rows:
        count[(r["method"], r["variant"])] = count.get((r["method"], r["variant"]), 0) + 1
    assert count == {("lobster", None): 3, ("lottery_rewind", None): 4, ("random_reinit", None): 4,
                     ("random_structure", None): 4, ("magnitude_oneshot", "global"): 4, ("imp", None): 4,
                     ("polynomial_decay", None): 4}
    for r in rows:
        assert 0 <= r["test_error"] < 0.9
        if r["method"] in ("lottery_rewind", "random_reinit", "random_structure"):
            # All of LOBSTER's zeros stay zero (fresh zero biases may add a few more).
            assert r["pruned_params_pct"] >= r["target_pruned_params_pct"] - 1e-9
            assert r["pruned_params_pct"] == pytest.approx(r["target_pruned_params_pct"], abs=0.2)
        elif r["method"] != "lobster":
            assert r["pruned_params_pct"] == pytest.approx(r["target_pruned_params_pct"], abs=0.5)
        if r["method"] != "lobster":
            assert os.listdir(os.path.join(out, r["run_dir"], "tensorboard"))
    # Fresh initialisations (Liu et al., random structure) never reuse LOBSTER's init seed, which
    # would make random re-init a copy of lottery rewinding.
    lobster_seed = json.loads(open(os.path.join(lobster_dir, "config.json")).read())["seed"]
    for r in rows:
        if r["method"] in ("random_reinit", "random_structure"):
            used = json.loads(open(os.path.join(out, r["run_dir"], "result.json")).read())["seed"]
            assert used != lobster_seed and used == sweep.FRESH_INIT_SEED_OFFSET + r["seed"]
    assert os.path.getsize(os.path.join(out, "figure1.png")) > 10_000
    exports = json.loads(open(os.path.join(out, "exports.json")).read())
    assert exports["g_point"] == 2 and exports["oneshot_point"] == 2
    assert os.path.isfile(os.path.join(exports["g"], "saved_model.pb"))
    assert os.path.isfile(os.path.join(exports["oneshot"], "saved_model.pb"))
    # Running the finished sweep again trains nothing and adds no row.
    import kerasprune.oneshot as module

    original = module.prepare
    module.prepare = lambda *a, **k: pytest.fail("a finished run was trained again")
    try:
        assert cli.main(["sweep", str(config_path), "--out", out]) == 0
    finally:
        module.prepare = original
    assert len(results.read(os.path.join(out, "results.csv"))) == len(rows)


def test_list_runs_only_and_two_processes_cover_each_run_once(tmp_path, lobster_dir, capsys):
    import shlex

    out = str(tmp_path / "sweep")
    config_path = tmp_path / "small.toml"
    config_path.write_text(f'seeds = [0]\nepochs = 1\nlobster_dir = "{lobster_dir}"\nmax_train_examples = 500\n'
                           'max_test_examples = 200\nmethods = ["lottery_rewind", "random_reinit"]\n')
    sweep_args = ["sweep", str(config_path), "--out", out]
    assert cli.main(sweep_args + ["--list-runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line)[-1] for line in lines] == [
        "lottery_rewind/point_001/seed_0", "random_reinit/point_001/seed_0",
        "lottery_rewind/point_002/seed_0", "random_reinit/point_002/seed_0"]
    command = shlex.split(lines[1])  # what a scheduler's array task runs
    assert command[:2] == ["kerasprune", "sweep"] and command[-2] == "--only"
    assert cli.main(command[1:]) == 0
    rows = [r for r in results.read(os.path.join(out, "results.csv")) if r["method"] != "lobster"]
    assert [(r["method"], r["point"]) for r in rows] == [("random_reinit", 1.0)]
    assert not os.path.exists(os.path.join(out, "figure1.png"))  # --only assembles nothing
    history = training.read_history(os.path.join(out, rows[0]["run_dir"]))  # the sparsity it trained at
    assert history[0]["pruned_params_pct"] == pytest.approx(rows[0]["pruned_params_pct"])
    capsys.readouterr()
    assert cli.main(sweep_args + ["--list-runs"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert cli.main(sweep_args + ["--jobs", "2"]) == 0  # the other three, two processes
    rows = [r for r in results.read(os.path.join(out, "results.csv")) if r["method"] != "lobster"]
    keys = [results.key_of(r) for r in rows]
    assert len(keys) == len(set(keys)) == 4
    assert os.path.getsize(os.path.join(out, "figure1.png")) > 10_000
    capsys.readouterr()
    assert cli.main(sweep_args + ["--list-runs"]) == 0
    assert capsys.readouterr().out == ""
    assert cli.main(sweep_args + ["--only", "imp/seed_9"]) == 2
    assert "no run 'imp/seed_9' in this sweep" in capsys.readouterr().err


def test_sweep_of_chosen_points_exports_g_and_1s_at_the_sparsest_chosen_point(tmp_path, lobster_dir):
    """With ``points`` set, G must be the point the 1-S retrainings ran at, not LOBSTER's sparsest."""
    out = str(tmp_path / "sweep")
    sweep.run(tiny(lobster_dir, seeds=[0], methods=["lottery_rewind"], points=[1]), out, verbose=0)
    exports = json.loads(open(os.path.join(out, "exports.json")).read())
    assert exports["g_point"] == 1 and exports["oneshot_point"] == 1
    assert exports["g_pruned_params_pct"] == pytest.approx(50.0, abs=0.01)
    # 1-S is the best *rewind* (the paper's "best one-shot solution (Frankle and Carbin)"): a re-init
    # with a lower validation error does not take its place.
    rows = results.read(os.path.join(out, "results.csv"))
    rewind = next(r for r in rows if r["method"] == "lottery_rewind")
    better_reinit = {**rewind, "method": "random_reinit", "val_error": 0.0, "test_error": 0.0,
                     "run_dir": "runs/random_reinit/point_001/seed_0"}  # no weights: exporting it would raise
    points = [p for p in sweep.read_operating_points(lobster_dir) if p["point"] == 1]
    info = sweep.export_solutions(tiny(lobster_dir, seeds=[0], methods=["lottery_rewind"], points=[1]), out,
                                  lobster_dir, points, rows + [better_reinit])
    assert info["oneshot_method"] == "lottery_rewind" and info["oneshot_source"].endswith(
        os.path.join(rewind["run_dir"], "final.weights.h5"))
    # The table carried to a machine without the run folders: a one-line error naming the row to redo.
    shutil.rmtree(os.path.join(out, "runs"))
    os.remove(os.path.join(out, "exports.json"))
    with pytest.raises(KerasPruneError, match=r"^cannot export 1-S: .*final.weights.h5 is missing .*delete the row "
                                              r"of runs/lottery_rewind/point_001/seed_0 from results.csv"):
        sweep.run(tiny(lobster_dir, seeds=[0], methods=["lottery_rewind"], points=[1]), out, verbose=0)


def test_time_left_counts_an_imp_chain_as_all_its_rounds_not_its_rows(tmp_path, lobster_dir):
    # An IMP chain writes a row only at the table's points, but trains every round between them: the
    # time left must count its rounds, or a sweep ending in chains says minutes where hours are left.
    from kerasprune import runs

    config = tiny(lobster_dir, seeds=[0, 1], methods=["lottery_rewind", "imp"])
    points = [p for p in sweep.read_operating_points(lobster_dir) if p["point"] in (1, 2)]
    out = str(tmp_path / "sweep")
    table = results.ResultsTable(os.path.join(out, "results.csv"))
    ctx = sweep._Context(config, out, lobster_dir, points, table, verbose=0)
    ctx.start(sweep.jobs_for(config, points))  # 2 points x 2 seeds of rewinds, 2 IMP chains
    # LeNet-300: 266,200 kernel entries of 266,610 parameters; the points are 50% and 80% pruned. At
    # rate 0.5 a chain prunes 133,100, then the 50% level, then 199,650, then the 80% level: 4 rounds.
    pcts = [p["pruned_params_pct"] for p in points]
    assert pcts == [pytest.approx(50.0, abs=0.01), pytest.approx(80.0, abs=0.01)]
    assert ctx.chain_rounds == len(oneshot.imp_levels(pcts, total=266610, kernels=266200, rate=0.5)) == 4
    assert ctx.work(table.done()) == (0, 4 + 2 * 4)
    for seed, point in ((0, 1), (1, 1), (0, 2)):
        table.append(row("lottery_rewind", point=point, seed=seed))
    for level in ("level_01", "level_02"):  # seed 0's chain: two rounds finished
        os.makedirs(os.path.join(out, "runs", "imp", "seed_0", level))
        runs.mark_finished(os.path.join(out, "runs", "imp", "seed_0", level), "retrain", {"test_error": 0.1})
    os.makedirs(os.path.join(out, "runs", "imp", "seed_1", "level_01"))  # started, not finished
    assert ctx.work(table.done()) == (3 + 2, 12)
    # 5 retrainings in 10 minutes this session: 7 left, 14 minutes.
    assert sweep.time_left_text(600.0, 5, 7) == ", ~14.0 min left"
    assert sweep.time_left_text(600.0, 0, 7) == "" and sweep.time_left_text(600.0, 5, 0) == ""


def test_sweep_refuses_a_lobster_dir_of_another_setup_and_points_it_does_not_have(tmp_path, lobster_dir):
    with pytest.raises(KerasPruneError, match="dataset: 'mnist' there, 'fashion_mnist' here"):
        sweep.run(tiny(lobster_dir, dataset="fashion_mnist"), str(tmp_path / "a"), verbose=0)
    with pytest.raises(KerasPruneError, match=r"points \[7\] are not finished"):
        sweep.run(tiny(lobster_dir, points=[1, 7]), str(tmp_path / "b"), verbose=0)


def test_sweep_without_a_needed_points_weights_fails_in_one_line_before_any_run(tmp_path, lobster_dir):
    """A LOBSTER run carried to a new machine keeps only the points packed with it: the sweep must say
    so before it starts, not with an h5py traceback at the first rewind of that point."""
    carried = str(tmp_path / "lobster")
    shutil.copytree(lobster_dir, carried)
    row = next(p for p in sweep.read_operating_points(carried) if p["point"] == 1)
    os.remove(os.path.join(carried, row["weights"]))
    out = str(tmp_path / "sweep")
    with pytest.raises(KerasPruneError, match=r"^\S+ has no weights of points \[1\], which runs of lottery_rewind, "
                                              r"random_reinit, random_structure still need [^\n]*--methods"):
        sweep.run(tiny(carried, seeds=[0], methods=["random_structure"], points=[1]), out, verbose=0)
    assert not os.path.isdir(os.path.join(out, "runs"))
    assert [m for m in sweep.METHODS if sweep.METHODS[m].uses_mask] == [
        "lottery_rewind", "random_reinit", "random_structure"]


def test_kernel_count_matching_keeps_lobsters_kernel_weights_and_is_not_mixed_with_the_default(tmp_path, lobster_dir):
    """magnitude_count = "kernels": the kernel-only methods keep as many kernel weights as LOBSTER's
    mask at the point (which also prunes biases), instead of pruning its share of all parameters."""
    from kerasprune import _tfmot, masks

    lobster = oneshot.build_model(training.TrainConfig(epochs=1, seed=0, **DATA))
    lobster.load_weights(os.path.join(lobster_dir, "points", "point_002.weights.h5"))
    wanted = sum(masks.count_kept(masks.mask_of(lobster, _tfmot.KERNEL_ONLY)).values())
    total, kernels = masks.prunable_counts(lobster)
    biases_pruned = sum(masks.count_kept({k: ~m for k, m in masks.mask_of(lobster).items()
                                          if k.endswith("/bias")}).values())
    assert biases_pruned > 0  # else both counts would agree and the test could not fail
    out = str(tmp_path / "sweep")
    config = tiny(lobster_dir, seeds=[0], points=[2], methods=["magnitude_oneshot", "polynomial_decay"],
                  magnitude_scopes=["global"], magnitude_count="kernels")
    sweep.run(config, out, verbose=0)
    rows = [r for r in results.read(os.path.join(out, "results.csv")) if r["method"] != "lobster"]
    assert len(rows) == 2
    for r in rows:
        model = oneshot.build_model(training.TrainConfig(epochs=1, seed=0, **DATA))
        model.load_weights(os.path.join(out, r["run_dir"], oneshot.FINAL_WEIGHTS))
        kept = sum(masks.count_kept(masks.mask_of(model, _tfmot.KERNEL_ONLY)).values())
        if r["method"] == "magnitude_oneshot":
            assert kept == wanted
        else:  # TF-MOT's per-layer schedule rounds each layer's count
            assert abs(kept - wanted) <= 3
        # Every bias kept: fewer parameters pruned than LOBSTER's share, by its pruned biases.
        assert r["pruned_params_pct"] == pytest.approx(100 * (kernels - kept) / total, abs=1e-6)
        assert r["pruned_params_pct"] < r["target_pruned_params_pct"]
        assert json.loads(open(os.path.join(out, r["run_dir"], "result.json")).read())["kept_kernels"] == wanted
    with pytest.raises(KerasPruneError, match=r"^\S+ has magnitude_oneshot, polynomial_decay rows made with "
                                              r"magnitude_count = 'kernels', not 'params'; use another --out$"):
        sweep.run(tiny(lobster_dir, seeds=[0], points=[2], methods=["magnitude_oneshot"],
                       magnitude_scopes=["global"]), out, verbose=0)
    with pytest.raises(KerasPruneError, match="drop imp from methods"):
        tiny(lobster_dir, magnitude_count="kernels")
    with pytest.raises(KerasPruneError, match="magnitude_count must be one of params, kernels, got 'weights'"):
        tiny(lobster_dir, methods=["magnitude_oneshot"], magnitude_count="weights")


def test_sweep_refuses_multiworker_and_says_what_to_do_instead(lobster_dir):
    with pytest.raises(KerasPruneError, match="one sweep process per machine"):
        tiny(lobster_dir, strategy="multiworker")


def test_killed_sweep_resumes_without_redoing_or_losing_runs(tmp_path, lobster_dir, monkeypatch):
    out = str(tmp_path / "sweep")
    config = tiny(lobster_dir, seeds=[0], methods=["random_reinit", "random_structure"])
    calls = []
    original = oneshot.prepare

    def dies_on_third_run(*args, **kwargs):
        calls.append(args[0].seed)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a kill looks like from inside
        return original(*args, **kwargs)

    monkeypatch.setattr(oneshot, "prepare", dies_on_third_run)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(config, out, verbose=0)
    before = results.read(os.path.join(out, "results.csv"))
    assert [r["method"] for r in before if r["method"] != "lobster"] == ["random_reinit", "random_structure"]
    calls.clear()
    sweep.run(config, out, verbose=0)
    assert len(calls) == 2  # only the two runs not yet finished
    after = results.read(os.path.join(out, "results.csv"))
    assert after[:len(before)] == before
    keys = [results.key_of(r) for r in after]
    assert len(keys) == len(set(keys)) == 3 + 4


def test_a_table_from_an_older_version_gains_the_new_columns_on_append(tmp_path):
    table = results.ResultsTable(str(tmp_path / "results.csv"))
    old = [c for c in results.COLUMNS if c != "pruned_neurons_ref_pct"]
    with open(table.path, "w") as f:
        f.write(",".join(old) + "\n" + ",".join(str(row(seed=0).get(c, "")) for c in old) + "\n")
    table.append(row(seed=1, pruned_neurons_ref_pct=12.5))
    got = results.read(table.path)
    assert [(r["seed"], r["pruned_neurons_pct"], r["pruned_neurons_ref_pct"]) for r in got] == [
        (0.0, 1.0, None), (1.0, 1.0, 12.5)]
    with open(table.path) as f:
        assert next(f).strip().split(",") == list(results.COLUMNS)


def test_figure1_plots_mean_over_seeds_on_a_log_axis(tmp_path):
    rows = [dict(method="lobster", variant=None, point=p, seed=0, test_error=e, pruned_params_pct=x,
                 pruned_neurons_pct=n) for p, e, x, n in ((0, 0.02, 0.0, 0.0), (1, 0.018, 60.0, 10.0))]
    rows += [dict(method="random_reinit", variant=None, point=1, seed=s, test_error=e, pruned_params_pct=60.0,
                  pruned_neurons_pct=5.0) for s, e in ((0, 0.02), (1, 0.03))]
    stats = report.summarize(rows)
    assert stats[("random_reinit", "")][1][:2] == pytest.approx((2.5, 0.5 ** 0.5))  # sample std
    assert stats[("lobster", "")][1][1] == 0.0
    path = report.figure1(rows, str(tmp_path / "f.png"))
    assert os.path.getsize(path) > 5_000


def test_figure1_labels_at_most_about_twelve_points_and_always_the_baselines_point():
    assert report._labelled(6, [3]) == list(range(6))
    got = report._labelled(116, [64, 65])
    assert 64 in got and 0 in got and 115 in got and len(got) <= 13
    assert min(b - a for a, b in zip(got, got[1:])) >= 116 / 12


def test_sweep_runs_lobster_with_its_settings_when_points_are_missing(tmp_path, monkeypatch, lobster_dir):
    from kerasprune import lobster

    seen = []

    def fake_run(config, out, verbose="auto"):
        seen.append(config)
        import shutil

        shutil.copytree(lobster_dir, out, dirs_exist_ok=True)
        return []

    monkeypatch.setattr(lobster, "run", fake_run)
    config = tiny(None, seeds=[3, 4], lobster={"pwe": 2, "epochs": 7})
    got = sweep.ensure_lobster(config, str(tmp_path / "sweep"))
    assert got == str(tmp_path / "sweep" / "lobster")
    assert len(sweep.read_operating_points(got)) == 3
    (cfg,) = seen
    assert (cfg.model, cfg.dataset, cfg.seed, cfg.pwe, cfg.epochs, cfg.max_train_examples) == (
        "lenet300", "mnist", 3, 2, 7, 500)


def test_unfinished_lobster_level_is_not_an_operating_point(tmp_path, lobster_dir):
    import shutil

    copy = str(tmp_path / "lobster")
    shutil.copytree(lobster_dir, copy)
    with open(os.path.join(copy, "operating_points.csv")) as f:
        lines = f.read().splitlines()
    fields = lines[-1].split(",")
    header = lines[0].split(",")
    for column in ("test_error", "test_loss"):
        fields[header.index(column)] = ""
    with open(os.path.join(copy, "operating_points.csv"), "w") as f:
        f.write("\n".join(lines[:-1] + [",".join(fields)]) + "\n")
    assert [p["point"] for p in sweep.read_operating_points(copy)] == [0, 1]
