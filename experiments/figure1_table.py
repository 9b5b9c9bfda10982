"""Issue 18's Figure 1 deliverable of one setup, from its sweep folder: the table beside the paper's.

Copies ``SWEEP/results.csv`` to ``experiments/results/<setup>/``, draws ``figure1.png`` there from it
(also from a partial sweep, whose own figure is only drawn at the end) and writes, between the
``<!-- figure1:table -->`` and ``<!-- /figure1:table -->`` markers of that folder's README.md, one
row per LOBSTER point of the sweep: the paper's ticks it stands for (the point nearest each tick) with
the paper's pruned neurons there, LOBSTER's sparsity, pruned neurons and test error, and each
baseline's test error as mean ± sample standard deviation (seeds), plus the sweep's progress.

  python experiments/figure1_table.py experiments/lenet300_mnist.toml runs/lenet300_mnist

The paper's numbers are its Figure 1 tick labels (bottom axis: % pruned parameters at LOBSTER's
points; top axis: % pruned neurons there). Its errors are only drawn, not printed, so the table has
no paper error column: compare with the paper's figure.
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import readme_blocks  # noqa: E402  (experiments/, this script's folder)
from kerasprune import report, results, sweep  # noqa: E402  (no TensorFlow import)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# setup: [(% pruned parameters, % pruned neurons)] at the paper's Figure 1 ticks (0 left out).
PAPER_TICKS = {
    "lenet300_mnist": [(40.15, 0.98), (60.64, 2.44), (80.06, 11.7), (90.07, 33.66), (95.0, 48.54), (98.0, 64.14)],
    "lenet5_mnist": [(63.05, 1.55), (80.14, 13.62), (90.01, 37.75), (95.06, 60.17), (98.0, 74.31),
                     (99.02, 81.03), (99.57, 83.45)],
    "lenet5_fashion_mnist": [(60.89, 0.0), (80.53, 7.59), (90.08, 30.17), (95.02, 46.72)],
    "resnet32_cifar10": [(40.24, 0.43), (60.72, 0.52), (80.11, 0.69)],
}
LOTTERY = ("lottery_rewind", "random_reinit", "random_structure")  # the paper's three, at 10 seeds each
PAPER_SEEDS = 10


def ticks_of(points, ticks):
    """``{point: [(tick, neurons), ...]}``: each paper tick goes to the point nearest it."""
    out = {p: [] for p in points}
    for tick, neurons in ticks:
        nearest = min(points, key=lambda p: abs(points[p] - tick))
        out[nearest].append((tick, neurons))
    return out


def lobster_points(config, rows):
    """LOBSTER's rows by point, and the points the sweep retrains at (``points``, else all but the dense one)."""
    lobster = {int(r["point"]): r for r in rows if r["method"] == "lobster"}
    return lobster, [p for p in (config.points or sorted(lobster)[1:]) if p in lobster]


def table(config, rows, setup):
    lobster, chosen = lobster_points(config, rows)
    sparsity = {p: lobster[p]["pruned_params_pct"] for p in chosen}
    ticks = ticks_of(sparsity, PAPER_TICKS.get(setup, []))
    stats = report.summarize(rows)
    methods = [key for key in sorted(stats, key=lambda k: (report.ORDER.index(k[0]), k[1])) if key[0] != "lobster"]
    header = ["paper tick: % params (% neurons)", "LOBSTER point", "% params", "% neurons (authors' count)",
              "LOBSTER test error %"]
    header += [report.LABELS[m] + (f" ({v})" if v else "") for m, v in methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in chosen:
        r = lobster[p]
        paper = ", ".join(f"{t:g} ({n:g})" for t, n in ticks[p]) or "-"
        cells = [paper, str(p), f"{r['pruned_params_pct']:.2f}", f"{r['pruned_neurons_ref_pct']:.2f}",
                 f"{100 * r['test_error']:.2f}"]
        for key in methods:
            s = stats[key].get(p)
            cells.append("-" if not s else f"{s[0]:.2f} ({s[4]})" if s[4] == 1 else f"{s[0]:.2f} ± {s[1]:.2f} ({s[4]})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def progress(config, rows):
    """``(done, total)`` runs of the sweep (an IMP chain counts once per point)."""
    points = [{"point": p} for p in lobster_points(config, rows)[1]]
    done = {results.key_of(r) for r in rows}
    keys = [k for job in sweep.jobs_for(config, points) for k in job.keys(points)]
    return sum(k in done for k in keys), len(keys)


def seeds_caption(config):
    """The figure's line on the paper's three baselines' seeds, which issue 18 wants in the caption."""
    counts = sorted({len(config.seeds_of(m)) for m in LOTTERY if m in config.methods})
    if not counts:
        return ""
    n = "/".join(map(str, counts))
    same = counts == [PAPER_SEEDS]
    return (f"Frankle & Carbin, Liu et al., random pruning: {n} seed{'' if counts == [1] else 's'} each"
            f"{', as the paper' if same else f' (the paper: {PAPER_SEEDS})'}")


def core_hours(rows):
    """Hours of CPU the sweep's retrainings took so far: the sum of their ``seconds`` (LOBSTER's rows have none)."""
    return sum(r["seconds"] for r in rows if r.get("seconds") is not None) / 3600  # results.read: floats or None


def hours_status(rows):
    """The status line's core-hours and what they count: an IMP row holds only the seconds of its own
    round, so a chain's rounds between the table's points are not in the sum."""
    chains = "; IMP: only its rounds at these points, not the rounds between" if any(
        r["method"] == "imp" for r in rows) else ""
    return f"{core_hours(rows):.1f} hours of retraining on one core (the sum of `seconds`{chains})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the setup's sweep config, e.g. experiments/lenet300_mnist.toml")
    parser.add_argument("sweep", help="its sweep folder (finished or not)")
    parser.add_argument("--setup", help="the paper's setup it stands for: its ticks and results folder "
                                        "(default: the config's name)")
    args = parser.parse_args(argv)
    config = sweep.load_config(args.config)
    setup = args.setup or config.name
    target = os.path.join(RESULTS, setup)
    os.makedirs(target, exist_ok=True)
    source = os.path.join(args.sweep, "results.csv")
    shutil.copy2(source, os.path.join(target, "results.csv"))
    rows = results.read(source)
    done, total = progress(config, rows)
    status = "complete" if done == total else "partial"
    shown = set(lobster_points(config, rows)[1]) | {0}  # the paper's layout: the dense net, then the chosen points
    report.figure1([r for r in rows if int(r["point"]) in shown],
                   os.path.join(target, "figure1.png"),
                   title="\n".join(filter(None, [f"{config.name} ({status}: {done} of {total} runs)",
                                                   seeds_caption(config)])))
    text = (f"{table(config, rows, setup)}\n\nStatus: {done} of {total} runs of `{args.config}` done ({status}), "
            f"{hours_status(rows)}; "
            "mean ± sample standard deviation over seeds (n in parentheses; one seed: its error alone).")
    readme_blocks.write_between_markers(os.path.join(target, "README.md"), "figure1:table", text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
