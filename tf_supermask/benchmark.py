"""Training throughput of each model in each mask mode (images per second).

The input is one fixed batch served over and over, so the figure is the
training step itself (forward, backward, mask computation, optimizer update),
not the input pipeline.
"""

import dataclasses
import statistics
import time

import keras
import numpy as np

from tf_supermask.models import MaskOptions, build_model
from tf_supermask.training.trainer import compile_model


@dataclasses.dataclass
class BenchConfig:
    """The few TrainConfig fields the compiled step depends on."""

    optimizer: str = "sgd"
    lr: float = 0.1
    lr_schedule: str = "constant"
    lr_milestones: str = ""
    lr_gamma: float = 0.1
    warmup_epochs: int = 0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    epochs: int = 1
    jit_compile: str = "auto"

    def milestones(self):
        return []


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


def measure(model_name, mask, batch_size=128, steps=20, repeats=3, k=0.5, jit_compile="auto",
            seed=0):
    """Median images/s of `repeats` timed epochs of `steps` steps, after one warm-up epoch."""
    keras.utils.set_random_seed(seed)
    shape = input_shape_for(model_name)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size,) + shape).astype("float32")
    y = rng.integers(0, 10, size=(batch_size,))
    model = build_model(model_name, shape, 10, MaskOptions(mask=mask, k=k, seed=seed))
    compile_model(model, BenchConfig(jit_compile=jit_compile), steps)
    timer = _EpochTimer()
    model.fit(_RepeatedBatch(x, y, steps), epochs=repeats + 1, verbose=0, callbacks=[timer])
    keras.backend.clear_session()
    return batch_size * steps / statistics.median(timer.seconds[1:])


def run_benchmark(models, masks, batch_size=128, steps=20, repeats=3, k=0.5, jit_compile="auto",
                  log=print):
    """Records {model, mask, images_per_s, step_ms, ratio_to_dense} for every pair.

    `ratio_to_dense` is the masked step time over the dense step time of the
    same model (1.0 for dense itself; None when dense was not measured).
    """
    records = []
    for model_name in models:
        dense_rate = None
        ordered = sorted(masks, key=lambda name: name != "dense")  # dense first
        for mask in ordered:
            rate = measure(model_name, mask, batch_size, steps, repeats, k, jit_compile)
            if mask == "dense":
                dense_rate = rate
            record = {"model": model_name, "mask": mask, "batch_size": batch_size,
                      "images_per_s": rate, "step_ms": 1000.0 * batch_size / rate,
                      "ratio_to_dense": dense_rate / rate if dense_rate else None,
                      "backend": keras.backend.backend()}
            records.append(record)
            ratio = "" if record["ratio_to_dense"] is None else f"  x{record['ratio_to_dense']:.3f} dense"
            log(f"{model_name:>8} {mask:>9}: {rate:10.1f} images/s  {record['step_ms']:8.2f} ms/step{ratio}")
    return records
