"""``kerasprune transfer``: a trained (sparse) model's features on another dataset (linear probe or fine-tuning)."""
import json

from kerasprune import config
from kerasprune.commands import _common
from kerasprune.config import comma_separated

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


def add_arguments(parser):
    g = parser.add_argument_group("source")
    g.add_argument("--source", required=True,
                   help="run folder (train, sweep retraining, LOBSTER with --point) or SavedModel directory")
    g.add_argument("--point", type=int, default=None, help="operating point of a LOBSTER source")
    g = parser.add_argument_group("transfer")
    g.add_argument("--probe", choices=("linear", "finetune"), default="linear",
                   help="linear: train the new head only (default); finetune: train everything, the "
                        "source's zeros kept by TF-MOT wrappers")
    g.add_argument("--shots", type=_common.positive_int, default=None,
                   help="train on N examples per class of the target (default: the whole training split)")
    g.add_argument("--shot-seed", type=int, default=None, help="seed of the few-shot draw (default: --seed)")
    g.add_argument("--mask-kinds", default="kernel,bias,norm",
                   help="parameters whose source zeros stay zero under finetune, comma-separated "
                        "(default kernel,bias,norm)")
    g.add_argument("--select", choices=("best", "final"), default="best",
                   help="weights kept: best epoch by validation loss (default) or the final one")
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=_common.positive_int, default=10, help="default 10")
    g.add_argument("--seed", type=int, default=0, help="seed of the new head and of the data order")
    g.add_argument("--batch-size", type=_common.positive_int, default=100,
                   help="global batch size (split over replicas under --strategy)")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    g.add_argument("--momentum", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.0,
                   help="coupled L2 weight decay (PyTorch SGD's weight_decay) on the trained parameters "
                        "(default 0)")
    g.add_argument("--optimizer", default="sgd", help="any Keras optimizer name (default sgd)")
    g = parser.add_argument_group("PSP-entropy (of the hidden ReLU inputs, on the target data)")
    g.add_argument("--psp-split", choices=("train", "validation", "test"), default="train",
                   help="target split measured (default train: the whole split, also with --shots)")
    g.add_argument("--psp-examples", type=_common.positive_int, default=5000,
                   help="seeded sample of that split (default 5000)")
    g.add_argument("--psp-pair-samples", type=_common.positive_int, default=20000,
                   help="sampled neuron pairs per wide layer, second order (default 20000)")
    g.add_argument("--psp-max-exact-units", type=_common.positive_int, default=1024,
                   help="layers up to this width get exact second order (default 1024)")
    _common.add_data_arguments(parser)
    _common.add_run_arguments(parser)


def run(args):
    from kerasprune.transfer import TransferConfig, run as run_transfer  # TensorFlow, which --help must not load

    settings = config.from_args(TransferConfig, args, mask_kinds=comma_separated(args.mask_kinds))
    metrics = run_transfer(settings, args.out)
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "test_loss", "epochs_completed",
                                               "source_pruned_params_pct", "psp_entropy_1", "psp_entropy_2")}))
