"""Experiments as stages: what the lottery, fine-tuning, comparison and pruning-at-init
drivers share.

An experiment is a directory holding its ``flags.txt``, a summary ``results.json``
and one ordinary run directory per stage (a lottery level, a fine-tuning round, a
comparison arm, the dense run). ``Experiment`` gives every driver:

- **one default-directory rule**: ``default_run_dir`` (runs/<parts>_<hash of the
  non-default flags>, run-control flags left out);
- **one dataset load**: ``Experiment.data`` loads the dataset the first time and
  every stage trains on that copy;
- **one resume rule**: a stage whose ``results.json`` exists finished (it is
  written once, complete, last) and is read back, any other is trained or resumed
  by ``train()`` from its last finished epoch;
- **one way to add to a stage's results.json**: the stage's ``finish(results,
  model)`` hook, run by ``train()`` on the final model before results.json is
  written (``record_mask`` is the one every pruning driver uses);
- weight helpers the drivers pass between stages (``load_weights``,
  ``SaveWeightsAtStep``, ``trained_values``, ``assign_trained``, ``load_trained``).

Example (a two-stage experiment of our own):

    experiment = Experiment(config, default_run_dir(config, "mine", config.model))
    with experiment:
        dense = experiment.stage("dense", train_config(config, mask="dense"))
        pruned = experiment.stage("pruned", train_config(config, mask="fixed"),
                                  prepare=my_prepare, finish=record_mask)
        experiment.write_summary({"dense": dense["test_accuracy"],
                                  "pruned": pruned["test_accuracy"]})
"""

import dataclasses
import os
import warnings

import keras
import numpy as np

from tf_supermask.config import to_flagfile
from tf_supermask.layers import get_masks, masked_layers
from tf_supermask.sparsity import MASK_FILE, Mask
from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.config import RUN_CONTROL_FIELDS, TrainConfig
from tf_supermask.training.records import say
from tf_supermask.training.run_dir import dataset_stem, default_run_dir  # noqa: F401

# Variables that come from the pruning, not from a trained run.
_NOT_COPIED = ("mask", "pruned_values", "scores", "seed_generator_state")


def train_config(config, **changes):
    """The TrainConfig made of `config`'s training fields (an experiment's config holds
    them and its own), with `changes`."""
    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(TrainConfig)}
    values.update(changes)
    return TrainConfig(**values)


class Experiment:
    """An experiment directory and the stages run in it.

    Args:
      config: the experiment's configuration (its flags.txt is written from it).
      directory: the experiment's directory.
      callbacks: extra Keras callbacks given to every stage.

    Use it as a context manager: entering checks and locks the directory (a
    finished experiment or one made with other flags is refused unless
    ``config.overwrite``), leaving releases it.
    """

    def __init__(self, config, directory, callbacks=()):
        self.config = config
        self.directory = directory
        self.callbacks = list(callbacks)
        self._data = None
        self.state = None  # "new" or "resume", once entered

    @property
    def data(self):
        """(dataset, normalization), loaded once for every stage."""
        if self._data is None:
            from tf_supermask.training.trainer import load_data

            self._data = load_data(self.config)
        return self._data

    def steps_per_epoch(self, config=None):
        from tf_supermask.training.trainer import steps_per_epoch

        return steps_per_epoch(config or self.config, self.data[0])

    def __enter__(self):
        self.state = run_dir_lib.prepare(self.directory, to_flagfile(self.config),
                                         self.config.overwrite, ignore=RUN_CONTROL_FIELDS)
        return self

    def say_start(self, binary, what=""):
        """Prints the line saying what started (at every ``--verbose``): the binary, the
        experiment's directory, its model and dataset, and `what` (its levels, arms...)."""
        say(f"{binary}: {'Resuming' if self.state == 'resume' else 'Starting'} "
            f"{self.directory}: {self.config.model} on {self.config.dataset}"
            f"{f', {what}' if what else ''}")

    def __exit__(self, *exc_info):
        run_dir_lib.release(self.directory)

    def path(self, *name):
        return os.path.join(self.directory, *name)

    def finished(self, name):
        """The results of stage `name` if it finished (its results.json exists), else None."""
        results_path = os.path.join(self.path(name), run_dir_lib.RESULTS_FILE)
        return run_dir_lib.read_json(results_path) if os.path.exists(results_path) else None

    def stage(self, name, config, prepare=None, callbacks=(), start_step=0, finish=None):
        """Runs stage `name` (a run directory inside the experiment), or reads it back.

        Args:
          name: the stage's folder, relative to the experiment ("level_2",
            "sparsity_0.5/lottery").
          config: the stage's TrainConfig (its run_dir and overwrite are set here).
          prepare, start_step, finish: as ``train()``'s.
          callbacks: Keras callbacks of this stage, after the experiment's.

        Returns:
          The stage's results (``finished_earlier`` True when read back).
        """
        from tf_supermask.training.trainer import train

        done = self.finished(name)
        if done is not None:
            say(f"{name.replace('_', ' ')}: finished earlier, skipped")
            return dict(done, finished_earlier=True)
        config = dataclasses.replace(config, run_dir=self.path(name), overwrite=False)
        results = train(config, callbacks=self.callbacks + list(callbacks), prepare=prepare,
                        start_step=start_step, finish=finish, data=self.data, announce=None)
        results.pop("run_dir", None)
        return results

    def write_summary(self, summary):
        """Writes the experiment's results.json (last: the experiment is then finished);
        returns the summary with ``run_dir``."""
        run_dir_lib.write_json(self.path(run_dir_lib.RESULTS_FILE), summary)
        return dict(summary, run_dir=self.directory)


# The finish hook of pruned stages ----------------------------------------------------------

def record_mask(results, model):
    """A stage's ``finish``: writes its final mask to ``mask.npz`` and adds the pruned
    layers' sparsity (``pruned_layers_sparsity``) and names (``pruned_layers``)."""
    mask = Mask(get_masks(model))
    mask.save(os.path.join(results["run_dir"], MASK_FILE))
    return {"pruned_layers_sparsity": mask.sparsity(), "pruned_layers": sorted(mask)}


# Weights passed between stages ------------------------------------------------------------

def load_weights(model, path):
    """model.load_weights without the warning about optimizer slots we do not want back.

    Weight files saved during training also hold the optimizer's state. Keras loads it
    into a built optimizer, and into an unbuilt one whose variables happen to match in
    number (an SGD without momentum has only its step count): a lottery level resets
    the optimizer afterwards (``reset_optimizer``).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


class SaveWeightsAtStep(keras.callbacks.Callback):
    """Saves the model's weights once, when the optimizer reaches `step` (late rewinding,
    the comparison's rewind arm)."""

    def __init__(self, path, step):
        super().__init__()
        self.path = path
        self.step = int(step)
        self.done = os.path.exists(path)

    def _save(self):
        with run_dir_lib.atomic_file(self.path) as temp:
            self.model.save_weights(temp)
        self.done = True

    def on_train_batch_end(self, batch, logs=None):
        if not self.done and int(keras.ops.convert_to_numpy(
                self.model.optimizer.iterations)) >= self.step:
            self._save()


def _copied(variable):
    return variable.path.split("/")[-1] not in _NOT_COPIED


def trained_values(model):
    """{variable path: value} of what a pruned stage starts from: every weight and
    BatchNorm statistic, with masked kernels as they act (weight x mask)."""
    values = {variable.path: keras.ops.convert_to_numpy(variable)
              for variable in model.variables if _copied(variable)}
    for layer in masked_layers(model):
        values[layer.kernel_variable.path] = keras.ops.convert_to_numpy(layer.kernel)
    return values


def load_trained(run_dir):
    """The final model of a finished run directory."""
    from tf_supermask.training.trainer import FINAL_MODEL

    return keras.saving.load_model(os.path.join(run_dir, FINAL_MODEL), compile=False)


def assign_trained(model, values, source="the trained run"):
    """Copies `values` into `model` by variable path; masks and scores are left alone.

    Raises:
      ValueError: the two networks do not have the same variables and shapes.
    """
    targets = {variable.path: variable for variable in model.variables if _copied(variable)}
    missing, extra = sorted(set(targets) - set(values)), sorted(set(values) - set(targets))
    shapes = sorted(path for path in set(targets) & set(values)
                    if tuple(targets[path].shape) != tuple(np.shape(values[path])))
    if missing or extra or shapes:
        raise ValueError(f"{source} does not hold this network's weights: missing {missing}, "
                         f"unexpected {extra}, other shapes {shapes}")
    for path, variable in targets.items():
        variable.assign(values[path])
