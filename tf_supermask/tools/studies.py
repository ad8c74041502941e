"""Studies: a paper's table declared once, run resumably at a scale, shown beside the paper.

A ``Study`` has cells (one row of its table each: axes such as method x model x k),
seeds and scales. A cell is a flagfile plus flags, run once per seed by the study's
binary; its number is read from the run's results.json by ``Cell.metric`` (several
cells may read one run, e.g. the arms of a fine-tuning comparison). Per scale a cell
may carry the published number (``Reference``: value, source, tolerance).

Runs go through the batch runner (tf_supermask/tools/batch.py) into
``ROOT/STUDY/SCALE/<job name>``: finished runs are skipped, a run stopped by the time
limit or killed resumes from its last finished epoch in the next ``run``.

This module imports neither Keras nor TensorFlow. The declared studies are in
tf_supermask/tools/study_catalog.py; ``load_study_file`` reads more from JSON.
"""

import csv
import dataclasses
import io
import json
import math
import os
import re
import shlex
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from tf_supermask.choices import FLAGS_FILE, RESULTS_FILE, RUN_CONTROL_FIELDS
from tf_supermask.files import atomic_file, write_atomic
from tf_supermask.tools import batch

SCALES = ("cpu", "full")
REDUCED_LABEL = "reduced"
# The binary names a study may use (module names under tf_supermask.bin); "prune-init" is
# accepted as the console script's spelling.
BINARY_ALIASES = {"prune-init": "prune_init"}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StudyError(ValueError):
    """A study declaration, or a request about one, that cannot be honoured."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published number: `value` (percent), where it comes from, and the tolerance
    (percentage points) ``check`` allows; tolerance None: shown, not checked."""

    value: float
    source: str
    tolerance: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Scale:
    """Flags added to every run of a study at one scale (before the cell's own)."""

    flags: Tuple[str, ...] = ()
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row of a study's table.

    Attributes:
      axes: (axis, value) pairs naming the row, e.g. (("model", "conv4"), ("k", "0.5")).
      flagfile: path relative to the repository root (or absolute).
      flags: the cell's own flags, after the scale's.
      scales: the scales at which the cell exists.
      metric: what to read from results.json: a dotted path where a list is picked by
        ``name[field=value,...]`` (first match) or ``name[index]``; fractions in [0, 1]
        are shown as percent.
      published: scale -> Reference.
      binary: overrides the study's binary.
    """

    axes: Tuple[Tuple[str, str], ...]
    flagfile: str
    flags: Tuple[str, ...] = ()
    scales: Tuple[str, ...] = SCALES
    metric: str = "test_accuracy"
    published: Mapping[str, Reference] = dataclasses.field(default_factory=dict)
    binary: str = ""

    @property
    def name(self) -> str:
        return " ".join(f"{axis}={value}" for axis, value in self.axes)


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    title: str
    binary: str
    cells: Tuple[Cell, ...]
    scales: Mapping[str, Scale]
    description: str = ""
    seeds: Tuple[int, ...] = (0, 1, 2)
    # A paper that reports the best over one axis (edge-popup: the best k): tables and
    # checks add, per group of cells that differ only there, a row "AXIS=best" with the
    # group's best mean, checked against the group's published number within
    # `best_tolerance` (None: shown, not checked).
    best_over: str = ""
    best_tolerance: Optional[float] = None

    def cells_at(self, scale: str) -> List[Cell]:
        check_scale(self, scale)
        return [cell for cell in self.cells if scale in cell.scales]


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One run of a cell at a seed (runs shared by cells are one Job)."""

    cell: Cell
    seed: int
    job: batch.Job


def check_scale(study: Study, scale: str):
    if scale not in study.scales:
        raise StudyError(f"study {study.name!r} has no scale {scale!r}; choose one of "
                         f"{', '.join(study.scales)}")


def scale_label(scale: str) -> str:
    return f"{scale} ({REDUCED_LABEL})" if scale == "cpu" else scale


def parse_seeds(text: str) -> Tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise StudyError(f"--seeds={text!r}: give comma-separated integers, e.g. 0,1,2") \
            from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise StudyError(f"--seeds={text!r}: give distinct non-negative integers, e.g. 0,1,2")
    return seeds


def resolve_flagfile(path: str) -> str:
    """The flagfile as given if it exists (relative to the current folder), else beside
    the package (a checkout's flags/)."""
    if os.path.isabs(path) or os.path.isfile(path):
        return path
    beside = os.path.join(REPO_ROOT, path)
    return beside if os.path.isfile(beside) else path


def study_runs(study: Study, scale: str, seeds: Optional[Sequence[int]] = None,
               only: str = "") -> List[StudyRun]:
    """Every (cell, seed) of the study at `scale`, with the batch Job that computes it.

    Raises:
      StudyError: no cell matches `only`, or the job list is wrong (a flagfile that does
        not exist, an unknown binary, a bad flag).
    """
    cells = study.cells_at(scale)
    if only:
        cells = [cell for cell in cells if only in cell.name]
        if not cells:
            raise StudyError(f"--only={only!r} matches no cell of {study.name} at scale "
                             f"{scale}; cells are named like {study.cells_at(scale)[0].name!r}")
    seeds = tuple(study.seeds if seeds is None else seeds)
    scale_flags = tuple(study.scales[scale].flags)
    lines, keys = [], []
    for seed in seeds:  # seed 0 of every cell first: a cut study still has whole tables
        for cell in cells:
            binary = BINARY_ALIASES.get(cell.binary or study.binary, cell.binary or study.binary)
            flags = scale_flags + tuple(cell.flags) + (f"--seed={seed}",)
            line = shlex.join([binary, resolve_flagfile(cell.flagfile), *flags])
            if line not in lines:
                lines.append(line)
            keys.append((cell, seed, lines.index(line)))
    try:
        jobs = batch.parse_job_list("\n".join(lines))
    except batch.JobListError as error:
        raise StudyError(f"study {study.name} at scale {scale}: {error}") from None
    return [StudyRun(cell, seed, jobs[index]) for cell, seed, index in keys]


def unique_jobs(runs: Sequence[StudyRun]) -> List[batch.Job]:
    jobs = []
    for run in runs:
        if run.job not in jobs:
            jobs.append(run.job)
    return jobs


def output_folder(root: str, study: Study, scale: str) -> str:
    return os.path.join(root, study.name, scale)


# Reading results.

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[([^\]]*)\])?$")


def read_metric(results: Dict, metric: str) -> Optional[float]:
    """`metric` (see Cell) from a results dictionary; None if absent."""
    value = results
    for step in re.split(r"\.(?![^\[]*\])", metric):  # dots outside [...]
        match = _STEP.match(step)
        if not match or not isinstance(value, dict):
            return None
        value = value.get(match[1])
        selector = match[2]
        if selector is None:
            continue
        if not isinstance(value, list):
            return None
        if re.fullmatch(r"-?\d+", selector.strip()):
            index = int(selector)
            value = value[index] if -len(value) <= index < len(value) else None
            continue
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        value = next((item for item in value if isinstance(item, dict) and all(
            _same(item.get(key), text) for key, text in wanted.items())), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _same(value, text: str) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return math.isclose(float(value), float(text), rel_tol=1e-9, abs_tol=1e-12)
        except ValueError:
            return False
    return str(value) == text


def as_percent(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    return 100.0 * value if abs(value) <= 1.0 else value


@dataclasses.dataclass
class CellState:
    cell: Cell
    values: List[float]  # percent, finished seeds
    done: int
    running: int
    missing: int
    seconds: List[float]  # wall or train seconds of finished runs
    reference: Optional[Reference]
    stale: int = 0  # finished with other flags than the study's today: not counted
    remaining: List[float] = dataclasses.field(default_factory=list)  # weights remaining, %

    @property
    def total(self) -> int:
        return self.done + self.running + self.missing + self.stale


def _run_state(output: str, job: batch.Job) -> str:
    if batch.finished(output, job):
        return "stale" if stale_reason(output, job) else "done"
    directory = batch.run_dir(output, job)
    if os.path.isdir(directory) and any(name != ".lock" for name in os.listdir(directory)):
        return "running" if _locked(directory) else "started"
    return "missing"


def _locked(directory: str) -> bool:
    """Whether a process holds the run directory's lock (flock) now."""
    path = os.path.join(directory, ".lock")
    if not os.path.exists(path):
        return False
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(path, "a+") as stream:
            try:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def _wall_seconds(output: str) -> Dict[str, float]:
    """Job name -> wall seconds: those kept in walls.json (by ``run_study`` and ``pack``),
    updated by the last batch's summary (the runner's measure)."""
    seconds = {}
    try:
        with open(os.path.join(output, WALLS_FILE)) as stream:
            seconds.update({name: float(value) for name, value in json.load(stream).items()})
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    seconds.update(_summary_walls(output))
    return seconds


def _summary_walls(output: str) -> Dict[str, float]:
    """Job name -> wall seconds of the jobs the last batch in `output` ran."""
    seconds = {}
    try:
        with open(os.path.join(output, "summary.csv")) as stream:
            for row in csv.DictReader(stream):
                try:
                    seconds[row["job"]] = float(row["wall_seconds"])
                except (KeyError, TypeError, ValueError):
                    pass
    except OSError:
        pass
    return seconds


def cell_states(study: Study, scale: str, root: str, seeds=None, only: str = "") -> List[CellState]:
    runs = study_runs(study, scale, seeds, only)
    output = output_folder(root, study, scale)
    walls = _wall_seconds(output)
    states: Dict[str, CellState] = {}
    for run in runs:
        state = states.setdefault(run.cell.name, CellState(
            run.cell, [], 0, 0, 0, [], run.cell.published.get(scale)))
        status = _run_state(output, run.job)
        if status == "done":
            state.done += 1
            results = batch.read_results(output, run.job)
            value = as_percent(read_metric(results, run.cell.metric))
            if value is not None:
                state.values.append(value)
            remaining = batch._number(results.get("weights_remaining"))
            if remaining is not None:
                state.remaining.append(100 * remaining)
            seconds = walls.get(run.job.name) or batch._number(results.get("train_seconds"))
            if seconds:
                state.seconds.append(seconds)
        elif status == "stale":
            state.stale += 1
        elif status in ("running", "started"):
            state.running += 1
        else:
            state.missing += 1
    return list(states.values())


BEST = "best"


def with_best_rows(study: Study, scale: str, states: Sequence[CellState]) -> List[CellState]:
    """`states` plus, if the study has `best_over`, a row per group of cells that differ
    only in that axis: the finished cell with the best mean (its values), named
    AXIS=best, with the group's published number and the study's best_tolerance."""
    if not study.best_over:
        return list(states)
    groups: Dict[Tuple, List[CellState]] = {}
    for state in states:
        key = tuple(pair for pair in state.cell.axes if pair[0] != study.best_over)
        if len(key) < len(state.cell.axes):
            groups.setdefault(key, []).append(state)
    rows = list(states)
    for key, members in groups.items():
        finished = [state for state in members if state.values]
        best = max(finished, key=lambda state: sum(state.values) / len(state.values),
                   default=None)
        # The group's number only if every member quotes it (a number about one k is
        # not a best-k number).
        quoted = {state.reference for state in members}
        published = quoted.pop() if len(quoted) == 1 else None
        reference = (dataclasses.replace(published, tolerance=study.best_tolerance)
                     if published else None)
        axes = tuple((axis, BEST if axis == study.best_over else value)
                     for axis, value in members[0].cell.axes)
        cell = dataclasses.replace(members[0].cell, axes=axes, flags=(), published={})
        rows.append(CellState(cell, list(best.values) if best else [],
                              best.done if best else 0, 0, 0 if best else 1,
                              [], reference, remaining=list(best.remaining) if best else []))
    return rows


def estimate_seconds_left(study: Study, scale: str, root: str, seeds=None, only: str = "",
                          parallel: int = 1) -> Optional[float]:
    """Unfinished runs x the mean time of the finished ones / parallel; None if none finished."""
    runs = study_runs(study, scale, seeds, only)
    output = output_folder(root, study, scale)
    walls = _wall_seconds(output)
    finished, left = [], 0
    for job in unique_jobs(runs):
        if _run_state(output, job) == "done":
            seconds = walls.get(job.name) or batch._number(
                batch.read_results(output, job).get("train_seconds"))
            if seconds:
                finished.append(seconds)
        else:
            left += 1
    if not left:
        return 0.0
    if not finished:
        return None
    return left * (sum(finished) / len(finished)) / max(1, parallel)


# Tables and checks.

TABLE_FIELDS = ("cell", "scale", "seeds", "mean", "min", "max", "weights_remaining",
                "published", "tolerance", "source")


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table_rows(study: Study, scale: str, states: Sequence[CellState]) -> List[Dict[str, str]]:
    rows = []
    for state in states:
        values, ref = state.values, state.reference
        row = {"cell": state.cell.name, "scale": scale_label(scale),
               "seeds": f"{len(values)}/{state.total}",
               "mean": _fmt(sum(values) / len(values)) if values else "",
               "min": _fmt(min(values)) if values else "",
               "max": _fmt(max(values)) if values else "",
               "weights_remaining": (_fmt(sum(state.remaining) / len(state.remaining), 1)
                                     if state.remaining else ""),
               "published": _fmt(ref.value, 1) if ref else "",
               "tolerance": _fmt(ref.tolerance, 1) if ref and ref.tolerance is not None else "",
               "source": ref.source if ref else "no published number for this cell"}
        rows.append(row)
    return rows


def table_markdown(study: Study, scale: str, rows: Sequence[Dict[str, str]],
                   stale: int = 0) -> str:
    reduced = scale == "cpu"
    lines = [f"# {study.title}" + (f" ({REDUCED_LABEL} setting)" if reduced else ""), "",
             f"Study `{study.name}`, scale `{scale_label(scale)}`: {study.scales[scale].note}.",
             ""]
    if reduced:
        lines += ["**Reduced setting:** shorter training than the paper's; published numbers "
                  "are shown for orientation, and only cells that declare a tolerance at this "
                  "scale are checked.", ""]
    lines += [f"Metric: percent, mean and min-max over the finished seeds; `kept`: the "
              "weights remaining at the end (percent, mean; a method that stops short of its "
              "target sparsity shows it here). Regenerate with "
              f"`tf-supermask-study table {study.name} --scale={scale}`.", "",
              ] + ([f"{stale} finished runs were made with other flags than the study's "
                    "today (stale) and are not counted; `tf-supermask-study status` names "
                    "them.", ""] if stale else []) + [
              "| cell | seeds | mean | min-max | kept | published | tolerance | source |",
              "| --- | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        spread = f"{row['min']}-{row['max']}" if row["mean"] else "-"
        lines.append(f"| {row['cell']} | {row['seeds']} | {row['mean'] or '-'} | {spread} | "
                     f"{row['weights_remaining'] or '-'} | {row['published'] or '-'} | {row['tolerance'] or '-'} | "
                     f"{row['source'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[Dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def table_plot(study: Study, scale: str, states: Sequence[CellState], path: str):
    """Mean per cell with min-max bars, the published number as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [state.cell.name for state in states]
    height = max(2.5, 0.3 * len(names) + 1.2)
    figure, axis = plt.subplots(figsize=(8, height))
    for index, state in enumerate(states):
        if state.values:
            mean = sum(state.values) / len(state.values)
            axis.errorbar([mean], [index], xerr=[[mean - min(state.values)],
                                                 [max(state.values) - mean]],
                          fmt="o", color="C0", capsize=3,
                          label="measured (mean, min-max)" if index == 0 else None)
        if state.reference:
            axis.plot([state.reference.value], [index], "x", color="C3",
                      label="published" if not any(s.reference for s in states[:index]) else None)
    axis.set_yticks(range(len(names)))
    axis.set_yticklabels(names, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("percent")
    axis.set_title(f"{study.name}, {scale_label(scale)}", fontsize=9)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_table(study: Study, scale: str, root: str, output_prefix: str = "", seeds=None,
                only: str = "", plot: bool = True) -> List[str]:
    """Writes PREFIX.md, PREFIX.csv and PREFIX.png; returns their paths."""
    states = with_best_rows(study, scale, cell_states(study, scale, root, seeds, only))
    rows = table_rows(study, scale, states)
    prefix = output_prefix or os.path.join(output_folder(root, study, scale), "table")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    write_atomic(prefix + ".md", table_markdown(study, scale, rows,
                                                sum(state.stale for state in states)))
    write_atomic(prefix + ".csv", table_csv(rows))
    paths = [prefix + ".md", prefix + ".csv"]
    if plot:
        table_plot(study, scale, states, prefix + ".png")
        paths.append(prefix + ".png")
    return paths


def write_index(all_studies: Mapping[str, Study], root: str, scales: Sequence[str] = SCALES,
                plot: bool = True) -> List[str]:
    """Writes every study's table at each of `scales` under `root` (ROOT/STUDY/SCALE/table.*)
    and ROOT/README.md, one row per study and scale: cells with a finished run, runs
    finished, their summed wall time, and a link to the table. Returns the paths."""
    lines = ["# Study tables", "",
             "Each table is made from the run records beside it (results.json, flags.txt, "
             "metrics.csv, walls.json) by `tf-supermask-study table all "
             f"--root={root}`; do not edit. `cpu` is a reduced setting; `full` is the "
             "paper's schedule. Wall time per run: the batch runner's measure, or a "
             "record's `train_seconds` where the runner did not time the whole run.", "",
             "| study | scale | cells with a run | runs finished | wall time per run (mean) "
             "| table |", "| --- | --- | ---: | ---: | ---: | --- |"]
    paths = []
    for study in all_studies.values():
        for scale in scales:
            if scale not in study.scales:
                continue
            states = cell_states(study, scale, root)
            if not any(state.done or state.stale for state in states):
                lines.append(f"| {study.name} | {scale_label(scale)} | 0/{len(states)} | 0 | - "
                             "| not run yet |")
                continue
            paths += write_table(study, scale, root, plot=plot)
            output = output_folder(root, study, scale)
            walls = _wall_seconds(output)
            jobs = unique_jobs(study_runs(study, scale))
            done = [job for job in jobs if _run_state(output, job) == "done"]
            timed = [seconds for seconds in (walls.get(job.name) or batch._number(
                batch.read_results(output, job).get("train_seconds")) for job in done)
                if seconds]
            with_run = sum(bool(state.values) for state in states)
            link = os.path.relpath(os.path.join(output, "table.md"), root)
            per_run = (f"{batch.format_seconds(sum(timed) / len(timed))} ({len(timed)} timed)"
                       if timed else "-")
            lines.append(f"| {study.name} | {scale_label(scale)} | {with_run}/{len(states)} | "
                         f"{len(done)}/{len(jobs)} | {per_run} | [{link}]({link}) |")
    path = os.path.join(root, "README.md")
    write_atomic(path, "\n".join(lines) + "\n")
    return paths + [path]


@dataclasses.dataclass
class CheckLine:
    cell: str
    verdict: str  # ok, OUT, unchecked
    text: str


def check(study: Study, scale: str, root: str, seeds=None, only: str = "") -> List[CheckLine]:
    """Per finished cell: within its tolerance of the published number, or not."""
    lines = []
    for state in with_best_rows(study, scale, cell_states(study, scale, root, seeds, only)):
        if not state.values:
            continue
        mean = sum(state.values) / len(state.values)
        ref = state.reference
        measured = f"{mean:.2f} over {len(state.values)} seed(s)"
        if ref is None or ref.tolerance is None:
            why = ("no published number" if ref is None
                   else f"published {ref.value:.1f} has no tolerance at this scale")
            lines.append(CheckLine(state.cell.name, "unchecked", f"{measured}; {why}"))
            continue
        gap = mean - ref.value
        verdict = "ok" if abs(gap) <= ref.tolerance else "OUT"
        lines.append(CheckLine(state.cell.name, verdict,
                               f"{measured} vs published {ref.value:.1f} ({gap:+.2f}, "
                               f"tolerance {ref.tolerance:.1f}; {ref.source})"))
    return lines


# Running.

class _EtaStream:
    """Passes the batch runner's progress lines on, adding an estimate of the time left."""

    _LEFT = re.compile(r"(\d+) left$")

    def __init__(self, stream, parallel: int):
        self.stream, self.parallel = stream, max(1, parallel)
        self.seconds: List[float] = []
        self.buffer = ""

    def write(self, text: str):
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            match = re.search(r" done +\S+ in (?:(\d+)h)?(\d+)m(\d+)s", line)
            if match:
                hours, minutes, seconds = (int(group or 0) for group in match.groups())
                self.seconds.append(3600 * hours + 60 * minutes + seconds)
            left = self._LEFT.search(line)
            if left and self.seconds and int(left[1]):
                eta = int(left[1]) * sum(self.seconds) / len(self.seconds) / self.parallel
                line += f" (about {batch.format_seconds(eta)} to go)"
            self.stream.write(line + "\n")
        return len(text)

    def flush(self):
        self.stream.flush()


def run_study(study: Study, scale: str, root: str, seeds=None, only: str = "",
              parallel: int = 1, time_limit: float = 0.0, extra_flags: Sequence[str] = (),
              dry_run: bool = False, rerun_stale: bool = False,
              stream=None) -> batch.BatchReport:
    """Runs the study's unfinished runs through the batch runner (see run_batch).

    A finished run made with other flags than the job has today (``stale_reason``) is
    not counted; with `rerun_stale` its directory is set aside (renamed NAME.stale-N)
    and the run made again, otherwise it is reported and left alone.
    """
    import sys

    stream = stream or sys.stdout
    runs = study_runs(study, scale, seeds, only)
    output = output_folder(root, study, scale)
    stale = stale_runs(study, scale, root, seeds, only)
    for name, reason in stale.items():
        stream.write(f"stale: {name} ({reason})" + (
            "; set aside and run again\n" if rerun_stale and not dry_run else
            "; not counted (--rerun_stale runs it again)\n"))
    estimate = estimate_seconds_left(study, scale, root, seeds, only, parallel)
    label = scale_label(scale)
    stream.write(f"study {study.name} at scale {label}: {len(runs)} cell-seeds in "
                 f"{len(unique_jobs(runs))} runs"
                 + (f"; about {batch.format_seconds(estimate)} left at the mean time of the "
                    "finished runs" if estimate else "") + "\n")
    stream.flush()

    def run_batch():
        return batch.run_batch(unique_jobs(runs), output, parallel=parallel,
                               extra_flags=tuple(extra_flags), dry_run=dry_run,
                               time_limit=time_limit, stream=_EtaStream(stream, parallel))

    if dry_run:
        return run_batch()
    with batch.output_locked(output):  # one runner per folder, from the first change on
        if stale and rerun_stale:
            set_aside(output, list(stale))
        try:
            return run_batch()
        finally:  # the next batch's summary forgets the jobs it skips: keep their times
            ran = _summary_walls(output)
            _merge_walls(output, {job.name: ran[job.name] for job in unique_jobs(runs)
                                  if job.name in ran and batch.finished(output, job)})


# Declarations from JSON (a user's own studies, and the tests').

def study_from_dict(data: Dict) -> Study:
    """A Study from its JSON form: the dataclasses' fields, axes as an object, published
    as {scale: {"value", "source", "tolerance"}}."""
    try:
        cells = []
        for raw in data["cells"]:
            published = {scale: Reference(float(ref["value"]), str(ref.get("source", "")),
                                          None if ref.get("tolerance") is None
                                          else float(ref["tolerance"]))
                         for scale, ref in (raw.get("published") or {}).items()}
            cells.append(Cell(axes=tuple((str(k), str(v)) for k, v in raw["axes"].items()),
                              flagfile=str(raw["flagfile"]), flags=tuple(raw.get("flags", ())),
                              scales=tuple(raw.get("scales", data["scales"])),
                              metric=raw.get("metric", "test_accuracy"), published=published,
                              binary=raw.get("binary", "")))
        scales = {name: Scale(tuple(value.get("flags", ())), value.get("note", ""))
                  for name, value in data["scales"].items()}
        study = Study(name=str(data["name"]), title=str(data.get("title", data["name"])),
                      binary=str(data.get("binary", "train")), cells=tuple(cells),
                      scales=scales, description=str(data.get("description", "")),
                      seeds=tuple(int(seed) for seed in data.get("seeds", (0, 1, 2))),
                      best_over=str(data.get("best_over", "")),
                      best_tolerance=(None if data.get("best_tolerance") is None
                                      else float(data["best_tolerance"])))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StudyError(f"bad study declaration: {type(error).__name__}: {error}") from None
    validate_declaration(study)
    return study


def validate_declaration(study: Study):
    """Problems a declaration can have without running anything (flagfiles are checked
    when the job list is built)."""
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", study.name):
        problems.append(f"name {study.name!r} must be letters, digits, '_', '.', '-'")
    unknown = set(study.scales) - set(SCALES)
    if unknown:
        problems.append(f"unknown scales {sorted(unknown)}; use {', '.join(SCALES)}")
    binary = BINARY_ALIASES.get(study.binary, study.binary)
    if binary not in batch.BINARIES:
        problems.append(f"binary {study.binary!r} is not one of {', '.join(batch.BINARIES)}")
    names = [cell.name for cell in study.cells]
    if len(set(names)) != len(names):
        problems.append("two cells have the same axes")
    for cell in study.cells:
        for scale in cell.scales:
            if scale not in study.scales:
                problems.append(f"cell {cell.name!r} names scale {scale!r}, which the study "
                                "does not declare")
        for scale in cell.published:
            if scale not in cell.scales:
                problems.append(f"cell {cell.name!r} has a published number at {scale!r}, "
                                "where it does not run")
    if problems:
        raise StudyError(f"study {study.name!r}: " + "; ".join(problems))


def load_study_file(path: str) -> Dict[str, Study]:
    """Studies from a JSON file holding one study or a list of them."""
    try:
        with open(path) as stream:
            data = json.load(stream)
    except OSError as error:
        raise StudyError(f"cannot read --study_file={path}: {error.strerror}") from None
    except ValueError as error:
        raise StudyError(f"--study_file={path} is not JSON: {error}") from None
    studies = [study_from_dict(item) for item in (data if isinstance(data, list) else [data])]
    return {study.name: study for study in studies}


def config_class(binary: str):
    """The configuration class a binary parses (imports no Keras)."""
    binary = BINARY_ALIASES.get(binary, binary)
    if binary == "train":
        from tf_supermask.training.config import TrainConfig

        return TrainConfig
    from tf_supermask.experiments import config

    return {"lottery": config.LotteryConfig, "prune_init": config.PruneInitConfig,
            "finetune": config.FinetuneConfig}[binary]


def job_config(job: batch.Job):
    """The configuration the job's binary builds from its flagfile and flags today.

    Raises:
      absl.flags.Error, ValueError, TypeError: flags the binary would refuse.
    """
    from absl import flags as absl_flags

    from tf_supermask.config import define_flags, from_flags

    values = absl_flags.FlagValues()
    define_flags(config_class(job.binary), values)
    values(["prog", f"--flagfile={job.flagfile_path}", *job.flags,
            f"--run_dir=/nonexistent/{job.name}"])
    return from_flags(config_class(job.binary), values)


def validate_runs(runs: Sequence[StudyRun]) -> List[str]:
    """Problems parsing each run's flags into its binary's configuration (nothing runs)."""
    from absl import flags as absl_flags

    problems = []
    for job in unique_jobs(runs):
        try:
            job_config(job)
        except (absl_flags.Error, ValueError, TypeError) as error:
            problems.append(f"{job.name}: {error}")
    return problems


# Whether a finished run is still the study's run: its flags.txt against the flags the
# job parses to today.

# Fields that say where and how a run executed, not what it computes: a GPU window adds
# --data_dir, a cluster another --strategy.
EXECUTION_FIELDS = RUN_CONTROL_FIELDS + ("data_dir", "strategy", "jit_compile")
_EXPECTED: Dict[Tuple, Tuple[Dict[str, str], Dict[str, str]]] = {}


def _flag_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _same_flag(a, b) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()


def expected_flags(job: batch.Job) -> Tuple[Dict[str, str], Dict[str, str]]:
    """({flag: text} that decide what the job computes (execution fields left out),
    {field: default text} for fields a flags.txt may lack (written before the field
    existed))."""
    key = (job.binary, job.flagfile_path, tuple(job.flags))
    if key not in _EXPECTED:
        from tf_supermask.config import to_flagfile
        from tf_supermask.training.run_dir import parse_flagfile

        config = job_config(job)
        decisive = parse_flagfile(to_flagfile(config, exclude=EXECUTION_FIELDS))
        defaults = {field.name: _flag_text(field.default)
                    for field in dataclasses.fields(config)
                    if field.default is not dataclasses.MISSING}
        _EXPECTED[key] = (decisive, defaults)
    return _EXPECTED[key]


def stale_reason(output: str, job: batch.Job) -> str:
    """"" when the finished run in `output` was made with the flags the job has today;
    otherwise why not (the flags that differ). A field missing from an older flags.txt
    counts as its default."""
    from tf_supermask.training.run_dir import parse_flagfile

    try:
        with open(os.path.join(batch.run_dir(output, job), FLAGS_FILE)) as stream:
            run_flags = parse_flagfile(stream.read())
    except OSError:
        return f"no {FLAGS_FILE}"
    try:
        decisive, defaults = expected_flags(job)
    except Exception as error:  # the job no longer parses: its runs cannot be current
        return f"the job's flags no longer parse ({type(error).__name__})"
    differ = [name for name, value in decisive.items()
              if not _same_flag(run_flags.get(name, defaults.get(name)), value)]
    return ("flags differ: " + ", ".join(differ)) if differ else ""


def stale_runs(study: Study, scale: str, root: str, seeds=None, only: str = "") -> Dict[str, str]:
    """Job name -> why, for the study's finished runs that are stale."""
    output = output_folder(root, study, scale)
    stale = {}
    for job in unique_jobs(study_runs(study, scale, seeds, only)):
        if batch.finished(output, job):
            reason = stale_reason(output, job)
            if reason:
                stale[job.name] = reason
    return stale


def set_aside(output: str, names: Sequence[str]) -> List[str]:
    """Renames stale run directories to NAME.stale-N (kept, no longer counted), so the
    next run makes them again; returns the new paths."""
    moved = []
    for name in names:
        source = os.path.join(output, name)
        number = 1
        while os.path.exists(f"{source}.stale-{number}"):
            number += 1
        os.rename(source, f"{source}.stale-{number}")
        moved.append(f"{source}.stale-{number}")
    return moved


# Records: what a finished run leaves that tables need, packed to travel (a GPU window's
# files) or to be committed, and unpacked under a root.

RECORD_FILES = (RESULTS_FILE, FLAGS_FILE, "metrics.csv")
WALLS_FILE = "walls.json"
# Left out of a cut run's directory: events, the lock, a replaced run's files, temporaries.
NOT_PACKED = ("tensorboard", ".lock", ".replaced", ".tmp-")


def _packed(name: str) -> bool:
    return not (name in NOT_PACKED or name.startswith(NOT_PACKED[2:]))


@dataclasses.dataclass
class PackReport:
    records: List[str]
    partial: List[str]
    skipped: List[str]  # cut runs left out (over the size budget)
    destination: str


def _folder_bytes(path: str) -> int:
    total = 0
    for parent, folders, files in os.walk(path):
        folders[:] = [name for name in folders if _packed(name)]
        total += sum(os.path.getsize(os.path.join(parent, name)) for name in files
                     if _packed(name))
    return total


def pack(study: Study, scale: str, root: str, destination: str, seeds=None, only: str = "",
         partial_destination: str = "", partial_mib: float = 0.0) -> PackReport:
    """Packs the study's runs under `root` for another machine or for committing.

    Finished runs give their records (results.json, flags.txt, metrics.csv) and their
    wall seconds (walls.json) to `destination`, a .tar.gz file or a folder (records are
    added to what it holds). With `partial_destination` (a .tar.gz), cut runs give their
    whole directory (checkpoints; not TensorBoard events) up to `partial_mib` MiB in all,
    so that they resume where ``unpack`` puts them. Paths inside are STUDY/SCALE/JOB/FILE.
    """
    output = output_folder(root, study, scale)
    prefix = os.path.join(study.name, scale)
    walls = _wall_seconds(output)
    records: List[Tuple[str, str]] = []  # (source path, name inside)
    partial: List[Tuple[str, str]] = []
    report = PackReport([], [], [], destination)
    budget = partial_mib * 1048576
    for job in unique_jobs(study_runs(study, scale, seeds, only)):
        directory = batch.run_dir(output, job)
        state = _run_state(output, job)
        if state in ("done", "stale"):
            report.records.append(job.name)
            records += [(os.path.join(directory, name), os.path.join(prefix, job.name, name))
                        for name in RECORD_FILES
                        if os.path.isfile(os.path.join(directory, name))]
        elif state == "started" and partial_destination:
            size = _folder_bytes(directory)
            if size > budget:
                report.skipped.append(job.name)
                continue
            budget -= size
            report.partial.append(job.name)
            for parent, folders, names in os.walk(directory):
                folders[:] = [name for name in folders if _packed(name)]
                for name in names:
                    if _packed(name):
                        path = os.path.join(parent, name)
                        partial.append((path, os.path.join(prefix, job.name,
                                                           os.path.relpath(path, directory))))
    walls = {name: walls[name] for name in report.records if name in walls}
    if destination.endswith((".tar.gz", ".tgz")):
        _write_archive(destination, records, {os.path.join(prefix, WALLS_FILE): walls})
    else:
        for path, name in records:
            with open(path, "rb") as stream:
                _write_bytes(os.path.join(destination, name), stream.read())
        _merge_walls(os.path.join(destination, prefix), walls)
    if partial_destination:
        _write_archive(partial_destination, partial, {})
    return report


def _write_archive(destination: str, files: Sequence[Tuple[str, str]], documents: Dict):
    import tarfile

    with atomic_file(destination) as temp:
        with tarfile.open(temp, "w:gz") as archive:
            for path, name in files:
                archive.add(path, arcname=name, recursive=False)
            for name, document in documents.items():
                data = json.dumps(document, indent=1, sort_keys=True).encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def _write_bytes(path: str, data: bytes):
    with atomic_file(path) as temp:
        with open(temp, "wb") as stream:
            stream.write(data)


def _merge_walls(folder: str, walls: Dict[str, float]):
    path = os.path.join(folder, WALLS_FILE)
    try:
        with open(path) as stream:
            merged = json.load(stream)
    except (OSError, ValueError):
        merged = {}
    merged.update(walls)
    if merged:
        write_atomic(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")


def unpack(source: str, root: str) -> List[str]:
    """Extracts an archive made by ``pack`` under `root` (records next to runs there;
    cut runs' directories, which resume); returns the run folders it wrote.

    Raises:
      StudyError: not such an archive, or a member that would land outside `root`.
    """
    import tarfile

    try:
        archive = tarfile.open(source, "r:gz")
    except (OSError, tarfile.TarError) as error:
        raise StudyError(f"cannot read {source} as a study archive: {error}") from None
    written = []
    with archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if (member.name.startswith("/") or ".." in parts or len(parts) < 3
                    or not (member.isfile() or member.isdir())):
                raise StudyError(f"{source}: member {member.name!r} is not a study record")
            if parts[-1] == WALLS_FILE and len(parts) == 3:
                walls = json.load(archive.extractfile(member))
                _merge_walls(os.path.join(root, *parts[:2]), walls)
                continue
            if member.isfile():
                _write_bytes(os.path.join(root, *parts), archive.extractfile(member).read())
                folder = os.path.join(root, *parts[:3])
                if folder not in written:
                    written.append(folder)
    return written

