"""Callbacks that put mask statistics into the epoch logs (and so into TensorBoard and CSV)."""

import keras

from tf_supermask.layers import weights_remaining


class WeightsRemainingLogger(keras.callbacks.Callback):
    """Adds overall and per-layer weights remaining to each epoch's logs.

    Placed before TensorBoard and CSVLogger in the callback list, the values
    become scalars ``weights_remaining`` and ``weights_remaining/<kernel path>``.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        overall, per_layer = weights_remaining(self.model)
        logs["weights_remaining"] = overall
        for path, fraction in per_layer.items():
            logs[f"weights_remaining/{path}"] = fraction


def tensorflow_available():
    """Whether TensorFlow can be imported (SavedModel export needs it)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def tensorboard_available():
    """Whether TensorBoard event files can be written (TensorFlow and TensorBoard)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return tensorflow_available()
