"""Per-teacher feature adapters (FitNet-style regressors), as in MTKD-RL's ``TransFeat``/``Embed``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_RESIZES = ("student", "smaller")
"""How a student map and a teacher map of different sizes are compared (``EngineConfig.feature_resize``)."""


class FeatureAdapter(nn.Module):
    """Map the student's last feature map onto one teacher's: resize, then 1x1 conv + BN + ReLU.

    ``resize="student"`` (MTKD-RL's ``TransFeat``, CA-MKD's): the student map is brought to the
    teacher's size, by adaptive average pooling when it is larger, bilinear upsampling when it
    is smaller. ``resize="smaller"`` (MMKD's ``MatchFeature``): the larger of the two maps is
    pooled to the smaller one's size; a student map smaller than (or as large as) the teacher's
    stays as it is here, and the teacher's map is pooled to it (:func:`match_teacher_map`).

    Args:
        student_channels: channels of the student's feature map.
        teacher_channels: channels of the teacher's feature map.
        teacher_size: ``(H, W)`` of the teacher's feature map.
        resize: ``"student"`` or ``"smaller"``.
    """

    def __init__(self, student_channels: int, teacher_channels: int, teacher_size: tuple[int, int], resize: str = "student") -> None:
        super().__init__()
        if resize not in FEATURE_RESIZES:
            raise ValueError(f"resize must be one of {FEATURE_RESIZES}, got {resize!r}")
        self.resize = resize
        self.teacher_size = (int(teacher_size[0]), int(teacher_size[1]))
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=True)
        self.bn = nn.BatchNorm2d(teacher_channels)

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        height, width = student_map.shape[-2:]
        target_height, target_width = self.teacher_size
        if height > target_height or width > target_width:
            student_map = F.adaptive_avg_pool2d(student_map, self.teacher_size)
        elif self.resize == "student" and (height < target_height or width < target_width):
            student_map = F.interpolate(student_map, size=self.teacher_size, mode="bilinear", align_corners=False)
        return F.relu(self.bn(self.conv(student_map)))


def build_adapters(student_channels: int, teacher_shapes: list[tuple[int, int, int]], resize: str = "student") -> nn.ModuleList:
    """One adapter per teacher, from the teachers' feature-map shapes ``(C, H, W)``."""
    return nn.ModuleList(FeatureAdapter(student_channels, channels, (height, width), resize) for channels, height, width in teacher_shapes)


def match_teacher_map(teacher_map: torch.Tensor, adapted: torch.Tensor) -> torch.Tensor:
    """The teacher map to compare with an adapter's output: pooled (adaptive average) to the
    adapted student map's size where it is larger (``resize="smaller"``), else as it is (with
    ``resize="student"`` the sizes are always equal and nothing is computed)."""
    if teacher_map.shape[-2:] == adapted.shape[-2:]:
        return teacher_map
    return F.adaptive_avg_pool2d(teacher_map, (int(adapted.shape[-2]), int(adapted.shape[-1])))
