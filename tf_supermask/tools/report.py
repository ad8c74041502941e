"""Tables and plots from run directories: accuracy against weights remaining.

A point is one finished run (tf-supermask-train, -prune-init, -finetune), one
level of a lottery experiment, or one arm at one sparsity of a comparison
(tf-supermask-finetune --compare; labelled by its arm). Points are grouped into variants by the
flags that differ between the given runs (seeds, output paths and, for plain
runs, the kept fraction k excepted), so the same call draws a criteria
comparison, a sweep over k or a ticket against its controls. The backend
(TensorFlow or JAX, from results.json) is part of the variant, so runs of
both are never pooled as seeds. Within a variant, points at the same level
(a lottery level, k for top-k runs, the sparsity for pruning at
initialization and fine-tuning) are aggregated over seeds: the mean, and the
min-max band the LTH and Zhou et al. figures draw; every plot says so.

An earlier report's ``.csv`` can stand in for its run directories (the plots
are drawn again from it, e.g. after a change of style).
"""

import csv
import io
import os
import re
import textwrap

import numpy as np

from tf_supermask.files import atomic_file
from tf_supermask.training.run_dir import FLAGS_FILE, RESULTS_FILE, parse_flagfile, read_json

# Flags that never define a variant: seeds, paths and execution details.
IGNORED_FLAGS = ("seed", "run_dir", "overwrite", "export", "verbose", "data_workers", "data_dir",
                 "masks_from", "strategy", "jit_compile")
METRICS = ("test_accuracy", "untrained_test_accuracy")


def _points_of(run_dir):
    """[(flags, point)] of one run directory (a lottery experiment gives one per level)."""
    results_path = os.path.join(run_dir, RESULTS_FILE)
    flags_path = os.path.join(run_dir, FLAGS_FILE)
    if not os.path.exists(results_path):
        raise FileNotFoundError(f"{run_dir} holds no {RESULTS_FILE}: not a finished run")
    with open(flags_path) as stream:
        flags = parse_flagfile(stream.read())
    results = read_json(results_path)
    # Runs written before JAX support recorded no backend: they ran on TensorFlow. The
    # kind of experiment tells apart runs whose own flags are not shared (a lottery's
    # levels, a fine-tuning's sparsity).
    flags = dict(flags, backend=results.get("backend", "tensorflow"),
                 experiment=experiment_kind(flags, results))
    base = {"run_dir": run_dir, "seed": flags.get("seed", "0"),
            **{name: flags[name] for name in ("model", "dataset") if name in flags}}
    if "arms" in results:
        return [(flags, {**base, "level": entry["sparsity"], "arm": entry["arm"],
                         "run_dir": os.path.join(run_dir, entry["run_dir"]),
                         "weights_remaining": entry["weights_remaining"],
                         "test_accuracy": entry["test_accuracy"]})
                for entry in results["arms"]]
    if "levels" in results:
        return [(flags, {**base, "level": entry["level"],
                         "weights_remaining": entry["weights_remaining"],
                         **{metric: entry[metric] for metric in METRICS if metric in entry}})
                for entry in results["levels"]]
    point = {**base, "level": plain_level(flags), "weights_remaining": results["weights_remaining"],
             **{metric: results[metric] for metric in METRICS if metric in results}}
    return [(flags, point)]


def experiment_kind(flags, results):
    """What made a run directory: "lottery", "comparison", "finetune", "prune_init" or
    "train" (from its results.json, and --method for pruning at initialization)."""
    if "arms" in results:
        return "comparison"
    if "levels" in results:
        return "lottery"
    if results.get("experiment"):
        return str(results["experiment"])
    if "method" in flags:
        return "prune_init"
    return "train"


def plain_level(flags):
    """What sets a plain run's sparsity, for the level column: k for top-k, the sparsity
    for pruning at initialization and fine-tuning, "" otherwise."""
    if flags.get("mask") == "topk":
        return f"k={flags.get('k', '0.5')}"
    if "sparsity" in flags:
        return f"sparsity={flags['sparsity']}"
    return ""


# Level-setting flags of plain runs: the x axis, not a variant.
LEVEL_FLAGS = ("k", "sparsity")


def collect(run_dirs):
    """Points of all `run_dirs`, each labelled with its variant.

    Returns:
      A list of dicts: run_dir, variant, seed, level, weights_remaining and
      the metrics present.
    """
    if not run_dirs:
        raise ValueError("no run directories given")
    if all(str(path).endswith(".csv") for path in run_dirs):
        return [point for path in run_dirs for point in points_from_csv(path)]
    entries = [entry for run_dir in run_dirs for entry in _points_of(run_dir)]
    # Flags some runs lack were added by newer code: they do not tell variants apart.
    names = sorted(set.intersection(*(set(flags) for flags, _ in entries)) - set(IGNORED_FLAGS))
    lottery = any("levels" in read_json(os.path.join(d, RESULTS_FILE)) for d in run_dirs)
    ignored = set() if lottery else set(LEVEL_FLAGS)
    varying = [name for name in names if name not in ignored
               and len({flags.get(name) for flags, _ in entries}) > 1]
    points = []
    for flags, point in entries:
        label = ", ".join([f"{name}={flags.get(name, '')}" for name in varying]
                          + ([f"arm={point['arm']}"] if "arm" in point else [])) or "all runs"
        if flags.get("masks_from"):
            label += " (masks of another run)"
        points.append({"variant": label, **point})
    return points


def points_from_csv(path):
    """The points of an earlier report's ``.csv`` (as `collect` returns them)."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    points = []
    for row in rows:
        point = {key: value for key, value in row.items() if value != ""}
        point.setdefault("level", "")
        point["weights_remaining"] = float(point["weights_remaining"])
        for metric in METRICS:
            if metric in point:
                point[metric] = float(point[metric])
        points.append(point)
    return points


def aggregate(points, metric="test_accuracy"):
    """{variant: [row per level]}, each row: level, weights remaining and metric mean/min/max."""
    table = {}
    for variant in dict.fromkeys(p["variant"] for p in points):
        rows = []
        mine = [p for p in points if p["variant"] == variant and metric in p]
        for level in sorted({p["level"] for p in mine}, key=_level_key):
            at = [p for p in mine if p["level"] == level]
            values = np.array([p[metric] for p in at], float)
            rows.append({"level": level, "seeds": len(at),
                         "weights_remaining": float(np.mean([p["weights_remaining"] for p in at])),
                         "mean": float(values.mean()), "std": float(values.std()),
                         "min": float(values.min()), "max": float(values.max())})
        if rows:
            table[variant] = rows
    return table


def _level_key(level):
    text = str(level).rsplit("=", 1)[-1]
    try:
        return (str(level).rsplit("=", 1)[0] if "=" in str(level) else "", 0, float(text))
    except (TypeError, ValueError):
        return ("", 1, str(level))


def to_csv(points):
    columns = ["variant", "run_dir", "seed", "level", "weights_remaining", *METRICS]
    stream = io.StringIO()
    writer = csv.DictWriter(stream, columns, extrasaction="ignore")
    writer.writeheader()
    for point in points:
        writer.writerow(point)
    return stream.getvalue()


def to_markdown(points, metrics=METRICS):
    """One table per metric: variants x levels, mean and [min, max] over seeds, in percent."""
    parts = []
    for metric in metrics:
        table = aggregate(points, metric)
        if not table:
            continue
        parts.append(f"### {metric.replace('_', ' ')} (%, mean [min, max] over seeds)\n")
        parts.append("| variant | level | weights remaining % | seeds | mean | min | max |")
        parts.append("| --- | --- | --- | --- | --- | --- | --- |")
        for variant, rows in table.items():
            for row in rows:
                parts.append(f"| {variant} | {row['level']} | {100 * row['weights_remaining']:.1f} "
                             f"| {row['seeds']} | {100 * row['mean']:.2f} | {100 * row['min']:.2f} "
                             f"| {100 * row['max']:.2f} |")
        parts.append("")
    key = legend_key(list(dict.fromkeys(point["variant"] for point in points)))
    if key:
        parts.append("### legend key (the plots label each variant by its key)\n")
        parts.append("| key | variant |")
        parts.append("| --- | --- |")
        parts.extend(f"| {name} | {variant} |" for name, variant in key.items())
        parts.append("")
    return "\n".join(parts) + "\n"


def correlation_markdown(run_dirs):
    """Table of the initial-vs-trained weight correlation each comparison recorded (Pearson r
    and the overlap of the top fraction by magnitude, per kernel), or "" when none did."""
    rows = []
    for run_dir in run_dirs:
        results = read_json(os.path.join(run_dir, RESULTS_FILE))
        for layer, entry in results.get("weight_correlation", {}).items():
            rows.append((run_dir, results.get("pretraining_lr", ""), layer, entry))
    if not rows:
        return ""
    fractions = sorted({f for *_, entry in rows for f in entry["top_overlap"]}, key=float,
                       reverse=True)
    parts = ["### initial vs trained weights of the dense run (Pearson r; overlap of the "
             "top fraction by magnitude, chance = the fraction)\n",
             "| run | lr | kernel | pearson | " + " | ".join(f"top {f}" for f in fractions) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in fractions) + " |"]
    for run_dir, lr, layer, entry in rows:
        overlaps = " | ".join(f"{entry['top_overlap'].get(f, float('nan')):.3f}"
                              for f in fractions)
        parts.append(f"| {run_dir} | {lr} | {layer} | {entry['pearson']:.3f} | {overlaps} |")
    return "\n".join(parts) + "\n"


# Words shortened in legend labels (flag names and values).
ABBREVIATIONS = (("weights", "w."), ("_same_sign", " same sign"), ("shuffle_mask=true", "random mask"),
                 ("shuffle_mask=false", ""), ("reinit=reinit", "random reinit"),
                 ("reinit=rewind", "rewind"), ("criterion=", ""), ("backend=", ""),
                 ("experiment=", ""), ("(masks of another run)", "(other masks)"))
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
BAND_NOTE = "line: mean over seeds; band: min to max over seeds"
# A legend label: lines of at most LABEL_WIDTH characters, at most LABEL_LINES lines.
LABEL_WIDTH = 28
LABEL_LINES = 3
# The flags a keyed label shows first: those that most often tell runs apart.
LABEL_PRIORITY = ("experiment", "arm", "mask", "criterion", "method", "prune_method", "k",
                  "sparsity", "reinit", "shuffle_mask", "model", "dataset", "init", "backend")
FIGURE_WIDTH = 9.0  # inches
AXES_HEIGHT = 4.8  # inches of the figure above the legend
DPI = 120
FONT_SIZE = 8


def short_label(variant, width=LABEL_WIDTH):
    """A legend label: the variant's differing flags, abbreviated and wrapped."""
    label = variant
    for long, short in ABBREVIATIONS:
        label = label.replace(long, short)
    label = ", ".join(part.strip() for part in label.split(",") if part.strip())
    label = label.replace(", (", " (")
    return "\n".join(textwrap.wrap(label.replace("_", " "), width)) or variant


def _flag_parts(variant):
    """The "name=value" parts of a variant, the flags of LABEL_PRIORITY first."""
    parts = [part.strip() for part in re.split(r", (?=[A-Za-z_][\w.]*=)", variant)]
    rank = {name: index for index, name in enumerate(LABEL_PRIORITY)}
    return sorted(parts, key=lambda part: rank.get(part.split("=", 1)[0], len(rank)))


def _keyed(variants):
    """Whether the legend labels variants by keys (V1, V2, ...): some full label would
    be longer than LABEL_LINES lines, or two would read the same."""
    labels = [short_label(variant) for variant in variants]
    return (any(label.count("\n") >= LABEL_LINES for label in labels)
            or len(set(labels)) < len(labels))


def legend_key(variants):
    """{key: variant} when the legend labels `variants` by keys (the report's .md lists
    them), else {}."""
    if not _keyed(variants):
        return {}
    return {f"V{index + 1}": variant for index, variant in enumerate(variants)}


def legend_labels(variants):
    """{variant: legend label}: its differing flags, abbreviated and wrapped
    (``short_label``); when some would be too long, or two the same, each is its key
    (``legend_key``) and the first flags of LABEL_PRIORITY, cut to two lines."""
    key = legend_key(variants)
    if not key:
        return {variant: short_label(variant) for variant in variants}
    labels = {}
    for name, variant in key.items():
        lines = short_label(f"{name}: " + ", ".join(_flag_parts(variant))).split("\n")
        if len(lines) > 2:
            lines = lines[:2]
            lines[1] = lines[1][:LABEL_WIDTH - 1].rstrip(" ,") + "\u2026"
        labels[variant] = "\n".join(lines)
    return labels


def default_title(points):
    """The models and datasets of `points` ("fc on fashion_mnist"), "" when unknown (a
    report redrawn from a .csv)."""
    models = list(dict.fromkeys(p["model"] for p in points if p.get("model")))
    datasets = list(dict.fromkeys(p["dataset"] for p in points if p.get("dataset")))
    if not models:
        return ""
    return ", ".join(models) + (f" on {', '.join(datasets)}" if datasets else "")


def _tick_text(tick):
    return f"{tick:g}"


def thinned_ticks(ticks, limits, axes_width, font_size=FONT_SIZE):
    """The ticks of `ticks` (percent of weights remaining, any order) whose labels do not
    overlap on a log axis spanning `limits` over `axes_width` inches: from the largest
    down, a tick is kept when its label clears the last one kept."""
    span = abs(np.log10(limits[1]) - np.log10(limits[0])) or 1.0
    char = 0.6 * font_size / 72  # inches per digit, generously
    kept = []
    for tick in sorted(set(ticks), reverse=True):
        if kept:
            distance = abs(np.log10(kept[-1]) - np.log10(tick)) / span * axes_width
            needed = (len(_tick_text(kept[-1])) + len(_tick_text(tick))) / 2 * char + 0.1
            if distance < needed:
                continue
        kept.append(tick)
    return kept


def report_figure(points, metric="test_accuracy", title=None):
    """The matplotlib Figure of `metric` against percent of weights remaining (log scale,
    decreasing to the right): one line per variant (mean over seeds; each its own marker
    and line style, so none hides another), its min-max band over seeds, a title (`title`,
    default: the models and datasets), the legend below the axes in as many columns as
    fit, the figure as tall as the legend needs.

    Raises:
      ValueError: no point reports `metric`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = aggregate(points, metric)
    if not table:
        raise ValueError(f"no run reports {metric}")
    labels = legend_labels(list(dict.fromkeys(p["variant"] for p in points)))
    figure = Figure(figsize=(FIGURE_WIDTH, AXES_HEIGHT), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (variant, rows) in enumerate(table.items()):
        x = [100 * row["weights_remaining"] for row in rows]
        line, = axes.plot(x, [100 * row["mean"] for row in rows],
                          marker=MARKERS[index % len(MARKERS)], markersize=4,
                          linestyle=LINESTYLES[index % len(LINESTYLES)],
                          label=labels.get(variant, short_label(variant)))
        axes.fill_between(x, [100 * row["min"] for row in rows], [100 * row["max"] for row in rows],
                          color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xscale("log")
    axes.invert_xaxis()
    values = [100 * row["weights_remaining"] for rows in table.values() for row in rows]
    ticks = thinned_ticks([float(f"{value:.3g}") for value in values if value > 0],
                          axes.get_xlim(), 0.8 * FIGURE_WIDTH)
    if ticks:
        axes.set_xticks(ticks, labels=[_tick_text(tick) for tick in ticks])
        axes.minorticks_off()
    axes.tick_params(labelsize=FONT_SIZE)
    axes.set_xlabel("% of weights remaining (log scale)")
    axes.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    axes.grid(True, alpha=0.3)
    heading = title or default_title(points) or (
        f"{metric.replace('_', ' ')} against weights remaining")
    if metric == "untrained_test_accuracy":
        heading += ": masks on the untrained network"
    seeds = sorted({row["seeds"] for rows in table.values() for row in rows})
    note = f"{BAND_NOTE} ({'/'.join(str(n) for n in seeds)} seed{'' if seeds == [1] else 's'})"
    axes.set_title(f"{heading}\n{note}", fontsize=9)
    _legend_below(figure, axes)
    return figure


def _legend_below(figure, axes):
    """The legend under the axes, in the most columns (up to 4) that fit the figure's
    width; the figure grows by the legend's height."""
    handles, names = axes.get_legend_handles_labels()
    renderer = figure.canvas.get_renderer()
    for columns in range(min(4, len(handles)), 0, -1):
        legend = figure.legend(handles, names, loc="outside lower center", ncols=columns,
                               fontsize=FONT_SIZE, frameon=False)
        extent = legend.get_window_extent(renderer)
        if columns == 1 or extent.width <= 0.96 * figure.bbox.width:
            break
        legend.remove()
    figure.set_size_inches(FIGURE_WIDTH, AXES_HEIGHT + extent.height / figure.dpi + 0.15)
    return legend


def plot(points, path, metric="test_accuracy", title=None):
    """Writes ``report_figure`` as a PNG at `path`."""
    figure = report_figure(points, metric, title)
    with atomic_file(path) as temp:
        figure.savefig(temp, dpi=DPI, format="png")


def write_report(run_dirs, output_prefix, title=None, plots_only=False):
    """Writes <prefix>.csv, <prefix>.md and one <prefix>[_metric].png per metric present.

    Args:
      run_dirs: run directories, or the .csv files of earlier reports.
      output_prefix: path of the outputs without their extensions.
      title: the plots' title.
      plots_only: write only the PNGs (the .csv and .md stay as they are).

    Returns:
      The list of files written.
    """
    from tf_supermask.training.run_dir import write_atomic

    points = collect(run_dirs)
    written = []
    if plots_only:
        return _write_plots(points, output_prefix, title)
    write_atomic(output_prefix + ".csv", to_csv(points))
    csv_only = all(str(path).endswith(".csv") for path in run_dirs)
    write_atomic(output_prefix + ".md", to_markdown(points) + (
        "" if csv_only else correlation_markdown(run_dirs)))
    written += [output_prefix + ".csv", output_prefix + ".md"]
    return written + _write_plots(points, output_prefix, title)


def _write_plots(points, output_prefix, title):
    written = []
    for metric in METRICS:
        if any(metric in point for point in points):
            suffix = "" if metric == "test_accuracy" else "_" + metric.replace("_test_accuracy", "")
            path = f"{output_prefix}{suffix}.png"
            plot(points, path, metric, title)
            written.append(path)
    return written
