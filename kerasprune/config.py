"""The settings of every kind of run, each defined once: its name, default, check and help text.

:class:`RunSettings` (model, data, optimiser, strategy) is what every run shares; :class:`TrainConfig`
(plain training) and :class:`LobsterConfig` (a LOBSTER run) add the length and seed of a training
(:class:`TrainingRun`), :class:`TransferConfig` (a transfer) adds its source and probe to the shared
ones, and ``kerasprune.sweep.SweepConfig`` (a Figure 1 setup) adds its own fields and nests a
``LobsterConfig``. Each field's ``--help`` text sits beside it (:func:`setting`), as in open_lth's
hparams: :func:`add_arguments` makes a command's flags from the fields and :func:`from_args` the
config from the parsed flags, so a default lives in one place.

The commands import this module for ``kerasprune --help``, so it imports no TensorFlow at import:
the checks and helpers that need it (``data``, ``models``, ``optimizers``) import it when they run.
"""
import argparse
import dataclasses
import numbers
import os
import typing
from typing import Optional, Tuple

from kerasprune.distribute import strategy_flag
from kerasprune.errors import KerasPruneError
from kerasprune.pure import schedule
from kerasprune.pure.inits import DEFAULT_INIT, INITS, init_of_older_folder
from kerasprune.pure.schedule import SEARCH_RULES
from kerasprune.pure.sparsity import DEFAULT_KINDS


# ---------------------------------------------------------------------------------------------
# Fields with their help text, and the flags made from them.

def setting(default=dataclasses.MISSING, help="", *, factory=dataclasses.MISSING, flag=None, type=None,
            metavar=None, choices=None, shown_default=None):
    """A dataclass field with its ``--help`` text beside it.

    ``flag``: the option when it is not ``--<name-with-dashes>``; ``type``: the argparse type when the
    annotation's is not enough (e.g. :func:`positive_int`); ``shown_default``: how ``--help`` states the
    default when the value alone would not say it (``$KERASPRUNE_DATA_DIR`` for ``None``)."""
    metadata = dict(help=help, flag=flag, type=type, metavar=metavar, choices=choices, shown_default=shown_default)
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def positive_int(text):
    """argparse type: an integer >= 1 (0 or a negative count would mean "all" or fail deep inside)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def comma_separated(text):
    """argparse type of tuple settings: ``"kernel, bias"`` -> ``("kernel", "bias")``."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def add_arguments(parser, cls, names, required=(), overrides=False):
    """Adds the flags of ``cls``'s fields ``names`` to ``parser`` (or an argument group), in that order.

    Each flag is ``--<name-with-dashes>`` (or the field's ``flag``) and stores into the field's name,
    with the field's default, help and a type read from its annotation: ``bool`` a switch, a list
    ``nargs="+"``, a tuple one comma-separated word. ``required``: flags the command insists on (the
    field's default is not used). ``overrides``: flags that replace a config file's value only when
    given (default None), as ``kerasprune sweep --seeds`` does.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        meta, default = fields[name].metadata, _default_of(fields[name])
        flag = meta.get("flag") or "--" + name.replace("_", "-")
        kwargs = _parsing(_without_none(hints[name]), meta)
        if isinstance(default, tuple):
            default = ",".join(default)  # argparse passes a text default through ``type`` too
        help_text, shown = meta.get("help", "").replace("%", "%%"), meta.get("shown_default")
        if name in required:
            kwargs.update(required=True, default=None)
        elif overrides:
            kwargs["default"] = None
            fallback = shown or default
            help_text += " (default: the config's" + ("" if fallback is None else f", else {fallback}") + ")"
        else:
            kwargs["default"] = default
            if shown:  # else the help formatter states the value (kerasprune.cli)
                help_text += f" (default: {shown})"
        if meta.get("flag") and "metavar" not in kwargs:
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()  # argparse's name for it
        parser.add_argument(flag, dest=name, help=help_text, **kwargs)


def _parsing(hint, meta):
    """How argparse reads a field annotated ``hint``: its ``action`` or ``type``, ``nargs``, ``metavar``
    and ``choices``."""
    if hint is bool:
        return {"action": "store_true"}
    kwargs = {"type": meta.get("type"), "metavar": meta.get("metavar"), "choices": meta.get("choices")}
    if typing.get_origin(hint) is list:
        kwargs["nargs"] = "+"
        hint = typing.get_args(hint)[0]
    elif typing.get_origin(hint) is tuple:
        hint = comma_separated
    kwargs["type"] = kwargs["type"] or (None if hint is str else hint)
    return {k: v for k, v in kwargs.items() if v is not None}


def from_args(cls, args, **given):
    """A ``cls`` from parsed flags: each of its fields that ``args`` holds (:func:`add_arguments`
    stores a flag under its field's name), then ``given``."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    return cls(**{**values, **given})


def own_fields(cls, base):
    """The names of ``cls``'s fields that ``base`` lacks, in their order (e.g. LOBSTER's own settings)."""
    inherited = {f.name for f in dataclasses.fields(base)}
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in inherited)


def _default_of(field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _without_none(hint):
    """``Optional[X]`` -> ``X``."""
    if typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


# ---------------------------------------------------------------------------------------------
# The settings.

@dataclasses.dataclass
class RunSettings:
    """Model, data and optimiser settings (defaults: the paper code's SGD settings)."""

    model: str = setting("lenet300", "lenet300, lenet5 or resnet32")
    dataset: str = setting("mnist", "mnist, fashion_mnist, cifar10, or the path of a class-per-folder image tree")
    batch_size: int = setting(100, "global batch size (split over replicas under --strategy)")
    lr: float = setting(0.1, "learning rate")
    momentum: float = setting(0.0, "momentum of the optimizers that have one (SGD, RMSprop)")
    # Coupled L2 decay: make_optimizer folds it into the gradient. Missing from an old config.json: 0.
    weight_decay: float = setting(0.0, "L2 weight decay as PyTorch SGD's weight_decay: wd * w is added to the "
                                       "gradient before the optimizer's update (momentum, step), for every "
                                       "trainable variable", shown_default="0, none")
    optimizer: str = setting("sgd", "any Keras optimizer name")
    val_fraction: float = setting(0.1, "fraction of the training set held out for validation")
    split_seed: int = setting(0, "seed of the train/validation split")  # independent of the training seed
    data_dir: Optional[str] = setting(None, "local data dir with mnist/, fashion_mnist/, cifar10_jpeg/",
                                      shown_default="$KERASPRUNE_DATA_DIR; unset: download with TFDS")
    max_train_examples: Optional[int] = setting(None, "use only the first N training examples (quick runs)",
                                                type=positive_int)
    max_test_examples: Optional[int] = setting(None, "use only the first N test examples (quick runs)",
                                               type=positive_int)
    strategy: str = setting("default", "tf.distribute strategy: default, one_device, mirrored, multiworker, tpu, "
                                       "optionally with devices, e.g. mirrored:/gpu:0,/gpu:1", type=strategy_flag,
                            metavar="SPEC", shown_default="one device; see docs/distributed.md")

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
        from kerasprune import data, models, optimizers

        if self.dataset not in data.DATASETS and not os.path.isdir(self.dataset):
            data.spec(self.dataset)  # raises the unknown-name error, before any run folder is made
        # Names too, before any run folder is made: a typo must not pin a folder's config.json.
        models.MODELS.get_or_raise(self.model)
        optimizers.check_optimizer_name(self.optimizer, self.momentum)

    def settings(self):
        """The :class:`RunSettings` fields of this config, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RunSettings)}

    @classmethod
    def older_folder_settings(cls, saved):
        """What a run folder whose ``config.json`` (``saved``) lacks a setting ran with, as
        ``kerasprune.runs`` reads such a folder: each :class:`RunSettings` field's default, which
        was the behaviour before the field existed (e.g. ``weight_decay`` 0)."""
        return {f.name: f.default for f in dataclasses.fields(RunSettings) if f.default is not dataclasses.MISSING}

    @classmethod
    def read_saved(cls, saved, legacy=None):
        """A run folder's ``config.json`` (``saved``) as this version compares it with a new config:
        the settings it lacks filled in (:meth:`older_folder_settings`, then ``legacy``'s)."""
        return {**cls.older_folder_settings(saved), **(legacy or {}), **saved}

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


@dataclasses.dataclass
class TrainingRun(RunSettings):
    """A run that trains one model from fresh weights: the shared settings plus its length, seed and
    the init its weights are drawn with."""

    epochs: int = setting(10, "epochs to train", type=positive_int)
    seed: int = setting(0, "seed of initial weights and data order (same seed, same run)")
    init: str = setting(DEFAULT_INIT, "initial weights: authors (PyTorch's default, as the authors' code: "
                                   "U(+-1/sqrt(fan_in)) kernels and biases), glorot (Keras's default: "
                                   "Glorot-uniform kernels, zero biases) or he (He-normal kernels, zero biases)",
                        choices=INITS)

    def __post_init__(self):
        super().__post_init__()
        if self.epochs < 1:
            raise KerasPruneError(f"epochs must be >= 1, got {self.epochs}")
        if self.init not in INITS:
            raise KerasPruneError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")

    @classmethod
    def older_folder_settings(cls, saved):
        """:meth:`RunSettings.older_folder_settings`, and ``init``: a folder that predates that setting
        ran with :func:`init_of_older_folder` of its model, not with today's default."""
        return {**super().older_folder_settings(saved), "init": init_of_older_folder(saved.get("model"))}


@dataclasses.dataclass
class TrainConfig(TrainingRun):
    """A plain training run (``kerasprune train``, and every retraining of a sweep)."""

    export_dir: Optional[str] = setting(None, "root of SavedModel exports",
                                        shown_default="$KERASPRUNE_SAVED_MODELS or ./saved_models")


@dataclasses.dataclass
class LobsterConfig(TrainingRun):
    """A LOBSTER run (``optimizer`` is the base optimizer LOBSTER wraps; defaults: the paper code's
    LeNet settings). Its own fields are the ``lobster`` group of ``kerasprune lobster``'s flags."""

    epochs: int = setting(1000, "epochs to train (LOBSTER itself has no stopping rule)", type=positive_int)
    lmbda: float = setting(schedule.DEFAULT_LMBDA, "sensitivity regularisation strength, not scaled by the lr")
    twt: float = setting(schedule.DEFAULT_TWT, "admissible relative validation-loss increase per pruning")
    pwe: int = setting(schedule.DEFAULT_PWE, "plateau patience in epochs", type=positive_int)
    good_margin: float = setting(schedule.DEFAULT_GOOD_MARGIN, "an epoch is good if val loss < (1 + margin) * best")
    tolerance: float = setting(schedule.DEFAULT_TOLERANCE, "fraction of the loss bound in the threshold search's stop rule")
    threshold_search: str = setting(
        schedule.DEFAULT_SEARCH_RULE, "reference: the authors' bisection, pruning at the midpoint once the two ends' losses are "
                     "within tolerance of each other; conservative: prune at the admissible lower end once both "
                     "are within tolerance of the bound (cuts less per plateau)", choices=SEARCH_RULES)
    stop_at_pruned: Optional[float] = setting(
        None, "stop once an operating point has at least PCT% of the parameters pruned", metavar="PCT",
        shown_default="train for all --epochs")
    lr_plateau: bool = setting(False, "ReduceLROnPlateau on val loss (factor 0.1, patience 10, cooldown 50)")
    kinds: Tuple[str, ...] = setting(DEFAULT_KINDS, "parameter kinds pruned and counted, comma-separated",
                                     flag="--prune")

    def __post_init__(self):
        super().__post_init__()
        self.kinds = tuple(self.kinds)
        if self.pwe < 1:
            raise KerasPruneError(f"pwe must be >= 1, got {self.pwe}")
        if self.stop_at_pruned is not None and not 0 < self.stop_at_pruned <= 100:
            raise KerasPruneError(f"stop_at_pruned must be in (0, 100], got {self.stop_at_pruned}")
        for name in ("lmbda", "twt", "good_margin", "tolerance"):
            if getattr(self, name) < 0:
                raise KerasPruneError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.threshold_search not in SEARCH_RULES:
            raise KerasPruneError(f"threshold_search must be one of {', '.join(SEARCH_RULES)}, "
                                  f"got {self.threshold_search!r}")
        unknown = set(self.kinds) - set(DEFAULT_KINDS)
        if unknown or not self.kinds:
            raise KerasPruneError(f"kinds must be a non-empty subset of {', '.join(DEFAULT_KINDS)}; "
                                  f"got {', '.join(self.kinds) or 'nothing'}")


PROBES = ("linear", "finetune")
SELECTIONS = ("best", "final")
PSP_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class TransferConfig(RunSettings):
    """A transfer run (``kerasprune.transfer``): the shared :class:`RunSettings` (``dataset`` is the
    target; the optimizer settings, SGD lr 0.1 batch 100 by default, apply to the head under the
    linear probe and to every parameter under fine-tuning) plus these, ``kerasprune transfer``'s flags.

    ``model`` is not chosen: the architecture is the source's. It is filled in from the source run's
    ``config.json`` (``kerasprune.transfer.resolve``) and stays None for a SavedModel source.
    """

    model: Optional[str] = setting(None, "the source's architecture, filled in from its run folder "
                                         "(None for a SavedModel source)")
    source: str = setting("", "run folder (train, sweep retraining, LOBSTER with --point) or SavedModel directory")
    point: Optional[int] = setting(None, "operating point of a LOBSTER source")  # required for one
    probe: str = setting("linear", "linear: train the new head only (default); finetune: train everything, the "
                                   "source's zeros kept by TF-MOT wrappers", choices=PROBES)
    shots: Optional[int] = setting(None, "train on N examples per class of the target", type=positive_int,
                                   shown_default="the whole training split")
    shot_seed: Optional[int] = setting(None, "seed of the few-shot draw", shown_default="--seed")
    epochs: int = setting(10, "epochs to train", type=positive_int)
    seed: int = setting(0, "seed of the new head and of the data order")
    select: str = setting("best", "weights kept: best epoch by validation loss (default) or the final one",
                          choices=SELECTIONS)
    mask_kinds: Tuple[str, ...] = setting(DEFAULT_KINDS, "parameters whose source zeros stay zero under finetune, "
                                                         "comma-separated")
    psp_split: str = setting("train", "target split measured (default train: the whole split, also with --shots)",
                             choices=PSP_SPLITS)
    psp_examples: int = setting(5000, "seeded sample of that split", type=positive_int)  # all of it if smaller
    psp_pair_samples: int = setting(20000, "sampled neuron pairs per wide layer, second order", type=positive_int)
    psp_max_exact_units: int = setting(1024, "layers up to this width get exact second order", type=positive_int)
    export_dir: Optional[str] = setting(None, "root of SavedModel exports",
                                        shown_default="$KERASPRUNE_SAVED_MODELS or ./saved_models")

    def __post_init__(self):
        # RunSettings checks that ``model`` is a registered name; a transfer's architecture is its
        # source's, which has none when it is a SavedModel: only a given name is checked.
        from kerasprune import models

        model = self.model
        if model is None:
            self.model = sorted(models.MODELS)[0]
        try:
            super().__post_init__()
        finally:
            self.model = model
        if not self.source:
            raise KerasPruneError("a transfer needs a source: a run folder or a SavedModel directory")
        # The same source from any working directory or checkout (runs/ may be a symlink per worktree).
        self.source = os.path.realpath(self.source)
        self.mask_kinds = tuple(self.mask_kinds)
        if self.probe not in PROBES:
            raise KerasPruneError(f"probe must be one of {', '.join(PROBES)}, got {self.probe!r}")
        if self.select not in SELECTIONS:
            raise KerasPruneError(f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.psp_split not in PSP_SPLITS:
            raise KerasPruneError(f"psp_split must be one of {', '.join(PSP_SPLITS)}, got {self.psp_split!r}")
        if self.epochs < 1:
            raise KerasPruneError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("shots", "psp_examples", "psp_pair_samples", "psp_max_exact_units"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise KerasPruneError(f"{name} must be >= 1, got {value}")
        if self.point is not None and self.point < 0:
            raise KerasPruneError(f"point must be >= 0, got {self.point}")
        unknown = set(self.mask_kinds) - set(DEFAULT_KINDS)
        if unknown or not self.mask_kinds:
            raise KerasPruneError(f"mask_kinds must be a non-empty subset of {', '.join(DEFAULT_KINDS)}; "
                                  f"got {', '.join(self.mask_kinds) or 'nothing'}")

    @classmethod
    def read_saved(cls, saved, legacy=None):
        """:meth:`RunSettings.read_saved`, with the source's real path: folders written before it
        was resolved hold the path as given, e.g. through another checkout's ``runs`` symlink."""
        values = super().read_saved(saved, legacy)
        if values.get("source"):
            values["source"] = os.path.realpath(values["source"])
        return values

    @property
    def draw_seed(self):
        """The seed of the few-shot draw."""
        return self.seed if self.shot_seed is None else self.shot_seed


# ---------------------------------------------------------------------------------------------
# Type checks.

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
