"""The engine's hyperparameters (:class:`EngineConfig`); defaults follow MTKD-RL's official code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EngineConfig:
    """Hyperparameters of the student's training. Defaults follow MTKD-RL's official code.

    The LR decays by ``lr_decay_rate`` at the fractions ``lr_decay_at`` of the epoch budget
    (0.625 / 0.75 / 0.875 of 240 epochs = epochs 150 / 180 / 210), so short budgets keep the shape.
    """

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_decay_at: tuple[float, ...] = (0.625, 0.75, 0.875)
    lr_decay_rate: float = 0.1
    temperature: float = 4.0
    alpha: float = 1.0
    """Weight of the logit-KD term."""
    beta: float = 5.0
    """Weight of the feature-KD term (MTKD-RL's ``--feat-weight 5``)."""
    feature_kd: bool = True
    kd_scale: float = 1.0
    """Extra factor on the logit-KD term, to match a published method's loss magnitude."""
    augment: bool | None = None
    """Batched random crop / flip; ``None`` takes the dataset's default."""
    augment_views: int | None = None
    """Issue #27: V fixed augmented views per training image, drawn once from ``views_seed``
    with the augmentation, the teachers' outputs on them computed once and kept (store rows
    ``image * V + view``); each step gives every sample one of its V views, drawn from the run's
    generator, so the teachers never run during training (:mod:`~kd_env.engine.views`). Needs
    augmentation on. ``None``: fresh augmentation every step (the teachers run on every batch)."""
    views_seed: int = 0
    """The seed of the views' draw (``augment_views`` only); part of the store's key."""
    views_store: str | None = None
    """What the store of views keeps (``augment_views`` only): ``"logits"``, ``"embeddings"``
    (logits and embeddings) or ``"maps"`` (and the feature maps, which feature KD reads);
    ``None``: ``"maps"`` with feature KD, else ``"embeddings"``."""
    cache_teacher_outputs: bool = True
    """Run the teachers once over the training set when augmentation is off."""
    teacher_store: bool = True
    """Keep those outputs in the persistent teacher-output store (:mod:`kd_env.teacher_outputs`):
    built once in the kd-env cache, memory-mapped by every later run. ``False``, or a cache folder
    where nothing can be written, holds them in this process's memory instead."""
    store_dtype: str = "float16"
    """dtype of the stored embeddings and feature maps (``"float16"`` or ``"float32"``; logits are
    always float32). Batches are converted to float32, so the loss arithmetic is unchanged."""
    cache_dir: str | None = None
    """kd-env cache root for the store (default: ``$KD_ENV_CACHE`` or the user cache folder)."""
    drop_last: bool = True
    """Skip an epoch's last, partial batch (CA-MKD's and MMKD's loaders, and kd-env's default);
    ``False`` trains on it too (MTKD-RL's loaders): ``ceil(N / B)`` updates an epoch."""
    max_steps_per_epoch: int | None = None
    """Cap on updates per epoch (quick trials); ``None`` runs full epochs."""
    eval_batch_size: int = 1000
    evaluate_test: bool = True
    """Also measure test accuracy at epoch ends (reported only; selection uses validation)."""
    channels_last: bool = True
    """Teachers (inference only) in channels-last memory format: 10-25% faster on CPU."""
    student_channels_last: bool = False
    """The student (and adapters) in channels-last format; off by default, since training small
    conv nets that way was up to 35% slower on our CPUs (measured for cnn_w8)."""
    feature_term: str = "mse"
    """How the feature-KD term's teacher weights are set. ``"mse"``: by the policy (MTKD-RL,
    FitNet-style MSE). ``"camkd"``: CA-MKD's intermediate-feature term (the authors'
    ``CalWeight``): each adapted student map goes through teacher k's own head, and
    ``v_bk = (1 - softmax_k(CE(head_k(adapter_k(f_s)), y)))_bk / (K - 1)`` weights the MSE,
    *not detached* (the gradient flows through the weights too); the policy's feature weights
    are then ignored."""
    feature_resize: str = "student"
    """How the feature term compares maps of different sizes (:class:`~kd_env.engine.adapters.FeatureAdapter`):
    ``"student"`` resizes the student map to the teacher's (MTKD-RL, CA-MKD: upsampled when
    smaller); ``"smaller"`` pools the larger map to the smaller one's size (MMKD's
    ``MatchFeature``: a teacher map larger than the student's is pooled down to it)."""
    feature_kd_from_epoch: int = 0
    """The feature term counts from this epoch (0-based) on; CA-MKD switches it off in its first
    epoch (1)."""
    select_on: str = "val"
    """Which split picks the reported student at epoch ends: ``"val"`` (the best-validation
    student; the test set is only reported) or ``"test"`` (the official MTKD-RL / RepDistiller
    protocol: the best test accuracy over epochs, no validation split)."""
    label_free: bool = False
    """The label-free regime (the envs' ``labels="none"``): the engine never reads a training
    label. The loss has no CE term (``alpha * kd_scale * KD (+ beta * feature term)``), and the
    prepared batch withholds the labels and what is computed from them (teacher CE, teacher
    correctness, the student's CE: reading one raises :class:`~kd_env.engine.batch.TrainingLabelsHidden`).
    Validation and test keep their labels (evaluation, model selection, the validation probe)."""

    @property
    def views_contents(self) -> str | None:
        """What the store of views keeps (``views_store`` resolved); ``None`` without views."""
        if self.augment_views is None:
            return None
        return self.views_store or ("maps" if self.feature_kd else "embeddings")

    def _check_views(self) -> None:
        views = self.augment_views
        if views is None:
            if self.views_store is not None:
                raise ValueError(f"views_store={self.views_store!r} applies to augment_views only, which is unset")
            return
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ValueError(f"augment_views must be an integer >= 1 (views per training image), got {views!r}")
        if self.augment is False:
            raise ValueError(f"augment_views={views} draws augmented views, but augment=False: set augment=True")
        if self.views_store not in (None, "logits", "embeddings", "maps"):
            raise ValueError(f"views_store must be 'logits', 'embeddings' or 'maps', got {self.views_store!r}")
        if self.views_store == "maps" and not self.feature_kd:
            raise ValueError("views_store='maps' keeps the feature maps for feature KD, which is off: use 'embeddings' or 'logits'")
        if not self.cache_teacher_outputs:
            raise ValueError(f"augment_views={views} keeps the teachers' outputs on the views: not with cache_teacher_outputs=False")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, num_teachers: int) -> None:
        """Raise ``ValueError`` for settings that cannot work (with ``num_teachers`` teachers)."""
        if self.feature_term not in ("mse", "camkd"):
            raise ValueError(f"feature_term must be 'mse' or 'camkd', got {self.feature_term!r}")
        if self.feature_resize not in ("student", "smaller"):
            raise ValueError(f"feature_resize must be 'student' or 'smaller', got {self.feature_resize!r}")
        if self.select_on not in ("val", "test"):
            raise ValueError(f"select_on must be 'val' or 'test', got {self.select_on!r}")
        if self.select_on == "test" and not self.evaluate_test:
            raise ValueError("select_on='test' needs evaluate_test=True (the test accuracy picks the student)")
        if self.feature_term == "camkd" and self.label_free:
            raise ValueError(
                "feature_term='camkd' reads the training labels (its weights are the heads' CE on them): not with label_free=True"
            )
        self._check_views()
        if self.feature_term == "camkd" and num_teachers < 2:
            raise ValueError("feature_term='camkd' needs at least 2 teachers (its weights divide by K - 1)")
