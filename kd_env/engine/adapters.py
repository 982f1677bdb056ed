"""Per-teacher feature adapters (FitNet-style regressors), as in MTKD-RL's ``TransFeat``/``Embed``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureAdapter(nn.Module):
    """Map the student's last feature map onto one teacher's: resize, then 1x1 conv + BN + ReLU.

    The resize matches MTKD-RL: adaptive average pooling when the student map is larger than the
    teacher's, bilinear upsampling when it is smaller.

    Args:
        student_channels: channels of the student's feature map.
        teacher_channels: channels of the teacher's feature map.
        teacher_size: ``(H, W)`` of the teacher's feature map.
    """

    def __init__(self, student_channels: int, teacher_channels: int, teacher_size: tuple[int, int]) -> None:
        super().__init__()
        self.teacher_size = (int(teacher_size[0]), int(teacher_size[1]))
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=True)
        self.bn = nn.BatchNorm2d(teacher_channels)

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        height, width = student_map.shape[-2:]
        target_height, target_width = self.teacher_size
        if height > target_height or width > target_width:
            student_map = F.adaptive_avg_pool2d(student_map, self.teacher_size)
        elif height < target_height or width < target_width:
            student_map = F.interpolate(student_map, size=self.teacher_size, mode="bilinear", align_corners=False)
        return F.relu(self.bn(self.conv(student_map)))


def build_adapters(student_channels: int, teacher_shapes: list[tuple[int, int, int]]) -> nn.ModuleList:
    """One adapter per teacher, from the teachers' feature-map shapes ``(C, H, W)``."""
    return nn.ModuleList(FeatureAdapter(student_channels, channels, (height, width)) for channels, height, width in teacher_shapes)
