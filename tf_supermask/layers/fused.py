"""Fused CPU kernels for the masked training step (TensorFlow backend, CPU only).

On fc, the exact top-k select and the Bernoulli draw over the 235k-weight first
layer cost 35 to 60 % of the dense step as chains of TensorFlow ops (each op a
full pass over the layer, plus its allocation and a hand-off to the intra-op
threads). ``fused_ops.cc`` does each mask in one single-threaded pass, and the
straight-through gradient to the scores in one more; a fixed mask is one
product forwards and one backwards. It is
compiled on first use with the installed TensorFlow's headers (g++, about 10 s)
into ``$TF_SUPERMASK_CACHE`` (default ``~/.cache/tf_supermask/ops``) and reused.

Where it cannot be used (another backend, a GPU, XLA, a dtype other than
float32, no compiler, ``TF_SUPERMASK_FUSED=0``) the layers run the ``keras.ops`` code in
``masks.py``:
- top-k and fixed masks give the same results either way, bit for bit (the
  tests check it, over whole training steps too);
- Bernoulli draws its uniforms from the kernel's own generator (SplitMix64 of
  the Keras seed and the position, 24 bits), so a run's masks depend on which
  path it took, as they already depend on the backend's generator; the
  probability, the straight-through gradient and the per-step seeding from the
  layer's ``SeedGenerator`` (saved in checkpoints) are the same.
"""

import collections
import contextlib
import functools
import hashlib
import logging
import os
import platform as platform_lib
import subprocess
import sys
import tempfile

import keras
from keras import ops

from tf_supermask import choices
from tf_supermask.backend import platform, tensorflow_xla

ENV_SWITCH = choices.FUSED_ENV  # "0" turns the fused kernels off (--fused_kernels' default)
CACHE_ENV = "TF_SUPERMASK_CACHE"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fused_ops.cc")
COMPILER = os.environ.get("CXX", "g++")

logger = logging.getLogger(__name__)

# Whether the layers may use the kernels: the trainer sets it from --fused_kernels for the
# run (``switched``); tf-supermask-bench --fused=false and tests set it to compare both paths.
ENABLED = choices.fused_kernels_default()

# How many times each fused op was put into a computation ("topk", "bernoulli", "fixed"):
# counted when the op is built (once per trace inside a tf.function), only on the fused
# path, so tests can tell which path a step took.
uses = collections.Counter()


@contextlib.contextmanager
def switched(enabled):
    """``ENABLED = enabled`` inside the block, restored after; yields a function telling
    whether a fused op was put into a computation inside the block (the path ran)."""
    global ENABLED
    previous, ENABLED = ENABLED, bool(enabled)
    before = sum(uses.values())
    try:
        yield lambda: sum(uses.values()) > before
    finally:
        ENABLED = previous


def cache_dir():
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache",
                                                                      "tf_supermask", "ops"))


def _cpu_signature():
    """The CPU's feature flags: the library is built with -march=native."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform_lib.processor()


def _build(tf):
    flags = ["-std=c++17", "-shared", "-fPIC", "-O3", "-march=native",
             "-Wno-deprecated-declarations"]
    flags += tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(b"\0".join([source, tf.__version__.encode(), " ".join(flags).encode(),
                                     COMPILER.encode(), _cpu_signature().encode(),
                                     platform_lib.machine().encode()])).hexdigest()[:16]
    folder = cache_dir()
    path = os.path.join(folder, f"supermask_ops_{key}.so")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        print(f"tf_supermask: building the fused CPU mask kernels into {path} (once)",
              file=sys.stderr)
        handle, temporary = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(handle)
        try:
            done = subprocess.run([COMPILER, SOURCE, "-o", temporary] + flags,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                errors = [line for line in lines if "error" in line] or lines
                raise RuntimeError(errors[0] if errors else
                                   f"{COMPILER} exited with {done.returncode}")
            os.replace(temporary, path)  # another process may have built it too: same file
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    return tf.load_op_library(path)


@functools.lru_cache(maxsize=None)
def library():
    """The loaded op library, or None (with one warning) where it cannot be built."""
    import tensorflow as tf

    try:
        return _build(tf)
    except (OSError, RuntimeError, tf.errors.NotFoundError, subprocess.SubprocessError) as error:
        logger.warning("tf_supermask: fused CPU mask kernels unavailable (%s); using the "
                       "keras.ops masks, which are slower on fc", error)
        return None


def available(*tensors):
    """Whether the fused kernels serve these tensors: TensorFlow on a CPU outside XLA
    (which cannot compile custom ops), float32, library built."""
    return (ENABLED and keras.backend.backend() == "tensorflow" and platform() == "cpu"
            and not tensorflow_xla() and all(t.dtype == "float32" for t in tensors)
            and library() is not None)


def _kernel_gradient(keep, upstream, kernel_grad):
    import tensorflow as tf

    return tf.where(keep, upstream, tf.zeros_like(upstream)) if kernel_grad else None


def topk_masked(kernel, scores, kept, kernel_grad=True):
    """where(the `kept` largest |scores|, kernel, 0), with top-k's straight-through gradient:
    d kernel = where(keep, g, 0) (None unless `kernel_grad`), d scores = g * kernel *
    sign(scores). Same values as ``masks._topk_straight_through``."""
    import tensorflow as tf

    uses["topk"] += 1
    lib = library()

    @tf.custom_gradient
    def apply(kernel, scores):
        masked, keep = lib.supermask_top_k(scores, kernel, kept=kept, with_keep=kernel_grad)

        def grad(upstream):
            return (_kernel_gradient(keep, upstream, kernel_grad),
                    lib.supermask_top_k_grad(upstream, kernel, scores))

        return masked, grad

    return apply(kernel, scores)


def bernoulli_masked(kernel, scores, seed, kernel_grad=True):
    """where(u < sigmoid(scores), kernel, 0) for uniforms u drawn from `seed` (2 integers),
    with the straight-through gradient d kernel = where(mask, g, 0) (None unless
    `kernel_grad`), d scores = g * kernel * sigmoid'(scores)."""
    import tensorflow as tf

    uses["bernoulli"] += 1
    lib = library()
    seed = ops.cast(seed, "int64")

    @tf.custom_gradient
    def apply(kernel, scores):
        masked, keep, slope = lib.supermask_bernoulli(scores, kernel, seed, with_keep=kernel_grad)

        def grad(upstream):
            return (_kernel_gradient(keep, upstream, kernel_grad),
                    lib.supermask_multiply(upstream, slope))

        return masked, grad

    return apply(kernel, scores)


def fixed_masked(kernel, mask):
    """kernel * mask with d kernel = g * mask (the mask takes no gradient)."""
    import tensorflow as tf

    uses["fixed"] += 1
    lib = library()

    @tf.custom_gradient
    def apply(kernel):
        def grad(upstream):
            return lib.supermask_multiply(upstream, mask)

        return lib.supermask_multiply(kernel, mask), grad

    return apply(kernel)
