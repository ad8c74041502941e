"""Optimizers and learning-rate schedules, by name."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_supermask")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 over `warmup_steps`, then `after` (a schedule or a float)."""

    def __init__(self, after, warmup_steps, peak):
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.peak = float(peak)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / float(max(1, self.warmup_steps))
        after = self.after(step - self.warmup_steps) if callable(self.after) else self.after
        return ops.where(step < self.warmup_steps, warm, after)

    def get_config(self):
        after = self.after
        if isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = keras.optimizers.schedules.serialize(after)
        return {"after": after, "warmup_steps": self.warmup_steps, "peak": self.peak}

    @classmethod
    def from_config(cls, config):
        after = config["after"]
        if isinstance(after, dict):
            after = keras.optimizers.schedules.deserialize(after)
        return cls(after, config["warmup_steps"], config["peak"])


def learning_rate(config, steps_per_epoch):
    """The learning rate (float or schedule) for a TrainConfig-like `config`."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    decay_steps = max(1, config.epochs * steps_per_epoch - warmup_steps)
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps)
    elif config.lr_schedule == "step":
        boundaries = [max(0, epoch * steps_per_epoch - warmup_steps) for epoch in config.milestones()]
        values = [config.lr * config.lr_gamma ** i for i in range(len(boundaries) + 1)]
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        rate = config.lr
    if warmup_steps:
        rate = WarmupSchedule(rate, warmup_steps, config.lr)
    return rate


def build_optimizer(config, steps_per_epoch):
    """A Keras optimizer from `config.optimizer`, lr schedule, momentum and weight decay."""
    rate = learning_rate(config, steps_per_epoch)
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=config.nesterov,
                                    weight_decay=decay)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=decay)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, momentum=config.momentum, weight_decay=decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd, adam, adamw, rmsprop")


def current_learning_rate(optimizer):
    """The optimizer's learning rate at its current step, as a float."""
    rate = optimizer.learning_rate
    return float(ops.convert_to_numpy(rate))
