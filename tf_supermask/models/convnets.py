"""The LeNet-300-100 (fc) and Conv2/4/6/8 networks of Frankle & Carbin and Zhou et al."""

import keras

from tf_supermask.models.builder import MODELS

CONV_WIDTHS = {"conv2": (64,), "conv4": (64, 128), "conv6": (64, 128, 256),
               "conv8": (64, 128, 256, 512)}


def _hidden(x, layer, options, name):
    """Masked layer, optional BatchNorm, ReLU."""
    x = layer(x)
    norm = options.norm(name=f"{name}_bn")
    if norm is not None:
        x = norm(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


@MODELS.register("fc")
def fc(input_shape, num_classes, options):
    """LeNet-300-100: 784-300-100-10 fully connected."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    for index, units in enumerate((300, 100)):
        x = _hidden(x, options.dense(options.scaled(units), name=f"dense{index + 1}"), options,
                    f"dense{index + 1}")
    outputs = options.dense(num_classes, name="output")(x)
    return keras.Model(inputs, outputs, name="fc")


def _convnet(name):
    def build(input_shape, num_classes, options):
        inputs = keras.Input(input_shape)
        x = inputs
        for block, width in enumerate(CONV_WIDTHS[name]):
            for conv in range(2):
                layer_name = f"conv{block + 1}_{conv + 1}"
                x = _hidden(x, options.conv(options.scaled(width), 3, name=layer_name), options,
                            layer_name)
            x = keras.layers.MaxPooling2D(2, name=f"pool{block + 1}")(x)
        x = keras.layers.Flatten()(x)
        for index in range(2):
            layer_name = f"dense{index + 1}"
            x = _hidden(x, options.dense(options.scaled(256), name=layer_name), options, layer_name)
        outputs = options.dense(num_classes, name="output")(x)
        return keras.Model(inputs, outputs, name=name)

    build.__doc__ = (f"{name}: blocks of two 3x3 convs then 2x2 max-pool, widths "
                     f"{CONV_WIDTHS[name]}, then FC 256-256-classes.")
    return build


for _name in CONV_WIDTHS:
    MODELS.register(_name)(_convnet(_name))
