#!/usr/bin/env python3
"""Pruning-at-initialization study: every method and its shuffled twin, in one process.

For each seed, sparsity and method the study trains one network under the
method's mask (``tf_supermask.experiments.prune_init``, a standard run directory
with mask.npz), then its shuffled twin: the same run's final mask shuffled
within each layer (``--mask_file=<that run>/mask.npz --shuffle``), trained from
the same initial weights for the same epochs. It writes

    <out>.md    the table (mean and sample standard deviation over seeds) with
                the command and the training length,
    <out>.json  every run's numbers,
    <out>.png   test accuracy against sparsity, one colour per method, solid
                for the method and dashed for its shuffled twin.

Finished runs are read back from their results.json, so an interrupted study
resumes where it stopped. Example (the committed fc table):

    nice -n 10 python scripts/prune_init_study.py --train_size=16000 --epochs=3

``--methods`` lists variants: a method name runs it with its defaults (Haroon's
methods as the paper reads: K-starts continues from its winner inside the epoch
budget, dissipating removes by its fraction), and the named variants in
``VARIANTS`` set other options (the earlier forced/rewind behaviours, the
fraction calibrated to the sparsity). ``dense`` is one unpruned run per seed.
``--no_shuffled`` skips the shuffled twins.
"""

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "kstarts", "dissipating",
           "kstarts_dissipating"]
# variant: (method, options). The plain method names are variants with no options.
VARIANTS = {
    "dense": ("random", {}),
    "kstarts_rewind": ("kstarts", {"kstarts_mode": "rewind"}),
    "dissipating_calibrate": ("dissipating", {"dissipating_target": "calibrate"}),
    "dissipating_reach": ("dissipating", {"dissipating_target": "reach"}),
    "kstarts_dissipating_calibrate": ("kstarts_dissipating",
                                      {"dissipating_target": "calibrate"}),
    "kstarts_dissipating_rewind_reach": ("kstarts_dissipating",
                                         {"kstarts_mode": "rewind",
                                          "dissipating_target": "reach"}),
}
VARIANT_TEXT = {
    "dense": "dense: no pruning (sparsity 0), one run per seed",
    "kstarts": "kstarts: continues from the winner, whose epoch(s) count inside --epochs",
    "kstarts_rewind": "kstarts_rewind: the winner's mask retrained from the initial weights "
                      "for all --epochs (the earlier default)",
    "dissipating": "dissipating: removal by the fraction alone, sparsity an outcome",
    "dissipating_calibrate": "dissipating_calibrate: the fraction found by a replay of the "
                             "dissipating epochs to reach the sparsity (one fraction per "
                             "layer under the layer scope), then removal by it (sparsity "
                             "reached reported, not forced)",
    "dissipating_reach": "dissipating_reach: the target forced at the last dissipating epoch, "
                         "geometric schedule (the earlier default)",
    "kstarts_dissipating": "kstarts_dissipating: K-starts to density (1 - sparsity) ** 0.5, "
                           "continuing from the winner, then dissipating by the fraction",
    "kstarts_dissipating_calibrate": "kstarts_dissipating_calibrate: as kstarts_dissipating "
                                     "with the fraction calibrated to the sparsity",
    "kstarts_dissipating_rewind_reach": "kstarts_dissipating_rewind_reach: K-starts rewound "
                                        "and the target forced (the earlier default)",
}


def variant_method(variant):
    return VARIANTS[variant][0] if variant in VARIANTS else variant


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="fc")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sparsities", default="0.8,0.9,0.95,0.98")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train_size", type=int, default=16000,
                        help="training images (0: all left after the validation split)")
    parser.add_argument("--validation_size", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=60)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=0.0012)
    parser.add_argument("--init", default="glorot_normal")
    parser.add_argument("--kstarts_k", type=int, default=5)
    parser.add_argument("--kstarts_epochs", type=int, default=1)
    parser.add_argument("--kstarts_steps", type=int, default=0)
    parser.add_argument("--kstarts_gradient_batches", type=int, default=0)
    parser.add_argument("--kstarts_fitness", default="both")
    parser.add_argument("--dissipating_epochs", type=int, default=2)
    parser.add_argument("--dissipating_fraction", type=float, default=0.1)
    parser.add_argument("--no_shuffled", action="store_true",
                        help="skip the shuffled twins")
    parser.add_argument("--synflow_iterations", type=int, default=100)
    parser.add_argument("--strategy", default="one_device",
                        help="one_device: no tf.distribute input pipeline (half the per-run "
                             "overhead of mirrored on a CPU); ignored under JAX")
    parser.add_argument("--runs_root", default="runs/prune_init_study",
                        help="run directories go here (git-ignored)")
    parser.add_argument("--out", default="runs/results/prune_init_fc_fashion_mnist",
                        help="output path without extension (.md, .json, .png)")
    parser.add_argument("--time_one", default="",
                        help="time one run of this method (seed 0, first sparsity) and stop")
    parser.add_argument("--from_json", default="",
                        help="comma-separated JSON files of earlier (partial) studies: merge "
                             "their runs into one table and plot, training nothing")
    parser.add_argument("--note", default="",
                        help="a line added under Training length (e.g. the device)")
    return parser.parse_args(argv)


def run_config(args, variant, sparsity, seed, shuffled, run_dir, mask_file=""):
    from tf_supermask.experiments.prune_init import PruneInitConfig

    method, options = VARIANTS.get(variant, (variant, {}))
    return PruneInitConfig(**options, **dict(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, init=args.init,
        train_size=args.train_size, validation_size=args.validation_size,
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
        seed=seed, method=method, sparsity=sparsity, shuffle=shuffled, mask_file=mask_file,
        kstarts_k=args.kstarts_k, kstarts_epochs=args.kstarts_epochs,
        kstarts_steps=args.kstarts_steps, kstarts_gradient_batches=args.kstarts_gradient_batches,
        kstarts_fitness=args.kstarts_fitness, dissipating_epochs=args.dissipating_epochs,
        dissipating_fraction=args.dissipating_fraction,
        synflow_iterations=args.synflow_iterations, strategy=args.strategy, verbose=0,
        run_dir=run_dir))


def one_run(args, method, sparsity, seed, shuffled, mask_file=""):
    """Runs (or reads back) one run of variant `method`; returns its record."""
    if method == "dense":
        sparsity = 0.0
    import warnings

    from tf_supermask.experiments.prune_init import prune_init
    from tf_supermask.training.run_dir import read_json

    name = f"{method}{'_shuffled' if shuffled else ''}_s{sparsity:g}_seed{seed}"
    run_dir = os.path.join(args.runs_root, f"{args.model}_{args.dataset}", name)
    results_path = os.path.join(run_dir, "results.json")
    start = time.time()
    wall_path = os.path.join(run_dir, "study_wall_seconds.json")
    if os.path.exists(results_path):
        results, fresh = read_json(results_path), False
        wall = read_json(wall_path)["wall_seconds"] if os.path.exists(wall_path) else None
    else:
        config = run_config(args, method, sparsity, seed, shuffled, run_dir, mask_file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            results, fresh = prune_init(config), True
        wall = time.time() - start
        with open(wall_path, "w") as stream:
            json.dump({"wall_seconds": wall}, stream)
    record = {
        "method": method, "shuffled": shuffled, "sparsity": sparsity, "seed": seed,
        "mask_sparsity": results.get("mask_sparsity"),
        "start_epoch": results.get("start_epoch", 0),
        "epochs_trained": results.get("epochs_trained"),
        "dissipating_fraction": results.get("dissipating_fraction"),
        "scope": results.get("scope"), "backend": results.get("backend"),
        "test_accuracy": results["test_accuracy"],
        "weights_remaining": results["weights_remaining"],
        "mask_sparsity_per_layer": results.get("mask_sparsity_per_layer"),
        "collapsed_layers": results.get("collapsed_layers", []),
        "train_seconds": results.get("train_seconds"), "mask_seconds": results.get("mask_seconds"),
        "wall_seconds": wall, "run_dir": run_dir,
    }
    for key in ("kstarts_chosen", "kstarts_fitness", "kstarts_mode", "dissipating_target"):
        if key in results:
            record[key] = results[key]
    collapsed = record["collapsed_layers"]
    print(f"{name:48s} acc {record['test_accuracy']:.4f} kept {record['weights_remaining']:.4f} "
          f"{'%.0f s' % record['wall_seconds'] if fresh else '(read back)'}"
          f"{' collapsed ' + ','.join(collapsed) if collapsed else ''}", flush=True)
    return record


def summarize(records, methods, sparsities):
    """{(variant, shuffled, sparsity): (mean acc, sample std, count, mean sparsity reached)};
    dense runs under sparsity 0."""
    import numpy as np

    rows = {}
    for method in methods:
        for shuffled in (False, True):
            for sparsity in ([0.0] if method == "dense" else sparsities):
                chosen = [r for r in records if r["method"] == method
                          and r["shuffled"] == shuffled and r["sparsity"] == sparsity]
                values = [r["test_accuracy"] for r in chosen]
                reached = [r["mask_sparsity"] for r in chosen
                           if r.get("mask_sparsity") is not None]
                if values:
                    rows[(method, shuffled, sparsity)] = (
                        float(np.mean(values)),
                        float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values),
                        float(np.mean(reached)) if reached else None)
    return rows


def _first(rows, names, sparsity):
    for name in names:
        if (name, False, sparsity) in rows:
            return name, rows[(name, False, sparsity)][0]
    return None, None


def claim_lines(rows, sparsities):
    """Haroon's claim at each sparsity, for the paper's reading (continue, dissipating by a
    fraction calibrated to the sparsity) and for the earlier rewind/forced versions."""
    readings = [
        ("paper's reading", ("kstarts_dissipating_calibrate", "kstarts_dissipating"),
         ("kstarts",), ("dissipating_calibrate", "dissipating")),
        ("earlier rewind/forced versions", ("kstarts_dissipating_rewind_reach",),
         ("kstarts_rewind",), ("dissipating_reach",)),
    ]
    lines = []
    for title, combos, alone_k, alone_d in readings:
        for sparsity in sparsities:
            combo_name, combo = _first(rows, combos, sparsity)
            others = dict(_first(rows, names, sparsity)
                          for names in (alone_k, alone_d, ("random",)))
            others.pop(None, None)
            if combo is None or len(others) < 3:
                continue
            beaten = [name for name, value in others.items() if combo > value]
            verdict = "holds" if len(beaten) == 3 else "fails"
            lines.append(f"- {title}, {sparsity:.0%} sparsity: {combo_name} {100 * combo:.2f} vs "
                         + ", ".join(f"{name} {100 * value:.2f}" for name, value in others.items())
                         + f": the claim {verdict}"
                         + ("" if verdict == "holds" else
                            f" (not above {', '.join(n for n in others if n not in beaten)})")
                         + ".")
    return lines


def write_table(args, records, rows, methods, sparsities, command, wall_seconds):
    header = "| method | scope | shuffled | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |"
    lines = [header, "| --- | --- | --- | " + " | ".join("---" for _ in sparsities) + " |"]
    scopes = {r["method"]: r["scope"] for r in records if not r["shuffled"]}
    for method in methods:
        for shuffled in (False, True):
            cells = []
            for sparsity in sparsities:
                key = (method, shuffled, 0.0 if method == "dense" else sparsity)
                if key in rows:
                    mean, std, count, reached = rows[key]
                    cell = (f"{100 * mean:.2f} ± {100 * std:.2f}" if count > 1
                            else f"{100 * mean:.2f} (1 seed)")
                    if reached is not None and abs(reached - key[2]) > 5e-4:
                        cell += f" (reached {100 * reached:.1f}%)"
                    cells.append(cell)
                else:
                    cells.append("-")
            if all(cell == "-" for cell in cells):
                continue
            lines.append(f"| {method} | {scopes.get(method, '')} | {'yes' if shuffled else 'no'} | "
                         + " | ".join(cells) + " |")
    collapsed = sorted({(r["method"], r["shuffled"], r["sparsity"], path)
                        for r in records for path in r["collapsed_layers"]})
    seeds = sorted({r["seed"] for r in records})
    train_images = args.train_size or "all"
    steps = f" (at most {args.kstarts_steps} steps)" if args.kstarts_steps else ""
    knobs = [
        ("kstarts", f"K-starts: k = {args.kstarts_k} candidates, each trained "
                    f"{args.kstarts_epochs} epoch(s){steps}, fitness {args.kstarts_fitness}"),
        ("dissipating", f"dissipating: removal at the end of each of the first "
                        f"{args.dissipating_epochs} epochs (after K-starts' for "
                        f"kstarts_dissipating), fraction {args.dissipating_fraction} unless "
                        "calibrated"),
        ("synflow", f"synflow: {args.synflow_iterations} iterations"),
        ("snip", "snip: one batch"),
        ("grasp", "grasp: one batch, temperature 200"),
    ]
    used = {variant_method(m) for m in methods}
    text = [
        f"# Pruning at initialization: {args.model} on {args.dataset}",
        "",
        f"Test accuracy (%, full test set), mean ± sample standard deviation over seeds "
        f"{', '.join(map(str, seeds))} (a cell marked \"1 seed\" has one run); columns are "
        "sparsities (fraction of weights pruned, over all masked kernels; \"reached\" is the sparsity a run ended at where it is not "
        "the column's). \"shuffled = yes\" is the method's final mask shuffled "
        "within each layer (Frankle et al., 2021), trained from the same initial weights.",
        "",
        *lines,
        "",
        "## Variants",
        "",
        *[f"- {VARIANT_TEXT[m]}" for m in methods if m in VARIANT_TEXT],
        "",
        "## Training length",
        "",
        f"- {args.epochs} epochs over {train_images} training images of {args.dataset} "
        f"({args.validation_size} more held out for per-epoch validation), batch "
        f"{args.batch_size}, {args.optimizer} lr {args.lr}, {args.init} initialization"
        + (": a shortened version of the Frankle & Carbin fc setting (flags/prune_init_fc.cfg "
           "trains 40 epochs on 55,000 images)." if args.model == "fc" else "."),
        "- " + "; ".join(text for name, text in knobs
                         if any(name in m for m in used)) + ".",
        f"- {len(records)} runs; wall time {wall_seconds / 60:.1f} minutes (the sum over "
        "runs).",
        *([f"- {args.note}"] if args.note else []),
        "",
        "## Command",
        "",
        *[f"    {line}" for line in command.split("\n")],
        "",
        "## Claim: K-starts plus dissipating beats either alone and random pruning",
        "",
        *claim_lines(rows, sparsities),
        "",
    ]
    if collapsed:
        text += ["## Layer collapse", ""] + [
            f"- {method}{' (shuffled)' if shuffled else ''} at {sparsity:.0%}: {path}"
            for method, shuffled, sparsity, path in collapsed] + [""]
    with open(args.out + ".md", "w") as stream:
        stream.write("\n".join(text))


def write_plot(args, rows, methods, sparsities):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    colors = plt.get_cmap("tab10")
    for index, method in enumerate(methods):
        if method == "dense" and (method, False, 0.0) in rows:
            axes.axhline(100 * rows[(method, False, 0.0)][0], color="black", linestyle=":",
                         label="dense")
            continue
        for shuffled in (False, True):
            points = [(s, rows[(method, shuffled, s)]) for s in sparsities
                      if (method, shuffled, s) in rows]
            if not points:
                continue
            # % remaining, as the other plots, where the run ended: a method whose sparsity
            # is an outcome (dissipating by its fraction) is drawn where it got to.
            xs = [100 * (1 - (s if v[3] is None else v[3])) for s, v in points]
            ys = [100 * v[0] for _, v in points]
            style = "--" if shuffled else "-"
            axes.errorbar(xs, ys, yerr=[100 * v[1] for _, v in points], color=colors(index % 10),
                          linestyle="none", capsize=2)
            axes.plot(xs, ys, color=colors(index % 10), linestyle=style, marker="o", markersize=3,
                      label=f"{method}{' (shuffled)' if shuffled else ''}")
    axes.set_xscale("log")
    axes.invert_xaxis()
    axes.set_xlabel("% of weights remaining (log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"Pruning at initialization: {args.model} on {args.dataset}\n"
                   "line: mean over seeds; error bars: one standard deviation over seeds",
                   fontsize=9)
    ticks = [100 * (1 - s) for s in sparsities if s < 1]
    for key, value in sorted(rows.items()):  # where runs ended away from every column
        remaining = None if value[3] is None else round(100 * (1 - value[3]), 1)
        if key[0] != "dense" and remaining and all(abs(remaining / t - 1) > 0.2 for t in ticks):
            ticks.append(remaining)
    axes.set_xticks(ticks)
    axes.set_xticklabels([f"{tick:g}" for tick in ticks])
    axes.minorticks_off()
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2, handlelength=4)
    figure.tight_layout()
    figure.savefig(args.out + ".png", dpi=120)


def save_json(args, command, records):
    wall = sum(r["wall_seconds"] or 0.0 for r in records)
    with open(args.out + ".json", "w") as stream:
        json.dump({"command": command, "wall_seconds": wall, "settings": vars(args),
                   "runs": records}, stream, indent=1)


def main(argv):
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    command = "python scripts/prune_init_study.py " + " ".join(
        shlex.quote(a) for a in argv)
    if args.time_one:
        start = time.time()
        one_run(args, args.time_one, sparsities[0], seeds[0], False)
        print(f"one {args.time_one} run: {time.time() - start:.1f} s")
        return
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    if args.from_json:
        records, commands, settings = {}, [], None
        for path in args.from_json.split(","):
            with open(path) as stream:
                stored = json.load(stream)
            commands.append(stored["command"])
            settings = settings or stored["settings"]
            for record in stored["runs"]:
                key = (record["method"], record["shuffled"], record["sparsity"], record["seed"])
                records[key] = record
        records = list(records.values())
        for name in ("from_json", "note", "out"):
            settings[name] = getattr(args, name)
        args = argparse.Namespace(**settings)
        command = "\n".join(commands)
        methods = [m for m in methods if any(r["method"] == m for r in records)]
        sparsities = sorted({r["sparsity"] for r in records if r["method"] != "dense"})
    else:
        records = []
        for seed in seeds:
            for sparsity in sparsities:
                for method in methods:
                    if method == "dense" and sparsity != sparsities[0]:
                        continue  # one unpruned run per seed
                    plain = one_run(args, method, sparsity, seed, False)
                    records.append(plain)
                    if not args.no_shuffled and method != "dense":
                        records.append(one_run(
                            args, method, sparsity, seed, True,
                            mask_file=os.path.join(plain["run_dir"], "mask.npz")))
                    save_json(args, command, records)  # a killed study keeps what it ran
    wall = sum(r["wall_seconds"] or 0.0 for r in records)  # resumed studies add up
    rows = summarize(records, methods, sparsities)
    save_json(args, command, records)
    write_table(args, records, rows, methods, sparsities, command, wall)
    write_plot(args, rows, methods, sparsities)
    print(f"wrote {args.out}.md, .json, .png; {wall / 60:.1f} minutes")


if __name__ == "__main__":
    main(sys.argv[1:])
