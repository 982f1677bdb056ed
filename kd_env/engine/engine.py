"""The distillation engine: one student, K frozen teachers, one weighted training step at a time.

Plain PyTorch, no Gymnasium. The environments, agents, baselines and benchmarks all drive this one
class, so the loss, the per-sample quantities and the bookkeeping exist once.

The step protocol matches the design card: the engine *prepares* batch t (teachers once under
``torch.inference_mode()``, the student forward with its autograd graph kept, every per-sample
quantity computed once), a policy looks at :attr:`DistillationEngine.current` and chooses
weights, :meth:`DistillationEngine.step` applies them to that same batch and prepares batch t+1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from kd_env.data import BatchTransform, DatasetSplits, batch_indices, default_augmentation
from kd_env.engine.adapters import build_adapters, match_teacher_map
from kd_env.engine.batch import StepBatch, StepResult
from kd_env.engine.config import EngineConfig
from kd_env.engine.evaluation import accuracy_and_loss
from kd_env.engine.losses import (
    feature_cosine,
    per_sample_cross_entropy,
    per_sample_entropy,
    per_sample_feature_mse,
    per_sample_kd_loss,
    weighted_teacher_sum,
)
from kd_env.engine.modes import entry_point, student_autograd
from kd_env.engine.state import (
    all_finite,
    frozen_batchnorm,
    prepared_batch_finite,
    restore_snapshot,
    take_snapshot,
    trainable_tensors,
)
from kd_env.engine.teacher_pass import feature_map_shapes, gather_teacher_outputs, open_teacher_store, run_teachers
from kd_env.models import KDModel
from kd_env.teacher_outputs import TeacherBatch, TeacherOutputStore
from kd_env.weights import check_weights

__all__ = ["DistillationEngine", "EngineConfig", "StepBatch", "StepResult"]


class DistillationEngine:
    """Multi-teacher KD on tensors: student, frozen teachers, adapters, SGD and the LR schedule.

    Args:
        student_factory: builds a fresh student (called under a seeded RNG at each :meth:`reset`).
        teachers: the frozen teachers (put in eval mode, gradients off).
        data: the dataset splits; they are moved to ``device`` once.
        config: training hyperparameters.
        device: where the student, teachers and data live.
        teacher_names: names used in logs and observations.
    """

    @student_autograd()  # tensors kept from here (teacher outputs in memory) must not be inference tensors
    def __init__(
        self,
        student_factory: Callable[[], KDModel],
        teachers: list[KDModel],
        data: DatasetSplits,
        config: EngineConfig | None = None,
        device: str | torch.device = "cpu",
        teacher_names: list[str] | None = None,
    ) -> None:
        if not teachers:
            raise ValueError("the engine needs at least one teacher")
        self.config = config or EngineConfig()
        self.config.check(len(teachers))
        self.device = torch.device(device)
        self.data = data.to(self.device)
        self.student_factory = student_factory
        self.teacher_names = list(teacher_names or [f"teacher{k}" for k in range(len(teachers))])
        if len(self.teacher_names) != len(teachers):
            raise ValueError(f"{len(self.teacher_names)} teacher names for {len(teachers)} teachers")
        self.teacher_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        self.student_format = torch.channels_last if self.config.student_channels_last else torch.contiguous_format
        self.teachers = [self._freeze(teacher) for teacher in teachers]
        for teacher in self.teachers:
            if teacher.num_classes != data.num_classes:
                raise ValueError(f"a teacher predicts {teacher.num_classes} classes but {data.name} has {data.num_classes}")
        augment = self.config.augment
        augmentation = (
            default_augmentation(data.name) if augment is None else ({"crop_padding": 4, "horizontal_flip": True} if augment else {})
        )
        self.augmenting = bool(augmentation)
        self.train_transform = BatchTransform(data.mean, data.std, **augmentation)
        self.eval_transform = BatchTransform(data.mean, data.std)
        num_train = int(self.data.train_labels.shape[0])
        # drop_last (the default): every batch has B samples; else the last one has the rest
        full_steps = num_train // self.config.batch_size if self.config.drop_last else -(-num_train // self.config.batch_size)
        if full_steps == 0:
            raise ValueError(f"batch size {self.config.batch_size} exceeds the {num_train} training samples")
        cap = self.config.max_steps_per_epoch
        self.steps_per_epoch = min(full_steps, cap) if cap else full_steps
        self.teacher_shapes = self._probe_teacher_shapes()
        self._teacher_cache: dict[str, Any] | None = None
        self.teacher_store: TeacherOutputStore | None = None
        if self.config.cache_teacher_outputs and not self.augmenting:
            if self.config.teacher_store:
                self.teacher_store = self._open_teacher_store()
            if self.teacher_store is None:
                self._teacher_cache = self._run_teachers_over_training_set()
        self.student: KDModel | None = None
        self.adapters: nn.ModuleList | None = None
        self.current: StepBatch | None = None

    # ------------------------------------------------------------------ set-up
    def _freeze(self, teacher: KDModel) -> KDModel:
        teacher = teacher.to(self.device, memory_format=self.teacher_format).eval()  # type: ignore[call-overload]  # torch's overloads omit to(device, memory_format=)
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        return teacher

    @property
    def num_teachers(self) -> int:
        return len(self.teachers)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @property
    def done(self) -> bool:
        return self.global_step >= self.total_steps

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def progress(self) -> float:
        return self.global_step / self.total_steps

    def _format_for(self, model: nn.Module) -> torch.memory_format:
        return self.teacher_format if any(model is teacher for teacher in self.teachers) else self.student_format

    def _probe_teacher_shapes(self) -> list[tuple[int, int, int]]:
        sample = self.eval_transform(self.data.train_images[:2], train=False)
        return feature_map_shapes(self.teachers, sample, self.teacher_format)

    def _teacher_outputs(self, images: torch.Tensor) -> TeacherBatch:
        """All teachers, once each, without autograd: stacked logits, embeddings, feature maps."""
        return run_teachers(self.teachers, images, self.teacher_format)

    def teacher_outputs_for(self, indices: torch.Tensor, images: torch.Tensor) -> TeacherBatch:
        """The teachers' logits ``[K, B, C]``, embeddings and feature maps for the training samples
        ``indices`` whose transformed pixels are ``images``: read from the store or the in-memory
        cache where the outputs were computed once (augmentation off), else one pass of every
        teacher over ``images`` (the engine's batches and MMKD's hard batches alike)."""
        if self.teacher_outputs_by_index:
            return self._kept_teacher_outputs(indices, feature_maps=self.config.feature_kd)
        return self._teacher_outputs(images)

    def _kept_teacher_outputs(self, indices: torch.Tensor, *, feature_maps: bool) -> TeacherBatch:
        """Rows ``indices`` of the outputs computed once: the store's, else the in-memory cache's."""
        if self.teacher_store is not None:
            return self.teacher_store.batch(indices, self.device, feature_maps=feature_maps)
        assert self._teacher_cache is not None
        cache = self._teacher_cache
        maps = [feature_map[indices] for feature_map in cache["feature_maps"]] if feature_maps else []
        return cache["logits"][:, indices], [embedding[indices] for embedding in cache["embeddings"]], maps

    @property
    def teacher_outputs_by_index(self) -> bool:
        """Whether a training sample's teacher outputs are a function of its index alone: they
        were computed once (store or in-memory cache), which augmentation rules out."""
        return self.teacher_store is not None or self._teacher_cache is not None

    def teacher_performance(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """Logits ``[K, B, C]``, embeddings and per-sample CE ``[B, K]`` of the training samples
        ``indices``, read again from the store or the in-memory cache: the same values the
        samples' batch had (the same arrays, the same CE formula), without the feature maps.
        The CE is ``None`` in the label-free regime (it reads the training labels).

        Raises:
            RuntimeError: the teacher outputs are not kept (augmentation on, or no cache).
        """
        return next(self.teacher_performance_batches([indices]))

    def teacher_performance_batches(
        self, batches: Sequence[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]]:
        """:meth:`teacher_performance` of each batch of ``batches``, in order, with the rows of
        all of them read at once (the store reads rows that are dense in its files as blocks);
        the CE is computed per batch, as the batch's step did."""
        if not self.teacher_outputs_by_index:
            raise RuntimeError("teacher outputs are not kept by sample index (augmentation on, or cache_teacher_outputs=False)")
        indices = torch.cat([batch.to(self.device) for batch in batches])
        logits, embeddings, _ = self._kept_teacher_outputs(indices, feature_maps=False)
        labels = None if self.config.label_free else self.data.train_labels[indices]
        start = 0
        for batch in batches:
            stop = start + len(batch)
            batch_logits = logits[:, start:stop]
            teacher_ce = None
            if labels is not None:
                with torch.no_grad():
                    teacher_ce = per_sample_cross_entropy(batch_logits, labels[start:stop])
            yield batch_logits, [embedding[start:stop] for embedding in embeddings], teacher_ce
            start = stop

    def _teacher_output_chunks(self) -> Iterator[TeacherBatch]:
        """Teacher outputs over the training set, ``eval_batch_size`` images at a time, in order."""
        images = self.data.train_images
        for start in range(0, images.shape[0], self.config.eval_batch_size):
            batch = self.eval_transform(images[start : start + self.config.eval_batch_size], train=False)
            yield self._teacher_outputs(batch)

    def _open_teacher_store(self) -> TeacherOutputStore | None:
        """Open (or build once) the persistent store; ``None`` where it cannot be written."""
        return open_teacher_store(self.teachers, self.data, self.config, self._teacher_output_chunks, self.teacher_names, self.device)

    def _run_teachers_over_training_set(self) -> dict[str, Any]:
        """Teacher outputs for every training image, computed once (augmentation is off)."""
        return gather_teacher_outputs(self._teacher_output_chunks(), self.config.feature_kd)

    # ------------------------------------------------------------------ episode
    # reset, step, rollback and load_state_dict build, train or prepare the student: entry
    # points, run in the engine's own torch modes whatever the caller's context (see modes)
    @entry_point
    def reset(self, seed: int) -> StepBatch:
        """Start a fresh student: new init, optimizer, schedule and data order, all from ``seed``."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            student = self.student_factory().to(self.device, memory_format=self.student_format)  # type: ignore[call-overload]  # torch's overloads omit to(device, memory_format=)
            adapters = (
                build_adapters(student.feature_channels, self.teacher_shapes, self.config.feature_resize).to(self.device)
                if self.config.feature_kd
                else nn.ModuleList()
            )
        self.student = student.train()
        self.adapters = adapters.train()
        parameters = list(self.student.parameters()) + list(self.adapters.parameters())
        self.optimizer = torch.optim.SGD(
            parameters,
            lr=self.config.lr,
            momentum=self.config.momentum,
            nesterov=self.config.nesterov and self.config.momentum > 0,
            weight_decay=self.config.weight_decay,
        )
        milestones = sorted({max(1, round(fraction * self.config.epochs)) for fraction in self.config.lr_decay_at})
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=milestones, gamma=self.config.lr_decay_rate)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch = 0
        self.global_step = 0
        self.step_in_epoch = 0
        self.best_val_acc = -1.0
        self.best_score = -1.0  # the selection split's best accuracy (= best_val_acc under select_on="val")
        self.best_epoch = -1
        self.best_student_state: dict[str, torch.Tensor] | None = None
        self.last_val_acc: float | None = None
        self.last_test_acc: float | None = None
        self._epoch_batches = self._new_epoch_order()
        self.current = self._prepare()
        return self.current

    def _new_epoch_order(self) -> list[torch.Tensor]:
        order = batch_indices(
            int(self.data.train_labels.shape[0]), self.config.batch_size, self.generator, shuffle=True, drop_last=self.config.drop_last
        )
        return order[: self.steps_per_epoch]

    def _prepare(self) -> StepBatch:
        """Forward passes and per-sample quantities for the next batch (before its update)."""
        self._generator_state_at_prepare = self.generator.get_state()
        indices = self._epoch_batches[self.step_in_epoch]
        # label-free: no training label is read, nor anything computed from one (see EngineConfig.label_free)
        labels = None if self.config.label_free else self.data.train_labels[indices]
        images = self.train_transform(self.data.train_images[indices], self.generator, train=True)
        teacher_logits, teacher_embeddings, teacher_maps = self.teacher_outputs_for(indices, images)
        assert self.student is not None and self.adapters is not None
        student_output = self.student.forward_all(images.contiguous(memory_format=self.student_format))
        temperature = self.config.temperature
        teacher_ce = teacher_correct = student_ce = None
        with torch.no_grad():
            if labels is not None:
                teacher_ce = per_sample_cross_entropy(teacher_logits, labels)
                teacher_correct = (teacher_logits.argmax(-1) == labels).transpose(0, 1).float()
            teacher_entropy = per_sample_entropy(teacher_logits)
        if labels is not None:
            student_ce = per_sample_cross_entropy(student_output.logits, labels)
        feature_mse = cosine = head_weights = None
        if self.config.feature_kd:
            adapted = [adapter(student_output.feature_map) for adapter in self.adapters]
            # one loop over teachers is unavoidable here: each adapter has its own channel count
            feature_mse = torch.stack([per_sample_feature_mse(a, match_teacher_map(t, a)) for a, t in zip(adapted, teacher_maps)], dim=1)
            with torch.no_grad():
                cosine = torch.stack([feature_cosine(a.mean(dim=(2, 3)), e) for a, e in zip(adapted, teacher_embeddings)], dim=1)
            if self.config.feature_term == "camkd":
                assert labels is not None  # EngineConfig.check refuses camkd with label_free
                head_weights = self._camkd_feature_weights(adapted, labels)
        return StepBatch(
            indices=indices,
            _labels=labels,
            teacher_logits=teacher_logits,
            teacher_embeddings=teacher_embeddings,
            _teacher_ce=teacher_ce,
            teacher_entropy=teacher_entropy,
            _teacher_correct=teacher_correct,
            student_logits=student_output.logits,
            _student_ce=student_ce,
            kd_loss=per_sample_kd_loss(student_output.logits, teacher_logits, temperature),
            feature_mse=feature_mse,
            feature_cosine=cosine,
            feature_head_weights=head_weights,
            # references to what the step already computed: no extra pass, no copy
            teacher_feature_maps=teacher_maps if self.config.feature_kd else [],
            student_feature_map=student_output.feature_map if self.config.feature_kd else None,
        )

    def _camkd_feature_weights(self, adapted: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """CA-MKD's feature-level weights ``[B, K]`` (graph kept, as in the authors' code): the
        confidence of teacher k's head on the student's map adapted to teacher k."""
        # each teacher's head is frozen, but its input carries the student's graph
        head_ce = torch.stack(
            [per_sample_cross_entropy(teacher.head_logits(a), labels) for teacher, a in zip(self.teachers, adapted)],
            dim=1,
        )
        return (1.0 - torch.softmax(head_ce, dim=1)) / (self.num_teachers - 1)

    # ------------------------------------------------------------------ the step
    @entry_point
    def step(self, logit_weights: torch.Tensor, feature_weights: torch.Tensor | None = None) -> StepResult:
        """Update the student on the prepared batch with the given teacher weights.

        Args:
            logit_weights: ``[K]`` or ``[B, K]``, finite and non-negative.
            feature_weights: the same for feature KD; defaults to ``logit_weights``.

        Raises:
            ValueError: bad weights (shape, NaN/inf, negative); nothing is changed.
            RuntimeError: the episode is over or :meth:`reset` was never called.
        """
        if self.student is not None and self.done:
            raise RuntimeError("the training budget is spent; call reset(seed) to start a new student")
        if self.current is None:
            raise RuntimeError("no prepared batch: call reset(seed) first (the last episode ended or diverged)")
        batch = self.current
        size, teachers = batch.batch_size, self.num_teachers
        logit_weights = check_weights(logit_weights, teachers, size, "logit weights").to(self.device)
        if feature_weights is None:
            feature_weights = logit_weights
        else:
            feature_weights = check_weights(feature_weights, teachers, size, "feature weights").to(self.device)
        logit_weights = logit_weights.expand(size, teachers)
        feature_weights = feature_weights.expand(size, teachers)

        config = self.config
        kd_term = config.alpha * config.kd_scale * weighted_teacher_sum(batch.kd_loss, logit_weights)
        # label-free: the teachers are the only teaching signal, no CE term
        per_sample_loss = kd_term if config.label_free else batch.student_ce + kd_term
        if batch.feature_head_weights is not None:
            feature_weights = batch.feature_head_weights  # CA-MKD's own feature weights, with their graph
        if batch.feature_mse is not None and self.epoch >= config.feature_kd_from_epoch:
            per_sample_loss = per_sample_loss + config.beta * weighted_teacher_sum(batch.feature_mse, feature_weights)
        loss = per_sample_loss.mean()
        diverged = not bool(torch.isfinite(loss))
        result = StepResult(
            loss=float(loss.detach()),
            student_ce=None if config.label_free else batch.student_ce.detach(),
            kd_loss=batch.kd_loss.detach(),
            feature_mse=None if batch.feature_mse is None else batch.feature_mse.detach(),
            per_sample_loss=per_sample_loss.detach(),
            logit_weights=logit_weights,
            feature_weights=feature_weights.detach() if batch.feature_mse is not None else None,
            diverged=diverged,
        )
        if diverged:
            # a non-finite loss must not reach the weights: the student stays as it was
            self.current = None
            result.done = True
            return result
        # a finite but huge loss (raw weights of 1e30, lr=1e6) can still blow the weights up:
        # keep what the update changes, so that a non-finite outcome can be undone
        self._snapshot_trainable_state()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if not self._trainable_state_finite():
            self.rollback(result)
            return result
        self.global_step += 1
        self.step_in_epoch += 1
        if self.step_in_epoch == self.steps_per_epoch:
            self._end_epoch(result)
        result.done = self.done
        self.current = None if self.done else self._prepare()
        if self.current is not None and not prepared_batch_finite(self.current):
            # finite weights whose next forward overflows: as diverged as NaN weights
            self.rollback(result)
        return result

    # ------------------------------------------------------------------ divergence
    def _trainable_tensors(self) -> list[torch.Tensor]:
        """What an update changes: parameters, buffers (BN statistics) and optimizer state
        tensors (momentum) of the student and adapters."""
        assert self.student is not None and self.adapters is not None
        return trainable_tensors((self.student, self.adapters), self.optimizer)

    def _snapshot_trainable_state(self) -> None:
        """Copy the trainable state before an update (see :func:`~kd_env.engine.state.take_snapshot`)."""
        self._snapshot = take_snapshot(getattr(self, "_snapshot", None), self._trainable_tensors())
        self._snapshot_step = (self.global_step, self.step_in_epoch)

    def _trainable_state_finite(self) -> bool:
        """Every parameter, BN statistic and momentum entry finite (one reduction, one sync)."""
        return all_finite(self._trainable_tensors())

    @entry_point
    def rollback(self, result: StepResult | None = None) -> None:
        """Undo the last update: the student's and adapters' parameters, BN statistics and the
        optimizer's momentum go back to their values before it, and the episode ends as diverged
        (``result.diverged = result.done = True``; :meth:`reset` starts a new student).

        Called by :meth:`step` when the update left a non-finite tensor behind, and by the envs
        when the reward of an update is not finite. The step counters are restored too when the
        update did not end an epoch (an epoch end's evaluation is not undone).
        """
        snapshot = getattr(self, "_snapshot", None)
        if snapshot is None:
            raise RuntimeError("no update to roll back")
        restore_snapshot(snapshot, self.optimizer)
        global_step, step_in_epoch = self._snapshot_step
        if self.epoch_of(global_step) == self.epoch:
            self.global_step, self.step_in_epoch = global_step, step_in_epoch
        self.current = None
        if result is not None:
            result.diverged = True
            result.done = True

    def epoch_of(self, global_step: int) -> int:
        """The epoch that update number ``global_step`` (0-based) belongs to."""
        return global_step // self.steps_per_epoch

    def _end_epoch(self, result: StepResult) -> None:
        self.scheduler.step()
        val_acc, val_loss = self.evaluate("val")
        result.epoch_end = True
        result.val_acc = val_acc
        result.metrics["val_loss"] = val_loss
        if self.config.evaluate_test:
            result.test_acc, result.metrics["test_loss"] = self.evaluate("test")
        self.last_val_acc, self.last_test_acc = result.val_acc, result.test_acc
        # the official protocol has no validation split: it keeps the best *test* epoch
        score = result.test_acc if self.config.select_on == "test" else val_acc
        if score is not None and score > self.best_score:
            self.best_score, self.best_val_acc, self.best_epoch = score, val_acc, self.epoch
            assert self.student is not None
            self.best_student_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        self.epoch += 1
        self.step_in_epoch = 0
        if not self.done:
            self._epoch_batches = self._new_epoch_order()

    # ------------------------------------------------------------------ evaluation
    @torch.inference_mode()
    def evaluate(self, split: str = "val", model: nn.Module | None = None) -> tuple[float, float]:
        """Top-1 accuracy and mean CE of ``model`` (default: the student) on ``"val"`` or ``"test"``."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        images = getattr(self.data, f"{split}_images")
        labels = getattr(self.data, f"{split}_labels")
        if labels.numel() == 0:
            return float("nan"), float("nan")
        model = model if model is not None else self.student
        assert model is not None
        return accuracy_and_loss(model, images, labels, self.eval_transform, self.config.eval_batch_size, self._format_for(model))

    @torch.inference_mode()
    def probe_loss(self, num_samples: int = 512) -> float:
        """Student CE on a fixed slice of the validation set (eval mode): a cheap progress signal."""
        assert self.student is not None
        labels = self.data.val_labels[:num_samples]
        if labels.numel() == 0:
            raise ValueError("probe_loss needs a validation split (val_fraction > 0)")
        images = self.eval_transform(self.data.val_images[:num_samples], train=False)
        images = images.contiguous(memory_format=self.student_format)
        self.student.eval()
        loss = float(per_sample_cross_entropy(self.student(images), labels).mean())
        self.student.train()
        return loss

    @torch.inference_mode()
    def evaluate_teachers(self, split: str = "val") -> list[float]:
        """Each teacher's accuracy on a split."""
        return [self.evaluate(split, teacher)[0] for teacher in self.teachers]

    def best_student(self) -> KDModel:
        """A copy of the student with the best validation accuracy seen so far (or the current one)."""
        assert self.student is not None
        model = copy.deepcopy(self.student)
        if self.best_student_state is not None:
            model.load_state_dict(self.best_student_state)
        return model.eval()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: models, optimizer, schedule, data order, RNG."""
        if self.student is None or self.adapters is None:
            raise RuntimeError("nothing to save: call reset(seed) first")
        return {
            "config": self.config.to_dict(),
            "teacher_names": self.teacher_names,
            "student": self.student.state_dict(),
            "adapters": self.adapters.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator_state": self._generator_state_at_prepare,
            # one [steps, B] tensor; with a last, partial batch (drop_last=False) the order
            # concatenated and the batch sizes
            **(
                {"epoch_batches": torch.stack(self._epoch_batches).cpu()}
                if len({len(b) for b in self._epoch_batches}) <= 1
                else {
                    "epoch_batches": torch.cat(self._epoch_batches).cpu(),
                    "epoch_batch_sizes": [len(b) for b in self._epoch_batches],
                }
            ),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "best_val_acc": self.best_val_acc,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_student_state": self.best_student_state,
            "last_val_acc": self.last_val_acc,
            "last_test_acc": self.last_test_acc,
            "torch_rng_state": torch.get_rng_state(),
        }

    @entry_point
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the prepared batch is rebuilt exactly as it was."""
        if list(state.get("teacher_names", [])) != self.teacher_names:
            raise ValueError(f"checkpoint was made with teachers {state.get('teacher_names')}, this engine has {self.teacher_names}")
        for key in ("batch_size", "epochs", "feature_kd", "max_steps_per_epoch"):
            if state["config"].get(key) != getattr(self.config, key):
                raise ValueError(f"checkpoint has {key}={state['config'].get(key)!r}, this engine has {getattr(self.config, key)!r}")
        saved_drop_last = state["config"].get("drop_last", True)  # absent from checkpoints before the option
        if saved_drop_last != self.config.drop_last:
            raise ValueError(f"checkpoint has drop_last={saved_drop_last!r}, this engine has {self.config.drop_last!r}")
        saved_label_free = state["config"].get("label_free", False)  # absent from checkpoints before the label regimes
        if saved_label_free != self.config.label_free:
            raise ValueError(f"checkpoint has label_free={saved_label_free!r}, this engine has {self.config.label_free!r}")
        self.reset(seed=0)  # builds student, adapters, optimizer, schedule of the right shapes
        assert self.student is not None and self.adapters is not None
        self.student.load_state_dict(state["student"])
        self.adapters.load_state_dict(state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.best_val_acc = float(state["best_val_acc"])
        self.best_score = float(state.get("best_score", state["best_val_acc"]))  # older checkpoints: val
        self.best_epoch = int(state["best_epoch"])
        self.best_student_state = state["best_student_state"]
        self.last_val_acc, self.last_test_acc = state["last_val_acc"], state["last_test_acc"]
        if "epoch_batch_sizes" in state:  # a last, partial batch (drop_last=False)
            self._epoch_batches = list(state["epoch_batches"].to(self.device).split(list(state["epoch_batch_sizes"])))
        else:
            self._epoch_batches = list(state["epoch_batches"].to(self.device).unbind(0))
        self.generator.set_state(state["generator_state"])
        torch.set_rng_state(state["torch_rng_state"])
        if self.done:
            self.current = None
            return
        # the saved BN statistics already include the prepared batch's forward: keep them as saved
        assert self.student is not None and self.adapters is not None
        with frozen_batchnorm(self.student, self.adapters):
            self.current = self._prepare()
