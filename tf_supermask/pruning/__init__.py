"""Pruning: mask selection and scoring, with no training drivers.

- ``select``: exact top-k selection per layer or global, mask files.
- ``criteria``: Zhou et al.'s mask criteria over initial and final weights.
- ``saliency``: scores at initialization (random, magnitude, SNIP, GraSP, SynFlow).
- ``haroon``: K-starts and dissipating gradients.
- ``at_init``: the pruning-at-initialization methods by name and their options.
- ``gradual``: magnitude pruning on tfmot schedules.

The drivers that chain training runs (lottery, fine-tuning, pruning at
initialization) live in ``tf_supermask.experiments``.
"""

from tf_supermask.pruning.select import (collapsed_layers, counts_for_fraction, shuffle_masks,
                                         top_masks)

__all__ = ["collapsed_layers", "counts_for_fraction", "shuffle_masks", "top_masks"]

from tf_supermask.pruning.saliency import (LayerCollapseError, LayerCollapseWarning,  # noqa: E402
                                           check_collapse, grasp_masks, grasp_scores,
                                           magnitude_scores, random_masks, select_masks,
                                           snip_scores, synflow_masks, synflow_scores)
from tf_supermask.pruning.haroon import (DissipatingCallback, dissipating_allowed,  # noqa: E402
                                         dissipating_calibrate, dissipating_step,
                                         fraction_for_sparsity, kstarts_fitness, kstarts_masks)
from tf_supermask.pruning.at_init import PRUNE_METHODS, PruneOptions, compute_masks  # noqa: E402

__all__ += ["PRUNE_METHODS", "DissipatingCallback", "LayerCollapseError", "LayerCollapseWarning",
            "PruneOptions", "check_collapse", "compute_masks", "dissipating_allowed",
            "dissipating_calibrate", "dissipating_step", "fraction_for_sparsity", "grasp_masks",
            "grasp_scores", "kstarts_fitness", "kstarts_masks", "magnitude_scores",
            "random_masks", "select_masks", "snip_scores", "synflow_masks", "synflow_scores"]

from tf_supermask.pruning.gradual import (GradualPruning, magnitude_masks,  # noqa: E402
                                          prune_by_magnitude, pruning_schedule, tfmot_schedules)

__all__ += ["GradualPruning", "magnitude_masks", "prune_by_magnitude", "pruning_schedule",
            "tfmot_schedules"]
