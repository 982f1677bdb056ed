"""Name -> constructor registry of the model zoo.

Kept in its own module (not in ``kd_env/models/__init__.py``) so that the family modules can
import ``register_model`` without a circular import through the package ``__init__``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from kd_env.models.base import KDModel

ModelFactory = Callable[..., KDModel]
F = TypeVar("F", bound=ModelFactory)

#: Every registered model: ``name -> factory(num_classes=..., in_channels=..., **kwargs)``.
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Decorator that registers a factory under ``name`` (names must be unique)."""

    def decorator(factory: F) -> F:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(MODELS)


def create_model(name: str, num_classes: int = 100, in_channels: int = 3, image_size: int | None = None, **kwargs: Any) -> KDModel:
    """Build the registered model ``name``.

    Args:
        name: a registry name, e.g. ``"resnet32x4"`` (see :func:`list_models`).
        num_classes: size of the classifier output.
        in_channels: channels of the input images (the first conv is built for this).
        image_size: input height (= width). Passed only to factories whose layers depend on it
            (e.g. ``mlp``); convolutional models pool adaptively and ignore it.
        **kwargs: extra, model-specific options passed to the factory.

    Raises:
        ValueError: if ``name`` is not registered.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    if image_size is not None and "image_size" in inspect.signature(factory).parameters:
        kwargs.setdefault("image_size", int(image_size))
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
