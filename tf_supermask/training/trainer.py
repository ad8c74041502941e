"""Dense or supermask training of one run: data, model, fit, evaluate, write the run directory."""

import os
import shutil
import time

import keras

from tf_supermask import data as data_lib
from tf_supermask.config import config_hash, to_flagfile
from tf_supermask.layers import weights_remaining
from tf_supermask.models import build_model
from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.callbacks import (WeightsRemainingLogger, tensorboard_available,
                                             tensorflow_available)
from tf_supermask.training.config import RUN_CONTROL_FIELDS, TrainConfig
from tf_supermask.training.distribute import (adapt_model, make_strategy, strategy_scope,
                                              task_run_dir)
from tf_supermask.training.optim import build_optimizer

INITIAL_WEIGHTS = os.path.join("checkpoints", "initial.weights.h5")
FINAL_MODEL = os.path.join("checkpoints", "final.keras")


def default_run_dir(config, root="runs"):
    """runs/<model>_<mask>_<dataset>_<hash of the non-default flags>."""
    dataset = os.path.splitext(os.path.basename(config.dataset))[0]
    return os.path.join(root, f"{config.model}_{config.mask}_{dataset}_"
                              f"{config_hash(config, RUN_CONTROL_FIELDS)}")


def load_data(config):
    """The run's Dataset and its normalisation statistics."""
    dataset = data_lib.load_dataset(config.dataset, data_dir=config.data_dir or None,
                                    validation_size=config.validation_size, seed=config.seed,
                                    train_size=config.train_size or None)
    return dataset, data_lib.normalization_stats(dataset)


def steps_per_epoch(config, dataset):
    """Optimizer steps per epoch: the training set's batches, at most --steps_per_epoch
    (what ``len()`` of the training batches of ``make_batches`` gives)."""
    steps = -(-len(dataset.x_train) // config.batch_size)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def make_batches(config, dataset, normalization):
    """(train batches, per-epoch evaluation batches, test batches).

    The train batches hold at most ``config.steps_per_epoch`` batches per epoch
    (0: all), the first ones of that epoch's example order.
    """
    train = data_lib.ArrayBatches(dataset.x_train, dataset.y_train, config.batch_size, shuffle=True,
                                  augment=config.augment, seed=config.seed,
                                  normalization=normalization,
                                  steps_per_epoch=config.steps_per_epoch or None,
                                  workers=config.data_workers)
    test = data_lib.ArrayBatches(dataset.x_test, dataset.y_test, config.batch_size,
                                 normalization=normalization)
    if len(dataset.x_val):
        validation = data_lib.ArrayBatches(dataset.x_val, dataset.y_val, config.batch_size,
                                           normalization=normalization)
    else:
        validation = test
    return train, validation, test


def resolve_jit_compile(setting):
    """"auto" compiles with XLA under JAX and on GPUs, not on TensorFlow's CPU path.

    Measured with tf-supermask-bench on conv2 (2-core CPU): the Bernoulli step
    took x1.96 the dense step with XLA and x1.02 without it.
    """
    if setting != "auto":
        return {"true": True, "false": False}[setting]
    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def compile_model(model, config, steps_per_epoch):
    """Compiles with the run's optimizer, cross-entropy on logits and accuracy."""
    jit = resolve_jit_compile(config.jit_compile)
    model.compile(optimizer=build_optimizer(config, steps_per_epoch),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit)


def create_model(config, dataset, steps_per_epoch, strategy=None):
    """Builds and compiles the run's model inside the strategy's scope."""
    with strategy_scope(strategy):
        model = build_model(config.model, dataset.input_shape, dataset.num_classes,
                            config.mask_options())
        compile_model(model, config, steps_per_epoch)
    return adapt_model(model, strategy)


def discard_corrupt_backup(backup_dir):
    """Removes a resume checkpoint that cannot be read (a job killed while writing it).

    Returns True if one was removed; the run then restarts from its first epoch
    instead of failing on every resume.
    """
    path = os.path.join(backup_dir, "latest.weights.h5")
    if not os.path.exists(path):
        return False
    import h5py

    try:
        with h5py.File(path, "r"):
            return False
    except OSError as error:
        import shutil
        import warnings

        warnings.warn(f"discarding unreadable resume checkpoint {path} ({error}); the run "
                      "restarts from its first epoch")
        shutil.rmtree(backup_dir)
        return True


def _callbacks(run_dir, extra):
    # The logger goes first so that CSV and TensorBoard see what it adds.
    callbacks = [WeightsRemainingLogger(),
                 keras.callbacks.BackupAndRestore(os.path.join(run_dir, "checkpoints", "backup")),
                 keras.callbacks.CSVLogger(os.path.join(run_dir, "metrics.csv"), append=True)]
    if tensorboard_available():
        from tf_supermask.training.callbacks import MaskImageLogger

        # Histograms of every variable (scores included), then each mask as an image.
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"),
                                                     histogram_freq=1))
        callbacks.append(MaskImageLogger(os.path.join(run_dir, "tensorboard")))
    else:  # no TensorFlow (JAX on a GPU machine): the epoch scalars, written by hand
        from tf_supermask.training.events import EpochScalars

        callbacks.append(EpochScalars(os.path.join(run_dir, "tensorboard")))
    return callbacks + list(extra)


def evaluate(model, batches):
    """{"loss": ..., "accuracy": ...} on `batches`."""
    return model.evaluate(batches, verbose=0, return_dict=True)


def export_saved_model(model, path):
    """Writes the folded SavedModel (masks multiplied into plain kernels, no scores) with a
    `serve` signature, atomically (TensorFlow needed; see tf_supermask.export)."""
    if not tensorflow_available():
        raise RuntimeError("SavedModel export needs TensorFlow; install it or drop --export")
    from tf_supermask.export import export_saved_model as export_folded

    export_folded(model, path)


def train(config: TrainConfig, callbacks=(), prepare=None):
    """Runs (or resumes) one training run and writes its run directory.

    Args:
      config: the run's TrainConfig.
      callbacks: extra Keras callbacks.
      prepare: optional ``prepare(model, train_batches, dataset)`` called on the
        compiled model before its initial weights are saved and training starts:
        the place to set masks or load weights (pruning at initialization, lottery
        levels). It may return a dict that is merged into the results. On resume
        it runs again, then the backup checkpoint overwrites what it set.

    Returns:
      The results dictionary also written to ``results.json``.

    Raises:
      RunDirError: the run directory holds a finished run or other flags and
        ``config.overwrite`` is False.
    """
    run_dir = config.run_dir or default_run_dir(config)
    # The strategy comes first: a MultiWorkerMirroredStrategy must exist before any
    # TensorFlow op runs (TFDS loading runs some). A non-chief worker of a multi-worker
    # run writes its copy of the run elsewhere.
    strategy = make_strategy(config.strategy)
    chief_run_dir, run_dir = run_dir, task_run_dir(strategy, run_dir)
    dataset, normalization = load_data(config)  # fails before the run directory is touched
    state = run_dir_lib.prepare(run_dir, to_flagfile(config), config.overwrite,
                                ignore=RUN_CONTROL_FIELDS)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(
            "mixed_float16" if keras.backend.backend() == "tensorflow" else "mixed_bfloat16")
    train_batches, validation_batches, test_batches = make_batches(config, dataset, normalization)
    steps_per_epoch = len(train_batches)  # at most config.steps_per_epoch
    model = create_model(config, dataset, steps_per_epoch, strategy)
    extra_results = {}
    if config.init == "patches":  # PatchesInit's data step, before the rewind point is saved
        from tf_supermask.layers.patches import patches_init_from_config

        extra_results["patches"] = patches_init_from_config(model, config, dataset, normalization)
    extra_results.update((prepare(model, train_batches, dataset) if prepare else None) or {})
    initial_path = os.path.join(run_dir, INITIAL_WEIGHTS)
    if state == "new" or not os.path.exists(initial_path):
        os.makedirs(os.path.dirname(initial_path), exist_ok=True)
        model.save_weights(initial_path)
    if config.verbose:
        print(f"{'Resuming' if state == 'resume' else 'Starting'} {run_dir}: {config.model} "
              f"mask={config.mask} k={config.k} on {dataset.name} ({dataset.source}), "
              f"{len(dataset.x_train)} training images")
    discard_corrupt_backup(os.path.join(run_dir, "checkpoints", "backup"))
    start = time.time()
    # ArrayBatches shuffles examples with a seeded generator; Keras's own batch
    # shuffle would use Python's unseeded one.
    history = model.fit(train_batches, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=validation_batches, verbose=config.verbose, shuffle=False,
                        callbacks=_callbacks(run_dir, callbacks))
    train_seconds = time.time() - start
    test = evaluate(model, test_batches)
    overall, per_layer = weights_remaining(model)
    model.save(os.path.join(run_dir, FINAL_MODEL))
    results = {
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "weights_remaining": overall,
        "weights_remaining_per_layer": per_layer,
        "sparsity_per_layer": {path: 1.0 - kept for path, kept in per_layer.items()},
        "train_seconds": train_seconds,
        "resumed": state == "resume",
        "epochs": config.epochs,
        "history": {key: [float(v) for v in values] for key, values in history.history.items()
                    if "/" not in key},
        "dataset_source": dataset.source,
        "backend": keras.backend.backend(),
    }
    results.update(extra_results)
    if config.export:
        export_saved_model(model, os.path.join(run_dir, "saved_model"))
    run_dir_lib.write_json(os.path.join(run_dir, run_dir_lib.RESULTS_FILE), results)
    if run_dir != chief_run_dir:  # a non-chief worker's copy
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = chief_run_dir
    if config.verbose:
        print(f"test accuracy {results['test_accuracy']:.4f}, weights remaining "
              f"{overall:.4f}; results in {run_dir}")
    results["run_dir"] = run_dir
    return results
