"""Distribution strategies by name (TensorFlow backend); other backends run on one device."""

import contextlib

import keras

STRATEGIES = ("mirrored", "one_device", "multi_worker")


def make_strategy(name):
    """A tf.distribute strategy under the TensorFlow backend, else None.

    Args:
      name: "mirrored" (all local GPUs, or the CPU), "one_device" (the first
        GPU, or the CPU), "multi_worker" (MultiWorkerMirroredStrategy from TF_CONFIG).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def strategy_scope(strategy):
    """`strategy.scope()`, or a no-op context where there is no strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy):
    return strategy.num_replicas_in_sync if strategy is not None else 1
