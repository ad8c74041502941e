"""Pruning: choosing binary masks from scores (lottery tickets, pruning at initialization)."""

from tf_supermask.pruning.select import (collapsed_layers, counts_for_fraction, shuffle_masks,
                                         top_masks)

__all__ = ["collapsed_layers", "counts_for_fraction", "shuffle_masks", "top_masks"]
