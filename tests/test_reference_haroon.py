"""Haroon's K-starts and dissipating gradients as the paper reads (arXiv 2209.02201).

The paper has no public code; its abstract fixes two rules, computed here by hand:
K-starts needs no retraining (the run goes on from the winner's trained weights,
inside the epoch budget), and dissipating removes the weights that stay within a
fraction of their initial value, so the sparsity reached is an outcome.
The earlier behaviours stay by name (``kstarts_mode=rewind``,
``dissipating_target=reach``).
"""

import json

import keras
import numpy as np
import pytest

from conftest import kernels
from conftest import sample_batches as batches
from conftest import tiny_model
from tf_supermask.experiments.prune_init import PruneInitConfig, prune_init
from tf_supermask.layers import set_masks
from tf_supermask.pruning import fraction_for_sparsity, kstarts_masks
from tf_supermask.pruning.haroon import dissipating_step, relative_change
from tf_supermask.pruning.saliency import random_masks

RUN = dict(model="fc", width=0.05, dataset="sample", train_size=256, batch_size=64, verbose=0,
           optimizer="adam", lr=1e-2, strategy="one_device")


def values(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights
            if "mask" not in v.path]


class Recorder(keras.callbacks.Callback):
    """Weights, kernels and optimizer step count when training begins; kernels at each
    epoch end."""

    def on_train_begin(self, logs=None):
        self.start = values(self.model)
        self.initial = kernels(self.model)
        self.iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((epoch, kernels(self.model)))


# ---------------------------------------------------------------------------
# K-starts.


def test_kstarts_continue_leaves_the_winner_as_trained_alone(sample):
    # Default mode: after the choice the model holds exactly what training the
    # winning mask alone for the candidates' epochs gives (weights and optimizer).
    model = tiny_model(sample, reseed=True)
    initial = values(model)
    masks, info = kstarts_masks(model, batches(sample), 0.7, k=3, epochs=1, fitness="both",
                                seed=4, steps_per_epoch=2, gradient_batches=1)
    assert info["kstarts_mode"] == "continue" and info["kstarts_epochs"] == 1
    assert len(info["kstarts_history"]["loss"]) == 1
    continued = values(model)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2

    twin = tiny_model(sample, reseed=True)
    for old, new in zip(initial, values(twin)):
        np.testing.assert_array_equal(old, new)
    set_masks(twin, masks)
    twin.fit(batches(sample), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    for trained, kept in zip(values(twin), continued):
        np.testing.assert_allclose(kept, trained, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(continued, initial))

    # rewind (the earlier default): same winner, initial weights and optimizer state.
    model = tiny_model(sample, reseed=True)
    rewound, info_rewind = kstarts_masks(model, batches(sample), 0.7, k=3, epochs=1,
                                         fitness="both", seed=4, steps_per_epoch=2,
                                         gradient_batches=1, mode="rewind")
    assert info_rewind["kstarts_chosen"] == info["kstarts_chosen"]
    for path in masks:
        np.testing.assert_array_equal(rewound[path], masks[path])
    for old, new in zip(initial, values(model)):
        np.testing.assert_array_equal(old, new)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def _run(tmp_path, name, **overrides):
    recorder = Recorder()
    settings = dict(RUN, run_dir=str(tmp_path / name), epochs=3, kstarts_k=2, kstarts_epochs=1,
                    kstarts_gradient_batches=1, sparsity=0.7)
    settings.update(overrides)
    results = prune_init(PruneInitConfig(**settings), callbacks=[recorder])
    stored = json.loads((tmp_path / name / "results.json").read_text())
    return results, stored, recorder


def test_kstarts_run_continues_inside_the_epoch_budget_and_rewind_retrains(tmp_path):
    _, plain, init = _run(tmp_path, "random", method="random")
    _, stored, cont = _run(tmp_path, "continue", method="kstarts")
    _, old, rewind = _run(tmp_path, "rewind", method="kstarts", kstarts_mode="rewind")
    steps = 256 // 64  # the sample has 256 training images here, batch 64

    # continue: the run starts from the winner's trained weights, one epoch in.
    assert stored["kstarts_mode"] == "continue" and stored["start_epoch"] == 1
    assert cont.iterations == steps
    assert any(not np.array_equal(a, b) for a, b in zip(cont.start, init.start))
    assert [epoch for epoch, _ in cont.epochs] == [1, 2]
    assert len(stored["history"]["loss"]) == 2 and len(stored["kstarts_history"]["loss"]) == 1
    assert stored["epochs_trained"] == stored["epochs"] == 3

    # rewind: the old behaviour, the initial weights, a fresh optimizer, all 3 epochs.
    assert "start_epoch" not in old and old["kstarts_chosen"] == stored["kstarts_chosen"]
    assert rewind.iterations == 0
    for a, b in zip(rewind.start, init.start):
        np.testing.assert_array_equal(a, b)
    assert [epoch for epoch, _ in rewind.epochs] == [0, 1, 2]
    assert len(old["history"]["loss"]) == 3 and old["epochs_trained"] == 3
    # Same winning mask either way.
    for path in stored["initial_mask_sparsity_per_layer"]:
        assert (stored["initial_mask_sparsity_per_layer"][path]
                == old["initial_mask_sparsity_per_layer"][path])
    assert plain["epochs_trained"] == 3


# ---------------------------------------------------------------------------
# Dissipating gradients.


def test_dissipating_step_without_a_target_removes_every_weight_in_the_band():
    initial = {"a": np.array([1.0, -1.0, 2.0, 0.5, -4.0]), "b": np.array([2.0, -2.0])}
    current = {"a": np.array([1.05, -1.5, 2.3, 0.5, -3.7]), "b": np.array([2.1, -2.0])}
    masks = {"a": np.array([1, 1, 1, 0, 1], np.float32), "b": np.ones(2, np.float32)}
    new, stats = dissipating_step(masks, initial, current, fraction=0.1)
    # By hand: kept and |w - w0| <= 0.1 |w0| goes: a[0] (.05), a[4] (.075), b[0], b[1].
    assert new["a"].tolist() == [0, 1, 1, 0, 0] and new["b"].tolist() == [0, 0]
    assert stats == {"removed": 4, "removable": 4, "forced": 0}
    # One fraction per layer.
    new, _ = dissipating_step(masks, initial, current, fraction={"a": 0.06, "b": 0.0})
    assert new["a"].tolist() == [0, 1, 1, 0, 1] and new["b"].tolist() == [1, 0]


def test_dissipating_default_sparsity_is_the_outcome_of_the_fraction(tmp_path):
    fraction = 0.5
    _, stored, record = _run(tmp_path, "dissipating", method="dissipating", sparsity=0.9,
                             dissipating_epochs=2, dissipating_fraction=fraction)
    # By hand: at the end of each of the first 2 epochs, the kept weights with
    # |w - w0| <= fraction * |w0| go; nothing forces the 90% asked by --sparsity.
    w0 = record.initial
    mask = {path: np.ones_like(value, bool) for path, value in w0.items()}
    for epoch, current in record.epochs[:2]:
        for path in mask:
            mask[path] &= np.abs(current[path] - w0[path]) > fraction * np.abs(w0[path])
    with np.load(tmp_path / "dissipating" / "mask.npz") as saved:
        for path in mask:
            np.testing.assert_array_equal(saved[path], mask[path].astype(np.float32))
    total = sum(m.size for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    assert 0 < kept < total and abs(kept / total - 0.1) > 0.02  # an outcome, not the target
    assert stored["mask_sparsity"] == pytest.approx(1 - kept / total)
    for path, value in mask.items():
        assert stored["mask_sparsity_per_layer"][path] == pytest.approx(1 - value.mean())
    assert stored["target_sparsity"] is None and stored["dissipating_target"] == "none"
    assert stored["dissipating_fraction"] == fraction
    assert [entry["forced"] for entry in stored["dissipating_log"]] == [0, 0]


def test_dissipating_reach_forces_the_target(tmp_path):
    _, stored, _ = _run(tmp_path, "reach", method="dissipating", sparsity=0.9,
                        dissipating_epochs=2, dissipating_fraction=0.5,
                        dissipating_target="reach")
    with np.load(tmp_path / "reach" / "mask.npz") as saved:
        for path in saved.files:
            assert int(saved[path].sum()) == int(round(0.1 * saved[path].size)), path
    assert stored["target_sparsity"] == 0.9


# ---------------------------------------------------------------------------
# The fraction that reaches a target sparsity.


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_fraction_for_sparsity_reaches_the_target_by_hand(scope):
    rng = np.random.default_rng(3)
    initial = {"a": rng.normal(size=(20, 7)), "b": rng.normal(size=(7, 3))}
    current = {p: v + rng.normal(scale=0.3, size=v.shape) for p, v in initial.items()}
    masks = {"a": (rng.random((20, 7)) < 0.8).astype(np.float32), "b": np.ones((7, 3))}
    for sparsity in (0.3, 0.5, 0.9):
        fraction = fraction_for_sparsity(initial, current, sparsity, masks, scope)
        kept = {}
        for path in initial:
            f = fraction[path] if scope == "layer" else fraction
            moved = np.abs(current[path] - initial[path]) > f * np.abs(initial[path])
            kept[path] = int(((masks[path] > 0) & moved).sum())
        if scope == "global":
            size = sum(v.size for v in initial.values())
            assert sum(kept.values()) == int(round((1 - sparsity) * size))
        else:
            for path in initial:
                assert kept[path] == int(round((1 - sparsity) * initial[path].size))
    # Ties: a fraction cannot split equal changes (counting granularity).
    tied = {"c": np.ones(4)}
    fraction = fraction_for_sparsity(tied, {"c": np.array([1.1, 1.1, 1.1, 1.5])}, 0.5)
    assert (relative_change(tied["c"], [1.1, 1.1, 1.1, 1.5]) <= fraction).sum() == 3


def test_dissipating_calibrate_reaches_the_target_with_one_removal_epoch(tmp_path):
    # With one removal epoch the replay sees exactly the weights the run removes
    # from, so the calibrated fraction's outcome is the target, per layer.
    _, stored, _ = _run(tmp_path, "calibrate", method="dissipating", sparsity=0.8,
                        dissipating_epochs=1, dissipating_target="calibrate")
    with np.load(tmp_path / "calibrate" / "mask.npz") as saved:
        for path in saved.files:
            assert int(saved[path].sum()) == int(round(0.2 * saved[path].size)), path
    assert stored["dissipating_log"][0]["forced"] == 0
    assert set(stored["dissipating_fraction"]) == set(stored["mask_sparsity_per_layer"])


def test_kstarts_dissipating_continues_then_dissipates_from_initialization(tmp_path, sample):
    _, stored, record = _run(tmp_path, "kd", method="kstarts_dissipating", sparsity=0.9,
                             dissipating_epochs=1, dissipating_fraction=0.5)
    assert stored["start_epoch"] == 1 and stored["epochs_trained"] == 3
    # By hand: the winner's random mask, less the kept weights within the band of
    # their value at initialization (before K-starts) at the end of the first epoch
    # trained after the winner's (fit epoch 1).
    _, _, init = _run(tmp_path, "init", method="random", sparsity=0.0, epochs=1)
    w0 = init.initial
    model = tiny_model(sample, reseed=True)
    winner = random_masks(model, stored["kstarts_sparsity"], "layer",
                          seed=[0, 1, stored["kstarts_chosen"]])  # K-starts' candidate stream
    epoch, current = record.epochs[0]
    assert epoch == 1
    with np.load(tmp_path / "kd" / "mask.npz") as saved:
        for path in saved.files:
            moved = np.abs(current[path] - w0[path]) > 0.5 * np.abs(w0[path])
            np.testing.assert_array_equal(saved[path], (winner[path] > 0) & moved)
    assert stored["dissipating_log"][0]["forced"] == 0
