"""Median masked/dense ratios over several tf-supermask-bench runs (their --output files).

On a shared 2-core VM a single run's fc ratios move by 10 % or more from one
process to the next (runs/results/bench_cpu.md), so the committed fc figures are
medians over separate runs:

    python scripts/bench_median.py runs/results/bench_cpu_fc_runs/fused_*.json

prints, per model and mode, the median step and epoch ratio with the range and
the number of runs, as a Markdown table.
"""

import json
import statistics
import sys
from collections import defaultdict


def summarize(paths):
    ratios = defaultdict(lambda: {"step": [], "epoch": []})
    for path in paths:
        with open(path) as stream:
            for record in json.load(stream):
                key = (record["model"], record["mask"])
                if record.get("ratio_to_dense") is not None:
                    ratios[key]["step"].append(record["ratio_to_dense"])
                if record.get("epoch_ratio_to_dense") is not None:
                    ratios[key]["epoch"].append(record["epoch_ratio_to_dense"])
    return ratios


def cell(values):
    if not values:
        return "-"
    return f"x{statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def main(paths):
    if not paths:
        sys.exit("usage: python scripts/bench_median.py BENCH.json [BENCH.json ...]")
    ratios = summarize(paths)
    print("| model | mode | runs | step, median (range) | epochs, median (range) |")
    print("| --- | --- | --- | --- | --- |")
    for (model, mask), kinds in ratios.items():
        print(f"| {model} | {mask} | {len(kinds['step'])} | {cell(kinds['step'])} | "
              f"{cell(kinds['epoch'])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
