"""MMKD's meta step: the look-ahead SGD steps of the student, unrolled differentiably, and the
hypergradient of the CE after them into the weight networks (the authors' ``train_meta.py``
and ``helper/meta_optimizer.py``). Plain functions of a :class:`MetaProblem`: no env, no engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kd_env.engine.adapters import match_teacher_map
from kd_env.engine.losses import per_sample_cross_entropy, per_sample_feature_mse, per_sample_kd_loss
from kd_env.models.base import KDModel

from .mmkd_networks import MMKDWeightNets

__all__ = [
    "HYPERGRADIENTS",
    "HardBatch",
    "MetaProblem",
    "SGDSettings",
    "StudentForward",
    "StudentWithAdapters",
    "authors_meta_gradients",
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
        # a teacher map larger than the adapted student map is pooled to it (resize="smaller", MMKD's MatchFeature)
        mse = torch.stack([per_sample_feature_mse(a, match_teacher_map(t, a)) for a, t in zip(adapted, hard.teacher_maps)], dim=1)
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
        hypergradient: ``"authors"`` (default): the authors' ``MetaSGD.meta_backward``, the
            heavy-ball adjoint carried back through the recorded states even when the steps
            were Nesterov steps (:func:`authors_meta_gradients`); ``"exact"``: the derivative of
            the unrolled steps as taken (:func:`unrolled_outer_loss`). Equal without Nesterov.
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
    hypergradient: str = "authors"


HYPERGRADIENTS = ("authors", "exact")


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
    """``d outer CE / d nets``, one tensor per parameter (zeros where it does not reach), as
    ``problem.hypergradient`` says: the authors' adjoint (:func:`authors_meta_gradients`) or the
    exact derivative of :func:`unrolled_outer_loss`."""
    if problem.hypergradient == "authors":
        return authors_meta_gradients(problem, nets)
    if problem.hypergradient != "exact":
        raise ValueError(f"hypergradient must be one of {HYPERGRADIENTS}, got {problem.hypergradient!r}")
    parameters = list(nets.parameters())
    grads = torch.autograd.grad(unrolled_outer_loss(problem, nets), parameters, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads)]


def _step_loss(problem: MetaProblem, nets: MMKDWeightNets, theta: list[torch.Tensor], matching: bool) -> torch.Tensor:
    """One look-ahead step's objective at ``theta``: the matching loss, or the CE."""
    output = problem.forward(theta)
    if matching:
        return matching_loss(output, problem.hard, nets, problem.alpha, problem.beta, problem.temperature)
    return per_sample_cross_entropy(output[0], problem.hard.labels).mean()


def _grads_or_zeros(output: torch.Tensor, inputs: list[torch.Tensor], create_graph: bool = False) -> list[torch.Tensor]:
    """Gradients, zeros for an input ``output`` does not read (what the authors' torch 1.8
    ``zero_grad`` left in ``p.grad``: CE does not read the adapters)."""
    grads = torch.autograd.grad(output, inputs, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def authors_meta_gradients(problem: MetaProblem, nets: MMKDWeightNets) -> list[torch.Tensor]:
    """The hypergradient as the authors' ``MetaSGD.meta_backward`` computes it (L2T-ww style).

    Forward: the look-ahead steps as torch's SGD takes them (Nesterov included), each state
    recorded. Backward, from the CE gradient at the last state: with ``a`` the adjoint of the
    parameters and ``m`` that of the momentum buffer (0 at the end), at each recorded state
    ``theta_t`` the step's gradient ``g_t`` is re-taken with ``create_graph`` and
    ``X = g_t . (m - lr a)`` is differentiated: into the weight networks (summed over the
    steps: the hypergradient) and into ``theta_t`` (a Hessian-vector product ``h``); then
    ``a <- a (1 - lr wd) + wd m + h`` and ``m <- momentum (m - lr a)``. That is the exact adjoint
    of heavy-ball SGD; a Nesterov step (``theta -= lr (d + momentum buf)``) has another one,
    which the authors' code does not use: their ``--nesterov`` run gets this one.
    """
    sgd = problem.sgd
    parameters: list[torch.Tensor] = list(nets.parameters())
    theta = [p.detach().clone() for p in problem.params]
    buffers = [b.detach().clone() for b in problem.momentum_buffers]
    states: list[tuple[list[torch.Tensor], bool]] = []
    for matching in [True] * problem.matching_steps + [False]:
        states.append((theta, matching))
        leaves = [p.clone().requires_grad_(True) for p in theta]
        grads = _grads_or_zeros(_step_loss(problem, nets, leaves, matching), leaves)
        with torch.no_grad():
            theta, buffers = _sgd_step(theta, grads, buffers, sgd)
    leaves = [p.clone().requires_grad_(True) for p in theta]
    adj_theta = _grads_or_zeros(_step_loss(problem, nets, leaves, False), leaves)
    adj_buf = [torch.zeros_like(p) for p in theta]
    hyper = [torch.zeros_like(p) for p in parameters]
    for state, matching in reversed(states):
        leaves = [p.clone().requires_grad_(True) for p in state]
        grads = _grads_or_zeros(_step_loss(problem, nets, leaves, matching), leaves, create_graph=True)
        x = sum(((g * (m - sgd.lr * a)).sum() for g, a, m in zip(grads, adj_theta, adj_buf)), torch.zeros(()))
        reached = _grads_or_zeros(x, leaves + (parameters if matching else []))  # the CE step reads no network
        hvp = reached[: len(leaves)]
        hyper = [h + r for h, r in zip(hyper, reached[len(leaves) :])] if matching else hyper
        adj_theta, adj_buf = (
            [a * (1 - sgd.lr * sgd.weight_decay) + sgd.weight_decay * m + h for a, m, h in zip(adj_theta, adj_buf, hvp)],
            [sgd.momentum * (m - sgd.lr * a) for a, m in zip(adj_theta, adj_buf)],
        )
    return hyper


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
