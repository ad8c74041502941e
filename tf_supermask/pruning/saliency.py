"""Scores that choose a mask at initialization, and the selection they share.

Every scoring function takes a freshly built model whose masked layers use
the ``fixed`` mask mode and returns one score array per kernel (keyed by
kernel variable path, like ``tf_supermask.layers.get_masks``);
``select_masks`` keeps the highest scores so that the fraction ``sparsity``
of the weights is removed in each layer (``scope="layer"``) or over all
masked layers at once (``scope="global"``). Scores are computed with
``keras.ops`` and the gradient helper of ``tf_supermask.backend``, so they
run on any backend; the selection itself is NumPy
(``tf_supermask.sparsity.Mask.top``).

- random: uniform random scores.
- magnitude: |w| at initialization.
- SNIP (Lee et al., 2019): |g * w| with g the loss gradient on a few
  batches (the sensitivity of the loss to each mask entry).
- GraSP (Wang et al., 2020): S = -w * (H g), H the loss Hessian and g the
  loss gradient, by double backprop (exact, no finite differences); the weights
  with the HIGHEST S are removed, i.e. the lowest are kept.
- SynFlow (Tanaka et al., 2020): data-free; on the network with every
  parameter replaced by its absolute value, R = sum of the outputs for an
  all-ones input; scores |dR/dw * w|; repeated ``iterations`` times, the
  density after iteration i being density ** (i / iterations).
"""

import warnings

import numpy as np
from keras import ops

from tf_supermask.backend import gradient_function, value_and_grads
from tf_supermask.layers import masked_layers, set_masks
from tf_supermask.pruning.options import SCOPES, density_of
from tf_supermask.counting import kept_counts
from tf_supermask.sparsity import Mask
from tf_supermask import streams

# Synaptic-Flow's Pruner.mask prunes int((1 - density) * N) (tf_supermask.counting); it
# is the reference of every method here (random, magnitude, SNIP, GraSP, SynFlow).
SALIENCY_COUNT_RULE = "synaptic_flow"


class LayerCollapseWarning(UserWarning):
    """A mask keeps no weight of some layer: the network is cut there."""


class LayerCollapseError(ValueError):
    """Raised instead of the warning when collapse is an error."""


# ---------------------------------------------------------------------------
# Shared helpers.


def fixed_layers(model):
    """{kernel path: layer} of the pruned layers; all must use the fixed mask mode.

    Layers left unpruned (mask mode "dense", e.g. a first layer kept dense by
    ``prune_first_layer``) are skipped.
    """
    layers = {}
    for layer in masked_layers(model):
        if not layer.is_masked:
            continue
        if layer.mask_mode != "fixed":
            raise ValueError(f"pruning at initialization needs mask='fixed' layers; "
                             f"{layer.name} uses {layer.mask_mode!r}")
        layers[layer.kernel_variable.path] = layer
    if not layers:
        raise ValueError("the model has no masked layers to prune")
    return layers


def kernel_values(model):
    """{kernel path: NumPy copy of the stored (unmasked) kernel}."""
    return {path: np.array(ops.convert_to_numpy(layer.kernel_variable))
            for path, layer in fixed_layers(model).items()}


def select_masks(scores, sparsity, scope, eligible=None, rule=SALIENCY_COUNT_RULE,
                 density=None):
    """Keeps the highest scores so that the fraction `sparsity` is pruned.

    Per layer each kernel keeps ``counting.kept_count(size, kept=1 - sparsity, rule)``
    entries (1 - sparsity taken to 12 decimals); globally that many of the total
    size, ranked over all layers. The default rule is Synaptic-Flow's:
    ``size - int(sparsity * size)``. With `eligible`, entries outside it are never
    kept (the counts are still fractions of the full layer sizes). `density`, when
    given, is the fraction kept as computed by the caller, used instead of
    ``1 - sparsity``.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    density = density_of(sparsity) if density is None else float(density)
    return Mask.top(scores, **kept_counts(scores, kept=density, scope=scope, rule=rule),
                     eligible=eligible)


def cross_entropy(logits, labels, temperature=1.0):
    """Mean softmax cross-entropy of integer labels, twice differentiable on every backend."""
    logits = ops.cast(logits, "float32") / float(temperature)
    labels = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), ops.shape(logits)[-1])
    return -ops.mean(ops.sum(labels * ops.log_softmax(logits, axis=-1), axis=-1))


def take_batches(batches, count):
    """The first `count` (x, y) batches of a PyDataset, a sequence or an iterable (0: all)."""
    if hasattr(batches, "__getitem__") and hasattr(batches, "__len__"):
        size = len(batches)
        count = size if not count else min(int(count), size)
        return [batches[index][:2] for index in range(count)]
    out = []
    for batch in batches:
        out.append(tuple(batch[:2]))
        if count and len(out) >= count:
            break
    return out


def _loss_fn(model, temperature=1.0):
    def loss(x, y):
        return cross_entropy(model(x, training=False), y, temperature)

    return loss


def check_collapse(masks, policy="warn", when="the mask"):
    """Warns (or raises with policy="error") for each layer `masks` prune entirely.

    Returns:
      The list of collapsed kernel paths.
    """
    collapsed = Mask(masks).collapsed()
    for path in collapsed:
        message = (f"layer collapse: {when} keeps no weight of {path}, so no signal passes "
                   "through that layer; lower the sparsity or use --scope=layer")
        if policy == "error":
            raise LayerCollapseError(message)
        warnings.warn(message, LayerCollapseWarning, stacklevel=2)
    return collapsed


def sparsity_per_layer(masks):
    """{path: fraction pruned} of binary masks."""
    return {path: 1.0 - float(np.mean(mask)) for path, mask in masks.items()}


# ---------------------------------------------------------------------------
# Scores.


def random_scores(model, seed):
    """Uniform random scores from a generator seeded with `seed` (an int or a list of ints)."""
    rng = streams.rng("random_scores", seed)
    return {path: rng.random(np.shape(value)) for path, value in kernel_values(model).items()}


def random_masks(model, sparsity, scope, seed, rule=SALIENCY_COUNT_RULE):
    """A random mask at exactly the given sparsity."""
    return select_masks(random_scores(model, seed), sparsity, scope, rule=rule)


def magnitude_scores(model):
    """|w| of the initial kernels."""
    return {path: np.abs(value) for path, value in kernel_values(model).items()}


def snip_scores(model, batches, num_batches=1):
    """SNIP: |g * w| with g the mean loss gradient over the first `num_batches` batches.

    The gradient is taken with respect to the stored kernel, whose effective
    value is kernel * mask: entries the current mask removes score zero.
    """
    layers = fixed_layers(model)
    variables = [layer.kernel_variable for layer in layers.values()]
    grad_fn = gradient_function(_loss_fn(model), variables)
    totals = None
    data = take_batches(batches, num_batches)
    for x, y in data:
        _, grads = grad_fn(x, y)
        grads = [ops.convert_to_numpy(grad).astype(np.float64) for grad in grads]
        totals = grads if totals is None else [t + g for t, g in zip(totals, grads)]
    values = kernel_values(model)
    return {path: np.abs(total / len(data) * values[path])
            for path, total in zip(layers, totals)}


def grasp_scores(model, batches, num_batches=1, temperature=200.0):
    """GraSP's S = -w * (H g) on the first `num_batches` batches.

    g is the summed loss gradient (a constant), H g the gradient of
    sum(g * grad(loss)) by double backprop, both with logits divided by
    `temperature` as in Wang et al.'s code. GraSP removes the weights with
    the highest S (removing them reduces the gradient norm the least, or
    raises it), so ``grasp_masks`` keeps the lowest.
    """
    layers = fixed_layers(model)
    variables = [layer.kernel_variable for layer in layers.values()]
    loss = _loss_fn(model, temperature)
    data = take_batches(batches, num_batches)
    grad_fn = gradient_function(loss, variables)
    gradient = None
    for x, y in data:
        _, grads = grad_fn(x, y)
        gradient = grads if gradient is None else [a + b for a, b in zip(gradient, grads)]
    gradient = [ops.stop_gradient(ops.convert_to_tensor(g)) for g in gradient]

    def gradient_dot(x, y):
        _, grads = value_and_grads(loss, variables, x, y)
        return sum(ops.sum(g * constant) for g, constant in zip(grads, gradient))

    hessian_gradient = None
    hg_fn = gradient_function(gradient_dot, variables)
    for x, y in data:
        _, products = hg_fn(x, y)
        products = [ops.convert_to_numpy(p).astype(np.float64) for p in products]
        hessian_gradient = products if hessian_gradient is None else [
            a + b for a, b in zip(hessian_gradient, products)]
    values = kernel_values(model)
    return {path: -values[path] * hg for path, hg in zip(layers, hessian_gradient)}


def grasp_masks(scores, sparsity, scope, rule=SALIENCY_COUNT_RULE):
    """Removes the highest GraSP scores S, i.e. keeps the lowest."""
    return select_masks({path: -score for path, score in scores.items()}, sparsity, scope,
                        rule=rule)


def _is_mask_variable(variable, mask_paths):
    return variable.path in mask_paths


def synflow_scores(model, input_shape=None):
    """One SynFlow scoring pass: |dR/dw * w| on the linearized network.

    Every float parameter except the masks is replaced by its absolute value
    (BatchNorm runs in inference mode), R is the sum of the outputs for one
    all-ones input, and the original values are put back afterwards. Masked
    entries score zero. Scores are float32 sums of products of |w| along paths;
    for the nets here they stay far from overflow.
    """
    layers = fixed_layers(model)
    mask_paths = {layer.mask_variable.path for layer in layers.values()}
    saved = [(variable, np.array(ops.convert_to_numpy(variable))) for variable in model.weights
             if not _is_mask_variable(variable, mask_paths)
             and "float" in str(variable.dtype)]
    input_shape = tuple(input_shape or model.inputs[0].shape[1:])
    ones = ops.ones((1,) + input_shape)
    variables = [layer.kernel_variable for layer in layers.values()]
    try:
        for variable, value in saved:
            variable.assign(np.abs(value))
        _, grads = value_and_grads(lambda x: ops.sum(model(x, training=False)), variables, ones)
        linear = kernel_values(model)
    finally:
        for variable, value in saved:
            variable.assign(value)
    return {path: np.abs(ops.convert_to_numpy(grad).astype(np.float64) * linear[path])
            for path, grad in zip(layers, grads)}


def synflow_masks(model, sparsity, scope="global", iterations=100, input_shape=None,
                  rule=SALIENCY_COUNT_RULE):
    """Iterative SynFlow: `iterations` rounds of scoring and pruning.

    After round i the density is d_i = (1 - sparsity) ** (i / iterations), and
    each round keeps ``counting.kept_count(N, kept=d_i, rule)`` entries (N: the
    layer's or, globally, every layer's size), Synaptic-Flow's
    ``N - int((1 - d_i) * N)`` by default; each round ranks only the entries
    still kept. The model's masks are set as it goes and hold the result at the
    end.
    """
    layers = fixed_layers(model)
    density = density_of(sparsity)
    masks = {path: np.ones(layer.kernel_variable.shape, np.float32)
             for path, layer in layers.items()}
    set_masks(model, masks)
    for step in range(1, int(iterations) + 1):
        scores = synflow_scores(model, input_shape)
        eligible = {path: mask > 0 for path, mask in masks.items()}
        masks = select_masks(scores, sparsity, scope, eligible, rule,
                             density=density ** (step / int(iterations)))
        set_masks(model, masks)
    return masks
