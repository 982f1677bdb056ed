"""Small networks sized for Fashion-MNIST (1x28x28) on a couple of CPU cores.

``mlp``: ``flatten -> Linear(784, 256) -> ReLU``; the hidden vector is the "feature map"
(``[B, 256, 1, 1]``) so feature KD works uniformly.

``cnn_w{8,16,32,64}``: three 3x3 conv-BN-ReLU blocks of widths ``w, 2w, 4w``; the second and
third have stride 2, so a 28x28 input gives a 7x7 final map. Parameter counts with 10 classes:
about 6k / 24k / 94k / 373k.
"""

from __future__ import annotations

import torch
from torch import nn

from kd_env.models._common import conv_bn, kaiming_init
from kd_env.models.base import KDModel
from kd_env.models.registry import register_model


class MLP(KDModel):
    """One-hidden-layer perceptron on flattened images.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        image_size: input height = width (the first layer is sized for it; default 28).
        hidden: hidden width (= ``feature_channels``).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels = hidden
        self.image_size = image_size
        n_inputs = in_channels * image_size * image_size
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(n_inputs, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 "map" so that pooling it is the identity and feature KD code needs no special case.
        return self.hidden(x)[:, :, None, None]


class SmallCNN(KDModel):
    """Plain conv net: ``conv(w) -> conv(2w, s2) -> conv(4w, s2)``, each conv + BN + ReLU.

    Strided convs (rather than conv + max-pool) do the downsampling because they compute the
    two deeper convs at the reduced resolution, which is what keeps a CPU epoch short.
    """

    def __init__(self, width: int, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels = 4 * width
        self.body = nn.Sequential(
            conv_bn(in_channels, width, 3, 1),
            conv_bn(width, 2 * width, 3, 2),
            conv_bn(2 * width, 4 * width, 3, 2),
        )
        self.classifier = nn.Linear(4 * width, num_classes)
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_model("mlp")
def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: int = 256) -> MLP:
    """784-256-classes MLP (for 1x28x28 inputs by default)."""
    return MLP(num_classes, in_channels, image_size, hidden)


@register_model("cnn_w8")
def cnn_w8(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Conv net of widths 8-16-32 (~6k params with 10 classes)."""
    return SmallCNN(8, num_classes, in_channels)


@register_model("cnn_w16")
def cnn_w16(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Conv net of widths 16-32-64 (~24k params with 10 classes)."""
    return SmallCNN(16, num_classes, in_channels)


@register_model("cnn_w32")
def cnn_w32(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Conv net of widths 32-64-128 (~94k params with 10 classes)."""
    return SmallCNN(32, num_classes, in_channels)


@register_model("cnn_w64")
def cnn_w64(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Conv net of widths 64-128-256 (~373k params with 10 classes)."""
    return SmallCNN(64, num_classes, in_channels)
