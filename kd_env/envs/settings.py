"""The environments' settings: every keyword argument, its default per dataset, and its checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from kd_env.weights import ACTION_MODES

REWARD_MODES = ("neg_loss", "val_loss_delta", "val_acc", "label_logprob")
STATE_PARTS = ("performance", "gap")
STORE_DTYPES = ("float16", "float32")
PROTOCOLS = ("default", "official")
FEATURE_TERMS = ("mse", "camkd")

# Per-dataset defaults: the CIFAR ones are MTKD-RL's recipe; the CPU ones are sized for 2 cores.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar100": {"student": "resnet56", "epochs": 240, "batch_size": 64, "lr": 0.05},
    "cifar10": {"student": "resnet56", "epochs": 240, "batch_size": 64, "lr": 0.05},
    "fashion_mnist": {"student": "cnn_w8", "epochs": 3, "batch_size": 128, "lr": 0.05},
    "synthetic": {"student": "cnn_w8", "epochs": 2, "batch_size": 32, "lr": 0.05},
}


@dataclass
class KDEnvSettings:
    """All keyword arguments of the environments, JSON-serialisable (names and paths, not objects).

    Unset fields (``None``) take the dataset's defaults (:data:`DATASET_DEFAULTS`, the
    ``capacity`` teacher pool). :meth:`validate` checks every field's type and range and names
    the argument, the value and what is allowed.
    """

    dataset: str = "synthetic"
    student: str | None = None
    pool: str | None = None
    """A named teacher pool (:data:`kd_env.teachers.POOLS`: ``capacity``, ``noisy``,
    ``specialists`` or one added with :func:`kd_env.register_pool`); ``None`` with no
    ``teachers`` means ``capacity``."""
    teachers: list[str] | None = None
    """Instead of a pool: teacher architectures (looked up in the cache), checkpoint paths, or
    ``"random:<arch>"`` (an untrained, seeded network: a noise teacher for sanity checks)."""
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
    weight_decay: float = 1e-4
    """The student's SGD weight decay: MTKD-RL's 1e-4; the CA-MKD authors' recipe (AVER, EBKD,
    AEKD, CA-MKD as they ran them) uses 5e-4."""
    feature_term: str = "mse"
    """``"mse"``: the policy weights a FitNet-style MSE (MTKD-RL); ``"camkd"``: CA-MKD's own
    intermediate-feature term, weighted by each teacher's head on the adapted student map
    (:attr:`kd_env.engine.EngineConfig.feature_term`). Needs ``feature_kd=True``."""
    feature_kd_from_epoch: int = 0
    """The feature term counts from this epoch (0-based) on; CA-MKD: 1 (none in its first epoch)."""
    protocol: str = "default"
    """``"default"``: hold out ``val_fraction`` of the training images and report the test
    accuracy of the best-validation student. ``"official"``: the official MTKD-RL /
    RepDistiller protocol: every training image is trained on (``val_fraction`` is ignored),
    and the reported number is the best test accuracy over epochs, so that a paper number can be
    put next to ours. Validation-based rewards are not available then."""
    augment: bool | None = None
    max_steps_per_epoch: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    reward_scale: float = 1.0
    divergence_penalty: float = -10.0
    probe_size: int = 512
    state_parts: list[str] = field(default_factory=lambda: ["performance", "gap"])
    train_size: int | None = None
    """Use only this many training images (a seeded random subset; the validation and test
    splits are unchanged): shorter epochs for quick benchmarks."""
    teacher_store: bool = True
    """Keep the teachers' outputs over the training set in the on-disk teacher-output store
    (built once, memory-mapped by every later run) when augmentation is off."""
    store_dtype: str = "float16"
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
        """Raise ``ValueError`` / ``TypeError`` naming the first bad argument, its value and what is allowed."""
        self._check_types()
        self._check_ranges()
        if self.dataset not in DATASET_DEFAULTS:
            raise ValueError(f"dataset must be one of {sorted(DATASET_DEFAULTS)}, got {self.dataset!r}")
        for name, value, allowed in (
            ("reward_mode", self.reward_mode, REWARD_MODES),
            ("action_mode", self.action_mode, ACTION_MODES),
            ("store_dtype", self.store_dtype, STORE_DTYPES),
            ("protocol", self.protocol, PROTOCOLS),
            ("feature_term", self.feature_term, FEATURE_TERMS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        unknown_parts = [part for part in self.state_parts if part not in STATE_PARTS]
        if not self.state_parts or unknown_parts:
            raise ValueError(f"state_parts must be a non-empty list of {STATE_PARTS}, got {self.state_parts!r}")
        if self.pool is not None and self.teachers is not None:
            raise ValueError(f"give pool= or teachers=, not both (got pool={self.pool!r} and teachers={self.teachers!r})")
        if self.pool is not None:
            from kd_env.teachers import get_pool

            get_pool(self.pool)  # ValueError naming the known pools
        if self.student is not None:
            from kd_env.models import list_models

            if self.student not in list_models():
                raise ValueError(f"student must be a zoo model ({', '.join(list_models())}), got {self.student!r}")
        if self.reward_mode == "val_loss_delta" and self.val_fraction <= 0:
            raise ValueError("reward_mode='val_loss_delta' needs a validation split: set val_fraction > 0")
        if self.protocol == "official" and self.reward_mode in ("val_loss_delta", "val_acc"):
            raise ValueError(
                f"protocol='official' has no validation split, so reward_mode={self.reward_mode!r} cannot be "
                "computed: use 'neg_loss' or 'label_logprob'"
            )
        if self.feature_term == "camkd" and not self.feature_kd:
            raise ValueError("feature_term='camkd' is a feature-KD term: set feature_kd=True (or feature_term='mse')")

    @property
    def effective_val_fraction(self) -> float:
        """The validation share actually held out: 0 under ``protocol="official"``."""
        return 0.0 if self.protocol == "official" else self.val_fraction

    def _check_types(self) -> None:
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name in _OPTIONAL):
                raise TypeError(f"{name} must be true or false, got {value!r}")
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) and not (value is None and name in _OPTIONAL):
                raise TypeError(f"{name} must be a string, got {value!r}")
        if self.teachers is not None and (
            isinstance(self.teachers, str)
            or not isinstance(self.teachers, (list, tuple))
            or not self.teachers
            or not all(isinstance(t, str) for t in self.teachers)
        ):
            raise TypeError(f"teachers must be a non-empty list of names or paths, e.g. ['mlp', 'cnn_w8'], got {self.teachers!r}")
        if not isinstance(self.state_parts, (list, tuple)):
            raise TypeError(f"state_parts must be a list, e.g. ['performance', 'gap'], got {self.state_parts!r}")
        if not isinstance(self.synthetic, dict):
            raise TypeError(f"synthetic must be a dict of make_synthetic arguments, got {self.synthetic!r}")

    def _check_ranges(self) -> None:
        for name, minimum in _INT_MINIMUM.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        for name, (bound, strict) in _FLOAT_MINIMUM.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if bound is not None and (value <= bound if strict else value < bound):
                raise ValueError(f"{name} must be {'>' if strict else '>='} {bound}, got {value!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")

    def resolved(self, key: str) -> Any:
        value = getattr(self, key)
        return DATASET_DEFAULTS[self.dataset][key] if value is None else value


_OPTIONAL = {
    "student",
    "pool",
    "epochs",
    "batch_size",
    "lr",
    "data_root",
    "cache_dir",
    "train_teachers",
    "augment",
    "max_steps_per_epoch",
    "train_size",
}
_BOOL_FIELDS = ("download", "verify_checksums", "train_teachers", "feature_kd", "augment", "teacher_store")
_STR_FIELDS = (
    "dataset",
    "student",
    "pool",
    "device",
    "data_root",
    "cache_dir",
    "reward_mode",
    "action_mode",
    "store_dtype",
    "protocol",
    "feature_term",
)
_INT_MINIMUM = {
    "epochs": 1,
    "batch_size": 2,
    "max_steps_per_epoch": 1,
    "probe_size": 1,
    "teacher_seed": 0,
    "split_seed": 0,
    "train_size": 2,
    "feature_kd_from_epoch": 0,
}
# name -> (minimum or None, strictly greater)
_FLOAT_MINIMUM: dict[str, tuple[float | None, bool]] = {
    "lr": (0.0, True),
    "scale": (0.0, True),
    "temperature": (0.0, True),
    "alpha": (0.0, False),
    "beta": (0.0, False),
    "kd_scale": (0.0, False),
    "weight_decay": (0.0, False),
    "val_fraction": (0.0, False),
    "reward_scale": (None, False),
    "divergence_penalty": (None, False),
}
