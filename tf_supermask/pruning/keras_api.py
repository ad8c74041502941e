"""tfmot's Keras pruning API for any Keras 3 model: ``prune_low_magnitude``,
``GradualPruning`` (``UpdatePruningStep`` + ``PruningSummaries``) and ``strip_pruning``.

tensorflow-model-optimization's ``prune_low_magnitude`` refuses Keras 3 models
("You passed an object of type Functional"). Here the same three steps work on a
Keras 3 Sequential or functional model (nested models and ``keras.applications``
included), on tfmot's own schedule objects:

===========================================================  ===========================================
tfmot (Keras 2)                                              tf_supermask (Keras 3)
===========================================================  ===========================================
``tfmot.sparsity.keras.PolynomialDecay(...)``                ``pruning_schedule("polynomial", ...)`` (the same class)
``tfmot.sparsity.keras.prune_low_magnitude(model, s)``       ``prune_low_magnitude(model, s)``
``UpdatePruningStep()``, ``PruningSummaries(log_dir)``        ``GradualPruning(log_dir=log_dir)``
``tfmot.sparsity.keras.strip_pruning(model)``                ``strip_pruning(model)``
===========================================================  ===========================================

Example:

>>> import keras, numpy as np
>>> from tf_supermask.pruning import (GradualPruning, layer_sparsity, prune_low_magnitude,
...                                   pruning_schedule, strip_pruning)
>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
...                           keras.layers.Dense(2)])
>>> schedule = pruning_schedule("polynomial", 0.75, begin_step=0, end_step=4, frequency=2)
>>> pruned = prune_low_magnitude(model, schedule)
>>> pruned.compile(optimizer="sgd", loss="mse")
>>> history = pruned.fit(np.ones((12, 8)), np.zeros((12, 2)), batch_size=2, verbose=0,
...                      callbacks=[GradualPruning()])
>>> sorted(layer_sparsity(pruned).values())
[0.75, 0.75]
>>> [type(layer).__name__ for layer in strip_pruning(pruned).layers]
['Dense', 'Dense']
"""

import numpy as np

from tf_supermask.layers import get_masks
from tf_supermask.pruning.gradual import PRUNING_ATTRIBUTE
from tf_supermask.pruning.options import SCOPES


def prune_low_magnitude(model, pruning_schedule, layers=None, scope="layer"):
    """A copy of `model` whose prunable layers are pruned by magnitude as it trains.

    Each chosen layer with kernel ``W`` (``n`` entries) becomes its fixed-mask form
    (``tf_supermask.models.sparsify(model, mask="fixed", keep_weights=True)``),
    computing the layer with ``W * m``. The mask ``m`` starts all ones; at every
    training step ``t`` where the schedule answers ``(True, s_t)``, ``GradualPruning``
    sets ``m`` to the ``max(1, round(n * (1 - s_t)))`` largest ``|W|`` among the
    entries ``m`` still keeps (tfmot's count, in float32), before that step's update.
    Pruned entries never grow back. Biases, normalisation and every other layer are
    left dense, as tfmot leaves them.

    Prunable layers: ``Dense``, ``Conv1D``, ``Conv2D``, ``Conv3D``,
    ``DepthwiseConv2D``, ``SeparableConv2D`` (its depthwise and pointwise kernels),
    ``Conv2DTranspose``, ``EinsumDense`` and the four projections of
    ``MultiHeadAttention``. As tfmot does with a whole model, every one of them is
    pruned by default, the first layer and the classifier included.

    Args:
      model: a built Keras 3 Sequential or functional model (its weights are kept;
        `model` itself is left as it was).
      pruning_schedule: a tfmot ``PruningSchedule`` (``pruning_schedule(...)``,
        ``tfmot_schedules().PolynomialDecay(...)``, or ``tfmot.sparsity.keras``'s
        own), or any callable mapping a step tensor to ``(should_prune, sparsity)``;
        ``sparsity`` is the fraction PRUNED, as in tfmot.
      layers: which layers to prune: None (every prunable layer), a predicate
        ``layer -> bool``, or a list of layer classes and names (tfmot's
        per-layer ``clone_model`` recipe in one argument).
      scope: "layer" (every layer reaches the schedule's sparsity, as tfmot) or
        "global" (one magnitude ranking over all the pruned layers).

    Returns:
      A new model, to compile and fit with ``GradualPruning()`` among its callbacks.
      Its inputs and outputs have `model`'s shapes.

    Raises:
      ValueError: a subclassed or unbuilt model, an unknown or non-prunable layer in
        `layers`, a bad scope, a schedule that is not callable.

    Example:

    >>> import keras
    >>> from tf_supermask.pruning import prune_low_magnitude, pruning_schedule
    >>> inputs = keras.Input((16, 3))
    >>> x = keras.layers.Conv1D(8, 3, activation="relu")(inputs)
    >>> outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    >>> pruned = prune_low_magnitude(keras.Model(inputs, outputs),
    ...                              pruning_schedule("constant", 0.5, begin_step=0))
    >>> [type(layer).__name__ for layer in pruned.layers]
    ['InputLayer', 'MaskedConv1D', 'GlobalAveragePooling1D', 'MaskedDense']
    """
    from tf_supermask.models.sparsify import sparsify

    if not callable(pruning_schedule):
        raise ValueError("prune_low_magnitude needs a pruning schedule, e.g. "
                         "pruning_schedule('polynomial', 0.8, begin_step=0, end_step=1000)")
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; choose one of {SCOPES}")
    pruned = sparsify(model, mask="fixed", k=1.0, layers=layers, keep_weights=True,
                      prune_first_layer=True)
    setattr(pruned, PRUNING_ATTRIBUTE, {"schedule": pruning_schedule, "scope": scope})
    return pruned


def strip_pruning(model):
    """`model` as plain Keras layers with the pruned kernels ``W * m`` (tfmot's
    ``strip_pruning``): no masks, nothing of tf_supermask in its ``.keras`` file.

    Args:
      model: a model from ``prune_low_magnitude`` (or any model with masked layers).

    Returns:
      A new Keras model that predicts what `model` predicts.
    """
    from tf_supermask.models.sparsify import strip

    return strip(model)


def layer_sparsity(model):
    """{kernel path: fraction of its entries pruned} of every masked layer of `model`,
    as ``GradualPruning`` logs them to TensorBoard (``sparsity/<kernel path>``)."""
    return {path: 1.0 - int(np.count_nonzero(mask)) / int(mask.size)
            for path, mask in get_masks(model).items()}


__all__ = ["layer_sparsity", "prune_low_magnitude", "strip_pruning"]
