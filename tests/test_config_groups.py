"""Configuration groups, the one choices module, the registries' self-check, and the
settings that change results without being flags before (fused kernels, top-k select)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tf_supermask import choices
from tf_supermask.config import config_hash, to_flagfile
from tf_supermask.experiments.config import (FinetuneConfig, FinetuneOptions, LotteryConfig,
                                             LotteryOptions, PruneInitConfig)
from tf_supermask.pruning.options import PruneOptions
from tf_supermask.registry import Registry
from tf_supermask.training.config import (DataConfig, ModelConfig, OptimConfig, PatchesConfig,
                                          RunConfig, TrainConfig, flag_groups)


@pytest.mark.parametrize("group,bad,match", [
    (ModelConfig, dict(k=0.0), r"--k is the fraction of weights kept"),
    (ModelConfig, dict(model="nope"), r"unknown model 'nope'"),
    (ModelConfig, dict(init="ones"), r"unknown initializer 'ones'"),
    (ModelConfig, dict(width=0.0), r"--width must be positive"),
    (ModelConfig, dict(topk_method="quick"), r"--topk_method must be one of auto, sort"),
    (PatchesConfig, dict(patches_mix=1.5), r"--patches_mix must be in \(0, 1\]"),
    (PatchesConfig, dict(patches_rest_init="nope"), r"unknown initializer 'nope'"),
    (DataConfig, dict(train_size=-1), r"--train_size must be >= 0"),
    (OptimConfig, dict(lr=0.0), r"--lr must be positive"),
    (OptimConfig, dict(optimizer="adamw", weight_decay_mode="l2"), r"--weight_decay_mode=l2"),
    (OptimConfig, dict(momentum=float("nan")), r"--momentum must be a finite number"),
    (RunConfig, dict(verbose=7), r"--verbose must be 0, 1, 2 or 3"),
    (RunConfig, dict(strategy="tpu"), r"--strategy must be one of mirrored"),
    (LotteryOptions, dict(levels=-1), r"--levels must be at least 0"),
    (LotteryOptions, dict(criterion="largest"), r"unknown mask criterion 'largest'"),
    (FinetuneOptions, dict(sparsity=1.0), r"--sparsity is the fraction pruned"),
])
def test_each_group_refuses_a_bad_value_naming_the_flag(group, bad, match):
    with pytest.raises(ValueError, match=match):
        group(**bad)
    if group in TrainConfig.GROUPS:  # the composed configuration refuses it the same way
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad, **({"init": "patches"} if group is PatchesConfig else {}))


def test_prune_options_are_checked_by_their_configuration():
    with pytest.raises(ValueError, match="--method must be one of random, .*, got 'obd'"):
        PruneOptions.check(PruneOptions(method="obd"))


def test_patches_flags_are_checked_only_with_patches_init():
    TrainConfig(patches_mix=1.5)  # inactive: neither checked nor written to flags.txt
    assert "patches_mix" not in to_flagfile(TrainConfig(patches_mix=1.5))


def test_a_group_comes_out_of_a_composed_configuration():
    config = TrainConfig(lr=0.3, k=0.2, init="patches", patches_mix=0.5, epochs=3)
    assert config.group(OptimConfig) == OptimConfig(lr=0.3, epochs=3)
    assert PatchesConfig.of(config) == PatchesConfig(patches_mix=0.5)
    assert ModelConfig.of(config).k == 0.2 and not hasattr(ModelConfig.of(config), "lr")
    options = config.mask_options()
    assert (options.k, options.init, options.seed) == (0.2, config.patches_rest_init, 0)


@pytest.mark.parametrize("config_type", [TrainConfig, LotteryConfig, FinetuneConfig,
                                         PruneInitConfig])
def test_help_groups_hold_every_field_once(config_type):
    names = [name for _, group in flag_groups(config_type) for name in group]
    assert sorted(names) == sorted(field.name for field in dataclasses.fields(config_type))
    titles = [title for title, _ in flag_groups(config_type)]
    assert titles[:5] == ["Model and mask", "PatchesInit (only with --init=patches)", "Data",
                          "Optimisation", "Run control"]
    assert titles[5:] == ([] if config_type is TrainConfig else [None])


def test_flags_keep_their_flat_names_and_order():
    fields = [field.name for field in dataclasses.fields(TrainConfig)]
    assert fields[:3] == ["model", "mask", "k"] and fields[-1] == "verbose"
    assert fields.index("patches_images") < fields.index("dataset") < fields.index("lr")
    assert fields.index("lr") < fields.index("strategy")


# Recorded settings ---------------------------------------------------------------------------

def test_fused_kernels_and_topk_method_are_written_to_flags_txt():
    text = to_flagfile(TrainConfig())
    assert "--topk_method=auto\n" in text
    assert ("--fused_kernels\n" if choices.fused_kernels_default() else "--nofused_kernels\n") \
        in text
    assert "--nofused_kernels\n" in to_flagfile(TrainConfig(fused_kernels=False))
    assert "--topk_method=sort\n" in to_flagfile(TrainConfig(topk_method="sort"))


def test_fused_kernels_change_the_run_folder_name_but_the_top_k_select_does_not():
    from tf_supermask.training.config import RUN_CONTROL_FIELDS

    assert "fused_kernels" not in RUN_CONTROL_FIELDS  # they draw other Bernoulli masks
    assert "topk_method" in RUN_CONTROL_FIELDS  # every select keeps the same weights
    assert (config_hash(TrainConfig(fused_kernels=False), RUN_CONTROL_FIELDS)
            != config_hash(TrainConfig(fused_kernels=True), RUN_CONTROL_FIELDS))
    assert (config_hash(TrainConfig(topk_method="sort"), RUN_CONTROL_FIELDS)
            == config_hash(TrainConfig(), RUN_CONTROL_FIELDS))


def test_the_environment_variable_sets_the_default_and_flags_txt_says_so():
    assert choices.fused_kernels_default({}) is True
    assert choices.fused_kernels_default({choices.FUSED_ENV: "0"}) is False
    assert choices.fused_kernels_default({choices.FUSED_ENV: "1"}) is True
    code = ("import sys\n"
            "from tf_supermask.config import config_hash, to_flagfile\n"
            "from tf_supermask.training.config import RUN_CONTROL_FIELDS, TrainConfig\n"
            "config = TrainConfig()\n"
            "print(config.fused_kernels, '--nofused_kernels' in to_flagfile(config),\n"
            "      config_hash(config, RUN_CONTROL_FIELDS), 'keras' in sys.modules)\n")
    env = dict(os.environ, **{choices.FUSED_ENV: "0"})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    from tf_supermask.training.config import RUN_CONTROL_FIELDS

    # Made under the variable, the run gets the folder of an explicit --nofused_kernels.
    assert out == ["False", "True",
                   config_hash(TrainConfig(fused_kernels=False), RUN_CONTROL_FIELDS), "False"]


def test_a_run_records_the_fused_kernels_and_the_top_k_select(tmp_path):
    from tf_supermask.layers import fused
    from tf_supermask.training import train

    base = dict(model="fc", width=0.1, mask="topk", k=0.3, dataset="sample", train_size=128,
                batch_size=64, epochs=1, verbose=0, strategy="one_device")
    fused.ENABLED, enabled = True, fused.ENABLED
    try:
        off = train(TrainConfig(**base, fused_kernels=False, topk_method="sort",
                                run_dir=str(tmp_path / "off")))
        assert fused.ENABLED  # restored after the run
        on = train(TrainConfig(**base, fused_kernels=True, run_dir=str(tmp_path / "on")))
    finally:
        fused.ENABLED = enabled
    flags = (tmp_path / "off" / choices.FLAGS_FILE).read_text()
    assert "--nofused_kernels\n" in flags and "--topk_method=sort\n" in flags
    saved = json.loads((tmp_path / "off" / choices.RESULTS_FILE).read_text())
    assert saved["fused_kernels_ran"] is False and saved["topk_method"] == "sort"
    assert saved["backend"] and off["fused_kernels_ran"] is False
    import keras

    available = fused.available(keras.ops.zeros(()))
    assert on["fused_kernels_ran"] is bool(available)
    assert on["test_accuracy"] == off["test_accuracy"]  # top-k: same masks either way


def test_the_layers_keep_their_top_k_select_in_their_config():
    from tf_supermask.layers import MaskedDense
    from tf_supermask.models import MaskOptions, build_model

    layer = MaskedDense(4, mask="topk", topk_method="radix")
    config = layer.get_config()
    assert config["topk_method"] == "radix"
    del config["topk_method"]  # a layer saved before the setting was recorded
    assert MaskedDense.from_config(config).topk_method == "auto"
    with pytest.raises(ValueError, match="topk_method must be one of auto, sort"):
        MaskedDense(4, mask="topk", topk_method="quick")
    model = build_model("fc", (6, 6, 1), 3, MaskOptions(mask="topk", width=0.1,
                                                        topk_method="count"))
    from tf_supermask.layers import masked_layers

    assert {layer.topk_method for layer in masked_layers(model)} == {"count"}


def test_the_top_k_select_is_no_module_global_any_more():
    from tf_supermask.layers import masks

    assert not hasattr(masks, "TOPK_METHOD")
    assert masks.topk_method_for(1000, "tensorflow", "cpu", method="radix") == "radix"


# Choices and registries ------------------------------------------------------------------------

def test_a_registry_refuses_an_unlisted_name_and_reports_a_missing_one():
    registry = Registry("widget", names=("a", "b"))
    with pytest.raises(ValueError, match="widget 'c' is not listed in tf_supermask.choices"):
        registry.register("c")
    registry.register("a")(object())
    with pytest.raises(RuntimeError, match="widget 'b' listed in tf_supermask.choices but never"):
        registry.check_complete()
    registry.register("b")(object())
    registry.check_complete()
    Registry("anything").register("x")(object())  # no list: any name


def test_the_library_registries_hold_exactly_the_listed_choices():
    from tf_supermask.data.sources import DATASETS
    from tf_supermask.layers import INITIALIZERS, MASK_MODES
    from tf_supermask.layers.masks import TOPK_METHODS
    from tf_supermask.models import MODELS
    from tf_supermask.pruning.at_init import PRUNE_METHODS
    from tf_supermask.pruning.criteria import CRITERIA

    for registry, names in [(MODELS, choices.MODEL_NAMES), (MASK_MODES, choices.MASK_MODES),
                            (INITIALIZERS, choices.INITIALIZERS),
                            (TOPK_METHODS, choices.TOPK_METHODS),
                            (PRUNE_METHODS, choices.PRUNE_METHODS),
                            (CRITERIA, choices.CRITERIA), (DATASETS, choices.DATASETS)]:
        assert registry.allowed == tuple(names), registry.kind
        registry.check_complete()
        assert registry.names() == sorted(names), registry.kind


def test_the_choices_module_and_config_checks_import_no_framework():
    code = ("import sys\n"
            "from tf_supermask import choices\n"
            "from tf_supermask.training.config import TrainConfig\n"
            "try:\n"
            "    TrainConfig(optimizer='adamw', weight_decay_mode='l2')\n"
            "except ValueError:\n"
            "    pass\n"
            "TrainConfig(model='resnet20', init='patches', weight_decay=1e-4)\n"
            "print([m for m in ('keras', 'tensorflow', 'jax', 'numpy') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() in ("[]", "['numpy']"), out  # counting.py imports NumPy
