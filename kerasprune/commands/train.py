"""``kerasprune train``: plain (dense) training of a model on a dataset."""
import json

from kerasprune import config
from kerasprune.commands import _common
from kerasprune.config import TrainConfig

HELP = "train a model (dense) and write a run folder"
DESCRIPTION = """Train a model with SGD (paper defaults: lr 0.1, batch 100, momentum 0).

Writes into --out: config.json, metrics.json (test_accuracy, test_loss, epochs_completed, ...),
history.csv, TensorBoard logs (tensorboard/), the best checkpoint by validation loss, the initial
weights (for lottery-ticket rewinding). The SavedModel of the final model goes outside --out, to
./saved_models/<run name>_<hash>/final (--export-dir or $KERASPRUNE_SAVED_MODELS to change the root).
Run the same command again to resume a killed run.

example:
  kerasprune train --model lenet300 --dataset mnist --epochs 1 --out runs/lenet300
"""


def add_arguments(parser):
    _common.add_training_arguments(parser, TrainConfig)
    _common.add_data_arguments(parser)
    _common.add_run_arguments(parser)


def run(args):
    from kerasprune.training import train  # here: it imports TensorFlow, which --help must not load

    metrics = train(config.from_args(TrainConfig, args), args.out)
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "test_loss", "epochs_completed")}))
