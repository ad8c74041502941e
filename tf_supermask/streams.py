"""Named random streams: every seed the library derives from ``--seed``, in one table.

A run has one seed. Each random choice it makes (a layer's initial weights, the
data order of an epoch, a lottery level's tie-break, a K-starts candidate ...)
draws from its own stream, named here; the salts that keep two streams apart
live in this table and nowhere else, so two uses cannot share draws by accident
and a new use gets a name instead of a magic number.

The derivations are those the code used before the table existed, so committed
results stay reproducible (``tests/test_pinned_runs.py`` pins runs of every
binary across the change).

Example:

>>> from tf_supermask import streams
>>> streams.seed("layer", 3, 2)            # layer 2 of a model built with seed 3
3002
>>> streams.seed("lottery_reinit", 3, 1)   # level 1's reinit draws
[3, 1, 17]
>>> float(streams.rng("data_order", 0, 5).random()) == float(
...     streams.rng("data_order", 0, 5).random())
True
"""

from typing import Callable, Dict, List, Tuple, Union

import numpy as np

Seed = Union[int, List[int]]


def seed_list(seed) -> List[int]:
    """A seed (an int or a sequence of ints) as a list of ints."""
    return [int(part) for part in np.atleast_1d(seed)]


def _level(seed, level):
    return int(seed) * 1000 + int(level)


# name -> (derivation of (parent seed, *indices), what draws from it). The parent is the
# run's --seed unless the description says otherwise.
STREAMS: Dict[str, Tuple[Callable[..., Seed], str]] = {
    # Models (tf_supermask.models.builder).
    "layer": (lambda seed, index: int(seed) * 1000 + int(index),
              "masked layer `index`'s kernel initializer and Bernoulli samples"),
    "layer_scores": (lambda seed, index: int(seed) * 1000 + int(index) + 500,
                     "masked layer `index`'s score initializer"),
    # Data (tf_supermask.data).
    "validation_split": (lambda seed: int(seed),
                         "which training images are held out / kept by --train_size"),
    "data_order": (lambda seed, epoch: (int(seed), int(epoch)), "the example order of an epoch"),
    "augment": (lambda seed, epoch, index: (int(seed), int(epoch), int(index)),
                "crop offsets and flips of batch `index` of `epoch`"),
    # PatchesInit (tf_supermask.layers.patches).
    "patches": (lambda seed: int(seed), "patch positions, mixed filters, sign flips"),
    "patches_pool": (lambda seed: (int(seed), 1), "the --patches_images pool"),
    # Masks.
    "layer_criterion": (lambda seed, index: [int(seed), int(index)],
                        "a mask criterion's draws for layer `index` (parent: the level's "
                        "seed)"),
    "random_scores": (lambda seed: seed_list(seed) + [17],
                      "random scores of the random mask (parent: the method's seed)"),
    "shuffle": (lambda seed: seed, "positions of a shuffled mask (parent: as given)"),
    # Pruning at initialization (tf_supermask.pruning).
    "kstarts_candidate": (lambda seed, index: seed_list(seed) + [1, int(index)],
                          "K-starts candidate `index`'s random mask"),
    "prune_init_shuffle": (lambda seed: seed_list(seed) + [23],
                           "--shuffle's positions after pruning at initialization"),
    # Lottery tickets (tf_supermask.experiments.lottery / pruning.imp).
    "lottery_level": (_level, "level `level`'s criterion draws and --shuffle_mask positions"),
    "lottery_tiebreak": (lambda seed, level: [_level(seed, level), 31],
                         "keys that break ties between equal scores at `level`"),
    "lottery_fresh": (lambda seed, level, index: _level(seed, level) * 7919 + int(index) + 1,
                      "--reinit=reinit's fresh draw of layer `index` at `level`"),
    "lottery_reinit": (lambda seed, level: [int(seed), int(level), 17],
                       "--reinit=reshuffle permutations and constant's signs at `level`"),
}


# Streams of one run that draw the same NumPy bits today. They are kept, because
# changing a derivation changes committed results; a new stream must not add to this
# list (tests/test_streams.py enumerates the draws of a run and checks it):
# - validation_split and patches both seed a generator with the run's seed (held-out
#   images and patch positions come from one bit stream, for different ends);
# - patches_pool (seed, 1), random_scores [seed, 17] and prune_init_shuffle [seed, 23]
#   are data_order's generators of epochs 1, 17 and 23;
# - lottery_reinit [seed, L, 17] is augment's generator of epoch L, batch 17;
# - layer_criterion of layer 31 at level L is lottery_tiebreak's generator of level L
#   (only in a model with 32 or more masked layers: resnet56).
KNOWN_OVERLAPS = frozenset({frozenset({"validation_split", "patches"}),
                            frozenset({"patches_pool", "data_order"}),
                            frozenset({"random_scores", "data_order"}),
                            frozenset({"prune_init_shuffle", "data_order"}),
                            frozenset({"lottery_reinit", "augment"}),
                            frozenset({"layer_criterion", "lottery_tiebreak"})})


def seed(name: str, parent, *indices) -> Seed:
    """The seed of stream `name` under `parent` (the run's seed, or the stream's parent).

    Raises:
      KeyError: an unknown stream (the message lists the known ones).
    """
    try:
        derive = STREAMS[name][0]
    except KeyError:
        raise KeyError(f"unknown random stream {name!r}; known: {', '.join(sorted(STREAMS))}") \
            from None
    return derive(parent, *indices)


def rng(name: str, parent, *indices) -> np.random.Generator:
    """A NumPy generator seeded with stream `name`'s seed."""
    return np.random.default_rng(seed(name, parent, *indices))
