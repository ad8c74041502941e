"""Exporting a finished run directory: its folded SavedModel and its compact file.

An experiment directory (tf-supermask-lottery, -finetune) holds one run directory per
stage; ``export_stage`` picks the one to export: a lottery's last finished level (or
``level``), a fine-tuning experiment's final run; for a comparison, whose arms are
all final, it names the sub-folders that can be exported.
"""

import json
import os
import re
import shutil
import warnings

import keras
import numpy as np
from keras import ops

from tf_supermask.choices import model_kind
from tf_supermask.export import (COMPACT_FILE, SAVED_MODEL_DIR, export_saved_model, load_compact,
                                 save_compact)
from tf_supermask.export.compact import StoredKernelsWarning
from tf_supermask.training.run_config import run_model_options
from tf_supermask.training.run_dir import FLAGS_FILE, RESULTS_FILE, parse_flagfile, require_run
from tf_supermask.training.trainer import FINAL_MODEL

_LEVEL = re.compile(r"level_(\d+)$")
# How many exportable sub-folders an error names before "and N more".
_LISTED = 8


def run_results(run_dir):
    """The run's results.json as a dict ({} when it has none)."""
    path = os.path.join(run_dir, RESULTS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as stream:
        return json.load(stream)


def run_normalization(run_dir, results, flags_text):
    """The (mean, std) the run trained with: results.json's ``normalization`` entry, or,
    for runs written before it was recorded, the published constants of the run's
    dataset.

    Raises:
      ValueError: neither is available (an older run on an .npz or image-folder dataset).
    """
    recorded = results.get("normalization")
    if recorded:
        return recorded["mean"], recorded["std"]
    from tf_supermask.data import normalization_stats

    dataset = parse_flagfile(flags_text).get("dataset", "sample")
    try:
        return normalization_stats(dataset)
    except ValueError:
        raise ValueError(f"{run_dir}/{RESULTS_FILE} records no normalization and the dataset "
                         f"{dataset!r} has no published constants; rerun the training to "
                         "record them") from None


def _finished(path):
    """Whether `path` is a finished run directory (its final model and results exist)."""
    return all(os.path.exists(os.path.join(path, name))
               for name in (FLAGS_FILE, RESULTS_FILE, FINAL_MODEL))


def lottery_levels(run_dir):
    """{level: path} of a lottery experiment's level_N folders (finished or not); {} when
    `run_dir` is no lottery experiment."""
    if not os.path.isdir(run_dir):
        return {}
    levels = {}
    for name in os.listdir(run_dir):
        match = _LEVEL.match(name)
        if match and os.path.isdir(os.path.join(run_dir, name)):
            levels[int(match.group(1))] = os.path.join(run_dir, name)
    return dict(sorted(levels.items()))


def exportable_runs(run_dir, depth=2):
    """The finished run directories inside `run_dir` (up to `depth` folders down), as
    paths relative to it, sorted."""
    found = []
    for root, folders, _ in os.walk(run_dir):
        relative = os.path.relpath(root, run_dir)
        level = 0 if relative == "." else relative.count(os.sep) + 1
        folders[:] = sorted(name for name in folders
                            if not name.startswith(".") and name not in ("checkpoints",
                                                                         "tensorboard",
                                                                         SAVED_MODEL_DIR))
        if level >= depth:
            folders[:] = []
        if level and _finished(root):
            found.append(relative)
            folders[:] = []  # a run's own folders hold no other run
    return sorted(found)


def _listing(names):
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def export_stage(run_dir, level=None):
    """The run directory to export for `run_dir`, and a note saying which was chosen.

    - a run directory (tf-supermask-train, -prune-init, a stage of an experiment):
      itself (note None);
    - a lottery experiment (level_N folders): level `level`, by default the last
      finished one;
    - a fine-tuning experiment: its final run (``finetune/``, or the last
      ``round_N/`` of --prune_method=iterative).

    Raises:
      ValueError: `level` is not a finished level of a lottery experiment (the message
        lists those that are), or `level` is given for something else; an experiment
        with no single final run (a comparison's arms, an unfinished fine-tuning
        experiment): the message names the sub-folders that can be exported.
      FileNotFoundError: the folder does not exist, is not a run directory, or no
        run in it has finished.
    """
    if not os.path.isdir(run_dir):
        require_run(run_dir)  # "does not exist" / "is not a directory"
    levels = lottery_levels(run_dir)
    if levels:
        finished = [number for number, path in levels.items() if _finished(path)]
        if not finished:
            raise FileNotFoundError(f"{run_dir}: no level of this lottery experiment has "
                                    f"finished yet (no level_N/{FINAL_MODEL})")
        available = ", ".join(str(number) for number in finished)
        if level is None:
            level = finished[-1]
            done = os.path.exists(os.path.join(run_dir, RESULTS_FILE))
            note = (f"exporting level {level} of the lottery experiment {run_dir}, its last "
                    f"finished level{'' if done else ' (the experiment has not finished)'}; "
                    f"--level=N exports another (finished: {available})")
        elif level not in finished:
            what = ("has not finished" if level in levels else "does not exist")
            raise ValueError(f"level {level} of the lottery experiment {run_dir} {what}; "
                             f"available levels: {available} (--level=N)")
        else:
            note = f"exporting level {level} of the lottery experiment {run_dir}"
        return levels[level], note
    if level is not None:
        raise ValueError(f"--level picks a level of a lottery experiment (tf-supermask-lottery);"
                         f" {run_dir} is not one (no level_N folders)")
    if os.path.exists(os.path.join(run_dir, FINAL_MODEL)):
        return run_dir, None
    summary = run_results(run_dir)
    rounds = summary.get("rounds") if summary.get("experiment") == "finetune" else None
    if rounds:
        stage = os.path.join(run_dir, rounds[-1]["run_dir"])
        if _finished(stage):
            others = [name for name in exportable_runs(run_dir)
                      if os.path.normpath(os.path.join(run_dir, name)) != os.path.normpath(stage)]
            return stage, (f"exporting {stage}, the fine-tuning experiment's final run"
                           + (f" (its other runs: {_listing(others)}; export one with "
                              f"tf-supermask-export {os.path.join(run_dir, others[0])})"
                              if others else ""))
    runs = exportable_runs(run_dir)
    if runs and os.path.exists(os.path.join(run_dir, FLAGS_FILE)):
        with open(os.path.join(run_dir, FLAGS_FILE)) as stream:
            flags = parse_flagfile(stream.read())
        experiment = summary.get("experiment") or (
            "comparison" if flags.get("compare") else
            "finetune" if "prune_method" in flags else None)
        kind = {"comparison": "a comparison (tf-supermask-finetune --compare), one run per arm",
                "finetune": "a fine-tuning experiment that has not finished"}.get(
                    experiment, "an experiment of several runs")
        raise ValueError(f"{run_dir} is {kind}, with no single final model: export one of its "
                         f"runs, e.g. tf-supermask-export {os.path.join(run_dir, runs[-1])} "
                         f"(finished runs in it: {_listing(runs)})")
    require_run(run_dir, FINAL_MODEL)  # "not a run directory", "not finished"
    return run_dir, None


def _size(path):
    size = os.path.getsize(path)
    return f"{size / 1024:.0f} KB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.1f} MB"


def stored_kernels_note(warning, path, run_backend=None):
    """The plain sentence for save_compact's "kernels differ" warning: the run's weights
    cannot be regenerated from its seed, so the compact file at `path` stores them."""
    message = warning.message
    if isinstance(message, StoredKernelsWarning) and message.total:
        why = (f"{len(message.stored)} of {message.total} kernels differ from the ones its "
               f"seed draws: trained weights, or an initialization the seed alone does not "
               f"reproduce")
    else:
        why = str(message).split(";")[0]
    note = (f"this run's weights cannot be regenerated from a seed ({why}), so the compact "
            f"file stores them: {_size(path)}; --format=saved_model writes the SavedModel alone")
    current = keras.backend.backend()
    if run_backend and run_backend != current:
        note += (f". The run was trained on {run_backend} and this export runs on "
                 f"{current}: their random generators draw other weights; export under "
                 f"KERAS_BACKEND={run_backend} for a compact file")
    return note


def _verify_saved_model(path, model, probe_images, normalization):
    """Serves uint8 images through the reloaded SavedModel and compares its logits with
    the run's model on the same images normalised; raises RuntimeError if they differ."""
    import tensorflow as tf

    from tf_supermask.export.saved_model import normalization_arrays

    mean, std = normalization_arrays(normalization, probe_images.shape[-1])
    expected = np.asarray(ops.convert_to_numpy(
        model((probe_images / 255.0 - mean) / std, training=False)), dtype=np.float32)
    loaded = tf.saved_model.load(path)  # held: its functions refer to its variables
    served = loaded.serve(tf.constant(probe_images))
    logits = served["logits"].numpy()
    if not np.allclose(logits, expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"the SavedModel {path} predicts differently (max logit difference "
                           f"{np.abs(logits - expected).max():.3g})")
    probabilities = loaded.signatures["serving_default"](
        images=tf.constant(probe_images.astype(np.float32)))["probabilities"].numpy()
    if not np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-4):
        raise RuntimeError(f"the SavedModel {path} returns probabilities that do not sum to 1")


def export_run(run_dir, formats=None, output=None, overwrite=False,
               verify=True, allow_kernels=True, level=None):
    """Exports a finished run's final model (``checkpoints/final.keras``).

    Args:
      run_dir: the run directory, or an experiment directory: a lottery's last
        finished level (or `level`) and a fine-tuning experiment's final run are
        exported (see ``export_stage``).
      formats: any of "saved_model" (folded SavedModel serving raw images, with the
        run's normalisation inside) and "compact" (registered models only: it rebuilds
        the weights from the model's name and seed). Default None: both for a
        registered model, the SavedModel for a user's own (--model=module:function, ...).
      output: folder receiving ``saved_model/`` and ``supermask.npz`` (default: `run_dir`).
      overwrite: replace existing outputs (otherwise they are refused).
      verify: reload each output and compare its predictions with the run's model
        (exactly on random inputs for the compact file; within 1e-4 on random uint8
        images for the SavedModel); an output that fails is removed (an output it
        replaced is not restored) and a RuntimeError raised, so the same command
        can run again.
      allow_kernels: see ``save_compact``.
      level: the level of a lottery experiment to export (default: its last finished).

    Returns:
      {format: path written}.

    Warns:
      StoredKernelsWarning: the run's kernels cannot be regenerated from its seed
        (trained weights), so the compact file stores them (its size said).
    """
    if formats is not None:
        unknown = sorted(set(formats) - {"saved_model", "compact"})
        if unknown or not formats:
            raise ValueError(f"formats must be among saved_model, compact; got {list(formats)}")
    experiment = run_dir
    run_dir, _ = export_stage(run_dir, level)
    model_path = os.path.join(run_dir, FINAL_MODEL)
    require_run(run_dir, FINAL_MODEL)  # "does not exist", "not a run directory", "not finished"
    registered = model_kind(run_model_options(run_dir)[0]) == "registered"
    if formats is None:
        formats = ("saved_model", "compact") if registered else ("saved_model",)
    if "compact" in formats and not registered:
        raise ValueError(f"{run_dir} trained a user's own model; the compact file rebuilds "
                         "registered models only: export the SavedModel (--format=saved_model)")
    output = output or run_dir
    targets = {"saved_model": os.path.join(output, SAVED_MODEL_DIR),
               "compact": os.path.join(output, COMPACT_FILE)}
    targets = {name: targets[name] for name in formats}
    existing = [path for path in targets.values() if os.path.exists(path)]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass overwrite "
                              "(--overwrite) to replace")
    model_name, options, flags_text = run_model_options(run_dir)
    full_results = run_results(run_dir)
    normalization = None
    if "saved_model" in targets:  # checked before anything is written
        normalization = run_normalization(run_dir, full_results, flags_text)
    import tf_supermask.models  # noqa: F401  (registers the layers' classes)

    model = keras.saving.load_model(model_path, compile=False)
    rng = np.random.default_rng(0)
    shape = (4,) + tuple(model.input_shape[1:])
    written = {}
    try:
        if "compact" in targets:
            results = {key: full_results[key] for key in ("test_accuracy", "test_loss",
                                                          "weights_remaining", "backend",
                                                          "epochs", "normalization")
                       if key in full_results}
            name = os.path.basename(os.path.abspath(experiment))
            if os.path.normpath(run_dir) != os.path.normpath(experiment):  # a stage of it
                name = os.path.join(name, os.path.relpath(run_dir, experiment))
            metadata = {"run_dir": name,
                        "flags": flags_text, "results": results}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                save_compact(model, targets["compact"], options, model_name=model_name,
                             metadata=metadata, allow_kernels=allow_kernels)
            for warning in caught:
                if issubclass(warning.category, StoredKernelsWarning) or (
                        "kernels differ" in str(warning.message)):
                    message = stored_kernels_note(warning, targets["compact"],
                                                  full_results.get("backend"))
                    warnings.warn(StoredKernelsWarning(
                        message, getattr(warning.message, "stored", ()),
                        getattr(warning.message, "total", 0)), stacklevel=2)
                else:
                    warnings.warn(str(warning.message), warning.category, stacklevel=2)
            written["compact"] = targets["compact"]
            if verify:
                probe = rng.normal(size=shape).astype("float32")
                expected = np.asarray(ops.convert_to_numpy(model(probe, training=False)))
                got = np.asarray(ops.convert_to_numpy(
                    load_compact(targets["compact"])(probe, training=False)))
                if not np.array_equal(got, expected):
                    raise RuntimeError(f"the model loaded from {targets['compact']} predicts "
                                       f"differently (max difference "
                                       f"{np.abs(got - expected).max()})")
        if "saved_model" in targets:
            export_saved_model(model, targets["saved_model"], normalization)
            written["saved_model"] = targets["saved_model"]
            if verify:
                images = rng.integers(0, 256, size=shape).astype(np.uint8)
                _verify_saved_model(targets["saved_model"], model, images, normalization)
    except BaseException:
        for path in written.values():  # nothing half-exported stays behind
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
        raise
    return targets
