#!/usr/bin/env python3
"""The GPU results ledger: one prioritised job list, filled a GPU window at a time.

GPU windows are short (at most 10 minutes a command) and rare, so the ledger's
runs accumulate across windows and sessions:

- ``jobs/ledger.txt`` lists every run of the ledger's tables, most valuable
  first (written by ``python scripts/ledger_tables.py --write_jobs``). It is an
  ordinary job list of the batch runner (``tf_supermask/tools/batch.py``) plus
  ``#@ requires: fidelity`` / ``#@ requires: none`` lines: the jobs after a
  ``fidelity`` line change once the reference-fidelity fixes (L2 SGD weight
  decay, reference score init, per-epoch cosine) are in the code, so a window
  runs them only when ``TrainConfig`` has ``weight_decay_mode`` (or when told to).
- ``window`` (on the GPU machine, through ``scripts/ledger_window.sh``) skips
  the runs already committed under ``runs/results/ledger/runs/``, restores
  the partly-run directories carried in ``runs/ledger_partial/``, runs the next
  jobs with the batch runner until a deadline, and writes into ``$OUT``
  ``ledger_window.tar.gz`` (every finished run's results.json, flags.txt and
  metrics.csv, plus window.json, the batch summary and the logs of cut or
  failed jobs) and, when some fit, ``ledger_partial.tar.gz`` (the cut runs'
  directories without TensorBoard events, so they resume next time).
- ``import`` (here, through ``scripts/ledger_import.sh``) unpacks a window's
  files into ``runs/results/ledger/`` (runs, window records, attempts.json)
  and ``runs/ledger_partial/`` (git-ignored), then regenerates the tables.

A committed run counts (and is skipped) only while it is current: its
flags.txt agrees with the flags the job would run with today (a field absent
from an older flags.txt is taken at its default), and a job that requires the
fidelity fixes was run with them (its ledger.json says so). Anything else is
stale: reported, and run again.
"""

import argparse
import ast
import csv
import dataclasses
import datetime
import importlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(SCRIPTS)
for _path in (REPO, SCRIPTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from tf_supermask.tools import batch  # noqa: E402  (imports neither Keras nor TensorFlow)

DEFAULT_JOBS = os.path.join("jobs", "ledger.txt")
LEDGER_DIR = os.path.join("runs", "results", "ledger")
RUNS_SUBDIR = "runs"
PARTIAL_DIR = os.path.join("runs", "ledger_partial")
ARCHIVE = "ledger_window.tar.gz"
PARTIAL_ARCHIVE = "ledger_partial.tar.gz"
LOG = "ledger_window.log"
WINDOW_RECORD = "window.json"
LEDGER_RECORD = "ledger.json"
ATTEMPTS = "attempts.json"
SMALL_FILES = ("results.json", "flags.txt", "metrics.csv")
NOT_PACKED = ("tensorboard", ".lock")  # left out of partial run directories
DIRECTIVE = "#@ requires:"
FIDELITY = "fidelity"
FIDELITY_FIELD = "weight_decay_mode"
# A device call carries the working tree, .whl, .data and the partial runs: at most 64 MiB.
CARRY_LIMIT = 64 * 1048576
CARRY_MARGIN = 2 * 1048576
LOG_TAIL_BYTES = 65536


# The job list ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LedgerJob:
    """One job of the ledger: a batch-runner job and what it needs before it may run."""

    job: batch.Job
    requires: str = ""  # "" or "fidelity"

    @property
    def name(self):
        return self.job.name

    @property
    def line_text(self):
        parts = ([] if self.job.binary == batch.DEFAULT_BINARY else [self.job.binary])
        return " ".join(parts + [self.job.flagfile, *self.job.flags])


def parse_ledger(text, base_dir=REPO):
    """LedgerJobs of a ledger job list (the batch runner's format plus #@ directives)."""
    jobs = batch.parse_job_list(text, base_dir=base_dir)
    requires_at, current = {}, ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(DIRECTIVE):
            value = stripped[len(DIRECTIVE):].strip()
            if value not in ("none", FIDELITY):
                raise batch.JobListError(f"line {number}: '{DIRECTIVE}' takes none or "
                                         f"{FIDELITY}, got {value!r}")
            current = "" if value == "none" else value
        requires_at[number] = current
    return [LedgerJob(job, requires_at.get(job.line, "")) for job in jobs]


def read_ledger(path=DEFAULT_JOBS):
    with open(path) as stream:
        return parse_ledger(stream.read(), base_dir=os.path.dirname(os.path.abspath(path)))


# Flags as the binaries parse them ----------------------------------------------------------

_CONFIG_CLASSES = {}


def config_class(binary):
    """The config dataclass a binary builds from its flags (read from its config_app call)."""
    if binary not in _CONFIG_CLASSES:
        spec = importlib.util.find_spec(f"tf_supermask.bin.{binary}")
        with open(spec.origin) as stream:
            tree = ast.parse(stream.read())
        name = next(node.args[0].id for node in ast.walk(tree)
                    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "config_app")
        module = next(node.module for node in tree.body if isinstance(node, ast.ImportFrom)
                      and any(alias.name == name for alias in node.names))
        _CONFIG_CLASSES[binary] = getattr(importlib.import_module(module), name)
    return _CONFIG_CLASSES[binary]


def job_config(job):
    """The job's configuration, parsed from its flagfile and flags as its binary would.

    Raises:
      ValueError (or an absl flags error): flags the binary would refuse.
    """
    from absl import flags as absl_flags

    from tf_supermask.config import define_flags, from_flags

    cls = config_class(job.binary)
    values = absl_flags.FlagValues()
    define_flags(cls, values)
    values(["ledger", f"--flagfile={job.flagfile_path}", *job.flags])
    return from_flags(cls, values)


def _flag_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _ignored_flags():
    from tf_supermask.tools.report import IGNORED_FLAGS

    return tuple(name for name in IGNORED_FLAGS if name != "seed")


def expected_flags(config):
    """{flag: text} that decide the job's results (execution details and paths left out)."""
    from tf_supermask.config import to_flagfile
    from tf_supermask.training.run_dir import parse_flagfile

    return parse_flagfile(to_flagfile(config, exclude=_ignored_flags()))


def recipe_key(binary, config):
    """What makes two jobs the same experiment: binary and decisive flags (seed included)."""
    return (binary, tuple(sorted(expected_flags(config).items())))


def _same(a, b):
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()


def flag_differences(run_flags, config):
    """Names of decisive flags where a run's flags.txt disagrees with `config`.

    A field missing from the run's flags.txt (added to the code after the run) counts
    as its default value.
    """
    defaults = {field.name: _flag_text(field.default) for field in dataclasses.fields(config)
                if field.default is not dataclasses.MISSING}
    return [name for name, value in expected_flags(config).items()
            if not _same(run_flags.get(name, defaults.get(name)), value)]


def fidelity_in_code():
    """Whether the reference-fidelity fixes are in this code (TrainConfig.weight_decay_mode)."""
    from tf_supermask.training.config import TrainConfig

    return FIDELITY_FIELD in {field.name for field in dataclasses.fields(TrainConfig)}


def resolve_fidelity(setting):
    """auto: whether the fixes are in the code; yes/no: as told."""
    if setting in ("yes", "true", "1"):
        return True
    if setting in ("no", "false", "0"):
        return False
    if setting != "auto":
        raise ValueError(f"fidelity must be auto, yes or no, got {setting!r}")
    return fidelity_in_code()


# Committed runs and the plan ---------------------------------------------------------------

def _read_json(path, default=None):
    try:
        with open(path) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return default


def run_state(run_dir, ledger_job, config):
    """("current", "") for a finished run that counts, ("stale", why) or ("missing", "")."""
    from tf_supermask.training.run_dir import parse_flagfile

    results = _read_json(os.path.join(run_dir, "results.json"))
    if not isinstance(results, dict):
        return "missing", ""
    try:
        with open(os.path.join(run_dir, "flags.txt")) as stream:
            run_flags = parse_flagfile(stream.read())
    except OSError:
        return "stale", "no flags.txt"
    differences = flag_differences(run_flags, config)
    if differences:
        return "stale", "flags differ: " + ", ".join(differences)
    record = _read_json(os.path.join(run_dir, LEDGER_RECORD), {}) or {}
    if ledger_job.requires == FIDELITY and not record.get(FIDELITY):
        return "stale", "run before the fidelity fixes"
    return "current", ""


@dataclasses.dataclass
class Plan:
    """What a window does with each job of the ledger."""

    done: list = dataclasses.field(default_factory=list)       # names of current runs
    stale: dict = dataclasses.field(default_factory=dict)      # name -> why (runs again)
    deferred: list = dataclasses.field(default_factory=list)   # need the fidelity fixes
    too_long: list = dataclasses.field(default_factory=list)   # cut in full windows before
    invalid: dict = dataclasses.field(default_factory=dict)    # name -> flag error
    pending: list = dataclasses.field(default_factory=list)    # LedgerJobs to run, in order
    configs: dict = dataclasses.field(default_factory=dict)    # name -> config

    def summary(self):
        return (f"{len(self.done)} finished and committed, {len(self.pending)} to run "
                f"({len(self.stale)} of them stale), {len(self.deferred)} waiting for the "
                f"fidelity fixes, {len(self.too_long)} skipped as too long for a window, "
                f"{len(self.invalid)} with flags the binary refuses")


def full_window_cuts(entry):
    """How often a job was cut having run for most of a window (it does not fit one)."""
    return sum(1 for cut in (entry or {}).get("cuts", [])
               if cut.get("ran_seconds", 0) >= 0.8 * max(cut.get("batch_seconds", 0), 1))


def make_plan(ledger_jobs, runs_dir, fidelity, attempts=None, max_cuts=2, partial_dir=""):
    """Sorts the ledger's jobs into done, pending (in list order), deferred and the rest."""
    plan, attempts = Plan(), attempts or {}
    for ledger_job in ledger_jobs:
        name = ledger_job.name
        if ledger_job.requires == FIDELITY and not fidelity:
            plan.deferred.append(name)
            continue
        try:
            config = job_config(ledger_job.job)
        except Exception as error:  # absl flag errors and config checks alike
            plan.invalid[name] = f"{type(error).__name__}: {error}"
            continue
        plan.configs[name] = config
        state, why = run_state(os.path.join(runs_dir, name), ledger_job, config)
        if state == "current":
            plan.done.append(name)
            continue
        if state == "stale":
            plan.stale[name] = why
        has_partial = bool(partial_dir) and os.path.isdir(os.path.join(partial_dir, name))
        if max_cuts and not has_partial and full_window_cuts(attempts.get(name)) >= max_cuts:
            plan.too_long.append(name)
            continue
        plan.pending.append(ledger_job)
    return plan


# A window ----------------------------------------------------------------------------------

def _utc(seconds=None):
    moment = datetime.datetime.fromtimestamp(seconds or time.time(), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _device():
    try:
        text = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        text = ""
    return text or f"no GPU seen ({os.cpu_count()} CPU cores)"


def restore_partial(ledger_job, config, partial_dir, output):
    """Copies a carried, still-matching partial run directory into the batch output."""
    from tf_supermask.training.run_dir import parse_flagfile

    source = os.path.join(partial_dir, ledger_job.name)
    target = os.path.join(output, ledger_job.name)
    if not os.path.isdir(source) or os.path.exists(target):
        return False
    try:
        with open(os.path.join(source, "flags.txt")) as stream:
            if flag_differences(parse_flagfile(stream.read()), config):
                return False
    except OSError:
        return False
    shutil.copytree(source, target)
    return True


def _read_summary(output):
    try:
        with open(os.path.join(output, "summary.csv")) as stream:
            return {row["job"]: row for row in csv.DictReader(stream)}
    except OSError:
        return {}


def _epochs_done(run_dir):
    """Rows of every metrics.csv under a run directory (epochs finished, all sub-runs)."""
    total = 0
    for folder, _, files in os.walk(run_dir):
        if "metrics.csv" in files:
            with open(os.path.join(folder, "metrics.csv")) as stream:
                total += max(0, sum(1 for _ in stream) - 1)
    return total


def _add_bytes(archive, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    archive.addfile(info, io.BytesIO(data))


def _small_files(run_dir):
    """Paths (relative to run_dir) of the small files of a run and of its sub-runs."""
    found = []
    for folder, folders, files in os.walk(run_dir):
        folders[:] = sorted(d for d in folders if d not in ("tensorboard", "checkpoints"))
        found += [os.path.relpath(os.path.join(folder, f), run_dir)
                  for f in sorted(files) if f in SMALL_FILES]
    return found


def _folder_bytes(path, skip=NOT_PACKED):
    total = 0
    for folder, folders, files in os.walk(path):
        folders[:] = [d for d in folders if d not in skip]
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files if f not in skip)
    return total


def pack_window(ledger_jobs, output, out, window, partial_budget):
    """Writes ledger_window.tar.gz (and ledger_partial.tar.gz) into `out`; returns outcomes."""
    rows = _read_summary(output)
    outcomes = {}
    archive_path = os.path.join(out, ARCHIVE)
    partial_path = os.path.join(out, PARTIAL_ARCHIVE)
    partial_used, partial_names = 0, []
    with tarfile.open(archive_path + ".tmp", "w:gz") as archive:
        for ledger_job in ledger_jobs:
            name = ledger_job.name
            run_dir = os.path.join(output, name)
            row = rows.get(name, {})
            wall = float(row["wall_seconds"]) if row.get("wall_seconds") else None
            finished = os.path.isfile(os.path.join(run_dir, "results.json"))
            if finished:
                status = "done"
            elif row.get("status") in ("failed", "not run"):
                status = row["status"]
            elif os.path.isdir(run_dir):
                status = "stopped"
            else:
                status = "not run"
            outcome = {"status": status, "wall_seconds": wall,
                       "epochs_done": _epochs_done(run_dir) if os.path.isdir(run_dir) else 0}
            if finished:
                for relative in _small_files(run_dir):
                    archive.add(os.path.join(run_dir, relative),
                                arcname=f"runs/{name}/{relative}")
                record = {"job": ledger_job.line_text, "requires": ledger_job.requires or "none",
                          FIDELITY: window[FIDELITY], "window": window["id"],
                          "device": window["device"], "backend": window["backend"],
                          "extra_flags": window["extra_flags"], "wall_seconds": wall}
                _add_bytes(archive, f"runs/{name}/{LEDGER_RECORD}",
                           (json.dumps(record, indent=2) + "\n").encode())
            if status in ("failed", "stopped"):
                log = batch.log_path(output, ledger_job.job)
                if os.path.isfile(log):
                    with open(log, "rb") as stream:
                        stream.seek(max(0, os.path.getsize(log) - LOG_TAIL_BYTES))
                        _add_bytes(archive, f"logs/{name}.log", stream.read())
            # A run cut before its first epoch ended has nothing to resume from.
            if status == "stopped" and outcome["epochs_done"] and partial_budget > 0:
                size = _folder_bytes(run_dir)
                if partial_used + size <= partial_budget:
                    partial_used += size
                    partial_names.append(name)
                    outcome["partial"] = True
            outcomes[name] = outcome
        window = {**window, "ended": _utc(), "outcomes": outcomes}
        _add_bytes(archive, WINDOW_RECORD, (json.dumps(window, indent=2) + "\n").encode())
        for summary in ("summary.md", "summary.csv"):
            if os.path.isfile(os.path.join(output, summary)):
                archive.add(os.path.join(output, summary), arcname=summary)
    os.replace(archive_path + ".tmp", archive_path)
    if partial_names:
        def without_events(info):
            return None if os.path.basename(info.name) in NOT_PACKED else info

        with tarfile.open(partial_path + ".tmp", "w:gz") as archive:
            for name in partial_names:
                archive.add(os.path.join(output, name), arcname=name, filter=without_events)
        os.replace(partial_path + ".tmp", partial_path)
    return window


def run_window(jobs_path, out, work, runs_dir, partial_dir, attempts_path, deadline,
               parallel=8, extra_flags="", fidelity="auto", max_cuts=2,
               pack_seconds=45.0, min_batch_seconds=60.0, partial_budget=15 * 1048576,
               python=None, stream=None):
    """One window: plan, restore partial runs, run jobs until the deadline, pack into `out`.

    Args:
      deadline: time.time() by which everything, packing included, is over.
      pack_seconds: kept back before the deadline for stopping jobs and packing.
      min_batch_seconds: no batch starts with less time than this left.
      partial_budget: bytes of cut run directories packed for the next window.
      python: interpreter of the jobs (a test hook; default this one).

    Returns:
      The window record (also window.json in the archive).
    """
    stream = stream or sys.stdout

    def say(text):
        print(f"[ledger {_utc()}] {text}", file=stream, flush=True)

    os.makedirs(out, exist_ok=True)
    output = os.path.join(work, "out")
    os.makedirs(output, exist_ok=True)
    ledger_jobs = read_ledger(jobs_path)
    fidelity_on = resolve_fidelity(fidelity)
    attempts = _read_json(attempts_path, {}) or {}
    plan = make_plan(ledger_jobs, runs_dir, fidelity_on, attempts, max_cuts, partial_dir)
    say(f"{jobs_path}: {len(ledger_jobs)} jobs; {plan.summary()}; fidelity fixes "
        f"{'in' if fidelity_on else 'NOT in'} the code ({fidelity})")
    for name, why in plan.stale.items():
        say(f"stale, runs again: {name} ({why})")
    for name, why in plan.invalid.items():
        say(f"flags refused, skipped: {name}: {why}")
    for name in plan.too_long:
        say(f"skipped: {name} was cut in {max_cuts} full windows (see {attempts_path})")
    restored = [job.name for job in plan.pending
                if restore_partial(job, plan.configs[job.name], partial_dir, output)]
    if restored:
        say(f"resuming {len(restored)} partial runs from {partial_dir}: {', '.join(restored)}")
    window = {"id": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
              "started": _utc(), "jobs_file": jobs_path, FIDELITY: fidelity_on,
              "device": _device(), "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
              "parallel": parallel, "extra_flags": extra_flags, "restored": restored,
              "plan": {"done": len(plan.done), "pending": len(plan.pending),
                       "stale": plan.stale, "deferred": len(plan.deferred),
                       "too_long": plan.too_long, "invalid": plan.invalid}}
    time_limit = deadline - pack_seconds - time.time()
    window["batch_seconds"] = max(0.0, round(time_limit, 1))

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if not plan.pending:
            say("nothing to run")
        elif time_limit < min_batch_seconds:
            say(f"only {time_limit:.0f} s left before the deadline: no batch started")
        else:
            say(f"running up to {len(plan.pending)} jobs, {parallel} at a time, for "
                f"{time_limit:.0f} s")
            flags = batch.parse_extra_flags(extra_flags)
            batch.run_batch([job.job for job in plan.pending], output, parallel=parallel,
                            extra_flags=flags, time_limit=time_limit, python=python,
                            stream=stream)
    finally:
        signal.signal(signal.SIGTERM, previous)
        window = pack_window(plan.pending, output, out, window, partial_budget)
        counts = {}
        for outcome in window["outcomes"].values():
            counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
        say(f"packed {os.path.join(out, ARCHIVE)}: " + ", ".join(
            f"{count} {status}" for status, count in sorted(counts.items())))
    return window


# Import ------------------------------------------------------------------------------------

def _safe_members(archive, target):
    root = os.path.realpath(target)
    for member in archive.getmembers():
        path = os.path.realpath(os.path.join(target, member.name))
        if not (member.isfile() or member.isdir()) or not (
                path == root or path.startswith(root + os.sep)):
            raise ValueError(f"refusing archive member {member.name!r}")
        yield member


def _extract(archive_path, target):
    os.makedirs(target, exist_ok=True)
    with tarfile.open(archive_path) as archive:
        archive.extractall(target, members=list(_safe_members(archive, target)))


def carried_bytes(repo=REPO, partial_dir=PARTIAL_DIR):
    """Bytes a device call carries: the working tree git would list, .whl, .data, partial runs."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], cwd=repo, capture_output=True,
                                 check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listing = []
    tree = sum(os.path.getsize(os.path.join(repo, path)) for path in listing
               if path and os.path.isfile(os.path.join(repo, path)))
    extra = sum(_folder_bytes(os.path.join(repo, folder), skip=())
                for folder in (".whl", ".data", partial_dir)
                if os.path.isdir(os.path.join(repo, folder)))
    return tree + extra


def _record_attempts(attempts, window):
    for name, outcome in window["outcomes"].items():
        if outcome["status"] == "done":
            attempts.pop(name, None)
        elif outcome["status"] in ("stopped", "failed"):
            entry = attempts.setdefault(name, {"cuts": [], "failures": []})
            key = "cuts" if outcome["status"] == "stopped" else "failures"
            entry[key].append({"window": window["id"],
                               "ran_seconds": outcome.get("wall_seconds") or 0,
                               "batch_seconds": window.get("batch_seconds", 0),
                               "epochs_done": outcome.get("epochs_done", 0)})
    return dict(sorted(attempts.items()))


def import_window(source, ledger_dir=LEDGER_DIR, partial_dir=PARTIAL_DIR, jobs_path=DEFAULT_JOBS,
                  tables=True, stream=None):
    """Unpacks a window's files (a folder, or the archive itself) into the ledger.

    A run of the same name already in the ledger is replaced (the window ran the job
    again because that run was stale).

    Returns:
      {"window": id, "added": [...], "replaced": [...], "partial": [...]}.
    """
    stream = stream or sys.stdout
    folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    archive_path = os.path.join(source, ARCHIVE) if os.path.isdir(source) else source
    staging = os.path.join(ledger_dir, ".import")
    shutil.rmtree(staging, ignore_errors=True)
    _extract(archive_path, staging)
    try:
        window = _read_json(os.path.join(staging, WINDOW_RECORD))
        if not isinstance(window, dict):
            raise ValueError(f"{archive_path} holds no {WINDOW_RECORD}: not a ledger window")
        runs_dir = os.path.join(ledger_dir, RUNS_SUBDIR)
        os.makedirs(runs_dir, exist_ok=True)
        added, replaced = [], []
        staged_runs = os.path.join(staging, "runs")
        for name in sorted(os.listdir(staged_runs)) if os.path.isdir(staged_runs) else []:
            # A window runs only jobs without a current run: one already here is stale.
            target = os.path.join(runs_dir, name)
            if os.path.exists(target):
                replaced.append(name)
                shutil.rmtree(target)
            shutil.move(os.path.join(staged_runs, name), target)
            added.append(name)
        windows_dir = os.path.join(ledger_dir, "windows")
        os.makedirs(windows_dir, exist_ok=True)
        shutil.copyfile(os.path.join(staging, WINDOW_RECORD),
                        os.path.join(windows_dir, f"{window['id']}.json"))
        log = os.path.join(folder, LOG)
        if os.path.isfile(log):
            shutil.copyfile(log, os.path.join(windows_dir, f"{window['id']}.log"))
        attempts_path = os.path.join(ledger_dir, ATTEMPTS)
        attempts = _record_attempts(_read_json(attempts_path, {}) or {}, window)
        with open(attempts_path, "w") as out:
            json.dump(attempts, out, indent=1, sort_keys=True)
            out.write("\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    partial = os.path.join(folder, PARTIAL_ARCHIVE) if os.path.isdir(source) else ""
    restored = []
    if partial and os.path.isfile(partial):
        staging = partial_dir + ".import"
        shutil.rmtree(staging, ignore_errors=True)
        _extract(partial, staging)
        for name in sorted(os.listdir(staging)):
            shutil.rmtree(os.path.join(partial_dir, name), ignore_errors=True)
            os.makedirs(partial_dir, exist_ok=True)
            shutil.move(os.path.join(staging, name), os.path.join(partial_dir, name))
            restored.append(name)
        shutil.rmtree(staging, ignore_errors=True)
    # Partial runs of finished jobs are of no more use; the rest must fit the next call.
    if os.path.isdir(partial_dir):
        for name in os.listdir(partial_dir):
            if os.path.isfile(os.path.join(ledger_dir, RUNS_SUBDIR, name, "results.json")):
                shutil.rmtree(os.path.join(partial_dir, name))
        order = {job.name: index for index, job in enumerate(read_ledger(jobs_path))} \
            if os.path.isfile(jobs_path) else {}
        names = sorted(os.listdir(partial_dir), key=lambda n: order.get(n, len(order)))
        while names and carried_bytes(partial_dir=partial_dir) > CARRY_LIMIT - CARRY_MARGIN:
            dropped = names.pop()
            shutil.rmtree(os.path.join(partial_dir, dropped))
            print(f"dropped partial run {dropped}: the next device call would carry over "
                  f"{(CARRY_LIMIT - CARRY_MARGIN) // 1048576} MiB", file=stream)
    print(f"window {window['id']}: {len(added)} runs added to {runs_dir} ({len(replaced)} "
          f"replacing stale ones); {len(restored)} partial runs in {partial_dir}", file=stream)
    print(f"a device call will carry {carried_bytes(partial_dir=partial_dir) / 1048576:.1f} MiB "
          f"(working tree, .whl, .data, {partial_dir}) of 64 MiB", file=stream)
    if tables:
        import ledger_tables

        for path in ledger_tables.write_tables(ledger_dir):
            print(f"wrote {path}", file=stream)
    return {"window": window["id"], "added": added, "replaced": replaced, "partial": restored}


# Command line ------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    window = commands.add_parser("window", help="run the next jobs until a deadline (GPU side)")
    window.add_argument("--out", required=True, help="folder the archive goes to ($OUT)")
    window.add_argument("--jobs", default=DEFAULT_JOBS)
    window.add_argument("--work", default="/tmp/ledger_window",
                        help="folder of the batch's run directories")
    window.add_argument("--runs", default=os.path.join(LEDGER_DIR, RUNS_SUBDIR),
                        help="committed runs, skipped when current")
    window.add_argument("--partial", default=PARTIAL_DIR, help="carried partial runs")
    window.add_argument("--attempts", default=os.path.join(LEDGER_DIR, ATTEMPTS))
    window.add_argument("--deadline", type=float, default=0.0,
                        help="time.time() by which the window ends (default: now + --seconds)")
    window.add_argument("--seconds", type=float, default=510.0)
    window.add_argument("--pack_seconds", type=float, default=45.0)
    window.add_argument("--min_batch_seconds", type=float, default=60.0)
    window.add_argument("--parallel", type=int, default=8)
    window.add_argument("--extra_flags", default="")
    window.add_argument("--fidelity", default="auto", choices=("auto", "yes", "no"))
    window.add_argument("--max_cuts", type=int, default=2,
                        help="skip a job cut in this many full windows (0: never skip)")
    window.add_argument("--partial_mib", type=float, default=15.0)
    importer = commands.add_parser("import", help="unpack a window's files into the ledger")
    importer.add_argument("source", help="the folder the window's files came back to, or the "
                          "archive")
    importer.add_argument("--ledger", default=LEDGER_DIR)
    importer.add_argument("--partial", default=PARTIAL_DIR)
    importer.add_argument("--jobs", default=DEFAULT_JOBS)
    status = commands.add_parser("status", help="print the plan a window would follow now")
    status.add_argument("--jobs", default=DEFAULT_JOBS)
    status.add_argument("--runs", default=os.path.join(LEDGER_DIR, RUNS_SUBDIR))
    status.add_argument("--fidelity", default="auto", choices=("auto", "yes", "no"))
    args = parser.parse_args(argv)

    if args.command == "window":
        deadline = args.deadline or time.time() + args.seconds
        window = run_window(args.jobs, args.out, args.work, args.runs, args.partial,
                            args.attempts, deadline, parallel=args.parallel,
                            extra_flags=args.extra_flags, fidelity=args.fidelity,
                            max_cuts=args.max_cuts, pack_seconds=args.pack_seconds,
                            min_batch_seconds=args.min_batch_seconds,
                            partial_budget=int(args.partial_mib * 1048576))
        statuses = {outcome["status"] for outcome in window["outcomes"].values()}
        return 1 if "failed" in statuses else 0
    if args.command == "import":
        import_window(args.source, args.ledger, args.partial, args.jobs)
        return 0
    plan = make_plan(read_ledger(args.jobs), args.runs, resolve_fidelity(args.fidelity))
    print(plan.summary())
    for name, why in {**plan.stale, **plan.invalid}.items():
        print(f"  {name}: {why}")
    for job in plan.pending[:20]:
        print(f"  next: {job.line_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
