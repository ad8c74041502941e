"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding, Zhou et al.'s variants.

An experiment directory holds one run directory per level::

    EXPERIMENT/
      flags.txt  results.json           the experiment's flags; a summary of every level
      checkpoints/initial.weights.h5    the initialization (saved once)
      checkpoints/rewind.weights.h5     the weights at --rewind=epoch:N / step:N (saved once)
      level_0/ ... level_L/             ordinary run directories (tf-supermask-train's layout)
        mask.npz                        the level's mask, keyed by kernel variable path

Level 0 trains the dense network (all-ones mask). Level L > 0 scores the
weights of level L-1 with the mask criterion (initial vs final values), keeps
the highest-scoring fraction of the weights level L-1 kept, puts the kept
weights back to their rewind values (or re-initializes them) and retrains. A
restarted experiment skips the levels whose ``results.json`` exists (written
once, complete, when the level ends) and resumes the interrupted one from its
last finished epoch.

Late rewinding (``--rewind=step:N`` / ``epoch:N``) follows open_lth: every level
after the dense one starts from the weights saved at step N with a fresh
optimizer (step count 0, zero slots) and trains the steps N..T of the dense run
(T = epochs x steps per epoch), not T more: the learning-rate schedule is read N
steps ahead, so the first step gets the schedule's rate at step N, and the
batches are those the dense run saw from step N on (the rest of its epoch, then
the following epochs). Fresh Adam moments restart their bias correction at 1,
as a fresh PyTorch optimizer does. This does not depend on
``--untrained_eval``.
"""

import dataclasses
import os

import keras
import numpy as np

from tf_supermask import streams
from tf_supermask.counting import resolve_rule
from tf_supermask.experiments.config import LotteryConfig
from tf_supermask.experiments.stages import Experiment, SaveWeightsAtStep, load_weights
from tf_supermask.layers import masked_layers, set_masks
from tf_supermask.pruning.criteria import criterion_scores
from tf_supermask.pruning.imp import IterativeMagnitudePruning
from tf_supermask.sparsity import MASK_FILE, Mask
from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.records import per_epoch_evaluation, say
from tf_supermask.training.run_dir import dataset_stem, default_run_dir, model_stem

BINARY = "tf-supermask-lottery"
INITIAL = os.path.join("checkpoints", "initial.weights.h5")
REWIND = os.path.join("checkpoints", "rewind.weights.h5")


def default_experiment_dir(config, root="runs"):
    """runs/lottery_<model>_<dataset>_<criterion>_<hash of the non-default flags>."""
    return default_run_dir(config, "lottery", model_stem(config), dataset_stem(config),
                           config.criterion, root=root)


# Weights and masks as {kernel path: numpy array} ------------------------------------------

def _pruned_layers(model):
    """Masked layers that prune (an unpruned first layer in dense mode is left out)."""
    return [layer for layer in masked_layers(model) if layer.is_masked]


def kernels(model):
    """{kernel path: raw kernel values} of the layers that prune."""
    return {layer.kernel_variable.path: keras.ops.convert_to_numpy(layer.kernel_variable)
            for layer in _pruned_layers(model)}


def effective_kernels(model):
    """{kernel path: the kernel the layer computes with} (mask applied, pruned entries at
    their frozen values)."""
    return {layer.kernel_variable.path: keras.ops.convert_to_numpy(layer.kernel)
            for layer in _pruned_layers(model)}


def reset_optimizer(optimizer):
    """Puts an optimizer back to its fresh state: step count and every slot 0.

    Built or not (an unbuilt one already has its step count). The learning rate (a
    variable when constant) is left alone. Our optimizers (sgd, adam, adamw, rmsprop
    and their L2 forms) all start their slots at zero.
    """
    if optimizer is None:
        return
    rate = optimizer._learning_rate  # a Variable when the rate is a float
    for variable in optimizer.variables:
        if variable is not rate:
            variable.assign(keras.ops.zeros(variable.shape, variable.dtype))


def set_kernels(model, values):
    layers = {layer.kernel_variable.path: layer for layer in _pruned_layers(model)}
    for path, value in values.items():
        layers[path].kernel_variable.assign(value)


def layer_kinds(model):
    """{kernel path: "conv" | "dense" | "output"}; the last masked layer is the output."""
    layers = _pruned_layers(model)
    kinds = {layer.kernel_variable.path: layer.kind for layer in layers}
    kinds[layers[-1].kernel_variable.path] = "output"
    return kinds




# One pruning step -----------------------------------------------------------------------

def tiebreak_keys(arrays, seed, level):
    """{path: uniform random keys of that array's shape} that break ties between equal
    scores at random, as Zhou et al.'s ``np.lexsort((np.random.random(n), scores))``
    does (stream lottery_tiebreak of the run's seed and the level)."""
    rng = streams.rng("lottery_tiebreak", seed, level)
    return {path: rng.random(np.shape(arrays[path])) for path in sorted(arrays)}


def next_masks(config, kinds, initial, final, previous, level):
    """The masks of `level` from the level before: the criterion's top entries among the kept.

    Ties between equal scores are broken at random (seeded by the seed and the level),
    as in Zhou et al.'s code. The output layer keeps its mask when
    ``config.prunes_output()`` is False.

    Args:
      config: the LotteryConfig (criterion, scope, rates, seed, output layer).
      kinds: {path: "conv" | "dense" | "output"} (layer_kinds).
      initial, final: {path: weights} at initialization and after the previous level.
      previous: {path: mask} of the previous level.
      level: the level being made (seeds the random criterion and the tie-break).
    """
    eligible = {path: np.asarray(mask) > 0 for path, mask in previous.items()}
    frozen = set() if config.prunes_output() else {
        path for path in eligible if kinds[path] == "output"}
    prunable = {path: keep for path, keep in eligible.items() if path not in frozen}
    seed = streams.seed("lottery_level", config.seed, level)
    scores = criterion_scores(config.criterion, {p: initial[p] for p in prunable},
                              {p: final[p] for p in prunable}, seed=seed, eligible=prunable)
    tiebreak = tiebreak_keys(scores, config.seed, level)
    if config.prune_scope == "global":
        # open_lth (sparse_global): the count comes from every remaining weight, the
        # layers left out included, and is pruned from the prunable layers; its
        # threshold sorted[ceil(rate x remaining)] prunes one more (rule "open_lth").
        imp = IterativeMagnitudePruning("global", resolve_rule(config.count_rule, "open_lth"))
        return imp.step(scores, previous, rate=config.prune_rate, frozen=frozen,
                        tiebreak=tiebreak)
    rates = {"conv": config.prune_rate_conv, "dense": config.prune_rate_dense,
             "output": config.prune_rate_output}
    # Zhou et al. prune int(remaining x (1 - (1 - rate)) x 100 / 100) per layer
    # (rule "deconstructing": one fewer than the exact count at a 20 % rate).
    imp = IterativeMagnitudePruning("layer", resolve_rule(config.count_rule, "deconstructing"))
    return imp.step(scores, previous, rates={path: rates[kinds[path]] for path in prunable},
                    frozen=frozen, tiebreak=tiebreak)


def pruned_values(mode, start, final, masks):
    """{path: values pruned entries take}, or None for plain zeros.

    As Zhou et al., a level's "initial" weights are the previous level's start weights:
    `start` and `final` are the kernels the previous level computed with at its start
    and end (``effective_kernels``: pruned entries at their frozen values). An entry
    pruned earlier has the same start and final value, so it keeps that value (a
    weight zeroed at one level stays zero); a newly pruned entry takes its start value
    ("init"), or 0 where its magnitude shrank in training ("zero_if_shrunk").
    """
    if mode == "zero":
        return None
    values = {}
    for path, mask in masks.items():
        frozen = np.where(np.asarray(mask) > 0, 0.0, start[path])
        if mode == "zero_if_shrunk":
            frozen = np.where(np.abs(final[path]) < np.abs(start[path]), 0.0, frozen)
        values[path] = frozen.astype(np.float32)
    return values


def reinitialized(mode, rewind, masks, fresh, initial_std, keep_signs, rng):
    """Kept weights' starting values under --reinit (pruned entries are left as they are).

    Args:
      mode: "rewind", "reinit", "reshuffle" or "constant".
      rewind: {path: rewind weights}.
      masks: {path: mask}.
      fresh: {path: a fresh draw from the layer's initializer} (mode "reinit").
      initial_std: {path: std of the layer's initial weights} (mode "constant").
      keep_signs: give kept weights the signs of their rewind values.
      rng: NumPy generator (reshuffle permutations, constant's random signs).
    """
    if mode == "rewind":
        return {path: np.array(value, np.float32) for path, value in rewind.items()}
    out = {}
    for path, weights in rewind.items():
        weights = np.asarray(weights, np.float32)
        kept = np.asarray(masks[path]).reshape(-1) > 0
        flat = weights.reshape(-1).copy()
        if mode == "reinit":
            new = np.asarray(fresh[path], np.float32).reshape(-1)[kept]
        elif mode == "reshuffle":
            new = rng.permutation(flat[kept])
        else:  # constant
            new = initial_std[path] * rng.choice(np.array([-1.0, 1.0], np.float32), kept.sum())
        if keep_signs:
            sign = np.where(flat[kept] < 0, -1.0, 1.0)
            new = np.abs(new) * sign
        flat[kept] = new
        out[path] = flat.reshape(weights.shape)
    return out


def fresh_kernels(model, seed, level):
    """A new draw of every masked kernel from its layer's initializer under another seed."""
    values = {}
    for index, layer in enumerate(_pruned_layers(model)):
        init = layer.kernel_initializer
        config = init.get_config()
        if "seed" in config:
            config["seed"] = streams.seed("lottery_fresh", seed, level, index)
            init = type(init).from_config(config)
        values[layer.kernel_variable.path] = keras.ops.convert_to_numpy(
            init(layer.kernel_variable.shape, dtype="float32"))
    return values


# Callbacks --------------------------------------------------------------------------------

class LevelKillPoint(keras.callbacks.Callback):
    """Test hook: ``TF_SUPERMASK_KILL_AT=level:<L>:batch:<epoch>:<batch>`` SIGKILLs the
    process after that batch of level L (epochs numbered from 0 as in metrics.csv)."""

    def __init__(self, level):
        super().__init__()
        self.level = level
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        run_dir_lib.kill_point(f"level:{self.level}:batch:{self._epoch}:{batch}")


# The experiment ---------------------------------------------------------------------------

def _level_results_path(experiment, level):
    return os.path.join(experiment, f"level_{level}", run_dir_lib.RESULTS_FILE)


def _level_model(experiment, level, name):
    """The model saved as `name` (final.keras) in level `level`'s run directory."""
    return keras.saving.load_model(os.path.join(experiment, f"level_{level}", name),
                                   compile=False)


def early_stop(history, steps_per_epoch, first_epoch=0):
    """The epoch of minimum validation loss, from a level's epoch history.

    The validation figures are ``val_loss`` and ``val_accuracy`` with a held-out split,
    else those of the test set, ``test_loss`` and ``test_accuracy`` (``val_*`` in runs
    written before the test set was named so); the results keep the names below.

    Args:
      history: {metric: per-epoch values} of the epochs the level trained.
      steps_per_epoch: optimizer steps per epoch.
      first_epoch: the epoch the level's history starts at (late rewinding to step N
        starts at epoch N // steps_per_epoch).

    Returns:
      {} without validation losses, else ``early_stop_epoch`` (counted from 0, as the
      epoch column of metrics.csv and TensorBoard's epoch axis), ``early_stop_iteration``
      (optimizer steps from the start of training, the rewound ones included, at the
      end of that epoch), ``early_stop_val_loss`` and ``early_stop_val_accuracy``.
    """
    validation_is_test = not history.get("val_loss")
    losses = per_epoch_evaluation(history, "loss", validation_is_test)
    if not losses:
        return {}
    index = int(np.argmin(losses))
    epoch = first_epoch + index
    out = {"early_stop_epoch": epoch, "early_stop_iteration": (epoch + 1) * steps_per_epoch,
           "early_stop_val_loss": float(losses[index])}
    accuracies = per_epoch_evaluation(history, "accuracy", validation_is_test)
    if accuracies:
        out["early_stop_val_accuracy"] = float(accuracies[index])
    return out


def run_lottery(config: LotteryConfig, callbacks=()):
    """Runs (or resumes) a lottery experiment: levels 0..L as stages of one experiment.

    Args:
      config: the experiment's LotteryConfig.
      callbacks: extra Keras callbacks given to every level.

    Returns:
      The summary written to ``<run_dir>/results.json`` (``levels``: each level's
      weights remaining, test accuracy, untrained accuracy, early-stop epoch; the last
      level's figures), with ``run_dir``.

    Raises:
      RunDirError: the experiment directory holds a finished experiment or other
        flags and ``config.overwrite`` is False.
      ValueError: bad flags, --masks_from without the needed masks, rewind past
        the end of training.

    Example (two levels of a narrow fc on the shipped sample, a few seconds)::

      from tf_supermask.experiments.config import LotteryConfig
      summary = run_lottery(LotteryConfig(dataset="sample", epochs=1, levels=1, width=0.1,
                                          run_dir="runs/lottery_demo"))
      [level["test_accuracy"] for level in summary["levels"]]
    """
    experiment = Experiment(config, config.run_dir or default_experiment_dir(config),
                            callbacks)
    steps = experiment.steps_per_epoch()  # the data load fails before anything is written
    rewind_step = config.rewind_point().step(steps)
    if rewind_step > config.epochs * steps:
        raise ValueError(f"--rewind={config.rewind} is past the end of training "
                         f"({config.epochs} epochs x {steps} steps)")
    if config.masks_from:
        for level in range(config.levels + 1):
            path = os.path.join(config.masks_from, f"level_{level}", MASK_FILE)
            if not os.path.exists(path):
                raise ValueError(f"--masks_from={config.masks_from} has no mask for level "
                                 f"{level} ({path}); run that experiment first")
    with experiment:
        experiment.say_start(BINARY, f"levels 0-{config.levels}, criterion {config.criterion}")
        summary = _run_levels(config, experiment, steps, rewind_step)
    last = summary["levels"][-1]
    say(f"lottery: level {last['level']}, {100 * last['weights_remaining']:.1f}% weights "
        f"remaining, test accuracy {last['test_accuracy']:.4f}; results in "
        f"{experiment.directory}")
    return summary


def _run_levels(config, experiment, steps, rewind_step):
    from tf_supermask.training import trainer

    initial_path = experiment.path(INITIAL)
    rewind_path = initial_path if rewind_step == 0 else experiment.path(REWIND)
    test_batches = trainer.make_batches(config, *experiment.data)[2]
    summary = []
    for level in range(config.levels + 1):
        prepare = _LevelSetup(config, experiment.directory, level, initial_path, rewind_path,
                              test_batches)
        extra = []
        if os.environ.get(run_dir_lib.KILL_ENV, "").startswith("level:"):
            extra.append(LevelKillPoint(level))
        if level == 0 and rewind_path != initial_path:
            extra.append(SaveWeightsAtStep(rewind_path, rewind_step))
        start_step = rewind_step if level > 0 else 0

        def finish(results, model, start_step=start_step):
            return {"start_step": start_step,
                    **early_stop(results.get("history", {}), steps, start_step // steps)}

        # A level's flags.txt holds the experiment's flags (mask fixed): its model is
        # built by LotteryConfig.mask_options (frozen pruned values, weights training).
        results = experiment.stage(f"level_{level}", dataclasses.replace(config, mask="fixed"),
                                   prepare=prepare, callbacks=extra, start_step=start_step,
                                   finish=finish)
        summary.append(results)
        if results.pop("finished_earlier", False):
            continue
        run_dir_lib.kill_point(f"level:{level}:done")
        say(f"level {level}: {100 * results['weights_remaining']:.1f}% weights remaining, "
            f"test accuracy {results['test_accuracy']:.4f}"
            + (f", untrained {results['untrained_test_accuracy']:.4f}"
               if "untrained_test_accuracy" in results else ""))
    keys = ("level", "weights_remaining", "test_accuracy", "untrained_test_accuracy",
            "early_stop_epoch", "early_stop_iteration", "early_stop_val_accuracy",
            "weights_remaining_per_layer")
    table = {"levels": [{key: result[key] for key in keys if key in result}
                        for result in summary]}
    last = summary[-1]
    table.update({"test_accuracy": last["test_accuracy"],
                  "weights_remaining": last["weights_remaining"],
                  "sparsity_per_layer": last["sparsity_per_layer"],
                  "criterion": config.criterion, "experiment": "lottery"})
    return experiment.write_summary(table)


class _LevelSetup:
    """train()'s prepare hook for one level: mask, starting weights, untrained evaluation."""

    def __init__(self, config, experiment, level, initial_path, rewind_path, test_batches):
        self.config = config
        self.experiment = experiment
        self.level = level
        self.initial_path = initial_path
        self.rewind_path = rewind_path
        self.test_batches = test_batches
        self._final_model = None

    def _final(self):
        """The previous level's trained model (loaded once)."""
        if self._final_model is None:
            from tf_supermask.training.trainer import FINAL_MODEL

            self._final_model = _level_model(self.experiment, self.level - 1, FINAL_MODEL)
        return self._final_model

    def _masks(self, model, initial):
        """The level's ticket mask, and the mask actually trained (shuffled for the control).

        `initial` holds the weights the criteria compare the previous level's final
        weights with (--criterion_init)."""
        config, level = self.config, self.level
        if config.masks_from:
            ticket = Mask.load(os.path.join(config.masks_from, f"level_{level}", MASK_FILE))
        elif level == 0:
            ticket = Mask.ones(initial)
        else:
            previous = Mask.load(os.path.join(self.experiment, f"level_{level - 1}", MASK_FILE))
            ticket = next_masks(config, layer_kinds(model), initial, kernels(self._final()),
                                previous, level)
        if config.shuffle_mask and level > 0:
            return ticket.shuffled(streams.seed("lottery_level", config.seed, level))
        return ticket

    def _previous_start(self, model):
        """The kernels level L-1 started from, as it computed with them."""
        from tf_supermask.training.trainer import INITIAL_WEIGHTS

        load_weights(model, os.path.join(self.experiment, f"level_{self.level - 1}",
                                         INITIAL_WEIGHTS))
        return effective_kernels(model)

    def __call__(self, model, train_batches, dataset):
        config, level = self.config, self.level
        level_dir = os.path.join(self.experiment, f"level_{level}")
        if level == 0 and not os.path.exists(self.initial_path):
            with run_dir_lib.atomic_file(self.initial_path) as temp_path:
                model.save_weights(temp_path)
        previous_start = (self._previous_start(model)
                          if level > 0 and config.pruned_weights != "zero" else None)
        late = level > 0 and self.rewind_path != self.initial_path
        compared = None
        if late and config.criterion_init == "rewind":
            # The criteria's "initial" weights: those the level trains from (step N).
            load_weights(model, self.rewind_path)
            compared = kernels(model)
        load_weights(model, self.initial_path)
        initial = kernels(model)
        masks = self._masks(model, initial if compared is None else compared)
        collapsed = masks.collapsed()
        if collapsed:
            raise ValueError(f"level {level} would prune every weight of {collapsed}: "
                             "lower the rates or the number of levels")
        masks.save(os.path.join(level_dir, MASK_FILE))
        out = {"level": level, "criterion": config.criterion, "reinit": config.reinit,
               "pruned_weights": config.pruned_weights}
        set_masks(model, masks)
        if level > 0:
            if self.rewind_path != self.initial_path:
                load_weights(model, self.rewind_path)
                set_masks(model, masks)
            frozen = (None if previous_start is None else pruned_values(
                config.pruned_weights, previous_start, effective_kernels(self._final()), masks))
            if frozen is not None:
                for layer in _pruned_layers(model):
                    layer.set_pruned_values(frozen[layer.kernel_variable.path])
            fresh = (fresh_kernels(model, config.seed, level)
                     if config.reinit == "reinit" else None)
            stds = {path: float(np.std(value)) for path, value in initial.items()}
            rng = streams.rng("lottery_reinit", config.seed, level)
            set_kernels(model, reinitialized(config.reinit, kernels(model), masks, fresh, stds,
                                             config.keep_signs, rng))
        if config.untrained_eval:
            # The level's mask on the weights it starts from: the rewind point's, or a
            # control's re-initialised, reshuffled or constant ones.
            out["untrained_test_accuracy"] = float(
                model.evaluate(self.test_batches, verbose=0, return_dict=True)["accuracy"])
        # Whatever the weight files loaded above held, the level starts with a fresh
        # optimizer (a resumed level then gets its own state back from its backup).
        reset_optimizer(model.optimizer)
        return out


run = run_lottery  # every experiment driver has run(config)
