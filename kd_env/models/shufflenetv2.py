"""ShuffleNetV2 (Ma et al. 2018), CIFAR variant of the RepDistiller / CRD zoo (``ShuffleV2``).

No stem max-pool and a 1x1 stem conv (as in RepDistiller), then three stages (one
down-sampling unit + ``n`` basic units each) and a 1x1 conv to 1024 channels. A 32x32 input
gives a 4x4 final map.
"""

from __future__ import annotations

import torch
from torch import nn

from kd_env.models._common import conv_bn
from kd_env.models.base import KDModel
from kd_env.models.registry import register_model

# net_size -> (stage widths + final conv width, basic units per stage)
_CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave channels of ``groups`` groups so information mixes across the two branches."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """Basic unit: split channels in half, transform one half, concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1),
            conv_bn(half, half, 3, groups=half, relu=False),
            conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, transform = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(transform)], dim=1))


class ShuffleDownUnit(nn.Module):
    """Down-sampling unit: two stride-2 branches on the full input, concatenated, shuffled."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.left = nn.Sequential(
            conv_bn(in_ch, in_ch, 3, 2, groups=in_ch, relu=False),
            conv_bn(in_ch, mid, 1),
        )
        self.right = nn.Sequential(
            conv_bn(in_ch, mid, 1),
            conv_bn(mid, mid, 3, 2, groups=mid, relu=False),
            conv_bn(mid, mid, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


class CifarShuffleNetV2(KDModel):
    """ShuffleNetV2 for small images.

    Args:
        net_size: width setting, one of 0.5, 1, 1.5, 2.
        num_classes: classifier outputs.
        in_channels: input image channels.

    ``feature_map`` is the ReLU output of the final 1x1 conv (1024 channels for net_size 1).
    """

    def __init__(self, net_size: float = 1.0, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        widths, repeats = _CONFIGS[float(net_size)]
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_channels = widths[3]
        # 1x1 stem as in RepDistiller (kuangliu's original uses 3x3).
        self.stem = conv_bn(in_channels, 24, 1)
        stages: list[nn.Module] = []
        prev = 24
        for out_ch, n in zip(widths[:3], repeats):
            units = [ShuffleDownUnit(prev, out_ch)] + [ShuffleUnit(out_ch) for _ in range(n)]
            stages.append(nn.Sequential(*units))
            prev = out_ch
        self.stages = nn.Sequential(*stages)
        self.head = conv_bn(prev, widths[3], 1)
        self.classifier = nn.Linear(widths[3], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model("ShuffleV2")
def shufflev2(num_classes: int = 100, in_channels: int = 3) -> CifarShuffleNetV2:
    """ShuffleNetV2 1.0x, CIFAR variant (~1.36M params)."""
    return CifarShuffleNetV2(1.0, num_classes, in_channels)
