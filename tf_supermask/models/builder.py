"""The model registry and ``build_model`` (registered models, or a user's own, masked)."""

import dataclasses

from tf_supermask import choices
from tf_supermask.models.options import BATCHNORMS, MaskOptions  # noqa: F401 (re-exported)
from tf_supermask.registry import Registry

MODELS = Registry("model", names=choices.MODEL_NAMES)


def build_model(name, input_shape, num_classes, options=None):
    """Builds the registered model `name` for inputs of `input_shape` (H, W, C).

    Every model works in every mask mode: its layers are ``MaskedDense`` and
    ``MaskedConv2D`` layers built by `options` (one ``MaskOptions`` for the whole
    model, each layer drawing its own seed from ``options.seed``), so a model
    computes what its dense original computes with each kernel ``W`` replaced
    by ``W * m`` (see ``MaskedDense`` for the mask modes). The registered models:

    - ``"fc"``: LeNet-300-100 (Frankle & Carbin), Flatten, then dense 300-100
      with ReLU, then ``num_classes``.
    - ``"conv2"``, ``"conv4"``, ``"conv6"``, ``"conv8"``: 1 to 4 blocks of two
      3x3 convs and a 2x2 max-pool (64, 128, 256, 512 channels), then dense
      256-256-``num_classes`` (Frankle & Carbin; Ramanujan et al. for conv8).
    - ``"vgg11"``, ``"vgg16"``, ``"vgg19"`` (Liu et al.'s CIFAR VGGs),
      ``"resnet20"``, ``"resnet56"`` (He et al.), ``"resnet18"``,
      ``"mobilenet_v2"`` (kuangliu/pytorch-cifar's CIFAR variants): with
      BatchNorm, the first layer unpruned by default.

    ``options.width`` multiplies the hidden widths; ``options.batchnorm`` adds
    BatchNorm after hidden layers; ``options.prune_first_layer`` overrides the
    model's choice of masking the layer that reads the input.

    Args:
      name: registered model name, one of ``MODELS.names()``.
      input_shape: shape of one example, channels last, e.g. ``(28, 28, 1)``
        for MNIST or ``(32, 32, 3)`` for CIFAR-10.
      num_classes: number of output logits.
      options: a ``MaskOptions``; defaults to ``MaskOptions()``, the dense
        baseline. It is copied, not changed.

    Returns:
      A built (not compiled) functional ``keras.Model`` producing logits.

    Input shape:
      4D tensor ``(batch_size,) + input_shape``.

    Output shape:
      2D tensor ``(batch_size, num_classes)`` of logits (no softmax).

    Example:

    >>> from tf_supermask.layers import masked_layers
    >>> from tf_supermask.models import MaskOptions, build_model
    >>> model = build_model("fc", (28, 28, 1), 10,
    ...                     MaskOptions(mask="topk", k=0.5, width=0.25))
    >>> model.input_shape, model.output_shape
    ((None, 28, 28, 1), (None, 10))
    >>> [(layer.name, layer.mask_mode, tuple(layer.kernel_variable.shape))
    ...  for layer in masked_layers(model)]
    [('dense1', 'topk', (784, 75)), ('dense2', 'topk', (75, 25)), ('output', 'topk', (25, 10))]
    >>> model = build_model("conv2", (32, 32, 3), 10, MaskOptions(mask="bernoulli", width=0.125))
    >>> [layer.name for layer in masked_layers(model)]
    ['conv1_1', 'conv1_2', 'dense1', 'dense2', 'output']
    """
    options = dataclasses.replace(options or MaskOptions())
    if name not in MODELS:  # a user's own model (tf_supermask.models.user), masked
        from tf_supermask.models.sparsify import sparsify
        from tf_supermask.models.user import user_model

        model = user_model(name, input_shape, int(num_classes))
        return sparsify(model, **options.sparsify_kwargs())
    builder = MODELS.get(name)
    return builder(tuple(input_shape), int(num_classes), options)
