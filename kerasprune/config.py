"""The settings every kind of run shares: model, data split, optimiser, distribution strategy.

``TrainConfig`` (plain training), ``LobsterConfig`` (a LOBSTER run) and ``SweepConfig`` (a Figure 1
setup) extend :class:`RunSettings` with their own fields, so a setting has one name, one default and
one check everywhere, and the CLI fills them all through :func:`settings_from_args`. This module
imports no TensorFlow (``kerasprune --help`` stays fast).
"""
import dataclasses
import os
from typing import Optional

from kerasprune.errors import KerasPruneError


@dataclasses.dataclass
class RunSettings:
    """Model, data and optimiser settings (defaults: the paper code's SGD settings)."""

    model: str = "lenet300"
    dataset: str = "mnist"
    batch_size: int = 100  # global batch: split over the replicas of a distribution strategy
    lr: float = 0.1
    momentum: float = 0.0
    # Coupled L2 decay, PyTorch SGD's weight_decay: g <- g + weight_decay * w before the optimizer's
    # update (training.make_optimizer). 0: none. Missing from an old config.json counts as 0.
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    val_fraction: float = 0.1
    split_seed: int = 0  # seed of the train/validation split (independent of the training seed)
    data_dir: Optional[str] = None
    max_train_examples: Optional[int] = None
    max_test_examples: Optional[int] = None
    strategy: str = "default"

    def __post_init__(self):
        if self.batch_size < 1:
            raise KerasPruneError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise KerasPruneError(f"lr must be positive, got {self.lr}")
        if self.momentum < 0:
            raise KerasPruneError(f"momentum must be >= 0, got {self.momentum}")
        if self.weight_decay < 0:
            raise KerasPruneError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.val_fraction < 1:  # runs select and prune on the validation split
            raise KerasPruneError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("max_train_examples", "max_test_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise KerasPruneError(f"{name} must be >= 1 (or unset for all), got {value}")
        if self.max_train_examples is not None and round(self.max_train_examples * self.val_fraction) < 1:
            raise KerasPruneError(f"max_train_examples {self.max_train_examples} leaves no validation example "
                                  f"at val_fraction {self.val_fraction}")
        from kerasprune import data

        if self.dataset not in data.DATASETS and not os.path.isdir(self.dataset):
            data.spec(self.dataset)  # raises the unknown-name error, before any run folder is made

    def settings(self):
        """The :class:`RunSettings` fields of this config, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RunSettings)}

    def make_optimizer(self):
        """The base optimizer these settings describe (:func:`kerasprune.training.make_optimizer`):
        use this rather than passing the fields one by one, so no optimizer setting is left out."""
        from kerasprune import training

        return training.make_optimizer(self.optimizer, self.lr, self.momentum, self.weight_decay)

    def load_data(self, shuffle_seed, **kwargs):
        """The dataset splits these settings describe (:func:`kerasprune.data.load`)."""
        from kerasprune import data

        return data.load(self.dataset, data_dir=self.data_dir, batch_size=self.batch_size,
                         val_fraction=self.val_fraction, split_seed=self.split_seed,
                         shuffle_seed=shuffle_seed, max_train_examples=self.max_train_examples,
                         max_test_examples=self.max_test_examples, **kwargs)


def settings_from_args(args):
    """The :class:`RunSettings` fields found in parsed command-line ``args`` (argparse uses the
    same names), as keyword arguments."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSettings) if hasattr(args, f.name)}
