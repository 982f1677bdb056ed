"""The one interface every model of the zoo implements.

Feature KD and the MTKD-RL state need three things from a network: its logits, its last
feature map (the tensor that is globally pooled) and the pooled embedding. ``forward_all``
returns all three from one forward pass; ``forward`` returns logits only, so a zoo model is a
drop-in ``nn.Module`` classifier everywhere else.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ModelOutput(NamedTuple):
    """What one forward pass of a zoo model gives.

    Attributes:
        logits: ``[B, num_classes]`` class scores.
        feature_map: ``[B, C, H, W]`` the last feature map, the tensor that is pooled.
        embedding: ``[B, C]`` the globally average-pooled ``feature_map`` (the classifier input).
    """

    logits: torch.Tensor
    feature_map: torch.Tensor
    embedding: torch.Tensor


class KDModel(nn.Module):
    """Base class of the zoo: subclasses build ``self.classifier`` and implement ``forward_features``.

    Attributes:
        num_classes: number of output classes.
        in_channels: number of input image channels.
        feature_channels: channels ``C`` of ``feature_map`` (the ``embedding`` size too, unless
            :meth:`embed` is overridden).
    """

    num_classes: int
    in_channels: int
    feature_channels: int
    classifier: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature map ``[B, C, H, W]`` (before global pooling)."""
        raise NotImplementedError

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The pooled embedding ``[B, D]`` computed from a ``feature_map``-shaped tensor.

        The default is global average pooling (``D = feature_channels``). A network whose KD tap
        is not the pooled tensor (the official MobileNetV2 taps its last block, before the 1x1
        head conv) overrides this with the layers between the tap and the pooling.
        """
        return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)

    def head_logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Logits from a ``feature_map``-shaped tensor: the rest of the network after the KD tap.

        CA-MKD's feature term passes the student's adapted map through each teacher's own head
        (``distill_seq()[-1]`` in the authors' code); this is that head.
        """
        return self.classifier(self.embed(feature_map))

    def forward_all(self, x: torch.Tensor) -> ModelOutput:
        feature_map = self.forward_features(x)
        embedding = self.embed(feature_map)
        return ModelOutput(self.classifier(embedding), feature_map, embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).logits
