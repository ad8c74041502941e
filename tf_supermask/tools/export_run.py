"""Exporting a finished run directory: its folded SavedModel and its compact file."""

import json
import os
import shutil

import keras
import numpy as np
from keras import ops

from tf_supermask.export import (COMPACT_FILE, SAVED_MODEL_DIR, export_saved_model, load_compact,
                                 save_compact)
from tf_supermask.training.run_config import run_model_options
from tf_supermask.training.run_dir import RESULTS_FILE
from tf_supermask.training.trainer import FINAL_MODEL


def export_run(run_dir, formats=("saved_model", "compact"), output=None, overwrite=False,
               verify=True, allow_kernels=True):
    """Exports a finished run's final model (``checkpoints/final.keras``).

    Args:
      run_dir: the run directory.
      formats: any of "saved_model" (folded SavedModel) and "compact".
      output: folder receiving ``saved_model/`` and ``supermask.npz`` (default: `run_dir`).
      overwrite: replace existing outputs (otherwise they are refused).
      verify: reload each output and compare its predictions on random inputs
        with the run's model (exactly for the compact file, 1e-5 for the SavedModel);
        an output that fails is removed and a RuntimeError raised.
      allow_kernels: see ``save_compact``.

    Returns:
      {format: path written}.
    """
    unknown = sorted(set(formats) - {"saved_model", "compact"})
    if unknown or not formats:
        raise ValueError(f"formats must be among saved_model, compact; got {list(formats)}")
    model_path = os.path.join(run_dir, FINAL_MODEL)
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"{model_path} does not exist: the run has not finished")
    output = output or run_dir
    targets = {"saved_model": os.path.join(output, SAVED_MODEL_DIR),
               "compact": os.path.join(output, COMPACT_FILE)}
    targets = {name: targets[name] for name in formats}
    existing = [path for path in targets.values() if os.path.exists(path)]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass overwrite "
                              "(--overwrite) to replace")
    model_name, options, flags_text = run_model_options(run_dir)
    import tf_supermask.models  # noqa: F401  (registers the layers' classes)

    model = keras.saving.load_model(model_path, compile=False)
    probe = np.random.default_rng(0).normal(size=(4,) + tuple(model.input_shape[1:]))
    probe = probe.astype("float32")
    expected = np.asarray(ops.convert_to_numpy(model(probe, training=False)))
    if "compact" in targets:
        results = {}
        results_path = os.path.join(run_dir, RESULTS_FILE)
        if os.path.exists(results_path):
            with open(results_path) as stream:
                full = json.load(stream)
            results = {key: full[key] for key in ("test_accuracy", "test_loss",
                                                  "weights_remaining", "backend", "epochs")
                       if key in full}
        metadata = {"run_dir": os.path.basename(os.path.abspath(run_dir)), "flags": flags_text,
                    "results": results}
        save_compact(model, targets["compact"], options, model_name=model_name,
                     metadata=metadata, allow_kernels=allow_kernels)
        if verify:
            got = np.asarray(ops.convert_to_numpy(
                load_compact(targets["compact"])(probe, training=False)))
            if not np.array_equal(got, expected):
                os.remove(targets["compact"])
                raise RuntimeError(f"the model loaded from {targets['compact']} predicts "
                                   f"differently (max difference {np.abs(got - expected).max()})")
    if "saved_model" in targets:
        export_saved_model(model, targets["saved_model"])
        if verify:
            import tensorflow as tf

            served = np.asarray(tf.saved_model.load(targets["saved_model"]).serve(
                tf.constant(probe)))
            if not np.allclose(served, expected, rtol=1e-5, atol=1e-5):
                shutil.rmtree(targets["saved_model"], ignore_errors=True)
                raise RuntimeError(f"the SavedModel {targets['saved_model']} predicts differently "
                                   f"(max difference {np.abs(served - expected).max()})")
    return targets
