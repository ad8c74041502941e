"""How every masked layer of a model is built: ``MaskOptions`` (the recipes' layer
arguments, seeds and first-layer rule), shared by the registered models and ``sparsify``."""

import dataclasses
from typing import Optional

import keras

from tf_supermask import choices, streams
from tf_supermask.layers import MaskedConv2D, MaskedDense, nonaffine_batchnorm
from tf_supermask.layers.initializers import default_score_init, fan_scale_for, get_initializer

BATCHNORMS = choices.BATCHNORMS

# Score initializers when MaskOptions.score_init is None: Zhou et al.'s uniform
# for bernoulli, hidden-networks' uniform(+-1/sqrt(fan_in)) for topk;
# kaiming_uniform (unused: no scores) for the other modes.


@dataclasses.dataclass
class MaskOptions:
    """How every masked layer of a model is built.

    Attributes:
      mask: mask mode ("dense", "bernoulli", "topk", "fixed").
      k: fraction of weights kept per layer ("topk"), in (0, 1].
      init: registered weight initializer.
      score_init: registered score initializer ("bernoulli" / "topk"); None: the
        mode's entry of ``layers.initializers.DEFAULT_SCORE_INIT``.
      count_rule: how "topk" turns k into a count (``tf_supermask.counting``;
        default edge-popup's ``n - int((1 - k) * n)``).
      scale_fan: how the initializer's fan is scaled (edge-popup's option): "none",
        "kept" (by k, the paper's formula) or "pruned" (by 1 - k, hidden-networks'
        code); see ``fan_scale_for``.
      rescale: dynamic weight rescaling (#weights / #kept).
      train_weights: kernels train (None: the mode's default).
      use_bias: layers have biases (None: only where weights train).
      eval_sample: "bernoulli": sample the mask at evaluation.
      batchnorm: "none", "nonaffine" (edge-popup) or "affine", after hidden layers.
      width: width multiplier of hidden layers.
      pruned_values: "fixed": pruned entries take frozen values (not zero).
      topk_method: "topk": the exact select (``tf_supermask.choices.TOPK_METHOD_CHOICES``;
        "auto" picks by backend, device and size; all keep the same weights).
      seed: base seed; layer i draws its weights, scores and samples from seed + i.
      prune_first_layer: whether the first layer a model builds (the one reading
        the input) is masked like the others (True), or is an unpruned
        dense-mode layer whose weights train unless ``train_weights`` is False
        (False). None: the model's default, set by its builder with
        ``set_first_layer_default``: pruned in fc and conv2..conv8 (Frankle &
        Carbin, Zhou et al., edge-popup mask every layer), unpruned in the VGG,
        ResNet and MobileNet-v2 models (Liu et al. leave the first conv dense).
    """

    mask: str = "dense"
    k: float = 0.5
    init: str = "kaiming_normal"
    score_init: Optional[str] = None
    count_rule: str = "hidden_networks"
    scale_fan: str = "none"
    rescale: bool = False
    train_weights: Optional[bool] = None
    use_bias: Optional[bool] = None
    eval_sample: bool = False
    batchnorm: str = "none"
    width: float = 1.0
    pruned_values: bool = False
    seed: int = 0
    prune_first_layer: Optional[bool] = None
    topk_method: str = "auto"

    def __post_init__(self):
        # k is checked where it enters (the --k flag, or the masked layers' constructor).
        if isinstance(self.scale_fan, bool):  # files written before the rule had names
            self.scale_fan = "kept" if self.scale_fan else "none"
        fan_scale_for(self.scale_fan, self.k)  # a ValueError for a bad rule
        if self.batchnorm not in BATCHNORMS:
            raise ValueError(f"batchnorm must be one of {BATCHNORMS}, got {self.batchnorm!r}")
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")
        self._index = 0
        self._first_layer_default = True

    def sparsify_kwargs(self):
        """These options as ``sparsify``'s arguments (a user's model under --model)."""
        return dict(mask=self.mask, k=self.k, init=self.init, score_init=self.score_init,
                    count_rule=self.count_rule, scale_fan=self.scale_fan, rescale=self.rescale,
                    eval_sample=self.eval_sample, pruned_values=self.pruned_values,
                    seed=self.seed, prune_first_layer=self.prune_first_layer,
                    topk_method=self.topk_method,
                    keep_weights=self.mask in ("dense", "fixed"))

    def set_first_layer_default(self, pruned):
        """A builder's default for ``prune_first_layer`` (call before creating layers)."""
        self._first_layer_default = bool(pruned)

    def first_layer_pruned(self):
        """Whether the model's first layer gets the run's mask mode."""
        if self.prune_first_layer is None:
            return self._first_layer_default
        return bool(self.prune_first_layer)

    def scaled(self, channels):
        """A hidden layer's width under the width multiplier (at least 1)."""
        return max(1, int(round(channels * self.width)))

    def _layer_kwargs(self, activation, use_bias=None):
        from tf_supermask.layers.masks import MASK_MODES

        # The first layer, when left unpruned, is a dense-mode layer whose weights train.
        unpruned = self._index == 0 and not self.first_layer_pruned()
        mask = "dense" if unpruned else self.mask
        mode = MASK_MODES.get(mask)
        seed = streams.seed("layer", self.seed, self._index)
        self._index += 1
        train_weights = mode.default_train_weights if self.train_weights is None else self.train_weights
        if use_bias is None:
            use_bias = train_weights if self.use_bias is None else self.use_bias
        fan_scale = 1.0 if unpruned else fan_scale_for(self.scale_fan, self.k)
        score_init = self.score_init or default_score_init(self.mask)
        return dict(mask=mask, k=self.k, count_rule=self.count_rule, topk_method=self.topk_method,
                    rescale=self.rescale and not unpruned,
                    train_weights=train_weights,
                    use_bias=use_bias, eval_sample=self.eval_sample, seed=seed,
                    pruned_values=self.pruned_values and not unpruned,
                    kernel_initializer=get_initializer(self.init, seed=seed, fan_scale=fan_scale),
                    score_initializer=get_initializer(
                        score_init, seed=streams.seed("layer_scores", self.seed, self._index - 1)),
                    activation=activation)

    def dense(self, units, activation=None, name=None, use_bias=None):
        """A masked Dense layer with the next per-layer seed.

        ``use_bias`` overrides the options' choice (None: keep it).
        """
        return MaskedDense(units, name=name, **self._layer_kwargs(activation, use_bias))

    def conv(self, filters, kernel_size=3, strides=1, activation=None, name=None, groups=1,
             use_bias=None):
        """A masked Conv2D layer (same padding) with the next per-layer seed.

        ``use_bias`` overrides the options' choice (None: keep it); convs followed
        by BatchNorm pass False.
        """
        return MaskedConv2D(filters, kernel_size, strides=strides, padding="same", groups=groups,
                            name=name, **self._layer_kwargs(activation, use_bias))

    def norm(self, name=None):
        """The configured BatchNorm layer, or None."""
        if self.batchnorm == "nonaffine":
            return nonaffine_batchnorm(name=name)
        if self.batchnorm == "affine":
            return keras.layers.BatchNormalization(name=name)
        return None
