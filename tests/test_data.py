import os
import shutil

import numpy as np
import pytest

from kerasprune import data
from kerasprune.errors import KerasPruneError


# Fashion-MNIST's pixel std is 0.3530; 0.3205, the constant of the paper's code, is kept on purpose.
@pytest.mark.parametrize("name,mean,std", [("mnist", 0.1307, 0.3081), ("fashion_mnist", 0.2860, 0.3530)])
def test_idx_datasets_have_real_shapes_counts_and_paper_statistics(name, mean, std):
    a = data.load_arrays(name)
    assert a.x_train.shape == (54000, 28, 28, 1) and a.x_val.shape == (6000, 28, 28, 1)
    assert a.x_test.shape == (10000, 28, 28, 1) and a.x_train.dtype == np.uint8
    # Every class present in every split, in realistic numbers (MNIST/Fashion: 5.4k-6.7k per class).
    for y, n in ((a.y_train, 54000), (a.y_val, 6000), (a.y_test, 10000)):
        counts = np.bincount(y, minlength=10)
        assert len(counts) == 10 and counts.min() > 0.08 * n and counts.sum() == n
    # The paper's normalisation constants are the real statistics of the full training set.
    full = np.concatenate([a.x_train, a.x_val]).astype(np.float64) / 255
    assert abs(full.mean() - mean) < 1e-3 and abs(full.std() - std) < 1e-3


def test_pipelines_normalise_to_zero_mean_unit_std():
    splits = data.load("mnist", batch_size=500, max_test_examples=5000)
    x = np.concatenate([b[0].numpy() for b in splits.test])
    assert x.shape == (5000, 28, 28, 1)
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05
    x, y = next(iter(splits.train))
    assert x.shape == (500, 28, 28, 1) and y.dtype.name == "int64"


def test_validation_is_a_seeded_disjoint_split_of_training():
    train, val = data.split_indices(60000, 0.1, split_seed=0)
    assert len(val) == 6000 and len(train) == 54000
    assert not set(train) & set(val) and len(set(train) | set(val)) == 60000
    again, _ = data.split_indices(60000, 0.1, split_seed=0)
    other, _ = data.split_indices(60000, 0.1, split_seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_cifar10_jpeg_tree_loads_with_counts_and_channel_statistics():
    a = data.load_arrays("cifar10")
    assert a.x_train.shape == (45000, 32, 32, 3) and a.x_test.shape == (10000, 32, 32, 3)
    assert np.array_equal(np.bincount(a.y_test), [1000] * 10)
    assert np.array_equal(np.bincount(np.concatenate([a.y_train, a.y_val])), [5000] * 10)
    mean = np.concatenate([a.x_train, a.x_val]).reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, data.DATASETS["cifar10"].mean, atol=2e-3)


def test_first_examples_of_the_class_ordered_jpeg_copy_hold_every_class():
    splits = data.load("cifar10", batch_size=100, max_train_examples=1000, max_test_examples=100)
    for part in (splits.train, splits.validation, splits.test):
        labels = np.concatenate([y.numpy() for _, y in part])
        assert len(set(labels.tolist())) == 10


def test_cifar10_training_batches_are_augmented_and_evaluation_batches_are_not():
    splits = data.load("cifar10", batch_size=64, max_train_examples=64, val_fraction=0.0,
                       max_test_examples=64)
    first = np.concatenate([b[0].numpy() for b in splits.train])
    second = np.concatenate([b[0].numpy() for b in splits.train])
    assert first.shape == (64, 32, 32, 3)
    # Crops and flips differ between epochs, evaluation images are identical.
    assert not np.allclose(np.sort(first.ravel()), np.sort(second.ravel()))
    t1 = np.concatenate([b[0].numpy() for b in splits.test])
    t2 = np.concatenate([b[0].numpy() for b in splits.test])
    assert np.array_equal(t1, t2)


def test_any_class_per_folder_tree_loads(tmp_path):
    src = os.path.join(os.environ["KERASPRUNE_DATA_DIR"], "cifar10_jpeg")
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            os.makedirs(tmp_path / split / cls)
            for f in sorted(os.listdir(os.path.join(src, split, cls)))[:5]:
                shutil.copy(os.path.join(src, split, cls, f), tmp_path / split / cls / f)
    splits = data.load(str(tmp_path), batch_size=4, val_fraction=0.2)
    assert splits.spec.num_classes == 2 and splits.spec.input_shape == (32, 32, 3)
    assert sum(len(b[1]) for b in splits.test) == 10
    assert sum(len(b[1]) for b in splits.train) == 8
    # A replaced image is read again, not served from the decoded cache.
    before = data.load_arrays(str(tmp_path)).x_test
    cat = sorted(os.listdir(tmp_path / "test" / "cat"))[0]
    shutil.copy(os.path.join(src, "test", "dog", sorted(os.listdir(os.path.join(src, "test", "dog")))[5]),
                tmp_path / "test" / "cat" / cat)
    assert not np.array_equal(data.load_arrays(str(tmp_path)).x_test, before)


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(KerasPruneError, match="valid names are: cifar10, fashion_mnist, mnist"):
        data.load("imagenet")


def test_data_dir_without_the_files_says_what_is_expected(tmp_path):
    with pytest.raises(KerasPruneError, match="has no mnist/ folder"):
        data.load("mnist", data_dir=str(tmp_path))
    os.makedirs(tmp_path / "mnist")
    with pytest.raises(KerasPruneError, match="lacks train-images-idx3-ubyte.gz"):
        data.load("mnist", data_dir=str(tmp_path))


def test_corrupt_file_gets_the_checksum_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(os.path.join(os.environ["KERASPRUNE_DATA_DIR"], "mnist"), tmp_path / "mnist")
    with open(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
        f.seek(100)
        f.write(b"corrupt")
    with pytest.raises(KerasPruneError, match="does not match the checksum"):
        data.load("mnist", data_dir=str(tmp_path))


def test_offline_without_data_dir_says_how_to_provide_one(tmp_path, monkeypatch):
    monkeypatch.delenv("KERASPRUNE_DATA_DIR")
    monkeypatch.setenv("KERASPRUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(data, "TFDS_DOWNLOAD_HOST", "no-such-host.invalid")
    with pytest.raises(KerasPruneError, match="cannot be downloaded.*set KERASPRUNE_DATA_DIR"):
        data.load("mnist")


def test_offline_without_data_dir_uses_what_tfds_already_prepared(tmp_path, monkeypatch):
    local = os.environ["KERASPRUNE_DATA_DIR"]
    monkeypatch.setenv("KERASPRUNE_CACHE_DIR", str(tmp_path))
    first = data.load_arrays("mnist", data_dir=local)  # prepares the TFDS copy in the cache
    monkeypatch.delenv("KERASPRUNE_DATA_DIR")
    monkeypatch.setattr(data, "TFDS_DOWNLOAD_HOST", "no-such-host.invalid")
    again = data.load_arrays("mnist")
    assert np.array_equal(again.x_test, first.x_test) and np.array_equal(again.y_train, first.y_train)


def test_epoch_stream_batches_are_the_permutation_cut_into_batches_bit_for_bit():
    """One element per batch (sliced indices) gives the batches of slicing then .batch(): the same
    images, normalised the same way, bit for bit, and a short last batch."""
    from kerasprune._keras import tf

    splits = data.load("mnist", max_train_examples=300, max_test_examples=100, batch_size=32)
    stream = splits.train_epochs
    normalize = data._normalizer(splits.spec)
    for epoch in (0, 3):
        order = stream.permutation(epoch)
        got = list(stream(epoch).take(stream.steps_per_epoch))
        for i, (x, y) in enumerate(got):
            idx = order[i * 32:(i + 1) * 32]
            want_x, want_y = normalize(tf.gather(stream.x, idx), tf.gather(stream.y, idx))
            assert x.dtype == want_x.dtype and x.shape == want_x.shape
            np.testing.assert_array_equal(x.numpy().view(np.uint32), want_x.numpy().view(np.uint32))
            np.testing.assert_array_equal(y.numpy(), want_y.numpy())
        assert got[-1][0].shape[0] == 300 - 9 * 32


def test_load_still_unpacks_into_four_and_the_epoch_stream_depends_on_seed_and_epoch_only():
    from kerasprune import data

    splits = data.load("mnist", max_train_examples=300, max_test_examples=100, batch_size=32)
    train, validation, test, spec = splits  # the documented 4-way unpacking
    stream = splits.train_epochs
    assert stream.steps_per_epoch == 10  # 300 training examples, batch 32: the last batch is short
    again = data.load("mnist", max_train_examples=300, max_test_examples=100, batch_size=32).train_epochs
    np.testing.assert_array_equal(stream.permutation(4), again.permutation(4))
    assert not np.array_equal(stream.permutation(4), stream.permutation(5))
    assert sorted(stream.permutation(4)) == list(range(300))
    # A stream started at epoch 2 (a resumed run) gives what an uninterrupted one gives from there.
    resumed = [y.numpy() for _, y in stream(2).take(10)]
    whole = [y.numpy() for _, y in stream(0).skip(20).take(10)]
    for a, b in zip(resumed, whole):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed[0], stream.y[stream.permutation(2)[:32]])
