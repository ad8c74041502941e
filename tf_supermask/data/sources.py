"""Where datasets come from: the shipped sample, offline .npz files, image folders, TFDS.

Every source ends in the same in-memory `Dataset` of uint8 NHWC images and
int64 labels. Only `load_tfds` touches TensorFlow, and it imports
`tensorflow_datasets` when called, so this module (and the whole
`tf_supermask.data` package) works on a machine without TensorFlow.
"""

import concurrent.futures
import dataclasses
import hashlib
import importlib.resources
import os
import warnings
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tf_supermask.files import atomic_file
from tf_supermask import choices
from tf_supermask.registry import Registry
from tf_supermask import streams

DATA_DIR_ENV_VAR = "TF_SUPERMASK_DATA"
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "tf_supermask")
SAMPLE_FILE = "fashion_mnist_sample.npz"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the library knows about a named dataset before loading it.

    Attributes:
      name: the registry name, also the TFDS name and the offline file stem
        (`{name}.npz`) for the TFDS-backed datasets.
      num_classes: number of label classes.
      augment_customary: whether the literature trains it with random crop
        and horizontal flip (the CIFAR data sets).
      mean: published per-channel mean of the training images scaled to [0, 1].
      std: published per-channel standard deviation, same scale.
      class_names: label names when they are fixed, else None (then the
        loaded file or TFDS supplies them, or they default to "0", "1", ...).
    """

    name: str
    num_classes: int
    augment_customary: bool
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    class_names: Optional[Tuple[str, ...]] = None


DATASETS: Registry = Registry("dataset", names=choices.DATASETS)
for _spec in (
    DatasetSpec("sample", 10, False, (0.2860,), (0.3530,), FASHION_MNIST_CLASS_NAMES),
    DatasetSpec("mnist", 10, False, (0.1307,), (0.3081,),
                tuple(str(digit) for digit in range(10))),
    DatasetSpec("fashion_mnist", 10, False, (0.2860,), (0.3530,), FASHION_MNIST_CLASS_NAMES),
    DatasetSpec("cifar10", 10, True, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                CIFAR10_CLASS_NAMES),
    DatasetSpec("cifar100", 100, True, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
):
    DATASETS.register(_spec.name)(_spec)
del _spec
DATASETS.check_complete()


# Datasets that come as an image folder (no TFDS builder): name -> folder names
# looked for in the data directory.
IMAGE_FOLDER_DATASETS = {"tiny_imagenet": ("tiny-imagenet-200", "tiny_imagenet")}
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
IMAGE_FOLDER_CACHE = "tf_supermask_decoded.npz"
VAL_ANNOTATIONS = "val_annotations.txt"


def dataset_names() -> List[str]:
    """Registered names of the TFDS-backed datasets and the sample.

    `load_dataset` also takes the image-folder names of `IMAGE_FOLDER_DATASETS`
    ("tiny_imagenet"), a path to a `.npz` file and a path to an image folder.
    """
    return DATASETS.names()


@dataclasses.dataclass
class Dataset:
    """An image classification dataset held in memory.

    Attributes:
      name: dataset name ("sample", "cifar10", or the stem of a .npz file).
      x_train: uint8 images, shape (N, H, W, C).
      y_train: int64 labels, shape (N,).
      x_val: uint8 held-out training images; 0 rows when no validation split.
      y_val: int64 labels of `x_val`.
      x_test: uint8 test images.
      y_test: int64 test labels.
      num_classes: number of classes.
      class_names: one name per class.
      source: where it came from: "sample", "npz:/absolute/path" or "tfds".
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: List[str]
    source: str

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """Shape (H, W, C) of one image."""
        return tuple(self.x_train.shape[1:])


class DatasetNotFoundError(FileNotFoundError):
    """No source could provide the dataset; the message says how to provide one."""


def npz_search_dir(data_dir: Optional[str] = None) -> str:
    """The directory searched for offline `{name}.npz` files.

    Args:
      data_dir: the `--data_dir` flag value; wins when given.

    Returns:
      `data_dir` if given, else `$TF_SUPERMASK_DATA` if set, else
      `~/.cache/tf_supermask`, with `~` expanded.
    """
    directory = data_dir or os.environ.get(DATA_DIR_ENV_VAR) or DEFAULT_DATA_DIR
    return os.path.expanduser(directory)


def load_dataset(
    name: str,
    data_dir: Optional[str] = None,
    validation_size: int = 0,
    seed: int = 0,
    train_size: Optional[int] = None,
) -> Dataset:
    """Loads a dataset by name, offline first, and splits off a validation set.

    Sources, in order:
      * `name == "sample"`: the Fashion-MNIST sample shipped in the package.
      * `name` is a path to a `.npz` file: that file.
      * `name` is a path to a folder: `load_image_folder` (TinyImageNet layout).
      * `name` is one of `dataset_names()`: `{name}.npz` in
        `npz_search_dir(data_dir)`, else TFDS (`data_dir` is passed to
        `tfds.load` as its data directory).
      * `name` is "tiny_imagenet": `tiny_imagenet.npz` in the search directory,
        else a folder `tiny-imagenet-200` or `tiny_imagenet` in it (or the
        search directory itself when it has the layout). TFDS has no
        TinyImageNet builder. Its test labels are unpublished, so the test set
        is the labelled validation split.

    Args:
      name: a name from `dataset_names()`, "tiny_imagenet", a path to a `.npz`
        file holding `x_train, y_train, x_test, y_test` (and optionally
        `class_names`), or a path to an image folder (see `load_image_folder`).
      data_dir: directory of offline `.npz` files, image folders and TFDS data; see
        `npz_search_dir` for the default.
      validation_size: number of training images held out as `x_val, y_val`,
        drawn uniformly at random (training files are often sorted by class).
      seed: seed of the validation split and of the `train_size` subset.
      train_size: if given, keep only this many training images (a random
        subset of those left after the validation split).

    Returns:
      The `Dataset`; grayscale images get a channel axis, labels are int64.

    Raises:
      ValueError: unknown name, or split sizes that do not fit the training set.
      DatasetNotFoundError: no source could provide the dataset; the message
        explains how to provide it.
    """
    if name.endswith(".npz"):
        dataset = load_npz(name)
    elif name == "sample":
        dataset = load_sample()
    elif name in IMAGE_FOLDER_DATASETS:
        dataset = _load_named_image_folder(name, data_dir)
    elif name not in DATASETS and os.path.isdir(os.path.expanduser(name)):
        dataset = load_image_folder(name)
    else:
        if name not in DATASETS:
            raise ValueError(
                f"unknown dataset {name!r}; choose one of: "
                f"{', '.join(sorted(DATASETS.names() + list(IMAGE_FOLDER_DATASETS)))}, "
                f"or give the path of an .npz file or of an image folder")
        npz_path = os.path.join(npz_search_dir(data_dir), f"{name}.npz")
        if os.path.isfile(npz_path):
            dataset = load_npz(npz_path, name=name)
        else:
            if not tfds_data_present(name, data_dir):
                # TFDS would wait minutes on a network that is not there: say it at once.
                problem = network_problem()
                if problem:
                    raise DatasetNotFoundError(_offline_message(name, npz_path, problem))
            try:
                dataset = load_tfds(name, data_dir=data_dir)
            except Exception as error:  # any TFDS failure means "not available here"
                raise DatasetNotFoundError(_how_to_provide(name, npz_path, error)) from error
    return split_training_set(dataset, validation_size, seed, train_size)


def load_sample() -> Dataset:
    """The real Fashion-MNIST sample shipped inside the package.

    Built by `scripts/make_sample.py`: a class-balanced subset of the
    Fashion-MNIST training and test sets (MIT licence, Zalando SE 2017).
    """
    resource = importlib.resources.files(__package__).joinpath("sample", SAMPLE_FILE)
    with importlib.resources.as_file(resource) as path:
        dataset = load_npz(str(path), name="sample")
    dataset.source = "sample"
    return dataset


def load_npz(path: str, name: Optional[str] = None) -> Dataset:
    """Loads an offline `.npz` file (the layout `make_npz.py` writes).

    Args:
      path: file holding `x_train, x_test` (uint8, (N, H, W, C) or (N, H, W)),
        `y_train, y_test` (integer labels) and optionally `class_names`.
      name: dataset name; defaults to the file name without `.npz`.

    Returns:
      The `Dataset`, with no validation rows.

    Raises:
      DatasetNotFoundError: `path` does not exist.
      ValueError: a key is missing or an array has the wrong shape or dtype.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"no .npz file at {path}; it must hold {_npz_layout()}"
        )
    name = name or os.path.splitext(os.path.basename(path))[0]
    arrays, class_names = _read_npz(path)
    return _make_dataset(name, arrays, class_names, source=f"npz:{path}")


def _read_npz(path: str):
    """({key: array} of NPZ_KEYS, class_names or None) from the .npz file at `path`.

    Whatever is wrong with the file (empty, random bytes, truncated, a single
    ``.npy`` array, missing keys, unreadable members) becomes one ``ValueError``
    naming the file and the problem, never NumPy's or zipfile's traceback.
    """
    def bad(problem):
        return ValueError(f"{path} is not a usable .npz dataset: {problem}; it must hold "
                          f"{_npz_layout()}")

    if os.path.getsize(path) == 0:
        raise bad("the file is empty")
    with open(path, "rb") as stream:
        magic = stream.read(6)
    if magic == b"\x93NUMPY":
        raise bad("it is a single .npy array, not an .npz archive of named arrays")
    if not magic.startswith(b"PK"):
        raise bad("it is not a zip archive (as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as contents:
            missing = [key for key in NPZ_KEYS if key not in contents.files]
            if missing:
                raise bad(f"it lacks the keys {missing} (it holds {sorted(contents.files)})")
            arrays = {key: contents[key] for key in NPZ_KEYS}
            class_names = (contents["class_names"].tolist() if "class_names" in contents.files
                           else None)
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise bad(f"an array could not be read ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise bad(f"the archive is truncated or damaged ({type(error).__name__}: {error})") \
            from None
    return arrays, class_names


class ImageFolderError(ValueError):
    """A folder does not have the image-folder (TinyImageNet) layout."""


def load_image_folder(path: str, name: Optional[str] = None,
                      cache: Union[bool, str] = True) -> Dataset:
    """Loads a classification image folder in TinyImageNet-200's layout.

    Layout (that of the official `tiny-imagenet-200.zip`)::

        PATH/train/<wnid>/images/*.JPEG     training images, one folder per class
        PATH/val/images/*.JPEG              validation images
        PATH/val/val_annotations.txt        "<file>\t<wnid>[\t<box>...]" per image
        PATH/wnids.txt                      optional: the class wnids, one a line

    Class ids follow the sorted wnids (as torchvision's ImageFolder), so they do
    not depend on the order of `wnids.txt`; when that file exists it must list
    exactly the training classes. The unlabelled `test/` folder is ignored: the
    test set of the returned `Dataset` is the labelled **validation split**
    (TinyImageNet's test labels were never published).

    Images are decoded with Pillow to RGB uint8 arrays (grayscale JPEGs become
    three equal channels); all must have one size (64x64 for TinyImageNet).
    Decoding 110,000 images takes a minute or two, so the arrays are cached.

    Args:
      path: the folder.
      name: dataset name (default: the folder's name).
      cache: True: cache the decoded arrays in `PATH/tf_supermask_decoded.npz`
        (1.4 GB for TinyImageNet; skipped with a warning when the folder is
        read-only); a string: cache at that path; False: no cache. A cache is
        used only while the folder's file list and sizes are unchanged.

    Returns:
      The `Dataset` (no validation rows; `x_test` = the validation split).

    Raises:
      DatasetNotFoundError: `path` is not a folder.
      ImageFolderError: the folder does not have the layout above, or images
        differ in size.
    """
    folder = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"no image folder at {folder}; it must hold "
                                   f"{_image_folder_layout()}")
    name = name or os.path.basename(folder.rstrip(os.sep))
    wnids, train_files, val_files, val_wnids = _scan_image_folder(folder)
    fingerprint = _fingerprint(folder, train_files + val_files)
    cache_path = (os.path.join(folder, IMAGE_FOLDER_CACHE) if cache is True
                  else os.path.abspath(os.path.expanduser(cache)) if cache else None)
    arrays = _read_cache(cache_path, fingerprint) if cache_path else None
    if arrays is None:
        index = {wnid: label for label, wnid in enumerate(wnids)}
        train_labels = [index[os.path.basename(os.path.dirname(os.path.dirname(file)))]
                        for file in train_files]
        arrays = {
            "x_train": _decode_images(folder, train_files),
            "y_train": np.asarray(train_labels, np.int64),
            "x_test": _decode_images(folder, val_files),
            "y_test": np.asarray([index[wnid] for wnid in val_wnids], np.int64),
        }
        if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
            raise ImageFolderError(f"{folder}: training images are {arrays['x_train'].shape[1:]}"
                                   f" but validation images {arrays['x_test'].shape[1:]}")
        if cache_path:
            _write_cache(cache_path, arrays, fingerprint)
    return _make_dataset(name, arrays, list(wnids), source=f"image_folder:{folder}")


def _image_folder_layout() -> str:
    return ("train/<wnid>/images/*.JPEG (one folder per class), val/images/*.JPEG and "
            f"val/{VAL_ANNOTATIONS} (lines '<file>\t<wnid>...'), optionally wnids.txt: "
            "the layout of TinyImageNet-200 (tiny-imagenet-200.zip)")


def _is_image(file_name: str) -> bool:
    return file_name.lower().endswith(IMAGE_EXTENSIONS)


def _scan_image_folder(folder: str):
    """(sorted wnids, train files, val files, val wnids); files relative to `folder`."""
    def malformed(problem):
        return ImageFolderError(f"{folder} is not an image folder: {problem}. Expected "
                                f"{_image_folder_layout()}")

    train_dir = os.path.join(folder, "train")
    if not os.path.isdir(train_dir):
        raise malformed("it has no train/ folder")
    wnids = sorted(entry for entry in os.listdir(train_dir)
                   if os.path.isdir(os.path.join(train_dir, entry)))
    if not wnids:
        raise malformed("train/ has no class folders")
    train_files = []
    for wnid in wnids:
        images_dir = os.path.join(train_dir, wnid, "images")
        files = sorted(f for f in os.listdir(images_dir) if _is_image(f)) \
            if os.path.isdir(images_dir) else []
        if not files:
            raise malformed(f"train/{wnid}/images/ is missing or holds no images")
        train_files.extend(os.path.join("train", wnid, "images", f) for f in files)
    listed_path = os.path.join(folder, "wnids.txt")
    if os.path.isfile(listed_path):
        with open(listed_path) as handle:
            listed = sorted(line.strip() for line in handle if line.strip())
        if listed != wnids:
            raise malformed(f"wnids.txt lists {len(listed)} classes that differ from the "
                            f"{len(wnids)} folders in train/ (e.g. "
                            f"{sorted(set(listed) ^ set(wnids))[:3]})")
    val_images = os.path.join(folder, "val", "images")
    annotations_path = os.path.join(folder, "val", VAL_ANNOTATIONS)
    if not os.path.isdir(val_images):
        raise malformed("it has no val/images/ folder")
    if not os.path.isfile(annotations_path):
        raise malformed(f"it has no val/{VAL_ANNOTATIONS}")
    annotations = {}
    with open(annotations_path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise malformed(f"val/{VAL_ANNOTATIONS} line {number} has no class: {line!r}")
            if fields[1] not in wnids:
                raise malformed(f"val/{VAL_ANNOTATIONS} line {number}: class {fields[1]!r} "
                                f"has no train/ folder")
            annotations[fields[0]] = fields[1]
    present = sorted(f for f in os.listdir(val_images) if _is_image(f))
    missing = sorted(set(annotations) - set(present))
    unlabelled = sorted(set(present) - set(annotations))
    if missing:
        raise malformed(f"val/{VAL_ANNOTATIONS} names {len(missing)} images not in "
                        f"val/images/ (e.g. {missing[:3]})")
    if unlabelled:
        raise malformed(f"{len(unlabelled)} images of val/images/ have no line in "
                        f"val/{VAL_ANNOTATIONS} (e.g. {unlabelled[:3]})")
    if not present:
        raise malformed("val/images/ holds no images")
    val_files = [os.path.join("val", "images", f) for f in present]
    return wnids, train_files, val_files, [annotations[f] for f in present]


def _fingerprint(folder: str, files: Sequence[str]) -> str:
    """Hash of the relative paths and sizes of `files`: changes when the folder does."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file}\0{os.path.getsize(os.path.join(folder, file))}\n".encode())
    return digest.hexdigest()


def _decode_images(folder: str, files: Sequence[str]) -> np.ndarray:
    """Decodes images to one uint8 (N, H, W, 3) array with Pillow, on a thread pool."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("image folders are decoded with Pillow: pip install Pillow") from error

    def decode(file):
        with Image.open(os.path.join(folder, file)) as image:
            return np.asarray(image.convert("RGB"), np.uint8)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(decode, files))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(file for file, image in zip(files, images) if image.shape != first)
        raise ImageFolderError(f"{folder}: images differ in size, e.g. {files[0]} is "
                               f"{first[:2]} and {odd} is {shapes - {first}}")
    return np.stack(images)


def _read_cache(path: str, fingerprint: str) -> Optional[Dict[str, np.ndarray]]:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as contents:
            if str(contents["fingerprint"]) != fingerprint:
                return None
            return {key: contents[key] for key in NPZ_KEYS}
    except (OSError, KeyError, ValueError):
        return None


def _write_cache(path: str, arrays: Dict[str, np.ndarray], fingerprint: str):
    try:
        with atomic_file(path) as temporary:
            with open(temporary, "wb") as stream:
                np.savez(stream, fingerprint=np.asarray(fingerprint), **arrays)
    except OSError as error:
        warnings.warn(f"could not cache the decoded images at {path}: {error}")


def _load_named_image_folder(name: str, data_dir: Optional[str]) -> Dataset:
    """An image-folder dataset by name: `{name}.npz`, else its folder, in the search dir."""
    search_dir = npz_search_dir(data_dir)
    npz_path = os.path.join(search_dir, f"{name}.npz")
    if os.path.isfile(npz_path):
        return load_npz(npz_path, name=name)
    candidates = [os.path.join(search_dir, folder) for folder in IMAGE_FOLDER_DATASETS[name]]
    candidates.append(search_dir)
    for folder in candidates:
        if os.path.isdir(os.path.join(folder, "train")):
            return load_image_folder(folder, name=name)
    raise DatasetNotFoundError(
        f"dataset {name!r} is not available: TFDS has no builder for it, and neither "
        f"{npz_path} nor an image folder {' or '.join(candidates[:-1])} exists.\n"
        f"Provide it in one of these ways:\n"
        f"  * download tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) "
        f"and unzip it into the directory given by --data_dir, else ${DATA_DIR_ENV_VAR}, "
        f"else {DEFAULT_DATA_DIR}, so that it holds tiny-imagenet-200/ with "
        f"{_image_folder_layout()};\n"
        f"  * or pass the folder's path as the dataset name;\n"
        f"  * or write {name}.npz with the keys {_npz_layout()} into that directory.")


# What the offline check connects to: TFDS's downloads and metadata come from Google
# Cloud Storage. $TF_SUPERMASK_NETWORK_CHECK ("host:port") names another host (a mirror;
# tests use a closed local port).
NETWORK_CHECK_ADDRESS = ("storage.googleapis.com", 443)
NETWORK_CHECK_ENV_VAR = "TF_SUPERMASK_NETWORK_CHECK"
NETWORK_CHECK_SECONDS = 3.0


def tfds_data_dir(data_dir: Optional[str] = None) -> str:
    """The folder TFDS reads and writes: `data_dir`, else $TFDS_DATA_DIR, else
    ~/tensorflow_datasets."""
    folder = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~",
                                                                         "tensorflow_datasets")
    return os.path.expanduser(folder)


def tfds_data_present(name: str, data_dir: Optional[str] = None) -> bool:
    """Whether TFDS has prepared `name` in its data folder (a version folder holding
    dataset_info.json), so that loading it needs no network."""
    folder = os.path.join(tfds_data_dir(data_dir), name)
    for root, _, files in os.walk(folder):
        if "dataset_info.json" in files and "incomplete" not in root:
            return True
    return False


def network_problem(address=None, timeout: Optional[float] = None) -> Optional[str]:
    """None if a TCP connection to `address` (TFDS's storage host) opens within
    `timeout` seconds, else what went wrong, in words."""
    import socket

    if address is None and os.environ.get(NETWORK_CHECK_ENV_VAR):
        host, _, port = os.environ[NETWORK_CHECK_ENV_VAR].rpartition(":")
        address = (host, int(port))
    host, port = address or NETWORK_CHECK_ADDRESS
    try:
        with socket.create_connection((host, port), timeout=timeout or NETWORK_CHECK_SECONDS):
            return None
    except OSError as error:
        return f"{host}:{port} cannot be reached ({error.strerror or error})"


def _offline_message(name: str, npz_path: str, problem: str) -> str:
    # One line: the binaries print an error's first line.
    return (f"dataset {name!r} is not available offline and there is no network for TFDS "
            f"({problem}): write {name}.npz ({_npz_layout()}) to {npz_path} (the folder of "
            f"--data_dir, else ${DATA_DIR_ENV_VAR}, else {DEFAULT_DATA_DIR}), or run once with a "
            f"network so that TFDS downloads it into {tfds_data_dir()} (or --data_dir)")


def _remove_partial_downloads(folder: str, before: set):
    """Removes what a failed TFDS load left in `folder` that was not in `before`
    (unfinished ``incomplete.*`` / ``*.tmp`` folders and files, a new dataset folder)."""
    import shutil

    if not os.path.isdir(folder):
        return
    for entry in set(os.listdir(folder)) - before:
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                pass


def _entries(folder: str) -> set:
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def load_tfds(name: str, data_dir: Optional[str] = None) -> Dataset:
    """Loads a dataset with TensorFlow Datasets, downloading it if needed.

    Imports `tensorflow_datasets` here only. Under a non-TensorFlow Keras
    backend, TensorFlow is kept off the GPUs so that it does not take the
    memory the training backend needs.

    Args:
      name: TFDS name with "train" and "test" splits and an integer "label".
      data_dir: TFDS data directory; None means TFDS's default
        (`~/tensorflow_datasets`).

    Returns:
      The `Dataset`, with no validation rows.
    """
    import keras
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if keras.backend.backend() != "tensorflow":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow already initialised its devices
            pass
    root = tfds_data_dir(data_dir)
    watched = {os.path.join(root, name): None, os.path.join(root, "downloads"): None}
    watched = {folder: _entries(folder) for folder in watched}
    created_root = not os.path.isdir(root)
    try:
        (train, test), info = tfds.load(
            name, split=["train", "test"], data_dir=data_dir, batch_size=-1,
            as_supervised=True, with_info=True,
        )
    except BaseException:
        for folder, before in watched.items():  # no partial downloads stay behind
            _remove_partial_downloads(folder, before)
        if created_root:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        raise
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy((train, test))
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return _make_dataset(name, arrays, info.features["label"].names, source="tfds")


def split_training_set(
    dataset: Dataset, validation_size: int = 0, seed: int = 0, train_size: Optional[int] = None
) -> Dataset:
    """Moves a random part of the training set to validation and subsamples the rest.

    One seeded permutation of the training set gives the validation images
    (its first `validation_size` entries) and the kept training images (the
    next `train_size`), so the validation set does not depend on `train_size`.
    Both keep the original file order and replace any existing validation rows.

    Args:
      dataset: the dataset to split; not modified.
      validation_size: images to hold out, 0 <= validation_size < N.
      seed: seed of the permutation.
      train_size: training images to keep, at most N - validation_size;
        None keeps them all.

    Returns:
      `dataset` itself when there is nothing to split, else a new `Dataset`.

    Raises:
      ValueError: the sizes do not fit the training set.
    """
    num_train = len(dataset.y_train)
    if not 0 <= validation_size < num_train:
        raise ValueError(
            f"validation_size={validation_size} must be >= 0 and smaller than the "
            f"{num_train} training images of {dataset.name!r}"
        )
    remaining = num_train - validation_size
    if train_size is not None and not 0 < train_size <= remaining:
        raise ValueError(
            f"train_size={train_size} must be in [1, {remaining}]: {dataset.name!r} has "
            f"{num_train} training images and validation_size={validation_size}"
        )
    if validation_size == 0 and train_size is None:
        return dataset
    permutation = streams.rng("validation_split", seed).permutation(num_train)
    validation_indices = np.sort(permutation[:validation_size])
    train_indices = np.sort(permutation[validation_size:][:train_size])
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train[train_indices],
        y_train=dataset.y_train[train_indices],
        x_val=dataset.x_train[validation_indices],
        y_val=dataset.y_train[validation_indices],
    )


def normalization_stats(
    name_or_dataset: Union[str, Dataset],
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and standard deviation of images scaled to [0, 1].

    Known datasets (see `dataset_names()`) use fixed published constants;
    "sample" uses the Fashion-MNIST ones. A `Dataset` with any other name
    gets statistics computed from its `x_train`.

    Args:
      name_or_dataset: a dataset name or a loaded `Dataset`.

    Returns:
      `(mean, std)`, each a tuple with one float per channel, the
      `normalization` argument of `ArrayBatches`.

    Raises:
      ValueError: an unknown name (pass the loaded `Dataset` instead).
    """
    if isinstance(name_or_dataset, str):
        spec = DATASETS.get(name_or_dataset)
        return spec.mean, spec.std
    if name_or_dataset.name in DATASETS:
        spec = DATASETS.get(name_or_dataset.name)
        return spec.mean, spec.std
    return _channel_stats(name_or_dataset.x_train)


def _channel_stats(images: np.ndarray, chunk_size: int = 4096):
    """Per-channel mean and std of uint8 NHWC images scaled to [0, 1], in chunks."""
    total = np.zeros(images.shape[-1])
    total_of_squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk_size):
        chunk = images[start:start + chunk_size].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        total_of_squares += np.square(chunk).sum(axis=(0, 1, 2))
    count = images.size / images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(total_of_squares / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _make_dataset(
    name: str, arrays: Dict[str, np.ndarray], class_names: Optional[Sequence[str]], source: str
) -> Dataset:
    """Validates raw split arrays and wraps them in a `Dataset`."""
    images = {split: _as_nhwc_uint8(arrays[f"x_{split}"], f"{source} x_{split}")
              for split in ("train", "test")}
    labels = {split: _as_int_labels(arrays[f"y_{split}"], f"{source} y_{split}")
              for split in ("train", "test")}
    for split in ("train", "test"):
        if len(images[split]) != len(labels[split]):
            raise ValueError(f"{source}: {len(images[split])} x_{split} images but "
                             f"{len(labels[split])} y_{split} labels")
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise ValueError(f"{source}: train images {images['train'].shape[1:]} and test images "
                         f"{images['test'].shape[1:]} differ in shape")
    num_classes = _num_classes(name, labels, class_names)
    if class_names is None and name in DATASETS:
        class_names = DATASETS.get(name).class_names
    if class_names is None:
        class_names = [str(label) for label in range(num_classes)]
    class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"{source}: {len(class_names)} class_names for {num_classes} classes")
    empty_images = np.zeros((0,) + images["train"].shape[1:], np.uint8)
    return Dataset(
        name=name,
        x_train=images["train"], y_train=labels["train"],
        x_val=empty_images, y_val=np.zeros((0,), np.int64),
        x_test=images["test"], y_test=labels["test"],
        num_classes=num_classes, class_names=class_names, source=source,
    )


def _num_classes(name: str, labels: Dict[str, np.ndarray], class_names) -> int:
    """Class count from the registry, else `class_names`, else the largest label."""
    if name in DATASETS:
        num_classes = DATASETS.get(name).num_classes
    elif class_names is not None:
        num_classes = len(class_names)
    else:
        num_classes = int(max(labels["train"].max(initial=0), labels["test"].max(initial=0))) + 1
    for split, split_labels in labels.items():
        if split_labels.size and not 0 <= split_labels.min() <= split_labels.max() < num_classes:
            raise ValueError(f"{name!r}: y_{split} labels must lie in [0, {num_classes})")
    return num_classes


def _as_int_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """Labels as int64 of shape (N,); fractional or non-numeric labels are refused rather
    than silently truncated."""
    labels = np.asarray(labels)
    if labels.ndim > 1 and labels.size != labels.shape[0]:
        raise ValueError(f"{what}: expected one integer label per image, got shape "
                         f"{labels.shape}")
    labels = labels.reshape(-1)
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        bad = labels[~(np.isfinite(labels) & (labels == np.round(labels)))]
        if not bad.size:
            return labels.astype(np.int64)
        raise ValueError(f"{what}: labels must be whole numbers, got {bad[0]!r} "
                         f"({bad.size} such labels)")
    raise ValueError(f"{what}: labels must be integers, got dtype {labels.dtype}")


def _as_nhwc_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """Adds the channel axis to grayscale (N, H, W) images and checks the dtype."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4:
        raise ValueError(f"{what}: expected images of shape (N, H, W, C) or (N, H, W), "
                         f"got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 pixels in [0, 255], got {images.dtype}")
    return images


def _npz_layout() -> str:
    return ("x_train, x_test: uint8 images of shape (N, H, W, C) or (N, H, W); "
            "y_train, y_test: integer labels of shape (N,); "
            "optional class_names: an array of strings")


def _how_to_provide(name: str, npz_path: str, tfds_error: Exception) -> str:
    return (
        f"dataset {name!r} is not available: there is no offline file {npz_path}, and "
        f"TFDS could not load it ({type(tfds_error).__name__}: {tfds_error}).\n"
        f"Provide it in one of these ways:\n"
        f"  * with a network, TFDS downloads it (TFDS name {name!r}) into --data_dir, "
        f"or ~/tensorflow_datasets when --data_dir is not set;\n"
        f"  * offline, write {name}.npz with the keys {_npz_layout()} "
        f"(`python ../shared/datasets/make_npz.py DIR` writes this layout) into the "
        f"directory given by --data_dir, else ${DATA_DIR_ENV_VAR}, "
        f"else {DEFAULT_DATA_DIR}; it was looked for at {npz_path};\n"
        f"  * or pass the path of such a .npz file as the dataset name."
    )
