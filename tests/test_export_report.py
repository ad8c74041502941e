"""Exporting experiments (a lottery's levels, a fine-tuning's final run, a comparison's
arms) through the installed tf-supermask-export, its plain note about kernels stored in
the compact file, and the report's figure over a mixed set of runs (issue 27, points 8
and 9)."""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from conftest import tiny_config
from tf_supermask.experiments.config import LotteryConfig
from tf_supermask.export import read_compact_header
from tf_supermask.export.compact import StoredKernelsWarning
from tf_supermask.tools.export_run import export_run, export_stage, exportable_runs
from tf_supermask.tools.report import (LABEL_WIDTH, collect, legend_labels, report_figure,
                                       write_report)

BIN = os.path.dirname(sys.executable)

tiny_lottery = tiny_config(LotteryConfig, width=0.1, train_size=120, batch_size=60, epochs=1,
                           optimizer="adam", lr=2e-3, levels=1, prune_rate_dense=0.3,
                           prune_rate_output=0.2, strategy="one_device")


@pytest.fixture(scope="module")
def lottery(tmp_path_factory):
    """A finished lottery experiment of two levels (0: dense, 1: pruned), tiny fc."""
    from tf_supermask.experiments.lottery import run_lottery

    run_dir = tmp_path_factory.mktemp("lottery") / "ticket"
    run_lottery(tiny_lottery(run_dir))
    keras.backend.clear_session()
    return run_dir


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory):
    """A finished tf-supermask-train run (top-k over frozen signed constants, k=0.5)."""
    from tf_supermask.training import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("train") / "quick"
    train(TrainConfig(model="fc", width=0.1, mask="topk", k=0.5, init="signed_kaiming_constant",
                      dataset="sample", train_size=120, batch_size=60, epochs=1, verbose=0,
                      strategy="one_device", run_dir=str(run_dir)))
    keras.backend.clear_session()
    return run_dir


def _export(*args):
    """tf-supermask-export as a user runs it: the installed script, no TF_* variables."""
    path = os.path.join(BIN, "tf-supermask-export")
    if not os.path.exists(path):
        pytest.skip("tf-supermask-export is not installed (pip install -e .)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_")}
    return subprocess.run([path, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def _lines(stream, start):
    return [line for line in stream.splitlines() if line.startswith(start)]


def _assert_plain(stderr):
    """No Python warning or traceback on stderr."""
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr[-3000:]
    assert "warnings.warn" not in stderr and not re.search(r"\.py:\d+:", stderr), stderr[-3000:]


# Point 8: a lottery experiment exports a level -----------------------------------------------

def test_export_binary_exports_the_last_finished_level_of_a_lottery(lottery, tmp_path):
    result = _export(lottery, f"--output={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_plain(result.stderr)
    (chosen,) = [line for line in _lines(result.stderr, "note:") if "level" in line]
    assert "level 1" in chosen and "last finished" in chosen and "--level=N" in chosen
    header = read_compact_header(tmp_path / "supermask.npz")
    assert header["metadata"]["run_dir"] == "ticket/level_1"
    level1 = json.loads((lottery / "level_1" / "results.json").read_text())
    assert header["metadata"]["results"]["weights_remaining"] == level1["weights_remaining"] < 1
    assert (tmp_path / "saved_model" / "saved_model.pb").exists()
    # The level's kernels trained: one plain line says the compact file stores them.
    (note,) = _lines(result.stderr, "note: this run's weights cannot be regenerated")
    kilobytes = os.path.getsize(tmp_path / "supermask.npz") / 1024
    assert f"{kilobytes:.0f} KB" in note


def test_export_binary_exports_the_level_asked_for(lottery, tmp_path):
    result = _export(lottery, "--level=0", "--format=compact", f"--output={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_plain(result.stderr)
    header = read_compact_header(tmp_path / "supermask.npz")
    assert header["metadata"]["run_dir"] == "ticket/level_0"
    assert header["metadata"]["results"]["weights_remaining"] == 1.0
    assert os.listdir(tmp_path) == ["supermask.npz"]


def test_export_binary_refuses_a_level_that_does_not_exist_in_one_line(lottery, tmp_path):
    result = _export(lottery, "--level=99", f"--output={tmp_path}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "level 99" in line
    assert "available levels: 0, 1" in line
    assert not os.listdir(tmp_path)


def test_export_binary_says_nothing_for_a_compact_run(topk_run, tmp_path):
    result = _export(topk_run, f"--output={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not _lines(result.stderr, "note:") and "Warning" not in result.stderr
    header = read_compact_header(tmp_path / "supermask.npz")
    assert not any(layer["kernel_stored"] for layer in header["layers"])


def test_export_run_warns_once_with_the_size_of_the_stored_kernels(lottery, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = export_run(str(lottery), ["compact"], output=str(tmp_path), level=1)
    (warning,) = [w for w in caught if issubclass(w.category, StoredKernelsWarning)]
    size = os.path.getsize(written["compact"]) / 1024
    assert f"stores them: {size:.0f} KB" in str(warning.message)
    assert warning.message.total == 3 and len(warning.message.stored) == 3
    assert not [w for w in caught if "kernels differ" in str(w.message)
                and not issubclass(w.category, StoredKernelsWarning)]


def _copy_run(source, target):
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("tensorboard", ".lock"))
    return target


def test_export_stage_of_fine_tuning_and_comparison_experiments(lottery, tmp_path):
    # The layouts of tf-supermask-finetune (dense/, round_N/ or finetune/) and of its
    # comparison (dense/, sparsity_<s>/<arm>/), made of real run directories.
    flags = (lottery / "flags.txt").read_text()
    finetune = tmp_path / "finetune"
    finetune.mkdir()
    (finetune / "flags.txt").write_text(flags + "--prune_method=iterative\n--compare=\n")
    _copy_run(lottery / "level_0", finetune / "dense")
    _copy_run(lottery / "level_1", finetune / "round_1")
    with pytest.raises(ValueError, match=r"has not finished.*finetune/round_1.*dense, round_1"):
        export_stage(str(finetune))  # no summary yet: which runs can be exported
    _copy_run(lottery / "level_1", finetune / "round_2")
    (finetune / "results.json").write_text(json.dumps({
        "experiment": "finetune", "rounds": [{"round": 1, "run_dir": "round_1"},
                                             {"round": 2, "run_dir": "round_2"}]}))
    stage, note = export_stage(str(finetune))
    assert stage == str(finetune / "round_2") and "final run" in note
    with pytest.raises(ValueError, match="--level picks a level of a lottery"):
        export_stage(str(finetune), level=1)

    comparison = tmp_path / "compare"
    comparison.mkdir()
    (comparison / "flags.txt").write_text(flags)
    _copy_run(lottery / "level_0", comparison / "dense")
    for arm in ("lottery", "rewind"):
        _copy_run(lottery / "level_1", comparison / "sparsity_0.5" / arm)
    (comparison / "results.json").write_text(json.dumps({"experiment": "comparison",
                                                         "arms": []}))
    assert exportable_runs(str(comparison)) == ["dense", "sparsity_0.5/lottery",
                                                "sparsity_0.5/rewind"]
    with pytest.raises(ValueError) as error:
        export_stage(str(comparison))
    message = str(error.value)
    assert "\n" not in message and "comparison" in message
    assert "dense, sparsity_0.5/lottery, sparsity_0.5/rewind" in message
    assert f"tf-supermask-export {comparison}/sparsity_0.5/" in message
    # A run directory is its own stage.
    assert export_stage(str(lottery / "level_0")) == (str(lottery / "level_0"), None)


def test_export_binary_lists_a_comparisons_runs_in_one_line(lottery, tmp_path):
    comparison = tmp_path / "compare"
    comparison.mkdir()
    (comparison / "flags.txt").write_text((lottery / "flags.txt").read_text())
    _copy_run(lottery / "level_0", comparison / "dense")
    _copy_run(lottery / "level_1", comparison / "sparsity_0.8" / "finetune")
    (comparison / "results.json").write_text(json.dumps({"experiment": "comparison",
                                                         "arms": []}))
    result = _export(comparison)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "dense, sparsity_0.8/finetune" in line


# Point 9: the report's figure over mixed runs ------------------------------------------------

def _fabricate(source, target, flags=None, drop=(), results=None, replace_results=False):
    """A run directory in the format real runs write: `source`'s flags.txt with `flags`
    set (and `drop`ped), its results.json updated with `results` (or replaced)."""
    target.mkdir(parents=True)
    lines = [line for line in (source / "flags.txt").read_text().splitlines()
             if line.lstrip("-").split("=")[0] not in set(flags or {}) | set(drop)]
    lines += [f"--{name}={value}" for name, value in (flags or {}).items()]
    (target / "flags.txt").write_text("\n".join(lines) + "\n")
    old = json.loads((source / "results.json").read_text())
    new = results if replace_results else {**old, **(results or {})}
    (target / "results.json").write_text(json.dumps(new))
    for name in ("metrics.csv",):
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    return str(target)


@pytest.fixture(scope="module")
def mixed_runs(topk_run, lottery, tmp_path_factory):
    """The runs of issue 27's report: the quickstart (top-k), another k, a Zhou
    supermask (Bernoulli), a lottery, SNIP pruning at initialization, a comparison and a
    one-shot fine-tuning, in the files real runs write."""
    root = tmp_path_factory.mktemp("mixed")
    finetune_flags = {"mask": "dense", "init": "kaiming_normal", "dense_run": "",
                      "prune_method": "oneshot", "sparsity": 0.8, "prune_scope": "layer",
                      "finetune_epochs": 1, "finetune_lr": 0.0, "compare": ""}
    arms = [{"arm": arm, "sparsity": sparsity, "run_dir": f"sparsity_{sparsity:g}/{arm}",
             "test_accuracy": 0.3 + 0.1 * index - 0.2 * sparsity, "weights_remaining":
             1 - sparsity, "pruned_layers_sparsity": sparsity}
            for sparsity in (0.5, 0.9) for index, arm in enumerate(("lottery", "rewind",
                                                                     "finetune"))]
    correlation = {"dense1/kernel": {"pearson": 0.98, "top_overlap": {"0.5": 0.9, "0.1": 0.85}}}
    return [
        str(topk_run),
        _fabricate(topk_run, root / "k0.3", {"k": 0.3},
                   results={"weights_remaining": 0.3, "test_accuracy": 0.16}),
        _fabricate(topk_run, root / "zhou", {"mask": "bernoulli", "lr_schedule": "constant"},
                   results={"weights_remaining": 0.506, "test_accuracy": 0.07}),
        str(lottery),
        _fabricate(topk_run, root / "snip", {"mask": "fixed", "init": "glorot_normal",
                                             "optimizer": "adam", "lr": 0.0012,
                                             "method": "snip", "sparsity": 0.9},
                   results={"weights_remaining": 0.1, "test_accuracy": 0.12,
                            "method": "snip", "target_sparsity": 0.9}),
        _fabricate(topk_run, root / "compare",
                   dict(finetune_flags, compare="lottery,rewind,finetune",
                        sparsities="0.5,0.9", rewind_epoch=1, epochs=2,
                        lr_milestones="4,6", weight_decay=0.0005), drop=("sparsity",),
                   results={"experiment": "comparison", "arms": arms, "dense_run": "dense",
                            "dense_test_accuracy": 0.4, "pretraining_lr": 0.1,
                            "retraining_epochs": 1, "rewind_epoch": 1,
                            "weight_correlation": correlation}, replace_results=True),
        _fabricate(topk_run, root / "finetune", finetune_flags,
                   results={"experiment": "finetune", "weights_remaining": 0.2,
                            "test_accuracy": 0.19, "rounds": []}),
    ]


def _inside(box, outer, slack=1.0):
    return (box.x0 >= outer.x0 - slack and box.y0 >= outer.y0 - slack
            and box.x1 <= outer.x1 + slack and box.y1 <= outer.y1 + slack)


def test_report_figure_of_mixed_runs_keeps_everything_inside_and_readable(mixed_runs):
    points = collect(mixed_runs)
    variants = list(dict.fromkeys(point["variant"] for point in points))
    # The lottery and the fine-tuning share their flags: the kind of experiment keeps
    # them apart (they are not pooled as seeds of one variant).
    assert len(variants) == 9
    for metric in ("test_accuracy", "untrained_test_accuracy"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Tight layout not applied" and the like
            figure = report_figure(points, metric)
            figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        (axes,) = figure.axes
        legend = figure.legends[0] if figure.legends else axes.get_legend()
        assert _inside(legend.get_window_extent(renderer), figure.bbox)
        assert _inside(axes.xaxis.label.get_window_extent(renderer), figure.bbox)
        assert _inside(axes.yaxis.label.get_window_extent(renderer), figure.bbox)
        assert _inside(axes.title.get_window_extent(renderer), figure.bbox)
        assert axes.get_title().split("\n")[0].startswith("fc on sample")
        # Short legend labels, at most three lines each.
        for text in legend.get_texts():
            lines = text.get_text().split("\n")
            assert len(lines) <= 3 and max(map(len, lines)) <= LABEL_WIDTH + 2, lines
        # Tick labels that do not overlap one another.
        boxes = sorted((label.get_window_extent(renderer)
                        for label in axes.get_xticklabels() if label.get_text()),
                       key=lambda box: box.x0)
        assert boxes and all(left.x1 <= right.x0 for left, right in zip(boxes, boxes[1:]))
        assert all(_inside(box, figure.bbox) for box in boxes)


def test_report_of_mixed_runs_writes_a_legend_key_and_no_warnings(mixed_runs, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = write_report(mixed_runs, str(tmp_path / "mixed"))
    assert str(tmp_path / "mixed.png") in written
    text = (tmp_path / "mixed.md").read_text()
    points = collect(mixed_runs)
    labels = legend_labels(list(dict.fromkeys(point["variant"] for point in points)))
    assert "### legend key" in text
    for variant, label in labels.items():
        key = label.split(":")[0]
        assert f"| {key} | {variant} |" in text
    assert len({label.split(":")[0] for label in labels.values()}) == len(labels)


def test_report_legend_keeps_short_labels_when_they_fit(tmp_path):
    # A criteria comparison: the labels are the criteria themselves, no key.
    labels = legend_labels(["criterion=large_final", "criterion=random"])
    assert labels == {"criterion=large_final": "large final", "criterion=random": "random"}
    points = [{"variant": variant, "level": level, "seed": "0", "weights_remaining": 0.8 ** level,
               "test_accuracy": float(accuracy)}
              for variant in labels for level, accuracy in enumerate(np.linspace(0.9, 0.5, 16))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = report_figure(points)
        figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == ["large final", "random"]
    assert _inside(legend.get_window_extent(renderer), figure.bbox)
    assert figure.axes[0].get_title().split("\n")[0]  # a title without --title
