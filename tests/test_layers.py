import math

import keras
import numpy as np
import pytest
from keras import ops

from conftest import batch
from tf_supermask.layers import (INITIALIZERS, MASK_MODES, MaskedConv2D, MaskedDense, get_masks,
                                 topk_kept_count, set_masks, topk_binary_mask, weights_remaining)
from tf_supermask.models import MaskOptions, build_model

MODES = MASK_MODES.names()


def _model(mode, **kwargs):
    return build_model("fc", (6, 6, 1), 3, MaskOptions(mask=mode, width=0.1, **kwargs))


def _fit(model, steps=3, lr=0.1):
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = batch((16, 6, 6, 1))
    y = np.arange(16) % 3
    model.fit(x, y, batch_size=8, epochs=steps, verbose=0)


def test_registry_lists_all_modes():
    assert MODES == ["bernoulli", "dense", "fixed", "topk"]


@pytest.mark.parametrize("mode", ["bernoulli", "topk"])
def test_scores_get_gradient_and_frozen_weights_never_change(mode):
    model = _model(mode)
    kernels = {v.path: ops.convert_to_numpy(v) for v in model.non_trainable_weights
               if v.path.endswith("kernel")}
    scores = {v.path: ops.convert_to_numpy(v) for v in model.trainable_weights}
    assert kernels and all(path.endswith("scores") for path in scores)
    _fit(model)
    for v in model.non_trainable_weights:
        if v.path in kernels:
            np.testing.assert_array_equal(ops.convert_to_numpy(v), kernels[v.path])
    changed = [not np.allclose(ops.convert_to_numpy(v), scores[v.path]) for v in model.trainable_weights]
    assert all(changed)


@pytest.mark.parametrize("mode", ["bernoulli", "topk"])
def test_score_gradient_is_nonzero_for_every_layer(mode):
    import tensorflow as tf

    model = _model(mode)
    x = batch((8, 6, 6, 1))
    with tf.GradientTape() as tape:
        loss = ops.mean(ops.square(model(x, training=True)))
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None and float(ops.max(ops.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("mode", ["dense", "fixed"])
def test_weights_train_in_dense_and_fixed(mode):
    model = _model(mode)
    before = {v.path: ops.convert_to_numpy(v) for v in model.trainable_weights}
    assert any(path.endswith("kernel") for path in before)
    _fit(model)
    assert all(not np.allclose(ops.convert_to_numpy(v), before[v.path])
               for v in model.trainable_weights if v.path.endswith("kernel"))


@pytest.mark.parametrize("k", [0.05, 0.3, 0.5, 0.77, 1.0])
def test_topk_keeps_edge_popups_count_per_layer(k):
    """hidden-networks' GetSubnet zeroes int((1 - k) * n) entries; the rule of
    tf_supermask.counting named "nearest" keeps round(k * n) instead."""
    for rule, by_hand in [("hidden_networks", lambda n: n - int((1 - k) * n)),
                          ("nearest", lambda n: round(k * n))]:
        model = build_model("conv2", (8, 8, 3), 10,
                            MaskOptions(mask="topk", k=k, width=0.25, count_rule=rule))
        masks = get_masks(model)
        assert len(masks) == 5
        for path, mask in masks.items():
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert mask.sum() == topk_kept_count(k, mask.size, rule) == max(1, by_hand(mask.size)), path
    # Where the two differ: 7 of 10 at k = 0.65 (int(3.5) = 3 dropped) against round(6.5) = 6.
    layer = MaskedDense(10, mask="topk", k=0.65)
    layer.build((None, 1))
    assert float(ops.sum(layer.get_mask())) == 7
    nearest = MaskedDense.from_config({**layer.get_config(), "count_rule": "nearest"})
    nearest.build((None, 1))
    assert float(ops.sum(nearest.get_mask())) == 6
    assert MaskedDense.from_config(layer.get_config()).count_rule == "hidden_networks"
    # A layer saved before count rules had names counted round(k n), and still does.
    old = {key: value for key, value in layer.get_config().items() if key != "count_rule"}
    assert MaskedDense.from_config(old).count_rule == "nearest"


def test_topk_keeps_largest_magnitude_scores():
    layer = MaskedDense(4, mask="topk", k=0.25)
    layer.build((None, 4))
    scores = np.arange(16, dtype="float32").reshape(4, 4) - 8.0  # |s| largest: -8, 7, -7, 6
    layer.scores.assign(scores)
    mask = ops.convert_to_numpy(layer.get_mask())
    assert mask.sum() == 4
    assert set(np.abs(scores[mask == 1])) == {8.0, 7.0, 6.0}  # -8, 7, -7 and one of +/-6


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_evaluation_repeats(mode):
    model = _model(mode)
    x = batch((5, 6, 6, 1))
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(model(x)))


def test_bernoulli_training_samples_and_eval_thresholds():
    layer = MaskedDense(64, mask="bernoulli", kernel_initializer="kaiming_normal", use_bias=False)
    x = batch((2, 32))
    layer.build(x.shape)
    layer.scores.assign(np.zeros((32, 64), "float32") + 0.1)  # p = 0.525 everywhere
    first = ops.convert_to_numpy(layer(x, training=True))
    second = ops.convert_to_numpy(layer(x, training=True))
    assert not np.allclose(first, second)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), x @ ops.convert_to_numpy(layer.kernel_variable),
                               rtol=1e-5, atol=1e-5)
    sampled = MaskedDense(64, mask="bernoulli", eval_sample=True)
    sampled.build(x.shape)
    assert not np.allclose(ops.convert_to_numpy(sampled(x)), ops.convert_to_numpy(sampled(x)))


def test_bernoulli_mask_follows_sigmoid_probability():
    layer = MaskedDense(200, mask="bernoulli", use_bias=False)
    layer.build((None, 100))
    layer.scores.assign(np.full((100, 200), math.log(0.2 / 0.8), "float32"))  # p = 0.2
    masks = [ops.convert_to_numpy(layer._mode.mask(layer, training=True)) for _ in range(3)]
    assert abs(np.mean(masks) - 0.2) < 0.01


def test_rescale_multiplies_by_weights_over_kept():
    layer = MaskedDense(10, mask="topk", k=0.25, rescale=True, use_bias=False)
    layer.build((None, 8))
    kernel = ops.convert_to_numpy(layer.kernel_variable)
    mask = ops.convert_to_numpy(layer.get_mask())
    np.testing.assert_allclose(ops.convert_to_numpy(layer.kernel), kernel * mask * 80 / 20, rtol=1e-6)


def test_fixed_mask_set_and_read_by_variable_path():
    model = _model("fixed")
    masks = get_masks(model)
    assert all(m.all() for m in masks.values())
    rng = np.random.default_rng(1)
    new = {path: (rng.random(m.shape) < 0.3).astype("float32") for path, m in masks.items()}
    set_masks(model, new)
    for path, mask in get_masks(model).items():
        np.testing.assert_array_equal(mask, new[path])
    overall, per_layer = weights_remaining(model)
    assert set(per_layer) == set(new)
    assert overall == pytest.approx(sum(m.sum() for m in new.values()) / sum(m.size for m in new.values()))
    with pytest.raises(ValueError, match="no masked layer"):
        set_masks(model, {"nope/kernel": np.ones(3)})


def test_fixed_mask_keeps_pruned_weights_out_of_the_output_through_training():
    model = _model("fixed")
    masks = {p: (np.random.default_rng(2).random(m.shape) < 0.5).astype("float32")
             for p, m in get_masks(model).items()}
    set_masks(model, masks)
    _fit(model)
    from tf_supermask.layers import masked_layers
    for layer in masked_layers(model):
        effective = ops.convert_to_numpy(layer.kernel)
        assert np.all(effective[masks[layer.kernel_variable.path] == 0] == 0)
        np.testing.assert_array_equal(ops.convert_to_numpy(layer.get_mask()), masks[layer.kernel_variable.path])


@pytest.mark.parametrize("mode", ["bernoulli", "topk"])
def test_score_modes_accept_a_mask(mode):
    model = _model(mode, k=0.5)
    target = {}
    for path, mask in get_masks(model).items():
        flat = np.zeros(mask.size, "float32")
        flat[np.random.default_rng(3).permutation(mask.size)[:topk_kept_count(0.5, mask.size)]] = 1
        target[path] = flat.reshape(mask.shape)
    set_masks(model, target)
    for path, mask in get_masks(model).items():
        np.testing.assert_array_equal(mask, target[path])


def test_topk_rejects_a_mask_with_the_wrong_count():
    model = _model("topk", k=0.5)
    path, mask = next(iter(get_masks(model).items()))
    with pytest.raises(ValueError, match="keeps"):
        set_masks(model, {path: np.ones_like(mask)})


def test_dense_mode_rejects_a_mask():
    layer = MaskedDense(3)
    layer.build((None, 2))
    with pytest.raises(ValueError, match="fixed"):
        layer.set_mask(np.ones((2, 3)))


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5])
def test_k_outside_unit_interval_is_refused(k):
    with pytest.raises(ValueError, match=r"fraction of weights kept"):
        MaskedDense(3, mask="topk", k=k)
    # MaskOptions leaves k to the layers it builds (one check on the way from --k).
    with pytest.raises(ValueError, match=r"fraction of weights kept"):
        build_model("fc", (4, 4, 1), 2, MaskOptions(mask="topk", k=k))


def test_unknown_mask_mode_lists_the_choices():
    with pytest.raises(ValueError, match="bernoulli, dense, fixed, topk"):
        MaskedDense(3, mask="nope")


@pytest.mark.parametrize("mode", MODES)
def test_conv_layer_matches_keras_conv_with_the_effective_kernel(mode):
    layer = MaskedConv2D(4, 3, mask=mode, k=0.5, strides=2)
    x = batch((2, 9, 9, 3))
    out = ops.convert_to_numpy(layer(x))
    reference = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False)
    reference.build(x.shape)
    reference.kernel.assign(layer.kernel)
    bias = 0 if layer.bias is None else ops.convert_to_numpy(layer.bias)
    np.testing.assert_allclose(out, ops.convert_to_numpy(reference(x)) + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_keras_save_and_load_round_trip(tmp_path, mode):
    model = build_model("conv2", (8, 8, 3), 4, MaskOptions(mask=mode, k=0.3, width=0.125,
                                                          batchnorm="nonaffine", rescale=True))
    if mode == "fixed":
        set_masks(model, {p: (np.random.default_rng(0).random(m.shape) < 0.4).astype("float32")
                          for p, m in get_masks(model).items()})
    x = batch((3, 8, 8, 3))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)),
                               rtol=1e-6, atol=1e-6)
    for key, mask in get_masks(model).items():
        np.testing.assert_array_equal(get_masks(loaded)[key], mask)


# Initializers -----------------------------------------------------------------

def test_initializer_registry_names():
    assert {"glorot_normal", "glorot_uniform", "kaiming_normal", "kaiming_uniform",
            "signed_kaiming_constant", "signed_glorot_constant"} <= set(INITIALIZERS.names())


@pytest.mark.parametrize("name,expected_std", [
    ("kaiming_normal", math.sqrt(2 / 576)), ("kaiming_uniform", math.sqrt(2 / 576)),
    ("glorot_normal", math.sqrt(2 / (576 + 1152))), ("glorot_uniform", math.sqrt(2 / (576 + 1152)))])
def test_initializer_standard_deviations(name, expected_std):
    values = ops.convert_to_numpy(INITIALIZERS.get(name)(seed=1)((3, 3, 64, 128)))
    assert values.std() == pytest.approx(expected_std, rel=0.02)


@pytest.mark.parametrize("fan_scale", [1.0, 0.5])
def test_signed_kaiming_constant_is_plus_minus_gain_over_sqrt_fan(fan_scale):
    values = ops.convert_to_numpy(INITIALIZERS.get("signed_kaiming_constant")(seed=1, fan_scale=fan_scale)(
        (3, 3, 16, 32)))
    std = math.sqrt(2.0) / math.sqrt(3 * 3 * 16 * fan_scale)
    np.testing.assert_allclose(np.unique(np.abs(values)), [std], rtol=1e-6)
    assert 0.45 < (values > 0).mean() < 0.55


def test_initializers_are_deterministic_for_a_seed():
    init = INITIALIZERS.get("kaiming_normal")
    a = ops.convert_to_numpy(init(seed=3)((20, 30)))
    b = ops.convert_to_numpy(init(seed=3)((20, 30)))
    c = ops.convert_to_numpy(init(seed=4)((20, 30)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_models_are_deterministic_for_a_seed():
    first = build_model("fc", (4, 4, 1), 3, MaskOptions(mask="topk", seed=5))
    second = build_model("fc", (4, 4, 1), 3, MaskOptions(mask="topk", seed=5))
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


@pytest.mark.parametrize("size,k", [(7, 0.5), (1000, 0.1), (4096, 0.73), (65537, 0.5)])
def test_topk_mask_matches_a_sort(size, k):
    values = np.random.default_rng(size).normal(size=size).astype("float32")
    mask = ops.convert_to_numpy(topk_binary_mask(values, k))
    kept = topk_kept_count(k, size)
    expected = np.zeros(size, "float32")
    expected[np.argsort(-np.abs(values), kind="stable")[:kept]] = 1
    np.testing.assert_array_equal(mask, expected)


def test_topk_mask_breaks_ties_by_position():
    values = np.array([1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 3.0, -2.0], "float32")
    mask = ops.convert_to_numpy(topk_binary_mask(values, 0.5))  # keeps 4: the 3 and the first three |2|
    np.testing.assert_array_equal(mask, [0, 1, 1, 1, 0, 0, 1, 0])
    zeros = ops.convert_to_numpy(topk_binary_mask(np.zeros(10, "float32"), 0.3))
    np.testing.assert_array_equal(zeros, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("size", [20000, 3_000_000])
def test_radix_select_breaks_large_ties_by_position(size):
    values = np.random.default_rng(0).integers(0, 5, size=size).astype("float32")  # heavy ties
    mask = ops.convert_to_numpy(topk_binary_mask(values, 0.37))
    expected = np.zeros(size, "float32")
    expected[np.argsort(-values, kind="stable")[:topk_kept_count(0.37, size)]] = 1
    np.testing.assert_array_equal(mask, expected)
