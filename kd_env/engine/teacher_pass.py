"""The teachers' side of the engine: their outputs, run once per batch without autograd, or once
over the whole training set (kept in the persistent store or in memory) when augmentation is off."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import torch

from kd_env.data import DatasetSplits
from kd_env.engine.config import EngineConfig
from kd_env.models import KDModel
from kd_env.teacher_outputs import TeacherBatch, TeacherOutputStore, TeacherStoreUnavailable, store_key_inputs

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
) -> TeacherOutputStore | None:
    """Open (or build once, from ``compute()``) the persistent store; ``None`` where it cannot be written."""
    key_inputs = store_key_inputs(
        teachers,
        data.train_images,
        data.true_train_labels,  # the outputs do not depend on labels: one store whatever the label noise
        data.mean,
        data.std,
        feature_maps=config.feature_kd,
        dtype=config.store_dtype,
    )
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
        )
    except TeacherStoreUnavailable as exc:
        logger.warning("%s; holding the teacher outputs in memory for this run instead", exc.strerror or exc)
        return None


def gather_teacher_outputs(chunks: Iterable[TeacherBatch], feature_kd: bool) -> dict[str, Any]:
    """Teacher outputs for every training image, from consecutive chunks, held in memory."""
    logits, embeddings, feature_maps = [], [], []
    for batch_logits, batch_embeddings, batch_maps in chunks:
        logits.append(batch_logits)
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
