"""Every binary and experiment on a user's own model (--model=module:function, a .keras
file, python:<name>, keras.applications.<Name>)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tf_supermask.choices import model_kind, model_stem
from tf_supermask.layers import masked_layers
from tf_supermask.models import MaskOptions, build_model, register_user_model
from tf_supermask.training.run_dir import LOCK_FILE

BIN = os.path.dirname(sys.executable)
MODULE = textwrap.dedent('''
    import keras


    def small(input_shape, num_classes):
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        x = keras.layers.MaxPooling2D(4)(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(16, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
''')
TINY = dict(dataset="sample", train_size=128, batch_size=64, epochs=1, lr=0.05, verbose=0)


# The same builder in this process (for python:small) as in the module file the binary imports.
_namespace = {}
exec(MODULE, _namespace)
small = _namespace["small"]

register_user_model("small", small)


def test_the_forms_of_model_and_their_folder_names():
    assert model_kind("fc") == "registered" and model_stem("fc") == "fc"
    assert model_kind("keras.applications.ResNet50") == "application"
    assert model_kind("mypkg.nets:small") == "function"
    assert model_stem("mypkg.nets:small") == "mypkg.nets_small"
    assert model_kind("models/net.keras") == "file" and model_stem("models/net.keras") == "net"
    assert model_kind("python:small") == "python"
    with pytest.raises(ValueError, match="or your own: keras.applications"):
        model_kind("nonsense")


def test_build_model_masks_a_users_model_as_the_recipe_masks_its_own():
    model = build_model("python:small", (28, 28, 1), 10, MaskOptions(mask="topk", k=0.3))
    masked = masked_layers(model)
    # The first conv stays the user's own (the VGG/ResNet recipes' rule); the two Dense
    # layers are masked at k = 0.3.
    assert [type(layer).__name__ for layer in model.layers if layer.weights][:1] == ["Conv2D"]
    assert [(layer.mask_mode, layer.k) for layer in masked] == [("topk", 0.3), ("topk", 0.3)]
    counts = [int(keras.ops.sum(layer.get_mask())) for layer in masked]
    assert counts == [144 * 16 - int(0.7 * 144 * 16), 16 * 10 - int(0.7 * 16 * 10)]


def test_experiments_run_on_a_registered_python_model(tmp_path):
    from tf_supermask.experiments.config import FinetuneConfig, LotteryConfig, PruneInitConfig
    from tf_supermask.experiments.lottery import run_lottery
    from tf_supermask.experiments.prune_init import prune_init
    from tf_supermask.bin.finetune import run_experiment

    lottery = run_lottery(LotteryConfig(model="python:small", levels=1, reinit="reshuffle",
                                        run_dir=str(tmp_path / "lottery"), **TINY))
    assert [round(level["weights_remaining"], 2) for level in lottery["levels"]][0] == 1.0
    assert lottery["levels"][1]["weights_remaining"] < 1.0
    snip = prune_init(PruneInitConfig(model="python:small", method="snip", sparsity=0.8,
                                      run_dir=str(tmp_path / "snip"), **TINY))
    assert abs(snip["mask_sparsity"] - 0.8) < 0.01
    oneshot = run_experiment(FinetuneConfig(model="python:small", sparsity=0.5,
                                            finetune_epochs=1,
                                            run_dir=str(tmp_path / "finetune"), **TINY))
    assert abs(oneshot["pruned_layers_sparsity"] - 0.5) < 0.01
    compare = run_experiment(FinetuneConfig(model="python:small", compare="lottery,finetune",
                                            sparsities="0.5", finetune_epochs=1,
                                            run_dir=str(tmp_path / "compare"),
                                            **dict(TINY, epochs=2)))
    assert sorted(arm["arm"] for arm in compare["arms"]) == ["finetune", "lottery"]


def _plain_env():
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    env["PYTHONPATH"] = ""
    return env


def test_train_binary_on_a_module_function_and_a_keras_file(tmp_path):
    binary = os.path.join(BIN, "tf-supermask-train")
    if not os.path.exists(binary):
        pytest.skip("tf-supermask-train is not installed (pip install -e .)")
    (tmp_path / "usernets.py").write_text(MODULE)
    args = [binary, "--model=usernets:small", "--mask=topk", "--dataset=sample",
            "--train_size=128", "--batch_size=64", "--epochs=1", "--verbose=0"]
    result = subprocess.run(args + ["--run_dir=run"], cwd=tmp_path, env=_plain_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 < results["weights_remaining"] < 1.0
    assert "--model=usernets:small" in (tmp_path / "run" / "flags.txt").read_text()
    # Export writes the folded SavedModel; the compact file is refused in one line.
    export = os.path.join(BIN, "tf-supermask-export")
    result = subprocess.run([export, "run"], cwd=tmp_path, env=_plain_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "saved_model").is_dir()
    result = subprocess.run([export, "run", "--format=compact"], cwd=tmp_path,
                            env=_plain_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "registered models only" in result.stderr
    # The default folder names the function, not the module path's punctuation.
    result = subprocess.run(args, cwd=tmp_path, env=_plain_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [name for name in os.listdir(tmp_path / "runs")
            if name.startswith("usernets_small_topk_sample_")]
    # A saved .keras model is a --model too.
    small((28, 28, 1), 10).save(tmp_path / "net.keras")
    result = subprocess.run([binary, "--model=net.keras", "--mask=fixed", "--dataset=sample",
                             "--train_size=128", "--batch_size=64", "--epochs=1",
                             "--verbose=0", "--run_dir=file_run"], cwd=tmp_path,
                            env=_plain_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "file_run" / "results.json").exists()


@pytest.mark.parametrize("model, message", [
    ("nonsense", "or your own"),
    ("nomodule_here:small", "cannot import it"),
    ("missing.keras", "no such .keras file"),
    ("keras.applications.NoSuchNet", "keras.applications has no such model"),
    ("python:unregistered", "nothing registered"),
])
def test_bad_user_models_give_one_clear_error(model, message, tmp_path):
    from tf_supermask.training import TrainConfig, train

    with pytest.raises(ValueError, match=message):
        train(TrainConfig(model=model, run_dir=str(tmp_path / "run"), **TINY))
    # Nothing was written but the folder's (released) lock: a later run starts afresh.
    run = tmp_path / "run"
    assert not run.exists() or [path.name for path in run.iterdir()] == [LOCK_FILE]


def test_an_application_that_cannot_take_the_data_says_so(tmp_path):
    from tf_supermask.training import TrainConfig, train

    with pytest.raises(ValueError, match="cannot take inputs of shape"):
        train(TrainConfig(model="keras.applications.MobileNetV2",
                          run_dir=str(tmp_path / "run"), **TINY))


def test_a_keras_application_trains_as_a_supermask(tmp_path):
    options = MaskOptions(mask="topk", k=0.5)
    model = build_model("keras.applications.MobileNetV2", (32, 32, 3), 10, options)
    assert len(masked_layers(model)) > 30
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.arange(4), epochs=1, verbose=0)
