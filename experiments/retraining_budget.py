"""Where do one-shot retrainings stop improving? Evidence for a sweep's retraining budget (issue 18).

Reads every ``runs/<method>/point_XXX/seed_S/history.csv`` of a sweep run long (e.g.
``experiments/lenet300_mnist_budget.toml``, 100 epochs), and writes beside ``--out``:
``budget.csv`` (per run: the epoch of the best validation loss, which the sweep's checkpoint keeps,
the validation error there, and the best validation error within the first 20 / 30 / 50 epochs and
overall) and ``budget.png`` (validation error against epoch, one curve per run). If ``--out`` holds
a README.md with ``<!-- budget:table -->`` markers, the table goes between them.

  python experiments/retraining_budget.py runs/lenet300_budget --out experiments/results/lenet300_mnist/budget
"""
import argparse
import csv
import glob
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import readme_blocks  # noqa: E402  (experiments/)

CUTS = (20, 30, 50)


def curves(sweep):
    """{(method, point, seed): (val errors %, val losses)} of every retraining of ``sweep``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(sweep, "runs", "*", "point_*", "seed_*", "history.csv"))):
        method, point, seed = path.split(os.sep)[-4:-1]
        with open(path) as f:
            rows = list(csv.DictReader(f))
        out[(method, point, seed)] = ([100 * (1 - float(r["val_accuracy"])) for r in rows],
                                      [float(r["val_loss"]) for r in rows])
    return out


def kept_epoch(loss):
    """Index of the epoch whose checkpoint a retraining keeps: the lowest validation loss."""
    return min(range(len(loss)), key=loss.__getitem__)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep folder with long retrainings")
    parser.add_argument("--out", required=True, help="folder for budget.csv and budget.png")
    args = parser.parse_args(argv)
    runs = curves(args.sweep)
    if not runs:
        raise SystemExit(f"{args.sweep}: no runs/*/point_*/seed_*/history.csv")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "budget.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "point", "seed", "epochs", "best_val_loss_epoch", "val_error_pct_there"]
                        + [f"best_val_error_pct_{n}" for n in CUTS] + ["best_val_error_pct"])
        for (method, point, seed), (err, loss) in runs.items():
            at = kept_epoch(loss)
            writer.writerow([method, point, seed, len(err), at + 1, f"{err[at]:.2f}"]
                            + [f"{min(err[:n]):.2f}" for n in CUTS] + [f"{min(err):.2f}"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (method, point, seed), (err, loss) in runs.items():
        line, = ax.plot(range(1, len(err) + 1), err, lw=1, label=f"{method} {point} {seed}")
        at = kept_epoch(loss)
        ax.plot(at + 1, err[at], "o", color=line.get_color())
    for n in CUTS:
        ax.axvline(n, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="retraining epoch", ylabel="validation error (%)", yscale="log",
           title="One-shot retrainings run long (dot: best validation loss, the kept checkpoint)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "budget.png"), dpi=110)
    readme = os.path.join(args.out, "README.md")
    if os.path.isfile(readme):
        readme_blocks.write_between_markers(readme, "budget:table", table(runs), required=False)
    print(open(os.path.join(args.out, "budget.csv")).read())


def table(runs):
    """The README's table: what the sweep keeps, and the best validation error within each cut."""
    lines = ["| method | point | epochs run | kept checkpoint (epoch of best val loss) | its val error % | "
             "best val error % in " + " / ".join(map(str, CUTS)) + " / all epochs |", "|---|---|---|---|---|---|"]
    for (method, point, seed), (err, loss) in runs.items():
        at = kept_epoch(loss)
        best = " / ".join(f"{min(err[:n]):.2f}" for n in CUTS)
        lines.append(f"| {method} | {point} | {len(err)} | {at + 1} | {err[at]:.2f} | {best} / {min(err):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
