"""Mask selection from scores: exact counts, ties, eligibility, global ranking."""

import numpy as np
import pytest

from tf_supermask.counting import kept_counts
from tf_supermask.pruning import collapsed_layers, shuffle_masks, top_masks


def test_per_layer_keeps_exact_counts_of_highest_scores():
    scores = {"a": np.array([[0.1, 0.9], [0.5, 0.3]]), "b": np.array([3.0, 1.0, 2.0])}
    masks = top_masks(scores, counts={"a": 2, "b": 1})
    np.testing.assert_array_equal(masks["a"], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(masks["b"], [1, 0, 0])
    assert masks["a"].dtype == np.float32


def test_ties_are_broken_by_position():
    masks = top_masks({"a": np.ones(5)}, counts={"a": 2})
    np.testing.assert_array_equal(masks["a"], [1, 1, 0, 0, 0])


def test_global_ranks_all_layers_jointly():
    scores = {"a": np.array([0.1, 0.9, 0.2]), "b": np.array([0.8, 0.05])}
    masks = top_masks(scores, total=3)
    np.testing.assert_array_equal(masks["a"], [0, 1, 1])
    np.testing.assert_array_equal(masks["b"], [1, 0])


def test_ineligible_entries_are_never_kept():
    scores = {"a": np.array([5.0, 4.0, 3.0, 2.0])}
    masks = top_masks(scores, counts={"a": 2}, eligible={"a": np.array([0, 1, 0, 1], bool)})
    np.testing.assert_array_equal(masks["a"], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        top_masks(scores, counts={"a": 3}, eligible={"a": np.array([0, 1, 0, 1], bool)})


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        top_masks({"a": np.ones(2)})
    with pytest.raises(ValueError, match="NaN"):
        top_masks({"a": np.array([np.nan, 1.0])}, total=1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        kept_counts({"a": 4}, kept=1.5)


def test_kept_counts_and_collapse():
    assert kept_counts({"a": 10, "b": np.zeros((2, 3))}, kept=0.5) == {"counts": {"a": 5, "b": 3}}
    assert collapsed_layers({"a": np.zeros(3), "b": np.ones(2)}) == ["a"]


def test_shuffle_keeps_count_and_is_seeded():
    masks = top_masks({"a": np.arange(100.0).reshape(10, 10)}, counts={"a": 30})
    one, two = shuffle_masks(masks, seed=1), shuffle_masks(masks, seed=1)
    assert one["a"].sum() == 30 and one["a"].shape == (10, 10)
    np.testing.assert_array_equal(one["a"], two["a"])
    assert not np.array_equal(one["a"], masks["a"])
