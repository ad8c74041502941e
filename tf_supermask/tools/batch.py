"""Batches of runs: a list of flagfiles run as subprocesses, every run directory in one folder.

A job list has one job per line::

    # comments start with '#'
    flags/edgepopup_conv4.cfg --k=0.3 --seed=1
    lottery flags/lottery_conv2.cfg --seed=0

that is ``[BINARY] FLAGFILE [--flag=value ...]``, where BINARY is one of
``BINARIES`` (default ``train``; it runs as ``python -m
tf_supermask.bin.BINARY``) and FLAGFILE is a path relative to the current
folder (or, failing that, to the job list's folder). Each job gets a readable
name made from the flagfile's stem and its extra flags
(``edgepopup_conv4_k0.3_seed1``) and runs with ``--run_dir=OUTPUT/<name>``,
its output going to ``OUTPUT/<name>.log``.

A job whose run directory holds ``results.json`` is skipped, so a batch that
was cut short resumes when run again (a run that was killed mid-way resumes
from its last finished epoch, since the binaries resume their run
directories). ``OUTPUT/summary.csv`` and ``OUTPUT/summary.md`` are rewritten
whenever a job finishes. One runner uses an output folder at a time: a second one
started on the same folder says which runner holds it and stops, changing nothing.

The runner only starts processes and reads their results: it imports neither
Keras nor TensorFlow, and the jobs inherit its environment, so
``KERAS_BACKEND`` chooses their backend.

On a multi-worker cluster (``--strategy=multi_worker``, see
tf_supermask/training/distribute.py) every host runs the runner on the same
list with the same flags, one job at a time, its own ``TF_CONFIG`` in the
environment and ``--strategy=multi_worker`` among the extra flags; the jobs
then start in the same order everywhere. Only the chief writes results.json;
on the other hosts the runner marks a job that exited 0 with
``OUTPUT/<name>.done``, so a rerun skips the same jobs on every host (as long
as each host keeps its output folder).
"""

import collections
import contextlib
import csv
import dataclasses
import datetime
import functools
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from tf_supermask.choices import RESULTS_FILE, RUN_CONTROL_FIELDS
from tf_supermask.files import write_atomic

BINARIES = ("train", "lottery", "prune_init", "finetune")
DEFAULT_BINARY = "train"
# Written by the runner for a job that exited 0 without leaving results.json in
# its run directory (a non-chief task of a multi-worker run writes none), so that
# a rerun skips it like the others.
DONE_SUFFIX = ".done"
SUMMARY_FIELDS = ("job", "binary", "flagfile", "extra_flags", "status", "test_accuracy",
                  "weights_remaining", "train_seconds", "wall_seconds")
RESERVED_FLAGS = ("run_dir", "flagfile")
# Flags that change how a job runs, not what it computes (RUN_CONTROL_FIELDS less run_dir):
# left out of job names, so changing them does not rerun finished jobs.
RUN_CONTROL_FLAGS = tuple(name for name in RUN_CONTROL_FIELDS if name != "run_dir")
# Written into an output folder the runner uses: its summary files may be rewritten.
MARKER_FILE = ".tf-supermask-batch"
# Held (flock) by the runner using an output folder: a second runner is refused.
LOCK_FILE = ".tf-supermask-batch.lock"
MAX_NAME_LENGTH = 120

# Exit codes of run_batch's report.
EXIT_OK, EXIT_FAILED, EXIT_INCOMPLETE = 0, 1, 2


class JobListError(ValueError):
    """A job list, or extra flags, that cannot be run as written."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of a binary: a flagfile plus flags, with its name in the output folder.

    Attributes:
      name: the run directory's name under the output folder (unique in a batch).
      binary: module name under tf_supermask.bin (train, lottery, ...).
      flagfile: the flagfile as written in the job list.
      flagfile_path: where it was found.
      flags: extra flags of this job, each "--name=value", "--name" or "--noname".
      line: line number in the job list (0 when not from a file).
    """

    name: str
    binary: str
    flagfile: str
    flagfile_path: str
    flags: Tuple[str, ...] = ()
    line: int = 0

    def command(self, output: str, extra_flags: Sequence[str] = (),
                python: Optional[str] = None) -> List[str]:
        """The job's command line: batch-wide flags first, then its own, then the run dir."""
        return [python or sys.executable, "-m", f"tf_supermask.bin.{self.binary}",
                f"--flagfile={self.flagfile_path}", *extra_flags, *self.flags,
                f"--run_dir={run_dir(output, self)}"]


def run_dir(output: str, job: Job) -> str:
    return os.path.join(output, job.name)


def log_path(output: str, job: Job) -> str:
    return os.path.join(output, job.name + ".log")


def _flag_name(flag: str) -> str:
    return flag[2:].partition("=")[0]


def check_flags(flags: Sequence[str], where: str = "") -> List[str]:
    """Problems with extra flags: each must start with '--', and none may set the run dir."""
    problems = []
    for flag in flags:
        if not flag.startswith("--") or len(flag) == 2:
            problems.append(f"{where}{flag!r} is not a flag (write --name=value)")
        elif _flag_name(flag) in RESERVED_FLAGS:
            problems.append(f"{where}{flag!r}: the runner sets --{_flag_name(flag)} itself")
    return problems


def parse_extra_flags(text: str) -> Tuple[str, ...]:
    """Batch-wide extra flags from one string, e.g. "--data_dir=/tmp/data --verbose=2"."""
    flags = tuple(shlex.split(text or ""))
    problems = check_flags(flags)
    if problems:
        raise JobListError("; ".join(problems))
    return flags


def _name_part(flag: str) -> str:
    name, has_value, value = flag[2:].partition("=")
    if not has_value:
        return name
    # k0.3, seed1, model-conv8: a dash where the value would run into the name.
    joiner = "-" if (value[:1].isalpha() or name[-1:].isdigit()) else ""
    return name + joiner + value


def job_name(binary: str, flagfile: str, flags: Sequence[str] = ()) -> str:
    """A readable folder name: [binary_]flagfile-stem[_flag-value...]."""
    stem = os.path.splitext(os.path.basename(flagfile))[0]
    parts = ([] if binary == DEFAULT_BINARY else [binary]) + [stem] + [
        _name_part(f) for f in flags if _flag_name(f) not in RUN_CONTROL_FLAGS]
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(parts)).strip(".-") or "job"
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = name[:MAX_NAME_LENGTH - 9] + "_" + digest
    return name


def _is_binary_token(tokens: Sequence[str]) -> bool:
    first = tokens[0]
    return (len(tokens) > 1 and not tokens[1].startswith("--") and not first.startswith("-")
            and "/" not in first and "." not in first)


def binary_available(binary: str) -> bool:
    try:
        return importlib.util.find_spec(f"tf_supermask.bin.{binary}") is not None
    except ImportError:
        return False


def parse_job_list(text: str, base_dir: str = ".") -> List[Job]:
    """Jobs from the text of a job list (see the module docstring).

    Args:
      text: the job list.
      base_dir: folder tried for flagfiles that are not found relative to the
        current folder (the job list's folder).

    Raises:
      JobListError: naming every problem by line: an unknown or missing
        binary, a flagfile that does not exist, something that is not a flag,
        a flag the runner sets itself, a job written twice.
    """
    problems, specs = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as error:
            problems.append(f"line {number}: {error}")
            continue
        if not tokens:
            continue
        binary = DEFAULT_BINARY
        if _is_binary_token(tokens):
            binary, tokens = tokens[0], tokens[1:]
            if binary not in BINARIES:
                problems.append(f"line {number}: unknown binary {binary!r}; choose one of "
                                f"{', '.join(BINARIES)}")
                continue
        flagfile, flags = tokens[0], tuple(tokens[1:])
        if flagfile.startswith("--flagfile="):
            flagfile = flagfile[len("--flagfile="):]
        elif flagfile.startswith("-"):
            problems.append(f"line {number}: a job starts with [binary] FLAGFILE, got {flagfile!r}")
            continue
        candidates = [flagfile] if os.path.isabs(flagfile) else [
            flagfile, os.path.join(base_dir, flagfile)]
        found = next((path for path in candidates if os.path.isfile(path)), None)
        if found is None:
            problems.append(f"line {number}: flagfile {flagfile!r} not found")
        problems.extend(check_flags(flags, f"line {number}: "))
        specs.append((number, binary, flagfile, found, flags))
    if not problems:
        for binary in sorted({spec[1] for spec in specs}):
            if not binary_available(binary):
                lines = ", ".join(str(spec[0]) for spec in specs if spec[1] == binary)
                problems.append(f"line {lines}: binary {binary!r} is not installed "
                                f"(no module tf_supermask.bin.{binary})")
    if problems:
        raise JobListError("job list problems:\n  " + "\n  ".join(problems))
    return _named_jobs(specs)


def _named_jobs(specs) -> List[Job]:
    seen, problems = {}, []
    for number, binary, _, found, flags in specs:
        key = (binary, os.path.realpath(found), flags)
        if key in seen:
            problems.append(f"line {number} repeats line {seen[key]}")
        seen.setdefault(key, number)
    if problems:
        raise JobListError("job list problems:\n  " + "\n  ".join(problems))
    names = [job_name(binary, flagfile, flags) for _, binary, flagfile, _, flags in specs]
    counts = collections.Counter(names)
    jobs = []
    for name, (number, binary, flagfile, found, flags) in zip(names, specs):
        if counts[name] > 1:  # different jobs whose flags read the same once cleaned
            digest = hashlib.sha256(repr((binary, flagfile, flags)).encode()).hexdigest()[:8]
            name = f"{name[:MAX_NAME_LENGTH - 9]}_{digest}"
        jobs.append(Job(name=name, binary=binary, flagfile=flagfile, flagfile_path=found,
                        flags=flags, line=number))
    return jobs


def read_job_list(path: str) -> List[Job]:
    """Jobs from a job list file; flagfiles are looked up in the current folder, then beside it."""
    with open(path) as stream:
        return parse_job_list(stream.read(), base_dir=os.path.dirname(os.path.abspath(path)))


def select_jobs(jobs: Sequence[Job], only: str = "", shard: str = "") -> List[Job]:
    """The jobs whose name matches the regular expression `only`, then shard "i/n" of them.

    Sharding takes every n-th job starting at i, so n hosts given shards 0/n ...
    (n-1)/n of the same list run each job once.
    """
    try:
        pattern = re.compile(only)
    except re.error as error:
        raise JobListError(f"--only={only!r} is not a valid regular expression: {error}") \
            from None
    selected = [job for job in jobs if not only or pattern.search(job.name)]
    if shard:
        match = re.fullmatch(r"(\d+)/(\d+)", shard.strip())
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise JobListError(f"shard must be i/n with 0 <= i < n, got {shard!r}")
        index, count = int(match[1]), int(match[2])
        selected = selected[index::count]
    return selected


@dataclasses.dataclass
class Outcome:
    """What became of one job in a batch."""

    status: str = "pending"  # pending, running, done, skipped, failed, stopped, not run
    returncode: Optional[int] = None
    wall_seconds: Optional[float] = None
    results: Dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class BatchReport:
    jobs: List[Job]
    outcomes: Dict[str, Outcome]

    def count(self, *statuses: str) -> int:
        return sum(outcome.status in statuses for outcome in self.outcomes.values())

    @property
    def exit_code(self) -> int:
        """1 if a job failed, else 2 if some did not finish (time limit), else 0."""
        if self.count("failed"):
            return EXIT_FAILED
        if self.count("pending", "running", "stopped", "not run"):
            return EXIT_INCOMPLETE
        return EXIT_OK


def finished(output: str, job: Job) -> bool:
    """Whether the job finished in an earlier batch (results.json, or the runner's marker)."""
    return (os.path.isfile(os.path.join(run_dir(output, job), RESULTS_FILE))
            or os.path.isfile(os.path.join(output, job.name + DONE_SUFFIX)))


def read_results(output: str, job: Job) -> Dict:
    path = os.path.join(run_dir(output, job), RESULTS_FILE)
    try:
        with open(path) as stream:
            results = json.load(stream)
    except (OSError, ValueError):
        return {}
    return results if isinstance(results, dict) else {}


def job_environment(parallel: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The jobs' environment: the runner's, plus settings that let several share a GPU.

    With more than one job at a time, JAX is told not to take 75% of the GPU
    memory up front (XLA_PYTHON_CLIENT_PREALLOCATE=false) and TensorFlow to
    grow its memory as needed (TF_FORCE_GPU_ALLOW_GROWTH=true); values the
    caller has set are kept. KERAS_BACKEND passes through unchanged.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if parallel > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    return env


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summary_rows(jobs: Sequence[Job], outcomes: Dict[str, Outcome]) -> List[Dict[str, str]]:
    rows = []
    for job in jobs:
        outcome = outcomes[job.name]
        row = {"job": job.name, "binary": job.binary, "flagfile": job.flagfile,
               "extra_flags": " ".join(job.flags), "status": outcome.status}
        for key in ("test_accuracy", "weights_remaining", "train_seconds"):
            value = _number(outcome.results.get(key))
            row[key] = "" if value is None else (f"{value:.1f}" if key == "train_seconds"
                                                 else f"{value:.4f}")
        row["wall_seconds"] = ("" if outcome.wall_seconds is None
                               else f"{outcome.wall_seconds:.1f}")
        rows.append(row)
    return rows


def _without_seed(flags: Sequence[str]) -> Tuple[str, ...]:
    return tuple(flag for flag in flags if _flag_name(flag) != "seed")


def summary_markdown(jobs: Sequence[Job], outcomes: Dict[str, Outcome], title: str = "") -> str:
    """The summary as Markdown: every job, then means over seeds where jobs differ only in --seed."""
    rows = summary_rows(jobs, outcomes)
    counts = collections.Counter(row["status"] for row in rows)
    lines = [f"# {title or 'Batch summary'}", "",
             f"Updated {datetime.datetime.now().isoformat(timespec='seconds')}: "
             + ", ".join(f"{count} {status}" for status, count in sorted(counts.items())), "",
             "| job | binary | flagfile | extra flags | status | test accuracy | "
             "weights remaining | train s | wall s |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append("| " + " | ".join(row[field].replace("|", "\\|") or "-"
                                         for field in SUMMARY_FIELDS) + " |")
    groups = collections.OrderedDict()
    for job in jobs:
        if any(_flag_name(flag) == "seed" for flag in job.flags):
            groups.setdefault((job.binary, job.flagfile, _without_seed(job.flags)), []).append(job)
    table = []
    for (binary, flagfile, flags), members in groups.items():
        accuracies = [_number(outcomes[job.name].results.get("test_accuracy")) for job in members]
        accuracies = [value for value in accuracies if value is not None]
        if not accuracies:
            continue
        mean = sum(accuracies) / len(accuracies)
        spread = (math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1))
                  if len(accuracies) > 1 else 0.0)
        remaining = next((value for value in (
            _number(outcomes[job.name].results.get("weights_remaining")) for job in members)
            if value is not None), None)
        table.append(f"| {binary} | {flagfile} | {' '.join(flags) or '-'} | "
                     f"{len(accuracies)}/{len(members)} | {mean:.4f} | {spread:.4f} | "
                     f"{'-' if remaining is None else f'{remaining:.4f}'} |")
    if table:
        lines += ["", "## Over seeds", "",
                  "Jobs that differ only in `--seed`: mean and sample standard deviation of "
                  "the test accuracy over the finished seeds.", "",
                  "| binary | flagfile | extra flags | seeds | mean test accuracy | std | "
                  "weights remaining |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: |"] + table
    return "\n".join(lines) + "\n"


def write_summary(output: str, jobs: Sequence[Job], outcomes: Dict[str, Outcome], title: str = ""):
    """Rewrites OUTPUT/summary.csv and OUTPUT/summary.md."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(jobs, outcomes))
    write_atomic(os.path.join(output, "summary.csv"), buffer.getvalue())
    write_atomic(os.path.join(output, "summary.md"), summary_markdown(jobs, outcomes, title))


def check_output_folder(output: str):
    """Refuses an --output that is a file, or a folder holding summary files this runner
    did not write (they would be overwritten)."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise JobListError(f"--output={output} is a file, not a folder")
    if not os.path.isdir(output) or os.path.exists(os.path.join(output, MARKER_FILE)):
        return
    header = ",".join(SUMMARY_FIELDS)
    for name in ("summary.csv", "summary.md"):
        path = os.path.join(output, name)
        if not os.path.exists(path):
            continue
        try:  # a batch from before the marker file: its summary.csv has the runner's header
            with open(os.path.join(output, "summary.csv")) as stream:
                ours = stream.readline().strip() == header
        except OSError:
            ours = False
        if not ours:
            raise JobListError(f"--output={output} holds a {name} that tf-supermask-batch did "
                               "not write; choose another --output (nothing was changed)")


class OutputBusy(ValueError):
    """Another runner holds the output folder."""


# Output folders this process holds: real path -> [open lock file, holds].
_HELD_OUTPUTS: Dict[str, list] = {}


def lock_output(output: str) -> str:
    """Makes this process the only runner using the folder `output` (created if missing):
    an OS-level lock (``flock``) on ``OUTPUT/.tf-supermask-batch.lock``, which the
    operating system releases when the process ends, however it ends. A process that
    holds the folder already may take it again (``release_output`` once for each).

    Returns:
      The key to give to ``release_output``.

    Raises:
      OutputBusy: another runner holds the folder (the message names it); nothing
        was changed.
    """
    import fcntl
    import socket

    key = os.path.realpath(output)
    if key in _HELD_OUTPUTS:
        _HELD_OUTPUTS[key][1] += 1
        return key
    path = os.path.join(output, LOCK_FILE)
    os.makedirs(output, exist_ok=True)
    lock = open(path, "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "an unknown process"
        lock.close()
        raise OutputBusy(f"--output={output} is in use by another tf-supermask-batch runner "
                         f"({holder}); wait for it to finish, or give this batch another "
                         "--output. Nothing was changed.") from None
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    lock.flush()
    _HELD_OUTPUTS[key] = [lock, 1]
    return key


def release_output(key: str):
    """Gives up a hold ``lock_output`` took; the last one releases the folder (the lock
    file stays, empty)."""
    held = _HELD_OUTPUTS.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD_OUTPUTS[key]
    try:
        held[0].truncate(0)
    except OSError:
        pass
    held[0].close()


@contextlib.contextmanager
def output_locked(output: str):
    """``lock_output`` for the duration of a ``with`` block (e.g. a study that prepares
    its output folder before ``run_batch``, which then holds it again)."""
    key = lock_output(output)
    try:
        yield
    finally:
        release_output(key)


def _die_with_parent(runner_pid: int):
    """In a job's process before it runs: SIGTERM it when the runner dies, however the
    runner dies (Linux; elsewhere jobs may outlive a killed runner, and their run
    directory locks then refuse a second writer)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != runner_pid:  # the runner died before the line above
        os._exit(1)


def _last_lines(path: str, count: int = 3) -> List[str]:
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, os.path.getsize(path) - 20000))
            text = stream.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("# runner:")]
    return lines[-count:]


class _Running:
    def __init__(self, job, process, log, started, index):
        self.job, self.process, self.log, self.started, self.index = (
            job, process, log, started, index)


def _stop(processes, grace_seconds=10.0):
    """SIGTERM to every process at once, then SIGKILL to those alive after the grace period
    (one grace period in all, so stopping many jobs takes no longer than stopping one)."""
    alive = [process for process in processes if process.poll() is None]
    for process in alive:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for process in alive:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_batch(jobs: Sequence[Job], output: str, parallel: int = 1,
              extra_flags: Sequence[str] = (), dry_run: bool = False,
              time_limit: float = 0.0, env: Optional[Dict[str, str]] = None,
              python: Optional[str] = None, stream: TextIO = None,
              poll_seconds: float = 0.2) -> BatchReport:
    """Runs the jobs that have not finished yet, `parallel` at a time.

    Args:
      jobs: the batch (e.g. from read_job_list).
      output: folder of the run directories, logs and summaries.
      parallel: jobs run at once.
      extra_flags: flags given to every job, before the job's own.
      dry_run: print the commands (and which jobs would be skipped); run nothing.
      time_limit: seconds after which running jobs are stopped (their run
        directories resume in a later batch) and no new ones start; 0: none.
      env: base environment of the jobs (default: this process's).
      python: interpreter running the binaries (default: this one).
      stream: where progress lines go (default: stdout).
      poll_seconds: how often finished processes are looked for.

    Returns:
      A BatchReport; its exit_code is non-zero when a job failed or did not finish.

    Raises:
      OutputBusy: another runner is using `output` (one runner per folder; a dry
        run does not take the folder). Nothing was changed.
    """
    stream = stream or sys.stdout
    check_output_folder(output)
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    problems = check_flags(extra_flags, "extra flags: ")
    if problems:
        raise JobListError("; ".join(problems))
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise JobListError("job names must be unique in a batch")
    if (env or os.environ).get("TF_CONFIG") and parallel > 1:
        raise ValueError("TF_CONFIG is set (a multi-worker cluster): jobs must run one at a "
                         "time, in the same order on every worker; use parallel=1")
    lock = None if dry_run else lock_output(output)
    try:
        return _run_jobs(jobs, output, parallel, extra_flags, dry_run, time_limit, env, python,
                         stream, poll_seconds)
    finally:
        if lock is not None:
            release_output(lock)


def _run_jobs(jobs, output, parallel, extra_flags, dry_run, time_limit, env, python, stream,
              poll_seconds) -> BatchReport:
    """run_batch once its arguments are checked and the output folder is locked."""

    def say(text):
        print(text, file=stream, flush=True)

    outcomes = {job.name: Outcome() for job in jobs}
    todo = []
    for job in jobs:
        if finished(output, job):
            outcomes[job.name] = Outcome("skipped", results=read_results(output, job))
        else:
            todo.append(job)
    backend = (env or os.environ).get("KERAS_BACKEND", "tensorflow (default)")
    say(f"batch: {len(jobs)} jobs, {len(jobs) - len(todo)} finished earlier (skipped), "
        f"{len(todo)} to run, {parallel} at a time; KERAS_BACKEND={backend}; output {output}")
    if dry_run:
        for job in jobs:
            mark = "skip" if outcomes[job.name].status == "skipped" else "run "
            say(f"{mark} {job.name}: {shlex.join(job.command(output, extra_flags, python))}")
        return BatchReport(list(jobs), outcomes)

    os.makedirs(output, exist_ok=True)
    write_atomic(os.path.join(output, MARKER_FILE), "summary.csv and summary.md here are "
                  "written by tf-supermask-batch\n")
    job_env = job_environment(parallel, env)
    title = f"Batch in {output}"
    write_summary(output, jobs, outcomes, title)
    start = time.monotonic()
    pending = collections.deque(todo)
    running: List[_Running] = []
    started = 0

    def finish(entry: _Running, status: Optional[str] = None):
        job, seconds = entry.job, time.monotonic() - entry.started
        code = entry.process.returncode
        entry.log.write(f"\n# runner: exit code {code} after {format_seconds(seconds)}\n")
        entry.log.close()
        results = read_results(output, job)
        if status is None:
            status = "done" if code == 0 else "failed"
        if status == "done" and not os.path.isfile(os.path.join(run_dir(output, job),
                                                                RESULTS_FILE)):
            write_atomic(os.path.join(output, job.name + DONE_SUFFIX),
                          "exited 0 without results.json in its run directory\n")
        outcomes[job.name] = Outcome(status, code, seconds, results)
        prefix = f"[{entry.index:>{len(str(len(todo)))}}/{len(todo)}]"
        if status == "done":
            metrics = ", ".join(f"{key} {_number(results[key]):.4f}"
                                for key in ("test_accuracy", "weights_remaining")
                                if _number(results.get(key)) is not None) or "no results.json"
            detail = metrics
        elif status == "failed":
            tail = " | ".join(_last_lines(log_path(output, job)))
            detail = f"exit code {code}: {tail} (log: {log_path(output, job)})"
        else:
            detail = "stopped at the time limit; it resumes in a later batch"
        done = sum(o.status == "done" for o in outcomes.values())
        failed = sum(o.status == "failed" for o in outcomes.values())
        say(f"{prefix} {status:<6} {job.name} in {format_seconds(seconds)}: {detail} "
            f"| elapsed {format_seconds(time.monotonic() - start)}, {done} done, "
            f"{failed} failed, {len(pending) + len(running)} left")
        write_summary(output, jobs, outcomes, title)

    try:
        while pending or running:
            out_of_time = time_limit and time.monotonic() - start >= time_limit
            while pending and len(running) < parallel and not out_of_time:
                job = pending.popleft()
                started += 1
                command = job.command(output, extra_flags, python)
                log = open(log_path(output, job), "a")
                log.write(f"# runner: {datetime.datetime.now().isoformat(timespec='seconds')} "
                          f"{shlex.join(command)}\n")
                log.flush()
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=job_env,
                                           preexec_fn=functools.partial(_die_with_parent,
                                                                        os.getpid()))
                running.append(_Running(job, process, log, time.monotonic(), started))
                outcomes[job.name].status = "running"
                say(f"[{started:>{len(str(len(todo)))}}/{len(todo)}] start  {job.name}: "
                    f"{job.binary} {job.flagfile} {' '.join(job.flags)}".rstrip())
            if out_of_time:
                _stop([entry.process for entry in running])
                for entry in list(running):
                    running.remove(entry)
                    finish(entry, "stopped" if entry.process.returncode != 0 else None)
                for job in pending:
                    outcomes[job.name].status = "not run"
                if pending:
                    say(f"time limit of {format_seconds(time_limit)} reached: {len(pending)} "
                        "jobs not started")
                pending.clear()
                break
            for entry in list(running):
                if entry.process.poll() is not None:
                    running.remove(entry)
                    finish(entry)
            if running:
                time.sleep(poll_seconds)
    except BaseException:
        _stop([entry.process for entry in running])
        for entry in running:
            entry.log.close()
            outcomes[entry.job.name].status = "stopped"
        write_summary(output, jobs, outcomes, title)
        raise
    report = BatchReport(list(jobs), outcomes)
    write_summary(output, jobs, outcomes, title)
    say(f"batch finished in {format_seconds(time.monotonic() - start)}: "
        f"{report.count('done')} done, {report.count('skipped')} skipped, "
        f"{report.count('failed')} failed, "
        f"{report.count('stopped', 'not run')} left for a later batch; "
        f"summary in {os.path.join(output, 'summary.md')}")
    return report
