"""How well a teacher classifies: top-1 accuracy, arg-max predictions, and accuracy on the true
labels split into the classes a teacher was trained on and the rest (a specialist or a relabelled
teacher is judged by what it gets right, not by the labels it learned)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["accuracy_by_class_group", "channels_last_input", "evaluate_accuracy", "predict_classes", "uses_conv"]


def uses_conv(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution (the channels-last memory format pays off only then)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4-D batch in the channels-last memory format when ``channels_last``; anything else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: Callable[..., torch.Tensor],
    *,
    batch_size: int = 1000,
    channels_last: bool = False,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on uint8 ``images`` (eval transform)."""
    predictions = predict_classes(model, images, transform, batch_size=batch_size, channels_last=channels_last)
    return float((predictions == labels.to(predictions.device).long()).float().mean()) if labels.numel() else 0.0


@torch.no_grad()
def predict_classes(
    model: nn.Module,
    images: torch.Tensor,
    transform: Callable[..., torch.Tensor],
    *,
    batch_size: int = 1000,
    channels_last: bool = False,
) -> torch.Tensor:
    """The arg-max class of ``model`` for every uint8 image (eval mode, eval transform), ``[N]``."""
    was_training = model.training
    model.eval()
    eval_generator = torch.Generator(device=images.device)
    parts = []
    for start in range(0, images.shape[0], batch_size):
        x = transform(images[start : start + batch_size], eval_generator, train=False)
        parts.append(model(channels_last_input(x, channels_last)).argmax(dim=1))
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=images.device)


def accuracy_by_class_group(predictions: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None) -> dict[str, float | None]:
    """Accuracy on the true labels: overall, on ``classes`` (its own) and on the other classes.

    ``None`` where a group is empty (a teacher trained on every class has no "rest").
    """
    labels = labels.to(predictions.device).long()
    correct = (predictions == labels).float()

    def mean(mask: torch.Tensor) -> float | None:
        return float(correct[mask].mean()) if bool(mask.any()) else None

    own = (
        torch.ones_like(labels, dtype=torch.bool)
        if classes is None
        else torch.isin(labels, torch.as_tensor(list(classes), device=labels.device))
    )
    return {"acc": mean(torch.ones_like(own)), "acc_own": mean(own), "acc_rest": mean(~own)}
