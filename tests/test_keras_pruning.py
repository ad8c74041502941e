"""tfmot's Keras pruning API on Keras 3 models: prune_low_magnitude, GradualPruning,
strip_pruning, and the tfmot translation in docs/models.md."""

import doctest
import glob
import os
import re

import keras
import numpy as np
import pytest

from tf_supermask.counting import kept_count
from tf_supermask.layers import get_masks, masked_layers
from tf_supermask.pruning import (GradualPruning, layer_sparsity, prune_low_magnitude,
                                  pruning_schedule, strip_pruning, tfmot_schedules)
from tf_supermask.pruning.gradual import evaluate_schedule

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "models.md")


def _cnn():
    """A user's functional CNN: Conv2D + Dense."""
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv_b")(x)
    x = keras.layers.Dense(12, activation="relu", name="hidden")(keras.layers.Flatten(name="flat")(x))
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))


def _conv1d():
    """Conv1D, EinsumDense and Dense."""
    inputs = keras.Input((20, 4))
    x = keras.layers.Conv1D(8, 3, activation="relu", name="conv1d_a")(inputs)
    x = keras.layers.EinsumDense("abc,cd->abd", (None, 6), bias_axes="d", name="einsum")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def _train(model, schedule_args, log_dir=None, steps=9, **kwargs):
    """prune_low_magnitude + fit with GradualPruning() for `steps` optimizer steps."""
    rng = np.random.default_rng(0)
    shape = model.inputs[0].shape[1:]
    classes = model.outputs[0].shape[-1]
    x = rng.normal(size=(2 * steps,) + tuple(shape)).astype("float32")
    y = rng.integers(0, classes, size=2 * steps)
    schedule = pruning_schedule(*schedule_args)
    pruned = prune_low_magnitude(model, schedule, **kwargs)
    pruned.compile(optimizer=keras.optimizers.SGD(0.05),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = GradualPruning(log_dir=log_dir)
    pruned.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[callback])
    return pruned, schedule, callback, x


def _tensorboard_scalars(log_dir):
    import tensorflow as tf

    logged = {}
    for path in glob.glob(os.path.join(log_dir, "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                logged[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    return logged


def _check_final_sparsity(pruned, schedule, callback, end_step, expected_layers):
    should_prune, final = evaluate_schedule(schedule, end_step)
    assert should_prune and callback.events[-1]["step"] == end_step
    masks = get_masks(pruned)
    assert sorted(path.split("/")[-2] for path in masks) == sorted(expected_layers)
    for path, mask in masks.items():  # tfmot's own count at the final sparsity, per layer
        assert int(mask.sum()) == kept_count(mask.size, pruned=final, rule="tfmot"), path
    return masks


@pytest.mark.parametrize("build, layers", [
    (_cnn, ["conv_a", "conv_b", "hidden", "logits"]),
    (_conv1d, ["conv1d_a", "einsum", "head"]),
], ids=["functional_cnn", "conv1d_einsum"])
def test_every_layer_reaches_the_final_sparsity_logs_it_and_strips_to_plain_keras(
        build, layers, tmp_path):
    from tf_supermask.training.callbacks import tensorboard_available

    log_dir = str(tmp_path / "tb")
    pruned, schedule, callback, x = _train(build(), ("polynomial", 0.8, 0, 6, 2),
                                           log_dir=log_dir)
    assert [event["step"] for event in callback.events] == [0, 2, 4, 6]
    masks = _check_final_sparsity(pruned, schedule, callback, 6, layers)

    for layer in masked_layers(pruned):
        assert layer.mask_mode == "fixed" and layer.train_weights

    if tensorboard_available():
        logged = _tensorboard_scalars(log_dir)
        for event in callback.events:
            for path, mask in masks.items():
                _, sparsity = evaluate_schedule(schedule, event["step"])
                expected = 1 - kept_count(mask.size, pruned=sparsity, rule="tfmot") / mask.size
                assert logged[(f"sparsity/{path}", event["step"])] == pytest.approx(expected)
            assert ("sparsity/pruned_layers", event["step"]) in logged

    plain = strip_pruning(pruned)
    kinds = {type(layer).__module__.split(".")[0] for layer in plain._flatten_layers()}
    assert "tf_supermask" not in kinds
    np.testing.assert_allclose(plain.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    path = str(tmp_path / "plain.keras")
    plain.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    stripped = {layer.name: keras.ops.convert_to_numpy(layer.kernel)
                for layer in plain._flatten_layers() if layer.name in layers}
    for mask_path, mask in masks.items():  # the stripped kernels are zero where pruned
        assert not np.any(stripped[mask_path.split("/")[-2]][mask == 0])


def test_layers_picks_what_is_pruned_and_the_rest_stays_the_users_layer():
    pruned, schedule, callback, _ = _train(_cnn(), ("constant", 0.5, 0, -1, 3),
                                           layers=[keras.layers.Dense])
    assert [type(layer).__name__ for layer in pruned.layers] == [
        "InputLayer", "Conv2D", "Conv2D", "Flatten", "MaskedDense", "MaskedDense"]
    assert sorted(layer_sparsity(pruned)) == ["hidden/kernel", "logits/kernel"]
    _check_final_sparsity(pruned, schedule, callback, 6, ["hidden", "logits"])


def test_global_scope_given_to_prune_low_magnitude_reaches_the_callback():
    pruned, _, callback, _ = _train(_cnn(), ("constant", 0.75, 0, -1, 100), scope="global")
    assert callback.scope == "global"
    masks = get_masks(pruned)
    total = sum(mask.size for mask in masks.values())
    kept = sum(int(mask.sum()) for mask in masks.values())
    _, sparsity = evaluate_schedule(callback.schedule, 0)
    assert kept == kept_count(total, pruned=sparsity, rule="tfmot")
    assert len({round(1 - mask.mean(), 3) for mask in masks.values()}) > 1  # not per layer


def test_tfmot_schedule_classes_are_accepted_as_they_are():
    schedule = tfmot_schedules().PolynomialDecay(initial_sparsity=0.0, final_sparsity=0.5,
                                                 begin_step=0, end_step=2, frequency=1)
    pruned = prune_low_magnitude(_conv1d(), pruning_schedule=schedule)
    pruned.compile(optimizer="sgd", loss="mse")
    pruned.fit(np.ones((6, 20, 4), "float32"), np.zeros((6, 3)), batch_size=2, verbose=0,
               callbacks=[GradualPruning()])
    for path, mask in get_masks(pruned).items():
        assert int(mask.sum()) == kept_count(mask.size, pruned=0.5, rule="tfmot"), path


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ValueError, match="pruning schedule"):
        prune_low_magnitude(_cnn(), 0.5)
    with pytest.raises(ValueError, match="scope"):
        prune_low_magnitude(_cnn(), pruning_schedule("constant", 0.5, 0), scope="net")
    with pytest.raises(ValueError, match="not a prunable layer"):
        prune_low_magnitude(_cnn(), pruning_schedule("constant", 0.5, 0), layers=["flat"])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="prune_low_magnitude"):  # a plain model, no schedule
        model.fit(np.ones((2, 4)), np.zeros((2, 2)), verbose=0, callbacks=[GradualPruning()])


def test_module_docstring_examples_run():
    from tf_supermask.pruning import keras_api

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(keras_api, "keras_api", globs={}):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0


def runnable_blocks(path):
    """The ```python blocks of a Markdown file that follow a line ``<!-- runs -->``."""
    text = open(path).read()
    return re.findall(r"^<!-- runs -->\s*\n```python\n(.*?)^```", text, re.S | re.M)


def test_the_tfmot_translation_runs_as_written(tmp_path, monkeypatch):
    blocks = runnable_blocks(DOC)
    assert len(blocks) == 1 and "tensorflow_model_optimization" not in blocks[0]
    assert "tfmot.sparsity.keras.prune_low_magnitude" in open(DOC).read()  # the other side
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    exec(compile(blocks[0], DOC, "exec"), namespace)
    assert os.path.exists("pruned.keras")
    assert glob.glob(os.path.join("logs", "pruning", "events*"))
    assert all(value == pytest.approx(0.8, abs=0.01)
               for value in layer_sparsity(namespace["pruned"]).values())
