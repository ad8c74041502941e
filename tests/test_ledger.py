"""The GPU results ledger (scripts/ledger.py, scripts/ledger_tables.py, scripts/ledger_window.sh):
the job list, skipping committed runs, the window's time limit and archive, import, tables."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    path = os.path.join(REPO, "scripts", f"{name}.py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


ledger = _load("ledger")
ledger_tables = _load("ledger_tables")

# The batch tests' flagfile of a few-second fc run (a fixture).
from test_batch import tiny  # noqa: E402,F401


def flags_text(job):
    """The flags.txt the job's binary would write (what a finished run holds)."""
    from tf_supermask.config import to_flagfile

    return to_flagfile(ledger.job_config(job))


def commit_run(runs_dir, ledger_job, results, fidelity=False, flags=None):
    """A finished run as a window commits it."""
    run_dir = os.path.join(runs_dir, ledger_job.name)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "flags.txt"), "w") as stream:
        stream.write(flags_text(ledger_job.job) if flags is None else flags)
    with open(os.path.join(run_dir, "results.json"), "w") as stream:
        json.dump(results, stream)
    with open(os.path.join(run_dir, ledger.LEDGER_RECORD), "w") as stream:
        json.dump({"fidelity": fidelity, "window": "w0"}, stream)
    return run_dir


# The job list.

@pytest.fixture(scope="module")
def shipped():
    return ledger.read_ledger(os.path.join(REPO, ledger.DEFAULT_JOBS))


def test_shipped_job_list_is_current_and_every_job_parses_as_its_binary(shipped):
    with open(os.path.join(REPO, ledger.DEFAULT_JOBS)) as stream:
        assert stream.read() == ledger_tables.job_list_text(), (
            "jobs/ledger.txt is out of date: python scripts/ledger_tables.py --write_jobs")
    for ledger_job in shipped:
        assert os.path.isfile(ledger_job.job.flagfile_path)
        config = ledger.job_config(ledger_job.job)  # raises on flags the binary refuses
        assert type(config) is ledger.config_class(ledger_job.job.binary)
    assert {job.job.binary for job in shipped} == {"train", "finetune", "prune_init"}
    names = [job.name for job in shipped]
    assert len(set(names)) == len(names)


def test_shipped_job_list_order_and_fidelity_marks(shipped):
    lines = [job.line_text for job in shipped]
    first = {name: next(i for i, line in enumerate(lines) if name in line)
             for name in ("dense_conv2", "patches_conv2", "finetune_compare", "prune_init_conv4")}
    assert first["dense_conv2"] < first["patches_conv2"] < first["finetune_compare"] \
        < first["prune_init_conv4"]
    # Within table a, every seed-0 job comes before any seed-1 job.
    table_a = [line for line in lines if "dense_" in line or "zhou_" in line
               or "edgepopup_" in line]
    seeds = [int(line.rsplit("--seed=", 1)[1]) for line in table_a]
    assert seeds == sorted(seeds) and len(table_a) == 3 * 18
    requires = {job.line_text: job.requires for job in shipped}
    assert requires["flags/dense_conv4.cfg --seed=1"] == ""
    assert requires["flags/zhou_supermask_conv6.cfg --seed=2"] == ""
    assert requires["flags/edgepopup_conv4.cfg --k=0.5 --seed=0"] == ledger.FIDELITY
    assert all(job.requires == ledger.FIDELITY for job in shipped
               if "patches_" in job.line_text or "finetune" in job.line_text)
    assert all(job.requires == "" for job in shipped if "prune_init" in job.line_text)
    # Table b's signed-constant baseline at k = 0.5 is table a's edge-popup run, not a copy.
    assert not any("signed_kaiming_constant --k=0.5" in line for line in lines)
    assert sum("signed_kaiming_constant --k=0.1" in line for line in lines) == 3 * 4


def test_directives_mark_the_jobs_after_them(tiny):
    text = (f"{tiny} --seed=0\n#@ requires: fidelity\n{tiny} --seed=1\n"
            f"#@ requires: none\n{tiny} --seed=2\n")
    jobs = ledger.parse_ledger(text)
    assert [job.requires for job in jobs] == ["", ledger.FIDELITY, ""]
    with pytest.raises(ValueError, match="takes none or fidelity"):
        ledger.parse_ledger(f"#@ requires: gpu\n{tiny}\n")


# Skipping what is committed.

def test_plan_skips_current_runs_and_reruns_stale_ones(tmp_path, tiny):
    text = "\n".join([f"{tiny} --seed={seed}" for seed in range(4)]
                     + ["#@ requires: fidelity", f"{tiny} --seed=4", f"{tiny} --seed=5"])
    jobs = ledger.parse_ledger(text)
    runs = tmp_path / "runs"
    results = {"test_accuracy": 0.5, "weights_remaining": 0.5}
    commit_run(runs, jobs[0], results)                                 # current
    stale = flags_text(jobs[1].job).replace("--epochs=1\n", "--epochs=2\n")
    commit_run(runs, jobs[1], results, flags=stale)                    # other flags: stale
    # A field newer than the run counts at its default (absent line, default value): current.
    older = "".join(line + "\n" for line in flags_text(jobs[2].job).splitlines()
                    if not line.startswith("--patches_mix") and not line.startswith("--lr_gamma"))
    commit_run(runs, jobs[2], results, flags=older)
    # ... but not when the job sets that field to something else: stale.
    narrowed = "".join(line + "\n" for line in flags_text(jobs[3].job).splitlines()
                       if not line.startswith("--width"))
    commit_run(runs, jobs[3], results, flags=narrowed)
    commit_run(runs, jobs[4], results, fidelity=False)                 # before the fixes
    commit_run(runs, jobs[5], results, fidelity=True)

    plan = ledger.make_plan(jobs, str(runs), fidelity=True)
    assert plan.done == ["tiny_seed0", "tiny_seed2", "tiny_seed5"]
    assert [job.name for job in plan.pending] == ["tiny_seed1", "tiny_seed3", "tiny_seed4"]
    assert "epochs" in plan.stale["tiny_seed1"]
    assert "width" in plan.stale["tiny_seed3"]
    assert "fidelity" in plan.stale["tiny_seed4"]

    plan = ledger.make_plan(jobs, str(runs), fidelity=False)
    assert plan.deferred == ["tiny_seed4", "tiny_seed5"]
    assert "tiny_seed4" not in [job.name for job in plan.pending]

    # Cut twice after running (nearly) a whole window: skipped, unless a partial run exists.
    cut = {"ran_seconds": 400, "batch_seconds": 450}
    attempts = {"tiny_seed1": {"cuts": [cut, cut], "failures": []},
                "tiny_seed3": {"cuts": [cut, {"ran_seconds": 30, "batch_seconds": 450}]}}
    plan = ledger.make_plan(jobs, str(runs), True, attempts, max_cuts=2)
    assert plan.too_long == ["tiny_seed1"]
    (tmp_path / "partial" / "tiny_seed1").mkdir(parents=True)
    plan = ledger.make_plan(jobs, str(runs), True, attempts, 2, str(tmp_path / "partial"))
    assert plan.too_long == [] and plan.pending[0].name == "tiny_seed1"


def test_a_job_with_flags_its_binary_refuses_is_reported_not_run(tmp_path, tiny):
    jobs = ledger.parse_ledger(f"{tiny} --k=1.5 --seed=0\n{tiny} --seed=1\n")
    plan = ledger.make_plan(jobs, str(tmp_path / "runs"), fidelity=True)
    assert list(plan.invalid) == ["tiny_k1.5_seed0"]
    assert [job.name for job in plan.pending] == ["tiny_seed1"]


# A window: time limit, archive, partial runs, import.

FAKE_PYTHON = """\
#!/bin/sh
# Stands in for `python -m tf_supermask.bin.train ...`: seed 1 is a slow job.
for arg in "$@"; do
  case "$arg" in
    --run_dir=*) dir=${arg#--run_dir=} ;;
    --seed=*) seed=${arg#--seed=} ;;
  esac
done
mkdir -p "$dir/checkpoints" "$dir/tensorboard"
cp "$FAKE_FLAGS/$seed.txt" "$dir/flags.txt"
echo "epoch,accuracy" > "$dir/metrics.csv"
echo "0,0.25" >> "$dir/metrics.csv"
echo "events" > "$dir/tensorboard/events"
if [ "$seed" = 1 ]; then
  echo weights > "$dir/checkpoints/backup.weights.h5"
  exec sleep 600
fi
echo '{"test_accuracy": 0.75, "weights_remaining": 0.5}' > "$dir/results.json"
"""


def fake_python(tmp_path, jobs, monkeypatch):
    flags_dir = tmp_path / "fake_flags"
    flags_dir.mkdir()
    for job in jobs:
        seed = job.line_text.rsplit("--seed=", 1)[1]
        (flags_dir / f"{seed}.txt").write_text(flags_text(job.job))
    path = tmp_path / "fake_python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_FLAGS", str(flags_dir))
    return str(path)


def archive_names(path):
    with tarfile.open(path) as archive:
        return set(archive.getnames())


def read_member(path, name):
    with tarfile.open(path) as archive:
        return archive.extractfile(name).read().decode()


def test_window_stops_a_slow_job_at_its_deadline_and_still_packs(tmp_path, tiny, monkeypatch):
    jobs_path = tmp_path / "jobs.txt"
    jobs_path.write_text(f"{tiny} --seed=0\n{tiny} --seed=1\n{tiny} --seed=2\n")
    jobs = ledger.read_ledger(str(jobs_path))
    python = fake_python(tmp_path, jobs, monkeypatch)
    runs, partial, out = tmp_path / "ledger" / "runs", tmp_path / "partial", tmp_path / "OUT"
    commit_run(runs, jobs[2], {"test_accuracy": 0.5, "weights_remaining": 0.5})
    stale = flags_text(jobs[0].job).replace("--epochs=1\n", "--epochs=2\n")
    commit_run(runs, jobs[0], {"test_accuracy": 0.1, "weights_remaining": 0.5}, flags=stale)
    deadline = time.time() + 12
    ledger.run_window(str(jobs_path), str(out), str(tmp_path / "work"), str(runs), str(partial),
                      str(tmp_path / "ledger" / "attempts.json"), deadline=deadline,
                      parallel=2, pack_seconds=2, min_batch_seconds=1, python=python,
                      stream=open(tmp_path / "progress.txt", "w"))
    assert time.time() < deadline + 1  # the slow job was stopped and the window packed in time
    archive = out / ledger.ARCHIVE
    names = archive_names(archive)
    assert {"runs/tiny_seed0/results.json", "runs/tiny_seed0/flags.txt",
            "runs/tiny_seed0/metrics.csv", "runs/tiny_seed0/ledger.json",
            "window.json", "summary.csv", "logs/tiny_seed1.log"} <= names
    assert not any(name.startswith(("runs/tiny_seed1", "runs/tiny_seed2")) for name in names)
    window = json.loads(read_member(archive, "window.json"))
    assert window["outcomes"]["tiny_seed0"]["status"] == "done"
    assert window["outcomes"]["tiny_seed1"]["status"] == "stopped"
    assert window["outcomes"]["tiny_seed1"]["partial"] is True
    assert "tiny_seed2" not in window["outcomes"]  # committed and current: skipped
    assert window["plan"]["done"] == 1 and list(window["plan"]["stale"]) == ["tiny_seed0"]
    record = json.loads(read_member(archive, "runs/tiny_seed0/ledger.json"))
    assert record["job"].endswith("tiny.cfg --seed=0") and record["requires"] == "none"
    # The cut run travels without its TensorBoard events, with its checkpoint.
    partial_names = archive_names(out / ledger.PARTIAL_ARCHIVE)
    assert "tiny_seed1/checkpoints/backup.weights.h5" in partial_names
    assert not any("tensorboard" in name for name in partial_names)
    assert "time limit" in (tmp_path / "progress.txt").read_text()

    # Import: runs join the ledger, the cut is recorded, the partial run is kept for later.
    (out / ledger.LOG).write_text("the window's log\n")
    imported = ledger.import_window(str(out), str(tmp_path / "ledger"), str(partial),
                                    str(jobs_path), tables=False, stream=open(os.devnull, "w"))
    assert imported["added"] == ["tiny_seed0"] and imported["partial"] == ["tiny_seed1"]
    assert imported["replaced"] == ["tiny_seed0"]  # the stale run gave way to the new one
    assert json.loads((runs / "tiny_seed0" / "results.json").read_text())["test_accuracy"] == 0.75
    assert (runs / "tiny_seed0" / "ledger.json").exists()
    assert (partial / "tiny_seed1" / "checkpoints" / "backup.weights.h5").exists()
    attempts = json.loads((tmp_path / "ledger" / "attempts.json").read_text())
    assert list(attempts) == ["tiny_seed1"] and len(attempts["tiny_seed1"]["cuts"]) == 1
    windows = tmp_path / "ledger" / "windows"
    assert (windows / f"{window['id']}.log").read_text() == "the window's log\n"

    # The next window skips both finished runs and resumes the cut one from its partial copy.
    plan = ledger.make_plan(jobs, str(runs), True, attempts, 2, str(partial))
    assert plan.done == ["tiny_seed0", "tiny_seed2"]
    assert [job.name for job in plan.pending] == ["tiny_seed1"]
    output = tmp_path / "work2"
    assert ledger.restore_partial(plan.pending[0], plan.configs["tiny_seed1"], str(partial),
                                  str(output))
    assert (output / "tiny_seed1" / "checkpoints" / "backup.weights.h5").exists()


def test_jobs_that_ignore_sigterm_are_all_killed_within_one_grace_period(tmp_path, tiny):
    """A window's deadline must hold with many jobs: they are stopped together, not in turn."""
    from tf_supermask.tools import batch

    stubborn = tmp_path / "stubborn_python"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\nexec sleep 600\n")
    stubborn.chmod(0o755)
    jobs = batch.parse_job_list(f"{tiny} --seed=0\n{tiny} --seed=1\n{tiny} --seed=2\n")
    started = time.monotonic()
    report = batch.run_batch(jobs, str(tmp_path / "out"), parallel=3, time_limit=1,
                             python=str(stubborn), stream=open(os.devnull, "w"))
    elapsed = time.monotonic() - started
    assert [outcome.status for outcome in report.outcomes.values()] == ["stopped"] * 3
    assert 10 <= elapsed < 1 + 10 + 5  # one grace period of 10 s, then SIGKILL to all three


def test_window_with_too_little_time_runs_nothing_but_packs(tmp_path, tiny):
    jobs_path = tmp_path / "jobs.txt"
    jobs_path.write_text(f"{tiny} --seed=0\n")
    out = tmp_path / "OUT"
    window = ledger.run_window(str(jobs_path), str(out), str(tmp_path / "work"),
                               str(tmp_path / "runs"), str(tmp_path / "partial"),
                               str(tmp_path / "attempts.json"), deadline=time.time() + 5,
                               pack_seconds=2, min_batch_seconds=60, python="/nonexistent",
                               stream=open(os.devnull, "w"))
    assert window["outcomes"] == {"tiny_seed0": {"status": "not run", "wall_seconds": None,
                                                 "epochs_done": 0}}
    assert "window.json" in archive_names(out / ledger.ARCHIVE)


# Tables.

def _job(line):
    return ledger.parse_ledger(line + "\n")[0]


def test_tables_compute_mean_min_max_and_mark_missing_and_stale(tmp_path):
    ledger_dir = tmp_path / "ledger"
    runs = ledger_dir / "runs"
    accuracies = [0.68, 0.70, 0.69]
    for seed, accuracy in enumerate(accuracies):
        commit_run(runs, _job(f"flags/dense_conv2.cfg --seed={seed}"),
                   {"test_accuracy": accuracy, "weights_remaining": 1.0})
    commit_run(runs, _job("flags/zhou_supermask_conv2.cfg --seed=1"),
               {"test_accuracy": 0.6, "weights_remaining": 0.5})
    stale_job = _job("flags/dense_conv4.cfg --seed=0")
    commit_run(runs, stale_job, {"test_accuracy": 0.9, "weights_remaining": 1.0},
               flags=flags_text(stale_job.job).replace("--epochs=40", "--epochs=3"))
    # An edge-popup run from before the fidelity fixes does not count.
    commit_run(runs, _job("flags/edgepopup_conv2.cfg --k=0.5 --seed=0"),
               {"test_accuracy": 0.8, "weights_remaining": 0.5}, fidelity=False)
    commit_run(runs, _job("flags/edgepopup_conv2.cfg --k=0.3 --seed=0"),
               {"test_accuracy": 0.74, "weights_remaining": 0.3}, fidelity=True)

    written = ledger_tables.write_tables(str(ledger_dir), [ledger_tables.table_a()])
    assert {os.path.basename(path) for path in written} == {
        "a_cifar10_reproductions.md", "a_cifar10_reproductions.csv",
        "a_cifar10_reproductions.png", "README.md"}
    text = (ledger_dir / "a_cifar10_reproductions.md").read_text()
    values = 100 * np.array(accuracies)
    row = next(line for line in text.splitlines() if line.startswith("| dense"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == (f"{values.mean():.2f} [{values.min():.2f}, {values.max():.2f}] n=3/3 "
                        "· pub. 69.2")
    assert cells[2] == "missing · pub. 75.4"     # only a stale run
    assert cells[4] == "-"                       # no dense conv8 in the table
    zhou = next(line for line in text.splitlines() if line.startswith("| learned supermask"))
    assert "60.00 [60.00, 60.00] n=1/3 · pub. 66.0" in zhou
    assert "learned supermask (Zhou et al.: signed constant, rescaling), conv2: 60.00 " \
           "against 66.0 (-6.00 points" in text
    assert "dense_conv2_seed0" not in text.split("### Stale runs")[1]
    stale_part = text.split("### Stale runs")[1]
    assert "`dense_conv4_seed0`: flags differ: epochs" in stale_part
    assert "`edgepopup_conv2_k0.5_seed0`: run before the fidelity fixes" in stale_part
    best = next(line for line in text.splitlines() if line.startswith("| edge-popup, best k"))
    assert "74.00 (k=0.3) · pub. ~77.5" in best
    with open(ledger_dir / "a_cifar10_reproductions.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted((row["column"], row["seed"], row["test_accuracy"]) for row in rows
                  if row["row"].startswith("dense")) == [
        ("conv2", "0", "0.6800"), ("conv2", "1", "0.7000"), ("conv2", "2", "0.6900")]
    assert len(rows) == 5
    assert (ledger_dir / "a_cifar10_reproductions.png").stat().st_size > 1000
    assert "| [a. CIFAR-10 reproductions](a_cifar10_reproductions.md) | 1 | 3 | 18 | 5 |" in \
        (ledger_dir / "README.md").read_text()


def test_comparison_cells_read_each_arm_and_the_dense_run(tmp_path):
    table = ledger_tables.table_c()
    ledger_dir = tmp_path / "ledger"
    job = next(entry.job for entry in ledger_tables.resolve([table])[0][0][1]
               if entry.seed == 0 and entry.cell.column == "50% pruned")
    arms = [{"arm": arm, "sparsity": 0.5, "test_accuracy": value, "weights_remaining": 0.5}
            for arm, value in (("lottery", 0.81), ("rewind", 0.82), ("finetune", 0.83))]
    commit_run(ledger_dir / "runs", job, {"arms": arms, "dense_test_accuracy": 0.9,
                                          "weight_correlation": {}}, fidelity=True)
    ledger_tables.write_tables(str(ledger_dir), [table])
    lines = (ledger_dir / "c_compare_resnet20.md").read_text().splitlines()

    def cell(prefix):
        row = next(line for line in lines if line.startswith(f"| {prefix}"))
        return [part.strip() for part in row.strip("|").split("|")][1]

    lr = job.line_text.split("--lr=")[1].split()[0]
    assert cell(f"lr {lr}: dense run").startswith("90.00 [90.00, 90.00] n=1/3")
    assert cell(f"lr {lr}: lottery ticket").startswith("81.00")
    assert cell(f"lr {lr}: late rewinding").startswith("82.00")
    assert cell(f"lr {lr}: fine-tuning").startswith("83.00")


# The one command, end to end on CPU.

@pytest.mark.slow
def test_ledger_window_script_end_to_end_under_jax(tmp_path, tiny):
    """The one command of a GPU window, on CPU: a real tiny run, packed into $OUT."""
    pytest.importorskip("jax")
    jobs_path = tmp_path / "jobs.txt"
    jobs_path.write_text(f"#@ requires: none\n{tiny} --seed=0\n")
    out = tmp_path / "OUT"
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env.update(OUT=str(out), LEDGER_JOBS=str(jobs_path), LEDGER_RUNS=str(tmp_path / "runs"),
               LEDGER_PARTIAL=str(tmp_path / "partial"), LEDGER_WORK=str(tmp_path / "work"),
               LEDGER_WINDOW_SECONDS="400", LEDGER_PACK_SECONDS="30",
               LEDGER_MIN_BATCH_SECONDS="20", LEDGER_PARALLEL="1", KERAS_BACKEND="jax",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHON=sys.executable, DATA_DIR=str(tmp_path / "data"),
               SITE=str(tmp_path / "site"))
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "ledger_window.sh")],
                            env=env, cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=460)
    log = (out / ledger.LOG).read_text()
    assert result.returncode == 0, log[-3000:]
    assert sorted(os.listdir(out)) == [ledger.LOG, ledger.ARCHIVE]
    archive = out / ledger.ARCHIVE
    names = archive_names(archive)
    assert {"runs/tiny_seed0/results.json", "runs/tiny_seed0/flags.txt",
            "runs/tiny_seed0/metrics.csv", "runs/tiny_seed0/ledger.json", "window.json",
            "summary.md", "summary.csv"} == names, log[-3000:]
    window = json.loads(read_member(archive, "window.json"))
    assert window["backend"] == "jax"
    assert window["outcomes"]["tiny_seed0"]["status"] == "done"
    results = json.loads(read_member(archive, "runs/tiny_seed0/results.json"))
    assert results["backend"] == "jax" and 0.0 <= results["test_accuracy"] <= 1.0
    assert "--seed=0" in read_member(archive, "runs/tiny_seed0/flags.txt")
    assert "python ok: keras" in log and "packed" in log and "exit status 0" in log
