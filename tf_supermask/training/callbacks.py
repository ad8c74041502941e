"""Callbacks that put mask statistics into the epoch logs (and so into TensorBoard and CSV),
and draw the masks as TensorBoard images."""

import contextlib
import math
import os
import shutil
import time
import warnings

import keras
import numpy as np

from tf_supermask.layers import weights_remaining
from tf_supermask.training import run_dir as run_dir_lib


class WeightsRemainingLogger(keras.callbacks.Callback):
    """Adds overall and per-layer weights remaining to each epoch's logs.

    Placed before TensorBoard and CSVLogger in the callback list, the values
    become scalars ``weights_remaining`` and ``weights_remaining/<kernel path>``.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        overall, per_layer = weights_remaining(self.model)
        logs["weights_remaining"] = overall
        for path, fraction in per_layer.items():
            logs[f"weights_remaining/{path}"] = fraction


class RunTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback with one learning-rate scalar, and the test set named.

    The learning rate is ``epoch_lr``, the rate of each epoch's first step
    (``records.LearningRateLogger``, the ``lr`` column of metrics.csv); Keras's own
    ``epoch_learning_rate`` (the rate after the epoch's last step, read from the
    optimizer) is not written beside it.

    Args:
      log_dir: the TensorBoard folder.
      evaluates_test_set: each epoch's evaluation is the test set (no held-out
        validation split): what Keras writes to ``validation/`` after each evaluation
        (``evaluation_<metric>_vs_iterations``) goes to ``test/``. (The epoch scalars
        are named ``epoch_test_<metric>`` by ``records.NameTestEvaluation``.)
      **kwargs: Keras's TensorBoard arguments.
    """

    def __init__(self, log_dir, evaluates_test_set=False, **kwargs):
        super().__init__(log_dir, **kwargs)
        self.evaluates_test_set = bool(evaluates_test_set)

    def set_model(self, model):
        super().set_model(model)
        if self.evaluates_test_set:
            self._val_dir = os.path.join(self.log_dir, "test")

    def _collect_learning_rate(self, logs):
        return logs


def tensorflow_available():
    """Whether TensorFlow can be imported (SavedModel export needs it)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def tensorboard_available():
    """Whether TensorBoard event files can be written (TensorFlow and TensorBoard)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return tensorflow_available()


# Mask images: kept weights white, pruned black, the gaps between one filter's
# input-channel patches grey, the gaps between filters a dark red.
KEPT, PRUNED, PATCH_GAP = 1.0, 0.0, 0.5
FILTER_GAP_RGB = (0.55, 0.1, 0.1)
_FILTER_GAP = -1.0  # marker until the image is coloured


def _grid(tiles, gap, fill):
    """Lays (n, h, w) tiles out in a near-square grid with `gap` pixels of `fill` between them."""
    count, height, width = tiles.shape
    columns = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    padded = np.full((rows * columns, height + gap, width + gap), fill, dtype=np.float32)
    padded[:count, :height, :width] = tiles
    image = padded.reshape(rows, columns, height + gap, width + gap).transpose(0, 2, 1, 3)
    image = image.reshape(rows * (height + gap), columns * (width + gap))
    return image[:image.shape[0] - gap, :image.shape[1] - gap] if gap else image


def _shrink(image, max_side):
    """Averages blocks of pixels so that neither side exceeds `max_side` (grey = partly kept)."""
    factor = int(math.ceil(max(image.shape[:2]) / max_side))
    if factor <= 1:
        return image
    rows = int(math.ceil(image.shape[0] / factor)) * factor
    columns = int(math.ceil(image.shape[1] / factor)) * factor
    padded = np.full((rows, columns, image.shape[2]), PATCH_GAP, dtype=np.float32)
    padded[:image.shape[0], :image.shape[1]] = image
    return padded.reshape(rows // factor, factor, columns // factor, factor,
                          image.shape[2]).mean(axis=(1, 3))


def mask_image(mask, max_side=2048):
    """An RGB float image (H, W, 3) in [0, 1] of a binary mask: kept white, pruned black.

    Layouts:
      - Dense kernel (inputs, units): one row per unit, one column per input
        (the transposed kernel), so a row shows which inputs a unit still reads.
      - Conv kernel (kh, kw, in, out): one tile per filter (output channel),
        tiles in a near-square grid (filter f at row f // columns, column
        f % columns) separated by 2 dark-red pixels. A tile holds the filter's
        kh x kw patch for each input channel, patches in a near-square grid
        (channel c at row c // columns, column c % columns) separated by 1 grey
        pixel (no separator for 1x1 kernels).
      - Other shapes: flattened to (-1, last axis) and drawn like a Dense kernel.

    Images larger than `max_side` on a side are shrunk by averaging square
    blocks, so a pixel's grey level is the fraction of its block that is kept.
    """
    mask = (np.asarray(mask) != 0).astype(np.float32)
    if mask.ndim == 4:
        kh, kw, channels, filters = mask.shape
        patches = np.transpose(mask, (3, 2, 0, 1)).reshape(filters * channels, kh, kw)
        patch_gap = 1 if kh * kw > 1 else 0
        tiles = np.stack([_grid(patches[f * channels:(f + 1) * channels], patch_gap, PATCH_GAP)
                          for f in range(filters)])
        image = _grid(tiles, 2, _FILTER_GAP)
    else:
        image = mask.reshape(-1, mask.shape[-1] if mask.ndim else 1).T
    rgb = np.repeat(image[:, :, np.newaxis], 3, axis=2)
    rgb[image == _FILTER_GAP] = FILTER_GAP_RGB
    return _shrink(rgb, max_side)


class MaskImageLogger(keras.callbacks.Callback):
    """Writes each masked layer's binary mask as a TensorBoard image (see ``mask_image``).

    Images go to ``<log_dir>/masks`` under the tag ``mask/<kernel path>``, at
    the end of every `every_n_epochs`-th epoch and of the last epoch, with the
    epoch index as the step (as Keras's TensorBoard callback uses). Score (and
    weight) histograms are not written here: Keras's TensorBoard callback with
    ``histogram_freq=1`` already writes one per variable, scores included.
    Without TensorFlow (a JAX-only machine) the callback does nothing.

    Args:
      log_dir: the TensorBoard folder (the run's ``tensorboard/``).
      every_n_epochs: how often to draw the masks.
      max_side: larger images are shrunk to this many pixels per side.
    """

    def __init__(self, log_dir, every_n_epochs=1, max_side=2048):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.log_dir = log_dir
        self.every_n_epochs = int(every_n_epochs)
        self.max_side = int(max_side)
        self._writer = None
        self._last_epoch = None
        self._last_written = None

    def on_train_begin(self, logs=None):
        if not tensorboard_available():
            warnings.warn("TensorFlow/TensorBoard missing: mask images are not written")
            return
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "masks"))

    def write_masks(self, step):
        """Draws every masked layer's current mask at `step`."""
        if self._writer is None:
            return
        import tensorflow as tf

        from tf_supermask.layers import masked_layers

        with self._writer.as_default():
            for layer in masked_layers(self.model):
                if not layer.is_masked:
                    continue
                image = mask_image(keras.ops.convert_to_numpy(layer.get_mask()), self.max_side)
                tf.summary.image(f"mask/{layer.kernel_variable.path}", image[np.newaxis],
                                 step=step, max_outputs=1)
        self._writer.flush()
        self._last_written = step

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if (epoch + 1) % self.every_n_epochs == 0:
            self.write_masks(epoch)

    def on_train_end(self, logs=None):
        if self._last_epoch is not None and self._last_written != self._last_epoch:
            self.write_masks(self._last_epoch)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunBackup(keras.callbacks.Callback):
    """End-of-epoch backup of a run that survives a kill at any moment (replaces Keras's
    ``BackupAndRestore``).

    Each epoch writes the weights (with the optimizer's state) to
    ``epoch_<n>.weights.h5``, then commits ``state.json``: the epochs done, that
    file's name and SHA-256, the per-epoch history so far, the training seconds so
    far and the states of the model's seed generators (Bernoulli masks sample with
    them; ``save_weights`` leaves them out). Both go through a temporary name and a
    rename, and ``state.json`` is written last, so a kill at any point leaves the
    previous backup or the new one, whole. The backup is kept when training ends;
    the trainer discards it once the run's final files are written.

    An epoch whose loss is not finite is not backed up (a diverged run resumes from
    the last good epoch).

    Args:
      backup_dir: the folder (``<run_dir>/checkpoints/backup``).
    """

    STATE = "state.json"

    def __init__(self, backup_dir):
        super().__init__()
        self.backup_dir = backup_dir
        self.epochs_done = 0
        self.history = {}
        self.train_seconds = 0.0
        self._seconds_before = 0.0
        self._start = None
        self._epoch = 0
        self._kill_batch = None

    # Restoring.

    def _damaged(self, problem):
        warnings.warn(f"discarding damaged resume checkpoint in {self.backup_dir} ({problem}); "
                      "the run restarts from its first epoch")
        self.discard()
        return 0

    def restore(self, model):
        """Loads the backup into `model` (built and compiled) if there is a sound one.

        A damaged backup (unreadable or incomplete ``state.json``, missing weights,
        weights that do not match their checksum) is removed with a warning.

        Returns:
          The number of epochs done (0: start from the first epoch).
        """
        import hashlib
        import json

        state_path = os.path.join(self.backup_dir, self.STATE)
        if not os.path.isdir(self.backup_dir):
            return 0
        if not os.path.exists(state_path):
            if any(name.endswith(".h5") for name in os.listdir(self.backup_dir)):
                return self._damaged(f"no {self.STATE}")
            return 0
        try:
            with open(state_path) as stream:
                state = json.load(stream)
            epochs_done = int(state["epoch"])
            weights_path = os.path.join(self.backup_dir, os.path.basename(state["weights"]))
            history = {str(key): [float(value) for value in values]
                       for key, values in state["history"].items()}
            train_seconds = float(state["train_seconds"])
            seeds = [(str(path), list(value)) for path, value in state["seed_states"]]
            expected_hash = str(state["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            return self._damaged(f"{self.STATE} unreadable: {type(error).__name__}: {error}")
        if not os.path.exists(weights_path):
            return self._damaged(f"{os.path.basename(weights_path)} is missing")
        with open(weights_path, "rb") as stream:
            if hashlib.sha256(stream.read()).hexdigest() != expected_hash:
                return self._damaged(f"{os.path.basename(weights_path)} does not match its "
                                     "checksum")
        seed_variables = seed_state_variables(model)
        # Paths are not compared: Keras numbers seed generators per process.
        if [np.shape(value) for _, value in seeds] != [tuple(variable.shape)
                                                      for variable in seed_variables]:
            return self._damaged("its seed generators differ from the model's")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(weights_path)
        for variable, (_, value) in zip(seed_variables, seeds):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        self.epochs_done, self.history, self.train_seconds = epochs_done, history, train_seconds
        return epochs_done

    def discard(self):
        """Removes the backup (once the run's final files are safely written)."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)

    # Saving.

    def on_train_begin(self, logs=None):
        self._start = time.time()
        self._seconds_before = self.train_seconds
        kill_at = os.environ.get(run_dir_lib.KILL_ENV, "")
        if kill_at.startswith("batch:"):  # test hook: "batch:<epoch>:<batch>"
            self._kill_batch = kill_at

    def on_train_batch_end(self, batch, logs=None):
        if self._kill_batch is not None:
            run_dir_lib.kill_point(f"batch:{self._epoch}:{batch}")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key, value in logs.items():
            if "/" not in key:
                try:
                    self.history.setdefault(key, []).append(float(value))
                except (TypeError, ValueError):
                    continue
        self.train_seconds = self._seconds_before + time.time() - self._start
        if not math.isfinite(float(logs.get("loss", 0.0))):
            return
        self.save(epoch + 1)

    def save(self, epochs_done):
        """Backs up the model as it is after `epochs_done` epochs."""
        import hashlib

        name = f"epoch_{epochs_done}.weights.h5"
        weights_path = os.path.join(self.backup_dir, name)
        with run_dir_lib.atomic_file(weights_path) as temp_path:
            self.model.save_weights(temp_path, overwrite=True)
            with open(temp_path, "rb") as stream:
                digest = hashlib.sha256(stream.read()).hexdigest()
        run_dir_lib.kill_point(f"backup_weights:{epochs_done}")
        state = {"epoch": epochs_done, "weights": name, "sha256": digest,
                 "history": self.history, "train_seconds": self.train_seconds,
                 "seed_states": [[variable.path,
                                  np.asarray(keras.ops.convert_to_numpy(variable)).tolist()]
                                 for variable in seed_state_variables(self.model)]}
        run_dir_lib.write_json(os.path.join(self.backup_dir, self.STATE), state)
        self.epochs_done = epochs_done
        run_dir_lib.kill_point(f"backup:{epochs_done}")
        for old in os.listdir(self.backup_dir):
            if old != name and old.endswith(".weights.h5") and not old.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.backup_dir, old))


def seed_state_variables(model):
    """The model's state variables that ``save_weights`` leaves out (its seed generators'
    states), in a fixed order."""
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.non_trainable_variables if id(variable) not in weights]


class DivergedError(FloatingPointError):
    """Training produced a loss that is not finite."""


def check_finite_history(history):
    """Raises DivergedError if any epoch's loss in `history` is NaN or infinite."""
    for epoch, loss in enumerate(history.get("loss", [])):
        if not math.isfinite(loss):
            raise DivergedError(f"training diverged: the loss became {loss} in epoch {epoch + 1}; "
                                "no results were written (try a lower --lr)")
