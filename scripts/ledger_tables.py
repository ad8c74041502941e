#!/usr/bin/env python3
"""The GPU results ledger's tables: what they hold, the job list that fills them, and the tables.

    python scripts/ledger_tables.py                # tables from runs/results/ledger/runs
    python scripts/ledger_tables.py --write_jobs   # (re)write jobs/ledger.txt from TABLES
    python scripts/ledger_tables.py --check_jobs   # exit 1 if jobs/ledger.txt is out of date

Four tables, each a grid of cells; a cell is one job template run with seeds
0, 1 and 2 (see scripts/ledger.py for the windows that run them):

  a  CIFAR-10 reproductions: dense and Zhou et al.'s learned supermask on
     conv2/4/6, edge-popup on conv2/4/6/8 at k = 0.3, 0.5, 0.7, beside the
     published numbers of MISSION.md;
  b  PatchesInit (every conv layer; first block only, the deep-network
     variant) against Kaiming normal and signed Kaiming constant weights,
     edge-popup's recipe, conv2/4/6/8, k = 0.1, 0.3, 0.5, 0.7;
  c  Liu et al.'s comparison on ResNet-20 (lottery ticket, late rewinding,
     fine-tuning at equal epochs; pretraining lr 0.1 and 0.01; 50/70/90 %
     pruned), on a schedule shortened to COMPARE_EPOCHS + COMPARE_EPOCHS;
  d  pruning at initialization on conv4: every method and its shuffled twin
     at 90 and 98 % pruned.

The job list orders the jobs by value: table a before b, c and d; within a
table seed 0 of every cell before seed 1 (and, in b, k = 0.5 first), so a
window cut short still completes whole cells. Two cells whose jobs are the same
experiment (same binary and decisive flags, e.g. edge-popup at k = 0.5 and the
signed-constant baseline of table b) share one job.

Each table is written as runs/results/ledger/<name>.md (mean [min, max] over
the finished seeds and their count, the published number beside each cell,
missing cells marked), <name>.csv (one line per run) and <name>.png.
"""

import argparse
import collections
import dataclasses
import io
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ledger  # noqa: E402

SEEDS = (0, 1, 2)
MODELS = ("conv2", "conv4", "conv6", "conv8")
EDGEPOPUP_K = (0.3, 0.5, 0.7)
PATCHES_K = (0.5, 0.1, 0.3, 0.7)  # k = 0.5 first: the comparison that matters most
COMPARE_LRS = (0.1, 0.01)
COMPARE_SPARSITIES = (0.5, 0.7, 0.9)
# Liu et al. train 150 + 150 epochs with lr x0.1 at epochs 80 and 120 and rewind to
# epoch 2; one such job (dense plus three arms) does not fit a 10-minute GPU window, so
# the ledger keeps the shape at a fifth of the length.
COMPARE_EPOCHS = 30
COMPARE_MILESTONES = "16,24"
COMPARE_REWIND_EPOCH = 1
PRUNE_SPARSITIES = (0.9, 0.98)
# MISSION.md: edge-popup at its best k, read off Ramanujan et al.'s figure.
PUBLISHED_BEST_K = {"conv2": "~77.5", "conv4": "~86", "conv6": "~88", "conv8": "~88.5"}
MISSING = "missing"
NOT_APPLICABLE = "-"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell: a job template (binary, flagfile, flags without --seed) and what to read.

    Attributes:
      value: "test_accuracy", "dense_test_accuracy", or "arm:<name>" (a comparison's arm).
      published: the published number shown beside the cell ("" when none).
      x: the cell's position on the table's plot (k, or the fraction pruned).
      series: the plot line the cell belongs to.
    """

    row: str
    column: str
    binary: str
    flagfile: str
    flags: tuple = ()
    value: str = "test_accuracy"
    published: str = ""
    requires: str = ""
    x: float = 0.0
    series: str = ""
    panel: str = ""

    def job_line(self, seed):
        parts = ([] if self.binary == "train" else [self.binary])
        return " ".join(parts + [self.flagfile, *self.flags, f"--seed={seed}"])


@dataclasses.dataclass
class Table:
    name: str
    title: str
    row_header: str
    rows: list
    columns: list
    cells: list
    # (seed, cell) pairs in the order the job list runs them.
    order: list
    notes: list = dataclasses.field(default_factory=list)
    x_label: str = ""
    panels: tuple = ("",)


def _exists(path):
    return os.path.isfile(os.path.join(ledger.REPO, path))


def _edgepopup(model):
    """Flagfile and flags of edge-popup on `model` (conv8 borrows conv6's flagfile if needed)."""
    own = f"flags/edgepopup_{model}.cfg"
    if _exists(own):
        return own, ()
    return "flags/edgepopup_conv6.cfg", (f"--model={model}",)


def table_a():
    published = {"dense": {"conv2": "69.2", "conv4": "75.4", "conv6": "78.3"},
                 "zhou": {"conv2": "66.0", "conv4": "72.5", "conv6": "76.5"}}
    rows = ["dense (Adam; Frankle & Carbin, Zhou et al.)",
            "learned supermask (Zhou et al.: signed constant, rescaling)"]
    rows += [f"edge-popup k={k}" for k in EDGEPOPUP_K]
    cells = []
    for model in MODELS[:3]:
        cells.append(Cell(rows[0], model, "train", f"flags/dense_{model}.cfg",
                          published=published["dense"][model], series="dense", panel=model))
        cells.append(Cell(rows[1], model, "train", f"flags/zhou_supermask_{model}.cfg",
                          published=published["zhou"][model], series="zhou", panel=model))
    for model in MODELS:
        flagfile, flags = _edgepopup(model)
        for k in EDGEPOPUP_K:
            cells.append(Cell(f"edge-popup k={k}", model, "train", flagfile,
                              flags + (f"--k={k}",), requires=ledger.FIDELITY, x=k,
                              series=model, published=""))
    baselines = [cell for cell in cells if not cell.requires]
    edgepopup = [cell for cell in cells if cell.requires]
    order = [(seed, cell) for seed in SEEDS for group in (baselines, edgepopup) for cell in group]
    notes = [
        "Published numbers: MISSION.md (Zhou et al. and Frankle & Carbin for dense and the "
        "learned supermask; edge-popup's best k read off Ramanujan et al.'s figure, hence ~). "
        "The row 'edge-popup, best k' takes the k with the best mean.",
        "Data: our JPEG-recompressed CIFAR-10 copy (../shared/datasets), 50,000 training and "
        "10,000 test images; numbers on it can sit slightly below published ones.",
        "Recipes: flags/dense_conv*.cfg, flags/zhou_supermask_conv*.cfg, "
        "flags/edgepopup_conv*.cfg (L2 weight decay, reference score init, per-epoch "
        "cosine; conv8 uses " + ("its own flagfile" if _exists("flags/edgepopup_conv8.cfg")
                                  else "conv6's flagfile with --model=conv8") + ").",
        "Earlier single-seed H100 results (runs/results/reproduce_cifar10_h100.md) are not "
        "counted: they ran with the data-order bug fixed in 9a8783f, before the fidelity "
        "fixes, and kept no per-run files.",
    ]
    return Table("a_cifar10_reproductions", "a. CIFAR-10 reproductions", "method",
                 rows + ["edge-popup, best k"], list(MODELS), cells, order, notes,
                 x_label="k (fraction of weights kept)")


PATCHES_INITS = (
    ("PatchesInit, every conv layer", ("--init=patches", "--patches_layers=0")),
    ("PatchesInit, first block (deep-network variant)", ("--init=patches", "--patches_layers=2")),
    ("Kaiming normal", ("--init=kaiming_normal",)),
    ("signed Kaiming constant", ("--init=signed_kaiming_constant",)),
)


def table_b():
    rows, cells = [], []
    for model in MODELS:
        for label, flags in PATCHES_INITS:
            # conv2 has one block: its first-block variant is the every-layer run.
            if model == "conv2" and "--patches_layers=2" in flags:
                continue
            rows.append(f"{model}: {label}")
            for k in PATCHES_K:
                cells.append(Cell(f"{model}: {label}", f"k={k}", "train",
                                  f"flags/patches_{model}.cfg", flags + (f"--k={k}",),
                                  requires=ledger.FIDELITY, x=k, series=label, panel=model))
    first = [cell for cell in cells if cell.x == PATCHES_K[0]]
    rest = [cell for cell in cells if cell.x != PATCHES_K[0]]
    order = [(seed, cell) for seed in SEEDS for group in (first, rest) for cell in group]
    notes = [
        "No published numbers: the thesis (Rencoret, 2020) is not available here, and "
        "PatchesInit is our design from its description (README, PatchesInit).",
        "Every run is edge-popup's recipe (flags/patches_conv*.cfg: top-k supermask, SGD lr "
        "0.1 per-epoch cosine, momentum 0.9, L2 weight decay 1e-4, batch 128, 100 epochs, "
        "augmentation); only --init (and --patches_layers) change. The signed Kaiming "
        "constant cells at k = 0.3, 0.5, 0.7 are the same runs as table a's edge-popup cells "
        "when the two flagfiles agree.",
        "conv2 has one block, so its first-block variant is its every-layer run.",
    ]
    return Table("b_patches_init", "b. PatchesInit against random initializations (CIFAR-10)",
                 "model: initialization", rows, [f"k={k}" for k in sorted(PATCHES_K)], cells,
                 order, notes, x_label="k (fraction of weights kept)", panels=MODELS)


ARMS = (("dense", "dense run (before pruning)"), ("lottery", "lottery ticket (initial weights)"),
        ("rewind", f"late rewinding (epoch {COMPARE_REWIND_EPOCH})"),
        ("finetune", "fine-tuning (trained weights)"))


def table_c():
    rows, cells = [], []
    schedule = (f"--epochs={COMPARE_EPOCHS}", f"--finetune_epochs={COMPARE_EPOCHS}",
                f"--lr_milestones={COMPARE_MILESTONES}",
                f"--rewind_epoch={COMPARE_REWIND_EPOCH}")
    for lr in COMPARE_LRS:
        for arm, label in ARMS:
            rows.append(f"lr {lr}: {label}")
            for sparsity in COMPARE_SPARSITIES:
                value = "dense_test_accuracy" if arm == "dense" else f"arm:{arm}"
                cells.append(Cell(f"lr {lr}: {label}", f"{sparsity:.0%} pruned", "finetune",
                                  "flags/finetune_compare_resnet20_cifar10.cfg",
                                  (f"--lr={lr}", f"--sparsities={sparsity}") + schedule,
                                  value=value, requires=ledger.FIDELITY, x=sparsity,
                                  series=label.split(" (")[0], panel=f"lr {lr}"))
    order = [(seed, cell) for seed in SEEDS for cell in cells]
    notes = [
        f"Shortened schedule, same shape: {COMPARE_EPOCHS} pretraining epochs and "
        f"{COMPARE_EPOCHS} retraining epochs per arm, lr x0.1 at epochs {COMPARE_MILESTONES} "
        f"(Liu et al.: 150 + 150, at 80 and 120), late rewinding to epoch "
        f"{COMPARE_REWIND_EPOCH} (theirs: 2 of 150); SGD momentum 0.9, L2 weight decay 1e-4, "
        "batch 128, crop and flip, one-shot layer-wise magnitude pruning, first conv unpruned "
        "(flags/finetune_compare_resnet20_cifar10.cfg). 150 + 150 epochs for every arm would "
        "take about ten times the GPU time of a window per job.",
        "One job per pretraining lr, sparsity and seed (each trains its own dense run, so "
        "a job fits a window); the dense row is that run's accuracy.",
        "No published numbers are listed in MISSION.md for this table; Liu et al.'s claim "
        "is qualitative: with lr 0.1 fine-tuning beats the ticket at every sparsity, with "
        "lr 0.01 tickets do well.",
    ]
    return Table("c_compare_resnet20", "c. Liu et al.: lottery ticket vs late rewinding vs "
                 "fine-tuning, ResNet-20 on CIFAR-10", "pretraining lr: arm", rows,
                 [f"{s:.0%} pruned" for s in COMPARE_SPARSITIES], cells, order, notes,
                 x_label="fraction of weights pruned", panels=tuple(f"lr {lr}" for lr in
                                                                     COMPARE_LRS))


def prune_methods():
    fields = {field.name: field for field in
              dataclasses.fields(ledger.config_class("prune_init"))}
    return tuple(fields["method"].metadata["choices"])


def table_d():
    rows, cells = [], []
    for method in prune_methods():
        for shuffled in (False, True):
            label = f"{method}{', shuffled' if shuffled else ''}"
            rows.append(label)
            for sparsity in PRUNE_SPARSITIES:
                flags = (f"--method={method}", f"--sparsity={sparsity}")
                cells.append(Cell(label, f"{sparsity:.0%} pruned", "prune_init",
                                  "flags/prune_init_conv4.cfg",
                                  flags + (("--shuffle",) if shuffled else ()), x=sparsity,
                                  series=label))
    order = [(seed, cell) for seed in SEEDS for sparsity in PRUNE_SPARSITIES
             for cell in cells if cell.x == sparsity]
    notes = [
        "Recipe: flags/prune_init_conv4.cfg (Frankle & Carbin's conv4 training: Glorot normal, "
        "Adam lr 3e-4, batch 60, 40 epochs, 5,000 training images held out). A shuffled twin "
        "moves the method's kept weights to random positions within each layer.",
        "No published numbers: Haroon's paper gives no conv4 table, and SNIP, GraSP and "
        "SynFlow were not published on this net.",
    ]
    return Table("d_prune_init_conv4", "d. Pruning at initialization, conv4 on CIFAR-10",
                 "method", rows, [f"{s:.0%} pruned" for s in PRUNE_SPARSITIES], cells, order,
                 notes, x_label="fraction of weights pruned")


def tables():
    return [table_a(), table_b(), table_c(), table_d()]


# Cells and jobs ----------------------------------------------------------------------------

@dataclasses.dataclass
class Entry:
    """A (cell, seed) resolved to the job that runs it."""

    cell: Cell
    seed: int
    job: ledger.LedgerJob
    config: object


def resolve(all_tables):
    """[(table, [Entry])] plus the job list's jobs in run order, one per distinct experiment."""
    from tf_supermask.tools import batch

    by_recipe, jobs, resolved = {}, [], []
    for table in all_tables:
        entries = []
        for seed, cell in table.order:
            text = cell.job_line(seed)
            job = batch.parse_job_list(text, base_dir=ledger.REPO)[0]
            config = ledger.job_config(job)
            key = ledger.recipe_key(job.binary, config)
            if key not in by_recipe:
                by_recipe[key] = ledger.LedgerJob(job, cell.requires)
                jobs.append((table, cell, by_recipe[key]))
            entries.append(Entry(cell, seed, by_recipe[key], config))
        resolved.append((table, entries))
    return resolved, jobs


HEADER = """\
# The GPU results ledger (issue 17): every run of the tables in runs/results/ledger/,
# most valuable first. Written by `python scripts/ledger_tables.py --write_jobs` from
# the tables it defines; do not edit by hand (tests/test_ledger.py checks it is current).
#
# A GPU window runs it with `bash scripts/ledger_window.sh` (see README, "Results
# ledger"): committed runs are skipped, the next jobs run until the window's deadline.
# Jobs after a `#@ requires: fidelity` line need the reference-fidelity fixes (L2 SGD
# weight decay, reference score init, per-epoch cosine); a window runs them only when
# the code has them (TrainConfig.weight_decay_mode) or LEDGER_FIDELITY=yes.
# Within a table, seed 0 of every cell comes before seed 1, so a window cut short still
# completes whole cells. Plain job-list syntax: tf-supermask-batch runs it as well.
"""


def job_list_text(all_tables=None):
    _, jobs = resolve(all_tables or tables())
    lines, section, requires = [HEADER.rstrip("\n")], None, None
    for table, _, ledger_job in jobs:
        seed = [flag for flag in ledger_job.job.flags if flag.startswith("--seed=")][-1][7:]
        heading = f"{table.title}, seed {seed}"
        if heading != section:
            lines += ["", f"# {heading}"]
            section, requires = heading, None
        if ledger_job.requires != requires:
            requires = ledger_job.requires
            lines.append(f"{ledger.DIRECTIVE} {requires or 'none'}")
        lines.append(ledger_job.line_text)
    return "\n".join(lines) + "\n"


# Tables ------------------------------------------------------------------------------------

def _cell_value(results, cell):
    if cell.value.startswith("arm:"):
        arm = cell.value[4:]
        return next((entry["test_accuracy"] for entry in results.get("arms", [])
                     if entry.get("arm") == arm), None)
    return results.get(cell.value)


def _float(text):
    try:
        return float(text.lstrip("~"))
    except (AttributeError, ValueError):
        return None


def collect(resolved, runs_dir):
    """Per table: {cell: [point]} of current runs, and {job name: why} of stale ones."""
    states, out = {}, []
    for table, entries in resolved:
        points, stale = collections.OrderedDict(), {}
        for entry in entries:
            name = entry.job.name
            run_dir = os.path.join(runs_dir, name)
            if name not in states:
                states[name] = ledger.run_state(run_dir, entry.job, entry.config)
            state, why = states[name]
            points.setdefault(entry.cell, [])
            if state == "stale":
                stale[name] = why
            if state != "current":
                continue
            results = ledger._read_json(os.path.join(run_dir, "results.json"), {})
            value = _cell_value(results, entry.cell)
            if value is None:
                continue
            record = ledger._read_json(os.path.join(run_dir, ledger.LEDGER_RECORD), {}) or {}
            points[entry.cell].append({
                "variant": f"{entry.cell.row}|{entry.cell.column}", "level": 0,
                "seed": entry.seed, "job": name, "test_accuracy": float(value),
                "weights_remaining": float(results.get("weights_remaining", 1.0)),
                "window": record.get("window", "")})
        out.append((table, entries, points, stale))
    return out


def cell_stats(points):
    """{mean, min, max, seeds} of a cell's test accuracy (percent), or None when empty."""
    from tf_supermask.tools.report import aggregate

    if not points:
        return None
    row = next(iter(aggregate(points).values()))[0]
    return {"mean": 100 * row["mean"], "min": 100 * row["min"], "max": 100 * row["max"],
            "seeds": row["seeds"]}


def _cell_text(stats, published):
    beside = f" · pub. {published}" if published else ""
    if stats is None:
        return f"{MISSING}{beside}"
    return (f"{stats['mean']:.2f} [{stats['min']:.2f}, {stats['max']:.2f}] "
            f"n={stats['seeds']}/{len(SEEDS)}{beside}")


def _best_k_row(table, stats_of):
    cells = []
    for column in table.columns:
        candidates = [(stats_of[cell]["mean"], cell) for cell in table.cells
                      if cell.column == column and cell.requires and stats_of.get(cell)]
        published = PUBLISHED_BEST_K[column]
        if not candidates:
            cells.append(f"{MISSING} · pub. {published}")
            continue
        mean, cell = max(candidates, key=lambda pair: pair[0])
        cells.append(f"{mean:.2f} (k={cell.x}) · pub. {published}")
    return cells


def table_markdown(table, entries, points, stale, attempts, runs_dir):
    stats_of = {cell: cell_stats(found) for cell, found in points.items()}
    grid = {(cell.row, cell.column): cell for cell in table.cells}
    complete = sum(1 for stats in stats_of.values() if stats and stats["seeds"] >= len(SEEDS))
    started = sum(1 for stats in stats_of.values() if stats)
    runs = sum(len(found) for found in points.values())
    lines = [f"# {table.title}", "",
             f"Test accuracy (%): mean [min, max] over the finished seeds, n = seeds finished "
             f"of {len(SEEDS)}; `pub.` the published number; `{MISSING}`: no finished run yet; "
             f"`{NOT_APPLICABLE}`: not part of the table. Generated by "
             "`python scripts/ledger_tables.py` from the runs in "
             f"`{os.path.relpath(runs_dir, ledger.REPO)}` ({runs} runs); do not edit.", "",
             f"Cells complete ({len(SEEDS)} seeds): {complete} of {len(table.cells)}; with at "
             f"least one seed: {started}.", "",
             "| " + " | ".join([table.row_header] + table.columns) + " |",
             "| --- |" + " --- |" * len(table.columns)]
    for row in table.rows:
        if row == "edge-popup, best k":
            values = _best_k_row(table, stats_of)
        else:
            values = [_cell_text(stats_of[grid[(row, column)]], grid[(row, column)].published)
                      if (row, column) in grid else NOT_APPLICABLE for column in table.columns]
        lines.append("| " + " | ".join([row] + values) + " |")
    short = []
    for cell, stats in stats_of.items():
        published = _float(cell.published) if cell.published else None
        if stats and published is not None and stats["mean"] < published - 1.0:
            short.append(f"{cell.row}, {cell.column}: {stats['mean']:.2f} against "
                         f"{cell.published} ({stats['mean'] - published:+.2f} points; "
                         f"n={stats['seeds']}): not yet explained")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in table.notes]
    if short:
        lines += ["", "### More than 1 point below the published number", ""]
        lines += [f"- {text}" for text in short]
    if stale:
        lines += ["", "### Stale runs (committed, but no longer what the job runs; run again)",
                  ""] + [f"- `{name}`: {why}" for name, why in sorted(stale.items())]
    names = {found["job"] for found_list in points.values() for found in found_list}
    mine = {entry.job.name for entry in entries}
    cut = {name: entry for name, entry in attempts.items() if name in mine and name not in names}
    if cut:
        lines += ["", "### Cut or failed in earlier windows (runs/results/ledger/attempts.json)",
                  ""]
        for name, entry in sorted(cut.items()):
            lines.append(f"- `{name}`: cut {len(entry.get('cuts', []))}x "
                         f"(full-window cuts {ledger.full_window_cuts(entry)}), failed "
                         f"{len(entry.get('failures', []))}x")
    lines += ["", "## Jobs", "",
              "Each cell runs `python -m tf_supermask.bin.<binary> --flagfile=FLAGFILE FLAGS "
              "--seed=S` for S in 0, 1, 2 (binary `train` unless named), in the order of "
              "`jobs/ledger.txt`, a GPU window at a time (`bash scripts/ledger_window.sh`).", "",
              "| cell | job (without --seed) |", "| --- | --- |"]
    job_of = {entry.cell: entry.job for entry in entries if entry.seed == SEEDS[0]}
    for cell in table.cells:
        line = job_of[cell].line_text.rsplit(" --seed=", 1)[0]
        shared = "" if line == cell.job_line(0).rsplit(" --seed=", 1)[0] else " (the same run)"
        lines.append(f"| {cell.row}, {cell.column} | `{line}`{shared} |")
    return "\n".join(lines) + "\n", stats_of


def table_csv(points):
    import csv

    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["row", "column", "seed", "test_accuracy", "weights_remaining", "job",
                     "window"])
    for cell, found in points.items():
        for point in sorted(found, key=lambda p: p["seed"]):
            writer.writerow([cell.row, cell.column, point["seed"],
                             f"{point['test_accuracy']:.4f}",
                             f"{point['weights_remaining']:.4f}", point["job"], point["window"]])
    return stream.getvalue()


def table_plot(table, stats_of, path):
    """Accuracy against the table's x (k or fraction pruned), one line per series, per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(table.panels) if table.name != "a_cifar10_reproductions" else [""]
    figure, axes_list = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 4),
                                     squeeze=False)
    anything = False
    for axes, panel in zip(axes_list[0], panels):
        series = collections.OrderedDict()
        for cell in table.cells:
            if cell.panel == panel or table.name == "a_cifar10_reproductions" and cell.requires:
                series.setdefault(cell.series, []).append(cell)
        for index, (label, cells) in enumerate(series.items()):
            color = f"C{index}"
            done = sorted((cell.x, stats_of[cell]) for cell in cells if stats_of.get(cell))
            if done:
                anything = True
                xs = [x for x, _ in done]
                axes.plot(xs, [s["mean"] for _, s in done], marker="o", color=color,
                          linestyle="--" if label.endswith("shuffled") else "-", label=label)
                axes.fill_between(xs, [s["min"] for _, s in done], [s["max"] for _, s in done],
                                  color=color, alpha=0.2, linewidth=0)
            if table.name == "a_cifar10_reproductions":
                _baselines(axes, table, stats_of, label, color)
        if table.name == "a_cifar10_reproductions":
            axes.set_xlim(0.25, 0.8)
        axes.set_xlabel(table.x_label)
        axes.set_ylabel("test accuracy (%)")
        if panel:
            axes.set_title(panel)
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=6)
    if not anything:
        axes_list[0][0].text(0.5, 0.5, "no finished runs yet", ha="center", va="center",
                             transform=axes_list[0][0].transAxes, fontsize=12, color="gray")
    figure.suptitle(table.title, fontsize=10)
    figure.tight_layout()
    temp = path + ".tmp.png"
    figure.savefig(temp, dpi=100)
    plt.close(figure)
    os.replace(temp, path)


def _baselines(axes, table, stats_of, model, color):
    """Table a: dense and Zhou's supermask of `model` as flat lines, published best k as a star."""
    for cell in table.cells:
        if cell.column != model or cell.requires:
            continue
        stats = stats_of.get(cell)
        if stats:
            axes.axhline(stats["mean"], color=color, linewidth=1,
                         linestyle=":" if cell.series == "zhou" else "-.",
                         label=f"{model} {cell.series}")
    best = _float(PUBLISHED_BEST_K.get(model, ""))
    if best:
        axes.plot([0.75], [best], marker="*", markersize=10, color=color, linestyle="none",
                  label=f"{model} published best k")


def write_readme(ledger_dir, summaries):
    lines = ["# The GPU results ledger", "",
             "The papers' tables at their own scale, 3 seeds per cell, filled one GPU window "
             "at a time (issue 17). Generated by `python scripts/ledger_tables.py`; do not "
             "edit. How a window runs and how its files come here: README, \"Results "
             "ledger\"; the job list: `jobs/ledger.txt`.", "",
             "| table | cells complete (3 seeds) | cells with a seed | cells | runs |",
             "| --- | --- | --- | --- | --- |"]
    for table, complete, started, runs in summaries:
        lines.append(f"| [{table.title}]({table.name}.md) | {complete} | {started} | "
                     f"{len(table.cells)} | {runs} |")
    windows = os.path.join(ledger_dir, "windows")
    records = sorted(name for name in os.listdir(windows) if name.endswith(".json")) \
        if os.path.isdir(windows) else []
    lines += ["", f"Windows imported: {len(records)}"]
    for name in records:
        record = ledger._read_json(os.path.join(windows, name), {}) or {}
        counts = collections.Counter(outcome["status"] for outcome in
                                     record.get("outcomes", {}).values())
        lines.append(f"- {record.get('id', name)}: {record.get('device', '?')}; parallel "
                     f"{record.get('parallel', '?')}, fidelity {record.get('fidelity')}; "
                     + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    path = os.path.join(ledger_dir, "README.md")
    _write(path, "\n".join(lines) + "\n")
    return path


def _write(path, text):
    temp = path + ".tmp"
    with open(temp, "w") as stream:
        stream.write(text)
    os.replace(temp, path)


def write_tables(ledger_dir=ledger.LEDGER_DIR, all_tables=None):
    """Writes every table's .md, .csv and .png and the ledger's README.md; returns the paths."""
    all_tables = all_tables or tables()
    resolved, _ = resolve(all_tables)
    runs_dir = os.path.join(ledger_dir, ledger.RUNS_SUBDIR)
    attempts = ledger._read_json(os.path.join(ledger_dir, ledger.ATTEMPTS), {}) or {}
    os.makedirs(ledger_dir, exist_ok=True)
    written, summaries = [], []
    for table, entries, points, stale in collect(resolved, runs_dir):
        text, stats_of = table_markdown(table, entries, points, stale, attempts, runs_dir)
        base = os.path.join(ledger_dir, table.name)
        _write(base + ".md", text)
        _write(base + ".csv", table_csv(points))
        table_plot(table, stats_of, base + ".png")
        written += [base + ".md", base + ".csv", base + ".png"]
        summaries.append((table,
                          sum(1 for s in stats_of.values() if s and s["seeds"] >= len(SEEDS)),
                          sum(1 for s in stats_of.values() if s),
                          sum(len(found) for found in points.values())))
    written.append(write_readme(ledger_dir, summaries))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ledger", default=os.path.join(ledger.REPO, ledger.LEDGER_DIR))
    parser.add_argument("--jobs", default=os.path.join(ledger.REPO, ledger.DEFAULT_JOBS))
    parser.add_argument("--write_jobs", action="store_true", help="rewrite the job list")
    parser.add_argument("--check_jobs", action="store_true",
                        help="exit 1 if the job list differs from what the tables need")
    args = parser.parse_args(argv)
    if args.write_jobs or args.check_jobs:
        text = job_list_text()
        if args.check_jobs:
            with open(args.jobs) as stream:
                current = stream.read() == text
            print(f"{args.jobs} is {'current' if current else 'OUT OF DATE: run --write_jobs'}")
            return 0 if current else 1
        _write(args.jobs, text)
        count = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        print(f"wrote {args.jobs}: {count} jobs")
        return 0
    for path in write_tables(args.ledger):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
