"""The engine's teacher-output source: the frozen teachers and where their outputs come from.

:class:`TeacherOutputSource` hands the engine (and MMKD's hard batches, the envs' observations)
the teachers' logits, embeddings and feature maps of training samples: one pass of every
teacher per batch without autograd, or, when augmentation is off, rows of the outputs computed
once over the training set, kept in the persistent store (:mod:`kd_env.teacher_outputs`) or, where
that cannot be written or is turned off, in this process's memory. With fixed augmented views
(``augment_views``, :mod:`~kd_env.engine.views`) the kept rows are the views' (``image * V + view``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import torch

from kd_env.data import BatchTransform, DatasetSplits
from kd_env.engine.config import EngineConfig
from kd_env.engine.losses import per_sample_cross_entropy
from kd_env.engine.views import ViewTable
from kd_env.models import KDModel
from kd_env.teacher_outputs import (
    StoreSize,
    TeacherBatch,
    TeacherOutputStore,
    TeacherStoreUnavailable,
    store_key_inputs,
    store_size,
)

logger = logging.getLogger(__name__)


@torch.inference_mode()
def run_teachers(teachers: list[KDModel], images: torch.Tensor, memory_format: torch.memory_format) -> TeacherBatch:
    """All teachers, once each, without autograd: stacked logits, embeddings, feature maps."""
    images = images.contiguous(memory_format=memory_format)
    outputs = [teacher.forward_all(images) for teacher in teachers]
    logits = torch.stack([output.logits for output in outputs])
    return logits, [output.embedding for output in outputs], [output.feature_map for output in outputs]


@torch.inference_mode()
def feature_map_shapes(teachers: list[KDModel], sample: torch.Tensor, memory_format: torch.memory_format) -> list[tuple[int, int, int]]:
    """Each teacher's feature-map shape ``(C, H, W)`` on ``sample`` (already normalised)."""
    sample = sample.contiguous(memory_format=memory_format)
    # feature maps are [B, C, H, W]: each shape is (C, H, W)
    return [cast(tuple[int, int, int], tuple(teacher.forward_all(sample).feature_map.shape[1:])) for teacher in teachers]


def open_teacher_store(
    teachers: list[KDModel],
    data: DatasetSplits,
    config: EngineConfig,
    compute: Callable[[], Iterator[TeacherBatch]],
    teacher_names: list[str],
    device: torch.device,
    views: ViewTable | None = None,
    size: StoreSize | None = None,
) -> TeacherOutputStore | None:
    """Open (or build once, from ``compute()``) the persistent store; ``None`` where it cannot be
    written (the outputs are then held in memory), except for a store of views, which is refused.

    Raises:
        TeacherStoreUnavailable: a store of ``views`` cannot be written (the disk cannot hold
            ``size``, a read-only cache, ...): its V x N rows are not held in memory silently.
    """
    contents = config.views_contents
    key_inputs = store_key_inputs(
        teachers,
        data.train_images,
        data.true_train_labels,  # the outputs do not depend on labels: one store whatever the label noise
        data.mean,
        data.std,
        feature_maps=config.feature_kd if views is None else contents == "maps",
        dtype=config.store_dtype,
        embeddings=contents != "logits",
        views=None if views is None else views.key_inputs(),
    )
    if views is not None and size is not None:
        logger.info("teacher-output store of %d views per image: %s", views.count, size.describe())
    try:
        return TeacherOutputStore.open_or_build(
            key_inputs,
            compute,
            cache_dir=config.cache_dir,
            teacher_names=teacher_names,
            build_info={
                "device": device.type,
                "batch_size": config.eval_batch_size,
                "channels_last": config.channels_last,
            },
            expected_bytes=None if size is None else size.total,
        )
    except TeacherStoreUnavailable as exc:
        if views is not None:
            raise TeacherStoreUnavailable(
                exc.errno,
                f"{exc.strerror or exc}; augment_views={views.count} keeps the teachers' outputs on every view "
                f"({size.describe() if size else 'V x N rows'}): free space or set cache_dir elsewhere, use fewer views, "
                "or teacher_store=False to hold them in memory",
            ) from exc
        logger.warning("%s; holding the teacher outputs in memory for this run instead", exc.strerror or exc)
        return None


def gather_teacher_outputs(chunks: Iterable[TeacherBatch], feature_kd: bool, embeddings_kept: bool = True) -> dict[str, Any]:
    """Teacher outputs for every training image (or view), from consecutive chunks, held in memory."""
    logits, embeddings, feature_maps = [], [], []
    for batch_logits, batch_embeddings, batch_maps in chunks:
        logits.append(batch_logits)
        if embeddings_kept:
            embeddings.append(batch_embeddings)
        if feature_kd:
            feature_maps.append(batch_maps)
    cache: dict[str, Any] = {
        "logits": torch.cat(logits, dim=1),
        "embeddings": [torch.cat(parts) for parts in zip(*embeddings)],
    }
    if feature_kd:
        cache["feature_maps"] = [torch.cat(parts) for parts in zip(*feature_maps)]
    return cache


TeacherPerformance = tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]
"""Logits ``[K, B, C]``, embeddings and per-sample CE ``[B, K]`` (``None`` without labels)."""


class TeacherOutputSource:
    """The frozen teachers and their outputs on training samples (see the module docstring).

    Args:
        teachers: the teachers, already frozen and on ``device`` in ``memory_format``.
        data: the dataset splits (on ``device``).
        config: the engine's settings (``cache_teacher_outputs``, ``teacher_store``,
            ``store_dtype``, ``cache_dir``, ``feature_kd``, ``eval_batch_size``, ``label_free``).
        eval_transform: normalisation without augmentation (the pass over the training set).
        memory_format: the teachers' memory format.
        teacher_names: names recorded in the store's manifest.
        device: where the outputs are handed out.
        keep: compute the outputs once over the training set (the engine passes ``False`` when
            augmentation is on without views: a sample's outputs then depend on its random crop
            and flip).
        views: the fixed augmented views (``augment_views``): the outputs are kept per view, one
            row per ``(image, view)``.

    Attributes:
        store: the persistent store the outputs are read from, or ``None``.
        memory: the outputs held in memory (``{"logits", "embeddings"[, "feature_maps"]}``) where
            they are kept but the store is off or unavailable, else ``None``.
        shapes: each teacher's feature-map shape ``(C, H, W)``.
        size: the kept outputs' size on disk (:class:`~kd_env.teacher_outputs.StoreSize`), ``None``
            where nothing is kept.
    """

    def __init__(
        self,
        teachers: list[KDModel],
        data: DatasetSplits,
        config: EngineConfig,
        eval_transform: BatchTransform,
        memory_format: torch.memory_format,
        teacher_names: list[str],
        device: torch.device,
        *,
        keep: bool,
        views: ViewTable | None = None,
    ) -> None:
        self.teachers = teachers
        self.data = data
        self.config = config
        self.eval_transform = eval_transform
        self.memory_format = memory_format
        self.teacher_names = teacher_names
        self.device = device
        sample = eval_transform(data.train_images[:2], train=False)
        self.shapes = feature_map_shapes(teachers, sample, memory_format)
        self.views = views
        self.memory: dict[str, Any] | None = None
        self.store: TeacherOutputStore | None = None
        self.size: StoreSize | None = None
        keep = keep or views is not None
        if keep:
            self.size = self.kept_size(config.views_contents)
            if views is not None and config.feature_kd and config.views_contents != "maps":
                raise ValueError(
                    f"feature_kd=True reads the teachers' feature maps of every view, and views_store={config.views_store!r} "
                    f"does not keep them: views_store='maps' ({self.kept_size('maps').describe()}), or feature_kd=False"
                )
            if config.teacher_store:
                self.store = open_teacher_store(
                    teachers, data, config, self.training_set_chunks, teacher_names, device, views=views, size=self.size
                )
            if self.store is None:
                contents = config.views_contents
                self.memory = gather_teacher_outputs(
                    self.training_set_chunks(), config.feature_kd if views is None else contents == "maps", contents != "logits"
                )

    def kept_size(self, contents: str | None) -> StoreSize:
        """The size of the kept outputs: every training image (``contents`` ``None``, as the
        engine's settings choose), or every view with ``contents`` (``"logits"``, ``"embeddings"``,
        ``"maps"``)."""
        images = int(self.data.train_labels.shape[0])
        if contents is None or self.views is None:
            return store_size(
                images, self.data.num_classes, self.shapes, feature_maps=self.config.feature_kd, dtype=self.config.store_dtype
            )
        return store_size(
            images * self.views.count,
            self.data.num_classes,
            self.shapes,
            embeddings=contents != "logits",
            feature_maps=contents == "maps",
            dtype=self.config.store_dtype,
        )

    @property
    def by_index(self) -> bool:
        """Whether a training sample's outputs are a function of its index alone: they were
        computed once (store or memory), which augmentation rules out."""
        return self.store is not None or self.memory is not None

    def run(self, images: torch.Tensor) -> TeacherBatch:
        """All teachers, once each, without autograd: stacked logits, embeddings, feature maps."""
        return run_teachers(self.teachers, images, self.memory_format)

    def outputs_for(self, indices: torch.Tensor, images: torch.Tensor, rows: torch.Tensor | None = None) -> TeacherBatch:
        """The outputs for the training samples ``indices`` whose transformed pixels are
        ``images``: kept rows where they were computed once (with views, the views' ``rows``;
        pixels augmented afresh, as MMKD's hard batches, have no kept row), else one pass over
        ``images``."""
        if rows is not None:
            return self.kept(rows, feature_maps=self.config.feature_kd)
        if self.by_index and self.views is None:
            return self.kept(indices, feature_maps=self.config.feature_kd)
        return self.run(images)

    def image_of(self, rows: torch.Tensor) -> torch.Tensor:
        """The training image of each kept row (the row itself without views)."""
        return rows if self.views is None else self.views.image_of(rows)

    def kept(self, indices: torch.Tensor, *, feature_maps: bool) -> TeacherBatch:
        """Rows ``indices`` of the outputs computed once: the store's, else the memory's (the
        embeddings an empty list where only the logits are kept)."""
        if self.store is not None:
            return self.store.batch(indices, self.device, feature_maps=feature_maps)
        assert self.memory is not None
        memory = self.memory
        maps = [feature_map[indices] for feature_map in memory["feature_maps"]] if feature_maps else []
        return memory["logits"][:, indices], [embedding[indices] for embedding in memory["embeddings"]], maps

    def performance_batches(self, batches: Sequence[torch.Tensor]) -> Iterator[TeacherPerformance]:
        """Logits, embeddings and per-sample CE of each batch of kept rows (training indices, or
        with views ``image * V + view``), in order, the rows of all of them read at once (the store reads rows dense in its files as blocks); the
        CE is computed per batch, as the batch's step did, and is ``None`` without labels.

        Raises:
            RuntimeError: the outputs are not kept (augmentation on, or no cache).
        """
        if not self.by_index:
            raise RuntimeError("teacher outputs are not kept by sample index (augmentation on, or cache_teacher_outputs=False)")
        indices = torch.cat([batch.to(self.device) for batch in batches])
        logits, embeddings, _ = self.kept(indices, feature_maps=False)
        labels = None if self.config.label_free else self.data.train_labels[self.image_of(indices)]
        start = 0
        for batch in batches:
            stop = start + len(batch)
            batch_logits = logits[:, start:stop]
            teacher_ce = None
            if labels is not None:
                with torch.no_grad():
                    teacher_ce = per_sample_cross_entropy(batch_logits, labels[start:stop])
            yield batch_logits, [embedding[start:stop] for embedding in embeddings], teacher_ce
            start = stop

    def training_set_chunks(self) -> Iterator[TeacherBatch]:
        """Outputs over the training set (with views, over every view, row by row),
        ``eval_batch_size`` images at a time, in order."""
        images = self.data.train_images
        if self.views is not None:
            for batch in self.views.chunks(images, self.config.eval_batch_size):
                yield self.run(batch)
            return
        yield from self.chunks(images)

    def chunks(self, images: torch.Tensor) -> Iterator[TeacherBatch]:
        """Outputs over ``images`` (uint8, untransformed; e.g. a whole split), evaluation
        transform, ``eval_batch_size`` images at a time, in order."""
        for start in range(0, images.shape[0], self.config.eval_batch_size):
            batch = self.eval_transform(images[start : start + self.config.eval_batch_size], train=False)
            yield self.run(batch)
