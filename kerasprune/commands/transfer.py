"""``kerasprune transfer``: a trained (sparse) model's features on another dataset (linear probe or fine-tuning)."""
import json

from kerasprune import config
from kerasprune.commands import _common
from kerasprune.config import TransferConfig

HELP = "transfer a trained (sparse) model to another dataset: linear probe or fine-tuning with its mask"
DESCRIPTION = """Replace the classifier of a trained model with a fresh one for the target dataset's
classes and train on the target: --probe linear (default) trains the new head only, the body frozen
(the linear-probe measure of feature quality); --probe finetune trains everything with the source's
zeros held by TF-MOT pruning wrappers (as the sweep's retrainings). --shots N trains on N examples
per class (seeded draw); validation stays the normal held-out split.

Sources: a run folder (`kerasprune train`: its best checkpoint; a sweep retraining: final.weights.h5;
a LOBSTER run with --point N) or a SavedModel directory (as `kerasprune train`/`export` write them).
The source must take inputs of the target's shape (MNIST and Fashion-MNIST: 28x28x1).

Defaults: SGD lr 0.1, momentum 0, batch 100, 10 epochs, best epoch by validation loss.

Writes into --out: config.json, metrics.json (test_accuracy, test_loss, val_accuracy,
source_pruned_params_pct, psp_entropy_1, psp_entropy_2, ...), history.csv, TensorBoard logs
(tensorboard/), the best checkpoint and final.weights.h5. The SavedModel of the transferred model goes
outside --out, to ./saved_models/<run name>_<hash>/final (--export-dir or $KERASPRUNE_SAVED_MODELS).
Run the same command again to resume a killed run. See docs/transfer.md.

examples:
  kerasprune transfer --source runs/lobster_lenet300 --point 12 --dataset fashion_mnist --out runs/t_lin
  kerasprune transfer --source runs/lobster_lenet300 --point 12 --dataset fashion_mnist \\
      --probe finetune --shots 10 --epochs 100 --out runs/t_ft10
"""

SOURCE = ("source", "point")
TRANSFER = ("probe", "shots", "shot_seed", "mask_kinds", "select")
# The architecture and its weights are the source's: no --model, no --init.
TRAINING = tuple(name for name in _common.TRAINING if name not in ("model", "init"))
PSP = ("psp_split", "psp_examples", "psp_pair_samples", "psp_max_exact_units")


def add_arguments(parser):
    config.add_arguments(parser.add_argument_group("source"), TransferConfig, SOURCE, required=("source",))
    config.add_arguments(parser.add_argument_group("transfer"), TransferConfig, TRANSFER)
    config.add_arguments(parser.add_argument_group("training"), TransferConfig, TRAINING)
    psp = parser.add_argument_group("PSP-entropy (of the hidden ReLU inputs, on the target data)")
    config.add_arguments(psp, TransferConfig, PSP)
    _common.add_data_arguments(parser)
    _common.add_run_arguments(parser)


def run(args):
    from kerasprune.transfer import run as run_transfer  # here: it imports TensorFlow, which --help must not load

    metrics = run_transfer(config.from_args(TransferConfig, args), args.out)
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "test_loss", "epochs_completed",
                                               "source_pruned_params_pct", "psp_entropy_1", "psp_entropy_2")}))
