"""Training batches cut from a training set held in device memory.

`DeviceBatches` serves exactly the batches of `ArrayBatches` (same seeded
example order, same crops and flips, same normalisation) but keeps the whole
uint8 training set as one device array (CIFAR-10: 150 MB) and does the
gather, 4-pixel zero-padded crop, flip and normalisation there, in one
compiled function per batch. The host only draws the random numbers, with the
same NumPy generators as `ArrayBatches` (an example order per epoch, an
offset and a flip per example), and sends those few integers, so no image
crosses from host to device after the first epoch starts.

The point is the JAX/GPU path, where NumPy augmentation on the host caps the
images per second; under TensorFlow the same code runs as eager ops.
"""

from typing import Optional, Tuple

import numpy as np
from keras import ops

from tf_supermask.backend import compiled
from tf_supermask.data.pipeline import (CROP_PADDING, ArrayBatches, Normalization,
                                        crop_and_flip_draws)
from tf_supermask import streams


def crop_and_flip(images, tops, lefts, flips, padding=CROP_PADDING):
    """`random_crop_and_flip` on a device, with the offsets and flips given.

    Args:
      images: (B, H, W, C) images.
      tops, lefts: (B,) int32 crop offsets into the zero-padded image, in
        [0, 2 * padding].
      flips: (B,) booleans: mirror the crop left-right.
      padding: pixels of zero padding per side.

    Returns:
      The (B, H, W, C) crops, in `images`' dtype.
    """
    height, width = int(images.shape[1]), int(images.shape[2])
    padded = ops.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = ops.expand_dims(tops, 1) + ops.arange(height, dtype="int32")
    columns = ops.arange(width, dtype="int32")
    columns = ops.where(ops.expand_dims(flips, 1), width - 1 - columns, columns)
    columns = ops.expand_dims(lefts, 1) + columns
    padded = ops.take_along_axis(padded, rows[:, :, None, None], axis=1)
    return ops.take_along_axis(padded, columns[:, None, :, None], axis=2)


class DeviceBatches(ArrayBatches):
    """`ArrayBatches` whose images live on the device and are augmented there.

    Batch `index` of epoch `epoch` holds the same examples, crops and flips as
    `ArrayBatches(x, y, ...).batch(epoch, index)` with the same arguments; the
    images are device arrays. Arguments as for `ArrayBatches` (there are no
    worker threads: the host work per batch is a few hundred integers).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False,
                 augment: bool = False, seed: int = 0,
                 normalization: Optional[Normalization] = None, drop_remainder: bool = False,
                 steps_per_epoch: Optional[int] = None):
        super().__init__(x, y, batch_size, shuffle=shuffle, augment=augment, seed=seed,
                         normalization=normalization, drop_remainder=drop_remainder,
                         steps_per_epoch=steps_per_epoch)
        self.device_x = ops.convert_to_tensor(x)  # uint8, on the default device
        self.device_y = ops.convert_to_tensor(self.y.astype(np.int32))
        self.device_scale = ops.convert_to_tensor(self._scale)
        self.device_shift = ops.convert_to_tensor(self._shift)
        self._plain = compiled(self._plain_batch)
        self._augmented = compiled(self._augmented_batch)

    def batch(self, epoch: int, index: int):
        """Batch `index` of epoch `epoch`: float32 images and int32 labels, on the device."""
        indices = self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        indices = indices.astype(np.int32)
        tensors = (self.device_x, self.device_y, self.device_scale, self.device_shift)
        if not self.augment:
            return self._plain(*tensors, indices)
        rng = streams.rng("augment", self.seed, epoch, index)
        offsets, flips = crop_and_flip_draws(len(indices), rng)
        tops, lefts = np.divmod(offsets.astype(np.int32), 2 * CROP_PADDING + 1)
        return self._augmented(*tensors, indices, tops, lefts, flips)

    @staticmethod
    def _normalize(images, scale, shift):
        return ops.cast(images, "float32") * scale - shift

    @classmethod
    def _plain_batch(cls, x, y, scale, shift, indices) -> Tuple:
        images = ops.take(x, indices, axis=0)
        return cls._normalize(images, scale, shift), ops.take(y, indices, axis=0)

    @classmethod
    def _augmented_batch(cls, x, y, scale, shift, indices, tops, lefts, flips) -> Tuple:
        images = crop_and_flip(ops.take(x, indices, axis=0), tops, lefts, flips)
        return cls._normalize(images, scale, shift), ops.take(y, indices, axis=0)


def batches_class(input_pipeline: str):
    """ArrayBatches ("host") or DeviceBatches ("device")."""
    try:
        return {"host": ArrayBatches, "device": DeviceBatches}[input_pipeline]
    except KeyError:
        raise ValueError(f"unknown input pipeline {input_pipeline!r}; choose host or device") \
            from None

