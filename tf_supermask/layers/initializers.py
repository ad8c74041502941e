"""Weight and score initializers, registered by name.

All of them are Keras initializers (serializable), so a model's config records how
its frozen weights were drawn. ``fan_scale`` multiplies the fan used for the
standard deviation: edge-popup's "scale fan" option, by one of two rules
(``fan_scale_for``).
"""

import math

import keras
from keras import ops

from tf_supermask import choices
from tf_supermask.registry import Registry

INITIALIZERS = Registry("initializer", names=choices.INITIALIZERS)

# How --scale_fan scales the fan: the edge-popup paper's std = gain / sqrt(k * fan)
# ("kept": by the fraction kept), or its code's fan * (1 - prune_rate), whose
# prune_rate is the fraction kept ("pruned": by the fraction pruned). They agree at
# k = 0.5 only.
FAN_SCALINGS = choices.SCALE_FAN

_DISTRIBUTIONS = ("normal", "uniform", "signed_constant")
_MODES = ("fan_in", "fan_out", "fan_avg")


def fan_scale_for(rule, k):
    """The multiplier on the fan under a ``--scale_fan`` rule, for fraction kept `k`.

    ``none``: 1. ``kept``: k, the edge-popup paper's ``std = gain / sqrt(k * fan)``.
    ``pruned``: 1 - k, what allenai/hidden-networks' code computes
    (``fan * (1 - prune_rate)`` with ``prune_rate`` the fraction kept), the rule of
    the paper's scaled-init figures. For example at k = 0.3 and fan 576 with ReLU
    gain: 0.1076 (kept), 0.0704 (pruned).

    Raises:
      ValueError: an unknown rule, or ``pruned`` at k = 1 (a zero fan).
    """
    if rule not in FAN_SCALINGS:
        raise ValueError(f"scale_fan must be one of {FAN_SCALINGS}, got {rule!r}")
    if rule == "none":
        return 1.0
    if rule == "kept":
        return float(k)
    if float(k) >= 1.0:
        raise ValueError("scale_fan=pruned scales the fan by 1 - k, which is 0 at k = 1")
    return 1.0 - float(k)


def compute_fans(shape):
    """Fan-in and fan-out of a Dense (in, out) or Conv (kh, kw, in, out) kernel."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        size = shape[0] if shape else 1
        return size, size
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


@keras.saving.register_keras_serializable(package="tf_supermask")
class VarianceScaled(keras.initializers.Initializer):
    """Draws weights with std = gain / sqrt(fan * fan_scale).

    Args:
      distribution: "normal", "uniform" (same std) or "signed_constant"
        (sign of a normal draw times the std, as in Zhou et al. and edge-popup).
      mode: which fan to use: "fan_in", "fan_out" or "fan_avg".
      gain: multiplier on the standard deviation (sqrt(2) for ReLU nets).
      fan_scale: multiplier on the fan, in (0, 1]; edge-popup scales it by k.
      seed: integer seed, or None.
    """

    def __init__(self, distribution="normal", mode="fan_in", gain=math.sqrt(2.0),
                 fan_scale=1.0, seed=None):
        if distribution not in _DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {_DISTRIBUTIONS}, got {distribution!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not 0.0 < float(fan_scale) <= 1.0:
            raise ValueError(f"fan_scale must be in (0, 1], got {fan_scale}")
        self.distribution = distribution
        self.mode = mode
        self.gain = float(gain)
        self.fan_scale = float(fan_scale)
        self.seed = seed

    def std(self, shape):
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        return self.gain / math.sqrt(max(1.0, fan * self.fan_scale))

    def __call__(self, shape, dtype=None):
        std = self.std(shape)
        seed = self.seed
        if self.distribution == "uniform":
            limit = std * math.sqrt(3.0)
            return keras.random.uniform(shape, -limit, limit, dtype=dtype, seed=seed)
        values = keras.random.normal(shape, stddev=std, dtype=dtype, seed=seed)
        if self.distribution == "signed_constant":
            # sign(0) would leave a weight at zero: map it to +std.
            return ops.where(values >= 0, std, -std) * ops.ones_like(values)
        return values

    def get_config(self):
        return {"distribution": self.distribution, "mode": self.mode, "gain": self.gain,
                "fan_scale": self.fan_scale, "seed": self.seed}


_RELU_GAIN = math.sqrt(2.0)


def _register(name, distribution, mode, gain):
    def factory(seed=None, fan_scale=1.0):
        return VarianceScaled(distribution, mode, gain, fan_scale, seed)

    factory.__doc__ = f"{distribution} weights, std = {gain:.3g} / sqrt({mode})."
    INITIALIZERS.register(name)(factory)


# Glorot: std = sqrt(2 / (fan_in + fan_out)) = 1 / sqrt(fan_avg).
_register("glorot_normal", "normal", "fan_avg", 1.0)
_register("glorot_uniform", "uniform", "fan_avg", 1.0)
_register("kaiming_normal", "normal", "fan_in", _RELU_GAIN)
_register("kaiming_uniform", "uniform", "fan_in", _RELU_GAIN)
_register("signed_kaiming_constant", "signed_constant", "fan_in", _RELU_GAIN)
_register("signed_glorot_constant", "signed_constant", "fan_avg", 1.0)


@INITIALIZERS.register("kaiming_uniform_a_sqrt5")
def _kaiming_uniform_a_sqrt5(seed=None, fan_scale=1.0):
    """Uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)]: PyTorch's
    ``kaiming_uniform_(w, a=sqrt(5))`` (gain sqrt(2 / (1 + a^2)) = 1/sqrt(3)), the
    default init of torch's Linear and Conv2d weights and how hidden-networks
    (edge-popup) initialises its scores; the default score init of ``topk``."""
    return VarianceScaled("uniform", "fan_in", 1.0 / math.sqrt(3.0), fan_scale, seed)


@INITIALIZERS.register("uniform")
def _uniform(seed=None, fan_scale=1.0):
    """Uniform in [-1, 1]: a score initializer."""
    del fan_scale
    return keras.initializers.RandomUniform(-1.0, 1.0, seed=seed)


@INITIALIZERS.register("zeros")
def _zeros(seed=None, fan_scale=1.0):
    """All zeros (biases)."""
    del seed, fan_scale
    return keras.initializers.Zeros()


INITIALIZERS.check_complete()


# The recipes' initializers of a masked layer (MaskOptions' defaults): the kernel's, and the
# scores' per mask mode (edge-popup's uniform(+-1/sqrt(fan_in)) for topk, Zhou et al.'s
# uniform for bernoulli). A masked layer built directly gets the same.
DEFAULT_KERNEL_INIT = "kaiming_normal"
DEFAULT_SCORE_INIT = {"bernoulli": "uniform", "topk": "kaiming_uniform_a_sqrt5"}
SCORE_SEED_OFFSET = 500  # a layer seeded s draws its scores from s + 500 (streams.layer_scores)


def default_score_init(mask):
    return DEFAULT_SCORE_INIT.get(mask, "kaiming_uniform")


def get_initializer(name, seed=None, fan_scale=1.0):
    """Returns the registered initializer `name`, or passes a Keras initializer through."""
    if isinstance(name, keras.initializers.Initializer):
        return name
    if isinstance(name, dict):
        return keras.initializers.deserialize(name)
    return INITIALIZERS.get(name)(seed=seed, fan_scale=fan_scale)
