"""The lottery-ticket study on LeNet-300-100 over Fashion-MNIST (issue 3).

For each seed: the winning ticket (IMP, large_final, rewind to init), its two
controls (random re-initialization, random mask with the ticket's per-layer
sparsity, both using the ticket's masks), and two IMP runs on signed constant
weights (large_final, large_final_same_sign) whose masks are also evaluated on
the untrained network. Then the report (CSV, markdown, PNGs) of every group.

    python scripts/lottery_study.py --epochs=2 --seeds=0,1,2 --out=runs/lottery_fc_fmnist \
        --results=runs/results/lottery_fc_fashion_mnist

Everything runs in this one process (TensorFlow is imported once); finished
experiments and levels are skipped, so a cut study resumes.
"""

import argparse
import dataclasses
import json
import os
import time

from tf_supermask.experiments.lottery import LotteryConfig, run_lottery
from tf_supermask.tools.report import write_report

VARIANTS = {
    # name: (LotteryConfig overrides, name of the experiment whose masks it reuses)
    "ticket": ({}, None),
    "random_reinit": ({"reinit": "reinit"}, "ticket"),
    "random_mask": ({"shuffle_mask": True}, "ticket"),
    "signed_constant_large_final": ({"init": "signed_glorot_constant"}, None),
    "signed_constant_large_final_same_sign": ({"init": "signed_glorot_constant",
                                               "criterion": "large_final_same_sign"}, None),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="runs/lottery_fc_fmnist")
    parser.add_argument("--results", default="runs/results/lottery_fc_fashion_mnist")
    parser.add_argument("--data_dir", default="")
    args = parser.parse_args()
    # LTH's LeNet-300-100 settings: Adam 1.2e-3, batch 60, Gaussian Glorot init,
    # 20% of hidden and 10% of output weights pruned per level; 5,000 images held
    # out for validation (early-stop point).
    base = LotteryConfig(model="fc", dataset="fashion_mnist", data_dir=args.data_dir,
                         optimizer="adam", lr=1.2e-3, batch_size=60, epochs=args.epochs,
                         init="glorot_normal", validation_size=5000, levels=args.levels,
                         prune_rate_dense=0.2, prune_rate_output=0.1, verbose=0,
                         strategy="one_device")
    start = time.time()
    chosen = args.variants.split(",")
    # The ticket and its controls for every seed first, then the signed-constant runs.
    order = [(seed, name) for names in (chosen[:3], chosen[3:])
             for seed in [int(s) for s in args.seeds.split(",")] for name in names]
    for seed, name in order:
        overrides, masks_of = VARIANTS[name]
        run_dir = os.path.join(args.out, f"{name}_seed{seed}")
        config = dataclasses.replace(
            base, seed=seed, run_dir=run_dir, **overrides,
            masks_from=os.path.join(args.out, f"{masks_of}_seed{seed}") if masks_of else "")
        if os.path.exists(os.path.join(run_dir, "results.json")):
            print(f"{run_dir}: done earlier", flush=True)
            continue
        t0 = time.time()
        summary = run_lottery(config)
        accuracies = " ".join(f"{100 * lv['test_accuracy']:.1f}" for lv in summary["levels"])
        print(f"{run_dir}: {time.time() - t0:.0f}s, test accuracy by level: {accuracies}",
              flush=True)
    wall = time.time() - start
    print(f"study wall time {wall:.0f}s", flush=True)
    groups = {"": ["ticket", "random_reinit", "random_mask"],
              "_signed_constant": ["signed_constant_large_final",
                                   "signed_constant_large_final_same_sign"]}
    for suffix, names in groups.items():
        dirs = sorted(os.path.join(args.out, d) for d in os.listdir(args.out)
                      if d.rsplit("_seed", 1)[0] in names
                      and os.path.exists(os.path.join(args.out, d, "results.json")))
        if dirs:
            weights = "signed-constant weights" if suffix else "Glorot normal weights"
            for path in write_report(dirs, args.results + suffix,
                                     title=f"LeNet-300-100, Fashion-MNIST, {weights}, "
                                           f"{args.epochs} epochs per level"):
                print(path)
    with open(args.results + "_timing.json", "w") as stream:
        json.dump({"wall_seconds_this_invocation": wall, "epochs": args.epochs,
                   "levels": args.levels, "seeds": args.seeds}, stream, indent=2)


if __name__ == "__main__":
    main()
