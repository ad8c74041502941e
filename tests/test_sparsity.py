"""The Mask value and allocation: exact counts, ties, eligibility, global ranking, files,
density, overlap, shuffle, ERK."""

import numpy as np
import pytest

from tf_supermask.counting import kept_counts
from tf_supermask.sparsity import MASK_FILE, Mask, allocate, erk_densities


def test_per_layer_keeps_exact_counts_of_highest_scores():
    scores = {"a": np.array([[0.1, 0.9], [0.5, 0.3]]), "b": np.array([3.0, 1.0, 2.0])}
    masks = Mask.top(scores, counts={"a": 2, "b": 1})
    np.testing.assert_array_equal(masks["a"], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(masks["b"], [1, 0, 0])
    assert masks["a"].dtype == bool and isinstance(masks, Mask)


def test_ties_are_broken_by_position():
    masks = Mask.top({"a": np.ones(5)}, counts={"a": 2})
    np.testing.assert_array_equal(masks["a"], [1, 1, 0, 0, 0])


def test_global_ranks_all_layers_jointly():
    scores = {"a": np.array([0.1, 0.9, 0.2]), "b": np.array([0.8, 0.05])}
    masks = Mask.top(scores, total=3)
    np.testing.assert_array_equal(masks["a"], [0, 1, 1])
    np.testing.assert_array_equal(masks["b"], [1, 0])


def test_ineligible_entries_are_never_kept():
    scores = {"a": np.array([5.0, 4.0, 3.0, 2.0])}
    masks = Mask.top(scores, counts={"a": 2}, eligible={"a": np.array([0, 1, 0, 1], bool)})
    np.testing.assert_array_equal(masks["a"], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        Mask.top(scores, counts={"a": 3}, eligible={"a": np.array([0, 1, 0, 1], bool)})


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        Mask.top({"a": np.ones(2)})
    with pytest.raises(ValueError, match="NaN"):
        Mask.top({"a": np.array([np.nan, 1.0])}, total=1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        kept_counts({"a": 4}, kept=1.5)


def test_kept_counts_and_collapse():
    assert kept_counts({"a": 10, "b": np.zeros((2, 3))}, kept=0.5) == {"counts": {"a": 5, "b": 3}}
    assert Mask({"a": np.zeros(3), "b": np.ones(2)}).collapsed() == ["a"]


def test_shuffle_keeps_count_and_is_seeded():
    masks = Mask.top({"a": np.arange(100.0).reshape(10, 10)}, counts={"a": 30})
    one, two = masks.shuffled(1), masks.shuffled(1)
    assert one["a"].sum() == 30 and one["a"].shape == (10, 10)
    np.testing.assert_array_equal(one["a"], two["a"])
    assert not np.array_equal(one["a"], masks["a"])


def test_save_load_round_trip_keeps_the_file_format(tmp_path):
    mask = Mask({"dense/kernel": np.array([[1, 0], [0, 1]]), "out/kernel": np.array([True])})
    path = tmp_path / MASK_FILE
    mask.save(str(path))
    with np.load(path) as raw:  # uint8 arrays, as mask.npz files have always held
        assert raw["dense/kernel"].dtype == np.uint8
    loaded = Mask.load(str(path))
    assert sorted(loaded) == sorted(mask)
    for key in mask:
        np.testing.assert_array_equal(loaded[key], mask[key])
    assert not list(tmp_path.glob("*.tmp*"))


def test_density_sparsity_and_overlap_by_hand():
    a = Mask({"x": np.array([1, 1, 0, 0]), "y": np.array([1, 0])})
    b = Mask({"x": np.array([1, 0, 1, 0]), "y": np.array([1, 1])})
    assert a.kept() == 3 and a.size() == 6
    assert a.density() == 0.5 and a.sparsity() == 0.5
    assert a.density_per_layer() == {"x": 0.5, "y": 0.5}
    assert a.overlap(b) == 2 / 3  # x[0] and y[0] of a's three kept weights
    assert b.overlap(a) == 2 / 4
    with pytest.raises(ValueError, match="different layers"):
        a.overlap({"x": np.ones(4)})


def test_allocate_schemes():
    sizes = {"conv": 100, "dense": 50, "out": 10}
    assert allocate(sizes, density=0.2) == {"counts": {"conv": 20, "dense": 10, "out": 2}}
    assert allocate(sizes, sparsity=0.8, scheme="global") == {"total": 32}
    kinds = {"conv": "conv", "dense": "dense", "out": "output"}
    assert allocate(sizes, scheme="kind", kinds=kinds,
                    kind_densities={"conv": 0.9, "dense": 0.8, "output": 0.5}) == {
        "counts": {"conv": 90, "dense": 40, "out": 5}}
    with pytest.raises(ValueError, match="allocation must be one of"):
        allocate(sizes, density=0.5, scheme="uniform")


def test_erk_matches_rigl_by_hand():
    # RigL's Erdos-Renyi rule by hand: density_l = eps * (n_in + n_out) / (n_in * n_out),
    # eps so that the kept total is density x all weights.
    shapes = {"a": (100, 50), "b": (50, 10)}
    raw = {"a": 150 / 5000, "b": 60 / 500}
    eps = 0.1 * 5500 / (raw["a"] * 5000 + raw["b"] * 500)
    got = erk_densities(shapes, 0.1)
    assert got == pytest.approx({"a": eps * raw["a"], "b": eps * raw["b"]})
    assert sum(got[p] * np.prod(shapes[p]) for p in shapes) == pytest.approx(550)
    # At a high density the small layer would pass 1: it is kept dense, the rest rescaled.
    got = erk_densities(shapes, 0.9)
    assert got["b"] == 1.0
    assert got["a"] == pytest.approx((0.9 * 5500 - 500) / 5000)
    counts = allocate({"a": 5000, "b": 500}, density=0.9, scheme="erk", shapes=shapes)
    assert counts == {"counts": {"a": 4450, "b": 500}}


def test_the_examples_of_the_sparsity_modules_run():
    import doctest

    from tf_supermask import sparsity, streams
    from tf_supermask.pruning import imp

    for module in (sparsity, streams, imp):
        result = doctest.testmod(module)
        assert result.attempted >= 3 and result.failed == 0, module.__name__


def test_imp_step_by_hand():
    from tf_supermask.pruning.imp import IterativeMagnitudePruning

    previous = {"a": np.array([1, 1, 1, 1, 0]), "out": np.array([1, 1, 0])}
    scores = {"a": np.array([1.0, 4.0, 3.0, 2.0, 9.0]), "out": np.array([1.0, 2.0, 3.0])}
    # Per layer, "nearest": a keeps round(4 x 0.5) = 2 of its 4 remaining, out 1 of 2.
    layer = IterativeMagnitudePruning("layer").step(scores, previous,
                                                    rates={"a": 0.5, "out": 0.5})
    assert layer["a"].tolist() == [False, True, True, False, False]
    assert layer["out"].tolist() == [False, True, False]
    # Global, open_lth's count: 6 weights remain and its rule prunes 0.5 x 6 + 1 = 4 of
    # them, all from `a` since `out` is frozen: a keeps 4 - 4 = 0.
    frozen = IterativeMagnitudePruning("global", "open_lth").step(
        {"a": scores["a"]}, previous, rate=0.5, frozen={"out"})
    assert frozen["a"].sum() == 0 and frozen["out"].tolist() == [True, True, False]
    # A target sparsity never grows a mask back: a already keeps 4 < 5 x 0.9.
    kept = IterativeMagnitudePruning("layer").step(scores, previous, sparsity=0.1)
    assert kept["a"].tolist() == [True, True, True, True, False]
    with pytest.raises(ValueError, match="exactly one"):
        IterativeMagnitudePruning().step(scores, previous, rate=0.1, sparsity=0.1)
