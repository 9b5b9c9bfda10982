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
  of the features on the target data, one point per source x regime (mean over seeds, bar: std);
- the two tests that answer the issue's question, between ``<!-- table:transfer-tests -->`` markers:
  G against 1-S at each level and regime (paired by seed: the same seed draws the same shots and
  the same data order), and the rank correlation between PSP-entropy and transfer accuracy over the
  sources of each direction and regime.

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
TESTS_MARKERS_NAME = "table:transfer-tests"  # the G-vs-1-S and entropy-correlation tables
PERMUTATIONS = 10_000  # seeded permutations of a p-value (pooled: exact up to EXACT_UP_TO sources)
EXACT_UP_TO = 8
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


def paired_difference(a, b):
    """G minus 1-S in percentage points over the seeds both have: ``(mean, standard error or None, n)``.

    Paired because a seed fixes the shots drawn and the data order for every source, so the seed-to-seed
    variance of the draw cancels in the difference; ``a``/``b``: ``{seed: accuracy fraction}``."""
    seeds = sorted(set(a) & set(b))
    diffs = [100 * (a[s] - b[s]) for s in seeds]
    if not diffs:
        return None, None, 0
    mean, std, n = stats(diffs)
    return mean, (std / n ** 0.5 if std is not None else None), n


# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom; a df between two rows takes
# the lower row's (larger) value. Printed tables' values: scipy is not a dependency for a dozen numbers.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def t_975(df):
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom (>= 1)."""
    return T_975[max(k for k in T_975 if k <= df)]


def verdict(mean, se, n):
    """Which side a paired difference of ``n`` seeds favours: beyond its two-sided 95% interval
    (Student's t with n - 1 degrees of freedom: 2.78 standard errors at 5 seeds), else "within noise"."""
    if se is None:
        return "one seed: no error bar"
    if abs(mean) <= t_975(n - 1) * se:
        return "within noise"
    return "G better" if mean > 0 else "1-S better"


def g_against_oneshot(rows, config=None):
    """The markdown table of G - 1-S (target accuracy, points) at each direction x level x regime."""
    by_source, ordered, regimes = groups(rows, config)
    lines = ["| direction | level | regime | G | 1-S | G - 1-S (points) | n | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    levels = {}
    for key in ordered:
        rs = by_source[key]
        levels.setdefault((key[0], rs[0]["level"]), {})[rs[0]["kind"]] = rs
    for (direction, level), kinds in levels.items():
        if "g" not in kinds or "oneshot" not in kinds:
            continue
        for regime in regimes:
            g = {r["seed"]: r["test_accuracy"] for r in kinds["g"] if r["regime"] == regime}
            o = {r["seed"]: r["test_accuracy"] for r in kinds["oneshot"] if r["regime"] == regime}
            mean, se, n = paired_difference(g, o)
            if not n:
                continue
            diff = f"{mean:+.2f} ± {se:.2f}" if se is not None else f"{mean:+.2f}"
            lines.append(f"| {direction} | {level} | {regime} | {cell_text(list(g.values()))} | "
                         f"{cell_text(list(o.values()))} | {diff} | {n} | {verdict(mean, se, n)} |")
    if len(lines) == 2:
        return "No level has both G and 1-S measured yet."
    return "\n".join(lines)


def ranks(values):
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x, y):
    """Spearman's rank correlation (Pearson's on ranks, so ties are handled); None if either is constant."""
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else None


def permutation_p(x, y, seed=0, permutations=PERMUTATIONS):
    """Two-sided p-value of Spearman's rho under "no association": the share of orderings of ``y`` whose
    |rho| reaches the observed one; every ordering up to :data:`EXACT_UP_TO` values, else a seeded sample.
    (Hand-written: scipy is not among the project's dependencies, and this is a dozen lines.)"""
    import itertools
    import random

    observed = abs(spearman(x, y))
    if len(x) <= EXACT_UP_TO:
        orderings = list(itertools.permutations(y))
    else:
        rng = random.Random(seed)
        orderings = [rng.sample(list(y), len(y)) for _ in range(permutations)]
    hits = sum(abs(spearman(x, list(p)) or 0.0) >= observed - 1e-12 for p in orderings)
    return hits / len(orderings)


def within_levels(x, y, levels, seed=0, permutations=PERMUTATIONS):
    """Spearman's rho between ``x`` and ``y`` once each level's mean is taken from both (levels of at least
    two sources), and its two-sided p-value with ``y`` shuffled within each level (seeded): whether ``x``
    predicts ``y`` among sources of one sparsity, which the pooled rho cannot tell from sparsity's own
    effect. ``(None, None)`` with fewer than 3 such sources or a constant side."""
    import random

    members = {}
    for i, level in enumerate(levels):
        members.setdefault(level, []).append(i)
    kept = [idx for idx in members.values() if len(idx) >= 2]
    if sum(len(idx) for idx in kept) < 3:
        return None, None

    def centred(values):
        out = []
        for idx in kept:
            mean = statistics.fmean(values[i] for i in idx)
            out += [values[i] - mean for i in idx]
        return out

    xc = centred(x)
    observed = spearman(xc, centred(y))
    if observed is None:
        return None, None
    rng, shuffled, hits = random.Random(seed), list(y), 0
    for _ in range(permutations):
        for idx in kept:
            values = [y[i] for i in idx]
            rng.shuffle(values)
            for i, v in zip(idx, values):
                shuffled[i] = v
        hits += abs(spearman(xc, centred(shuffled)) or 0.0) >= abs(observed) - 1e-12
    return observed, hits / permutations


def entropy_correlations(rows, config=None):
    """The markdown table of Spearman's rho between each source's mean PSP-entropy (first and second
    order, on the target data) and its mean target accuracy, over the sources of a direction x regime:
    pooled over every source, and within sparsity levels (:func:`within_levels`)."""
    by_source, ordered, regimes = groups(rows, config)
    directions = list(dict.fromkeys(d for d, _ in ordered))
    lines = ["| direction | regime | sources | rho, first order (p) | rho, second order (p) "
             "| within levels: sources | rho, first order (p) | rho, second order (p) |",
             "|---|---|---|---|---|---|---|---|"]
    for direction in directions:
        for regime in regimes:
            points = []
            for key in ordered:
                rs = [r for r in by_source[key] if key[0] == direction and r["regime"] == regime
                      and r["psp_entropy_1"] is not None and r["psp_entropy_2"] is not None]
                if rs:
                    points.append((statistics.fmean(r["psp_entropy_1"] for r in rs),
                                   statistics.fmean(r["psp_entropy_2"] for r in rs),
                                   statistics.fmean(r["test_accuracy"] for r in rs), rs[0]["level"]))
            if len(points) < 3:
                continue
            h1, h2, acc, levels = zip(*points)
            cells = []
            for h in (h1, h2):
                rho = spearman(h, acc)
                cells.append("-" if rho is None else f"{rho:+.2f} ({permutation_p(h, acc):.3f})")
            sizes = [levels.count(level) for level in levels]
            cells.append(str(sum(size >= 2 for size in sizes)))
            for h in (h1, h2):
                rho, p = within_levels(h, acc, levels)
                cells.append("-" if rho is None else f"{rho:+.2f} ({p:.3f})")
            lines.append(f"| {direction} | {regime} | {len(points)} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return "Fewer than 3 sources measured in every direction and regime: no correlation yet."
    return "\n".join(lines)


def tests_text(rows, config=None):
    """Both tables of the tests block, with what they mean."""
    return (f"G against 1-S at the same mask (target test accuracy %, mean ± std (n); the difference paired "
            f"by seed, ± its standard error; \"within noise\": inside its two-sided 95% interval, Student's t "
            f"with n - 1 degrees of freedom; each row is its own test, so about one row in twenty says "
            f"\"better\" by chance):\n\n"
            f"{g_against_oneshot(rows, config)}\n\n"
            f"Does PSP-entropy predict transfer? Spearman's rank correlation between each source's mean "
            f"PSP-entropy on the target data and its mean target accuracy, over every source of a direction "
            f"(dense and all sparsity levels) and regime; p: two-sided permutation p-value (exact up to "
            f"{EXACT_UP_TO} sources, else {PERMUTATIONS:,} seeded permutations). Pooled over levels, sparsity "
            f"moves entropy and accuracy together; \"within levels\" takes each level's mean from both (levels "
            f"with at least two sources, so not the dense one) and shuffles accuracies within levels only:\n\n"
            f"{entropy_correlations(rows, config)}")


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
                            markerfacecolor=colours[regime] if filled else "none", capsize=2,
                            markersize=12 if rs[0]["kind"] == "g" else 8)  # a star draws smaller than the rest
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
    readme = os.path.join(args.results, "README.md")
    update_readme(readme, text)
    readme_blocks.write_between_markers(readme, TESTS_MARKERS_NAME, tests_text(rows, config), required=False)
    if not rows:
        print(f"no finished cells under {args.runs}: wrote an empty table, no figure")
        return 0
    plot(rows, os.path.join(args.results, "entropy_vs_accuracy.png"), config)
    print(text)
    print(f"{len(rows)} cells; wrote {args.results}/results.csv, README.md and entropy_vs_accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
