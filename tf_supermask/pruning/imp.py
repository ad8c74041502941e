"""Iterative magnitude pruning (IMP): the pruning step the lottery and fine-tuning share.

One IMP step scores the weights, and keeps the highest-scoring entries among those
the previous mask still keeps (a pruned weight never grows back). How many it
keeps is said in one of two ways:

- a **prune rate** of what remains (the lottery's levels, Frankle & Carbin, Zhou et
  al., open_lth): per layer kind (``rates``, scope "layer"; count rule
  "deconstructing" by reference) or one rate over all remaining weights (``rate``,
  scope "global"; open_lth's rule, whose count includes the layers left out);
- a **target sparsity** of the layers' full size (fine-tuning's one-shot, iterative
  and gradual pruning, Liu et al. and tfmot): ``sparsity`` of each layer (scope
  "layer") or of all of them (scope "global"), capped at what still remains.

Layers named in ``frozen`` keep their previous mask (the output layer under
open_lth's global pruning of LeNet and VGG).

Example:

>>> import numpy as np
>>> from tf_supermask.pruning.imp import PRUNING_STRATEGIES
>>> imp = PRUNING_STRATEGIES.get("imp")(scope="layer", rule="nearest")
>>> previous = {"w": np.array([1, 1, 1, 0, 1])}
>>> scores = {"w": np.array([5., 1., 4., 9., 3.])}
>>> imp.step(scores, previous, rates={"w": 0.5})["w"].tolist()  # half of 4 remaining
[True, False, True, False, False]
>>> imp.step(scores, previous, sparsity=0.4)["w"].tolist()  # keep 3 of the 5 in all
[True, False, True, False, True]
"""

from typing import Mapping, Optional

import numpy as np

from tf_supermask.counting import kept_count, kept_counts
from tf_supermask.registry import Registry
from tf_supermask.sparsity import Mask

PRUNING_STRATEGIES = Registry("pruning strategy")


@PRUNING_STRATEGIES.register("imp")
class IterativeMagnitudePruning:
    """IMP's step: the top scores among the entries the previous mask keeps.

    Args:
      scope: "layer" (each layer its own count) or "global" (one count, all pruned
        layers ranked together).
      rule: the ``tf_supermask.counting`` rule turning rates into counts.
    """

    def __init__(self, scope="layer", rule="nearest"):
        if scope not in ("layer", "global"):
            raise ValueError(f"unknown pruning scope {scope!r}; choose layer or global")
        self.scope = scope
        self.rule = rule

    def step(self, scores, previous, rates: Optional[Mapping[str, float]] = None,
             rate: Optional[float] = None, sparsity: Optional[float] = None,
             frozen=(), tiebreak=None) -> Mask:
        """The next mask.

        Args:
          scores: {path: scores} of every layer of `previous` not in `frozen`.
          previous: {path: mask} of the step before (every layer).
          rates: scope "layer": {path: fraction of that layer's remaining weights pruned}.
          rate: scope "global": fraction of all remaining weights pruned (open_lth: the
            count comes from every remaining weight, frozen layers included, and is
            pruned from the others).
          sparsity: instead of a rate, the fraction of the layers' full size (scope
            "layer": of each; "global": of all together) pruned after the step; a
            layer that already keeps fewer keeps what it has.
          frozen: paths whose mask is kept as it is.
          tiebreak: optional {path: keys}; among equal scores the higher key is kept.

        Returns:
          A ``Mask`` over every path of `previous`.
        """
        if sum(value is not None for value in (rates, rate, sparsity)) != 1:
            raise ValueError("give exactly one of rates, rate or sparsity")
        eligible = {path: np.asarray(mask) > 0 for path, mask in previous.items()}
        prunable = {path: keep for path, keep in eligible.items() if path not in frozen}
        if sparsity is not None:
            counts = kept_counts(prunable, pruned=sparsity, scope=self.scope, rule=self.rule)
            if self.scope == "layer":
                counts["counts"] = {path: min(count, int(prunable[path].sum()))
                                    for path, count in counts["counts"].items()}
            else:
                counts["total"] = min(counts["total"],
                                      sum(int(keep.sum()) for keep in prunable.values()))
        elif self.scope == "global":
            if rate is None:
                raise ValueError("scope global prunes one rate: pass rate=")
            remaining = sum(int(keep.sum()) for keep in eligible.values())
            kept_all = kept_count(remaining, pruned=rate, rule=self.rule)
            available = sum(int(keep.sum()) for keep in prunable.values())
            counts = {"total": max(0, available - (remaining - kept_all))}
        else:
            if rates is None:
                raise ValueError("scope layer prunes per-layer rates: pass rates=")
            counts = {"counts": {path: kept_count(int(keep.sum()), kept=1 - rates[path],
                                                  rule=self.rule)
                                 for path, keep in prunable.items()}}
        masks = Mask.top({path: scores[path] for path in prunable}, eligible=prunable,
                         tiebreak=tiebreak, **counts)
        masks.update({path: eligible[path] for path in frozen})
        return masks
