"""The layers, models and training loop under KERAS_BACKEND=jax (a subprocess per check)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")

SCRIPT = r"""
import json, sys
import numpy as np
import keras
from keras import ops
assert keras.backend.backend() == "jax"
from tf_supermask.layers import get_masks, topk_kept_count, masked_layers, set_masks
from tf_supermask.models import MaskOptions, build_model

out = {}
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 16, 16, 3)).astype("float32")
y = rng.integers(0, 10, size=32)
for mode in ["dense", "bernoulli", "topk", "fixed"]:
    model = build_model("conv2", (16, 16, 3), 10, MaskOptions(mask=mode, k=0.3, width=0.25))
    if mode == "fixed":
        set_masks(model, {p: (rng.random(m.shape) < 0.5).astype("float32")
                          for p, m in get_masks(model).items()})
    frozen = {v.path: np.array(v) for v in model.non_trainable_weights}
    trainable = {v.path: np.array(v) for v in model.trainable_weights}
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    counts = {p: [float(m.sum()), int(m.size)] for p, m in get_masks(model).items()}
    out[mode] = {
        "loss": [float(v) for v in history.history["loss"]],
        "frozen_unchanged": all(np.array_equal(np.array(v), frozen[v.path])
                                for v in model.non_trainable_weights),
        "trainable_changed": all(not np.allclose(np.array(v), trainable[v.path])
                                 for v in model.trainable_weights),
        "mask_counts": counts,
        "eval_repeats": bool(np.array_equal(np.array(model(x[:4])), np.array(model(x[:4])))),
    }
# The radix-select path (layers over 8192 weights) under jit.
from tf_supermask.layers.masks import topk_binary_mask
import jax
big = rng.integers(0, 7, size=300_000).astype("float32")
mask = np.array(jax.jit(lambda v: topk_binary_mask(v, 0.4))(big))
expected = np.zeros(big.size, "float32")
expected[np.argsort(-big, kind="stable")[:topk_kept_count(0.4, big.size)]] = 1
out["radix_exact"] = bool(np.array_equal(mask, expected))
print(json.dumps(out))
"""


def _run(script, *args):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_mask_mode_builds_and_fits_a_conv_model_under_jax():
    out = _run(SCRIPT)
    for mode in ["dense", "bernoulli", "topk", "fixed"]:
        assert out[mode]["frozen_unchanged"], mode
        assert out[mode]["trainable_changed"], mode
        assert out[mode]["eval_repeats"], mode
        assert all(np.isfinite(out[mode]["loss"])), mode
    for kept, size in out["topk"]["mask_counts"].values():
        assert kept == max(1, size - int((1 - 0.3) * size))  # edge-popup's count
    assert out["radix_exact"]


TRAIN_SCRIPT = r"""
import json, sys
from tf_supermask.training import TrainConfig, train
results = train(TrainConfig(model="fc", width=0.25, mask="topk", k=0.5, dataset="sample",
                            train_size=512, batch_size=64, epochs=1, verbose=0, run_dir=sys.argv[1]))
print(json.dumps(results))
"""


def test_training_binary_path_runs_under_jax(tmp_path):
    results = _run(TRAIN_SCRIPT, str(tmp_path / "run"))
    assert results["backend"] == "jax"
    assert abs(results["weights_remaining"] - 0.5) < 1e-3
    assert (tmp_path / "run" / "results.json").exists()


