"""Fixed augmented views of the training images (issue #27, FKD-style teacher-output reuse).

With ``augment_views=V``, every training image gets V augmented views, drawn once from
``views_seed`` with the dataset's augmentation (crop offsets, flip: :meth:`BatchTransform.draw_views
<kd_env.data.BatchTransform.draw_views>`). The teachers' outputs on all ``N x V`` views are
computed once and kept in the teacher-output store (row ``image * V + view``; the views' count,
seed, augmentation and the table's digest are in the store's key). At each step every sample of
the batch uses one of its V views, drawn from the run's generator; the student trains on that
view's pixels, rebuilt from the stored offsets and flip with the same tensor ops, so it sees
exactly what the teachers saw, and the teachers never run during training.

Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition" (FKD, 2021) stores
the soft labels of a set of random crops per image the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from kd_env.data import BatchTransform

VIEWS_STORES = ("logits", "embeddings", "maps")
"""What a store of views keeps: the logits only, the logits and embeddings, or those and the
teachers' feature maps (feature KD reads them)."""


class ViewTable:
    """The V views of every training image and how a batch picks and renders them.

    Args:
        transform: the training augmentation (its crop padding and flip draw the views).
        num_images: training images N.
        count: views per image V (>= 1).
        seed: the seed of the draw (independent of the run's seed: one store serves every run).
        device: where the rendered batches live.

    Attributes:
        table: int16 ``[N, V, 3]`` on the CPU: ``(row offset, column offset, flip)`` per view.
        digest: SHA-256 of the table's bytes (in the store's key).
    """

    def __init__(self, transform: BatchTransform, num_images: int, count: int, seed: int, device: torch.device) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"augment_views must be an integer >= 1, got {count!r}")
        if not transform.augments:
            raise ValueError(
                f"augment_views={count} draws views with the dataset's augmentation, which is off for this engine "
                "(augment=False, or the dataset's default): set augment=True, or leave augment_views unset"
            )
        self.transform = transform
        self.count = int(count)
        self.seed = int(seed)
        self.num_images = int(num_images)
        self.table = transform.draw_views(self.num_images, self.count, self.seed)
        self.digest = hashlib.sha256(self.table.numpy().tobytes()).hexdigest()
        self._table = self.table.to(device)

    def key_inputs(self) -> dict[str, Any]:
        """What of the views goes into the store's key."""
        return {
            "count": self.count,
            "seed": self.seed,
            "crop_padding": self.transform.crop_padding,
            "horizontal_flip": self.transform.horizontal_flip,
            "table_sha256": self.digest,
        }

    @property
    def num_rows(self) -> int:
        return self.num_images * self.count

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Each sample's view for one batch, ``[B]`` int64, from the run's generator."""
        return torch.randint(0, self.count, (batch_size,), generator=generator, device=generator.device)

    def rows(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The store rows of training images ``indices`` seen in ``views``."""
        return indices * self.count + views

    def image_of(self, rows: torch.Tensor) -> torch.Tensor:
        """The training image of each store row."""
        return torch.div(rows, self.count, rounding_mode="floor")

    def render(self, images_uint8: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The normalised pixels of images ``indices`` (of the uint8 training set ``images_uint8``)
        in ``views``: the pixels the teachers saw when the store was built."""
        return self.transform.apply_views(images_uint8[indices], self._table[indices, views])

    def chunks(self, images_uint8: torch.Tensor, rows_per_chunk: int) -> Iterator[torch.Tensor]:
        """Every view's pixels, row by row of the store (``image * V + view``), ``rows_per_chunk`` at a time."""
        device = images_uint8.device
        for start in range(0, self.num_rows, rows_per_chunk):
            rows = torch.arange(start, min(start + rows_per_chunk, self.num_rows), device=device)
            yield self.render(images_uint8, self.image_of(rows), rows % self.count)
