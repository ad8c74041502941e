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
restarted experiment skips the levels whose ``results.json`` exists and
resumes the interrupted one.
"""

import dataclasses
import os
import re
import warnings

import keras
import numpy as np

from tf_supermask.config import option, to_flagfile
from tf_supermask.layers import MaskedConv2D, masked_layers, set_masks
from tf_supermask.pruning.criteria import CRITERIA, criterion_scores
from tf_supermask.pruning.select import (MASK_FILE, collapsed_layers, load_masks, save_masks,
                                         shuffle_masks, top_masks)
from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.distribute import single_worker_only
from tf_supermask.training.config import RUN_CONTROL_FIELDS, TrainConfig

INITIAL = os.path.join("checkpoints", "initial.weights.h5")
REWIND = os.path.join("checkpoints", "rewind.weights.h5")
PRUNED_WEIGHTS = ("zero", "init", "zero_if_shrunk")
REINITS = ("rewind", "reinit", "reshuffle", "constant")


@dataclasses.dataclass
class LotteryConfig(TrainConfig):
    """A lottery-ticket experiment: TrainConfig's fields plus the pruning procedure."""

    levels: int = option(10, "Pruning levels after the dense level 0.")
    prune_scope: str = option("layer", "layer: per-layer rates by layer kind; global: one rate "
                              "over all masked weights ranked together.", ("layer", "global"))
    prune_rate_conv: float = option(0.1, "Fraction of a conv layer's remaining weights pruned "
                                    "per level (--prune_scope=layer).")
    prune_rate_dense: float = option(0.2, "Same for hidden dense layers.")
    prune_rate_output: float = option(0.1, "Same for the output layer.")
    prune_rate: float = option(0.2, "Fraction of all remaining weights pruned per level "
                               "(--prune_scope=global).")
    rewind: str = option("init", "Where kept weights go back to: init, epoch:N or step:N "
                         "(late rewinding; weights saved during level 0).")
    criterion: str = option("large_final", "Mask criterion (Zhou et al.): large_final, "
                            "small_final, large_init, small_init, large_init_large_final, "
                            "small_init_small_final, magnitude_increase, movement, random, "
                            "each also as <name>_same_sign.")
    pruned_weights: str = option("zero", "What pruned weights become: zero, init (frozen at "
                                 "their initial value), zero_if_shrunk (zero where |w| shrank "
                                 "in training, else frozen at init).", PRUNED_WEIGHTS)
    reinit: str = option("rewind", "Kept weights at each level: rewind (their rewind values), "
                         "reinit (a fresh draw from the initializer), reshuffle (rewind values "
                         "permuted among the layer's kept positions), constant (+-the layer's "
                         "initial std).", REINITS)
    keep_signs: bool = option(False, "With reinit/reshuffle/constant: give kept weights the "
                              "signs of their rewind values.")
    shuffle_mask: bool = option(False, "Control: move each layer's kept positions to random "
                                "places (a random mask with the ticket's per-layer sparsity).")
    masks_from: str = option("", "Use each level's mask from this lottery experiment (its "
                             "level_N/mask.npz): the controls of a given ticket.")
    untrained_eval: bool = option(True, "Also evaluate each level's mask on the untrained "
                                  "initial weights (Zhou et al.'s supermask at init).")

    def __post_init__(self):
        super().__post_init__()
        single_worker_only(self.strategy, "tf-supermask-lottery")
        if self.mask not in ("dense", "fixed"):
            raise ValueError(f"tf-supermask-lottery trains weights under fixed masks; --mask "
                             f"must be dense or fixed, got {self.mask!r}")
        if self.levels < 0:
            raise ValueError(f"--levels must be at least 0, got {self.levels}")
        for name in ("prune_rate_conv", "prune_rate_dense", "prune_rate_output", "prune_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {value}")
        CRITERIA.get(self.criterion)  # a ValueError naming the criteria
        self.rewind_point()

    def rewind_point(self):
        """("init", 0), ("epoch", N) or ("step", N), after checking N is inside training."""
        match = re.fullmatch(r"(init)|(epoch|step):(\d+)", self.rewind.strip())
        if not match:
            raise ValueError(f"--rewind must be init, epoch:N or step:N, got {self.rewind!r}")
        if match.group(1):
            return "init", 0
        unit, value = match.group(2), int(match.group(3))
        if unit == "epoch" and value > self.epochs:
            raise ValueError(f"--rewind={self.rewind} is past the end of training "
                             f"(--epochs={self.epochs})")
        if unit == "step" and self.steps_per_epoch and value > self.epochs * self.steps_per_epoch:
            raise ValueError(f"--rewind={self.rewind} is past the end of training "
                             f"({self.epochs} epochs x {self.steps_per_epoch} steps)")
        return unit, value

    def mask_options(self):
        options = super().mask_options()
        return dataclasses.replace(options, mask="fixed", train_weights=True,
                                   pruned_values=self.pruned_weights != "zero")


def default_experiment_dir(config, root="runs"):
    from tf_supermask.config import config_hash

    dataset = os.path.splitext(os.path.basename(config.dataset))[0]
    return os.path.join(root, f"lottery_{config.model}_{dataset}_{config.criterion}_"
                              f"{config_hash(config, RUN_CONTROL_FIELDS)}")


# Weights and masks as {kernel path: numpy array} ------------------------------------------

def _pruned_layers(model):
    """Masked layers that prune (an unpruned first layer in dense mode is left out)."""
    return [layer for layer in masked_layers(model) if layer.is_masked]


def kernels(model):
    """{kernel path: raw kernel values} of the layers that prune."""
    return {layer.kernel_variable.path: keras.ops.convert_to_numpy(layer.kernel_variable)
            for layer in _pruned_layers(model)}


def load_weights(model, path):
    """model.load_weights without the warning about optimizer slots we do not want back.

    Weight files saved during training also hold the optimizer's state; rewinding
    restores weights only (each level starts with a fresh optimizer, as in LTH).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def set_kernels(model, values):
    layers = {layer.kernel_variable.path: layer for layer in _pruned_layers(model)}
    for path, value in values.items():
        layers[path].kernel_variable.assign(value)


def layer_kinds(model):
    """{kernel path: "conv" | "dense" | "output"}; the last masked layer is the output."""
    layers = _pruned_layers(model)
    kinds = {layer.kernel_variable.path: "conv" if isinstance(layer, MaskedConv2D) else "dense"
             for layer in layers}
    kinds[layers[-1].kernel_variable.path] = "output"
    return kinds




# One pruning step -----------------------------------------------------------------------

def next_masks(config, kinds, initial, final, previous, level):
    """The masks of `level` from the level before: the criterion's top entries among the kept.

    Args:
      config: the LotteryConfig (criterion, scope, rates, seed).
      kinds: {path: "conv" | "dense" | "output"} (layer_kinds).
      initial, final: {path: weights} at initialization and after the previous level.
      previous: {path: mask} of the previous level.
      level: the level being made (seeds the random criterion).
    """
    eligible = {path: np.asarray(mask) > 0 for path, mask in previous.items()}
    scores = criterion_scores(config.criterion, initial, final, seed=config.seed * 1000 + level,
                              eligible=eligible)
    if config.prune_scope == "global":
        remaining = sum(int(mask.sum()) for mask in eligible.values())
        return top_masks(scores, total=int(round(remaining * (1.0 - config.prune_rate))),
                         eligible=eligible)
    rates = {"conv": config.prune_rate_conv, "dense": config.prune_rate_dense,
             "output": config.prune_rate_output}
    counts = {path: int(round(int(mask.sum()) * (1.0 - rates[kinds[path]])))
              for path, mask in eligible.items()}
    return top_masks(scores, counts=counts, eligible=eligible)


def pruned_values(mode, initial, final, masks):
    """{path: values pruned entries take}, or None for plain zeros."""
    if mode == "zero":
        return None
    values = {}
    for path, mask in masks.items():
        frozen = np.where(np.asarray(mask) > 0, 0.0, initial[path])
        if mode == "zero_if_shrunk":
            frozen = np.where(np.abs(final[path]) < np.abs(initial[path]), 0.0, frozen)
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


def fresh_kernels(model, seed):
    """A new draw of every masked kernel from its layer's initializer under another seed."""
    values = {}
    for index, layer in enumerate(_pruned_layers(model)):
        init = layer.kernel_initializer
        config = init.get_config()
        if "seed" in config:
            config["seed"] = seed * 7919 + index + 1
            init = type(init).from_config(config)
        values[layer.kernel_variable.path] = keras.ops.convert_to_numpy(
            init(layer.kernel_variable.shape, dtype="float32"))
    return values


# Callbacks --------------------------------------------------------------------------------

class SaveWeightsAtStep(keras.callbacks.Callback):
    """Saves the model's weights once, when the optimizer reaches `step` (late rewinding)."""

    def __init__(self, path, step):
        super().__init__()
        self.path = path
        self.step = int(step)
        self.done = os.path.exists(path)

    def _save(self):
        temp = self.path[:-len(".weights.h5")] + ".tmp.weights.h5"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.model.save_weights(temp)
        os.replace(temp, self.path)
        self.done = True

    def on_train_batch_end(self, batch, logs=None):
        if not self.done and int(keras.ops.convert_to_numpy(
                self.model.optimizer.iterations)) >= self.step:
            self._save()


# The experiment ---------------------------------------------------------------------------

def _level_results_path(experiment, level):
    return os.path.join(experiment, f"level_{level}", run_dir_lib.RESULTS_FILE)


def _final_kernels(experiment, level):
    from tf_supermask.training.trainer import FINAL_MODEL

    model = keras.saving.load_model(os.path.join(experiment, f"level_{level}", FINAL_MODEL),
                                    compile=False)
    return kernels(model)


def _early_stop(history, steps_per_epoch):
    """Iteration (and epoch) of minimum validation loss, from the epoch history."""
    losses = history.get("val_loss") or []
    if not losses:
        return {}
    epoch = int(np.argmin(losses))
    out = {"early_stop_epoch": epoch + 1, "early_stop_iteration": (epoch + 1) * steps_per_epoch,
           "early_stop_val_loss": float(losses[epoch])}
    if history.get("val_accuracy"):
        out["early_stop_val_accuracy"] = float(history["val_accuracy"][epoch])
    return out


def run_lottery(config: LotteryConfig, callbacks=()):
    """Runs (or resumes) a lottery experiment; returns the summary written to results.json.

    Raises:
      RunDirError: the experiment directory holds a finished experiment or other
        flags and ``config.overwrite`` is False.
      ValueError: bad flags, --masks_from without the needed masks, rewind past
        the end of training.
    """
    from tf_supermask.training import trainer

    experiment = config.run_dir or default_experiment_dir(config)
    dataset, normalization = trainer.load_data(config)  # fails before anything is written
    steps = trainer.steps_per_epoch(config, dataset)
    unit, point = config.rewind_point()
    rewind_step = point * steps if unit == "epoch" else point
    if rewind_step > config.epochs * steps:
        raise ValueError(f"--rewind={config.rewind} is past the end of training "
                         f"({config.epochs} epochs x {steps} steps)")
    if config.masks_from:
        for level in range(config.levels + 1):
            path = os.path.join(config.masks_from, f"level_{level}", MASK_FILE)
            if not os.path.exists(path):
                raise ValueError(f"--masks_from={config.masks_from} has no mask for level "
                                 f"{level} ({path}); run that experiment first")
    run_dir_lib.prepare(experiment, to_flagfile(config), config.overwrite,
                        ignore=RUN_CONTROL_FIELDS)
    initial_path = os.path.join(experiment, INITIAL)
    rewind_path = initial_path if unit == "init" or rewind_step == 0 else os.path.join(
        experiment, REWIND)
    test_batches = trainer.make_batches(config, dataset, normalization)[2]
    summary = []
    for level in range(config.levels + 1):
        level_dir = os.path.join(experiment, f"level_{level}")
        results_path = _level_results_path(experiment, level)
        if os.path.exists(results_path):
            summary.append(run_dir_lib.read_json(results_path))
            if config.verbose:
                print(f"level {level}: finished earlier, skipped")
            continue
        prepare = _LevelSetup(config, experiment, level, initial_path, rewind_path, test_batches)
        extra = list(callbacks)
        if level == 0 and rewind_path != initial_path:
            extra.append(SaveWeightsAtStep(rewind_path, rewind_step))
        level_config = dataclasses.replace(config, run_dir=level_dir, overwrite=False,
                                           mask="fixed")
        results = trainer.train(level_config, callbacks=extra, prepare=prepare)
        results.pop("run_dir", None)
        results.update(_early_stop(results.get("history", {}), steps))
        run_dir_lib.write_json(results_path, results)
        summary.append(results)
        if config.verbose:
            print(f"level {level}: {100 * results['weights_remaining']:.1f}% weights remaining, "
                  f"test accuracy {results['test_accuracy']:.4f}"
                  + (f", untrained {results['untrained_test_accuracy']:.4f}"
                     if "untrained_test_accuracy" in results else ""))
    keys = ("level", "weights_remaining", "test_accuracy", "untrained_test_accuracy",
            "early_stop_iteration", "early_stop_val_accuracy", "weights_remaining_per_layer")
    table = {"levels": [{key: result[key] for key in keys if key in result}
                        for result in summary]}
    last = summary[-1]
    table.update({"test_accuracy": last["test_accuracy"],
                  "weights_remaining": last["weights_remaining"],
                  "sparsity_per_layer": last["sparsity_per_layer"],
                  "criterion": config.criterion, "experiment": "lottery"})
    run_dir_lib.write_json(os.path.join(experiment, run_dir_lib.RESULTS_FILE), table)
    table["run_dir"] = experiment
    return table


class _LevelSetup:
    """train()'s prepare hook for one level: mask, starting weights, untrained evaluation."""

    def __init__(self, config, experiment, level, initial_path, rewind_path, test_batches):
        self.config = config
        self.experiment = experiment
        self.level = level
        self.initial_path = initial_path
        self.rewind_path = rewind_path
        self.test_batches = test_batches
        self._final_weights = None

    def _final(self):
        """The previous level's final kernels (loaded once)."""
        if self._final_weights is None:
            self._final_weights = _final_kernels(self.experiment, self.level - 1)
        return self._final_weights

    def _masks(self, model, initial):
        """The level's ticket mask, and the mask actually trained (shuffled for the control)."""
        config, level = self.config, self.level
        if config.masks_from:
            ticket = load_masks(os.path.join(config.masks_from, f"level_{level}", MASK_FILE))
        elif level == 0:
            ticket = {path: np.ones_like(value, np.float32) for path, value in initial.items()}
        else:
            previous = load_masks(os.path.join(self.experiment, f"level_{level - 1}", MASK_FILE))
            ticket = next_masks(config, layer_kinds(model), initial, self._final(), previous,
                                level)
        if config.shuffle_mask and level > 0:
            return shuffle_masks(ticket, seed=config.seed * 1000 + level)
        return ticket

    def __call__(self, model, train_batches, dataset):
        config, level = self.config, self.level
        level_dir = os.path.join(self.experiment, f"level_{level}")
        if level == 0 and not os.path.exists(self.initial_path):
            temp = self.initial_path[:-len(".weights.h5")] + ".tmp.weights.h5"
            os.makedirs(os.path.dirname(self.initial_path), exist_ok=True)
            model.save_weights(temp)
            os.replace(temp, self.initial_path)
        load_weights(model, self.initial_path)
        initial = kernels(model)
        masks = self._masks(model, initial)
        collapsed = collapsed_layers(masks)
        if collapsed:
            raise ValueError(f"level {level} would prune every weight of {collapsed}: "
                             "lower the rates or the number of levels")
        save_masks(os.path.join(level_dir, MASK_FILE), masks)
        out = {"level": level, "criterion": config.criterion, "reinit": config.reinit,
               "pruned_weights": config.pruned_weights}
        set_masks(model, masks)
        if config.untrained_eval:
            out["untrained_test_accuracy"] = float(
                model.evaluate(self.test_batches, verbose=0, return_dict=True)["accuracy"])
        if level == 0:
            return out
        if self.rewind_path != self.initial_path:
            load_weights(model, self.rewind_path)
            set_masks(model, masks)
        frozen = pruned_values(config.pruned_weights, initial, self._final(), masks)
        if frozen is not None:
            for layer in _pruned_layers(model):
                layer.set_pruned_values(frozen[layer.kernel_variable.path])
        fresh = (fresh_kernels(model, config.seed * 1000 + level) if config.reinit == "reinit"
                 else None)
        stds = {path: float(np.std(value)) for path, value in initial.items()}
        rng = np.random.default_rng([config.seed, level, 17])
        set_kernels(model, reinitialized(config.reinit, kernels(model), masks, fresh, stds,
                                         config.keep_signs, rng))
        return out


run = run_lottery  # every experiment driver has run(config)
