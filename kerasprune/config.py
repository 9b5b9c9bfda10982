"""The settings every kind of run shares: model, data split, optimiser, distribution strategy.

``TrainConfig`` (plain training), ``LobsterConfig`` (a LOBSTER run) and ``SweepConfig`` (a Figure 1
setup) extend :class:`RunSettings` with their own fields, so a setting has one name, one default and
one check everywhere, and the CLI fills them all through :func:`settings_from_args`. This module
imports no TensorFlow (``kerasprune --help`` stays fast).
"""
import dataclasses
import numbers
import os
import typing
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
    # update (optimizers.make_optimizer). 0: none. Missing from an old config.json counts as 0.
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    val_fraction: float = 0.1
    split_seed: int = 0  # seed of the train/validation split (independent of the training seed)
    data_dir: Optional[str] = None
    max_train_examples: Optional[int] = None
    max_test_examples: Optional[int] = None
    strategy: str = "default"

    def __post_init__(self):
        _check_types(self)
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
        from kerasprune import data, models, optimizers  # here: models and optimizers import TensorFlow

        if self.dataset not in data.DATASETS and not os.path.isdir(self.dataset):
            data.spec(self.dataset)  # raises the unknown-name error, before any run folder is made
        # Names too, before any run folder is made: a typo must not pin a folder's config.json.
        models.MODELS.get_or_raise(self.model)
        optimizers.check_optimizer_name(self.optimizer, self.momentum)

    def settings(self):
        """The :class:`RunSettings` fields of this config, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RunSettings)}

    @staticmethod
    def default_settings():
        """Each :class:`RunSettings` field's default: what a run folder written before the field
        existed ran with (``kerasprune.runs.start`` reads a config.json that lacks it so)."""
        return {f.name: f.default for f in dataclasses.fields(RunSettings) if f.default is not dataclasses.MISSING}

    def make_optimizer(self):
        """The base optimizer these settings describe (:func:`kerasprune.optimizers.make_optimizer`):
        use this rather than passing the fields one by one, so no optimizer setting is left out."""
        from kerasprune import optimizers

        return optimizers.make_optimizer(self.optimizer, self.lr, self.momentum, self.weight_decay)

    def load_data(self, shuffle_seed, **kwargs):
        """The dataset splits these settings describe (:func:`kerasprune.data.load`)."""
        from kerasprune import data

        return data.load(self.dataset, data_dir=self.data_dir, batch_size=self.batch_size,
                         val_fraction=self.val_fraction, split_seed=self.split_seed,
                         shuffle_seed=shuffle_seed, max_train_examples=self.max_train_examples,
                         max_test_examples=self.max_test_examples, **kwargs)


def _check_types(config):
    """One-line errors for values of the wrong type (e.g. ``epochs = "2"`` in a TOML file), checked
    against the dataclass annotations of ``config``'s class, so each subclass's fields are covered."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), hints.get(field.name)
        if type(value).__module__ == "numpy" and isinstance(value, numbers.Number):
            # numpy scalars (np.int64 from np.arange, ...) count as the Python number they hold
            value = value.item()
            setattr(config, field.name, value)
        allowed = _allowed_types(hint)
        if allowed is None or isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
            continue
        names = " or ".join(sorted({t.__name__ for t in allowed if t is not type(None)}))
        raise KerasPruneError(f"{field.name} must be {names}, got {value!r} ({type(value).__name__})")


def _allowed_types(hint):
    """The runtime types a field annotated ``hint`` accepts (None: not checked)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        parts = [_allowed_types(a) for a in typing.get_args(hint)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    if hint is type(None):
        return (type(None),)
    if hint is float:
        return (float, int)
    if hint in (int, str, bool):
        return (hint,)
    if origin in (list, tuple) or hint in (list, tuple):
        return (list, tuple)
    if origin is dict or hint is dict:
        return (dict,)
    return None


def settings_from_args(args):
    """The :class:`RunSettings` fields found in parsed command-line ``args`` (argparse uses the
    same names), as keyword arguments."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSettings) if hasattr(args, f.name)}
