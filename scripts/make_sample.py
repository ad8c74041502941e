#!/usr/bin/env python3
"""Builds the Fashion-MNIST sample shipped inside the package.

Reads the original IDX files of Fashion-MNIST, draws a seeded, class-balanced
subset of the training and test splits, and writes it as a compressed .npz
(keys x_train, y_train, x_test, y_test, class_names) to
`tf_supermask/data/sample/fashion_mnist_sample.npz`, the dataset that
`tf_supermask.data.load_dataset("sample")` returns.

    python scripts/make_sample.py [--source DIR] [--train_size N] [--test_size N]
"""

import argparse
import gzip
import os

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.path.join(REPO_ROOT, "..", "shared", "datasets", "fashion_mnist")
DEFAULT_OUTPUT = os.path.join(
    REPO_ROOT, "tf_supermask", "data", "sample", "fashion_mnist_sample.npz"
)
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def read_idx(path: str, expected_magic: int) -> np.ndarray:
    """Reads a gzipped IDX file of unsigned bytes (images or labels).

    Args:
      path: the `.gz` file.
      expected_magic: 2051 for an image file, 2049 for a label file.

    Returns:
      A uint8 array of shape (N, rows, cols) for images, (N,) for labels.
    """
    with gzip.open(path, "rb") as f:
        content = f.read()
    magic = int.from_bytes(content[0:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number {magic}, expected {expected_magic}")
    num_dims = content[3]
    shape = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(num_dims)]
    return np.frombuffer(content, np.uint8, offset=4 + 4 * num_dims).reshape(shape)


def balanced_subset(labels: np.ndarray, size: int, num_classes: int, rng) -> np.ndarray:
    """Indices of `size` examples, `size // num_classes` per class, in file order."""
    if size % num_classes:
        raise ValueError(f"size {size} is not a multiple of the {num_classes} classes")
    per_class = size // num_classes
    chosen = [
        rng.choice(np.flatnonzero(labels == label), per_class, replace=False)
        for label in range(num_classes)
    ]
    return np.sort(np.concatenate(chosen))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help="folder holding the four Fashion-MNIST IDX .gz files")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="the .npz to write")
    parser.add_argument("--train_size", type=int, default=10000,
                        help="training images to keep (a multiple of 10)")
    parser.add_argument("--test_size", type=int, default=2000,
                        help="test images to keep (a multiple of 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, prefix, size in (("train", "train", args.train_size),
                                ("test", "t10k", args.test_size)):
        images = read_idx(os.path.join(args.source, f"{prefix}-images-idx3-ubyte.gz"),
                          IDX_IMAGES_MAGIC)
        labels = read_idx(os.path.join(args.source, f"{prefix}-labels-idx1-ubyte.gz"),
                          IDX_LABELS_MAGIC)
        chosen = balanced_subset(labels, size, len(CLASS_NAMES), rng)
        arrays[f"x_{split}"] = images[chosen][..., np.newaxis]
        arrays[f"y_{split}"] = labels[chosen]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    np.savez_compressed(args.output, class_names=np.array(CLASS_NAMES), **arrays)
    size_mb = os.path.getsize(args.output) / 1e6
    print(f"{args.output}: train {arrays['x_train'].shape}, test {arrays['x_test'].shape}, "
          f"{size_mb:.2f} MB")


if __name__ == "__main__":
    main()
