"""Pruning at initialization: the methods by name, their options, and the mask a run
starts from.

Methods (registered in ``PRUNE_METHODS``): ``random``, ``magnitude``,
``snip``, ``grasp``, ``synflow`` (scores in ``tf_supermask.pruning.saliency``),
``kstarts``, ``dissipating`` and ``kstarts_dissipating`` (Haroon's methods in
``tf_supermask.pruning.haroon``).

Haroon's methods follow the paper's reading by default, the earlier
behaviours are named choices:

- ``kstarts``: ``--kstarts_mode=continue`` (default) trains on from the
  winner's weights and optimizer state, and the winner's ``--kstarts_epochs``
  count inside the run's ``--epochs``; ``rewind`` retrains the winner's mask
  from the initial weights for the full ``--epochs``.
- ``dissipating``: ``--dissipating_target=none`` (default) removes every
  weight within ``--dissipating_fraction`` of its initial value at the end of
  each of the first ``--dissipating_epochs`` epochs; the sparsity reached is
  an outcome (``--sparsity`` is not used). ``calibrate`` first finds the
  fraction that reaches ``--sparsity`` (a replay of the dissipating epochs,
  ``dissipating_calibrate``), then removes by it. ``reach`` forces
  ``--sparsity`` at the last dissipating epoch (``--dissipating_schedule``).
- ``kstarts_dissipating``: K-starts keeps (1 - sparsity) ** split of the
  weights (with ``--kstarts_mode``), then dissipating acts during the first
  ``--dissipating_epochs`` epochs trained under the winner's mask, measuring
  each weight's change from its value at initialization (before K-starts),
  with ``--dissipating_target``.
"""

import dataclasses

import numpy as np

from tf_supermask.config import option
from tf_supermask.layers import set_masks
from tf_supermask.pruning.haroon import (DISSIPATING_TARGETS, FITNESSES, KSTARTS_MODES,
                                         SCHEDULES, DissipatingCallback, dissipating_calibrate,
                                         dissipating_search, kstarts_masks, restore, snapshot)
from tf_supermask.pruning.saliency import (SCOPES, _seed_list, check_collapse, density_of,
                                           fixed_layers, grasp_masks, grasp_scores,
                                           kernel_values, magnitude_scores, random_masks,
                                           select_masks, snip_scores, synflow_masks)
from tf_supermask.pruning.select import load_masks, shuffle_masks
from tf_supermask.registry import Registry

PRUNE_METHODS = Registry("pruning-at-initialization method")
SCOPE_CHOICES = ("auto",) + SCOPES
COLLAPSE_POLICIES = ("warn", "error")


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
    kstarts_mode: str = option("continue", "kstarts: continue (Haroon: no retraining): go on "
                                           "from the winner's trained weights and optimizer "
                                           "state, its --kstarts_epochs counting inside "
                                           "--epochs; rewind: train the winning mask from the "
                                           "initial weights for the full --epochs.",
                               KSTARTS_MODES)
    dissipating_epochs: int = option(2, "dissipating: removal happens at the end of each of the "
                                        "first this many epochs (trained under the K-starts "
                                        "winner's mask for kstarts_dissipating).")
    dissipating_fraction: float = option(0.1, "dissipating: a weight is removed while |w - "
                                              "w_init| <= fraction * |w_init| (ignored by "
                                              "--dissipating_target=calibrate).")
    dissipating_target: str = option("none", "dissipating: none (Haroon): remove by "
                                             "--dissipating_fraction, the sparsity reached is "
                                             "an outcome; calibrate: set the fraction that "
                                             "reaches --sparsity on a replay of the "
                                             "dissipating epochs, then remove by it; reach: "
                                             "force --sparsity at the last dissipating epoch "
                                             "(--dissipating_schedule).", DISSIPATING_TARGETS)
    dissipating_schedule: str = option("geometric", "dissipating_target=reach: kept count "
                                                    "allowed after removal epoch e of E, from "
                                                    "n0 kept to the target K: geometric n0 * (K "
                                                    "/ n0) ** (e / E), linear n0 - (n0 - K) * e "
                                                    "/ E, or greedy K (remove every removable "
                                                    "weight at once).", SCHEDULES)
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
                              ("kstarts_mode", KSTARTS_MODES),
                              ("dissipating_target", DISSIPATING_TARGETS),
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
                         options.kstarts_mode, verbose=0)


def _kstarts_info(info):
    # Continuing from the winner: its epochs were the run's first ones.
    if info["kstarts_mode"] == "continue":
        info["start_epoch"] = info["kstarts_epochs"]
    return info


def _dissipating_callback(options):
    return DissipatingCallback(options.sparsity, options.resolved_scope,
                               options.dissipating_epochs,
                               options.dissipating_fraction, options.dissipating_schedule,
                               options.collapse, options.dissipating_target)


@_method("kstarts")
class KStartsMethod(PruneMethod):
    def initial_masks(self, model, batches, options):
        masks, info = _kstarts(model, batches, options, options.sparsity)
        return masks, _kstarts_info(info)


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
        return masks, _kstarts_info(info)

    def callback(self, options):
        return _dissipating_callback(options)


def method_names():
    return PRUNE_METHODS.names()


def compute_masks(model, batches, options, steps_per_epoch=0, callback=None):
    """The mask a run trains under from its first step, and what the method reports.

    Runs `options.method` (or loads `options.mask_file`), applies the shuffle
    ablation, sets the masks on the model and checks for layer collapse.

    For the methods that act during training, `callback` (``make_callback``;
    None for library callers that start it themselves) is started here, with
    w_init the kernels at initialization and its removal epochs counted from
    the epoch training starts at; with ``dissipating_target=calibrate`` its
    fraction is found first (``dissipating_calibrate``). With shuffle the
    dissipating epochs are run here (``dissipating_search``) so that the final
    mask can be shuffled; a shuffled mask always trains from the initial
    weights and optimizer state, for the full epochs.

    Returns:
      (masks, info). ``info["start_epoch"]``, when present, is the epoch
      training goes on from (K-starts continuing from its winner).
    """
    method = PRUNE_METHODS.get(options.method)
    fixed_layers(model)
    initial = kernel_values(model)
    start = snapshot(model) if options.shuffle and not options.mask_file else None
    if options.mask_file:
        masks = load_masks(options.mask_file)
        set_masks(model, masks)
        info = {"mask_file": options.mask_file}
    else:
        masks, info = method.initial_masks(model, batches, options)
        set_masks(model, masks)
        if method.during_training and (options.shuffle or callback is not None):
            callback = method.callback(options) if options.shuffle else callback
            first_epoch = int(info.get("start_epoch", 0))
            if options.dissipating_target == "calibrate":
                fraction = dissipating_calibrate(model, batches, callback, initial, first_epoch,
                                                 steps_per_epoch)
                info["dissipating_fraction_calibrated"] = fraction
            callback.start(model, initial=initial, first_epoch=first_epoch)
            if options.shuffle:
                masks = dissipating_search(model, batches, callback, steps_per_epoch)
                info["dissipating_log"] = callback.log
    if start is not None:
        restore(model, start)
        info.pop("start_epoch", None)
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
