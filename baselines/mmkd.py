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
then one on CE, the CE of the same batch at the parameters reached, carried back through the
three steps into both networks (the authors' adjoint by default, the exact derivative with
``hypergradient="exact"``), one Adam step; the student itself is left as it was.

The policy (:class:`MMKD`) runs on the per-sample env and drives the engine's own student: it
reads the prepared batch, computes ``[w, v]`` per sample (the action's logit and feature heads)
and, after every ``meta_freq``-th update and the last one of each epoch, takes the meta step
with the engine's student, adapters and optimizer settings.

Modules: ``mmkd_networks`` (the weight networks, the hard buffer), ``mmkd_meta`` (the meta step,
no env), this one (the policy). Every name is importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from kd_env.checkpoint_format import read_checkpoint, write_checkpoint
from kd_env.engine import StepBatch
from kd_env.engine.modes import entry_point

from .mmkd_meta import (
    HYPERGRADIENTS,
    HardBatch,
    MetaProblem,
    SGDSettings,
    StudentForward,
    StudentWithAdapters,
    authors_meta_gradients,
    matching_loss,
    meta_gradients,
    meta_update,
    unrolled_outer_loss,
)
from .mmkd_networks import FeatureWeight, HardBuffer, LogitsWeight, MMKDWeightNets, gram_rows
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
    "StudentForward",
    "StudentWithAdapters",
    "authors_meta_gradients",
    "gram_rows",
    "matching_loss",
    "meta_gradients",
    "meta_update",
    "unrolled_outer_loss",
]

CHECKPOINT_FORMAT = "kd_env.mmkd/1"


class MMKD(BaselinePolicy):
    """MMKD as a learned baseline on the per-sample env (``--agent mmkd``; see the module docstring).

    Each ``predict`` (a prepared batch): the meta step owed by the previous update, if any; the
    batch into the hard buffer; ``[w, v]`` per sample from the weight networks. The meta step
    follows the authors' schedule: after the update of in-epoch index ``i`` when
    ``i % meta_freq == 0`` or ``i`` is the epoch's last. It is taken at the next ``predict``,
    which is the same point of the training (after that update, before the next one).

    What it reads, and changes nothing of: from the prepared batch (:class:`StepBatch`) the
    indices, labels, teacher logits and detached student logits, and (feature weights) the
    ``teacher_feature_maps`` and ``student_feature_map`` of the engine's own forward passes
    (same augmented images; with the teacher-output store the teachers' maps are the store's,
    float16 read as float32). For the meta step, the engine's data, transforms, teachers or
    store, and its student, adapters and SGD optimizer (settings and momentum, as copies).
    Its own forward passes (meta batches) call the models' ``forward_all``; it patches no model.

    Departures from the authors' code:

    * Feature alignment: the engine's adapters, 1x1 conv + BN + ReLU as the authors' ``Embed``
      (their ``--convs`` never reaches it: ``MatchFeature`` passes it as ``Embed``'s ``factor``).
      A student map smaller than the teacher's is upsampled by default (MTKD-RL's way); the
      env's ``feature_resize="smaller"`` (the ``cifar100-paper`` presets) pools the teacher's
      map down to it as ``MatchFeature`` does.
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

    Args:
        env: the per-sample env (``action_mode="simplex"``), or a wrapper around it.
        seed: seeds the weight networks' initialisation and the buffer's and augmentation's draws.
        meta_freq: a meta step after every ``meta_freq``-th update of an epoch (and its last).
        buffer_size: hard-buffer slots.
        meta_lr: Adam's learning rate for the weight networks.
        meta_weight_decay: Adam's weight decay.
        matching_steps: look-ahead steps on the matching loss before the CE step.
        factor: hidden-layer reduction of both networks.
        hypergradient: ``"authors"`` (the authors' ``MetaSGD.meta_backward``: the heavy-ball
            adjoint, also under Nesterov) or ``"exact"`` (the derivative of the Nesterov steps as
            taken); see :class:`MetaProblem`.
    """

    name = "mmkd"
    uses_seed: ClassVar[bool] = True
    # the hard buffer keeps the samples the student gets wrong, and the meta step's CE reads their labels
    needs_training_labels: ClassVar[bool] = True

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
        hypergradient: str = "authors",
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
        if hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient must be one of {HYPERGRADIENTS}, got {hypergradient!r}")
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
            "hypergradient": hypergradient,
        }
        self.hypergradient = hypergradient
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
                heads.append(self.nets.features(*self._feature_maps(batch)))
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
    def _feature_maps(self, batch: StepBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The teachers' maps and the detached student map of the engine's own forward passes on
        the prepared batch (same augmented images), as :class:`StepBatch` carries them."""
        if batch.student_feature_map is None or len(batch.teacher_feature_maps) != self.num_teachers:
            raise RuntimeError(
                "MMKD's feature weights read the prepared batch's feature maps, which the engine keeps only with "
                "feature KD; create the env with feature_kd=True"
            )
        return batch.teacher_feature_maps, batch.student_feature_map.detach()

    # ------------------------------------------------------------------ the meta step
    def _model(self) -> StudentWithAdapters:
        assert self.engine.student is not None and self.engine.adapters is not None
        return StudentWithAdapters(self.engine.student, self.engine.adapters)

    @torch.no_grad()
    def _teacher_outputs(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Teacher logits ``[K, B, C]``, feature maps and the images, for training samples ``indices``
        (augmented afresh, from the policy's generator, when the engine augments)."""
        engine = self.engine
        images = engine.data.train_images[indices.to(engine.device)]
        if engine.augmenting:
            images = engine.train_transform(images, self.augment_generator, train=True)
        else:
            images = engine.eval_transform(images, train=False)
        logits, _, maps = engine.teacher_outputs_for(indices, images)
        return logits, maps, images

    def _student_forward(self, images: torch.Tensor) -> StudentForward:
        """``forward(params)`` of student and adapters on ``images``, on copies of the BN statistics."""
        model = self._model()
        names = [name for name, _ in model.named_parameters()]
        buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}

        def forward(params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
            return functional_call(model, {**dict(zip(names, params)), **buffers}, (images,))

        return forward

    @entry_point  # second-order gradients, even when predict is called under no_grad
    def meta_step(self) -> None:
        """The authors' meta step on a hard-buffer batch (:func:`meta_update`); the student is untouched."""
        engine = self.engine
        indices = self.buffer.sample()
        teacher_logits, teacher_maps, images = self._teacher_outputs(indices)
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
            hypergradient=self.hypergradient,
        )
        meta_update(problem, self.nets, self.optimizer)
        self.meta_steps += 1

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """The keyword arguments, the weight networks, Adam's state, the buffer, the generators and
        the meta step owed (atomically, through :func:`~kd_env.checkpoint_format.write_checkpoint`)."""
        return write_checkpoint(
            path,
            CHECKPOINT_FORMAT,
            {
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
        )

    @classmethod
    def load(cls, path: str | Path, env: Any = None) -> MMKD:
        """Rebuild a saved MMKD on ``env`` (required: it drives the env's student).

        Raises:
            CheckpointReadError: (a ``ValueError``; ``FileNotFoundError`` for a missing file) the
                file is not a complete MMKD checkpoint of this format.
        """
        if env is None:
            raise ValueError("MMKD drives the environment's student; pass env= to load()")
        stored = read_checkpoint(
            path,
            CHECKPOINT_FORMAT,
            what="kd-env MMKD checkpoint",
            fix="save the policy again with policy.save(path)",
            required={
                "kwargs": dict,
                "nets": dict,
                "optimizer": dict,
                "buffer": torch.Tensor,
                "generator": torch.Tensor,
                "augment_generator": torch.Tensor,
                "meta_due_at": int,
                "meta_steps": int,
            },
        )
        policy = cls(env, **stored["kwargs"])
        policy.nets.load_state_dict(stored["nets"])
        policy.optimizer.load_state_dict(stored["optimizer"])
        policy.buffer.indices = stored["buffer"].to(torch.long)
        policy.generator.set_state(stored["generator"])
        policy.augment_generator.set_state(stored["augment_generator"])
        policy._meta_due_at = None if stored["meta_due_at"] < 0 else stored["meta_due_at"]
        policy.meta_steps = stored["meta_steps"]
        return policy
