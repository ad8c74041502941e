"""Folded SavedModels, the compact seed-plus-bitmask file, mask images and sparsity plots."""

import glob
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from tf_supermask import export as export_lib
from tf_supermask.tools.export_run import export_run
from tf_supermask.export import CompactFormatError, load_compact, save_compact
from tf_supermask.layers import get_masks, masked_layers
from tf_supermask.layers.initializers import INITIALIZERS, VarianceScaled
from tf_supermask.models import MaskOptions, build_model
from tf_supermask.training.callbacks import MaskImageLogger, mask_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONV_SHAPE = (8, 8, 3)


def _images(count=8, shape=CONV_SHAPE, seed=0):
    return np.random.default_rng(seed).normal(size=(count,) + shape).astype("float32")


def _trained(options, name="conv2", shape=CONV_SHAPE):
    """A tiny model whose trainable variables and BatchNorm statistics have moved.

    Training is simulated by assigning random values (no compile, and no fit:
    see the report about rescale under tf.function).
    """
    model = build_model(name, shape, 10, options)
    rng = np.random.default_rng(1)
    for variable in model.weights:
        moved = variable.trainable or "moving" in variable.path
        if moved:
            value = rng.normal(size=variable.shape).astype("float32")
            if "moving_variance" in variable.path:
                value = np.abs(value) + 0.5
            variable.assign(value)
    return model


def _predict(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def _rewrite_header(path, **changes):
    """Copies a compact file with header fields replaced (simulates other writers)."""
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays["header"].tobytes())
    for key, value in changes.items():
        target = header
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


# Compact round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,options", [
    ("conv2", MaskOptions(mask="bernoulli", init="signed_kaiming_constant", rescale=True,
                          width=0.1, seed=3)),
    ("conv2", MaskOptions(mask="topk", k=0.3, init="signed_kaiming_constant", scale_fan="pruned",
                          batchnorm="nonaffine", width=0.1, seed=1)),
    ("fc", MaskOptions(mask="topk", k=0.5, init="kaiming_normal", width=0.05, rescale=True)),
])
def test_compact_round_trip_gives_identical_predictions(tmp_path, name, options):
    shape = (28, 28, 1) if name == "fc" else CONV_SHAPE
    model = _trained(options, name, shape)
    path = tmp_path / "mask.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to warn about: fully compact
        info = save_compact(model, path, options, metadata={"note": "test"})
    assert info["stored_kernels"] == []
    loaded = load_compact(path)
    x = _images(8, shape, seed=5)
    np.testing.assert_array_equal(_predict(loaded, x), _predict(model, x))
    # Same masks, same mode; only the BatchNorm statistics were stored besides the masks.
    original, reloaded = get_masks(model), get_masks(loaded)
    assert original.keys() == reloaded.keys()
    for path_key in original:
        np.testing.assert_array_equal(original[path_key], reloaded[path_key])
    assert [layer.mask_mode for layer in masked_layers(loaded)] == [options.mask] * len(original)
    with np.load(path) as archive:
        stored = sorted(archive.files)
    assert not any(entry.startswith("kernel_") for entry in stored)
    header = export_lib.read_compact_header(path)
    stored_paths = [v["path"] for v in header["variables"] if v["stored"]]
    if options.batchnorm == "nonaffine":
        assert stored_paths and all("moving" in p for p in stored_paths)
    else:
        assert stored_paths == []
    assert header["metadata"] == {"note": "test"}
    assert header["model"] == {"name": name, "input_shape": list(shape), "num_classes": 10}


def test_compact_stores_trained_kernels_and_says_it_is_not_compact(tmp_path):
    options = MaskOptions(mask="fixed", width=0.1, batchnorm="affine")
    model = _trained(options)  # kernels, biases and BatchNorm train
    layer = masked_layers(model)[1]
    layer.set_mask((np.random.default_rng(0).random(layer.kernel_variable.shape) < 0.4) * 1.0)
    with pytest.warns(UserWarning, match="not compact"):
        info = save_compact(model, tmp_path / "ticket.npz", options)
    assert len(info["stored_kernels"]) == len(masked_layers(model))
    x = _images()
    np.testing.assert_array_equal(_predict(load_compact(tmp_path / "ticket.npz"), x),
                                  _predict(model, x))
    with pytest.raises(ValueError, match="cannot describe them"):
        save_compact(model, tmp_path / "refused.npz", options, allow_kernels=False)
    assert not (tmp_path / "refused.npz").exists()


def test_compact_refuses_a_model_its_options_do_not_build(tmp_path):
    model = build_model("conv2", CONV_SHAPE, 10, MaskOptions(mask="topk", width=0.1))
    with pytest.raises(ValueError, match="not the one build_model"):
        save_compact(model, tmp_path / "x.npz", MaskOptions(mask="topk", width=0.2))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("name,shape,mask", [("fc", (28, 28, 1), "bernoulli"),
                                             ("conv6", (32, 32, 3), "topk")])
def test_compact_file_is_at_most_a_25th_of_the_float32_weights(tmp_path, name, shape, mask):
    options = MaskOptions(mask=mask, k=0.5, init="signed_kaiming_constant")
    model = build_model(name, shape, 10, options)
    info = save_compact(model, tmp_path / "compact.npz", options)
    export_lib.fold_masks(model).save_weights(tmp_path / "dense.weights.h5")
    model.save(tmp_path / "checkpoint.keras")
    weights = os.path.getsize(tmp_path / "dense.weights.h5")
    assert info["bytes"] * 25 <= weights
    assert info["bytes"] * 25 <= os.path.getsize(tmp_path / "checkpoint.keras")


# Bad input ----------------------------------------------------------------------------------------

@pytest.fixture
def compact_file(tmp_path):
    options = MaskOptions(mask="topk", k=0.4, init="signed_kaiming_constant", width=0.1)
    model = build_model("conv2", CONV_SHAPE, 10, options)
    path = tmp_path / "mask.npz"
    save_compact(model, path, options)
    return path


def test_truncated_file_fails_clearly(compact_file):
    data = compact_file.read_bytes()
    compact_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CompactFormatError, match="truncated or corrupt"):
        load_compact(compact_file)
    compact_file.write_bytes(b"")
    with pytest.raises(CompactFormatError, match="truncated or corrupt"):
        load_compact(compact_file)


def test_unknown_model_name_fails_clearly(compact_file):
    _rewrite_header(compact_file, **{"model.name": "resnet9000"})
    with pytest.raises(CompactFormatError, match="model 'resnet9000'.*not register"):
        load_compact(compact_file)


def test_changed_initializer_fails_the_checksum(compact_file, monkeypatch):
    # As if a later version defined signed_kaiming_constant with another gain.
    monkeypatch.setitem(INITIALIZERS._entries, "signed_kaiming_constant",
                        lambda seed=None, fan_scale=1.0: VarianceScaled(
                            "signed_constant", "fan_in", 1.0, fan_scale, seed))
    with pytest.raises(CompactFormatError, match="do not match the file's checksum"):
        load_compact(compact_file)


def test_changed_random_generator_fails_the_checksum(compact_file, monkeypatch):
    normal = keras.random.normal

    def other_stream(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return normal(shape, mean=mean, stddev=stddev, dtype=dtype, seed=seed + 7)

    monkeypatch.setattr(keras.random, "normal", other_stream)
    with pytest.raises(CompactFormatError, match="random generator .* no longer reproduces"):
        load_compact(compact_file)


def test_other_backend_fails_the_checksum(tmp_path):
    pytest.importorskip("jax")
    # Tiny and without top-k: JAX compiles every eager op, so the build dominates.
    options = MaskOptions(mask="fixed", init="signed_kaiming_constant", width=0.05)
    compact_file = tmp_path / "mask.npz"
    save_compact(build_model("fc", (4, 4, 1), 10, options), compact_file, options)
    script = ("import sys\nfrom tf_supermask.export import CompactFormatError, load_compact\n"
              "try:\n    load_compact(sys.argv[1])\nexcept CompactFormatError as e:\n"
              "    print('REFUSED', e)\nelse:\n    print('LOADED')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script, str(compact_file)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REFUSED" in result.stdout and "tensorflow backend" in result.stdout


def test_failed_writes_leave_no_partial_file(tmp_path, compact_file, monkeypatch):
    before = compact_file.read_bytes()
    model = build_model("conv2", CONV_SHAPE, 10, MaskOptions(mask="topk", width=0.1))

    def broken_savez(stream, **arrays):
        stream.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_compact(model, compact_file, MaskOptions(mask="topk", width=0.1))
    assert compact_file.read_bytes() == before  # the old file is untouched
    with pytest.raises(OSError, match="disk full"):
        save_compact(model, tmp_path / "new.npz", MaskOptions(mask="topk", width=0.1))
    assert sorted(os.listdir(tmp_path)) == ["mask.npz"]  # no temporary file left

    import tensorflow as tf

    def broken_export(obj, path, **kwargs):
        with open(os.path.join(path, "saved_model.pb"), "wb") as stream:
            stream.write(b"partial")
        raise OSError("interrupted")

    monkeypatch.setattr(tf.saved_model, "save", broken_export)
    with pytest.raises(OSError, match="interrupted"):
        export_lib.export_saved_model(model, tmp_path / "saved_model")
    assert sorted(os.listdir(tmp_path)) == ["mask.npz"]


# Folded SavedModel ------------------------------------------------------------------------------

def test_folded_saved_model_has_plain_masked_kernels_and_same_predictions(tmp_path):
    tf = pytest.importorskip("tensorflow")
    options = MaskOptions(mask="bernoulli", init="signed_kaiming_constant", rescale=True,
                          batchnorm="nonaffine", width=0.1)
    model = _trained(options)
    # mean 0, std 1/255: (images / 255 - 0) * 255 hands the inputs through unchanged.
    export_lib.export_saved_model(model, tmp_path / "saved_model", (0.0, 1.0 / 255.0))
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    x = _images(8, seed=3)
    np.testing.assert_allclose(reloaded.serve(tf.constant(x))["logits"].numpy(),
                               _predict(model, x), rtol=1e-4, atol=1e-5)
    signature = reloaded.signatures["serving_default"]
    served = signature(images=tf.constant(x))
    assert set(served) == {"logits", "probabilities"}
    np.testing.assert_allclose(served["logits"].numpy(), _predict(model, x), rtol=1e-4, atol=1e-5)
    names = [variable.name for variable in reloaded.variables]
    assert not any("scores" in name or "mask" in name for name in names)
    kernels = {v.name.split(":")[0]: v.numpy() for v in reloaded.variables
               if v.name.endswith("kernel:0")}
    for layer in masked_layers(model):
        mask = np.asarray(keras.ops.convert_to_numpy(layer.get_mask()))
        kernel = kernels[layer.kernel_variable.path]
        # Signed constant weights are never zero: zeros are exactly the pruned entries,
        # and the kept ones carry the rescale factor #weights / #kept.
        np.testing.assert_array_equal(kernel != 0, mask != 0)
        frozen = np.asarray(keras.ops.convert_to_numpy(layer.kernel_variable))
        np.testing.assert_allclose(kernel[mask != 0], (frozen * mask.size / mask.sum())[mask != 0],
                                   rtol=1e-6)


def test_fold_masks_handles_grouped_and_depthwise_convolutions():
    from tf_supermask.layers import MaskedConv2D, MaskedDense, MaskedLayer

    inputs = keras.Input((6, 6, 4))
    x = MaskedConv2D(4, groups=4, mask="topk", k=0.5, seed=1, name="depthwise")(inputs)
    x = MaskedConv2D(8, groups=2, mask="bernoulli", rescale=True, seed=2, name="grouped")(x)
    x = keras.layers.Flatten()(x)
    outputs = MaskedDense(3, mask="fixed", seed=3, name="head")(x)
    model = keras.Model(inputs, outputs)
    folded = export_lib.fold_masks(model)
    kinds = {layer.name: type(layer).__name__ for layer in folded.layers}
    assert kinds["depthwise"] == "DepthwiseConv2D" and kinds["grouped"] == "Conv2D"
    assert kinds["head"] == "Dense"
    assert not any(isinstance(layer, MaskedLayer) for layer in folded.layers)
    x = _images(4, (6, 6, 4))
    np.testing.assert_allclose(_predict(folded, x), _predict(model, x), rtol=1e-5, atol=1e-6)


# A finished run: --export, mask images, tf-supermask-export, sparsity plot ----------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from tf_supermask.training import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("export") / "run"
    train(TrainConfig(model="conv2", width=0.1, mask="topk", k=0.3,
                      init="signed_kaiming_constant", dataset="sample", train_size=128,
                      batch_size=64, epochs=2, lr=0.1, verbose=0, export=True,
                      run_dir=str(run_dir)))
    keras.backend.clear_session()
    return run_dir


def _summaries(folder):
    import tensorflow as tf

    values = []
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            values.extend((event.step, value) for value in event.summary.value)
    return values


def test_run_writes_mask_images_one_tile_per_filter(finished_run):
    import tensorflow as tf

    model = keras.saving.load_model(finished_run / "checkpoints" / "final.keras")
    images = {}
    for step, value in _summaries(str(finished_run / "tensorboard" / "masks")):
        if value.tag.startswith("mask/"):
            images[(value.tag, step)] = value
    masks = get_masks(model)
    assert {tag for tag, _ in images} == {f"mask/{path}" for path in masks}
    assert {step for _, step in images} == {0, 1}  # every epoch
    for path, mask in masks.items():
        value = images[(f"mask/{path}", 1)]
        tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
        encoded = tensor[2] if tensor is not None else value.image.encoded_image_string
        pixels = tf.io.decode_png(encoded).numpy() / 255.0
        expected = mask_image(mask)
        assert pixels.shape == expected.shape
        np.testing.assert_allclose(pixels, expected, atol=1 / 255)
    # Score histograms come from the TensorBoard callback, once per variable.
    tags = {value.tag for _, value in _summaries(str(finished_run / "tensorboard" / "train"))}
    assert any("scores" in tag for tag in tags)


def test_mask_image_layout():
    rng = np.random.default_rng(0)
    conv = rng.random((3, 3, 2, 5)) < 0.5
    image = mask_image(conv)
    # Tile: 2 channel patches side by side (3 x 7); tiles in a 2 x 3 grid, 2-pixel gaps.
    assert image.shape == (2 * 3 + 2, 3 * 7 + 2 * 2, 3)
    for f in range(5):
        top, left = (f // 3) * 5, (f % 3) * 9
        for c in range(2):
            patch = image[top:top + 3, left + 4 * c:left + 4 * c + 3]
            np.testing.assert_array_equal(patch, np.repeat(conv[:, :, c, f, None], 3, axis=2))
        assert (image[top:top + 3, left + 3] == 0.5).all()  # grey between channel patches
    np.testing.assert_allclose(image[3, 0], (0.55, 0.1, 0.1))  # dark red between filters
    dense = rng.random((7, 4)) < 0.5
    np.testing.assert_array_equal(mask_image(dense)[:, :, 0], dense.T)  # one row per unit
    big = mask_image(np.ones((5000, 10)), max_side=1000)  # shrunk by block averages
    assert max(big.shape[:2]) <= 1000


def test_mask_images_are_skipped_without_tensorboard(tmp_path, monkeypatch):
    from tf_supermask.training import callbacks

    monkeypatch.setattr(callbacks, "tensorboard_available", lambda: False)
    model = build_model("conv2", CONV_SHAPE, 10, MaskOptions(mask="topk", width=0.1))
    logger = MaskImageLogger(str(tmp_path))
    logger.set_model(model)
    with pytest.warns(UserWarning, match="not written"):
        logger.on_train_begin()
    logger.on_epoch_end(0)
    logger.on_train_end()
    assert not os.listdir(tmp_path)


def test_train_export_writes_the_folded_saved_model(finished_run):
    tf = pytest.importorskip("tensorflow")
    reloaded = tf.saved_model.load(str(finished_run / "saved_model"))
    assert not any("scores" in v.name for v in reloaded.variables)
    model = keras.saving.load_model(finished_run / "checkpoints" / "final.keras")
    recorded = json.loads((finished_run / "results.json").read_text())["normalization"]
    # The run's normalisation is the sample's (Fashion-MNIST's) published constants.
    assert recorded == {"mean": [0.286], "std": [0.353]}
    raw = np.random.default_rng(5).integers(0, 256, (4, 28, 28, 1)).astype("uint8")
    normalised = ((raw / 255.0 - 0.286) / 0.353).astype("float32")
    np.testing.assert_allclose(reloaded.serve(tf.constant(raw))["logits"].numpy(),
                               _predict(model, normalised), rtol=1e-4, atol=1e-5)


def test_export_binary_writes_a_verified_compact_file(finished_run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "tf_supermask.bin.export", str(finished_run),
                             "--format=compact", f"--output={tmp_path}"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / export_lib.COMPACT_FILE
    header = export_lib.read_compact_header(path)
    assert "--mask=topk" in header["metadata"]["flags"]
    assert header["metadata"]["results"]["weights_remaining"] == pytest.approx(0.3, abs=1e-3)
    model = keras.saving.load_model(finished_run / "checkpoints" / "final.keras")
    x = _images(4, (28, 28, 1))
    np.testing.assert_array_equal(_predict(load_compact(path), x), _predict(model, x))
    # Existing outputs are refused (the binary turns this into a usage error).
    with pytest.raises(FileExistsError, match="already exist"):
        export_run(str(finished_run), ["compact"], output=str(tmp_path))


def test_export_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        export_run(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_run(str(tmp_path / "missing"))
    (tmp_path / "flags.txt").write_text("--model=fc\n")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        export_run(str(tmp_path))


def test_plot_mask_sparsity_writes_a_png(finished_run, tmp_path):
    from tf_supermask.tools.inspect import layer_sparsity, plot_mask_sparsity

    rows = layer_sparsity(str(finished_run))
    assert [row["path"] for row in rows] == list(
        json.loads((finished_run / "results.json").read_text())["weights_remaining_per_layer"])
    for row in rows:
        # edge-popup's count (GetSubnet): n - int((1 - k) * n) kept.
        assert row["kept"] == row["total"] - int((1 - 0.3) * row["total"])
    out = plot_mask_sparsity(str(finished_run), str(tmp_path / "sparsity.png"))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["sparsity.png"]


def test_saved_model_serves_raw_uint8_and_float_images_with_the_normalisation_inside(tmp_path):
    tf = pytest.importorskip("tensorflow")
    options = MaskOptions(mask="topk", k=0.4, init="kaiming_normal", width=0.1, seed=2)
    model = _trained(options)
    mean, std = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
    export_lib.export_saved_model(model, tmp_path / "saved_model", (mean, std))
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    raw = np.random.default_rng(0).integers(0, 256, (5,) + CONV_SHAPE).astype("uint8")
    expected = _predict(model, ((raw / 255.0 - np.array(mean)) / np.array(std)).astype("float32"))
    for images in (tf.constant(raw), tf.constant(raw.astype("float32"))):
        for served in (loaded.serve(images), loaded(images)):  # the object itself is callable
            np.testing.assert_allclose(served["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
            probabilities = served["probabilities"].numpy()
            np.testing.assert_allclose(probabilities, tf.nn.softmax(expected).numpy(), atol=1e-5)
    uint8_signature = loaded.signatures["serving_uint8"]
    np.testing.assert_allclose(uint8_signature(images=tf.constant(raw))["logits"].numpy(),
                               expected, rtol=1e-4, atol=1e-4)
    ((name, spec),) = loaded.signatures["serving_default"].structured_input_signature[1].items()
    assert name == "images" and spec.dtype == tf.float32


def test_saved_model_stores_each_kernel_once(tmp_path):
    pytest.importorskip("tensorflow")
    model = build_model("fc", (28, 28, 1), 10, MaskOptions(mask="topk", k=0.5, width=0.5))
    path = tmp_path / "saved_model"
    export_lib.export_saved_model(model, path)
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in export_lib.fold_masks(model).weights)
    stored = sum(f.stat().st_size for f in (path / "variables").iterdir())
    # One float32 copy plus a small index; two copies would be twice the weights.
    assert weight_bytes <= stored < 1.1 * weight_bytes


def test_export_run_removes_what_it_wrote_when_verification_fails(finished_run, tmp_path,
                                                                   monkeypatch):
    from tf_supermask.tools import export_run as export_run_module

    def wrong(path, model, images, normalization):
        raise RuntimeError("predicts differently")

    monkeypatch.setattr(export_run_module, "_verify_saved_model", wrong)
    with pytest.raises(RuntimeError, match="predicts differently"):
        export_run(str(finished_run), output=str(tmp_path))
    assert os.listdir(tmp_path) == []  # the compact file written first is gone too
    monkeypatch.undo()
    written = export_run(str(finished_run), output=str(tmp_path))  # the same call works again
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(path) for path in written.values())


def test_kernels_differ_warning_names_the_backend(finished_run, tmp_path, monkeypatch):
    from tf_supermask.tools import export_run as export_run_module

    results = json.loads((finished_run / "results.json").read_text())
    monkeypatch.setattr(export_run_module, "run_results",
                        lambda run_dir: dict(results, backend="jax"))
    monkeypatch.setattr(export_run_module, "save_compact", _warns_kernels_differ)
    with pytest.warns(UserWarning, match="trained on jax.*KERAS_BACKEND=jax"):
        export_run(str(finished_run), ["compact"], output=str(tmp_path), verify=False)


def _warns_kernels_differ(model, path, *args, **kwargs):
    warnings.warn("3 of 3 kernels differ from the weights build_model(...) regenerates")
    open(path, "wb").close()


def test_a_flipped_byte_in_the_compressed_header_is_a_format_error(tmp_path):
    # zlib's own error used to escape (issue 27, point 14): every flipped byte of the
    # header member's compressed data must be a CompactFormatError (or load cleanly).
    import zipfile

    from tf_supermask.export.compact import CompactFormatError

    options = MaskOptions(mask="topk", k=0.5, width=0.05)
    model = build_model("fc", (28, 28, 1), 10, options)
    path = tmp_path / "ticket.npz"
    save_compact(model, path, options)
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("header.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    errors = 0
    for offset in range(start, start + min(info.compress_size, 64)):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
        try:
            load_compact(tmp_path / "damaged.npz")
        except CompactFormatError:
            errors += 1
    assert errors > 0
