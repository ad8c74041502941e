import numpy as np
import pytest
from keras import ops

from conftest import batch
from tf_supermask.layers import MASK_MODES, masked_layers
from tf_supermask.models import MODELS, MaskOptions, build_model

# Dense parameter counts (kernels + biases) worked out by hand from the published layer
# widths: LeNet-300-100 and Conv-2/4/6 from Frankle & Carbin, "The Lottery Ticket
# Hypothesis" (arXiv:1803.03635, Figure 2), Conv-8 from Ramanujan et al.'s edge-popup code,
# https://github.com/allenai/hidden-networks/blob/master/models/frankle.py (3x3 convs in
# pairs of 64/128/256/512 channels with 2x2 max pools, then 256-256-classes dense).
# CIFAR-10 inputs for the convnets (32x32x3), MNIST for fc. Conv2 and Conv4 match
# Frankle & Carbin's 4.3M and 2.4M.
EXPECTED_DENSE_PARAMS = {"fc": 266_610, "conv2": 4_301_642, "conv4": 2_425_930,
                         "conv6": 2_262_602, "conv8": 5_278_282}


def _input(name):
    return (28, 28, 1) if name == "fc" else (32, 32, 3)


def test_registered_models():
    assert set(EXPECTED_DENSE_PARAMS) <= set(MODELS.names())


@pytest.mark.parametrize("name", sorted(EXPECTED_DENSE_PARAMS))
def test_dense_parameter_counts_match_the_papers(name):
    model = build_model(name, _input(name), 10, MaskOptions(mask="dense"))
    assert model.count_params() == EXPECTED_DENSE_PARAMS[name]


@pytest.mark.parametrize("mode", MASK_MODES.names())
@pytest.mark.parametrize("name", ["fc", "conv2", "conv4", "conv6", "conv8"])
def test_every_model_builds_in_every_mode(name, mode):
    model = build_model(name, _input(name), 10, MaskOptions(mask=mode, width=0.125))
    out = model(batch((2,) + _input(name)))
    assert tuple(out.shape) == (2, 10)
    assert all(layer.mask_mode == mode for layer in masked_layers(model))


def test_width_multiplier_scales_hidden_layers():
    model = build_model("conv4", (32, 32, 3), 10, MaskOptions(width=0.5))
    widths = [layer.kernel_variable.shape[-1] for layer in masked_layers(model)]
    assert widths == [32, 32, 64, 64, 128, 128, 10]


def test_nonaffine_batchnorm_has_no_trainable_parameters():
    model = build_model("conv2", (8, 8, 3), 10, MaskOptions(mask="topk", batchnorm="nonaffine"))
    norms = [layer for layer in model.layers if "bn" in layer.name]
    assert len(norms) == 4
    assert all(not layer.trainable_weights for layer in norms)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*conv2"):
        build_model("resnet9000", (8, 8, 3), 10)
