"""A reduced CPU pilot of PatchesInit against random inits (one process, sequential runs).

    nice -n 10 python scripts/patches_pilot.py --data_dir=/tmp/data \
        --output=runs/results/patches_cpu_pilot.json
    # The same reduced setting over 3 seeds: PatchesInit (its default, first block patched)
    # against Kaiming normal and signed Kaiming constant on conv2, conv4, conv6:
    nice -n 10 python scripts/patches_pilot.py --data_dir=/tmp/data --variant_set=seeds \
        --seeds=0,1,2 --output=runs/results/patches_cpu_seeds.json

Every run is an edge-popup top-k supermask (k = 0.5, SGD lr 0.1 cosine, momentum
0.9, weight decay 1e-4, batch 128) on a 10,000-image CIFAR-10 subset, a 1,000-image
validation split and the full test set, for a few epochs: far from the study's
100 epochs, it only says which PatchesInit variants train at all on deeper nets.
"""

import json
import os
import sys
import time

from absl import app, flags

from tf_supermask.training import TrainConfig, train

flags.DEFINE_string("data_dir", "/tmp/data", "Folder holding cifar10.npz.")
flags.DEFINE_string("output", "runs/results/patches_cpu_pilot.json", "Where the figures go.")
flags.DEFINE_string("run_root", "runs/patches_pilot", "Parent of the run directories.")
flags.DEFINE_integer("epochs", 3, "Epochs per run.")
flags.DEFINE_float("width", 0.25, "Width multiplier.")
flags.DEFINE_list("only", [], "Run only these variant names.")
flags.DEFINE_enum("variant_set", "pilot", ["pilot", "seeds"], "pilot: the remedies on conv2 and "
                  "conv6 (seed 0); seeds: PatchesInit's default against the two random inits "
                  "on conv2, conv4 and conv6, for every --seeds.")
flags.DEFINE_list("seeds", ["0"], "Seeds (--variant_set=seeds).")
flags.DEFINE_bool("summarize_only", False, "Train nothing: write <output>.md and .png (mean and "
                  "min/max over seeds per model and init) from the records in --output.")
FLAGS = flags.FLAGS

# (name, model, TrainConfig overrides). patches_layers is written out where it was
# the default at the time of the pilot (0: all layers).
VARIANTS = [
    ("conv2/kaiming_normal", "conv2", dict(init="kaiming_normal")),
    ("conv2/signed_kaiming_constant", "conv2", dict(init="signed_kaiming_constant")),
    ("conv2/patches", "conv2", dict(init="patches", patches_layers=0)),
    ("conv2/patches_rescale", "conv2", dict(init="patches", patches_layers=0,
                                            patches_rescale=True)),
    ("conv6/kaiming_normal", "conv6", dict(init="kaiming_normal")),
    ("conv6/signed_kaiming_constant", "conv6", dict(init="signed_kaiming_constant")),
    ("conv6/patches", "conv6", dict(init="patches", patches_layers=0)),
    ("conv6/patches_layers2", "conv6", dict(init="patches", patches_layers=2)),
    ("conv6/patches_rescale", "conv6", dict(init="patches", patches_layers=0,
                                            patches_rescale=True)),
    ("conv6/patches_mix0.5", "conv6", dict(init="patches", patches_layers=0, patches_mix=0.5)),
    ("conv6/patches_zca", "conv6", dict(init="patches", patches_layers=0, patches_zca=True)),
    ("conv6/patches_layers4", "conv6", dict(init="patches", patches_layers=4)),
    ("conv6/patches_layers2_zca", "conv6", dict(init="patches", patches_layers=2,
                                                 patches_zca=True)),
]

SEED_VARIANTS = [(f"{model}/{init}", model, dict(init=init))
                 for model in ("conv2", "conv4", "conv6")
                 for init in ("kaiming_normal", "signed_kaiming_constant", "patches")]


def summarize(records, prefix):
    """<prefix>.md (test accuracy per model and init, mean [min, max] over seeds, and
    PatchesInit's gain over the better random init) and <prefix>.png (grouped bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = {}
    for record in records:
        model, init = record["name"].split("/")[:2]
        table.setdefault(model, {}).setdefault(init, []).append(100 * record["test_accuracy"])
    inits = ["kaiming_normal", "signed_kaiming_constant", "patches"]
    lines = ["| model | " + " | ".join(inits) + " | patches - best random (mean) |",
             "| --- | --- | --- | --- | --- |"]
    for model, by_init in table.items():
        cells = [f"{np.mean(v):.1f} [{min(v):.1f}, {max(v):.1f}] (n={len(v)})" if v else "-"
                 for v in (by_init.get(init, []) for init in inits)]
        means = {init: np.mean(by_init[init]) for init in inits if by_init.get(init)}
        gain = (f"{means['patches'] - max(means['kaiming_normal'], means['signed_kaiming_constant']):+.1f}"
                if len(means) == 3 else "-")
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {gain} |")
    with open(prefix + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    figure, axes = plt.subplots(figsize=(7, 4))
    for offset, init in enumerate(inits):
        x = [i + (offset - 1) * 0.27 for i in range(len(table))]
        values = [table[model].get(init, [np.nan]) for model in table]
        means = [np.mean(v) for v in values]
        low = [m - min(v) for m, v in zip(means, values)]
        high = [max(v) - m for m, v in zip(means, values)]
        axes.bar(x, means, 0.27, yerr=[low, high], capsize=3, label=init)
    axes.set_xticks(range(len(table)))
    axes.set_xticklabels(list(table))
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("top-k supermask (k=0.5), CIFAR-10, reduced CPU setting")
    axes.legend(fontsize=8)
    axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(prefix + ".png", dpi=120)
    plt.close(figure)


def main(argv):
    del argv
    records = []
    if os.path.exists(FLAGS.output):
        with open(FLAGS.output) as handle:
            records = json.load(handle)["runs"]
    done = {record["name"] for record in records}
    if FLAGS.summarize_only:
        summarize(records, os.path.splitext(FLAGS.output)[0])
        return
    if FLAGS.variant_set == "pilot":
        runs = [(name, model, overrides, 0) for name, model, overrides in VARIANTS]
    else:  # every model and init of a seed before the next seed
        runs = [(f"{name}/seed{seed}", model, overrides, int(seed))
                for seed in FLAGS.seeds for name, model, overrides in SEED_VARIANTS]
    for name, model, overrides, seed in runs:
        if name in done or (FLAGS.only and name not in FLAGS.only):
            continue
        config = TrainConfig(model=model, width=FLAGS.width, mask="topk", k=0.5,
                             dataset="cifar10", data_dir=FLAGS.data_dir, train_size=10000,
                             validation_size=1000, epochs=FLAGS.epochs, batch_size=128,
                             optimizer="sgd", lr=0.1, lr_schedule="cosine", momentum=0.9,
                             weight_decay=1e-4, seed=seed, verbose=0, overwrite=True,
                             run_dir=os.path.join(FLAGS.run_root, name.replace("/", "_")),
                             **overrides)
        start = time.time()
        results = train(config)
        record = {"name": name, "model": model, "overrides": overrides, "seed": seed,
                  "test_accuracy": results["test_accuracy"],
                  "val_accuracy": results["history"].get("val_accuracy"),
                  "train_loss": results["history"].get("loss"),
                  "patches_seconds": results.get("patches", {}).get("seconds"),
                  "rescale": {path: entry["rescale"] for path, entry in
                              results.get("patches", {}).get("layers", {}).items()},
                  "wall_seconds": time.time() - start}
        records.append(record)
        print(json.dumps(record), flush=True)
        os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
        with open(FLAGS.output, "w") as handle:
            json.dump({"command": " ".join(sys.argv), "width": FLAGS.width,
                       "epochs": FLAGS.epochs, "runs": records}, handle, indent=1)


if __name__ == "__main__":
    app.run(main)
