"""One pruning-at-initialization run: choose a mask, train the weights under it.

``prune_init(config)`` is what ``tf-supermask-prune-init`` runs. It goes
through ``tf_supermask.training.train`` (so the run directory is the standard
one) with a ``prepare`` hook that computes and sets the mask on the freshly
built model, the dissipating callback for the methods that prune while
training, and a callback that writes the final mask to ``<run_dir>/mask.npz``.
"""

import dataclasses
import os
import time

import keras

from tf_supermask.experiments.config import PruneInitConfig  # noqa: F401
from tf_supermask.layers import get_masks
from tf_supermask.pruning.at_init import compute_masks, make_callback
from tf_supermask.pruning.saliency import sparsity_per_layer
from tf_supermask.pruning.select import MASK_FILE, save_masks
from tf_supermask.training import run_dir as run_dir_lib




def default_prune_init_run_dir(config, root="runs"):
    """runs/prune_init_<model>_<dataset>_<method>[_shuffled]_s<sparsity>_<hash>."""
    from tf_supermask.config import config_hash
    from tf_supermask.training.config import RUN_CONTROL_FIELDS

    dataset = os.path.splitext(os.path.basename(config.dataset))[0]
    shuffled = "_shuffled" if config.shuffle else ""
    return os.path.join(root, f"prune_init_{config.model}_{dataset}_{config.method}{shuffled}_"
                              f"s{config.sparsity:g}_{config_hash(config, RUN_CONTROL_FIELDS)}")


class MaskRecorder(keras.callbacks.Callback):
    """At the end of training: writes mask.npz and puts the final mask's facts in `extra`."""

    def __init__(self, path, extra, dissipating=None):
        super().__init__()
        self.path = path
        self.extra = extra
        self.dissipating = dissipating

    def on_train_end(self, logs=None):
        masks = get_masks(self.model)
        save_masks(self.path, masks)
        kept = sum(float(mask.sum()) for mask in masks.values())
        size = sum(mask.size for mask in masks.values())
        self.extra["mask_sparsity"] = 1.0 - kept / size
        self.extra["mask_sparsity_per_layer"] = sparsity_per_layer(masks)
        if self.dissipating is not None:  # it warned (or raised) when a layer collapsed
            self.extra["dissipating_log"] = list(self.dissipating.log)
            self.extra["collapsed_during_training"] = list(self.dissipating.collapsed)


def prune_init(config: PruneInitConfig, callbacks=()):
    """Runs one pruning-at-initialization run and writes its run directory.

    Returns:
      The results (also in ``results.json``): train()'s, plus ``method``,
      ``target_sparsity`` (None for dissipating by its fraction alone, whose
      sparsity is an outcome), ``scope``, ``shuffled``, ``mask_sparsity`` (and
      ``mask_sparsity_per_layer``: the sparsity reached),
      ``initial_mask_sparsity_per_layer``, ``collapsed_layers``, ``mask_seconds`` and the method's own facts:
      K-starts fitness, mode, ``kstarts_epochs`` and the winner's
      ``kstarts_history``; ``start_epoch`` when the run went on from the
      K-starts winner (``history`` then holds the ``epochs - start_epoch``
      epochs trained after it, ``epochs_trained`` all of them); the
      dissipating target, fraction and per-epoch log.

    Raises:
      LayerCollapseError: a layer keeps no weight and ``config.collapse`` is "error".
    """
    from tf_supermask.training import train

    config = dataclasses.replace(config, run_dir=config.run_dir or
                                 default_prune_init_run_dir(config))
    if config.mask_file and not os.path.isfile(config.mask_file):
        raise FileNotFoundError(f"--mask_file {config.mask_file} does not exist")
    dissipating = make_callback(config)
    extra = {}

    def prepare(model, train_batches, dataset):
        start = time.time()
        steps = config.steps_per_epoch or 0
        masks, info = compute_masks(model, train_batches, config, steps_per_epoch=steps,
                                    callback=dissipating)
        extra.update(info)
        if dissipating is not None:
            extra.update({"dissipating_target": config.dissipating_target,
                          "dissipating_fraction": dissipating.fraction})
        # By Haroon's rule the sparsity is an outcome of the fraction, not a target.
        untargeted = dissipating is not None and config.dissipating_target == "none"
        extra.update({
            "method": config.method,
            "target_sparsity": None if untargeted else float(config.sparsity),
            "scope": config.resolved_scope, "shuffled": bool(config.shuffle),
            "initial_mask_sparsity_per_layer": sparsity_per_layer(masks),
            "mask_seconds": time.time() - start,
        })
        if config.verbose:
            print(f"{config.method}{' (shuffled)' if config.shuffle else ''} mask at "
                  f"sparsity {config.sparsity:g} ({config.resolved_scope}) in "
                  f"{extra['mask_seconds']:.1f} s")
        return extra

    final = {}
    recorder = MaskRecorder(os.path.join(config.run_dir, MASK_FILE), final, dissipating)
    extra_callbacks = ([dissipating] if dissipating is not None else []) + [recorder]
    results = train(config, callbacks=extra_callbacks + list(callbacks), prepare=prepare)
    # What is known only once training ends (the final mask) joins results.json now.
    final["collapsed_layers"] = list(extra.get("collapsed_layers", [])) + [
        path for path in final.pop("collapsed_during_training", [])
        if path not in extra.get("collapsed_layers", [])]
    final["epochs_trained"] = int(results.get("start_epoch", 0)) + len(
        results.get("history", {}).get("loss", []))
    results.update(final)
    results_path = os.path.join(results["run_dir"], run_dir_lib.RESULTS_FILE)
    if os.path.exists(results_path):
        stored = run_dir_lib.read_json(results_path)
        stored.update(final)
        run_dir_lib.write_json(results_path, stored)
    return results


run = prune_init  # every experiment driver has run(config)
