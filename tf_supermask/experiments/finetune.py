"""Pruning and fine-tuning (Liu et al., ICML 2021): prune trained weights by magnitude, then
fine-tune from them (no rewinding), in one shot, iteratively, or gradually during fine-tuning.

An experiment directory holds ordinary run directories::

    RUN_DIR/
      flags.txt, results.json   the experiment's flags; a summary of the result
      dense/                    the dense run, trained first when --dense_run is empty
      finetune/                 oneshot and gradual: the fine-tuning run (mask=fixed)
      round_1/ ... round_N/     iterative: one fine-tuning run per round
        mask.npz                each fine-tuning run's final mask, keyed by kernel path

Each fine-tuning run is a tf-supermask-train run directory (its ``flags.txt``
holds the training flags it ran with: mask=fixed, epochs=--finetune_epochs, lr=
--finetune_lr) whose weights came from the run before it: the dense run's final
weights, or the previous round's. Its ``checkpoints/initial.weights.h5`` holds
those weights and the mask it started from. A restarted experiment skips the runs
whose ``results.json`` exists and resumes the interrupted one.

Only layers built in fixed mode are pruned: with ``--prune_first_layer=auto`` the
first conv of the VGG, ResNet and MobileNet-v2 models stays dense, as in Liu et
al. ``--sparsity`` is the fraction of those layers' weights PRUNED.
"""

import os

from tf_supermask.config import to_flagfile
from tf_supermask.counting import resolve_rule
from tf_supermask.experiments.config import FinetuneConfig
from tf_supermask.experiments.stages import (Experiment, assign_trained, load_trained,  # noqa: F401
                                             record_mask, train_config, trained_values)
from tf_supermask.layers import set_masks
from tf_supermask.pruning.gradual import (GradualPruning, prune_by_magnitude, pruned_fraction,
                                          pruning_schedule)
from tf_supermask.sparsity import MASK_FILE, Mask
from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.records import say
from tf_supermask.training.run_dir import dataset_stem, default_run_dir, model_stem

BINARY = "tf-supermask-finetune"
DENSE_DIR = "dense"
# Flags of a dense run that must agree with the fine-tuning flags (they shape the network).
ARCHITECTURE_FLAGS = ("model", "width", "batchnorm", "dataset")


def default_finetune_dir(config, root="runs", kind="finetune"):
    """runs/<kind>_<model>_<method>_<dataset>_<hash of the non-default flags>."""
    return default_run_dir(config, kind, model_stem(config), config.prune_method, dataset_stem(config),
                           root=root)


def finetune_train_config(config, run_dir=""):
    """The training flags of a fine-tuning run (mask fixed, --finetune_epochs at
    --finetune_lr); `run_dir` is set by ``Experiment.stage`` when left empty."""
    return train_config(config, mask="fixed", train_weights="auto", epochs=config.finetune_epochs,
                        lr=config.finetune_lr or config.lr, run_dir=run_dir, overwrite=False)


# The dense run ----------------------------------------------------------------------------

def check_dense_run(config, dense_run):
    """Raises a ValueError unless `dense_run` is a finished run of the same network.

    Returns:
      The dense run's results.
    """
    from tf_supermask.training.trainer import FINAL_MODEL

    flags_path = os.path.join(dense_run, run_dir_lib.FLAGS_FILE)
    results_path = os.path.join(dense_run, run_dir_lib.RESULTS_FILE)
    if not os.path.isdir(dense_run):
        raise ValueError(f"--dense_run={dense_run} does not exist")
    if not os.path.exists(flags_path):
        raise ValueError(f"--dense_run={dense_run} is not a run directory (no "
                         f"{run_dir_lib.FLAGS_FILE})")
    if not (os.path.exists(results_path) and os.path.exists(os.path.join(dense_run, FINAL_MODEL))):
        raise ValueError(f"--dense_run={dense_run} has not finished (no "
                         f"{run_dir_lib.RESULTS_FILE} or {FINAL_MODEL})")
    with open(flags_path) as stream:
        theirs = run_dir_lib.parse_flagfile(stream.read())
    if theirs.get("mask", "dense") not in ("dense", "fixed"):
        raise ValueError(f"--dense_run={dense_run} trained a {theirs['mask']} supermask; "
                         "fine-tuning needs trained weights (a run with --mask=dense or fixed)")
    ours = run_dir_lib.parse_flagfile(to_flagfile(config))
    differ = [f"--{name}: {theirs.get(name)} there, {ours.get(name)} here"
              for name in ARCHITECTURE_FLAGS if theirs.get(name) != ours.get(name)]
    if differ:
        raise ValueError(f"--dense_run={dense_run} was made for another network ("
                         f"{'; '.join(differ)}); pass the same flags")
    return run_dir_lib.read_json(results_path)


def dense_stage(config, experiment, callbacks=()):
    """(run directory, results) of the experiment's own dense run, stage ``dense``,
    trained with the experiment's training flags unless it finished earlier."""
    results = experiment.stage(DENSE_DIR, train_config(config, mask="dense"), callbacks=callbacks)
    if not results.pop("finished_earlier", None):
        say(f"dense: test accuracy {results['test_accuracy']:.4f}")
    return experiment.path(DENSE_DIR), results


# One fine-tuning run ------------------------------------------------------------------------

def one_shot_rule(config):
    """The count rule of one-shot and iterative magnitude pruning: --count_rule, auto
    meaning round((1 - sparsity) * n) ("nearest": Liu et al.'s code is not public)."""
    return resolve_rule(config.count_rule, "nearest")


class _Start:
    """train()'s prepare hook: the trained weights, the previous mask, then magnitude pruning
    (one IMP step to `sparsity`, ``pruning.imp``)."""

    def __init__(self, source_dir, scope, sparsity=None, previous_masks=None, rule="nearest"):
        self.source_dir = source_dir
        self.scope = scope
        self.rule = rule
        self.sparsity = sparsity
        self.previous_masks = previous_masks

    def __call__(self, model, train_batches, dataset):
        assign_trained(model, trained_values(load_trained(self.source_dir)),
                       f"the run {self.source_dir}")
        if self.previous_masks is not None:
            set_masks(model, self.previous_masks)
        info = {"started_from": self.source_dir}
        if self.sparsity is not None:
            masks = prune_by_magnitude(model, self.sparsity, self.scope, self.rule)
            info.update(pruned_to=self.sparsity, pruned_at_start=pruned_fraction(masks))
        return {"finetune": info}


def pruned_stage(experiment, name, config, prepare, callbacks=(), **extra):
    """(results, final Mask) of a fine-tuning stage: ``Experiment.stage`` with
    ``record_mask`` as its finish (mask.npz, the pruned layers' sparsity) and `extra`
    added to its results.json."""
    def finish(results, model):
        return dict(record_mask(results, model), **extra)

    results = experiment.stage(name, config, prepare=prepare, callbacks=callbacks,
                               finish=finish)
    results.pop("finished_earlier", None)
    return results, Mask.load(experiment.path(name, MASK_FILE))


def run_finetune(config: FinetuneConfig, callbacks=()):
    """Runs (or resumes) a pruning-and-fine-tuning experiment (with --compare, use
    ``tf_supermask.experiments.comparison.run_comparison``).

    Stages: ``dense`` (unless --dense_run), then ``finetune`` (oneshot, gradual) or
    ``round_1`` ... ``round_N`` (iterative), each a tf-supermask-train run directory
    with its final ``mask.npz``.

    Args:
      config: the experiment's FinetuneConfig.
      callbacks: extra Keras callbacks for every training run.

    Returns:
      The summary also written to ``<run_dir>/results.json`` (test accuracy, the
      pruned layers' sparsity, every round), with ``run_dir``.

    Raises:
      RunDirError: the directory holds a finished experiment or other flags and
        ``config.overwrite`` is False.
      ValueError: bad flags, a --dense_run that is not a finished run of the same
        network, a gradual schedule that does not fit in fine-tuning.

    Example (one-shot pruning of a narrow fc to 80 % sparsity on the shipped sample)::

      from tf_supermask.experiments.config import FinetuneConfig
      summary = run_finetune(FinetuneConfig(dataset="sample", width=0.1, epochs=1,
                                            finetune_epochs=1, sparsity=0.8))
      summary["test_accuracy"], summary["pruned_layers_sparsity"]
    """
    if config.compare:
        raise ValueError("--compare runs the equal-budget comparison: call "
                         "tf_supermask.experiments.comparison.run_comparison (the "
                         "tf-supermask-finetune binary chooses it)")
    experiment = Experiment(config, config.run_dir or default_finetune_dir(config), callbacks)
    dense_run = config.dense_run
    dense_results = check_dense_run(config, dense_run) if dense_run else None
    steps_per_epoch = begin = end = None
    if config.prune_method == "gradual":  # fails before anything is written
        steps_per_epoch = experiment.steps_per_epoch()
        begin, end = config.schedule_steps(steps_per_epoch)
    with experiment:
        experiment.say_start(BINARY, f"{config.prune_method} pruning to sparsity "
                             f"{config.sparsity:g}" + (f" (dense run {dense_run})"
                                                       if dense_run else ""))
        if not dense_run:
            dense_run, dense_results = dense_stage(config, experiment)
        summary = _prune_and_finetune(config, experiment, dense_run, dense_results,
                                      steps_per_epoch, begin, end)
    say(f"{config.prune_method} pruning to {100 * summary['pruned_layers_sparsity']:.2f}%"
        f" sparsity: test accuracy {summary['test_accuracy']:.4f} (dense "
        f"{summary['dense_test_accuracy']:.4f}); results in {experiment.directory}")
    return summary


def _prune_and_finetune(config, experiment, dense_run, dense_results, steps_per_epoch, begin,
                        end):
    summary = {"experiment": "finetune", "prune_method": config.prune_method,
               "prune_scope": config.prune_scope, "target_sparsity": config.sparsity,
               "dense_run": dense_run, "dense_test_accuracy": dense_results["test_accuracy"]}
    rounds = []
    if config.prune_method == "iterative":
        source, masks = dense_run, None
        for index in range(1, config.prune_rounds + 1):
            name = f"round_{index}"
            sparsity = config.round_sparsity(index)
            start = _Start(source, config.prune_scope, sparsity, masks, one_shot_rule(config))
            results, masks = pruned_stage(experiment, name, finetune_train_config(config),
                                          start, round_target_sparsity=sparsity)
            rounds.append((index, experiment.path(name), results))
            source = experiment.path(name)
            say(f"round {index}/{config.prune_rounds}: "
                f"{100 * results['pruned_layers_sparsity']:.2f}% pruned, test accuracy "
                f"{results['test_accuracy']:.4f}")
    else:
        run_dir = experiment.path("finetune")
        extra, facts = [], {}
        if config.prune_method == "gradual":
            schedule = pruning_schedule(config.schedule, config.sparsity, begin, end,
                                        config.frequency, config.initial_sparsity, config.power)
            gradual = GradualPruning(schedule, config.prune_scope, verbose=config.verbose,
                                     log_dir=os.path.join(run_dir, "tensorboard", "pruning"),
                                     rule=resolve_rule(config.count_rule, "tfmot"))
            extra.append(gradual)
            start = _Start(dense_run, config.prune_scope)
            # The steps pruned in this process (all, unless resumed): a list the callback
            # fills while the stage trains, in results.json when it ends.
            facts["prune_events"] = gradual.events
        else:
            start = _Start(dense_run, config.prune_scope, config.sparsity,
                           rule=one_shot_rule(config))
        results, _ = pruned_stage(experiment, "finetune", finetune_train_config(config), start,
                                  extra, **facts)
        rounds.append((1, run_dir, results))
        if config.prune_method == "gradual":
            summary["schedule"] = {"kind": config.schedule, "begin_step": begin, "end_step": end,
                                   "frequency": config.frequency,
                                   "initial_sparsity": config.initial_sparsity,
                                   "power": config.power, "steps_per_epoch": steps_per_epoch}
            summary["prune_events"] = results.get("prune_events", [])

    last = rounds[-1][2]
    for key in ("test_accuracy", "test_loss", "weights_remaining", "weights_remaining_per_layer",
                "sparsity_per_layer", "pruned_layers_sparsity", "pruned_layers"):
        summary[key] = last[key]
    summary["finetune_epochs_total"] = config.finetune_epochs * len(rounds)
    summary["rounds"] = [{"round": index, "run_dir": os.path.relpath(path, experiment.directory),
                          "test_accuracy": results["test_accuracy"],
                          "pruned_layers_sparsity": results["pruned_layers_sparsity"],
                          "weights_remaining": results["weights_remaining"]}
                         for index, path, results in rounds]
    return experiment.write_summary(summary)


run = run_finetune  # every experiment driver has run(config)
