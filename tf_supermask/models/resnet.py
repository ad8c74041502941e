"""ResNet-20/56 (He et al.'s CIFAR ResNets) and ResNet-18 (kuangliu/pytorch-cifar's CIFAR variant).

Basic blocks of two 3x3 convs with BatchNorm. Where a block changes the
resolution or the width, its shortcut is a 1x1 conv with stride and BatchNorm
(He et al.'s option "B"), a masked conv like the others, so every weight of the
network can be pruned. He et al. used the parameter-free option "A" (zero
padding) for ResNet-20/56; "B" adds 2,752 weights to both (0.27M and 0.86M).
"""

import keras

from tf_supermask.models.builder import MODELS
from tf_supermask.models.vgg import conv_bn


def basic_block(x, options, filters, strides, name):
    """conv-BN-ReLU, conv-BN, plus the shortcut, then ReLU."""
    shortcut = x
    y = conv_bn(x, options, filters, 3, strides, f"{name}_conv1")
    y = conv_bn(y, options, filters, 3, 1, f"{name}_conv2", activation=None)
    if strides != 1 or int(x.shape[-1]) != filters:
        shortcut = conv_bn(x, options, filters, 1, strides, f"{name}_shortcut", activation=None)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def resnet(input_shape, num_classes, options, stem, stages, name):
    """A CIFAR ResNet: 3x3 stem (stride 1, no max-pool), basic blocks, global pool, linear.

    Args:
      stem: the stem's width.
      stages: (width, blocks, stride) per stage.
    """
    options.set_first_layer_default(False)
    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, options, options.scaled(stem), 3, 1, "stem")
    for stage, (width, blocks, stride) in enumerate(stages, start=1):
        for block in range(1, blocks + 1):
            x = basic_block(x, options, options.scaled(width), stride if block == 1 else 1,
                            f"stage{stage}_block{block}")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = options.dense(num_classes, name="output")(x)
    return keras.Model(inputs, outputs, name=name)


def _cifar_resnet(depth):
    blocks = (depth - 2) // 6

    def build(input_shape, num_classes, options):
        return resnet(input_shape, num_classes, options, 16,
                      ((16, blocks, 1), (32, blocks, 2), (64, blocks, 2)), f"resnet{depth}")

    build.__doc__ = (f"resnet{depth} (He et al., CIFAR): 3 stages of {blocks} basic blocks, "
                     "widths 16/32/64, 1x1 conv shortcuts where the shape changes.")
    return build


MODELS.register("resnet20")(_cifar_resnet(20))
MODELS.register("resnet56")(_cifar_resnet(56))


@MODELS.register("resnet18")
def resnet18(input_shape, num_classes, options):
    """resnet18 (CIFAR): 3x3 stride-1 stem, no max-pool, 4 stages of 2 blocks, 64-128-256-512."""
    return resnet(input_shape, num_classes, options, 64,
                  ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)), "resnet18")
