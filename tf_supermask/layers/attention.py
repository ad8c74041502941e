"""``keras.layers.MultiHeadAttention`` whose four projections are masked.

The query, key, value and output projections of Keras's attention layer are
``EinsumDense`` layers it builds itself; ``MaskedMultiHeadAttention`` builds them as
``MaskedEinsumDense`` layers with one set of masked-layer arguments (``masked``), each
projection seeded apart. Everything else (the attention itself, dropout, masks) is
Keras's.

Example:

>>> import numpy as np
>>> from tf_supermask.layers import masked_layers
>>> from tf_supermask.layers.attention import MaskedMultiHeadAttention
>>> attention = MaskedMultiHeadAttention(num_heads=2, key_dim=4,
...                                      masked={"mask": "topk", "k": 0.5, "seed": 3})
>>> x = np.zeros((1, 5, 8), "float32")
>>> tuple(attention(x, x).shape)
(1, 5, 8)
>>> [(layer.name, layer.mask_mode) for layer in masked_layers(attention)]
[('query', 'topk'), ('key', 'topk'), ('value', 'topk'), ('attention_output', 'topk')]
"""

import contextlib

import keras

from tf_supermask.layers.kinds import MaskedEinsumDense

PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")


@contextlib.contextmanager
def _masked_einsum(masked, dtype):
    """Keras's attention module builds MaskedEinsumDense layers inside the block."""
    from keras.src.layers.attention import multi_head_attention as module

    original = module.EinsumDense
    count = [0]

    def factory(equation, output_shape=None, bias_axes=None, name=None, activation=None,
                **unused):
        kwargs = {key: (keras.initializers.deserialize(value) if key.endswith("initializer")
                        and isinstance(value, dict) else value)
                  for key, value in masked.items()}
        if kwargs.get("seed") is not None:  # each projection its own draws
            kwargs["seed"] = int(kwargs["seed"]) * 10 + count[0]
            for key in ("kernel_initializer", "score_initializer"):
                init = kwargs.get(key)
                if isinstance(init, keras.initializers.Initializer):
                    config = init.get_config()
                    if "seed" in config and config["seed"] is not None:
                        config["seed"] = int(config["seed"]) * 10 + count[0]
                        kwargs[key] = type(init).from_config(config)
        count[0] += 1
        return MaskedEinsumDense(equation, output_shape, bias_axes=bias_axes, name=name,
                                 activation=activation, use_bias=bias_axes is not None,
                                 dtype=dtype, **kwargs)

    module.EinsumDense = factory
    try:
        yield
    finally:
        module.EinsumDense = original


@keras.saving.register_keras_serializable(package="tf_supermask")
class MaskedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` with masked query/key/value/output projections.

    Args:
      masked: keyword arguments of the masked projections (``MaskedLayer``'s: mask, k,
        seed, kernel_initializer, score_initializer, train_weights, rescale, ...).
      **kwargs: ``keras.layers.MultiHeadAttention``'s arguments.

    Input and output shapes are Keras's.
    """

    def __init__(self, masked=None, **kwargs):
        super().__init__(**kwargs)
        self.masked = {key: (keras.initializers.serialize(value)
                             if isinstance(value, keras.initializers.Initializer) else value)
                       for key, value in dict(masked or {}).items()}

    @classmethod
    def from_keras(cls, layer, masked):
        return cls(masked=masked, **layer.get_config())

    def build(self, query_shape, value_shape, key_shape=None):
        with _masked_einsum(self.masked, self.dtype_policy):
            super().build(query_shape, value_shape, key_shape)

    def _make_output_dense(self, *args, **kwargs):
        with _masked_einsum(self.masked, self.dtype_policy):
            return super()._make_output_dense(*args, **kwargs)

    def projections(self):
        return [getattr(self, name) for name in PROJECTIONS]

    def copy_weights_from(self, layer, keep_weights, assign):
        """Biases (and kernels, when `keep_weights`) of a Keras attention layer's projections."""
        for name in PROJECTIONS:
            old, new = getattr(layer, name), getattr(self, name)
            assign(new, old.kernel if keep_weights else None,
                   old.bias if getattr(old, "bias", None) is not None else None)

    def plain_config(self):
        """The config of the Keras attention layer this computes as."""
        config = self.get_config()
        config.pop("masked", None)
        return config

    def fold_into(self, plain):
        """Puts each projection's effective kernel (and bias) into a built Keras attention
        layer."""
        for name in PROJECTIONS:
            masked = getattr(self, name)
            values = [masked.evaluation_kernel()]
            if masked.bias is not None:
                values.append(keras.ops.convert_to_numpy(masked.bias))
            getattr(plain, name).set_weights(values)

    def get_config(self):
        return {**super().get_config(), "masked": self.masked}
