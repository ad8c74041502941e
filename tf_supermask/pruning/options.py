"""The options of pruning (their choices, and PruneOptions, the method part of
tf-supermask-prune-init's configuration), apart from the code that prunes.

This module imports neither Keras nor NumPy, so that a binary's ``--help`` lists
these flags at once; what an option is checked against (the registered methods)
is imported when it is checked.
"""

import dataclasses

from tf_supermask.choices import (COLLAPSE_POLICIES, DISSIPATING_SCHEDULES,  # noqa: F401
                                  DISSIPATING_TARGETS, FITNESSES, GRADUAL_SCHEDULES,
                                  KSTARTS_MODES, PRUNE_METHODS, SCOPE_CHOICES, SCOPES)
from tf_supermask.choices import PRUNE_METHOD_SCOPES as METHOD_SCOPES
from tf_supermask.config import ConfigGroup, option

# The choice lists live in tf_supermask.choices (re-exported here): SCOPES (one fraction
# per layer, or all masked weights ranked together); METHOD_SCOPES, the pruning-at-
# initialization methods (registered in tf_supermask.pruning.at_init) and the scope each
# uses under --scope=auto; Haroon's K-starts and dissipating options
# (tf_supermask.pruning.haroon); the tfmot schedules of gradual pruning.


def density_of(sparsity):
    """1 - sparsity without float noise (1 - 0.9 is 0.09999999999999998; this is 0.1)."""
    return round(1.0 - float(sparsity), 12)


@dataclasses.dataclass
class PruneOptions(ConfigGroup):
    """How a mask is chosen at initialization; every field is also a flag.

    ``sparsity`` is the fraction of masked weights PRUNED (the rest of the
    library speaks of ``k``, the fraction kept: k = 1 - sparsity).
    """

    method: str = option("random", "Pruning-at-initialization method: random, magnitude, snip, "
                         "grasp, synflow, kstarts, dissipating, kstarts_dissipating.",
                         PRUNE_METHODS)
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
                                                    "weight at once).", DISSIPATING_SCHEDULES)
    kstarts_dissipating_split: float = option(0.5, "kstarts_dissipating: share of the pruning, "
                                                   "in log density, done by K-starts: K-starts "
                                                   "keeps (1 - sparsity) ** split, dissipating "
                                                   "takes it to the target.")

    def __post_init__(self):
        pass  # as before groups: checked by validate() (its configuration's) on request

    def validate(self):
        """PruneOptions' own checks (``check`` adds the generic ones): validate_options."""
        PruneOptions.validate_options(self)

    def validate_options(self):
        """Raises a ValueError naming the flag for an unusable setting."""
        if self.method not in METHOD_SCOPES:
            raise ValueError(f"unknown pruning-at-initialization method {self.method!r}; "
                             f"choose one of: {', '.join(sorted(METHOD_SCOPES))}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"--sparsity is the fraction of weights pruned and must be in "
                             f"[0, 1), got {self.sparsity}")
        for name, choices in (("scope", SCOPE_CHOICES), ("kstarts_fitness", FITNESSES),
                              ("kstarts_mode", KSTARTS_MODES),
                              ("dissipating_target", DISSIPATING_TARGETS),
                              ("dissipating_schedule", DISSIPATING_SCHEDULES),
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
        return METHOD_SCOPES[self.method]
