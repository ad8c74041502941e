"""The configuration of one training run (the flags of tf-supermask-train), in groups.

Each group is a dataclass of related fields with its own ``validate()``:
``ModelConfig`` (the model and its mask), ``PatchesConfig`` (PatchesInit, only with
--init=patches), ``DataConfig``, ``OptimConfig`` and ``RunConfig`` (how the run
executes and where it writes). ``TrainConfig`` composes them by inheritance, so every
field keeps its flat flag name and attribute (``--k``, ``config.lr``), and
``Group.of(config)`` (or ``config.group(Group)``) takes one group out of it for code
that needs only that group. The ``--help`` sections are the groups (``flag_groups``).
Choices come from ``tf_supermask.choices``; nothing here imports Keras.
"""

import dataclasses
import os

from tf_supermask import choices
from tf_supermask.choices import MODEL_NAMES, RUN_CONTROL_FIELDS  # noqa: F401 (re-exported)
from tf_supermask.config import ConfigGroup, check_fields, option
from tf_supermask.counting import COUNT_RULES, check_k

MASKS = choices.MASK_MODES
_TRISTATE = {"auto": None, "true": True, "false": False}


@dataclasses.dataclass
class ModelConfig(ConfigGroup):
    """The model and its mask (what ``mask_options`` turns into the builder's MaskOptions)."""

    TITLE = "Model and mask"
    BOUNDS = {"width": (lambda value: value > 0, "positive")}

    model: str = option("fc", f"Registered model: {', '.join(MODEL_NAMES)} "
                        "(tf_supermask.models.MODELS); or your own: "
                        + "; ".join(choices.USER_MODEL_FORMS) + ". Its prunable layers are "
                        "masked by tf_supermask.models.sparsify; it must output logits.")
    mask: str = option("dense", "Mask mode: dense (baseline), bernoulli (Zhou et al.), topk "
                       "(edge-popup), fixed (a given mask).", MASKS)
    k: float = option(0.5, "Fraction of weights KEPT per layer by the topk mask, in (0, 1].")
    init: str = option("kaiming_normal", "Weight initializer: glorot_normal, glorot_uniform, "
                       "kaiming_normal, kaiming_uniform, signed_kaiming_constant, "
                       "signed_glorot_constant, or patches (PatchesInit: conv filters from "
                       "training-data patches, see the patches_* flags).")
    score_init: str = option("", "Score initializer (empty: uniform for bernoulli, "
                             "kaiming_uniform_a_sqrt5 for topk: uniform(+-1/sqrt(fan_in)) as "
                             "hidden-networks; kaiming_uniform, uniform(+-sqrt(6/fan_in)), was "
                             "the default before).")
    count_rule: str = option(
        "auto", "How a rate becomes a count of weights (tf_supermask/counting.py): auto (each "
        "method its reference's rule: topk hidden_networks, n - int((1 - k) n) kept; lottery "
        "deconstructing per layer, open_lth globally; random, magnitude, SNIP, GraSP and "
        "SynFlow at init synaptic_flow; gradual tfmot; others nearest), or one rule for every "
        "method: " + ", ".join(COUNT_RULES) + ".", ("auto",) + tuple(COUNT_RULES))
    scale_fan: str = option("none", "Scale the weight initializer's fan (edge-popup's scaled "
                            "init): none; kept (std = gain / sqrt(k * fan), the paper's "
                            "formula); pruned (fan * (1 - k), what hidden-networks' code "
                            "computes and the paper's scaled-init figures used). They agree "
                            "only at k = 0.5.", choices.SCALE_FAN)
    rescale: bool = option(False, "Dynamic weight rescaling by #weights / #kept (Zhou et al.).")
    train_weights: str = option("auto", "Whether kernels train: auto (dense/fixed yes, "
                                "bernoulli/topk no), true, false.", choices.AUTO_TRUE_FALSE)
    eval_sample: bool = option(False, "bernoulli: sample the mask at evaluation instead of "
                               "thresholding sigmoid(score) at 0.5.")
    batchnorm: str = option("none", "BatchNorm after hidden layers.", choices.BATCHNORMS)
    width: float = option(1.0, "Width multiplier of hidden layers.")
    prune_first_layer: str = option(
        "auto", "Whether the first layer is masked like the others: auto (yes for fc and "
        "conv2..conv8; no for vgg*, resnet* and mobilenet_v2, as in Liu et al.), true, false. "
        "An unpruned first layer is a dense layer whose weights train.", choices.AUTO_TRUE_FALSE)

    topk_method: str = option(
        "auto", "Exact top-k select of the topk mask (all keep the same weights; they differ "
        "in speed): auto (per backend, device and layer size, tf_supermask/layers/masks.py), "
        "or one of " + ", ".join(choices.TOPK_METHODS) + ".", choices.TOPK_METHOD_CHOICES)

    def validate(self):
        check_k(self.k, "--k")  # where k enters; masked layers check it again (public API)
        if choices.model_kind(self.model) == "file" and not os.path.isfile(self.model):  # names
            raise ValueError(f"--model={self.model}: no such .keras file")
        if self.init != choices.PATCHES_INIT:
            choices.check_choice("initializer", self.init, choices.INITIALIZERS)
        if self.score_init:
            choices.check_choice("initializer", self.score_init, choices.INITIALIZERS)

    def mask_options(self, seed=0, rest_init=None):
        """The model builder's MaskOptions from this group's fields, the run's `seed` and
        PatchesInit's `rest_init` (--patches_rest_init)."""
        from tf_supermask.counting import resolve_rule
        from tf_supermask.models import MaskOptions

        # --init=patches builds with patches_rest_init; the trainer's data step
        # (tf_supermask.layers.patches) then overwrites the patched layers.
        if self.init == choices.PATCHES_INIT:
            init = rest_init or PatchesConfig.patches_rest_init
        else:
            init = self.init
        return MaskOptions(mask=self.mask, k=self.k, init=init,
                           count_rule=resolve_rule(self.count_rule, choices.TOPK_COUNT_RULE),
                           score_init=self.score_init or None, scale_fan=self.scale_fan,
                           rescale=self.rescale, train_weights=_TRISTATE[self.train_weights],
                           eval_sample=self.eval_sample, batchnorm=self.batchnorm,
                           width=self.width, seed=seed, topk_method=self.topk_method,
                           prune_first_layer=_TRISTATE[self.prune_first_layer])


@dataclasses.dataclass
class PatchesConfig(ConfigGroup):
    """PatchesInit (--init=patches); see tf_supermask/layers/patches.py."""

    TITLE = "PatchesInit (only with --init=patches)"

    patches_images: int = option(10000, "--init=patches: training images the patches are drawn "
                                 "from (0: all).")
    patches_forward_images: int = option(0, "--init=patches: images propagated through the "
                                         "network to take patches from (0: max(256, the most "
                                         "patch filters of a layer)).")
    patches_layers: int = option(2, "--init=patches: patch only the first L masked conv layers "
                                 "(0: all); the others get --patches_rest_init. 2 (the first "
                                 "block of conv2..conv8) did best in the CPU pilot "
                                 "(runs/results/superseded/patches_cpu_pilot.md).")
    patches_rest_init: str = option("signed_kaiming_constant", "--init=patches: initializer of "
                                    "what patches do not reach (conv layers beyond "
                                    "--patches_layers, dense layers, the random filters of "
                                    "--patches_mix).")
    patches_mix: float = option(1.0, "--init=patches: fraction of each patched layer's filters "
                                "that are patches, in (0, 1]; the rest are random.")
    patches_center: bool = option(True, "--init=patches: subtract each patch's mean.")
    patches_normalize: bool = option(True, "--init=patches: give every patch the same norm "
                                     "(else one scale per layer).")
    patches_zca: bool = option(False, "--init=patches: ZCA-whiten the patches.")
    patches_zca_eps: float = option(0.01, "--init=patches: ZCA regulariser, relative to the "
                                    "mean eigenvalue.")
    patches_zca_patches: int = option(10000, "--init=patches: windows sampled for the ZCA "
                                      "statistics.")
    patches_sign_flip: bool = option(False, "--init=patches: multiply each patch by a random "
                                     "sign.")
    patches_rescale: bool = option(False, "--init=patches: rescale each patched kernel so its "
                                   "output power on real activations matches the Kaiming "
                                   "(uncorrelated-input) prediction.")
    patches_dense: bool = option(False, "--init=patches: also initialise hidden dense layers "
                                 "from input vectors of training images.")

    def validate(self):
        choices.check_choice("initializer", self.patches_rest_init, choices.INITIALIZERS)
        if not 0.0 < self.patches_mix <= 1.0:
            raise ValueError(f"--patches_mix must be in (0, 1], got {self.patches_mix}")
        for name in ("patches_images", "patches_forward_images", "patches_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.patches_zca_eps <= 0:
            raise ValueError(f"--patches_zca_eps must be positive, got {self.patches_zca_eps}")

    @classmethod
    def applies(cls, config):
        return getattr(config, "init", choices.PATCHES_INIT) == choices.PATCHES_INIT


@dataclasses.dataclass
class DataConfig(ConfigGroup):
    """Which images, and how many."""

    TITLE = "Data"
    BOUNDS = {"train_size": (lambda value: value >= 0, ">= 0 (0: all)"),
              "validation_size": (lambda value: value >= 0, ">= 0")}

    dataset: str = option("sample", "sample (shipped Fashion-MNIST subset), mnist, "
                          "fashion_mnist, cifar10, cifar100, or a path to an .npz file.")
    data_dir: str = option("", "Folder holding offline <dataset>.npz files or TFDS data.")
    validation_size: int = option(0, "Training images held out for validation (0: the test "
                                  "set is evaluated each epoch instead).")
    train_size: int = option(0, "Keep only this many training images (0: all).")
    augment: bool = option(False, "CIFAR augmentation: random crop (4-pixel padding), flip.")

@dataclasses.dataclass
class OptimConfig(ConfigGroup):
    """The optimizer, its schedule, and how long and in what order training runs."""

    TITLE = "Optimisation"
    BOUNDS = {"steps_per_epoch": (lambda value: value >= 0, ">= 0 (0: the whole training set)"),
              "momentum": (lambda value: 0 <= value < 1, "in [0, 1)"),
              "weight_decay": (lambda value: value >= 0, ">= 0"),
              "lr_gamma": (lambda value: value > 0, "positive"),
              "warmup_epochs": (lambda value: value >= 0, ">= 0")}

    optimizer: str = option("sgd", "Optimizer.", choices.OPTIMIZERS)
    lr: float = option(0.1, "Learning rate.")
    lr_schedule: str = option("constant", "Learning-rate schedule: constant, cosine (decays "
                              "every step), cosine_epoch (0.5 * (1 + cos(pi * e / E)) * lr, set "
                              "once per epoch e as hidden-networks does), step (times lr_gamma "
                              "at lr_milestones).", choices.LR_SCHEDULES)
    lr_milestones: str = option("", "Comma-separated epochs where the step schedule decays.")
    lr_gamma: float = option(0.1, "Decay factor of the step schedule.")
    warmup_epochs: int = option(0, "Linear learning-rate warm-up epochs (with cosine_epoch, "
                                "lr * (e + 1) / W held through warm-up epoch e, as "
                                "hidden-networks; otherwise it rises every step).")
    weight_decay: float = option(0.0, "Weight decay on trainable variables (scores in "
                                 "supermask modes); the rule is --weight_decay_mode.")
    weight_decay_mode: str = option("auto", "How --weight_decay acts: l2 (wd * param added to "
                                    "the gradient before momentum, PyTorch's weight_decay, as in "
                                    "hidden-networks, open_lth and Liu et al.), decoupled (Keras's "
                                    "param -= lr * wd * param each step), auto (decoupled for "
                                    "adamw, l2 otherwise).", choices.WEIGHT_DECAY_MODES)
    momentum: float = option(0.9, "SGD / RMSprop momentum.")
    nesterov: bool = option(False, "Nesterov momentum (sgd).")
    momentum_rule: str = option("pytorch", "SGD momentum under a changing learning rate: "
                                "pytorch (buf = m * buf + g, param -= lr_t * buf, as "
                                "torch.optim.SGD and TF1's MomentumOptimizer, the rule of every "
                                "SGD recipe here), keras (Keras's v = m * v - lr_t * g, param += "
                                "v). Equal while the rate is constant.", choices.MOMENTUM_RULES)
    epochs: int = option(10, "Training epochs.")
    batch_size: int = option(128, "Global batch size.")
    steps_per_epoch: int = option(0, "Cap on steps per epoch (0: the whole training set).")
    seed: int = option(0, "Seed of weights, masks, data order and augmentation.")

    def validate(self):
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.lr_schedule == "step" and not self.milestones():
            raise ValueError("--lr_schedule=step needs --lr_milestones, e.g. 80,120")
        choices.resolve_weight_decay_mode(self.optimizer, self.weight_decay_mode)

    def milestones(self):
        """Epochs of the step schedule, as ints."""
        try:
            return [int(part) for part in self.lr_milestones.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"--lr_milestones must be comma-separated epochs, got "
                             f"{self.lr_milestones!r}") from None


@dataclasses.dataclass
class RunConfig(ConfigGroup):
    """How the run executes and what it writes (none of it but strategy, jit_compile,
    mixed_precision and fused_kernels can change a result; see RUN_CONTROL_FIELDS)."""

    TITLE = "Run control"
    BOUNDS = {"data_workers": (lambda value: value >= 1, "at least 1"),
              "steps_per_execution": (lambda value: value >= 1, "at least 1"),
              "verbose": (lambda value: value in (0, 1, 2, 3), "0, 1, 2 or 3")}

    data_workers: int = option(1, "Threads preparing training batches (more keep a GPU busy).")
    input_pipeline: str = option("host", "Where training batches are made: host (NumPy) or "
                                 "device (the uint8 training set in device memory, cropped, "
                                 "flipped and normalised there; same batches).",
                                 choices.INPUT_PIPELINES)

    strategy: str = option("mirrored", "Distribution: mirrored (all local GPUs; one_device when there is one), "
                           "one_device, multi_worker (TF_CONFIG). TensorFlow backend only.",
                           choices.STRATEGIES)
    jit_compile: str = option("auto", "XLA compilation of the train step.",
                              choices.AUTO_TRUE_FALSE)
    mixed_precision: bool = option(False, "mixed_float16 (TF) / mixed_bfloat16 (JAX) compute.")
    steps_per_execution: int = option(1, "Training steps per compiled call (callbacks, "
                                      "checkpoints and TensorBoard stay per epoch).")
    fused_kernels: bool = option(
        choices.fused_kernels_default(),
        "Use the fused CPU mask kernels (tf_supermask/layers/fused.py) where they apply "
        "(TensorFlow on a CPU, float32, outside XLA): same top-k and fixed-mask results, "
        "other Bernoulli draws. Its default is false when the environment sets "
        f"{choices.FUSED_ENV}=0; results.json records whether they ran.",
        stable_default=True)
    run_dir: str = option("", "Run directory (empty: runs/<model>_<mask>_<dataset>_<hash>).")
    overwrite: bool = option(False, "Replace a finished run or one made with other flags.")
    export: bool = option(False, "Write a SavedModel to <run_dir>/saved_model.")
    verbose: int = option(1, "Output: 0 a few lines (what started, each level, round, arm "
                          "or stage as it ends, the result), 1 those plus a progress bar on a "
                          "terminal (one short line per epoch when output goes to a file or "
                          "pipe), 2 those plus one short line per epoch, 3 as 1 plus "
                          "TensorFlow's and absl's own log messages (debugging).")


# Listed last to first: a dataclass puts the fields of the last base first, so the fields
# (and flags.txt's lines) come in GROUPS order.
@dataclasses.dataclass
class TrainConfig(RunConfig, OptimConfig, DataConfig, PatchesConfig, ModelConfig):
    """Everything that defines a dense or supermask training run: its groups composed."""

    TITLE = None
    GROUPS = (ModelConfig, PatchesConfig, DataConfig, OptimConfig, RunConfig)

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Checks every group (``Group.check``), in GROUPS order; of a group that does not
        apply (e.g. PatchesInit's without --init=patches), only choices and finiteness."""
        for group in self.GROUPS:
            if group.applies(self):
                group.check(self)
            else:
                check_fields(self, group.BOUNDS, group.field_names())

    def mask_options(self):
        """The model builder's MaskOptions for this run."""
        return ModelConfig.of(self).mask_options(self.seed, self.patches_rest_init)

    def group(self, group_type):
        """One group of this configuration, as an instance of `group_type` alone."""
        return group_type.of(self)

    def inactive_fields(self):
        """Flags that cannot change this run (left out of its flags.txt): the fields of
        groups that do not apply, e.g. the patches_* options unless --init=patches."""
        return tuple(name for group in self.GROUPS if not group.applies(self)
                     for name in group.field_names())


# Every group's bounds (numeric fields with a bound beyond "finite").
FIELD_BOUNDS = {name: bound for group in TrainConfig.GROUPS for name, bound in group.BOUNDS.items()}


def flag_groups(config_type=None):
    """[(title, [field names])] of `config_type` (default TrainConfig), one per group in
    its GROUPS order; a binary's own group has the title None."""
    config_type = TrainConfig if config_type is None else config_type
    return [(group.TITLE, list(group.field_names())) for group in config_type.GROUPS]
