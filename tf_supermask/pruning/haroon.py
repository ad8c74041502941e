"""Haroon's methods of pruning at initialization: K-starts and dissipating gradients.

- K-starts: k random masks at the target sparsity, each trained briefly from
  the same initial weights; the fittest mask is kept.
- Dissipating gradients: during the first epochs of training, remove the
  weights that stayed within a fraction of their initial value.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from tf_supermask.backend import gradient_function
from tf_supermask.layers import get_masks, set_masks
from tf_supermask.pruning.saliency import (SCOPES, _loss_fn, _seed_list, check_collapse,
                                           density_of, fixed_layers, kernel_values, random_masks,
                                           take_batches)
from tf_supermask.pruning.select import counts_for_fraction, top_masks

FITNESSES = ("magnitude", "gradient", "both")
SCHEDULES = ("geometric", "linear", "greedy")


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
