"""Teacher weights: the one place where actions become weights and weights are checked.

Every policy (RL agent, SB3 model or classic rule) ends in a weight tensor on the simplex;
environments map raw actions here, and the engine validates here, so the rules are the same
for every caller.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: How an action becomes weights: ``softmax(scale * a)``, renormalised non-negative weights,
#: or non-negative weights applied as they are (MTKD-RL's all-ones warm-up).
ACTION_MODES = ("softmax", "simplex", "raw")


def logits_to_simplex(action: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Map unconstrained actions (last dim = teachers) to the simplex: ``softmax(scale * a)``."""
    return torch.softmax(scale * action, dim=-1)


def renormalize_simplex(weights: torch.Tensor) -> torch.Tensor:
    """Rescale non-negative weights (last dim = teachers) to sum to one."""
    return weights / weights.sum(dim=-1, keepdim=True)


def check_action(action: np.ndarray | torch.Tensor, expected_shape: tuple[int, ...], *, mode: str = "softmax") -> None:
    """Raise ``ValueError`` naming the problem if an action cannot be applied.

    Args:
        action: the raw action.
        expected_shape: the action space's shape.
        mode: ``"softmax"`` (any finite values), ``"simplex"`` (non-negative, each head
            renormalised, so a head summing to zero is an error too) or ``"raw"`` (non-negative
            weights applied as they are).
    """
    array = action.detach().cpu().numpy() if isinstance(action, torch.Tensor) else np.asarray(action)
    if tuple(array.shape) != tuple(expected_shape):
        raise ValueError(f"action has shape {tuple(array.shape)}, expected {tuple(expected_shape)} (one entry per teacher, per head)")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"action has dtype {array.dtype}; pass a float array")
    if not np.all(np.isfinite(array)):
        raise ValueError("action contains NaN or inf; the student was not updated")
    if mode in ("simplex", "raw") and np.any(array < 0):
        raise ValueError(f"action_mode={mode!r} takes non-negative weights, got a negative entry")


def check_weights(weights: torch.Tensor, num_teachers: int, batch_size: int, name: str = "weights") -> torch.Tensor:
    """Validate teacher weights for one engine step and return them as float32.

    Accepts ``[K]`` (per batch) or ``[B, K]`` (per sample); the values must be finite and
    non-negative. They need not sum to one (MTKD-RL's warm-up uses all-ones weights).
    """
    if not isinstance(weights, torch.Tensor):
        weights = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if weights.shape not in (torch.Size([num_teachers]), torch.Size([batch_size, num_teachers])):
        raise ValueError(
            f"{name} has shape {tuple(weights.shape)}; expected ({num_teachers},) per batch or ({batch_size}, {num_teachers}) per sample"
        )
    if not torch.isfinite(weights).all():
        raise ValueError(f"{name} contain NaN or inf; nothing was changed")
    if (weights < 0).any():
        raise ValueError(f"{name} contain a negative entry; teacher weights must be >= 0")
    return weights.float()


def action_to_weights(
    action: np.ndarray, num_teachers: int, heads: int, action_mode: str, scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Map a checked action ``[..., heads * K]`` to (logit weights, feature weights).

    ``softmax`` and ``simplex`` give weights on the simplex; ``raw`` applies them as they are.
    """
    tensor = torch.as_tensor(np.asarray(action, dtype=np.float32))
    tensor = tensor.reshape(*tensor.shape[:-1], heads, num_teachers)
    if action_mode == "softmax":
        weights = logits_to_simplex(tensor, scale)
    elif action_mode == "simplex":
        weights = renormalize_simplex(tensor)
    else:
        weights = tensor
    logit_weights = weights[..., 0, :]
    feature_weights = weights[..., 1, :] if heads == 2 else None
    return logit_weights, feature_weights


def validate_action(action: Any, shape: tuple[int, ...], action_mode: str, num_teachers: int) -> np.ndarray:
    """Check an action (ValueError naming the problem) and return it as a float32 array.

    Any real dtype is taken (NumPy's float64 default, a torch tensor, one that still requires
    grad, on any device) and applied as the float32 the action space holds, so a float64
    action equals its float32 rounding to the bit. Values beyond float32's range are checked on
    that rounding too: softmax logits become +-inf and are clipped to the Box like any other
    out-of-bounds logit; simplex and raw weights would become inf or a zero head, an error here
    rather than NaN weights in the engine.
    """
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu()  # a policy's output may still carry its graph
    array = np.asarray(action)
    check_action(array, shape, mode=action_mode)
    with np.errstate(over="ignore"):  # float64 beyond float32's range: handled below
        cast = array.astype(np.float32)
    if action_mode != "softmax" and not np.all(np.isfinite(cast)):
        raise ValueError(f"action_mode={action_mode!r} weights beyond float32's range (max {float(array.max()):.3g}); rescale them")
    if action_mode == "simplex":
        head_sums = cast.reshape(*cast.shape[:-1], -1, num_teachers).sum(-1)
        if np.any(head_sums <= 0):
            raise ValueError("action_mode='simplex' weights of a head sum to zero (in float32); give at least one teacher weight > 0")
    return cast
