"""VGG with BatchNorm, CIFAR variant of the RepDistiller / CRD zoo.

Five conv groups (3x3 conv + BN + ReLU each) with 2x2 max-pooling after the first three,
so a 32x32 input gives a 4x4 final map; one linear classifier on the pooled 512-d vector
(no VGG fully-connected head). ``vgg8`` has one conv per group, ``vgg13`` two.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kd_env.models._common import kaiming_init
from kd_env.models.base import KDModel
from kd_env.models.registry import register_model

_CFG_VGG8: tuple[tuple[int, ...], ...] = ((64,), (128,), (256,), (512,), (512,))
_CFG_VGG13: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))


class CifarVGG(KDModel):
    """VGG-BN for small images.

    Args:
        cfg: output widths of the convs of each of the five groups.
        num_classes: classifier outputs.
        in_channels: input image channels.

    A fourth max-pool is applied only for inputs of height >= 64 (the reference code does the
    same for 64x64 images), so CIFAR-sized inputs keep a 4x4 final map. ``feature_map`` is the
    ReLU output of the last group (512 channels).
    """

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels = cfg[-1][-1]
        groups: list[nn.Module] = []
        prev = in_channels
        for widths in cfg:
            layers: list[nn.Module] = []
            for w in widths:
                # Conv bias is kept (redundant before BN) so parameter counts match the zoo.
                layers += [nn.Conv2d(prev, w, 3, 1, 1, bias=True), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                prev = w
            groups.append(nn.Sequential(*layers))
        self.groups = nn.ModuleList(groups)
        self.pool = nn.MaxPool2d(2, 2)
        self.classifier = nn.Linear(prev, num_classes)
        kaiming_init(self, linear_std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        pool_after_group4 = x.shape[-2] >= 64
        out = x
        for i, group in enumerate(self.groups):
            out = group(out)
            if i < 3 or (i == 3 and pool_after_group4):
                out = self.pool(out)
        return out


@register_model("vgg8")
def vgg8(num_classes: int = 100, in_channels: int = 3) -> CifarVGG:
    """VGG-8 with BN (~3.96M params)."""
    return CifarVGG(_CFG_VGG8, num_classes, in_channels)


@register_model("vgg13")
def vgg13(num_classes: int = 100, in_channels: int = 3) -> CifarVGG:
    """VGG-13 with BN (~9.46M params)."""
    return CifarVGG(_CFG_VGG13, num_classes, in_channels)
