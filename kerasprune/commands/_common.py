"""Arguments that several commands share, so they are spelt and documented once."""
from kerasprune.distribute import STRATEGIES, strategy_flag


def positive_int(text):
    """argparse type: an integer >= 1 (0 or a negative count would mean "all" or fail deep inside)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_data_arguments(parser, dataset_default=None, dataset_required=None):
    g = parser.add_argument_group("data")
    required = dataset_default is None if dataset_required is None else dataset_required
    g.add_argument("--dataset", required=required, default=dataset_default,
                   help="mnist, fashion_mnist, cifar10, or the path of a class-per-folder image tree"
                        + ("" if required else " (default: the one the models' run folders record)"))
    g.add_argument("--data-dir", default=None,
                   help="local data dir with mnist/, fashion_mnist/, cifar10_jpeg/ "
                        "(default: $KERASPRUNE_DATA_DIR; unset: download with TFDS)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the training set held out for validation (default 0.1)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split")
    g.add_argument("--max-train-examples", type=positive_int, default=None,
                   help="use only the first N training examples (quick runs)")
    g.add_argument("--max-test-examples", type=positive_int, default=None,
                   help="use only the first N test examples (quick runs)")


def add_training_arguments(parser, epochs_default=10):
    g = parser.add_argument_group("training")
    g.add_argument("--model", required=True, help="lenet300, lenet5 or resnet32")
    g.add_argument("--epochs", type=positive_int, default=epochs_default, help="epochs to train")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of initial weights and data order (same seed, same run)")
    g.add_argument("--batch-size", type=int, default=100,
                   help="global batch size (split over replicas under --strategy)")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    g.add_argument("--momentum", type=float, default=0.0)
    g.add_argument("--weight-decay", type=float, default=0.0,
                   help="L2 weight decay as PyTorch SGD's weight_decay: wd * w is added to the gradient "
                        "before the optimizer's update (momentum, step), for every trainable "
                        "variable (default 0: none)")
    g.add_argument("--optimizer", default="sgd", help="any Keras optimizer name (default sgd)")


def add_run_arguments(parser):
    g = parser.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    g.add_argument("--strategy", default="default", type=strategy_flag, metavar="SPEC",
                   help=f"tf.distribute strategy: {', '.join(STRATEGIES)}, optionally with devices, "
                        "e.g. mirrored:/gpu:0,/gpu:1 (default: one device; see docs/distributed.md)")
    g.add_argument("--export-dir", default=None,
                   help="root of SavedModel exports (default: $KERASPRUNE_SAVED_MODELS or ./saved_models)")
