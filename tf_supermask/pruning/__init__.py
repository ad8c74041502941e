"""Pruning: mask scoring and pruning strategies, with no training drivers.

Masks themselves (``Mask``: top entries of scores, files, density, overlap) and the
allocation of a rate over layers live in ``tf_supermask.sparsity``.

- ``criteria``: Zhou et al.'s mask criteria over initial and final weights.
- ``saliency``: scores at initialization (random, magnitude, SNIP, GraSP, SynFlow).
- ``haroon``: K-starts and dissipating gradients.
- ``options``: the options of pruning and their choices (no Keras).
- ``at_init``: the pruning-at-initialization methods by name.
- ``gradual``: magnitude pruning on tfmot schedules.
- ``keras_api``: tfmot's Keras pruning API for any Keras 3 model
  (``prune_low_magnitude``, ``strip_pruning``; ``GradualPruning`` is the callback).
- ``imp``: iterative magnitude pruning's step (``PRUNING_STRATEGIES``), shared by the
  lottery's levels and fine-tuning's one-shot, iterative and gradual pruning.

The drivers that chain training runs (lottery, fine-tuning, pruning at
initialization) live in ``tf_supermask.experiments``. The names below are imported
on first use, so that ``tf_supermask.pruning.options`` does not import Keras.
"""

from tf_supermask.lazy import lazy_exports

_EXPORTS = {
    "LayerCollapseError": "saliency", "LayerCollapseWarning": "saliency",
    "check_collapse": "saliency", "grasp_masks": "saliency", "grasp_scores": "saliency",
    "magnitude_scores": "saliency", "random_masks": "saliency", "select_masks": "saliency",
    "snip_scores": "saliency", "synflow_masks": "saliency", "synflow_scores": "saliency",
    "DissipatingCallback": "haroon", "dissipating_allowed": "haroon",
    "dissipating_calibrate": "haroon", "dissipating_step": "haroon",
    "fraction_for_sparsity": "haroon", "kstarts_fitness": "haroon", "kstarts_masks": "haroon",
    "PRUNE_METHODS": "at_init", "compute_masks": "at_init",
    "PruneOptions": "options",
    "IterativeMagnitudePruning": "imp", "PRUNING_STRATEGIES": "imp",
    "GradualPruning": "gradual", "magnitude_masks": "gradual", "prune_by_magnitude": "gradual",
    "pruning_schedule": "gradual", "tfmot_schedules": "gradual",
    "layer_sparsity": "keras_api", "prune_low_magnitude": "keras_api",
    "strip_pruning": "keras_api",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
