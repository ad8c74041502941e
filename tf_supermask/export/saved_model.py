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

import keras
import numpy as np
from keras import ops

from tf_supermask.export.atomic import atomic_path
from tf_supermask.layers.masked import MaskedConv2D, MaskedDense

SAVED_MODEL_DIR = "saved_model"


def folded_kernel(layer):
    """A masked layer's evaluation kernel as a float32 NumPy array.

    weight * mask, times #weights / #kept if the layer rescales. For a Bernoulli
    layer that samples at evaluation the thresholded mask (scores > 0) is used.
    """
    if layer.is_masked and layer.eval_sample and layer.mask_mode == "bernoulli":
        mask = layer.get_mask()
        kernel = layer.kernel_variable * mask
        if layer.rescale:
            kept = ops.maximum(ops.sum(mask), 1.0)
            kernel = kernel * (float(np.prod(mask.shape)) / kept)
        return np.asarray(ops.convert_to_numpy(kernel), dtype=np.float32)
    return np.asarray(ops.convert_to_numpy(layer.effective_kernel(training=False)),
                      dtype=np.float32)


def _plain_layer(layer):
    """The unmasked Keras layer computing what `layer` computes at evaluation, and its weights."""
    kernel = folded_kernel(layer)
    common = dict(use_bias=layer.bias is not None, activation=layer.activation, name=layer.name,
                  dtype=layer.dtype_policy)
    if isinstance(layer, MaskedDense):
        plain = keras.layers.Dense(layer.units, **common)
    elif isinstance(layer, MaskedConv2D):
        if layer.groups > 1 and layer.groups == layer.filters and kernel.shape[2] == 1:
            plain = keras.layers.DepthwiseConv2D(layer.kernel_size, strides=layer.strides,
                                                 padding=layer.padding, depth_multiplier=1,
                                                 **common)
            kernel = np.transpose(kernel, (0, 1, 3, 2))
        else:
            plain = keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                        padding=layer.padding, groups=layer.groups, **common)
    else:
        raise TypeError(f"cannot fold masked layer {layer.name} of type {type(layer).__name__}")
    weights = [kernel]
    if layer.bias is not None:
        weights.append(ops.convert_to_numpy(layer.bias))
    return plain, weights


def fold_masks(model):
    """A copy of `model` with plain layers whose kernels have the masks folded in.

    Works for functional and Sequential models (nested ones included). The
    copy holds no scores or mask variables and gives the model's evaluation
    predictions.
    """
    pending = []

    def clone(layer):
        if isinstance(layer, (MaskedDense, MaskedConv2D)):
            new, weights = _plain_layer(layer)
        else:
            new = layer.__class__.from_config(layer.get_config())
            weights = layer.get_weights()
        pending.append((new, weights))
        return new

    try:
        folded = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except ValueError as error:
        raise ValueError(f"cannot fold the masks of model {model.name!r}: only functional and "
                         f"Sequential models can be folded ({error})") from None
    for layer, weights in pending:
        layer.set_weights(weights)
    return folded


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

