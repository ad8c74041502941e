"""Runs that must not be lost (issue 27, points 10-13): a replaced run comes back when the
new one fails or is killed, a full disk ends in one error line with the finished work kept,
one batch runner per output folder, and the next export removes what a killed one left."""

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.run_dir import RunDirError

BIN = os.path.dirname(sys.executable)
TRAIN_FLAGS = ["--model=fc", "--width=0.1", "--dataset=sample", "--train_size=128",
               "--validation_size=64", "--batch_size=32", "--steps_per_epoch=2", "--epochs=1",
               "--momentum=0.0", "--verbose=0"]


def _binary(name):
    path = os.path.join(BIN, f"tf-supermask-{name}")
    if not os.path.exists(path):
        pytest.skip(f"tf-supermask-{name} is not installed (pip install -e .)")
    return path


def plain_env(**extra):
    """This environment without TF_* variables (no kill hook, no cluster, default logs)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    env.update(CUDA_VISIBLE_DEVICES="", **extra)
    return env


def run(args, timeout=600, **env):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env=plain_env(**env))


def tree(folder):
    """{relative path: bytes} of every file under `folder` but the lock file."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative != run_dir_lib.LOCK_FILE:
                with open(path, "rb") as stream:
                    files[relative] = stream.read()
    return files


def replace_folders(folder):
    return [name for name in os.listdir(folder) if name.startswith(".replaced")]


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# Point 10: --overwrite keeps the finished run until the new one has finished ---------------

class Killed(BaseException):
    """A simulated SIGKILL at a kill point."""


def fake_finished_run(run_dir, lr="0.1"):
    os.makedirs(os.path.join(run_dir, "checkpoints"))
    os.makedirs(os.path.join(run_dir, "tensorboard", "train"))
    files = {"flags.txt": f"--model=fc\n--lr={lr}\n", "results.json": '{"test_accuracy": 0.5}\n',
             "metrics.csv": "epoch,loss\n0,1.0\n", "checkpoints/final.keras": "the old model",
             "checkpoints/initial.weights.h5": "old initial weights",
             "tensorboard/train/events": "old events"}
    for name, text in files.items():
        with open(os.path.join(run_dir, name), "w") as stream:
            stream.write(text)


def die(run_dir):
    """What a SIGKILL does to this process's hold on `run_dir`: the OS lock goes, nothing
    else runs."""
    key = os.path.realpath(run_dir)
    run_dir_lib._HELD.pop(key).close()
    run_dir_lib._REPLACING.discard(key)


def start_replacement(run_dir, flags="--model=fc\n--lr=1\n"):
    state = run_dir_lib.check(run_dir, flags, overwrite=True)
    assert state == "replace"
    run_dir_lib.begin(run_dir, flags, state)
    # The new run writes its first files (some under the replaced run's names).
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    for name in ("metrics.csv", "checkpoints/initial.weights.h5", "new.txt"):
        with open(os.path.join(run_dir, name), "w") as stream:
            stream.write("new")


@pytest.mark.parametrize("point", [None, "replace:moving_aside", "replace:moved_aside",
                                   "replace:clearing", "replace:moving_back"])
def test_a_failed_or_killed_replacement_puts_the_finished_run_back(tmp_path, monkeypatch, point):
    run_dir = str(tmp_path / "run")
    fake_finished_run(run_dir)
    before = tree(run_dir)

    def kill_point(name):
        if name == point:
            raise Killed(name)

    monkeypatch.setattr(run_dir_lib, "kill_point", kill_point)
    try:
        start_replacement(run_dir)
        # The new run fails (no results.json): releasing the folder puts the old run back.
        run_dir_lib.release(run_dir)
    except Killed:
        die(run_dir)
        assert replace_folders(run_dir)  # killed half-way: what it left
    else:
        assert point is None
    monkeypatch.undo()
    # The next command on the folder finds the finished run, as it was.
    with pytest.raises(RunDirError, match="holds a finished run"):
        run_dir_lib.check(run_dir, "--model=fc\n--lr=0.1\n")
    assert tree(run_dir) == before
    assert not replace_folders(run_dir)


def test_the_replaced_run_goes_once_the_new_one_has_finished(tmp_path):
    run_dir = str(tmp_path / "run")
    fake_finished_run(run_dir)
    start_replacement(run_dir)
    assert replace_folders(run_dir) == [run_dir_lib.REPLACED]
    run_dir_lib.write_json(os.path.join(run_dir, "results.json"), {"test_accuracy": 0.9})
    run_dir_lib.release(run_dir)
    assert not replace_folders(run_dir)
    assert json.load(open(os.path.join(run_dir, "results.json"))) == {"test_accuracy": 0.9}
    assert open(os.path.join(run_dir, "flags.txt")).read() == "--model=fc\n--lr=1\n"
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "final.keras"))
    # Killed between the new results.json and the old run's removal: the next command
    # removes the old run and keeps the new one.
    run_dir = str(tmp_path / "run2")
    fake_finished_run(run_dir)
    start_replacement(run_dir)
    run_dir_lib.write_json(os.path.join(run_dir, "results.json"), {"test_accuracy": 0.9})
    new = tree(run_dir)
    die(run_dir)
    with pytest.raises(RunDirError, match="holds a finished run"):
        run_dir_lib.check(run_dir, "--model=fc\n--lr=1\n")
    assert not replace_folders(run_dir)
    assert {name: data for name, data in tree(run_dir).items()
            if not name.startswith(".replaced")} == {
        name: data for name, data in new.items() if not name.startswith(".replaced")}


def test_an_experiment_replaced_with_overwrite_comes_back_when_it_fails(tmp_path):
    # Lottery, fine-tuning and the comparisons replace their folder through Experiment.
    from tf_supermask.experiments.stages import Experiment
    from tf_supermask.training import TrainConfig

    directory = str(tmp_path / "experiment")
    config = TrainConfig(model="fc", width=0.1, epochs=1, verbose=0, run_dir=directory)
    fake_finished_run(directory)
    os.makedirs(os.path.join(directory, "level_0"))
    with open(os.path.join(directory, "level_0", "results.json"), "w") as stream:
        stream.write('{"test_accuracy": 0.4}')
    before = tree(directory)
    with pytest.raises(RuntimeError, match="level 1 failed"):
        with Experiment(dataclasses.replace(config, overwrite=True), directory):
            assert not os.path.exists(os.path.join(directory, "level_0"))
            os.makedirs(os.path.join(directory, "level_0"))
            raise RuntimeError("level 1 failed")
    assert tree(directory) == before
    assert not replace_folders(directory)


@pytest.mark.slow
def test_overwrite_keeps_the_finished_run_when_the_new_one_diverges_or_is_killed(tmp_path):
    train = _binary("train")
    run_dir = tmp_path / "run"
    flags = TRAIN_FLAGS + [f"--run_dir={run_dir}"]
    result = run([train] + flags)
    assert result.returncode == 0, result.stderr[-3000:]
    finished = tree(run_dir)
    assert "results.json" in finished and "checkpoints/final.keras" in finished

    diverged = run([train] + flags + ["--overwrite", "--lr=1e30"])
    assert diverged.returncode == 1, diverged.stderr[-3000:]
    assert len(error_lines(diverged.stderr)) == 1 and "Traceback" not in diverged.stderr
    assert tree(run_dir) == finished  # results.json, final.keras, flags.txt: the old ones
    assert not replace_folders(run_dir)

    killed = run([train] + flags + ["--overwrite", "--lr=0.05"],
                 **{run_dir_lib.KILL_ENV: "backup:1"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (run_dir / "results.json").exists()  # the new run's files are there now

    again = run([train] + flags)  # the next command puts the finished run back
    assert again.returncode == 1, again.stderr[-3000:]
    assert "holds a finished run" in error_lines(again.stderr)[0]
    assert tree(run_dir) == finished
    assert not replace_folders(run_dir)


# Point 11: a full disk is one error line, and the finished work is kept ----------------------

H5PY_DISK_FULL = ("Can't synchronously write data (file write failed: time = Sat Dec  5 "
                  "07:41:42 2026\n, filename = '/x/.tmp-a-epoch_2.weights.h5', file descriptor "
                  "= 7, errno = 28, error message = 'No space left on device', buf = 0x5, "
                  "total write size = 94080, bytes this sub-write = 94080, offset = 12824)")


def test_a_full_disk_while_writing_a_backup_names_the_file_and_keeps_the_last_one(
        tmp_path, monkeypatch):
    import keras

    from tf_supermask.bin.common import error_message
    from tf_supermask.files import DiskFullError
    from tf_supermask.training import TrainConfig, train

    save_weights = keras.Model.save_weights

    def full_at_epoch_2(self, path, *args, **kwargs):
        if "epoch_2" in os.path.basename(path):
            with open(path, "wb") as stream:  # part of the file was written
                stream.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, H5PY_DISK_FULL)  # as h5py raises it
        return save_weights(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", full_at_epoch_2)
    run_dir = tmp_path / "run"
    config = TrainConfig(model="fc", width=0.1, train_size=64, batch_size=32, epochs=2,
                         verbose=0, run_dir=str(run_dir))
    with pytest.raises(DiskFullError) as caught:
        train(config)
    backup = run_dir / "checkpoints" / "backup"
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(backup / "epoch_2.weights.h5")
    message = error_message(caught.value)
    assert "\n" not in message and message.startswith("the disk is full")
    assert str(backup / "epoch_2.weights.h5") in message
    assert sorted(os.listdir(backup)) == ["epoch_1.weights.h5", "state.json"]
    assert json.loads((backup / "state.json").read_text())["epoch"] == 1
    assert not [name for _, _, names in os.walk(run_dir) for name in names
                if name.startswith(".tmp-")]
    # h5py's own error (not converted on the way) is one line too.
    assert error_message(OSError(errno.ENOSPC, H5PY_DISK_FULL)).startswith("the disk is full")
    assert "\n" not in error_message(RuntimeError(H5PY_DISK_FULL))


def _tmpfs_available(tmp_path):
    if not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                 f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                                capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.mark.slow
def test_a_full_disk_is_one_error_line_not_a_crash_and_the_run_resumes(tmp_path):
    # A real full disk: a small tmpfs in a user namespace (skipped where not allowed).
    # HDF5 used to crash the interpreter at exit (exit 139) after its error.
    train = _binary("train")
    if not _tmpfs_available(tmp_path):
        pytest.skip("no unprivileged tmpfs (unshare --user --mount) on this machine")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    # Sizes (fc at width 0.1, top-k, SGD with momentum): initial weights 218 kB, each
    # backup 315 kB; 100 kB is too small for the initial weights, 700 kB holds them and
    # the backup of epoch 1, not that of epoch 2 beside it.
    command = " ".join([train] + TRAIN_FLAGS[:-3] + ["--mask=topk", "--k=0.3", "--epochs=2",
                                                     "--verbose=0"])
    script = textwrap.dedent(f"""\
        mount -t tmpfs -o size=100k tmpfs {disk} || exit 99
        {command} --run_dir={disk}/small 2>{out}/small.err; echo $? >{out}/small.rc
        mount -o remount,size=700k {disk}
        {command} --run_dir={disk}/run 2>{out}/full.err; echo $? >{out}/full.rc
        (cd {disk} && find . | sort) >{out}/files.txt
        cp {disk}/run/checkpoints/backup/state.json {out}/state.json
        mount -o remount,size=4m {disk}
        {command} --run_dir={disk}/run 2>{out}/resumed.err; echo $? >{out}/resumed.rc
        cp {disk}/run/results.json {out}/results.json
        """)
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                             script], capture_output=True, text=True, timeout=900,
                            env=plain_env())
    assert result.returncode == 0, result.stderr[-3000:]

    def outcome(name, written):
        rc = int((out / f"{name}.rc").read_text())
        stderr = (out / f"{name}.err").read_text()
        assert rc == 1, (rc, stderr[-3000:])  # not 139 (a segmentation fault)
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        lines = error_lines(stderr)
        assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr
        assert lines[0].startswith("error: the disk is full"), lines
        assert f"writing {disk}/{written}" in lines[0], lines

    outcome("small", "small/checkpoints/initial.weights.h5")  # too small for the weights
    outcome("full", "run/checkpoints/backup/epoch_2.weights.h5")  # full at epoch 2
    files = (out / "files.txt").read_text().split()
    assert "./run/checkpoints/backup/epoch_1.weights.h5" in files
    assert not [name for name in files if "/.tmp-" in name]
    assert json.loads((out / "state.json").read_text())["epoch"] == 1
    # With space again, the same command resumes after epoch 1.
    assert (out / "resumed.rc").read_text().strip() == "0", (out / "resumed.err").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["resumed"] is True and len(results["history"]["loss"]) == 2


# Point 12: one batch runner per output folder ---------------------------------------------

FAKE_PYTHON = """\
#!{python}
# Stands in for the job's interpreter: says it started, waits for the test's go, then
# finishes the job as a run would (results.json in its run directory).
import json, os, sys, time
run_dir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--run_dir="))
open({started!r}, "w").close()
while not os.path.exists({go!r}):
    time.sleep(0.05)
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "results.json"), "w") as stream:
    json.dump({{"test_accuracy": 0.5, "weights_remaining": 1.0}}, stream)
"""

RUNNER = """\
import sys
from tf_supermask.tools import batch
jobs = batch.read_job_list(sys.argv[1])
report = batch.run_batch(jobs, sys.argv[2], python=sys.argv[3], poll_seconds=0.05)
sys.exit(report.exit_code)
"""


def wait_for(path, process, timeout=300):
    """Waits until `path` exists (an event, not a duration: the timeout only ends a hung
    test)."""
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            pytest.fail(f"the first runner ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the first runner's job did not start")
        time.sleep(0.05)


def folder_state(folder):
    return {relative: (data, os.stat(os.path.join(folder, relative)).st_mtime_ns)
            for relative, data in tree(folder).items()}, sorted(os.listdir(folder))


def test_a_second_batch_runner_on_the_same_folder_is_refused_and_changes_nothing(tmp_path):
    batch_binary = _binary("batch")
    flagfile = tmp_path / "tiny.cfg"
    flagfile.write_text("\n".join(TRAIN_FLAGS) + "\n")
    joblist = tmp_path / "jobs.txt"
    joblist.write_text(f"{flagfile} --seed=0\n{flagfile} --seed=1\n")
    output = tmp_path / "out"
    started, go = tmp_path / "started", tmp_path / "go"
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable, started=str(started), go=str(go)))
    fake.chmod(0o755)
    first = subprocess.Popen([sys.executable, "-c", RUNNER, str(joblist), str(output), str(fake)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=plain_env())
    try:
        wait_for(started, first)  # the first runner holds the folder and runs a job
        before = folder_state(output)
        second = run([batch_binary, str(joblist), f"--output={output}"])
        assert second.returncode not in (0, 139), second.stderr[-3000:]
        lines = error_lines(second.stderr)
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert "in use by another tf-supermask-batch runner (pid " in lines[0], lines
        assert f"pid {first.pid} on " in lines[0] and "Nothing was changed" in lines[0]
        assert "start" not in second.stdout, second.stdout  # it ran nothing
        assert folder_state(output) == before
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, (stdout, stderr)
    with open(output / "summary.csv") as stream:
        statuses = [line.split(",")[4] for line in stream.read().splitlines()[1:]]
    assert statuses == ["done", "done"]
    for seed in (0, 1):  # one runner wrote each log, once
        log = (output / f"tiny_seed{seed}.log").read_text()
        assert log.count("# runner: exit code 0") == 1, log
    # Once the first runner is gone, the folder is free: a rerun skips the finished jobs.
    rerun = run([batch_binary, str(joblist), f"--output={output}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 finished earlier (skipped), 0 to run" in rerun.stdout


def test_a_process_may_hold_its_output_folder_again_others_may_not(tmp_path):
    # A study sets its folder up under the lock, then runs its batch there.
    import io

    from tf_supermask.tools import batch

    output = str(tmp_path / "out")
    take = ("import sys\nfrom tf_supermask.tools import batch\n"
            "try:\n    batch.lock_output(sys.argv[1])\n"
            "except batch.OutputBusy as error:\n    sys.exit(str(error))\n")
    with batch.output_locked(output):
        report = batch.run_batch([], output, stream=io.StringIO())
        assert report.exit_code == 0
        other = subprocess.run([sys.executable, "-c", take, output], capture_output=True,
                               text=True, timeout=120, env=plain_env())
        assert other.returncode == 1 and f"pid {os.getpid()} on " in other.stderr, other.stderr
    free = subprocess.run([sys.executable, "-c", take, output], capture_output=True, text=True,
                          timeout=120, env=plain_env())
    assert free.returncode == 0, free.stderr


# Point 13: leftovers of killed writes; a refused folder is left as it was --------------------

def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_write_removes_what_killed_writes_left_and_nothing_else(tmp_path):
    from tf_supermask.export import atomic

    host = atomic._host_tag()
    dead, alive = _dead_pid(), os.getppid()
    names = {
        f".tmp-supermask.npz-{host}-{dead}-0123456789ab": "stale file",
        f".tmp-saved_model-{host}-{dead}-0123456789ab/": "stale folder",
        f".tmp-supermask.npz-{host}-{alive}-0123456789ab": "a live export's",
        f".tmp-supermask.npz-otherhost-{dead}-0123456789ab": "another host's",
        f".tmp-other.npz-{host}-{dead}-0123456789ab": "another output's",
        ".tmp-supermask.npz-ba9876543210": "an old version's, a day old",
        ".tmp-saved_model-ba9876543210": "an old version's, fresh",
    }
    for name in names:
        if name.endswith("/"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "saved_model.pb").write_text("x")
        else:
            (tmp_path / name).write_text(names[name])
    old = tmp_path / ".tmp-supermask.npz-ba9876543210"
    os.utime(old, (1, 1))
    with atomic.atomic_path(str(tmp_path / "supermask.npz")) as temp:
        with open(temp, "w") as stream:
            stream.write("new")
    with atomic.atomic_path(str(tmp_path / "saved_model"), directory=True) as temp:
        with open(os.path.join(temp, "saved_model.pb"), "w") as stream:
            stream.write("new")
    assert sorted(os.listdir(tmp_path)) == sorted([
        f".tmp-supermask.npz-{host}-{alive}-0123456789ab",
        f".tmp-supermask.npz-otherhost-{dead}-0123456789ab",
        f".tmp-other.npz-{host}-{dead}-0123456789ab",
        ".tmp-saved_model-ba9876543210", "saved_model", "supermask.npz"])
    # Killed between the two renames that replace a folder: the old folder comes back.
    aside = tmp_path / f".old-saved_model-{host}-{dead}-0123456789ab"
    os.replace(tmp_path / "saved_model", aside)
    assert atomic.remove_stale(str(tmp_path / "saved_model")) == [aside.name]
    assert (tmp_path / "saved_model" / "saved_model.pb").read_text() == "new"


def test_atomic_path_turns_a_full_disk_into_one_error_naming_the_output(tmp_path):
    from tf_supermask.export.atomic import atomic_path
    from tf_supermask.files import DiskFullError

    target = tmp_path / "supermask.npz"
    with pytest.raises(DiskFullError) as caught:
        with atomic_path(str(target)) as temp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.filename == str(target)
    assert os.listdir(tmp_path) == []
    assert not os.path.exists(temp)


@pytest.mark.slow
def test_a_killed_export_leaves_nothing_behind_after_the_next_export(tmp_path):
    train, export = _binary("train"), _binary("export")
    run_dir, output = tmp_path / "run", tmp_path / "export"
    result = run([train] + TRAIN_FLAGS + ["--mask=topk", "--k=0.5", f"--run_dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    args = [export, str(run_dir), "--format=compact", f"--output={output}"]
    killed = run(args, **{run_dir_lib.KILL_ENV: "before_rename:supermask.npz"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [name for name in os.listdir(output) if name.startswith(".tmp-supermask.npz-")]
    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(os.listdir(output)) == ["supermask.npz"]


@pytest.mark.slow
def test_a_refused_user_folder_gets_no_lock_file_from_the_console_script(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's file")
    result = run([_binary("train")] + TRAIN_FLAGS + [f"--run_dir={folder}"])
    assert result.returncode == 1, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "not a run directory" in lines[0], result.stderr
    assert sorted(os.listdir(folder)) == ["notes.txt"]
