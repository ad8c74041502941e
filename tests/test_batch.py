"""The batch runner: job lists, names, summaries, and real batches of tiny runs."""

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

from tf_supermask.tools import batch
from tf_supermask.tools.batch import Job, JobListError, Outcome

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run of a few seconds: fc at width 0.05, two steps on 200 sample images.
TINY_FLAGS = """\
--model=fc
--width=0.05
--mask=topk
--k=0.5
--init=signed_kaiming_constant
--dataset=sample
--train_size=200
--batch_size=50
--epochs=1
--steps_per_epoch=2
--verbose=0
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY_FLAGS)
    return path


def child_env(**extra):
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def read_summary(output):
    with open(os.path.join(output, "summary.csv")) as stream:
        return {row["job"]: row for row in csv.DictReader(stream)}


# Job lists.

def test_job_list_lines_names_and_defaults(tmp_path, tiny):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "beside.cfg").write_text(TINY_FLAGS)
    text = f"""
# a comment, then a blank line

{tiny} --k=0.3 --seed=1     # trailing comment
train {tiny} --model=conv8 --augment --noexport
--flagfile={tiny}
beside.cfg --seed=2
"""
    jobs = batch.parse_job_list(text, base_dir=str(tmp_path / "sub"))
    assert [job.binary for job in jobs] == ["train"] * 4
    assert [job.line for job in jobs] == [4, 5, 6, 7]
    assert jobs[0].flags == ("--k=0.3", "--seed=1")
    assert [job.name for job in jobs] == ["tiny_k0.3_seed1", "tiny_model-conv8_augment_noexport",
                                          "tiny", "beside_seed2"]
    # Not found in the current folder: looked up beside the job list.
    assert jobs[3].flagfile == "beside.cfg"
    assert jobs[3].flagfile_path == str(tmp_path / "sub" / "beside.cfg")
    command = jobs[0].command("out", extra_flags=("--data_dir=/d",), python="py")
    assert command == ["py", "-m", "tf_supermask.bin.train", f"--flagfile={tiny}", "--data_dir=/d",
                       "--k=0.3", "--seed=1", f"--run_dir={os.path.join('out', jobs[0].name)}"]


def test_job_list_problems_are_all_named_by_line(tmp_path, tiny):
    text = "\n".join([
        f"trian {tiny}",                 # 1: unknown binary
        "flags/missing.cfg --seed=0",    # 2: no such flagfile
        f"{tiny} seed=1",                # 3: not a flag
        f"{tiny} --run_dir=/elsewhere",  # 4: the runner sets it
        f"{tiny} --seed=0",              # 5: fine
        "--k=0.3",                       # 6: no flagfile
    ])
    with pytest.raises(JobListError) as error:
        batch.parse_job_list(text)
    message = str(error.value)
    assert "line 5" not in message
    assert "line 1: unknown binary 'trian'" in message
    assert "line 2: flagfile 'flags/missing.cfg' not found" in message
    assert "line 3: 'seed=1' is not a flag" in message
    assert "line 4: '--run_dir=/elsewhere': the runner sets --run_dir itself" in message
    assert "line 6: a job starts with [binary] FLAGFILE" in message
    with pytest.raises(JobListError, match="line 2 repeats line 1"):
        batch.parse_job_list(f"{tiny} --seed=0\n{tiny}   --seed=0\n")


def test_names_stay_unique_short_and_safe(tmp_path, tiny):
    jobs = batch.parse_job_list(f"{tiny} --data_dir=/a/b\n{tiny} --data_dir=/a-b\n"
                                f"{tiny} --lr_milestones={'1,' * 200}2\n")
    names = [job.name for job in jobs]
    assert len(set(names)) == 3
    assert names[0].startswith("tiny_data_dir-a-b_") and names[1].startswith("tiny_data_dir-a-b_")
    assert len(names[2]) <= batch.MAX_NAME_LENGTH
    assert all(re.fullmatch(r"[A-Za-z0-9._+-]+", name) for name in names)
    assert batch.job_name("lottery", "flags/lottery_conv2.cfg", ["--seed=3"]) == \
        "lottery_lottery_conv2_seed3"


def test_select_jobs_by_name_and_shard(tiny):
    jobs = batch.parse_job_list("\n".join(f"{tiny} --seed={seed}" for seed in range(7)))
    assert [job.name for job in batch.select_jobs(jobs, only="seed[36]")] == [
        "tiny_seed3", "tiny_seed6"]
    shards = [batch.select_jobs(jobs, shard=f"{index}/3") for index in range(3)]
    assert sorted(job.name for shard in shards for job in shard) == sorted(j.name for j in jobs)
    assert [job.name for job in shards[1]] == ["tiny_seed1", "tiny_seed4"]
    with pytest.raises(JobListError, match="i/n"):
        batch.select_jobs(jobs, shard="3/3")


def test_extra_flags_are_checked():
    assert batch.parse_extra_flags("--data_dir='/my data' --verbose=2") == (
        "--data_dir=/my data", "--verbose=2")
    with pytest.raises(JobListError, match="the runner sets --run_dir"):
        batch.parse_extra_flags("--run_dir=x")


def test_dry_run_prints_commands_and_touches_nothing(tmp_path, tiny):
    jobs = batch.parse_job_list(f"{tiny} --seed=0\n{tiny} --seed=1\n")
    output = tmp_path / "out"
    (output / "tiny_seed0").mkdir(parents=True)
    (output / "tiny_seed0" / "results.json").write_text('{"test_accuracy": 0.5}')
    stream = io.StringIO()
    report = batch.run_batch(jobs, str(output), extra_flags=("--verbose=0",), dry_run=True,
                             stream=stream)
    printed = stream.getvalue()
    assert "2 jobs, 1 finished earlier (skipped), 1 to run" in printed
    assert re.search(r"^skip tiny_seed0: ", printed, re.M)
    assert re.search(rf"^run  tiny_seed1: .* -m tf_supermask.bin.train --flagfile={tiny} "
                     rf"--verbose=0 --seed=1 --run_dir={output}/tiny_seed1$", printed, re.M)
    assert sorted(os.listdir(output)) == ["tiny_seed0"]
    assert report.outcomes["tiny_seed0"].status == "skipped"


def test_summary_has_every_job_and_means_over_seeds(tmp_path, tiny):
    jobs = batch.parse_job_list(f"{tiny} --k=0.3 --seed=0\n{tiny} --k=0.3 --seed=1\n"
                                f"{tiny} --k=0.3 --seed=2\n{tiny} --k=0.7\n")
    outcomes = {
        "tiny_k0.3_seed0": Outcome("done", 0, 12.0, {"test_accuracy": 0.6,
                                                     "weights_remaining": 0.3,
                                                     "train_seconds": 10.04}),
        "tiny_k0.3_seed1": Outcome("skipped", results={"test_accuracy": 0.8,
                                                       "weights_remaining": 0.3}),
        "tiny_k0.3_seed2": Outcome("failed", 1, 3.0),
        "tiny_k0.7": Outcome("pending"),
    }
    batch.write_summary(str(tmp_path), jobs, outcomes)
    rows = read_summary(str(tmp_path))
    assert list(rows) == [job.name for job in jobs]
    assert rows["tiny_k0.3_seed0"] == {
        "job": "tiny_k0.3_seed0", "binary": "train", "flagfile": str(tiny),
        "extra_flags": "--k=0.3 --seed=0", "status": "done", "test_accuracy": "0.6000",
        "weights_remaining": "0.3000", "train_seconds": "10.0", "wall_seconds": "12.0"}
    assert rows["tiny_k0.3_seed2"]["status"] == "failed"
    assert rows["tiny_k0.3_seed2"]["test_accuracy"] == ""
    markdown = (tmp_path / "summary.md").read_text()
    assert "1 done, 1 failed, 1 pending, 1 skipped" in markdown
    # Two finished seeds of three: mean 0.7, sample standard deviation 0.1414.
    assert f"| train | {tiny} | --k=0.3 | 2/3 | 0.7000 | 0.1414 | 0.3000 |" in markdown
    assert "--k=0.7 |" not in markdown.split("## Over seeds")[1]


# Real batches.

def test_batch_runs_in_parallel_reports_a_failure_and_skips_finished_jobs(tmp_path, tiny):
    job_list = tmp_path / "jobs.txt"
    # The failing job first, so that it ends while the others run.
    job_list.write_text(f"{tiny} --no_such_flag=1\n{tiny} --seed=0\n{tiny} --seed=1\n")
    output = tmp_path / "out"
    command = [sys.executable, "-m", "tf_supermask.bin.batch", str(job_list),
               f"--output={output}", "--parallel=2", "--extra_flags=--lr=0.05"]
    result = subprocess.run(command, capture_output=True, text=True, env=child_env(),
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    events = [re.match(r"\[\d/3\] (\w+) +([^\s:]+)", line).groups() for line in lines
              if re.match(r"\[\d/3\] ", line)]
    # Two jobs ran at once: the second started before anything finished.
    assert [kind for kind, _ in events[:2]] == ["start", "start"]
    assert sorted(events) == sorted([("start", "tiny_no_such_flag1"),
                                     ("failed", "tiny_no_such_flag1"),
                                     ("start", "tiny_seed0"), ("done", "tiny_seed0"),
                                     ("start", "tiny_seed1"), ("done", "tiny_seed1")])
    failed_line = next(line for line in lines if " failed " in line)
    assert "exit code 1" in failed_line and "no_such_flag" in failed_line
    assert "1 failed" in lines[-1]

    for name in ("tiny_seed0", "tiny_seed1"):
        results = json.loads((output / name / "results.json").read_text())
        assert results["weights_remaining"] == pytest.approx(0.5, abs=1e-3)
        flags_txt = (output / name / "flags.txt").read_text()
        assert "--lr=0.05" in flags_txt and f"--seed={name[-1]}" in flags_txt
        assert "# runner: exit code 0" in (output / f"{name}.log").read_text()
    assert not (output / "tiny_no_such_flag1" / "results.json").exists()
    assert "no_such_flag" in (output / "tiny_no_such_flag1.log").read_text()
    assert not (output / "tiny_seed0.done").exists()
    rows = read_summary(str(output))
    assert {name: row["status"] for name, row in rows.items()} == {
        "tiny_no_such_flag1": "failed", "tiny_seed0": "done", "tiny_seed1": "done"}
    first_accuracy = rows["tiny_seed0"]["test_accuracy"]
    assert 0.0 <= float(first_accuracy) <= 1.0
    assert "## Over seeds" in (output / "summary.md").read_text()

    # Again, without the failing job: the finished jobs are skipped, nothing runs.
    rerun = subprocess.run(command + ["--only=seed"], capture_output=True, text=True,
                           env=child_env(), timeout=120, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert "2 jobs, 2 finished earlier (skipped), 0 to run" in rerun.stdout
    assert "start" not in rerun.stdout
    rows = read_summary(str(output))
    assert {name: row["status"] for name, row in rows.items()} == {
        "tiny_seed0": "skipped", "tiny_seed1": "skipped"}
    assert rows["tiny_seed0"]["test_accuracy"] == first_accuracy


def test_a_job_that_succeeds_without_results_is_marked_and_skipped_later(tmp_path, tiny):
    # Stands in for a non-chief worker of a multi-worker run, which exits 0 and
    # leaves no results.json: an "interpreter" that accepts anything and exits 0.
    python = tmp_path / "succeed"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    jobs = batch.parse_job_list(f"{tiny} --seed=0\n")
    output = tmp_path / "out"
    report = batch.run_batch(jobs, str(output), python=str(python), stream=io.StringIO())
    assert report.exit_code == batch.EXIT_OK
    assert (output / "tiny_seed0.done").exists()
    assert "# runner: exit code 0" in (output / "tiny_seed0.log").read_text()
    stream = io.StringIO()
    report = batch.run_batch(jobs, str(output), python="/nonexistent/python", stream=stream)
    assert report.outcomes["tiny_seed0"].status == "skipped"
    assert "1 finished earlier (skipped), 0 to run" in stream.getvalue()


def test_time_limit_stops_running_jobs_for_a_later_batch(tmp_path, tiny):
    jobs = batch.parse_job_list(f"{tiny} --seed=0\n{tiny} --seed=1\n")
    output = tmp_path / "out"
    with open(tmp_path / "progress.txt", "w") as stream:
        report = batch.run_batch(jobs, str(output), time_limit=1, env=child_env(),
                                 stream=stream)
    assert report.outcomes["tiny_seed0"].status == "stopped"
    assert report.outcomes["tiny_seed1"].status == "not run"
    assert report.exit_code == batch.EXIT_INCOMPLETE
    assert not (output / "tiny_seed0" / "results.json").exists()
    assert not (output / "tiny_seed1.log").exists()
    assert "time limit" in (tmp_path / "progress.txt").read_text()
    assert {row["status"] for row in read_summary(str(output)).values()} == {"stopped", "not run"}


def test_a_job_runs_under_jax(tmp_path, tiny):
    pytest.importorskip("jax")
    jobs = batch.parse_job_list(f"{tiny}\n")
    output = tmp_path / "out"
    with open(tmp_path / "progress.txt", "w") as stream:
        report = batch.run_batch(jobs, str(output),
                                 env=child_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"),
                                 stream=stream)
    log = (output / "tiny.log").read_text()
    assert report.exit_code == batch.EXIT_OK, log[-3000:]
    assert "KERAS_BACKEND=jax" in (tmp_path / "progress.txt").read_text()
    results = json.loads((output / "tiny" / "results.json").read_text())
    assert results["backend"] == "jax"
    assert read_summary(str(output))["tiny"]["status"] == "done"
