"""The image-folder source (TinyImageNet-200 layout) on small generated folders."""

import os

import numpy as np
import pytest
from PIL import Image

from tf_supermask import data
from tf_supermask.data import sources

WNIDS = ("n03", "n01", "n02")  # listed unsorted in wnids.txt; labels follow sorted order
COLOURS = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200)}


def write_image(path, colour, seed, size=64, grayscale=False):
    """A flat class colour with mild noise, so decoded pixels identify the class."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-10, 11, (size, size, 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    if grayscale:
        image = image.convert("L")
    image.save(path, format="JPEG", quality=95)


def make_folder(root, per_class=4, val_per_class=2, grayscale_first=False):
    """root/train/<wnid>/images/*.JPEG, root/val/images + val_annotations.txt, wnids.txt."""
    seed = 0
    for wnid in WNIDS:
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
        for index in range(per_class):
            seed += 1
            write_image(images / f"{wnid}_{index}.JPEG", COLOURS[wnid], seed,
                        grayscale=grayscale_first and seed == 1)
    val = root / "val" / "images"
    val.mkdir(parents=True)
    lines = []
    for number in range(val_per_class * len(WNIDS)):
        wnid = WNIDS[number % len(WNIDS)]
        write_image(val / f"val_{number}.JPEG", COLOURS[wnid], 100 + number)
        lines.append(f"val_{number}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "test" / "images").mkdir(parents=True)  # unlabelled, ignored
    return root


def class_of(image):
    """The wnid whose colour is nearest to the image's mean colour."""
    mean = image.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda wnid: np.abs(mean - np.array(COLOURS[wnid])).sum())


def test_folder_decodes_to_uint8_arrays_with_labels_from_sorted_wnids(tmp_path):
    folder = make_folder(tmp_path / "tiny", grayscale_first=True)
    dataset = data.load_image_folder(str(folder))
    assert dataset.name == "tiny"
    assert dataset.source == "image_folder:" + str(folder)
    assert dataset.x_train.shape == (12, 64, 64, 3) and dataset.x_train.dtype == np.uint8
    assert dataset.x_test.shape == (6, 64, 64, 3)
    assert dataset.x_val.shape == (0, 64, 64, 3)
    assert dataset.class_names == ["n01", "n02", "n03"] and dataset.num_classes == 3
    assert np.bincount(dataset.y_train).tolist() == [4, 4, 4]
    assert np.bincount(dataset.y_test).tolist() == [2, 2, 2]
    # the grayscale JPEG (first image of n03, label 2) has three equal channels
    gray = np.flatnonzero(dataset.y_train == 2)[0]
    image = dataset.x_train[gray]
    assert np.array_equal(image[..., 0], image[..., 1])
    assert np.array_equal(image[..., 1], image[..., 2])
    colour = np.ones(len(dataset.y_train), bool)
    colour[gray] = False
    for images, labels in ((dataset.x_train[colour], dataset.y_train[colour]),
                           (dataset.x_test, dataset.y_test)):
        for image, label in zip(images, labels):
            assert class_of(image) == dataset.class_names[label]


def test_tiny_imagenet_by_name_from_the_data_dir_and_by_path(tmp_path, monkeypatch):
    make_folder(tmp_path / "tiny-imagenet-200")
    dataset = data.load_dataset("tiny_imagenet", data_dir=str(tmp_path), validation_size=3,
                                train_size=6)
    assert dataset.name == "tiny_imagenet" and dataset.num_classes == 3
    assert len(dataset.x_val) == 3 and len(dataset.x_train) == 6 and len(dataset.x_test) == 6
    # the data dir may be the folder itself, or the folder may be the dataset name
    same = data.load_dataset("tiny_imagenet", data_dir=str(tmp_path / "tiny-imagenet-200"))
    by_path = data.load_dataset(str(tmp_path / "tiny-imagenet-200"))
    np.testing.assert_array_equal(same.x_test, by_path.x_test)
    assert by_path.name == "tiny-imagenet-200"
    # no published constants: the normalisation comes from the training images
    mean, std = data.normalization_stats(by_path)
    expected = by_path.x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, expected.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, expected.std(axis=0), rtol=1e-5)


def test_decoded_arrays_are_cached_until_the_folder_changes(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "tiny")
    first = data.load_image_folder(str(folder))
    cache = folder / sources.IMAGE_FOLDER_CACHE
    assert cache.exists()

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "_decode_images", no_decoding)
        cached = data.load_image_folder(str(folder))
    np.testing.assert_array_equal(cached.x_train, first.x_train)
    np.testing.assert_array_equal(cached.y_test, first.y_test)
    write_image(folder / "train" / "n02" / "images" / "n02_extra.JPEG", COLOURS["n02"], 77)
    changed = data.load_image_folder(str(folder))
    assert len(changed.x_train) == 13
    elsewhere = tmp_path / "elsewhere.npz"
    data.load_image_folder(str(folder), cache=str(elsewhere))
    assert elsewhere.exists()


def test_training_runs_on_an_image_folder_with_patches_init(tmp_path):
    from tf_supermask.training import TrainConfig, train

    folder = make_folder(tmp_path / "tiny")
    results = train(TrainConfig(model="conv2", width=0.125, mask="bernoulli", init="patches",
                                dataset=str(folder), batch_size=6, epochs=1, verbose=0,
                                run_dir=str(tmp_path / "run")))
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert results["dataset_source"] == "image_folder:" + str(folder)
    assert sorted(results["patches"]["layers"]) == ["conv1_1/kernel", "conv1_2/kernel"]


def _break(folder, how):
    if how == "no_train":
        os.rename(folder / "train", folder / "training")
    elif how == "empty_class":
        for image in (folder / "train" / "n02" / "images").iterdir():
            image.unlink()
    elif how == "no_annotations":
        (folder / "val" / "val_annotations.txt").unlink()
    elif how == "unknown_class":
        with open(folder / "val" / "val_annotations.txt", "a") as handle:
            handle.write("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    elif how == "unlabelled_val":
        write_image(folder / "val" / "images" / "val_99.JPEG", COLOURS["n01"], 5)
    elif how == "missing_val_image":
        (folder / "val" / "images" / "val_1.JPEG").unlink()
    elif how == "wnids_mismatch":
        (folder / "wnids.txt").write_text("n01\nn02\nn04\n")
    elif how == "sizes":
        write_image(folder / "train" / "n01" / "images" / "n01_0.JPEG", COLOURS["n01"], 3,
                    size=32)


@pytest.mark.parametrize("how, message", [
    ("no_train", "has no train/ folder"),
    ("empty_class", r"train/n02/images/ is missing or holds no images"),
    ("no_annotations", "has no val/val_annotations.txt"),
    ("unknown_class", "class 'n99' has no train/ folder"),
    ("unlabelled_val", r"1 images of val/images/ have no line in val/val_annotations.txt"),
    ("missing_val_image", r"names 1 images not in val/images/ \(e.g. \['val_1.JPEG'\]\)"),
    ("wnids_mismatch", "wnids.txt lists 3 classes that differ"),
    ("sizes", r"images differ in size"),
])
def test_malformed_folders_raise_clear_errors(tmp_path, how, message):
    folder = make_folder(tmp_path / "tiny", per_class=2, val_per_class=1)
    _break(folder, how)
    with pytest.raises(data.ImageFolderError, match=message) as raised:
        data.load_image_folder(str(folder))
    assert isinstance(raised.value, ValueError)
    if how != "sizes":
        assert "train/<wnid>/images/*.JPEG" in str(raised.value)  # says what is expected


def test_missing_tiny_imagenet_says_how_to_provide_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_SUPERMASK_DATA", str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError) as raised:
        data.load_dataset("tiny_imagenet")
    message = str(raised.value)
    for expected in ("TFDS has no builder", str(tmp_path / "tiny-imagenet-200"),
                     "tiny-imagenet-200.zip", "val_annotations.txt", "--data_dir",
                     str(tmp_path / "tiny_imagenet.npz")):
        assert expected in message, expected
    with pytest.raises(data.DatasetNotFoundError, match="no image folder at"):
        data.load_image_folder(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="choose one of: .*sample, tiny_imagenet"):
        data.load_dataset("tiny-imagenet")
