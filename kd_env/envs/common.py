"""What both environment views share: the per-dataset defaults, building the engine from
JSON-serialisable keyword arguments, teacher resolution, action mapping and rewards."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from kd_env.data import DatasetSplits, load_dataset
from kd_env.engine import DistillationEngine, EngineConfig, StepResult
from kd_env.models import KDModel, create_model
from kd_env.teachers import TEACHER_POOLS, load_teacher, teacher_path, train_command, train_teacher
from kd_env.utils import atomic_torch_save
from kd_env.weights import check_action, logits_to_simplex, renormalize_simplex

REWARD_MODES = ("neg_loss", "val_loss_delta", "val_acc")
ACTION_MODES = ("softmax", "simplex", "raw")

# Per-dataset defaults: the CIFAR ones are MTKD-RL's recipe; the CPU ones are sized for 2 cores.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar100": {"student": "resnet56", "epochs": 240, "batch_size": 64, "lr": 0.05},
    "cifar10": {"student": "resnet56", "epochs": 240, "batch_size": 64, "lr": 0.05},
    "fashion_mnist": {"student": "cnn_w8", "epochs": 3, "batch_size": 128, "lr": 0.05},
    "synthetic": {"student": "cnn_w8", "epochs": 2, "batch_size": 32, "lr": 0.05},
}


class TeacherSetupError(FileNotFoundError):
    """A teacher of the requested pool is missing; the message says how to train it."""


@dataclass
class KDEnvSettings:
    """All keyword arguments of the environments, JSON-serialisable (names and paths, not objects).

    Unset fields (``None``) take the dataset's defaults (:data:`DATASET_DEFAULTS`, the teacher
    pool of :data:`kd_env.teachers.TEACHER_POOLS`).
    """

    dataset: str = "synthetic"
    student: str | None = None
    teachers: list[str] | None = None
    """Teacher architectures (looked up in the cache), checkpoint paths, or ``"random:<arch>"``
    (an untrained, seeded network: a noise teacher for sanity checks)."""
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "cpu"
    data_root: str | None = None
    download: bool = False
    verify_checksums: bool = True
    """Check CIFAR files against the official md5 sums (off only for self-written test files)."""
    cache_dir: str | None = None
    train_teachers: bool | None = None
    """Train missing pool teachers on first use (with a progress bar). Default: only for synthetic."""
    teacher_seed: int = 0
    feature_kd: bool = True
    reward_mode: str = "val_loss_delta"
    action_mode: str = "softmax"
    scale: float = 3.0
    """Softmax temperature of the action mapping: weights = softmax(scale * a), a in [-1, 1]."""
    temperature: float = 4.0
    alpha: float = 1.0
    beta: float = 5.0
    kd_scale: float = 1.0
    augment: bool | None = None
    max_steps_per_epoch: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    reward_scale: float = 1.0
    divergence_penalty: float = -10.0
    probe_size: int = 512
    state_parts: list[str] = field(default_factory=lambda: ["performance", "gap"])
    synthetic: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the synthetic dataset (``num_classes``, ``image_size``, ...)."""

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> KDEnvSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown environment argument(s) {unknown}; known: {sorted(known)}")
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.dataset not in DATASET_DEFAULTS:
            raise ValueError(f"dataset must be one of {sorted(DATASET_DEFAULTS)}, got {self.dataset!r}")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {self.reward_mode!r}")
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {self.action_mode!r}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if self.reward_mode == "val_loss_delta" and self.val_fraction <= 0:
            raise ValueError("reward_mode='val_loss_delta' needs a validation split: set val_fraction > 0")

    def resolved(self, key: str) -> Any:
        value = getattr(self, key)
        return DATASET_DEFAULTS[self.dataset][key] if value is None else value


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        result.append(name if count == 0 else f"{name}_{count}")
    return result


def resolve_teachers(settings: KDEnvSettings, data: DatasetSplits) -> tuple[list[KDModel], list[str]]:
    """Load (or, if allowed, train) the teachers named by the settings."""
    specs = settings.teachers if settings.teachers is not None else TEACHER_POOLS[settings.dataset]
    train_missing = settings.dataset == "synthetic" if settings.train_teachers is None else settings.train_teachers
    models: list[KDModel] = []
    names: list[str] = []
    channels = data.image_shape[0]
    for spec in specs:
        if spec.startswith("random:"):
            _, arch, *seed = spec.split(":")
            with torch.random.fork_rng():
                torch.manual_seed(int(seed[0]) if seed else 0)
                model = create_model(arch, data.num_classes, channels, image_size=data.image_shape[-1])
            models.append(model.eval().requires_grad_(False))
            names.append(f"random_{arch}")
            continue
        if spec.endswith(".pt") or os.sep in spec or Path(spec).is_file():
            models.append(load_teacher(spec, expected_dataset=settings.dataset))
            names.append(Path(spec).stem)
            continue
        path = teacher_path(spec, settings.dataset, settings.teacher_seed, settings.cache_dir)
        if not path.is_file():
            if not train_missing:
                command = train_command(settings.dataset, [spec], seed=settings.teacher_seed, cache_dir=settings.cache_dir)
                raise TeacherSetupError(
                    f"teacher {spec!r} for {settings.dataset!r} is not trained yet (looked for {path}).\n"
                    f"Train it with:\n  {command}\n"
                    "or create the environment with train_teachers=True to train missing teachers on first use."
                )
            train_teacher(spec, data, seed=settings.teacher_seed, device=settings.device, path=path, progress=True)
        models.append(load_teacher(path, expected_arch=spec, expected_dataset=settings.dataset))
        names.append(spec)
    return models, _unique(names)


def build_engine(settings: KDEnvSettings) -> DistillationEngine:
    """Data, teachers, student factory and engine, from the environment's settings."""
    data = load_dataset(
        settings.dataset,
        settings.data_root,
        download=settings.download,
        verify_checksums=settings.verify_checksums,
        val_fraction=settings.val_fraction,
        split_seed=settings.split_seed,
        device=settings.device,
        **settings.synthetic,
    )
    teachers, names = resolve_teachers(settings, data)
    student_name = settings.resolved("student")
    channels, num_classes = data.image_shape[0], data.num_classes

    config = EngineConfig(
        epochs=settings.resolved("epochs"),
        batch_size=settings.resolved("batch_size"),
        lr=settings.resolved("lr"),
        temperature=settings.temperature,
        alpha=settings.alpha,
        beta=settings.beta,
        feature_kd=settings.feature_kd,
        kd_scale=settings.kd_scale,
        augment=settings.augment,
        max_steps_per_epoch=settings.max_steps_per_epoch,
    )
    return DistillationEngine(
        StudentFactory(student_name, num_classes, channels, data.image_shape[-1]),
        teachers,
        data,
        config,
        device=settings.device,
        teacher_names=names,
    )


@dataclass(frozen=True)
class StudentFactory:
    """A picklable ``() -> KDModel`` for the engine (a lambda would not pickle)."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: int | None = None

    def __call__(self) -> KDModel:
        return create_model(self.arch, self.num_classes, self.in_channels, image_size=self.image_size)


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
    """Check an action (ValueError naming the problem) and return it as a float32 array."""
    array = np.asarray(action)
    check_action(array, shape, mode=action_mode)
    if action_mode == "simplex":
        head_sums = array.reshape(*array.shape[:-1], -1, num_teachers).sum(-1)
        if np.any(head_sums <= 0):
            raise ValueError("action_mode='simplex' weights of a head sum to zero; give at least one teacher weight > 0")
    return array.astype(np.float32)


class RewardTracker:
    """The three reward modes over one engine, with the state they carry between steps.

    * ``"neg_loss"``: the negative weighted training loss of the updated batch (MTKD-RL's
      reward), divided by ``log(C)`` so that a chance-level student scores about -1.
    * ``"val_loss_delta"``: the drop of the student's CE on a fixed held-out validation batch
      across the update, divided by ``log(C)``.
    * ``"val_acc"``: sparse; at each epoch end the change of validation accuracy since the last
      epoch end (the first epoch counts from chance, 1/C), so an episode's return is the final
      validation accuracy above chance.
    """

    def __init__(self, engine: DistillationEngine, mode: str, probe_size: int, scale: float) -> None:
        self.engine = engine
        self.mode = mode
        self.probe_size = probe_size
        self.scale = scale
        self.normaliser = math.log(engine.num_classes)
        self.last_probe_loss: float | None = None
        self.last_val_acc = 1.0 / engine.num_classes

    def reset(self) -> None:
        self.last_val_acc = 1.0 / self.engine.num_classes
        self.last_probe_loss = self.engine.probe_loss(self.probe_size) if self.mode == "val_loss_delta" else None

    def batch_reward(self, result: StepResult) -> float:
        """One scalar reward for a whole update."""
        if self.mode == "neg_loss":
            return -result.loss / self.normaliser * self.scale
        return self._shared_reward(result)

    def sample_rewards(self, result: StepResult) -> np.ndarray:
        """One reward per sample. ``neg_loss`` uses MTKD-RL's batch normalisation: z-score within
        the batch, then clip to [0, 1]; the other modes give every sample the update's reward."""
        if self.mode == "neg_loss":
            reward = -result.per_sample_loss
            normalised = (reward - reward.mean()) / (reward.std() + 1e-8)
            return (normalised.clamp(0.0, 1.0) * self.scale).double().cpu().numpy()
        return np.full(result.per_sample_loss.shape[0], self._shared_reward(result), dtype=np.float64)

    def _shared_reward(self, result: StepResult) -> float:
        if self.mode == "val_loss_delta":
            probe = self.engine.probe_loss(self.probe_size)
            assert self.last_probe_loss is not None
            reward = (self.last_probe_loss - probe) / self.normaliser
            self.last_probe_loss = probe
            return reward * self.scale
        if result.epoch_end and result.val_acc is not None:
            reward = result.val_acc - self.last_val_acc
            self.last_val_acc = result.val_acc
            return reward * self.scale
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"last_probe_loss": self.last_probe_loss, "last_val_acc": self.last_val_acc}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_probe_loss = state["last_probe_loss"]
        self.last_val_acc = state["last_val_acc"]


def step_info(engine: DistillationEngine, result: StepResult) -> dict[str, Any]:
    """The deterministic ``info`` of one update (no wall-clock values, so checkers can compare)."""
    info: dict[str, Any] = {
        "weights": result.logit_weights.mean(0).cpu().numpy().astype(np.float32),
        "kd_loss": result.kd_loss.mean(0).cpu().numpy().astype(np.float32),
        "ce": float(result.student_ce.mean()),
        "loss": float(result.loss),
        "epoch": int(engine.epoch),
        "step": int(engine.global_step),
        "lr": float(engine.lr),
        "diverged": bool(result.diverged),
    }
    if result.feature_weights is not None:
        info["feature_weights"] = result.feature_weights.mean(0).cpu().numpy().astype(np.float32)
    if result.feature_mse is not None:
        info["feature_mse"] = result.feature_mse.mean(0).cpu().numpy().astype(np.float32)
    if result.epoch_end:
        info["val_acc"] = float(result.val_acc) if result.val_acc is not None else float("nan")
        if result.test_acc is not None:
            info["test_acc"] = float(result.test_acc)
    info.update(final_metrics(engine, result))
    return info


def final_metrics(engine: DistillationEngine, result: StepResult) -> dict[str, float]:
    """At the end of a training run: the best validation accuracy, its epoch, and the test
    accuracy of that best-validation student (the number to report). Empty before the end."""
    if not result.done or result.diverged or engine.best_student_state is None:
        return {}
    test_acc, _ = engine.evaluate("test", engine.best_student())
    return {"best_val_acc": float(engine.best_val_acc), "best_epoch": float(engine.best_epoch), "final_test_acc": float(test_acc)}


CHECKPOINT_FORMAT = "kd_env.env/1"
# settings that must match between a checkpoint and the env that loads it
_COMPAT_KEYS = ("dataset", "student", "epochs", "batch_size", "feature_kd", "reward_mode", "max_steps_per_epoch")


class KDEnvCore:
    """What the batch-level and the per-sample env share: settings, engine, action space,
    rewards, and the training-state checkpoint (``save`` / ``load``).

    Subclasses call :meth:`_setup_core` first in ``__init__`` and keep ``_last_observation``
    up to date; :meth:`_extra_state` / :meth:`_load_extra_state` add what is theirs alone.
    """

    settings: KDEnvSettings
    engine: DistillationEngine
    np_random: np.random.Generator
    _last_observation: np.ndarray | None

    def _setup_core(self, kwargs: dict[str, Any]) -> None:
        self.settings = KDEnvSettings.from_kwargs(**kwargs)
        self.engine = build_engine(self.settings)
        self.teacher_names = list(self.engine.teacher_names)
        self.num_teachers = self.engine.num_teachers
        self.heads = 2 if self.settings.feature_kd else 1
        self.rewards = RewardTracker(self.engine, self.settings.reward_mode, self.settings.probe_size, self.settings.reward_scale)
        self._last_observation = None
        self._episode_seed: int | None = None

    @property
    def last_observation(self) -> np.ndarray | None:
        """A copy of the observation the env last returned (e.g. to continue after :meth:`load`)."""
        return None if self._last_observation is None else self._last_observation.copy()

    def _single_action_space(self) -> spaces.Box:
        low = -1.0 if self.settings.action_mode == "softmax" else 0.0
        return spaces.Box(low, 1.0, (self.heads * self.num_teachers,), dtype=np.float32)

    def _start_episode(self) -> None:
        """A fresh student; every random draw of the episode derives from this one integer."""
        self._episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.engine.reset(self._episode_seed)
        self.rewards.reset()

    def _weights_for(self, action: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        array = validate_action(action, shape, self.settings.action_mode, self.num_teachers)
        return action_to_weights(array, self.num_teachers, self.heads, self.settings.action_mode, self.settings.scale)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _compat_settings(self) -> dict[str, Any]:
        values = {key: getattr(self.settings, key) for key in _COMPAT_KEYS}
        values["teacher_names"] = list(self.teacher_names)
        return values

    def save(self, path: str | Path) -> Path:
        """Write the whole training state (student, adapters, optimizer, schedule, data order,
        RNG, reward state) atomically. ``load`` on an env built with the same arguments resumes it."""
        if self._last_observation is None:
            raise RuntimeError("nothing to save: call reset() first")
        state = {
            "format": CHECKPOINT_FORMAT,
            "kind": type(self).__name__,
            "settings": self._compat_settings(),
            "engine": self.engine.state_dict(),
            "rewards": self.rewards.state_dict(),
            "np_random": self.np_random.bit_generator.state,
            "episode_seed": self._episode_seed,
            "last_observation": torch.from_numpy(self._last_observation.copy()),
            **self._extra_state(),
        }
        return atomic_torch_save(state, path)

    def load(self, path: str | Path) -> None:
        """Restore a :meth:`save` checkpoint; ``ValueError`` names what does not match."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no environment checkpoint at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which and why
            raise ValueError(f"environment checkpoint {path} is corrupt or truncated ({exc}); save it again") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a kd-env environment checkpoint (format {CHECKPOINT_FORMAT})")
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"{path} holds a {state.get('kind')} checkpoint, this env is a {type(self).__name__}")
        expected = self._compat_settings()
        mismatched = {k: (state["settings"].get(k), v) for k, v in expected.items() if state["settings"].get(k) != v}
        if mismatched:
            details = ", ".join(f"{k}: checkpoint {a!r} vs env {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"checkpoint {path} was made by a different environment ({details}); build the env with the same arguments")
        self.engine.load_state_dict(state["engine"])
        self.rewards.load_state_dict(state["rewards"])
        self.np_random.bit_generator.state = state["np_random"]
        self._episode_seed = state["episode_seed"]
        self._last_observation = state["last_observation"].numpy().astype(np.float32)
        self._load_extra_state(state)
