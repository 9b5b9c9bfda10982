"""Flag groups that several commands share, made from the settings' fields (:mod:`kerasprune.config`)."""
from kerasprune import config
from kerasprune.config import RunSettings, TrainConfig, positive_int  # noqa: F401  (positive_int: analyze's type)
from kerasprune.distribute import strategy_flag  # noqa: F401  (analyze's --strategy type)

TRAINING = ("model", "epochs", "seed", "init", "batch_size", "lr", "momentum", "weight_decay", "optimizer")
DATA = ("dataset", "data_dir", "val_fraction", "split_seed", "max_train_examples", "max_test_examples")


def add_training_arguments(parser, config_class=TrainConfig):
    """The ``training`` group: model, length, seed and optimiser of ``config_class``."""
    config.add_arguments(parser.add_argument_group("training"), config_class, TRAINING, required=("model",))


def add_data_arguments(parser, dataset_required=True):
    """The ``data`` group. ``dataset_required=False``: a command that can read the dataset from the
    models' run folders (``kerasprune analyze``)."""
    group = parser.add_argument_group("data")
    if dataset_required:
        config.add_arguments(group, RunSettings, DATA[:1], required=("dataset",))
    else:
        help_text = RunSettings.__dataclass_fields__["dataset"].metadata["help"]
        group.add_argument("--dataset", default=None,
                           help=help_text + " (default: the one the models' run folders record)")
    config.add_arguments(group, RunSettings, DATA[1:])


def add_run_arguments(parser, names=("strategy", "export_dir")):
    """The ``run`` group: ``--out`` (the run folder, not a setting) and the ``TrainConfig`` fields ``names``."""
    group = parser.add_argument_group("run")
    group.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    config.add_arguments(group, TrainConfig, names)
