"""Lottery ticket, late rewinding and fine-tuning under one mask and one budget (Liu et al.,
ICML 2021), and the correlation between initial and trained weights.

``tf-supermask-finetune --compare=lottery,rewind,finetune --sparsities=0.5,0.7,0.9`` trains
(or takes, ``--dense_run``) one dense run, prunes its final weights by one-shot magnitude
at each sparsity, and trains every arm under that same mask for the same ``--finetune_epochs``
at the same learning rate and schedule. The arms differ only in the weights they start from:

- ``lottery``: the dense run's initial weights (the winning ticket, rewound to init);
- ``rewind``: its weights after ``--rewind_epoch`` epochs (late rewinding);
- ``finetune``: its final, trained weights (pruning and fine-tuning).

Layout::

    RUN_DIR/
      flags.txt, results.json     the flags; every arm's accuracy and the weight correlations
      dense/                      the dense run (unless --dense_run); it also keeps
                                  checkpoints/epoch_<k>.weights.h5 for the rewind arm
      sparsity_0.5/lottery/ ...   one tf-supermask-train run directory per arm (mask.npz too)

``tf-supermask-report RUN_DIR ...`` draws accuracy against weights remaining, one line per
arm (and per differing flag, e.g. the learning rate of two experiments), and adds a table of
the weight correlations.
"""

import os

import numpy as np

from tf_supermask.counting import kept_count
from tf_supermask.experiments.config import parse_arms, parse_sparsities
from tf_supermask.experiments.stages import (Experiment, SaveWeightsAtStep, assign_trained,
                                             load_trained, load_weights, trained_values)
from tf_supermask.training.records import say


def rewind_weights_path(dense_run, epoch):
    from tf_supermask.training.trainer import INITIAL_WEIGHTS

    return os.path.join(dense_run, os.path.dirname(INITIAL_WEIGHTS), f"epoch_{epoch}.weights.h5")


# Weight correlation ----------------------------------------------------------------------

def top_overlap(initial, trained, fraction):
    """Share of the `fraction` largest-magnitude initial weights that are also among the
    `fraction` largest trained ones (1: the same set; `fraction` on average by chance)."""
    initial, trained = np.abs(np.ravel(initial)), np.abs(np.ravel(trained))
    count = kept_count(initial.size, kept=fraction)
    if count == 0:
        return float("nan")
    top_initial = np.argsort(-initial, kind="stable")[:count]
    top_trained = np.argsort(-trained, kind="stable")[:count]
    return len(np.intersect1d(top_initial, top_trained)) / count


def weight_correlation(initial, trained, fractions):
    """{kernel path: {"pearson": r, "top_overlap": {fraction: overlap}}} between the initial
    and trained values of each kernel (dicts keyed by path, as from ``kernel_values``)."""
    out = {}
    for path in sorted(initial):
        a, b = np.ravel(initial[path]).astype(np.float64), np.ravel(trained[path]).astype(np.float64)
        pearson = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
        out[path] = {"pearson": pearson,
                     "top_overlap": {f"{fraction:g}": top_overlap(a, b, fraction)
                                     for fraction in fractions}}
    return out


# The arms --------------------------------------------------------------------------------

def _dense_values(dense_run, weights_path, dataset):
    """{variable path: value} of a weights file of the dense run, with masked kernels as they
    act (weight x mask); the model is built from the dense run's own flags."""
    from tf_supermask.models import build_model
    from tf_supermask.training.run_config import run_model_options

    name, options, _ = run_model_options(dense_run)
    model = build_model(name, dataset.input_shape, dataset.num_classes, options)
    load_weights(model, weights_path)
    return trained_values(model)


class _ArmStart:
    """train()'s prepare hook of one arm: the magnitude mask of the dense run's trained
    weights at `sparsity`, over the weights the arm starts from (`start`: {variable path:
    value}, with `start_path` the file they came from; None: the trained weights)."""

    def __init__(self, scope, arm, sparsity, trained, start=None, start_path=None,
                 rule="nearest"):
        self.scope = scope
        self.rule = rule
        self.arm = arm
        self.sparsity = sparsity
        self.trained = trained
        self.start = start
        self.start_path = start_path

    def __call__(self, model, train_batches, dataset):
        from tf_supermask.layers import set_masks
        from tf_supermask.pruning.gradual import prune_by_magnitude, pruned_fraction

        assign_trained(model, self.trained, "the dense run")
        masks = prune_by_magnitude(model, self.sparsity, self.scope, self.rule)
        if self.start is not None:
            assign_trained(model, self.start, f"the dense run's {self.start_path}")
            set_masks(model, masks)
        return {"comparison": {"arm": self.arm, "sparsity": self.sparsity,
                               "started_from": self.start_path or "trained weights",
                               "pruned_at_start": pruned_fraction(masks)}}


def run_comparison(config, callbacks=()):
    """Runs (or resumes) the comparison of a FinetuneConfig with --compare set.

    Stages: ``dense`` (unless --dense_run), then ``sparsity_<s>/<arm>`` for every
    sparsity and arm, each a tf-supermask-train run directory with its ``mask.npz``.

    Returns:
      The summary also written to ``<run_dir>/results.json`` (every arm's accuracy, the
      weight correlations), with ``run_dir``.

    Example (the three arms of a narrow fc at two sparsities on the shipped sample)::

      from tf_supermask.experiments.config import FinetuneConfig
      summary = run_comparison(FinetuneConfig(dataset="sample", width=0.1, epochs=3,
                                              compare="lottery,rewind,finetune",
                                              sparsities="0.5,0.8", finetune_epochs=1))
      [(arm["arm"], arm["sparsity"], arm["test_accuracy"]) for arm in summary["arms"]]
    """
    from tf_supermask.experiments.finetune import (BINARY, DENSE_DIR, check_dense_run,
                                                   dense_stage, default_finetune_dir,
                                                   finetune_train_config, one_shot_rule,
                                                   pruned_stage)
    from tf_supermask.layers import masked_layers
    from tf_supermask.training.trainer import INITIAL_WEIGHTS

    arms, sparsities = parse_arms(config.compare), parse_sparsities(config.sparsities)
    experiment = Experiment(config, config.run_dir or default_finetune_dir(config, kind="compare"),
                            callbacks)
    dataset = experiment.data[0]  # fails before anything is written
    rewind_step = config.rewind_arm_point().step(experiment.steps_per_epoch())
    dense_run = config.dense_run
    if dense_run:
        dense_results = check_dense_run(config, dense_run)
        if "rewind" in arms and not os.path.exists(rewind_weights_path(dense_run,
                                                                        config.rewind_epoch)):
            raise ValueError(f"the rewind arm needs the weights of --dense_run={dense_run} after "
                             f"epoch {config.rewind_epoch} "
                             f"({rewind_weights_path(dense_run, config.rewind_epoch)}), saved "
                             "only when the comparison trains its dense run: leave --dense_run "
                             "empty or drop the rewind arm")
    with experiment:
        experiment.say_start(BINARY, f"arms {', '.join(arms)} at sparsities "
                             f"{', '.join(f'{s:g}' for s in sparsities)}"
                             + (f" (dense run {dense_run})" if dense_run else ""))
        if not dense_run:
            extra = []
            if "rewind" in arms:
                extra.append(SaveWeightsAtStep(
                    rewind_weights_path(experiment.path(DENSE_DIR), config.rewind_epoch),
                    rewind_step))
            dense_run, dense_results = dense_stage(config, experiment, extra)
        # The dense run's weights, each loaded once: trained, initial, after --rewind_epoch.
        trained_model = load_trained(dense_run)
        trained = trained_values(trained_model)
        start_paths = {"lottery": os.path.join(dense_run, INITIAL_WEIGHTS),
                       "rewind": rewind_weights_path(dense_run, config.rewind_epoch)}
        starts = {arm: _dense_values(dense_run, path, dataset)
                  for arm, path in start_paths.items()
                  if arm in arms or arm == "lottery"}  # the initial weights: also the correlation

        points = []
        for sparsity in sparsities:
            for arm in arms:
                name = os.path.join(f"sparsity_{sparsity:g}", arm)
                start = _ArmStart(config.prune_scope, arm, sparsity, trained, starts.get(arm),
                                  start_paths.get(arm), one_shot_rule(config))
                results, _ = pruned_stage(experiment, name, finetune_train_config(config), start)
                points.append({"arm": arm, "sparsity": sparsity, "run_dir": name,
                               "test_accuracy": results["test_accuracy"],
                               "weights_remaining": results["weights_remaining"],
                               "pruned_layers_sparsity": results["pruned_layers_sparsity"]})
                say(f"sparsity {sparsity:g}, {arm}: test accuracy {results['test_accuracy']:.4f}")

        # Correlation of each kernel between initialization and the end of pretraining.
        paths = [layer.kernel_variable.path for layer in masked_layers(trained_model)]
        correlation = weight_correlation({path: starts["lottery"][path] for path in paths},
                                         {path: trained[path] for path in paths},
                                         [1.0 - s for s in sparsities])
        summary = experiment.write_summary({
            "experiment": "comparison", "arms": points, "dense_run": dense_run,
            "dense_test_accuracy": dense_results["test_accuracy"],
            "pretraining_lr": config.lr, "retraining_epochs": config.finetune_epochs,
            "rewind_epoch": config.rewind_epoch if "rewind" in arms else None,
            "weight_correlation": correlation})
    accuracies = [point["test_accuracy"] for point in points]
    say(f"comparison: {len(points)} arms, test accuracy {min(accuracies):.4f} to "
        f"{max(accuracies):.4f} (dense {dense_results['test_accuracy']:.4f}); results in "
        f"{experiment.directory}")
    return summary


run = run_comparison  # every experiment driver has run(config)
