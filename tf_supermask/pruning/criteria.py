"""Mask criteria of Zhou et al. (2019): score each weight from its initial and final value.

A criterion maps (initial, final) arrays of one layer to scores; the pruning
step keeps the highest scores (``tf_supermask.sparsity.Mask.top``). Every base criterion
also exists in two sign-aware variants:

* ``<name>_same_sign`` (Zhou et al.'s rule, ``get_weight_init.py``): the score
  of a weight whose sign flipped between initialization and the end of training
  is set to 0. For ``large_final`` a flipped weight then ties with the other
  flipped ones below every kept-sign weight (a tie the lottery breaks at random,
  as the reference does); for ``magnitude_increase`` a flipped weight (score 0)
  ranks *above* a same-sign weight that shrank (negative score). The reference
  defines only ``large_final_same_sign`` and ``magnitude_increase_same_sign``;
  the others apply the same rule, so for criteria whose scores are at most 0
  (``small_final``, ``small_init``) flipped weights rank first.
* ``<name>_same_sign_strict`` (this library's earlier ``_same_sign``): flipped
  weights rank below every weight that kept its sign (they are pruned first)
  and keep their order among themselves.
"""

import numpy as np

from tf_supermask import choices
from tf_supermask.registry import Registry
from tf_supermask import streams

CRITERIA = Registry("mask criterion", names=choices.CRITERIA)


def _rank(values, eligible):
    """Percentile rank in [0, 1] of each entry (ties by position).

    Entries already pruned (not eligible) rank below all others, as in Zhou et
    al.'s code, so the ranks of the eligible entries do not depend on the
    values of pruned ones.
    """
    flat = np.where(eligible, values, -np.inf).reshape(-1)
    order = np.argsort(flat, kind="stable")
    ranks = np.empty(flat.size)
    ranks[order] = np.arange(flat.size) / max(flat.size - 1, 1)
    return ranks.reshape(values.shape)


def _register(name):
    def decorate(score):
        CRITERIA.register(name)(score)
        CRITERIA.register(f"{name}_same_sign")(_same_sign(score))
        CRITERIA.register(f"{name}_same_sign_strict")(_same_sign_strict(score))
        return score
    return decorate


def _flipped(initial, final):
    """Where the sign changed (np.sign, so 0 differs from both signs, as in the reference)."""
    return np.sign(initial) != np.sign(final)


def _same_sign(score):
    def same_sign_score(initial, final, rng, eligible):
        scores = np.asarray(score(initial, final, rng, eligible), np.float64)
        return np.where(_flipped(initial, final), 0.0, scores)
    return same_sign_score


def _same_sign_strict(score):
    def same_sign_strict_score(initial, final, rng, eligible):
        scores = np.asarray(score(initial, final, rng, eligible), np.float64)
        flipped = _flipped(initial, final)
        if not flipped.any():
            return scores
        # Shift flipped weights below the lowest kept-sign score, preserving their order.
        span = np.ptp(scores) + 1.0
        return np.where(flipped, scores - span, scores)
    return same_sign_strict_score


@_register("large_final")
def large_final(initial, final, rng, eligible):
    return np.abs(final)


@_register("small_final")
def small_final(initial, final, rng, eligible):
    return -np.abs(final)


@_register("large_init")
def large_init(initial, final, rng, eligible):
    return np.abs(initial)


@_register("small_init")
def small_init(initial, final, rng, eligible):
    return -np.abs(initial)


@_register("large_init_large_final")
def large_init_large_final(initial, final, rng, eligible):
    # Zhou et al. keep the weights above one common percentile of |w_i| and of
    # |w_f|: the lower of the two percentile ranks orders the weights the same way.
    return np.minimum(_rank(np.abs(initial), eligible), _rank(np.abs(final), eligible))


@_register("small_init_small_final")
def small_init_small_final(initial, final, rng, eligible):
    return np.minimum(_rank(-np.abs(initial), eligible), _rank(-np.abs(final), eligible))


@_register("magnitude_increase")
def magnitude_increase(initial, final, rng, eligible):
    return np.abs(final) - np.abs(initial)


@_register("movement")
def movement(initial, final, rng, eligible):
    return np.abs(final - initial)


@_register("random")
def random(initial, final, rng, eligible):
    return rng.random(np.shape(final))


def criterion_scores(name, initial, final, seed=0, eligible=None):
    """{path: scores} of criterion `name` for {path: initial} and {path: final} weights.

    `seed` drives the random criterion (each layer draws from its own stream);
    `eligible` ({path: boolean array}, default all) marks the entries still kept.
    """
    score = CRITERIA.get(name)
    missing = sorted(set(initial) ^ set(final))
    if missing:
        raise ValueError(f"initial and final weights differ in layers {missing}")
    scores = {}
    for index, path in enumerate(sorted(initial)):
        w_i = np.asarray(initial[path], np.float64)
        w_f = np.asarray(final[path], np.float64)
        if w_i.shape != w_f.shape:
            raise ValueError(f"{path}: initial shape {w_i.shape} != final shape {w_f.shape}")
        keep = np.ones(w_i.shape, bool) if not eligible else np.asarray(eligible[path], bool)
        scores[path] = score(w_i, w_f, streams.rng("layer_criterion", seed, index), keep)
    return scores

CRITERIA.check_complete()
