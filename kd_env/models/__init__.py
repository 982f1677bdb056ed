"""The model zoo: CIFAR-style KD architectures plus small Fashion-MNIST nets.

Every model is a :class:`KDModel`; build one by name with :func:`create_model`.
"""

from __future__ import annotations

# Importing the family modules runs their ``@register_model`` decorators.
from kd_env.models import mobilenetv2, regnet, resnet, shufflenetv2, small, vgg, wrn  # noqa: F401
from kd_env.models.base import KDModel, ModelOutput
from kd_env.models.registry import MODELS, ModelFactory, create_model, list_models, register_model

__all__ = [
    "MODELS",
    "KDModel",
    "ModelFactory",
    "ModelOutput",
    "create_model",
    "list_models",
    "register_model",
]
