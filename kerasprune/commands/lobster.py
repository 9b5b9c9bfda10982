"""``kerasprune lobster``: LOBSTER gradual pruning of a model on a dataset."""
from kerasprune.commands import _common

HELP = "prune a model with LOBSTER and write its operating points"
DESCRIPTION = """Train and prune with LOBSTER (loss-based sensitivity regularisation + pruning at
plateaus of the validation loss), keeping one operating point per sparsity level reached.

Writes into --out: config.json, initial.weights.h5, operating_points.csv (point, pruned_params_pct,
pruned_neurons_pct, val_error, val_loss, test_error, test_loss, epoch, weights, ...), points/
(each point's weights, pruned parameters exactly zero), progression.png, history.csv,
tensorboard/ (sparsity per layer, pruned neurons, threshold, lambda, lr) and metrics.json at the end.
Run the same command again to resume a killed run. See docs/lobster.md.

example:
  kerasprune lobster --model lenet300 --dataset mnist --epochs 1000 --out runs/lobster_lenet300
"""


def add_arguments(parser):
    _common.add_training_arguments(parser, epochs_default=1000)
    g = parser.add_argument_group("lobster")
    g.add_argument("--lmbda", type=float, default=1e-4,
                   help="sensitivity regularisation strength, not scaled by the lr (default 1e-4)")
    g.add_argument("--twt", type=float, default=0.05,
                   help="admissible relative validation-loss increase per pruning (default 0.05)")
    g.add_argument("--pwe", type=_common.positive_int, default=20, help="plateau patience in epochs (default 20)")
    g.add_argument("--good-margin", type=float, default=0.01,
                   help="an epoch is good if val loss < (1 + margin) * best (default 0.01)")
    g.add_argument("--tolerance", type=float, default=0.05,
                   help="fraction of the loss bound in the threshold search's stop rule (default 0.05)")
    g.add_argument("--threshold-search", choices=("reference", "conservative"), default="reference",
                   help="reference: the authors' bisection, pruning at the midpoint once the two ends' "
                        "losses are within tolerance of each other; conservative: prune at the "
                        "admissible lower end once both are within tolerance of the bound (cuts less "
                        "per plateau) (default reference)")
    g.add_argument("--stop-at-pruned", type=float, default=None, metavar="PCT",
                   help="stop once an operating point has at least PCT%% of the parameters pruned "
                        "(default: train for all --epochs)")
    g.add_argument("--lr-plateau", action="store_true",
                   help="ReduceLROnPlateau on val loss (factor 0.1, patience 10, cooldown 50)")
    g.add_argument("--prune", default="kernel,bias,norm",
                   help="parameter kinds pruned and counted, comma-separated (default kernel,bias,norm)")
    _common.add_data_arguments(parser)
    r = parser.add_argument_group("run")
    r.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    r.add_argument("--strategy", default="default", type=_common.strategy_flag, metavar="SPEC",
                   help="tf.distribute strategy (default: one device)")


def run(args):
    from kerasprune.config import settings_from_args
    from kerasprune.lobster import LobsterConfig, run as run_lobster

    config = LobsterConfig(
        **settings_from_args(args), epochs=args.epochs, seed=args.seed, lmbda=args.lmbda, twt=args.twt,
        pwe=args.pwe, good_margin=args.good_margin, tolerance=args.tolerance, lr_plateau=args.lr_plateau,
        threshold_search=args.threshold_search, stop_at_pruned=args.stop_at_pruned,
        kinds=tuple(k.strip() for k in args.prune.split(",") if k.strip()))
    rows = run_lobster(config, args.out)
    for row in rows:
        print(f"point {row['point']:3d}: {row['pruned_params_pct']:6.2f}% params, "
              f"{row['pruned_neurons_pct']:6.2f}% neurons pruned, val error {row['val_error']:.4f}, "
              f"test error {row['test_error']:.4f} (epoch {row['epoch']})")
