"""Masked layers, mask modes and initializers."""

from tf_supermask.layers.initializers import INITIALIZERS, VarianceScaled, get_initializer
from tf_supermask.layers.masked import (MaskedConv2D, MaskedDense, MaskedLayer, get_masks,
                                        masked_layers, nonaffine_batchnorm, set_masks,
                                        weights_remaining)
from tf_supermask.layers.masks import MASK_MODES, topk_binary_mask, topk_kept_count
from tf_supermask.layers.kinds import (MaskedConv1D, MaskedConv2DTranspose, MaskedConv3D,
                                       MaskedDepthwiseConv2D, MaskedEinsumDense)
from tf_supermask.layers.attention import MaskedMultiHeadAttention
