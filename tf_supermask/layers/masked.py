"""Masked Dense and Conv2D layers: effective kernel = weight * mask.

The stored kernel is frozen unless ``train_weights`` says otherwise; the mask
mode (see ``masks.py``) owns the scores or the fixed mask. Like Keras's LoRA
Dense, the ``kernel`` property returns the effective (evaluation) kernel.
"""

import math

import keras
from keras import ops

from tf_supermask import choices
from tf_supermask.backend import read
from tf_supermask.layers.initializers import (DEFAULT_KERNEL_INIT, SCORE_SEED_OFFSET,
                                              default_score_init, get_initializer)
from tf_supermask.counting import check_rule
from tf_supermask.layers.masks import MASK_MODES, TOPK_COUNT_RULE, check_k


class MaskedLayer(keras.layers.Layer):
    """Shared machinery of masked layers; subclasses define the kernel shape and op.

    Args:
      mask: registered mask mode: "dense", "bernoulli", "topk" or "fixed".
      k: fraction of weights kept by "topk", in (0, 1].
      count_rule: how "topk" turns k into a count (``tf_supermask.counting``);
        default edge-popup's: ``n - int((1 - k) * n)`` kept, at least 1.
      kernel_initializer: registered initializer name or Keras initializer; None:
        the recipes' kaiming_normal, seeded with `seed`.
      score_initializer: initializer of the scores ("bernoulli"/"topk"); None: the
        mode's recipe (``initializers.DEFAULT_SCORE_INIT``), seeded with seed + 500.
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
      topk_method: "topk" only: the exact select that picks the kept weights, one of
        ``tf_supermask.choices.TOPK_METHOD_CHOICES``; "auto" (default) picks by
        backend, device and size. All keep the same weights.
    """

    def __init__(self, mask="dense", k=0.5, kernel_initializer=None,
                 score_initializer=None, bias_initializer="zeros", use_bias=True,
                 train_weights=None, train_bias=None, train_scores=True, rescale=False,
                 eval_sample=False, seed=None, pruned_values=False, activation=None,
                 count_rule=TOPK_COUNT_RULE, topk_method="auto", **kwargs):
        super().__init__(**kwargs)
        self._mode = MASK_MODES.get(mask)()
        self.mask_mode = mask
        self.k = check_k(k)
        self.count_rule = check_rule(count_rule)
        if topk_method not in choices.TOPK_METHOD_CHOICES:
            raise ValueError(f"topk_method must be one of {', '.join(choices.TOPK_METHOD_CHOICES)}, "
                             f"got {topk_method!r}")
        self.topk_method = topk_method
        # Unset initializers are the recipes' (MaskOptions' defaults, seeded as a
        # registered model's layer: the kernel from `seed`, the scores from seed + 500).
        self.kernel_initializer = get_initializer(
            DEFAULT_KERNEL_INIT if kernel_initializer is None else kernel_initializer, seed=seed)
        self.score_initializer = get_initializer(
            default_score_init(mask) if score_initializer is None else score_initializer,
            seed=None if seed is None else int(seed) + SCORE_SEED_OFFSET)
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
        # Layers saved before count rules had names kept round(k n) top-k weights; layers
        # saved before topk_method was recorded used the "auto" select.
        return super().from_config({"count_rule": "nearest", "topk_method": "auto", **config})

    # "conv" or "dense": the kind a per-kind rate applies to (lottery --prune_rate_conv).
    kind = "dense"

    # Subclasses: kernel shape from the input shape, bias size, and the op.
    def kernel_shape(self, input_shape):
        raise NotImplementedError

    def apply_kernel(self, inputs, kernel):
        raise NotImplementedError

    def output_channels(self):
        raise NotImplementedError

    def bias_shape(self):
        """Shape of the bias (one per output channel unless a kind says otherwise)."""
        return (self.output_channels(),)

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
            self.bias = self.add_weight(name="bias", shape=self.bias_shape(),
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

    def evaluation_kernel(self):
        """The kernel the layer computes with at evaluation, as a float32 NumPy array: what
        folding (``strip``, export) puts in a plain layer.

        weight * mask (times #weights / #kept if the layer rescales; frozen pruned values
        included). A Bernoulli layer that samples at evaluation is thresholded
        (scores > 0) instead.
        """
        import numpy as np

        if self.is_masked and self.eval_sample and self.mask_mode == "bernoulli":
            mask = self.get_mask()
            kernel = self.kernel_variable * mask
            if self.rescale:
                kept = ops.maximum(ops.sum(mask), 1.0)
                kernel = kernel * (float(math.prod(mask.shape)) / kept)
        else:
            kernel = self.effective_kernel(training=False)
        return np.asarray(ops.convert_to_numpy(kernel), dtype=np.float32)

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
            "topk_method": self.topk_method,
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
    """Densely-connected layer whose kernel is multiplied by a binary mask.

    ``MaskedDense`` computes ``output = activation(dot(input, W_eff) + bias)``, as
    ``keras.layers.Dense`` does, with the effective kernel ``W_eff = W * m``: the
    stored kernel ``W`` (shape ``(input_dim, units)``) times a 0/1 mask ``m`` of
    the same shape, chosen by the mask mode:

    - ``"dense"``: no mask, ``W_eff = W``; the kernel trains (the dense baseline).
    - ``"bernoulli"`` (Zhou et al., supermasks): one trainable score ``s`` per
      weight; while training, ``m ~ Bernoulli(sigmoid(s))``, drawn afresh at each
      call from the layer's seed generator, with the straight-through gradient
      ``dL/ds = dL/dW_eff * W * sigmoid'(s)`` (the sample is treated as
      ``sigmoid(s)`` backwards). At evaluation ``m = [s > 0]`` (that is,
      ``sigmoid(s) > 0.5``), or a sample when ``eval_sample=True``.
    - ``"topk"`` (Ramanujan et al., edge-popup): one trainable score ``s`` per
      weight; ``m`` keeps the ``k``-fraction of the layer's weights with the
      largest ``|s|`` (by default ``n - int((1 - k) * n)`` of the ``n`` weights,
      at least 1; see ``count_rule``), in training and at evaluation alike, with
      the straight-through gradient ``dL/ds = dL/dW_eff * W * sign(s)``.
    - ``"fixed"``: a given 0/1 mask (all ones until ``set_mask`` is called),
      not trainable; the kernel trains through it (``dL/dW = dL/dW_eff * m``).
      With ``pruned_values=True``, ``W_eff = W * m + P * (1 - m)`` for frozen
      values ``P`` set with ``set_pruned_values``.

    With ``rescale=True`` the masked kernel is multiplied by
    ``n / max(sum(m), 1)`` (dynamic weight rescaling). In the score modes the
    kernel is frozen by default and only the scores learn. ``layer.kernel`` is
    the effective kernel at evaluation; the stored weights are
    ``kernel_variable``, ``scores`` (score modes) and ``mask_variable``
    ("fixed").

    Args:
      units: positive integer, dimensionality of the output space.
      mask: mask mode, one of ``"dense"``, ``"bernoulli"``, ``"topk"``,
        ``"fixed"``. Defaults to ``"dense"``.
      k: fraction of weights kept by ``"topk"``, in (0, 1]. Defaults to 0.5.
      kernel_initializer: registered initializer name (e.g.
        ``"kaiming_normal"``, ``"signed_kaiming_constant"``) or a Keras
        initializer, for ``W``. Defaults to None: the recipes'
        ``"kaiming_normal"``, seeded with ``seed`` (as a registered model's layer).
      score_initializer: initializer of the scores (``"bernoulli"``,
        ``"topk"``). Defaults to None: the recipe of the mode, seeded with
        ``seed + 500``: ``"kaiming_uniform_a_sqrt5"`` (edge-popup's
        ``uniform(+-1/sqrt(fan_in))``) for topk, ``"uniform"`` for bernoulli.
      bias_initializer: initializer of the bias. Defaults to ``"zeros"``.
      use_bias: whether the layer has a bias. Defaults to True.
      train_weights: whether ``W`` trains. Defaults to None: True for
        ``"dense"`` and ``"fixed"``, False for ``"bernoulli"`` and ``"topk"``.
      train_bias: whether the bias trains. Defaults to None: as
        ``train_weights``.
      train_scores: whether the scores train. Defaults to True.
      rescale: multiply the masked kernel by ``n / #kept``. Defaults to False.
      eval_sample: ``"bernoulli"`` only: sample the mask at evaluation too,
        instead of ``s > 0``. Defaults to False.
      seed: integer seed of the layer's draws: the default kernel initializer
        (``seed``), the default score initializer (``seed + 500``) and the
        ``"bernoulli"`` samples.
        Defaults to None.
      pruned_values: ``"fixed"`` only: pruned entries take frozen values
        instead of zero (Zhou et al.'s "frozen at their initial value").
        Defaults to False.
      activation: activation function (name or callable). Defaults to None:
        no activation.
      count_rule: how ``"topk"`` turns ``k`` into a count, a rule of
        ``tf_supermask.counting``. Defaults to ``"hidden_networks"``:
        ``n - int((1 - k) * n)``, edge-popup's.
      topk_method: ``"topk"`` only: the exact select that picks the kept
        weights, one of ``tf_supermask.choices.TOPK_METHOD_CHOICES``; all keep
        the same weights. Defaults to ``"auto"``: chosen by backend, device and
        layer size.
      **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Input shape:
      N-D tensor with shape ``(batch_size, ..., input_dim)``; most often
      ``(batch_size, input_dim)``.

    Output shape:
      N-D tensor with shape ``(batch_size, ..., units)``.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from tf_supermask.layers import MaskedDense
    >>> layer = MaskedDense(10, mask="topk", k=0.5, seed=0)
    >>> y = layer(np.ones((2, 20), "float32"))
    >>> tuple(y.shape)
    (2, 10)
    >>> int(keras.ops.sum(layer.get_mask()))  # 200 - int(0.5 * 200) weights kept
    100
    >>> [weight.name for weight in layer.trainable_weights]  # the kernel is frozen
    ['scores']

    A fixed mask, and the same mask rescaled by 6 weights / 3 kept:

    >>> layer = MaskedDense(3, mask="fixed", kernel_initializer=keras.initializers.Ones())
    >>> layer.build((None, 2))
    >>> layer.set_mask([[1, 0, 1], [0, 1, 0]])
    >>> keras.ops.convert_to_numpy(layer(np.array([[1.0, 2.0]], "float32"))).tolist()
    [[1.0, 2.0, 1.0]]
    >>> layer = MaskedDense(3, mask="fixed", rescale=True,
    ...                     kernel_initializer=keras.initializers.Ones())
    >>> layer.build((None, 2))
    >>> layer.set_mask([[1, 0, 1], [0, 1, 0]])
    >>> keras.ops.convert_to_numpy(layer(np.array([[1.0, 2.0]], "float32"))).tolist()
    [[2.0, 4.0, 2.0]]
    """

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
    """2D convolution layer (channels last) whose kernel is multiplied by a binary mask.

    ``MaskedConv2D`` computes ``output = activation(conv2d(input, W_eff) + bias)``,
    as ``keras.layers.Conv2D`` does, with the effective kernel ``W_eff = W * m``:
    the stored kernel ``W`` of shape
    ``(kernel_rows, kernel_cols, input_channels // groups, filters)`` times a 0/1
    mask ``m`` of the same shape. The mask modes are those of ``MaskedDense``:

    - ``"dense"``: no mask, ``W_eff = W``; the kernel trains.
    - ``"bernoulli"``: ``m ~ Bernoulli(sigmoid(s))`` per weight while training,
      straight-through gradient ``dL/ds = dL/dW_eff * W * sigmoid'(s)``;
      ``m = [s > 0]`` at evaluation (unless ``eval_sample=True``).
    - ``"topk"`` (edge-popup): ``m`` keeps the ``k``-fraction of the layer's
      weights with the largest ``|s|`` (``n - int((1 - k) * n)`` of ``n`` by
      default), gradient ``dL/ds = dL/dW_eff * W * sign(s)``.
    - ``"fixed"``: a given 0/1 mask (``set_mask``; all ones until then), not
      trainable; optionally ``W_eff = W * m + P * (1 - m)``
      (``pruned_values``).

    With ``rescale=True`` the masked kernel is multiplied by
    ``n / max(sum(m), 1)``. The top-k fraction is taken over the whole kernel
    of the layer, not per filter.

    Args:
      filters: positive integer, the number of output channels.
      kernel_size: integer or pair of integers, the height and width of the
        window. Defaults to 3.
      strides: integer or pair of integers. Defaults to 1.
      padding: ``"same"`` or ``"valid"``. Defaults to ``"same"``.
      groups: positive integer dividing both ``filters`` and the input
        channels: a grouped convolution, depthwise when ``groups`` equals
        ``filters`` and the input channels. Defaults to 1.
      mask: mask mode, one of ``"dense"``, ``"bernoulli"``, ``"topk"``,
        ``"fixed"``. Defaults to ``"dense"``.
      k: fraction of weights kept by ``"topk"``, in (0, 1]. Defaults to 0.5.
      kernel_initializer: registered initializer name or Keras initializer.
        Defaults to None: the recipes'
        ``"kaiming_normal"``, seeded with ``seed`` (as a registered model's layer).
      score_initializer: initializer of the scores (``"bernoulli"``,
        ``"topk"``). Defaults to None: the recipe of the mode, seeded with
        ``seed + 500``: ``"kaiming_uniform_a_sqrt5"`` (edge-popup's
        ``uniform(+-1/sqrt(fan_in))``) for topk, ``"uniform"`` for bernoulli.
      bias_initializer: initializer of the bias. Defaults to ``"zeros"``.
      use_bias: whether the layer has a bias. Defaults to True.
      train_weights: whether ``W`` trains. Defaults to None: True for
        ``"dense"`` and ``"fixed"``, False for the score modes.
      train_bias: whether the bias trains. Defaults to None: as
        ``train_weights``.
      train_scores: whether the scores train. Defaults to True.
      rescale: multiply the masked kernel by ``n / #kept``. Defaults to False.
      eval_sample: ``"bernoulli"`` only: sample at evaluation too. Defaults to
        False.
      seed: integer seed of the default initializers (kernel ``seed``, scores
        ``seed + 500``) and of the mask sampling. Defaults to None.
      pruned_values: ``"fixed"`` only: pruned entries take frozen values
        instead of zero. Defaults to False.
      activation: activation function. Defaults to None.
      count_rule: ``tf_supermask.counting`` rule turning ``k`` into a count.
        Defaults to ``"hidden_networks"``.
      topk_method: ``"topk"`` only: the exact select that picks the kept
        weights, one of ``tf_supermask.choices.TOPK_METHOD_CHOICES``; all keep
        the same weights. Defaults to ``"auto"``: chosen by backend, device and
        layer size.
      **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Input shape:
      4D tensor with shape ``(batch_size, rows, cols, channels)``.

    Output shape:
      4D tensor with shape ``(batch_size, new_rows, new_cols, filters)``;
      ``rows`` and ``cols`` divided by the strides (rounded up) with ``"same"``
      padding.

    Example:

    >>> import numpy as np
    >>> from tf_supermask.layers import MaskedConv2D
    >>> layer = MaskedConv2D(8, kernel_size=3, strides=2, mask="bernoulli", seed=0)
    >>> y = layer(np.zeros((2, 16, 16, 3), "float32"))
    >>> tuple(y.shape)
    (2, 8, 8, 8)
    >>> tuple(layer.kernel_variable.shape), tuple(layer.scores.shape)
    ((3, 3, 3, 8), (3, 3, 3, 8))
    >>> layer = MaskedConv2D(4, kernel_size=3, padding="valid", mask="topk", k=0.25)
    >>> tuple(layer(np.zeros((1, 8, 8, 2), "float32")).shape)
    (1, 6, 6, 4)
    """

    kind = "conv"

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


def _walk(layer):
    """Sublayers depth first, each level in its own order (Keras's recursive
    ``_flatten_layers`` lists a nested model's layers last to first)."""
    for sublayer in layer._flatten_layers(include_self=False, recursive=False):
        yield sublayer
        yield from _walk(sublayer)


def masked_layers(model):
    """All masked layers of a model, in the model's order (nested models and the
    projections inside an attention layer included, each where it sits)."""
    return [layer for layer in _walk(model) if isinstance(layer, MaskedLayer)]


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
