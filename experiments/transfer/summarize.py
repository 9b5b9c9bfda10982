"""Issue 19's transfer study, summarized: results.csv, the README table and the entropy figure.

Reads every finished cell (``metrics.json``, with the ``cell.json`` that study.py writes beside it)
under ``runs/transfer/`` and writes, into ``experiments/results/transfer/``:

- ``results.csv``: one row per cell (its metrics and what the cell is), so the results survive the
  run folders;
- the table of target test accuracy, mean ± sample standard deviation (n) over the seeds of each
  source x regime, between the ``<!-- table:transfer -->`` and ``<!-- /table:transfer -->`` markers
  of ``README.md`` (the prose around them is left alone): rows are the sources grouped by direction
  and sparsity level, columns the regimes, in study.toml's order;
- ``entropy_vs_accuracy.png``: target accuracy against the first- and the second-order PSP-entropy
  of the features on the target data, one point per source x regime (mean over seeds, bar: std).

It works on any part of the study, also none (then it says so, writes an empty table and no figure):
rerun it as cells finish.

  python experiments/transfer/summarize.py
"""
import argparse
import csv
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # experiments/

import readme_blocks  # noqa: E402
import study  # noqa: E402  (the study's TOML and cell layout; no TensorFlow import)

RESULTS = os.path.join(study.ROOT, "experiments", "results", "transfer")
RUNS = os.path.join(study.ROOT, "runs", "transfer")
MARKERS_NAME = "table:transfer"  # <!-- table:transfer --> ... <!-- /table:transfer --> in README.md
COLUMNS = ("direction", "source", "level", "kind", "source_pruned_params_pct", "regime", "seed", "test_accuracy",
           "psp_entropy_1", "psp_entropy_2", "train_examples", "epochs_completed")
KIND_LABELS = {"dense": "dense", "g": "G (LOBSTER)", "oneshot": "1-S (rewind)", "reinit": "Liu et al. re-init",
               "random_structure": "random structure"}
MARKERS = {"dense": "o", "g": "*", "oneshot": "s", "reinit": "^", "random_structure": "X"}


def describe(folder, runs_dir):
    """What the cell in ``folder`` is: its cell.json, else what its path says (direction/source/regime/seed_S)."""
    path = os.path.join(folder, study.CELL)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    parts = os.path.relpath(folder, runs_dir).split(os.sep)
    name = "/".join(parts[1:-2])
    kind = next((k for k in study.KINDS if f"/{k}/" in f"/{name}/"), "")
    return {"direction": parts[0], "source": name, "level": "", "kind": kind, "regime": parts[-2],
            "seed": int(parts[-1].removeprefix("seed_"))}


def read_rows(runs_dir=RUNS):
    """One dict (:data:`COLUMNS`) per finished cell under ``runs_dir``, in path order."""
    rows = []
    for folder, _, files in sorted(os.walk(runs_dir)):
        if study.METRICS not in files:
            continue
        with open(os.path.join(folder, study.METRICS)) as f:
            metrics = json.load(f)
        cell = describe(folder, runs_dir)
        rows.append({**{k: cell.get(k) for k in ("direction", "source", "level", "kind", "regime", "seed")},
                     **{k: metrics.get(k) for k in ("source_pruned_params_pct", "test_accuracy", "psp_entropy_1",
                                                     "psp_entropy_2", "train_examples", "epochs_completed")}})
    return rows


def with_committed(rows, path):
    """``rows`` plus the rows of the committed ``results.csv`` whose cells are not among them: a fresh
    machine without the run folders of earlier sessions keeps their results instead of dropping them."""
    if not os.path.isfile(path):
        return rows
    key = lambda r: (r["direction"], r["source"], r["regime"], int(r["seed"]))  # noqa: E731
    have = {key(r) for r in rows}
    with open(path, newline="") as f:
        kept = [r for r in csv.DictReader(f) if key(r) not in have]
    numbers = ("source_pruned_params_pct", "test_accuracy", "psp_entropy_1", "psp_entropy_2")
    for r in kept:  # back to the types read_rows gives
        r.update({k: float(r[k]) for k in numbers if r.get(k) not in (None, "")},
                 seed=int(r["seed"]), **{k: int(r[k]) for k in ("train_examples", "epochs_completed")
                                         if r.get(k) not in (None, "")})
    return sorted(rows + kept, key=key)


def write_csv(rows, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def stats(values):
    """(mean, sample standard deviation or None for one value, n)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def cell_text(values):
    """Test accuracy in %, ``mean ± std (n)``; one value: ``mean (1)``."""
    mean, std, n = stats([100 * v for v in values])
    return f"{mean:.2f} ± {std:.2f} ({n})" if std is not None else f"{mean:.2f} ({n})"


def _order(known, seen):
    """``known`` (the study's order) first, then what only the results have, in order of appearance."""
    return [k for k in known if k in seen] + [k for k in dict.fromkeys(seen) if k not in known]


def groups(rows, config=None):
    """``({(direction, source): [rows]}, row keys in table order, regimes in column order)``."""
    config = config or {}
    by_source = {}
    for r in rows:
        by_source.setdefault((r["direction"], r["source"]), []).append(r)
    directions = _order([d["name"] for d in config.get("directions", [])], [k[0] for k in by_source])
    levels = _order(list(dict.fromkeys(s["level"] for s in config.get("sources", []))),
                    [rs[0]["level"] for rs in by_source.values()])
    kinds = list(study.KINDS)

    def key(item):
        (direction, name), rs = item
        kind = rs[0]["kind"]
        return (directions.index(direction), levels.index(rs[0]["level"]),
                kinds.index(kind) if kind in kinds else len(kinds), name)

    ordered = [k for k, _ in sorted(by_source.items(), key=key)]
    known = [g["name"] for g in config.get("regimes", [])]  # every column, measured or not yet
    regimes = known + [r for r in dict.fromkeys(r["regime"] for r in rows) if r not in known]
    return by_source, ordered, regimes


def table(rows, config=None):
    """The markdown table: one row per source, one column per regime (test accuracy %, mean ± std (n))."""
    if not rows:
        return "No finished cells yet: nothing measured."
    by_source, ordered, regimes = groups(rows, config)
    header = ["direction", "level", "source", "kind", "source % pruned params"] + regimes
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for direction, name in ordered:
        rs = by_source[(direction, name)]
        pruned = [r["source_pruned_params_pct"] for r in rs if r["source_pruned_params_pct"] is not None]
        cells = [direction, rs[0]["level"], name, KIND_LABELS.get(rs[0]["kind"], rs[0]["kind"]),
                 f"{pruned[0]:.2f}" if pruned else "-"]
        for regime in regimes:
            values = [r["test_accuracy"] for r in rs if r["regime"] == regime]
            cells.append(cell_text(values) if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(readme, text):
    """Writes ``text`` between the table markers of ``readme``, leaving the rest alone."""
    readme_blocks.write_between_markers(readme, MARKERS_NAME, text)


def plot(rows, path, config=None):
    """Two panels: target accuracy (%) against the first- and second-order PSP-entropy (bits) of each
    source x regime (means over seeds, accuracy std as bars). Marker: source kind; colour: regime;
    filled: the study's first direction, hollow: the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    by_source, ordered, regimes = groups(rows, config)
    directions = list(dict.fromkeys(d for d, _ in ordered))
    colours = {regime: plt.get_cmap("tab10")(i % 10) for i, regime in enumerate(regimes)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in zip(axes, ("psp_entropy_1", "psp_entropy_2"),
                              ("first-order PSP-entropy on the target data (bits)",
                               "second-order PSP-entropy on the target data (bits)")):
        for direction, name in ordered:
            for regime in regimes:
                rs = [r for r in by_source[(direction, name)] if r["regime"] == regime and r[key] is not None]
                if not rs:
                    continue
                x = statistics.fmean(r[key] for r in rs)
                mean, std, _ = stats([100 * r["test_accuracy"] for r in rs])
                filled = directions.index(direction) == 0
                ax.errorbar(x, mean, yerr=std or 0, fmt=MARKERS.get(rs[0]["kind"], "D"), color=colours[regime],
                            markerfacecolor=colours[regime] if filled else "none", markersize=8, capsize=2)
        ax.set_xlabel(label)
        ax.set_ylabel("target test accuracy (%)")
        ax.grid(alpha=0.3)
    kinds = list(dict.fromkeys(by_source[k][0]["kind"] for k in ordered))
    handles = [Line2D([], [], linestyle="", marker=MARKERS.get(k, "D"), color="grey", label=KIND_LABELS.get(k, k))
               for k in kinds]
    handles += [Line2D([], [], linestyle="", marker="o", color=colours[r], label=r) for r in regimes]
    handles += [Line2D([], [], linestyle="", marker="o", color="black",
                       markerfacecolor="black" if i == 0 else "none", label=d.replace("_to_", " -> ").replace("_", " "))
                for i, d in enumerate(directions)]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"Transfer of LeNet-5 features ({len(rows)} cells; mean over seeds, bar: std)")
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=RUNS, help="the study's run folders (default: runs/transfer)")
    parser.add_argument("--study", default=study.STUDY, help="the study's TOML, for the order of rows and columns")
    parser.add_argument("--results", default=RESULTS, help="where results.csv, README.md and the figure go "
                                                           "(default: experiments/results/transfer)")
    args = parser.parse_args(argv)
    config = study.load_study(args.study)
    rows = read_rows(args.runs) if os.path.isdir(args.runs) else []
    rows = with_committed(rows, os.path.join(args.results, "results.csv"))
    write_csv(rows, os.path.join(args.results, "results.csv"))
    total = len(config["sources"]) * sum(len(r["seeds"]) for r in config["regimes"])
    text = (f"{table(rows, config)}\n\nStatus: {len(rows)} of the {total} cells of `experiments/transfer/study.toml` "
            "finished. Target test accuracy (%) on the target's whole test set, mean ± sample standard deviation "
            "over seeds (n in parentheses).")
    update_readme(os.path.join(args.results, "README.md"), text)
    if not rows:
        print(f"no finished cells under {args.runs}: wrote an empty table, no figure")
        return 0
    plot(rows, os.path.join(args.results, "entropy_vs_accuracy.png"), config)
    print(text)
    print(f"{len(rows)} cells; wrote {args.results}/results.csv, README.md and entropy_vs_accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
