"""Recounts ``pruned_neurons_pct`` of the retrained runs of a finished sweep, in place.

Sweeps made before commit 728e1d4 counted the pruned neurons of every retrained model (lottery
rewind, Liu et al., random structure, magnitude, IMP, PolynomialDecay) on the model returned by
TF-MOT's ``strip_pruning``. That model shares its ReLU/Flatten layers with the wrapped one, and the
count then missed every neuron dead by its outgoing weights only (it saw only the incoming-dead
ones). This script rebuilds each run's plain model from its ``config.json``, loads its
``final.weights.h5``, counts again, and rewrites ``result.json``, the ``results.csv`` rows and
``figure1.png``. Parameter counts did not change and are checked.

    KERASPRUNE_DATA_DIR=../shared/datasets python experiments/recount_neurons.py runs/quick \
        [--copy-to experiments/results/quick]
"""
import argparse
import csv
import io
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kerasprune import models, report, results, runs, sparsity  # noqa: E402


def recount_run(run_dir):
    """``(old %, new %)`` of one finished retraining; updates its ``result.json``."""
    result = runs.finished(run_dir, "retrain")
    model, _ = models.build_for_run(run_dir)
    model.load_weights(runs.run_file(run_dir, result["weights"]))
    rep = sparsity.report(model)
    if abs(rep.pruned_params_pct - result["pruned_params_pct"]) > 1e-9:
        raise RuntimeError(f"{run_dir}: pruned parameters {rep.pruned_params_pct} != recorded "
                           f"{result['pruned_params_pct']}; wrong weights file?")
    old = result["pruned_neurons_pct"]
    result["pruned_neurons_pct"] = rep.pruned_neurons_pct
    runs.mark_finished(run_dir, "retrain", result)
    return old, rep.pruned_neurons_pct


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the sweep's output folder (holds results.csv)")
    p.add_argument("--copy-to", default=None, help="also copy results.csv and figure1.png here")
    args = p.parse_args()
    table = os.path.join(args.out, runs.RESULTS)
    with results.file_lock(table + ".lock"):  # a sweep still appending waits for the rewrite
        rewrite(args.out, table)
    sweep = runs.read_json(os.path.join(args.out, runs.SWEEP_CONFIG))
    figure = os.path.join(args.out, runs.FIGURE1)
    report.figure1(results.read(table), figure,
                   title=f"{sweep['name']}: {sweep['model']} on {sweep['dataset']}")
    print(f"rewrote {figure}")
    if args.copy_to:
        for name in (runs.RESULTS, runs.FIGURE1):
            shutil.copy(os.path.join(args.out, name), os.path.join(args.copy_to, name))


def rewrite(out, table):
    rows = results.ResultsTable(table).rows()
    changed = 0
    for row in rows:
        run_dir = os.path.join(out, row["run_dir"])
        if row["method"] in ("lobster", "dense") or runs.finished(run_dir, "retrain") is None:
            continue
        old, new = recount_run(run_dir)
        if abs(float(row["pruned_neurons_pct"]) - new) > 1e-9:
            changed += 1
            print(f"{row['method']:24s} point {row['point']:>3s} seed {row['seed']:>6s}: "
                  f"pruned neurons {float(old):6.2f}% -> {new:6.2f}%")
        row["pruned_neurons_pct"] = repr(new)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=results.COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    runs.write_atomic(table, buffer.getvalue())
    print(f"{changed} of {len(rows)} rows changed; rewrote {table}")


if __name__ == "__main__":
    main()
