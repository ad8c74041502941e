"""Pruning at initialization: scores by hand, exact sparsity, K-starts, dissipating, collapse."""

import glob
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from absl import flags

from conftest import sample_batches as batches
from conftest import tiny_model
from tf_supermask.config import define_flags, from_flags
from tf_supermask.layers import MaskedDense, get_masks, set_masks
from tf_supermask.models import MaskOptions, build_model
from tf_supermask.experiments.prune_init import PruneInitConfig, prune_init
from tf_supermask.pruning import (PRUNE_METHODS, DissipatingCallback, LayerCollapseError,
                                  LayerCollapseWarning, PruneOptions, compute_masks,
                                  dissipating_allowed, dissipating_step, grasp_masks,
                                  grasp_scores, kstarts_fitness, kstarts_masks, random_masks,
                                  snip_scores, synflow_masks, synflow_scores)
from tf_supermask.sparsity import Mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "kstarts", "dissipating",
           "kstarts_dissipating"]

# A 3-2-2 network with hand-picked weights: hidden ReLU layer, linear output.
W1 = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], np.float32)
B1 = np.array([0.1, -0.2], np.float32)
W2 = np.array([[1.0, -2.0], [-0.5, 3.0]], np.float32)
B2 = np.array([0.3, -0.1], np.float32)
X = np.array([[1.0, 0.5, -1.0], [0.2, -1.0, 2.0]], np.float32)
Y = np.array([1, 0])


def hand_net(w1=W1, b1=B1, w2=W2, b2=B2):
    inputs = keras.Input((3,))
    hidden = MaskedDense(2, mask="fixed", activation="relu", name="hidden")(inputs)
    outputs = MaskedDense(2, mask="fixed", name="out")(hidden)
    model = keras.Model(inputs, outputs)
    layer_h, layer_o = model.layers[1], model.layers[2]
    layer_h.kernel_variable.assign(w1)
    layer_h.bias.assign(b1)
    layer_o.kernel_variable.assign(w2)
    layer_o.bias.assign(b2)
    return model


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fast_options(**overrides):
    settings = dict(snip_batches=1, grasp_batches=1, synflow_iterations=3, kstarts_k=2,
                    kstarts_epochs=1, kstarts_steps=2, kstarts_gradient_batches=2,
                    dissipating_epochs=1, dissipating_fraction=0.1)
    settings.update(overrides)
    if "count_rule" in settings:  # a TrainConfig field: the binary's whole configuration
        from tf_supermask.experiments.config import PruneInitConfig

        return PruneInitConfig(**settings)
    return PruneOptions(**settings)


# ---------------------------------------------------------------------------
# Scores against hand computations.


def test_snip_scores_match_the_chain_rule_by_hand():
    model = hand_net()
    scores = snip_scores(model, [(X, Y)], num_batches=1)
    # Forward and backward of mean cross-entropy through ReLU, written out.
    pre = X @ W1 + B1
    hidden = np.maximum(pre, 0)
    probs = softmax(hidden @ W2 + B2)
    d_logits = (probs - np.eye(2)[Y]) / len(X)
    g2 = hidden.T @ d_logits
    g1 = X.T @ ((d_logits @ W2.T) * (pre > 0))
    np.testing.assert_allclose(scores["out/kernel"], np.abs(g2 * W2), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores["hidden/kernel"], np.abs(g1 * W1), rtol=1e-5, atol=1e-7)
    # A mask removes entries: their effective weight and score are zero.
    set_masks(model, {"hidden/kernel": np.array([[0, 1], [1, 1], [1, 1]], np.float32)})
    assert snip_scores(model, [(X, Y)])["hidden/kernel"][0, 0] == 0.0


def test_synflow_scores_match_path_sums_by_hand():
    model = hand_net()
    scores = synflow_scores(model)
    a1, a2, c1 = np.abs(W1), np.abs(W2), np.abs(B1)
    # R = sum_k [ sum_j (sum_i |W1_ij| + |b1_j|) |W2_jk| + |b2_k| ] for an all-ones input.
    np.testing.assert_allclose(scores["hidden/kernel"], a1 * a2.sum(axis=1)[None, :], rtol=1e-6)
    np.testing.assert_allclose(scores["out/kernel"], a2 * (a1.sum(axis=0) + c1)[:, None],
                               rtol=1e-6)
    # The signed parameters are put back.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.layers[1].kernel_variable), W1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.layers[2].bias), B2)


def test_iterative_synflow_rescores_the_pruned_network():
    model = hand_net()
    masks = synflow_masks(model, sparsity=0.5, scope="global", iterations=2)
    # The same iteration in NumPy: density 0.5 ** (1/2) then 0.5, kept entries re-scored,
    # Synaptic-Flow's count: int((1 - density) * N) of all N entries pruned each time.
    m1, m2 = np.ones_like(W1), np.ones_like(W2)
    for step in (1, 2):
        a1, a2 = np.abs(W1) * m1, np.abs(W2) * m2
        scores = {"hidden/kernel": a1 * a2.sum(axis=1)[None, :],
                  "out/kernel": a2 * (a1.sum(axis=0) + np.abs(B1))[:, None]}
        keep = 10 - int((1.0 - 0.5 ** (step / 2)) * 10)
        chosen = Mask.top(scores, total=keep, eligible={"hidden/kernel": m1 > 0,
                                                         "out/kernel": m2 > 0})
        m1, m2 = chosen["hidden/kernel"], chosen["out/kernel"]
    np.testing.assert_array_equal(masks["hidden/kernel"], m1)
    np.testing.assert_array_equal(masks["out/kernel"], m2)
    assert sum(mask.sum() for mask in masks.values()) == 5


def test_grasp_scores_are_minus_w_times_hessian_gradient_and_the_highest_go():
    # Linear softmax model: logits = X W / T, so H g has a closed form.
    temperature = 2.0
    w = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], np.float32)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, MaskedDense(2, mask="fixed", use_bias=False, name="lin")(inputs))
    model.layers[1].kernel_variable.assign(w)
    scores = grasp_scores(model, [(X, Y)], num_batches=1, temperature=temperature)["lin/kernel"]

    n = len(X)
    probs = softmax(X @ w / temperature)
    g = X.T @ (probs - np.eye(2)[Y]) / (n * temperature)
    z = X @ g / temperature  # directional change of the logits along g
    d_probs = probs * (z - (probs * z).sum(axis=1, keepdims=True))
    hg = X.T @ d_probs / (n * temperature)
    expected = -w * hg
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-8)

    # The convention: remove the HIGHEST S = -w * Hg, keep the lowest.
    masks = grasp_masks({"lin/kernel": scores}, sparsity=0.5, scope="layer")["lin/kernel"]
    order = np.argsort(expected.reshape(-1))
    assert masks.reshape(-1)[order[:3]].tolist() == [1, 1, 1]
    assert masks.reshape(-1)[order[3:]].tolist() == [0, 0, 0]
    assert masks.reshape(-1)[np.argmax(expected)] == 0
    assert masks.reshape(-1)[np.argmin(expected)] == 1


# ---------------------------------------------------------------------------
# Exact sparsity of every method.


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_every_method_hits_the_exact_sparsity(sample, scope):
    sparsity = 0.8
    for method in METHODS:
        keras.utils.set_random_seed(0)
        model = tiny_model(sample)
        options = fast_options(method=method, sparsity=sparsity, scope=scope,
                               dissipating_target="reach")
        data = batches(sample)
        masks, _ = compute_masks(model, data, options)
        callback = PRUNE_METHODS.get(method).callback(options)
        if callback is not None:  # dissipating methods prune while training
            callback.start(model)
            model.fit(data, epochs=options.dissipating_epochs, steps_per_epoch=2, verbose=0,
                      shuffle=False, callbacks=[callback])
            masks = get_masks(model)
        sizes = {path: mask.size for path, mask in masks.items()}
        kept = {path: int(mask.sum()) for path, mask in masks.items()}
        assert set(np.unique(np.concatenate([m.ravel() for m in masks.values()]))) <= {0, 1}
        if scope == "layer":
            assert kept == {path: int(round(0.2 * size)) for path, size in sizes.items()}, method
        else:
            assert sum(kept.values()) == int(round(0.2 * sum(sizes.values()))), method
        # The model trains under exactly that mask.
        for path, mask in get_masks(model).items():
            np.testing.assert_array_equal(mask, masks[path])


def test_global_scope_gives_layers_different_sparsities(sample):
    model = tiny_model(sample, compile=False)
    masks, _ = compute_masks(model, None, fast_options(method="magnitude", sparsity=0.8,
                                                       scope="global"))
    per_layer = {path: mask.mean() for path, mask in masks.items()}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05


# ---------------------------------------------------------------------------
# K-starts.


def test_kstarts_fitness_picks_per_criterion():
    # Three candidates, two layers. Magnitude favours 0, gradient favours 1, and
    # candidate 2 is second under both, best on their mean.
    magnitudes = [[3.0, 3.0], [1.0, 1.0], [2.5, 2.5]]
    gradients = [[1.0, 1.0], [3.0, 3.0], [2.5, 2.5]]
    assert np.argmax(kstarts_fitness(magnitudes, gradients, "magnitude")) == 0
    assert np.argmax(kstarts_fitness(magnitudes, gradients, "gradient")) == 1
    assert np.argmax(kstarts_fitness(magnitudes, gradients, "both")) == 2
    # Layers count the same whatever their scale.
    scaled = [[3.0, 300.0], [1.0, 100.0], [2.5, 250.0]]
    np.testing.assert_allclose(kstarts_fitness(scaled, gradients, "magnitude"),
                               kstarts_fitness(magnitudes, gradients, "magnitude"))


@pytest.mark.parametrize("fitness", ["magnitude", "gradient", "both"])
def test_kstarts_keeps_the_fittest_candidate(sample, fitness):
    keras.utils.set_random_seed(0)
    model = tiny_model(sample)
    initial = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    masks, info = kstarts_masks(model, batches(sample), sparsity=0.7, scope="layer", k=3,
                                epochs=1, fitness=fitness, seed=5, steps_per_epoch=2,
                                gradient_batches=2, mode="rewind")
    expected = kstarts_fitness(info["kstarts_magnitude"], info["kstarts_gradient"], fitness)
    np.testing.assert_allclose(info["kstarts_fitness"], expected)
    assert info["kstarts_chosen"] == int(np.argmax(expected))
    assert len(set(np.round(expected, 12))) == 3  # distinct candidates were measured
    # The winner is the chosen candidate's random mask, set on the rewound model.
    candidate = random_masks(model, 0.7, "layer", seed=[5, 1, info["kstarts_chosen"]],
                             rule="nearest")  # Haroon's count (no reference code)
    for path, mask in get_masks(model).items():
        np.testing.assert_array_equal(mask, candidate[path])
        np.testing.assert_array_equal(masks[path], candidate[path])
    for variable, value in zip(model.weights, initial):
        if "mask" not in variable.path:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)


def test_kstarts_continue_keeps_the_winners_trained_weights(sample):
    keras.utils.set_random_seed(0)
    model = tiny_model(sample)
    initial = {layer.kernel_variable.path: keras.ops.convert_to_numpy(layer.kernel_variable)
               for layer in model.layers if isinstance(layer, MaskedDense)}
    masks, info = kstarts_masks(model, batches(sample), sparsity=0.7, k=2, fitness="magnitude",
                                seed=1, steps_per_epoch=2, gradient_batches=1,
                                mode="continue")
    chosen = info["kstarts_chosen"]
    for index, path in enumerate(info["kstarts_layers"]):
        layer = next(l for l in model.layers if getattr(l, "kernel_variable", None) is not None
                     and l.kernel_variable.path == path)
        trained = keras.ops.convert_to_numpy(layer.kernel_variable)
        measured = np.abs(trained)[masks[path] > 0].mean() / np.abs(initial[path]).mean()
        assert measured == pytest.approx(info["kstarts_magnitude"][chosen][index], rel=1e-5)


# ---------------------------------------------------------------------------
# Dissipating gradients.


def test_dissipating_removes_exactly_the_weights_within_the_fraction():
    initial = {"a": np.array([1.0, -1.0, 2.0, 0.5, -4.0, 1.0]),
               "b": np.array([[1.0, 2.0], [3.0, -1.0]])}
    current = {"a": np.array([1.05, -1.5, 2.06, 0.5, -3.7, 0.0]),  # relative: .05 .5 .03 0 .075 1
               "b": np.array([[1.2, 2.1], [3.0, -0.95]])}          # relative: .2 .05 0 .05
    masks = {"a": np.array([1, 1, 1, 1, 1, 1], np.float32), "b": np.ones((2, 2), np.float32)}
    masks["a"][3] = 0  # already pruned: not removed twice, not counted
    within = {"a": [0, 2, 4], "b": [1, 2, 3]}

    new, stats = dissipating_step(masks, initial, current, fraction=0.1,
                                  allowed={"a": 0, "b": 0}, scope="layer")
    for path, positions in within.items():
        removed = np.flatnonzero((masks[path].reshape(-1) > 0) & (new[path].reshape(-1) == 0))
        assert removed.tolist() == positions
    assert stats == {"removed": 6, "removable": 6, "forced": 0}

    # The schedule caps the removal: the least moved go first.
    new, _ = dissipating_step(masks, initial, current, 0.1, {"a": 4, "b": 3}, "layer")
    assert new["a"].tolist() == [1, 1, 0, 0, 1, 1]
    assert new["b"].reshape(-1).tolist() == [1, 1, 0, 1]

    # Forced: the allowance is met exactly, beyond the fraction if need be.
    new, stats = dissipating_step(masks, initial, current, 0.1, {"a": 1, "b": 0}, "layer",
                                  force=True)
    assert int(new["a"].sum()) == 1 and new["a"][5] == 1  # the most moved stays
    assert stats["forced"] == 1 + 1  # a[1] in a, b[0] in b

    # Global: one ranking over both layers, same criterion.
    new, stats = dissipating_step(masks, initial, current, 0.1, allowed=0, scope="global")
    assert stats["removed"] == 6
    assert new["a"].tolist() == [0, 1, 0, 0, 0, 1]


def test_dissipating_schedules_end_exactly_at_the_target():
    for schedule in ("geometric", "linear", "greedy"):
        counts = [dissipating_allowed(1000, 20, e, 4, schedule) for e in range(1, 5)]
        assert counts[-1] == 20
        assert counts == sorted(counts, reverse=True)
    assert [dissipating_allowed(1000, 10, e, 2, "geometric") for e in (1, 2)] == [100, 10]
    assert [dissipating_allowed(1000, 200, e, 4, "linear") for e in (1, 2)] == [800, 600]
    assert dissipating_allowed(1000, 10, 1, 3, "greedy") == 10


def test_dissipating_callback_prunes_during_the_first_epochs(sample):
    keras.utils.set_random_seed(0)
    model = tiny_model(sample)
    callback = DissipatingCallback(sparsity=0.9, scope="layer", epochs=2, fraction=0.5,
                                   schedule="geometric", target="reach")
    callback.start(model)
    model.fit(batches(sample), epochs=3, steps_per_epoch=2, verbose=0, shuffle=False,
              callbacks=[callback])
    assert [entry["epoch"] for entry in callback.log] == [1, 2]
    first = callback.log[0]
    assert first["forced"] == 0 and first["removed"] <= first["removable"]
    for path, mask in get_masks(model).items():
        assert int(mask.sum()) == int(round(0.1 * mask.size)), path
    assert callback.log[1]["weights_remaining"] == pytest.approx(
        sum(round(0.1 * m.size) for m in get_masks(model).values())
        / sum(m.size for m in get_masks(model).values()))


# ---------------------------------------------------------------------------
# Layer collapse, shuffle, config.


def test_layer_collapse_is_reported_naming_the_layer(sample):
    # Per layer at 98%, width 0.01 (784-3-1-10), counted round(d x n): the 3x1 and 1x10
    # kernels keep round(0.06) = round(0.2) = 0 weights. (Synaptic-Flow's own count,
    # n - int(0.98 n), keeps at least one weight of every layer.)
    model = tiny_model(sample, width=0.01, compile=False)
    options = fast_options(method="random", sparsity=0.98, scope="layer", count_rule="nearest")
    with pytest.warns(LayerCollapseWarning) as record:
        _, info = compute_masks(model, None, options)
    assert info["collapsed_layers"] == ["dense2/kernel", "output/kernel"]
    messages = [str(w.message) for w in record if w.category is LayerCollapseWarning]
    assert len(messages) == 2
    assert "dense2/kernel" in messages[0] and "output/kernel" in messages[1]
    with pytest.raises(LayerCollapseError, match="dense2/kernel"):
        compute_masks(model, None, fast_options(method="random", sparsity=0.98, scope="layer",
                                                collapse="error", count_rule="nearest"))
    # Global magnitude: a layer of tiny weights is pruned away entirely.
    model = tiny_model(sample, compile=False)
    layer = model.get_layer("output")
    layer.kernel_variable.assign(1e-6 * np.ones(layer.kernel_variable.shape, np.float32))
    with pytest.warns(LayerCollapseWarning, match="output/kernel"):
        compute_masks(model, None, fast_options(method="magnitude", sparsity=0.9,
                                                scope="global"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = compute_masks(model, None, fast_options(method="magnitude", sparsity=0.9,
                                                          scope="layer"))
    assert info["collapsed_layers"] == []
    assert not [w for w in caught if issubclass(w.category, LayerCollapseWarning)]


def test_shuffle_keeps_layer_counts_and_moves_the_kept_weights(sample):
    model = tiny_model(sample, compile=False)
    data = [batches(sample)[0]]
    plain, _ = compute_masks(model, data, fast_options(method="snip", sparsity=0.8,
                                                       scope="global"))
    model = tiny_model(sample, compile=False)
    shuffled, _ = compute_masks(model, data, fast_options(method="snip", sparsity=0.8,
                                                          scope="global", shuffle=True))
    for path in plain:
        assert plain[path].sum() == shuffled[path].sum()
        assert not np.array_equal(plain[path], shuffled[path])


def test_shuffled_dissipating_searches_then_rewinds(sample):
    keras.utils.set_random_seed(0)
    model = tiny_model(sample)
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights
              if "mask" not in v.path]
    masks, info = compute_masks(model, batches(sample),
                                fast_options(method="dissipating", sparsity=0.8, shuffle=True,
                                             dissipating_target="reach"),
                                steps_per_epoch=2)
    assert len(info["dissipating_log"]) == 1
    after = [keras.ops.convert_to_numpy(v) for v in model.weights if "mask" not in v.path]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    for path, mask in get_masks(model).items():
        assert int(mask.sum()) == int(round(0.2 * mask.size))


@pytest.mark.parametrize("overrides, message", [
    (dict(method="obd"), "--method must be one of random, .*, got 'obd'"),
    (dict(sparsity=1.0), r"--sparsity .* \[0, 1\)"),
    (dict(sparsity=-0.1), r"--sparsity .* \[0, 1\)"),
    (dict(mask="topk"), "--mask must be fixed"),
    (dict(train_weights="false"), "--train_weights must be true"),
    (dict(method="dissipating", dissipating_epochs=5, epochs=3), "cannot exceed --epochs"),
    (dict(kstarts_k=0), "--kstarts_k must be at least 1"),
    (dict(method="kstarts", kstarts_epochs=4, epochs=3), "count inside --epochs"),
    (dict(method="kstarts_dissipating", kstarts_epochs=2, dissipating_epochs=2, epochs=3),
     "after --kstarts_epochs"),
    (dict(method="kstarts", kstarts_steps=5), "use it with --kstarts_mode=rewind"),
    (dict(kstarts_mode="restart"), "--kstarts_mode must be one of continue, rewind"),
    (dict(dissipating_target="exact"), "--dissipating_target must be one of"),
    (dict(scope="net"), "--scope must be one of auto, layer, global"),
])
def test_bad_settings_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        PruneInitConfig(**overrides)


def test_flagfiles_give_every_method_and_sparsity():
    paths = sorted(glob.glob(os.path.join(REPO, "flags", "prune_init_*.cfg")))
    assert [os.path.basename(p) for p in paths] == [
        "prune_init_conv2.cfg", "prune_init_conv4.cfg", "prune_init_conv6.cfg",
        "prune_init_fc.cfg"]
    for path in paths:
        for method in METHODS:
            for sparsity in ("0.5", "0.8", "0.9", "0.95", "0.98"):
                values = flags.FlagValues()
                define_flags(PruneInitConfig, flag_values=values)
                values(["prog", f"--flagfile={path}", f"--method={method}",
                        f"--sparsity={sparsity}"])
                config = from_flags(PruneInitConfig, values)
                assert config.method == method and config.sparsity == float(sparsity)
                assert config.mask == "fixed" and config.dataset in ("fashion_mnist", "cifar10")


# ---------------------------------------------------------------------------
# End to end.


def test_run_directory_holds_the_mask_and_the_method_facts(tmp_path, sample):
    settings = dict(model="fc", width=0.05, dataset="sample", train_size=256, batch_size=64,
                    epochs=2, verbose=0, optimizer="adam", lr=1e-2, sparsity=0.9,
                    dissipating_epochs=1, kstarts_k=2, kstarts_steps=2,
                    kstarts_gradient_batches=1, kstarts_mode="rewind",
                    dissipating_target="reach")
    run = tmp_path / "run"
    results = prune_init(PruneInitConfig(method="kstarts_dissipating", run_dir=str(run),
                                         **settings))
    stored = json.loads((run / "results.json").read_text())
    assert stored["method"] == "kstarts_dissipating" and stored["target_sparsity"] == 0.9
    assert stored["collapsed_layers"] == []
    assert [entry["epoch"] for entry in stored["dissipating_log"]] == [1]
    assert stored["kstarts_sparsity"] == pytest.approx(1 - 0.1 ** 0.5)
    assert 0.0 <= stored["test_accuracy"] <= 1.0
    assert stored["weights_remaining"] == pytest.approx(0.1, abs=2e-3)
    with np.load(run / "mask.npz") as saved:
        masks = {key: saved[key] for key in saved.files}
    assert set(masks) == set(stored["sparsity_per_layer"])
    for path, mask in masks.items():
        assert int(mask.sum()) == int(round(0.1 * mask.size))
        assert stored["sparsity_per_layer"][path] == pytest.approx(1 - mask.mean())
    assert "--method=kstarts_dissipating" in (run / "flags.txt").read_text()
    assert results["mask_sparsity"] == pytest.approx(stored["mask_sparsity"])

    # The shuffled twin of that mask: same counts per layer, other positions.
    model = tiny_model(sample, compile=False)
    twin, info = compute_masks(model, None, PruneOptions(method="kstarts_dissipating",
                                                         shuffle=True,
                                                         mask_file=str(run / "mask.npz")))
    assert info["mask_file"] == str(run / "mask.npz")
    for path, mask in masks.items():
        assert twin[path].sum() == mask.sum()
        assert not np.array_equal(twin[path], mask)
        np.testing.assert_array_equal(get_masks(model)[path], twin[path])


JAX_SCRIPT = r"""
import json, sys
import numpy as np
import keras
assert keras.backend.backend() == "jax"
sys.path.insert(0, sys.argv[1])
from test_prune_init import X, Y, hand_net
from tf_supermask.pruning import grasp_scores, snip_scores, synflow_scores
model = hand_net()
out = {name: {k: v.tolist() for k, v in scores.items()} for name, scores in (
    ("snip", snip_scores(model, [(X, Y)])),
    ("grasp", grasp_scores(model, [(X, Y)], temperature=3.0)),
    ("synflow", synflow_scores(model)))}
# K-starts (fit, the compiled gradient function, optimizer snapshots) and dissipating.
from tf_supermask.data import ArrayBatches
from tf_supermask.layers import get_masks
from tf_supermask.models import MaskOptions, build_model
from tf_supermask.pruning import DissipatingCallback, kstarts_masks
rng = np.random.default_rng(0)
data = ArrayBatches(rng.integers(0, 255, (128, 28, 28, 1), dtype=np.uint8),
                    rng.integers(0, 10, 128), 64)
net = build_model("fc", (28, 28, 1), 10, MaskOptions(mask="fixed", width=0.05))
net.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
masks, info = kstarts_masks(net, data, 0.5, k=2, steps_per_epoch=1, gradient_batches=1)
callback = DissipatingCallback(0.9, epochs=1, target="reach")
callback.start(net)
net.fit(data, epochs=1, steps_per_epoch=1, verbose=0, callbacks=[callback])
out["kept"] = {p: [int(m.sum()), int(m.size)] for p, m in get_masks(net).items()}
out["fitness"] = info["kstarts_fitness"]
print(json.dumps(out))
"""


def test_gradients_and_methods_under_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, os.path.dirname(__file__)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    model = hand_net()
    for name, scores in (("snip", snip_scores(model, [(X, Y)])),
                         ("grasp", grasp_scores(model, [(X, Y)], temperature=3.0)),
                         ("synflow", synflow_scores(model))):
        for path, value in scores.items():
            np.testing.assert_allclose(out[name][path], value, rtol=1e-4, atol=1e-7)
    assert out["kept"] == {p: [round(0.1 * n), n] for p, (_, n) in out["kept"].items()}
    assert len(out["fitness"]) == 2 and all(np.isfinite(out["fitness"]))


def test_every_method_choice_is_registered_with_its_auto_scope():
    from tf_supermask.pruning.options import METHOD_SCOPES, PruneOptions

    assert sorted(METHOD_SCOPES) == PRUNE_METHODS.names()
    assert PruneOptions(method="snip").resolved_scope == "global"
    assert PruneOptions(method="kstarts").resolved_scope == "layer"
    assert PruneOptions(method="snip", scope="layer").resolved_scope == "layer"
    with pytest.raises(ValueError, match="unknown pruning-at-initialization method 'snap'"):
        PruneOptions(method="snap").validate_options()
