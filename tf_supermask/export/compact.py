"""The compact seed-plus-bitmask file of a masked network.

A supermask over random weights is described by how the weights were drawn
(model, options, seed) and the bit mask. ``save_compact`` writes an
``.npz`` archive holding

- ``header``: JSON (as uint8 bytes): format and version, the model name,
  input shape and class count, the ``MaskOptions`` fields, the backend and
  Keras version that wrote it, per-layer mask shapes and counts, which
  variables are stored, free metadata (a run's flags and results), and
  ``regenerated_sha256``: a SHA-256 over every variable the loader
  regenerates instead of reading (the frozen kernels above all), and
  ``stored_sha256``: one over the arrays below (masks included), checked on load;
- ``mask_<i>``: masked layer i's binary mask, bit-packed (``numpy.packbits``);
- ``var_<j>`` / ``kernel_<i>``: only the variables that differ from a fresh
  build, e.g. BatchNorm statistics and trained biases. Kernels are stored
  only when they differ from their regenerated values (trained weights, a
  lottery ticket): then the file is not compact and a ``StoredKernelsWarning``
  says so.

``load_compact`` rebuilds the model with the same name and options, checks
the checksum, sets the stored variables, and gives every masked layer its
mask with ``set_mask``: a fixed mask is assigned; score modes get scores
that reproduce it (Bernoulli: positive exactly where kept; top-k: the kept
scores lifted above all others, the count being round(k * n) already). The
trained score values themselves are not kept, only the mask they select.
Evaluation predictions equal the saved model's exactly: the kernels, masks,
rescale factors (#weights / #kept from the same mask) and other variables
are the same. The one exception is ``eval_sample`` (a Bernoulli mask
sampled at evaluation), random by design and depending on the scores: the
loaded model thresholds instead, and saving warns.

Weights regenerate exactly only where the random generator draws the same
floats: the same backend and device type (normal and uniform draws differ
in the last bits between JAX on a CPU and on a GPU; signed constant
weights do not), and Keras / backend versions that keep the generator.
Elsewhere the checksum does not match and loading fails with a
``CompactFormatError`` that says so.

Files are written under a temporary name and renamed into place,
so a failure never leaves a partial file.
"""

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
import zlib

import keras
import numpy as np
from keras import ops

from tf_supermask.export.atomic import atomic_path
from tf_supermask.layers.masked import masked_layers
from tf_supermask.models import MODELS, MaskOptions, build_model

FORMAT = "tf_supermask.compact"
VERSION = 1
COMPACT_FILE = "supermask.npz"


class CompactFormatError(ValueError):
    """A compact file that cannot be loaded: corrupt, truncated, or not reproducible here."""


class StoredKernelsWarning(UserWarning):
    """``save_compact`` stored kernels as float32 because they differ from the ones the
    model's seed regenerates (trained weights, another initializer or backend): the file
    is then not compact.

    Attributes:
      stored: the kernel variable paths stored.
      total: the number of masked layers' kernels.
    """

    def __init__(self, message, stored=(), total=0):
        super().__init__(message)
        self.stored = list(stored)
        self.total = int(total)


def load_options(options):
    """The options a compact file is rebuilt with: the saved ones, never sampling at evaluation."""
    return dataclasses.replace(options, eval_sample=False)


def _structure(model):
    """(masked layers, other weights): the variables a compact file addresses by position.

    Masked layers are addressed by their index; every other weight (biases,
    BatchNorm variables, weights of unmasked layers) by its index among the
    model's weights that are not a masked layer's kernel, scores or mask.
    Both orders do not depend on the mask mode.
    """
    layers = masked_layers(model)
    owned = set()
    for layer in layers:
        owned.add(id(layer.kernel_variable))
        for name in ("scores", "mask_variable"):
            if getattr(layer, name, None) is not None:
                owned.add(id(getattr(layer, name)))
    others = [variable for variable in model.weights if id(variable) not in owned]
    return layers, others


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable))


def _digest(entries):
    """SHA-256 over (key, dtype, shape, little-endian bytes) of each array, in order."""
    digest = hashlib.sha256()
    for key, value in entries:
        value = np.asarray(value)
        value = value.astype(value.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _check_same_structure(model, rebuilt, what):
    layers, others = _structure(model)
    new_layers, new_others = _structure(rebuilt)
    problems = []
    if len(layers) != len(new_layers):
        problems.append(f"{len(layers)} masked layers vs {len(new_layers)}")
    else:
        for old, new in zip(layers, new_layers):
            if tuple(old.kernel_variable.shape) != tuple(new.kernel_variable.shape):
                problems.append(f"{old.kernel_variable.path} has shape "
                                f"{tuple(old.kernel_variable.shape)} vs "
                                f"{tuple(new.kernel_variable.shape)}")
    if len(others) != len(new_others):
        problems.append(f"{len(others)} other weights vs {len(new_others)}")
    else:
        for old, new in zip(others, new_others):
            if tuple(old.shape) != tuple(new.shape) or old.name != new.name:
                problems.append(f"{old.path} {tuple(old.shape)} vs {new.path} {tuple(new.shape)}")
    if problems:
        raise ValueError(f"the model is not the one {what} builds: " + "; ".join(problems[:5]))


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def save_compact(model, path, options, model_name=None, input_shape=None, num_classes=None,
                 metadata=None, allow_kernels=True):
    """Writes `model` as a compact file: how to rebuild its weights, and its bit-packed masks.

    Args:
      model: a model built by ``build_model(model_name, input_shape, num_classes, options)``
        (its masks and other variables may have trained since).
      path: the file to write (an ``.npz`` archive; written atomically).
      options: the ``MaskOptions`` the model was built with.
      model_name: registered model name (default: ``model.name``).
      input_shape: shape of one example (default: the model's).
      num_classes: number of logits (default: the model's).
      metadata: optional JSON-serialisable dict stored in the header (e.g. a run's flags).
      allow_kernels: store kernels that differ from their regenerated values
        (trained weights) with a warning; if False such kernels raise a ValueError.

    Returns:
      A summary dict: ``path``, ``bytes``, ``stored_kernels`` (paths), ``masked_weights``.

    Raises:
      ValueError: the model is not what the name and options build (other
        layers or shapes), or kernels differ and ``allow_kernels`` is False.
    """
    model_name = model_name or model.name
    MODELS.get(model_name)
    input_shape = tuple(int(d) for d in (input_shape or model.input_shape[1:]))
    num_classes = int(num_classes or model.output_shape[-1])
    what = f"build_model({model_name!r}, {input_shape}, {num_classes}, options)"
    rebuilt = build_model(model_name, input_shape, num_classes, load_options(options))
    _check_same_structure(model, rebuilt, what)
    layers, others = _structure(model)
    new_layers, new_others = _structure(rebuilt)

    arrays, regenerated, layer_info, variable_info, differing = {}, [], [], [], []
    for index, (layer, new) in enumerate(zip(layers, new_layers)):
        kernel = _numpy(layer.kernel_variable)
        fresh = _numpy(new.kernel_variable)
        stored = not np.array_equal(kernel, fresh)
        if stored:
            differing.append(layer.kernel_variable.path)
            arrays[f"kernel_{index}"] = kernel
        else:
            regenerated.append((f"kernel_{index}", fresh))
        info = {"path": layer.kernel_variable.path, "shape": list(kernel.shape),
                "mode": layer.mask_mode, "kernel_stored": stored}
        if layer.is_masked:
            mask = np.asarray(ops.convert_to_numpy(layer.get_mask())) != 0
            arrays[f"mask_{index}"] = np.packbits(mask.ravel())
            info.update(kept=int(mask.sum()), size=int(mask.size))
        layer_info.append(info)
    for index, (variable, new) in enumerate(zip(others, new_others)):
        value, fresh = _numpy(variable), _numpy(new)
        stored = not np.array_equal(value, fresh)
        if stored:
            arrays[f"var_{index}"] = value
        else:
            regenerated.append((f"var_{index}", fresh))
        variable_info.append({"path": variable.path, "shape": list(value.shape),
                              "dtype": str(value.dtype), "stored": stored})

    if differing:
        message = (f"{len(differing)} of {len(layers)} kernels differ from the weights "
                   f"{what} regenerates (trained weights, or other options): {differing[:3]}")
        if not allow_kernels:
            raise ValueError(message + "; the compact format cannot describe them")
        warnings.warn(StoredKernelsWarning(
            message + "; they are stored as float32, so the file is not compact",
            stored=differing, total=len(layers)), stacklevel=2)
    if any(layer.is_masked and layer.eval_sample for layer in layers):
        warnings.warn("the model samples its Bernoulli masks at evaluation (eval_sample); the "
                      "compact file keeps the thresholded masks (scores > 0), so the loaded "
                      "model is deterministic", stacklevel=2)

    import tf_supermask

    header = {
        "format": FORMAT, "version": VERSION,
        "model": {"name": model_name, "input_shape": list(input_shape),
                  "num_classes": num_classes},
        "options": dataclasses.asdict(options),
        "backend": keras.backend.backend(), "keras_version": keras.__version__,
        "backend_version": _backend_version(), "device": _device_kind(),
        "tf_supermask_version": tf_supermask.__version__,
        "regenerated_sha256": _digest(regenerated),
        # Masks and stored variables: a flipped or swapped mask bit fails to load.
        "stored_sha256": _digest(sorted(arrays.items())),
        "layers": layer_info, "variables": variable_info,
        "metadata": metadata or {},
    }
    arrays["header"] = np.frombuffer(
        json.dumps(header, sort_keys=True, default=_json_default).encode(), dtype=np.uint8)
    with atomic_path(path) as temp:
        with open(temp, "wb") as stream:
            np.savez_compressed(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
    return {"path": path, "bytes": os.path.getsize(path), "stored_kernels": differing,
            "masked_weights": sum(info.get("size", 0) for info in layer_info)}


def _device_kind():
    """Where the backend computes by default: "cpu", "gpu" or "tpu" (random draws can differ)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
        if backend == "jax":
            import jax

            return jax.default_backend()
    except ImportError:
        pass
    return "unknown"


def _backend_version():
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.__version__
        if backend == "jax":
            import jax

            return jax.__version__
    except ImportError:
        pass
    return "unknown"


def _read_archive(path):
    """(header dict, {name: array}) of a compact file; CompactFormatError if unreadable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no compact file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError("a single .npy array, not an archive")
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError,
            RuntimeError) as error:
        raise CompactFormatError(
            f"{path} is not a complete compact supermask file (truncated or corrupt: "
            f"{type(error).__name__}: {error})") from None
    if "header" not in arrays:
        raise CompactFormatError(f"{path} has no header: not a compact supermask file")
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CompactFormatError(f"{path} has an unreadable header ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CompactFormatError(f"{path} is not a compact supermask file (format "
                                 f"{header.get('format') if isinstance(header, dict) else None!r})")
    if header.get("version") != VERSION:
        raise CompactFormatError(f"{path} has format version {header.get('version')}; this "
                                 f"tf_supermask reads version {VERSION}")
    return header, arrays


def read_compact_header(path):
    """The JSON header of a compact file (model, options, per-layer counts, metadata)."""
    return _read_archive(path)[0]


def load_compact(path):
    """Rebuilds the model a compact file describes (see the module docstring).

    Returns:
      An uncompiled ``keras.Model`` in the saved model's mask mode, whose
      evaluation predictions equal the saved model's.

    Raises:
      CompactFormatError: the file is truncated or corrupt, names a model that
        is not registered, or the weights regenerated here do not match its
        checksum (another backend, Keras version or initializer).
      FileNotFoundError: there is no file at `path`.
    """
    header, arrays = _read_archive(path)
    if "stored_sha256" in header and _digest(sorted(arrays.items())) != header["stored_sha256"]:
        raise CompactFormatError(f"{path}: its masks or stored weights do not match the "
                                 "file's checksum (the file is damaged)")
    try:
        spec = header["model"]
        name, input_shape, num_classes = spec["name"], spec["input_shape"], spec["num_classes"]
        layer_info, variable_info = header["layers"], header["variables"]
    except (KeyError, TypeError) as error:
        raise CompactFormatError(f"{path} has an incomplete header (missing {error})") from None
    if name not in MODELS.names():
        raise CompactFormatError(
            f"{path} describes model {name!r}, which this tf_supermask does not register "
            f"(registered: {', '.join(MODELS.names())})")
    try:
        # Files written before count rules had names counted top-k as round(k n).
        options = MaskOptions(**{"count_rule": "nearest", **header["options"]})
        model = build_model(name, input_shape, num_classes, load_options(options))
    except (TypeError, ValueError, KeyError) as error:
        raise CompactFormatError(f"{path}: cannot rebuild model {name!r} from the stored "
                                 f"options ({error})") from None
    layers, others = _structure(model)
    if len(layers) != len(layer_info) or len(others) != len(variable_info):
        raise CompactFormatError(
            f"{path}: model {name!r} now has {len(layers)} masked layers and {len(others)} other "
            f"weights; the file has {len(layer_info)} and {len(variable_info)}")
    for layer, info in zip(layers, layer_info):
        if list(layer.kernel_variable.shape) != info["shape"] or layer.mask_mode != info["mode"]:
            raise CompactFormatError(f"{path}: {info['path']} has shape {info['shape']} and mask "
                                     f"{info['mode']!r} in the file, shape "
                                     f"{list(layer.kernel_variable.shape)} and mask "
                                     f"{layer.mask_mode!r} here")
    for variable, info in zip(others, variable_info):
        if list(variable.shape) != info["shape"]:
            raise CompactFormatError(f"{path}: {info['path']} has shape {info['shape']} in the "
                                     f"file and {list(variable.shape)} here")

    regenerated = []
    for index, (layer, info) in enumerate(zip(layers, layer_info)):
        if not info["kernel_stored"]:
            regenerated.append((f"kernel_{index}", _numpy(layer.kernel_variable)))
    for index, (variable, info) in enumerate(zip(others, variable_info)):
        if not info["stored"]:
            regenerated.append((f"var_{index}", _numpy(variable)))
    if _digest(regenerated) != header.get("regenerated_sha256"):
        raise CompactFormatError(
            f"{path}: the weights regenerated here from seed {options.seed} with initializer "
            f"{options.init!r} do not match the file's checksum. The file was written with "
            f"Keras {header.get('keras_version')} on the {header.get('backend')} backend "
            f"({header.get('backend_version')}, {header.get('device')}); this is Keras "
            f"{keras.__version__} on {keras.backend.backend()} ({_backend_version()}, "
            f"{_device_kind()}). The initializer or the random generator (which can differ "
            f"between backends, their versions, and CPU and GPU) no longer reproduces the "
            f"weights, so the exact model cannot be rebuilt: load it where it was written and "
            f"export a SavedModel instead.")

    try:
        for index, (layer, info) in enumerate(zip(layers, layer_info)):
            if info["kernel_stored"]:
                layer.kernel_variable.assign(arrays[f"kernel_{index}"])
            if "size" in info:
                bits = np.unpackbits(arrays[f"mask_{index}"], count=info["size"])
                if int(bits.sum()) != info["kept"]:
                    raise CompactFormatError(f"{path}: the mask of {info['path']} keeps "
                                             f"{int(bits.sum())} weights, the header says "
                                             f"{info['kept']}")
                layer.set_mask(bits.reshape(info["shape"]).astype("float32"))
        for index, (variable, info) in enumerate(zip(others, variable_info)):
            if info["stored"]:
                variable.assign(arrays[f"var_{index}"])
    except KeyError as error:
        raise CompactFormatError(f"{path} lacks the array {error}: corrupt file") from None
    return model

