"""The fused CPU mask kernels (layers/fused_ops.cc) against the rules computed by hand in
NumPy: the exact top-k with ties broken by position, the SplitMix64 Bernoulli draw, the
straight-through gradients; the same training with and without them; the fallback."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from conftest import reference_topk_keep as _reference_keep
from conftest import reference_uniforms as _reference_uniforms
from tf_supermask.layers import MaskedDense, fused, topk_kept_count
from tf_supermask.models import MaskOptions, build_model

pytestmark = pytest.mark.skipif(not fused.available(tf.zeros(())),
                                reason="fused kernels not built here (no compiler)")

def _scores(kind, size, rng):
    if kind == "normal":
        return rng.normal(scale=0.01, size=size).astype("float32")
    if kind == "ties":
        return rng.integers(-4, 5, size=size).astype("float32")
    if kind == "zeros":
        return np.zeros(size, "float32")
    return (1.0 + rng.integers(0, 3, size=size) * 2.0 ** -20).astype("float32")  # one bucket


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "one_bucket"])
@pytest.mark.parametrize("size,k", [(7, 0.5), (1000, 0.1), (50000, 0.5), (50000, 0.999)])
def test_topk_matches_the_sort_over_a_drifting_run(kind, size, k):
    # One traced function called again and again, as in training: the kernel starts
    # from the last threshold, which small drifts keep and jumps invalidate.
    rng = np.random.default_rng(size)
    scores = tf.Variable(_scores(kind, size, rng))
    kernel = tf.constant(rng.normal(size=size).astype("float32"))
    kept = topk_kept_count(k, size)
    select = tf.function(lambda: fused.library().supermask_top_k(scores, kernel, kept=kept))
    for step in range(8):
        masked, keep = select()
        expected = _reference_keep(scores.numpy(), kept)
        np.testing.assert_array_equal(keep.numpy(), expected, err_msg=f"step {step}")
        np.testing.assert_array_equal(masked.numpy(), np.where(expected, kernel.numpy(), 0))
        assert int(expected.sum()) == kept
        if step == 4:  # a jump far outside any remembered band
            scores.assign(scores * 1000.0 + 1.0)
        else:
            drift = rng.normal(scale=1e-4, size=size).astype("float32")
            scores.assign_add(drift if kind == "normal" else 0.0 * drift)


def test_topk_without_keep_output_gives_the_same_kernel():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 40)).astype("float32")
    kernel = rng.normal(size=(300, 40)).astype("float32")
    masked, keep = fused.library().supermask_top_k(scores, kernel, kept=5000, with_keep=False)
    assert keep.shape == (0,)
    np.testing.assert_array_equal(masked.numpy(),
                                  np.where(_reference_keep(scores, 5000), kernel, 0))


def test_topk_refuses_a_count_out_of_range():
    with pytest.raises(tf.errors.InvalidArgumentError, match="kept must be in"):
        fused.library().supermask_top_k(tf.ones(10), tf.ones(10), kept=11)


@pytest.mark.parametrize("size", [1, 7, 2048, 2049, 60001])
def test_bernoulli_draws_the_splitmix_uniforms_against_sigmoid(size):
    rng = np.random.default_rng(size)
    scores = rng.normal(scale=2.0, size=size).astype("float32")
    kernel = rng.normal(size=size).astype("float32")
    seed = np.array([12345, 678], np.int64)
    masked, keep, _ = fused.library().supermask_bernoulli(scores, kernel, seed)
    u = _reference_uniforms(seed, size)
    probs = (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)
    expected = u < probs
    close = np.abs(u - probs) < 1e-6  # the two sigmoids may differ in the last bits
    np.testing.assert_array_equal(keep.numpy()[~close], expected[~close])
    assert close.sum() <= max(2, size // 10000)
    np.testing.assert_array_equal(masked.numpy(), np.where(keep.numpy(), kernel, 0))
    again = fused.library().supermask_bernoulli(scores, kernel, seed)[1].numpy()
    np.testing.assert_array_equal(again, keep.numpy())  # the seed alone decides the draw


def test_bernoulli_rate_follows_the_probability_and_the_seed_changes_the_draw():
    size = 200000
    scores = np.full(size, np.log(0.3 / 0.7), np.float32)  # sigmoid = 0.3
    kernel = np.ones(size, np.float32)
    first = fused.library().supermask_bernoulli(scores, kernel, np.array([1, 0]))[1].numpy()
    second = fused.library().supermask_bernoulli(scores, kernel, np.array([1, 1]))[1].numpy()
    assert abs(first.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / size)
    assert abs((first & second).mean() - 0.09) < 0.005  # independent draws
    uniforms = _reference_uniforms([1, 0], size)
    counts, _ = np.histogram(uniforms, bins=16, range=(0.0, 1.0))
    assert np.all(np.abs(counts - size / 16) < 5 * np.sqrt(size / 16))


def test_score_gradients_match_the_formulas():
    rng = np.random.default_rng(1)
    g, w = (rng.normal(size=(64, 33)).astype("float32") for _ in range(2))
    s = rng.normal(size=(64, 33)).astype("float32")
    s[0, :5] = 0.0
    got = fused.library().supermask_top_k_grad(g, w, s).numpy()
    np.testing.assert_array_equal(got, (g * w) * np.sign(s))  # d |s| / d s = sign(s)
    slope = fused.library().supermask_bernoulli(s, w, np.array([3, 4]))[2].numpy()
    p = 1.0 / (1.0 + np.exp(-s.astype(np.float64)))
    np.testing.assert_allclose(slope, w * p * (1.0 - p), rtol=2e-6, atol=1e-9)


def _train(mode, enabled, monkeypatch, steps=4):
    monkeypatch.setattr(fused, "ENABLED", enabled)
    tf.keras.utils.set_random_seed(0)
    model = build_model("fc", (6, 6, 1), 3, MaskOptions(mask=mode, k=0.4, seed=2))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=16)
    for _ in range(steps):
        model.train_on_batch(x, y)
    return [np.array(v) for v in model.weights]


@pytest.mark.parametrize("mode", ["topk", "fixed"])
def test_training_is_bit_identical_with_and_without_the_fused_kernels(monkeypatch, mode):
    before = fused.uses[mode]
    with_fused = _train(mode, True, monkeypatch)
    assert fused.uses[mode] > before, "the fused arm did not take the fused path"
    before = fused.uses[mode]
    without = _train(mode, False, monkeypatch)
    assert fused.uses[mode] == before, "the keras.ops arm took the fused path"
    for a, b in zip(with_fused, without):
        np.testing.assert_array_equal(a, b)


def test_fixed_mask_product_and_its_gradient():
    rng = np.random.default_rng(4)
    kernel = tf.constant(rng.normal(size=(30, 7)).astype("float32"))
    mask = tf.constant((rng.uniform(size=(30, 7)) < 0.3).astype("float32"))
    upstream = rng.normal(size=(30, 7)).astype("float32")
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        product = fused.fixed_masked(kernel, mask)
        loss = tf.reduce_sum(product * upstream)
    np.testing.assert_array_equal(product.numpy(), kernel.numpy() * mask.numpy())
    np.testing.assert_array_equal(tape.gradient(loss, kernel).numpy(), upstream * mask.numpy())


def test_bernoulli_training_is_repeatable_and_the_kernel_is_used(monkeypatch):
    before = fused.uses["bernoulli"]
    first = _train("bernoulli", True, monkeypatch)
    second = _train("bernoulli", True, monkeypatch)
    assert fused.uses["bernoulli"] > before  # the fused draw ran
    before = fused.uses["bernoulli"]
    unfused = _train("bernoulli", False, monkeypatch)
    assert fused.uses["bernoulli"] == before
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # The draws differ between the two generators, so the scores do too.
    assert any(not np.array_equal(a, b) for a, b in zip(first, unfused))


def test_kernel_gradient_only_when_the_kernel_trains():
    x = np.random.default_rng(0).normal(size=(4, 30)).astype("float32")
    for train_weights in (False, True):
        layer = MaskedDense(5, mask="topk", k=0.5, seed=1, train_weights=train_weights)
        layer.build(x.shape)
        with tf.GradientTape() as tape:
            tape.watch(layer.kernel_variable.value)
            loss = tf.reduce_sum(layer(x, training=True))
        d_kernel = tape.gradient(loss, layer.kernel_variable.value)
        if train_weights:
            keep = _reference_keep(np.array(layer.scores), topk_kept_count(0.5, 150))
            expected = np.where(keep, np.tile(x.sum(0)[:, None], (1, 5)), 0.0)
            np.testing.assert_allclose(d_kernel.numpy(), expected, rtol=1e-5)
        else:
            assert d_kernel is None


def test_without_a_compiler_the_layers_fall_back_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(fused.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(fused, "COMPILER", str(tmp_path / "no-such-compiler"))
    fused.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=fused.__name__):
            assert fused.library() is None
            assert not fused.available(tf.zeros(()))
        assert "fused CPU mask kernels unavailable" in caplog.text
        assert list(tmp_path.iterdir()) == []  # no half-built library left behind
        weights = _train("topk", True, monkeypatch, steps=2)  # the keras.ops path
        assert all(np.all(np.isfinite(w)) for w in weights)
    finally:
        fused.library.cache_clear()


@pytest.mark.parametrize("mode", ["topk", "bernoulli"])
def test_xla_steps_use_the_keras_ops_masks(mode):
    # XLA cannot compile custom ops: under jit_compile the layers take the other path.
    model = build_model("fc", (6, 6, 1), 3, MaskOptions(mask=mode, k=0.4, seed=2))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 1)).astype("float32")
    loss = model.train_on_batch(x, np.arange(16) % 3)
    assert np.isfinite(loss)


@pytest.mark.parametrize("mode", ["topk", "bernoulli", "fixed"])
def test_the_fused_kernels_serve_every_masked_layer_kind(mode):
    # The kernels mask any kernel shape: the kinds sparsify adds take the fused path,
    # and compute what the keras.ops path computes.
    from tf_supermask.layers import (MaskedConv1D, MaskedConv2DTranspose,
                                     MaskedDepthwiseConv2D, MaskedEinsumDense)

    cases = [(MaskedConv1D(4, 3, mask=mode, seed=1), (2, 9, 3)),
             (MaskedDepthwiseConv2D(3, mask=mode, seed=2), (2, 6, 6, 3)),
             (MaskedConv2DTranspose(4, 3, strides=2, mask=mode, seed=3), (2, 5, 5, 3)),
             (MaskedEinsumDense("abc,cd->abd", (None, 5), bias_axes="d", mask=mode, seed=4),
              (2, 7, 3))]
    for layer, shape in cases:
        x = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
        layer.build(shape)
        before = fused.uses[mode]
        got = layer(x, training=True).numpy()
        assert fused.uses[mode] > before, f"{type(layer).__name__}: fused path not taken"
        if mode == "bernoulli":
            continue  # the fused draws are their own stream (tests above pin them)
        with fused.switched(False):
            want = layer(x, training=True).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
