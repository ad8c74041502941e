"""Training throughput of each model in each mask mode (images per second).

The input is one fixed batch served over and over, so the figure is the
training step itself (forward, backward, mask computation, optimizer update),
not the input pipeline.
"""

import time

import keras
import numpy as np

from tf_supermask.models import MaskOptions, build_model
from tf_supermask.training.config import TrainConfig
from tf_supermask.training.trainer import compile_model


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


def input_shape_for(model_name):
    """MNIST-shaped inputs for fc, CIFAR-shaped for the rest."""
    return (28, 28, 1) if model_name == "fc" else (32, 32, 3)


def _compiled(model_name, mask, k, jit_compile, seed, steps):
    keras.utils.set_random_seed(seed)
    shape = input_shape_for(model_name)
    model = build_model(model_name, shape, 10, MaskOptions(mask=mask, k=k, seed=seed))
    compile_model(model, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                                     jit_compile=jit_compile), steps)
    return model


def _timed_epoch(model, data):
    timer = _EpochTimer()
    model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return timer.seconds[0]


def measure_model(model_name, masks, batch_size=128, steps=0, repeats=3, k=0.5,
                  jit_compile="auto", seed=0, target_seconds=2.0):
    """Best step time (seconds) of each mask mode of one model.

    All modes are compiled and warmed up first, then timed in `repeats`
    interleaved rounds, so that drift in the machine's speed hits every mode
    alike; each mode keeps its fastest round. `steps=0` picks the number of
    steps per timed epoch that lasts about `target_seconds`.
    """
    rng = np.random.default_rng(seed)
    shape = input_shape_for(model_name)
    x = rng.normal(size=(batch_size,) + shape).astype("float32")
    y = rng.integers(0, 10, size=(batch_size,))
    warmup = _RepeatedBatch(x, y, 3)
    models, step_seconds = {}, {}
    for mask in masks:
        models[mask] = _compiled(model_name, mask, k, jit_compile, seed, max(steps, 1))
        _timed_epoch(models[mask], warmup)
        step_seconds[mask] = _timed_epoch(models[mask], warmup) / 3
    if not steps:
        steps = max(5, int(target_seconds / max(step_seconds.values())))
    data = _RepeatedBatch(x, y, steps)
    best = {mask: float("inf") for mask in masks}
    for _ in range(repeats):
        for mask in masks:
            best[mask] = min(best[mask], _timed_epoch(models[mask], data) / steps)
    keras.backend.clear_session()
    return best


def run_benchmark(models, masks, batch_size=128, steps=0, repeats=3, k=0.5, jit_compile="auto",
                  log=print):
    """Records {model, mask, images_per_s, step_ms, ratio_to_dense} for every pair.

    `ratio_to_dense` is the masked step time over the dense step time of the
    same model (1.0 for dense itself; None when dense was not measured).
    """
    records = []
    for model_name in models:
        best = measure_model(model_name, masks, batch_size, steps, repeats, k, jit_compile)
        for mask in masks:
            ratio = best[mask] / best["dense"] if "dense" in best else None
            record = {"model": model_name, "mask": mask, "batch_size": batch_size,
                      "images_per_s": batch_size / best[mask], "step_ms": 1000.0 * best[mask],
                      "ratio_to_dense": ratio, "backend": keras.backend.backend()}
            records.append(record)
            shown = "" if ratio is None else f"  x{ratio:.3f} dense"
            log(f"{model_name:>8} {mask:>9}: {record['images_per_s']:10.1f} images/s  "
                f"{record['step_ms']:8.2f} ms/step{shown}")
    return records
