"""MMKD (Zhang, Chen, Wang, ICME 2023): meta-learned per-sample teacher weights, as a learned baseline.

Read from the authors' code (``Rorozhl/MMKD``: ``train_meta.py``, ``models/meta_util.py``,
``helper/meta_optimizer.py``, ``dataset/buffer.py``; summary in ``reference/baselines.md`` section 5).
Two small networks give the weights. :class:`LogitsWeight` maps the K teacher logits and the
detached student logits of a sample to its logit weights ``w_b`` (softmax over teachers);
:class:`FeatureWeight` maps row ``b`` of the ``B x B`` Gram matrices of the flattened last feature
maps (the K teachers' and the student's) to its feature weights ``v_b``. The student's step is
``CE + alpha * mean_b sum_k w_bk KL_bk + beta * mean_b sum_k v_bk MSE_bk``; that loss never
updates the two networks. They learn in a meta step (:func:`meta_update`): on a batch of the
:class:`HardBuffer`, two look-ahead SGD steps on the matching loss ``alpha * L_KD + beta * L_feat``
then one on CE, the CE of the same batch at the parameters reached, differentiated through the
three steps into both networks, one Adam step; the student itself is left as it was.

The policy (:class:`MMKD`) runs on the per-sample env and drives the engine's own student: it
reads the prepared batch, computes ``[w, v]`` per sample (the action's logit and feature heads)
and, after every ``meta_freq``-th update and the last one of each epoch, takes the meta step
with the engine's student, adapters and optimizer settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kd_env.engine import StepBatch
from kd_env.engine.losses import per_sample_cross_entropy, per_sample_feature_mse, per_sample_kd_loss
from kd_env.models.base import KDModel, ModelOutput
from kd_env.utils import atomic_torch_save

from .policies import BaselinePolicy
from .rules import aver_weights

__all__ = [
    "MMKD",
    "FeatureWeight",
    "HardBatch",
    "HardBuffer",
    "LogitsWeight",
    "MMKDWeightNets",
    "MetaProblem",
    "SGDSettings",
    "StudentWithAdapters",
    "meta_gradients",
    "meta_update",
    "unrolled_outer_loss",
]

CHECKPOINT_FORMAT = "kd_env.mmkd/1"


# ---------------------------------------------------------------------------- the weight networks
class LogitsWeight(nn.Module):
    """Per-sample logit weights from the teachers' and the student's logits (``LogitsWeight``).

    ``[z_1 | ... | z_K | z_s]`` (``C (K + 1)`` values per sample) -> Linear(``C (K+1) // factor``)
    -> ReLU -> Linear(``K``) -> softmax over teachers.

    Args:
        num_classes: ``C``.
        num_teachers: ``K``.
        factor: the hidden layer's reduction (the authors' ``--factor 2``).
    """

    def __init__(self, num_classes: int, num_teachers: int, factor: int = 2) -> None:
        super().__init__()
        inputs = num_classes * (num_teachers + 1)
        self.num_classes, self.num_teachers = int(num_classes), int(num_teachers)
        self.hidden = nn.Linear(inputs, inputs // factor)
        self.out = nn.Linear(inputs // factor, num_teachers)

    def forward(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """``[K, B, C]`` teacher logits and ``[B, C]`` student logits -> ``[B, K]`` weights."""
        expected = (self.num_teachers, student_logits.shape[0], self.num_classes)
        if teacher_logits.dim() != 3 or tuple(teacher_logits.shape) != expected or student_logits.shape[1:] != (self.num_classes,):
            raise ValueError(
                f"LogitsWeight was built for K={self.num_teachers} teachers and C={self.num_classes} classes: it takes "
                f"[K, B, C] teacher logits and [B, C] student logits, got {tuple(teacher_logits.shape)} and "
                f"{tuple(student_logits.shape)}; build it with the env's teacher and class counts"
            )
        features = torch.cat([*teacher_logits.unbind(0), student_logits], dim=1)
        return torch.softmax(self.out(F.relu(self.hidden(features))), dim=-1)


def gram_rows(feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row ``b`` of every map's ``B x B`` Gram matrix of flattened features, side by side: ``[B, B * len(maps)]``."""
    flat = [feature_map.reshape(feature_map.shape[0], -1) for feature_map in feature_maps]
    return torch.cat([f @ f.t() for f in flat], dim=1)


class FeatureWeight(nn.Module):
    """Per-sample feature weights from the batch's Gram matrices (``FeatureWeight``).

    For each teacher and for the student, the ``B x B`` Gram matrix of the flattened last feature
    maps; sample ``b``'s input is row ``b`` of all ``K + 1`` of them (``B (K + 1)`` values) ->
    Linear(``B (K+1) // factor``) -> ReLU -> Linear(``K``) -> softmax over teachers. The input
    size depends on the batch size, so the network serves one fixed batch size only.

    Args:
        batch_size: ``B``.
        num_teachers: ``K``.
        factor: the hidden layer's reduction.
    """

    def __init__(self, batch_size: int, num_teachers: int, factor: int = 2) -> None:
        super().__init__()
        inputs = batch_size * (num_teachers + 1)
        self.batch_size, self.num_teachers = int(batch_size), int(num_teachers)
        self.hidden = nn.Linear(inputs, inputs // factor)
        self.out = nn.Linear(inputs // factor, num_teachers)

    def forward(self, teacher_maps: Sequence[torch.Tensor], student_map: torch.Tensor) -> torch.Tensor:
        """K teacher maps and the student's map, each ``[B, ...]`` -> ``[B, K]`` weights."""
        if len(teacher_maps) != self.num_teachers:
            raise ValueError(f"FeatureWeight was built for K={self.num_teachers} teachers, got {len(teacher_maps)} teacher feature maps")
        sizes = {int(m.shape[0]) for m in (*teacher_maps, student_map)}
        if sizes != {self.batch_size}:
            raise ValueError(
                f"FeatureWeight was built for batches of {self.batch_size} (its input is the B x B Gram matrices, "
                f"B (K + 1) values per sample), got feature maps of batch sizes {sorted(sizes)}; MMKD needs one "
                "fixed batch size: build it with the env's batch_size"
            )
        return torch.softmax(self.out(F.relu(self.hidden(gram_rows([*teacher_maps, student_map])))), dim=-1)


class MMKDWeightNets(nn.Module):
    """Both weight networks (one Adam optimises them together); ``features`` is ``None`` without feature KD."""

    def __init__(self, num_classes: int, num_teachers: int, batch_size: int, feature_kd: bool, factor: int = 2) -> None:
        super().__init__()
        self.logits = LogitsWeight(num_classes, num_teachers, factor)
        self.features = FeatureWeight(batch_size, num_teachers, factor) if feature_kd else None


# ---------------------------------------------------------------------------- the hard buffer
class HardBuffer:
    """The authors' hard buffer (``dataset/buffer.py``), of training-set indices.

    The first training batches fill it (whole batches, up to ``capacity``); once full, each
    batch's misclassified samples overwrite as many distinct slots chosen at random. A meta
    batch is ``batch_size`` distinct slots chosen at random.

    Args:
        capacity: slots (the authors' ``--buffer_size 256``).
        batch_size: samples per meta batch; at most ``capacity``.
        generator: the CPU generator of the slot draws.
    """

    def __init__(self, capacity: int, batch_size: int, generator: torch.Generator) -> None:
        if batch_size < 1 or capacity < batch_size:
            raise ValueError(
                f"the hard buffer needs capacity >= batch size >= 1 (a meta batch is batch_size distinct slots), "
                f"got capacity {capacity} and batch size {batch_size}; raise buffer_size"
            )
        self.capacity, self.batch_size, self.generator = int(capacity), int(batch_size), generator
        self.indices = torch.empty(0, dtype=torch.long)

    @property
    def full(self) -> bool:
        return int(self.indices.numel()) == self.capacity

    def add(self, indices: torch.Tensor, misclassified: torch.Tensor) -> None:
        """One training batch: filling, it goes in whole; full, its misclassified samples replace random slots."""
        indices = indices.detach().to("cpu", torch.long)
        if not self.full:
            room = self.capacity - int(self.indices.numel())
            self.indices = torch.cat([self.indices, indices[:room]])
            return
        hard = indices[misclassified.detach().to("cpu", torch.bool)]
        if hard.numel():
            slots = torch.randperm(self.capacity, generator=self.generator)[: hard.numel()]
            self.indices[slots] = hard

    def sample(self) -> torch.Tensor:
        """``batch_size`` indices from distinct slots (the buffer holds at least one batch after the first ``add``)."""
        if int(self.indices.numel()) < self.batch_size:
            raise RuntimeError(f"the hard buffer holds {self.indices.numel()} samples, fewer than a batch of {self.batch_size}")
        rows = torch.randperm(int(self.indices.numel()), generator=self.generator)[: self.batch_size]
        return self.indices[rows]


# ---------------------------------------------------------------------------- the meta step
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

    def __init__(self, student: nn.Module, adapters: nn.ModuleList) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        output = _forward_all(self.student, images)
        return output.logits, output.feature_map, [adapter(output.feature_map) for adapter in self.adapters]


def _forward_all(model: nn.Module, images: torch.Tensor) -> ModelOutput:
    """The class's ``forward_all``, past an :class:`_OutputRecorder` (MMKD's own passes are not the engine's)."""
    return type(model).forward_all(model, images)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- reading the engine's forward
class _OutputRecorder:
    """Keeps a model's last ``forward_all`` output, as an instance attribute over the class's method.

    Why: the engine's :class:`StepBatch` carries no feature maps, and :class:`FeatureWeight`
    needs the maps of exactly the forward the engine ran (same augmented images). The engine
    (``kd_env/engine``, not MMKD's to change) is read through its public ``teachers``,
    ``student`` and ``student_factory``; pickling and copying drop the recorded output.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.output: ModelOutput | None = None

    def __call__(self, images: torch.Tensor) -> ModelOutput:
        self.output = _forward_all(self.model, images)
        return self.output

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "output": None}


def _recorder(model: nn.Module) -> _OutputRecorder:
    existing = vars(model).get("forward_all")
    if isinstance(existing, _OutputRecorder):
        return existing
    recorder = _OutputRecorder(model)
    vars(model)["forward_all"] = recorder
    return recorder


class _RecordingFactory:
    """Wraps the engine's ``student_factory`` so that every new student records its forward."""

    def __init__(self, factory: Callable[[], KDModel]) -> None:
        self.factory = factory

    def __call__(self) -> KDModel:
        student = self.factory()
        _recorder(student)
        return student


# ---------------------------------------------------------------------------- the policy
class MMKD(BaselinePolicy):
    """MMKD as a learned baseline on the per-sample env (``--agent mmkd``; see the module docstring).

    Each ``predict`` (a prepared batch): the meta step owed by the previous update, if any; the
    batch into the hard buffer; ``[w, v]`` per sample from the weight networks. The meta step
    follows the authors' schedule: after the update of in-epoch index ``i`` when
    ``i % meta_freq == 0`` or ``i`` is the epoch's last. It is taken at the next ``predict``,
    which is the same point of the training (after that update, before the next one).

    Departures from the authors' code:

    * Feature alignment: the engine's adapters (1x1 conv + BN + ReLU; a larger student map is
      pooled to the teacher's size, a smaller one upsampled) instead of ``--convs`` (a 3-layer
      conv embed) and the authors' pooling of a larger *teacher* map to the student's size.
    * The hypergradient is the derivative of the unrolled steps (``torch.func`` and
      ``create_graph``, Nesterov included), the networks' inputs (detached student outputs)
      held fixed as in the authors' code. Their ``MetaSGD.meta_backward`` uses the heavy-ball
      adjoint, equal to it without Nesterov; their run uses ``--nesterov``.
    * The buffer holds training-set indices; a meta batch is augmented afresh (the policy's own
      generator), where the authors keep the augmented tensors seen in training.
    * The look-ahead runs on copies of the parameters and BatchNorm statistics, so the
      student is untouched (the authors restore a state dict; their re-run of the first
      look-ahead forward leaves one extra BN-statistics update behind).
    * The look-ahead's KD factor is the engine's ``alpha * kd_scale`` (1 in the preset), the same
      as the main step's; the authors' main step has no ``alpha`` (``-a 1`` makes them equal).
    * The buffer fills to exactly ``buffer_size`` when the batch size does not divide it (the
      authors' buffer then never counts as full). The last update of a run owes a meta step
      that is not taken (it could only change weights no later update uses).
    * The first batch after a resume (prepared before the policy existed) has no recorded
      forward: its feature weights read the unaugmented images (teachers and student at train
      mode, BN statistics untouched).

    Args:
        env: the per-sample env (``action_mode="simplex"``), or a wrapper around it.
        seed: seeds the weight networks' initialisation and the buffer's and augmentation's draws.
        meta_freq: a meta step after every ``meta_freq``-th update of an epoch (and its last).
        buffer_size: hard-buffer slots.
        meta_lr: Adam's learning rate for the weight networks.
        meta_weight_decay: Adam's weight decay.
        matching_steps: look-ahead steps on the matching loss before the CE step.
        factor: hidden-layer reduction of both networks.
    """

    name = "mmkd"
    uses_seed: ClassVar[bool] = True

    def __init__(
        self,
        env: Any,
        seed: int = 0,
        meta_freq: int = 5,
        buffer_size: int = 256,
        meta_lr: float = 1e-3,
        meta_weight_decay: float = 1e-4,
        matching_steps: int = 2,
        factor: int = 2,
    ) -> None:
        super().__init__(env)
        if not self.per_sample_env:
            raise ValueError(
                "MMKD gives one weight per sample and its feature network reads the whole batch: run it on the per-sample env "
                "(kd-env train --agent mmkd --per-sample, or gym.make_vec(..., vectorization_mode='vector_entry_point'))"
            )
        config = self.engine.config
        if config.feature_term != "mse":
            raise ValueError(
                f"MMKD weights the MSE feature term itself; create the env with feature_term='mse', got {config.feature_term!r}"
            )
        for label, value, low in (("meta_freq", meta_freq, 1), ("matching_steps", matching_steps, 0), ("factor", factor, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        if not (meta_lr > 0 and meta_weight_decay >= 0):
            raise ValueError(f"meta_lr must be > 0 and meta_weight_decay >= 0, got {meta_lr} and {meta_weight_decay}")
        self.seed, self.meta_freq, self.matching_steps = int(seed), meta_freq, matching_steps
        self.config = {
            "seed": self.seed,
            "meta_freq": meta_freq,
            "buffer_size": int(buffer_size),
            "meta_lr": float(meta_lr),
            "meta_weight_decay": float(meta_weight_decay),
            "matching_steps": matching_steps,
            "factor": factor,
        }
        device = self.engine.device
        with torch.random.fork_rng(devices=[]):  # the global RNG stays the env's and the user's
            torch.manual_seed(self.seed)
            nets = MMKDWeightNets(self.engine.num_classes, self.num_teachers, config.batch_size, config.feature_kd, factor)
        self.nets = nets.to(device)
        self.optimizer = torch.optim.Adam(self.nets.parameters(), lr=meta_lr, weight_decay=meta_weight_decay)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.augment_generator = torch.Generator(device=device).manual_seed(self.seed)
        self.buffer = HardBuffer(int(buffer_size), config.batch_size, self.generator)
        self._meta_due_at: int | None = None  # the engine's global_step at which a meta step is owed
        self._student: nn.Module | None = self.engine.student
        self.meta_steps = 0
        self._teacher_recorders = [_recorder(teacher) for teacher in self.engine.teachers]
        if not isinstance(self.engine.student_factory, _RecordingFactory):
            self.engine.student_factory = _RecordingFactory(self.engine.student_factory)
        if self.engine.student is not None:
            _recorder(self.engine.student)

    @property
    def kd_scale(self) -> float:
        """MMKD's KD term is ``mean_b sum_k w_bk KL_bk`` with ``w_b`` on the simplex: kd-env's convention."""
        return 1.0

    def teacher_weights(self, batch: StepBatch) -> torch.Tensor:
        """The logit weights ``[B, K]`` of the prepared batch (no meta step, no buffer update)."""
        return self.nets.logits(batch.teacher_logits, batch.student_logits.detach())

    # ------------------------------------------------------------------ acting
    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """``[B, heads * K]``: per sample the logit weights, then (with feature KD) the feature
        weights. Takes the meta step owed and fills the hard buffer first (see the class docstring)."""
        self._check_observation(np.asarray(observation))
        batch = self.engine.current
        if batch is None:  # the episode is over: any valid action will do
            weights = aver_weights(self.num_teachers).expand(self.engine.config.batch_size, self.num_teachers)
            action = torch.cat([weights] * self.heads, dim=-1)
            return action.numpy().astype(np.float32), state
        self._follow_episode()
        if self._meta_due_at is not None and self._meta_due_at == self.engine.global_step:
            self.meta_step()
        with torch.no_grad():
            self.buffer.add(batch.indices, batch.student_logits.argmax(dim=1) != batch.labels)
            heads = [self.teacher_weights(batch)]
            if self.nets.features is not None:
                heads.append(self.nets.features(self._teacher_maps(batch), self._student_map(batch)))
        index = self.engine.step_in_epoch
        due = index % self.meta_freq == 0 or index == self.engine.steps_per_epoch - 1
        self._meta_due_at = self.engine.global_step + 1 if due else None
        action = torch.cat(heads, dim=-1).detach().to(device="cpu", dtype=torch.float32)
        return action.numpy(), state

    def _follow_episode(self) -> None:
        """A new student (a new episode, or a resumed one): an empty buffer and no meta step owed."""
        if self.engine.student is not self._student:
            self._student = self.engine.student
            self.buffer.indices = torch.empty(0, dtype=torch.long)
            self._meta_due_at = None

    # ------------------------------------------------------------------ the batch's feature maps
    def _teacher_maps(self, batch: StepBatch) -> list[torch.Tensor]:
        """The teachers' feature maps of the prepared batch: recorded from the engine's forward,
        else read from the teacher-output store, else computed on the unaugmented images."""
        recorded = [recorder.output for recorder in self._teacher_recorders]
        if all(
            output is not None
            and output.logits.shape == batch.teacher_logits[k].shape
            and torch.equal(output.logits, batch.teacher_logits[k])
            for k, output in enumerate(recorded)
        ):
            return [output.feature_map for output in recorded if output is not None]
        return self._teacher_outputs(batch.indices, augment=False)[1]

    def _student_map(self, batch: StepBatch) -> torch.Tensor:
        """The student's feature map of the prepared batch (recorded from the engine's forward)."""
        output = _recorder(self.engine.student).output if self.engine.student is not None else None
        if output is not None and output.logits is batch.student_logits:
            return output.feature_map.detach()
        images = self._images(batch.indices, augment=False).contiguous(memory_format=self.engine.student_format)
        return self._student_forward(images)([p.detach() for p in self._model().parameters()])[1]

    # ------------------------------------------------------------------ the meta step
    def _model(self) -> StudentWithAdapters:
        assert self.engine.student is not None and self.engine.adapters is not None
        return StudentWithAdapters(self.engine.student, self.engine.adapters)

    def _images(self, indices: torch.Tensor, augment: bool) -> torch.Tensor:
        images = self.engine.data.train_images[indices.to(self.engine.device)]
        if augment:
            return self.engine.train_transform(images, self.augment_generator, train=True)
        return self.engine.eval_transform(images, train=False)

    @torch.no_grad()
    def _teacher_outputs(self, indices: torch.Tensor, augment: bool) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Teacher logits ``[K, B, C]``, feature maps and the images, for training samples ``indices``."""
        engine = self.engine
        images = self._images(indices, augment and engine.augmenting)
        if engine.teacher_store is not None:  # only without augmentation: the outputs the engine reads
            logits, _, maps = engine.teacher_store.batch(indices, engine.device)
            return logits, maps, images
        teacher_images = images.contiguous(memory_format=engine.teacher_format)
        outputs = [_forward_all(teacher, teacher_images) for teacher in engine.teachers]
        return torch.stack([o.logits for o in outputs]), [o.feature_map for o in outputs], images

    def _student_forward(self, images: torch.Tensor) -> StudentForward:
        """``forward(params)`` of student and adapters on ``images``, on copies of the BN statistics."""
        model = self._model()
        names = [name for name, _ in model.named_parameters()]
        buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}

        def forward(params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
            return functional_call(model, {**dict(zip(names, params)), **buffers}, (images,))

        return forward

    def meta_step(self) -> None:
        """The authors' meta step on a hard-buffer batch (:func:`meta_update`); the student is untouched."""
        engine = self.engine
        indices = self.buffer.sample()
        teacher_logits, teacher_maps, images = self._teacher_outputs(indices, augment=True)
        labels = engine.data.train_labels[indices.to(engine.device)]
        hard = HardBatch(images.contiguous(memory_format=engine.student_format), labels, teacher_logits, teacher_maps)
        params: list[torch.Tensor] = list(self._model().parameters())
        momentum = [engine.optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
        momentum = [torch.zeros_like(p) if b is None else b for p, b in zip(params, momentum)]
        config = engine.config
        problem = MetaProblem(
            forward=self._student_forward(hard.images),
            params=params,
            momentum_buffers=momentum,
            hard=hard,
            sgd=SGDSettings.of(engine.optimizer),
            alpha=config.alpha * config.kd_scale,
            beta=config.beta if (config.feature_kd and engine.epoch >= config.feature_kd_from_epoch) else 0.0,
            temperature=config.temperature,
            matching_steps=self.matching_steps,
        )
        meta_update(problem, self.nets, self.optimizer)
        self.meta_steps += 1

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """The keyword arguments, the weight networks, Adam's state, the buffer, the generators and the meta step owed."""
        return atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "name": self.name,
                "kwargs": dict(self.config),
                "nets": self.nets.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "buffer": self.buffer.indices.clone(),
                "generator": self.generator.get_state(),
                "augment_generator": self.augment_generator.get_state(),
                "meta_due_at": -1 if self._meta_due_at is None else self._meta_due_at,
                "meta_steps": self.meta_steps,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path, env: Any = None) -> MMKD:
        """Rebuild a saved MMKD on ``env`` (required: it drives the env's student)."""
        path = Path(path)
        if env is None:
            raise ValueError("MMKD drives the environment's student; pass env= to load()")
        if not path.is_file():
            raise FileNotFoundError(f"no MMKD checkpoint at {path}")
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file: say which and why
            raise ValueError(f"MMKD checkpoint {path} is corrupt or not a torch file ({exc})") from exc
        if not isinstance(stored, dict) or stored.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not an MMKD checkpoint (format {CHECKPOINT_FORMAT})")
        policy = cls(env, **stored["kwargs"])
        policy.nets.load_state_dict(stored["nets"])
        policy.optimizer.load_state_dict(stored["optimizer"])
        policy.buffer.indices = stored["buffer"].to(torch.long)
        policy.generator.set_state(stored["generator"])
        policy.augment_generator.set_state(stored["augment_generator"])
        policy._meta_due_at = None if int(stored["meta_due_at"]) < 0 else int(stored["meta_due_at"])
        policy.meta_steps = int(stored["meta_steps"])
        return policy
