"""Runs killed at chosen moments (SIGKILL on real tf-supermask-train processes) resume to the
same weights and results, bit for bit, as the uninterrupted run; damaged backups restart
cleanly."""

import io
import json
import os
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest

from conftest import tiny_config
from tf_supermask.training import TrainConfig, train
from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.callbacks import RunBackup

TRAIN = os.path.join(os.path.dirname(sys.executable), "tf-supermask-train")
# Bernoulli masks sample with seed generators, whose state must be restored too.
FLAGS = ["--model=fc", "--width=0.1", "--mask=bernoulli", "--train_size=256",
         "--batch_size=64", "--epochs=3", "--lr=0.05", "--verbose=0"]
# Figures that legitimately differ between an interrupted and an uninterrupted run.
NOT_COMPARED = ("train_seconds", "resumed")


def run_binary(run_dir, kill_at=None, backend="tensorflow"):
    # One intra-op thread: TensorFlow's multi-threaded CPU reductions can differ in the
    # last bit from run to run (seen once: 2 of 300 momentum values, 1 ulp), which is not
    # what this compares.
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               TF_NUM_INTRAOP_THREADS="1")
    env.pop(run_dir_lib.KILL_ENV, None)
    if kill_at:
        env[run_dir_lib.KILL_ENV] = kill_at
    return subprocess.run([TRAIN] + FLAGS + [f"--run_dir={run_dir}"], env=env,
                          capture_output=True, text=True, timeout=600)


def final_weights(run_dir):
    """{dataset path: array} of the weights inside checkpoints/final.keras."""
    with zipfile.ZipFile(os.path.join(run_dir, "checkpoints", "final.keras")) as archive:
        data = archive.read("model.weights.h5")
    arrays = {}
    with h5py.File(io.BytesIO(data), "r") as weights:
        weights.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                           if isinstance(item, h5py.Dataset) else None)
    return arrays


def figures(run_dir):
    with open(os.path.join(run_dir, run_dir_lib.RESULTS_FILE)) as stream:
        results = json.load(stream)
    return {key: value for key, value in results.items() if key not in NOT_COMPARED}


def assert_same_run(run_dir, reference):
    assert figures(run_dir) == figures(reference)
    ours, theirs = final_weights(run_dir), final_weights(reference)
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    epochs = [line.split(",")[0] for line in
              open(os.path.join(run_dir, "metrics.csv")).read().splitlines()[1:]]
    assert epochs == ["0", "1", "2"]  # no epoch twice after the resumes
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "backup"))
    leftovers = [name for _, _, files in os.walk(run_dir) for name in files
                 if name.startswith(".tmp-")]
    assert not leftovers  # the killed attempts' temporary files were removed


def kill_then_finish(run_dir, kill_points, backend="tensorflow"):
    for point in kill_points:
        process = run_binary(run_dir, point, backend)
        assert process.returncode == -9, (point, process.stderr[-2000:])
        assert not os.path.exists(os.path.join(run_dir, run_dir_lib.RESULTS_FILE))
    process = run_binary(run_dir, backend=backend)
    assert process.returncode == 0, process.stderr[-2000:]
    assert json.load(open(os.path.join(run_dir, run_dir_lib.RESULTS_FILE)))["resumed"]


@pytest.mark.slow
def test_run_killed_repeatedly_ends_bit_identical_tensorflow(tmp_path):
    reference = tmp_path / "reference"
    assert run_binary(reference).returncode == 0
    killed = tmp_path / "killed"
    # Mid-epoch 2 (after epoch 1's backup); between the last epoch's weights and its
    # state.json; while final.keras is being written.
    kill_then_finish(killed, ["batch:1:1", "backup_weights:3", "before_rename:final.keras"])
    assert_same_run(killed, reference)
    history = json.load(open(killed / run_dir_lib.RESULTS_FILE))["history"]
    assert len(history["loss"]) == 3  # the whole run's, not the last attempt's


@pytest.mark.slow
def test_run_killed_after_a_backup_ends_bit_identical_jax(tmp_path):
    pytest.importorskip("jax")
    reference = tmp_path / "reference"
    assert run_binary(reference, backend="jax").returncode == 0
    killed = tmp_path / "killed"
    kill_then_finish(killed, ["backup:1", "before_rename:results.json"], backend="jax")
    assert_same_run(killed, reference)


# Runs in tmp_path / "run": fc at width 0.1, Bernoulli masks, 128 sample images.
tiny = tiny_config(TrainConfig, "run", width=0.1, mask="bernoulli", train_size=128,
                   batch_size=64, epochs=2, lr=0.05)


class Interrupt(Exception):
    pass


class StopAfterFirstEpoch(keras.callbacks.Callback):
    """Raises once the first epoch is backed up (the backup is the last epoch-end callback)."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise Interrupt()


def _damage_state(backup):
    (backup / RunBackup.STATE).write_text("")


def _garble_state(backup):
    (backup / RunBackup.STATE).write_text('{"epoch": 1, "weights"')


def _truncate_weights(backup):
    path = backup / "epoch_1.weights.h5"
    path.write_bytes(path.read_bytes()[:1000])


def _flip_a_weight_byte(backup):
    path = backup / "epoch_1.weights.h5"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def _remove_weights(backup):
    (backup / "epoch_1.weights.h5").unlink()


def _remove_state(backup):
    (backup / RunBackup.STATE).unlink()


def _saved_backup(tmp_path):
    from tf_supermask.data import load_dataset
    from tf_supermask.training.trainer import create_model

    config = tiny(tmp_path)
    model = create_model(config, load_dataset("sample", train_size=64), steps_per_epoch=1)
    backup = RunBackup(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.history = {"loss": [0.5]}
    backup.save(1)
    return model, backup


def test_sound_backup_restores_epoch_history_and_seed_states(tmp_path):
    model, backup = _saved_backup(tmp_path)
    from tf_supermask.training.callbacks import seed_state_variables

    seeds = seed_state_variables(model)
    assert seeds  # the Bernoulli layers' generators
    saved = [np.array(variable.value) for variable in seeds]
    for variable in seeds:
        variable.assign(np.asarray(variable.value) + 7)
    restored = RunBackup(backup.backup_dir)
    assert restored.restore(model) == 1
    assert restored.history == {"loss": [0.5]}
    for variable, value in zip(seeds, saved):
        np.testing.assert_array_equal(np.array(variable.value), value)


@pytest.mark.parametrize("damage", [_damage_state, _garble_state, _truncate_weights,
                                    _flip_a_weight_byte, _remove_weights, _remove_state])
def test_damaged_backup_is_detected(tmp_path, damage):
    model, backup = _saved_backup(tmp_path)
    damage(tmp_path / "backup")
    with pytest.warns(UserWarning, match="damaged resume checkpoint"):
        assert RunBackup(backup.backup_dir).restore(model) == 0
    assert not os.path.exists(backup.backup_dir)


def test_run_with_a_damaged_backup_restarts_cleanly(tmp_path):
    config = tiny(tmp_path)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(config, callbacks=[StopAfterFirstEpoch()])
    backup = run_dir / "checkpoints" / "backup"
    assert sorted(os.listdir(backup)) == ["epoch_1.weights.h5", RunBackup.STATE]
    _damage_state(backup)  # as a kill while writing it in place used to leave it
    with pytest.warns(UserWarning, match="damaged resume checkpoint"):
        results = train(config)
    assert len(results["history"]["loss"]) == 2
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1"]


def test_refusing_a_folder_that_is_not_a_run_touches_nothing(tmp_path):
    # Issue 27, point 13: the refused folder keeps exactly what it held (no .lock).
    from tf_supermask.training.run_dir import RunDirError, check

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's file")
    with pytest.raises(RunDirError, match="not a run directory"):
        check(str(folder), "--model=fc\n")
    assert sorted(path.name for path in folder.iterdir()) == ["notes.txt"]


def test_metrics_csv_is_whole_after_a_stop_and_a_resume(tmp_path):
    # Issue 27, point 15: the file is rewritten whole at each epoch end (never a 0-byte
    # or half file), with "\n" line endings before and after a resume.
    config = tiny(tmp_path)
    path = tmp_path / "run" / "metrics.csv"
    with pytest.raises(Interrupt):
        train(config, callbacks=[StopAfterFirstEpoch()])
    stopped = path.read_bytes()
    assert stopped.count(b"\n") == 2 and b"\r" not in stopped  # header + epoch 0
    train(config)
    data = path.read_bytes()
    assert b"\r" not in data and data.startswith(stopped.split(b"\n")[0] + b"\n")
    rows = data.decode().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1"]
    assert rows[0].split(",")[0] == "epoch" and len({len(row.split(",")) for row in rows}) == 1
    assert not list(path.parent.glob(".tmp-*"))


def test_a_backup_left_by_a_kill_after_the_results_is_removed_next_time(tmp_path):
    # Issue 27, point 13: a kill between results.json and the backup's removal left the
    # backup for ever; the next command on the finished run removes it (and refuses).
    from tf_supermask.training.run_dir import RunDirError

    config = tiny(tmp_path)
    train(config)
    backup = tmp_path / "run" / "checkpoints" / "backup"
    backup.mkdir(parents=True)
    (backup / "epoch_2.weights.h5").write_bytes(b"x" * 1000)
    (tmp_path / "run" / ".tmp-results.json").write_text("{")
    with pytest.raises(RunDirError, match="finished run"):
        train(config)
    assert not backup.exists() and not (tmp_path / "run" / ".tmp-results.json").exists()
    assert (tmp_path / "run" / "results.json").exists()
