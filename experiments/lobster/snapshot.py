"""Copies a (possibly still running) LOBSTER run's operating points next to this file.

The level a running run is on has no test metrics yet (they are measured when the level ends);
the copy measures them from that point's saved weights, so every row of the copy is complete.
The run folder itself is only read.

usage:
  KERASPRUNE_DATA_DIR=../shared/datasets python experiments/lobster/snapshot.py \
      runs/lobster_lenet300_mnist experiments/lobster/lenet300_mnist
writes <prefix>_operating_points.csv, <prefix>_progression.png and prints a markdown table.
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from kerasprune import data, runs, training  # noqa: E402
from kerasprune._keras import keras  # noqa: E402
from kerasprune.lobster import load_operating_point, read_operating_points  # noqa: E402
from kerasprune.lobster import points  # noqa: E402


def main(run_dir, prefix):
    rows = read_operating_points(run_dir)
    config = runs.read_json(os.path.join(run_dir, runs.CONFIG))
    missing = [r for r in rows if math.isnan(r["test_error"])]
    if missing:
        splits = data.load(config["dataset"], data_dir=config.get("data_dir"),
                           val_fraction=config["val_fraction"], split_seed=config["split_seed"],
                           max_train_examples=config.get("max_train_examples"),
                           max_test_examples=config.get("max_test_examples"), eval_batch_size=1000)
        for row in missing:
            model = load_operating_point(run_dir, row["point"])
            training.compile_model(model, keras.optimizers.SGD())
            result = training.evaluate(model, splits.test)
            row.update(test_loss=result["loss"], test_error=1.0 - result["accuracy"])
    out_dir, name = os.path.split(prefix)
    tmp = os.path.join(out_dir, f".{name}.tmp")
    os.makedirs(tmp, exist_ok=True)
    points.write_points(tmp, rows)
    os.replace(os.path.join(tmp, points.POINTS_CSV), f"{prefix}_operating_points.csv")
    points.plot_progression(tmp, rows, title=f"LOBSTER {config['model']} / {config['dataset']}")
    os.replace(os.path.join(tmp, points.PLOT), f"{prefix}_progression.png")
    os.rmdir(tmp)
    print("| point | epoch | pruned params % | pruned neurons % | val error % | test error % |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['point']} | {r['epoch']} | {r['pruned_params_pct']:.2f} | {r['pruned_neurons_pct']:.2f} "
              f"| {100 * r['val_error']:.2f} | {100 * r['test_error']:.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
