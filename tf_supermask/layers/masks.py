"""Mask modes, registered by name.

A mask mode decides which variables a masked layer owns besides its frozen
kernel, and how the binary mask is computed from them. ``k`` is always the
fraction of weights **kept** (weights remaining), never the fraction pruned.

Straight-through estimators: the forward pass uses the binary mask, the
backward pass treats it as a smooth function of the scores.
"""

import keras
from keras import ops

from tf_supermask.backend import bitcast_to_int32, histogram
from tf_supermask.registry import Registry

MASK_MODES = Registry("mask mode")


# Measured on a 2-core CPU (TensorFlow): top_k wins below ~8k entries; radix
# select with 11-bit digits up to ~2M entries, with 16-bit digits beyond.
SMALL_LAYER = 8192
WIDE_DIGITS_FROM = 1 << 21


def check_k(k, name="k"):
    """Returns k as a float; raises a ValueError unless 0 < k <= 1."""
    if not 0.0 < float(k) <= 1.0:
        raise ValueError(f"{name} is the fraction of weights kept and must be in (0, 1], got {k}")
    return float(k)


def kept_count(k, size):
    """Number of weights a top-k layer keeps: round(k * size), at least 1."""
    return max(1, int(round(float(k) * int(size))))


def _kth_largest_bits(bits, kept, digit_bits):
    """Bit pattern of the `kept`-th largest entry of non-negative float bits, exactly.

    A radix select: each pass histograms one `digit_bits`-wide digit (most
    significant first) of the entries that share the digits fixed so far. It
    replaces a sort: top_k over millions of scores costs about a second on a
    CPU, this costs a few linear passes.

    Returns:
      (threshold bits, how many entries equal to the threshold to keep).
    """
    prefix = ops.convert_to_tensor(0, "int32")
    remaining = ops.convert_to_tensor(kept, "int32")
    high = 31  # bit 31 (the sign) is zero for non-negative floats
    while high > 0:
        shift = max(0, high - digit_bits)
        width = high - shift
        digit = ops.bitwise_and(ops.right_shift(bits, shift), (1 << width) - 1)
        weights = None
        if high < 31:  # only entries whose higher digits are already fixed
            weights = ops.cast(ops.equal(ops.right_shift(bits, high),
                                         ops.right_shift(prefix, high)), "int32")
        counts = histogram(digit, 1 << width, weights)
        at_or_above = ops.flip(ops.cumsum(ops.flip(counts)))
        chosen = ops.sum(ops.cast(at_or_above >= remaining, "int32")) - 1
        remaining = remaining - (at_or_above[chosen] - counts[chosen])
        prefix = ops.bitwise_or(prefix, ops.left_shift(chosen, shift))
        high = shift
    return prefix, remaining


def topk_binary_mask(magnitudes, k):
    """Float 0/1 tensor of `magnitudes`' shape keeping exactly round(k * n) largest entries.

    Ties at the threshold are broken by position (earliest kept).
    """
    flat = ops.reshape(ops.cast(magnitudes, "float32"), (-1,))
    size = int(flat.shape[0])
    kept = kept_count(k, size)
    if kept >= size:
        return ops.ones_like(magnitudes)
    if size <= SMALL_LAYER:
        _, indices = ops.top_k(ops.abs(flat), kept, sorted=True)
        mask = ops.scatter(ops.expand_dims(indices, 1), ops.ones((kept,), flat.dtype), (size,))
        return ops.reshape(ops.cast(mask, magnitudes.dtype), ops.shape(magnitudes))
    bits = bitcast_to_int32(ops.abs(flat))
    digit_bits = 16 if size >= WIDE_DIGITS_FROM else 11
    threshold, ties_kept = _kth_largest_bits(bits, kept, digit_bits)
    above = ops.greater(bits, threshold)
    at = ops.equal(bits, threshold)

    def break_ties():
        rank = ops.cumsum(ops.cast(at, "int32"))
        return ops.logical_or(above, ops.logical_and(at, rank <= ties_kept))

    keep = ops.cond(ops.sum(ops.cast(at, "int32")) == ties_kept,
                    lambda: ops.logical_or(above, at), break_ties)
    return ops.reshape(ops.cast(keep, magnitudes.dtype), ops.shape(magnitudes))


class MaskMode:
    """Base class: the behaviour a masked layer delegates to its mode.

    Attributes:
      learns_scores: whether the layer owns trainable scores.
      default_train_weights: whether the kernel trains unless told otherwise.
    """

    learns_scores = False
    default_train_weights = False

    def build(self, layer, shape):
        """Creates the mode's variables on `layer` for a kernel of `shape`."""

    def mask(self, layer, training):
        """The mask multiplied into the kernel (None: no mask). Carries gradients."""
        return None

    def binary_mask(self, layer):
        """The 0/1 mask used at evaluation, without gradient (None: all ones)."""
        return None

    def set_mask(self, layer, mask):
        raise ValueError(f"mask mode {layer.mask_mode!r} does not accept a given mask; "
                         "use mask='fixed'")


@MASK_MODES.register("dense")
class DenseMode(MaskMode):
    """No mask: the dense baseline; weights train."""

    default_train_weights = True


class ScoreMode(MaskMode):
    """Modes that learn one score per weight over frozen weights."""

    learns_scores = True

    def build(self, layer, shape):
        layer.scores = layer.add_weight(name="scores", shape=shape,
                                        initializer=layer.score_initializer,
                                        trainable=layer.train_scores)


@MASK_MODES.register("bernoulli")
class BernoulliMode(ScoreMode):
    """Zhou et al.: mask ~ Bernoulli(sigmoid(score)) while training.

    At evaluation the mask is sigmoid(score) > 0.5 unless the layer samples
    (``eval_sample=True``). The gradient flows through sigmoid(score).
    """

    def mask(self, layer, training):
        probs = ops.sigmoid(layer.scores)
        if training or layer.eval_sample:
            noise = keras.random.uniform(ops.shape(probs), seed=layer.seed_generator)
            sample = ops.cast(noise < probs, probs.dtype)
            return probs + ops.stop_gradient(sample - probs)
        return ops.stop_gradient(ops.cast(layer.scores > 0, probs.dtype))

    def binary_mask(self, layer):
        return ops.cast(layer.scores > 0, layer.scores.dtype)

    def set_mask(self, layer, mask):
        # Positive scores where kept, negative where pruned, magnitudes kept.
        mask = ops.cast(ops.convert_to_tensor(mask), layer.scores.dtype)
        magnitude = ops.abs(layer.scores) + 1e-3
        layer.scores.assign(ops.where(mask > 0.5, magnitude, -magnitude))


@MASK_MODES.register("topk")
class TopKMode(ScoreMode):
    """Edge-popup: keep the fraction k of weights with the largest |score| in each layer.

    The gradient passes straight through to |score|.
    """

    def mask(self, layer, training):
        magnitude = ops.abs(layer.scores)
        binary = ops.stop_gradient(topk_binary_mask(magnitude, layer.k))
        if not training:
            return binary
        return binary + magnitude - ops.stop_gradient(magnitude)

    def binary_mask(self, layer):
        return topk_binary_mask(ops.abs(layer.scores), layer.k)

    def set_mask(self, layer, mask):
        # Lift the kept scores above every pruned one; the count must match k.
        mask = ops.cast(ops.convert_to_tensor(mask) != 0, layer.scores.dtype)
        expected = kept_count(layer.k, int(ops.size(mask)))
        if int(ops.sum(mask)) != expected:
            raise ValueError(f"a topk layer with k={layer.k} keeps {expected} weights of "
                             f"{layer.kernel_variable.path}; the given mask keeps {int(ops.sum(mask))}")
        magnitude = ops.abs(layer.scores)
        layer.scores.assign(magnitude + mask * (ops.max(magnitude) + 1.0))


@MASK_MODES.register("fixed")
class FixedMode(MaskMode):
    """A given binary mask (non-trainable) over trainable or frozen weights."""

    default_train_weights = True

    def build(self, layer, shape):
        layer.mask_variable = layer.add_weight(name="mask", shape=shape, initializer="ones",
                                               trainable=False)

    def mask(self, layer, training):
        return layer.mask_variable

    def binary_mask(self, layer):
        return ops.convert_to_tensor(layer.mask_variable)

    def set_mask(self, layer, mask):
        mask = ops.convert_to_tensor(mask)
        if tuple(mask.shape) != tuple(layer.mask_variable.shape):
            raise ValueError(f"mask for {layer.kernel_variable.path} has shape {tuple(mask.shape)}, "
                             f"expected {tuple(layer.mask_variable.shape)}")
        layer.mask_variable.assign(ops.cast(ops.cast(mask, "float32") != 0,
                                            layer.mask_variable.dtype))
