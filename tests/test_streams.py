"""Named random streams: the table reproduces the derivations the code used before it."""

import numpy as np
import pytest

from tf_supermask import streams


def test_each_stream_gives_the_derivation_committed_results_were_made_with():
    # The formulas by hand, as they were written at each use before the table.
    seed = 7
    assert streams.seed("layer", seed, 3) == seed * 1000 + 3
    assert streams.seed("layer_scores", seed, 3) == seed * 1000 + 3 + 500
    assert streams.seed("lottery_level", seed, 2) == seed * 1000 + 2
    assert streams.seed("lottery_tiebreak", seed, 2) == [seed * 1000 + 2, 31]
    assert streams.seed("lottery_fresh", seed, 2, 1) == (seed * 1000 + 2) * 7919 + 1 + 1
    assert streams.seed("lottery_reinit", seed, 2) == [seed, 2, 17]
    assert streams.seed("layer_criterion", 7002, 4) == [7002, 4]
    assert streams.seed("random_scores", seed) == [seed, 17]
    assert streams.seed("random_scores", [seed, 1, 3]) == [seed, 1, 3, 17]
    assert streams.seed("kstarts_candidate", seed, 3) == [seed, 1, 3]
    assert streams.seed("prune_init_shuffle", seed) == [seed, 23]
    assert streams.seed("patches_pool", seed) == (seed, 1)
    assert streams.seed("data_order", seed, 4) == (seed, 4)
    assert streams.seed("augment", seed, 4, 9) == (seed, 4, 9)
    np.testing.assert_array_equal(streams.rng("data_order", seed, 4).permutation(10),
                                  np.random.default_rng((seed, 4)).permutation(10))


def _numpy_draws(run_seed, levels=4, indices=40):
    """{generator seed: {streams}} of one run, composed as the code composes them (the
    Keras-initializer streams layer, layer_scores and lottery_fresh seed another
    generator and are left out)."""
    def key(value):
        return tuple(int(part) for part in np.atleast_1d(value))

    out = {}

    def add(name, value):
        out.setdefault(key(value), set()).add(name)

    add("validation_split", streams.seed("validation_split", run_seed))
    add("patches", streams.seed("patches", run_seed))
    add("patches_pool", streams.seed("patches_pool", run_seed))
    add("prune_init_shuffle", streams.seed("prune_init_shuffle", run_seed))
    add("random_scores", streams.seed("random_scores", run_seed))
    for i in range(indices):
        add("kstarts_candidate", streams.seed("random_scores",
                                              streams.seed("kstarts_candidate", run_seed, i)))
        for e in range(indices):
            add("data_order", streams.seed("data_order", run_seed, e))
            add("augment", streams.seed("augment", run_seed, e, i))
    for level in range(1, levels):
        level_seed = streams.seed("lottery_level", run_seed, level)
        add("lottery_level", level_seed)
        add("lottery_tiebreak", streams.seed("lottery_tiebreak", run_seed, level))
        add("lottery_reinit", streams.seed("lottery_reinit", run_seed, level))
        for i in range(indices):
            add("layer_criterion", streams.seed("layer_criterion", level_seed, i))
    return out


@pytest.mark.parametrize("run_seed", [0, 1, 12345])
def test_streams_of_one_run_share_draws_only_where_they_always_did(run_seed):
    overlaps = {frozenset(names) for names in _numpy_draws(run_seed).values() if len(names) > 1}
    assert overlaps == set(streams.KNOWN_OVERLAPS)


def test_no_module_derives_a_seed_outside_the_table():
    # A generator seeded with an expression (a salt, a tuple) outside streams.py is a
    # derivation the table does not know; a name or a constant seed is not one.
    import ast
    import os

    import tf_supermask

    root = os.path.dirname(tf_supermask.__file__)
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or name == "streams.py":
                continue
            for node in ast.walk(ast.parse(open(path).read())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "default_rng" and node.args
                        and not isinstance(node.args[0], (ast.Name, ast.Constant))):
                    offenders.append(f"{os.path.relpath(path, root)}:{node.lineno}")
    assert not offenders, f"seeds derived outside tf_supermask/streams.py: {offenders}"


def test_unknown_stream_names_the_known_ones():
    with pytest.raises(KeyError, match="layer_scores"):
        streams.seed("layers", 0, 1)
