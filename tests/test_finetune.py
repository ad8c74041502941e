"""Pruning and fine-tuning: magnitude masks, the tfmot-driven gradual pruning callback, the
tf-supermask-finetune experiment, and tfmot's side effects on tf.keras."""

import glob
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from absl import flags

from tf_supermask.sparsity import Mask
from tf_supermask.experiments.comparison import (parse_arms, run_comparison, top_overlap,
                                                 weight_correlation)
from tf_supermask.config import define_flags, from_flags
from tf_supermask.experiments.finetune import (FinetuneConfig, finetune_train_config, load_trained, run_finetune)
from conftest import kernels, tiny_config
from tf_supermask.counting import kept_count
from tf_supermask.layers import get_masks, masked_layers
from tf_supermask.models import MaskOptions, build_model
from tf_supermask.pruning.gradual import (GradualPruning, magnitude_masks, prune_by_magnitude,
                                          pruning_schedule)
from tf_supermask.training import RunDirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNE_FLAGFILES = sorted(glob.glob(os.path.join(REPO, "flags", "finetune_*.cfg")))

# fc at width 0.05 (784-15-5-10) on 200 sample images, batches of 50: 4 steps per epoch.
tiny = tiny_config(FinetuneConfig, width=0.05, train_size=200, batch_size=50, epochs=1,
                   lr=0.05)


def reference_tfmot_kept(sparsity, size):
    """The reference formula of the gradual-pruning checks, by hand: tfmot's pruning_impl
    keeps max(round(float32(n) * (1 - float32(s))), 1), rounding half to even."""
    value = np.float32(size) * (np.float32(1.0) - np.float32(sparsity))
    return max(1, int(np.round(value)))


@pytest.fixture(scope="module")
def oneshot(tmp_path_factory):
    """A one-shot experiment that trains its dense run first (reused as --dense_run below)."""
    keras.utils.set_random_seed(0)
    run_dir = tmp_path_factory.mktemp("oneshot") / "experiment"
    config = tiny(run_dir, prune_method="oneshot", sparsity=0.7, finetune_epochs=1)
    return config, run_finetune(config)


@pytest.fixture
def dense_run(oneshot):
    return oneshot[1]["dense_run"]


def _load_initial(config, run_dir):
    """The fine-tuning run's initial.weights.h5, in a model built with its flags."""
    model = build_model(config.model, (28, 28, 1), 10,
                        finetune_train_config(config, str(run_dir)).mask_options())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_weights(os.path.join(run_dir, "checkpoints", "initial.weights.h5"))
    return model


# Magnitude masks --------------------------------------------------------------------------

def _fixed_fc(width=0.05, input_shape=(4, 4, 1)):
    return build_model("fc", input_shape, 3, MaskOptions(mask="fixed", width=width))


def test_magnitude_masks_per_layer_keep_exactly_the_largest():
    model = _fixed_fc()
    masks = magnitude_masks(model, 0.6, "layer")
    for path, weights in kernels(model).items():
        mask = masks[path]
        assert mask.sum() == kept_count(mask.size, pruned=0.6, rule="nearest")
        assert np.abs(weights[mask > 0]).min() >= np.abs(weights[mask == 0]).max()
    # By hand: 16-15-5-3 keeps 0.4 x 240, 75, 15.
    assert [int(mask.sum()) for mask in masks.values()] == [96, 30, 6]


def test_magnitude_masks_global_rank_all_layers_together():
    model = _fixed_fc()
    masks = magnitude_masks(model, 0.6, "global")
    weights = kernels(model)
    total = sum(mask.size for mask in masks.values())
    assert sum(mask.sum() for mask in masks.values()) == kept_count(total, pruned=0.6,
                                                                    rule="nearest")
    assert total == 330 and sum(mask.sum() for mask in masks.values()) == 132  # by hand
    kept = np.concatenate([np.abs(weights[p][masks[p] > 0]) for p in masks])
    pruned = np.concatenate([np.abs(weights[p][masks[p] == 0]) for p in masks])
    assert kept.min() >= pruned.max()
    # The layers' initializations have different scales, so their kept fractions differ.
    assert len({round(float(mask.mean()), 3) for mask in masks.values()}) > 1


def test_pruned_weights_never_come_back():
    model = _fixed_fc()
    first = prune_by_magnitude(model, 0.5)
    layer = masked_layers(model)[0]
    # Make the pruned weights the largest: a second pruning still cannot keep them.
    kernel = keras.ops.convert_to_numpy(layer.kernel_variable)
    path = layer.kernel_variable.path
    layer.kernel_variable.assign(np.where(first[path] > 0, kernel, 100.0))
    second = prune_by_magnitude(model, 0.75)
    assert np.all(second[path] <= first[path])
    assert second[path].sum() == kept_count(second[path].size, pruned=0.75, rule="nearest")
    assert second[path].sum() == 60  # by hand: 0.25 x 240
    lower = magnitude_masks(model, 0.25)  # asks for more than is left: the mask stays
    np.testing.assert_array_equal(lower[path], second[path])


def test_magnitude_masks_need_fixed_layers_and_a_valid_sparsity():
    dense = build_model("fc", (4, 4, 1), 3, MaskOptions(mask="dense", width=0.05))
    with pytest.raises(ValueError, match="mask='fixed'"):
        magnitude_masks(dense, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        magnitude_masks(_fixed_fc(), 1.5)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(_fixed_fc(), 0.5, "network")


# The gradual-pruning callback -------------------------------------------------------------

class MaskRecorder(keras.callbacks.Callback):
    """After the pruner (later in the list): masks and kernels at each step, before its update."""

    def __init__(self):
        super().__init__()
        self.masks, self.kernels = {}, {}

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.masks[step] = get_masks(self.model)
        self.kernels[step] = kernels(self.model)


def _polynomial(step, initial, final, begin, end, power=3.0):
    progress = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return final + (initial - final) * (1.0 - progress) ** power


def test_gradual_pruning_follows_the_polynomial_schedule():
    model = _fixed_fc()
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    schedule = pruning_schedule("polynomial", 0.75, begin_step=2, end_step=8, frequency=2,
                                initial_sparsity=0.25)
    pruner, recorder = GradualPruning(schedule, "layer"), MaskRecorder()
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(24, 4, 4, 1)).astype("float32"), rng.integers(0, 3, 24),
              batch_size=2, epochs=1, verbose=0, shuffle=False, callbacks=[pruner, recorder])
    assert [event["step"] for event in pruner.events] == [2, 4, 6, 8]
    expected = {step: _polynomial(step, 0.25, 0.75, 2, 8) for step in (2, 4, 6, 8)}
    for event in pruner.events:
        assert event["sparsity"] == pytest.approx(expected[event["step"]], abs=1e-6)
    current = {path: 0.0 for path in recorder.masks[0]}  # sparsity in force, per layer
    for step in range(12):
        masks = recorder.masks[step]
        if step in expected:
            previous = recorder.masks[step - 1]
            assert any(not np.array_equal(masks[p], previous[p]) for p in masks), step
            for path, mask in masks.items():
                assert mask.sum() == reference_tfmot_kept(expected[step], mask.size)
                assert np.all(mask <= previous[path])  # a subset of the previous mask
                weights = np.abs(recorder.kernels[step][path])
                newly_pruned = (previous[path] > 0) & (mask == 0)
                if newly_pruned.any():
                    assert weights[mask > 0].min() >= weights[newly_pruned].max()
        elif step > 0:
            for path, mask in masks.items():
                np.testing.assert_array_equal(mask, recorder.masks[step - 1][path])
        else:
            assert all(mask.all() for mask in masks.values())
    final = get_masks(model)
    for mask in final.values():
        assert mask.sum() == reference_tfmot_kept(0.75, mask.size)
    assert [int(mask.sum()) for mask in final.values()] == [60, 19, 4]  # 0.25 x 15 = 3.75: 4


def test_gradual_pruning_writes_per_layer_sparsity_to_tensorboard(tmp_path):
    import tensorflow as tf

    model = _fixed_fc()
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    schedule = pruning_schedule("polynomial", 0.6, begin_step=0, end_step=4, frequency=2)
    pruner = GradualPruning(schedule, "layer", log_dir=str(tmp_path / "tb"))
    model.fit(np.zeros((16, 4, 4, 1), "float32"), np.zeros(16), batch_size=2, verbose=0,
              callbacks=[pruner])
    logged = {}
    for path in glob.glob(str(tmp_path / "tb" / "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                logged[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    paths = [layer.kernel_variable.path for layer in masked_layers(model)]
    for event in pruner.events:  # steps 0, 2, 4: every layer at the schedule's sparsity
        for path in paths:
            size = np.size(get_masks(model)[path])
            expected = 1.0 - reference_tfmot_kept(event["sparsity"], size) / size
            assert logged[(f"sparsity/{path}", event["step"])] == pytest.approx(expected)
        assert logged[("sparsity/pruned_layers", event["step"])] == pytest.approx(event["pruned"])
    assert [event["step"] for event in pruner.events] == [0, 2, 4]


def test_gradual_pruning_needs_a_fixed_model():
    model = build_model("fc", (4, 4, 1), 3, MaskOptions(mask="topk", width=0.05))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    pruner = GradualPruning(pruning_schedule("constant", 0.5, 0))
    with pytest.raises(ValueError, match="mask='fixed'"):
        model.fit(np.zeros((4, 4, 4, 1)), np.zeros(4), batch_size=2, verbose=0,
                  callbacks=[pruner])


# The experiment ---------------------------------------------------------------------------

def test_oneshot_prunes_the_dense_weights_by_magnitude_and_fine_tunes_them(oneshot):
    config, summary = oneshot
    run_dir = summary["run_dir"]
    dense_dir = os.path.join(run_dir, "dense")
    assert summary["dense_run"] == dense_dir
    assert "--mask=dense" in open(os.path.join(dense_dir, "flags.txt")).read()
    dense = load_trained(dense_dir)
    dense_kernels = kernels(dense)
    finetune_dir = os.path.join(run_dir, "finetune")
    masks = Mask.load(os.path.join(finetune_dir, "mask.npz"))
    assert set(masks) == set(dense_kernels) == {"dense1/kernel", "dense2/kernel", "output/kernel"}
    for path, mask in masks.items():
        assert mask.sum() == kept_count(mask.size, pruned=0.7, rule="nearest")
        weights = np.abs(dense_kernels[path])
        assert weights[mask > 0].min() >= weights[mask == 0].max()
    # By hand: 0.3 x 11760, 75, 50; 0.3 x 75 = 22.5 rounds half to even.
    assert {path: int(mask.sum()) for path, mask in masks.items()} == {
        "dense1/kernel": 3528, "dense2/kernel": 22, "output/kernel": 15}
    # Fine-tuning starts from the dense run's final weights (all of them) under that mask.
    initial = _load_initial(config, finetune_dir)
    dense_values = {v.path: keras.ops.convert_to_numpy(v) for v in dense.weights}
    for variable in initial.weights:
        name = variable.path.split("/")[-1]
        if name == "mask":
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable),
                                          masks[variable.path.replace("/mask", "/kernel")])
        elif name != "seed_generator_state":
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable),
                                          dense_values[variable.path])
    # Fine-tuning moved the kept weights only; the final mask is the one it started with.
    final = load_trained(finetune_dir)
    for path, weights in kernels(final).items():
        kept = masks[path] > 0
        assert not np.allclose(weights[kept], dense_kernels[path][kept])
        np.testing.assert_array_equal(weights[~kept], dense_kernels[path][~kept])
    for path, mask in get_masks(final).items():
        np.testing.assert_array_equal(mask, masks[path])
    on_disk = json.load(open(os.path.join(run_dir, "results.json")))
    assert on_disk["prune_method"] == "oneshot" and on_disk["target_sparsity"] == 0.7
    total = sum(mask.size for mask in masks.values())
    expected = 1 - sum(kept_count(mask.size, pruned=0.7, rule="nearest")
                       for mask in masks.values()) / total
    assert on_disk["pruned_layers_sparsity"] == pytest.approx(expected)
    assert on_disk["weights_remaining"] == pytest.approx(1 - expected)
    assert 0.0 <= on_disk["test_accuracy"] <= 1.0
    assert on_disk["dense_test_accuracy"] == json.load(
        open(os.path.join(dense_dir, "results.json")))["test_accuracy"]
    assert "--prune_method=oneshot" in open(os.path.join(run_dir, "flags.txt")).read()


def test_a_finished_experiment_is_not_overwritten(oneshot):
    config, summary = oneshot
    before = os.path.getmtime(os.path.join(summary["run_dir"], "results.json"))
    with pytest.raises(RunDirError, match="finished"):
        run_finetune(config)
    assert os.path.getmtime(os.path.join(summary["run_dir"], "results.json")) == before


def test_oneshot_global_scope(tmp_path, dense_run):
    summary = run_finetune(tiny(tmp_path / "global", dense_run=dense_run, sparsity=0.8,
                                prune_scope="global", finetune_epochs=1))
    masks = Mask.load(os.path.join(summary["run_dir"], "finetune", "mask.npz"))
    total = sum(mask.size for mask in masks.values())
    kept_total = kept_count(total, pruned=0.8, rule="nearest")
    assert kept_total == 2377  # by hand: 0.2 x 11885
    assert sum(mask.sum() for mask in masks.values()) == kept_total
    assert summary["pruned_layers_sparsity"] == pytest.approx(1 - kept_total / total)
    dense_kernels = kernels(load_trained(dense_run))
    kept = np.concatenate([np.abs(dense_kernels[p][masks[p] > 0]) for p in masks])
    pruned = np.concatenate([np.abs(dense_kernels[p][masks[p] == 0]) for p in masks])
    assert kept.min() >= pruned.max()
    assert not os.path.exists(os.path.join(summary["run_dir"], "dense"))


def test_gradual_prunes_at_the_scheduled_steps_to_the_target(tmp_path, dense_run):
    recorder = MaskRecorder()  # runs before the pruner here: it sees the previous step's masks
    config = tiny(tmp_path / "gradual", dense_run=dense_run, prune_method="gradual",
                  sparsity=0.8, initial_sparsity=0.1, begin_step=1, end_step=6, frequency=2,
                  finetune_epochs=2)
    summary = run_finetune(config, callbacks=[recorder])
    # end_step 6 moves back to 5, the last step of the schedule (1, 3, 5).
    assert summary["schedule"]["begin_step"] == 1 and summary["schedule"]["end_step"] == 5
    steps = [event["step"] for event in summary["prune_events"]]
    assert steps == [1, 3, 5]
    for event in summary["prune_events"]:
        assert event["sparsity"] == pytest.approx(_polynomial(event["step"], 0.1, 0.8, 1, 5),
                                                  abs=1e-6)
    # Seen at the start of step t (before the pruner): the masks in force since step t - 1.
    changed = [step - 1 for step in range(1, 8)
               if any(not np.array_equal(recorder.masks[step][p], recorder.masks[step - 1][p])
                      for p in recorder.masks[step])]
    assert changed == [1, 3, 5]
    masks = Mask.load(os.path.join(summary["run_dir"], "finetune", "mask.npz"))
    for path, mask in masks.items():
        assert mask.sum() == kept_count(mask.size, pruned=0.8, rule="nearest")
        np.testing.assert_array_equal(mask, recorder.masks[7][path])
    # It starts from the dense weights with a full mask.
    initial = _load_initial(config, os.path.join(summary["run_dir"], "finetune"))
    assert all(mask.all() for mask in get_masks(initial).values())
    for path, weights in kernels(load_trained(dense_run)).items():
        np.testing.assert_array_equal(kernels(initial)[path], weights)


def test_gradual_constant_schedule_prunes_once(tmp_path, dense_run):
    summary = run_finetune(tiny(tmp_path / "constant", dense_run=dense_run,
                                prune_method="gradual", schedule="constant", sparsity=0.5,
                                begin_epoch=1, frequency=3, finetune_epochs=2))
    # Pruned at step 4 (the start of epoch 1), again at step 7 to the same mask.
    assert [event["step"] for event in summary["prune_events"]] == [4, 7]
    assert all(event["pruned"] == summary["pruned_layers_sparsity"]
               for event in summary["prune_events"])
    masks = Mask.load(os.path.join(summary["run_dir"], "finetune", "mask.npz"))
    for mask in masks.values():
        assert mask.sum() == reference_tfmot_kept(0.5, mask.size)
    assert [int(mask.sum()) for mask in masks.values()] == [5880, 38, 25]  # by hand


def test_iterative_prunes_the_remaining_weights_each_round(tmp_path, dense_run):
    summary = run_finetune(tiny(tmp_path / "iterative", dense_run=dense_run,
                                prune_method="iterative", sparsity=0.75, prune_rounds=2,
                                finetune_epochs=1))
    run_dir = summary["run_dir"]
    first = Mask.load(os.path.join(run_dir, "round_1", "mask.npz"))
    second = Mask.load(os.path.join(run_dir, "round_2", "mask.npz"))
    for path in first:
        # Round 1 prunes 1 - (1 - 0.75) ** 0.5 = 0.5.
        assert first[path].sum() == kept_count(first[path].size, pruned=0.5, rule="nearest")
        assert second[path].sum() == kept_count(second[path].size, pruned=0.75, rule="nearest")
        assert np.all(second[path] <= first[path])
    # By hand: 0.5 x 11760, 75 (37.5, half to even), 50; then 0.25 x them (18.75, 12.5).
    assert [int(mask.sum()) for mask in first.values()] == [5880, 38, 25]
    assert [int(mask.sum()) for mask in second.values()] == [2940, 19, 12]
    # Round 2 starts from round 1's fine-tuned weights as they act (weight x mask, so what
    # round 1 pruned is zero), not from the dense ones.
    config = tiny(run_dir, prune_method="iterative")
    start = _load_initial(config, os.path.join(run_dir, "round_2"))
    end_of_first = load_trained(os.path.join(run_dir, "round_1"))
    dense_kernels = kernels(load_trained(dense_run))
    for path, weights in kernels(start).items():
        np.testing.assert_array_equal(weights, kernels(end_of_first)[path] * first[path])
        kept = first[path] > 0
        assert not np.allclose(weights[kept], dense_kernels[path][kept])
    assert [entry["round"] for entry in summary["rounds"]] == [1, 2]
    assert summary["finetune_epochs_total"] == 2
    assert summary["pruned_layers_sparsity"] == summary["rounds"][-1]["pruned_layers_sparsity"]


# Bad flags --------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (dict(sparsity=1.0), "--sparsity"),
    (dict(sparsity=-0.1), "--sparsity"),
    (dict(mask="topk"), "--mask must be dense or fixed"),
    (dict(prune_rounds=0), "--prune_rounds"),
    (dict(finetune_epochs=0), "--finetune_epochs"),
    (dict(frequency=0), "--frequency"),
    (dict(initial_sparsity=0.95, sparsity=0.9), "--initial_sparsity"),
    (dict(prune_method="gradual"), "needs the end of pruning"),
    (dict(prune_method="gradual", end_epoch=10, finetune_epochs=10), "--end_epoch=10"),
    (dict(prune_method="gradual", begin_epoch=3, end_epoch=2, finetune_epochs=3),
     "--begin_epoch=3"),
])
def test_bad_flags_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **overrides)


def test_schedules_that_do_not_fit_are_refused_before_anything_is_written(tmp_path, dense_run):
    too_late = tiny(tmp_path / "late", dense_run=dense_run, prune_method="gradual",
                    end_step=8, frequency=1, finetune_epochs=2)  # 8 steps: 0..7
    with pytest.raises(ValueError, match="before the end of fine-tuning"):
        run_finetune(too_late)
    too_short = tiny(tmp_path / "short", dense_run=dense_run, prune_method="gradual",
                     begin_step=2, end_step=4, frequency=3, finetune_epochs=2)
    with pytest.raises(ValueError, match="at least one --frequency"):
        run_finetune(too_short)
    assert not os.path.exists(tmp_path / "late") and not os.path.exists(tmp_path / "short")


def test_bad_dense_runs_are_refused(tmp_path, dense_run):
    with pytest.raises(ValueError, match="nowhere does not exist"):
        run_finetune(tiny(tmp_path / "a", dense_run=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="--width: 0.05 there, 0.1 here"):
        run_finetune(tiny(tmp_path / "b", dense_run=dense_run, width=0.1))
    fake = tmp_path / "supermask"
    (fake / "checkpoints").mkdir(parents=True)
    (fake / "flags.txt").write_text("--model=fc\n--mask=topk\n")
    (fake / "results.json").write_text("{}")
    (fake / "checkpoints" / "final.keras").write_text("")
    with pytest.raises(ValueError, match="topk supermask"):
        run_finetune(tiny(tmp_path / "c", dense_run=str(fake)))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "flags.txt").write_text("--model=fc\n")
    with pytest.raises(ValueError, match="has not finished"):
        run_finetune(tiny(tmp_path / "d", dense_run=str(unfinished)))
    assert not any(os.path.exists(tmp_path / name) for name in "abcd")


@pytest.mark.parametrize("path", FINETUNE_FLAGFILES,
                         ids=[os.path.basename(p) for p in FINETUNE_FLAGFILES])
def test_finetune_flagfiles_parse(path):
    values = flags.FlagValues()
    define_flags(FinetuneConfig, values)
    values(["prog", f"--flagfile={path}"])
    config = from_flags(FinetuneConfig, values)
    if "fashion_mnist" in path:  # the CPU-sized comparison
        assert config.model == "fc" and config.dataset == "fashion_mnist"
        assert config.epochs == config.finetune_epochs
    else:
        assert config.model in ("vgg11", "resnet20", "mobilenet_v2")
        assert config.prune_first_layer == "auto"  # the first conv stays dense (Liu et al.)
        assert config.dataset == "cifar10" and config.epochs == 150
    if config.compare:  # the arms all get the pretraining budget
        assert set(parse_arms(config.compare)) == {"lottery", "rewind", "finetune"}
        assert config.finetune_epochs == config.epochs


def test_binary_reports_bad_flags(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tf_supermask.bin.finetune", "--sparsity=1.5",
                             f"--run_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    assert "--sparsity is the fraction pruned" in result.stderr
    assert not os.path.exists(tmp_path / "run")


# The equal-budget comparison (--compare) -------------------------------------------------

@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """lottery, rewind and finetune arms at two sparsities over a 2-epoch dense run."""
    keras.utils.set_random_seed(0)
    run_dir = tmp_path_factory.mktemp("compare") / "experiment"
    config = tiny(run_dir, epochs=2, finetune_epochs=1, compare="lottery,rewind,finetune",
                  sparsities="0.5,0.8", rewind_epoch=1)
    return config, run_comparison(config)


def _arm_start(config, run_dir):
    """(raw kernels, masks) an arm's run started from (its initial.weights.h5)."""
    model = _load_initial(config, run_dir)
    return kernels(model), get_masks(model)


def test_comparison_arms_share_the_mask_and_differ_in_their_start(comparison):
    config, summary = comparison
    experiment = summary["run_dir"]
    dense = os.path.join(experiment, "dense")
    dense_model = build_model("fc", (28, 28, 1), 10, MaskOptions(mask="dense", width=0.05))
    starts = {}
    for arm, weights in (("lottery", "initial"), ("rewind", "epoch_1")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dense_model.load_weights(os.path.join(dense, "checkpoints", f"{weights}.weights.h5"))
        starts[arm] = kernels(dense_model)
    starts["finetune"] = kernels(load_trained(dense))
    for path in starts["lottery"]:  # three different starting points
        assert not np.allclose(starts["lottery"][path], starts["rewind"][path])
        assert not np.allclose(starts["rewind"][path], starts["finetune"][path])
    assert [(p["sparsity"], p["arm"]) for p in summary["arms"]] == [
        (s, arm) for s in (0.5, 0.8) for arm in ("lottery", "rewind", "finetune")]
    for sparsity in (0.5, 0.8):
        # The mask: the largest trained magnitudes of each layer, the same in every arm.
        expected = {path: np.abs(value) for path, value in starts["finetune"].items()}
        for arm in ("lottery", "rewind", "finetune"):
            run_dir = os.path.join(experiment, f"sparsity_{sparsity:g}", arm)
            start, masks = _arm_start(config, run_dir)
            final_masks = Mask.load(os.path.join(run_dir, "mask.npz"))
            for path, mask in masks.items():
                kept = kept_count(mask.size, pruned=sparsity, rule="nearest")
                assert mask.sum() == kept
                threshold = np.sort(expected[path].ravel())[-kept]
                assert np.all(expected[path][mask > 0] >= threshold)
                np.testing.assert_array_equal(final_masks[path], mask)
                np.testing.assert_allclose(start[path] * mask, starts[arm][path] * mask,
                                           rtol=1e-6, atol=1e-7)
            results = json.load(open(os.path.join(run_dir, "results.json")))
            assert results["epochs"] == config.finetune_epochs  # the same budget in every arm
            assert results["comparison"]["arm"] == arm


def test_comparison_records_weight_correlation(comparison):
    _, summary = comparison
    correlation = summary["weight_correlation"]
    assert set(correlation) == {"dense1/kernel", "dense2/kernel", "output/kernel"}
    for entry in correlation.values():
        assert -1.0 <= entry["pearson"] <= 1.0
        assert set(entry["top_overlap"]) == {"0.5", "0.2"}
    on_disk = json.load(open(os.path.join(summary["run_dir"], "results.json")))
    assert on_disk["weight_correlation"] == correlation


def test_comparison_report_draws_one_line_per_arm(comparison, tmp_path):
    from tf_supermask.tools.report import collect, write_report

    experiment = comparison[1]["run_dir"]
    points = collect([experiment])
    assert sorted({p["variant"] for p in points}) == ["arm=finetune", "arm=lottery", "arm=rewind"]
    written = write_report([experiment], str(tmp_path / "cmp"))
    text = open(tmp_path / "cmp.md").read()
    assert "| arm=lottery | 0.8 | 20.0 |" in text and "output/kernel" in text
    assert str(tmp_path / "cmp.png") in written


def test_weight_correlation_by_hand():
    initial = np.array([[0.1, -0.9], [0.5, 0.2]])
    assert top_overlap(initial, initial, 0.5) == 1.0
    # Top half by magnitude: {-0.9, 0.5} at init, {-0.9, 0.2}-positions after training.
    assert top_overlap(initial, np.array([[0.0, 1.0], [0.1, 0.3]]), 0.5) == 0.5
    out = weight_correlation({"k": initial}, {"k": -2 * initial}, [0.25, 0.5])
    assert out["k"]["pearson"] == pytest.approx(-1.0)
    assert out["k"]["top_overlap"] == {"0.25": 1.0, "0.5": 1.0}


@pytest.mark.parametrize("changes, message", [
    (dict(compare="lottery,ticket"), "--compare takes"),
    (dict(compare="lottery", sparsities="0.5,1.0"), "--sparsities must be"),
    (dict(compare="lottery", prune_method="gradual", end_epoch=1, finetune_epochs=2),
     "--prune_method must be oneshot"),
    (dict(compare="rewind", epochs=2, rewind_epoch=2), "--rewind_epoch must be"),
])
def test_comparison_bad_flags(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path / "run", **changes)


def test_comparison_rewind_needs_the_epoch_weights(dense_run, tmp_path):
    config = tiny(tmp_path / "run", compare="lottery,rewind", dense_run=dense_run, epochs=2)
    with pytest.raises(ValueError, match="the rewind arm needs"):
        run_comparison(config)
    assert not os.path.exists(tmp_path / "run")


# tfmot must not change what tf.keras is --------------------------------------------------

PROBE = r"""
import json, os, sys
mode = sys.argv[1]
if mode == "tfmot-first":
    import tensorflow_model_optimization as tfmot
if mode != "fresh":
    import numpy as np
    import tf_supermask
    from tf_supermask.models import MaskOptions, build_model
    from tf_supermask.pruning.gradual import GradualPruning, pruning_schedule
    model = build_model("fc", (4, 4, 1), 3, MaskOptions(mask="fixed", width=0.05))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    pruner = GradualPruning(pruning_schedule("polynomial", 0.5, 0, 2, frequency=1))
    model.fit(np.zeros((8, 4, 4, 1)), np.zeros(8), batch_size=2, verbose=0, callbacks=[pruner])
    assert [event["step"] for event in pruner.events] == [0, 1, 2], pruner.events
import keras
import tensorflow as tf
print(json.dumps({"env": os.environ.get("TF_USE_LEGACY_KERAS"),
                  "tf.keras": tf.keras.Model.__module__,
                  "tf.compat.v2.keras": tf.compat.v2.keras.Model.__module__,
                  "keras 3": tf.keras.Model is keras.Model,
                  "tf_keras imported": "tf_keras" in sys.modules,
                  "tfmot classes": mode == "tfmot-first" and isinstance(
                      pruner.schedule, tfmot.sparsity.keras.PolynomialDecay)}))
"""


PROBES = {"fresh": ("fresh", None), "use": ("use", None), "tfmot-first": ("tfmot-first", None),
          "legacy fresh": ("fresh", "1"), "legacy use": ("use", "1")}


@pytest.fixture(scope="module")
def probes():
    """The probe's report in fresh processes, run side by side: {name: report}."""
    running = {}
    for name, (mode, legacy) in PROBES.items():
        env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
        if legacy is not None:
            env["TF_USE_LEGACY_KERAS"] = legacy
        running[name] = subprocess.Popen([sys.executable, "-c", PROBE, mode], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reports = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name}: {stderr[-3000:]}"
        reports[name] = json.loads(stdout.strip().splitlines()[-1])
    return reports


def test_gradual_pruning_leaves_tf_keras_alone(probes):
    fresh = probes["fresh"]
    assert fresh["keras 3"] and fresh["env"] is None  # the reference: Keras 3
    assert probes["use"] == fresh  # tfmot's schedules are loaded without tf_keras


def test_a_legacy_keras_user_keeps_tf_keras(probes):
    fresh = probes["legacy fresh"]
    assert not fresh["keras 3"] and fresh["env"] == "1"
    assert probes["legacy use"] == fresh


def test_a_user_who_imported_tfmot_gets_its_own_schedule_classes(probes):
    assert probes["tfmot-first"]["tfmot classes"]


def test_schedule_values():
    from tf_supermask.pruning.gradual import evaluate_schedule

    schedule = pruning_schedule("polynomial", 0.5, 0, 10, frequency=5)
    assert type(schedule).__name__ == "PolynomialDecay"
    assert evaluate_schedule(schedule, 10) == (True, 0.5)
    should_prune, sparsity = evaluate_schedule(schedule, 7)
    assert not should_prune and sparsity == pytest.approx(_polynomial(7, 0.0, 0.5, 0, 10))
    constant = pruning_schedule("constant", 0.3, 4, frequency=2)
    # tfmot's float32 value, which the tfmot count rule rounds as tfmot does.
    assert [evaluate_schedule(constant, step) for step in (3, 4, 5, 6)] == [
        (False, float(np.float32(0.3))), (True, float(np.float32(0.3))),
        (False, float(np.float32(0.3))), (True, float(np.float32(0.3)))]
    with pytest.raises(ValueError, match="unknown pruning schedule"):
        pruning_schedule("cubic", 0.5, 0, 10)
