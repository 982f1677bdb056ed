"""Accuracy and loss of a model on a split, in eval mode, without autograd."""

from __future__ import annotations

import torch
from torch import nn

from kd_env.data import BatchTransform
from kd_env.engine.losses import per_sample_cross_entropy


@torch.inference_mode()
def accuracy_and_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    batch_size: int,
    memory_format: torch.memory_format,
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``images`` (``batch_size`` at a time);
    the model's train/eval mode is put back afterwards."""
    if labels.numel() == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    correct, total_loss = 0, 0.0
    for start in range(0, labels.shape[0], batch_size):
        batch = transform(images[start : start + batch_size], train=False)
        logits = model(batch.contiguous(memory_format=memory_format))
        batch_labels = labels[start : start + batch_size]
        correct += int((logits.argmax(1) == batch_labels).sum())
        total_loss += float(per_sample_cross_entropy(logits, batch_labels).sum())
    model.train(was_training)
    return correct / labels.shape[0], total_loss / labels.shape[0]
