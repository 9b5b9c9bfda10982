"""``kerasprune export``: SavedModels (sparse and compacted), size reports and TFLite of a run's models."""
import os

from kerasprune import runs
from kerasprune.commands import _common
from kerasprune.distribute import declare_strategy
from kerasprune.errors import KerasPruneError

HELP = "export a run's pruned models: SavedModel, compacted SavedModel, sizes, TFLite"
DESCRIPTION = """Export the pruned models of one or more run folders.

For each model (every operating point of a LOBSTER run, the final model of a one-shot baseline run,
the best checkpoint of a training run, or --weights files) it writes, under
<export root>/<run folder>_<hash>/:
  TAG/               SavedModel of the pruned model: wrappers stripped, masks folded in, zeros kept;
                     signature serving_default(image) -> logits. Loads with tf.saved_model.load and
                     tf_keras.models.load_model without kerasprune installed.
  TAG_compact/       the same function with every removable neuron/filter removed (an ordinary,
                     smaller Keras model; see docs/export.md for what ResNets keep).
  TAG.tflite, TAG_compact.tflite   with --tflite.
  TAG.export.json    sizes (params, non-zeros, SavedModel bytes, gzip bytes, TFLite bytes), the
                     compaction plan per layer, and the test accuracy of both SavedModels as loaded
                     back with their largest logit difference. Written last: rerun to finish a
                     killed export; existing exports are skipped unless --force.

examples:
  kerasprune export runs/lobster_lenet300_mnist --tflite
  kerasprune export runs/lobster_lenet300_mnist --points last
  kerasprune export runs/sweep_lenet300 --recursive      # every run folder below (all sweep methods)
"""


def add_arguments(parser):
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) to export from")
    parser.add_argument("--points", default="all",
                        help="LOBSTER operating points: all (default), last, or indices like 3,5")
    parser.add_argument("--weights", action="append", default=[], metavar="FILE",
                        help="export this weights file of the run's model (repeatable)")
    parser.add_argument("--recursive", action="store_true",
                        help="export every run folder found below each RUN_DIR")
    parser.add_argument("--no-compact", dest="compact", action="store_false",
                        help="skip the compacted model")
    parser.add_argument("--tflite", action="store_true", help="also convert both models to TFLite")
    parser.add_argument("--no-eval", dest="evaluate", action="store_false",
                        help="skip evaluating the exported SavedModels on the test set")
    parser.add_argument("--max-test-examples", type=_common.positive_int, default=None,
                        help="evaluate on the first N test examples only")
    parser.add_argument("--export-dir", "--out", dest="export_dir", default=None,
                        help="root of exports (default: $KERASPRUNE_SAVED_MODELS or ./saved_models)")
    parser.add_argument("--force", action="store_true", help="re-export models already exported")


def find_runs(root):
    """Run folders at or below ``root`` (folders with a config.json and something to export)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if runs.CONFIG in files and (runs.POINTS_CSV in files or runs.FINAL_WEIGHTS in files
                                     or os.path.isfile(os.path.join(folder, runs.BEST_WEIGHTS))):
            found.append(folder)
    return found


def run(args):
    from kerasprune.export import export_run  # here: it imports TensorFlow, which --help must not load

    declare_strategy("default")  # one process: it writes, whatever TF_CONFIG is left in the shell

    run_dirs = []
    for root in args.run_dirs:
        if not os.path.isdir(root):
            raise KerasPruneError(f"run folder {root} does not exist")
        run_dirs += find_runs(root) if args.recursive else [root]
    if not run_dirs:
        raise KerasPruneError(f"no run folders below {', '.join(args.run_dirs)}")
    for run_dir in run_dirs:
        print(f"== {run_dir}", flush=True)
        export_run(run_dir, export_dir=args.export_dir, points=args.points, weights=args.weights,
                   compact=args.compact, tflite=args.tflite, evaluate=args.evaluate, force=args.force,
                   max_test_examples=args.max_test_examples)
