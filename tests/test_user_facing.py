"""What a researcher touches first, through the installed console scripts: --help, a quiet
tiny run, export with the default formats and serving raw images, run records, reports,
and datasets that cannot be downloaded."""

import concurrent.futures
import csv
import json
import os
import re
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tf_supermask.layers import masked_layers, set_masks
from tf_supermask.models import MODELS, MaskOptions, build_model
from tf_supermask.training import records

BIN = os.path.dirname(sys.executable)
BINARIES = ("train", "lottery", "finetune", "prune-init", "report", "export", "batch", "bench",
            "study")
# Lines the default output must not hold (TensorFlow's C++ and absl start-up notices, the
# CPU machine's cuInit error, the end-of-data notice, export's temporary paths).
NOISE = ("cuInit", "cudart_stub", "absl::InitializeLog", "cpu_feature_guard",
         "Local rendezvous", "rebuild TensorFlow", "Assets written", ".tmp-", "I0000", "W0000",
         "E0000")


def _binary(name):
    path = os.path.join(BIN, f"tf-supermask-{name}")
    if not os.path.exists(path):
        pytest.skip(f"tf-supermask-{name} is not installed (pip install -e .)")
    return path


def _run(args, env=None, timeout=600):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the binaries' own default is under test
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env)


# --help ------------------------------------------------------------------------------------------

def test_help_of_every_installed_binary_shows_its_purpose_and_grouped_flags():
    paths = {name: _binary(name) for name in BINARIES}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(zip(paths, pool.map(lambda p: _run([p, "--help"]), paths.values())))
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr[-2000:])
        out = result.stdout
        assert out.startswith(f"tf-supermask-{name}:"), (name, out[:200])  # the docstring
        # Not absl's bare usage line, nor the flags of absltest and TensorFlow's TPU modules.
        assert "Try --helpfull" not in out and "--test_srcdir" not in out
        assert "--tpu" not in out and "--tt_" not in out
        assert not any(noise in result.stderr for noise in NOISE), (name, result.stderr)
    configured = ("train", "lottery", "finetune", "prune-init")
    for name in configured:
        out = results[name].stdout
        titles = ["Model and mask flags:", "PatchesInit (only with --init=patches) flags:",
                  "Data flags:", "Optimisation flags:", "Run control flags:"]
        positions = [out.index(title) for title in titles]
        assert positions == sorted(positions), name
        # Every patches_* flag sits in its own group, none elsewhere.
        group = out[out.index("PatchesInit (only with"):out.index("Data flags:")]
        heads = re.compile(r"^  --(?:\[no\])?patches_\w+$", re.M)
        assert len(heads.findall(out)) == len(heads.findall(group)) == 13, name
        model_help = out[out.index("  --model\n"):].split("\n  --", 1)[0]
        assert all(model in model_help for model in MODELS.names()), model_help
    assert "tf-supermask-lottery flags:\n  --levels" in results["lottery"].stdout
    assert "tf-supermask-prune-init flags:\n  --method" in results["prune-init"].stdout
    assert "tf-supermask-export flags:" in results["export"].stdout
    assert "--[no]plots_only" in results["report"].stdout
    assert "--helpfull" in results["train"].stdout


MODULES = {"train": "train", "lottery": "lottery", "finetune": "finetune",
           "prune-init": "prune_init", "report": "report", "export": "export", "batch": "batch",
           "bench": "bench", "study": "study"}


@pytest.mark.parametrize("name", BINARIES)
def test_help_is_fast_it_imports_neither_keras_nor_tensorflow_nor_jax(name):
    # What makes --help slow is importing the frameworks (4 to 9 s before this test existed);
    # the binary's module is run as its console script runs it, and the frameworks that
    # were imported when it exits are printed.
    code = ("import atexit, sys\n"
            "heavy = ('keras', 'tensorflow', 'jax', 'torch')\n"
            "atexit.register(lambda: print('IMPORTED', [m for m in heavy if m in sys.modules]))\n"
            f"sys.argv = ['tf-supermask-{name}', '--help']\n"
            f"from tf_supermask.bin.{MODULES[name]} import run\n"
            "run()\n")
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"tf-supermask-{name}:"), result.stdout[:200]
    assert result.stdout.rstrip().endswith("IMPORTED []"), result.stdout[-300:]


# A tiny run, export, serving --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-epoch top-k run on the shipped sample, made by the console script with
    stdout and stderr going to pipes, as in a batch job."""
    run_dir = tmp_path_factory.mktemp("user") / "run"
    result = _run([_binary("train"), "--model=fc", "--width=0.1", "--mask=topk", "--k=0.3",
                   "--dataset=sample", "--train_size=128", "--validation_size=64",
                   "--batch_size=32", "--steps_per_epoch=2", "--epochs=2",
                   f"--run_dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_tiny_run_is_quiet_and_prints_one_line_per_epoch_when_piped(tiny_run):
    run_dir, result = tiny_run
    assert not any(noise in result.stderr for noise in NOISE), result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert "\r" not in result.stdout and "\x08" not in result.stdout
    lines = result.stdout.splitlines()
    assert sum(line.startswith("2/2 - ") for line in lines) == 2  # one line per epoch
    # The banner says what governs the run: k for top-k.
    assert f"Starting {run_dir}: fc mask=topk k=0.3 on sample" in result.stdout
    # --verbose=1 piped: the quiet lines (the binary's start line, the result) and the epochs.
    assert lines[0].startswith(f"tf-supermask-train: Starting {run_dir}: fc"), lines[0]
    assert lines[-1].startswith("test accuracy ") and lines[-1].endswith(f"results in {run_dir}")


# --verbose=0: what started, each level / round / arm, the result ---------------------------------

TINY = ("--model=fc", "--width=0.1", "--dataset=sample", "--train_size=120", "--batch_size=60",
        "--epochs=1", "--verbose=0")


def _quiet_lines(result):
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # None of Keras's progress output: no epoch headers, no per-epoch lines.
    assert not any(line.startswith("Epoch ") or " - loss: " in line for line in lines), lines
    return lines


def test_quiet_binaries_say_what_started_each_level_and_arm_and_the_result(tmp_path):
    # Flagfiles set --verbose=0; a long run used to print nothing at all.
    train_dir, lottery_dir, compare_dir, prune_dir = (
        tmp_path / name for name in ("train", "lottery", "compare", "prune"))
    runs = {
        "train": [_binary("train"), *TINY, "--mask=topk", f"--run_dir={train_dir}"],
        "lottery": [_binary("lottery"), *TINY, "--levels=2", f"--run_dir={lottery_dir}"],
        "finetune": [_binary("finetune"), *TINY, "--compare=lottery,finetune",
                     "--sparsities=0.5", "--finetune_epochs=1", f"--run_dir={compare_dir}"],
        "prune-init": [_binary("prune-init"), *TINY, "--method=magnitude", "--sparsity=0.5",
                       f"--run_dir={prune_dir}"],
    }
    lines = {name: _quiet_lines(_run(args)) for name, args in runs.items()}

    train_lines = lines["train"]
    assert len(train_lines) == 2, train_lines
    assert train_lines[0].startswith(f"tf-supermask-train: Starting {train_dir}: fc mask=topk")
    assert " on sample " in train_lines[0]
    assert re.fullmatch(rf"test accuracy [\d.]+, weights remaining 0\.5000; results in "
                        rf"{re.escape(str(train_dir))}", train_lines[1]), train_lines[1]

    lottery = lines["lottery"]
    assert lottery[0] == (f"tf-supermask-lottery: Starting {lottery_dir}: fc on sample, "
                          "levels 0-2, criterion large_final"), lottery[0]
    assert [line.split(":")[0] for line in lottery[1:4]] == ["level 0", "level 1", "level 2"]
    assert all("% weights remaining, test accuracy " in line for line in lottery[1:4]), lottery
    assert lottery[4].startswith("lottery: level 2, ") and lottery[4].endswith(
        f"results in {lottery_dir}"), lottery[4]
    assert len(lottery) == 5, lottery

    compare = lines["finetune"]
    assert compare[0] == (f"tf-supermask-finetune: Starting {compare_dir}: fc on sample, arms "
                          "lottery, finetune at sparsities 0.5"), compare[0]
    assert compare[1].startswith("dense: test accuracy "), compare
    assert compare[2].startswith("sparsity 0.5, lottery: test accuracy "), compare
    assert compare[3].startswith("sparsity 0.5, finetune: test accuracy "), compare
    assert compare[4].startswith("comparison: 2 arms, test accuracy ") and compare[4].endswith(
        f"results in {compare_dir}"), compare[4]
    assert len(compare) == 5, compare

    prune = lines["prune-init"]
    assert prune[0].startswith(f"tf-supermask-prune-init: Starting {prune_dir}: fc on sample")
    assert prune[1].startswith("magnitude mask at sparsity 0.5 "), prune
    assert prune[2].startswith("test accuracy ") and prune[2].endswith(
        f"results in {prune_dir}"), prune[2]
    assert len(prune) == 3, prune


def test_tiny_run_records_the_learning_rate_normalisation_and_best_epoch(tiny_run):
    run_dir, _ = tiny_run
    with open(run_dir / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert [float(row["lr"]) for row in rows] == pytest.approx([0.1, 0.1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["normalization"] == {"mean": [0.286], "std": [0.353]}
    val = [float(row["val_accuracy"]) for row in rows]
    best = int(np.argmax(val))
    assert results["best_epoch"] == best  # counted from 0, as metrics.csv
    assert results["best_val_accuracy"] == pytest.approx(val[best])
    # Validation is a held-out split here: the test accuracy of each epoch is recorded.
    assert results["test_accuracy_at_best_epoch"] == pytest.approx(
        float(rows[best]["test_accuracy"]))
    assert float(rows[-1]["test_accuracy"]) == pytest.approx(results["test_accuracy"], abs=1e-6)


def test_export_with_default_formats_serves_raw_images_like_the_keras_model(tiny_run, tmp_path):
    tf = pytest.importorskip("tensorflow")
    run_dir, _ = tiny_run
    result = _run([_binary("export"), str(run_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(noise in result.stderr + result.stdout for noise in NOISE), result.stderr
    assert result.stdout.split() == [str(run_dir / "saved_model"), str(run_dir / "supermask.npz")]
    # Running it again is refused with one line, and --overwrite replaces the outputs.
    again = _run([_binary("export"), str(run_dir)])
    assert again.returncode == 1 and "already exist" in again.stderr
    loaded = tf.saved_model.load(str(run_dir / "saved_model"))
    model = keras.saving.load_model(run_dir / "checkpoints" / "final.keras")
    raw = np.random.default_rng(1).integers(0, 256, (6, 28, 28, 1)).astype("uint8")
    normalised = ((raw / 255.0 - 0.286) / 0.353).astype("float32")
    expected = np.asarray(keras.ops.convert_to_numpy(model(normalised, training=False)))
    served = loaded.serve(tf.constant(raw))
    np.testing.assert_allclose(served["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(served["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
    called = loaded(tf.constant(raw.astype("float32")))
    np.testing.assert_allclose(called["logits"].numpy(), expected, rtol=1e-4, atol=1e-4)
    # One copy of each kernel: the variables hold about the float32 weights, not twice them.
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in loaded.variables)
    stored = sum(f.stat().st_size for f in (run_dir / "saved_model" / "variables").iterdir())
    assert stored < 1.1 * weight_bytes + 4096


# Banner, progress output, best epoch (library level) ---------------------------------------------

def test_banner_shows_weights_remaining_for_a_given_mask():
    model = build_model("fc", (28, 28, 1), 10, MaskOptions(mask="fixed", width=0.1))
    rng = np.random.default_rng(0)
    set_masks(model, {layer.kernel_variable.path: rng.random(layer.kernel_variable.shape) < 0.1
                      for layer in masked_layers(model)})
    summary = records.mask_summary("fixed", 0.5, model)
    assert summary.startswith("mask=fixed, ") and "% of weights remaining" in summary
    remaining = float(summary.split(", ")[1].split("%")[0])
    assert remaining == pytest.approx(10, abs=1.5)
    assert " k=" not in summary
    assert records.mask_summary("topk", 0.2, model) == "mask=topk k=0.2"


class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_bar_only_on_a_terminal():
    assert records.fit_verbosity(1, _Stream(True)) == 1
    assert records.fit_verbosity(1, _Stream(False)) == 2
    assert records.fit_verbosity(3, _Stream(False)) == 2
    assert records.fit_verbosity(2, _Stream(True)) == 2
    assert records.fit_verbosity(0, _Stream(True)) == 0


def test_best_epoch_counts_from_zero_and_names_the_test_set_when_it_validates():
    history = {"val_accuracy": [0.5, 0.7, 0.7, 0.6], "test_accuracy": [0.4, 0.65, 0.66, 0.6]}
    held_out = records.best_epoch_results(history, 4, validation_is_test=False)
    assert held_out == {"best_epoch": 1, "best_val_accuracy": 0.7,
                        "test_accuracy_at_best_epoch": 0.65}
    on_test = records.best_epoch_results({"val_accuracy": [0.5, 0.7]}, 2, validation_is_test=True)
    assert on_test["best_epoch"] == 1 and on_test["best_epoch_test_accuracy"] == 0.7
    assert "test set" in on_test["validation_note"] and "best_val_accuracy" not in on_test
    # A run that trained only its last epochs (late rewinding): epochs keep their numbers.
    assert records.best_epoch_results({"val_accuracy": [0.1, 0.3]}, 5, False)["best_epoch"] == 4
    # The test set's per-epoch figures are test_*; a held-out split's test_* are not validation.
    on_test = records.best_epoch_results({"test_accuracy": [0.5, 0.8, 0.6]}, 3, True)
    assert on_test["best_epoch"] == 1 and on_test["best_epoch_test_accuracy"] == 0.8
    assert records.best_epoch_results({"test_accuracy": [0.5, 0.8]}, 2, False) == {}


def test_metrics_csv_written_before_the_test_set_was_named_resumes_with_test_columns(tmp_path):
    # A run without a validation split, started by an older version (val_* columns for
    # the test set) and resumed by this one (test_* in the logs): one set of columns.
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.5,1.5,0.25,2.0\n")
    writer = records.MetricsCSV(str(path), rename=records.rename_test_keys)
    writer.on_train_begin()
    logs = records.rename_test_keys({"accuracy": 0.75, "loss": 1.0, "val_accuracy": 0.5,
                                     "val_loss": 1.25})
    writer.on_epoch_end(1, logs)
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "test_accuracy", "test_loss"]
    assert [row["test_accuracy"] for row in rows] == ["0.25", "0.5"]
    assert [row["test_loss"] for row in rows] == ["2.0", "1.25"]


# Reports ----------------------------------------------------------------------------------------

def _fake_run(root, name, flags, results):
    run_dir = root / name
    run_dir.mkdir()
    (run_dir / "flags.txt").write_text("\n".join(f"--{k}={v}" for k, v in flags.items()) + "\n")
    (run_dir / "results.json").write_text(json.dumps(results))
    return str(run_dir)


def test_report_keeps_backends_apart_and_levels_honest(tmp_path):
    from tf_supermask.tools.report import collect, short_label

    base = {"model": "fc", "mask": "dense", "k": 0.5, "seed": 0}
    runs = [_fake_run(tmp_path, "tf", base, {"test_accuracy": 0.8, "weights_remaining": 1.0,
                                             "backend": "tensorflow"}),
            _fake_run(tmp_path, "jax", base, {"test_accuracy": 0.7, "weights_remaining": 1.0,
                                              "backend": "jax"})]
    points = collect(runs)
    assert len({point["variant"] for point in points}) == 2  # not pooled as two seeds
    assert all(point["level"] == "" for point in points)  # no k=0.5 for a dense run
    topk = _fake_run(tmp_path, "topk", dict(base, mask="topk", k=0.3),
                     {"test_accuracy": 0.6, "weights_remaining": 0.3})
    assert collect([topk])[0]["level"] == "k=0.3"
    prune = _fake_run(tmp_path, "prune", dict(base, mask="fixed", sparsity=0.9, method="snip"),
                      {"test_accuracy": 0.6, "weights_remaining": 0.1})
    assert collect([prune])[0]["level"] == "sparsity=0.9"
    label = short_label("criterion=large_final_same_sign, reinit=rewind, shuffle_mask=false")
    assert max(len(line) for line in label.split("\n")) <= 28 and "shuffle" not in label


def test_report_binary_redraws_plots_from_a_csv_without_touching_it(tmp_path):
    source = tmp_path / "old.csv"
    source.write_text("variant,run_dir,seed,level,weights_remaining,test_accuracy\n"
                      "a=1,r0,0,0,1.0,0.8\na=1,r1,1,0,1.0,0.82\na=1,r0,0,1,0.8,0.81\n"
                      "a=2,r2,0,0,1.0,0.7\na=2,r2,0,1,0.8,0.72\n")
    before = source.read_text()
    result = _run([_binary("report"), str(source), f"--output={tmp_path / 'old'}",
                   "--plots_only"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(tmp_path / "old.png")]
    assert source.read_text() == before and not (tmp_path / "old.md").exists()
    assert (tmp_path / "old.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Offline data -----------------------------------------------------------------------------------

def _closed_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again once the socket is


def test_missing_dataset_without_network_fails_at_once_with_where_to_put_it(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    start = time.time()
    result = _run([_binary("train"), "--dataset=mnist", f"--data_dir={data_dir}",
                   f"--run_dir={tmp_path / 'run'}"],
                  env={"TF_SUPERMASK_NETWORK_CHECK": f"127.0.0.1:{_closed_port()}"})
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "no network" in line and str(data_dir / "mnist.npz") in line, line
    assert os.listdir(data_dir) == [] and not (tmp_path / "run").exists()  # nothing partial
    assert time.time() - start < 120  # start-up only: no wait for TFDS


def test_tfds_is_used_without_a_check_when_its_data_are_there(tmp_path, monkeypatch):
    from tf_supermask.data import sources

    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    assert not sources.tfds_data_present("mnist", str(tmp_path))
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert sources.tfds_data_present("mnist", str(tmp_path))
    monkeypatch.setattr(sources, "network_problem", lambda: pytest.fail("checked the network"))
    monkeypatch.setattr(sources, "load_tfds", lambda name, data_dir: (_ for _ in ()).throw(
        RuntimeError("reached TFDS")))
    with pytest.raises(sources.DatasetNotFoundError, match="reached TFDS"):
        sources.load_dataset("mnist", data_dir=str(tmp_path))


def test_version_is_printed_at_once_and_matches_the_package():
    import configparser

    import tf_supermask

    setup = configparser.ConfigParser()
    setup.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "setup.cfg"))
    assert tf_supermask.__version__ == setup["metadata"]["version"]
    for name in ("train", "study"):
        result = _run([_binary(name), "--version"])
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == f"tf-supermask-{name} {tf_supermask.__version__}"


def test_license_changelog_and_citation_are_shipped():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert "Apache License" in open(os.path.join(root, "LICENSE")).read()
    assert "## Unreleased" in open(os.path.join(root, "CHANGELOG.md")).read()
    citation = open(os.path.join(root, "CITATION.cff")).read()
    assert "cff-version:" in citation and "license: Apache-2.0" in citation


@pytest.mark.parametrize("args, message", [
    (["--epoch=2"], "error: Unknown command line flag 'epoch'"),
    (["--k=50"], "error: --k is the fraction of weights kept and must be in (0, 1], got 50.0"),
    (["--flagfile={flagfile}"], "error: Unknown command line flag 'epoch'"),
])
def test_a_bad_flag_is_one_error_line_before_any_framework_loads(args, message, tmp_path):
    # Issue 27, points 5 and 6: no usage text, the flagfile named, and neither Keras nor
    # TensorFlow imported to say so.
    flagfile = tmp_path / "bad.cfg"
    flagfile.write_text("--model=fc\n--epoch=2\n")
    args = [arg.format(flagfile=flagfile) for arg in args]
    code = ("import atexit, sys\n"
            "heavy = ('keras', 'tensorflow', 'jax')\n"
            "atexit.register(lambda: print('IMPORTED', [m for m in heavy if m in sys.modules]))\n"
            f"sys.argv = ['tf-supermask-train'] + {args!r}\n"
            "from tf_supermask.bin.train import run\n"
            "run()\n")
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    if "flagfile" in args[0]:
        assert lines[0].endswith(f"(in --flagfile={flagfile})")
    assert result.stdout.rstrip().endswith("IMPORTED []"), result.stdout[-300:]
