"""Batched augmentation and normalisation of uint8 image tensors.

The whole batch is augmented with a handful of tensor ops on the images' device -- no PIL, no
Python loop over samples -- so augmentation costs next to nothing beside the forward pass.
All randomness comes from an explicit ``torch.Generator`` so runs are reproducible and
independent of the global RNG other code may consume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .names import canonical_name

__all__ = ["BatchTransform", "default_augmentation"]


def default_augmentation(name: str) -> dict[str, Any]:
    """Standard training augmentation for a dataset, as ``BatchTransform`` keyword arguments.

    CIFAR-10/100: random crop with 4 pixels of zero padding and horizontal flips (the usual
    recipe of the KD literature). Fashion-MNIST and synthetic data: none -- flips change the
    meaning of some synthetic prototypes and the literature trains Fashion-MNIST without them.
    """
    name = canonical_name(name)
    if name in ("cifar10", "cifar100"):
        return {"crop_padding": 4, "horizontal_flip": True}
    return {}


class BatchTransform:
    """Random crop + horizontal flip (training only) followed by normalisation, on a batch.

    Args:
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
        crop_padding: pad each image with this many zero pixels on every side and take a random
            crop of the original size (torchvision's ``RandomCrop(size, padding)``); 0 = off.
        horizontal_flip: flip each image left-right with probability 1/2.

    Call it on uint8 ``[B, C, H, W]`` images; it returns normalised float32 images on the same
    device, ``(x / 255 - mean) / std``. Random draws, in this order: crop offsets
    (``randint``, shape ``[2, B]``), then the flip mask (``rand``, shape ``[B]``); the same
    generator state therefore always gives the same output.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        crop_padding: int = 0,
        horizontal_flip: bool = False,
    ) -> None:
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean and std need the same, non-zero length; got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop_padding = int(crop_padding)
        self.horizontal_flip = bool(horizontal_flip)
        # Normalisation folded into one multiply-add: x * scale + shift, per channel.
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(1, -1, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)]).view(1, -1, 1, 1)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def augments(self) -> bool:
        """Whether training mode changes anything beyond normalisation."""
        return self.crop_padding > 0 or self.horizontal_flip

    def __repr__(self) -> str:
        return f"BatchTransform(mean={self.mean}, std={self.std}, crop_padding={self.crop_padding}, horizontal_flip={self.horizontal_flip})"

    def __call__(
        self,
        images_uint8: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        train: bool = True,
    ) -> torch.Tensor:
        """Augment (if ``train``) and normalise a batch.

        Args:
            images_uint8: uint8 ``[B, C, H, W]``.
            generator: source of randomness; must live on the images' device (a CUDA batch
                needs a CUDA generator: ``torch.Generator(device="cuda")``). None uses the
                global RNG, which is not reproducible across code changes.
            train: False skips augmentation: pure normalisation, for evaluation.

        Returns:
            float32 ``[B, C, H, W]`` on the images' device.
        """
        x = images_uint8
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise TypeError(f"expected uint8 [B, C, H, W] images, got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] != len(self.mean):
            raise ValueError(f"images have {x.shape[1]} channels but mean/std have {len(self.mean)}")
        if train and self.augments:
            if generator is not None and generator.device.type != x.device.type:
                raise ValueError(
                    f"generator is on {generator.device} but the images are on {x.device}; create the generator on the images' device"
                )
            if self.crop_padding > 0:
                x = self._random_crop(x, generator)
            if self.horizontal_flip:
                x = self._random_flip(x, generator)
        scale, shift = self._on(x.device)
        return x.to(torch.float32) * scale + shift

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Cached per device so a GPU loop does not copy the constants every step.
        if device not in self._constants:
            self._constants[device] = (self._scale.to(device), self._shift.to(device))
        return self._constants[device]

    def _random_crop(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # Offsets in [0, 2p]: offset p is the un-shifted image.
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (2, x.shape[0]), generator=generator, device=x.device)
        return self._crop_at(x, offsets)

    def _crop_at(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Zero-pad the batch once, then gather each sample's window (top-left corner
        ``offsets[:, n]`` in the padded image, ``[2, B]``) with one indexing op."""
        b, c, h, w = x.shape
        p = self.crop_padding
        padded = F.pad(x, (p, p, p, p))  # zeros, still uint8: padding is black before normalising
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [B, H]
        cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # [B, W]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        # Broadcast to [B, C, H, W]: out[n, k, i, j] = padded[n, k, rows[n, i], cols[n, j]].
        return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]

    def _random_flip(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        return self._flip_where(x, flip)

    @staticmethod
    def _flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    # ------------------------------------------------------------------ fixed views (issue #27)
    def draw_views(self, num_images: int, views: int, seed: int) -> torch.Tensor:
        """``views`` augmented views of each of ``num_images`` images, drawn once from ``seed``:
        int16 ``[N, V, 3]`` on the CPU, ``(row offset, column offset, flip)`` per view, in the
        padded image's coordinates as :meth:`__call__` draws them (offset ``crop_padding`` is the
        un-shifted image; 0/1 flip). A CPU generator, so every device gets the same views.

        Draws, in this order: the offsets (``randint``, shape ``[N, V, 2]``), then the flips
        (``rand``, shape ``[N, V]``); an augmentation that is off draws nothing for it.
        """
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views!r}")
        generator = torch.Generator().manual_seed(int(seed))
        table = torch.zeros((num_images, views, 3), dtype=torch.int16)
        if self.crop_padding > 0:
            table[..., :2] = torch.randint(0, 2 * self.crop_padding + 1, (num_images, views, 2), generator=generator).to(torch.int16)
        if self.horizontal_flip:
            table[..., 2] = (torch.rand((num_images, views), generator=generator) < 0.5).to(torch.int16)
        return table

    def apply_views(self, images_uint8: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The given views of a batch, normalised: uint8 ``[B, C, H, W]`` images and their
        ``[B, 3]`` rows of a :meth:`draw_views` table, the same tensor ops as a random batch
        (the pixels a fresh draw of those offsets and flips would give, bit for bit)."""
        x = images_uint8
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise TypeError(f"expected uint8 [B, C, H, W] images, got {x.dtype} {tuple(x.shape)}")
        if views.shape != (x.shape[0], 3):
            raise ValueError(f"expected [{x.shape[0]}, 3] views for {x.shape[0]} images, got {tuple(views.shape)}")
        views = views.to(device=x.device, dtype=torch.long)
        if self.crop_padding > 0:
            x = self._crop_at(x, views[:, :2].T)
        if self.horizontal_flip:
            x = self._flip_where(x, views[:, 2] != 0)
        scale, shift = self._on(x.device)
        return x.to(torch.float32) * scale + shift
