"""PatchesInit: convolution filters initialised with patches of their own input.

Supermask training never changes the weights, so the initial weights bound what
any mask can reach. PatchesInit (after Rencoret's MSc thesis, PUC Chile, 2020,
whose text we do not have; the design below is ours) starts conv filters from
patterns found in the training data instead of random noise:

  for each patched conv layer (by default the first two), in model order:
    1. compute the layer's input on a working set of training images, by running
       them through the earlier layers as they are now (already initialised, under
       the model's mask mode, in inference mode);
    2. take one kh x kw x C_in window of that input per filter, each from a
       different image, at a random position;
    3. preprocess the windows: subtract each one's mean (``center``), optionally
       ZCA-whiten them with statistics from many more windows (``zca``), scale
       each to unit norm (``normalize``), optionally flip signs (``sign_flip``);
    4. scale them to the layer's Kaiming standard deviation,
       gain / sqrt(fan_in * fan_scale), the std ``kaiming_normal`` would draw
       from, and write them into the layer's ``kernel_variable``.

Patching every layer makes activations grow by orders of magnitude with depth
(a patch responds strongly to the inputs it resembles), and on conv6 the supermask
then does not train. Remedies for deeper networks: patches for the first
``layers`` conv layers only (the rest keep the weights they were built with), a
fraction ``mix`` of patch filters with the other filters left random,
``rescale``: scaling each patched kernel so that the power of its output on the
real activations equals what the same kernel would give on uncorrelated inputs
(what the Kaiming scale assumes), and ``zca`` whitening. In a reduced CPU pilot
(``runs/results/superseded/patches_cpu_pilot.md``) patching only the first two layers (the
first block of conv2..conv8) did best on conv6, so ``layers=2`` is the default;
``layers=0`` patches every conv layer. ``dense`` applies the analogue to hidden
dense layers (each unit's weights: the whole input vector of one image).

Everything runs in NumPy and ``keras.ops`` (any backend) and is deterministic
given ``seed``. Only the working set of images is propagated (by default
max(256, the most patch filters of any layer)), so the cost does not grow with
the size of the image pool.
"""

import dataclasses
import math
import time
from typing import Optional

import keras
import numpy as np

from tf_supermask.layers.initializers import VarianceScaled, fan_scale_for
from tf_supermask.layers.masked import MaskedConv2D, MaskedDense, masked_layers
from tf_supermask import streams

# Images propagated when `forward_images` is 0, unless a layer needs more.
DEFAULT_FORWARD_IMAGES = 256
# Windows tried per filter: a window whose norm (after centring) is under
# MIN_RELATIVE_NORM times the median is nearly constant and is passed over.
CANDIDATES = 8
MIN_RELATIVE_NORM = 0.01


@dataclasses.dataclass
class PatchesOptions:
    """How `patches_init` chooses and scales its patches.

    Attributes:
      layers: patch only the first `layers` masked conv layers (0: all of them);
        the others keep their weights. Default 2, the best in the CPU pilot.
      mix: fraction of each patched layer's filters that become patches, in
        (0, 1]; the other filters (a seeded random choice) keep their weights.
      center: subtract each patch's mean over all its entries.
      normalize: scale each patch to the same norm (else one factor per layer,
        keeping the patches' relative contrast).
      zca: ZCA-whiten the patches with the covariance of `zca_patches` windows.
      zca_eps: whitening regulariser, relative to the mean eigenvalue.
      zca_patches: windows sampled to estimate the whitening statistics.
      sign_flip: multiply each patch by a random sign.
      rescale: after patching a layer, scale its kernel so that its output
        power on the working set equals E[x^2] * ||w||^2, what the Kaiming
        scale gives on inputs uncorrelated with the weights (||w||: the
        Kaiming-scale filter norm).
      dense: apply the analogue to hidden masked dense layers (not the output).
      forward_images: working-set size, images propagated through the model
        (0: max(256, most patch filters of a layer)); at least the largest
        number of patch filters of one layer, at most the images given.
      fan_scale: multiplier on the fan of the Kaiming std (``fan_scale_for`` of --scale_fan).
      gain: Kaiming gain (sqrt(2) for ReLU networks).
      batch_size: images per forward call.
      seed: seed of every random choice.
    """

    layers: int = 2
    mix: float = 1.0
    center: bool = True
    normalize: bool = True
    zca: bool = False
    zca_eps: float = 0.01
    zca_patches: int = 10000
    sign_flip: bool = False
    rescale: bool = False
    dense: bool = False
    forward_images: int = 0
    fan_scale: float = 1.0
    gain: float = math.sqrt(2.0)
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.layers < 0:
            raise ValueError(f"patches layers must be >= 0 (0: all), got {self.layers}")
        if not 0.0 < self.mix <= 1.0:
            raise ValueError(f"patches mix is the fraction of patch filters, in (0, 1], "
                             f"got {self.mix}")
        if self.zca_eps <= 0:
            raise ValueError(f"patches zca_eps must be positive, got {self.zca_eps}")
        if self.zca and self.zca_patches < 2:
            raise ValueError(f"patches zca_patches must be at least 2, got {self.zca_patches}")
        if self.forward_images < 0:
            raise ValueError(f"patches forward_images must be >= 0, got {self.forward_images}")
        if self.batch_size < 1:
            raise ValueError(f"patches batch_size must be positive, got {self.batch_size}")
        if not 0.0 < self.fan_scale <= 1.0:
            raise ValueError(f"fan_scale must be in (0, 1], got {self.fan_scale}")


def kaiming_std(shape, fan_scale=1.0, gain=math.sqrt(2.0)):
    """The std `kaiming_normal` draws a kernel of `shape` from: gain / sqrt(fan_in * fan_scale)."""
    return VarianceScaled("normal", "fan_in", gain, fan_scale).std(shape)


def patches_init(model, images, options: Optional[PatchesOptions] = None, normalization=None):
    """Initialises a model's masked conv filters with patches of their inputs, in place.

    Args:
      model: a built Keras model whose masked layers are each called once
        (every model of `tf_supermask.models`). A linear chain of layers is
        propagated segment by segment; other graphs from the input each time.
      images: training images, (N, H, W, C): already normalised floats, or raw
        uint8 together with `normalization`.
      options: a `PatchesOptions` (defaults when None).
      normalization: `(mean, std)` of images scaled to [0, 1] (as for
        `ArrayBatches`); when given, images are divided by 255 and normalised
        as they are gathered, so a large uint8 pool is never copied to floats.

    Returns:
      A report: {"layers": [one dict per patched layer: name, path, kind
      ("conv"/"dense"), filters, patch_filters, filter_indices, image_indices
      (into `images`), positions ((n, 2) top-left corners; None for dense),
      signs, kaiming_std, rescale], "kept": [paths of masked layers left as
      built], "skipped_grouped", "forward_images", "working_indices" (the
      images propagated), "pool_images", "seconds"}. `patches_summary`
      turns it into JSON.

    Raises:
      ValueError: fewer images than a layer's patch filters (each filter comes
        from a different image), a layer input smaller than its kernel, a layer
        called more than once, or a model without masked conv layers.
    """
    options = options or PatchesOptions()
    start = time.time()
    rng = streams.rng("patches", options.seed)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {images.shape}")
    layers = masked_layers(model)
    convs = [layer for layer in layers if isinstance(layer, MaskedConv2D)]
    if not convs:
        raise ValueError(f"patches_init needs masked conv layers; model {model.name!r} has none")
    targets = set(convs[:options.layers] if options.layers else convs)
    if options.dense:
        targets.update(layer for layer in layers[:-1] if isinstance(layer, MaskedDense))
    targets = [layer for layer in layers if layer in targets]  # model order
    skipped = [layer for layer in targets
               if isinstance(layer, MaskedConv2D) and layer.groups != 1]
    targets = [layer for layer in targets if layer not in skipped]

    # Which filters of each layer become patches.
    plans = []
    for layer in targets:
        filters = int(layer.kernel_variable.shape[-1])
        count = max(1, int(round(options.mix * filters)))
        indices = (np.arange(filters) if count == filters
                   else np.sort(rng.choice(filters, count, replace=False)))
        plans.append((layer, indices))
    needed = max(len(indices) for _, indices in plans)
    if len(images) < needed:
        worst = max(plans, key=lambda plan: len(plan[1]))[0]
        raise ValueError(
            f"patches_init takes each of a layer's patch filters from a different image: "
            f"layer {worst.name!r} needs {needed} images, but only {len(images)} were given; "
            f"give more images or lower the fraction of patch filters (mix)")
    forward = options.forward_images or max(DEFAULT_FORWARD_IMAGES, needed)
    forward = min(forward, len(images))
    if forward < needed:
        raise ValueError(f"forward_images={options.forward_images} is smaller than the "
                         f"{needed} patch filters of the largest patched layer")
    working = np.sort(rng.choice(len(images), forward, replace=False))
    inputs = _normalised(images[working], normalization)
    activations = _LayerInputs(model, inputs, options.batch_size)

    report_layers = []
    for layer, filter_indices in plans:
        values = activations(layer)
        if isinstance(layer, MaskedConv2D):
            entry = _patch_conv(layer, values, filter_indices, options, rng)
        else:
            entry = _patch_dense(layer, values, filter_indices, options, rng)
        entry["image_indices"] = working[entry.pop("rows")]
        entry["rescale"] = (_rescale(layer, values, options.batch_size) if options.rescale
                            else 1.0)
        report_layers.append(entry)
    patched = {id(layer) for layer, _ in plans}
    return {
        "layers": report_layers,
        "kept": [layer.kernel_variable.path for layer in layers if id(layer) not in patched],
        "skipped_grouped": [layer.kernel_variable.path for layer in skipped],
        "forward_images": int(forward),
        "working_indices": working,
        "pool_images": int(len(images)),
        "seconds": time.time() - start,
    }


def patches_summary(report):
    """The JSON-friendly part of a `patches_init` report (for results.json)."""
    return {
        "layers": {entry["path"]: {"filters": entry["filters"],
                                   "patch_filters": entry["patch_filters"],
                                   "kaiming_std": entry["kaiming_std"],
                                   "rescale": entry["rescale"]}
                   for entry in report["layers"]},
        "kept": list(report["kept"]),
        "forward_images": report["forward_images"],
        "pool_images": report["pool_images"],
        "seconds": round(report["seconds"], 3),
    }


def options_from_flags(patches, k, scale_fan, seed):
    """`PatchesOptions` from the --patches_* flags (`patches`: an object with their
    ``patches_*`` attributes, e.g. ``tf_supermask.training.config.PatchesConfig``), the
    fraction kept `k` and --scale_fan (which give the Kaiming fan scale), and the seed."""
    return PatchesOptions(
        layers=patches.patches_layers, mix=patches.patches_mix, center=patches.patches_center,
        normalize=patches.patches_normalize, zca=patches.patches_zca,
        zca_eps=patches.patches_zca_eps, zca_patches=patches.patches_zca_patches,
        sign_flip=patches.patches_sign_flip, rescale=patches.patches_rescale,
        dense=patches.patches_dense, forward_images=patches.patches_forward_images,
        fan_scale=fan_scale_for(scale_fan, k), seed=seed)


def patches_init_from_flags(model, patches, dataset, normalization, k, scale_fan, seed):
    """The training binary's data step: patches from a seeded pool of training images.

    The pool is `patches.patches_images` training images (0 or more than there
    are: all of them), drawn with `seed`; `patches`, `k`, `scale_fan` and `seed` as
    in ``options_from_flags``.

    Returns:
      `patches_summary` of the report, for results.json.
    """
    count = len(dataset.x_train)
    pool_size = min(patches.patches_images or count, count)
    pool = np.sort(streams.rng("patches_pool", seed).choice(count, pool_size, replace=False))
    report = patches_init(model, dataset.x_train[pool],
                          options_from_flags(patches, k, scale_fan, seed),
                          normalization=normalization)
    return patches_summary(report)


# Internals -------------------------------------------------------------------


def _normalised(images, normalization):
    images = np.asarray(images, np.float32)
    if normalization is None:
        return images
    mean, std = (np.asarray(value, np.float32).reshape(-1) for value in normalization)
    return (images / 255.0 - mean) / std


def _run(function, values, batch_size):
    outputs = [keras.ops.convert_to_numpy(function(values[start:start + batch_size],
                                                   training=False))
               for start in range(0, len(values), batch_size)]
    return np.concatenate(outputs).astype(np.float32, copy=False)


class _LayerInputs:
    """A layer's input on the working set, given the model's current weights.

    Layers are asked for in model order; each answer is computed from the
    previous one by running the segment of the graph between them (so every
    layer runs once on the working set), or from the model's input when the
    segment is not self-contained (branches that skip over it).
    """

    def __init__(self, model, inputs, batch_size):
        if len(model.inputs) != 1:
            raise ValueError("patches_init supports models with one input")
        self.model_input = model.inputs[0]
        self.inputs = inputs
        self.batch_size = batch_size
        self.tensor = self.model_input
        self.values = inputs

    def __call__(self, layer):
        try:
            target = layer.input
        except (AttributeError, ValueError) as error:
            raise ValueError(f"patches_init needs layer {layer.name!r} to be called exactly "
                             f"once in the model graph ({error})") from None
        if target is self.tensor:
            return self.values
        try:
            function, source = keras.Model(self.tensor, target), self.values
        except ValueError:  # the segment needs tensors from before self.tensor
            function, source = keras.Model(self.model_input, target), self.inputs
        self.values = _run(function, source, self.batch_size)
        self.tensor = target
        return self.values


def _choose_windows(norms):
    """Index of the first candidate per row whose norm is not negligible (else the largest)."""
    threshold = MIN_RELATIVE_NORM * np.median(norms)
    good = norms > threshold
    return np.where(good.any(axis=1), good.argmax(axis=1), norms.argmax(axis=1))


def _center(patches, options):
    if options.center:
        patches = patches - patches.mean(axis=1, keepdims=True)
    return patches


def _preprocess(patches, pool, options, rng, layer):
    """Centre, whiten, flip signs; returns (patches, signs). `pool`: ZCA statistics."""
    patches = _center(patches.astype(np.float64), options)
    if options.zca:
        pool = _center(pool.astype(np.float64), options)
        mean = pool.mean(axis=0)
        centered = pool - mean
        covariance = centered.T @ centered / len(pool)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        eigenvalues = np.maximum(eigenvalues, 0.0)
        floor = options.zca_eps * max(eigenvalues.mean(), 1e-12)
        whitening = (eigenvectors / np.sqrt(eigenvalues + floor)) @ eigenvectors.T
        patches = _center((patches - mean) @ whitening, options)
    signs = np.ones(len(patches))
    if options.sign_flip:
        signs = rng.choice(np.array([-1.0, 1.0]), len(patches))
        patches = patches * signs[:, None]
    norms = np.linalg.norm(patches, axis=1)
    if not np.all(norms > 0):
        raise ValueError(f"layer {layer.name!r}: a patch is constant after preprocessing "
                         f"(its input is constant over the images sampled)")
    return patches, signs


def _assign(layer, patches, filter_indices, options):
    """Scales patches (n, d) to the Kaiming std and writes them as the chosen filters."""
    shape = tuple(int(d) for d in layer.kernel_variable.shape)
    std = kaiming_std(shape, options.fan_scale, options.gain)
    fan = patches.shape[1]
    if options.normalize:
        patches = patches / np.linalg.norm(patches, axis=1, keepdims=True) * (std * math.sqrt(fan))
    else:
        patches = patches * (std / math.sqrt(np.mean(np.square(patches))))
    kernel = keras.ops.convert_to_numpy(layer.kernel_variable).reshape(fan, shape[-1]).copy()
    kernel[:, filter_indices] = patches.T
    layer.kernel_variable.assign(kernel.reshape(shape).astype(layer.kernel_variable.dtype))
    return std


def _patch_conv(layer, values, filter_indices, options, rng):
    kh, kw = layer.kernel_size
    num_images, height, width, channels = values.shape
    if height < kh or width < kw:
        raise ValueError(f"layer {layer.name!r}: its input is {height}x{width}, smaller than "
                         f"its {kh}x{kw} kernel, so it has no patch to take")
    count = len(filter_indices)
    windows = np.lib.stride_tricks.sliding_window_view(values, (kh, kw), axis=(1, 2))

    def gather(rows, tops, lefts):  # (n, kh, kw, C) flattened like the kernel
        return windows[rows, tops, lefts].transpose(0, 2, 3, 1).reshape(len(rows), -1)

    rows = rng.choice(num_images, count, replace=False)
    tops = rng.integers(0, height - kh + 1, (count, CANDIDATES))
    lefts = rng.integers(0, width - kw + 1, (count, CANDIDATES))
    candidates = gather(np.repeat(rows, CANDIDATES), tops.ravel(), lefts.ravel())
    norms = np.linalg.norm(_center(candidates, options), axis=1).reshape(count, CANDIDATES)
    pick = _choose_windows(norms)
    chosen = np.arange(count)
    tops, lefts = tops[chosen, pick], lefts[chosen, pick]
    patches = candidates.reshape(count, CANDIDATES, -1)[chosen, pick]
    pool = None
    if options.zca:
        size = options.zca_patches
        pool = gather(rng.integers(0, num_images, size), rng.integers(0, height - kh + 1, size),
                      rng.integers(0, width - kw + 1, size))
    patches, signs = _preprocess(patches, pool, options, rng, layer)
    std = _assign(layer, patches, filter_indices, options)
    return {"name": layer.name, "path": layer.kernel_variable.path, "kind": "conv",
            "filters": int(layer.kernel_variable.shape[-1]), "patch_filters": count,
            "filter_indices": filter_indices, "rows": rows,
            "positions": np.stack([tops, lefts], axis=1), "signs": signs, "kaiming_std": std}


def _patch_dense(layer, values, filter_indices, options, rng):
    values = values.reshape(len(values), -1)
    count = len(filter_indices)
    rows = rng.choice(len(values), count, replace=False)
    patches, signs = _preprocess(values[rows], values if options.zca else None, options, rng,
                                 layer)
    std = _assign(layer, patches, filter_indices, options)
    return {"name": layer.name, "path": layer.kernel_variable.path, "kind": "dense",
            "filters": int(layer.kernel_variable.shape[-1]), "patch_filters": count,
            "filter_indices": filter_indices, "rows": rows, "positions": None, "signs": signs,
            "kaiming_std": std}


def _rescale(layer, values, batch_size):
    """Scales the kernel so its output power is what the Kaiming scale promises.

    For inputs uncorrelated with the weights, E[y^2] = E[x^2] * ||w||^2 per
    output (the premise of the Kaiming scale), with w the effective (masked)
    filter at the Kaiming std. Patches correlate with their inputs, so the real
    E[y^2] on the working set is larger; the factor returned (and applied to
    the kernel) brings it to E[x^2] * ||w||^2, ||w|| taken before scaling.
    """
    kernel = layer.effective_kernel(training=False)
    kernel_np = keras.ops.convert_to_numpy(kernel)
    input_power = float(np.mean(np.square(values, dtype=np.float64)))
    filter_power = float(np.mean(np.sum(
        np.square(kernel_np.reshape(-1, kernel_np.shape[-1]), dtype=np.float64), axis=0)))
    total, count = 0.0, 0
    for start in range(0, len(values), batch_size):
        chunk = values[start:start + batch_size]
        if isinstance(layer, MaskedDense):
            chunk = chunk.reshape(len(chunk), -1)
        outputs = keras.ops.convert_to_numpy(layer.apply_kernel(chunk, kernel))
        total += float(np.sum(np.square(outputs, dtype=np.float64)))
        count += outputs.size
    output_power = total / max(count, 1)
    if output_power <= 0 or filter_power <= 0 or input_power <= 0:
        return 1.0
    factor = math.sqrt(input_power * filter_power / output_power)
    weights = keras.ops.convert_to_numpy(layer.kernel_variable)
    layer.kernel_variable.assign((weights * factor).astype(weights.dtype))
    return factor
