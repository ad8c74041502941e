"""The fast paths: every exact top-k select, the fused straight-through masks, the device
input pipeline, steps_per_execution and float32 masks under mixed precision (TensorFlow
here, JAX in a subprocess)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from tf_supermask.data.device import DeviceBatches, crop_and_flip
from tf_supermask.data.pipeline import ArrayBatches, crop_and_flip_draws, random_crop_and_flip
from conftest import reference_topk_keep
from conftest import reference_uniforms as _reference_uniforms
from tf_supermask.layers import MaskedDense, fused, topk_kept_count
from tf_supermask.layers import masks as masks_lib


def _reference_mask(values, k):
    """Edge-popup's rule by hand: the round(k n) largest |values|, earliest first on ties."""
    return reference_topk_keep(values, topk_kept_count(k, np.size(values))).astype(np.float32)


def _inputs():
    rng = np.random.default_rng(7)
    return {
        "normal": rng.normal(size=12000).astype("float32"),
        "ties": rng.integers(-4, 5, size=20000).astype("float32"),  # 9 values, signs mixed
        "zeros": np.zeros(9000, "float32"),
        "matrix": rng.uniform(-0.05, 0.05, size=(300, 40)).astype("float32"),
        "one_bucket": (1.0 + rng.integers(0, 3, size=10000) * 2.0 ** -20).astype("float32"),
    }


@pytest.mark.parametrize("method", ["sort", "radix", "count", "bucket"])
@pytest.mark.parametrize("name", sorted(_inputs()))
def test_every_topk_method_keeps_the_same_entries(method, name):
    values = _inputs()[name]
    for k in (0.37, 0.5, 0.999):
        expected = _reference_mask(values, k)
        eager = ops.convert_to_numpy(masks_lib.topk_binary_mask(values, k, method))
        graph = tf.function(lambda v: masks_lib.topk_binary_mask(v, k, method))(values).numpy()
        np.testing.assert_array_equal(eager, expected, err_msg=f"{method} {name} k={k}")
        np.testing.assert_array_equal(graph, expected, err_msg=f"{method} {name} k={k} graph")


@pytest.mark.parametrize("digit_bits", [1, 2, 3, 4])
def test_counting_passes_agree_for_every_digit_width(monkeypatch, digit_bits):
    # The GPU uses 4-bit digits, the CPU 1-bit ones: both are checked here.
    monkeypatch.setattr(masks_lib, "COUNT_DIGIT_BITS", {"cpu": digit_bits, "gpu": digit_bits})
    for name in ("normal", "ties", "one_bucket"):
        values = _inputs()[name][:6000]
        mask = ops.convert_to_numpy(masks_lib.topk_binary_mask(values, 0.41, "count"))
        np.testing.assert_array_equal(mask, _reference_mask(values, 0.41), err_msg=name)


def test_bucket_select_steps_aside_under_xla():
    values = _inputs()["ties"]
    xla = tf.function(lambda v: masks_lib.topk_binary_mask(v, 0.3, "bucket"), jit_compile=True)
    np.testing.assert_array_equal(xla(values).numpy(), _reference_mask(values, 0.3))


def test_auto_method_depends_on_backend_platform_and_size():
    assert masks_lib.topk_method_for(1000, "tensorflow", "cpu") == "sort"
    assert masks_lib.topk_method_for(235200, "tensorflow", "cpu") == "bucket"
    assert masks_lib.topk_method_for(235200, "jax", "cpu") == "radix"
    assert masks_lib.topk_method_for(235200, "jax", "gpu") == "count"


def _manual_gradients(mode, kernel, scores, noise, x, upstream_weights):
    """d loss / d kernel and d loss / d scores by hand, loss = sum(w * (x @ (kernel * mask)))."""
    if mode == "topk":
        keep = _reference_mask(scores, 0.3)
        d_mask_d_scores = np.sign(scores)  # straight through to |score|
    else:
        probs = 1.0 / (1.0 + np.exp(-scores))
        keep = (noise < probs).astype(np.float32)
        d_mask_d_scores = probs * (1.0 - probs)  # straight through to sigmoid(score)
    d_effective = x.T @ upstream_weights
    return keep, d_effective * keep, d_effective * kernel * d_mask_d_scores


@pytest.mark.parametrize("use_kernels", [False, True])
@pytest.mark.parametrize("mode", ["topk", "bernoulli"])
def test_fused_straight_through_forward_and_gradients(monkeypatch, mode, use_kernels):
    # use_kernels: the fused CPU kernels (layers/fused.py), whose Bernoulli draw is
    # SplitMix64 of the layer's seed (computed by hand in test_fused), else keras.ops.
    if use_kernels and not fused.available(tf.zeros(())):
        pytest.skip("fused kernels not built here")
    monkeypatch.setattr(fused, "ENABLED", use_kernels)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 300)).astype("float32")
    weights = rng.normal(size=(8, 40)).astype("float32")
    layer = MaskedDense(40, mask=mode, k=0.3, seed=1, use_bias=False, train_weights=True)
    layer.build(x.shape)
    state = np.array(layer.seed_generator.state)
    if use_kernels:
        noise = _reference_uniforms(state, 300 * 40).reshape(300, 40)
    else:
        noise = ops.convert_to_numpy(keras.random.uniform((300, 40), seed=layer.seed_generator))
        layer.seed_generator.state.assign(state)  # the layer draws that same noise
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(weights * layer(x, training=True))
    d_kernel, d_scores = tape.gradient(loss, [layer.kernel_variable, layer.scores])
    kernel, scores = np.array(layer.kernel_variable), np.array(layer.scores)
    keep, expected_kernel, expected_scores = _manual_gradients(mode, kernel, scores, noise, x,
                                                               weights)
    effective = ops.convert_to_numpy(layer.effective_kernel(training=False))
    if mode == "topk":  # evaluation uses the same exact top-k mask
        np.testing.assert_array_equal(effective, kernel * keep)
    np.testing.assert_allclose(d_kernel.numpy(), expected_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_scores.numpy(), expected_scores, rtol=1e-5, atol=1e-6)


def test_crop_and_flip_matches_the_numpy_augmentation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 7, 5, 3), dtype=np.uint8)
    reference = random_crop_and_flip(images, np.random.default_rng(11))
    offsets, flips = crop_and_flip_draws(40, np.random.default_rng(11))  # the same draws
    tops, lefts = np.divmod(offsets.astype(np.int32), 9)
    np.testing.assert_array_equal(ops.convert_to_numpy(crop_and_flip(images, tops, lefts, flips)),
                                  reference)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("normalization", [None, ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))])
def test_device_batches_equal_array_batches_for_several_epochs(augment, normalization):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(70, 8, 6, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=70)
    kwargs = dict(shuffle=True, augment=augment, seed=5, normalization=normalization,
                  steps_per_epoch=4)
    host, device = ArrayBatches(x, y, 16, **kwargs), DeviceBatches(x, y, 16, **kwargs)
    assert len(host) == len(device) == 4
    for _ in range(3):
        for index in range(len(host)):
            host_x, host_y = host[index]
            device_x, device_y = (ops.convert_to_numpy(t) for t in device[index])
            np.testing.assert_array_equal(device_y, host_y)
            if normalization is None:  # x / 255 on both sides: bit for bit
                np.testing.assert_array_equal(device_x, host_x)
            else:
                np.testing.assert_allclose(device_x, host_x, rtol=1e-6, atol=1e-6)
        host.on_epoch_end()
        device.on_epoch_end()


def test_train_with_the_device_pipeline_and_steps_per_execution(tmp_path):
    from tf_supermask.training import TrainConfig, train
    from tf_supermask.training.trainer import create_model, load_data

    config = TrainConfig(model="fc", width=0.25, mask="topk", k=0.3, dataset="sample",
                         train_size=256, batch_size=64, epochs=2, verbose=0,
                         input_pipeline="device", steps_per_execution=2,
                         run_dir=str(tmp_path / "run"))
    dataset, _ = load_data(config)
    assert create_model(config, dataset, 4).steps_per_execution == 2
    results = train(config)
    assert abs(results["weights_remaining"] - 0.3) < 1e-3
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header, one row per epoch


def test_mixed_precision_keeps_scores_and_masks_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x = np.random.default_rng(0).normal(size=(4, 50)).astype("float32")
        for mode in ("topk", "bernoulli", "fixed"):
            layer = MaskedDense(20, mask=mode, k=0.5)
            out = layer(x, training=True)
            assert out.dtype == "float16"
            variable = layer.mask_variable if mode == "fixed" else layer.scores
            assert variable.dtype == "float32"
            assert ops.convert_to_numpy(layer.get_mask()).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy(previous)


JAX_SCRIPT = r"""
import json, sys
import numpy as np
import jax, keras
from keras import ops
assert keras.backend.backend() == "jax"
from tf_supermask.data.device import DeviceBatches
from tf_supermask.data.pipeline import ArrayBatches
from tf_supermask.layers import MaskedDense, topk_kept_count
from tf_supermask.layers import masks

out = {}
rng = np.random.default_rng(0)
exact = {}
for name, values in {"normal": rng.normal(size=20000), "ties": rng.integers(-3, 4, size=20000),
                     "zeros": np.zeros(5000)}.items():
    values = values.astype("float32")
    expected = np.zeros(values.size, "float32")
    expected[np.argsort(-np.abs(values), kind="stable")[:topk_kept_count(0.4, values.size)]] = 1
    for method in ["sort", "radix", "count", "bucket"]:
        got = np.asarray(jax.jit(lambda v: masks.topk_binary_mask(v, 0.4, method))(values))
        exact[f"{name}/{method}"] = bool(np.array_equal(got, expected))
out["exact"] = exact
x = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
y = rng.integers(0, 10, size=50)
same = []
for augment in (False, True):
    host = ArrayBatches(x, y, 16, shuffle=True, augment=augment, seed=2)
    device = DeviceBatches(x, y, 16, shuffle=True, augment=augment, seed=2)
    for _ in range(2):
        for i in range(len(host)):
            hx, hy = host[i]
            dx, dy = device[i]
            same.append(bool(np.array_equal(np.asarray(dx), hx) and np.array_equal(np.asarray(dy), hy)))
        host.on_epoch_end(); device.on_epoch_end()
out["device_batches_equal"] = all(same) and len(same) == 16
keras.mixed_precision.set_global_policy("mixed_bfloat16")
dtypes = {}
for mode in ("topk", "bernoulli", "fixed"):
    layer = MaskedDense(20, mask=mode, k=0.5)
    result = layer(rng.normal(size=(4, 30)).astype("float32"), training=True)
    variable = layer.mask_variable if mode == "fixed" else layer.scores
    dtypes[mode] = [str(result.dtype), str(variable.dtype), str(layer.kernel_variable.dtype)]
out["dtypes"] = dtypes
keras.mixed_precision.set_global_policy("float32")
from tf_supermask.training import TrainConfig, train
results = train(TrainConfig(model="fc", width=0.25, mask="topk", k=0.5, dataset="sample",
                            train_size=256, batch_size=64, epochs=2, verbose=0,
                            input_pipeline="device", steps_per_execution=2, run_dir=sys.argv[1]))
out["weights_remaining"] = results["weights_remaining"]
out["history_epochs"] = len(results["history"]["loss"])
print(json.dumps(out))
"""


def test_fast_paths_under_jax(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(out["exact"].values()), out["exact"]
    assert out["device_batches_equal"]
    for mode, (output, mask_dtype, kernel_dtype) in out["dtypes"].items():
        assert (output, mask_dtype, kernel_dtype) == ("bfloat16", "float32", "float32"), mode
    assert abs(out["weights_remaining"] - 0.5) < 1e-3
    assert out["history_epochs"] == 2
