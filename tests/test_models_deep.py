"""The VGG, ResNet and MobileNet-v2 models of the pruning-and-fine-tuning experiments."""

import keras
import numpy as np
import pytest

from conftest import batch
from tf_supermask.layers import MASK_MODES, get_masks, topk_kept_count, masked_layers
from tf_supermask.models import MODELS, MaskOptions, build_model
from tf_supermask.training import TrainConfig

DEEP_MODELS = ["vgg11", "vgg16", "vgg19", "resnet20", "resnet56", "resnet18", "mobilenet_v2"]

# Trainable parameters of the dense models for 10 classes (kernels, biases, BatchNorm scale and
# shift; the BatchNorm moving statistics are not counted, as PyTorch's parameters() does not).
# Convs that feed BatchNorm have no bias.
#   vgg11/16/19: 3x3 conv kernels 9,217,728 / 14,710,464 / 20,018,880, BatchNorm 2 x (channels
#     of all convs) = 5,504 / 8,448 / 11,008, linear 512 x 10 + 10 = 5,130.
#   resnet20/56: akamaster's He et al. option-A counts 269,722 / 853,018, plus our two 1x1
#     projection shortcuts (16x32 + 32x64 weights, BatchNorm 2 x (32 + 64)) = 2,752.
#   resnet18: 11,173,962, the ResNet18 of kuangliu/pytorch-cifar.
#   mobilenet_v2: 2,236,682, torchvision's mobilenet_v2(num_classes=10) (3,504,872 for 1000
#     classes minus 1,281 x 990); the CIFAR strides do not change the count.
REFERENCE_TRAINABLE_PARAMS = {
    "vgg11": 9_228_362, "vgg16": 14_724_042, "vgg19": 20_035_018,
    "resnet20": 272_474, "resnet56": 855_770, "resnet18": 11_173_962,
    "mobilenet_v2": 2_236_682,
}


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_registered():
    assert set(DEEP_MODELS) <= set(MODELS.names())


@pytest.mark.parametrize("name", DEEP_MODELS)
def test_dense_parameter_counts_match_the_references(name):
    model = build_model(name, (32, 32, 3), 10, MaskOptions(mask="dense"))
    assert _trainable_count(model) == REFERENCE_TRAINABLE_PARAMS[name]
    # Every conv is followed by a BatchNorm holding two moving statistics per channel.
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    moving = sum(2 * int(layer.moving_mean.shape[0]) for layer in norms)
    assert model.count_params() == REFERENCE_TRAINABLE_PARAMS[name] + moving
    convs = [layer for layer in masked_layers(model) if len(layer.kernel_variable.shape) == 4]
    assert len(norms) == len(convs)
    assert all(layer.bias is None for layer in convs)


@pytest.mark.parametrize("mode", MASK_MODES.names())
@pytest.mark.parametrize("name", DEEP_MODELS)
def test_every_model_builds_in_every_mode(name, mode):
    model = build_model(name, (32, 32, 3), 10, MaskOptions(mask=mode, width=0.25, k=0.3))
    out = model(batch((2, 32, 32, 3)), training=False)
    assert tuple(out.shape) == (2, 10)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    layers = masked_layers(model)
    # The first conv is unpruned (dense mode) by default; every other layer has the run's mode.
    assert layers[0].mask_mode == "dense"
    assert all(layer.mask_mode == mode for layer in layers[1:])


def test_width_multiplier_scales_every_layer_but_the_output():
    model = build_model("resnet20", (32, 32, 3), 10, MaskOptions(width=0.5))
    widths = {layer.name: layer.kernel_variable.shape[-1] for layer in masked_layers(model)}
    assert widths["stem"] == 8
    assert widths["stage1_block3_conv2"] == 8
    assert widths["stage2_block1_shortcut"] == 16
    assert widths["stage3_block3_conv2"] == 32
    assert widths["output"] == 10
    vgg = build_model("vgg16", (32, 32, 3), 100, MaskOptions(width=0.25))
    assert masked_layers(vgg)[-1].kernel_variable.shape == (128, 100)


def test_resnet_shortcuts_are_masked_1x1_convs_only_where_the_shape_changes():
    model = build_model("resnet18", (32, 32, 3), 10, MaskOptions(mask="topk", width=0.25))
    shortcuts = {layer.name: tuple(layer.kernel_variable.shape)
                 for layer in masked_layers(model) if "shortcut" in layer.name}
    assert shortcuts == {"stage2_block1_shortcut": (1, 1, 16, 32),
                         "stage3_block1_shortcut": (1, 1, 32, 64),
                         "stage4_block1_shortcut": (1, 1, 64, 128)}
    assert all(layer.mask_mode == "topk" for layer in masked_layers(model)
               if "shortcut" in layer.name)


def test_mobilenet_depthwise_convs_are_grouped_and_downsample_8x():
    model = build_model("mobilenet_v2", (32, 32, 3), 10, MaskOptions(mask="fixed", width=0.25))
    depthwise = [layer for layer in masked_layers(model) if "depthwise" in layer.name]
    assert len(depthwise) == 17
    assert all(layer.groups == layer.filters and layer.kernel_variable.shape[2] == 1
               for layer in depthwise)
    head = model.get_layer("head").output
    assert tuple(head.shape[1:3]) == (4, 4)


def test_depthwise_conv_applies_one_filter_per_channel():
    channels = 5
    layer = MaskOptions(mask="fixed").conv(channels, 3, groups=channels)
    x = batch((1, 6, 6, channels))
    y = keras.ops.convert_to_numpy(layer(x))
    kernel = keras.ops.convert_to_numpy(layer.kernel_variable)  # (3, 3, 1, C)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.einsum("hwc,hwc->c", padded[0, 2:5, 3:6, :], kernel[:, :, 0, :])
    np.testing.assert_allclose(y[0, 2, 3], expected, rtol=1e-4, atol=1e-5)


def test_nonaffine_batchnorm_has_no_parameters_and_none_means_affine():
    nonaffine = build_model("resnet20", (32, 32, 3), 10,
                            MaskOptions(mask="topk", width=0.25, batchnorm="nonaffine"))
    affine = build_model("resnet20", (32, 32, 3), 10, MaskOptions(mask="topk", width=0.25))
    for model, expected in ((nonaffine, False), (affine, True)):
        norms = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(norms) == 21  # 19 convs and 2 shortcuts
        assert all(layer.center is expected and layer.scale is expected for layer in norms)
        assert all(bool(layer.trainable_weights) is expected for layer in norms)


def test_unpruned_first_layer_in_topk_mode():
    model = build_model("resnet20", (32, 32, 3), 10,
                        MaskOptions(mask="topk", k=0.2, width=0.25))
    first = masked_layers(model)[0]
    assert first.name == "stem" and first.mask_mode == "dense"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first.get_mask()), 1.0)
    assert first.kernel_variable.trainable
    masks = get_masks(model)
    assert first.kernel_variable.path not in masks
    assert len(masks) == len(masked_layers(model)) - 1
    for mask in masks.values():
        assert mask.sum() == topk_kept_count(0.2, mask.size)


@pytest.mark.parametrize("name, first", [("resnet20", "stem"), ("vgg11", "conv1_1"),
                                         ("fc", "dense1"),
                                         ("conv2", "conv1_1")])
def test_prune_first_layer_flag_serves_old_and_new_models(name, first):
    shape = (28, 28, 1) if name == "fc" else (32, 32, 3)

    def first_mode(setting):
        options = TrainConfig(model=name, mask="topk", width=0.25,
                              prune_first_layer=setting).mask_options()
        layer = masked_layers(build_model(name, shape, 10, options))[0]
        assert layer.name == first
        return layer.mask_mode

    default_pruned = name in ("fc", "conv2")  # the old models keep masking every layer
    assert first_mode("auto") == ("topk" if default_pruned else "dense")
    assert first_mode("true") == "topk"
    assert first_mode("false") == "dense"


def test_pruned_first_layer_in_fixed_mode_has_a_mask():
    model = build_model("vgg11", (32, 32, 3), 10,
                        MaskOptions(mask="fixed", width=0.25, prune_first_layer=True))
    assert "conv1_1/kernel" in get_masks(model)


def test_one_training_step_resnet20_topk():
    model = build_model("resnet20", (32, 32, 3), 10,
                        MaskOptions(mask="topk", k=0.5, width=0.25,
                                    init="signed_kaiming_constant"))
    layers = masked_layers(model)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.variables}
    model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True,  # no tracing: faster
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.train_on_batch(batch((2, 32, 32, 3)), np.array([1, 7]))
    assert np.isfinite(loss)
    after = {v.path: keras.ops.convert_to_numpy(v) for v in model.variables}

    def changed(path):
        return not np.array_equal(before[path], after[path])

    # Scores learn, the masked layers' weights stay frozen, the unpruned stem trains.
    assert all(changed(layer.scores.path) for layer in layers[1:])
    assert not any(changed(layer.kernel_variable.path) for layer in layers[1:])
    assert changed(layers[0].kernel_variable.path)
