"""Optimizers and learning-rate schedules, by name.

Weight decay comes in two forms (``TrainConfig.weight_decay_mode``):

* ``l2``: ``wd * param`` is added to the gradient before the optimizer's own
  rule (momentum, Nesterov, Adam's moments), as PyTorch's ``weight_decay``
  argument does for SGD, Adam and RMSprop. hidden-networks (edge-popup),
  open_lth and Liu et al. train with PyTorch SGD, so this is their rule. At
  momentum 0.9 it decays about 10x more than the decoupled rule.
* ``decoupled``: Keras's own ``weight_decay``, ``param -= lr * wd * param`` once
  a step, apart from the gradient (AdamW's rule).

SGD momentum comes in two forms (``TrainConfig.momentum_rule``):

* ``pytorch``: ``buf = m * buf + g``, ``param -= lr_t * buf`` (Nesterov:
  ``param -= lr_t * (g + m * buf)``), as ``torch.optim.SGD`` and TensorFlow 1's
  ``MomentumOptimizer``: the rate of each step multiplies the whole buffer. This is
  the rule of every SGD recipe we reproduce (hidden-networks, open_lth, Liu et al.,
  Synaptic-Flow, Zhou et al.).
* ``keras``: Keras's ``v = m * v - lr_t * g``, ``param += v`` (Nesterov:
  ``param += m * v - lr_t * g``): each step's rate is folded into the buffer, so
  after the rate drops the buffer still carries the old, larger steps.

The two agree while the rate is constant.
"""

import math

import keras
from keras import ops

from tf_supermask.choices import WEIGHT_DECAY_MODES, resolve_weight_decay_mode  # noqa: F401


class _L2GradientPenalty:
    """Mixin: the optimizer's ``weight_decay`` is an L2 term added to each gradient.

    The term goes in inside ``update_step``, which every backend calls once per
    variable with the final gradient (after clipping, loss-scale removal and the
    cross-replica sum under a tf.distribute strategy), so it is added exactly once
    and also runs inside a compiled (XLA) or JAX stateless train step. Keras's
    decoupled decay is switched off. Variables excluded with
    ``exclude_from_weight_decay`` get no term. The optimizer's variables are
    those of the Keras class it extends, so checkpoints keep their layout.
    """

    def _apply_weight_decay(self, variables):
        del variables  # the decay is part of the gradient instead

    def update_step(self, gradient, variable, learning_rate):
        if self.weight_decay and self._use_weight_decay(variable):
            gradient = ops.add(ops.cast(gradient, variable.dtype),
                               ops.multiply(ops.cast(self.weight_decay, variable.dtype),
                                            variable))
        return super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="tf_supermask")
class PyTorchSGD(keras.optimizers.SGD):
    """SGD with PyTorch's momentum rule (``torch.optim.SGD``, dampening 0).

    With momentum ``m`` > 0, each step with rate ``lr_t`` and gradient ``g``::

        buf = m * buf + g
        param -= lr_t * buf                  # nesterov=False
        param -= lr_t * (g + m * buf)        # nesterov=True

    Keras's SGD keeps ``v = m * v - lr_t * g`` instead; the two give the same
    weights only while the rate is constant. Without momentum both are
    ``param -= lr_t * g``. The slots are Keras SGD's (``momentums``), so the
    optimizer saves and loads like Keras's.

    Example:
        >>> opt = PyTorchSGD(keras.optimizers.schedules.CosineDecay(0.1, 1000),
        ...                  momentum=0.9)
    """

    def update_step(self, gradient, variable, learning_rate):
        if not self.momentum:
            return super().update_step(gradient, variable, learning_rate)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        new_buffer = ops.add(ops.multiply(buffer, momentum), gradient)
        self.assign(buffer, new_buffer)
        step = ops.add(gradient, ops.multiply(momentum, new_buffer)) if self.nesterov \
            else new_buffer
        self.assign_sub(variable, ops.multiply(learning_rate, step))


@keras.saving.register_keras_serializable(package="tf_supermask")
class L2SGD(_L2GradientPenalty, keras.optimizers.SGD):
    """Keras SGD whose ``weight_decay`` adds ``wd * param`` to the gradient before
    momentum and Nesterov (PyTorch ``torch.optim.SGD(weight_decay=wd)`` with Keras's
    momentum rule)."""


@keras.saving.register_keras_serializable(package="tf_supermask")
class L2PyTorchSGD(_L2GradientPenalty, PyTorchSGD):
    """``torch.optim.SGD(weight_decay=wd, momentum=m, nesterov=...)`` exactly: L2
    term in the gradient, then PyTorch's momentum rule (`PyTorchSGD`)."""


@keras.saving.register_keras_serializable(package="tf_supermask")
class L2Adam(_L2GradientPenalty, keras.optimizers.Adam):
    """Keras Adam whose ``weight_decay`` adds ``wd * param`` to the gradient before
    the moment estimates (PyTorch ``torch.optim.Adam(weight_decay=wd)``)."""


@keras.saving.register_keras_serializable(package="tf_supermask")
class L2RMSprop(_L2GradientPenalty, keras.optimizers.RMSprop):
    """Keras RMSprop whose ``weight_decay`` adds ``wd * param`` to the gradient
    (PyTorch ``torch.optim.RMSprop(weight_decay=wd)``)."""


@keras.saving.register_keras_serializable(package="tf_supermask")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup_steps`, then `after` (a schedule or a float).

    The rate rises in stairs of `hold_steps` steps: during stair
    ``j = floor(step / hold_steps)`` it is ``peak * (j + 1) / (warmup_steps / hold_steps)``.
    ``hold_steps=1`` ramps every step (``peak * (step + 1) / warmup_steps``);
    ``hold_steps=steps_per_epoch`` holds ``peak * (e + 1) / W`` through epoch ``e`` of
    ``W`` warm-up epochs, as hidden-networks' ``_warmup_lr``. After the warm-up,
    step ``s`` gets ``after(s - warmup_steps)``.
    """

    def __init__(self, after, warmup_steps, peak, hold_steps=1):
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.peak = float(peak)
        self.hold_steps = max(1, int(hold_steps))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        stairs = float(max(1, self.warmup_steps // self.hold_steps))
        warm = self.peak * (ops.floor(step / float(self.hold_steps)) + 1.0) / stairs
        after = self.after(step - self.warmup_steps) if callable(self.after) else self.after
        return ops.where(step < self.warmup_steps, warm, after)

    def get_config(self):
        after = self.after
        if isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = keras.optimizers.schedules.serialize(after)
        return {"after": after, "warmup_steps": self.warmup_steps, "peak": self.peak,
                "hold_steps": self.hold_steps}

    @classmethod
    def from_config(cls, config):
        after = config["after"]
        if isinstance(after, dict):
            after = keras.optimizers.schedules.deserialize(after)
        return cls(after, config["warmup_steps"], config["peak"], config.get("hold_steps", 1))


@keras.saving.register_keras_serializable(package="tf_supermask")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay that changes once per epoch, as hidden-networks' ``cosine_lr``.

    During epoch ``e = floor(step / steps_per_epoch)`` the rate is
    ``0.5 * (1 + cos(pi * e / epochs)) * initial_learning_rate``; epochs past the
    last keep the last epoch's rate.

    Args:
      initial_learning_rate: the rate of epoch 0.
      epochs: number of epochs the cosine spans (E).
      steps_per_epoch: optimizer steps per epoch.
    """

    def __init__(self, initial_learning_rate, epochs, steps_per_epoch):
        self.initial_learning_rate = float(initial_learning_rate)
        self.epochs = max(1, int(epochs))
        self.steps_per_epoch = max(1, int(steps_per_epoch))

    def __call__(self, step):
        step = ops.maximum(ops.cast(step, "float32"), 0.0)
        epoch = ops.minimum(ops.floor(step / float(self.steps_per_epoch)),
                            float(self.epochs - 1))
        return 0.5 * (1.0 + ops.cos(math.pi * epoch / float(self.epochs))) * \
            self.initial_learning_rate

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch}


@keras.saving.register_keras_serializable(package="tf_supermask")
class OffsetSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` read `offset` steps later: step s gets ``schedule(s + offset)``.

    A fresh optimizer (step count 0) that continues a run's schedule from step
    `offset` (open_lth's late rewinding, which advances the schedule to the rewind
    step and keeps a fresh optimizer).
    """

    def __init__(self, schedule, offset):
        self.schedule = schedule
        self.offset = int(offset)

    def __call__(self, step):
        step = ops.convert_to_tensor(step)
        return self.schedule(ops.add(step, ops.cast(self.offset, step.dtype)))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["offset"])


def shifted_learning_rate(config, steps_per_epoch, offset):
    """The run's schedule read `offset` steps later (OffsetSchedule), or None when the
    learning rate is constant (nothing to shift)."""
    rate = learning_rate(config, steps_per_epoch)
    if not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return None
    return OffsetSchedule(rate, offset)


def learning_rate(config, steps_per_epoch):
    """The learning rate (float or schedule) for a TrainConfig-like `config`."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    decay_steps = max(1, config.epochs * steps_per_epoch - warmup_steps)
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps)
    elif config.lr_schedule == "cosine_epoch":
        # As hidden-networks: the cosine spans the epochs after the warm-up.
        rate = EpochCosineDecay(config.lr, config.epochs - config.warmup_epochs,
                                steps_per_epoch)
    elif config.lr_schedule == "step":
        boundaries = [max(0, epoch * steps_per_epoch - warmup_steps) for epoch in config.milestones()]
        values = [config.lr * config.lr_gamma ** i for i in range(len(boundaries) + 1)]
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        rate = config.lr
    if warmup_steps:
        # cosine_epoch follows hidden-networks, whose warm-up also changes once per epoch.
        hold = steps_per_epoch if config.lr_schedule == "cosine_epoch" else 1
        rate = WarmupSchedule(rate, warmup_steps, config.lr, hold_steps=hold)
    return rate


def build_optimizer(config, steps_per_epoch):
    """A Keras optimizer from `config.optimizer`, lr schedule, momentum and weight decay.

    With ``config.weight_decay`` > 0 under the ``l2`` rule (see
    `resolve_weight_decay_mode`) sgd, adam and rmsprop are the ``L2*`` subclasses
    of the Keras optimizers; otherwise the Keras optimizers themselves. SGD follows
    ``config.momentum_rule`` (``pytorch``: `PyTorchSGD`; ``keras``: Keras's SGD).
    """
    rate = learning_rate(config, steps_per_epoch)
    mode = resolve_weight_decay_mode(config.optimizer, config.weight_decay_mode)
    decay = config.weight_decay or None
    l2 = bool(decay) and mode == "l2"
    if config.optimizer == "sgd":
        pytorch = config.momentum_rule == "pytorch"
        sgd = {(True, True): L2PyTorchSGD, (True, False): PyTorchSGD,
               (False, True): L2SGD, (False, False): keras.optimizers.SGD}[(pytorch, l2)]
        return sgd(rate, momentum=config.momentum, nesterov=config.nesterov, weight_decay=decay)
    if config.optimizer == "adam":
        return (L2Adam if l2 else keras.optimizers.Adam)(rate, weight_decay=decay)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return (L2RMSprop if l2 else keras.optimizers.RMSprop)(
            rate, momentum=config.momentum, weight_decay=decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd, adam, adamw, rmsprop")


def current_learning_rate(optimizer):
    """The optimizer's learning rate at its current step, as a float."""
    rate = optimizer.learning_rate
    return float(ops.convert_to_numpy(rate))
