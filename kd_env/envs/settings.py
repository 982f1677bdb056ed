"""The environments' settings: every keyword argument, its default per dataset, and its checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from kd_env.action_weights import ACTION_MODES

REWARD_MODES = ("neg_loss", "val_loss_delta", "val_acc", "label_logprob", "val_label_logprob")
STATE_PARTS = ("performance", "gap", "agreement")  # = kd_env.observations.STATE_PARTS (kept importable without torch)
STORE_DTYPES = ("float16", "float32")
PROTOCOLS = ("default", "official")
FEATURE_TERMS = ("mse", "camkd")
FEATURE_RESIZES = ("student", "smaller")  # = kd_env.engine.adapters.FEATURE_RESIZES (kept importable without torch)
LABEL_REGIMES = ("full", "none", "noisy")  # = kd_env.data.labels.LABEL_REGIMES (kept importable without torch)
LABEL_NOISE_KINDS = ("symmetric", "pairs")
VIEWS_STORES = ("logits", "embeddings", "maps")  # = kd_env.engine.views.VIEWS_STORES (kept importable without torch)
AUGMENTED_DATASETS = ("cifar10", "cifar100")  # augmentation on by default (kd_env.data.default_augmentation)
TRAINING_LABEL_REWARDS = ("label_logprob",)
"""Reward modes that read the training labels: refused under ``labels="none"``. The others do not:
``neg_loss`` is the weighted training loss, which has no CE term without labels; ``val_loss_delta``
and ``val_acc`` read the validation split, which keeps its labels in every regime."""

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
    feature_resize: str = "student"
    """Maps of different sizes in the feature term: ``"student"`` brings the student map to the
    teacher's (MTKD-RL, CA-MKD: upsampled when smaller); ``"smaller"`` pools the larger map to
    the smaller one's size (MMKD: a teacher map larger than the student's is pooled down)
    (:attr:`kd_env.engine.EngineConfig.feature_resize`)."""
    protocol: str = "default"
    """``"default"``: hold out ``val_fraction`` of the training images and report the test
    accuracy of the best-validation student. ``"official"``: the official MTKD-RL /
    RepDistiller protocol: every training image is trained on (``val_fraction`` is ignored),
    and the reported number is the best test accuracy over epochs, so that a paper number can be
    put next to ours. Validation-based rewards are not available then."""
    augment: bool | None = None
    augment_views: int | None = None
    """Issue #27 (FKD-style): V fixed augmented views per training image, drawn once from
    ``views_seed`` with the dataset's augmentation (crop offsets, flip); the teachers' outputs on
    all V x N views are computed once and kept in the teacher-output store (the views' count,
    seed and augmentation in its key), and every step gives each sample one of its V views, drawn
    from the run's generator: the teachers never run during training, and the student trains on
    the very pixels the teachers saw. Needs augmentation on (``augment=True``; CIFAR's default).
    The store holds ``V x N x (K x C logits + the embeddings [+ the feature maps])``: ``kd-env
    store size`` states it before building, and a disk that cannot hold it is refused.
    ``None``: fresh augmentation each step (the teachers run on every batch)."""
    views_seed: int = 0
    """``augment_views`` only: the seed of the views' draw (independent of the run's seed, so one
    store serves every run)."""
    views_store: str | None = None
    """``augment_views`` only: what the store keeps per view: ``"logits"``, ``"embeddings"``
    (logits and embeddings) or ``"maps"`` (and the feature maps); ``None``: ``"maps"`` with
    ``feature_kd=True`` (feature KD reads them), else ``"embeddings"``. ``feature_kd=True`` is
    refused without the maps, the error stating their size."""
    max_steps_per_epoch: int | None = None
    drop_last: bool = True
    """Skip each epoch's last, partial batch (CA-MKD's and MMKD's loaders; kd-env's default).
    ``False`` trains on it too (MTKD-RL's loaders; the batch-level env only: the per-sample env
    has one slot per sample of a full batch)."""
    val_fraction: float = 0.1
    split_seed: int = 0
    reward_scale: float = 1.0
    divergence_penalty: float = -10.0
    probe_size: int = 512
    probe_rows: int = 0
    """``reward_mode="val_label_logprob"`` only (and required there): validation images per step
    that the policy weights without seeing their labels and is paid for
    (:class:`kd_env.envs.probe.ValidationProbe`). The per-sample env appends them to each batch's
    slots (``num_envs`` becomes ``batch_size + probe_rows``; ``infos["probe"]`` marks them); the
    batch env applies its one weight vector to them."""
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
    labels: str = "full"
    """The label regime of the *training* split (validation and test keep their true labels in
    every regime: model selection, validation rewards and reported numbers read them).
    ``"full"``: the true labels. ``"none"``: no training labels: the student learns from the
    teachers alone (no CE term), every observation column that reads a training label is absent
    (teacher CE and accuracy, the student's CE), and a reward, feature term or policy that needs
    them is refused at construction. ``"noisy"``: ``label_noise`` of the training labels are
    corrupted once, from ``label_noise_seed``; the CE term and every label-based column see the
    noisy labels, as a user with noisy data would."""
    label_noise: float | None = None
    """``labels="noisy"`` only (and required there): the fraction of training labels made wrong,
    in ``[0, 1)``; exactly ``round(label_noise * N)`` labels change."""
    label_noise_kind: str = "symmetric"
    """``labels="noisy"`` only: ``"symmetric"`` (a wrong label is another class, uniformly) or
    ``"pairs"`` (class ``c`` becomes ``(c + 1) mod C``)."""
    label_noise_seed: int | None = None
    """``labels="noisy"`` only: the seed of the corruption; ``None`` derives one from ``split_seed``."""

    @classmethod
    def from_kwargs(cls, caller: str = "KDEnvSettings", /, **kwargs: Any) -> KDEnvSettings:
        """Checked settings from an env's keyword arguments; ``caller`` names the callable in errors.

        Raises:
            TypeError: an unknown argument, in Python's own wording (``caller() got an unexpected
                keyword argument 'name'``), then every unknown one and the known ones. Tools
                match Python's wording to retry without an optional argument: torchrl's
                ``GymEnv`` passes ``frameskip=1`` and drops it on that message.
            ValueError: a known argument with a bad value (see :meth:`validate`).
        """
        known = {f.name for f in fields(cls)}
        unknown_in_order = [name for name in kwargs if name not in known]  # Python names the first one given
        if unknown_in_order:
            raise TypeError(
                f"{caller}() got an unexpected keyword argument {unknown_in_order[0]!r} "
                f"(unknown environment argument(s) {sorted(unknown_in_order)}; known: {sorted(known)})"
            )
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
            ("feature_resize", self.feature_resize, FEATURE_RESIZES),
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
        if (self.reward_mode == "val_label_logprob") != (self.probe_rows > 0):
            raise ValueError(
                f"reward_mode='val_label_logprob' and probe_rows > 0 go together (got reward_mode={self.reward_mode!r}, "
                f"probe_rows={self.probe_rows!r}): the probe's images are what that reward pays for, e.g. probe_rows=64"
            )
        if self.reward_mode == "val_label_logprob" and self.val_fraction <= 0:
            raise ValueError("reward_mode='val_label_logprob' needs a validation split: set val_fraction > 0")
        if self.reward_mode == "val_label_logprob" and self.feature_kd:
            raise ValueError("reward_mode='val_label_logprob' pays logit weights only: set feature_kd=False")
        if self.protocol == "official" and self.reward_mode in ("val_loss_delta", "val_acc", "val_label_logprob"):
            raise ValueError(
                f"protocol='official' has no validation split, so reward_mode={self.reward_mode!r} cannot be "
                "computed: use 'neg_loss' or 'label_logprob'"
            )
        if self.feature_term == "camkd" and not self.feature_kd:
            raise ValueError("feature_term='camkd' is a feature-KD term: set feature_kd=True (or feature_term='mse')")
        self._check_views()
        self._check_label_regime()

    def _check_views(self) -> None:
        """``augment_views`` needs augmentation on; ``views_seed`` and ``views_store`` need ``augment_views``."""
        views = self.augment_views
        if views is None:
            for name, value, default in (("views_seed", self.views_seed, 0), ("views_store", self.views_store, None)):
                if value != default:
                    raise ValueError(f"{name}={value!r} applies to augment_views only, which is unset")
            return
        augmenting = self.augment if self.augment is not None else self.dataset in AUGMENTED_DATASETS
        if not augmenting:
            raise ValueError(
                f"augment_views={views} draws views with the augmentation, which is off here "
                f"(augment={self.augment!r}, dataset {self.dataset!r}): set augment=True, or leave augment_views unset"
            )
        if self.views_store not in (None, *VIEWS_STORES):
            raise ValueError(f"views_store must be one of {VIEWS_STORES} or None, got {self.views_store!r}")
        if self.views_store == "maps" and not self.feature_kd:
            raise ValueError("views_store='maps' keeps the feature maps for feature KD, which is off: use 'embeddings' or 'logits'")

    def _check_label_regime(self) -> None:
        """The label regime and its noise arguments, and what the label-free regime refuses."""
        if self.labels not in LABEL_REGIMES:
            raise ValueError(f"labels must be one of {LABEL_REGIMES}, got {self.labels!r}")
        if self.labels == "noisy":
            rate = self.label_noise
            if rate is None:
                raise ValueError("labels='noisy' needs label_noise, the fraction of training labels made wrong, in [0, 1)")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:  # NaN fails too
                raise ValueError(f"label_noise must be a number in [0, 1), got {rate!r}")
            if self.label_noise_kind not in LABEL_NOISE_KINDS:
                raise ValueError(f"label_noise_kind must be one of {LABEL_NOISE_KINDS}, got {self.label_noise_kind!r}")
        else:
            # a noise argument that would be ignored runs another experiment than the one asked for
            for name, value, default in (
                ("label_noise", self.label_noise, None),
                ("label_noise_kind", self.label_noise_kind, "symmetric"),
                ("label_noise_seed", self.label_noise_seed, None),
            ):
                if value != default:
                    raise ValueError(f"{name}={value!r} applies to labels='noisy' only, got labels={self.labels!r}")
        if self.labels == "none":
            if self.reward_mode in TRAINING_LABEL_REWARDS:
                raise ValueError(
                    f"reward_mode={self.reward_mode!r} reads the training labels, which labels='none' withholds; "
                    f"allowed with labels='none': {[mode for mode in REWARD_MODES if mode not in TRAINING_LABEL_REWARDS]}"
                )
            if self.feature_term == "camkd":
                raise ValueError(
                    "feature_term='camkd' weights each teacher by its head's CE on the training label, which labels='none' "
                    "withholds; use feature_term='mse' with labels='none'"
                )

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
    "label_noise_seed",
    "augment_views",
    "views_store",
}
_BOOL_FIELDS = ("download", "verify_checksums", "train_teachers", "feature_kd", "augment", "teacher_store", "drop_last")
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
    "feature_resize",
    "labels",
    "label_noise_kind",
    "views_store",
)
_INT_MINIMUM = {
    "epochs": 1,
    "batch_size": 2,
    "max_steps_per_epoch": 1,
    "probe_size": 1,
    "probe_rows": 0,
    "teacher_seed": 0,
    "split_seed": 0,
    "train_size": 2,
    "feature_kd_from_epoch": 0,
    "label_noise_seed": 0,
    "augment_views": 1,
    "views_seed": 0,
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
