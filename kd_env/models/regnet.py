"""RegNet (Radosavovic et al. 2020), CIFAR variants used by the CRD-style zoo of MTKD-RL.

The CIFAR port (as in the widely used pytorch-cifar collection): a 3x3 stride-1 stem to 64
channels, four stages of X blocks (1x1 -> grouped 3x3 -> 1x1, bottleneck ratio 1) at strides
1, 1, 2, 2, so a 32x32 input gives an 8x8 final map. ``RegNetY`` adds squeeze-and-excitation
after the grouped conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kd_env.models._common import conv_bn
from kd_env.models.base import KDModel
from kd_env.models.registry import register_model


@dataclass(frozen=True)
class RegNetConfig:
    """Stage depths/widths/strides and block settings of one RegNet."""

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    strides: tuple[int, int, int, int]
    group_width: int
    bottleneck_ratio: float = 1.0
    se_ratio: float = 0.0


class SqueezeExcite(nn.Module):
    """Channel gating ``x * sigmoid(W2 relu(W1 avgpool(x)))``."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.expand = nn.Conv2d(squeeze, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(torch.relu(self.reduce(nn.functional.adaptive_avg_pool2d(x, 1))))
        return x * gate.sigmoid()


class XBlock(nn.Module):
    """RegNet X/Y residual bottleneck block with grouped 3x3 conv (and optional SE)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, group_width: int, bottleneck_ratio: float, se_ratio: float) -> None:
        super().__init__()
        mid = int(round(out_ch * bottleneck_ratio))
        layers: list[nn.Module] = [
            conv_bn(in_ch, mid, 1),
            conv_bn(mid, mid, 3, stride, groups=mid // group_width),
        ]
        if se_ratio > 0:
            # The SE squeeze width is a fraction of the block *input* width (as in the port).
            layers.append(SqueezeExcite(mid, int(round(in_ch * se_ratio))))
        layers.append(conv_bn(mid, out_ch, 1, relu=False))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = conv_bn(in_ch, out_ch, 1, stride, relu=False) if stride != 1 or in_ch != out_ch else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class CifarRegNet(KDModel):
    """RegNet for small images; ``feature_map`` is the last stage's output (``widths[-1]`` ch)."""

    def __init__(self, cfg: RegNetConfig, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels = cfg.widths[-1]
        self.stem = conv_bn(in_channels, 64, 3, 1)
        stages: list[nn.Module] = []
        prev = 64
        for depth, width, stride in zip(cfg.depths, cfg.widths, cfg.strides):
            blocks: list[nn.Module] = []
            for i in range(depth):
                block_stride = stride if i == 0 else 1
                blocks.append(XBlock(prev, width, block_stride, cfg.group_width, cfg.bottleneck_ratio, cfg.se_ratio))
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


_X_200MF = RegNetConfig((1, 1, 4, 7), (24, 56, 152, 368), (1, 1, 2, 2), group_width=8)
_X_400MF = RegNetConfig((1, 2, 7, 12), (32, 64, 160, 384), (1, 1, 2, 2), group_width=16)
_Y_400MF = RegNetConfig((1, 2, 7, 12), (32, 64, 160, 384), (1, 1, 2, 2), group_width=16, se_ratio=0.25)


@register_model("RegNetX_200MF")
def regnetx_200mf(num_classes: int = 100, in_channels: int = 3) -> CifarRegNet:
    """RegNetX-200MF, CIFAR variant."""
    return CifarRegNet(_X_200MF, num_classes, in_channels)


@register_model("RegNetX_400MF")
def regnetx_400mf(num_classes: int = 100, in_channels: int = 3) -> CifarRegNet:
    """RegNetX-400MF, CIFAR variant."""
    return CifarRegNet(_X_400MF, num_classes, in_channels)


@register_model("RegNetY_400MF")
def regnety_400mf(num_classes: int = 100, in_channels: int = 3) -> CifarRegNet:
    """RegNetY-400MF (X-400MF + squeeze-and-excitation), CIFAR variant."""
    return CifarRegNet(_Y_400MF, num_classes, in_channels)
