"""Model builders, registered by name; every model works in every mask mode."""

from tf_supermask.models.builder import MODELS, MaskOptions, build_model
from tf_supermask.models import convnets  # noqa: F401  (registers fc, conv2..conv8)
from tf_supermask.models import mobilenet, resnet, vgg  # noqa: F401  (vgg*, resnet*, mobilenet_v2)
from tf_supermask.models.sparsify import sparsify, strip
from tf_supermask.models.user import register_user_model

MODELS.check_complete()  # every name of tf_supermask.choices.MODEL_NAMES was registered

__all__ = ["MODELS", "MaskOptions", "build_model", "register_user_model", "sparsify", "strip"]
