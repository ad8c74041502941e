"""Rates into counts: each reference's rounding rule, computed by hand on its own inputs.

tf_supermask.counting is the one place where a rate becomes a number of weights;
every rule here is the reference's expression written out again in the test
(Python floats, or float32 where the reference computes in float32), checked on
the inputs where the rules part.
"""

import numpy as np
import pytest

from tf_supermask.counting import COUNT_RULES, kept_count, kept_counts, resolve_rule


def test_deconstructing_prunes_one_fewer_at_a_20_percent_level():
    """get_weight_init.py: prune_percentiles = (1 - prune_base ** 1) * 100.0, then
    prune_num = int(sum(cur_mask) * percentile / 100)."""
    percentile = (1 - 0.8 ** 1) * 100.0
    assert percentile == 19.999999999999996
    for remaining in (10, 235200, 30000, 1000, 55):
        pruned = int(remaining * percentile / 100)
        assert kept_count(remaining, kept=1 - 0.2, rule="deconstructing") == remaining - pruned
    # Where it leaves one more weight than the exact count: 20 % of 10 is 2, it prunes 1.
    assert kept_count(10, kept=0.8, rule="deconstructing") == 9
    assert kept_count(10, kept=0.8, rule="nearest") == 8


def test_open_lth_global_prunes_the_count_plus_one():
    """sparse_global.py: n = ceil(fraction * remaining); every weight <= sorted[n] goes."""
    rng = np.random.default_rng(0)
    for remaining, fraction in [(266200, 0.2), (1000, 0.2), (77, 0.35)]:
        weights = rng.normal(size=remaining)
        n = int(np.ceil(fraction * remaining))
        threshold = np.sort(np.abs(weights))[n]
        reference_kept = int((np.abs(weights) > threshold).sum())
        assert reference_kept == remaining - n - 1
        assert kept_count(remaining, pruned=fraction, rule="open_lth") == reference_kept


def test_synaptic_flow_prunes_int_of_one_minus_density_at_every_iteration():
    """Pruner.mask: k = int((1.0 - sparsity) * N) with sparsity the density
    d_i = d ** ((i + 1) / 100) (pruning at init, fc 784-300-100-10, 90 %)."""
    sizes = {"a": 784 * 300, "b": 300 * 100, "c": 100 * 10}
    total = sum(sizes.values())
    differ = 0
    for i in range(100):
        density = 0.1 ** ((i + 1) / 100)
        reference = total - int((1.0 - density) * total)
        ours = kept_counts(sizes, kept=density, scope="global", rule="synaptic_flow")["total"]
        assert ours == reference, i
        differ += reference != kept_count(total, kept=density, rule="nearest")
    assert differ > 0  # the rules do part on these inputs


def test_tfmot_rounds_in_float32():
    """pruning_impl: k = max(round(float32(size) * (1 - float32(sparsity))), 1)."""
    for size, sparsity in [(75, 0.9), (1000, 0.37), (3, 0.99), (784 * 300, 0.8)]:
        value = np.float32(size) * (np.float32(1.0) - np.float32(sparsity))
        assert kept_count(size, pruned=sparsity, rule="tfmot") == max(1, int(np.round(value)))
    # 75 at 0.9: float32 gives 7.5000018 -> 8, Python floats 7.4999... -> 7.
    assert kept_count(75, pruned=0.9, rule="tfmot") == 8
    assert round((1 - 0.9) * 75) == 7


def test_hidden_networks_get_subnet():
    """GetSubnet: j = int((1 - k) * scores.numel()); the lowest j are zeroed."""
    for size, k in [(7, 0.3), (75, 0.5), (73, 0.5), (576, 0.3), (10, 0.65)]:
        assert kept_count(size, kept=k, rule="hidden_networks") == size - int((1 - k) * size)
    assert kept_count(10, kept=0.65, rule="hidden_networks") == 7
    assert kept_count(10, kept=0.65, rule="nearest") == 6  # round(6.5), half to even


def test_nearest_absorbs_float_noise():
    assert kept_count(75, pruned=0.9) == 8  # 0.1 x 75 = 7.5, not 7.4999...
    assert kept_count(30, kept=0.1) == 3


def test_scopes_and_bad_input():
    sizes = {"a": np.zeros((10, 3)), "b": 7}
    assert kept_counts(sizes, kept=0.5) == {"counts": {"a": 15, "b": 4}}
    assert kept_counts(sizes, kept=0.5, scope="global") == {"total": 18}
    for rule in COUNT_RULES:
        assert 0 <= kept_count(37, kept=0.4, rule=rule) <= 37
    with pytest.raises(ValueError, match="count rule"):
        kept_count(10, kept=0.5, rule="exact")
    with pytest.raises(ValueError, match="not both"):
        kept_count(10, kept=0.5, pruned=0.5)
    with pytest.raises(ValueError, match="scope"):
        kept_counts(sizes, kept=0.5, scope="net")
    assert resolve_rule("auto", "tfmot") == "tfmot"
    assert resolve_rule("nearest", "tfmot") == "nearest"


def test_every_method_counts_through_the_one_module():
    """No method keeps its own formula: outside counting.py no code rounds a rate
    (round / int / ceil of an expression naming a density, rate, fraction or
    sparsity)."""
    import ast
    import os

    import tf_supermask

    package = os.path.dirname(tf_supermask.__file__)
    rounding = {"round", "int", "ceil", "floor"}
    rates = ("density", "rate", "fraction", "sparsity", "kept")
    offenders = []
    for folder, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py") or name == "counting.py":
                continue
            path = os.path.join(folder, name)
            source = open(path).read()
            for node in ast.walk(ast.parse(source)):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
                    node.func, "id", "")
                argument = ast.get_source_segment(source, node.args[0]) or ""
                if func in rounding and "*" in argument and any(r in argument for r in rates):
                    offenders.append(f"{os.path.relpath(path, package)}:{node.lineno}: "
                                     f"{ast.get_source_segment(source, node)}")
    assert not offenders, offenders
