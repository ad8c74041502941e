"""PatchesInit: filters that are data patches, at the Kaiming scale, deterministic."""

import json

import keras
import numpy as np
import pytest

from conftest import kernels
from tf_supermask.layers import MaskedConv2D, MaskedDense, masked_layers
from tf_supermask.models import MaskOptions, build_model
from tf_supermask.layers.patches import PatchesOptions, kaiming_std, patches_init
from tf_supermask.training import TrainConfig, train

CONV_COUNTS = {"conv2": 2, "conv4": 4, "conv6": 6, "conv8": 8}


def smooth_images(count, size=32, channels=3, seed=0):
    """Normalised-looking images with spatial structure (2x2-upsampled noise plus a ramp)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(count, size // 2, size // 2, channels))
    images = coarse.repeat(2, axis=1).repeat(2, axis=2)
    ramp = np.linspace(-1, 1, size)[None, :, None, None] * rng.normal(size=(count, 1, 1, channels))
    return (images + ramp).astype("float32")


def model_for(name="conv4", mask="topk", width=0.125, seed=0, **kwargs):
    options = MaskOptions(mask=mask, k=0.5, init="signed_kaiming_constant", width=width,
                          seed=seed, **kwargs)
    return build_model(name, (32, 32, 3), 10, options)


def layer_inputs(model, layer, images):
    return keras.ops.convert_to_numpy(keras.Model(model.inputs[0], layer.input)(images))


def assert_filters_are_patches(model, report, images):
    """Each patch filter correlates (Pearson) +1 / -1 (its sign) with its source window."""
    assert report["layers"]
    for entry in report["layers"]:
        layer = model.get_layer(entry["name"])
        kernel = keras.ops.convert_to_numpy(layer.kernel_variable)
        sources = layer_inputs(model, layer, images[entry["image_indices"]])
        for index, filter_index in enumerate(entry["filter_indices"]):
            weights = kernel[..., filter_index].ravel()
            if entry["kind"] == "conv":
                top, left = entry["positions"][index]
                kh, kw = layer.kernel_size
                window = sources[index, top:top + kh, left:left + kw, :].ravel()
            else:
                window = sources[index].ravel()
            correlation = np.corrcoef(weights, window)[0, 1]
            assert correlation == pytest.approx(entry["signs"][index], abs=1e-4), (
                entry["name"], filter_index)


@pytest.mark.parametrize("name", sorted(CONV_COUNTS))
def test_every_conv_model_keeps_shapes_and_patches_every_conv_layer(name):
    model = model_for(name)
    before = kernels(model, by="name")
    images = smooth_images(72)
    report = patches_init(model, images, PatchesOptions(seed=1, layers=0))
    after = kernels(model, by="name")
    convs = [layer for layer in masked_layers(model) if isinstance(layer, MaskedConv2D)]
    assert len(convs) == CONV_COUNTS[name]
    assert [entry["name"] for entry in report["layers"]] == [layer.name for layer in convs]
    assert report["kept"] == ["dense1/kernel", "dense2/kernel", "output/kernel"]
    for layer in masked_layers(model):
        assert after[layer.name].shape == before[layer.name].shape
        changed = not np.array_equal(after[layer.name], before[layer.name])
        assert changed == isinstance(layer, MaskedConv2D), layer.name
    for entry in report["layers"]:
        assert entry["patch_filters"] == entry["filters"] == len(entry["image_indices"])
        # one source image per filter
        assert len(set(entry["image_indices"].tolist())) == entry["filters"]
    assert model.predict(images[:4], verbose=0).shape == (4, 10)


@pytest.mark.parametrize("mask", ["topk", "bernoulli", "dense"])
@pytest.mark.parametrize("fan_scale", [1.0, 0.5])
def test_kernel_std_matches_kaiming_std(mask, fan_scale):
    model = model_for("conv6", mask=mask, width=0.25)
    report = patches_init(model, smooth_images(80), PatchesOptions(fan_scale=fan_scale,
                                                                   layers=0))
    assert len(report["layers"]) == 6
    for entry in report["layers"]:
        kernel = keras.ops.convert_to_numpy(model.get_layer(entry["name"]).kernel_variable)
        expected = np.sqrt(2.0) / np.sqrt(np.prod(kernel.shape[:-1]) * fan_scale)
        assert entry["kaiming_std"] == pytest.approx(expected)
        assert kernel.std() == pytest.approx(expected, rel=0.05)
        # the signed constant weights the model was built with have another std
    assert kaiming_std((3, 3, 16, 32)) == pytest.approx(np.sqrt(2.0 / 144))


def test_std_without_per_patch_normalisation_or_centring():
    model = model_for("conv4")
    report = patches_init(model, smooth_images(40),
                          PatchesOptions(normalize=False, center=False, sign_flip=True,
                                         layers=0))
    for entry in report["layers"]:
        kernel = keras.ops.convert_to_numpy(model.get_layer(entry["name"]).kernel_variable)
        # one factor per layer: the root mean square is the Kaiming std exactly
        assert np.sqrt(np.mean(kernel ** 2)) == pytest.approx(entry["kaiming_std"], rel=1e-4)
        norms = np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0)
        assert norms.std() > 0.01 * norms.mean()  # contrast between patches kept


def test_same_seed_same_kernels_other_seed_other_kernels():
    images = smooth_images(40)
    results = []
    for seed in (3, 3, 4):
        model = model_for("conv4", seed=0)
        patches_init(model, images, PatchesOptions(seed=seed, sign_flip=True, layers=0))
        results.append(kernels(model, by="name"))
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name])
    assert not np.allclose(results[0]["conv1_1"], results[2]["conv1_1"])


@pytest.mark.parametrize("mask", ["topk", "bernoulli"])
def test_each_filter_is_its_source_patch(mask):
    images = smooth_images(48)
    model = model_for("conv4", mask=mask)
    report = patches_init(model, images, PatchesOptions(seed=2, layers=0))
    assert len(report["layers"]) == 4
    assert_filters_are_patches(model, report, images)
    assert np.all(report["layers"][0]["signs"] == 1.0)


def test_sign_flips_mix_and_dense_analogue():
    images = smooth_images(48)
    model = model_for("conv4")
    before = kernels(model, by="name")
    report = patches_init(model, images, PatchesOptions(seed=5, sign_flip=True, mix=0.5,
                                                        dense=True, layers=0))
    assert_filters_are_patches(model, report, images)
    signs = np.concatenate([entry["signs"] for entry in report["layers"]])
    assert set(signs.tolist()) == {-1.0, 1.0}
    assert [entry["name"] for entry in report["layers"]] == [
        "conv1_1", "conv1_2", "conv2_1", "conv2_2", "dense1", "dense2"]
    assert report["kept"] == ["output/kernel"]
    for entry in report["layers"]:
        assert entry["patch_filters"] == round(entry["filters"] * 0.5)
        others = np.setdiff1d(np.arange(entry["filters"]), entry["filter_indices"])
        kernel = kernels(model, by="name")[entry["name"]]
        np.testing.assert_array_equal(kernel[..., others], before[entry["name"]][..., others])


def test_raw_uint8_images_with_normalization_are_patches_of_the_normalised_images():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8).repeat(2, 1).repeat(2, 2)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    model = model_for("conv2")
    report = patches_init(model, raw, PatchesOptions(), normalization=(mean, std))
    normalised = ((raw / 255.0 - np.array(mean)) / np.array(std)).astype("float32")
    assert_filters_are_patches(model, report, normalised)


@pytest.mark.parametrize("layers", [None, 3])
def test_first_layers_only_leave_later_layers_as_built(layers):
    model = model_for("conv6")
    before = kernels(model, by="name")
    options = PatchesOptions() if layers is None else PatchesOptions(layers=layers)
    report = patches_init(model, smooth_images(40), options)
    expected = ["conv1_1", "conv1_2", "conv2_1"][:layers or 2]  # default: the first block
    assert [entry["name"] for entry in report["layers"]] == expected
    after = kernels(model, by="name")
    for name in ("conv2_1", "conv2_2", "conv3_1", "conv3_2", "dense1"):
        if name not in expected:
            np.testing.assert_array_equal(after[name], before[name])
            assert name + "/kernel" in report["kept"]


def test_rescale_matches_output_power_to_the_uncorrelated_prediction():
    images = smooth_images(64)
    model = model_for("conv4", width=0.25)
    report = patches_init(model, images, PatchesOptions(rescale=True, forward_images=64,
                                                        layers=0))
    assert len(report["layers"]) == 4
    working = images[report["working_indices"]]
    factors = []
    for entry in report["layers"]:
        layer = model.get_layer(entry["name"])
        factor = entry["rescale"]
        weights = keras.ops.convert_to_numpy(layer.kernel_variable)
        assert weights.std() == pytest.approx(factor * entry["kaiming_std"], rel=1e-3)
        inputs = layer_inputs(model, layer, working)
        kernel = keras.ops.convert_to_numpy(layer.effective_kernel(training=False))
        outputs = keras.ops.convert_to_numpy(layer.apply_kernel(inputs, kernel))
        # E[x^2] * ||w||^2 with w the masked filters at the Kaiming scale (before the factor)
        kaiming_power = np.mean(np.sum(kernel.reshape(-1, kernel.shape[-1]) ** 2, axis=0))
        predicted = np.mean(inputs ** 2) * kaiming_power / factor ** 2
        assert np.mean(outputs ** 2) == pytest.approx(predicted, rel=1e-3)
        factors.append(factor)
    # patches respond to their correlated inputs more strongly than random filters do
    assert max(factors) < 0.9


def test_zca_whitening_keeps_the_scale_and_is_deterministic():
    images = smooth_images(40)
    runs = []
    for _ in range(2):
        model = model_for("conv2")
        report = patches_init(model, images, PatchesOptions(zca=True, zca_patches=500))
        runs.append(kernels(model, by="name"))
        for entry in report["layers"]:
            assert runs[-1][entry["name"]].std() == pytest.approx(entry["kaiming_std"], rel=0.05)
    np.testing.assert_array_equal(runs[0]["conv1_2"], runs[1]["conv1_2"])
    # whitened filters are no longer the raw patches
    plain = model_for("conv2")
    patches_init(plain, images, PatchesOptions())
    assert not np.allclose(kernels(plain, by="name")["conv1_1"], runs[0]["conv1_1"])


def test_models_with_branches_use_inputs_from_the_model_input():
    inputs = keras.Input((16, 16, 3))
    a = MaskedConv2D(4, mask="topk", name="a")(inputs)
    b = MaskedConv2D(4, mask="topk", name="b")(keras.layers.ReLU()(a))
    c = MaskedConv2D(4, mask="topk", name="c")(keras.layers.Add()([a, b]))
    outputs = MaskedDense(3, name="out")(keras.layers.Flatten()(c))
    model = keras.Model(inputs, outputs)
    images = smooth_images(12, size=16)
    report = patches_init(model, images, PatchesOptions(layers=0))
    assert [entry["name"] for entry in report["layers"]] == ["a", "b", "c"]
    assert_filters_are_patches(model, report, images)


def test_clear_errors_for_too_little_data():
    with pytest.raises(ValueError, match=r"layer 'conv2_1' needs 16 images, but only 10"):
        patches_init(model_for("conv4"), smooth_images(10), PatchesOptions(layers=0))
    with pytest.raises(ValueError, match="forward_images=12 is smaller than the 16"):
        patches_init(model_for("conv4"), smooth_images(40),
                     PatchesOptions(forward_images=12, layers=3))
    small = build_model("conv8", (16, 16, 3), 10, MaskOptions(mask="topk", width=0.125))
    with pytest.raises(ValueError, match=r"'conv4_1': its input is 2x2, smaller than its 3x3"):
        patches_init(small, smooth_images(80, size=16), PatchesOptions(layers=0))
    fc = build_model("fc", (28, 28, 1), 10, MaskOptions(mask="topk"))
    with pytest.raises(ValueError, match="needs masked conv layers"):
        patches_init(fc, smooth_images(10, size=28, channels=1), PatchesOptions())
    with pytest.raises(ValueError, match=r"mix .* in \(0, 1\]"):
        PatchesOptions(mix=0.0)
    with pytest.raises(ValueError, match="shape"):
        patches_init(model_for("conv2"), np.zeros((10, 32, 32)), PatchesOptions())


def test_train_config_accepts_patches_and_validates_its_flags():
    config = TrainConfig(model="conv2", init="patches", patches_rest_init="kaiming_normal")
    assert config.mask_options().init == "kaiming_normal"
    with pytest.raises(ValueError, match="unknown initializer 'patch'"):
        TrainConfig(init="patch")
    with pytest.raises(ValueError, match="unknown initializer 'nope'"):
        TrainConfig(init="patches", patches_rest_init="nope")
    with pytest.raises(ValueError, match="--patches_mix"):
        TrainConfig(init="patches", patches_mix=1.5)


def test_training_run_saves_patch_weights_as_the_rewind_point(tmp_path):
    config = TrainConfig(model="conv2", width=0.125, mask="topk", k=0.5, init="patches",
                         dataset="sample", train_size=256, batch_size=64, epochs=1,
                         verbose=0, run_dir=str(tmp_path / "run"))
    results = train(config)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    patched = on_disk["patches"]["layers"]
    assert sorted(patched) == ["conv1_1/kernel", "conv1_2/kernel"]
    assert on_disk["patches"]["kept"] == ["dense1/kernel", "dense2/kernel", "output/kernel"]
    assert on_disk["patches"]["pool_images"] == 256 and results["patches"] == on_disk["patches"]
    model = build_model("conv2", (28, 28, 1), 10, config.mask_options())
    model.load_weights(str(tmp_path / "run" / "checkpoints" / "initial.weights.h5"))
    first = keras.ops.convert_to_numpy(model.get_layer("conv1_1").kernel_variable)
    dense = keras.ops.convert_to_numpy(model.get_layer("dense1").kernel_variable)
    assert first.std() == pytest.approx(patched["conv1_1/kernel"]["kaiming_std"], rel=0.05)
    assert len(np.unique(np.abs(first))) > 10  # patches, not signed constants
    assert len(np.unique(np.abs(dense))) == 1  # signed Kaiming constant (patches_rest_init)
