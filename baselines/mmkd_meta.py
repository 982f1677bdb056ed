"""MMKD's meta step: the look-ahead SGD steps of the student, unrolled differentiably, and the
hypergradient of the CE after them into the weight networks (the authors' ``train_meta.py``
and ``helper/meta_optimizer.py``). Plain functions of a :class:`MetaProblem`: no env, no engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kd_env.engine.losses import per_sample_cross_entropy, per_sample_feature_mse, per_sample_kd_loss
from kd_env.models.base import KDModel

from .mmkd_networks import MMKDWeightNets

__all__ = [
    "HardBatch",
    "MetaProblem",
    "SGDSettings",
    "StudentForward",
    "StudentWithAdapters",
    "matching_loss",
    "meta_gradients",
    "meta_update",
    "unrolled_outer_loss",
]


@dataclass(frozen=True)
class SGDSettings:
    """The student optimizer's update rule, repeated differentiably in the look-ahead."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> SGDSettings:
        """Read from a ``torch.optim.SGD`` with one parameter group (the engine's), at its current LR."""
        if not isinstance(optimizer, torch.optim.SGD) or len(optimizer.param_groups) != 1:
            raise ValueError(f"MMKD's look-ahead repeats SGD with one parameter group, got {type(optimizer).__name__}")
        group = optimizer.param_groups[0]
        if group.get("dampening", 0) != 0:
            raise ValueError(f"MMKD's look-ahead assumes SGD without dampening, got dampening={group['dampening']}")
        return cls(float(group["lr"]), float(group["momentum"]), float(group["weight_decay"]), bool(group["nesterov"]))


@dataclass
class HardBatch:
    """A meta batch: images, labels and the teachers' outputs on them."""

    images: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor  # [K, B, C]
    teacher_maps: list[torch.Tensor]  # K x [B, C_k, H_k, W_k]; empty without feature KD


StudentForward = Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]


def matching_loss(
    output: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]],
    hard: HardBatch,
    nets: MMKDWeightNets,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha * mean_b sum_k w_bk KL_bk + beta * mean_b sum_k v_bk MSE_bk`` (the authors' ``matching_only``),
    the weights from ``nets`` on the detached student outputs."""
    logits, feature_map, adapted = output
    kd = per_sample_kd_loss(logits, hard.teacher_logits, temperature)
    loss = alpha * (nets.logits(hard.teacher_logits, logits.detach()) * kd).sum(1).mean()
    if nets.features is not None and beta != 0:
        mse = torch.stack([per_sample_feature_mse(a, t) for a, t in zip(adapted, hard.teacher_maps)], dim=1)
        loss = loss + beta * (nets.features(hard.teacher_maps, feature_map.detach()) * mse).sum(1).mean()
    return loss


def _sgd_step(
    params: list[torch.Tensor], grads: Sequence[torch.Tensor | None], buffers: list[torch.Tensor], sgd: SGDSettings
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``torch.optim.SGD``'s update, out of place so that autograd follows it; a parameter
    without a gradient is skipped, as torch's SGD skips it."""
    new_params, new_buffers = [], []
    for param, grad, buffer in zip(params, grads, buffers):
        if grad is None:
            new_params.append(param)
            new_buffers.append(buffer)
            continue
        step = grad + sgd.weight_decay * param
        if sgd.momentum:
            buffer = sgd.momentum * buffer + step
            step = step + sgd.momentum * buffer if sgd.nesterov else buffer
        new_params.append(param - sgd.lr * step)
        new_buffers.append(buffer)
    return new_params, new_buffers


@dataclass
class MetaProblem:
    """Everything a meta step reads besides the weight networks.

    Attributes:
        forward: ``forward(params) -> (logits, feature_map, adapted maps)``: the student (and its
            adapters) on ``hard.images`` at ``params``.
        params: the student's (and adapters') parameters now; the look-ahead uses detached copies.
        momentum_buffers: SGD's momentum buffers for ``params`` (zeros where none exists yet).
        hard: the meta batch.
        sgd: the student optimizer's update rule.
        alpha: factor of the look-ahead's KD term.
        beta: factor of its feature term (0: none).
        temperature: the KD temperature.
        matching_steps: look-ahead steps on the matching loss before the CE step.
    """

    forward: StudentForward
    params: list[torch.Tensor]
    momentum_buffers: list[torch.Tensor]
    hard: HardBatch
    sgd: SGDSettings
    alpha: float
    beta: float
    temperature: float
    matching_steps: int = 2


def unrolled_outer_loss(problem: MetaProblem, nets: MMKDWeightNets) -> torch.Tensor:
    """The CE on the hard batch after ``matching_steps`` SGD steps on the matching loss and one on
    CE, as a differentiable function of ``nets`` (second order: every step's gradient is taken
    with ``create_graph=True``, through momentum and weight decay)."""
    hard = problem.hard
    theta = [p.detach().clone().requires_grad_(True) for p in problem.params]
    buffers = [b.detach().clone() for b in problem.momentum_buffers]
    for _ in range(problem.matching_steps):
        loss = matching_loss(problem.forward(theta), hard, nets, problem.alpha, problem.beta, problem.temperature)
        grads = torch.autograd.grad(loss, theta, create_graph=True, allow_unused=True)
        theta, buffers = _sgd_step(theta, grads, buffers, problem.sgd)
    ce = per_sample_cross_entropy(problem.forward(theta)[0], hard.labels).mean()
    grads = torch.autograd.grad(ce, theta, create_graph=True, allow_unused=True)
    theta, buffers = _sgd_step(theta, grads, buffers, problem.sgd)
    return per_sample_cross_entropy(problem.forward(theta)[0], hard.labels).mean()


def meta_gradients(problem: MetaProblem, nets: MMKDWeightNets) -> list[torch.Tensor]:
    """``d unrolled_outer_loss / d nets``, one tensor per parameter (zeros where it does not reach)."""
    parameters = list(nets.parameters())
    grads = torch.autograd.grad(unrolled_outer_loss(problem, nets), parameters, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads)]


def meta_update(problem: MetaProblem, nets: MMKDWeightNets, optimizer: torch.optim.Optimizer) -> None:
    """One meta step: the hypergradient (:func:`meta_gradients`), then one step of ``optimizer`` (Adam) on ``nets``."""
    grads = meta_gradients(problem, nets)
    optimizer.zero_grad(set_to_none=True)
    for parameter, grad in zip(nets.parameters(), grads):
        parameter.grad = grad.detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class StudentWithAdapters(nn.Module):
    """The engine's student and adapters as one module (the parameters its optimizer updates, in
    its order), for :func:`torch.func.functional_call`: ``forward(images) -> (logits, feature_map,
    adapted maps)``. It holds the engine's modules, it copies nothing."""

    def __init__(self, student: KDModel, adapters: nn.ModuleList) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        output = self.student.forward_all(images)
        return output.logits, output.feature_map, [adapter(output.feature_map) for adapter in self.adapters]
