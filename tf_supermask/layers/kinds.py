"""Masked forms of the other Keras kernel layers: Conv1D, Conv3D, DepthwiseConv2D,
Conv2DTranspose and EinsumDense (the projections of MultiHeadAttention).

Each computes what its Keras layer computes, with the effective kernel
``W_eff = W * m`` of ``MaskedLayer`` (every mask mode, rescaling and pruned values
included). Channels last only. ``tf_supermask.models.sparsify`` turns a user's
model's layers into these; ``strip`` turns them back into the Keras layers.

Example:

>>> import numpy as np
>>> from tf_supermask.layers.kinds import MaskedConv1D, MaskedEinsumDense
>>> layer = MaskedConv1D(4, kernel_size=3, mask="topk", k=0.5, seed=0)
>>> tuple(layer(np.zeros((2, 10, 3), "float32")).shape)
(2, 10, 4)
>>> layer = MaskedEinsumDense("abc,cd->abd", output_shape=(None, 6), bias_axes="d",
...                           mask="fixed")
>>> tuple(layer(np.zeros((2, 5, 3), "float32")).shape), tuple(layer.bias.shape)
((2, 5, 6), (6,))
"""

import keras
from keras import ops

from tf_supermask.layers.masked import MaskedLayer


def _tuple(value, rank):
    return (int(value),) * rank if isinstance(value, int) else tuple(int(v) for v in value)


def _channels_last(data_format, kind):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"masked {kind} layers are channels_last only, got data_format="
                         f"{data_format!r}")


class MaskedConv(MaskedLayer):
    """An N-D convolution (``rank`` 1, 2 or 3) whose kernel is masked, as Keras's ConvND:
    ``output = activation(conv(input, W_eff) + bias)``, kernel
    ``kernel_size + (input_channels // groups, filters)``."""

    rank = None
    kind = "conv"

    def __init__(self, filters, kernel_size=3, strides=1, padding="same", dilation_rate=1,
                 groups=1, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _channels_last(data_format, "conv")
        self.filters = int(filters)
        self.kernel_size = _tuple(kernel_size, self.rank)
        self.strides = _tuple(strides, self.rank)
        self.dilation_rate = _tuple(dilation_rate, self.rank)
        self.padding = padding
        self.groups = int(groups)
        if self.filters % self.groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups})")

    def kernel_shape(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"input channels ({channels}) must be divisible by groups "
                             f"({self.groups})")
        return self.kernel_size + (channels // self.groups, self.filters)

    def output_channels(self):
        return self.filters

    def apply_kernel(self, inputs, kernel):
        padding = self.padding
        if padding == "causal":  # Conv1D's: pad the past, then a valid convolution
            left = self.dilation_rate[0] * (self.kernel_size[0] - 1)
            inputs = ops.pad(inputs, [[0, 0], [left, 0], [0, 0]])
            padding = "valid"
        return ops.conv(inputs, kernel, strides=self.strides, padding=padding,
                        dilation_rate=self.dilation_rate)

    def _keras_layer(self):
        return getattr(keras.layers, f"Conv{self.rank}D")(
            self.filters, self.kernel_size, strides=self.strides, padding=self.padding,
            dilation_rate=self.dilation_rate, groups=self.groups)

    def compute_output_shape(self, input_shape):
        return self._keras_layer().compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate,
                "groups": self.groups}


@keras.saving.register_keras_serializable(package="tf_supermask")
class MaskedConv1D(MaskedConv):
    """``keras.layers.Conv1D`` with a masked kernel ``(width, in // groups, filters)``;
    arguments as ``MaskedConv2D`` plus ``dilation_rate``. Input ``(batch, steps,
    channels)``, output ``(batch, new_steps, filters)``."""

    rank = 1


@keras.saving.register_keras_serializable(package="tf_supermask")
class MaskedConv3D(MaskedConv):
    """``keras.layers.Conv3D`` with a masked kernel ``(d, h, w, in // groups, filters)``;
    arguments as ``MaskedConv2D`` plus ``dilation_rate``. Input ``(batch, d, h, w,
    channels)``, output ``(batch, new_d, new_h, new_w, filters)``."""

    rank = 3


@keras.saving.register_keras_serializable(package="tf_supermask")
class MaskedDepthwiseConv2D(MaskedLayer):
    """``keras.layers.DepthwiseConv2D`` with a masked kernel
    ``(kernel_rows, kernel_cols, channels, depth_multiplier)``:
    ``output = activation(depthwise_conv(input, W_eff) + bias)``, ``channels x
    depth_multiplier`` output channels."""

    kind = "conv"

    def __init__(self, kernel_size=3, strides=1, padding="same", depth_multiplier=1,
                 dilation_rate=1, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _channels_last(data_format, "depthwise conv")
        self.kernel_size = _tuple(kernel_size, 2)
        self.strides = _tuple(strides, 2)
        self.dilation_rate = _tuple(dilation_rate, 2)
        self.padding = padding
        self.depth_multiplier = int(depth_multiplier)
        self._channels = None

    def kernel_shape(self, input_shape):
        self._channels = int(input_shape[-1])
        return self.kernel_size + (self._channels, self.depth_multiplier)

    def output_channels(self):
        return self._channels * self.depth_multiplier

    def apply_kernel(self, inputs, kernel):
        return ops.depthwise_conv(inputs, kernel, strides=self.strides, padding=self.padding,
                                  dilation_rate=self.dilation_rate)

    def compute_output_shape(self, input_shape):
        return keras.layers.DepthwiseConv2D(
            self.kernel_size, strides=self.strides, padding=self.padding,
            depth_multiplier=self.depth_multiplier,
            dilation_rate=self.dilation_rate).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding,
                "depth_multiplier": self.depth_multiplier, "dilation_rate": self.dilation_rate}


@keras.saving.register_keras_serializable(package="tf_supermask")
class MaskedConv2DTranspose(MaskedLayer):
    """``keras.layers.Conv2DTranspose`` with a masked kernel
    ``(kernel_rows, kernel_cols, filters, input_channels)``."""

    kind = "conv"

    def __init__(self, filters, kernel_size=3, strides=1, padding="same", output_padding=None,
                 dilation_rate=1, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _channels_last(data_format, "transposed conv")
        self.filters = int(filters)
        self.kernel_size = _tuple(kernel_size, 2)
        self.strides = _tuple(strides, 2)
        self.dilation_rate = _tuple(dilation_rate, 2)
        self.padding = padding
        self.output_padding = None if output_padding is None else _tuple(output_padding, 2)

    def kernel_shape(self, input_shape):
        return self.kernel_size + (self.filters, int(input_shape[-1]))

    def output_channels(self):
        return self.filters

    def apply_kernel(self, inputs, kernel):
        return ops.conv_transpose(inputs, kernel, strides=self.strides, padding=self.padding,
                                  output_padding=self.output_padding,
                                  dilation_rate=self.dilation_rate)

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv2DTranspose(
            self.filters, self.kernel_size, strides=self.strides, padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "output_padding": self.output_padding,
                "dilation_rate": self.dilation_rate}


@keras.saving.register_keras_serializable(package="tf_supermask")
class MaskedEinsumDense(MaskedLayer):
    """``keras.layers.EinsumDense`` with a masked kernel: ``output = activation(
    einsum(equation, input, W_eff) + bias)``; the kernel and bias shapes follow from
    the equation, ``output_shape`` and ``bias_axes`` as in Keras."""

    def __init__(self, equation, output_shape, bias_axes=None, **kwargs):
        kwargs.setdefault("use_bias", bias_axes is not None)
        super().__init__(**kwargs)
        self.equation = equation
        self.partial_output_shape = ((output_shape,) if isinstance(output_shape, int)
                                     else tuple(output_shape))
        self.bias_axes = bias_axes
        self._bias_shape = None
        self._full_output_shape = None

    def kernel_shape(self, input_shape):
        from keras.src.layers.core.einsum_dense import _analyze_einsum_string

        kernel, bias, full_output = _analyze_einsum_string(
            self.equation, self.bias_axes, tuple(input_shape), self.partial_output_shape)[:3]
        self._bias_shape = None if bias is None else tuple(bias)
        self._full_output_shape = tuple(full_output)
        return tuple(kernel)

    def bias_shape(self):
        return self._bias_shape

    def build(self, input_shape):
        self.kernel_shape(input_shape)
        if self._bias_shape is None:
            self.use_bias = False
        super().build(input_shape)

    def output_channels(self):
        return self._full_output_shape[-1]

    def apply_kernel(self, inputs, kernel):
        return ops.einsum(self.equation, inputs, kernel)

    def compute_output_shape(self, input_shape):
        return keras.layers.EinsumDense(self.equation, self.partial_output_shape,
                                        bias_axes=self.bias_axes).compute_output_shape(
                                            input_shape)

    def get_config(self):
        return {**super().get_config(), "equation": self.equation,
                "output_shape": self.partial_output_shape, "bias_axes": self.bias_axes}
