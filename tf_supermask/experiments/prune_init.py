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

from tf_supermask.experiments.config import PruneInitConfig  # noqa: F401
from tf_supermask.layers import get_masks
from tf_supermask.pruning.at_init import compute_masks, make_callback
from tf_supermask.pruning.saliency import sparsity_per_layer
from tf_supermask.sparsity import MASK_FILE, Mask
from tf_supermask.training.records import say
from tf_supermask.training.run_dir import dataset_stem, default_run_dir, model_stem

BINARY = "tf-supermask-prune-init"


def default_prune_init_run_dir(config, root="runs"):
    """runs/prune_init_<model>_<dataset>_<method>[_shuffled]_s<sparsity>_<hash>."""
    method = config.method + ("_shuffled" if config.shuffle else "")
    return default_run_dir(config, "prune_init", model_stem(config), dataset_stem(config), method,
                           f"s{config.sparsity:g}", root=root)


def final_mask_facts(results, model, initial_collapsed=(), dissipating=None):
    """The run's ``finish``: writes the final mask to mask.npz and returns what is known
    only once training ends (the mask reached, the layers that collapsed, the epochs
    trained, the dissipating log)."""
    mask = Mask(get_masks(model))
    mask.save(os.path.join(results["run_dir"], MASK_FILE))
    facts = {"mask_sparsity": mask.sparsity(),
             "mask_sparsity_per_layer": sparsity_per_layer(mask)}
    collapsed = list(initial_collapsed)
    if dissipating is not None:  # it warned (or raised) when a layer collapsed
        facts["dissipating_log"] = list(dissipating.log)
        collapsed += [path for path in dissipating.collapsed if path not in collapsed]
    facts["collapsed_layers"] = collapsed
    facts["epochs_trained"] = int(results.get("start_epoch", 0)) + len(
        results.get("history", {}).get("loss", []))
    return facts


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
        say(f"{config.method}{' (shuffled)' if config.shuffle else ''} mask at "
            f"sparsity {config.sparsity:g} ({config.resolved_scope}) in "
            f"{extra['mask_seconds']:.1f} s")
        return extra

    def finish(results, model):
        return final_mask_facts(results, model, extra.get("collapsed_layers", []), dissipating)

    return train(config, callbacks=([dissipating] if dissipating is not None else [])
                 + list(callbacks), prepare=prepare, finish=finish, announce=BINARY)


run = prune_init  # every experiment driver has run(config)
