"""Tables and plots from run directories: accuracy against weights remaining.

A point is one finished run (tf-supermask-train, -prune-init, -finetune), one
level of a lottery experiment, or one arm at one sparsity of a comparison
(tf-supermask-finetune --compare; labelled by its arm). Points are grouped into variants by the
flags that differ between the given runs (seeds, output paths and, for plain
runs, the kept fraction k excepted), so the same call draws a criteria
comparison, a sweep over k or a ticket against its controls. Within a variant,
points at the same level (or the same k) are aggregated over seeds: the mean,
and the min/max band the LTH and Zhou et al. figures draw.
"""

import csv
import io
import os

import numpy as np

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
    base = {"run_dir": run_dir, "seed": flags.get("seed", "0")}
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
    point = {**base, "level": flags.get("k", ""), "weights_remaining": results["weights_remaining"],
             **{metric: results[metric] for metric in METRICS if metric in results}}
    return [(flags, point)]


def collect(run_dirs):
    """Points of all `run_dirs`, each labelled with its variant.

    Returns:
      A list of dicts: run_dir, variant, seed, level, weights_remaining and
      the metrics present.
    """
    if not run_dirs:
        raise ValueError("no run directories given")
    entries = [entry for run_dir in run_dirs for entry in _points_of(run_dir)]
    # Flags some runs lack were added by newer code: they do not tell variants apart.
    names = sorted(set.intersection(*(set(flags) for flags, _ in entries)) - set(IGNORED_FLAGS))
    lottery = any("levels" in read_json(os.path.join(d, RESULTS_FILE)) for d in run_dirs)
    ignored = set() if lottery else {"k"}
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
    try:
        return (0, float(level))
    except (TypeError, ValueError):
        return (1, str(level))


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


def plot(points, path, metric="test_accuracy", title=None):
    """PNG of `metric` against percent of weights remaining (log scale, decreasing to the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = aggregate(points, metric)
    if not table:
        raise ValueError(f"no run reports {metric}")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for variant, rows in table.items():
        x = [100 * row["weights_remaining"] for row in rows]
        line, = axes.plot(x, [100 * row["mean"] for row in rows], marker="o", markersize=3,
                          label=variant)
        axes.fill_between(x, [100 * row["min"] for row in rows], [100 * row["max"] for row in rows],
                          color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xscale("log")
    axes.invert_xaxis()
    ticks = sorted({round(100 * row["weights_remaining"], 1) for rows in table.values()
                    for row in rows}, reverse=True)
    if len(ticks) <= 14:
        axes.set_xticks(ticks)
        axes.set_xticklabels([f"{tick:g}" for tick in ticks], rotation=45)
        axes.minorticks_off()
    axes.set_xlabel("percent of weights remaining (log scale)")
    axes.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, ".tmp-" + os.path.basename(path))
    figure.savefig(temp, dpi=120, format="png")
    plt.close(figure)
    os.replace(temp, path)


def write_report(run_dirs, output_prefix, title=None):
    """Writes <prefix>.csv, <prefix>.md and one <prefix>[_metric].png per metric present.

    Returns:
      The list of files written.
    """
    from tf_supermask.training.run_dir import write_atomic

    points = collect(run_dirs)
    written = []
    write_atomic(output_prefix + ".csv", to_csv(points))
    write_atomic(output_prefix + ".md", to_markdown(points) + correlation_markdown(run_dirs))
    written += [output_prefix + ".csv", output_prefix + ".md"]
    for metric in METRICS:
        if any(metric in point for point in points):
            suffix = "" if metric == "test_accuracy" else "_" + metric.replace("_test_accuracy", "")
            path = f"{output_prefix}{suffix}.png"
            plot(points, path, metric, title)
            written.append(path)
    return written
