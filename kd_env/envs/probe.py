"""The validation probe: labelled validation images a policy weights without seeing their labels.

``reward_mode="val_label_logprob"`` pays a policy for its teacher weights on images whose labels
it never sees and whose labels the student never trains on: each step, ``probe_rows`` images are
drawn from the validation split (which keeps its true labels in every label regime); the policy
weights their teachers like any training sample, and the reward is the log-probability the
weighted teacher mixture gives each image's true label (the formula of ``label_logprob``,
:func:`kd_env.engine.losses.mixture_label_logprob`). It is the reward that remains when the
training labels are withheld (``labels="none"``): the policy learns which teacher to trust from
label-free features, and the labels that pay for it are the validation split's, the same labels
model selection reads.

Why it is not a function of the observation: the observation holds the teachers' (and the
student's) outputs on the image, never its label; the reward reads the label. A rule over the
observation cannot compute it; a policy can learn to predict it.

The teachers' outputs over the validation split are computed once per env (the teachers are
frozen, the validation images are not augmented): a probe row costs a gather, plus one student
forward pass over the probe images where the state has student columns (``"gap"``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kd_env.engine import DistillationEngine
from kd_env.engine.losses import mixture_label_logprob, per_sample_kd_loss
from kd_env.engine.teacher_source import gather_teacher_outputs
from kd_env.observations import SampleStateSpec, sample_state

__all__ = ["ValidationProbe"]

# the probe's generator is its own (the engine's draws stay those of a run without a probe);
# an offset keeps it apart from the engine's generator, which starts from the same episode seed
_SEED_OFFSET = 0x5EED


class ValidationProbe:
    """``rows`` validation images per step, their states and their rewards.

    Args:
        engine: the env's engine (its teachers, data, transforms and student).
        rows: images per step.
    """

    def __init__(self, engine: DistillationEngine, rows: int) -> None:
        if engine.data.val_labels.numel() == 0:
            raise ValueError("the validation probe needs a validation split (val_fraction > 0, protocol='default')")
        self.engine = engine
        self.rows = int(rows)
        self.generator = torch.Generator()
        self.indices: torch.Tensor | None = None
        self._teacher_logits: torch.Tensor | None = None  # [K, N_val, C]
        self._teacher_embeddings: list[torch.Tensor] = []

    def _teacher_outputs(self, embeddings: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teachers' logits (and, when asked, embeddings) over the whole validation split,
        computed once by the engine's teacher source (the embeddings only where a state reads
        them: a CIFAR-100 pool's are ~100 MB)."""
        if self._teacher_logits is None or (embeddings and not self._teacher_embeddings):
            chunks = self.engine.teacher_source.chunks(self.engine.data.val_images)
            outputs = gather_teacher_outputs(chunks, feature_kd=False, embeddings_kept=embeddings)
            self._teacher_logits, self._teacher_embeddings = outputs["logits"], outputs["embeddings"]
        return self._teacher_logits, self._teacher_embeddings

    def reset(self, episode_seed: int) -> None:
        """A new episode: the probe's draws derive from the episode seed."""
        self.generator.manual_seed(episode_seed + _SEED_OFFSET)
        self.draw()

    def draw(self) -> None:
        """The next step's probe images (with replacement across steps, without within one)."""
        count = int(self.engine.data.val_labels.shape[0])
        order = torch.randperm(count, generator=self.generator)
        self.indices = order[: self.rows] if self.rows <= count else order[torch.randint(count, (self.rows,), generator=self.generator)]

    def states(self, spec: SampleStateSpec, clip: float) -> torch.Tensor:
        """The per-sample states ``[rows, D]`` of the current probe images, built as a training
        sample's are (:func:`kd_env.observations.sample_state`); the student columns (KL to each
        teacher) come from the student in eval mode."""
        assert self.indices is not None
        if spec.feature_kd:
            raise ValueError("the validation probe has no feature-KD columns: use feature_kd=False with probe_rows > 0")
        logits, embeddings = self._teacher_outputs(embeddings=spec.include_embeddings)
        device = self.engine.device
        teacher_logits = logits[:, self.indices].to(device)
        teacher_embeddings = [embedding[self.indices].to(device) for embedding in embeddings]
        if "gap" in spec.state_parts:
            kd_loss = self._student_gap(teacher_logits)
        else:  # no student column: nothing reads it
            kd_loss = teacher_logits.new_zeros(teacher_logits.shape[1], teacher_logits.shape[0])
        return sample_state(
            spec,
            clip,
            feature_cosine=None,
            kd_loss=kd_loss,
            teacher_ce=None,
            teacher_embeddings=teacher_embeddings,
            teacher_logits=teacher_logits,
        )

    @torch.inference_mode()
    def _student_gap(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        engine = self.engine
        assert engine.student is not None and self.indices is not None
        images = engine.eval_transform(engine.data.val_images[self.indices], train=False)
        was_training = engine.student.training
        engine.student.eval()  # no batch-norm statistics move: the probe must not change the student
        try:
            student_logits = engine.student(images.contiguous(memory_format=engine.student_format))
        finally:
            engine.student.train(was_training)
        return per_sample_kd_loss(student_logits, teacher_logits, engine.config.temperature).clone()

    def rewards(self, weights: torch.Tensor, scale: float) -> torch.Tensor:
        """``[rows]``: each probe image's ``log sum_k w_k softmax(z_k / T)[y] / log(C)``."""
        assert self.indices is not None
        logits, _ = self._teacher_outputs()
        labels = self.engine.data.val_labels[self.indices].to(self.engine.device)
        normaliser = math.log(self.engine.num_classes)
        return mixture_label_logprob(weights, logits[:, self.indices], labels, self.engine.config.temperature, normaliser) * scale

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "indices": None if self.indices is None else self.indices.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.indices = state["indices"]
