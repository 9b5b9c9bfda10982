"""``kerasprune sweep``: the paper's Figure 1 for one setup (LOBSTER vs one-shot retrainings)."""
from kerasprune.commands import _common

HELP = "run every one-shot baseline at every LOBSTER operating point (Figure 1)"
DESCRIPTION = """Run the Figure 1 sweep of a setup described by a TOML file (see docs/sweep.md).

LOBSTER runs first (into OUT/lobster) unless the config names an existing run (lobster_dir);
then every baseline (lottery_rewind, random_reinit, random_structure, magnitude_oneshot, imp,
polynomial_decay) runs at every operating point for every seed. Each finished run is appended
at once to OUT/results.csv; OUT/figure1.png is drawn at the end, and OUT/exports.json records
SavedModels of the G (LOBSTER) and best 1-S solutions at the highest sparsity.
Killed, run the same command again: finished runs are skipped, unfinished ones resume. Two
sweeps on the same OUT share the work.

examples:
  kerasprune sweep experiments/quick.toml --out runs/quick
  kerasprune sweep experiments/lenet300_mnist.toml --out runs/lenet300_mnist
  kerasprune sweep experiments/quick.toml --out runs/quick --plot-only
  kerasprune sweep experiments/lenet300_mnist.toml --out runs/lenet300_mnist \
      --lobster-dir runs/lobster_lenet300_mnist
  kerasprune sweep experiments/lenet300_mnist_g_vs_1s.toml --out runs/g_vs_1s_p48 \
      --lobster-dir runs/lobster_lenet300_mnist_pwe5 --points 48
"""


def add_arguments(parser):
    parser.add_argument("config", help="sweep config (TOML), e.g. experiments/quick.toml")
    parser.add_argument("--out", required=True, help="sweep folder (rerun the same command to resume)")
    parser.add_argument("--data-dir", default=None,
                        help="local data dir (default: the config's, else $KERASPRUNE_DATA_DIR)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the config's seeds")
    parser.add_argument("--methods", nargs="+", default=None, help="override the config's methods")
    parser.add_argument("--points", type=int, nargs="+", default=None,
                        help="override the config's LOBSTER operating points (indices)")
    parser.add_argument("--strategy", default=None, type=_common.strategy_flag, metavar="SPEC", help="tf.distribute strategy")
    parser.add_argument("--lobster-dir", default=None,
                        help="use this existing LOBSTER run folder (its finished operating points) "
                             "instead of running LOBSTER in OUT/lobster")
    parser.add_argument("--plot-only", action="store_true",
                        help="only redraw OUT/figure1.png from OUT/results.csv")


def run(args):
    import os

    from kerasprune import report, results, sweep
    from kerasprune.errors import KerasPruneError

    if args.plot_only:
        table = os.path.join(args.out, "results.csv")
        if not os.path.isfile(table):
            raise KerasPruneError(f"{table} does not exist: run the sweep first")
        print(report.figure1(results.read(table), os.path.join(args.out, "figure1.png")))
        return 0
    config = sweep.load_config(args.config, data_dir=args.data_dir, seeds=args.seeds, methods=args.methods,
                               points=args.points,
                               strategy=args.strategy, lobster_dir=args.lobster_dir)
    sweep.run(config, args.out)
    return 0
