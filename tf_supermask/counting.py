"""How many weights a rate keeps: the one place where rates become counts.

Every method that keeps a fraction of weights (the top-k mask, lottery-ticket
levels, magnitude and gradual pruning, pruning at initialization, Haroon's
methods) asks ``kept_count`` or ``kept_counts`` here, under a named rounding
rule. The references round differently, and a rule is a few lines each, so each
one is written out exactly as its reference computes it (Python floats unless
the reference uses float32):

========================  =====================================================
rule                      kept out of ``n`` (``d``: fraction kept, ``r``: pruned)
========================  =====================================================
``nearest``               ``round(d * n)`` (half to even; the product taken to
                          9 decimals first, so 0.1 x 75 = 7.4999... counts as 7.5)
``hidden_networks``       ``n - int((1 - d) * n)``: edge-popup's ``GetSubnet``
``deconstructing``        ``n - int(n * ((1 - d) * 100.0) / 100)``: Zhou et al.'s
                          ``get_weight_init.py`` (``prune_base`` = d, power 1)
``open_lth``              ``n - (ceil(r * n) + 1)``: open_lth's ``sparse_global``
                          removes every weight ``<= sorted[ceil(r * n)]``
``synaptic_flow``         ``n - int((1 - d) * n)``: Synaptic-Flow's ``Pruner.mask``
``tfmot``                 ``max(1, round(float32(n) * (1 - float32(r))))``:
                          tfmot's ``pruning_impl`` (float32, half to even)
========================  =====================================================

``hidden_networks`` and ``synaptic_flow`` are the same formula under two names,
so that each recipe names its own reference. A rate is given as the fraction
kept (``kept=``) or the fraction pruned (``pruned=``), whichever its reference
takes; the other is ``1 - x`` in floating point, as a user of that reference
would have computed it.
"""

import numpy as np

SCOPES = ("layer", "global")


def _nearest(n, kept, pruned):
    return int(round(round(kept * n, 9)))


def _hidden_networks(n, kept, pruned):
    return n - int((1 - kept) * n)


def _deconstructing(n, kept, pruned):
    percent = (1 - kept) * 100.0
    return n - int(n * percent / 100)


def _open_lth(n, kept, pruned):
    return n - min(n, int(np.ceil(pruned * n)) + 1)


def _tfmot(n, kept, pruned):
    value = np.float32(n) * (np.float32(1.0) - np.float32(pruned))
    return max(1, int(np.round(value)))


# name: (formula(n, kept, pruned) -> kept count, the input its reference takes)
COUNT_RULES = {
    "nearest": (_nearest, "kept"),
    "hidden_networks": (_hidden_networks, "kept"),
    "deconstructing": (_deconstructing, "kept"),
    "open_lth": (_open_lth, "pruned"),
    "synaptic_flow": (_hidden_networks, "kept"),
    "tfmot": (_tfmot, "pruned"),
}


def check_rule(rule):
    """Returns `rule`; a ValueError naming the rules if it is not one."""
    if rule not in COUNT_RULES:
        raise ValueError(f"count rule must be one of {', '.join(COUNT_RULES)}, got {rule!r}")
    return rule


def check_k(k, name="k"):
    """Returns k, the fraction of weights KEPT by a top-k layer, as a float; a ValueError
    naming `name` unless 0 < k <= 1 (where --k enters, and in the public layers)."""
    if not 0.0 < float(k) <= 1.0:
        raise ValueError(f"{name} is the fraction of weights kept and must be in (0, 1], got {k}")
    return float(k)


def resolve_rule(rule, default):
    """`rule`, or the method's own `default` when `rule` is "auto" (--count_rule)."""
    return check_rule(default if rule == "auto" else rule)


def kept_count(size, kept=None, pruned=None, rule="nearest"):
    """Entries of `size` kept at a rate, under a reference's rounding rule.

    Args:
      size: number of entries the rate applies to (a layer, the weights still
        kept, or all weights), >= 0.
      kept: fraction kept, in [0, 1]; or
      pruned: fraction pruned, in [0, 1] (exactly one of the two).
      rule: a name of ``COUNT_RULES`` (see the module docstring).

    Returns:
      The count kept, in [0, size].

    Example:
      >>> kept_count(75, pruned=0.9, rule="tfmot"), kept_count(75, kept=0.1)
      (8, 8)
      >>> kept_count(10, kept=0.8, rule="deconstructing")  # int(10 * 19.99.. / 100) = 1
      9
    """
    formula, takes = COUNT_RULES[check_rule(rule)]
    if (kept is None) == (pruned is None):
        raise ValueError("give the fraction kept or the fraction pruned, not both or neither")
    value = kept if kept is not None else pruned
    if not 0.0 <= float(value) <= 1.0:
        what = "kept" if kept is not None else "pruned"
        raise ValueError(f"the fraction {what} must be in [0, 1], got {value}")
    kept = 1 - float(pruned) if kept is None else float(kept)
    pruned = 1 - float(kept) if pruned is None else float(pruned)
    size = int(size)
    return min(size, max(0, formula(size, kept, pruned)))


def kept_counts(sizes, kept=None, pruned=None, scope="layer", rule="nearest"):
    """A rate and a scope as counts for ``tf_supermask.sparsity.Mask.top``.

    Args:
      sizes: {path: entries the rate applies to} (ints, or arrays whose size counts).
      kept, pruned: the rate, as in ``kept_count`` (one of the two).
      scope: "layer" (every path keeps its own count) or "global" (one count over
        the sum of the sizes).
      rule: a name of ``COUNT_RULES``.

    Returns:
      ``{"counts": {path: kept}}`` for "layer", ``{"total": kept}`` for "global":
      keyword arguments of ``Mask.top``.
    """
    sizes = {path: int(value) if isinstance(value, (int, np.integer)) else int(np.size(value))
             for path, value in sizes.items()}
    if scope == "layer":
        return {"counts": {path: kept_count(size, kept, pruned, rule)
                           for path, size in sizes.items()}}
    if scope == "global":
        return {"total": kept_count(sum(sizes.values()), kept, pruned, rule)}
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
