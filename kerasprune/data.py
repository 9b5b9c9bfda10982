"""Datasets as tf.data pipelines: ``train, validation, test = load("mnist")``.

Sources, in this order:
1. a local data dir (``data_dir=`` or ``KERASPRUNE_DATA_DIR``): ``mnist/`` and ``fashion_mnist/`` hold
   the original IDX ``.gz`` files and go through TFDS with a manual dir (TFDS verifies the
   checksums); ``cifar10_jpeg/`` is a class-per-folder image tree;
2. else TFDS's normal download, for users online.
Any class-per-folder tree (``ROOT/train/<class>/*.jpg`` and optionally ``ROOT/test/...``) loads the
same way: pass its path as the dataset name.

Validation is a seeded split of the training set (10% by default, as LOBSTER's code does) so the
test set is never used for model selection. The split seed is separate from the training seed, so
every run of a sweep validates on the same examples.
"""
import contextlib
import dataclasses
import hashlib
import io
import os
import re
import socket
from typing import NamedTuple, Optional, Tuple

import numpy as np

from kerasprune._keras import tf
from kerasprune.errors import KerasPruneError
from kerasprune.runs import atomic_path

DATA_DIR_ENV = "KERASPRUNE_DATA_DIR"
CACHE_DIR_ENV = "KERASPRUNE_CACHE_DIR"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is and how the paper's code preprocesses it."""

    name: str
    input_shape: Tuple[int, int, int]
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: bool = False  # random crop (pad 4) + horizontal flip on training batches
    tfds_name: Optional[str] = None
    local_folder: Optional[str] = None  # folder name inside a data dir
    local_files: Tuple[str, ...] = ()  # files that folder must hold (IDX datasets)


_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

DATASETS = {
    "mnist": DatasetSpec("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), tfds_name="mnist",
                         local_folder="mnist", local_files=_IDX_FILES),
    # 0.3205 is the std constant of the paper's code (the true pixel std is 0.3530); kept as is.
    "fashion_mnist": DatasetSpec("fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3205,),
                                 tfds_name="fashion_mnist", local_folder="fashion_mnist",
                                 local_files=_IDX_FILES),
    "cifar10": DatasetSpec("cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465),
                           (0.2023, 0.1994, 0.2010), augment=True, tfds_name="cifar10",
                           local_folder="cifar10_jpeg"),
}


# Validation, test and statistics need no small batches: evaluating 6,000 images 10 at a time (a
# 10-shot transfer's training batch) costs many times what 1,000 at a time does.
EVAL_BATCH_SIZE = 1000


class _Splits(NamedTuple):
    train: "object"
    validation: "object"
    test: "object"
    spec: DatasetSpec


class DatasetSplits(_Splits):
    """Batched, prefetched pipelines; ``spec`` says shapes, classes and normalisation. Unpacks as
    ``train, validation, test, spec``.

    ``train`` reshuffles on every pass (for your own ``model.fit``). Runs train on
    ``train_epochs(start_epoch)`` instead (an attribute, see :class:`EpochStream`): the batches of
    epoch ``e`` depend on ``(shuffle_seed, e)`` only, so a run resumed at epoch ``k`` sees what an
    uninterrupted one sees. It is None on splits made without it (and after ``_replace``).
    """

    train_epochs = None

    def __new__(cls, train, validation, test, spec, train_epochs=None):
        self = super().__new__(cls, train, validation, test, spec)
        self.train_epochs = train_epochs  # not a tuple field: 4-way unpacking keeps working
        return self


class EpochStream:
    """``stream(start_epoch)``: an endless tf.data stream of training batches, epoch after epoch from
    ``start_epoch``, each epoch in the order of a permutation drawn from ``(seed, epoch)`` alone.

    Use with ``model.fit(stream(k), steps_per_epoch=stream.steps_per_epoch, ...)``. The images
    stay uint8 in memory and whole batches are gathered and normalised at once: no per-example
    work per epoch (augmentation, when on, is per example, with stateless seeds from
    ``(seed, epoch, example)`` so it is as reproducible as the order).
    """

    def __init__(self, x, y, dspec, batch_size, seed=0, augment=False):
        self.x, self.y, self.dspec = x, y.astype(np.int64), dspec
        self.batch_size, self.seed, self.augment = batch_size, int(seed), augment
        self.steps_per_epoch = -(-len(x) // batch_size)  # the last batch may be short

    def permutation(self, epoch):
        """The order of the training examples in epoch ``epoch`` (numpy, for tests and users)."""
        return self._permutation(tf.constant(epoch, tf.int64)).numpy()

    def _permutation(self, epoch):
        seed = tf.stack([tf.constant(self.seed, tf.int64), epoch])
        return tf.random.experimental.stateless_shuffle(tf.range(len(self.x), dtype=tf.int64), seed=seed)

    def __call__(self, start_epoch=0):
        x, y = tf.constant(self.x), tf.constant(self.y)
        normalize = _normalizer(self.dspec)
        height, width, channels = self.x.shape[1:]
        batch_size, augment, seed, steps = self.batch_size, self.augment, self.seed, self.steps_per_epoch

        def one_epoch(epoch):
            if not augment:
                # One dataset element per batch, its indices sliced from the permutation: one element
                # per example (slice, then .batch()) cost tf.data half the pipeline's time.
                permutation = self._permutation(epoch)

                def batch(i):  # the slice stops at the end: the last batch may be short, as with .batch()
                    idx = permutation[i * batch_size:(i + 1) * batch_size]
                    return normalize(tf.gather(x, idx), tf.gather(y, idx))

                return tf.data.Dataset.range(steps).map(batch)

            def crop_and_flip(i):
                # Two independent seeds per (seed, epoch, example): crop and flip must not share one.
                base = tf.constant(seed, tf.int64) * 1_000_003 + epoch
                image = tf.pad(tf.gather(x, i), [[4, 4], [4, 4], [0, 0]])
                image = tf.image.stateless_random_crop(image, (height, width, channels),
                                                       seed=tf.stack([base, 2 * i]))
                image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([base, 2 * i + 1]))
                return image, tf.gather(y, i)

            # A parallel map keeps its order (tf.data is deterministic by default).
            order = tf.data.Dataset.from_tensor_slices(self._permutation(epoch))
            batches = order.map(crop_and_flip, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
            return batches.map(normalize)

        stream = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(one_epoch)
        return stream.prefetch(tf.data.AUTOTUNE)


def _normalizer(dspec):
    mean = tf.constant(dspec.mean, tf.float32)
    std = tf.constant(dspec.std, tf.float32)

    def normalize(image, label):
        return (tf.cast(image, tf.float32) / 255.0 - mean) / std, label

    return normalize


class Arrays(NamedTuple):
    """Raw images (uint8, NHWC) and integer labels of the three splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def cache_dir():
    """Where TFDS builds and decoded image folders are cached (``KERASPRUNE_CACHE_DIR``)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "kerasprune")
    return os.environ.get(CACHE_DIR_ENV) or default


def resolve_data_dir(data_dir=None):
    """The local data dir to read, or None to use TFDS's download."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if data_dir is not None and not os.path.isdir(data_dir):
        raise KerasPruneError(f"data dir {data_dir!r} does not exist")
    return data_dir


def spec(name, data_dir=None):
    """The :class:`DatasetSpec` of a registered dataset or of an image-folder path."""
    if name in DATASETS:
        return DATASETS[name]
    if os.path.isdir(name):
        return _arrays_and_spec(name, data_dir, 0.0, 0)[1]
    raise KerasPruneError(f"unknown dataset {name!r}; valid names are: {', '.join(sorted(DATASETS))}"
                          " (or the path of a class-per-folder image tree)")


def load_arrays(name, data_dir=None, val_fraction=0.1, split_seed=0):
    """The three splits as numpy arrays (uint8 images), before normalisation."""
    return _arrays_and_spec(name, data_dir, val_fraction, split_seed)[0]


def load(name, data_dir=None, batch_size=100, val_fraction=0.1, split_seed=0, shuffle_seed=0,
         augment=None, max_train_examples=None, max_test_examples=None, eval_batch_size=None):
    """Returns ``DatasetSplits(train, validation, test, spec)`` of batched tf.data pipelines.

    Args:
      name: ``mnist``, ``fashion_mnist``, ``cifar10``, or a path to a class-per-folder image tree.
      data_dir: local data dir (default: ``$KERASPRUNE_DATA_DIR``; unset means download with TFDS).
      batch_size: batch size of the training pipeline (the global batch under tf.distribute).
      val_fraction: fraction of the training set held out for validation, in [0, 1).
      split_seed: seed of the train/validation split.
      shuffle_seed: seed of the per-epoch shuffle of the training pipeline.
      augment: random crop + flip on training batches; default: the dataset's paper setting.
      max_train_examples / max_test_examples: keep only the first N examples (for quick runs;
        every source is in a class-mixed order, so these hold every class).
      eval_batch_size: batch size of validation and test pipelines (default: ``batch_size``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise KerasPruneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if batch_size < 1:
        raise KerasPruneError(f"batch_size must be positive, got {batch_size}")
    arrays, dspec = _arrays_and_spec(name, data_dir, val_fraction, split_seed)
    if not len(arrays.x_test):  # every run ends with a test evaluation: fail now, not after training
        raise KerasPruneError(f"{name} has no test examples (an image tree needs a test/<class>/ folder)")
    return splits_from_arrays(arrays, dspec, batch_size, shuffle_seed, augment, max_train_examples,
                              max_test_examples, eval_batch_size, val_fraction)


def splits_from_arrays(arrays, dspec, batch_size=100, shuffle_seed=0, augment=None, max_train_examples=None,
                       max_test_examples=None, eval_batch_size=None, val_fraction=0.1):
    """:class:`DatasetSplits` of already loaded ``arrays`` (what :func:`load` does after loading;
    callers that cache the arrays across runs use it directly)."""
    if max_train_examples:
        n_val = int(round(max_train_examples * val_fraction))
        arrays = arrays._replace(x_train=arrays.x_train[:max_train_examples],
                                 y_train=arrays.y_train[:max_train_examples],
                                 x_val=arrays.x_val[:n_val], y_val=arrays.y_val[:n_val])
    if max_test_examples:
        arrays = arrays._replace(x_test=arrays.x_test[:max_test_examples],
                                 y_test=arrays.y_test[:max_test_examples])
    augment = dspec.augment if augment is None else augment
    eval_batch_size = eval_batch_size or batch_size
    return DatasetSplits(
        train=pipeline(arrays.x_train, arrays.y_train, dspec, batch_size, training=True,
                       seed=shuffle_seed, augment=augment),
        validation=pipeline(arrays.x_val, arrays.y_val, dspec, eval_batch_size),
        test=pipeline(arrays.x_test, arrays.y_test, dspec, eval_batch_size),
        spec=dspec,
        train_epochs=EpochStream(arrays.x_train, arrays.y_train, dspec, batch_size, seed=shuffle_seed,
                                 augment=augment))


def pipeline(x, y, dspec, batch_size, training=False, seed=0, augment=False):
    """uint8 images -> shuffled (training), augmented (optional), normalised, batched, prefetched."""
    normalize = _normalizer(dspec)
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64)))
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

    if training and augment:
        height, width, channels = x.shape[1:]

        def crop_and_flip(image, label):
            image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
            image = tf.image.random_crop(image, (height, width, channels))
            return tf.image.random_flip_left_right(image), label

        ds = ds.map(crop_and_flip, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).map(normalize, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def split_indices(n, val_fraction, split_seed):
    """(train indices, validation indices) of a seeded random split of ``n`` training examples."""
    n_val = int(round(n * val_fraction))
    order = np.random.default_rng(split_seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ---------------------------------------------------------------------------------------------
# Reading the sources.

def _arrays_and_spec(name, data_dir, val_fraction, split_seed):
    data_dir = resolve_data_dir(data_dir)
    if name in DATASETS:
        dspec = DATASETS[name]
        if data_dir is not None:
            (x_tr, y_tr), (x_te, y_te) = _read_local(dspec, data_dir)
        else:
            (x_tr, y_tr), (x_te, y_te) = _read_tfds(dspec, manual_dir=None)
    elif os.path.isdir(name):
        (x_tr, y_tr), (x_te, y_te), classes = _read_image_tree(name)
        x01 = x_tr.astype(np.float32) / 255.0
        axes = (0, 1, 2)
        dspec = DatasetSpec(os.path.basename(os.path.normpath(name)), tuple(x_tr.shape[1:]),
                            len(classes), tuple(float(v) for v in x01.mean(axis=axes)),
                            tuple(float(v) for v in x01.std(axis=axes)))
    else:
        spec(name)  # raises the unknown-name error
    if x_tr.ndim == 3:
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    train_idx, val_idx = split_indices(len(x_tr), val_fraction, split_seed)
    arrays = Arrays(x_tr[train_idx], y_tr[train_idx], x_tr[val_idx], y_tr[val_idx], x_te, y_te)
    return arrays, dspec


def _read_local(dspec, data_dir):
    folder = os.path.join(data_dir, dspec.local_folder)
    if not os.path.isdir(folder):
        raise KerasPruneError(
            f"data dir {data_dir!r} has no {dspec.local_folder}/ folder for dataset {dspec.name!r}"
            f" (expected {_expected_layout(dspec)})")
    missing = [f for f in dspec.local_files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise KerasPruneError(f"{folder} lacks {', '.join(missing)} (expected {_expected_layout(dspec)})")
    if dspec.local_files:
        return _read_tfds(dspec, manual_dir=folder)
    (x_tr, y_tr), (x_te, y_te), classes = _read_image_tree(folder)
    if len(classes) != dspec.num_classes or x_tr.shape[1:] != dspec.input_shape:
        raise KerasPruneError(f"{folder} holds {len(classes)} classes of {x_tr.shape[1:]} images; "
                              f"{dspec.name} needs {dspec.num_classes} of {dspec.input_shape}")
    return (x_tr, y_tr), (x_te, y_te)


def _expected_layout(dspec):
    if dspec.local_files:
        return f"{dspec.local_folder}/ with {', '.join(dspec.local_files)}"
    return f"{dspec.local_folder}/train/<class>/*.jpg and {dspec.local_folder}/test/<class>/*.jpg"


def _read_tfds(dspec, manual_dir):
    """Whole splits through TFDS, as arrays (these datasets fit in memory many times over)."""
    import tensorflow_datasets as tfds  # slow to import, and only MNIST and Fashion-MNIST need it

    tfds.disable_progress_bar()
    kwargs = {}
    if manual_dir is None and not _prepared(dspec):
        _require_network(dspec)
    if manual_dir is not None:
        # A download dir per dataset: TFDS names extracted files after the archive's file name
        # alone, and MNIST and Fashion-MNIST share file names, so a shared one would hand
        # Fashion-MNIST the MNIST images.
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir),
            "download_dir": os.path.join(cache_dir(), "tfds_downloads", dspec.name)}
    quiet = manual_dir is not None
    if quiet and not _prepared(dspec):
        # TFDS would announce "Downloading and preparing dataset" while it reads local files.
        print(f"preparing {dspec.name} from the local files in {manual_dir} (first use only; cached "
              f"in {os.path.join(cache_dir(), 'tfds')})", flush=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            splits = tfds.load(dspec.tfds_name, split=["train", "test"], batch_size=-1, as_supervised=True,
                               data_dir=os.path.join(cache_dir(), "tfds"), try_gcs=False, **kwargs)
    except Exception as exc:  # TFDS raises many types; each is turned into one actionable line
        raise KerasPruneError(_explain_tfds_error(dspec, manual_dir, exc)) from exc
    return tuple((np.asarray(x), np.asarray(y)) for x, y in tfds.as_numpy(splits))


# TFDS downloads MNIST-like datasets from this host; resolving it fails at once when offline,
# where TFDS itself would retry for minutes before giving up.
TFDS_DOWNLOAD_HOST = "storage.googleapis.com"


def _prepared(dspec):
    """True if TFDS already built this dataset in our cache (no download needed, even offline)."""
    root = os.path.join(cache_dir(), "tfds", dspec.tfds_name)
    # Finished versions only ("3.0.1"; TFDS builds in "3.0.1.incomplete.XXXX" and renames at the end).
    return os.path.isdir(root) and any(re.fullmatch(r"\d+\.\d+\.\d+", v)
                                       and os.path.isfile(os.path.join(root, v, "dataset_info.json"))
                                       for v in os.listdir(root))


def _require_network(dspec):
    try:
        socket.getaddrinfo(TFDS_DOWNLOAD_HOST, 443)
    except OSError as exc:
        raise KerasPruneError(
            f"{dspec.name} is not in a local data dir and cannot be downloaded (offline: {exc}). Pass "
            f"--data-dir or set {DATA_DIR_ENV} to a folder holding {_expected_layout(dspec)}.") from None


def _explain_tfds_error(dspec, manual_dir, exc):
    text = f"{type(exc).__name__}: {exc}"
    if "NonMatchingChecksumError" in text or "checksum" in text.lower():
        return (f"{dspec.name}: a file in {manual_dir or 'the download'} does not match the checksum "
                "TFDS pins for the original; the copy is corrupt or not the original file. Replace it "
                "with the original download.")
    if manual_dir is None:
        return (f"could not download {dspec.name} with TFDS ({text.splitlines()[0][:200]}). Offline? "
                f"Pass --data-dir or set {DATA_DIR_ENV} to a folder holding {_expected_layout(dspec)}.")
    return f"TFDS could not build {dspec.name} from {manual_dir}: {text.splitlines()[0][:300]}"


def _list_image_tree(root):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files, labels = [], []
    for label, cls in enumerate(classes):
        names = sorted(f for f in os.listdir(os.path.join(root, cls)) if f.lower().endswith(IMAGE_SUFFIXES))
        files += [os.path.join(root, cls, f) for f in names]
        labels += [label] * len(names)
    return classes, files, np.asarray(labels, np.int64)


def _read_image_tree(root):
    """``root/train/<class>/*`` (and ``root/test/<class>/*``) decoded to uint8 arrays, cached."""
    train_root = os.path.join(root, "train")
    if not os.path.isdir(train_root):
        raise KerasPruneError(f"image tree {root!r} has no train/ folder of class folders")
    classes, train_files, y_tr = _list_image_tree(train_root)
    if not train_files:
        raise KerasPruneError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {train_root}")
    test_root = os.path.join(root, "test")
    if os.path.isdir(test_root):
        test_classes, test_files, y_te = _list_image_tree(test_root)
        if test_classes != classes:
            raise KerasPruneError(f"{test_root} has classes {test_classes}, train/ has {classes}")
    else:
        test_files, y_te = [], np.zeros((0,), np.int64)
    # Names, sizes and modification times: a re-encoded or replaced image invalidates the cache.
    stamps = [f"{f}\t{os.stat(f).st_size}\t{os.stat(f).st_mtime_ns}" for f in train_files + test_files]
    key = hashlib.sha1("\n".join(["v3"] + stamps).encode()).hexdigest()[:16]
    cached = os.path.join(cache_dir(), "image_trees", f"{key}.npz")
    if os.path.isfile(cached):
        with np.load(cached) as z:
            x_tr, x_te = z["x_train"], z["x_test"]
    else:
        x_tr, x_te = _decode_all(train_files), _decode_all(test_files)
        if len(test_files) and x_te.shape[1:] != x_tr.shape[1:]:
            raise KerasPruneError(f"test images are {x_te.shape[1:]}, train images {x_tr.shape[1:]}")
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        with atomic_path(cached, suffix=".npz") as tmp:
            np.savez(tmp, x_train=x_tr, x_test=x_te)
    return _mixed(x_tr, y_tr), _mixed(x_te, y_te), classes


# A tree is read class by class; this fixed order mixes the classes, as TFDS's files are, so that
# the first N examples (--max-train-examples, --max-test-examples, quick maps) hold every class.
IMAGE_TREE_ORDER_SEED = 0


def _mixed(x, y):
    order = np.random.default_rng(IMAGE_TREE_ORDER_SEED).permutation(len(y))
    return x[order], y[order]


def _decode_all(files):
    if not files:
        return np.zeros((0, 1, 1, 1), np.uint8)
    first = tf.io.decode_image(tf.io.read_file(files[0]), expand_animations=False)
    channels = int(first.shape[-1])

    def decode(path):
        raw = tf.io.read_file(path)
        # TF's default JPEG decoder (INTEGER_FAST) is off by about one grey level from libjpeg's
        # accurate DCT that PIL and the published CIFAR-10 statistics use; take the accurate one.
        image = tf.cond(tf.io.is_jpeg(raw),
                        lambda: tf.io.decode_jpeg(raw, channels=channels, dct_method="INTEGER_ACCURATE"),
                        lambda: tf.io.decode_image(raw, channels=channels, expand_animations=False))
        return tf.ensure_shape(image, first.shape)

    ds = tf.data.Dataset.from_tensor_slices(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    try:
        return np.concatenate([b.numpy() for b in ds.batch(2048)])
    except tf.errors.InvalidArgumentError as exc:
        raise KerasPruneError(f"images under {os.path.dirname(os.path.dirname(files[0]))} are not all "
                              f"{tuple(first.shape)} or one is corrupt: {exc.message.splitlines()[0]}") from exc

