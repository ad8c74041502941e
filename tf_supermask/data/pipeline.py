"""Batches of normalised, optionally shuffled and augmented images, in NumPy.

`ArrayBatches` is a `keras.utils.PyDataset`, so `model.fit` takes it under
every Keras backend; nothing here needs TensorFlow.
"""

from typing import Optional, Sequence, Tuple, Union

import keras
import numpy as np

CROP_PADDING = 4  # pixels of zero padding around each image before a random crop

Normalization = Tuple[Union[float, Sequence[float]], Union[float, Sequence[float]]]


def random_crop_and_flip(images: np.ndarray, rng: np.random.Generator,
                         padding: int = CROP_PADDING) -> np.ndarray:
    """The standard CIFAR augmentation, vectorised over a batch.

    Each image is zero-padded by `padding` pixels on every side, cropped back
    to its size at a uniformly random offset, and mirrored left-right with
    probability 1/2. Images sharing an offset are cropped together, so the
    Python loop runs over at most (2 * padding + 1)**2 offsets, not images
    (about 1 ms for 128 CIFAR images on one CPU core, over twice as fast as
    gathering every pixel with one fancy-indexing call).

    Args:
      images: raw images, shape (B, H, W, C); zero padding means black pixels.
      rng: source of the offsets and flips.
      padding: pixels of padding per side; offsets range over [0, 2 * padding].

    Returns:
      Augmented images with the shape and dtype of `images`.
    """
    batch_size, height, width, channels = images.shape
    padded = np.zeros((batch_size, height + 2 * padding, width + 2 * padding, channels),
                      images.dtype)
    padded[:, padding:padding + height, padding:padding + width] = images
    offsets_per_axis = 2 * padding + 1
    offsets = rng.integers(0, offsets_per_axis ** 2, size=batch_size)
    flipped = np.flatnonzero(rng.random(batch_size) < 0.5)
    cropped = np.empty_like(images)
    for offset in np.unique(offsets):
        same_offset = np.flatnonzero(offsets == offset)
        top, left = divmod(int(offset), offsets_per_axis)
        cropped[same_offset] = padded[same_offset, top:top + height, left:left + width]
    cropped[flipped] = cropped[flipped, :, ::-1]
    return cropped


class ArrayBatches(keras.utils.PyDataset):
    """Serves (images, labels) batches from in-memory uint8 arrays.

    Images become float32 `(x / 255 - mean) / std` per channel; labels stay
    int64. With `shuffle=True` every epoch visits the examples in a fresh
    permutation drawn from a generator seeded with `(seed, epoch)`, so runs
    with the same seed see the same batches. With `augment=True` each batch
    gets a random crop of the 4-pixel zero-padded raw image (padding happens
    before normalisation, as in the standard CIFAR pipeline) and a random
    horizontal flip, drawn from a generator seeded with
    `(seed, epoch, batch index)`, so batches do not depend on the order in
    which workers fetch them.

    `epoch` starts at 0 and `on_epoch_end` advances it. Keras calls
    `on_epoch_end` once more than the number of epochs (`fit` resets its
    iterator before the first epoch), so the first epoch of `fit` uses
    epoch 1: the count is deterministic but is not `fit`'s epoch number.
    Keras's `fit(shuffle=True)` (its default) also reorders whole batches
    with Python's unseeded `random`; pass `shuffle=False` to `fit` to keep
    the order reproducible, since this class shuffles examples itself.

    Args:
      x: uint8 images, shape (N, H, W, C).
      y: integer labels, shape (N,).
      batch_size: examples per batch.
      shuffle: draw a new example order every epoch.
      augment: apply random crop and horizontal flip.
      seed: seed of the shuffling and augmentation.
      normalization: `(mean, std)` of images scaled to [0, 1], each a float
        or one float per channel, e.g. `normalization_stats(name)`; None
        only scales to [0, 1].
      drop_remainder: drop the last batch when it has fewer than
        `batch_size` examples.
      **pydataset_kwargs: `workers`, `use_multiprocessing`, `max_queue_size`
        of `keras.utils.PyDataset`.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        normalization: Optional[Normalization] = None,
        drop_remainder: bool = False,
        **pydataset_kwargs,
    ):
        super().__init__(**pydataset_kwargs)
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"x must be uint8 images of shape (N, H, W, C), got "
                             f"{x.dtype} {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.x = x
        self.y = np.asarray(y).reshape(-1).astype(np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_remainder = drop_remainder
        mean, std = normalization if normalization is not None else (0.0, 1.0)
        mean = _per_channel(mean, x.shape[-1], "normalization mean")
        std = _per_channel(std, x.shape[-1], "normalization std")
        if np.any(std <= 0):
            raise ValueError(f"normalization std must be positive, got {std}")
        # (x / 255 - mean) / std == x * scale - shift, with scale and shift
        # spread over a whole image: broadcasting over a length-C inner axis
        # is several times slower.
        self._scale = np.ascontiguousarray(
            np.broadcast_to(1.0 / (255.0 * std), x.shape[1:]), np.float32)
        self._shift = np.ascontiguousarray(np.broadcast_to(mean / std, x.shape[1:]), np.float32)
        self.epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch that seeds the current example order and augmentation.

        Set it to resume a run at a given epoch.
        """
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: int):
        self._epoch = epoch
        if self.shuffle:
            self._order = np.random.default_rng((self.seed, epoch)).permutation(len(self.x))
        else:
            self._order = np.arange(len(self.x))

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_remainder:
            return len(self.x) // self.batch_size
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Batch `index` of the current epoch: float32 images, int64 labels."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        indices = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        images = self.x[indices]
        if self.augment:
            rng = np.random.default_rng((self.seed, self._epoch, index))
            images = random_crop_and_flip(images, rng)
        normalized = images.astype(np.float32)
        normalized *= self._scale
        normalized -= self._shift
        return normalized, self.y[indices]

    def on_epoch_end(self):
        """Advances to the next epoch, reshuffling when `shuffle` is set."""
        self.epoch = self._epoch + 1


def _per_channel(values, num_channels: int, what: str) -> np.ndarray:
    """A float or per-channel sequence as a float32 array of `num_channels` values."""
    values = np.asarray(values, np.float32).reshape(-1)
    if values.size not in (1, num_channels):
        raise ValueError(f"{what} has {values.size} values for {num_channels} channels")
    return np.broadcast_to(values, (num_channels,))
