"""Issue 13's comparison: LOBSTER's reference threshold search against the conservative one.

Reads the runs of `search_rules.sh` (``runs/search_rules/<rule>_seed<S>/operating_points.csv``),
prints for each run the first epoch at which an operating point reaches 90 / 95 / 98% pruned and
its test error there, and draws both progressions side by side (test error and epoch against the
share of pruned parameters). Runs still going count with the points they have.

usage:
  python experiments/lobster/compare_rules.py [runs/search_rules] [--out experiments/lobster/search_rules]
writes <out>.csv (the table) and <out>.png
"""
import argparse
import csv
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from kerasprune.pure.points import read_operating_points  # noqa: E402

LEVELS = (90.0, 95.0, 98.0)


def first_reaching(rows, level):
    """The first finished point with at least ``level`` % pruned, or None."""
    done = [r for r in rows if r["test_error"] == r["test_error"]]  # NaN: the level still running
    return next((r for r in done if r["pruned_params_pct"] >= level), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="?", default="runs/search_rules")
    parser.add_argument("--out", default="experiments/lobster/search_rules")
    args = parser.parse_args()
    runs = {}
    for folder in sorted(glob.glob(os.path.join(args.runs, "*_seed*"))):
        match = re.fullmatch(r"(\w+)_seed(\d+)", os.path.basename(folder))
        if match and os.path.isdir(folder):
            runs[(match.group(1), int(match.group(2)))] = read_operating_points(folder)
    table = []
    for (rule, seed), rows in runs.items():
        history = os.path.join(args.runs, f"{rule}_seed{seed}", "history.csv")
        epochs = sum(1 for _ in open(history)) - 1 if os.path.isfile(history) else 0
        row = {"rule": rule, "seed": seed, "epochs_run": epochs,
               "max_pruned_pct": max((r["pruned_params_pct"] for r in rows), default=0.0)}
        for level in LEVELS:
            hit = first_reaching(rows, level)
            row[f"epoch_{level:g}"] = hit["epoch"] if hit else ""
            row[f"test_error_pct_{level:g}"] = f"{100 * hit['test_error']:.2f}" if hit else ""
        table.append(row)
    if not table:
        raise SystemExit(f"no runs in {args.runs}")
    with open(args.out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print("| rule | seed | epochs run | max pruned % | " + " | ".join(
        f"epoch to {lv:g}% | test error % there" for lv in LEVELS) + " |")
    print("|---" * (4 + 2 * len(LEVELS)) + "|")
    for r in table:
        cells = [r["rule"], r["seed"], r["epochs_run"], f"{r['max_pruned_pct']:.2f}"]
        for level in LEVELS:
            cells += [r[f"epoch_{level:g}"] or "-", r[f"test_error_pct_{level:g}"] or "-"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    plot(runs, args.out + ".png")


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"reference": "C0", "conservative": "C3"}
    for (rule, seed), rows in runs.items():
        done = [r for r in rows if r["test_error"] == r["test_error"]]
        remaining = [max(100 - r["pruned_params_pct"], 1e-3) for r in done]
        style = dict(color=colors.get(rule, "C7"), marker="o", ms=2.5, lw=0.9, alpha=0.85,
                     label=f"{rule}, seed {seed}", linestyle="-" if seed == 0 else ("--" if seed == 1 else ":"))
        ax1.plot(remaining, [100 * r["test_error"] for r in done], **style)
        ax2.plot(remaining, [r["epoch"] for r in done], **style)
    ax1.set_ylabel("test error [%]")
    ax2.set_ylabel("epoch the point was reached")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ticks = [100, 50, 20, 10, 5, 2, 1]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{100 - t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlim(110, 1.5)
        ax.set_xlabel("pruned parameters [%] (log scale of the remaining ones)")
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.suptitle("LOBSTER on LeNet-300 / MNIST: reference vs conservative threshold search (pwe 5)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
