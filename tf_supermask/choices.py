"""Every choice list of the library, in one module that imports only the standard library.

The configurations (``tf_supermask.training.config``, ``tf_supermask.experiments.config``,
``tf_supermask.pruning.options``) take their flags' choices from here, so that a
binary's ``--help`` lists them without importing Keras; the registries that hold the
objects behind the names (``MODELS``, ``INITIALIZERS``, ``MASK_MODES``,
``TOPK_METHODS``, ``PRUNE_METHODS``, ``CRITERIA``, ``DATASETS``) are made with
``Registry(kind, names=...)`` from these lists: registering a name that is not listed
fails, and so does a listed name that its module never registered
(``Registry.check_complete``). Nothing is copied by hand anywhere else.

The count rules (how a rate becomes a count) are listed in ``tf_supermask.counting``,
itself framework-free.
"""

import os

# Models (tf_supermask.models.MODELS).
MODEL_NAMES = ("conv2", "conv4", "conv6", "conv8", "fc", "mobilenet_v2", "resnet18", "resnet20",
               "resnet56", "vgg11", "vgg16", "vgg19")

# Mask modes (tf_supermask.layers.masks.MASK_MODES).
MASK_MODES = ("dense", "bernoulli", "topk", "fixed")

# Initializers (tf_supermask.layers.initializers.INITIALIZERS); --init also takes
# PATCHES_INIT (PatchesInit, tf_supermask.layers.patches).
INITIALIZERS = ("glorot_normal", "glorot_uniform", "kaiming_normal", "kaiming_uniform",
                "signed_kaiming_constant", "signed_glorot_constant", "kaiming_uniform_a_sqrt5",
                "uniform", "zeros")
PATCHES_INIT = "patches"

# Exact top-k selects (tf_supermask.layers.masks.TOPK_METHODS); "auto" picks one per
# backend, platform and layer size. All keep the same entries.
TOPK_METHODS = ("sort", "radix", "count", "bucket")
TOPK_METHOD_CHOICES = ("auto",) + TOPK_METHODS
# The count rule of top-k layers unless told otherwise (tf_supermask.counting): edge-popup's
# GetSubnet zeroes int((1 - k) * n) entries.
TOPK_COUNT_RULE = "hidden_networks"

# The model and mask.
AUTO_TRUE_FALSE = ("auto", "true", "false")
SCALE_FAN = ("none", "kept", "pruned")
BATCHNORMS = ("none", "nonaffine", "affine")

# Data (tf_supermask.data.sources.DATASETS; --dataset also takes an .npz path or an
# image-folder dataset).
DATASETS = ("sample", "mnist", "fashion_mnist", "cifar10", "cifar100")
INPUT_PIPELINES = ("host", "device")

# Optimisation (tf_supermask.training.optim).
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LR_SCHEDULES = ("constant", "cosine", "cosine_epoch", "step")
WEIGHT_DECAY_MODES = ("auto", "l2", "decoupled")
MOMENTUM_RULES = ("pytorch", "keras")

# Execution (tf_supermask.training.distribute).
STRATEGIES = ("mirrored", "one_device", "multi_worker")

# Pruning at initialization (tf_supermask.pruning.at_init.PRUNE_METHODS) and the scope
# each uses under --scope=auto: global for the saliency methods, as their papers.
PRUNE_METHOD_SCOPES = {"random": "layer", "magnitude": "global", "snip": "global",
                       "grasp": "global", "synflow": "global", "kstarts": "layer",
                       "dissipating": "layer", "kstarts_dissipating": "layer"}
PRUNE_METHODS = tuple(PRUNE_METHOD_SCOPES)
SCOPES = ("layer", "global")  # one fraction per layer, or all masked weights ranked together
SCOPE_CHOICES = ("auto",) + SCOPES
COLLAPSE_POLICIES = ("warn", "error")
# Haroon's K-starts and dissipating gradients (tf_supermask.pruning.haroon).
FITNESSES = ("magnitude", "gradient", "both")
DISSIPATING_SCHEDULES = ("geometric", "linear", "greedy")
KSTARTS_MODES = ("continue", "rewind")
DISSIPATING_TARGETS = ("none", "calibrate", "reach")
# Gradual magnitude pruning on tfmot schedules (tf_supermask.pruning.gradual).
GRADUAL_SCHEDULES = ("polynomial", "constant")

# Mask criteria (tf_supermask.pruning.criteria.CRITERIA): each base criterion, and each
# as <name>_same_sign and <name>_same_sign_strict.
CRITERION_BASES = ("large_final", "small_final", "large_init", "small_init",
                   "large_init_large_final", "small_init_small_final", "magnitude_increase",
                   "movement", "random")
CRITERIA = tuple(f"{base}{suffix}" for base in CRITERION_BASES
                 for suffix in ("", "_same_sign", "_same_sign_strict"))

# The lottery (tf-supermask-lottery) and fine-tuning (tf-supermask-finetune) binaries.
PRUNED_WEIGHTS = ("zero", "init", "zero_if_shrunk")
REINITS = ("rewind", "reinit", "reshuffle", "constant")
CRITERION_INIT = ("rewind", "init")
FINETUNE_METHODS = ("oneshot", "iterative", "gradual")
ARMS = ("lottery", "rewind", "finetune")

# A run directory's files (tf_supermask.training.run_dir).
RESULTS_FILE = "results.json"
FLAGS_FILE = "flags.txt"
FINAL_MODEL = os.path.join("checkpoints", "final.keras")

# Fields that do not change what a run computes: ignored when deciding whether an
# existing run directory was made with the same flags, left out of default run
# directory names and of tf-supermask-batch's job names. (topk_method: every select
# keeps the same weights, tests/test_speed_paths.py; fused_kernels is NOT one of them,
# the fused kernels draw other Bernoulli masks.)
RUN_CONTROL_FIELDS = ("run_dir", "overwrite", "export", "verbose", "data_workers",
                      "input_pipeline", "steps_per_execution", "topk_method")

# The environment variable that sets --fused_kernels' default: "0" turns the fused CPU
# mask kernels (tf_supermask.layers.fused) off.
FUSED_ENV = "TF_SUPERMASK_FUSED"


def fused_kernels_default(environ=None):
    """--fused_kernels' default: True unless $TF_SUPERMASK_FUSED is "0"."""
    environ = os.environ if environ is None else environ
    return environ.get(FUSED_ENV, "1").strip() != "0"


# --model beside the registered names: a user's own model (tf_supermask.models.user).
USER_MODEL_FORMS = ("keras.applications.<Name> (weights=None, logits)",
                    "package.module:function (called with input_shape, num_classes)",
                    "a .keras file", "python:<name> (registered in this process with "
                    "tf_supermask.models.register_user_model)")
APPLICATIONS_PREFIX = "keras.applications."
PYTHON_PREFIX = "python:"


def model_kind(name):
    """"registered", "application", "function", "file" or "python": what --model names;
    a ValueError listing the forms for anything else."""
    import re

    if name in MODEL_NAMES:
        return "registered"
    if name.startswith(APPLICATIONS_PREFIX) and re.fullmatch(r"\w+", name[len(APPLICATIONS_PREFIX):]):
        return "application"
    if name.startswith(PYTHON_PREFIX) and name[len(PYTHON_PREFIX):]:
        return "python"
    if name.endswith(".keras"):
        return "file"
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name):
        return "function"
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODEL_NAMES))}, "
                     f"or your own: {'; '.join(USER_MODEL_FORMS)}")


def model_stem(name):
    """--model as a part of a folder name: the registered name, the application's or
    function's name, the .keras file's name."""
    import os

    kind = model_kind(name)
    if kind == "file":
        return os.path.splitext(os.path.basename(name))[0]
    if kind in ("function", "python"):
        return name.replace(":", "_").replace(os.sep, "_")
    return name


def check_choice(kind, name, names):
    """Returns `name`; a ValueError naming the choices (sorted) unless it is one of `names`.

    The message is ``Registry.get``'s: "unknown <kind> 'x'; choose one of: a, b".
    """
    if name not in names:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(names))}")
    return name


def resolve_weight_decay_mode(optimizer, mode):
    """The weight-decay rule ("l2" or "decoupled") for `optimizer` under `mode`.

    ``auto`` is ``decoupled`` for adamw (its defining rule) and ``l2`` otherwise
    (PyTorch's rule, that of the reference implementations).

    Raises:
      ValueError: an unknown mode, or ``l2`` with adamw.
    """
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"--weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {mode!r}")
    if mode == "auto":
        return "decoupled" if optimizer == "adamw" else "l2"
    if mode == "l2" and optimizer == "adamw":
        raise ValueError("--weight_decay_mode=l2 does not apply to adamw (whose decay is "
                         "decoupled by definition): use --optimizer=adam with l2, or "
                         "--weight_decay_mode=decoupled")
    return mode


def single_worker_only(strategy, binary):
    """Refuses --strategy=multi_worker for `binary`: its experiments chain several runs
    and write files of their own between them, which only tf-supermask-train's run
    directory handling (``task_run_dir``) keeps apart across workers.

    Raises:
      ValueError: `strategy` is "multi_worker".
    """
    if strategy == "multi_worker":
        raise ValueError(f"--strategy=multi_worker is supported by tf-supermask-train only; "
                         f"{binary} runs on one host (mirrored or one_device)")
