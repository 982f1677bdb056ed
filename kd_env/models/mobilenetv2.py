"""MobileNetV2 (Sandler et al. 2018), CIFAR variants.

Name clash to be aware of: in RepDistiller / CRD the student called "MobileNetV2" is
``mobile_half`` (width multiplier 0.5, ~0.81M params with 100 classes). MTKD-RL's
``MobileNetV2`` is the full width-1.0 network (~2.4M params). Here:

* ``MobileNetV2`` is MTKD-RL's network as in its official code (RepDistiller's
  ``mobilenetv2.py`` at width 1.0): stride-2 stem, so a 2x2 final map at 32x32, and the KD tap
  (``feature_map``, RepDistiller's ``feat[-2]``) is the 320-channel output of the last inverted
  residual block, a linear bottleneck (no ReLU); the 1x1 conv to 1280 channels, BN, ReLU and
  the pooling come after the tap, so ``embedding`` (``feat[-1]``) has 1280 dims.
* ``MobileNetV2_s1`` is kd-env's earlier variant, kept under its own name: a stride-1 stem
  (4x4 final map, about 4x the multiply-adds: 89.1M vs 22.4M at 32x32) and the KD tap on the
  1280-channel head output after its ReLU. Its parameters are the same as ``MobileNetV2``'s; the networks are not.
* ``mobile_half`` reproduces RepDistiller's width-0.5 model (stride-2 stem, 2x2 final map,
  tap on the pooled 1280-channel tensor as before).

All use the RepDistiller inverted-residual block (the 1x1 expansion conv is present even when
the expansion ratio is 1) and the standard ``(t, c, n, s)`` table with the second stage's
stride reduced to 1 for small images.
"""

from __future__ import annotations

import torch
from torch import nn

from kd_env.models._common import conv_bn, kaiming_init
from kd_env.models.base import KDModel
from kd_env.models.registry import register_model

# (expansion t, output channels c, repeats n, first stride s); stage 2 uses s=1 (CIFAR).
_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.body = nn.Sequential(
            conv_bn(in_ch, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            # Linear bottleneck: no ReLU after the projection (keeps low-dim information).
            conv_bn(hidden, out_ch, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(KDModel):
    """MobileNetV2 for small images.

    Args:
        width_mult: channel multiplier of the stem and the inverted-residual stages.
        stem_stride: stride of the 3x3 stem (1 or 2).
        num_classes: classifier outputs.
        in_channels: input image channels.
        last_channels: width of the final 1x1 conv (1280, scaled only when ``width_mult > 1``).
        tap_last_block: the KD tap (``feature_map``) is the last block's output (the official
            ``feat[-2]``, before the head conv); otherwise it is the head's output (pooled as is).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        stem_stride: int = 1,
        num_classes: int = 100,
        in_channels: int = 3,
        last_channels: int = 1280,
        tap_last_block: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        prev = int(32 * width_mult)
        self.stem = conv_bn(in_channels, prev, 3, stem_stride)
        blocks: list[nn.Module] = []
        for t, c, n, s in _SETTINGS:
            out_ch = int(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(prev, out_ch, s if i == 0 else 1, t))
                prev = out_ch
        self.blocks = nn.Sequential(*blocks)
        # As in the reference: the head is never narrowed below 1280 for width < 1.
        head = int(last_channels * width_mult) if width_mult > 1.0 else last_channels
        self.head = conv_bn(prev, head, 1)
        self.tap_last_block = tap_last_block
        self.feature_channels = prev if tap_last_block else head
        self.embedding_channels = head
        self.classifier = nn.Linear(head, num_classes)
        kaiming_init(self, linear_std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))
        return features if self.tap_last_block else self.head(features)

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        # with the tap on the last block, the head conv (+BN+ReLU) still sits between tap and pool
        if self.tap_last_block:
            feature_map = self.head(feature_map)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)


@register_model("MobileNetV2")
def mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> CifarMobileNetV2:
    """MTKD-RL's MobileNetV2 as in its official code: width 1.0, stride-2 stem, KD tap on the
    last block's 320-channel output (``[320, 2, 2]`` at 32x32; ~2.35M params)."""
    return CifarMobileNetV2(1.0, 2, num_classes, in_channels, tap_last_block=True)


@register_model("MobileNetV2_s1")
def mobilenetv2_s1(num_classes: int = 100, in_channels: int = 3) -> CifarMobileNetV2:
    """kd-env's earlier MobileNetV2: width 1.0, stride-1 stem, KD tap on the 1280-channel head
    after its ReLU (``[1280, 4, 4]`` at 32x32; the same ~2.35M params, about 4x the multiply-adds)."""
    return CifarMobileNetV2(1.0, 1, num_classes, in_channels)


@register_model("mobile_half")
def mobile_half(num_classes: int = 100, in_channels: int = 3) -> CifarMobileNetV2:
    """RepDistiller's "MobileNetV2": width 0.5, stride-2 stem (~0.81M params)."""
    return CifarMobileNetV2(0.5, 2, num_classes, in_channels)
