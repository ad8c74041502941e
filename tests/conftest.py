import os

import keras
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


def batch(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def reference_topk_keep(values, kept):
    """Edge-popup's rule by hand: the `kept` largest |values|, earliest position first
    among equal magnitudes (boolean, `values`' shape)."""
    flat = np.abs(np.asarray(values, np.float32).reshape(-1))
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:kept]] = True
    return keep.reshape(np.shape(values))


def _splitmix64(z):
    with np.errstate(over="ignore"):
        z = np.asarray(z, np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def reference_uniforms(seed, size):
    """The fused Bernoulli kernel's uniforms by hand: position i takes 24 bits of
    SplitMix64(key + golden * (i // 2 + 1)), the high 24 for even i, the low 24 for odd."""
    seed = np.asarray(seed).astype(np.int64).view(np.uint64)
    key = _splitmix64((seed[0] << np.uint64(32)) ^ (seed[1] & np.uint64(0xFFFFFFFF)))
    index = np.arange(size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        draws = _splitmix64(key + np.uint64(0x9E3779B97F4A7C15) * (index // np.uint64(2)
                                                                   + np.uint64(1)))
    bits = np.where(index % np.uint64(2) == 0, draws >> np.uint64(40),
                    draws & np.uint64(0xFFFFFF))
    return bits.astype(np.float32) * np.float32(2.0 ** -24)


# Tiny models, runs and kernels shared by the tests -----------------------------------------

@pytest.fixture(scope="module")
def sample():
    """The shipped sample dataset (256 training images) and its normalization statistics."""
    from tf_supermask.data import load_dataset, normalization_stats

    dataset = load_dataset("sample", train_size=256)
    return dataset, normalization_stats(dataset)


def sample_batches(sample, batch_size=64):
    """The `sample` fixture's training images in shuffled batches (seed 0), normalized."""
    from tf_supermask.data import ArrayBatches

    dataset, normalization = sample
    return ArrayBatches(dataset.x_train, dataset.y_train, batch_size, shuffle=True, seed=0,
                        normalization=normalization)


def tiny_model(sample, seed=0, width=0.05, compile=True, reseed=False):
    """fc at width 0.05 (784-15-5-10) in the fixed mask mode for the `sample` fixture's
    images, compiled with Adam(1e-2) and cross-entropy on logits unless `compile` is False.
    `reseed` first sets Keras's global seed to `seed`, so that two calls give the same
    weights."""
    from tf_supermask.models import MaskOptions, build_model

    dataset, _ = sample
    if reseed:
        keras.utils.set_random_seed(seed)
    model = build_model("fc", dataset.input_shape, 10, MaskOptions(mask="fixed", width=width,
                                                                   seed=seed))
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def tiny_config(config_class, run_subdir=None, **settings):
    """A factory of quick runs: ``tiny(run_dir, **overrides)`` returns
    ``config_class(model="fc", dataset="sample", verbose=0, **settings, **overrides)`` that
    writes to `run_dir` (or to ``run_dir / run_subdir``). Each test file passes the sizes its
    expectations were worked out for as `settings`."""
    defaults = {"model": "fc", "dataset": "sample", "verbose": 0, **settings}

    def tiny(run_dir, **overrides):
        path = run_dir if run_subdir is None else os.path.join(run_dir, run_subdir)
        return config_class(**{**defaults, "run_dir": str(path), **overrides})

    tiny.settings = defaults
    return tiny


def kernels(model, by="path"):
    """{kernel variable path, or layer name with ``by="name"``: raw (unmasked) kernel values
    as a NumPy copy} of every masked layer, nested models included, in order."""
    from tf_supermask.layers import masked_layers

    return {(layer.kernel_variable.path if by == "path" else layer.name):
            np.array(keras.ops.convert_to_numpy(layer.kernel_variable))
            for layer in masked_layers(model)}
