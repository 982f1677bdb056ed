"""A model's weights as one SHA-256: what a teacher checkpoint records and the teacher-output
store's key reads (both above this package), so it lives with the models."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["SHA_SCHEME", "state_dict_sha256"]

SHA_SCHEME = "kd_env.state_dict_sha256/1"


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state dict, independent of how ``torch.save`` lays it out.

    For every entry in sorted key order the digest takes, each prefixed by its byte length: the
    UTF-8 key, the dtype name (e.g. ``torch.float32``), the shape as comma-separated ints and
    the raw bytes of the contiguous CPU tensor.
    """
    digest = hashlib.sha256()
    digest.update(SHA_SCHEME.encode())

    def put(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for key in sorted(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().to("cpu").contiguous()
        put(key.encode("utf-8"))
        put(str(tensor.dtype).encode())
        put(",".join(str(s) for s in tensor.shape).encode())
        put(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
