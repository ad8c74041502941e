"""Bad flags, damaged data files and unusable run directories: refused before anything is
written, with a one-line message and no traceback."""

import io
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_supermask.data import load_dataset
from tf_supermask.training import RunDirError, TrainConfig
from tf_supermask.training import run_dir as run_dir_lib

TRAIN = os.path.join(os.path.dirname(sys.executable), "tf-supermask-train")


@pytest.mark.parametrize("field, value, message", [
    ("width", 0.0, "--width must be positive"),
    ("width", -1.0, "--width must be positive"),
    ("steps_per_epoch", -1, "--steps_per_epoch must be >= 0"),
    ("momentum", -1.0, r"--momentum must be in \[0, 1\)"),
    ("momentum", 1.0, r"--momentum must be in \[0, 1\)"),
    ("weight_decay", -1.0, "--weight_decay must be >= 0"),
    ("lr", math.inf, "--lr must be a finite number"),
    ("lr", math.nan, "--lr must be a finite number"),
    ("lr_gamma", math.nan, "--lr_gamma must be a finite number"),
    ("k", math.nan, "k"),
    ("data_workers", 0, "--data_workers must be at least 1"),
])
def test_config_refuses_out_of_range_and_non_finite_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_every_float_field_must_be_finite():
    import dataclasses

    for field in dataclasses.fields(TrainConfig):
        if isinstance(field.default, float):
            with pytest.raises(ValueError, match=f"--{field.name}"):
                TrainConfig(**{field.name: math.inf})


def _valid_arrays():
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (8, 4, 4), dtype=np.uint8),
            "y_train": np.arange(8) % 2,
            "x_test": rng.integers(0, 256, (4, 4, 4), dtype=np.uint8),
            "y_test": np.arange(4) % 2}


def _npz_bytes(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _bad_files():
    good = _npz_bytes(_valid_arrays())
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    fractional = dict(_valid_arrays(), y_train=np.linspace(0, 1, 8))
    wrong_keys = {"images": np.zeros((2, 4, 4), np.uint8)}
    return {
        "empty": (b"", "the file is empty"),
        "random bytes": (np.random.default_rng(1).bytes(300), "not a zip archive"),
        "truncated": (good[:len(good) // 2], "truncated or damaged"),
        "renamed npy": (npy.getvalue(), "single .npy array"),
        "wrong keys": (_npz_bytes(wrong_keys), "lacks the keys"),
        "fractional labels": (_npz_bytes(fractional), "labels must be whole numbers"),
    }


@pytest.mark.parametrize("case", sorted(_bad_files()))
def test_damaged_or_wrong_npz_gives_one_line_naming_the_file(tmp_path, case):
    content, message = _bad_files()[case]
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(str(path))
    text = str(error.value)
    assert str(path) in text and "\n" not in text


def test_whole_float_labels_are_accepted(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(_npz_bytes(dict(_valid_arrays(), y_train=(np.arange(8) % 2).astype(float))))
    assert load_dataset(str(path)).y_train.dtype == np.int64


def test_replaced_run_is_kept_until_the_new_one_has_started(tmp_path):
    from tf_supermask.training import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / run_dir_lib.FLAGS_FILE).write_text("--model=fc\n")
    (run_dir / run_dir_lib.RESULTS_FILE).write_text("{}")

    def failing_prepare(model, batches, dataset):
        raise ValueError("the new run failed while starting")

    config = TrainConfig(model="fc", width=0.1, train_size=64, batch_size=32, epochs=1,
                         verbose=0, run_dir=str(run_dir), overwrite=True)
    with pytest.raises(ValueError, match="failed while starting"):
        train(config, prepare=failing_prepare)
    assert (run_dir / run_dir_lib.RESULTS_FILE).read_text() == "{}"
    assert (run_dir / run_dir_lib.FLAGS_FILE).read_text() == "--model=fc\n"


def test_diverged_run_raises_and_writes_no_results(tmp_path):
    from tf_supermask.training import train
    from tf_supermask.training.callbacks import DivergedError

    config = TrainConfig(model="fc", width=0.1, train_size=128, batch_size=32, epochs=2,
                         lr=1e30, momentum=0.0, verbose=0, run_dir=str(tmp_path / "run"))
    with pytest.raises(DivergedError, match="loss became"):
        train(config)
    assert not (tmp_path / "run" / run_dir_lib.RESULTS_FILE).exists()


def test_second_writer_is_refused_naming_the_holder(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    assert run_dir_lib.acquire(run_dir)
    try:
        # Another process's view: it does not share this process's table of held locks,
        # only the OS lock.
        monkeypatch.setattr(run_dir_lib, "_HELD", {})
        with pytest.raises(run_dir_lib.RunDirBusy, match=f"in use by another run \\(pid "
                                                         f"{os.getpid()} on "):
            run_dir_lib.check(run_dir, "--model=fc\n")
        monkeypatch.undo()
    finally:
        run_dir_lib.release(run_dir)
    assert run_dir_lib.acquire(run_dir)
    run_dir_lib.release(run_dir)


def test_lock_is_released_when_its_process_is_killed(tmp_path):
    run_dir = str(tmp_path / "run")
    code = ("import os, signal, sys\n"
            "from tf_supermask.training import run_dir as r\n"
            "r.acquire(sys.argv[1])\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    process = subprocess.run([sys.executable, "-c", code, run_dir], capture_output=True)
    assert process.returncode == -9
    assert "pid" in open(os.path.join(run_dir, run_dir_lib.LOCK_FILE)).read()
    assert run_dir_lib.acquire(run_dir)
    run_dir_lib.release(run_dir)


def test_read_only_run_folder_is_a_run_dir_error(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: refuse the write by hand

        def refuse(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(run_dir_lib, "open", refuse, raising=False)
    with pytest.raises(RunDirError, match="cannot write in .*Permission denied"):
        run_dir_lib.check(str(run_dir), "--model=fc\n")
    monkeypatch.undo()
    # A finished run in a folder that cannot be written still gets the useful message.
    run_dir.chmod(0o755)
    (run_dir / run_dir_lib.FLAGS_FILE).write_text("--model=fc\n")
    (run_dir / run_dir_lib.RESULTS_FILE).write_text("{}")
    if os.geteuid() == 0:
        monkeypatch.setattr(run_dir_lib, "open", refuse, raising=False)
    else:
        run_dir.chmod(0o555)
    with pytest.raises(RunDirError, match="holds a finished run"):
        run_dir_lib.check(str(run_dir), "--model=fc\n")


def test_files_are_created_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "results.json"
        run_dir_lib.write_json(str(path), {"a": 1})
        assert (path.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]
    assert not leftovers


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with run_dir_lib.atomic_file(str(path)) as temp_path:
            open(temp_path, "w").write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]


def test_require_run_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_dir_lib.require_run(str(tmp_path / "missing"), "results.json")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        run_dir_lib.require_run(str(tmp_path), "results.json")
    (tmp_path / "flags.txt").write_text("--model=fc\n")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        run_dir_lib.require_run(str(tmp_path), "results.json")


def _binary(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([TRAIN] + args, capture_output=True, text=True, env=env, timeout=300,
                          **kwargs)


@pytest.mark.slow
def test_binary_refuses_bad_flags_and_data_in_one_line_before_writing(tmp_path):
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"not an archive at all")
    for args, message in [(["--width=0"], "--width must be positive"),
                          (["--lr=nan"], "--lr must be a finite number"),
                          ([f"--dataset={bad_npz}"], "not a zip archive")]:
        run_dir = tmp_path / "run"
        process = _binary(args + [f"--run_dir={run_dir}", "--verbose=0"])
        assert process.returncode != 0
        assert message in process.stderr
        assert "Traceback" not in process.stderr
        assert not run_dir.exists()


# The batch runner.

def test_batch_job_names_leave_out_run_control_flags():
    from tf_supermask.tools import batch

    assert (batch.job_name("train", "flags/a.cfg", ["--seed=1", "--verbose=2", "--export"])
            == batch.job_name("train", "flags/a.cfg", ["--seed=1"]))


def test_batch_refuses_bad_regex_a_file_as_output_and_a_users_summary(tmp_path):
    from tf_supermask.tools import batch

    job = batch.Job(name="a", binary="train", flagfile="a.cfg", flagfile_path="a.cfg")
    with pytest.raises(batch.JobListError, match="not a valid regular expression"):
        batch.select_jobs([job], only="[")
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(batch.JobListError, match="is a file, not a folder"):
        batch.run_batch([job], str(a_file), stream=io.StringIO())
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "summary.md").write_text("my notes")
    with pytest.raises(batch.JobListError, match="did not write"):
        batch.run_batch([job], str(folder), stream=io.StringIO())
    assert (folder / "summary.md").read_text() == "my notes"
    assert sorted(os.listdir(folder)) == ["summary.md"]


@pytest.mark.slow
def test_batch_binary_gives_one_line_errors(tmp_path):
    job_list = tmp_path / "jobs.txt"
    job_list.write_text("flags/quickstart.cfg\n")
    a_file = tmp_path / "file"
    a_file.write_text("")
    batch_binary = os.path.join(os.path.dirname(sys.executable), "tf-supermask-batch")
    for args, message in [(["--only=[", f"--output={tmp_path / 'out'}"], "regular expression"),
                          ([f"--output={a_file}"], "is a file")]:
        process = subprocess.run([batch_binary, str(job_list)] + args, capture_output=True,
                                 text=True, timeout=120)
        assert process.returncode != 0
        assert message in process.stderr and "Traceback" not in process.stderr


def test_batch_jobs_die_with_a_killed_runner(tmp_path):
    import signal
    import time

    pid_file = tmp_path / "job.pid"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 120\n")
    fake_python.chmod(0o755)
    runner = ("import sys\n"
              "from tf_supermask.tools import batch\n"
              "job = batch.Job(name='a', binary='train', flagfile='a.cfg', flagfile_path='a.cfg')\n"
              "batch.run_batch([job], sys.argv[1], python=sys.argv[2])\n")
    process = subprocess.Popen([sys.executable, "-c", runner, str(tmp_path / "out"),
                                str(fake_python)], stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    job_pid = int(pid_file.read_text())
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(job_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(job_pid, signal.SIGKILL)
        pytest.fail("the job outlived its runner")


def test_compact_file_with_two_mask_bits_swapped_fails_to_load(tmp_path):
    from tf_supermask.export.compact import CompactFormatError, load_compact, save_compact
    from tf_supermask.models import MaskOptions, build_model

    options = MaskOptions(mask="topk", k=0.4, init="signed_kaiming_constant", width=0.1)
    model = build_model("fc", (28, 28, 1), 10, options)
    path = tmp_path / "mask.npz"
    save_compact(model, path, options)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    bits = np.unpackbits(arrays["mask_0"])
    kept, dropped = np.flatnonzero(bits)[0], np.flatnonzero(bits == 0)[0]
    bits[kept], bits[dropped] = 0, 1  # same count kept, another mask
    arrays["mask_0"] = np.packbits(bits)
    np.savez_compressed(path, **arrays)
    with pytest.raises(CompactFormatError, match="do not match the file's checksum"):
        load_compact(path)
