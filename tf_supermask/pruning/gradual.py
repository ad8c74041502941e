"""Magnitude pruning of fixed-mode masks: in one shot, or gradually while training, on a tfmot
schedule.

tensorflow-model-optimization's pruning wrappers only accept legacy tf_keras
models, so we keep its schedule objects (``PolynomialDecay``,
``ConstantSparsity``) and apply what they say to our own masked layers: at the
start of every training batch ``GradualPruning`` asks the schedule whether the
current optimizer step is a pruning step and at which sparsity, and if so
replaces each mask by the largest-magnitude weights it still keeps.

Importing tfmot as a package sets ``TF_USE_LEGACY_KERAS=1`` in the process and
imports tf_keras, after which ``tf.keras`` (if not yet resolved) and
``tf.compat.v2.keras`` become tf_keras. ``tfmot_schedules`` therefore loads only
tfmot's schedule module (it needs nothing but TensorFlow and six), without
running the package's ``__init__``; the user's ``tf.keras`` and environment stay
as they were.

``sparsity`` here is the fraction of weights PRUNED, as in tfmot; masks keep
``1 - sparsity`` (the ``k`` of the rest of the library).
"""

import importlib
import importlib.util
import os
import sys

import keras
import numpy as np

from tf_supermask.layers import masked_layers, set_masks
from tf_supermask.pruning.options import GRADUAL_SCHEDULES, SCOPES
from tf_supermask.pruning.imp import IterativeMagnitudePruning
from tf_supermask.sparsity import Mask

SCHEDULES = GRADUAL_SCHEDULES
# The model attribute where ``prune_low_magnitude`` leaves {"schedule", "scope"} for
# ``GradualPruning()`` (tfmot keeps them in its wrappers).
PRUNING_ATTRIBUTE = "_tf_supermask_pruning"

_TFMOT = "tensorflow_model_optimization"
_SCHEDULE_MODULE = _TFMOT + ".python.core.sparsity.keras.pruning_schedule"
_SCHEDULE_FILE = os.path.join("python", "core", "sparsity", "keras", "pruning_schedule.py")
_schedules = None


def tfmot_schedules():
    """tfmot's pruning_schedule module (``PolynomialDecay``, ``ConstantSparsity``, ...).

    If the process already imported tfmot, its own module is returned. Otherwise
    the module's file is loaded on its own, under a private name, so that
    neither tf_keras nor ``TF_USE_LEGACY_KERAS`` comes in. (Importing the
    package and restoring the variable afterwards is not enough: tfmot imports
    ``tensorflow.compat.v2`` anew, whose ``keras`` then resolves to tf_keras.)

    Raises:
      ImportError: tensorflow-model-optimization is not installed, or its
        schedule module is not where this version expects it.
    """
    global _schedules
    if _TFMOT in sys.modules:
        return importlib.import_module(_SCHEDULE_MODULE)
    if _schedules is not None:
        return _schedules
    spec = importlib.util.find_spec(_TFMOT)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gradual pruning uses tensorflow-model-optimization's schedules: "
                          "pip install tensorflow-model-optimization")
    path = os.path.join(list(spec.submodule_search_locations)[0], _SCHEDULE_FILE)
    if not os.path.exists(path):
        raise ImportError(f"this tensorflow-model-optimization has no {_SCHEDULE_FILE}; "
                          "importing the whole package would switch tf.keras to tf_keras "
                          "(this code was written against tensorflow-model-optimization 0.8.1)")
    module_spec = importlib.util.spec_from_file_location(
        "tf_supermask.pruning._tfmot_pruning_schedule", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    _schedules = module
    return module


def pruning_schedule(kind, sparsity, begin_step, end_step=-1, frequency=100,
                     initial_sparsity=0.0, power=3.0):
    """A tfmot schedule object.

    Args:
      kind: "polynomial" (``PolynomialDecay`` from `initial_sparsity` at
        `begin_step` to `sparsity` at `end_step`, Zhu & Gupta 2017) or
        "constant" (``ConstantSparsity``: `sparsity` from `begin_step` on).
      sparsity: final fraction of weights pruned.
      begin_step, end_step: optimizer steps of the first and last pruning
        ("constant": -1 for no end).
      frequency: prune every this many steps.
      initial_sparsity, power: of the polynomial schedule.
    """
    schedules = tfmot_schedules()
    if kind == "polynomial":
        return schedules.PolynomialDecay(initial_sparsity=float(initial_sparsity),
                                         final_sparsity=float(sparsity),
                                         begin_step=int(begin_step), end_step=int(end_step),
                                         power=float(power), frequency=int(frequency))
    if kind == "constant":
        return schedules.ConstantSparsity(float(sparsity), begin_step=int(begin_step),
                                          end_step=int(end_step), frequency=int(frequency))
    raise ValueError(f"unknown pruning schedule {kind!r}; choose one of {SCHEDULES}")


def evaluate_schedule(schedule, step):
    """(should_prune, sparsity) as Python values from a tfmot schedule at optimizer `step`.

    The sparsity is tfmot's float32 value (0.9 comes back as 0.8999999761581421),
    which the "tfmot" count rule rounds as tfmot does.
    """
    import tensorflow as tf

    should_prune, sparsity = schedule(tf.constant(int(step), tf.int64))
    return bool(np.asarray(should_prune)), float(np.float32(np.asarray(sparsity)))


def prunable_layers(model):
    """The masked layers whose mask is given (fixed mode): the ones magnitude pruning sets."""
    return [layer for layer in masked_layers(model) if layer.mask_mode == "fixed"]


def magnitude_masks(model, sparsity, scope="layer", rule="nearest"):
    """Masks keeping the largest |weight| among the entries each fixed-mode mask still keeps.

    Args:
      model: a model with fixed-mode masked layers.
      sparsity: target fraction of each layer's weights ("layer") or of all
        their weights together ("global") that is pruned, in [0, 1].
      scope: "layer" (every layer keeps ``counting.kept_count(size, pruned=sparsity,
        rule)`` weights) or "global" (that many of the total, ranked over all layers).
      rule: a ``tf_supermask.counting`` rule: "nearest" (round((1 - s) * n)) for
        one-shot pruning, "tfmot" (tfmot's float32 rounding) under a tfmot schedule.

    Weights already pruned stay pruned: when the current mask keeps fewer weights
    than asked, it is returned unchanged (a mask never grows back).

    Returns:
      A ``Mask`` (one IMP step to a target sparsity, ``pruning.imp``).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity (the fraction pruned) must be in [0, 1], got {sparsity}")
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; choose one of {SCOPES}")
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("magnitude pruning sets fixed masks: build the model with mask='fixed'")
    scores, eligible = {}, {}
    for layer in layers:
        path = layer.kernel_variable.path
        scores[path] = np.abs(keras.ops.convert_to_numpy(layer.kernel_variable))
        eligible[path] = keras.ops.convert_to_numpy(layer.get_mask()) > 0
    return IterativeMagnitudePruning(scope, rule).step(scores, eligible, sparsity=sparsity)


def prune_by_magnitude(model, sparsity, scope="layer", rule="nearest"):
    """Sets the fixed masks of `model` to ``magnitude_masks`` and returns them."""
    masks = magnitude_masks(model, sparsity, scope, rule)
    set_masks(model, masks)
    return masks


def pruned_fraction(masks):
    """Fraction of entries pruned over all the given masks together."""
    return Mask(masks).sparsity()


class GradualPruning(keras.callbacks.Callback):
    """Magnitude pruning driven by a tfmot pruning schedule while a model trains.

    At the start of each training batch, the optimizer's iteration count is the
    step handed to the schedule; when it answers ``should_prune``, every
    fixed-mode mask is set by ``magnitude_masks`` at the schedule's sparsity
    (before that step's update, as tfmot's own pruning wrapper does).

    It plays both of tfmot's callbacks: ``UpdatePruningStep`` (the pruning itself)
    and, with `log_dir`, ``PruningSummaries`` (per-layer sparsity in TensorBoard).

    Args:
      schedule: a tfmot ``PruningSchedule`` (see ``pruning_schedule``), or any
        callable mapping a step tensor to (should_prune, sparsity). None: the
        schedule ``prune_low_magnitude`` attached to the model.
      scope: "layer" or "global" (see ``magnitude_masks``). None: the scope
        ``prune_low_magnitude`` attached to the model, else "layer".
      rule: the ``tf_supermask.counting`` rule; default tfmot's own
        (``max(1, round(float32(n) * (1 - float32(sparsity))))``).
      verbose: print each pruning step.
      log_dir: where TensorBoard scalars ``sparsity/<kernel path>`` and
        ``sparsity/pruned_layers`` are written at every pruning step (with the
        optimizer step as x); None, or no TensorFlow/TensorBoard: not written.

    Attributes:
      events: [{"step", "sparsity", "pruned"}] of the pruning steps taken in this
        process ("sparsity": the schedule's, to 6 decimals; "pruned": the fraction
        actually pruned over the pruned layers).
    """

    def __init__(self, schedule=None, scope=None, verbose=0, log_dir=None, rule="tfmot"):
        super().__init__()
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"unknown pruning scope {scope!r}; choose one of {SCOPES}")
        self.schedule = schedule
        self.scope = scope
        self.rule = rule
        self.verbose = verbose
        self.events = []
        self.log_dir = log_dir
        self._writer = None
        self._last_step = None

    def on_train_begin(self, logs=None):
        attached = getattr(self.model, PRUNING_ATTRIBUTE, None) or {}
        if self.schedule is None:
            self.schedule = attached.get("schedule")
        if self.scope is None:
            self.scope = attached.get("scope", "layer")
        if not callable(self.schedule):
            raise ValueError("GradualPruning needs a schedule, e.g. pruning_schedule(...), or a "
                             "model from prune_low_magnitude(model, pruning_schedule)")
        if not prunable_layers(self.model):
            raise ValueError("GradualPruning sets fixed masks: build the model with mask='fixed'")
        self._last_step = None
        from tf_supermask.training.callbacks import tensorboard_available

        if self.log_dir and tensorboard_available():
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step == self._last_step:
            return
        self._last_step = step
        should_prune, sparsity = evaluate_schedule(self.schedule, step)
        if should_prune:
            self.prune(step, sparsity)

    def prune(self, step, sparsity):
        """Prunes the model to `sparsity` now (recorded as `step`)."""
        masks = prune_by_magnitude(self.model, sparsity, self.scope, self.rule)
        event = {"step": int(step), "sparsity": round(float(sparsity), 6),
                 "pruned": pruned_fraction(masks)}
        self.events.append(event)
        if self._writer is not None:
            import tensorflow as tf

            with self._writer.as_default():
                for path, mask in masks.items():
                    tf.summary.scalar(f"sparsity/{path}", 1.0 - float(np.mean(mask)), step=step)
                tf.summary.scalar("sparsity/pruned_layers", event["pruned"], step=step)
            self._writer.flush()
        if self.verbose:
            print(f"\nstep {step}: pruned to sparsity {sparsity:.4f} "
                  f"({100 * event['pruned']:.2f}% of the pruned layers' weights)")


__all__ = ["GradualPruning", "SCHEDULES", "SCOPES", "evaluate_schedule", "magnitude_masks",
           "prunable_layers", "prune_by_magnitude", "pruned_fraction", "pruning_schedule",
           "tfmot_schedules"]
