"""Which masked layer kinds take the fused CPU kernels in a training step (TF, CPU)."""
import numpy as np, keras, tensorflow as tf
from tf_supermask.layers import fused, MaskedDense, MaskedConv2D
from tf_supermask.layers.kinds import (MaskedConv1D, MaskedConv3D, MaskedConv2DTranspose,
                                       MaskedDepthwiseConv2D, MaskedEinsumDense)
cases = {
    "MaskedDense": (lambda kw: MaskedDense(4, **kw), (2, 6)),
    "MaskedConv1D": (lambda kw: MaskedConv1D(4, 3, **kw), (2, 8, 3)),
    "MaskedConv2D": (lambda kw: MaskedConv2D(4, 3, **kw), (2, 8, 8, 3)),
    "MaskedConv3D": (lambda kw: MaskedConv3D(4, 3, **kw), (2, 6, 6, 6, 3)),
    "MaskedDepthwiseConv2D": (lambda kw: MaskedDepthwiseConv2D(3, **kw), (2, 8, 8, 3)),
    "MaskedConv2DTranspose": (lambda kw: MaskedConv2DTranspose(4, 3, **kw), (2, 8, 8, 3)),
    "MaskedEinsumDense": (lambda kw: MaskedEinsumDense("abc,cd->abd", (None, 5), bias_axes="d", **kw), (2, 7, 3)),
}
print("library:", fused.library() is not None)
for name, (make, shape) in cases.items():
    row = []
    for mode in ("topk", "bernoulli", "fixed"):
        layer = make(dict(mask=mode, k=0.5, seed=1))
        x = tf.constant(np.ones(shape, "float32"))
        layer(x)
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                y = tf.reduce_sum(layer(x, training=True))
            return tape.gradient(y, layer.trainable_variables)
        before = fused.uses[mode]
        step(x)
        row.append(f"{mode}={'fused' if fused.uses[mode] > before else 'keras.ops'}")
    print(f"{name:24s}", " ".join(row))
