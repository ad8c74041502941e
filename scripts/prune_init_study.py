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


def run_config(args, method, sparsity, seed, shuffled, run_dir, mask_file=""):
    from tf_supermask.experiments.prune_init import PruneInitConfig

    return PruneInitConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, init=args.init,
        train_size=args.train_size, validation_size=args.validation_size,
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
        seed=seed, method=method, sparsity=sparsity, shuffle=shuffled, mask_file=mask_file,
        kstarts_k=args.kstarts_k, kstarts_epochs=args.kstarts_epochs,
        kstarts_steps=args.kstarts_steps, kstarts_gradient_batches=args.kstarts_gradient_batches,
        kstarts_fitness=args.kstarts_fitness, dissipating_epochs=args.dissipating_epochs,
        dissipating_fraction=args.dissipating_fraction,
        synflow_iterations=args.synflow_iterations, strategy=args.strategy, verbose=0,
        run_dir=run_dir)


def one_run(args, method, sparsity, seed, shuffled, mask_file=""):
    """Runs (or reads back) one run; returns its record."""
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
        "scope": results.get("scope"), "backend": results.get("backend"),
        "test_accuracy": results["test_accuracy"],
        "weights_remaining": results["weights_remaining"],
        "mask_sparsity_per_layer": results.get("mask_sparsity_per_layer"),
        "collapsed_layers": results.get("collapsed_layers", []),
        "train_seconds": results.get("train_seconds"), "mask_seconds": results.get("mask_seconds"),
        "wall_seconds": wall, "run_dir": run_dir,
    }
    for key in ("kstarts_chosen", "kstarts_fitness"):
        if key in results:
            record[key] = results[key]
    collapsed = record["collapsed_layers"]
    print(f"{name:42s} acc {record['test_accuracy']:.4f} kept {record['weights_remaining']:.4f} "
          f"{'%.0f s' % record['wall_seconds'] if fresh else '(read back)'}"
          f"{' collapsed ' + ','.join(collapsed) if collapsed else ''}", flush=True)
    return record


def summarize(records, methods, sparsities):
    import numpy as np

    rows = {}
    for method in methods:
        for shuffled in (False, True):
            for sparsity in sparsities:
                values = [r["test_accuracy"] for r in records if r["method"] == method
                          and r["shuffled"] == shuffled and r["sparsity"] == sparsity]
                if values:
                    rows[(method, shuffled, sparsity)] = (
                        float(np.mean(values)),
                        float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))
    return rows


def claim_lines(rows, sparsities):
    lines = []
    for sparsity in sparsities:
        try:
            combo = rows[("kstarts_dissipating", False, sparsity)][0]
            others = {name: rows[(name, False, sparsity)][0]
                      for name in ("kstarts", "dissipating", "random")}
        except KeyError:
            continue
        beaten = [name for name, value in others.items() if combo > value]
        verdict = "holds" if len(beaten) == 3 else "fails"
        lines.append(f"- {sparsity:.0%} sparsity: kstarts_dissipating {100 * combo:.2f} vs "
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
                if (method, shuffled, sparsity) in rows:
                    mean, std, count = rows[(method, shuffled, sparsity)]
                    cells.append(f"{100 * mean:.2f} ± {100 * std:.2f}")
                else:
                    cells.append("-")
            lines.append(f"| {method} | {scopes.get(method, '')} | {'yes' if shuffled else 'no'} | "
                         + " | ".join(cells) + " |")
    collapsed = sorted({(r["method"], r["shuffled"], r["sparsity"], path)
                        for r in records for path in r["collapsed_layers"]})
    seeds = sorted({r["seed"] for r in records})
    train_images = args.train_size or "all"
    steps = f" (at most {args.kstarts_steps} steps)" if args.kstarts_steps else ""
    knobs = [
        ("kstarts", f"kstarts: k = {args.kstarts_k} candidates, each trained "
                    f"{args.kstarts_epochs} epoch(s){steps}, fitness {args.kstarts_fitness}, "
                    "then the winner's mask is trained from the initial weights"),
        ("dissipating", f"dissipating: removal at the end of each of the first "
                        f"{args.dissipating_epochs} epochs, fraction "
                        f"{args.dissipating_fraction}, geometric schedule"),
        ("kstarts_dissipating", "kstarts_dissipating: K-starts to density (1 - sparsity) ** 0.5, "
                                "dissipating from there"),
        ("synflow", f"synflow: {args.synflow_iterations} iterations"),
        ("snip", "snip: one batch"),
        ("grasp", "grasp: one batch, temperature 200"),
    ]
    text = [
        f"# Pruning at initialization: {args.model} on {args.dataset}",
        "",
        f"Test accuracy (%, full test set), mean ± sample standard deviation over seeds "
        f"{', '.join(map(str, seeds))}; columns are sparsities (fraction of weights pruned, "
        "over all masked kernels). \"shuffled = yes\" is the method's final mask shuffled "
        "within each layer (Frankle et al., 2021), trained from the same initial weights.",
        "",
        *lines,
        "",
        "## Training length",
        "",
        f"- {args.epochs} epochs over {train_images} training images of {args.dataset} "
        f"({args.validation_size} more held out for per-epoch validation), batch "
        f"{args.batch_size}, {args.optimizer} lr {args.lr}, {args.init} initialization"
        + (": a shortened version of the Frankle & Carbin fc setting (flags/prune_init_fc.cfg "
           "trains 40 epochs on 55,000 images)." if args.model == "fc" else "."),
        "- " + "; ".join(text for name, text in knobs if name in methods) + ".",
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
    for method in methods:
        index = METHODS.index(method) if method in METHODS else len(METHODS)
        for shuffled in (False, True):
            points = [(s, rows[(method, shuffled, s)]) for s in sparsities
                      if (method, shuffled, s) in rows]
            if not points:
                continue
            xs = [100 * s for s, _ in points]
            ys = [100 * v[0] for _, v in points]
            style = "--" if shuffled else "-"
            axes.errorbar(xs, ys, yerr=[100 * v[1] for _, v in points], color=colors(index),
                          linestyle="none", capsize=2)
            axes.plot(xs, ys, color=colors(index), linestyle=style, marker="o", markersize=3,
                      label=f"{method}{' (shuffled)' if shuffled else ''}")
    axes.set_xlabel("sparsity (% of weights pruned)")
    axes.set_ylabel("test accuracy (%), mean and standard deviation over seeds")
    axes.set_title(f"Pruning at initialization: {args.model} on {args.dataset}")
    axes.set_xticks([100 * s for s in sparsities])
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
    command = "nice -n 10 python scripts/prune_init_study.py " + " ".join(
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
        sparsities = sorted({r["sparsity"] for r in records})
    else:
        records = []
        for seed in seeds:
            for sparsity in sparsities:
                for method in methods:
                    plain = one_run(args, method, sparsity, seed, False)
                    records.append(plain)
                    records.append(one_run(args, method, sparsity, seed, True,
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
