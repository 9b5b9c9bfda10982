"""experiments/figure1_table.py: issue 18's table, figure and status from a (partial) sweep folder."""
import csv
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import figure1_table  # noqa: E402
from kerasprune import results, sweep  # noqa: E402

CONFIG = """model = "lenet300"
dataset = "mnist"
seeds = [0, 1]
epochs = 2
points = [1, 2]
methods = ["lottery_rewind", "imp"]

[method_seeds]
imp = [0]
"""


def _row(method, point, seed, error, seconds=None, pruned=None):
    return {"method": method, "variant": "", "point": point, "seed": seed, "test_error": error,
            "pruned_params_pct": pruned, "pruned_neurons_ref_pct": 0.0 if pruned is not None else None,
            "seconds": seconds}


# LOBSTER's points 0-3 (3 is past the sweep's points), two rewinds at point 1, one at point 2, and the
# IMP chain's row at point 1 only (it stopped before its round at point 2).
ROWS = [_row("lobster", p, 0, e, pruned=s) for p, e, s in [(0, 0.0195, 0.0), (1, 0.0180, 68.55),
                                                           (2, 0.0175, 79.12), (3, 0.0190, 85.0)]]
ROWS += [_row("lottery_rewind", 1, 0, 0.02, 1800), _row("lottery_rewind", 1, 1, 0.03, 1800),
         _row("lottery_rewind", 2, 0, 0.021, 3600), _row("imp", 1, 0, 0.025, 1800)]


@pytest.fixture
def sweep_folder(tmp_path):
    (tmp_path / "setup.toml").write_text(CONFIG)
    folder = tmp_path / "sweep"
    folder.mkdir()
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=results.COLUMNS)
        writer.writeheader()
        for row in ROWS:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return tmp_path


def test_each_paper_tick_goes_to_the_nearest_point_and_one_point_can_stand_for_two():
    # LeNet-300's ticks against its sweep points: the first LOBSTER point (68.55%) is nearest to both
    # 40.15% and 60.64%; 79.12% to 80.06%.
    ticks = figure1_table.ticks_of({1: 68.55, 2: 79.12, 7: 90.62}, [(40.15, 0.98), (60.64, 2.44), (80.06, 11.7)])
    assert ticks == {1: [(40.15, 0.98), (60.64, 2.44)], 2: [(80.06, 11.7)], 7: []}


def test_progress_counts_an_imp_chain_once_per_point(sweep_folder):
    config = sweep.load_config(str(sweep_folder / "setup.toml"))
    rows = results.read(str(sweep_folder / "sweep" / "results.csv"))
    # 2 points x (2 rewind seeds + 1 IMP chain) = 6 rows; 3 rewinds and IMP's point 1 are done.
    assert figure1_table.progress(config, rows) == (4, 6)
    assert figure1_table.core_hours(rows) == pytest.approx(2.5)  # 3 x 1800 s + 3600 s; LOBSTER has none


def test_the_readme_table_is_written_between_its_markers_with_the_status(sweep_folder, monkeypatch):
    monkeypatch.setattr(figure1_table, "RESULTS", str(sweep_folder / "results"))
    target = sweep_folder / "results" / "lenet300_mnist"
    target.mkdir(parents=True)
    (target / "README.md").write_text("# Prose\n<!-- figure1:table -->\nold\n<!-- /figure1:table -->\nMore prose.\n")
    figure1_table.main([str(sweep_folder / "setup.toml"), str(sweep_folder / "sweep"), "--setup", "lenet300_mnist"])
    readme = (target / "README.md").read_text()
    assert readme.startswith("# Prose\n<!-- figure1:table -->\n| paper tick") and readme.endswith("More prose.\n")
    assert "old" not in readme
    lines = readme.splitlines()
    # Point 1: LOBSTER 1.80%; the rewinds 2% and 3%: mean 2.50, sample standard deviation 0.71.
    assert "| 40.15 (0.98), 60.64 (2.44) | 1 | 68.55 | 0.00 | 1.80 | 2.50 ± 0.71 (2) | 2.50 (1) |" in lines
    # The paper's later ticks all go to point 2, the sweep's sparsest (point 3 is not one of its points).
    assert "| 80.06 (11.7), 90.07 (33.66), 95 (48.54), 98 (64.14) | 2 | 79.12 | 0.00 | 1.75 | 2.10 (1) | - |" in lines
    assert not any("| 3 | 85.00 |" in line for line in lines)
    assert "Status: 4 of 6 runs of " in readme and "done (partial), 2.5 hours of retraining" in readme
    # The IMP row's seconds are its round at point 1 only, so the status says the hours leave out the others.
    assert "(the sum of `seconds`; IMP: only its rounds at these points, not the rounds between)" in readme
    assert (target / "results.csv").read_text() == (sweep_folder / "sweep" / "results.csv").read_text()
    assert (target / "figure1.png").stat().st_size > 10_000


def test_the_caption_says_when_the_paper_s_baselines_have_fewer_seeds_than_its_ten(sweep_folder):
    config = sweep.load_config(str(sweep_folder / "setup.toml"))
    assert figure1_table.seeds_caption(config) == "Frankle & Carbin, Liu et al., random pruning: 2 seeds each (the paper: 10)"
    config = sweep.load_config(str(sweep_folder / "setup.toml"), seeds=list(range(10)))
    assert figure1_table.seeds_caption(config).endswith("10 seeds each, as the paper")
    config = sweep.load_config(str(sweep_folder / "setup.toml"), seeds=[0])
    assert figure1_table.seeds_caption(config) == "Frankle & Carbin, Liu et al., random pruning: 1 seed each (the paper: 10)"
    assert figure1_table.seeds_caption(sweep.load_config(str(sweep_folder / "setup.toml"), methods=["imp"])) == ""
