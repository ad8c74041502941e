"""Folded SavedModels of masked networks, servable from raw images.

``export_saved_model(model, path, normalization)`` replaces every masked
layer by a plain Keras ``Dense`` / ``Conv2D`` / ``DepthwiseConv2D`` whose
kernel is the layer's evaluation kernel (weight * mask, times #weights /
#kept when the layer rescales), copies every other layer with its weights,
and writes a SavedModel that holds one copy of each folded kernel (no
scores, no mask variables: pruned weights are zeros in the kernels).

What it serves (``serve``, the ``serving_default`` signature, and the loaded
object itself when called): a batch of raw NHWC images named ``images``,
uint8 or float32 with values in [0, 255]; the run's normalisation
``(images / 255 - mean) / std`` happens inside the graph. It returns
``{"logits": ..., "probabilities": ...}`` (softmax of the logits). The
``serving_uint8`` signature takes uint8 images. The folder is written under
a temporary name and renamed into place.
"""

import numpy as np

from tf_supermask.export.atomic import atomic_path

SAVED_MODEL_DIR = "saved_model"


def folded_kernel(layer):
    """A masked layer's evaluation kernel as a float32 NumPy array
    (``MaskedLayer.evaluation_kernel``)."""
    return layer.evaluation_kernel()


def fold_masks(model):
    """A copy of `model` with plain layers whose kernels have the masks folded in
    (``tf_supermask.models.strip``): no scores or mask variables, the model's
    evaluation predictions. Functional and Sequential models, nested ones included."""
    from tf_supermask.models.sparsify import strip

    try:
        return strip(model)
    except ValueError as error:
        raise ValueError(f"cannot fold the masks of model {model.name!r}: {error}") from None


def normalization_arrays(normalization, channels):
    """(mean, std) as float32 arrays of one value per channel.

    Args:
      normalization: ``(mean, std)`` of images scaled to [0, 1] (a float or one
        float per channel each), or None for (0, 1): images are only divided by 255.
      channels: the model's input channels.
    """
    mean, std = normalization if normalization is not None else (0.0, 1.0)
    arrays = []
    for name, value in (("mean", mean), ("std", std)):
        value = np.asarray(value, dtype=np.float32).reshape(-1)
        if value.size == 1:
            value = np.repeat(value, channels)
        if value.size != channels:
            raise ValueError(f"normalization {name} has {value.size} values for {channels} "
                             "input channels")
        arrays.append(value)
    if np.any(arrays[1] <= 0):
        raise ValueError(f"normalization std must be positive, got {arrays[1].tolist()}")
    return tuple(arrays)


def _serving_module(folded, mean, std):
    """A trackable object holding `folded` with the raw-image serving functions."""
    import tensorflow as tf

    scale = tf.constant(1.0 / (255.0 * std), tf.float32)
    shift = tf.constant(mean / std, tf.float32)

    class Serving(tf.__internal__.tracking.AutoTrackable):
        # The Keras variables themselves are listed (each is saved once, shared with
        # `model`); listing their underlying tf.Variables would save every kernel twice.
        def __init__(self):
            self.model = folded
            self.variables = list(folded.weights)

        @tf.function
        def serve(self, images):
            """Raw images in [0, 255] (uint8 or float) -> {"logits", "probabilities"}."""
            inputs = tf.cast(images, tf.float32) * scale - shift
            logits = tf.cast(self.model(inputs, training=False), tf.float32)
            return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

        @tf.function
        def __call__(self, images):
            return self.serve(images)

    return Serving()


def export_saved_model(model, path, normalization=None):
    """Writes the folded model (see ``fold_masks``) as a SavedModel serving raw images.

    Args:
      model: a functional or Sequential model with masked layers.
      path: the SavedModel folder; an existing one is replaced only once the new
        one is complete.
      normalization: the ``(mean, std)`` the model was trained with (images
        scaled to [0, 1], per channel; the run's ``results.json`` records it);
        None: the model takes images / 255.

    Returns:
      `path`.

    Raises:
      RuntimeError: TensorFlow is not installed (JAX-only machines).
    """
    try:
        import tensorflow as tf
    except ImportError:
        raise RuntimeError("SavedModel export needs TensorFlow; install it, or write the compact "
                           "format instead") from None
    shape = tuple(model.input_shape[1:])
    mean, std = normalization_arrays(normalization, shape[-1])
    serving = _serving_module(fold_masks(model), mean, std)
    signatures = {}
    for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8)):
        spec = tf.TensorSpec((None,) + shape, dtype, name="images")
        signatures[name] = serving.serve.get_concrete_function(spec)
        serving.__call__.get_concrete_function(spec)
    with atomic_path(path, directory=True) as temp:
        tf.saved_model.save(serving, temp, signatures=signatures)
    return path

