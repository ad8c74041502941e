"""Tiny runs of every binary give what they gave before the issue-24 refactor.

The fingerprints in tests/data/pinned_runs.json were written by
``python tests/pinned_runs.py --write`` on the code before the refactor
(commit 8ea3b13); a change that moves a random draw, a count or a metric fails here.
"""

import json
import math

import pytest

import pinned_runs


@pytest.fixture(scope="module")
def pinned():
    with open(pinned_runs.PINNED_FILE) as handle:
        return json.load(handle)


def test_every_binary_is_pinned(pinned):
    assert sorted(pinned) == pinned_runs.names()
    binaries = {pinned_runs._runs()[name][0] for name in pinned}
    assert binaries == {"train", "lottery", "finetune", "prune_init"}


@pytest.mark.parametrize("name", pinned_runs.names())
def test_pinned_run_is_unchanged(name, pinned, tmp_path):
    got = pinned_runs.run(name, tmp_path / name)
    want = pinned[name]
    assert got["masks"] == want["masks"]
    assert sorted(got["numbers"]) == sorted(want["numbers"])
    assert want["numbers"], "a pinned run with no numbers pins nothing"
    for key, value in want["numbers"].items():
        assert math.isclose(got["numbers"][key], value, rel_tol=1e-6, abs_tol=1e-9), key
