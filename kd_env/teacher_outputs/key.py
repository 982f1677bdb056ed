"""A teacher-output store's key: everything that determines its content (format version, each
teacher's weights, the training data, normalisation, arrays, dtype), hashed into its folder name."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_env.models.digest import state_dict_sha256

FORMAT_VERSION = 1
"""Bumped whenever the layout or the meaning of a stored array changes: old stores get new keys."""
STORE_DTYPES = ("float16", "float32")


def stores_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds all stores: ``<cache_dir>/teacher_outputs`` (default: the kd-env cache)."""
    if cache_dir is None:
        from kd_env.data import default_cache_dir

        cache_dir = default_cache_dir()
    return Path(cache_dir) / "teacher_outputs"


def teacher_checksum(model: nn.Module) -> str:
    """SHA-256 of a teacher's weights: its checkpoint's verified ``sha256`` when it has one.

    :func:`kd_env.teachers.load_teacher` checks that digest against the weights when it loads
    them, so it can stand for them without hashing again; other models are hashed here.
    """
    metadata = getattr(model, "teacher_metadata", None)
    if isinstance(metadata, Mapping) and isinstance(metadata.get("sha256"), str):
        return str(metadata["sha256"])
    return state_dict_sha256(model.state_dict())


def data_checksum(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 over the images' and labels' dtypes, shapes and bytes (CPU copies)."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def store_key_inputs(
    teachers: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    feature_maps: bool,
    dtype: str = "float16",
    embeddings: bool = True,
    views: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that determines a store's content, as a JSON-serialisable dict.

    ``views`` (issue #27): the augmented views the store holds, V rows per training image (row
    ``image * V + view``): their count, seed, augmentation parameters and the SHA-256 of the drawn
    table (:func:`kd_env.engine.views.ViewTable.key_inputs`); ``None`` for the un-augmented images,
    one row each (the keys of the stores built before views are unchanged). ``embeddings=False``
    keeps the logits only (with views, where no consumer reads the embeddings).
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
    if feature_maps and not embeddings:
        raise ValueError("a store with feature maps keeps the embeddings too")
    arrays = ["logits", *(["embeddings"] if embeddings else []), *(["feature_maps"] if feature_maps else [])]
    inputs = {
        "format_version": FORMAT_VERSION,
        "teachers": [{"class": type(t).__qualname__, "sha256": teacher_checksum(t)} for t in teachers],
        "data_sha256": data_checksum(images, labels),
        "num_samples": int(labels.shape[0]),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "arrays": arrays,
        "dtype": dtype,
    }
    if views is not None:
        inputs["views"] = dict(views)
        inputs["num_samples"] = int(labels.shape[0]) * int(views["count"])
    return inputs


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def store_key(key_inputs: Mapping[str, Any]) -> str:
    """The store's folder name: the first 32 hex digits of SHA-256 over the canonical key inputs."""
    return hashlib.sha256(_canonical(dict(key_inputs))).hexdigest()[:32]
