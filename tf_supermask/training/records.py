"""What a run records beyond Keras's own logs: the learning rate and (with a held-out
validation split) the test accuracy of every epoch, the names of the per-epoch
evaluation (``test_`` when the test set is evaluated, ``val_`` for a held-out split),
the best epoch, the banner's description of the mask, the short epoch line printed
on the terminal, the few lines every binary prints even at ``--verbose=0``, and how
chatty Keras's progress output is."""

import csv
import io
import os
import sys

import keras

from tf_supermask.files import write_atomic
from tf_supermask.training.optim import current_learning_rate

# Written to results.json when the test set is evaluated each epoch in place of a
# validation split (--validation_size=0).
TEST_AS_VALIDATION_NOTE = ("no held-out validation split (--validation_size=0): the test set "
                           "was evaluated each epoch, so best_epoch and best_epoch_test_accuracy "
                           "are chosen on the test set (optimistic)")


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``lr``, the learning rate of the epoch's first step, to each epoch's logs
    (place it before CSVLogger and TensorBoard so that they record it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._rate = current_learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self._rate


# Keras names the per-epoch evaluation "val_<metric>"; when it is the test set, the logs
# (and so metrics.csv, TensorBoard and the history) say "test_<metric>".
VALIDATION_PREFIX, TEST_PREFIX = "val_", "test_"


class NameTestEvaluation(keras.callbacks.Callback):
    """Renames Keras's ``val_<metric>`` to ``test_<metric>`` in each epoch's logs when the
    per-epoch evaluation set is the test set (no held-out validation split), so that
    metrics.csv, TensorBoard and the history name it for what it is.

    Place it first, before every callback that reads or records the logs.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            rename_test_keys(logs)


def rename_test_keys(values):
    """Renames the ``val_<metric>`` keys of dict `values` to ``test_<metric>`` in place
    (the per-epoch evaluation was on the test set); returns `values`."""
    for key in [key for key in values if key.startswith(VALIDATION_PREFIX)]:
        values[TEST_PREFIX + key[len(VALIDATION_PREFIX):]] = values.pop(key)
    return values


def per_epoch_evaluation(history, metric, validation_is_test):
    """The per-epoch values of `metric` ("accuracy", "loss") on the set evaluated each
    epoch: ``val_<metric>`` with a held-out split, ``test_<metric>`` without one (runs
    written before the test set was named so called it ``val_<metric>`` too)."""
    if validation_is_test:
        values = history.get(TEST_PREFIX + metric)
        if values:
            return list(values)
    return list(history.get(VALIDATION_PREFIX + metric) or [])


class TestAccuracyLogger(keras.callbacks.Callback):
    """Adds ``test_accuracy`` and ``test_loss`` to each epoch's logs by evaluating
    `batches`; used only when validation is a held-out split, so that the test accuracy
    at the best validation epoch is known."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        result = self.model.evaluate(self.batches, verbose=0, return_dict=True)
        logs["test_accuracy"] = float(result["accuracy"])
        logs["test_loss"] = float(result["loss"])


def best_epoch_results(history, epochs, validation_is_test):
    """The best epoch by validation accuracy and what it scored.

    Args:
      history: {metric: per-epoch values} of the epochs trained, the last being
        epoch ``epochs - 1`` (epochs count from 0, as in metrics.csv and TensorBoard).
      epochs: the run's number of epochs.
      validation_is_test: the test set stood in for validation (its per-epoch accuracy
        is ``test_accuracy``; ``val_accuracy`` in runs written before it was renamed).

    Returns:
      With a held-out split: ``best_epoch``, ``best_val_accuracy`` and
      ``test_accuracy_at_best_epoch``. Without one: ``best_epoch``,
      ``best_epoch_test_accuracy`` and ``validation_note`` saying that both were
      chosen on the test set. {} when no epoch was validated.
    """
    values = per_epoch_evaluation(history, "accuracy", validation_is_test)
    if not values:
        return {}
    index = max(range(len(values)), key=lambda i: (values[i], -i))  # first of the best
    epoch = epochs - len(values) + index
    if validation_is_test:
        return {"best_epoch": epoch, "best_epoch_test_accuracy": float(values[index]),
                "validation_note": TEST_AS_VALIDATION_NOTE}
    results = {"best_epoch": epoch, "best_val_accuracy": float(values[index])}
    tests = history.get("test_accuracy") or []
    if len(tests) == len(values):
        results["test_accuracy_at_best_epoch"] = float(tests[index])
    return results


def mask_summary(mask, k, model):
    """What governs the run's mask (--mask, --k), for its banner: k for top-k, the weights
    remaining for a given (fixed) mask, e.g. a lottery level's or a prune-at-init method's."""
    if mask == "topk":
        return f"mask=topk k={k}"
    if mask == "bernoulli":
        return "mask=bernoulli (learned)"
    from tf_supermask.layers import weights_remaining

    remaining, _ = weights_remaining(model)
    if mask == "dense" and remaining >= 1.0:
        return "dense"
    return (f"mask={mask}, {100 * remaining:.3g}% of weights remaining "
            f"(sparsity {100 * (1 - remaining):.3g}%)")


# What the epoch line on the terminal shows, in this order (metrics.csv and TensorBoard keep
# every figure, the per-layer weights remaining and the evaluation losses included).
EPOCH_LINE_KEYS = ("loss", "accuracy", "val_accuracy", "test_accuracy", "lr",
                   "weights_remaining")


class ShortEpochLine(keras.callbacks.ProgbarLogger):
    """Keras's progress output (the bar, or one line per epoch with ``--verbose=2``) whose
    epoch-end line holds only ``EPOCH_LINE_KEYS``: the time, loss, accuracy, the
    validation and/or test accuracy, the learning rate and the overall weights
    remaining, not every per-layer figure (1,300 characters a line on resnet20).

    Given to ``fit`` among its callbacks, it takes the place of the ProgbarLogger Keras
    would add.
    """

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        super().on_epoch_end(epoch, {key: logs[key] for key in EPOCH_LINE_KEYS if key in logs})


def say(line):
    """Prints one of the few lines a binary prints at every ``--verbose`` (what started,
    each level, round, arm or stage as it ends, the result), flushed at once so that a
    log file or pipe shows it while the run goes on."""
    print(line, flush=True)


def fit_verbosity(verbose, stream=None):
    """Keras's ``verbose`` for ``--verbose``: the progress bar (1, or 3 for debug) only on a
    terminal; elsewhere one line per epoch (2), so logs hold no carriage returns."""
    if verbose in (1, 3):
        stream = sys.stdout if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return 1 if isatty is not None and isatty() else 2
    return verbose


class MetricsCSV(keras.callbacks.Callback):
    """``metrics.csv``: one row per epoch, ``epoch`` then the logged metrics (sorted by
    name), as Keras's CSVLogger writes it, but the whole file is rewritten through a
    temporary file at each epoch end: a killed job never leaves a half-written or empty
    file, and every line ends in "\\n" (also after a resume, which keeps the rows of the
    epochs already done, see ``trainer.truncate_metrics``)."""

    def __init__(self, path, rename=None):
        super().__init__()
        self.path = path
        self.rename = rename
        self.keys = None
        self.rows = []

    def on_train_begin(self, logs=None):
        """Reads the rows of the epochs already done (a resumed run); `rename` (e.g.
        ``rename_test_keys``) renames the columns of a file written by an older version."""
        self.keys, self.rows = None, []
        if os.path.exists(self.path):
            with open(self.path, newline="") as stream:
                reader = csv.DictReader(stream)
                self.keys = [key for key in reader.fieldnames or () if key != "epoch"] or None
                self.rows = [row for row in reader if row.get("epoch", "").isdigit()]
            if self.rename is not None and self.keys:
                self.keys = sorted(self.rename(dict.fromkeys(self.keys)))
                self.rows = [self.rename(dict(row)) for row in self.rows]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        self.rows.append({"epoch": epoch, **{key: _csv_value(logs.get(key, "NA"))
                                             for key in self.keys}})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["epoch"] + self.keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, text.getvalue())


def _csv_value(value):
    """A logged value as Keras's CSVLogger writes it (floats as Python floats)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
