"""Masked Dense and Conv2D layers: effective kernel = weight * mask.

The stored kernel is frozen unless ``train_weights`` says otherwise; the mask
mode (see ``masks.py``) owns the scores or the fixed mask. Like Keras's LoRA
Dense, the ``kernel`` property returns the effective (evaluation) kernel.
"""

import math

import keras
from keras import ops

from tf_supermask.backend import read
from tf_supermask.layers.initializers import get_initializer
from tf_supermask.counting import check_rule
from tf_supermask.layers.masks import MASK_MODES, TOPK_COUNT_RULE, check_k


class MaskedLayer(keras.layers.Layer):
    """Shared machinery of masked layers; subclasses define the kernel shape and op.

    Args:
      mask: registered mask mode: "dense", "bernoulli", "topk" or "fixed".
      k: fraction of weights kept by "topk", in (0, 1].
      count_rule: how "topk" turns k into a count (``tf_supermask.counting``);
        default edge-popup's: ``n - int((1 - k) * n)`` kept, at least 1.
      kernel_initializer: registered initializer name or Keras initializer.
      score_initializer: initializer of the scores ("bernoulli"/"topk").
      bias_initializer: initializer of the bias.
      use_bias: whether the layer has a bias.
      train_weights: whether the kernel trains (default: per mode, True for
        "dense"/"fixed", False for the supermask modes).
      train_bias: whether the bias trains (default: same as train_weights).
      train_scores: whether the scores train.
      rescale: dynamic weight rescaling: multiply the kernel by #weights / #kept.
      eval_sample: "bernoulli" only: sample the mask at evaluation instead of
        thresholding sigmoid(score) at 0.5.
      seed: seed of the layer's mask sampling.
      pruned_values: "fixed" only: pruned entries take the values of a frozen
        ``pruned_values`` variable instead of zero (Zhou et al.'s "pruned weights
        frozen at their initial value"); set it with ``set_pruned_values``.
      activation: activation applied to the output.
    """

    def __init__(self, mask="dense", k=0.5, kernel_initializer="glorot_uniform",
                 score_initializer="kaiming_uniform", bias_initializer="zeros", use_bias=True,
                 train_weights=None, train_bias=None, train_scores=True, rescale=False,
                 eval_sample=False, seed=None, pruned_values=False, activation=None,
                 count_rule=TOPK_COUNT_RULE, **kwargs):
        super().__init__(**kwargs)
        self._mode = MASK_MODES.get(mask)()
        self.mask_mode = mask
        self.k = check_k(k)
        self.count_rule = check_rule(count_rule)
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.score_initializer = get_initializer(score_initializer)
        self.bias_initializer = get_initializer(bias_initializer)
        self.use_bias = use_bias
        self.train_weights = self._mode.default_train_weights if train_weights is None else train_weights
        self.train_bias = self.train_weights if train_bias is None else train_bias
        self.train_scores = train_scores
        self.rescale = rescale
        self.eval_sample = eval_sample
        self.seed = seed
        if pruned_values and mask != "fixed":
            raise ValueError(f"pruned_values needs the fixed mask mode, not {mask!r}")
        self.pruned_values = pruned_values
        self.activation = keras.activations.get(activation)
        self.seed_generator = keras.random.SeedGenerator(seed)

    @classmethod
    def from_config(cls, config):
        # Layers saved before count rules had names kept round(k n) top-k weights.
        return super().from_config({"count_rule": "nearest", **config})

    # Subclasses: kernel shape from the input shape, bias size, and the op.
    def kernel_shape(self, input_shape):
        raise NotImplementedError

    def apply_kernel(self, inputs, kernel):
        raise NotImplementedError

    def output_channels(self):
        raise NotImplementedError

    def build(self, input_shape):
        shape = self.kernel_shape(input_shape)
        self.kernel_variable = self.add_weight(name="kernel", shape=shape,
                                               initializer=self.kernel_initializer,
                                               trainable=self.train_weights)
        self._mode.build(self, shape)
        self.pruned_values_variable = None
        if self.pruned_values:
            self.pruned_values_variable = self.add_weight(name="pruned_values", shape=shape,
                                                          initializer="zeros", trainable=False)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.output_channels(),),
                                        initializer=self.bias_initializer,
                                        trainable=self.train_bias)

    def effective_kernel(self, training=False):
        """weight * mask (rescaled if asked), with the mode's straight-through gradient."""
        kernel = read(self.kernel_variable)
        if self.pruned_values_variable is None and not self.rescale:
            masked = self._mode.masked_kernel(self, kernel, training)
            if masked is not None:
                return masked
        mask = self._mode.mask(self, training)
        if mask is None:
            return kernel
        mask = ops.cast(mask, kernel.dtype)  # masks stay float32 under mixed precision
        kernel = kernel * mask
        if self.pruned_values_variable is not None:
            kernel = kernel + self.pruned_values_variable * (1.0 - mask)
        if self.rescale:
            kept = ops.maximum(ops.sum(ops.stop_gradient(mask)), 1.0)
            kernel = kernel * (float(math.prod(self.kernel_variable.shape)) / kept)
        return kernel

    @property
    def kernel(self):
        """The effective kernel at evaluation."""
        return self.effective_kernel(training=False)

    def call(self, inputs, training=False):
        outputs = self.apply_kernel(inputs, self.effective_kernel(training=bool(training)))
        if self.bias is not None:
            outputs = outputs + self.bias
        return self.activation(outputs)

    # Mask access -------------------------------------------------------------
    @property
    def is_masked(self):
        return self.mask_mode != "dense"

    def get_mask(self):
        """The binary (0/1) evaluation mask as a tensor of the kernel's shape."""
        mask = self._mode.binary_mask(self)
        return ops.ones(self.kernel_variable.shape) if mask is None else mask

    def set_mask(self, mask):
        """Sets the binary mask ("fixed"; score modes set scores that reproduce it)."""
        self._mode.set_mask(self, mask)

    def set_pruned_values(self, values):
        """Values that pruned entries take ("fixed" mode built with pruned_values)."""
        if self.pruned_values_variable is None:
            raise ValueError(f"{self.name} was built without pruned_values")
        self.pruned_values_variable.assign(ops.cast(values, self.pruned_values_variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({
            "mask": self.mask_mode, "k": self.k, "count_rule": self.count_rule,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "score_initializer": keras.initializers.serialize(self.score_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "use_bias": self.use_bias, "train_weights": self.train_weights,
            "train_bias": self.train_bias, "train_scores": self.train_scores,
            "rescale": self.rescale, "eval_sample": self.eval_sample, "seed": self.seed,
            "pruned_values": self.pruned_values,
            "activation": keras.activations.serialize(self.activation),
        })
        return config


@keras.saving.register_keras_serializable(package="tf_supermask")
class MaskedDense(MaskedLayer):
    """Dense layer with a masked kernel of shape (input_dim, units)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def kernel_shape(self, input_shape):
        return (int(input_shape[-1]), self.units)

    def output_channels(self):
        return self.units

    def apply_kernel(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tf_supermask")
class MaskedConv2D(MaskedLayer):
    """2-D convolution (channels last) with a masked kernel of shape (kh, kw, in, out)."""

    def __init__(self, filters, kernel_size=3, strides=1, padding="same", groups=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size)
        self.strides = _pair(strides)
        self.padding = padding
        self.groups = int(groups)
        if self.filters % self.groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups})")

    def kernel_shape(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"input channels ({channels}) must be divisible by groups ({self.groups})")
        return self.kernel_size + (channels // self.groups, self.filters)

    def output_channels(self):
        return self.filters

    def apply_kernel(self, inputs, kernel):
        if self.groups > 1 and self.groups == self.filters and kernel.shape[2] == 1:
            # Depthwise: (kh, kw, 1, C) -> (kh, kw, C, 1).
            return ops.depthwise_conv(inputs, ops.transpose(kernel, (0, 1, 3, 2)),
                                      strides=self.strides, padding=self.padding)
        return ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides,
                                   padding=self.padding).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "groups": self.groups}


def _pair(value):
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def nonaffine_batchnorm(**kwargs):
    """BatchNorm without learned scale or shift (edge-popup's supermask nets)."""
    return keras.layers.BatchNormalization(center=False, scale=False, **kwargs)


def masked_layers(model):
    """All masked layers of a model (recursing into nested models), in order."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, MaskedLayer)]


def get_masks(model):
    """{kernel variable path: binary mask as numpy array} for every masked layer."""
    return {layer.kernel_variable.path: keras.ops.convert_to_numpy(layer.get_mask())
            for layer in masked_layers(model) if layer.is_masked}


def set_masks(model, masks):
    """Sets masks by kernel variable path; unknown paths raise a ValueError."""
    layers = {layer.kernel_variable.path: layer for layer in masked_layers(model)}
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ValueError(f"no masked layer has kernel path(s) {unknown}; known: {sorted(layers)}")
    for path, mask in masks.items():
        layers[path].set_mask(mask)


def weights_remaining(model):
    """(overall fraction kept, {kernel path: fraction kept}) over masked kernels."""
    per_layer, kept_total, size_total = {}, 0.0, 0
    for layer in masked_layers(model):
        mask = keras.ops.convert_to_numpy(layer.get_mask())
        per_layer[layer.kernel_variable.path] = float(mask.mean())
        kept_total += float(mask.sum())
        size_total += mask.size
    return (kept_total / size_total if size_total else 1.0), per_layer
