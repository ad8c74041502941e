"""Pruning at initialization: masks chosen at (or just after) initialization.

Every method turns a freshly built model whose masked layers use the
``fixed`` mask mode into a binary mask per kernel (keyed by kernel variable
path, like ``tf_supermask.layers.get_masks``), removing the fraction
``sparsity`` of the weights either in each layer (``scope="layer"``) or
ranked over all masked layers at once (``scope="global"``). Scores are computed
with ``keras.ops`` and the gradient helper of ``tf_supermask.backend``, so the
methods run on any backend; the selection itself is NumPy
(``tf_supermask.pruning.select``).

Methods (registered in ``PRUNE_METHODS``):

- ``random``: uniform random scores.
- ``magnitude``: |w| at initialization.
- ``snip`` (Lee et al., 2019): |g * w| with g the loss gradient on a few
  batches (the sensitivity of the loss to each mask entry).
- ``grasp`` (Wang et al., 2020): S = -w * (H g), H the loss Hessian and g the
  loss gradient, by double backprop (exact, no finite differences); the weights
  with the HIGHEST S are removed, i.e. the lowest are kept.
- ``synflow`` (Tanaka et al., 2020): data-free; on the network with every
  parameter replaced by its absolute value, R = sum of the outputs for an
  all-ones input; scores |dR/dw * w|; repeated ``iterations`` times, the
  density after iteration i being density ** (i / iterations).
- ``kstarts`` (Haroon, 2022): k random masks at the target sparsity, each
  trained briefly from the same initial weights; the fittest mask is kept.
- ``dissipating`` (Haroon, 2022): during the first epochs of training, remove
  the weights that stayed within a fraction of their initial value.
- ``kstarts_dissipating``: K-starts to an intermediate sparsity, then
  dissipating to the target.
"""

import contextlib
import dataclasses
import warnings

import keras
import numpy as np
from keras import ops

from tf_supermask.backend import gradient_function, value_and_grads
from tf_supermask.config import option
from tf_supermask.layers import get_masks, masked_layers, set_masks
from tf_supermask.pruning.select import (collapsed_layers, counts_for_fraction, load_masks,
                                         shuffle_masks, top_masks)
from tf_supermask.registry import Registry

PRUNE_METHODS = Registry("pruning-at-initialization method")
SCOPES = ("layer", "global")
SCOPE_CHOICES = ("auto",) + SCOPES
FITNESSES = ("magnitude", "gradient", "both")
SCHEDULES = ("geometric", "linear", "greedy")
COLLAPSE_POLICIES = ("warn", "error")


class LayerCollapseWarning(UserWarning):
    """A mask keeps no weight of some layer: the network is cut there."""


class LayerCollapseError(ValueError):
    """Raised instead of the warning when collapse is an error."""


# ---------------------------------------------------------------------------
# Options of the methods (the method part of PruneInitConfig).


@dataclasses.dataclass
class PruneOptions:
    """How a mask is chosen at initialization; every field is also a flag.

    ``sparsity`` is the fraction of masked weights PRUNED (the rest of the
    library speaks of ``k``, the fraction kept: k = 1 - sparsity).
    """

    method: str = option("random", "Pruning-at-initialization method: random, magnitude, snip, "
                         "grasp, synflow, kstarts, dissipating, kstarts_dissipating.",
                         ("random", "magnitude", "snip", "grasp", "synflow", "kstarts",
                          "dissipating", "kstarts_dissipating"))
    sparsity: float = option(0.9, "Fraction of the masked weights PRUNED, in [0, 1) (weights "
                                  "remaining = 1 - sparsity).")
    scope: str = option("auto", "layer: prune the fraction --sparsity of every masked layer; "
                                "global: rank all masked weights together; auto: global for "
                                "magnitude, snip, grasp and synflow (as their papers), layer for "
                                "random, kstarts, dissipating and kstarts_dissipating.",
                                SCOPE_CHOICES)
    shuffle: bool = option(False, "Shuffle ablation (Frankle et al., 2021): move the kept "
                                  "entries of the method's (final) mask to random positions "
                                  "within each layer, then train from the initial weights under "
                                  "that mask.")
    mask_file: str = option("", "Take the mask from this .npz (keyed by kernel path, e.g. "
                                "another run's mask.npz) instead of running --method; --shuffle "
                                "still applies.")
    collapse: str = option("warn", "What to do when a mask keeps no weight of a layer: warn (and "
                                   "record it in results.json) or error.", COLLAPSE_POLICIES)
    snip_batches: int = option(1, "snip: training batches whose mean gradient gives |g * w|.")
    grasp_batches: int = option(1, "grasp: training batches for the gradient g and the product H "
                                   "g.")
    grasp_temperature: float = option(200.0, "grasp: logits are divided by this temperature (200 "
                                             "in Wang et al.'s code).")
    synflow_iterations: int = option(100, "synflow: pruning iterations; density after iteration "
                                          "i is (1 - sparsity) ** (i / iterations).")
    kstarts_k: int = option(5, "kstarts: number of random candidate masks.")
    kstarts_epochs: int = option(1, "kstarts: epochs each candidate trains before its fitness is "
                                    "measured.")
    kstarts_steps: int = option(0, "kstarts: cap on training steps per candidate epoch (0: whole "
                                   "epochs).")
    kstarts_fitness: str = option("both", "kstarts: fitness of a candidate: magnitude (of its "
                                          "kept weights after the brief training), gradient "
                                          "(|gradient| of its kept weights accumulated over an "
                                          "epoch of batches), or both (the mean of the two, each "
                                          "relative to the candidates' average).", FITNESSES)
    kstarts_gradient_batches: int = option(0, "kstarts: batches over which gradient magnitudes "
                                              "accumulate (0: one epoch).")
    kstarts_rewind: bool = option(True, "kstarts: train the winning mask from the initial "
                                        "weights (true) or go on from the winner's briefly "
                                        "trained weights and optimizer state (false).")
    dissipating_epochs: int = option(2, "dissipating: removal happens at the end of each of the "
                                        "first this many epochs; the target sparsity is reached "
                                        "at the end of the last of them.")
    dissipating_fraction: float = option(0.1, "dissipating: a weight is removable while |w - "
                                              "w_init| <= fraction * |w_init|.")
    dissipating_schedule: str = option("geometric", "dissipating: kept count allowed after "
                                                    "removal epoch e of E, from n0 kept to the "
                                                    "target K: geometric n0 * (K / n0) ** (e / "
                                                    "E), linear n0 - (n0 - K) * e / E, or greedy "
                                                    "K (remove every removable weight at once).",
                                                    SCHEDULES)
    kstarts_dissipating_split: float = option(0.5, "kstarts_dissipating: share of the pruning, "
                                                   "in log density, done by K-starts: K-starts "
                                                   "keeps (1 - sparsity) ** split, dissipating "
                                                   "takes it to the target.")

    def validate_options(self):
        """Raises a ValueError naming the flag for an unusable setting."""
        PRUNE_METHODS.get(self.method)
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"--sparsity is the fraction of weights pruned and must be in "
                             f"[0, 1), got {self.sparsity}")
        for name, choices in (("scope", SCOPE_CHOICES), ("kstarts_fitness", FITNESSES),
                              ("dissipating_schedule", SCHEDULES),
                              ("collapse", COLLAPSE_POLICIES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"--{name} must be one of {', '.join(choices)}, got "
                                 f"{getattr(self, name)!r}")
        for name in ("snip_batches", "grasp_batches", "synflow_iterations", "kstarts_k",
                     "kstarts_epochs", "dissipating_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("kstarts_steps", "kstarts_gradient_batches"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if self.grasp_temperature <= 0:
            raise ValueError(f"--grasp_temperature must be positive, got "
                             f"{self.grasp_temperature}")
        if self.dissipating_fraction < 0:
            raise ValueError(f"--dissipating_fraction must be 0 or more, got "
                             f"{self.dissipating_fraction}")
        if not 0.0 <= self.kstarts_dissipating_split <= 1.0:
            raise ValueError(f"--kstarts_dissipating_split must be in [0, 1], got "
                             f"{self.kstarts_dissipating_split}")

    @property
    def density(self):
        return density_of(self.sparsity)

    @property
    def resolved_scope(self):
        """The scope in force: `scope`, or the method's own default for "auto"."""
        if self.scope != "auto":
            return self.scope
        return PRUNE_METHODS.get(self.method).default_scope


# ---------------------------------------------------------------------------
# Shared helpers.


def density_of(sparsity):
    """1 - sparsity without float noise (1 - 0.9 is 0.09999999999999998; this is 0.1)."""
    return round(1.0 - float(sparsity), 12)


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


def select_masks(scores, sparsity, scope, eligible=None):
    """Keeps the highest scores so that exactly the fraction `sparsity` is pruned.

    Per layer each kernel keeps round((1 - sparsity) * size) entries (1 - sparsity
    taken to 12 decimals, so that 0.9 of 75 weights keeps round(7.5) = 8); globally
    round((1 - sparsity) * total size) entries are kept over all layers. With
    `eligible`, entries outside it are never kept (the counts are still
    fractions of the full layer sizes).
    """
    density = density_of(sparsity)
    if scope == "layer":
        return top_masks(scores, counts=counts_for_fraction(scores, density), eligible=eligible)
    if scope == "global":
        total = sum(int(np.size(score)) for score in scores.values())
        return top_masks(scores, total=int(round(density * total)), eligible=eligible)
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


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
    collapsed = collapsed_layers(masks)
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


def _seed_list(seed):
    return [int(part) for part in np.atleast_1d(seed)]


def random_scores(model, seed):
    """Uniform random scores from a generator seeded with `seed` (an int or a list of ints)."""
    rng = np.random.default_rng(_seed_list(seed) + [17])
    return {path: rng.random(np.shape(value)) for path, value in kernel_values(model).items()}


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


def grasp_masks(scores, sparsity, scope):
    """Removes the highest GraSP scores S, i.e. keeps the lowest."""
    return select_masks({path: -score for path, score in scores.items()}, sparsity, scope)


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


def synflow_masks(model, sparsity, scope="global", iterations=100, input_shape=None):
    """Iterative SynFlow: `iterations` rounds of scoring and pruning.

    After round i the density is (1 - sparsity) ** (i / iterations), counted as
    in ``select_masks``; each round ranks only the entries still kept. The
    model's masks are set as it goes and hold the result at the end.
    """
    layers = fixed_layers(model)
    density = density_of(sparsity)
    masks = {path: np.ones(layer.kernel_variable.shape, np.float32)
             for path, layer in layers.items()}
    set_masks(model, masks)
    for step in range(1, int(iterations) + 1):
        scores = synflow_scores(model, input_shape)
        eligible = {path: mask > 0 for path, mask in masks.items()}
        masks = select_masks(scores, 1.0 - density ** (step / int(iterations)), scope, eligible)
        set_masks(model, masks)
    return masks


# ---------------------------------------------------------------------------
# Model state snapshots (K-starts candidates and searches start from one state).


def _optimizer_scope(model):
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def snapshot(model):
    """Copies of the model's variables and its (built) optimizer's variables."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        with _optimizer_scope(model):
            optimizer.build(model.trainable_variables)
    weights = [np.array(ops.convert_to_numpy(v)) for v in model.weights]
    slots = ([np.array(ops.convert_to_numpy(v)) for v in optimizer.variables]
             if optimizer is not None else [])
    return weights, slots


def _data_epoch(batches):
    """The data pipeline's epoch counter (ArrayBatches), or None."""
    return getattr(batches, "epoch", None)


def _set_data_epoch(batches, epoch):
    # Every candidate (and the run after them) sees the same example order.
    if epoch is not None:
        batches.epoch = epoch


def restore(model, state):
    """Puts back a ``snapshot``."""
    weights, slots = state
    for variable, value in zip(model.weights, weights):
        variable.assign(value)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        for variable, value in zip(optimizer.variables, slots):
            variable.assign(value)


# ---------------------------------------------------------------------------
# K-starts.


def kstarts_fitness(magnitudes, gradients, fitness):
    """Fitness of each candidate from per-layer statistics.

    Args:
      magnitudes: (k, layers) mean |w| of each candidate's kept weights per layer.
      gradients: (k, layers) mean accumulated |gradient| of the kept weights.
      fitness: "magnitude", "gradient" or "both".

    Returns:
      (k,) fitness values, higher is fitter. Each statistic is divided by its
      mean over the candidates in that layer, then averaged over layers, so
      every layer counts the same whatever its scale; "both" averages the two.
    """
    def relative(stats):
        stats = np.asarray(stats, np.float64)
        mean = stats.mean(axis=0, keepdims=True)
        return (stats / np.where(mean > 0, mean, 1.0)).mean(axis=1)

    if fitness == "magnitude":
        return relative(magnitudes)
    if fitness == "gradient":
        return relative(gradients)
    if fitness == "both":
        return 0.5 * (relative(magnitudes) + relative(gradients))
    raise ValueError(f"fitness must be one of {FITNESSES}, got {fitness!r}")


def random_masks(model, sparsity, scope, seed):
    """A random mask at exactly the given sparsity."""
    return select_masks(random_scores(model, seed), sparsity, scope)


def kstarts_masks(model, batches, sparsity, scope="layer", k=5, epochs=1, fitness="both",
                  seed=0, steps_per_epoch=0, gradient_batches=0, rewind=True, verbose=0):
    """K-starts: the fittest of `k` random masks at `sparsity`.

    Each candidate starts from the model's current weights and optimizer
    state (and, for ``ArrayBatches``, the same example order), trains `epochs`
    epochs under its mask (``model.fit``; the model must
    be compiled), then is measured: the mean |w| of its kept weights per layer,
    and the |gradient| of its kept weights accumulated over `gradient_batches`
    batches (0: one epoch) at the trained weights. The fittest candidate under
    `fitness` wins. With `rewind` the model goes back to its starting weights
    (and optimizer state) under the winning mask; without it, it keeps the
    winner's trained weights and optimizer state.

    Returns:
      (masks, info) with info holding every candidate's statistics and
      fitness and the winner's index.
    """
    layers = fixed_layers(model)
    start = snapshot(model)
    paths = list(layers)
    variables = [layers[path].kernel_variable for path in paths]
    grad_fn = gradient_function(_loss_fn(model), variables, compile=True)
    initial = kernel_values(model)
    candidates, magnitudes, gradients, states = [], [], [], []
    steps = int(steps_per_epoch) or None
    data_epoch = _data_epoch(batches)
    for index in range(int(k)):
        restore(model, start)
        _set_data_epoch(batches, data_epoch)
        masks = random_masks(model, sparsity, scope, seed=_seed_list(seed) + [1, index])
        set_masks(model, masks)
        model.fit(batches, epochs=int(epochs), steps_per_epoch=steps, verbose=verbose,
                  shuffle=False)
        trained = kernel_values(model)
        magnitudes.append([np.abs(trained[p])[masks[p] > 0].mean() / np.abs(initial[p]).mean()
                           if masks[p].any() else 0.0 for p in paths])
        accumulated = [np.zeros(masks[p].shape) for p in paths]
        data = take_batches(batches, gradient_batches)
        for x, y in data:
            _, grads = grad_fn(x, y)
            for total, grad in zip(accumulated, grads):
                total += np.abs(ops.convert_to_numpy(grad))
        gradients.append([accumulated[i][masks[p] > 0].mean() if masks[p].any() else 0.0
                          for i, p in enumerate(paths)])
        candidates.append(masks)
        states.append(None if rewind else snapshot(model))
    scores = kstarts_fitness(magnitudes, gradients, fitness)
    best = int(np.argmax(scores))
    _set_data_epoch(batches, data_epoch)
    restore(model, start if rewind else states[best])
    set_masks(model, candidates[best])
    info = {"kstarts_fitness": [float(s) for s in scores], "kstarts_chosen": best,
            "kstarts_magnitude": [[float(v) for v in row] for row in magnitudes],
            "kstarts_gradient": [[float(v) for v in row] for row in gradients],
            "kstarts_layers": paths}
    return candidates[best], info


# ---------------------------------------------------------------------------
# Dissipating gradients.


def relative_change(initial, current):
    """|w - w_init| / |w_init| (0 where neither moved from 0, inf where w_init = 0 moved)."""
    initial = np.asarray(initial, np.float64)
    moved = np.abs(np.asarray(current, np.float64) - initial)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = moved / np.abs(initial)
    return np.where(moved == 0, 0.0, change)


def dissipating_step(masks, initial, current, fraction, allowed, scope="layer", force=False):
    """One removal: kept weights that stayed within `fraction` of their initial value.

    A kept weight is removable when |w - w_init| <= fraction * |w_init|. At most
    ``kept - allowed`` weights go (per layer, or in total for scope="global"),
    the least moved (smallest relative change) first; with `force` the
    removal reaches exactly `allowed`, taking the least moved weights even
    beyond the fraction.

    Args:
      masks: {path: current 0/1 mask}.
      initial, current: {path: kernel values} at the start of training and now.
      fraction: the removal threshold, relative to |w_init|.
      allowed: {path: kept count} (per layer) or an int (global).
      scope: "layer" or "global".
      force: reach `allowed` exactly.

    Returns:
      (new masks, {"removed": n, "removable": n, "forced": n}).
    """
    change = {path: relative_change(initial[path], current[path]) for path in masks}
    kept = {path: np.asarray(masks[path]) > 0 for path in masks}
    removable = {path: kept[path] & (change[path] <= fraction) for path in masks}
    n_removable = {path: int(removable[path].sum()) for path in masks}
    n_kept = {path: int(kept[path].sum()) for path in masks}
    if scope == "layer":
        remove = {path: max(0, n_kept[path] - int(allowed[path])) for path in masks}
        if not force:
            remove = {path: min(remove[path], n_removable[path]) for path in masks}
        new = top_masks(change, counts={p: n_kept[p] - remove[p] for p in masks}, eligible=kept)
        removed = sum(remove.values())
    elif scope == "global":
        removed = max(0, sum(n_kept.values()) - int(allowed))
        if not force:
            removed = min(removed, sum(n_removable.values()))
        new = top_masks(change, total=sum(n_kept.values()) - removed, eligible=kept)
    else:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    within = sum(int((removable[p] & (new[p] == 0)).sum()) for p in masks)
    return new, {"removed": int(removed), "removable": int(sum(n_removable.values())),
                 "forced": int(removed) - within}


def dissipating_allowed(start, target, epoch, epochs, schedule):
    """Kept count allowed after removal epoch `epoch` (1..epochs), from `start` to `target`.

    geometric: start * (target / start) ** (epoch / epochs); linear: start -
    (start - target) * epoch / epochs; greedy: target. Every schedule gives
    exactly `target` at epoch == epochs, and never less than `target`.
    """
    if epoch >= epochs or schedule == "greedy" or start <= target:
        return int(target)
    t = epoch / epochs
    if schedule == "geometric":
        value = start * (target / start) ** t if target > 0 else start * (1 - t)
    elif schedule == "linear":
        value = start - (start - target) * t
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return max(int(target), int(round(value)))


class DissipatingCallback(keras.callbacks.Callback):
    """Dissipating gradients during the first `epochs` epochs of training.

    ``start(model)`` records the initial kernels and the kept counts to start
    from (the model's current masks); at the end of each epoch e = 1..epochs
    the kept weights that stayed within `fraction` of their initial value are
    removed, down to at most the schedule's allowance (``dissipating_allowed``),
    least moved first. At the end of epoch `epochs` the removal is forced to
    reach exactly round((1 - sparsity) * size) kept weights per layer (or in
    total for the global scope): if too few weights stayed within the fraction,
    the least moved of the others go too. ``log`` records each epoch.
    """

    def __init__(self, sparsity, scope="layer", epochs=2, fraction=0.1, schedule="geometric",
                 collapse="warn"):
        super().__init__()
        self.sparsity = float(sparsity)
        self.scope = scope
        self.epochs = int(epochs)
        self.fraction = float(fraction)
        self.schedule = schedule
        self.collapse = collapse
        self.initial = None
        self.log = []
        self.collapsed = []

    def start(self, model):
        """Takes the model's current kernels as w_init and its masks as the starting point."""
        masks = get_masks(model)
        self.initial = kernel_values(model)
        self.sizes = {path: int(np.size(mask)) for path, mask in masks.items()}
        self.start_kept = {path: int(np.sum(mask)) for path, mask in masks.items()}
        self.target = counts_for_fraction(self.sizes, density_of(self.sparsity))
        self.target_total = int(round(density_of(self.sparsity) * sum(self.sizes.values())))

    def allowed(self, epoch):
        if self.scope == "global":
            return dissipating_allowed(sum(self.start_kept.values()), self.target_total, epoch,
                                       self.epochs, self.schedule)
        return {path: dissipating_allowed(self.start_kept[path], self.target[path], epoch,
                                          self.epochs, self.schedule) for path in self.sizes}

    def on_epoch_end(self, epoch, logs=None):
        if self.initial is None:
            raise RuntimeError("DissipatingCallback.start(model) was not called")
        step = epoch + 1
        if step > self.epochs:
            return
        masks, stats = dissipating_step(get_masks(self.model), self.initial,
                                        kernel_values(self.model), self.fraction,
                                        self.allowed(step), self.scope, force=step == self.epochs)
        set_masks(self.model, masks)
        kept = sum(int(mask.sum()) for mask in masks.values())
        self.log.append({"epoch": step, "weights_remaining": kept / sum(self.sizes.values()),
                         **stats})
        for path in check_collapse(masks, self.collapse, f"dissipating (epoch {step})"):
            if path not in self.collapsed:
                self.collapsed.append(path)


def dissipating_search(model, batches, callback, steps_per_epoch=0, verbose=0):
    """Runs the dissipating epochs on the model and returns the final masks.

    The model's weights and optimizer state are put back afterwards (its masks
    stay at the result). Used when the final mask is needed before training:
    the shuffle ablation.
    """
    state = snapshot(model)
    data_epoch = _data_epoch(batches)
    callback.start(model)
    model.fit(batches, epochs=callback.epochs, steps_per_epoch=int(steps_per_epoch) or None,
              verbose=verbose, shuffle=False, callbacks=[callback])
    masks = get_masks(model)
    restore(model, state)
    _set_data_epoch(batches, data_epoch)
    set_masks(model, masks)
    return masks


# ---------------------------------------------------------------------------
# The registered methods.


class PruneMethod:
    """A method: ``initial_masks`` before training, optionally a callback during it."""

    during_training = False
    default_scope = "layer"

    def initial_masks(self, model, batches, options):
        """(masks, info) to train under from the start."""
        raise NotImplementedError

    def callback(self, options):
        """A ``DissipatingCallback`` for methods that keep pruning while training, else None."""
        return None


def _method(name):
    def register(cls):
        PRUNE_METHODS.register(name)(cls())
        return cls

    return register


@_method("random")
class RandomMethod(PruneMethod):
    def initial_masks(self, model, batches, options):
        return random_masks(model, options.sparsity, options.resolved_scope,
                            _options_seed(options)), {}


@_method("magnitude")
class MagnitudeMethod(PruneMethod):
    default_scope = "global"

    def initial_masks(self, model, batches, options):
        scores = magnitude_scores(model)
        return select_masks(scores, options.sparsity, options.resolved_scope), {}


@_method("snip")
class SnipMethod(PruneMethod):
    default_scope = "global"

    def initial_masks(self, model, batches, options):
        scores = snip_scores(model, batches, options.snip_batches)
        return select_masks(scores, options.sparsity, options.resolved_scope), {}


@_method("grasp")
class GraspMethod(PruneMethod):
    default_scope = "global"

    def initial_masks(self, model, batches, options):
        scores = grasp_scores(model, batches, options.grasp_batches, options.grasp_temperature)
        return grasp_masks(scores, options.sparsity, options.resolved_scope), {}


@_method("synflow")
class SynflowMethod(PruneMethod):
    default_scope = "global"

    def initial_masks(self, model, batches, options):
        masks = synflow_masks(model, options.sparsity, options.resolved_scope,
                              options.synflow_iterations)
        return masks, {}


def _options_seed(options):
    return getattr(options, "seed", 0)


def _kstarts(model, batches, options, sparsity):
    return kstarts_masks(model, batches, sparsity, options.resolved_scope, options.kstarts_k,
                         options.kstarts_epochs, options.kstarts_fitness, _options_seed(options),
                         options.kstarts_steps, options.kstarts_gradient_batches,
                         options.kstarts_rewind, verbose=0)


def _dissipating_callback(options):
    return DissipatingCallback(options.sparsity, options.resolved_scope,
                               options.dissipating_epochs,
                               options.dissipating_fraction, options.dissipating_schedule,
                               options.collapse)


@_method("kstarts")
class KStartsMethod(PruneMethod):
    def initial_masks(self, model, batches, options):
        return _kstarts(model, batches, options, options.sparsity)


@_method("dissipating")
class DissipatingMethod(PruneMethod):
    during_training = True

    def initial_masks(self, model, batches, options):
        layers = fixed_layers(model)
        return {path: np.ones(layer.kernel_variable.shape, np.float32)
                for path, layer in layers.items()}, {}

    def callback(self, options):
        return _dissipating_callback(options)


@_method("kstarts_dissipating")
class KStartsDissipatingMethod(PruneMethod):
    during_training = True

    def initial_masks(self, model, batches, options):
        density = options.density ** float(options.kstarts_dissipating_split)
        masks, info = _kstarts(model, batches, options, 1.0 - density)
        info["kstarts_sparsity"] = 1.0 - density
        return masks, info

    def callback(self, options):
        return _dissipating_callback(options)


def method_names():
    return PRUNE_METHODS.names()


def compute_masks(model, batches, options, steps_per_epoch=0):
    """The mask a run trains under from its first step, and what the method reports.

    Runs `options.method` (or loads `options.mask_file`), applies the shuffle
    ablation, sets the masks on the model and checks for layer collapse. For
    the methods that act during training, without shuffle the returned mask is
    the starting one and ``options``'s callback (``make_callback``) does the
    rest; with shuffle the dissipating epochs are run here first (weights put
    back afterwards) so that the final mask can be shuffled.

    Returns:
      (masks, info).
    """
    method = PRUNE_METHODS.get(options.method)
    fixed_layers(model)
    if options.mask_file:
        masks = load_masks(options.mask_file)
        set_masks(model, masks)
        info = {"mask_file": options.mask_file}
    else:
        masks, info = method.initial_masks(model, batches, options)
        set_masks(model, masks)
        if method.during_training and options.shuffle:
            callback = method.callback(options)
            masks = dissipating_search(model, batches, callback, steps_per_epoch)
            info["dissipating_log"] = callback.log
    if options.shuffle:
        masks = shuffle_masks(masks, seed=_seed_list(_options_seed(options)) + [23])
        set_masks(model, masks)
    info["collapsed_layers"] = check_collapse(masks, options.collapse,
                                              f"the {options.method} mask")
    return masks, info


def make_callback(options):
    """The callback pruning during training, or None (shuffled or loaded masks are fixed)."""
    if options.shuffle or options.mask_file:
        return None
    return PRUNE_METHODS.get(options.method).callback(options)
