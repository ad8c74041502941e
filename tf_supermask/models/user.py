"""A user's own model as ``--model``: what ``build_model`` builds when the name is not a
registered model (``tf_supermask.choices.model_kind`` says which form it is).

- ``keras.applications.<Name>``: ``keras.applications.<Name>(weights=None,
  input_shape=..., classes=num_classes, classifier_activation=None)`` (logits);
- ``package.module:function``: ``function(input_shape, num_classes)``, imported from
  the module (on ``sys.path``, or the working directory);
- a ``.keras`` file: the saved model (its input shape must match the data);
- ``python:<name>``: a model or builder registered in this process with
  ``register_user_model`` (a run made this way can be resumed only by a process that
  registers it again).

The result is then masked by ``sparsify`` with the run's ``MaskOptions``. The run
directory's ``flags.txt`` holds ``--model``, which is how the run is rebuilt.

Example:

>>> import keras
>>> from tf_supermask.models import build_model, MaskOptions, register_user_model
>>> def tiny(input_shape, num_classes):
...     inputs = keras.Input(input_shape)
...     x = keras.layers.Flatten()(inputs)
...     return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
>>> register_user_model("tiny", tiny)
>>> model = build_model("python:tiny", (28, 28, 1), 10, MaskOptions(mask="topk"))
>>> [type(layer).__name__ for layer in model.layers]
['InputLayer', 'Flatten', 'MaskedDense']
"""

import importlib
import os
import re
import sys

import keras

from tf_supermask import choices

_REGISTERED = {}


def register_user_model(name, model):
    """Makes ``--model=python:<name>`` build `model`: a Keras model (cloned for every
    run) or a function ``(input_shape, num_classes) -> keras.Model``."""
    _REGISTERED[name] = model


def canonical_names(model):
    """`model` with Keras's automatic layer names ("dense_7") renamed as a fresh process
    would name them ("dense", "dense_1", ... in the model's order), so every build of
    the same function gives the same variable paths (masks are keyed by them). Layers
    the user named keep their names; weights are copied."""
    from keras.src.models.functional import Functional

    if not isinstance(model, (keras.Sequential, Functional)):
        return model
    counts = {}
    pairs = []

    def rename(layer):
        config = layer.get_config()
        base = keras.src.utils.naming.to_snake_case(type(layer).__name__)
        if re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name):
            index = counts.get(base, 0)
            counts[base] = index + 1
            config["name"] = base if index == 0 else f"{base}_{index}"
        new = type(layer).from_config(config)
        pairs.append((layer, new))
        return new

    out = keras.models.clone_model(model, clone_function=rename)
    for old, new in pairs:
        if old.weights:
            new.set_weights(old.get_weights())
    return out


def user_model(name, input_shape, num_classes):
    """The user's Keras model named by --model `name` (before masking).

    Raises:
      ValueError: the name names nothing that can be built, or the model does not fit
        the data (input shape, number of outputs).
    """
    kind = choices.model_kind(name)
    input_shape = tuple(int(d) for d in input_shape)
    if kind == "application":
        constructor = getattr(keras.applications, name[len(choices.APPLICATIONS_PREFIX):], None)
        if not callable(constructor):
            raise ValueError(f"--model={name}: keras.applications has no such model")
        try:
            model = constructor(weights=None, input_shape=input_shape, classes=num_classes,
                                classifier_activation=None)
        except (ValueError, TypeError) as error:
            raise ValueError(f"--model={name} cannot take inputs of shape {input_shape}: "
                             f"{str(error).splitlines()[0]}") from None
    elif kind == "function":
        module_name, function_name = name.split(":")
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"--model={name}: cannot import it ({error})") from None
        model = function(input_shape, num_classes)
    elif kind == "file":
        model = keras.saving.load_model(name, compile=False)
    elif kind == "python":
        key = name[len(choices.PYTHON_PREFIX):]
        if key not in _REGISTERED:
            raise ValueError(f"--model={name}: nothing registered as {key!r} in this process "
                             "(tf_supermask.models.register_user_model)")
        source = _REGISTERED[key]
        model = (keras.models.clone_model(source) if isinstance(source, keras.Model)
                 else source(input_shape, num_classes))
    else:
        raise ValueError(f"--model={name} is a registered model")
    if not isinstance(model, keras.Model):
        raise ValueError(f"--model={name} gave a {type(model).__name__}, not a keras.Model")
    if kind in ("function", "python"):
        model = canonical_names(model)
    if tuple(model.input_shape[1:]) != input_shape:
        raise ValueError(f"--model={name} takes inputs of shape {tuple(model.input_shape[1:])}, "
                         f"the data has {input_shape}")
    if model.output_shape[-1] != num_classes:
        raise ValueError(f"--model={name} has {model.output_shape[-1]} outputs, the data "
                         f"{num_classes} classes")
    return model
