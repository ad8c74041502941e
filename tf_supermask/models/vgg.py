"""VGG-11/16/19 for CIFAR, with BatchNorm, and the conv + BatchNorm blocks of the deep models.

The CIFAR variant of the pruning literature (Liu et al. 2019's rethinking-pruning
code, kuangliu/pytorch-cifar): the VGG conv stacks of Simonyan & Zisserman with
3x3 convs (no bias) each followed by BatchNorm and ReLU, 2x2 max-pools, and a
single linear classifier on the 512 pooled features.
"""

import keras

from tf_supermask.models.builder import MODELS

VGG_LAYERS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


def batchnorm(options, name):
    """The BatchNorm of the VGG, ResNet and MobileNet-v2 models.

    These networks always have one after every conv. ``options.batchnorm``
    "nonaffine" gives edge-popup's BatchNorm without scale and shift; "none"
    (the default) and "affine" give the usual affine BatchNorm. Momentum and
    epsilon are PyTorch's defaults (0.1 and 1e-5 there), as in the reference
    implementations.
    """
    affine = options.batchnorm != "nonaffine"
    return keras.layers.BatchNormalization(center=affine, scale=affine, momentum=0.9,
                                           epsilon=1e-5, name=name)


def conv_bn(x, options, filters, kernel_size, strides, name, groups=1, activation="relu"):
    """Masked conv (no bias), BatchNorm, then ReLU ("relu"), ReLU6 ("relu6") or nothing (None)."""
    x = options.conv(filters, kernel_size, strides=strides, groups=groups, use_bias=False,
                     name=name)(x)
    x = batchnorm(options, f"{name}_bn")(x)
    if activation == "relu":
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    elif activation == "relu6":
        x = keras.layers.ReLU(max_value=6.0, name=f"{name}_relu")(x)
    elif activation is not None:
        raise ValueError(f"unknown activation {activation!r}")
    return x


def _vgg(name):
    def build(input_shape, num_classes, options):
        options.set_first_layer_default(False)
        inputs = keras.Input(input_shape)
        x, block, index = inputs, 1, 1
        for item in VGG_LAYERS[name]:
            if item == "M":
                # "same" pooling lets inputs smaller than 32x32 (MNIST) through five pools.
                x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{block}")(x)
                block, index = block + 1, 1
            else:
                x = conv_bn(x, options, options.scaled(item), 3, 1, f"conv{block}_{index}")
                index += 1
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
        outputs = options.dense(num_classes, name="output")(x)
        return keras.Model(inputs, outputs, name=name)

    convs = sum(1 for item in VGG_LAYERS[name] if item != "M")
    build.__doc__ = (f"{name} (CIFAR): {convs} 3x3 conv + BatchNorm + ReLU layers in 5 blocks "
                     "separated by 2x2 max-pools, then one linear layer on the pooled features.")
    return build


for _name in VGG_LAYERS:
    MODELS.register(_name)(_vgg(_name))
