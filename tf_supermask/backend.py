"""The few operations keras.ops lacks, with one branch per backend.

Everything else in layers, models and training uses ``keras.ops``.
"""

import keras
from keras import ops


def _backend():
    return keras.backend.backend()


def bitcast_to_int32(values):
    """Reinterprets float32 values as int32 (monotonic for non-negative floats)."""
    if _backend() == "tensorflow":
        import tensorflow as tf

        return tf.bitcast(ops.cast(values, "float32"), tf.int32)
    if _backend() == "jax":
        import jax

        return jax.lax.bitcast_convert_type(ops.cast(values, "float32"), "int32")
    raise NotImplementedError(f"bitcast is not implemented for the {_backend()} backend")


def histogram(ids, size, weights=None):
    """Counts of each id in [0, size) (weighted if given), of static length `size`."""
    if _backend() == "tensorflow":
        import tensorflow as tf

        return tf.math.bincount(ids, weights=weights, minlength=size, maxlength=size,
                                dtype=tf.int32)
    if _backend() == "jax":
        import jax.numpy as jnp

        return jnp.bincount(ids, weights=weights, length=size).astype("int32")
    raise NotImplementedError(f"histogram is not implemented for the {_backend()} backend")
