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

from tf_supermask.files import write_atomic
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


def _run_state(output: str, job: batch.Job) -> str:
    if batch.finished(output, job):
        return "done"
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
    """Job name -> wall seconds from the batch summary (the runner's measure)."""
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
            seconds = walls.get(run.job.name) or batch._number(results.get("train_seconds"))
            if seconds:
                state.seconds.append(seconds)
        elif status in ("running", "started"):
            state.running += 1
        else:
            state.missing += 1
    return list(states.values())


def estimate_seconds_left(study: Study, scale: str, root: str, seeds=None, only: str = "",
                          parallel: int = 1) -> Optional[float]:
    """Unfinished runs x the mean time of the finished ones / parallel; None if none finished."""
    runs = study_runs(study, scale, seeds, only)
    output = output_folder(root, study, scale)
    walls = _wall_seconds(output)
    finished, left = [], 0
    for job in unique_jobs(runs):
        if batch.finished(output, job):
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

TABLE_FIELDS = ("cell", "scale", "seeds", "mean", "min", "max", "published", "tolerance",
                "source")


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table_rows(study: Study, scale: str, states: Sequence[CellState]) -> List[Dict[str, str]]:
    rows = []
    for state in states:
        values, ref = state.values, state.reference
        row = {"cell": state.cell.name, "scale": scale_label(scale),
               "seeds": f"{len(values)}/{state.done + state.running + state.missing}",
               "mean": _fmt(sum(values) / len(values)) if values else "",
               "min": _fmt(min(values)) if values else "",
               "max": _fmt(max(values)) if values else "",
               "published": _fmt(ref.value, 1) if ref else "",
               "tolerance": _fmt(ref.tolerance, 1) if ref and ref.tolerance is not None else "",
               "source": ref.source if ref else "none given in MISSION.md"}
        rows.append(row)
    return rows


def table_markdown(study: Study, scale: str, rows: Sequence[Dict[str, str]]) -> str:
    reduced = scale == "cpu"
    lines = [f"# {study.title}" + (f" ({REDUCED_LABEL} setting)" if reduced else ""), "",
             f"Study `{study.name}`, scale `{scale_label(scale)}`: {study.scales[scale].note}.",
             ""]
    if reduced:
        lines += ["**Reduced setting:** shorter training than the paper's; published numbers "
                  "are shown for orientation, and only cells that declare a tolerance at this "
                  "scale are checked.", ""]
    lines += [f"Metric: percent, mean and min-max over the finished seeds. Regenerate with "
              f"`tf-supermask-study table {study.name} --scale={scale}`.", "",
              "| cell | seeds | mean | min-max | published | tolerance | source |",
              "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for row in rows:
        spread = f"{row['min']}-{row['max']}" if row["mean"] else "-"
        lines.append(f"| {row['cell']} | {row['seeds']} | {row['mean'] or '-'} | {spread} | "
                     f"{row['published'] or '-'} | {row['tolerance'] or '-'} | "
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
    states = cell_states(study, scale, root, seeds, only)
    rows = table_rows(study, scale, states)
    prefix = output_prefix or os.path.join(output_folder(root, study, scale), "table")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    write_atomic(prefix + ".md", table_markdown(study, scale, rows))
    write_atomic(prefix + ".csv", table_csv(rows))
    paths = [prefix + ".md", prefix + ".csv"]
    if plot:
        table_plot(study, scale, states, prefix + ".png")
        paths.append(prefix + ".png")
    return paths


@dataclasses.dataclass
class CheckLine:
    cell: str
    verdict: str  # ok, OUT, unchecked
    text: str


def check(study: Study, scale: str, root: str, seeds=None, only: str = "") -> List[CheckLine]:
    """Per finished cell: within its tolerance of the published number, or not."""
    lines = []
    for state in cell_states(study, scale, root, seeds, only):
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
              dry_run: bool = False, stream=None) -> batch.BatchReport:
    """Runs the study's unfinished runs through the batch runner (see run_batch)."""
    import sys

    stream = stream or sys.stdout
    runs = study_runs(study, scale, seeds, only)
    output = output_folder(root, study, scale)
    estimate = estimate_seconds_left(study, scale, root, seeds, only, parallel)
    label = scale_label(scale)
    stream.write(f"study {study.name} at scale {label}: {len(runs)} cell-seeds in "
                 f"{len(unique_jobs(runs))} runs"
                 + (f"; about {batch.format_seconds(estimate)} left at the mean time of the "
                    "finished runs" if estimate else "") + "\n")
    stream.flush()
    return batch.run_batch(unique_jobs(runs), output, parallel=parallel,
                           extra_flags=tuple(extra_flags), dry_run=dry_run,
                           time_limit=time_limit, stream=_EtaStream(stream, parallel))


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
                      seeds=tuple(int(seed) for seed in data.get("seeds", (0, 1, 2))))
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


def validate_runs(runs: Sequence[StudyRun]) -> List[str]:
    """Problems parsing each run's flags into its binary's configuration (nothing runs)."""
    from absl import flags as absl_flags

    from tf_supermask.config import define_flags, from_flags

    problems = []
    for job in unique_jobs(runs):
        values = absl_flags.FlagValues()
        define_flags(config_class(job.binary), values)
        try:
            values(["prog", f"--flagfile={job.flagfile_path}", *job.flags,
                    f"--run_dir=/nonexistent/{job.name}"])
            from_flags(config_class(job.binary), values)
        except (absl_flags.Error, ValueError, TypeError) as error:
            problems.append(f"{job.name}: {error}")
    return problems

