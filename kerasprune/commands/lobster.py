"""``kerasprune lobster``: LOBSTER gradual pruning of a model on a dataset."""
from kerasprune import config
from kerasprune.commands import _common
from kerasprune.config import LobsterConfig

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
    _common.add_training_arguments(parser, LobsterConfig)
    lobster_settings = config.own_fields(LobsterConfig, config.TrainingRun)
    config.add_arguments(parser.add_argument_group("lobster"), LobsterConfig, lobster_settings)
    _common.add_data_arguments(parser)
    _common.add_run_arguments(parser, names=("strategy",))


def run(args):
    from kerasprune.lobster import run as run_lobster  # here: it imports TensorFlow, which --help must not load

    rows = run_lobster(config.from_args(LobsterConfig, args), args.out)
    for row in rows:
        print(f"point {row['point']:3d}: {row['pruned_params_pct']:6.2f}% params, "
              f"{row['pruned_neurons_pct']:6.2f}% neurons pruned, val error {row['val_error']:.4f}, "
              f"test error {row['test_error']:.4f} (epoch {row['epoch']})")
