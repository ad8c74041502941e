"""Training throughput of each model in each mask mode (images per second).

Two figures per model and mode:
- the bare step: one fixed batch served over and over, so the figure is the
  training step itself (forward, backward, mask computation, optimizer update);
- whole epochs: `fit` over a synthetic uint8 training set through the run's
  input pipeline (shuffling, CIFAR augmentation for 32x32 colour inputs,
  normalisation; host NumPy or the device pipeline), which is what a user
  waits for.
Both come with the masked/dense ratio of the same model.
"""

import contextlib
import time

import keras
import numpy as np

from tf_supermask import choices
from tf_supermask.data.device import batches_class
from tf_supermask.layers import fused as fused_lib
from tf_supermask.layers import masks as masks_lib
from tf_supermask.models import MODELS, MaskOptions, build_model
from tf_supermask.training.config import TrainConfig
from tf_supermask.training.trainer import compile_model

CIFAR_STATS = ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))


class _RepeatedBatch(keras.utils.PyDataset):
    def __init__(self, x, y, steps):
        super().__init__()
        self.x, self.y, self.steps = x, y, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        return self.x, self.y


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


USER_IMAGE_SIZE = 64  # default side of the square RGB inputs of a user's model


def is_user_model(model_name):
    """Whether a model name is a user's model in one of --model's forms
    (``keras.applications.<Name>``, ``package.module:function``, a ``.keras`` file,
    ``python:<name>``; ``tf_supermask.models.user``) rather than a registered model.

    Raises:
      ValueError: the name is neither (the message lists the forms).
    """
    return choices.model_kind(model_name) != "registered"


def input_shape_for(model_name, image_size=0):
    """MNIST-shaped inputs for fc, CIFAR-shaped for the other registered models;
    ``image_size`` x ``image_size`` x 3 (default 64) for a user's model such as
    ``keras.applications.ResNet50`` (``image_size`` also overrides the side of a
    registered image model)."""
    if is_user_model(model_name):
        side = image_size or USER_IMAGE_SIZE
        return (side, side, 3)
    if model_name == "fc":
        return (28, 28, 1)
    return (image_size, image_size, 3) if image_size else (32, 32, 3)


def check_names(models, masks):
    """Raises a ValueError naming the choices for an unknown model or mask mode."""
    for name in models:
        kind = choices.model_kind(name)
        if kind == "registered":
            MODELS.get(name)
        elif kind == "application" and not callable(
                getattr(keras.applications, name[len(choices.APPLICATIONS_PREFIX):], None)):
            raise ValueError(f"keras.applications has no model {name!r} (e.g. "
                             "keras.applications.ResNet50, keras.applications.MobileNetV2)")
    for name in masks:
        masks_lib.MASK_MODES.get("dense" if name == CONTROL else name)


@contextlib.contextmanager
def _precision(mixed_precision):
    """The global dtype policy of a run with --mixed_precision, restored afterwards."""
    previous = keras.mixed_precision.global_policy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy(
            "mixed_float16" if keras.backend.backend() == "tensorflow" else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _compiled(model_name, mask, k, jit_compile, seed, steps, steps_per_execution=1,
              topk_method="auto", image_size=0):
    keras.utils.set_random_seed(seed)
    shape = input_shape_for(model_name, image_size)
    options = MaskOptions(mask=mask, k=k, seed=seed, topk_method=topk_method)
    if is_user_model(model_name) and mask == "dense":
        # The dense original, as the user wrote it; the masked modes are what a run
        # trains: build_model's sparsify(model, ...) with the run's MaskOptions.
        from tf_supermask.models.user import user_model

        model = user_model(model_name, shape, 10)
    else:
        model = build_model(model_name, shape, 10, options)
    compile_model(model, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                                     jit_compile=jit_compile,
                                     steps_per_execution=steps_per_execution), steps)
    return model


def _timed_epoch(model, data):
    timer = _EpochTimer()
    model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return timer.seconds[0]


def epoch_batches(model_name, batch_size, steps, input_pipeline="host", seed=0, image_size=0):
    """A synthetic uint8 training set of `steps` batches behind the run's input pipeline."""
    shape = input_shape_for(model_name, image_size)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(batch_size * steps,) + shape, dtype=np.uint8)
    y = rng.integers(0, 10, size=(batch_size * steps,))
    cifar = shape == (32, 32, 3)
    return batches_class(input_pipeline)(x, y, batch_size, shuffle=True, augment=cifar, seed=seed,
                                         normalization=CIFAR_STATS if cifar else (0.286, 0.353))


CONTROL = "dense_control"  # a second dense model, timed like the others: the noise floor


def measure_model(model_name, masks, batch_size=128, steps=0, repeats=3, k=0.5,
                  jit_compile="auto", seed=0, target_seconds=2.0, epochs=True,
                  input_pipeline="host", steps_per_execution=1, topk_method="auto",
                  image_size=0):
    """Best step time and epoch time per step (seconds) of each mask mode of one model.

    All modes are compiled and warmed up first, then timed in `repeats`
    interleaved rounds, so that drift in the machine's speed hits every mode
    alike; each mode keeps its fastest round. `steps=0` picks the number of
    steps per timed round that lasts about `target_seconds`.

    A mask named CONTROL is a second dense model: its ratio to dense shows how
    far two identical models' timings differ on this machine.

    Returns:
      {mask: {"step": seconds per bare step, "epoch": seconds per step of whole
      epochs (None unless `epochs`)}}.
    """
    rng = np.random.default_rng(seed)
    shape = input_shape_for(model_name, image_size)
    x = rng.normal(size=(batch_size,) + shape).astype("float32")
    y = rng.integers(0, 10, size=(batch_size,))
    warmup = _RepeatedBatch(x, y, 3)
    models, step_seconds = {}, {}
    for mask in masks:
        models[mask] = _compiled(model_name, "dense" if mask == CONTROL else mask, k, jit_compile,
                                 seed, max(steps, 1), steps_per_execution, topk_method,
                                 image_size)
        _timed_epoch(models[mask], warmup)
        step_seconds[mask] = _timed_epoch(models[mask], warmup) / 3
    if not steps:
        steps = max(5, int(target_seconds / max(step_seconds.values())))
    data = _RepeatedBatch(x, y, steps)
    epoch_data = epoch_batches(model_name, batch_size, steps, input_pipeline, seed,
                               image_size) if epochs else None
    if epochs:
        for mask in masks:  # compiles for the pipeline's label dtype, fills its caches
            _timed_epoch(models[mask], epoch_data)
    best = {mask: {"step": float("inf"), "epoch": float("inf") if epochs else None}
            for mask in masks}
    for _ in range(repeats):
        for mask in masks:
            best[mask]["step"] = min(best[mask]["step"], _timed_epoch(models[mask], data) / steps)
            if epochs:
                best[mask]["epoch"] = min(best[mask]["epoch"],
                                          _timed_epoch(models[mask], epoch_data) / steps)
    keras.backend.clear_session()
    return best


def run_benchmark(models, masks, batch_size=128, steps=0, repeats=3, k=0.5, jit_compile="auto",
                  log=print, epochs=True, input_pipeline="host", mixed_precision=False,
                  steps_per_execution=1, topk_method="auto", fused=True, control=False,
                  image_size=0):
    """Records per (model, mask): bare-step and whole-epoch images/s with masked/dense ratios.

    Each record has model, mask, batch_size, images_per_s, step_ms and
    ratio_to_dense (the bare step), epoch_images_per_s and epoch_ratio_to_dense
    (whole epochs through the input pipeline; None without `epochs`), and the
    settings. A ratio is the masked time over the dense time of the same model
    (1.0 for dense itself; None when dense was not measured). `fused=False` turns
    off the fused CPU mask kernels (``layers/fused.py``); records say whether they ran.
    `control` adds a second dense model (mask CONTROL), timed in the same rounds:
    its ratio to dense is the noise floor of the other ratios.

    A model is a registered name or a user's model in one of --model's forms
    (``keras.applications.ResNet50``, ``package.module:function``, a ``.keras`` file):
    built on ``image_size`` x ``image_size`` x 3 inputs (0: 64) and 10 classes
    (applications with ``weights=None``), timed as the dense original ("dense") and as
    ``sparsify``'s masked copy (what ``build_model`` gives a run) in the other modes.
    """
    check_names(models, masks)
    if control and "dense" in masks:
        masks = list(masks) + [CONTROL]
    if topk_method != "auto":
        masks_lib.TOPK_METHODS.get(topk_method)
    records = []
    with fused_lib.switched(fused):
        fused_ran = fused and fused_lib.available(keras.ops.zeros(()))
        with _precision(mixed_precision):
            for model_name in models:
                best = measure_model(model_name, masks, batch_size, steps, repeats, k,
                                     jit_compile, epochs=epochs, input_pipeline=input_pipeline,
                                     steps_per_execution=steps_per_execution,
                                     topk_method=topk_method, image_size=image_size)
                for mask in masks:
                    records.append(_record(model_name, mask, best, batch_size, log, {
                        "input_shape": list(input_shape_for(model_name, image_size)),
                        "input_pipeline": input_pipeline, "mixed_precision": mixed_precision,
                        "steps_per_execution": steps_per_execution, "topk_method": topk_method,
                        "k": k, "fused": fused_ran}))
    return records


def _record(model_name, mask, best, batch_size, log, settings):
    def ratio(kind):
        if "dense" not in best or best[mask][kind] is None:
            return None
        return best[mask][kind] / best["dense"][kind]

    step, epoch = best[mask]["step"], best[mask]["epoch"]
    record = {"model": model_name, "mask": mask, "batch_size": batch_size,
              "images_per_s": batch_size / step, "step_ms": 1000.0 * step,
              "ratio_to_dense": ratio("step"),
              "epoch_images_per_s": None if epoch is None else batch_size / epoch,
              "epoch_ratio_to_dense": ratio("epoch"),
              "backend": keras.backend.backend(), **settings}
    shown = "" if record["ratio_to_dense"] is None else f"  x{record['ratio_to_dense']:.3f} dense"
    line = (f"{model_name.replace(choices.APPLICATIONS_PREFIX, ''):>8} {mask:>9}: {record['images_per_s']:10.1f} images/s  "
            f"{record['step_ms']:8.2f} ms/step{shown}")
    if epoch is not None:
        line += f"  | epochs {record['epoch_images_per_s']:10.1f} images/s"
        if record["epoch_ratio_to_dense"] is not None:
            line += f"  x{record['epoch_ratio_to_dense']:.3f} dense"
    log(line)
    return record
