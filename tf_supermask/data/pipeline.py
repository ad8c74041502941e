"""Batches of normalised, optionally shuffled and augmented images, in NumPy.

`ArrayBatches` is a `keras.utils.PyDataset`, so `model.fit` takes it under
every Keras backend; nothing here needs TensorFlow.
"""

import concurrent.futures
import threading
from typing import Optional, Sequence, Tuple, Union

import keras
import numpy as np

from tf_supermask import streams

CROP_PADDING = 4  # pixels of zero padding around each image before a random crop

Normalization = Tuple[Union[float, Sequence[float]], Union[float, Sequence[float]]]


def crop_and_flip_draws(batch_size: int, rng: np.random.Generator,
                        padding: int = CROP_PADDING) -> Tuple[np.ndarray, np.ndarray]:
    """The random draws of `random_crop_and_flip`, in its order: (offsets, flips).

    An offset in [0, (2 * padding + 1)**2) encodes (top, left) as
    ``divmod(offset, 2 * padding + 1)``; flips are booleans.
    """
    offsets = rng.integers(0, (2 * padding + 1) ** 2, size=batch_size)
    return offsets, rng.random(batch_size) < 0.5


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
    offsets, flips = crop_and_flip_draws(batch_size, rng, padding)
    flipped = np.flatnonzero(flips)
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
    int64. Batch `index` of epoch `epoch` is a function of `(seed, epoch,
    index)` alone. With `shuffle=True` epoch `epoch` visits the examples in
    the permutation drawn by `np.random.default_rng((seed, epoch))`, so runs
    with the same seed see the same batches. With `augment=True` each batch
    gets a random crop of the 4-pixel zero-padded raw image (padding happens
    before normalisation, as in the standard CIFAR pipeline) and a random
    horizontal flip, drawn from a generator seeded with
    `(seed, epoch, batch index)`.

    `epoch` starts at 0 and `on_epoch_end` advances it; set it to replay or
    resume an epoch. `fit` calls `on_epoch_end` once before its first epoch
    (when it resets its iterator) and once after each epoch, so the first
    epoch of a `fit` call on a new instance uses epoch 1 (the next `fit` call
    goes on from there): the count is deterministic but is not `fit`'s
    epoch number. Keras's `fit(shuffle=True)` (its default) also reorders
    whole batches with Python's unseeded `random`; pass `shuffle=False` to
    `fit` to keep the order reproducible, since this class shuffles examples
    itself.

    With `steps_per_epoch` an epoch is the first `steps_per_epoch` batches
    of its permutation (the rest of that permutation is never served) and
    `len()` is at most `steps_per_epoch`. Cap epochs here rather than only
    through `fit(steps_per_epoch=...)`: given fewer steps than `len()`,
    Keras carries one pass over the batches across epochs, and a batch it
    prefetched before `on_epoch_end` would keep the previous epoch.

    `workers > 1` threads prepare the next batches of the epoch ahead of
    the one asked for; they change the speed only, since prepared batches
    are keyed by `(epoch, index)`. Keras itself is told to use one worker:
    its enqueuer keeps the batches it prefetched across `on_epoch_end` (such
    as those after the batch `fit` draws to build the model) and hands them
    to the next epoch, which then repeated and skipped examples in an order
    that depended on the worker count and on timing.

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
      steps_per_epoch: serve at most this many batches per epoch (None: all).
      workers: threads preparing batches ahead (1: none, batches are made
        when asked for).
      max_queue_size: with `workers > 1`, batches prepared ahead, counting
        the one asked for.
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
        steps_per_epoch: Optional[int] = None,
        workers: int = 1,
        max_queue_size: int = 10,
    ):
        super().__init__(workers=1)  # keep Keras's enqueuer off (see the class docstring)
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"x must be uint8 images of shape (N, H, W, C), got "
                             f"{x.dtype} {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive or None, got {steps_per_epoch}")
        self.x = x
        self.y = np.asarray(y).reshape(-1).astype(np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.steps_per_epoch = steps_per_epoch
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
        self._last_order = (None, None)  # (epoch, its example order), replaced as a whole
        self._pool = None
        if workers > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                workers, thread_name_prefix="ArrayBatches")
        self._queue_size = max(1, max_queue_size)
        self._pending = {}  # (epoch, index) -> Future of that batch
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_remainder:
            batches = len(self.x) // self.batch_size
        else:
            batches = -(-len(self.x) // self.batch_size)
        return min(batches, self.steps_per_epoch) if self.steps_per_epoch else batches

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Batch `index` of the current epoch: float32 images, int64 labels."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        epoch = self.epoch
        if self._pool is None:
            return self.batch(epoch, index)
        return self._prefetched(epoch, index)

    def batch(self, epoch: int, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Batch `index` of epoch `epoch`, whatever the current epoch."""
        indices = self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        images = self.x[indices]
        if self.augment:
            rng = streams.rng("augment", self.seed, epoch, index)
            images = random_crop_and_flip(images, rng)
        normalized = images.astype(np.float32)
        normalized *= self._scale
        normalized -= self._shift
        return normalized, self.y[indices]

    def on_epoch_end(self):
        """Advances to the next epoch: the next example order and augmentation."""
        self.epoch += 1

    def _order(self, epoch: int) -> np.ndarray:
        """The example order of `epoch`; the last one is kept for the next batches."""
        cached_epoch, order = self._last_order
        if cached_epoch != epoch:
            if self.shuffle:
                order = streams.rng("data_order", self.seed, epoch).permutation(len(self.x))
            else:
                order = np.arange(len(self.x))
            self._last_order = (epoch, order)  # one assignment: safe to read from any thread
        return order

    def _prefetched(self, epoch: int, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """`batch(epoch, index)`, with the batches after it started in the worker threads."""
        with self._lock:
            pending = {}
            for key, future in self._pending.items():
                if key[0] == epoch and key[1] >= index:
                    pending[key] = future
                else:  # another epoch's, or behind the reader
                    future.cancel()
            for ahead in range(index, min(index + self._queue_size, len(self))):
                if (epoch, ahead) not in pending:
                    pending[(epoch, ahead)] = self._pool.submit(self.batch, epoch, ahead)
            future = pending.pop((epoch, index))
            self._pending = pending
        return future.result()


def _per_channel(values, num_channels: int, what: str) -> np.ndarray:
    """A float or per-channel sequence as a float32 array of `num_channels` values."""
    values = np.asarray(values, np.float32).reshape(-1)
    if values.size not in (1, num_channels):
        raise ValueError(f"{what} has {values.size} values for {num_channels} channels")
    return np.broadcast_to(values, (num_channels,))
