"""The data layer: datasets from the shipped sample, offline .npz files, image
folders (TinyImageNet-200) or TFDS,
and NumPy batch pipelines for Keras.

Importing this package needs NumPy and Keras only; TensorFlow and
TensorFlow Datasets are imported by `load_tfds` when a dataset has to come
from TFDS.
"""

from tf_supermask.data.pipeline import ArrayBatches, random_crop_and_flip
from tf_supermask.data.sources import (
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    DatasetSpec,
    IMAGE_FOLDER_DATASETS,
    ImageFolderError,
    dataset_names,
    load_dataset,
    load_image_folder,
    load_npz,
    load_sample,
    load_tfds,
    normalization_stats,
    npz_search_dir,
    split_training_set,
)

__all__ = [
    "ArrayBatches",
    "DATASETS",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "IMAGE_FOLDER_DATASETS",
    "ImageFolderError",
    "dataset_names",
    "load_dataset",
    "load_image_folder",
    "load_npz",
    "load_sample",
    "load_tfds",
    "normalization_stats",
    "npz_search_dir",
    "random_crop_and_flip",
    "split_training_set",
]
