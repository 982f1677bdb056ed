"""CIFAR ResNets (He et al. 2016, section 4.2) as used by the RepDistiller / CRD zoo.

Three stages of basic blocks at strides 1, 2, 2 after a 3x3 stem; ``depth = 6n + 2``.
``resnet{8,20,32,56,110}`` use channels ``[16, 16, 32, 64]`` (stem, stage1..3); the ``x4``
variants use ``[32, 64, 128, 256]``. A 32x32 input gives an 8x8 final map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kd_env.models._common import conv_bn, kaiming_init
from kd_env.models.base import KDModel
from kd_env.models.registry import register_model


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(in_ch, out_ch, 3, stride),
            conv_bn(out_ch, out_ch, 3, 1, relu=False),
        )
        # Projection shortcut (1x1 conv + BN, "option B") whenever the shape changes.
        self.shortcut: nn.Module = conv_bn(in_ch, out_ch, 1, stride, relu=False) if stride != 1 or in_ch != out_ch else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class CifarResNet(KDModel):
    """CIFAR ResNet of depth ``6n + 2``.

    Args:
        depth: total depth, ``(depth - 2) % 6 == 0``.
        channels: ``[stem, stage1, stage2, stage3]`` widths.
        num_classes: classifier outputs.
        in_channels: input image channels.

    ``feature_map`` is the (ReLU-ed) output of the last stage, ``channels[3]`` channels.
    """

    def __init__(self, depth: int, channels: Sequence[int], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels = channels[3]

        self.stem = conv_bn(in_channels, channels[0], 3, 1)
        stages: list[nn.Module] = []
        prev = channels[0]
        for out_ch, stride in zip(channels[1:], (1, 2, 2)):
            blocks = [BasicBlock(prev, out_ch, stride)] + [BasicBlock(out_ch, out_ch) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = out_ch
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(channels[3], num_classes)
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


@register_model("resnet8")
def resnet8(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-8, channels 16-16-32-64 (~0.08M params)."""
    return CifarResNet(8, _SMALL, num_classes, in_channels)


@register_model("resnet20")
def resnet20(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-20, channels 16-16-32-64 (~0.28M params)."""
    return CifarResNet(20, _SMALL, num_classes, in_channels)


@register_model("resnet32")
def resnet32(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-32, channels 16-16-32-64 (~0.47M params)."""
    return CifarResNet(32, _SMALL, num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-56, channels 16-16-32-64 (~0.86M params)."""
    return CifarResNet(56, _SMALL, num_classes, in_channels)


@register_model("resnet110")
def resnet110(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-110, channels 16-16-32-64 (~1.74M params)."""
    return CifarResNet(110, _SMALL, num_classes, in_channels)


@register_model("resnet8x4")
def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-8x4, channels 32-64-128-256 (~1.23M params)."""
    return CifarResNet(8, _X4, num_classes, in_channels)


@register_model("resnet32x4")
def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """ResNet-32x4, channels 32-64-128-256 (~7.43M params)."""
    return CifarResNet(32, _X4, num_classes, in_channels)
