"""Folded SavedModels of masked networks.

``export_saved_model(model, path)`` replaces every masked layer by a plain
Keras ``Dense`` / ``Conv2D`` / ``DepthwiseConv2D`` whose kernel is the
layer's evaluation kernel (weight * mask, times #weights / #kept when the
layer rescales), copies every other layer with its weights, and writes a
SavedModel with a ``serve`` endpoint (and the ``serving_default``
signature). It holds no scores and no mask variables: pruned weights are
zeros in the kernels. It takes the same (normalised) inputs as the model.
The folder is written under a temporary name and renamed into place.
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


def export_saved_model(model, path):
    """Writes the folded model (see ``fold_masks``) as a SavedModel to the folder `path`.

    The SavedModel has a ``serve`` endpoint and a ``serving_default`` signature
    taking a batch of inputs shaped like the model's and returning its logits.
    An existing folder is replaced only once the new one is complete.

    Raises:
      RuntimeError: TensorFlow is not installed (JAX-only machines).
    """
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise RuntimeError("SavedModel export needs TensorFlow; install it, or write the compact "
                           "format instead") from None
    folded = fold_masks(model)
    with atomic_path(path, directory=True) as temp:
        folded.export(temp, format="tf_saved_model", verbose=False)
    return path

