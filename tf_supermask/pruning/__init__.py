"""Pruning: choosing binary masks from scores (lottery tickets, pruning at initialization)."""

from tf_supermask.pruning.select import (collapsed_layers, counts_for_fraction, shuffle_masks,
                                         top_masks)

__all__ = ["collapsed_layers", "counts_for_fraction", "shuffle_masks", "top_masks"]

from tf_supermask.pruning.init_methods import (PRUNE_METHODS, DissipatingCallback,  # noqa: E402
                                               LayerCollapseError, LayerCollapseWarning,
                                               PruneOptions, check_collapse, compute_masks,
                                               dissipating_allowed, dissipating_step,
                                               grasp_masks, grasp_scores, kstarts_fitness,
                                               kstarts_masks, magnitude_scores, random_masks,
                                               select_masks, snip_scores, synflow_masks,
                                               synflow_scores)
from tf_supermask.pruning.init_run import (  # noqa: E402
    PruneInitConfig, default_prune_init_run_dir, prune_init)

__all__ += ["PRUNE_METHODS", "DissipatingCallback", "LayerCollapseError", "LayerCollapseWarning",
            "PruneOptions", "PruneInitConfig", "check_collapse", "compute_masks",
            "default_prune_init_run_dir", "dissipating_allowed", "dissipating_step",
            "grasp_masks", "grasp_scores", "kstarts_fitness", "kstarts_masks",
            "magnitude_scores", "prune_init", "random_masks", "select_masks", "snip_scores",
            "synflow_masks", "synflow_scores"]

from tf_supermask.pruning.gradual import (GradualPruning, magnitude_masks,  # noqa: E402
                                          prune_by_magnitude, pruning_schedule, tfmot_schedules)

__all__ += ["GradualPruning", "magnitude_masks", "prune_by_magnitude", "pruning_schedule",
            "tfmot_schedules"]
