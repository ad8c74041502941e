"""Tiny runs of every binary whose outcome is pinned across refactors (issue 24).

``python tests/pinned_runs.py --write`` records each run's fingerprint in
``tests/data/pinned_runs.json``; ``tests/test_pinned_runs.py`` re-runs them and
compares. A fingerprint is every number in every results.json of the run (timings
left out), and a SHA-256 of the bits of every mask.npz. The numbers are compared to
1e-6 (relative) so that a machine with other vector units still agrees; the mask
bits exactly.
"""

import glob
import hashlib
import json
import os
import sys

import numpy as np

PINNED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                           "pinned_runs.json")
TIMING_KEYS = ("seconds", "time", "wall")
FC = dict(model="fc", width=0.1, dataset="sample", train_size=240, batch_size=60, epochs=2,
          verbose=0, strategy="one_device")


def _runs():
    """name -> (binary, config kwargs)."""
    return {
        "train_topk": ("train", dict(FC, mask="topk", k=0.3, init="signed_kaiming_constant",
                                     lr=0.1)),
        "train_bernoulli": ("train", dict(FC, mask="bernoulli", lr=0.05, rescale=True)),
        "train_patches_conv2": ("train", dict(FC, model="conv2", width=0.1, mask="topk",
                                              init="patches", patches_images=200, epochs=1,
                                              lr=0.1)),
        "lottery_late_rewind": ("lottery", dict(FC, optimizer="adam", lr=2e-3, levels=2,
                                                validation_size=60, prune_rate_dense=0.3,
                                                prune_rate_output=0.2, rewind="step:3")),
        "lottery_controls": ("lottery", dict(FC, levels=1, lr=0.05, reinit="reshuffle",
                                             shuffle_mask=True, prune_scope="global",
                                             criterion="magnitude_increase")),
        "lottery_reinit": ("lottery", dict(FC, levels=1, lr=0.05, reinit="reinit",
                                           pruned_weights="init", criterion="random")),
        "finetune_iterative": ("finetune", dict(FC, lr=0.05, prune_method="iterative",
                                                prune_rounds=2, sparsity=0.8,
                                                finetune_epochs=1)),
        "finetune_gradual": ("finetune", dict(FC, lr=0.05, prune_method="gradual",
                                              sparsity=0.8, finetune_epochs=2, end_epoch=1,
                                              frequency=1)),
        "comparison": ("finetune", dict(FC, lr=0.05, epochs=3, compare="lottery,rewind,finetune",
                                        sparsities="0.5,0.8", finetune_epochs=1,
                                        rewind_epoch=1)),
        "prune_init_snip": ("prune_init", dict(FC, method="snip", sparsity=0.8, lr=0.05)),
        "prune_init_kstarts_dissipating": ("prune_init", dict(
            FC, method="kstarts_dissipating", sparsity=0.8, lr=0.05, epochs=3, kstarts_k=2,
            kstarts_steps=2, kstarts_mode="rewind", dissipating_epochs=1,
            dissipating_target="reach", shuffle=True)),
    }


def _config_and_driver(binary):
    if binary == "train":
        from tf_supermask.training import TrainConfig, train
        return TrainConfig, train
    if binary == "lottery":
        from tf_supermask.experiments.config import LotteryConfig
        from tf_supermask.experiments.lottery import run_lottery
        return LotteryConfig, run_lottery
    if binary == "finetune":
        from tf_supermask.experiments.config import FinetuneConfig
        from tf_supermask.bin.finetune import run_experiment
        return FinetuneConfig, run_experiment
    from tf_supermask.experiments.config import PruneInitConfig
    from tf_supermask.experiments.prune_init import prune_init
    return PruneInitConfig, prune_init


def run(name, run_dir):
    import keras

    binary, settings = _runs()[name]
    config_type, driver = _config_and_driver(binary)
    keras.utils.set_random_seed(0)
    driver(config_type(**settings, run_dir=str(run_dir)))
    keras.backend.clear_session()
    return fingerprint(run_dir)


def _numbers(value, prefix, out):
    if isinstance(value, dict):
        for key in sorted(value):
            if not any(word in key for word in TIMING_KEYS):
                _numbers(value[key], f"{prefix}/{key}", out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _numbers(item, f"{prefix}[{index}]", out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value
    return out


def fingerprint(run_dir):
    """{"numbers": {json path: number}, "masks": {relative path: sha256 of the bits}}."""
    numbers, masks = {}, {}
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "results.json"), recursive=True)):
        with open(path) as handle:
            _numbers(json.load(handle), os.path.relpath(path, run_dir), numbers)
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "mask.npz"), recursive=True)):
        digest = hashlib.sha256()
        with np.load(path) as arrays:
            for key in sorted(arrays.files):
                digest.update(key.encode())
                digest.update(np.packbits(np.asarray(arrays[key]) > 0).tobytes())
        masks[os.path.relpath(path, run_dir)] = digest.hexdigest()
    return {"numbers": numbers, "masks": masks}


def names():
    return sorted(_runs())


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/pinned_runs.py --write")
    pinned = {}
    with tempfile.TemporaryDirectory() as root:
        for name in names():
            pinned[name] = run(name, os.path.join(root, name))
            print(name, len(pinned[name]["numbers"]), "numbers", len(pinned[name]["masks"]),
                  "masks", flush=True)
    with open(PINNED_FILE, "w") as handle:
        json.dump(pinned, handle, indent=1, sort_keys=True)
