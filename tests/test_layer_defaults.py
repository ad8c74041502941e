"""A masked layer built directly starts as the same layer inside a registered model."""

import keras
import numpy as np
import pytest

from tf_supermask.layers import MaskedConv2D, MaskedDense, masked_layers
from tf_supermask.models import MaskOptions, build_model


def _values(layer):
    out = {"kernel": keras.ops.convert_to_numpy(layer.kernel_variable)}
    if hasattr(layer, "scores"):
        out["scores"] = keras.ops.convert_to_numpy(layer.scores)
    return out


@pytest.mark.parametrize("mask", ["topk", "bernoulli"])
def test_direct_dense_layer_equals_the_fc_recipe_layer(mask):
    # fc's first masked layer is layer 0 of seed 3: seed 3000.
    model = build_model("fc", (28, 28, 1), 10, MaskOptions(mask=mask, seed=3))
    inside = masked_layers(model)[0]
    direct = MaskedDense(300, mask=mask, seed=3000, use_bias=False)
    direct.build((None, 784))
    want, got = _values(inside), _values(direct)
    assert sorted(want) == sorted(got) == ["kernel", "scores"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_topk_scores_start_as_edge_popup_uniform_and_kernel_as_kaiming_normal():
    layer = MaskedDense(300, mask="topk", seed=0)
    layer.build((None, 784))
    scores = keras.ops.convert_to_numpy(layer.scores)
    kernel = keras.ops.convert_to_numpy(layer.kernel_variable)
    bound = 1 / np.sqrt(784)  # hidden-networks: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    assert np.abs(scores).max() <= bound and np.abs(scores).max() > 0.95 * bound
    # kaiming_normal (fan_in, relu gain): std = sqrt(2 / 784).
    assert abs(kernel.std() - np.sqrt(2 / 784)) < 0.02 * np.sqrt(2 / 784)


def test_direct_conv_layer_equals_the_conv2_recipe_layer():
    model = build_model("conv2", (28, 28, 1), 10, MaskOptions(mask="topk", seed=1))
    inside = masked_layers(model)[1]  # layer 1: seed 1001
    direct = MaskedConv2D(64, 3, mask="topk", seed=1001, use_bias=False)
    direct.build((None, 28, 28, 64))
    for name, value in _values(inside).items():
        np.testing.assert_array_equal(_values(direct)[name], value, err_msg=name)
