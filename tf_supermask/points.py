"""A point in training: an epoch boundary or an optimizer step.

Late rewinding (``--rewind=epoch:N|step:N``), the gradual pruning schedule
(``--begin_step``/``--begin_epoch``, ``--end_step``/``--end_epoch``), the
comparison's rewind arm (``--rewind_epoch``) and a run that starts part-way
(``train(start_step=...)``) all name one: this is the one type for it, and the one
place that turns it into a step count or an (epoch, batch) pair.

Example:

>>> from tf_supermask.points import TrainingPoint
>>> point = TrainingPoint.parse("epoch:2")
>>> point.step(steps_per_epoch=50), str(point)
(100, 'epoch:2')
>>> TrainingPoint.parse("step:130").epoch_and_batch(steps_per_epoch=50)
(2, 30)
>>> TrainingPoint.parse("init") == TrainingPoint("step", 0)
True
"""

import dataclasses
import re

UNITS = ("epoch", "step")


@dataclasses.dataclass(frozen=True)
class TrainingPoint:
    """`value` epochs or optimizer steps from the start of training.

    Args:
      unit: "epoch" (the end of epoch `value`, i.e. `value` x steps per epoch steps)
        or "step".
      value: a count >= 0.
    """

    unit: str
    value: int

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"a training point is counted in {' or '.join(UNITS)}, "
                             f"got {self.unit!r}")
        if int(self.value) < 0:
            raise ValueError(f"a training point must be >= 0, got {self.unit}:{self.value}")
        object.__setattr__(self, "value", int(self.value))

    @classmethod
    def parse(cls, text, flag="--rewind"):
        """ "init" (step 0), "epoch:N" or "step:N"; a ValueError naming `flag` otherwise."""
        match = re.fullmatch(r"(init)|(epoch|step):(\d+)", str(text).strip())
        if not match:
            raise ValueError(f"{flag} must be init, epoch:N or step:N, got {text!r}")
        if match.group(1):
            return cls("step", 0)
        return cls(match.group(2), int(match.group(3)))

    def step(self, steps_per_epoch):
        """The optimizer steps from the start of training to this point."""
        return self.value * int(steps_per_epoch) if self.unit == "epoch" else self.value

    def epoch_and_batch(self, steps_per_epoch):
        """(epoch, batch inside it) this point falls in, both counted from 0."""
        return divmod(self.step(steps_per_epoch), int(steps_per_epoch))

    def past(self, epochs, steps_per_epoch=0):
        """Whether this point lies after the end of `epochs` epochs (a step point is
        checked only when `steps_per_epoch` is known)."""
        if self.unit == "epoch":
            return self.value > epochs
        return bool(steps_per_epoch) and self.value > epochs * steps_per_epoch

    def __str__(self):
        return f"{self.unit}:{self.value}"
