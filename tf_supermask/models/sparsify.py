"""Any Keras 3 model as a masked network, and back: ``sparsify`` and ``strip``.

``sparsify(model, mask="topk", k=0.5)`` returns a copy of a Sequential or functional
model (nested models and ``keras.applications`` included) in which every prunable
layer is a masked layer (``tf_supermask.layers``) built exactly as a registered
model's layer is built by ``MaskOptions`` (same initializers, seeds, fan rule and
count rule). ``strip(model)`` folds the masks back into plain Keras layers, whose
``.keras`` file loads without tf_supermask.

Prunable layers and their masked forms:

=========================  ===================================================
``Dense``                  ``MaskedDense``
``Conv1D`` / ``Conv3D``    ``MaskedConv1D`` / ``MaskedConv3D``
``Conv2D``                 ``MaskedConv2D`` (not dilated)
``DepthwiseConv2D``        ``MaskedDepthwiseConv2D``
``SeparableConv2D``        a depthwise then a 1x1 masked conv (what it computes)
``Conv2DTranspose``        ``MaskedConv2DTranspose``
``EinsumDense``            ``MaskedEinsumDense``
``MultiHeadAttention``     ``MaskedMultiHeadAttention`` (query, key, value, output)
=========================  ===================================================

Example (bring your own model):

>>> import keras
>>> from tf_supermask.models import sparsify, strip
>>> model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3),
...                           keras.layers.Flatten(), keras.layers.Dense(10)])
>>> supermask = sparsify(model, mask="topk", k=0.5)
>>> [type(layer).__name__ for layer in supermask.layers]
['Conv2D', 'Flatten', 'MaskedDense']
>>> plain = strip(supermask)
>>> [type(layer).__name__ for layer in plain.layers]
['Conv2D', 'Flatten', 'Dense']

(The first conv stays dense by default, as the VGG/ResNet recipes leave it.)
"""

import keras
import numpy as np

from tf_supermask.layers import MaskedConv2D, MaskedDense, MaskedLayer, masked_layers
from tf_supermask.layers.initializers import fan_scale_for, get_initializer
from tf_supermask.layers.kinds import (MaskedConv1D, MaskedConv3D, MaskedConv2DTranspose,
                                       MaskedDepthwiseConv2D, MaskedEinsumDense)
from tf_supermask.layers.attention import MaskedMultiHeadAttention
from tf_supermask.models.options import MaskOptions
from tf_supermask.sparsity import erk_densities

ALLOCATIONS = ("layer", "kind", "erk")
_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
               keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
               keras.layers.Conv2DTranspose)
PRUNABLE = _CONV_TYPES + (keras.layers.Dense, keras.layers.EinsumDense,
                          keras.layers.MultiHeadAttention)


def _kind(layer):
    return "conv" if isinstance(layer, _CONV_TYPES) else "dense"


def _kernel_shapes(layer):
    """The shapes of the kernels a layer's mask covers (SeparableConv2D and attention
    have several)."""
    return [tuple(weight.shape) for weight in layer.weights
            if weight.name.endswith("kernel") and len(weight.shape) >= 2]


def _check_model(model):
    from keras.src.models.functional import Functional

    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(f"sparsify needs a Sequential or functional model; {type(model).__name__}"
                         " is subclassed, which Keras cannot clone: build the same network "
                         "with keras.Sequential or the functional API (keras.Input(...) -> "
                         "layers -> keras.Model(inputs, outputs))")
    if not model.built or not model.inputs:
        raise ValueError("sparsify needs a built model with known inputs: start it with "
                         "keras.Input(shape) (or call it once on data)")


def _model_layers(model):
    """The layers of `model` in the model's order, nested Sequential and functional models
    walked depth first in their own order (Keras's recursive ``_flatten_layers`` lists a
    nested model's layers last to first); the sublayers of a layer (the projections
    inside MultiHeadAttention) are not listed: clone_model replaces the layer whole."""
    for layer in model._flatten_layers(include_self=False, recursive=False):
        yield layer
        if isinstance(layer, keras.Model):
            yield from _model_layers(layer)


def _selected(model, layers):
    """The prunable layers of `model` (nested models flattened), in order, that `layers`
    picks: None (all), a predicate, or a list of layer classes and names."""
    candidates = [layer for layer in _model_layers(model)
                  if isinstance(layer, PRUNABLE) and not isinstance(layer, MaskedLayer)]
    if layers is None:
        return candidates
    if callable(layers) and not isinstance(layers, type):
        return [layer for layer in candidates if layers(layer)]
    if isinstance(layers, (str, type)):
        layers = [layers]
    names = {item for item in layers if isinstance(item, str)}
    types = tuple(item for item in layers if isinstance(item, type))
    unsupported = [item for item in types if not issubclass(item, PRUNABLE)]
    if unsupported:
        raise ValueError(f"cannot mask {unsupported[0].__name__} layers; prunable layer types: "
                         + ", ".join(t.__name__ for t in PRUNABLE))
    known = {layer.name for layer in _model_layers(model)}
    missing = sorted(names - known)
    if missing:
        raise ValueError(f"no layer named {missing[0]!r} in the model")
    not_prunable = sorted(name for name in names
                          if name not in {layer.name for layer in candidates})
    if not_prunable:
        raise ValueError(f"layer {not_prunable[0]!r} is not a prunable layer (prunable types: "
                         + ", ".join(t.__name__ for t in PRUNABLE) + ")")
    return [layer for layer in candidates
            if layer.name in names or (types and isinstance(layer, types))]


def _densities(targets, k, allocation, kind_k):
    """{layer name: fraction kept}."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got "
                         f"{allocation!r}")
    if allocation == "layer":
        return {layer.name: k for layer in targets}
    if allocation == "kind":
        kinds = {layer.name: _kind(layer) for layer in targets}
        if targets:
            kinds[targets[-1].name] = "output"
        kind_k = {"conv": k, "dense": k, "output": k, **(kind_k or {})}
        return {name: kind_k[kind] for name, kind in kinds.items()}
    shapes = {layer.name: max(_kernel_shapes(layer), key=np.prod) for layer in targets}
    return {name: max(1e-6, min(1.0, value))
            for name, value in erk_densities(shapes, k).items()}


def _masked_kwargs(options, layer, k, keep_weights):
    """The layer's MaskOptions kwargs (recipe initializers and seeds), for its own k."""
    kwargs = options._layer_kwargs(layer.get_config().get("activation"),
                                   use_bias=getattr(layer, "use_bias", True))
    if kwargs["mask"] != "dense":
        kwargs["k"] = k
        if options.scale_fan != "none":
            kwargs["kernel_initializer"] = get_initializer(
                options.init, seed=kwargs["seed"], fan_scale=fan_scale_for(options.scale_fan, k))
    if keep_weights:
        kwargs["train_weights"] = kwargs["train_weights"] or kwargs["mask"] == "fixed"
    return kwargs


def _masked_layer(layer, kwargs):
    """The masked form of one Keras layer (see the table in the module docstring)."""
    config = layer.get_config()
    name = layer.name
    common = dict(name=name, **kwargs)
    if isinstance(layer, keras.layers.MultiHeadAttention):
        kwargs = dict(kwargs)
        kwargs.pop("activation", None)
        kwargs.pop("use_bias", None)
        return MaskedMultiHeadAttention.from_keras(layer, masked=kwargs)
    if isinstance(layer, keras.layers.EinsumDense):
        common["use_bias"] = config.get("bias_axes") is not None
        return MaskedEinsumDense(config["equation"], config["output_shape"],
                                 bias_axes=config.get("bias_axes"), **common)
    if isinstance(layer, keras.layers.Dense):
        return MaskedDense(config["units"], **common)
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = dict(common, name=f"{name}_depthwise", use_bias=False, activation=None)
        pointwise = dict(common, name=f"{name}_pointwise")
        return keras.Sequential([
            MaskedDepthwiseConv2D(config["kernel_size"], strides=config["strides"],
                                  padding=config["padding"],
                                  depth_multiplier=config["depth_multiplier"],
                                  dilation_rate=config["dilation_rate"],
                                  data_format=config.get("data_format"), **depthwise),
            MaskedConv2D(config["filters"], 1, padding="valid", **pointwise)], name=name)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return MaskedDepthwiseConv2D(config["kernel_size"], strides=config["strides"],
                                     padding=config["padding"],
                                     depth_multiplier=config["depth_multiplier"],
                                     dilation_rate=config["dilation_rate"],
                                     data_format=config.get("data_format"), **common)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return MaskedConv2DTranspose(config["filters"], config["kernel_size"],
                                     strides=config["strides"], padding=config["padding"],
                                     output_padding=config.get("output_padding"),
                                     dilation_rate=config["dilation_rate"],
                                     data_format=config.get("data_format"), **common)
    if config.get("data_format") not in (None, "channels_last"):
        raise ValueError(f"layer {name!r}: masked convolutions are channels_last only")
    conv = dict(strides=config["strides"], padding=config["padding"],
                groups=config.get("groups", 1), **common)
    if isinstance(layer, keras.layers.Conv2D):
        if tuple(config["dilation_rate"]) != (1, 1):
            raise ValueError(f"layer {name!r}: dilated Conv2D layers cannot be masked yet")
        return MaskedConv2D(config["filters"], config["kernel_size"], **conv)
    cls = MaskedConv1D if isinstance(layer, keras.layers.Conv1D) else MaskedConv3D
    return cls(config["filters"], config["kernel_size"], dilation_rate=config["dilation_rate"],
               **conv)


def _copy_into_masked(old, new, keep_weights):
    """Copies `old`'s weights into its masked form: biases always, kernels when
    `keep_weights` (else the masked kernels keep their recipe initialisation)."""
    def assign(masked, kernel, bias):
        if keep_weights and kernel is not None:
            masked.kernel_variable.assign(kernel)
        if bias is not None and masked.bias is not None:
            masked.bias.assign(bias)

    if isinstance(old, keras.layers.MultiHeadAttention):
        new.copy_weights_from(old, keep_weights, assign)
        return
    weights = {weight.name: weight for weight in old.weights}
    bias = weights.get("bias")
    if isinstance(old, keras.layers.SeparableConv2D):
        depthwise, pointwise = new.layers
        assign(depthwise, weights["depthwise_kernel"], None)
        assign(pointwise, weights["pointwise_kernel"], bias)
        return
    assign(new, weights.get("kernel"), bias)


def _clone_replacing(model, replace, fill):
    """A clone of `model` (nested models included) where ``replace(layer)`` gives each
    layer's replacement (None: a copy of the layer). Replaced layers then get their
    weights from ``fill(old, new)``; every other layer keeps its own weights."""
    pairs = []  # (old, new, replaced)

    def clone(layer):
        new = replace(layer)
        copied = layer.__class__.from_config(layer.get_config()) if new is None else new
        pairs.append((layer, copied, new is not None))
        return pairs[-1][1]

    out = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for old, new, replaced in pairs:
        if replaced:
            fill(old, new)
        elif getattr(old, "weights", None) and not isinstance(old, keras.Model):  # not ops
            new.set_weights(old.get_weights())
    return out


def sparsify(model, mask="topk", k=0.5, layers=None, allocation="layer", kind_k=None,
             keep_weights=None, prune_first_layer=None, init="kaiming_normal", score_init=None,
             scale_fan="none", rescale=False, count_rule="hidden_networks", seed=0,
             eval_sample=False, pruned_values=False, topk_method="auto"):
    """A copy of `model` whose prunable layers are masked.

    Each chosen layer ``L`` with kernel ``W`` becomes its masked form, computing ``L``
    with ``W * m`` (``MaskedDense`` gives the modes' formulas). Masked layers are
    built by ``MaskOptions`` as in a registered model: layer ``i`` (in the model's
    order) is seeded ``seed * 1000 + i`` (scores ``+ 500``), its kernel initializer
    is `init` (unless `keep_weights`), its scores start as the mode's recipe
    (edge-popup's ``uniform(+-1/sqrt(fan_in))`` for topk). Every other layer keeps its
    weights.

    Args:
      model: a built Sequential or functional ``keras.Model`` (nested models and
        ``keras.applications`` models included; not subclassed models).
      mask: "topk" (edge-popup), "bernoulli" (Zhou et al.), "fixed" (a given mask,
        for pruning: all ones until set), or "dense".
      k: fraction of weights kept, in (0, 1] (overall, with ``allocation="erk"``).
      layers: which layers to mask: None (every prunable layer), a predicate
        ``layer -> bool``, or a list of layer classes and names.
      allocation: how k is spread: "layer" (every layer keeps k), "kind" (``kind_k``
        {"conv", "dense", "output"} per kind, k where missing), "erk" (Erdos-Renyi
        kernel densities whose total is k).
      keep_weights: keep the model's kernels (pruning and fine-tuning, lottery
        tickets) or draw the recipe's (supermasks). Default: True for "fixed" and
        "dense", False for "topk" and "bernoulli".
      prune_first_layer: whether the model's first prunable layer is masked (when
        chosen). Default None: not when it is a convolution (the VGG/ResNet/MobileNet
        recipes), yes else.
      init, score_init, scale_fan, rescale, count_rule, seed, eval_sample,
        pruned_values, topk_method: as ``MaskOptions`` (the flags of the same names).

    Returns:
      A new built functional or Sequential model; `model` is left as it was.

    Raises:
      ValueError: a subclassed or unbuilt model, an unsupported layer type or an
        unknown name in `layers`, k out of range, a bad allocation.

    Example:

    >>> import keras
    >>> from tf_supermask.layers import masked_layers
    >>> from tf_supermask.models import sparsify
    >>> inputs = keras.Input((16,))
    >>> hidden = keras.layers.Dense(32, activation="relu")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(4)(hidden))
    >>> masked = sparsify(model, mask="topk", k=0.25)
    >>> [(layer.mask_mode, layer.k) for layer in masked_layers(masked)]
    [('topk', 0.25), ('topk', 0.25)]
    """
    from tf_supermask.counting import check_k

    check_k(k, "k")
    _check_model(model)
    targets = _selected(model, layers)
    if not targets:
        raise ValueError("no prunable layer to mask (prunable types: "
                         + ", ".join(t.__name__ for t in PRUNABLE) + ")")
    densities = _densities(targets, k, allocation, kind_k)
    if keep_weights is None:
        keep_weights = mask in ("fixed", "dense")
    options = MaskOptions(mask=mask, k=k, init=init, score_init=score_init,
                          count_rule=count_rule, scale_fan=scale_fan, rescale=rescale,
                          eval_sample=eval_sample, pruned_values=pruned_values, seed=seed,
                          prune_first_layer=prune_first_layer, topk_method=topk_method)
    # The recipes' first-layer rule is about the model's first prunable layer: a choice of
    # layers that leaves it out has its own first layer masked.
    first = _selected(model, None)[0]
    options.set_first_layer_default(targets[0] is not first or _kind(first) != "conv")
    replaced = {}
    for layer in targets:  # in the model's order: layer i takes seed * 1000 + i
        kwargs = _masked_kwargs(options, layer, densities[layer.name], keep_weights)
        if kwargs["mask"] == "dense" and mask != "dense":
            continue  # an unpruned first layer stays the user's own layer
        replaced[id(layer)] = (layer, _masked_layer(layer, kwargs))
    if not replaced:
        raise ValueError(f"nothing to mask: the only layer chosen, {targets[0].name!r}, is the "
                         "model's first conv, which stays dense by default (the recipes'); "
                         "pass prune_first_layer=True to mask it")
    def replace(layer):
        return replaced[id(layer)][1] if id(layer) in replaced else None

    def copy(old, new):
        _copy_into_masked(old, new, keep_weights)

    return _clone_replacing(model, replace, copy)


# Back to plain Keras ----------------------------------------------------------------------

def _plain_layer(layer):
    """The Keras layer a masked layer computes as (its kernel folded)."""
    config = dict(name=layer.name, activation=layer.activation, use_bias=layer.bias is not None,
                  dtype=layer.dtype_policy)
    if isinstance(layer, MaskedEinsumDense):
        config.pop("use_bias")
        return keras.layers.EinsumDense(layer.equation, layer.partial_output_shape,
                                        bias_axes=layer.bias_axes if layer.bias is not None
                                        else None, **config)
    if isinstance(layer, MaskedDense):
        return keras.layers.Dense(layer.units, **config)
    if isinstance(layer, MaskedDepthwiseConv2D):
        return keras.layers.DepthwiseConv2D(layer.kernel_size, strides=layer.strides,
                                            padding=layer.padding,
                                            depth_multiplier=layer.depth_multiplier,
                                            dilation_rate=layer.dilation_rate, **config)
    if isinstance(layer, MaskedConv2DTranspose):
        return keras.layers.Conv2DTranspose(layer.filters, layer.kernel_size,
                                            strides=layer.strides, padding=layer.padding,
                                            output_padding=layer.output_padding,
                                            dilation_rate=layer.dilation_rate, **config)
    if isinstance(layer, MaskedConv2D):
        if _depthwise(layer):  # a grouped conv with one channel per group
            return keras.layers.DepthwiseConv2D(layer.kernel_size, strides=layer.strides,
                                                padding=layer.padding, depth_multiplier=1,
                                                **config)
        return keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                   padding=layer.padding, groups=layer.groups, **config)
    cls = keras.layers.Conv1D if isinstance(layer, MaskedConv1D) else keras.layers.Conv3D
    return cls(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
               dilation_rate=layer.dilation_rate, groups=layer.groups, **config)


def _depthwise(layer):
    return (isinstance(layer, MaskedConv2D) and layer.groups > 1
            and layer.groups == layer.filters and layer.kernel_variable.shape[2] == 1)


def _fold_into(masked, plain):
    """Sets the plain layer's kernel to the masked layer's evaluation kernel (weight x
    mask, rescaled where the layer rescales, frozen pruned values included) and its
    bias."""
    kernel = masked.evaluation_kernel()
    if _depthwise(masked):  # (kh, kw, 1, C) -> (kh, kw, C, 1)
        kernel = np.transpose(kernel, (0, 1, 3, 2))
    values = [kernel]
    if masked.bias is not None:
        values.append(keras.ops.convert_to_numpy(masked.bias))
    plain.set_weights(values)


def strip(model):
    """`model` with every masked layer folded into the plain Keras layer it computes as.

    Each masked layer becomes its Keras layer with kernel ``W * m`` (times
    ``n / #kept`` where it rescales; ``W * m + P * (1 - m)`` with pruned values); the
    scores and mask variables go. The result's ``.keras`` file loads where
    tf_supermask is not installed and predicts what the masked model predicts at
    evaluation (a Bernoulli layer with ``eval_sample`` is thresholded instead).

    Args:
      model: a Sequential or functional model holding masked layers (``sparsify``'s
        or a registered model's).

    Returns:
      A new model of plain Keras layers.
    """
    from tf_supermask.layers.attention import MaskedMultiHeadAttention as Attention

    _check_model(model)
    def replace(layer):
        if isinstance(layer, Attention):
            return keras.layers.MultiHeadAttention.from_config(layer.plain_config())
        return _plain_layer(layer) if isinstance(layer, MaskedLayer) else None

    def fold(old, new):
        if isinstance(old, Attention):
            old.fold_into(new)
        else:
            _fold_into(old, new)

    return _clone_replacing(model, replace, fold)


def sparsified_layers(model):
    """The masked layers of a model (nested models and attention included)."""
    return masked_layers(model)


__all__ = ["PRUNABLE", "sparsify", "strip", "sparsified_layers"]
