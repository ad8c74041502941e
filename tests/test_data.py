"""Tests of tf_supermask.data: sources, splits, error messages, ArrayBatches."""

import contextlib
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

from tf_supermask import data
from tf_supermask.data import sources

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_class_sorted_npz(path, num_train=200, num_test=50, num_classes=10, shape=(8, 8, 3)):
    """A small cifar10-like .npz whose training set is sorted by class.

    Pixel [0, 0, 0] of training image i holds i, so images can be identified.
    """
    rng = np.random.default_rng(123)
    x_train = rng.integers(0, 256, (num_train,) + shape, dtype=np.uint8)
    x_train[:, 0, 0, 0] = np.arange(num_train)
    y_train = np.repeat(np.arange(num_classes), num_train // num_classes).astype(np.uint8)
    x_test = rng.integers(0, 256, (num_test,) + shape, dtype=np.uint8)
    y_test = rng.integers(0, num_classes, num_test).astype(np.uint8)
    class_names = np.array([f"class{i}" for i in range(num_classes)])
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=class_names)


@pytest.fixture
def no_data_anywhere(tmp_path, monkeypatch):
    """Empty offline directories and a TFDS loader that fails like an offline one."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TF_SUPERMASK_DATA", str(empty))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def offline_tfds(name, data_dir=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(sources, "load_tfds", offline_tfds)
    # The quick connectivity check passes, so the failure comes from TFDS itself
    # whether or not this machine has a network (test_user_facing covers the check).
    monkeypatch.setattr(sources, "network_problem", lambda *args, **kwargs: None)
    return empty


def test_sample_loads_with_shapes_dtypes_and_classes():
    dataset = data.load_dataset("sample")
    assert dataset.name == "sample" and dataset.source == "sample"
    assert dataset.x_train.shape == (10000, 28, 28, 1) and dataset.x_train.dtype == np.uint8
    assert dataset.x_test.shape == (2000, 28, 28, 1) and dataset.x_test.dtype == np.uint8
    assert dataset.y_train.shape == (10000,) and dataset.y_train.dtype == np.int64
    assert dataset.y_test.dtype == np.int64
    assert dataset.x_val.shape == (0, 28, 28, 1) and dataset.y_val.shape == (0,)
    assert dataset.input_shape == (28, 28, 1)
    assert dataset.num_classes == 10
    assert dataset.class_names[0] == "T-shirt/top" and dataset.class_names[9] == "Ankle boot"
    assert np.all(np.bincount(dataset.y_train) == 1000)
    assert np.all(np.bincount(dataset.y_test) == 200)


def test_sample_validation_split_and_train_subset():
    dataset = data.load_dataset("sample", validation_size=1000, train_size=3000, seed=2)
    assert len(dataset.x_val) == len(dataset.y_val) == 1000
    assert len(dataset.x_train) == len(dataset.y_train) == 3000
    assert len(dataset.x_test) == 2000


def test_registry_lists_sources_with_classes_and_augmentation():
    assert data.dataset_names() == ["cifar10", "cifar100", "fashion_mnist", "mnist", "sample"]
    assert data.DATASETS.get("cifar100").num_classes == 100
    assert data.DATASETS.get("cifar10").augment_customary
    assert not data.DATASETS.get("mnist").augment_customary
    with pytest.raises(ValueError, match="choose one of: cifar10, cifar100"):
        data.load_dataset("imagenet")


def test_offline_npz_found_via_data_dir_with_random_disjoint_validation(tmp_path):
    write_class_sorted_npz(tmp_path / "cifar10.npz")
    dataset = data.load_dataset("cifar10", data_dir=str(tmp_path), validation_size=50, seed=1)
    assert dataset.source == f"npz:{tmp_path / 'cifar10.npz'}"
    assert dataset.class_names == [f"class{i}" for i in range(10)]
    assert dataset.num_classes == 10 and dataset.input_shape == (8, 8, 3)
    assert len(dataset.x_val) == 50 and len(dataset.x_train) == 150
    assert len(np.unique(dataset.y_val)) >= 5  # random, not the last (class-sorted) rows
    validation_ids = set(dataset.x_val[:, 0, 0, 0].tolist())
    train_ids = set(dataset.x_train[:, 0, 0, 0].tolist())
    assert not validation_ids & train_ids
    assert validation_ids | train_ids == set(range(200))
    # labels travel with their images: image i has class i // 20
    np.testing.assert_array_equal(dataset.y_val, dataset.x_val[:, 0, 0, 0] // 20)

    same_seed = data.load_dataset("cifar10", data_dir=str(tmp_path), validation_size=50, seed=1)
    np.testing.assert_array_equal(same_seed.x_val, dataset.x_val)
    other_seed = data.load_dataset("cifar10", data_dir=str(tmp_path), validation_size=50, seed=2)
    assert set(other_seed.x_val[:, 0, 0, 0].tolist()) != validation_ids


def test_validation_split_does_not_depend_on_train_size(tmp_path):
    write_class_sorted_npz(tmp_path / "cifar10.npz")
    full = data.load_dataset("cifar10", data_dir=str(tmp_path), validation_size=30)
    subset = data.load_dataset("cifar10", data_dir=str(tmp_path), validation_size=30,
                               train_size=40)
    np.testing.assert_array_equal(full.y_val, subset.y_val)
    assert len(subset.x_train) == 40
    assert set(subset.x_train[:, 0, 0, 0].tolist()) <= set(full.x_train[:, 0, 0, 0].tolist())


def test_offline_npz_found_via_environment_then_home_cache(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    write_class_sorted_npz(env_dir / "cifar10.npz")
    monkeypatch.setenv("TF_SUPERMASK_DATA", str(env_dir))
    assert data.load_dataset("cifar10").source == f"npz:{env_dir / 'cifar10.npz'}"

    monkeypatch.delenv("TF_SUPERMASK_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    cache_dir = tmp_path / ".cache" / "tf_supermask"
    cache_dir.mkdir(parents=True)
    write_class_sorted_npz(cache_dir / "cifar10.npz")
    assert data.load_dataset("cifar10").source == f"npz:{cache_dir / 'cifar10.npz'}"


def test_npz_path_as_name_adds_channel_axis_and_flattens_labels(tmp_path):
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=np.zeros((12, 28, 28), np.uint8),
             y_train=np.arange(12).reshape(12, 1) % 3,
             x_test=np.zeros((6, 28, 28), np.uint8), y_test=np.arange(6) % 3)
    dataset = data.load_dataset(str(path))
    assert dataset.name == "digits"
    assert dataset.x_train.shape == (12, 28, 28, 1) and dataset.x_test.shape == (6, 28, 28, 1)
    assert dataset.y_train.shape == (12,) and dataset.y_train.dtype == np.int64
    assert dataset.num_classes == 3 and dataset.class_names == ["0", "1", "2"]


def test_bad_split_sizes_raise(tmp_path):
    write_class_sorted_npz(tmp_path / "cifar10.npz")
    with pytest.raises(ValueError, match="validation_size=200 must be"):
        data.load_dataset("cifar10", data_dir=str(tmp_path), validation_size=200)
    with pytest.raises(ValueError, match=r"train_size=151 must be in \[1, 150\]"):
        data.load_dataset("cifar10", data_dir=str(tmp_path), validation_size=50, train_size=151)


def test_missing_dataset_error_explains_how_to_provide_it(no_data_anywhere):
    with pytest.raises(data.DatasetNotFoundError) as raised:
        data.load_dataset("mnist")
    assert isinstance(raised.value, FileNotFoundError)
    message = str(raised.value)
    for expected in ("TFDS name 'mnist'", "no network", "x_train", "y_train", "x_test",
                     "y_test", "uint8", "(N, H, W, C)", "class_names", "--data_dir",
                     "$TF_SUPERMASK_DATA", str(no_data_anywhere / "mnist.npz")):
        assert expected in message, expected


def test_missing_dataset_error_names_the_given_data_dir(no_data_anywhere, tmp_path):
    with pytest.raises(FileNotFoundError, match="looked for at " + str(tmp_path / "cifar100.npz")):
        data.load_dataset("cifar100", data_dir=str(tmp_path))


def test_tfds_loader_converts_to_dataset(monkeypatch):
    """load_tfds with stand-ins for tensorflow and tensorflow_datasets (no network)."""
    calls = {}

    def fake_load(name, **kwargs):
        calls.update(kwargs, name=name)
        splits = [(np.zeros((n, 28, 28, 1), np.uint8), np.arange(n) % 10) for n in (30, 10)]
        info = types.SimpleNamespace(features={"label": types.SimpleNamespace(
            names=[str(i) for i in range(10)])})
        return splits, info

    fake_tfds = types.SimpleNamespace(load=fake_load, as_numpy=lambda tree: tree)
    fake_tf = types.SimpleNamespace(config=types.SimpleNamespace(
        set_visible_devices=lambda devices, kind: None))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds)
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)
    dataset = data.load_tfds("mnist", data_dir="/tfds")
    assert calls == {"name": "mnist", "split": ["train", "test"], "data_dir": "/tfds",
                     "batch_size": -1, "as_supervised": True, "with_info": True}
    assert dataset.source == "tfds" and dataset.x_train.shape == (30, 28, 28, 1)
    assert dataset.y_test.dtype == np.int64 and dataset.num_classes == 10


def test_normalization_stats_constants_and_computed():
    assert data.normalization_stats("cifar10") == ((0.4914, 0.4822, 0.4465),
                                                   (0.2470, 0.2435, 0.2616))
    assert data.normalization_stats("sample") == data.normalization_stats("fashion_mnist")
    images = np.zeros((4, 2, 2, 2), np.uint8)
    images[:2, ..., 0] = 255  # channel 0: half ones, channel 1: all zeros
    dataset = data.Dataset("custom", images, np.zeros(4, np.int64), images[:0],
                           np.zeros(0, np.int64), images, np.zeros(4, np.int64), 1, ["a"], "npz:x")
    mean, std = data.normalization_stats(dataset)
    np.testing.assert_allclose(mean, (0.5, 0.0))
    np.testing.assert_allclose(std, (0.5, 0.0))


def test_array_batches_normalizes_per_channel():
    x = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    images, labels = data.ArrayBatches(x, np.arange(6), 6, normalization=(mean, std))[0]
    assert images.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_allclose(images, (x / 255.0 - mean) / np.array(std), rtol=1e-5, atol=1e-6)
    unnormalized, _ = data.ArrayBatches(x, np.arange(6), 6)[0]
    np.testing.assert_allclose(unnormalized, x / 255.0, rtol=1e-6)


def test_array_batches_rejects_mismatched_normalization():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="2 values for 3 channels"):
        data.ArrayBatches(x, np.arange(2), 2, normalization=((0.1, 0.2), 1.0))
    with pytest.raises(ValueError, match="std must be positive"):
        data.ArrayBatches(x, np.arange(2), 2, normalization=(0.0, 0.0))


def labels_of_epoch(batches):
    return np.concatenate([batches[i][1] for i in range(len(batches))])


def test_shuffle_gives_a_new_permutation_every_epoch():
    x = np.zeros((100, 2, 2, 1), np.uint8)
    batches = data.ArrayBatches(x, np.arange(100), 32, shuffle=True, seed=3)
    first = labels_of_epoch(batches)
    batches.on_epoch_end()
    second = labels_of_epoch(batches)
    assert sorted(first) == sorted(second) == list(range(100))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(100))
    unshuffled = data.ArrayBatches(x, np.arange(100), 32)
    unshuffled.on_epoch_end()
    np.testing.assert_array_equal(labels_of_epoch(unshuffled), np.arange(100))


def test_same_seed_same_batches_other_seed_other_batches():
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)

    def two_epochs(seed):
        batches = data.ArrayBatches(x, np.arange(64), 16, shuffle=True, augment=True, seed=seed)
        epochs = []
        for _ in range(2):
            epochs.append([batches[i] for i in reversed(range(len(batches)))])
            batches.on_epoch_end()
        return epochs

    run, rerun, other = two_epochs(7), two_epochs(7), two_epochs(8)
    for epoch, epoch_again in zip(run, rerun):
        for (images, labels), (images_again, labels_again) in zip(epoch, epoch_again):
            np.testing.assert_array_equal(images, images_again)
            np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(run[0][0][1], other[0][0][1])

    resumed = data.ArrayBatches(x, np.arange(64), 16, shuffle=True, augment=True, seed=7)
    resumed.epoch = 1
    np.testing.assert_array_equal(resumed[3][0], run[1][0][0])


def find_crop(augmented, image, padding=4):
    """(top, left, flipped) of every crop of padded `image` equal to `augmented`."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    matches = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[top:top + height, left:left + width]
            for flipped, candidate in ((False, crop), (True, crop[:, ::-1])):
                if np.array_equal(candidate, augmented):
                    matches.append((top, left, flipped))
    return matches


def test_augmentation_is_a_zero_padded_shifted_and_flipped_copy():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)  # no zero pixels
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    batches = data.ArrayBatches(x, np.arange(64), 64, augment=True, normalization=(mean, std))
    images, labels = batches[0]
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.float32
    raw = np.rint((images * std + mean) * 255.0).astype(np.uint8)  # undo normalisation
    found = [find_crop(raw[i], x[labels[i]]) for i in range(64)]
    assert all(len(matches) == 1 for matches in found)
    offsets = {matches[0][:2] for matches in found}
    flips = {matches[0][2] for matches in found}
    assert len(offsets) > 10 and flips == {False, True}
    # the padding is raw black, normalised like any black pixel
    shifted = next(i for i in range(64) if found[i][0][:2] != (4, 4))
    padding_pixels = np.all(raw[shifted] == 0, axis=-1)
    assert padding_pixels.any()
    np.testing.assert_allclose(images[shifted][padding_pixels],
                               np.broadcast_to(-mean / std, (padding_pixels.sum(), 3)),
                               rtol=1e-5)


def test_flip_mirrors_left_right():
    x = np.random.default_rng(0).integers(0, 256, (32, 5, 6, 1), dtype=np.uint8)
    augmented = data.random_crop_and_flip(x, np.random.default_rng(1), padding=0)
    mirrored = np.array([np.array_equal(a, image[:, ::-1]) for a, image in zip(augmented, x)])
    unchanged = np.array([np.array_equal(a, image) for a, image in zip(augmented, x)])
    assert np.all(mirrored | unchanged) and mirrored.any() and unchanged.any()


def test_len_and_drop_remainder():
    x = np.zeros((10, 2, 2, 1), np.uint8)
    kept = data.ArrayBatches(x, np.arange(10), 4)
    assert len(kept) == 3 and len(kept[2][1]) == 2
    dropped = data.ArrayBatches(x, np.arange(10), 4, drop_remainder=True)
    assert len(dropped) == 2 and len(dropped[1][1]) == 4
    with pytest.raises(IndexError):
        dropped[2]


def test_importing_data_does_not_import_tensorflow():
    # Under KERAS_BACKEND=tensorflow, `import keras` imports tensorflow itself;
    # under jax it does not, so this checks that tf_supermask.data adds nothing.
    env = dict(os.environ, KERAS_BACKEND="jax")
    code = ("import sys, tf_supermask.data; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "assert 'tensorflow_datasets' not in sys.modules, 'tensorflow_datasets imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)


class LabelRecorder(keras.Model):
    """Flatten + Dense that keeps the (images, labels) of every batch `fit` trains on."""

    def __init__(self, classes):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(classes)
        self.seen = []

    def call(self, x):
        return self.dense(self.flatten(x))

    def train_step(self, *args):  # (data), or (state, data) under JAX
        images, labels = args[-1][:2]
        self.seen.append((np.asarray(images), np.asarray(labels)))
        return super().train_step(*args)


def trained_on(batches, epochs=3):
    """(images, labels) per epoch of what `fit` trains on (run eagerly).

    Under TensorFlow the model lives in a tf.distribute strategy as in the
    trainer: `fit` then draws a batch to build the model before training (JAX
    always does), the path on which prefetched batches used to leak.
    """
    scope = contextlib.nullcontext()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        scope = tf.distribute.OneDeviceStrategy("/cpu:0").scope()
    with scope:
        model = LabelRecorder(int(batches.y.max()) + 1)
        model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"],
                      run_eagerly=True)
    steps = len(batches)
    model.fit(batches, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0)
    assert len(model.seen) == epochs * steps
    return [tuple(np.concatenate(part) for part in zip(*model.seen[e * steps:(e + 1) * steps]))
            for e in range(epochs)]


@pytest.mark.parametrize("steps_per_epoch", [None, 4])
@pytest.mark.parametrize("workers", [1, 3])
def test_fit_trains_on_the_seeded_permutation_of_each_epoch(workers, steps_per_epoch):
    x = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
    batches = data.ArrayBatches(x, np.arange(40), 4, shuffle=True, augment=True, seed=5,
                                steps_per_epoch=steps_per_epoch, workers=workers)
    served = 4 * len(batches)
    assert served == (16 if steps_per_epoch else 40)
    # fit calls on_epoch_end once before training: its epochs are epochs 1, 2, 3,
    # each the first `served` examples of its permutation, whatever the workers
    for epoch, (images, labels) in enumerate(trained_on(batches), start=1):
        np.testing.assert_array_equal(
            labels, np.random.default_rng((5, epoch)).permutation(40)[:served])
        expected = np.concatenate([batches.batch(epoch, i)[0] for i in range(len(batches))])
        np.testing.assert_array_equal(images, expected)  # the same augmentation too
