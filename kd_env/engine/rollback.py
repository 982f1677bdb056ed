"""Helpers for the engine's trainable state: the snapshot an update can be rolled back to, the
finiteness checks that decide a rollback, and BatchNorm statistics held still while a restored
batch is prepared again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kd_env.engine.batch import StepBatch

Snapshot = tuple[list[torch.Tensor], list[torch.Tensor]]
"""``(live tensors, their copies before the update)``."""


def trainable_tensors(models: tuple[nn.Module, ...], optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """What an update changes: parameters, buffers (BN statistics) and optimizer state tensors
    (momentum) of ``models``."""
    tensors = [t for model in models for t in (*model.parameters(), *model.buffers())]
    for state in optimizer.state.values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor) and value.is_floating_point()]
    return tensors  # BN's integer num_batches_tracked included: a rollback restores it too


def take_snapshot(previous: Snapshot | None, tensors: list[torch.Tensor]) -> Snapshot:
    """Copy ``tensors`` before an update (one memcpy of the student; the copies of ``previous``
    are reused when it holds the same tensors, so no allocation per step once the optimizer
    state exists)."""
    if previous is None or len(previous[0]) != len(tensors) or any(a is not b for a, b in zip(previous[0], tensors)):
        return tensors, [t.detach().clone() for t in tensors]
    with torch.no_grad():
        torch._foreach_copy_(previous[1], [t.detach() for t in tensors])
    return previous


def restore_snapshot(snapshot: Snapshot, optimizer: torch.optim.Optimizer) -> None:
    """Copy the snapshot back, and drop the optimizer state the update created (the first step's
    momentum has no earlier value)."""
    with torch.no_grad():
        torch._foreach_copy_([t.detach() for t in snapshot[0]], snapshot[1])
    known = {id(t) for t in snapshot[0]}
    for parameter, state in list(optimizer.state.items()):
        if any(isinstance(v, torch.Tensor) and v.is_floating_point() and id(v) not in known for v in state.values()):
            del optimizer.state[parameter]


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """One reduction and one sync: every floating-point tensor of ``tensors`` finite."""
    floating = [t.detach() for t in tensors if t.is_floating_point()]
    if not floating:
        return True
    norms = torch._foreach_norm(floating, float("inf"))  # NaN or inf anywhere -> NaN or inf here
    return bool(torch.isfinite(torch.stack(norms)).all())


def prepared_batch_finite(batch: StepBatch) -> bool:
    """The prepared batch's student logits, KD losses and feature MSEs are finite."""
    quantities = [batch.student_logits.detach(), batch.kd_loss.detach()]
    if batch.feature_mse is not None:
        quantities.append(batch.feature_mse.detach())
    return bool(all(torch.isfinite(q).all() for q in quantities))


@contextmanager
def frozen_batchnorm(*models: nn.Module) -> Iterator[None]:
    """Forward passes inside leave the BatchNorm statistics of ``models`` untouched.

    Momentum 0 makes the running-statistics update an exact no-op. Restoring the buffers
    afterwards instead would bump the version of tensors the autograd graph saved.
    """
    norms = [m for model in models for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for module in norms:
        module.momentum = 0.0
    try:
        yield
    finally:
        for module, (momentum, tracked) in zip(norms, saved):
            module.momentum = momentum
            if tracked is not None:
                assert module.num_batches_tracked is not None  # it was not None when saved
                module.num_batches_tracked.copy_(tracked)
