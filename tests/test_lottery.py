"""Lottery tickets: criteria, kept counts, rewinding, pruned weights, re-initialization,
controls, resuming, bad flags, the report and the binaries, on tiny models and data."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import tiny_config
from tf_supermask.sparsity import Mask
from tf_supermask.layers import MaskedDense, get_masks, masked_layers
from tf_supermask.pruning.criteria import CRITERIA, criterion_scores
from tf_supermask.experiments.lottery import (LotteryConfig, kernels, load_weights,
                                          next_masks,
                                          pruned_values, reinitialized, run_lottery)
from tf_supermask.tools.report import aggregate, collect, to_markdown, write_report
from tf_supermask.training.run_dir import RunDirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hand-made initial and final weights of one layer (6 entries).
W_I = np.array([0.1, -0.9, 0.5, -0.2, 0.7, 0.3])
W_F = np.array([0.8, -0.1, -0.6, -0.3, 0.05, 0.9])


def kept(name, count, w_i=W_I, w_f=W_F):
    scores = criterion_scores(name, {"w": w_i}, {"w": w_f})
    return set(np.flatnonzero(Mask.top(scores, counts={"w": count})["w"]))


@pytest.mark.parametrize("name, count, expected", [
    ("large_final", 2, {0, 5}),            # |w_f| = .8 .1 .6 .3 .05 .9
    ("small_final", 2, {4, 1}),
    ("large_init", 2, {1, 4}),             # |w_i| = .1 .9 .5 .2 .7 .3
    ("small_init", 2, {0, 3}),
    ("magnitude_increase", 2, {0, 5}),     # |w_f|-|w_i| = .7 -.8 .1 .1 -.65 .6
    ("movement", 2, {1, 2}),               # |w_f-w_i| = .7 .8 1.1 .1 .65 .6
    ("large_init_large_final", 2, {2, 5}),  # both ranks high: entries 2 (.5,.6), 5 (.3,.9)
    ("small_init_small_final", 1, {3}),    # small at both: entry 3 (.2, .3)
])
def test_criteria_rank_hand_made_weights(name, count, expected):
    assert kept(name, count) == expected


def test_large_init_large_final_keeps_only_weights_large_at_both_ends():
    w_i = np.array([0.9, 0.8, 0.1, 0.2])
    w_f = np.array([0.1, 0.9, 0.8, 0.7])
    assert kept("large_init_large_final", 1, w_i, w_f) == {1}


def test_strict_same_sign_variants_prune_flipped_weights_first():
    # Entry 2 flips sign (0.5 -> -0.6) and entry 4 is tiny; large_final keeps 0, 2, 5.
    assert kept("large_final", 3) == {0, 2, 5}
    assert kept("large_final_same_sign_strict", 3) == {0, 5, 3}
    for name in CRITERIA.names():
        if name.endswith("_same_sign_strict"):
            mask = kept(name, 5)
            assert 2 not in mask, name  # the only flipped weight goes first


def test_every_criterion_is_registered_with_its_same_sign_twins():
    base = ["large_final", "small_final", "large_init", "small_init", "large_init_large_final",
            "small_init_small_final", "magnitude_increase", "movement", "random"]
    assert sorted(CRITERIA.names()) == sorted(
        base + [f"{n}_same_sign" for n in base] + [f"{n}_same_sign_strict" for n in base])


def test_random_criterion_is_seeded():
    big = {"w": np.arange(100.0)}
    one = criterion_scores("random", big, big, seed=3)["w"]
    assert np.array_equal(one, criterion_scores("random", big, big, seed=3)["w"])
    assert not np.array_equal(one, criterion_scores("random", big, big, seed=4)["w"])


def _layers(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv/kernel": rng.normal(size=(3, 3, 4, 8)), "dense/kernel": rng.normal(size=(72, 20)),
            "output/kernel": rng.normal(size=(20, 10))}


KINDS = {"conv/kernel": "conv", "dense/kernel": "dense", "output/kernel": "output"}


def test_kept_counts_per_layer_follow_the_rates_of_the_remaining_weights():
    initial, final = _layers(0), _layers(1)
    config = LotteryConfig(prune_rate_conv=0.1, prune_rate_dense=0.2, prune_rate_output=0.1)
    masks = {p: np.ones_like(w) for p, w in initial.items()}
    for level in (1, 2, 3):
        rates = {p: {"conv": .1, "dense": .2, "output": .1}[KINDS[p]] for p in masks}
        # Zhou et al.'s count: int(remaining x (1 - (1 - rate)) x 100 / 100) pruned.
        expected = {p: int(m.sum()) - int(int(m.sum()) * ((1 - (1 - rates[p])) * 100.0) / 100)
                    for p, m in masks.items()}
        new = next_masks(config, KINDS, initial, final, masks, level)
        assert {p: int(m.sum()) for p, m in new.items()} == expected
        for path in new:  # nothing pruned earlier comes back
            assert np.all(new[path] <= masks[path])
        masks = new


def test_kept_count_global_ranks_all_layers_together():
    initial, final = _layers(0), _layers(1)
    config = LotteryConfig(prune_scope="global", prune_rate=0.3, criterion="large_final",
                           prune_output_layer="true")
    masks = {p: np.ones_like(w) for p, w in initial.items()}
    new = next_masks(config, KINDS, initial, final, masks, 1)
    total = sum(w.size for w in initial.values())
    # open_lth: every weight <= sorted[ceil(0.3 x total)] goes, ceil(...) + 1 of them.
    assert sum(int(m.sum()) for m in new.values()) == total - int(np.ceil(total * 0.3)) - 1
    threshold = min(np.abs(final[p])[new[p] > 0].min() for p in new)
    assert all(np.all(np.abs(final[p])[new[p] == 0] <= threshold) for p in new)


def test_pruned_weight_modes():
    initial = {"w": np.array([0.5, -0.5, 0.2, -0.2])}
    final = {"w": np.array([0.9, -0.1, 0.1, -0.4])}
    masks = {"w": np.array([1.0, 0.0, 0.0, 0.0])}
    assert pruned_values("zero", initial, final, masks) is None
    np.testing.assert_allclose(pruned_values("init", initial, final, masks)["w"],
                               [0.0, -0.5, 0.2, -0.2])
    # Entries 1 and 2 shrank (|w_f| < |w_i|): zero; entry 3 grew: frozen at init.
    np.testing.assert_allclose(pruned_values("zero_if_shrunk", initial, final, masks)["w"],
                               [0.0, 0.0, 0.0, -0.2])


@pytest.mark.parametrize("pruned", ["zero", "init"])
def test_pruned_weights_keep_their_value_through_optimizer_steps(pruned):
    layer = MaskedDense(6, mask="fixed", pruned_values=pruned == "init", seed=1,
                        kernel_initializer="kaiming_normal")
    model = keras.Sequential([keras.Input((5,)), layer])
    mask = (np.random.default_rng(0).random((5, 6)) < 0.5).astype("float32")
    initial = keras.ops.convert_to_numpy(layer.kernel_variable).copy()
    layer.set_mask(mask)
    if pruned == "init":
        layer.set_pruned_values(initial * (1 - mask))
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9, weight_decay=0.1), loss="mse")
    x = np.random.default_rng(1).normal(size=(32, 5)).astype("float32")
    model.fit(x, np.ones((32, 6), "float32"), epochs=3, batch_size=8, verbose=0)
    effective = keras.ops.convert_to_numpy(layer.kernel)
    expected_pruned = 0.0 if pruned == "zero" else initial
    np.testing.assert_array_equal((effective * (1 - mask)), expected_pruned * (1 - mask))
    assert not np.allclose(effective * mask, initial * mask)  # kept weights trained


def _reinit(mode, keep_signs):
    rewind = {"w": np.array([0.5, -0.4, 0.3, -0.2, 0.1, -0.6], np.float32)}
    masks = {"w": np.array([1, 1, 1, 1, 0, 0], np.float32)}
    fresh = {"w": np.array([-0.7, 0.8, 0.9, -0.05, 0.2, 0.3], np.float32)}
    out = reinitialized(mode, rewind, masks, fresh, {"w": 0.25}, keep_signs,
                        np.random.default_rng(0))["w"]
    return rewind["w"], out, fresh["w"]


@pytest.mark.parametrize("mode", ["reinit", "reshuffle", "constant"])
@pytest.mark.parametrize("keep_signs", [False, True])
def test_reinitializations_keep_or_change_signs(mode, keep_signs):
    rewind, out, fresh = _reinit(mode, keep_signs)
    np.testing.assert_array_equal(out[4:], rewind[4:])  # pruned entries untouched
    kept_new, kept_old = out[:4], rewind[:4]
    if keep_signs:
        np.testing.assert_array_equal(np.sign(kept_new), np.sign(kept_old))
    if mode == "reinit":
        np.testing.assert_allclose(np.abs(kept_new), np.abs(fresh[:4]))
        if not keep_signs:
            np.testing.assert_array_equal(kept_new, fresh[:4])
    elif mode == "reshuffle":
        magnitudes = np.abs(kept_new) if keep_signs else kept_new
        expected = np.abs(kept_old) if keep_signs else kept_old
        np.testing.assert_allclose(np.sort(magnitudes), np.sort(expected))
        assert not np.array_equal(kept_new, kept_old)
    else:
        np.testing.assert_allclose(np.abs(kept_new), 0.25)
    if not keep_signs and mode != "reshuffle":
        assert not np.array_equal(np.sign(kept_new), np.sign(kept_old))


def test_rewind_mode_returns_the_rewind_values():
    rewind, out, _ = _reinit("rewind", False)
    np.testing.assert_array_equal(out, rewind)


# End-to-end experiments on a tiny fc ------------------------------------------------------

tiny = tiny_config(LotteryConfig, width=0.1, train_size=240, validation_size=60, batch_size=60,
                   epochs=2, optimizer="adam", lr=2e-3, levels=2, prune_rate_dense=0.3,
                   prune_rate_output=0.2, strategy="one_device")


@pytest.fixture(scope="module")
def ticket(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lottery") / "ticket"
    summary = run_lottery(tiny(run_dir, rewind="step:3"))
    keras.backend.clear_session()
    return run_dir, summary


def test_early_stop_reads_the_test_set_as_named_now_and_before():
    from tf_supermask.experiments.lottery import early_stop

    # No held-out split: the test set's figures, test_* now, val_* in older runs.
    new = early_stop({"test_loss": [0.9, 0.4, 0.6], "test_accuracy": [0.5, 0.8, 0.7]}, 4)
    old = early_stop({"val_loss": [0.9, 0.4, 0.6], "val_accuracy": [0.5, 0.8, 0.7]}, 4)
    assert new == old == {"early_stop_epoch": 1, "early_stop_iteration": 8,
                          "early_stop_val_loss": 0.4, "early_stop_val_accuracy": 0.8}
    # A held-out split: its val_* decide, not the test set's figures beside them.
    split = early_stop({"val_loss": [0.3, 0.5], "val_accuracy": [0.9, 0.6],
                        "test_loss": [0.9, 0.1], "test_accuracy": [0.1, 0.95]}, 4, first_epoch=2)
    assert split == {"early_stop_epoch": 2, "early_stop_iteration": 12,
                     "early_stop_val_loss": 0.3, "early_stop_val_accuracy": 0.9}
    assert early_stop({"loss": [1.0]}, 4) == {}


def _weights(path, config):
    from tf_supermask.models import build_model

    model = build_model("fc", (28, 28, 1), 10, config.mask_options())
    load_weights(model, path)
    return kernels(model), get_masks(model)


def test_experiment_layout_and_results(ticket):
    run_dir, summary = ticket
    for level in range(3):
        level_dir = run_dir / f"level_{level}"
        results = json.loads((level_dir / "results.json").read_text())
        assert results["level"] == level
        assert 0.0 <= results["untrained_test_accuracy"] <= 1.0
        assert results["early_stop_iteration"] in (4, 8)  # 4 steps per epoch, 2 epochs
        assert (level_dir / "mask.npz").exists() and (level_dir / "tensorboard").exists()
    masks = [Mask.load(str(run_dir / f"level_{level}" / "mask.npz")) for level in range(3)]
    hidden = [m["dense1/kernel"].mean() for m in masks]
    assert hidden == pytest.approx([1.0, 0.7, 0.49], abs=2e-3)
    assert [lv["weights_remaining"] for lv in summary["levels"]] == sorted(
        [lv["weights_remaining"] for lv in summary["levels"]], reverse=True)
    assert (run_dir / "checkpoints" / "initial.weights.h5").exists()
    assert (run_dir / "checkpoints" / "rewind.weights.h5").exists()


def test_rewinding_restores_exactly_the_saved_weights(ticket):
    run_dir, _ = ticket
    config = tiny(run_dir, rewind="step:3")
    rewind, _ = _weights(str(run_dir / "checkpoints" / "rewind.weights.h5"), config)
    initial, _ = _weights(str(run_dir / "checkpoints" / "initial.weights.h5"), config)
    start, start_masks = _weights(str(run_dir / "level_2" / "checkpoints" / "initial.weights.h5"),
                                  config)
    for path, value in start.items():
        kept_entries = start_masks[path] > 0
        np.testing.assert_array_equal(value[kept_entries], rewind[path][kept_entries])
        assert not np.array_equal(rewind[path], initial[path])  # step 3 is not init


def test_controls_use_the_tickets_masks(ticket, tmp_path):
    run_dir, _ = ticket
    shuffled = run_lottery(tiny(tmp_path / "random_mask", rewind="step:3", shuffle_mask=True,
                                masks_from=str(run_dir), untrained_eval=False))
    reinit = run_lottery(tiny(tmp_path / "random_reinit", rewind="step:3", reinit="reinit",
                              masks_from=str(run_dir), untrained_eval=False))
    for level in (1, 2):
        ticket_mask = Mask.load(str(run_dir / f"level_{level}" / "mask.npz"))
        shuffle_mask = Mask.load(str(tmp_path / "random_mask" / f"level_{level}" / "mask.npz"))
        reinit_mask = Mask.load(str(tmp_path / "random_reinit" / f"level_{level}" / "mask.npz"))
        for path in ticket_mask:
            np.testing.assert_array_equal(reinit_mask[path], ticket_mask[path])
            assert shuffle_mask[path].sum() == ticket_mask[path].sum()
        assert not np.array_equal(shuffle_mask["dense1/kernel"], ticket_mask["dense1/kernel"])
    config = tiny(run_dir)
    ticket_start, masks = _weights(str(run_dir / "level_1/checkpoints/initial.weights.h5"), config)
    reinit_start, _ = _weights(str(tmp_path / "random_reinit/level_1/checkpoints/initial.weights.h5"),
                               config)
    kept_entries = masks["dense1/kernel"] > 0
    assert not np.allclose(ticket_start["dense1/kernel"][kept_entries],
                           reinit_start["dense1/kernel"][kept_entries])
    assert len(shuffled["levels"]) == len(reinit["levels"]) == 3


def test_restarted_experiment_skips_finished_levels(tmp_path, capsys):
    run_dir = tmp_path / "exp"
    run_lottery(tiny(run_dir, levels=1, epochs=1))
    level0 = (run_dir / "level_0" / "results.json").stat().st_mtime_ns
    # Simulate a job killed during level 1: its directory and the summary are gone.
    import shutil

    shutil.rmtree(run_dir / "level_1")
    os.remove(run_dir / "results.json")
    run_lottery(tiny(run_dir, levels=1, epochs=1, verbose=1))
    assert "level 0: finished earlier, skipped" in capsys.readouterr().out
    assert (run_dir / "level_0" / "results.json").stat().st_mtime_ns == level0
    assert (run_dir / "level_1" / "results.json").exists()
    with pytest.raises(RunDirError, match="finished"):
        run_lottery(tiny(run_dir, levels=1, epochs=1))


@pytest.mark.parametrize("bad, match", [
    (dict(criterion="largest"), "mask criterion"),
    (dict(prune_rate_dense=1.0), r"prune_rate_dense must be in \[0, 1\)"),
    (dict(prune_rate=-0.1), r"prune_rate must be in \[0, 1\)"),
    (dict(rewind="epoch:3"), "past the end of training"),
    (dict(rewind="later"), "init, epoch:N or step:N"),
    (dict(mask="topk"), "fixed masks"),
])
def test_bad_flags_give_clear_errors(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(tmp_path / "x", **bad)


def test_rewind_step_past_the_end_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="past the end of training"):
        run_lottery(tiny(tmp_path / "x", rewind="step:9"))  # 2 epochs x 4 steps
    assert not (tmp_path / "x").exists()


def test_report_tables_and_plot(ticket, tmp_path):
    run_dir, summary = ticket
    points = collect([str(run_dir)])
    assert [p["level"] for p in points] == [0, 1, 2]
    table = aggregate(points)
    (variant, rows), = table.items()
    assert [r["mean"] for r in rows] == [lv["test_accuracy"] for lv in summary["levels"]]
    assert "untrained test accuracy" in to_markdown(points)
    written = write_report([str(run_dir)], str(tmp_path / "out" / "report"))
    assert {os.path.basename(p) for p in written} == {
        "report.csv", "report.md", "report.png", "report_untrained.png"}
    with open(tmp_path / "out" / "report.png", "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_groups_variants_by_the_flags_that_differ(tmp_path):
    dirs = []
    for criterion in ("large_final", "random"):
        for seed in (0, 1):
            run_dir = tmp_path / f"{criterion}{seed}"
            os.makedirs(run_dir)
            (run_dir / "flags.txt").write_text(f"--criterion={criterion}\n--seed={seed}\n")
            levels = [{"level": lv, "weights_remaining": 0.8 ** lv,
                       "test_accuracy": 0.9 - 0.1 * lv * (criterion == "random") + 0.01 * seed}
                      for lv in range(3)]
            (run_dir / "results.json").write_text(json.dumps({"levels": levels}))
            dirs.append(str(run_dir))
    table = aggregate(collect(dirs))
    assert set(table) == {"criterion=large_final", "criterion=random"}
    rows = table["criterion=random"]
    assert rows[2]["seeds"] == 2
    assert rows[2]["min"] == pytest.approx(0.7) and rows[2]["max"] == pytest.approx(0.71)


def test_binaries_end_to_end(tmp_path):
    flagfile = tmp_path / "lottery.cfg"
    flagfile.write_text("\n".join([
        "--model=fc", "--width=0.1", "--dataset=sample", "--train_size=120", "--batch_size=60",
        "--epochs=1", "--levels=1", "--optimizer=adam", "--lr=0.002", "--verbose=0",
        "--strategy=one_device", f"--run_dir={tmp_path}/exp"]) + "\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "tf_supermask.bin.lottery",
                             f"--flagfile={flagfile}"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "exp" / "results.json").read_text())["levels"][1]["level"] == 1
    result = subprocess.run([sys.executable, "-m", "tf_supermask.bin.lottery",
                             f"--flagfile={flagfile}", "--criterion=nope"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and "mask criterion" in result.stderr
    result = subprocess.run([sys.executable, "-m", "tf_supermask.bin.report", str(tmp_path / "exp"),
                             f"--output={tmp_path}/rep"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 1 |" in (tmp_path / "rep.md").read_text()
