"""experiments/transfer (issue 19's study driver and summary): the pure logic, no TensorFlow, no training."""
import json
import os
import re
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments", "transfer"))

import study  # noqa: E402
import summarize  # noqa: E402

STUDY_TOML = """
out = "runs/transfer"

[[directions]]
name = "a_to_b"
source_dataset = "mnist"
target = "fashion_mnist"

[[regimes]]
name = "lin"
args = ["--probe", "linear", "--epochs", "1"]
seeds = [0]

[[regimes]]
name = "few"
args = ["--probe", "linear", "--shots", "10"]
seeds = [0, 1, 2]

[[sources]]
name = "m/dense/p0"
direction = "a_to_b"
level = "dense"
kind = "dense"
path = "runs/lob"
point = 0

[[sources]]
name = "m/g/p5"
direction = "a_to_b"
level = "90%"
kind = "g"
path = "runs/lob"
point = 5

[[sources]]
name = "m/oneshot/p5"
direction = "a_to_b"
level = "90%"
kind = "oneshot"
path = "runs/sweep/runs/lottery_rewind/point_005/seed_0"

[[sources]]
name = "m/reinit/p5"
direction = "a_to_b"
level = "90%"
kind = "reinit"
path = "runs/sweep/runs/random_reinit/point_005/seed_0"

[[sources]]
name = "m/g/p{g_point}"
direction = "a_to_b"
level = "highest"
kind = "g"
exports = "runs/claims_p*/exports.json"
path = "{g_run}"
point = "{g_point}"

[[sources]]
name = "m/oneshot/p{g_point}"
direction = "a_to_b"
level = "highest"
kind = "oneshot"
exports = "runs/claims_p*/exports.json"
path = "{oneshot_run}"

[[sources]]
name = "m/reinit/p{g_point}"
direction = "a_to_b"
level = "highest"
kind = "reinit"
exports = "runs/claims_p*/exports.json"
path = "{sweep}/runs/random_reinit/point_{g_point:03d}/seed_0"
"""
POINTS_HEADER = "point,pruned_params_pct,test_error,weights\n"
MNIST_RUN = json.dumps({"model": "lenet5", "dataset": "mnist"})


@pytest.fixture
def tree(tmp_path):
    """A fake repository: the study TOML, a LOBSTER run whose points 0 and 5 are finished (6 is still
    running), a finished rewind and an unfinished re-init at point 5; no paper-claims sweep yet."""
    (tmp_path / "study.toml").write_text(STUDY_TOML)
    lob = tmp_path / "runs" / "lob"
    lob.mkdir(parents=True)
    (lob / "config.json").write_text(MNIST_RUN)
    (lob / "operating_points.csv").write_text(POINTS_HEADER + "0,0.0,0.01,points/point_000.weights.h5\n"
                                              "5,90.0,0.01,points/point_005.weights.h5\n"
                                              "6,91.0,,points/point_006.weights.h5\n")
    rewind = tmp_path / "runs" / "sweep" / "runs" / "lottery_rewind" / "point_005" / "seed_0"
    rewind.mkdir(parents=True)
    (rewind / "final.weights.h5").write_text("")
    (rewind / "result.json").write_text("{}")
    (rewind / "config.json").write_text(MNIST_RUN)
    reinit = tmp_path / "runs" / "sweep" / "runs" / "random_reinit" / "point_005" / "seed_0"
    reinit.mkdir(parents=True)
    (reinit / "config.json").write_text(MNIST_RUN)  # running: config.json and checkpoints, no final weights
    return tmp_path


def cells_of(root):
    config = study.load_study(str(root / "study.toml"))
    return config, study.enumerate_cells(config, study.resolve_sources(config, root=str(root)))


def test_cells_are_sources_times_regimes_times_seeds(tree):
    config, cells = cells_of(tree)
    assert len(cells) == 7 * (1 + 3)
    assert len({c.out for c in cells}) == len(cells)
    first = cells[0]
    assert first.id == "a_to_b/m/dense/p0/lin/seed_0"
    assert first.out == os.path.join("runs/transfer", first.id)
    cmd = first.command("python")
    assert cmd[:4] == ["python", "-m", "kerasprune", "transfer"]
    assert cmd[cmd.index("--source") + 1] == "runs/lob" and cmd[cmd.index("--point") + 1] == "0"
    assert cmd[cmd.index("--dataset") + 1] == "fashion_mnist" and cmd[cmd.index("--out") + 1] == first.out
    few = [c for c in cells if c.regime == "few" and c.source.name == "m/oneshot/p5"]
    assert [c.seed for c in few] == [0, 1, 2]
    assert "--point" not in few[0].command() and few[0].command()[-2:] == ["--out", few[0].out]
    assert few[2].command()[few[2].command().index("--seed") + 1] == "2"


def test_missing_sources_are_skipped_with_a_reason(tree):
    _, cells = cells_of(tree)
    skipped = {c.source.name: c.source.skip for c in cells if c.source.skip}
    assert set(skipped) == {"m/reinit/p5", "m/g/pP", "m/oneshot/pP", "m/reinit/pP"}
    assert "final.weights.h5" in skipped["m/reinit/p5"]
    assert "exports.json" in skipped["m/g/pP"]
    lines = study.skip_lines(cells)
    assert len(lines) == 4 and all(line.startswith("skip ") and "(4 cells)" in line for line in lines)
    assert "\n" not in "".join(lines)


def test_unfinished_lobster_point_and_missing_folder(tree):
    assert study.readiness("runs/lob", 5, root=str(tree)) is None
    assert "not finished" in study.readiness("runs/lob", 6, root=str(tree))
    assert "not finished" in study.readiness("runs/lob", 7, root=str(tree))
    assert "does not exist" in study.readiness("runs/nowhere", None, root=str(tree))
    assert study.readiness("runs/lob", 5, root=str(tree), dataset="mnist") is None
    assert "trained on mnist, not fashion_mnist" in study.readiness("runs/lob", 5, root=str(tree),
                                                                   dataset="fashion_mnist")
    (tree / "runs" / "bare").mkdir()
    assert "no config.json" in study.readiness("runs/bare", None, root=str(tree))
    (tree / "runs" / "bare" / "config.json").write_text(MNIST_RUN)
    (tree / "runs" / "bare" / "final.weights.h5").write_text("")
    assert "no result.json" in study.readiness("runs/bare", None, root=str(tree))


def test_a_damaged_exports_json_is_as_if_missing(tree, capsys):
    (tree / "runs" / "claims_p40").mkdir()
    (tree / "runs" / "claims_p40" / "exports.json").write_text('{"g_point": 4')
    _, cells = cells_of(tree)
    assert {c.source.name for c in cells if c.source.skip} == {"m/reinit/p5", "m/g/pP", "m/oneshot/pP", "m/reinit/pP"}
    assert "ignoring" in capsys.readouterr().out


def test_exports_fill_the_highest_level(tree):
    sweep = tree / "runs" / "claims_p40"
    (sweep / "runs" / "lottery_rewind" / "point_040" / "seed_3").mkdir(parents=True)
    (sweep / "runs" / "lottery_rewind" / "point_040" / "seed_3" / "final.weights.h5").write_text("")
    (sweep / "runs" / "lottery_rewind" / "point_040" / "seed_3" / "config.json").write_text(MNIST_RUN)
    (sweep / "runs" / "lottery_rewind" / "point_040" / "seed_3" / "result.json").write_text("{}")
    (sweep / "exports.json").write_text(json.dumps({
        "g_point": 40, "g_source": "runs/lob/points/point_040.weights.h5",
        "oneshot_source": "runs/claims_p40/runs/lottery_rewind/point_040/seed_3/final.weights.h5"}))
    _, cells = cells_of(tree)
    sources = {c.source.name: c.source for c in cells}
    assert sources["m/g/p40"].path == "runs/lob" and sources["m/g/p40"].point == 40
    assert "not finished" in sources["m/g/p40"].skip  # LOBSTER has not reached point 40
    assert sources["m/oneshot/p40"].path == "runs/claims_p40/runs/lottery_rewind/point_040/seed_3"
    assert sources["m/oneshot/p40"].skip is None and sources["m/oneshot/p40"].point is None
    assert sources["m/reinit/p40"].path == "runs/claims_p40/runs/random_reinit/point_040/seed_0"
    assert "does not exist" in sources["m/reinit/p40"].skip


def test_finished_cells_and_only(tree):
    _, cells = cells_of(tree)
    cell = cells[0]
    assert not study.is_finished(cell, root=str(tree))
    os.makedirs(tree / cell.out)
    assert not study.is_finished(cell, root=str(tree))  # a started run: config.json, no metrics.json
    (tree / cell.out / "metrics.json").write_text("{}")
    assert study.is_finished(cell, root=str(tree))
    assert [c.id for c in study.select(cells, ["m/g/p5/few/seed_1"])] == ["a_to_b/m/g/p5/few/seed_1"]
    assert len(study.select(cells, ["/lin/", "m/dense"])) == 7 + 3
    assert study.select(cells, []) == cells


def test_env_defaults_do_not_override():
    env = study.env_for_cells({"KERASPRUNE_THREADS": "2", "PATH": "/bin"})
    assert env["KERASPRUNE_THREADS"] == "2" and env["KERASPRUNE_DATA_DIR"] == "/work/shared/datasets"


def fake_cell(runs_dir, cell, accuracy, h1=2.5, h2=5.0, pruned=90.0):
    folder = runs_dir / cell.out.removeprefix("runs/transfer/")
    folder.mkdir(parents=True)
    (folder / "cell.json").write_text(json.dumps(cell.description()))
    (folder / "metrics.json").write_text(json.dumps({
        "test_accuracy": accuracy, "psp_entropy_1": h1, "psp_entropy_2": h2, "source_pruned_params_pct": pruned,
        "train_examples": 100, "epochs_completed": 20}))


def test_summary_table_of_fake_results(tree):
    config, cells = cells_of(tree)
    runs_dir = tree / "runs" / "transfer"
    pick = {(c.source.name, c.regime, c.seed): c for c in cells}
    few_g = [0.80, 0.83, 0.77]
    for seed, acc in enumerate(few_g):
        fake_cell(runs_dir, pick[("m/g/p5", "few", seed)], acc)
    fake_cell(runs_dir, pick[("m/g/p5", "lin", 0)], 0.9)
    fake_cell(runs_dir, pick[("m/dense/p0", "few", 1)], 0.7, pruned=0.0)
    fake_cell(runs_dir, pick[("m/dense/p0", "few", 2)], 0.6, pruned=0.0)
    rows = summarize.read_rows(str(runs_dir))
    assert len(rows) == 6
    assert {r["kind"] for r in rows} == {"g", "dense"} and {r["level"] for r in rows} == {"dense", "90%"}
    text = summarize.table(rows, config)
    lines = text.splitlines()
    assert lines[0].split(" | ")[-2:] == ["lin", "few |"]  # columns: the study's regimes, in order
    dense, g = lines[2], lines[3]  # rows: by level (dense before 90%)
    assert "m/dense/p0" in dense and "m/g/p5" in g
    mean = sum(100 * a for a in few_g) / 3
    std = (sum((100 * a - mean) ** 2 for a in few_g) / 2) ** 0.5
    assert f"{mean:.2f} ± {std:.2f} (3)" in g and g.split(" | ")[-1] == f"{mean:.2f} ± {std:.2f} (3) |"
    assert "90.00 (1)" in g and "| 90.00 |" in g  # one seed; and the source's % pruned
    d_mean = 65.0
    d_std = statistics.stdev([70.0, 60.0])
    assert f"{d_mean:.2f} ± {d_std:.2f} (2)" in dense and "| - |" in dense  # no lin cell for dense


def test_summarize_writes_csv_readme_and_figure(tree, tmp_path):
    config, cells = cells_of(tree)
    runs_dir = tree / "runs" / "transfer"
    fake_cell(runs_dir, cells[0], 0.75, pruned=0.0)
    fake_cell(runs_dir, cells[5], 0.85)
    results = tmp_path / "results"
    results.mkdir()
    (results / "README.md").write_text("intro\n<!-- table:transfer -->\nold\n<!-- /table:transfer -->\nend\n")
    assert summarize.main(["--runs", str(runs_dir), "--study", str(tree / "study.toml"),
                           "--results", str(results)]) == 0
    body = (results / "README.md").read_text()
    assert body.startswith("intro\n<!-- table:transfer -->\n| direction") and body.endswith("-->\nend\n")
    assert "old" not in body and "Status: 2 of the 28 cells" in body
    csv_lines = (results / "results.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(summarize.COLUMNS) and len(csv_lines) == 3
    assert (results / "entropy_vs_accuracy.png").stat().st_size > 0


def test_summarize_with_zero_results(tree, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "README.md").write_text("<!-- table:transfer -->\n<!-- /table:transfer -->\n")
    assert summarize.main(["--runs", str(tree / "runs" / "transfer"), "--study", str(tree / "study.toml"),
                           "--results", str(results)]) == 0
    assert "no finished cells" in capsys.readouterr().out
    assert "No finished cells yet" in (results / "README.md").read_text()
    assert not (results / "entropy_vs_accuracy.png").exists()
    assert (results / "results.csv").read_text().splitlines() == [",".join(summarize.COLUMNS)]
    assert summarize.table([]) == "No finished cells yet: nothing measured."


def test_the_real_study_toml_loads():
    config = study.load_study()
    assert {d["name"] for d in config["directions"]} == {"mnist_to_fashion_mnist", "fashion_mnist_to_mnist"}
    assert len(config["sources"]) == 22
    few = [r for r in config["regimes"] if "--shots" in r["args"]]
    assert len(few) == 2 and all(len(r["seeds"]) >= 5 for r in few)
    assert all("--select" not in r["args"] for r in config["regimes"])


def test_ranks_spearman_and_permutation_p_by_hand():
    assert summarize.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]  # tied values share their mean rank
    # 1 - 6 sum(d^2) / (n (n^2 - 1)), d = (0, 1, 1, 0)
    assert summarize.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert summarize.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert summarize.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert summarize.spearman([1, 2, 3], [5, 5, 5]) is None
    # A perfect order of 4: only the 2 monotone orderings of 24 reach |rho| = 1.
    assert summarize.permutation_p([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(2 / 24)
    # Beyond EXACT_UP_TO values a seeded sample: the same seed gives the same p, close to the exact 2/10!.
    x = list(range(10))
    p = summarize.permutation_p(x, x, seed=3, permutations=2000)
    assert p == summarize.permutation_p(x, x, seed=3, permutations=2000) and p < 0.01


def test_g_against_oneshot_is_paired_by_seed(tree):
    config, cells = cells_of(tree)
    runs_dir = tree / "runs" / "transfer"
    pick = {(c.source.name, c.regime, c.seed): c for c in cells}
    for seed, (g, o) in enumerate([(0.80, 0.78), (0.83, 0.80), (0.77, 0.76)]):  # differences 2, 3, 1 points
        fake_cell(runs_dir, pick[("m/g/p5", "few", seed)], g)
        fake_cell(runs_dir, pick[("m/oneshot/p5", "few", seed)], o)
    fake_cell(runs_dir, pick[("m/g/p5", "lin", 0)], 0.90)
    fake_cell(runs_dir, pick[("m/oneshot/p5", "lin", 0)], 0.91)
    fake_cell(runs_dir, pick[("m/reinit/p5", "few", 0)], 0.5)
    rows = summarize.read_rows(str(runs_dir))
    g = {r["seed"]: r["test_accuracy"] for r in rows if r["source"] == "m/g/p5" and r["regime"] == "few"}
    o = {r["seed"]: r["test_accuracy"] for r in rows if r["source"] == "m/oneshot/p5" and r["regime"] == "few"}
    mean, se, n = summarize.paired_difference(g, o)
    assert (mean, n) == (pytest.approx(2.0), 3) and se == pytest.approx(1 / 3 ** 0.5)  # std of (2, 3, 1) is 1
    assert summarize.verdict(mean, se, n) == "within noise"  # 2 < t(2 df) 4.303 x 0.577 = 2.48
    assert summarize.verdict(2.6, se, n) == "G better" and summarize.verdict(-2.6, se, 3) == "1-S better"
    assert summarize.verdict(2.6, se, 2) == "within noise"  # t(1 df) = 12.7
    assert summarize.t_975(4) == 2.776 and summarize.t_975(12) == 2.228 and summarize.t_975(500) == 1.980
    lines = summarize.g_against_oneshot(rows, config).splitlines()
    assert len(lines) == 4  # header, rule, lin, few: the re-init is not part of the comparison
    assert lines[2].startswith("| a_to_b | 90% | lin | 90.00 (1) | 91.00 (1) | -1.00 | 1 | one seed")
    assert lines[3].endswith("| +2.00 ± 0.58 | 3 | within noise |")
    assert summarize.g_against_oneshot([r for r in rows if r["kind"] == "g"], config).startswith("No level")


def test_within_levels_removes_what_sparsity_does_to_both():
    # Across the two levels entropy and accuracy go opposite ways (pooled rho -0.6); within each level
    # the higher entropy has the higher accuracy: rho +1 once each level's mean is removed.
    h, acc, levels = [1, 2, 5, 6], [0.80, 0.81, 0.60, 0.61], ["a", "a", "b", "b"]
    assert summarize.spearman(h, acc) == pytest.approx(-0.6)
    rho, p = summarize.within_levels(h, acc, levels, permutations=4000)
    assert rho == pytest.approx(1.0)
    # Shuffling within levels: 2 x 2 equally likely orderings, 2 of them (both kept, both swapped) reach |rho| 1.
    assert p == pytest.approx(0.5, abs=0.03)
    assert summarize.within_levels(h, acc, levels, permutations=500) == summarize.within_levels(
        h, acc, levels, permutations=500)  # seeded
    assert summarize.within_levels([1, 2, 3], [3, 2, 1], ["a", "b", "c"]) == (None, None)  # no level of two


def test_entropy_correlation_over_sources(tree, tmp_path):
    config, cells = cells_of(tree)
    runs_dir = tree / "runs" / "transfer"
    pick = {(c.source.name, c.regime, c.seed): c for c in cells}
    # Four sources under "lin": accuracy rises with first-order entropy, falls with second-order.
    for name, acc, h1, h2 in [("m/dense/p0", 0.9, 4.0, 1.0), ("m/g/p5", 0.8, 3.0, 2.0),
                              ("m/oneshot/p5", 0.7, 2.0, 3.0), ("m/reinit/p5", 0.6, 1.0, 4.0)]:
        fake_cell(runs_dir, pick[(name, "lin", 0)], acc, h1=h1, h2=h2)
    rows = summarize.read_rows(str(runs_dir))
    lines = summarize.entropy_correlations(rows, config).splitlines()
    # Pooled: exact p over 4! orderings. Within levels: only the 90% level has two or more sources (3),
    # and there too entropy and accuracy move together.
    assert lines[2].startswith(f"| a_to_b | lin | 4 | +1.00 ({2 / 24:.3f}) | -1.00 ({2 / 24:.3f}) | 3 | +1.00 (")
    assert re.fullmatch(r".* \| 3 \| \+1\.00 \(0\.\d{3}\) \| -1\.00 \(0\.\d{3}\) \|", lines[2])
    assert len(lines) == 3  # "few" has no cells: no row
    assert "Fewer than 3" in summarize.entropy_correlations(rows[:2], config)
    results = tmp_path / "results"
    results.mkdir()
    (results / "README.md").write_text("<!-- table:transfer -->\n<!-- /table:transfer -->\nx\n"
                                       "<!-- table:transfer-tests -->\n<!-- /table:transfer-tests -->\n")
    summarize.main(["--runs", str(runs_dir), "--study", str(tree / "study.toml"), "--results", str(results)])
    body = (results / "README.md").read_text()
    assert "| a_to_b | 90% | lin | 80.00 (1) | 70.00 (1) | +10.00 | 1 |" in body and lines[2] in body


def test_one_driver_claims_a_cell_and_a_running_transfer_keeps_it(tree):
    import fcntl

    _, cells = cells_of(tree)
    cell = cells[0]
    first = study.claim(cell, root=str(tree))  # no folder yet: made, and claimed
    assert first is not None
    assert study.claim(cell, root=str(tree)) is None  # a second driver leaves it
    first.close()
    again = study.claim(cell, root=str(tree))
    assert again is not None  # released when the first driver's cell ended (or the driver died)
    again.close()
    lock = tree / cell.out / ".lock"
    lock.write_text("pid 1 on elsewhere\n")  # a lock file nobody holds: a finished or killed run
    mine = study.claim(cell, root=str(tree))
    assert mine is not None
    mine.close()
    with open(lock, "a+") as held:  # what kerasprune.runs.exclusive does while a transfer runs
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert study.claim(cell, root=str(tree)) is None
        assert lock.read_text() == "pid 1 on elsewhere\n"  # the check leaves the holder's line alone
    last = study.claim(cell, root=str(tree))
    assert last is not None
    last.close()


def test_cells_in_the_committed_table_count_as_finished(tree, tmp_path):
    """A fresh machine has no run folders of earlier sessions: their rows in the committed results.csv
    keep the driver from running those cells again."""
    _, cells = cells_of(tree)
    done, other = cells[0], cells[1]
    table = tmp_path / "results.csv"
    table.write_text("direction,source,level,kind,source_pruned_params_pct,regime,seed,test_accuracy\n"
                     f"{done.source.direction},{done.source.name},dense,dense,0.0,{done.regime},{done.seed},0.9\n")
    committed = study.committed_cells(str(table))
    assert committed == {done.id}
    assert study.is_finished(done, root=str(tree), committed=committed)
    assert not study.is_finished(done, root=str(tree))
    assert not study.is_finished(other, root=str(tree), committed=committed)
    assert study.committed_cells(str(tmp_path / "missing.csv")) == frozenset()
