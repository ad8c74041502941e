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
