"""Wide ResNets (Zagoruyko & Komodakis 2016), CIFAR variant of the RepDistiller / CRD zoo.

``WRN-d-k``: a 3x3 stem to 16 channels, three stages of ``n = (d - 4) / 6`` pre-activation
basic blocks with widths ``16k, 32k, 64k`` at strides 1, 2, 2, then BN + ReLU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kd_env.models._common import kaiming_init
from kd_env.models.base import KDModel
from kd_env.models.registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation wide basic block ``x + conv(relu(bn(conv(relu(bn(x))))))``.

    When the shape changes, the shortcut is a 1x1 conv applied to the *activated* input
    (as in the reference WRN code), so the pre-activation is shared by both branches.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut: nn.Module | None = nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(KDModel):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs (8x8 final map).

    Args:
        depth: total depth, ``(depth - 4) % 6 == 0``.
        widen_factor: width multiplier ``k``.
        num_classes: classifier outputs.
        in_channels: input image channels.
        drop_rate: dropout inside blocks (0 in the KD zoo).

    ``feature_map`` is the output of the final BN + ReLU (``64k`` channels).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels = widths[3]

        # The stem has no BN/ReLU: the first pre-activation block normalises it.
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for i, stride in enumerate((1, 2, 2)):
            in_ch, out_ch = widths[i], widths[i + 1]
            stages.append(
                nn.Sequential(*[PreActBlock(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1, drop_rate) for j in range(n)])
            )
        self.stages = nn.Sequential(*stages)
        self.final_bn = nn.BatchNorm2d(widths[3])
        self.classifier = nn.Linear(widths[3], num_classes)
        kaiming_init(self)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.final_bn(self.stages(self.stem(x))))


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-16-2 (~0.70M params)."""
    return WideResNet(16, 2, num_classes, in_channels, drop_rate)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-40-2 (~2.26M params)."""
    return WideResNet(40, 2, num_classes, in_channels, drop_rate)


@register_model("wrn_28_4")
def wrn_28_4(num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-28-4 (~5.9M params), an MTKD-RL teacher."""
    return WideResNet(28, 4, num_classes, in_channels, drop_rate)
