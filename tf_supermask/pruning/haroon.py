"""Haroon's methods of pruning at initialization: K-starts and dissipating gradients.

Haroon ("What to Prune and What Not to Prune at Initialization", arXiv
2209.02201) has no public code; we follow its abstract.

- K-starts: k random masks at the target sparsity, each trained briefly from
  the same initial weights; the fittest mask is kept and, as the paper says
  retraining is not needed, training goes on from the winner's trained
  weights (``mode="continue"``; ``"rewind"`` restarts the winner from the
  initial weights, our earlier default).
- Dissipating gradients: during the first epochs of training, remove the
  weights that stayed within a fraction of their initial value; the sparsity
  reached is an outcome of that fraction (``target="none"``).
  ``fraction_for_sparsity`` gives the fraction that reaches a target on given
  weights, ``target="calibrate"`` finds it for a run by a replay of the
  dissipating epochs, and ``target="reach"`` forces a target sparsity (our
  earlier default).
"""

import contextlib

import keras
import numpy as np
from keras import ops

from tf_supermask.backend import gradient_function
from tf_supermask.layers import get_masks, set_masks
from tf_supermask.pruning.options import (DISSIPATING_SCHEDULES, DISSIPATING_TARGETS, FITNESSES,
                                          KSTARTS_MODES, SCOPES, density_of)
from tf_supermask.pruning.saliency import (_loss_fn, check_collapse, fixed_layers,
                                           kernel_values, random_masks, take_batches)
from tf_supermask.counting import kept_counts
from tf_supermask.sparsity import Mask
from tf_supermask import streams

# Haroon's paper has no public code: its counts are round(density x size) (our choice).
HAROON_COUNT_RULE = "nearest"


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
                  seed=0, steps_per_epoch=0, gradient_batches=0, mode="continue", verbose=0):
    """K-starts: the fittest of `k` random masks at `sparsity`.

    Each candidate starts from the model's current weights and optimizer
    state (and, for ``ArrayBatches``, the same example order), trains `epochs`
    epochs under its mask (``model.fit``; the model must
    be compiled), then is measured: the mean |w| of its kept weights per layer,
    and the |gradient| of its kept weights accumulated over `gradient_batches`
    batches (0: one epoch) at the trained weights. The fittest candidate under
    `fitness` wins.

    With ``mode="continue"`` (Haroon: no retraining) the model keeps the
    winner's trained weights and optimizer state (its iteration count, so a
    learning-rate schedule goes on where the winner's epochs left it); the
    winner's `epochs` are then epochs of the run's budget. With ``"rewind"``
    the model goes back to its starting weights and optimizer state under the
    winning mask, and the candidates' training is discarded.

    Returns:
      (masks, info) with info holding every candidate's statistics and
      fitness, the winner's index, the mode, ``kstarts_epochs`` and the
      winner's per-epoch training history (``kstarts_history``).
    """
    if mode not in KSTARTS_MODES:
        raise ValueError(f"mode must be one of {KSTARTS_MODES}, got {mode!r}")
    layers = fixed_layers(model)
    start = snapshot(model)
    paths = list(layers)
    variables = [layers[path].kernel_variable for path in paths]
    grad_fn = gradient_function(_loss_fn(model), variables, compile=True)
    initial = kernel_values(model)
    candidates, magnitudes, gradients, states, histories = [], [], [], [], []
    steps = int(steps_per_epoch) or None
    data_epoch = _data_epoch(batches)
    for index in range(int(k)):
        restore(model, start)
        _set_data_epoch(batches, data_epoch)
        masks = random_masks(model, sparsity, scope,
                             seed=streams.seed("kstarts_candidate", seed, index),
                             rule=HAROON_COUNT_RULE)
        set_masks(model, masks)
        history = model.fit(batches, epochs=int(epochs), steps_per_epoch=steps, verbose=verbose,
                            shuffle=False)
        histories.append({key: [float(v) for v in values]
                          for key, values in history.history.items() if "/" not in key})
        trained = kernel_values(model)
        # The candidate's state is taken before the gradient measurement, which
        # only reads the model.
        states.append(snapshot(model) if mode == "continue" else None)
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
    scores = kstarts_fitness(magnitudes, gradients, fitness)
    best = int(np.argmax(scores))
    _set_data_epoch(batches, data_epoch)
    restore(model, start if mode == "rewind" else states[best])
    set_masks(model, candidates[best])
    info = {"kstarts_fitness": [float(s) for s in scores], "kstarts_chosen": best,
            "kstarts_magnitude": [[float(v) for v in row] for row in magnitudes],
            "kstarts_gradient": [[float(v) for v in row] for row in gradients],
            "kstarts_layers": paths, "kstarts_mode": mode, "kstarts_epochs": int(epochs),
            "kstarts_history": histories[best]}
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


def _per_path(value, path):
    return value[path] if isinstance(value, dict) else value


def dissipating_step(masks, initial, current, fraction, allowed=None, scope="layer",
                     force=False):
    """One removal: kept weights that stayed within `fraction` of their initial value.

    A kept weight is removable when |w - w_init| <= fraction * |w_init|. With
    `allowed` None every removable weight goes (Haroon's rule). Otherwise at
    most ``kept - allowed`` weights go (per layer, or in total for
    scope="global"), the least moved (smallest relative change) first; with
    `force` the removal reaches exactly `allowed`, taking the least moved
    weights even beyond the fraction.

    Args:
      masks: {path: current 0/1 mask}.
      initial, current: {path: kernel values} at the start of training and now.
      fraction: the removal threshold, relative to |w_init|: one number, or
        {path: number} (a fraction per layer).
      allowed: None, {path: kept count} (per layer) or an int (global).
      scope: "layer" or "global" (used with `allowed`).
      force: reach `allowed` exactly.

    Returns:
      (new masks, {"removed": n, "removable": n, "forced": n}).
    """
    change = {path: relative_change(initial[path], current[path]) for path in masks}
    kept = {path: np.asarray(masks[path]) > 0 for path in masks}
    removable = {path: kept[path] & (change[path] <= _per_path(fraction, path))
                 for path in masks}
    n_removable = {path: int(removable[path].sum()) for path in masks}
    n_kept = {path: int(kept[path].sum()) for path in masks}
    if allowed is None:
        new = {path: (kept[path] & ~removable[path]).astype(np.float32) for path in masks}
        removed = sum(n_removable.values())
    elif scope == "layer":
        remove = {path: max(0, n_kept[path] - int(allowed[path])) for path in masks}
        if not force:
            remove = {path: min(remove[path], n_removable[path]) for path in masks}
        new = Mask.top(change, counts={p: n_kept[p] - remove[p] for p in masks}, eligible=kept)
        removed = sum(remove.values())
    elif scope == "global":
        removed = max(0, sum(n_kept.values()) - int(allowed))
        if not force:
            removed = min(removed, sum(n_removable.values()))
        new = Mask.top(change, total=sum(n_kept.values()) - removed, eligible=kept)
    else:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    within = sum(int((removable[p] & (new[p] == 0)).sum()) for p in masks)
    return new, {"removed": int(removed), "removable": int(sum(n_removable.values())),
                 "forced": int(removed) - within}


def _fraction_removing(values, remove):
    """A threshold f removing exactly the `remove` smallest of `values` under `<= f`
    (more only where values tie at the boundary)."""
    values = np.sort(np.asarray(values, np.float64).reshape(-1))
    if remove <= 0:
        # Nothing should go; weights that never moved (change 0) go under any f >= 0.
        return float(values[0] / 2) if len(values) and values[0] > 0 else 0.0
    if remove >= len(values):
        return float(values[-1]) if len(values) else 0.0
    low, high = values[remove - 1], values[remove]
    if low == high or not np.isfinite(high):
        return float(low)
    return float(low + (high - low) / 2)


def fraction_for_changes(changes, sparsity, masks=None, scope="global"):
    """The dissipating fraction whose removal, on these relative changes, reaches `sparsity`.

    Closed form: with the kept weights' relative changes sorted, removing the r
    least moved needs a fraction between the r-th and (r+1)-th change; the
    midpoint is returned. The count is exact unless changes tie at that
    boundary (counting granularity).

    Args:
      changes: {path: relative change |w - w_init| / |w_init|} (``relative_change``).
      sparsity: target fraction of all masked weights pruned.
      masks: {path: 0/1 mask} of the weights still kept (None: all).
      scope: "global": one fraction for the whole net, reaching the overall
        target; "layer": {path: fraction}, each layer reaching the target.

    Returns:
      A float (global) or {path: float} (layer).
    """
    density = density_of(sparsity)
    kept = {path: (np.asarray(masks[path]) > 0 if masks is not None
                   else np.ones(np.shape(changes[path]), bool)) for path in changes}
    sizes = {path: int(np.size(changes[path])) for path in changes}
    if scope == "global":
        values = np.concatenate([np.asarray(changes[p])[kept[p]].reshape(-1) for p in changes])
        target = kept_counts(sizes, kept=density, scope="global", rule=HAROON_COUNT_RULE)
        return _fraction_removing(values, len(values) - target["total"])
    if scope == "layer":
        targets = kept_counts(sizes, kept=density, rule=HAROON_COUNT_RULE)["counts"]
        return {path: _fraction_removing(np.asarray(changes[path])[kept[path]],
                                         int(kept[path].sum()) - targets[path])
                for path in changes}
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def fraction_for_sparsity(initial, current, sparsity, masks=None, scope="global"):
    """``fraction_for_changes`` on the relative changes from `initial` to `current` kernels."""
    changes = {path: relative_change(initial[path], current[path]) for path in initial}
    return fraction_for_changes(changes, sparsity, masks, scope)


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
        raise ValueError(f"schedule must be one of {DISSIPATING_SCHEDULES}, got {schedule!r}")
    return max(int(target), int(round(value)))


class DissipatingCallback(keras.callbacks.Callback):
    """Dissipating gradients during the first `epochs` epochs of training.

    ``start(model)`` records the initial kernels (w_init) and the kept counts
    to start from (the model's current masks). At the end of each of the
    first `epochs` epochs (counted from ``first_epoch``) the kept weights that
    stayed within `fraction` of their initial value are removed.

    target:
      "none" (Haroon's reading, the default): every such weight goes; the
        sparsity reached is an outcome of `fraction` (``log`` records it).
      "calibrate": the same rule; `fraction` was set beforehand to reach
        `sparsity` (``dissipating_calibrate``); `sparsity` is not forced.
      "reach" (our earlier default): at most the schedule's allowance goes
        each epoch (``dissipating_allowed``), least moved first, and at the end
        of the last removal epoch the removal is forced to reach exactly
        round((1 - sparsity) * size) kept weights per layer (or in total for
        the global scope): if too few weights stayed within the fraction, the
        least moved of the others go too.
    """

    def __init__(self, sparsity, scope="layer", epochs=2, fraction=0.1, schedule="geometric",
                 collapse="warn", target="none"):
        super().__init__()
        if target not in DISSIPATING_TARGETS:
            raise ValueError(f"target must be one of {DISSIPATING_TARGETS}, got {target!r}")
        self.sparsity = float(sparsity)
        self.scope = scope
        self.epochs = int(epochs)
        self.fraction = fraction
        self.schedule = schedule
        self.collapse = collapse
        self.target_mode = target
        self.first_epoch = 0
        self.initial = None
        self.log = []
        self.collapsed = []

    def start(self, model, initial=None, first_epoch=0):
        """Takes `initial` kernels (default: the model's current ones) as w_init and the
        model's masks as the starting point; removal epochs count from `first_epoch`
        (the fit epoch index training starts at)."""
        masks = get_masks(model)
        self.initial = kernel_values(model) if initial is None else dict(initial)
        self.first_epoch = int(first_epoch)
        self.log = []
        self.sizes = {path: int(np.size(mask)) for path, mask in masks.items()}
        self.start_kept = {path: int(np.sum(mask)) for path, mask in masks.items()}
        density = density_of(self.sparsity)
        self.target = kept_counts(self.sizes, kept=density, rule=HAROON_COUNT_RULE)["counts"]
        self.target_total = kept_counts(self.sizes, kept=density, scope="global",
                                        rule=HAROON_COUNT_RULE)["total"]

    def allowed(self, epoch):
        if self.target_mode != "reach":
            return None
        if self.scope == "global":
            return dissipating_allowed(sum(self.start_kept.values()), self.target_total, epoch,
                                       self.epochs, self.schedule)
        return {path: dissipating_allowed(self.start_kept[path], self.target[path], epoch,
                                          self.epochs, self.schedule) for path in self.sizes}

    def on_epoch_end(self, epoch, logs=None):
        if self.initial is None:
            raise RuntimeError("DissipatingCallback.start(model) was not called")
        step = epoch + 1 - self.first_epoch
        if not 1 <= step <= self.epochs:
            return
        masks, stats = dissipating_step(get_masks(self.model), self.initial,
                                        kernel_values(self.model), self.fraction,
                                        self.allowed(step), self.scope,
                                        force=self.target_mode == "reach" and step == self.epochs)
        set_masks(self.model, masks)
        kept = sum(int(mask.sum()) for mask in masks.values())
        self.log.append({"epoch": step, "weights_remaining": kept / sum(self.sizes.values()),
                         **stats})
        for path in check_collapse(masks, self.collapse, f"dissipating (epoch {step})"):
            if path not in self.collapsed:
                self.collapsed.append(path)


class _ChangeRecorder(keras.callbacks.Callback):
    """Per weight, the smallest relative change from `initial` seen at an epoch end."""

    def __init__(self, initial):
        super().__init__()
        self.initial = initial
        self.smallest = None

    def on_epoch_end(self, epoch, logs=None):
        current = kernel_values(self.model)
        change = {path: relative_change(self.initial[path], current[path])
                  for path in self.initial}
        self.smallest = change if self.smallest is None else {
            path: np.minimum(self.smallest[path], change[path]) for path in change}


def dissipating_calibrate(model, batches, callback, initial=None, first_epoch=0,
                          steps_per_epoch=0, verbose=0):
    """Sets `callback.fraction` to the fraction that should reach `callback.sparsity`.

    Replays the dissipating epochs from the model's current state without
    removing anything (same example order as the run: the data epoch is set to
    `first_epoch`), records per weight its smallest relative change at those
    epoch ends (a weight within the band at any removal epoch would be
    removed), and takes ``fraction_for_changes`` of those at the callback's
    sparsity and scope. Weights, optimizer state and masks are put back.
    The run then removes by that fraction: removal changes training, so the
    sparsity reached is close to the target but not forced.

    Returns:
      The fraction (a float, or {path: float} for the layer scope).
    """
    state = snapshot(model)
    masks = get_masks(model)
    data_epoch = _data_epoch(batches)
    _set_data_epoch(batches, first_epoch if data_epoch is not None else None)
    recorder = _ChangeRecorder(kernel_values(model) if initial is None else initial)
    model.fit(batches, epochs=callback.epochs, steps_per_epoch=int(steps_per_epoch) or None,
              verbose=verbose, shuffle=False, callbacks=[recorder])
    restore(model, state)
    set_masks(model, masks)
    _set_data_epoch(batches, data_epoch)
    callback.fraction = fraction_for_changes(recorder.smallest, callback.sparsity, masks,
                                             callback.scope)
    return callback.fraction


def dissipating_search(model, batches, callback, steps_per_epoch=0, verbose=0):
    """Runs the dissipating epochs on the model and returns the final masks.

    `callback` must be started (``callback.start``). The model's weights and
    optimizer state are put back afterwards (its masks stay at the result).
    Used when the final mask is needed before training: the shuffle ablation.
    """
    state = snapshot(model)
    data_epoch = _data_epoch(batches)
    _set_data_epoch(batches, callback.first_epoch if data_epoch is not None else None)
    model.fit(batches, epochs=callback.first_epoch + callback.epochs,
              initial_epoch=callback.first_epoch,
              steps_per_epoch=int(steps_per_epoch) or None,
              verbose=verbose, shuffle=False, callbacks=[callback])
    masks = get_masks(model)
    restore(model, state)
    _set_data_epoch(batches, data_epoch)
    set_masks(model, masks)
    return masks
