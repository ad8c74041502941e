"""MobileNet-v2 for CIFAR.

Sandler et al.'s inverted residual blocks (1x1 expansion, 3x3 depthwise, linear
1x1 projection; a residual connection where the stride is 1 and the width does
not change; ReLU6), with the CIFAR strides of kuangliu/pytorch-cifar: the stem
and the 24-channel stage keep stride 1, so a 32x32 image is downsampled 8x
instead of 32x. The depthwise convs are MaskedConv2D with groups = channels.
"""

import keras

from tf_supermask.models.builder import MODELS
from tf_supermask.models.vgg import conv_bn

# (expansion t, output channels c, blocks n, stride of the first block s).
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def inverted_residual(x, options, expansion, filters, strides, name):
    """Expand (1x1), depthwise 3x3, project (1x1, linear); add the input where shapes match."""
    channels = int(x.shape[-1])
    hidden = channels * expansion
    y = x
    if expansion != 1:
        y = conv_bn(y, options, hidden, 1, 1, f"{name}_expand", activation="relu6")
    y = conv_bn(y, options, hidden, 3, strides, f"{name}_depthwise", groups=hidden,
                activation="relu6")
    y = conv_bn(y, options, filters, 1, 1, f"{name}_project", activation=None)
    if strides == 1 and channels == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


@MODELS.register("mobilenet_v2")
def mobilenet_v2(input_shape, num_classes, options):
    """mobilenet_v2 (CIFAR): stride-1 stem, 17 inverted residuals, 1x1 conv to 1280, linear."""
    options.set_first_layer_default(False)
    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, options, options.scaled(32), 3, 1, "stem", activation="relu6")
    for stage, (expansion, width, blocks, stride) in enumerate(MOBILENET_V2_STAGES, start=1):
        for block in range(1, blocks + 1):
            x = inverted_residual(x, options, expansion, options.scaled(width),
                                  stride if block == 1 else 1, f"stage{stage}_block{block}")
    x = conv_bn(x, options, options.scaled(1280), 1, 1, "head", activation="relu6")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = options.dense(num_classes, name="output")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")
