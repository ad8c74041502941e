"""Mask modes, registered by name.

A mask mode decides which variables a masked layer owns besides its frozen
kernel, and how the binary mask is computed from them. ``k`` is always the
fraction of weights **kept** (weights remaining), never the fraction pruned.

Straight-through estimators: the forward pass uses the binary mask, the
backward pass treats it as a smooth function of the scores.
"""

import functools
import math

import keras
from keras import ops

from tf_supermask.backend import (bitcast_to_int32, compact, compiled, histogram, platform, read,
                                  supports_dynamic_shapes)
from tf_supermask import choices
from tf_supermask.counting import check_k, kept_count  # noqa: F401 (check_k re-exported)
from tf_supermask.layers import fused
from tf_supermask.registry import Registry

MASK_MODES = Registry("mask mode", names=choices.MASK_MODES)


# Which exact top-k select runs, per (backend, platform) and layer size, unless a
# layer's topk_method (--topk_method; tf-supermask-bench compares them) names one. All
# give the same mask. Measured on a 2-core CPU (runs/results/bench_cpu.md):
# TensorFlow: top_k (a partial sort) below ~8k entries, the bucket select above
# (data-dependent shapes, so not under XLA); JAX: sort below ~2k, the histogram
# radix select above (XLA's CPU sort took 0.5 s for 235k entries, the counting
# passes 2x the radix select). On a GPU the radix select's histograms are
# scatter-adds, slow there; the counting passes are a compare and a sum, which
# fuse. The GPU rows are a guess still to be measured (scripts/gpu_bench.sh).
TOPK_CHOICES = {
    ("tensorflow", "cpu"): ((8192, "sort"), (None, "bucket")),
    ("tensorflow", "gpu"): ((8192, "sort"), (None, "count")),
    ("jax", "cpu"): ((2048, "sort"), (None, "radix")),
    ("jax", "gpu"): ((2048, "sort"), (None, "count")),
}
DEFAULT_CHOICE = ((2048, "sort"), (None, "count"))
WIDE_DIGITS_FROM = 1 << 21  # radix: 16-bit digits from here, 11-bit below
BUCKET_DIGIT_BITS = 14
# Counting passes: digit width per platform. XLA's CPU code for 15 comparisons per
# entry took 187 ms on 235k entries, 1-bit digits (31 passes) 5 ms; on a GPU the
# passes are memory-bound, so fewer, wider ones should win (to be measured).
COUNT_DIGIT_BITS = {"cpu": 1, "gpu": 4}

TOPK_METHODS = Registry("top-k method", names=choices.TOPK_METHODS)


# Edge-popup's count: GetSubnet zeroes int((1 - k) * n) entries (tf_supermask.counting).
TOPK_COUNT_RULE = choices.TOPK_COUNT_RULE


def topk_kept_count(k, size, rule=TOPK_COUNT_RULE):
    """Number of weights a top-k layer keeps: ``counting.kept_count`` of `size` at the
    fraction kept `k` under `rule` (default edge-popup's ``n - int((1 - k) * n)``),
    at least 1."""
    return max(1, kept_count(size, kept=k, rule=rule))


def topk_method_for(size, backend=None, device=None, method="auto"):
    """The select used for a layer of `size` weights: `method` unless "auto"."""
    if method not in (None, "auto"):
        return method
    key = (backend or keras.backend.backend(), device or platform())
    for limit, method in TOPK_CHOICES.get(key, DEFAULT_CHOICE):
        if limit is None or size <= limit:
            return method
    raise AssertionError("every choice table ends with an unlimited entry")


def _keep_from_threshold(bits, threshold, ties_kept, ties_total=None):
    """Entries above `threshold`, plus the first `ties_kept` equal to it (by position)."""

    def break_ties():
        at = ops.equal(bits, threshold)
        rank = ops.cumsum(ops.cast(at, "int32"))
        return ops.logical_or(ops.greater(bits, threshold),
                              ops.logical_and(at, rank <= ties_kept))

    if ties_total is None:
        ties_total = ops.sum(ops.cast(ops.equal(bits, threshold), "int32"))
    return ops.cond(ties_total == ties_kept, lambda: ops.greater_equal(bits, threshold),
                    break_ties)


@TOPK_METHODS.register("sort")
def _sort_keep(magnitudes, kept):
    """A partial sort (``top_k``); it keeps the lower index among equal values."""
    size = int(magnitudes.shape[0])
    _, indices = ops.top_k(magnitudes, kept, sorted=True)
    mask = ops.scatter(ops.expand_dims(indices, 1), ops.ones((kept,), "int32"), (size,))
    return mask > 0


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


@TOPK_METHODS.register("radix")
def _radix_keep(magnitudes, kept):
    """Histogram radix select (11-bit digits, 16-bit ones from 2M entries)."""
    bits = bitcast_to_int32(magnitudes)
    digit_bits = 16 if int(bits.shape[0]) >= WIDE_DIGITS_FROM else 11
    threshold, ties_kept = _kth_largest_bits(bits, kept, digit_bits)
    return _keep_from_threshold(bits, threshold, ties_kept)


def _kth_largest_bits_by_counting(bits, kept, digit_bits):
    """Like ``_kth_largest_bits``, with counting passes instead of histograms.

    The threshold T (the `kept`-th largest bit pattern) is the largest t with
    count(bits >= t) >= kept. Each pass fixes one `digit_bits`-wide digit of T
    by counting, for every value d of that digit, the entries at or above
    (digits fixed so far, d, zeros): 2**digit_bits - 1 comparisons and sums
    over the same read of `bits`, which a compiler fuses into one reduction,
    and no scatter.
    """
    prefix = ops.convert_to_tensor(0, "int32")
    high = 31
    while high > 0:
        shift = max(0, high - digit_bits)
        width = high - shift
        steps = ops.convert_to_tensor([d << shift for d in range(1, 1 << width)], "int32")
        candidates = prefix + steps
        # (candidates, n) and a sum over the last axis: a row reduction per candidate.
        counts = ops.sum(ops.cast(bits >= ops.expand_dims(candidates, 1), "int32"), axis=1)
        prefix = prefix + ops.left_shift(ops.sum(ops.cast(counts >= kept, "int32")), shift)
        high = shift
    above = ops.sum(ops.cast(ops.greater(bits, prefix), "int32"))
    return prefix, kept - above


@TOPK_METHODS.register("count")
def _count_keep(magnitudes, kept):
    """Counting-pass select (COUNT_DIGIT_BITS-wide digits): compare and sum only."""
    bits = bitcast_to_int32(magnitudes)
    digit_bits = COUNT_DIGIT_BITS.get(platform(), 4)
    threshold, ties_kept = _kth_largest_bits_by_counting(bits, kept, digit_bits)
    return _keep_from_threshold(bits, threshold, ties_kept)


@TOPK_METHODS.register("bucket")
def _bucket_keep(magnitudes, kept):
    """One histogram of the top BUCKET_DIGIT_BITS bits, then a sort of the one bucket
    holding the threshold (usually a few hundred entries).

    The bucket's size depends on the data, so this needs a backend that allows
    data-dependent shapes in compiled functions (TensorFlow).
    """
    bits = bitcast_to_int32(magnitudes)
    size = int(bits.shape[0])
    shift = 31 - BUCKET_DIGIT_BITS
    bucket = ops.right_shift(bits, shift)
    counts = histogram(bucket, 1 << BUCKET_DIGIT_BITS)
    below = ops.cumsum(counts) - counts  # entries in lower buckets
    # The threshold's bucket: the highest one with at least `kept` entries at or above it.
    chosen = ops.sum(ops.cast(below <= size - kept, "int32")) - 1
    needed = kept - (size - below[chosen] - counts[chosen])  # taken from that bucket
    candidates, _ = compact(bits, ops.equal(bucket, chosen))
    ascending = ops.sort(candidates)
    threshold = ascending[ops.shape(ascending)[0] - needed]
    ties_total = ops.sum(ops.cast(ops.equal(candidates, threshold), "int32"))
    ties_kept = needed - ops.sum(ops.cast(ops.greater(candidates, threshold), "int32"))
    return _keep_from_threshold(bits, threshold, ties_kept, ties_total)


def topk_keep(magnitudes, k, method=None, rule=TOPK_COUNT_RULE):
    """Boolean tensor of `magnitudes`' shape keeping exactly ``topk_kept_count(k, n, rule)``
    largest |entries|.

    Ties at the threshold are broken by position (earliest kept). Every method
    gives the same result; `method` (default: ``topk_method_for``) picks the
    fastest for the backend and size.
    """
    flat = ops.abs(ops.reshape(ops.cast(magnitudes, "float32"), (-1,)))
    size = int(flat.shape[0])
    kept = topk_kept_count(k, size, rule)
    if kept >= size:
        return ops.ones(ops.shape(magnitudes), "bool")
    method = topk_method_for(size, method=method)
    if method == "bucket" and not supports_dynamic_shapes():  # TF's bincount fails under XLA
        method = "count"
    keep = _select(method, kept)(flat)
    return ops.reshape(keep, ops.shape(magnitudes))


@functools.lru_cache(maxsize=None)
def _select(method, kept):
    select = TOPK_METHODS.get(method)
    return compiled(lambda flat: select(flat, kept))


def topk_binary_mask(magnitudes, k, method=None, rule=TOPK_COUNT_RULE):
    """Float 0/1 tensor of `magnitudes`' shape keeping exactly ``topk_kept_count(k, n,
    rule)`` largest entries.

    Ties at the threshold are broken by position (earliest kept).
    """
    return ops.cast(topk_keep(magnitudes, k, method, rule), magnitudes.dtype)


def _upstream(args, upstream):
    # TensorFlow passes the output gradient positionally, JAX too; Keras may name it.
    return args[0] if upstream is None else upstream


def _topk_straight_through(kernel, scores, k, rule=TOPK_COUNT_RULE, method=None):
    """where(top-k of |scores|, kernel, 0); d/d scores = d/d kernel_eff * kernel * sign(scores)."""

    @ops.custom_gradient
    def apply(kernel, scores):
        keep = topk_keep(scores, k, method, rule=rule)
        zero = ops.cast(0, kernel.dtype)

        def grad(*args, upstream=None):
            upstream = _upstream(args, upstream)
            d_scores = ops.cast(upstream * kernel, scores.dtype) * ops.sign(scores)
            return ops.where(keep, upstream, zero), d_scores

        return ops.where(keep, kernel, zero), grad

    return apply(kernel, scores)


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

    def masked_kernel(self, layer, kernel, training):
        """``kernel * mask`` with the mode's gradients in one step, or None to use ``mask``.

        "topk" overrides this: the binary mask is computed once, inside a
        custom-gradient op, so the straight-through estimator costs one select
        forwards and one product backwards instead of the
        ``binary + s - stop_gradient(s)`` chain. "topk" and "bernoulli" use the
        fused CPU kernels (``layers/fused.py``) where they are available. (A
        custom-gradient "bernoulli" of TensorFlow ops was measured slower than
        its chain, whose sigmoid gradient is one fused op.)
        """
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
        # autocast=False: under mixed precision the scores (and the mask chosen from
        # them) stay float32; only the masked kernel takes the compute dtype.
        layer.scores = layer.add_weight(name="scores", shape=shape,
                                        initializer=layer.score_initializer,
                                        trainable=layer.train_scores, autocast=False)


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

    def masked_kernel(self, layer, kernel, training):
        if training or layer.eval_sample:
            scores = read(layer.scores)
            if fused.available(kernel, scores):
                return fused.bernoulli_masked(kernel, scores, layer.seed_generator.next(),
                                              kernel_grad=layer.train_weights)
        return None

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
        binary = ops.stop_gradient(topk_binary_mask(magnitude, layer.k, layer.topk_method,
                                                    rule=layer.count_rule))
        if not training:
            return binary
        return binary + magnitude - ops.stop_gradient(magnitude)

    def masked_kernel(self, layer, kernel, training):
        scores = read(layer.scores)
        if training:
            if fused.available(kernel, scores):
                kept = topk_kept_count(layer.k, math.prod(scores.shape), layer.count_rule)
                return fused.topk_masked(kernel, scores, kept, kernel_grad=layer.train_weights)
            return _topk_straight_through(kernel, scores, layer.k, layer.count_rule,
                                          layer.topk_method)
        return ops.where(topk_keep(scores, layer.k, layer.topk_method, rule=layer.count_rule),
                         kernel,
                         ops.cast(0, kernel.dtype))

    def binary_mask(self, layer):
        return topk_binary_mask(ops.abs(layer.scores), layer.k, layer.topk_method,
                                rule=layer.count_rule)

    def set_mask(self, layer, mask):
        # Lift the kept scores above every pruned one; the count must match k.
        mask = ops.cast(ops.convert_to_tensor(mask) != 0, layer.scores.dtype)
        expected = topk_kept_count(layer.k, int(ops.size(mask)), layer.count_rule)
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
                                               trainable=False, autocast=False)

    def mask(self, layer, training):
        return layer.mask_variable

    def masked_kernel(self, layer, kernel, training):
        mask = read(layer.mask_variable)
        if training and fused.available(kernel, mask):
            return fused.fixed_masked(kernel, mask)
        return None

    def binary_mask(self, layer):
        return ops.convert_to_tensor(layer.mask_variable)

    def set_mask(self, layer, mask):
        mask = ops.convert_to_tensor(mask)
        if tuple(mask.shape) != tuple(layer.mask_variable.shape):
            raise ValueError(f"mask for {layer.kernel_variable.path} has shape {tuple(mask.shape)}, "
                             f"expected {tuple(layer.mask_variable.shape)}")
        layer.mask_variable.assign(ops.cast(ops.cast(mask, "float32") != 0,
                                            layer.mask_variable.dtype))


MASK_MODES.check_complete()
TOPK_METHODS.check_complete()
