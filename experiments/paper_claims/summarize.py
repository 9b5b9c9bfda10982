"""Issue 17's claim table: G against 1-S, claim by claim, across independent LOBSTER seeds.

Reads each analysed sweep folder (``kerasprune sweep`` + ``kerasprune analyze --out SWEEP/analysis``,
as ``experiments/paper_claims/lenet300.sh`` makes them), copies what a result depends on into
``experiments/results/paper_claims/<name>/`` (``results.csv``, ``exports.json``, ``analysis.json`` and
the figures) and writes the claim table between the ``<!-- claims:TAG -->`` and ``<!-- /claims:TAG -->``
markers of ``experiments/results/paper_claims/README.md``, leaving the prose around it alone. Sweeps
also analysed in the paper's units (``SWEEP/analysis_paper_units``, the script's last step) give their
``analysis_paper_units.json`` and the table between ``<!-- units:TAG -->`` markers, if the README has them.

Verdicts (a sign test over the G's: with 3 seeds, 3 of 3 in one direction has p = 1/8 one-sided, so
"holds" here means "every seed agrees", not significance):
  C2, C3, C4, C6: holds when G is on the paper's side for every seed, does not hold when it is on the
  other side for every seed, undecided otherwise. C3 compares the mean of the top-5 eigenvalues.
  C5 ("comparable"): holds when |H1(G) - H1(1-S)| <= 5% of H1(1-S) for every seed, does not hold
  when it is larger for every seed, undecided otherwise.

Sweeps whose rewinds were each analysed against G (``SWEEP/rewinds/seed_S/``, the last step of
``experiments/paper_claims/lenet5.sh``) give a table between ``<!-- rewinds:TAG -->`` markers: G against
every rewind, and on how many the claim goes the paper's way.

  python experiments/paper_claims/summarize.py --tag lenet300 runs/paper_claims/lenet300_ref_seed*_p*
  python experiments/paper_claims/summarize.py --tag lenet5 runs/paper_claims/lenet5_ref_seed0_p*
"""
import argparse
import csv
import json
import os
import re
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/
import readme_blocks  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "..", "results", "paper_claims")
PAPER_UNITS = "analysis_paper_units"  # SWEEP/<this>: kerasprune analyze in the paper's units (docs/analysis.md)
COMPARABLE = 0.05  # C5: relative gap of first-order entropies still called comparable

# claim: (what, value of one model from analysis.json, paper's direction: G "lower"/"higher"/"comparable")
CLAIMS = {
    "C2": ("training loss (5,000-image sample)", lambda a, m: a["performance"][m]["train_loss"], "lower"),
    "C3": ("mean of the top-5 Hessian eigenvalues", lambda a, m: statistics.fmean(a["hessian_top5"][m]), "higher"),
    "C4": ("PSP L2 (mean z^2)", lambda a, m: a["psp_l2"][m]["overall"], "lower"),
    "C5": ("first-order PSP-entropy (bits)", lambda a, m: a["psp_entropy_1"][m]["overall"], "comparable"),
    "C6": ("second-order PSP-entropy (bits)", lambda a, m: a["psp_entropy_2"][m]["overall"], "higher"),
}


def agrees(direction, g, oneshot):
    if direction == "lower":
        return g < oneshot
    if direction == "higher":
        return g > oneshot
    return abs(g - oneshot) <= COMPARABLE * abs(oneshot)


def verdict(flags):
    if all(flags):
        return "holds"
    if not any(flags):
        return "does not hold"
    return "undecided"


def spread(values):
    mean = statistics.fmean(values)
    return f"{mean:.4g} ± {statistics.stdev(values):.2g}" if len(values) > 1 else f"{mean:.4g}"


def collect(sweep):
    """Copies one analysed sweep into RESULTS/<name>/ and returns its analysis.json."""
    analysis_json = os.path.join(sweep, "analysis", "analysis.json")
    if not os.path.isfile(analysis_json):
        raise SystemExit(f"{sweep}: no analysis/analysis.json yet (run kerasprune analyze first)")
    target = os.path.join(RESULTS, os.path.basename(os.path.normpath(sweep)))
    os.makedirs(target, exist_ok=True)
    for name in ("results.csv", "exports.json"):
        shutil.copy2(os.path.join(sweep, name), target)
    for name in os.listdir(os.path.join(sweep, "analysis")):
        if name == "analysis.json" or name.endswith(".png"):
            shutil.copy2(os.path.join(sweep, "analysis", name), target)
    units = os.path.join(sweep, PAPER_UNITS, "analysis.json")
    if os.path.isfile(units):
        shutil.copy2(units, os.path.join(target, PAPER_UNITS + ".json"))
    with open(analysis_json) as f:
        return json.load(f)


def units_table(sweeps):
    """The paper's units (per-batch training loss, PSP L2 summed over units): one row per sweep that has them."""
    lines = ["| sweep | training loss, per-batch (G / 1-S) | PSP L2, sum over units and layers incl. logits (G / 1-S) |",
             "|---|---|---|"]
    for sweep in sweeps:
        path = os.path.join(sweep, PAPER_UNITS, "analysis.json")
        if not os.path.isfile(path):
            lines.append(f"| {os.path.basename(os.path.normpath(sweep))} | not analysed yet | |")
            continue
        with open(path) as f:
            a = json.load(f)
        conventions = (a["conventions"]["train_loss"], a["conventions"]["psp_l2"])
        if conventions != ("per-batch", "sum-units"):
            raise SystemExit(f"{path}: conventions {conventions}, expected ('per-batch', 'sum-units')")
        loss = [a["performance"][m]["train_loss"] for m in ("g", "oneshot")]
        l2 = [a["psp_l2"][m]["overall"] for m in ("g", "oneshot")]
        lines.append(f"| {os.path.basename(os.path.normpath(sweep))} | {loss[0]:.2e} / {loss[1]:.2e} | "
                     f"{l2[0]:,.0f} / {l2[1]:,.0f} |")
    return "\n".join(lines)


def errors(sweep):
    """Test errors (%) of G, the rewinds and the re-inits at G's point, from the sweep's results.csv."""
    with open(os.path.join(sweep, "exports.json")) as f:
        point = int(json.load(f)["g_point"])
    out = {"lobster": [], "lottery_rewind": [], "random_reinit": []}
    with open(os.path.join(sweep, "results.csv")) as f:
        for row in csv.DictReader(f):
            if row["method"] in out and int(row["point"]) == point:
                out[row["method"]].append(100 * float(row["test_error"]))
    return out


def table(sweeps):
    analyses = [collect(s) for s in sweeps]
    names = [os.path.basename(os.path.normpath(s)) for s in sweeps]
    lines = ["| claim | paper (G vs 1-S) | " + " | ".join(f"{n}: G / 1-S" for n in names)
             + " | mean G / mean 1-S | verdict |",
             "|---|---|" + "---|" * len(names) + "---|---|"]
    for claim, (what, value, direction) in CLAIMS.items():
        pairs = [(value(a, "g"), value(a, "oneshot")) for a in analyses]
        flags = [agrees(direction, g, o) for g, o in pairs]
        cells = " | ".join(f"{g:.4g} / {o:.4g} {'✓' if ok else '✗'}" for (g, o), ok in zip(pairs, flags))
        means = f"{spread([g for g, _ in pairs])} / {spread([o for _, o in pairs])}"
        lines.append(f"| {claim} {what} | G {direction} | {cells} | {means} | {verdict(flags)} |")
    lines += ["", "Test error (%) of each sweep: G, then the rewinds (the paper's 1-S is the best of them by "
              "validation error) and the Liu et al. re-inits, by sweep seed:", "",
              "| sweep | G | rewinds | re-inits | Hessian: free parameters, examples, HVPs (G, 1-S), seconds |",
              "|---|---|---|---|---|"]
    for sweep, name, a in zip(sweeps, names, analyses):
        e = errors(sweep)
        h = a["hessian"]
        method = a["conventions"]["eigen_method"]
        hvps = f"{h['g'][method]['hvps']}, {h['oneshot'][method]['hvps']}"
        secs = f"{h['g'][method]['seconds'] + h['oneshot'][method]['seconds']:.0f}"
        lines.append(f"| {name} | {' '.join(f'{v:.2f}' for v in e['lobster'])} | "
                     f"{' '.join(f'{v:.2f}' for v in e['lottery_rewind'])} | "
                     f"{' '.join(f'{v:.2f}' for v in e['random_reinit'])} | "
                     f"{h['g']['free_parameters']}, {h['g']['examples']}, {hvps}, {secs} |")
    return "\n".join(lines)


def rewinds_table(sweep):
    """G against every rewind of one sweep (``SWEEP/rewinds/seed_S/analysis.json``, as
    ``experiments/paper_claims/lenet5.sh`` writes them), or None when there are none: the spread over
    the one-shot seeds that one LOBSTER seed leaves."""
    root = os.path.join(sweep, "rewinds")
    names = os.listdir(root) if os.path.isdir(root) else []
    seeds = sorted((n for n in names if re.fullmatch(r"seed_\d+", n)), key=lambda n: int(n[5:]))
    analyses = {}
    for name in seeds:
        path = os.path.join(root, name, "analysis.json")
        if os.path.isfile(path):
            with open(path) as f:
                analyses[name] = json.load(f)
    if not analyses:
        return None
    target = os.path.join(RESULTS, os.path.basename(os.path.normpath(sweep)), "rewinds")
    os.makedirs(target, exist_ok=True)
    for name in analyses:
        shutil.copy2(os.path.join(root, name, "analysis.json"), os.path.join(target, f"{name}.json"))
    first = next(iter(analyses.values()))
    lines = [f"`{os.path.basename(os.path.normpath(sweep))}`:", "", "| claim | G | " + " | ".join(f"rewind {n.replace('_', ' ')}" for n in analyses)
             + " | rewinds: mean ± std | G on the paper's side of |",
             "|---|---|" + "---|" * len(analyses) + "---|---|"]
    for claim, (what, value, direction) in CLAIMS.items():
        g = value(first, "g")
        others = [value(a, "oneshot") for a in analyses.values()]
        sides = sum(agrees(direction, g, o) for o in others)
        lines.append(f"| {claim} {what} | {g:.4g} | " + " | ".join(f"{o:.4g}" for o in others)
                     + f" | {spread(others)} | {sides} of {len(others)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", help="analysed sweep folders (one per LOBSTER seed)")
    parser.add_argument("--tag", required=True, help="marker name in README.md, e.g. lenet300")
    args = parser.parse_args(argv)
    sweeps = sorted(s for s in args.sweeps if os.path.isdir(s))  # the glob also matches the sweeps' logs
    text = table(sweeps)
    readme = os.path.join(RESULTS, "README.md")
    readme_blocks.write_between_markers(readme, f"claims:{args.tag}", text)
    units = units_table(sweeps)
    readme_blocks.write_between_markers(readme, f"units:{args.tag}", units, required=False)
    rewinds = [t for t in map(rewinds_table, sweeps) if t]
    if rewinds:
        readme_blocks.write_between_markers(readme, f"rewinds:{args.tag}", "\n\n".join(rewinds), required=False)
    print(text, units, *rewinds, sep="\n\n")


if __name__ == "__main__":
    sys.exit(main())
