"""Dense or supermask training of one run: data, model, fit, evaluate, write the run directory."""

import os
import shutil

import keras
import numpy as np

from tf_supermask import choices
from tf_supermask import data as data_lib
from tf_supermask.config import to_flagfile
from tf_supermask.layers import fused, masked_layers, weights_remaining
from tf_supermask.models import build_model
from tf_supermask.points import TrainingPoint
from tf_supermask.training import records as records_lib
from tf_supermask.training import run_dir as run_dir_lib
from tf_supermask.training.callbacks import (RunBackup, RunTensorBoard, WeightsRemainingLogger,
                                             check_finite_history, tensorboard_available,
                                             tensorflow_available)
from tf_supermask.training.config import RUN_CONTROL_FIELDS, PatchesConfig, TrainConfig
from tf_supermask.training.distribute import (adapt_model, make_strategy, strategy_scope,
                                              task_run_dir)
from tf_supermask.training.optim import build_optimizer

INITIAL_WEIGHTS = os.path.join("checkpoints", "initial.weights.h5")
FINAL_MODEL = choices.FINAL_MODEL


def default_run_dir(config, root="runs"):
    """runs/<model>_<mask>_<dataset>_<hash of the non-default flags>."""
    return run_dir_lib.default_run_dir(config, run_dir_lib.model_stem(config), config.mask,
                                       run_dir_lib.dataset_stem(config), root=root)


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
    if config.input_pipeline == "device":
        from tf_supermask.data.device import DeviceBatches

        train = DeviceBatches(dataset.x_train, dataset.y_train, config.batch_size, shuffle=True,
                              augment=config.augment, seed=config.seed,
                              normalization=normalization,
                              steps_per_epoch=config.steps_per_epoch or None)
    else:
        train = data_lib.ArrayBatches(dataset.x_train, dataset.y_train, config.batch_size,
                                      shuffle=True, augment=config.augment, seed=config.seed,
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
                  metrics=["accuracy"], jit_compile=jit,
                  steps_per_execution=getattr(config, "steps_per_execution", 1))


def create_model(config, dataset, steps_per_epoch, strategy=None):
    """Builds and compiles the run's model inside the strategy's scope."""
    with strategy_scope(strategy):
        model = build_model(config.model, dataset.input_shape, dataset.num_classes,
                            config.mask_options())
        compile_model(model, config, steps_per_epoch)
    return adapt_model(model, strategy)


BACKUP_DIR = run_dir_lib.BACKUP_DIR
METRICS_FILE = "metrics.csv"


def truncate_metrics(path, epochs_done):
    """Keeps the header and the rows of the first `epochs_done` epochs of metrics.csv
    (rows of epochs retrained after a resume would otherwise appear twice)."""
    if not os.path.exists(path):
        return
    if not epochs_done:
        os.remove(path)
        return
    with open(path, newline="") as stream:
        lines = stream.read().replace("\r\n", "\n").split("\n")
    kept = lines[:1]
    for line in lines[1:]:
        epoch = line.split(",", 1)[0]
        if epoch.isdigit() and int(epoch) < epochs_done:
            kept.append(line)
    run_dir_lib.write_atomic(path, "\n".join(kept) + "\n")


def _callbacks(run_dir, backup, extra, records=(), validation_is_test=False, verbose=0):
    # The loggers go first so that CSV and TensorBoard see what they add (the renaming of
    # val_* to test_* when the test set is what each epoch evaluates comes before them
    # all); the backup goes last so that a kill between them at most repeats an epoch's
    # rows, which truncate_metrics drops on resume; the progress output after it prints
    # the short epoch line.
    rename = records_lib.rename_test_keys if validation_is_test else None
    callbacks = ([records_lib.NameTestEvaluation()] if validation_is_test else []) + list(
        records) + [WeightsRemainingLogger(), keras.callbacks.TerminateOnNaN(),
                    records_lib.MetricsCSV(os.path.join(run_dir, METRICS_FILE), rename)]
    if tensorboard_available():
        from tf_supermask.training.callbacks import MaskImageLogger

        # Histograms of every variable (scores included), then each mask as an image.
        callbacks.append(RunTensorBoard(os.path.join(run_dir, "tensorboard"),
                                        evaluates_test_set=validation_is_test, histogram_freq=1))
        callbacks.append(MaskImageLogger(os.path.join(run_dir, "tensorboard")))
    else:  # no TensorFlow (JAX on a GPU machine): the epoch scalars, written by hand
        from tf_supermask.training.events import EpochScalars

        callbacks.append(EpochScalars(os.path.join(run_dir, "tensorboard")))
    return (callbacks + list(extra) + [backup]
            + ([records_lib.ShortEpochLine()] if verbose else []))


class _SkipBatches(keras.utils.PyDataset):
    """The batches of `batches` (an ArrayBatches) from index `skip` on: the rest of an
    epoch that starts mid-way (``train(start_step=...)``); epochs advance as the
    wrapped batches' do."""

    def __init__(self, batches, skip):
        super().__init__(workers=1)
        self.batches = batches
        self.skip = int(skip)

    def __len__(self):
        return len(self.batches) - self.skip

    def __getitem__(self, index):
        return self.batches[index + self.skip]

    def on_epoch_end(self):
        self.batches.on_epoch_end()


def evaluate(model, batches):
    """{"loss": ..., "accuracy": ...} on `batches`."""
    return model.evaluate(batches, verbose=0, return_dict=True)


def export_saved_model(model, path, normalization=None):
    """Writes the folded SavedModel (masks multiplied into plain kernels, no scores) with a
    `serve` signature, atomically (TensorFlow needed; see tf_supermask.export)."""
    if not tensorflow_available():
        raise RuntimeError("SavedModel export needs TensorFlow; install it or drop --export")
    from tf_supermask.export import export_saved_model as export_folded

    export_folded(model, path, normalization)


BINARY = "tf-supermask-train"


def train(config: TrainConfig, callbacks=(), prepare=None, start_step=0, finish=None,
          data=None, announce=BINARY):
    """Runs (or resumes) one training run and writes its run directory.

    Args:
      config: the run's TrainConfig.
      callbacks: extra Keras callbacks.
      prepare: optional ``prepare(model, train_batches, dataset)`` called on the
        compiled model before its initial weights are saved and training starts:
        the place to set masks or load weights (pruning at initialization, lottery
        levels). It may return a dict that is merged into the results; its
        ``start_epoch`` (if any) is the epoch training starts at, the epochs before
        it having been trained inside prepare with this model's optimizer (K-starts
        continuing from its winner; no schedule shift). On resume it runs again,
        then the backup checkpoint overwrites what it set.
      start_step: train only the optimizer steps from `start_step` to the end
        (``epochs`` x steps per epoch), as a run resumed at that step would (open_lth's
        late rewinding): the learning-rate schedule is shifted so the first step gets
        the schedule's rate at `start_step`, and the batches are those an
        uninterrupted run sees from that step on (the rest of its epoch, then the
        following epochs). The optimizer's own state (step count, slots) is not
        touched: a fresh optimizer starts at 0.
      finish: optional ``finish(results, model)`` returning a dict merged into the
        results before ``results.json`` is written (once, complete); `results` holds
        ``run_dir`` there, `model` is the final model (``experiments.stages.record_mask``
        writes the final mask this way).
      data: optional ``(dataset, normalization)`` already loaded (``load_data``), so an
        experiment's stages share one load.
      announce: the binary this run is the whole of (tf-supermask-train,
        tf-supermask-prune-init): it names it in the line saying what started, and that
        line and the result line are printed at every ``--verbose``, 0 included. None for
        a stage of an experiment, whose driver prints its own lines: the stage's banner
        and result line are then printed only at ``--verbose`` 1 and above.

    Returns:
      The results dictionary also written to ``results.json``.

    Raises:
      RunDirError: the run directory holds a finished run or other flags and
        ``config.overwrite`` is False, or another process is writing it.
      DivergedError: the loss became NaN or infinite (no results are written).
    """
    run_dir = config.run_dir or default_run_dir(config)
    # The strategy comes first: a MultiWorkerMirroredStrategy must exist before any
    # TensorFlow op runs (TFDS loading runs some). A non-chief worker of a multi-worker
    # run writes its copy of the run elsewhere.
    strategy = make_strategy(config.strategy)
    chief_run_dir, run_dir = run_dir, task_run_dir(strategy, run_dir)
    # Loading fails before the run directory is touched.
    dataset, normalization = load_data(config) if data is None else data
    flagfile = to_flagfile(config)
    state = run_dir_lib.check(run_dir, flagfile, config.overwrite, ignore=RUN_CONTROL_FIELDS)
    try:
        with fused.switched(config.fused_kernels) as fused_ran:  # --fused_kernels, this run
            results = _train_locked(config, run_dir, state, flagfile, dataset, normalization,
                                    strategy, callbacks, prepare, start_step, finish, fused_ran,
                                    announce)
    finally:
        run_dir_lib.release(run_dir)
    if run_dir != chief_run_dir:  # a non-chief worker's copy
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = chief_run_dir
    if config.verbose or announce:
        records_lib.say(f"test accuracy {results['test_accuracy']:.4f}, weights remaining "
                        f"{results['weights_remaining']:.4f}; results in {run_dir}")
    results["run_dir"] = run_dir
    return results


def _fused_ran(model, traced, nothing_trained):
    """Whether the fused CPU mask kernels served the run: a fused op was traced in this
    attempt, or (an attempt resumed after the last epoch, which traces no training step)
    they serve this model's masked layers here, as they did for the attempts before."""
    if traced():
        return True
    if not nothing_trained:
        return False
    modes = {layer.mask_mode for layer in masked_layers(model)}
    return bool(modes & {"topk", "bernoulli", "fixed"}) and fused.available(
        keras.ops.zeros((), "float32"))


def _train_locked(config, run_dir, state, flagfile, dataset, normalization, strategy, callbacks,
                  prepare, start_step=0, finish=None, fused_ran=lambda: False, announce=None):
    """train() once `run_dir` is locked and `state` ("new", "resume", "replace") decided;
    `fused_ran()` tells whether the fused mask kernels ran (``fused.switched``)."""
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(
            "mixed_float16" if keras.backend.backend() == "tensorflow" else "mixed_bfloat16")
    train_batches, validation_batches, test_batches = make_batches(config, dataset, normalization)
    validation_is_test = validation_batches is test_batches
    steps_per_epoch = len(train_batches)  # at most config.steps_per_epoch
    model = create_model(config, dataset, steps_per_epoch, strategy)
    images = f"on {dataset.name} ({dataset.source}), {len(dataset.x_train)} training images"
    if announce and prepare is not None:  # what started, before the mask is chosen
        records_lib.say(f"{announce}: {'Resuming' if state == 'resume' else 'Starting'} "
                        f"{run_dir}: {config.model} {images}")
    if start_step:
        from tf_supermask.training.optim import shifted_learning_rate

        rate = shifted_learning_rate(config, steps_per_epoch, start_step)
        if rate is not None:
            model.optimizer.learning_rate = rate
    extra_results = {}
    if PatchesConfig.applies(config):  # PatchesInit's data step, before the rewind point
        from tf_supermask.layers.patches import patches_init_from_flags

        extra_results["patches"] = patches_init_from_flags(
            model, config.group(PatchesConfig), dataset, normalization, k=config.k,
            scale_fan=config.scale_fan, seed=config.seed)
    extra_results.update((prepare(model, train_batches, dataset) if prepare else None) or {})
    # The new run has started correctly: only now is a replaced run removed.
    run_dir_lib.begin(run_dir, flagfile, state)
    initial_path = os.path.join(run_dir, INITIAL_WEIGHTS)
    if state != "resume" or not os.path.exists(initial_path):
        with run_dir_lib.atomic_file(initial_path) as temp_path:
            model.save_weights(temp_path)
    backup = RunBackup(os.path.join(run_dir, BACKUP_DIR))
    with strategy_scope(strategy):  # the optimizer's variables are built under it
        epochs_done = backup.restore(model)
    if validation_is_test:  # a backup written before the test set was named test_*
        records_lib.rename_test_keys(backup.history)
    truncate_metrics(os.path.join(run_dir, METRICS_FILE), epochs_done)
    if not epochs_done:  # event files of failed attempts would show their epochs twice
        shutil.rmtree(os.path.join(run_dir, "tensorboard"), ignore_errors=True)
    banner = (f"{'Resuming' if epochs_done else 'Starting'} {run_dir}"
              f"{f' after epoch {epochs_done}' if epochs_done else ''}: {config.model} "
              f"{records_lib.mask_summary(config.mask, config.k, model)} {images}")
    if announce and prepare is None:  # the banner is the line saying what started
        records_lib.say(f"{announce}: {banner}")
    elif config.verbose:
        print(banner)
    # Epochs are numbered as in an uninterrupted run from step 0; with start_step
    # inside an epoch, that epoch trains only its last batches.
    first_epoch, skip = TrainingPoint("step", start_step).epoch_and_batch(steps_per_epoch)
    if int(extra_results.get("start_epoch", 0)) > first_epoch:  # trained inside prepare
        first_epoch, skip = int(extra_results["start_epoch"]), 0
    epoch = max(epochs_done, first_epoch)
    # The learning rate and (with a held-out validation split) the test accuracy of each
    # epoch go into metrics.csv, TensorBoard and the history; without one, what Keras
    # calls val_* (the test set's figures) is named test_*.
    records = [records_lib.LearningRateLogger()]
    if not validation_is_test:
        records.append(records_lib.TestAccuracyLogger(test_batches))
    fit_callbacks = (_callbacks(run_dir, backup, callbacks, records, validation_is_test,
                                config.verbose) if epoch < config.epochs else [])
    while epoch < config.epochs:
        partial = skip if epoch == first_epoch else 0
        last = epoch + 1 if partial else config.epochs
        # Batch `index` of fit's epoch e is ArrayBatches batch (e + 1, index) (fit
        # advances the epoch once before its first epoch), in a resumed fit too.
        train_batches.epoch = epoch
        # ArrayBatches shuffles examples with a seeded generator; Keras's own batch
        # shuffle would use Python's unseeded one.
        model.fit(_SkipBatches(train_batches, partial) if partial else train_batches,
                  epochs=last, initial_epoch=epoch, steps_per_epoch=steps_per_epoch - partial,
                  validation_data=validation_batches,
                  verbose=records_lib.fit_verbosity(config.verbose), shuffle=False,
                  callbacks=fit_callbacks)
        epoch = last
    check_finite_history(backup.history)
    test = evaluate(model, test_batches)
    overall, per_layer = weights_remaining(model)
    with run_dir_lib.atomic_file(os.path.join(run_dir, FINAL_MODEL)) as temp_path:
        model.save(temp_path)
    results = {
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "weights_remaining": overall,
        "weights_remaining_per_layer": per_layer,
        "sparsity_per_layer": {path: 1.0 - kept for path, kept in per_layer.items()},
        "train_seconds": backup.train_seconds,
        "resumed": state == "resume",
        "epochs": config.epochs,
        "history": backup.history,
        "dataset_source": dataset.source,
        "backend": keras.backend.backend(),
        # What ran, beside the flags in flags.txt: whether the fused CPU kernels did (they
        # draw other Bernoulli masks), and the top-k select asked for (every select keeps
        # the same weights; it changes the speed).
        "fused_kernels_ran": _fused_ran(model, fused_ran, epochs_done >= config.epochs),
        "topk_method": config.topk_method,
        # What the model's inputs were: (images / 255 - mean) / std per channel.
        "normalization": {"mean": [float(v) for v in np.atleast_1d(normalization[0])],
                          "std": [float(v) for v in np.atleast_1d(normalization[1])]},
    }
    results.update(records_lib.best_epoch_results(
        backup.history, config.epochs, validation_is_test=validation_is_test))
    results.update(extra_results)
    if finish is not None:
        results.update(finish(dict(results, run_dir=run_dir), model) or {})
    if config.export:
        export_saved_model(model, os.path.join(run_dir, "saved_model"), normalization)
    run_dir_lib.write_json(os.path.join(run_dir, run_dir_lib.RESULTS_FILE), results)
    run_dir_lib.kill_point("results_written")
    backup.discard()  # only now: a kill before this point resumes after the last epoch
    return results
