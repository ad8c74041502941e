"""Lottery tickets against their reference implementations, rule by rule.

* Zhou et al.'s same-sign criteria (uber-research/deconstructing-lottery-tickets,
  ``get_weight_init.py``): flipped weights score 0, ties broken by a random key,
  ``int(remaining x percentile / 100)`` pruned per layer with the percentile
  ``(1 - prune_base) * 100.0`` in floating point; recomputed here in NumPy.
* Zhou et al.'s pruned-weight variants carried across levels.
* open_lth's late rewinding (``training/train.py``: fresh optimizer, schedule
  stepped to N, data from step N, training to T) and its global pruning
  (``pruning/sparse_global.py``: ceil(rate x remaining) pruned, fc.weight left out).
* Issue 14: a level's results.json written once and complete; a lottery killed
  mid-level with SIGKILL resumes to the masks and figures of an uninterrupted one.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from tf_supermask.sparsity import Mask
from tf_supermask.experiments.lottery import (LotteryConfig, effective_kernels, load_weights, next_masks, pruned_values,
                                              run_lottery, tiebreak_keys)
from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.optim import current_learning_rate
from conftest import tiny_config
from test_lottery import tiny


# Zhou et al.'s same-sign criteria -------------------------------------------------------

def reference_same_sign_mask(method, w_i, w_f, current_mask, rate, keys):
    """get_weight_init.py for one layer: large_final_same_sign / magnitude_increase_same_sign.

    Its ``np.random.random`` tie-break key is replaced by `keys` (one per entry), which
    it consults the same way: ``np.lexsort((keys, scores))`` prunes the lowest first.
    """
    scores = np.abs(w_f) if method == "large_final_same_sign" else np.abs(w_f) - np.abs(w_i)
    scores = scores.astype(np.float64).copy()
    scores[np.sign(w_i) != np.sign(w_f)] = 0
    flat = scores.reshape(-1)
    mask = current_mask.reshape(-1).astype(np.float64).copy()
    flat[mask == 0] = 9999  # already pruned: never chosen again
    percentile = (1 - (1 - rate) ** 1) * 100.0  # prune_base = 1 - rate, prune_power 1
    prune_num = int(np.sum(mask) * percentile / 100)
    pruned = np.lexsort((keys.reshape(-1), flat))[:prune_num]
    mask[pruned] = 0
    return mask.reshape(w_i.shape)


def _flips_and_ties(seed):
    rng = np.random.default_rng(seed)
    w_i = rng.normal(size=(10, 8))
    w_f = w_i + rng.normal(scale=0.8, size=w_i.shape)  # many signs flip
    w_f[0, :4] = w_i[0, :4] * 0.5  # same sign, shrank: magnitude_increase < 0
    current = (rng.random(w_i.shape) > 0.2).astype(np.float64)
    return w_i, w_f, current


@pytest.mark.parametrize("method", ["large_final_same_sign", "magnitude_increase_same_sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_sign_criteria_match_the_reference_formula(method, seed):
    w_i, w_f, current = _flips_and_ties(seed)
    flipped = (np.sign(w_i) != np.sign(w_f)) & (current > 0)
    # Enough pruning that the cut falls among the flipped weights' tied zeros.
    rate = 0.1 if method == "large_final_same_sign" else 0.3
    config = LotteryConfig(criterion=method, prune_rate_dense=rate, seed=seed)
    kinds = {"w": "dense"}
    ours = next_masks(config, kinds, {"w": w_i}, {"w": w_f}, {"w": current}, level=1)["w"]
    keys = tiebreak_keys({"w": w_i}, config.seed, 1)["w"]
    expected = reference_same_sign_mask(method, w_i, w_f, current, rate, keys)
    np.testing.assert_array_equal(ours, expected)
    if method == "large_final_same_sign":
        # The cut really falls inside the tie: some flipped weights kept, some pruned.
        assert 0 < ours[flipped].sum() < flipped.sum()


def test_magnitude_increase_same_sign_ranks_a_flip_above_a_weight_that_shrank():
    w_i = np.array([0.5, 0.4, -0.3, 0.2, 0.6])
    w_f = np.array([0.9, -0.5, -0.1, 0.5, 0.61])  # entry 1 flips; entry 2 shrinks
    # magnitude_increase: .4 .1 -.2 .3 .01; same_sign (reference): .4 0 -.2 .3 .01
    # (counted as round(rate x 5): the reference's own count prunes 0 of 5 at 20 %)
    config = LotteryConfig(criterion="magnitude_increase_same_sign", prune_rate_dense=0.4,
                           count_rule="nearest")
    mask = next_masks(config, {"w": "dense"}, {"w": w_i}, {"w": w_f}, {"w": np.ones(5)}, 1)
    np.testing.assert_array_equal(mask["w"], [1, 0, 0, 1, 1])  # prunes 2 (shrank) and 1 (0)
    config = LotteryConfig(criterion="magnitude_increase_same_sign", prune_rate_dense=0.2,
                           count_rule="nearest")
    mask = next_masks(config, {"w": "dense"}, {"w": w_i}, {"w": w_f}, {"w": np.ones(5)}, 1)
    np.testing.assert_array_equal(mask["w"], [1, 1, 0, 1, 1])  # the flip outranks the shrink
    strict = LotteryConfig(criterion="magnitude_increase_same_sign_strict",
                           prune_rate_dense=0.2, count_rule="nearest")
    mask = next_masks(strict, {"w": "dense"}, {"w": w_i}, {"w": w_f}, {"w": np.ones(5)}, 1)
    np.testing.assert_array_equal(mask["w"], [1, 0, 1, 1, 1])  # the old rule: flips first


def test_levels_count_as_deconstructing_lottery_tickets_by_default():
    """At a 20 % rate the reference prunes int(10 x 19.999999999999996 / 100) = 1 of 10."""
    w = np.arange(1.0, 11.0)
    for rule, pruned in [("auto", 1), ("deconstructing", 1), ("nearest", 2)]:
        config = LotteryConfig(prune_rate_dense=0.2, count_rule=rule)
        mask = next_masks(config, {"w": "dense"}, {"w": w}, {"w": w}, {"w": np.ones(10)}, 1)
        assert mask["w"].sum() == 10 - pruned, rule


def test_ties_among_flipped_weights_are_broken_at_random_not_by_position():
    w_i = np.ones(40)
    w_f = np.concatenate([-np.ones(20), np.full(20, 2.0)])  # 20 flipped, all scored 0
    config = LotteryConfig(criterion="large_final_same_sign", prune_rate_dense=0.25)
    masks = [next_masks(config, {"w": "dense"}, {"w": w_i}, {"w": w_f}, {"w": np.ones(40)},
                        level)["w"] for level in (1, 2)]
    for mask in masks:
        assert mask[20:].all() and mask[:20].sum() == 10
        assert not np.array_equal(mask[:20], np.r_[np.ones(10), np.zeros(10)])  # not by position
    assert not np.array_equal(masks[0], masks[1])  # seeded by the level


# Global pruning and the output layer (open_lth sparse_global) -----------------------------

KINDS = {"conv/kernel": "conv", "dense/kernel": "dense", "output/kernel": "output"}


def _layers(seed):
    rng = np.random.default_rng(seed)
    return {"conv/kernel": rng.normal(size=(3, 3, 4, 8)), "dense/kernel": rng.normal(size=(72, 20)),
            "output/kernel": rng.normal(size=(20, 10))}


def reference_sparse_global(final, current, rate, ignore):
    """open_lth's sparse_global.prune: ceil(rate x all remaining) pruned below a threshold."""
    remaining = sum(np.sum(m) for m in current.values())
    to_prune = int(np.ceil(rate * remaining))
    prunable = {k: v for k, v in final.items() if k not in ignore}
    vector = np.concatenate([v[current[k] == 1] for k, v in prunable.items()])
    threshold = np.sort(np.abs(vector))[to_prune]
    new = {k: np.where(np.abs(v) > threshold, current[k], 0) for k, v in prunable.items()}
    new.update({k: current[k] for k in current if k not in new})
    return new


def test_global_pruning_leaves_the_output_layer_out_by_default_as_open_lth():
    initial, final = _layers(0), _layers(1)
    current = {p: (np.random.default_rng(2).random(w.shape) > 0.1).astype(np.float64)
               for p, w in initial.items()}
    config = LotteryConfig(prune_scope="global", prune_rate=0.2)
    assert config.prunes_output() is False
    ours = next_masks(config, KINDS, initial, final, current, 1)
    reference = reference_sparse_global(final, current, 0.2, ignore={"output/kernel"})
    np.testing.assert_array_equal(ours["output/kernel"], current["output/kernel"])
    # open_lth's strict threshold prunes the weight at sorted[n] too: n + 1, as ours.
    for path in ours:
        np.testing.assert_array_equal(ours[path], reference[path])
    remaining = sum(m.sum() for m in current.values())
    assert sum(m.sum() for m in ours.values()) == remaining - math.ceil(0.2 * remaining) - 1
    # The exact count stays one flag away.
    exact = LotteryConfig(prune_scope="global", prune_rate=0.2, count_rule="nearest")
    kept = sum(m.sum() for m in next_masks(exact, KINDS, initial, final, current, 1).values())
    assert kept == remaining - round(0.2 * remaining)


@pytest.mark.parametrize("model,pruned", [("fc", False), ("conv4", False), ("vgg11", False),
                                          ("resnet20", True), ("resnet56", True),
                                          ("resnet18", True), ("mobilenet_v2", True)])
def test_global_pruning_treats_the_output_layer_per_model_family(model, pruned):
    """open_lth: LeNet and VGG ignore fc.weight; its CIFAR/ImageNet ResNets prune it."""
    assert LotteryConfig(model=model, prune_scope="global").prunes_output() is pruned
    assert LotteryConfig(model=model, prune_scope="layer").prunes_output() is True
    assert LotteryConfig(model=model, prune_scope="global",
                         prune_output_layer="false").prunes_output() is False


def test_output_layer_choice_under_both_scopes():
    initial, final = _layers(0), _layers(1)
    ones = {p: np.ones_like(w) for p, w in initial.items()}
    pruned = LotteryConfig(prune_scope="global", prune_rate=0.2, prune_output_layer="true")
    assert ones["output/kernel"].sum() > next_masks(pruned, KINDS, initial, final, ones, 1)[
        "output/kernel"].sum()
    layer = LotteryConfig(prune_rate_output=0.1)  # auto: Frankle & Carbin prune it per layer
    # Zhou et al.'s count: int(200 x 9.999999999999998 / 100) = 19 of 200 pruned.
    assert next_masks(layer, KINDS, initial, final, ones, 1)["output/kernel"].sum() == 181
    kept = LotteryConfig(prune_rate_output=0.1, prune_output_layer="false")
    np.testing.assert_array_equal(next_masks(kept, KINDS, initial, final, ones, 1)[
        "output/kernel"], ones["output/kernel"])


# Pruned weights carried across levels -----------------------------------------------------

def test_pruned_values_carry_forward_in_numpy():
    start0 = {"w": np.array([0.5, -0.5, 0.2, -0.2, 0.4])}
    final0 = {"w": np.array([0.9, -0.1, 0.3, -0.4, 0.1])}
    mask1 = {"w": np.array([1.0, 0.0, 1.0, 1.0, 1.0])}  # entry 1 pruned: it shrank -> 0
    frozen1 = pruned_values("zero_if_shrunk", start0, final0, mask1)["w"]
    np.testing.assert_allclose(frozen1, [0, 0, 0, 0, 0])
    # Level 1 starts from the rewind values for kept entries and 0 for entry 1.
    start1 = {"w": np.array([0.5, 0.0, 0.2, -0.2, 0.4])}
    final1 = {"w": np.array([0.7, 0.0, 0.25, -0.1, 0.6])}
    mask2 = {"w": np.array([1.0, 0.0, 1.0, 0.0, 1.0])}  # entry 3 shrank -> 0; entry 1 stays 0
    np.testing.assert_allclose(pruned_values("zero_if_shrunk", start1, final1, mask2)["w"],
                               [0, 0, 0, 0, 0])
    mask2b = {"w": np.array([1.0, 0.0, 0.0, 1.0, 1.0])}  # entry 2 grew -> its start value
    np.testing.assert_allclose(pruned_values("zero_if_shrunk", start1, final1, mask2b)["w"],
                               [0, 0, 0.2, 0, 0])
    np.testing.assert_allclose(pruned_values("init", start1, final1, mask2b)["w"],
                               [0, 0, 0.2, 0, 0])


# test_lottery's tiny experiment, one level unless told otherwise.
_tiny = tiny_config(LotteryConfig, **{**tiny.settings, "levels": 1})


def _start_and_final(run_dir, level, config):
    from tf_supermask.models import build_model

    model = build_model("fc", (28, 28, 1), 10, config.mask_options())
    load_weights(model, str(run_dir / f"level_{level}" / "checkpoints" / "initial.weights.h5"))
    start = effective_kernels(model)
    final = keras.saving.load_model(str(run_dir / f"level_{level}" / "checkpoints" /
                                        "final.keras"), compile=False)
    return start, effective_kernels(final)


def test_zero_if_shrunk_over_three_levels_keeps_zeroed_weights_zero(tmp_path):
    config = _tiny(tmp_path / "exp", levels=3, epochs=1, pruned_weights="zero_if_shrunk",
                   untrained_eval=False, prune_rate_dense=0.4)
    run_lottery(config)
    keras.backend.clear_session()
    starts, finals, masks = [], [], []
    for level in range(4):
        start, final = _start_and_final(tmp_path / "exp", level, config)
        starts.append(start)
        finals.append(final)
        masks.append(Mask.load(str(tmp_path / "exp" / f"level_{level}" / "mask.npz")))
    path = "dense1/kernel"
    zeroed_at_1 = (masks[1][path] == 0) & (starts[1][path] == 0)
    assert zeroed_at_1.sum() > 100  # level 1 zeroed many weights ...
    for level in (1, 2, 3):
        if level > 1:  # ... and they stay zero
            assert np.all(starts[level][path][zeroed_at_1] == 0)
        # The reference rule, level by level: pruned entries from the previous level's
        # start and final weights (entries pruned earlier keep their value).
        expected = pruned_values("zero_if_shrunk", starts[level - 1], finals[level - 1],
                                 masks[level])
        for key, mask in masks[level].items():
            pruned = mask == 0
            np.testing.assert_allclose(starts[level][key][pruned], expected[key][pruned],
                                       rtol=0, atol=1e-7)


# open_lth's late rewinding ----------------------------------------------------------------

class _Recorder(keras.callbacks.Callback):
    """Per level (model): optimizer state and lr at its first step, steps, fit epochs."""

    def __init__(self):
        super().__init__()
        self.models, self.levels = [], []

    def _level(self):
        for index, model in enumerate(self.models):
            if model is self.model:
                return self.levels[index]
        self.models.append(self.model)
        self.levels.append({"steps": 0, "epochs": []})
        return self.levels[-1]

    def on_epoch_begin(self, epoch, logs=None):
        self._level()["epochs"].append(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        record = self._level()
        if "iterations" in record:
            return
        optimizer = self.model.optimizer
        record["iterations"] = int(keras.ops.convert_to_numpy(optimizer.iterations))
        rate = optimizer._learning_rate
        slots = [np.abs(keras.ops.convert_to_numpy(v)).max() for v in optimizer.variables
                 if v is not rate and v is not optimizer.iterations]
        record["slots"] = float(max(slots)) if slots else 0.0
        record["lr"] = current_learning_rate(optimizer)

    def on_train_batch_end(self, batch, logs=None):
        self._level()["steps"] += 1


@pytest.mark.parametrize("untrained_eval", [True, False])
def test_late_rewinding_is_open_lths(tmp_path, monkeypatch, untrained_eval):
    writes = []
    write_json = run_dir_lib.write_json
    monkeypatch.setattr(run_dir_lib, "write_json",
                        lambda path, data: (writes.append((path, dict(data))),
                                            write_json(path, data)))
    # 240 images, batch 60: S = 4 steps per epoch, T = 8; rewind to N = 3 (inside epoch 0).
    config = _tiny(tmp_path / "exp", optimizer="sgd", lr=0.1, momentum=0.9,
                   lr_schedule="cosine", rewind="step:3", untrained_eval=untrained_eval)
    recorder = _Recorder()
    summary = run_lottery(config, callbacks=[recorder])
    dense, level1 = recorder.levels
    cosine = lambda step: 0.1 * 0.5 * (1 + math.cos(math.pi * step / 8))  # noqa: E731
    assert (dense["iterations"], dense["slots"], dense["steps"]) == (0, 0.0, 8)
    assert dense["lr"] == pytest.approx(cosine(0))
    # Fresh optimizer, steps 3..7 of the dense run, the schedule at step 3 first.
    assert (level1["iterations"], level1["slots"], level1["steps"]) == (0, 0.0, 5)
    assert level1["lr"] == pytest.approx(cosine(3), rel=1e-6)
    assert level1["epochs"] == [0, 1]  # the last batch of epoch 0, then epoch 1
    # Each level's results.json is written once, complete with its early-stop fields.
    for level in (0, 1):
        path = os.path.join(str(tmp_path / "exp"), f"level_{level}", "results.json")
        written = [data for target, data in writes if target == path]
        assert len(written) == 1
        assert {"early_stop_epoch", "early_stop_iteration", "test_accuracy"} <= set(written[0])
        assert written[0]["early_stop_epoch"] in (0, 1)  # counted from 0 like metrics.csv
        assert written[0]["early_stop_iteration"] == 4 * (written[0]["early_stop_epoch"] + 1)
        assert written[0]["start_step"] == (3 if level else 0)
    assert summary["levels"][1]["early_stop_epoch"] in (0, 1)


def test_late_rewound_level_without_pruning_retraces_the_dense_run(tmp_path):
    """Nothing pruned, a stateless optimizer (SGD without momentum): a level rewound to
    step 3 must end exactly where the dense run ended, which holds only if it trains
    steps 3..7 on the dense run's batches with the schedule's rates at those steps."""
    config = _tiny(tmp_path / "exp", optimizer="sgd", lr=0.2, momentum=0.0,
                   lr_schedule="cosine", rewind="step:3", untrained_eval=False,
                   prune_rate_dense=0.0, prune_rate_output=0.0)
    run_lottery(config)
    finals = [keras.saving.load_model(str(tmp_path / "exp" / f"level_{level}" / "checkpoints" /
                                          "final.keras"), compile=False) for level in (0, 1)]
    for dense, rewound in zip(finals[0].weights, finals[1].weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(rewound),
                                   keras.ops.convert_to_numpy(dense), rtol=0, atol=1e-6,
                                   err_msg=dense.path)


# Issue 14: a lottery killed mid-level resumes to the uninterrupted result -----------------

def _binary():
    path = shutil.which("tf-supermask-lottery") or os.path.join(
        os.path.dirname(sys.executable), "tf-supermask-lottery")
    return path if os.path.exists(path) else None


def _lottery(flagfile, run_dir, kill_at=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop(run_dir_lib.KILL_ENV, None)
    if kill_at:
        env[run_dir_lib.KILL_ENV] = kill_at
    return subprocess.run([_binary(), f"--flagfile={flagfile}", f"--run_dir={run_dir}"],
                          capture_output=True, text=True, env=env, timeout=600)


FIGURES = ("test_accuracy", "test_loss", "weights_remaining", "history", "early_stop_epoch",
           "early_stop_iteration", "early_stop_val_loss", "start_step")


@pytest.mark.skipif(_binary() is None, reason="tf-supermask-lottery is not installed")
def test_lottery_killed_mid_level_resumes_to_the_same_masks_and_results(tmp_path):
    flagfile = tmp_path / "lottery.cfg"
    flagfile.write_text("\n".join([
        "--model=fc", "--width=0.1", "--dataset=sample", "--train_size=240",
        "--validation_size=60", "--batch_size=60", "--epochs=2", "--levels=2",
        "--optimizer=adam", "--lr=0.002", "--rewind=step:3", "--prune_rate_dense=0.3",
        "--verbose=0", "--strategy=one_device"]) + "\n")
    result = _lottery(flagfile, tmp_path / "whole")
    assert result.returncode == 0, result.stderr[-2000:]
    # Killed after batch 1 of epoch 1 of level 1 (after its epoch-0 backup), then re-run.
    killed = _lottery(flagfile, tmp_path / "killed", kill_at="level:1:batch:1:1")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "killed" / "level_1" / "results.json").exists()
    assert (tmp_path / "killed" / "level_1" / "checkpoints" / "backup").exists()
    result = _lottery(flagfile, tmp_path / "killed")
    assert result.returncode == 0, result.stderr[-2000:]
    for level in range(3):
        whole = tmp_path / "whole" / f"level_{level}"
        resumed = tmp_path / "killed" / f"level_{level}"
        masks_a = Mask.load(str(whole / "mask.npz"))
        masks_b = Mask.load(str(resumed / "mask.npz"))
        for path in masks_a:
            np.testing.assert_array_equal(masks_a[path], masks_b[path])
        a = json.loads((whole / "results.json").read_text())
        b = json.loads((resumed / "results.json").read_text())
        for key in FIGURES:
            assert a.get(key) == b.get(key), (level, key)
    assert json.loads((tmp_path / "killed" / "level_1" / "results.json").read_text())["resumed"]


# Controls evaluated on their own weights; criteria under late rewinding -------------------

def _hand_untrained_accuracy(config, level_dir):
    """The level's mask on the weights it started from (its initial.weights.h5),
    evaluated by hand on the test set."""
    from tf_supermask.training import trainer

    dataset, normalization = trainer.load_data(config)
    model = trainer.create_model(config, dataset, trainer.steps_per_epoch(config, dataset))
    load_weights(model, os.path.join(level_dir, "checkpoints", "initial.weights.h5"))
    test_batches = trainer.make_batches(config, dataset, normalization)[2]
    return trainer.evaluate(model, test_batches)["accuracy"]


@pytest.mark.parametrize("control", [dict(reinit="reinit"),
                                     dict(reinit="constant", keep_signs=True),
                                     dict(reinit="reshuffle", shuffle_mask=True)])
def test_controls_are_evaluated_untrained_on_the_weights_they_start_from(tmp_path, control):
    """Before: the mask was evaluated on the original initial weights, so a control's
    untrained figure was the ticket's."""
    config = _tiny(tmp_path / "control", **control)
    summary = run_lottery(config)
    level_dir = str(tmp_path / "control" / "level_1")
    reported = summary["levels"][1]["untrained_test_accuracy"]
    assert reported == pytest.approx(_hand_untrained_accuracy(config, level_dir), abs=1e-6)
    # The same mask on the original initial weights (the old figure) scores otherwise.
    from tf_supermask.models import build_model
    from tf_supermask.layers import set_masks
    from tf_supermask.training import trainer

    dataset, normalization = trainer.load_data(config)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes,
                        config.mask_options())
    trainer.compile_model(model, config, 4)
    load_weights(model, str(tmp_path / "control" / "checkpoints" / "initial.weights.h5"))
    set_masks(model, Mask.load(os.path.join(level_dir, "mask.npz")))
    old = trainer.evaluate(model, trainer.make_batches(config, dataset, normalization)[2])
    assert old["accuracy"] != pytest.approx(reported, abs=1e-6)


def test_criteria_compare_with_the_rewind_point_under_late_rewinding(tmp_path):
    """--rewind=step:3: magnitude_increase scores |w_final| - |w_step3| (the weights the
    level trains from); --criterion_init=init keeps the step-0 comparison."""
    from tf_supermask.experiments.lottery import kernels, layer_kinds
    from tf_supermask.models import build_model
    from tf_supermask.training import trainer

    config = _tiny(tmp_path / "late", rewind="step:3", criterion="magnitude_increase")
    run_lottery(config)
    dataset, _ = trainer.load_data(config)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes,
                        config.mask_options())

    def kernels_of(path):
        load_weights(model, str(path))
        return kernels(model)

    rewind = kernels_of(tmp_path / "late" / "checkpoints" / "rewind.weights.h5")
    initial = kernels_of(tmp_path / "late" / "checkpoints" / "initial.weights.h5")
    final = kernels(keras.saving.load_model(tmp_path / "late" / "level_0" / "checkpoints" /
                                            "final.keras", compile=False))
    ones = {path: np.ones_like(value) for path, value in initial.items()}
    kinds = layer_kinds(model)
    ours = Mask.load(str(tmp_path / "late" / "level_1" / "mask.npz"))
    from_rewind = next_masks(config, kinds, rewind, final, ones, 1)
    from_init = next_masks(config, kinds, initial, final, ones, 1)
    for path in ours:
        np.testing.assert_array_equal(ours[path], from_rewind[path])
    assert any(not np.array_equal(from_rewind[p], from_init[p]) for p in ours)
    with pytest.raises(ValueError, match="criterion_init"):
        _tiny(tmp_path / "bad", criterion_init="start")
