"""Exporting a finished run directory: its folded SavedModel and its compact file."""

import json
import os
import shutil
import warnings

import keras
import numpy as np
from keras import ops

from tf_supermask.choices import model_kind
from tf_supermask.export import (COMPACT_FILE, SAVED_MODEL_DIR, export_saved_model, load_compact,
                                 save_compact)
from tf_supermask.training.run_config import run_model_options
from tf_supermask.training.run_dir import RESULTS_FILE, parse_flagfile, require_run
from tf_supermask.training.trainer import FINAL_MODEL


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


def _backend_note(warning, run_backend):
    """The compact format's "kernels differ" warning, naming the backend when it is the cause."""
    message = str(warning.message)
    current = keras.backend.backend()
    if "kernels differ" in message and run_backend and run_backend != current:
        message += (f". The run was trained on {run_backend} and this export runs on "
                    f"{current}: their random generators draw other weights, so the frozen "
                    f"kernels cannot be regenerated here; export under "
                    f"KERAS_BACKEND={run_backend} for a compact file")
    return message


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
               verify=True, allow_kernels=True):
    """Exports a finished run's final model (``checkpoints/final.keras``).

    Args:
      run_dir: the run directory.
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

    Returns:
      {format: path written}.
    """
    if formats is not None:
        unknown = sorted(set(formats) - {"saved_model", "compact"})
        if unknown or not formats:
            raise ValueError(f"formats must be among saved_model, compact; got {list(formats)}")
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
            metadata = {"run_dir": os.path.basename(os.path.abspath(run_dir)),
                        "flags": flags_text, "results": results}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                save_compact(model, targets["compact"], options, model_name=model_name,
                             metadata=metadata, allow_kernels=allow_kernels)
            for warning in caught:
                warnings.warn(_backend_note(warning, full_results.get("backend")),
                              warning.category, stacklevel=2)
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
