"""Building an environment's engine from its settings: data, teachers (a pool, a list, or
checkpoint paths), the student factory and the engine's configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kd_env.data import DatasetSplits, load_dataset, with_noisy_train_labels
from kd_env.data.labels import derived_noise_seed
from kd_env.engine import DistillationEngine, EngineConfig
from kd_env.envs.settings import KDEnvSettings
from kd_env.models import KDModel, create_model
from kd_env.teacher_outputs import StoreSize, store_size
from kd_env.teachers import TeacherNotFoundError, ensure_pool, load_teacher, teacher_path, train_command, train_teacher


class TeacherSetupError(FileNotFoundError):
    """A teacher of the requested pool is missing; the message says how to train it."""


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        result.append(name if count == 0 else f"{name}_{count}")
    return result


def _train_missing(settings: KDEnvSettings) -> bool:
    return settings.dataset == "synthetic" if settings.train_teachers is None else settings.train_teachers


def _pool_teachers(settings: KDEnvSettings, data: DatasetSplits) -> tuple[list[KDModel], list[str]]:
    pool = settings.pool or "capacity"
    try:
        members = ensure_pool(
            pool,
            data,
            seed=settings.teacher_seed,
            cache_dir=settings.cache_dir,
            train_missing=_train_missing(settings),
            device=settings.device,
        )
    except TeacherNotFoundError as exc:
        raise TeacherSetupError(
            f"{exc}\nor create the environment with train_teachers=True to train missing teachers on first use."
        ) from exc
    return [load_teacher(path, expected_dataset=settings.dataset) for _, path in members], [name for name, _ in members]


def _listed_teacher(spec: str, settings: KDEnvSettings, data: DatasetSplits) -> tuple[KDModel, str]:
    """One entry of ``teachers=``: ``random:<arch>[:seed]``, a checkpoint path, or a cached architecture."""
    if spec.startswith("random:"):
        _, arch, *seed = spec.split(":")
        with torch.random.fork_rng():
            torch.manual_seed(int(seed[0]) if seed else 0)
            model = create_model(arch, data.num_classes, data.image_shape[0], image_size=data.image_shape[-1])
        return model.eval().requires_grad_(False), f"random_{arch}"
    if spec.endswith(".pt") or os.sep in spec or Path(spec).is_file():
        return load_teacher(spec, expected_dataset=settings.dataset), Path(spec).stem
    path = teacher_path(spec, settings.dataset, settings.teacher_seed, settings.cache_dir)
    if not path.is_file():
        if not _train_missing(settings):
            command = train_command(settings.dataset, [spec], seed=settings.teacher_seed, cache_dir=settings.cache_dir)
            raise TeacherSetupError(
                f"teacher {spec!r} for {settings.dataset!r} is not trained yet (looked for {path}).\n"
                f"Train it with:\n  {command}\n"
                "or create the environment with train_teachers=True to train missing teachers on first use."
            )
        train_teacher(spec, data, seed=settings.teacher_seed, device=settings.device, path=path, progress=True)
    return load_teacher(path, expected_arch=spec, expected_dataset=settings.dataset), spec


def resolve_teachers(settings: KDEnvSettings, data: DatasetSplits) -> tuple[list[KDModel], list[str]]:
    """Load (or, if allowed, train) the teachers of ``settings.pool`` or ``settings.teachers``.

    Raises:
        TeacherSetupError: a teacher is not trained yet (the message gives the command).
        ValueError: a teacher predicts another number of classes than the dataset has.
    """
    if settings.teachers is None:
        models, names = _pool_teachers(settings, data)
    else:
        pairs = [_listed_teacher(spec, settings, data) for spec in settings.teachers]
        models, names = [model for model, _ in pairs], [name for _, name in pairs]
    for model, name in zip(models, names):
        if model.num_classes != data.num_classes:
            raise ValueError(
                f"teacher {name!r} predicts {model.num_classes} classes but {data.name} has {data.num_classes}; "
                "every teacher of a pool must be trained on the env's dataset (retrain it or drop it from the pool)"
            )
    return models, _unique(names)


def _training_subset(data: DatasetSplits, size: int | None, seed: int) -> DatasetSplits:
    """The first ``size`` images of a seeded shuffle of the training split (others unchanged)."""
    if size is None or size >= data.train_labels.shape[0]:
        return data
    order = torch.randperm(int(data.train_labels.shape[0]), generator=torch.Generator().manual_seed(seed))[:size]
    order = order.to(data.train_labels.device)
    return replace(data, train_images=data.train_images[order], train_labels=data.train_labels[order])


def apply_label_noise(data: DatasetSplits, settings: KDEnvSettings) -> DatasetSplits:
    """The student's training labels under ``labels="noisy"`` (corrupted once, from the seed);
    ``data`` as it is in the other regimes. After the teachers are resolved (they are given, trained
    on the true labels) and after ``train_size`` (exactly ``round(rate * N)`` of the N training
    images the student sees are wrong)."""
    if settings.labels != "noisy":
        return data
    assert settings.label_noise is not None  # validated: required with labels="noisy"
    seed = derived_noise_seed(settings.split_seed) if settings.label_noise_seed is None else settings.label_noise_seed
    return with_noisy_train_labels(data, settings.label_noise, settings.label_noise_kind, seed)


def build_engine(settings: KDEnvSettings) -> DistillationEngine:
    """Data, teachers, student factory and engine, from the environment's settings."""
    data = load_dataset(
        settings.dataset,
        settings.data_root,
        download=settings.download,
        verify_checksums=settings.verify_checksums,
        val_fraction=settings.effective_val_fraction,  # 0 under protocol="official"
        split_seed=settings.split_seed,
        device=settings.device,
        **settings.synthetic,
    )
    teachers, names = resolve_teachers(settings, data)  # pool teachers train on the full split, true labels
    data = _training_subset(data, settings.train_size, settings.split_seed)
    data = apply_label_noise(data, settings)
    student_name = settings.resolved("student")
    channels, num_classes = data.image_shape[0], data.num_classes

    config = EngineConfig(
        epochs=settings.resolved("epochs"),
        batch_size=settings.resolved("batch_size"),
        lr=settings.resolved("lr"),
        temperature=settings.temperature,
        alpha=settings.alpha,
        beta=settings.beta,
        feature_kd=settings.feature_kd,
        kd_scale=settings.kd_scale,
        weight_decay=settings.weight_decay,
        feature_term=settings.feature_term,
        feature_kd_from_epoch=settings.feature_kd_from_epoch,
        feature_resize=settings.feature_resize,
        select_on="test" if settings.protocol == "official" else "val",
        augment=settings.augment,
        augment_views=settings.augment_views,
        views_seed=settings.views_seed,
        views_store=settings.views_store,
        max_steps_per_epoch=settings.max_steps_per_epoch,
        drop_last=settings.drop_last,
        teacher_store=settings.teacher_store,
        store_dtype=settings.store_dtype,
        cache_dir=settings.cache_dir,
        label_free=settings.labels == "none",
    )
    return DistillationEngine(
        StudentFactory(student_name, num_classes, channels, data.image_shape[-1]),
        teachers,
        data,
        config,
        device=settings.device,
        teacher_names=names,
    )


def planned_store_size(settings: KDEnvSettings) -> tuple[StoreSize, dict[str, Any]]:
    """The size of the teacher-output store an env with ``settings`` would keep, known before
    building it (``kd-env store size``): data and teachers are loaded, nothing is computed over the
    training set. With ``augment_views=V``, ``V x N`` rows; the second value says what was counted.
    """
    from kd_env.data import BatchTransform
    from kd_env.engine.teacher_source import feature_map_shapes

    data = load_dataset(
        settings.dataset,
        settings.data_root,
        download=settings.download,
        verify_checksums=settings.verify_checksums,
        val_fraction=settings.effective_val_fraction,
        split_seed=settings.split_seed,
        device=settings.device,
        **settings.synthetic,
    )
    teachers, names = resolve_teachers(settings, data)
    data = _training_subset(data, settings.train_size, settings.split_seed)
    sample = BatchTransform(data.mean, data.std)(data.train_images[:2], train=False)
    shapes = feature_map_shapes([t.to(data.train_images.device).eval() for t in teachers], sample, torch.contiguous_format)
    images = int(data.train_labels.shape[0])
    views = settings.augment_views or 1
    contents = (settings.views_store or ("maps" if settings.feature_kd else "embeddings")) if settings.augment_views else None
    size = store_size(
        images * views,
        data.num_classes,
        shapes,
        embeddings=contents != "logits",
        feature_maps=settings.feature_kd if contents is None else contents == "maps",
        dtype=settings.store_dtype,
    )
    return size, {"dataset": data.name, "images": images, "views": settings.augment_views, "teachers": names, "contents": contents}


@dataclass(frozen=True)
class StudentFactory:
    """A picklable ``() -> KDModel`` for the engine (a lambda would not pickle)."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: int | None = None

    def __call__(self) -> KDModel:
        return create_model(self.arch, self.num_classes, self.in_channels, image_size=self.image_size)
