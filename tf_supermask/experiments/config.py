"""The configurations of the experiment binaries: TrainConfig's fields plus each
experiment's own (tf-supermask-lottery, -finetune, -prune-init).

They live apart from the drivers (``lottery``, ``finetune``, ``comparison``,
``prune_init``), and this module imports neither Keras nor TensorFlow, so that a
binary's ``--help`` lists its flags at once. What a configuration checks against
the library (criteria, methods, strategies) is imported when it is checked.
"""

import dataclasses

from tf_supermask import choices
from tf_supermask.choices import (ARMS, FINETUNE_METHODS, PRUNED_WEIGHTS, REINITS,  # noqa: F401
                                  single_worker_only)
from tf_supermask.config import ConfigGroup, option
from tf_supermask.points import TrainingPoint
from tf_supermask.pruning.options import GRADUAL_SCHEDULES, SCOPES, PruneOptions
from tf_supermask.training.config import TrainConfig

def _check_weights_binary(config, binary, what):
    """What the lottery and fine-tuning binaries share: one host, and weights that train
    under a dense or fixed mask (`what` says why, in the error)."""
    single_worker_only(config.strategy, binary)
    if config.mask not in ("dense", "fixed"):
        raise ValueError(f"{binary} {what}; --mask must be dense or fixed, got {config.mask!r}")


# tf-supermask-lottery --------------------------------------------------------------

# Model-name prefixes whose output layer global pruning prunes (prunes_output).
GLOBAL_PRUNES_OUTPUT_MODELS = ("resnet", "mobilenet")


@dataclasses.dataclass
class LotteryOptions(ConfigGroup):
    """tf-supermask-lottery's own flags: the pruning procedure."""

    levels: int = option(10, "Pruning levels after the dense level 0.")
    prune_scope: str = option("layer", "layer: per-layer rates by layer kind; global: one rate "
                              "over all masked weights ranked together.", SCOPES)
    prune_rate_conv: float = option(0.1, "Fraction of a conv layer's remaining weights pruned "
                                    "per level (--prune_scope=layer).")
    prune_rate_dense: float = option(0.2, "Same for hidden dense layers.")
    prune_rate_output: float = option(0.1, "Same for the output layer.")
    prune_rate: float = option(0.2, "Fraction of all remaining weights pruned per level "
                               "(--prune_scope=global; as open_lth, ceil(rate x the remaining "
                               "weights of every masked layer, an unpruned output layer's "
                               "included) are pruned from the prunable layers).")
    prune_output_layer: str = option(
        "auto", "Whether the output layer is pruned: auto (under --prune_scope=global as "
        "open_lth per model family: not for fc, conv* and vgg*, whose open_lth counterparts "
        "LeNet and VGG ignore fc.weight, yes for resnet* as open_lth's ResNets and for "
        "mobilenet_v2; under --prune_scope=layer yes, at --prune_rate_output, as Frankle & "
        "Carbin), true, false.", ("auto", "true", "false"))
    rewind: str = option("init", "Where kept weights go back to: init, epoch:N or step:N "
                         "(late rewinding, open_lth's: weights saved at step N of level 0, a "
                         "fresh optimizer, training from step N to the end with the schedule "
                         "and the data order continued from step N).")
    criterion: str = option("large_final", "Mask criterion (Zhou et al.): large_final, "
                            "small_final, large_init, small_init, large_init_large_final, "
                            "small_init_small_final, magnitude_increase, movement, random, "
                            "each also as <name>_same_sign (flipped weights score 0, as the "
                            "reference) and <name>_same_sign_strict (flipped weights pruned "
                            "first).")
    pruned_weights: str = option("zero", "What pruned weights become: zero, init (frozen at "
                                 "their initial value), zero_if_shrunk (zero where |w| shrank "
                                 "in training, else frozen at init). As Zhou et al., a level's "
                                 "initial weights are the previous level's start weights, so a "
                                 "pruned weight keeps the value it got when it was pruned.",
                                 PRUNED_WEIGHTS)
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
                                  "weights the level starts from (Zhou et al.'s supermask at "
                                  "init): the rewind point's, or a control's re-initialised, "
                                  "reshuffled or constant weights.")
    criterion_init: str = option("rewind", "The 'initial' weights the criteria compare with "
                                 "the final ones (magnitude_increase, movement, large_init, ...) "
                                 "under late rewinding: rewind (the weights at --rewind, which "
                                 "the level trains from), init (the weights at step 0). Same "
                                 "thing for --rewind=init.", choices.CRITERION_INIT)

    def validate(self):
        if self.levels < 0:
            raise ValueError(f"--levels must be at least 0, got {self.levels}")
        for name in ("prune_rate_conv", "prune_rate_dense", "prune_rate_output", "prune_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {value}")
        choices.check_choice("mask criterion", self.criterion, choices.CRITERIA)


@dataclasses.dataclass
class LotteryConfig(LotteryOptions, TrainConfig):
    """A lottery-ticket experiment: TrainConfig's groups plus the pruning procedure."""

    GROUPS = TrainConfig.GROUPS + (LotteryOptions,)
    validate = TrainConfig.validate

    def __post_init__(self):
        super().__post_init__()
        _check_weights_binary(self, "tf-supermask-lottery", "trains weights under fixed masks")
        self.rewind_point()

    def prunes_output(self):
        """Whether the output layer is pruned (--prune_output_layer, auto resolved).

        Under global pruning ``auto`` follows open_lth's models: its LeNet and VGG set
        ``pruning_layers_to_ignore='fc.weight'``, its CIFAR and ImageNet ResNets prune
        the output layer. Our conv2..conv8 go with LeNet and VGG (plain networks with
        a dense head), MobileNet-v2 (not in open_lth) with the ResNets.
        """
        if self.prune_output_layer == "auto":
            return (self.prune_scope == "layer"
                    or self.model.startswith(GLOBAL_PRUNES_OUTPUT_MODELS))
        return self.prune_output_layer == "true"

    def rewind_point(self):
        """The TrainingPoint of --rewind ("init" is step 0), after checking that it lies
        inside training."""
        point = TrainingPoint.parse(self.rewind, "--rewind")
        if point.past(self.epochs, self.steps_per_epoch):
            where = (f"--epochs={self.epochs}" if point.unit == "epoch" else
                     f"{self.epochs} epochs x {self.steps_per_epoch} steps")
            raise ValueError(f"--rewind={self.rewind} is past the end of training ({where})")
        return point

    def mask_options(self):
        options = super().mask_options()
        return dataclasses.replace(options, mask="fixed", train_weights=True,
                                   pruned_values=self.pruned_weights != "zero")


# tf-supermask-finetune -------------------------------------------------------------



def parse_arms(text):
    """The arms named in --compare, checked."""
    arms = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        raise ValueError(f"--compare takes comma-separated arms among {ARMS}, got {text!r}")
    return arms


def parse_sparsities(text):
    """The sparsities of --sparsities, each a fraction pruned in [0, 1)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(not 0.0 <= value < 1.0 for value in values):
        raise ValueError(f"--sparsities must be comma-separated fractions pruned in [0, 1), "
                         f"got {text!r}")
    return values


@dataclasses.dataclass
class FinetuneOptions(ConfigGroup):
    """tf-supermask-finetune's own flags: the pruning procedure."""

    dense_run: str = option("", "A finished tf-supermask-train run directory (mask dense or "
                            "fixed) whose final weights are pruned and fine-tuned. Empty: "
                            "train the dense model first, into <run_dir>/dense, with these "
                            "flags.")
    prune_method: str = option("oneshot", "oneshot: prune once to --sparsity, then fine-tune; "
                               "iterative: --prune_rounds rounds of pruning part of the "
                               "remaining weights and fine-tuning; gradual: prune during "
                               "fine-tuning on a tfmot schedule (Zhu & Gupta).",
                               choices.FINETUNE_METHODS)
    sparsity: float = option(0.9, "Final fraction of the pruned layers' weights that is PRUNED "
                             "(weights remaining = 1 - sparsity), in [0, 1).")
    prune_scope: str = option("layer", "layer: every pruned layer keeps the same fraction of "
                              "its weights; global: weights ranked by magnitude over all "
                              "pruned layers together.", SCOPES)
    prune_rounds: int = option(5, "iterative: rounds; each keeps (1 - sparsity)^(1/rounds) of "
                               "the weights the previous round kept.")
    schedule: str = option("polynomial", "gradual: tfmot schedule: polynomial (PolynomialDecay "
                           "from --initial_sparsity to --sparsity) or constant "
                           "(ConstantSparsity at --sparsity).", GRADUAL_SCHEDULES)
    initial_sparsity: float = option(0.0, "gradual, polynomial: sparsity at the first pruning "
                                     "step.")
    begin_step: int = option(-1, "gradual: optimizer step (of fine-tuning) of the first pruning; "
                             "-1: --begin_epoch x steps per epoch.")
    end_step: int = option(-1, "gradual: step of the last pruning (moved back to the last "
                           "multiple of --frequency after the first); -1: --end_epoch x steps "
                           "per epoch.")
    begin_epoch: int = option(0, "gradual: fine-tuning epochs before the first pruning.")
    end_epoch: int = option(0, "gradual: fine-tuning epochs before the last pruning (polynomial "
                            "needs it or --end_step; constant: 0 prunes until the end).")
    frequency: int = option(100, "gradual: prune every this many steps.")
    power: float = option(3.0, "gradual, polynomial: exponent of the sparsity curve.")
    finetune_epochs: int = option(10, "Fine-tuning epochs (per round for iterative).")
    finetune_lr: float = option(0.0, "Fine-tuning learning rate (0: --lr); --lr_schedule and "
                                "its milestones start over in each fine-tuning run.")
    compare: str = option("", "Instead of one pruning run, Liu et al.'s comparison at equal "
                          "budget: comma-separated arms among lottery (start from the dense "
                          "run's initial weights), rewind (from its weights after "
                          "--rewind_epoch), finetune (from its trained weights). Every arm "
                          "trains --finetune_epochs at --finetune_lr under the same one-shot "
                          "magnitude mask, at each of --sparsities (see "
                          "tf_supermask/experiments/comparison.py).")
    sparsities: str = option("0.5,0.7,0.9", "--compare: comma-separated sparsities (fractions "
                             "pruned).")
    rewind_epoch: int = option(1, "--compare: epoch of the dense run the rewind arm starts from.")

    def validate(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"--sparsity is the fraction pruned and must be in [0, 1), got "
                             f"{self.sparsity}")
        if not 0.0 <= self.initial_sparsity <= self.sparsity:
            raise ValueError(f"--initial_sparsity must be in [0, --sparsity={self.sparsity}], "
                             f"got {self.initial_sparsity}")
        for name in ("prune_rounds", "finetune_epochs", "frequency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.finetune_lr < 0:
            raise ValueError(f"--finetune_lr must be positive (or 0 for --lr), got "
                             f"{self.finetune_lr}")
        if self.power <= 0:
            raise ValueError(f"--power must be positive, got {self.power}")
        if self.begin_epoch < 0 or self.end_epoch < 0:
            raise ValueError("--begin_epoch and --end_epoch must be at least 0")
        if self.compare:
            parse_sparsities(self.sparsities)
            if self.prune_method != "oneshot":
                raise ValueError(f"--compare prunes in one shot; --prune_method must be oneshot, "
                                 f"got {self.prune_method!r}")
            parse_arms(self.compare)


@dataclasses.dataclass
class FinetuneConfig(FinetuneOptions, TrainConfig):
    """A pruning-and-fine-tuning experiment: TrainConfig's groups (which also train the dense
    run when there is none) plus the pruning procedure."""

    GROUPS = TrainConfig.GROUPS + (FinetuneOptions,)
    validate = TrainConfig.validate

    def __post_init__(self):
        super().__post_init__()
        _check_weights_binary(self, "tf-supermask-finetune", "prunes trained weights")
        if self.compare:
            if "rewind" in parse_arms(self.compare) and not 0 < self.rewind_epoch < self.epochs:
                raise ValueError(f"--rewind_epoch must be between 1 and --epochs - 1 "
                                 f"({self.epochs - 1}), got {self.rewind_epoch}")
        if self.prune_method == "gradual":
            if self.begin_step < 0 and self.begin_epoch >= self.finetune_epochs:
                raise ValueError(f"--begin_epoch={self.begin_epoch} leaves no fine-tuning "
                                 f"(--finetune_epochs={self.finetune_epochs})")
            if self.end_step < 0 and self.end_epoch >= self.finetune_epochs:
                raise ValueError(f"--end_epoch={self.end_epoch} must be below "
                                 f"--finetune_epochs={self.finetune_epochs}: the last pruning "
                                 "must be followed by fine-tuning")
            if self.schedule == "polynomial" and self.end_step < 0 and self.end_epoch == 0:
                raise ValueError("--prune_method=gradual --schedule=polynomial needs the end of "
                                 "pruning: --end_epoch or --end_step")

    def inactive_fields(self):
        comparison = ("sparsities", "rewind_epoch")
        return super().inactive_fields() + (("sparsity",) if self.compare else comparison)

    def schedule_points(self):
        """(first, last) pruning of the gradual schedule as TrainingPoints of fine-tuning
        (--begin_step or --begin_epoch, --end_step or --end_epoch); last is None when no
        end is given (constant: prune until the end)."""
        begin = (TrainingPoint("step", self.begin_step) if self.begin_step >= 0
                 else TrainingPoint("epoch", self.begin_epoch))
        if self.end_step >= 0:
            return begin, TrainingPoint("step", self.end_step)
        return begin, TrainingPoint("epoch", self.end_epoch) if self.end_epoch > 0 else None

    def rewind_arm_point(self):
        """--compare's rewind arm starts from the dense run at this TrainingPoint."""
        return TrainingPoint("epoch", self.rewind_epoch)

    def schedule_steps(self, steps_per_epoch):
        """(begin, end) optimizer steps of the first and last pruning of the gradual schedule.

        The end moves back to begin + a multiple of --frequency, the last step the
        schedule prunes at (so the final sparsity is reached); "constant" with no
        end gives -1 (prune until the end).

        Raises:
          ValueError: the steps do not fit in fine-tuning or span no pruning.
        """
        total = self.finetune_epochs * steps_per_epoch
        begin, end = self.schedule_points()
        begin = begin.step(steps_per_epoch)
        end = -1 if end is None else end.step(steps_per_epoch)
        if begin >= total:
            raise ValueError(f"gradual pruning would begin at step {begin}, after fine-tuning "
                             f"ends ({total} steps: {self.finetune_epochs} epochs x "
                             f"{steps_per_epoch})")
        if end >= 0:
            if end < begin:
                raise ValueError(f"the last pruning step ({end}) comes before the first "
                                 f"({begin})")
            end = begin + (end - begin) // self.frequency * self.frequency
            if end >= total:
                raise ValueError(f"the last pruning step ({end}) must come before the end of "
                                 f"fine-tuning ({total} steps: {self.finetune_epochs} epochs "
                                 f"x {steps_per_epoch})")
        if self.schedule == "polynomial" and end <= begin:
            raise ValueError(f"the polynomial schedule needs at least one --frequency "
                             f"({self.frequency} steps) between its first pruning (step "
                             f"{begin}) and its last ({end})")
        return begin, end

    def round_sparsity(self, round_index):
        """Sparsity after `round_index` of --prune_rounds (iterative): 1 - (1 - s)^(r / N)."""
        return 1.0 - (1.0 - self.sparsity) ** (round_index / self.prune_rounds)


# tf-supermask-prune-init -----------------------------------------------------------

@dataclasses.dataclass
class PruneInitConfig(PruneOptions, TrainConfig):
    """A training run (TrainConfig) whose mask comes from a pruning-at-initialization method.

    The weights train under a ``fixed`` mask; ``mask`` and ``train_weights``
    default to that and other values are refused.
    """

    GROUPS = TrainConfig.GROUPS + (PruneOptions,)
    validate = TrainConfig.validate

    mask: str = option("fixed", "Mask mode; pruning at initialization trains weights under a "
                       "fixed mask.", ("fixed",))
    train_weights: str = option("true", "Whether kernels train (must be true or auto here).",
                                choices.AUTO_TRUE_FALSE)

    def __post_init__(self):
        if self.mask != "fixed":
            raise ValueError(f"pruning at initialization trains weights under a fixed mask; "
                             f"--mask must be fixed, got {self.mask!r}")
        if self.train_weights == "false":
            raise ValueError("pruning at initialization trains the weights under the mask; "
                             "--train_weights must be true or auto")
        TrainConfig.__post_init__(self)
        from tf_supermask.pruning.at_init import PRUNE_METHODS
        single_worker_only(self.strategy, "tf-supermask-prune-init")
        method = PRUNE_METHODS.get(self.method)
        if self.mask_file:
            return
        kstarts = self.method.startswith("kstarts")
        continued = kstarts and self.kstarts_mode == "continue" and not self.shuffle
        before = self.kstarts_epochs if continued else 0
        if method.during_training and before + self.dissipating_epochs > self.epochs:
            raise ValueError(f"--dissipating_epochs ({self.dissipating_epochs})"
                             + (f" after --kstarts_epochs ({before})" if before else "")
                             + f" cannot exceed --epochs ({self.epochs})")
        if continued and self.kstarts_epochs > self.epochs:
            raise ValueError(f"--kstarts_epochs ({self.kstarts_epochs}) count inside --epochs "
                             f"({self.epochs}) with --kstarts_mode=continue and cannot exceed it")
        if continued and self.kstarts_steps:
            raise ValueError("--kstarts_steps shortens the candidates' epochs, which count as "
                             "epochs of the run with --kstarts_mode=continue: use it with "
                             "--kstarts_mode=rewind")
