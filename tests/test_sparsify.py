"""sparsify / strip on users' own Keras models: every layer kind, every mask mode, a
transformer encoder, keras.applications, the JAX backend, bad input, allocation, seeds."""

import json
import os
import subprocess
import sys

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


def _fit_and_save(masked, x, y, path, learning_rate=0.05):
    """One training step on (x, y), then strip -> `path`.keras; the masked model's
    evaluation output is saved beside (the loaded file must predict it)."""
    masked.compile(optimizer=keras.optimizers.SGD(learning_rate),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    masked.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    want = _numpy(masked(x, training=False))
    assert np.isfinite(want).all()
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


# keras.applications (the whole list: scripts/keras_applications_table.py) ---------------

def test_keras_applications_round_trip(tmp_path):
    builds = {
        "MobileNetV2": lambda: keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35,
            classifier_activation=None),
        "MobileNetV3Small": lambda: keras.applications.MobileNetV3Small(
            weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None),
    }
    x = RNG(8).uniform(size=(2, 32, 32, 3)).astype("float32")
    y = np.array([1, 7])
    paths = []
    for name, build in builds.items():
        model = build()
        masked = sparsify(model, mask="topk", k=0.5)
        assert len(masked_layers(masked)) > 10, name
        paths.append(str(tmp_path / name))
        _fit_and_save(masked, x, y, paths[-1], learning_rate=1e-3)
    for path, result in _load_elsewhere(paths).items():
        assert not result["tf_supermask_in_config"], path
        assert result["max_diff"] <= 1e-5, (path, result)


# A transformer encoder as a top-k supermask and as a lottery ticket ----------------------

def _encoder():
    inputs = keras.Input((8, 16))
    attended = keras.layers.MultiHeadAttention(2, 8, name="attention")(inputs, inputs)
    hidden = keras.layers.LayerNormalization()(keras.layers.Add()([inputs, attended]))
    forward = keras.layers.Dense(32, activation="relu", name="ff1")(hidden)
    forward = keras.layers.Dense(16, name="ff2")(forward)
    hidden = keras.layers.LayerNormalization()(keras.layers.Add()([hidden, forward]))
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    return keras.Model(inputs, keras.layers.Dense(3, name="classifier")(pooled))


def _sequences():
    rng = RNG(9)
    x = rng.normal(size=(64, 8, 16)).astype("float32")
    return x, np.argmax(x[:, :, :3].mean(axis=1), axis=1)


ENCODER_MASKED = ["attention_output", "classifier", "ff1", "ff2", "key", "query", "value"]


def _train(model, x, y, epochs, optimizer):
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(x, y, batch_size=16, epochs=epochs, verbose=0).history["loss"]


def test_transformer_encoder_trains_as_a_topk_supermask():
    x, y = _sequences()
    masked = sparsify(_encoder(), mask="topk", k=0.5)
    layers = masked_layers(masked)
    assert sorted(layer.name for layer in layers) == ENCODER_MASKED
    for layer in layers:  # only the scores learn; the kernels stay at their initialisation
        assert [w.name for w in layer.trainable_weights] == ["scores"], layer.name
    kernels = {layer.name: _numpy(layer.kernel_variable) for layer in layers}
    losses = _train(masked, x, y, 8, keras.optimizers.SGD(0.1, momentum=0.9))
    assert losses[-1] < 0.9 * losses[0], losses
    for layer in layers:
        np.testing.assert_array_equal(_numpy(layer.kernel_variable), kernels[layer.name])
        size = int(np.prod(layer.kernel_variable.shape))
        assert _numpy(layer.get_mask()).sum() == size - int(0.5 * size)


def test_transformer_encoder_trains_as_a_lottery_ticket():
    from tf_supermask.pruning.gradual import prune_by_magnitude

    x, y = _sequences()
    ticket = sparsify(_encoder(), mask="fixed", keep_weights=True)
    layers = masked_layers(ticket)
    assert sorted(layer.name for layer in layers) == ENCODER_MASKED
    initial = {layer.name: _numpy(layer.kernel_variable) for layer in layers}
    losses = _train(ticket, x, y, 5, keras.optimizers.Adam(1e-2))
    assert losses[-1] < losses[0], losses

    prune_by_magnitude(ticket, 0.5)
    masks = {}
    for layer in layers:  # each layer keeps its round(n / 2) largest trained |weights|
        mask = _numpy(layer.get_mask())
        magnitude = np.abs(_numpy(layer.kernel_variable))
        assert mask.sum() == round(0.5 * mask.size), layer.name
        assert magnitude[mask == 0].max() <= magnitude[mask == 1].min(), layer.name
        masks[layer.name] = mask
    for layer in layers:  # rewind the kept weights to their initial values
        layer.kernel_variable.assign(initial[layer.name])
    retrained = _train(ticket, x, y, 5, keras.optimizers.Adam(1e-2))
    assert retrained[-1] < retrained[0], retrained
    for layer in layers:
        np.testing.assert_array_equal(_numpy(layer.get_mask()), masks[layer.name])
        assert not np.any(_numpy(layer.kernel)[masks[layer.name] == 0])


# The JAX backend -----------------------------------------------------------------------

JAX_SCRIPT = r"""
import json, sys, zipfile
sys.path.insert(0, sys.argv[1])
import keras
import numpy as np
assert keras.backend.backend() == "jax"
from test_sparsify import _encoder, _fit_and_save, _nested_model, _sequences
from tf_supermask.layers import masked_layers
from tf_supermask.models import sparsify

rng = np.random.default_rng(10)
images = rng.normal(size=(8, 8, 8, 3)).astype("float32")
x, y = _sequences()
out = {}
for name, model, inputs, labels in [("nested", _nested_model(), images, y[:8]),
                                    ("encoder", _encoder(), x[:8], y[:8])]:
    masked = sparsify(model, mask="topk", k=0.5, seed=3)
    path = f"{sys.argv[2]}/{name}"
    want = _fit_and_save(masked, inputs, labels, path)
    with zipfile.ZipFile(path + ".keras") as archive:
        config = archive.read("config.json").decode()
    loaded = keras.saving.load_model(path + ".keras")  # plain Keras classes only
    got = keras.ops.convert_to_numpy(loaded(inputs, training=False))
    out[name] = {"masked": len(masked_layers(masked)),
                 "tf_supermask_in_config": "tf_supermask" in config or "Masked" in config,
                 "max_diff": float(np.abs(got - want).max())}
print(json.dumps(out))
"""


def test_jax_backend_round_trips_two_models(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, os.path.dirname(__file__),
                             str(tmp_path)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert {name: out[name]["masked"] for name in out} == {"nested": 4, "encoder": 7}
    for name, loaded in out.items():  # (loading without tf_supermask: the TensorFlow tests)
        assert not loaded["tf_supermask_in_config"], name
        assert loaded["max_diff"] <= 1e-5, (name, loaded)


# Bad input: one clear ValueError each ----------------------------------------------------

def _small_model():
    inputs = keras.Input((6, 4))
    hidden = keras.layers.LSTM(5, name="lstm")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden))


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=[keras.layers.LSTM]), "cannot mask LSTM layers; prunable layer types: "),
    (dict(layers=["nope"]), "no layer named 'nope' in the model"),
    (dict(layers=["lstm"]), "layer 'lstm' is not a prunable layer"),
    (dict(k=0), r"k is the fraction of weights kept and must be in \(0, 1\], got 0"),
    (dict(k=1.5), r"must be in \(0, 1\], got 1.5"),
    (dict(allocation="global_magic"), "allocation must be one of layer, kind, erk"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sparsify(_small_model(), **kwargs)


def test_an_unbuilt_or_subclassed_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"built model .* keras.Input\(shape\)"):
        sparsify(keras.Sequential([keras.layers.Dense(3)]))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, inputs):
            return self.dense(inputs)

    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="subclassed.*keras.Sequential or the functional API"):
        sparsify(model)
    with pytest.raises(ValueError, match="subclassed"):
        strip(model)


# Allocation of k across layers ---------------------------------------------------------

def test_erk_allocation_by_hand():
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(50, name="a")(inputs)
    hidden = keras.layers.Dense(30, name="b")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(hidden))
    masked = sparsify(model, mask="topk", k=0.3, allocation="erk")
    # RigL's rule: density_l = eps (n_in + n_out) / (n_in n_out), the total kept 0.3 of all.
    shapes = {"a": (20, 50), "b": (50, 30), "head": (30, 10)}
    sizes = {name: a * b for name, (a, b) in shapes.items()}
    raw = {name: (a + b) / (a * b) for name, (a, b) in shapes.items()}
    eps = 0.3 * sum(sizes.values()) / sum(raw[name] * sizes[name] for name in shapes)
    got = {layer.name: layer.k for layer in masked_layers(masked)}
    assert got == pytest.approx({name: eps * raw[name] for name in shapes})
    assert sum(got[name] * sizes[name] for name in shapes) == pytest.approx(0.3 * 2800)


def test_kind_allocation_and_layer_choice():
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    hidden = keras.layers.Conv2D(4, 3, name="conv")(hidden)
    hidden = keras.layers.Dense(8, name="hidden")(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden))
    masked = sparsify(model, mask="topk", k=0.5, allocation="kind",
                      kind_k={"conv": 0.2, "dense": 0.4, "output": 0.9})
    # The first conv stays the user's layer (the recipes' default); the classifier is "output".
    assert {layer.name: layer.k for layer in masked_layers(masked)} == {
        "conv": 0.2, "hidden": 0.4, "head": 0.9}
    masked = sparsify(model, mask="topk", k=0.5, allocation="kind", kind_k={"conv": 0.2},
                      prune_first_layer=True)
    assert {layer.name: layer.k for layer in masked_layers(masked)} == {
        "stem": 0.2, "conv": 0.2, "hidden": 0.5, "head": 0.5}
    assert [layer.name for layer in masked_layers(
        sparsify(model, layers=[keras.layers.Dense]))] == ["hidden", "head"]
    assert [layer.name for layer in masked_layers(
        sparsify(model, layers=lambda layer: layer.name == "head"))] == ["head"]
    assert [layer.name for layer in masked_layers(
        sparsify(model, layers=["conv", "head"]))] == ["conv", "head"]
    with pytest.raises(ValueError, match="stays dense by default.*prune_first_layer=True"):
        sparsify(model, layers=["stem"])


# Seeding --------------------------------------------------------------------------------

def _draws(model):
    return {f"{layer.name}/{w.name}": _numpy(w) for layer in masked_layers(model)
            for w in layer.weights}


def test_the_same_call_gives_the_same_scores_and_masks_another_seed_differs():
    model = _encoder()
    first = _draws(sparsify(model, mask="topk", k=0.5, seed=4))
    second = _draws(sparsify(model, mask="topk", k=0.5, seed=4))
    other = _draws(sparsify(model, mask="topk", k=0.5, seed=5))
    assert sorted(first) == sorted(second) == sorted(other)
    assert any(name.endswith("/scores") for name in first)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        if name.endswith(("/scores", "/kernel")):
            assert not np.array_equal(first[name], other[name]), name
    masks = [get_masks(sparsify(model, mask="bernoulli", seed=4)) for _ in range(2)]
    for path in masks[0]:
        np.testing.assert_array_equal(masks[0][path], masks[1][path])
