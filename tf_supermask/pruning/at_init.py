"""Pruning at initialization: the methods by name, their options, and the mask a run
starts from.

Methods (registered in ``PRUNE_METHODS``): ``random``, ``magnitude``,
``snip``, ``grasp``, ``synflow`` (scores in ``tf_supermask.pruning.saliency``),
``kstarts``, ``dissipating`` and ``kstarts_dissipating`` (Haroon's methods in
``tf_supermask.pruning.haroon``).

Haroon's methods follow the paper's reading by default, the earlier
behaviours are named choices:

- ``kstarts``: ``--kstarts_mode=continue`` (default) trains on from the
  winner's weights and optimizer state, and the winner's ``--kstarts_epochs``
  count inside the run's ``--epochs``; ``rewind`` retrains the winner's mask
  from the initial weights for the full ``--epochs``.
- ``dissipating``: ``--dissipating_target=none`` (default) removes every
  weight within ``--dissipating_fraction`` of its initial value at the end of
  each of the first ``--dissipating_epochs`` epochs; the sparsity reached is
  an outcome (``--sparsity`` is not used). ``calibrate`` first finds the
  fraction that reaches ``--sparsity`` (a replay of the dissipating epochs,
  ``dissipating_calibrate``), then removes by it. ``reach`` forces
  ``--sparsity`` at the last dissipating epoch (``--dissipating_schedule``).
- ``kstarts_dissipating``: K-starts keeps (1 - sparsity) ** split of the
  weights (with ``--kstarts_mode``), then dissipating acts during the first
  ``--dissipating_epochs`` epochs trained under the winner's mask, measuring
  each weight's change from its value at initialization (before K-starts),
  with ``--dissipating_target``.
"""

import numpy as np

from tf_supermask.counting import resolve_rule
from tf_supermask.layers import set_masks
from tf_supermask.pruning.haroon import (DissipatingCallback, dissipating_calibrate,
                                         dissipating_search, kstarts_masks, restore, snapshot)
from tf_supermask.pruning.options import METHOD_SCOPES, PruneOptions  # noqa: F401
from tf_supermask.pruning.saliency import (SALIENCY_COUNT_RULE, check_collapse,
                                           fixed_layers, grasp_masks, grasp_scores,
                                           kernel_values, magnitude_scores, random_masks,
                                           select_masks, snip_scores, synflow_masks)
from tf_supermask import choices
from tf_supermask.registry import Registry
from tf_supermask import streams
from tf_supermask.sparsity import Mask

PRUNE_METHODS = Registry("pruning-at-initialization method", names=choices.PRUNE_METHODS)


# ---------------------------------------------------------------------------
# The registered methods.


class PruneMethod:
    """A method: ``initial_masks`` before training, optionally a callback during it."""

    during_training = False

    def initial_masks(self, model, batches, options):
        """(masks, info) to train under from the start."""
        raise NotImplementedError

    def callback(self, options):
        """A ``DissipatingCallback`` for methods that keep pruning while training, else None."""
        return None


def _method(name):
    """Registers a PruneMethod class under `name`, a choice of PruneOptions.method."""
    if name not in METHOD_SCOPES:
        raise ValueError(f"{name!r} is not in tf_supermask.pruning.options.METHOD_SCOPES")

    def register(cls):
        PRUNE_METHODS.register(name)(cls())
        return cls

    return register


@_method("random")
class RandomMethod(PruneMethod):
    def initial_masks(self, model, batches, options):
        return random_masks(model, options.sparsity, options.resolved_scope,
                            _options_seed(options), _count_rule(options)), {}


@_method("magnitude")
class MagnitudeMethod(PruneMethod):

    def initial_masks(self, model, batches, options):
        scores = magnitude_scores(model)
        return select_masks(scores, options.sparsity, options.resolved_scope,
                            rule=_count_rule(options)), {}


@_method("snip")
class SnipMethod(PruneMethod):

    def initial_masks(self, model, batches, options):
        scores = snip_scores(model, batches, options.snip_batches)
        return select_masks(scores, options.sparsity, options.resolved_scope,
                            rule=_count_rule(options)), {}


@_method("grasp")
class GraspMethod(PruneMethod):

    def initial_masks(self, model, batches, options):
        scores = grasp_scores(model, batches, options.grasp_batches, options.grasp_temperature)
        return grasp_masks(scores, options.sparsity, options.resolved_scope,
                           _count_rule(options)), {}


@_method("synflow")
class SynflowMethod(PruneMethod):

    def initial_masks(self, model, batches, options):
        masks = synflow_masks(model, options.sparsity, options.resolved_scope,
                              options.synflow_iterations, rule=_count_rule(options))
        return masks, {}


def _options_seed(options):
    return getattr(options, "seed", 0)


def _count_rule(options):
    """--count_rule, auto meaning Synaptic-Flow's rule (the saliency methods' reference)."""
    return resolve_rule(getattr(options, "count_rule", "auto"), SALIENCY_COUNT_RULE)


def _kstarts(model, batches, options, sparsity):
    return kstarts_masks(model, batches, sparsity, options.resolved_scope, options.kstarts_k,
                         options.kstarts_epochs, options.kstarts_fitness, _options_seed(options),
                         options.kstarts_steps, options.kstarts_gradient_batches,
                         options.kstarts_mode, verbose=0)


def _kstarts_info(info):
    # Continuing from the winner: its epochs were the run's first ones.
    if info["kstarts_mode"] == "continue":
        info["start_epoch"] = info["kstarts_epochs"]
    return info


def _dissipating_callback(options):
    return DissipatingCallback(options.sparsity, options.resolved_scope,
                               options.dissipating_epochs,
                               options.dissipating_fraction, options.dissipating_schedule,
                               options.collapse, options.dissipating_target)


@_method("kstarts")
class KStartsMethod(PruneMethod):
    def initial_masks(self, model, batches, options):
        masks, info = _kstarts(model, batches, options, options.sparsity)
        return masks, _kstarts_info(info)


@_method("dissipating")
class DissipatingMethod(PruneMethod):
    during_training = True

    def initial_masks(self, model, batches, options):
        layers = fixed_layers(model)
        return {path: np.ones(layer.kernel_variable.shape, np.float32)
                for path, layer in layers.items()}, {}

    def callback(self, options):
        return _dissipating_callback(options)


@_method("kstarts_dissipating")
class KStartsDissipatingMethod(PruneMethod):
    during_training = True

    def initial_masks(self, model, batches, options):
        density = options.density ** float(options.kstarts_dissipating_split)
        masks, info = _kstarts(model, batches, options, 1.0 - density)
        info["kstarts_sparsity"] = 1.0 - density
        return masks, _kstarts_info(info)

    def callback(self, options):
        return _dissipating_callback(options)


def method_names():
    return PRUNE_METHODS.names()


def compute_masks(model, batches, options, steps_per_epoch=0, callback=None):
    """The mask a run trains under from its first step, and what the method reports.

    Runs `options.method` (or loads `options.mask_file`), applies the shuffle
    ablation, sets the masks on the model and checks for layer collapse.

    For the methods that act during training, `callback` (``make_callback``;
    None for library callers that start it themselves) is started here, with
    w_init the kernels at initialization and its removal epochs counted from
    the epoch training starts at; with ``dissipating_target=calibrate`` its
    fraction is found first (``dissipating_calibrate``). With shuffle the
    dissipating epochs are run here (``dissipating_search``) so that the final
    mask can be shuffled; a shuffled mask always trains from the initial
    weights and optimizer state, for the full epochs.

    Returns:
      (masks, info). ``info["start_epoch"]``, when present, is the epoch
      training goes on from (K-starts continuing from its winner).
    """
    method = PRUNE_METHODS.get(options.method)
    fixed_layers(model)
    initial = kernel_values(model)
    start = snapshot(model) if options.shuffle and not options.mask_file else None
    if options.mask_file:
        masks = Mask.load(options.mask_file)
        set_masks(model, masks)
        info = {"mask_file": options.mask_file}
    else:
        masks, info = method.initial_masks(model, batches, options)
        set_masks(model, masks)
        if method.during_training and (options.shuffle or callback is not None):
            callback = method.callback(options) if options.shuffle else callback
            first_epoch = int(info.get("start_epoch", 0))
            if options.dissipating_target == "calibrate":
                fraction = dissipating_calibrate(model, batches, callback, initial, first_epoch,
                                                 steps_per_epoch)
                info["dissipating_fraction_calibrated"] = fraction
            callback.start(model, initial=initial, first_epoch=first_epoch)
            if options.shuffle:
                masks = dissipating_search(model, batches, callback, steps_per_epoch)
                info["dissipating_log"] = callback.log
    if start is not None:
        restore(model, start)
        info.pop("start_epoch", None)
    if options.shuffle:
        masks = Mask(masks).shuffled(streams.seed("prune_init_shuffle", _options_seed(options)))
        set_masks(model, masks)
    info["collapsed_layers"] = check_collapse(masks, options.collapse,
                                              f"the {options.method} mask")
    return masks, info


def make_callback(options):
    """The callback pruning during training, or None (shuffled or loaded masks are fixed)."""
    if options.shuffle or options.mask_file:
        return None
    return PRUNE_METHODS.get(options.method).callback(options)

PRUNE_METHODS.check_complete()
