"""The distillation engine: one student, K frozen teachers, one weighted training step at a time.

Plain PyTorch, no Gymnasium. The environments, agents, baselines and benchmarks all drive this one
class, so the loss, the per-sample quantities and the bookkeeping exist once.

The step protocol matches the design card: the engine *prepares* batch t (teachers once under
``torch.inference_mode()``, the student forward with its autograd graph kept, every per-sample
quantity computed once), a policy looks at :attr:`DistillationEngine.current` and chooses
weights, :meth:`DistillationEngine.step` applies them to that same batch and prepares batch t+1.

The engine is the episode (student, optimizer, schedule, data order, epoch ends, rollback); its
parts live beside it: the teachers' outputs in :mod:`~kd_env.engine.teacher_source`, the step's
arithmetic in :mod:`~kd_env.engine.step`, the checkpoint state in :mod:`~kd_env.engine.saved_state`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from kd_env.action_weights import check_weights
from kd_env.data import BatchTransform, DatasetSplits, batch_indices, default_augmentation
from kd_env.engine.adapters import build_adapters
from kd_env.engine.batch import StepBatch, StepResult
from kd_env.engine.config import EngineConfig
from kd_env.engine.evaluation import accuracy_and_loss
from kd_env.engine.losses import per_sample_cross_entropy
from kd_env.engine.modes import entry_point, student_autograd
from kd_env.engine.rollback import all_finite, prepared_batch_finite, restore_snapshot, take_snapshot, trainable_tensors
from kd_env.engine.saved_state import EngineSavedState
from kd_env.engine.step import prepare_batch, weighted_loss
from kd_env.engine.teacher_source import TeacherOutputSource, TeacherPerformance
from kd_env.engine.views import ViewTable
from kd_env.models import KDModel
from kd_env.teacher_outputs import TeacherBatch

__all__ = ["DistillationEngine", "EngineConfig", "StepBatch", "StepResult"]


class DistillationEngine(EngineSavedState):
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
        self.views = (
            None
            if self.config.augment_views is None
            else ViewTable(self.train_transform, num_train, self.config.augment_views, self.config.views_seed, self.device)
        )
        self.teacher_source = TeacherOutputSource(
            self.teachers,
            self.data,
            self.config,
            self.eval_transform,
            self.teacher_format,
            self.teacher_names,
            self.device,
            keep=self.config.cache_teacher_outputs and not self.augmenting,
            views=self.views,
        )
        self.teacher_shapes = self.teacher_source.shapes
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

    # ------------------------------------------------------------------ teacher outputs (the source's)
    def teacher_outputs_for(self, indices: torch.Tensor, images: torch.Tensor) -> TeacherBatch:
        """The teachers' logits ``[K, B, C]``, embeddings and feature maps for the training samples
        ``indices`` whose transformed pixels are ``images``: read from the store or the in-memory
        cache where the outputs were computed once (augmentation off), else one pass of every
        teacher over ``images`` (the engine's batches and MMKD's hard batches alike; with
        ``augment_views``, pixels augmented afresh are not a stored view: the teachers run)."""
        return self.teacher_source.outputs_for(indices, images)

    @property
    def teacher_outputs_by_index(self) -> bool:
        """Whether a training sample's teacher outputs are a function of its index alone: they
        were computed once (store or in-memory cache), which augmentation rules out."""
        return self.teacher_source.by_index

    def teacher_performance(self, indices: torch.Tensor) -> TeacherPerformance:
        """Logits ``[K, B, C]``, embeddings and per-sample CE ``[B, K]`` of the kept rows
        ``indices`` (training samples; with ``augment_views``, :attr:`StepBatch.teacher_rows`), read again from the store or the in-memory cache: the same values the
        samples' batch had (the same arrays, the same CE formula), without the feature maps.
        The CE is ``None`` in the label-free regime (it reads the training labels).

        Raises:
            RuntimeError: the teacher outputs are not kept (augmentation on, or no cache).
        """
        return next(self.teacher_performance_batches([indices]))

    def teacher_performance_batches(self, batches: Sequence[torch.Tensor]) -> Iterator[TeacherPerformance]:
        """:meth:`teacher_performance` of each batch of ``batches``, in order, with the rows of
        all of them read at once (the store reads rows that are dense in its files as blocks);
        the CE is computed per batch, as the batch's step did."""
        return self.teacher_source.performance_batches(batches)

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
        views = rows = None
        if self.views is not None:  # each sample one of its fixed views (issue #27): kept teacher rows
            views = self.views.draw(len(indices), self.generator)
            images = self.views.render(self.data.train_images, indices, views)
            rows = self.views.rows(indices, views)
        else:
            images = self.train_transform(self.data.train_images[indices], self.generator, train=True)
        assert self.student is not None and self.adapters is not None
        return prepare_batch(
            self.student,
            self.adapters,
            self.teacher_source,
            self.config,
            indices,
            images,
            labels,
            self.student_format,
            rows=rows,
            views=views,
        )

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

        loss, result = weighted_loss(batch, logit_weights, feature_weights, self.config, self.epoch)
        if result.diverged:
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
