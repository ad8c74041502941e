"""Distribution strategies by name (TensorFlow backend); other backends run on one device.

Multi-worker training (``--strategy=multi_worker``)
---------------------------------------------------
Every worker host runs the same command with its own ``TF_CONFIG``, e.g. on
the first of two hosts::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
      tf-supermask-train --flagfile=flags/edgepopup_conv4.cfg --strategy=multi_worker

and ``"index": 1`` on the second. All workers run the whole program in
lockstep: every ``fit``/``evaluate`` step is a collective over all of them,
so they must make the same calls with the same number of steps.

How the training data reaches the workers. ``ArrayBatches`` is a Keras
``PyDataset``; Keras 3's TensorFlow trainer wraps it in
``tf.data.Dataset.from_generator`` and hands that to
``strategy.experimental_distribute_dataset``. A generator has no files to
shard, so tf.distribute falls back to data sharding: each worker runs the
whole generator and, because the generator's batch size cannot be read from
the graph, splits every batch it yields into ``num_replicas_in_sync`` pieces
(the "legacy rebatch") and keeps the pieces of its own replicas. A batch of
``--batch_size`` examples is therefore the *global* batch of one step,
exactly as on one device, and each worker computes its share of it. This is
only correct because every worker's generator yields the same batches in the
same order: ``ArrayBatches`` draws its example order from ``(seed, epoch)``
and its augmentation from ``(seed, epoch, batch index)``, and the trainer
passes ``shuffle=False`` to ``fit`` (Keras's own batch shuffle uses Python's
unseeded ``random`` and would give each worker different global batches
without any error). With these, training on N workers computes the same
updates as training on one device, up to the order of floating-point sums;
``tests/test_multiworker.py`` checks this. The cost is that every worker
reads and augments the whole data set and discards the rest of each batch.

Both ways to lose that premise are closed in ``ArrayBatches``: it prepares batches
ahead in its own threads (``--data_workers``), keyed by epoch and index, so Keras's
enqueuer, which carried prefetched batches over into the next epoch, is never
used; and it caps epochs itself (``--steps_per_epoch``), so ``fit`` never carries
one pass over the batches across epochs.

A last, short batch of an epoch is split as evenly as it goes (pieces may
differ by one example, or be empty); each replica's loss is its own mean, so
such a step weighs the examples slightly unequally, as under
``MirroredStrategy``. Metrics are kept per replica and averaged over replicas
at the end, which equals the global value when the pieces are equally large.

Keras 3 (checked with 3.15.1 and TensorFlow 2.21) cannot run ``fit`` under a
``MultiWorkerMirroredStrategy`` of more than one worker as shipped (see
keras-team/keras#20585); ``adapt_model`` works around the two failures (see
its docstring).

Only the chief (task type ``chief``, or worker 0 when there is none) writes
the run directory; the others write the same files to a task-specific
temporary folder, deleted when the run ends (``task_run_dir``).
"""

import contextlib
import hashlib
import os
import tempfile

import keras

STRATEGIES = ("mirrored", "one_device", "multi_worker")

_multi_worker_strategy = None


def make_strategy(name):
    """A tf.distribute strategy under the TensorFlow backend, else None.

    Args:
      name: "mirrored" (all local GPUs, or all logical CPUs when there is
        no GPU; over a single device it is "one_device"), "one_device" (the
        first GPU, or the CPU), "multi_worker" (MultiWorkerMirroredStrategy from
        TF_CONFIG, made once per process and then reused; see the module
        docstring). A MultiWorkerMirroredStrategy must be made before any
        TensorFlow op runs in the process ("Collective ops must be configured
        at program startup").

    Raises:
      ValueError: an unknown name, or "multi_worker" on a backend other than
        TensorFlow (each process would train alone and all would write the
        same run directory).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    if keras.backend.backend() != "tensorflow":
        if name == "multi_worker":
            raise ValueError("--strategy=multi_worker needs the TensorFlow backend (it uses "
                             f"tf.distribute); KERAS_BACKEND is {keras.backend.backend()!r}")
        return None
    import tensorflow as tf

    if name == "multi_worker":
        # One per process: a second one would configure collective ops again, which
        # TensorFlow refuses once any op has run (several runs in one process, as in
        # tf-supermask-lottery, share it).
        global _multi_worker_strategy
        if _multi_worker_strategy is None:
            _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return _multi_worker_strategy
    # Listing devices initializes TensorFlow's runtime: only after multi_worker's turn.
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" and len(gpus or tf.config.list_logical_devices("CPU")) > 1:
        return tf.distribute.MirroredStrategy()
    # "mirrored" over one device (one GPU, or one CPU) is one_device: the same computation
    # without the cross-device machinery (measured 7.4 s instead of 11 s per fc epoch on CPU).
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def strategy_scope(strategy):
    """`strategy.scope()`, or a no-op context where there is no strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy):
    return strategy.num_replicas_in_sync if strategy is not None else 1


def is_multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy over more than one task."""
    if strategy is None:
        return False
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec()
    return sum(cluster.num_tasks(job) for job in cluster.jobs) > 1


def is_chief(strategy):
    """Whether this process writes the run directory (always, unless multi-worker).

    The chief is the task of type "chief", or worker 0 in a cluster without
    one (TensorFlow's convention).
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().jobs)


def task_run_dir(strategy, run_dir):
    """Where this process writes the run: `run_dir` on the chief, else a temporary folder.

    A non-chief worker computes the same model as the chief, so what it would
    write is a copy; it goes to ``<temp>/tf_supermask_workers/<hash of
    run_dir>_<task type><task index>``, a name that stays the same for the same
    run, so that a killed multi-worker run can resume on every worker from its
    own backup (each worker backs up at the end of every epoch; workers killed
    between two of these backups would resume at different epochs and stall).
    The caller deletes the folder when the run has finished. A folder already
    inside a worker's temporary folder is returned as it is, so a binary that
    redirects its whole experiment folder can call train() on folders inside it.
    """
    if is_chief(strategy):
        return run_dir
    root = os.path.join(tempfile.gettempdir(), "tf_supermask_workers")
    if os.path.abspath(run_dir).startswith(root + os.sep):
        return run_dir
    resolver = strategy.cluster_resolver
    key = hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:12]
    return os.path.join(root, f"{key}_{resolver.task_type}{resolver.task_id}")


def adapt_model(model, strategy):
    """Lets `model.fit`/`evaluate` run under a multi-worker strategy; otherwise does nothing.

    Keras 3.15's TensorFlow trainer fails in two places when the
    MultiWorkerMirroredStrategy spans more than one worker:

    1. Before the first step, ``_maybe_symbolic_build`` takes the first
       distributed batch and calls ``strategy.reduce("MEAN", batch, axis=None)``
       on the whole (x, y) tuple, only to learn its shapes.
       MirroredStrategy maps the reduction over the tuple; the multi-worker
       strategy passes the tuple to its collective, which fails with
       "Attempt to convert a value (PerReplica...) with an unsupported type".
       Here the shapes come from this worker's first local replica instead
       (no collective is needed to know a shape).
    2. After every step, ``reduce_per_replica`` averages the logs with
       ``strategy.reduce("MEAN", value, axis=0)`` when the strategy is
       multi-worker, and the logs are scalars: "Invalid reduction dimension 0
       for input with 0 dimensions". Here the train and test steps return
       each scalar as a vector of one element, so the mean over axis 0 (and
       over all replicas) is the scalar Keras meant to compute.

    Both changes are made on this model object only; Keras itself is not
    modified.
    """
    if not is_multi_worker(strategy):
        return model
    import tensorflow as tf
    from keras import ops, tree

    symbolic_build = model._maybe_symbolic_build

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, distributed in iterator:
                batch = next(distributed)
                break
            data_batch = tree.map_structure(
                lambda value: (strategy.experimental_local_results(value)[0]
                               if isinstance(value, tf.distribute.DistributedValues) else value),
                batch)
        return symbolic_build(data_batch=data_batch)

    def scalars_as_vectors(step):
        def wrapped(data):
            return tree.map_structure(
                lambda value: ops.reshape(value, (1,)) if len(value.shape) == 0 else value,
                step(data))

        return wrapped

    model._maybe_symbolic_build = maybe_symbolic_build
    model.train_step = scalars_as_vectors(model.train_step)
    model.test_step = scalars_as_vectors(model.test_step)
    return model
