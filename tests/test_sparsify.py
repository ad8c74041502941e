"""sparsify / strip on users' own Keras models: every layer kind, every mask mode, a
transformer encoder, keras.applications, the JAX backend, bad input, allocation, seeds."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tf_supermask.layers import get_masks, masked_layers, set_masks
from tf_supermask.models import sparsify, strip

RNG = np.random.default_rng


def _numpy(value):
    return keras.ops.convert_to_numpy(value)


def _randomize(model, seed=1):
    """Random weights everywhere (biases too), so that copies are checked for real."""
    rng = RNG(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def _kernels(layer):
    """{name of the masked layer: the Keras layer's kernel it masks}."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return {sub.name: sub.kernel for sub in (layer._query_dense, layer._key_dense,
                                                 layer._value_dense, layer._output_dense)}
    if isinstance(layer, keras.layers.SeparableConv2D):
        return {f"{layer.name}_depthwise": layer.depthwise_kernel,
                f"{layer.name}_pointwise": layer.pointwise_kernel}
    return {layer.name: layer.kernel}


# Each masked kind computes what its Keras layer computes ----------------------------------

def _mha_model():
    inputs = keras.Input((5, 8))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="layer")(inputs, inputs)
    return keras.Model(inputs, outputs)


KINDS = {
    "Dense": (lambda: keras.layers.Dense(5, activation="relu", name="layer"), (6,)),
    "Dense3D": (lambda: keras.layers.Dense(5, name="layer"), (4, 6)),
    "Conv1D": (lambda: keras.layers.Conv1D(4, 3, strides=2, padding="same", name="layer"),
               (9, 3)),
    "Conv1D_causal": (lambda: keras.layers.Conv1D(4, 3, dilation_rate=2, padding="causal",
                                                  name="layer"), (9, 3)),
    "Conv2D": (lambda: keras.layers.Conv2D(4, 3, strides=2, padding="valid", activation="tanh",
                                           name="layer"), (8, 8, 3)),
    "Conv2D_groups": (lambda: keras.layers.Conv2D(4, 3, groups=2, padding="same",
                                                  name="layer"), (6, 6, 4)),
    "Conv3D": (lambda: keras.layers.Conv3D(2, 2, padding="same", name="layer"), (4, 4, 4, 2)),
    "DepthwiseConv2D": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2,
                                                             padding="same", name="layer"),
                        (7, 7, 3)),
    "SeparableConv2D": (lambda: keras.layers.SeparableConv2D(4, 3, strides=2, depth_multiplier=2,
                                                             activation="relu", name="layer"),
                        (8, 8, 3)),
    "Conv2DTranspose": (lambda: keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same",
                                                             name="layer"), (5, 5, 2)),
    "EinsumDense": (lambda: keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 6),
                                                     bias_axes="d", name="layer"), (5, 3)),
    "EinsumDense_nobias": (lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=4,
                                                            name="layer"), (3,)),
}


def _kind_model(kind):
    if kind == "MultiHeadAttention":
        return _randomize(_mha_model()), (5, 8)
    make, shape = KINDS[kind]
    inputs = keras.Input(shape)
    return _randomize(keras.Model(inputs, make()(inputs))), shape


@pytest.mark.parametrize("kind", list(KINDS) + ["MultiHeadAttention"])
def test_each_masked_kind_computes_its_keras_layer(kind):
    model, shape = _kind_model(kind)
    x = RNG(2).normal(size=(3,) + shape).astype("float32")
    want = _numpy(model(x))
    masked = sparsify(model, mask="fixed", keep_weights=True, prune_first_layer=True)
    layers = masked_layers(masked)
    assert layers and all(layer.mask_mode == "fixed" for layer in layers)
    np.testing.assert_allclose(_numpy(masked(x)), want, atol=1e-5, rtol=0)  # all-ones mask

    # A random 0/1 mask: the Keras layer with kernel * mask (set by hand) computes the same.
    rng = RNG(3)
    masks = {path: (rng.random(m.shape) < 0.5).astype("float32")
             for path, m in get_masks(masked).items()}
    set_masks(masked, masks)
    original = model.get_layer("layer")
    kernels = _kernels(original)
    assert sorted(kernels) == sorted(layer.name for layer in layers)
    for layer in layers:
        variable = kernels[layer.name]
        variable.assign(_numpy(variable) * masks[layer.kernel_variable.path])
    np.testing.assert_allclose(_numpy(masked(x)), _numpy(model(x)), atol=1e-5, rtol=0)
    # ... and so does the stripped model, made of Keras layers only.
    plain = strip(masked)
    assert not masked_layers(plain)
    np.testing.assert_allclose(_numpy(plain(x)), _numpy(model(x)), atol=1e-5, rtol=0)


def test_masked_dense_and_conv2d_match_the_formula_by_hand():
    rng = RNG(4)
    inputs = keras.Input((6, 6, 2))
    hidden = keras.layers.Conv2D(3, 3, strides=2, padding="valid", activation="relu")(inputs)
    outputs = keras.layers.Dense(4)(keras.layers.Flatten()(hidden))
    model = _randomize(keras.Model(inputs, outputs), seed=5)
    masked = sparsify(model, mask="fixed", keep_weights=True, prune_first_layer=True)
    conv, dense = masked_layers(masked)
    masks = {layer.kernel_variable.path: (rng.random(layer.kernel_variable.shape) < 0.5)
             .astype("float32") for layer in (conv, dense)}
    set_masks(masked, masks)
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")

    w = _numpy(conv.kernel_variable) * masks[conv.kernel_variable.path]
    b = _numpy(conv.bias)
    hidden = np.zeros((2, 2, 2, 3), "float32")
    for i in range(2):
        for j in range(2):
            patch = x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # (batch, 3, 3, 2)
            hidden[:, i, j, :] = np.einsum("nhwc,hwcf->nf", patch, w) + b
    hidden = np.maximum(hidden, 0).reshape(2, -1)
    w = _numpy(dense.kernel_variable) * masks[dense.kernel_variable.path]
    want = hidden @ w + _numpy(dense.bias)
    np.testing.assert_allclose(_numpy(masked(x)), want, atol=1e-5, rtol=0)


# Round trip: sparsify -> fit -> strip -> .keras -> plain Keras without tf_supermask -------

LOAD_WITHOUT_TF_SUPERMASK = r"""
import sys
sys.modules["tf_supermask"] = None  # importing tf_supermask now fails
import json, zipfile
import numpy as np
import keras
out = {}
for path in sys.argv[1:]:
    with zipfile.ZipFile(path + ".keras") as archive:
        config = archive.read("config.json").decode()
    model = keras.saving.load_model(path + ".keras")
    got = keras.ops.convert_to_numpy(model(np.load(path + "_x.npy"), training=False))
    out[path] = {"tf_supermask_in_config": "tf_supermask" in config or "Masked" in config,
                 "max_diff": float(np.abs(got - np.load(path + "_want.npy")).max())}
try:
    import tf_supermask  # noqa: F401
    out["importable"] = True
except ImportError:
    out["importable"] = False
print(json.dumps(out))
"""


def _load_elsewhere(paths, backend="tensorflow"):
    """Loads `paths` (.keras files with _x.npy and _want.npy beside) in a fresh process where
    tf_supermask cannot be imported: {path: {"max_diff", "tf_supermask_in_config"}}."""
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_TF_SUPERMASK, *paths],
                            capture_output=True, text=True, env=env, timeout=600,
                            cwd=os.path.dirname(paths[0]))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out.pop("importable") is False
    return out


def _fit_and_save(masked, x, y, path):
    """One training step on (x, y), then strip -> `path`.keras; the masked model's
    evaluation output is saved beside (the loaded file must predict it)."""
    masked.compile(optimizer=keras.optimizers.SGD(0.05),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    masked.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    want = _numpy(masked(x, training=False))
    plain = strip(masked)
    assert not masked_layers(plain)
    np.testing.assert_allclose(_numpy(plain(x, training=False)), want, atol=1e-5, rtol=0)
    plain.save(path + ".keras")
    np.save(path + "_x.npy", x)
    np.save(path + "_want.npy", want)
    return want


def _nested_model():
    block = keras.Sequential([keras.Input((8, 8, 4)),
                              keras.layers.Conv2D(6, 3, padding="same", activation="relu",
                                                  name="block_conv"),
                              keras.layers.BatchNormalization(),
                              keras.layers.DepthwiseConv2D(3, padding="same", name="block_dw")],
                             name="block")
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    hidden = keras.layers.GlobalAveragePooling2D()(block(hidden))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(hidden)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden))


def test_every_mask_mode_round_trips_to_plain_keras(tmp_path):
    rng = RNG(6)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=8)
    paths = []
    for mode in ("topk", "bernoulli", "fixed"):
        model = _nested_model()
        masked = sparsify(model, mask=mode, k=0.5, seed=1)
        # The first conv stays the user's own layer; the nested block's layers are masked.
        assert sorted(layer.name for layer in masked_layers(masked)) == [
            "block_conv", "block_dw", "head", "hidden"]
        assert type(masked.get_layer("stem")) is keras.layers.Conv2D
        if mode == "fixed":
            set_masks(masked, {p: (rng.random(m.shape) < 0.5).astype("float32")
                               for p, m in get_masks(masked).items()})
        paths.append(str(tmp_path / mode))
        _fit_and_save(masked, x, y, paths[-1])
    for path, result in _load_elsewhere(paths).items():
        assert not result["tf_supermask_in_config"], path
        assert result["max_diff"] <= 1e-5, (path, result)


def test_rescale_is_folded_into_the_stripped_kernel():
    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(6, name="head")(
        keras.layers.Dense(8, name="hidden")(inputs)))
    masked = sparsify(model, mask="topk", k=0.3, rescale=True)
    x = RNG(7).normal(size=(4, 10)).astype("float32")
    plain = strip(masked)
    for layer in masked_layers(masked):
        mask = _numpy(layer.get_mask())
        kept = mask.sum()
        assert kept == mask.size - int(0.7 * mask.size)
        want = _numpy(layer.kernel_variable) * mask * (mask.size / kept)
        np.testing.assert_allclose(_numpy(plain.get_layer(layer.name).kernel), want, rtol=1e-6)
    np.testing.assert_allclose(_numpy(plain(x)), _numpy(masked(x)), atol=1e-5, rtol=0)
