"""End-to-end runs of the training library and binary on tiny real data."""

import csv
import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

from conftest import tiny_config
from tf_supermask.config import define_flags, from_flags
from tf_supermask.training import RunDirError, TrainConfig, train
from tf_supermask.training.run_dir import RESULTS_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(REPO, "flags", "*.cfg")))


# A run of a few seconds in tmp_path / "run": fc at width 0.25 on 512 sample images.
tiny = tiny_config(TrainConfig, "run", width=0.25, mask="topk", k=0.3,
                   init="signed_kaiming_constant", train_size=512, batch_size=64, epochs=2,
                   lr=0.1)


class StopAfterEpoch(keras.callbacks.Callback):
    """Simulates a killed job: raises after the given epoch has been backed up (the
    backup is the last epoch-end callback, so this raises at the next hook)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.ended = None

    def on_epoch_end(self, epoch, logs=None):
        self.ended = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch + 1:
            raise KeyboardInterrupt("killed")

    def on_train_end(self, logs=None):
        if self.ended == self.epoch:
            raise KeyboardInterrupt("killed")


@pytest.mark.parametrize("mask", ["dense", "bernoulli", "topk", "fixed"])
def test_run_writes_the_run_directory(tmp_path, mask):
    results = train(tiny(tmp_path, mask=mask))
    run_dir = tmp_path / "run"
    on_disk = json.loads((run_dir / RESULTS_FILE).read_text())
    assert 0.0 <= on_disk["test_accuracy"] <= 1.0
    assert on_disk["test_accuracy"] == results["test_accuracy"]
    assert on_disk["train_seconds"] > 0
    assert set(on_disk["sparsity_per_layer"]) == set(on_disk["weights_remaining_per_layer"])
    expected = {"topk": 0.3, "dense": 1.0, "fixed": 1.0}.get(mask)
    if expected is not None:
        assert on_disk["weights_remaining"] == pytest.approx(expected, abs=1e-3)
    assert "--mask=" + mask in (run_dir / "flags.txt").read_text()
    assert (run_dir / "checkpoints" / "initial.weights.h5").exists()
    assert (run_dir / "checkpoints" / "final.keras").exists()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    events = glob.glob(str(run_dir / "tensorboard" / "**" / "events.out.tfevents*"), recursive=True)
    assert events


def test_tensorboard_has_weights_remaining_and_score_histograms(tmp_path):
    import tensorflow as tf

    train(tiny(tmp_path))
    tags = set()
    for path in glob.glob(str(tmp_path / "run" / "tensorboard" / "**" / "events*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert "epoch_weights_remaining" in tags
    assert any(tag.startswith("epoch_weights_remaining/") for tag in tags)
    assert "epoch_lr" in tags and "epoch_learning_rate" not in tags
    assert any("scores" in tag for tag in tags)


def _scalar_tags(run_dir):
    """{folder under tensorboard/: the scalar tags of its event files}."""
    import tensorflow as tf

    tags = {}
    root = os.path.join(run_dir, "tensorboard")
    for path in glob.glob(os.path.join(root, "**", "events*"), recursive=True):
        folder = tags.setdefault(os.path.relpath(os.path.dirname(path), root), set())
        for event in tf.compat.v1.train.summary_iterator(path):
            folder.update(value.tag for value in event.summary.value
                          if value.HasField("simple_value") or value.metadata.plugin_data
                          .plugin_name == "scalars")
    return tags


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as stream:
        return list(csv.DictReader(stream))


def _learning_rate_tags(tags):
    return sorted((folder, tag) for folder, names in tags.items() for tag in names
                  if "learning_rate" in tag or tag.endswith("_lr") or "lr/" in tag)


def test_epoch_lines_are_short_and_the_test_set_is_named_test(tmp_path, capsys):
    # conv6 has 9 masked layers: each one's weights remaining went on every epoch line
    # (1,324 characters on resnet20). They stay in metrics.csv and TensorBoard.
    results = train(tiny(tmp_path, model="conv6", width=0.1, train_size=128, batch_size=32,
                         steps_per_epoch=2, verbose=2))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("2/2 - ")]
    assert len(lines) == 2, out
    for line in lines:
        assert len(line) < 160, line
        for shown in (" - loss: ", " - accuracy: ", " - test_accuracy: ", " - lr: ",
                      " - weights_remaining: "):
            assert shown in line, line
        assert "kernel" not in line and "val_" not in line, line
    run_dir = tmp_path / "run"
    rows = _metrics(run_dir)
    per_layer = {key.split("/", 1)[1] for key in rows[0] if key.startswith("weights_remaining/")}
    assert per_layer == set(results["weights_remaining_per_layer"]) and len(per_layer) == 9
    # No held-out split: what each epoch evaluated is the test set, and says so.
    assert {"test_accuracy", "test_loss"} <= set(rows[0])
    assert not any(key.startswith("val_") for key in rows[0]), sorted(rows[0])
    assert float(rows[-1]["test_accuracy"]) == pytest.approx(results["test_accuracy"], abs=1e-6)
    assert "val_accuracy" not in results["history"]
    assert results["history"]["test_accuracy"] == pytest.approx(
        [float(row["test_accuracy"]) for row in rows])
    assert results["best_epoch_test_accuracy"] == pytest.approx(
        max(float(row["test_accuracy"]) for row in rows))
    tags = _scalar_tags(run_dir)
    assert {"epoch_test_accuracy", "epoch_test_loss", "epoch_lr"} <= tags["train"]
    assert {f"epoch_weights_remaining/{path}" for path in per_layer} <= tags["train"]
    assert "validation" not in tags, sorted(tags)
    assert _learning_rate_tags(tags) == [("train", "epoch_lr")]


def test_a_validation_split_is_named_val_and_the_test_set_test(tmp_path):
    results = train(tiny(tmp_path, train_size=256, validation_size=64))
    run_dir = tmp_path / "run"
    rows = _metrics(run_dir)
    assert {"val_accuracy", "val_loss", "test_accuracy", "test_loss"} <= set(rows[0])
    assert results["best_val_accuracy"] == pytest.approx(
        max(float(row["val_accuracy"]) for row in rows))
    tags = _scalar_tags(run_dir)
    assert {"epoch_accuracy", "epoch_loss"} <= tags["validation"]
    assert {"epoch_test_accuracy", "epoch_test_loss"} <= tags["train"]
    assert "test" not in tags
    assert _learning_rate_tags(tags) == [("train", "epoch_lr")]


def test_supermask_beats_chance_quickly(tmp_path):
    results = train(tiny(tmp_path, train_size=2000, epochs=3, width=0.5, data_workers=2))
    assert results["test_accuracy"] > 0.6


def test_finished_run_is_refused_and_left_alone(tmp_path):
    train(tiny(tmp_path))
    run_dir = tmp_path / "run"
    before = {path: open(path, "rb").read() for path in glob.glob(str(run_dir / "**"), recursive=True)
              if os.path.isfile(path)}
    with pytest.raises(RunDirError, match="finished run.*--overwrite"):
        train(tiny(tmp_path))
    with pytest.raises(RunDirError, match="finished run"):
        train(tiny(tmp_path, k=0.5))
    after = {path: open(path, "rb").read() for path in glob.glob(str(run_dir / "**"), recursive=True)
             if os.path.isfile(path)}
    assert before == after
    results = train(tiny(tmp_path, k=0.5, overwrite=True))
    assert results["weights_remaining"] == pytest.approx(0.5, abs=1e-3)


def test_unfinished_run_with_other_flags_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, epochs=3), callbacks=[StopAfterEpoch(0)])
    with pytest.raises(RunDirError, match=r"other flags \(--k: 0.3 -> 0.5\)"):
        train(tiny(tmp_path, epochs=3, k=0.5))


def test_directory_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError, match="not a run directory"):
        train(tiny(tmp_path))
    assert (tmp_path / "run" / "notes.txt").read_text() == "precious"


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    config = tiny(tmp_path, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[StopAfterEpoch(1)])
    run_dir = tmp_path / "run"
    assert not (run_dir / RESULTS_FILE).exists()
    results = train(config)
    assert results["resumed"]
    assert len(results["history"]["loss"]) == 3  # the backup holds the first two epochs
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]
              if not line.startswith("epoch")]
    assert epochs == ["0", "1", "2"]


def test_export_reloads_with_identical_predictions(tmp_path):
    import tensorflow as tf

    from tf_supermask.data import ArrayBatches, load_dataset, normalization_stats

    train(tiny(tmp_path, export=True))
    run_dir = tmp_path / "run"
    model = keras.saving.load_model(run_dir / "checkpoints" / "final.keras")
    dataset = load_dataset("sample")
    x, _ = ArrayBatches(dataset.x_test[:32], dataset.y_test[:32], 32,
                        normalization=normalization_stats("sample"))[0]
    reloaded = tf.saved_model.load(str(run_dir / "saved_model"))
    # The SavedModel takes raw 0-255 images and normalises them itself.
    raw = tf.constant(dataset.x_test[:32].astype("float32").reshape(x.shape))
    served = reloaded.serve(raw)
    np.testing.assert_allclose(served["logits"].numpy(), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (dict(model="resnet9000"), "unknown model 'resnet9000'"),
    (dict(k=0.0), r"fraction of weights kept.*\(0, 1\]"),
    (dict(k=1.5), r"fraction of weights kept.*\(0, 1\]"),
    (dict(init="ones"), "unknown initializer"),
    (dict(epochs=0), "--epochs"),
    (dict(lr_schedule="step"), "--lr_milestones"),
])
def test_bad_flags_give_clear_errors(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        train(tiny(tmp_path, **bad))
    assert not (tmp_path / "run").exists()


def test_missing_dataset_says_how_to_provide_it(tmp_path, monkeypatch):
    from tf_supermask.data import sources

    def no_network(name, data_dir=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(sources, "load_tfds", no_network)
    with pytest.raises(FileNotFoundError, match="--data_dir") as error:
        train(tiny(tmp_path, dataset="cifar100", data_dir=str(tmp_path / "empty")))
    assert "x_train" in str(error.value)
    assert not (tmp_path / "run").exists()


# The configuration each binary parses; a flagfile names its binary in a comment
# ("tf-supermask-lottery ..."), tf-supermask-train otherwise.
def _config_classes():
    from tf_supermask.experiments.finetune import FinetuneConfig
    from tf_supermask.experiments.prune_init import PruneInitConfig
    from tf_supermask.experiments.lottery import LotteryConfig

    return {"train": TrainConfig, "lottery": LotteryConfig, "finetune": FinetuneConfig,
            "prune-init": PruneInitConfig}


@pytest.mark.parametrize("path", FLAGFILES, ids=[os.path.basename(p) for p in FLAGFILES])
def test_every_flagfile_parses(path):
    import re

    from tf_supermask.models import MODELS

    with open(path) as stream:
        named = re.findall(r"tf-supermask-([a-z-]+)", stream.read())
    binary = next((name for name in named if name != "report"), "train")
    config_class = _config_classes()[binary]
    values = flags.FlagValues()
    define_flags(config_class, values)
    values(["prog", f"--flagfile={path}"])
    config = from_flags(config_class, values)
    assert config.model in MODELS.names()


def _run_binary(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "tf_supermask.bin.train", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)


def test_binary_runs_the_quickstart_flagfile_shortened(tmp_path):
    result = _run_binary([f"--flagfile={REPO}/flags/quickstart.cfg", "--epochs=1",
                          "--train_size=1000", "--verbose=0", f"--run_dir={tmp_path}/quick"],
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "quick" / RESULTS_FILE).read_text())
    assert results["weights_remaining"] == pytest.approx(0.5, abs=1e-3)
    flags_txt = (tmp_path / "quick" / "flags.txt").read_text()
    assert "--init=signed_kaiming_constant" in flags_txt and "--epochs=1" in flags_txt


def test_binary_reports_bad_flags_and_existing_run(tmp_path):
    result = _run_binary(["--model=nope", f"--run_dir={tmp_path}/x"], cwd=tmp_path)
    assert result.returncode != 0
    assert "unknown model 'nope'" in result.stderr
    assert not (tmp_path / "x").exists()


MIRRORED_SCRIPT = r"""
import sys, json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from tf_supermask.training import TrainConfig, train
import keras
out = {}
for strategy in ("one_device", "mirrored"):
    config = TrainConfig(model="fc", width=0.25, mask="topk", k=0.5, dataset="sample",
                         train_size=512, batch_size=64, epochs=2, lr=0.05, verbose=0,
                         strategy=strategy, run_dir=sys.argv[1] + "/" + strategy)
    results = train(config)
    model = keras.saving.load_model(sys.argv[1] + "/" + strategy + "/checkpoints/final.keras")
    out[strategy] = {"acc": results["test_accuracy"],
                     "weights": [np.asarray(w).tolist() for w in model.get_weights()]}
    if strategy == "mirrored":
        out["replicas"] = tf.distribute.MirroredStrategy().num_replicas_in_sync
print(json.dumps(out))
"""


def test_mirrored_over_two_cpus_matches_one_device(tmp_path):
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    for one, two in zip(out["one_device"]["weights"], out["mirrored"]["weights"]):
        np.testing.assert_allclose(np.array(two), np.array(one), rtol=1e-3, atol=1e-4)
    assert out["mirrored"]["acc"] == pytest.approx(out["one_device"]["acc"], abs=0.01)


def test_flag_added_by_newer_code_does_not_block_resuming(tmp_path):
    from tf_supermask.training.run_dir import prepare

    run_dir = str(tmp_path / "run")
    assert prepare(run_dir, "--model=fc\n--k=0.5\n") == "new"
    # The same run, restarted by code that has one more flag: resumed, not refused.
    assert prepare(run_dir, "--model=fc\n--k=0.5\n--new_option=3\n") == "resume"
    with pytest.raises(RunDirError, match="--k: 0.5 -> 0.3"):
        prepare(run_dir, "--model=fc\n--k=0.3\n--new_option=3\n")


def test_unreadable_resume_checkpoint_restarts_instead_of_failing(tmp_path):
    config = tiny(tmp_path, epochs=1)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[StopAfterEpoch(0)])
    backup = run_dir / "checkpoints" / "backup"
    (backup / "epoch_1.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\ncut short")  # damaged
    with pytest.warns(UserWarning, match="damaged resume checkpoint"):
        results = train(config)
    assert 0.0 <= results["test_accuracy"] <= 1.0
