"""Teachers: train, save, verify and load the pre-trained networks a KD environment distils from.

A teacher is a zoo model (:func:`kd_env.models.create_model`) trained with one standard
recipe and stored as a checkpoint file under the cache::

    default_cache_dir()/teachers/<dataset>/<arch>-s<seed>.pt

Recipe (:func:`train_teacher`): SGD with momentum 0.9 and weight decay 5e-4, the learning rate
multiplied by 0.1 at 62.5%, 75% and 87.5% of the epochs (epochs 150/180/210 of the 240-epoch
CIFAR recipe of CRD/MTKD-RL), batched augmentation from :func:`kd_env.data.default_augmentation`,
cross-entropy loss. The weights with the best *validation* accuracy are kept; the test accuracy of
those weights is measured once at the end and stored in the metadata.

Checkpoint format (``"kd_env.teacher/1"``), one ``torch.save`` file holding a dict of plain
types and tensors, so that it loads with ``torch.load(..., weights_only=True)``::

    {"format": "kd_env.teacher/1",
     "metadata": {"arch", "dataset", "num_classes", "in_channels", "epochs", "seed",
                  "val_acc", "test_acc", "versions": {...}, "created", "sha256", ...},
     "state_dict": {name: tensor, ...}}

``metadata["sha256"]`` is :func:`state_dict_sha256` of ``state_dict``: a SHA-256 over a canonical
serialisation of the tensors (for every entry in sorted name order: the UTF-8 name, the dtype
name, the shape and the raw contiguous CPU bytes of the values, each part length-prefixed). It
does not depend on the pickle/zip layout of ``torch.save``, so it stays valid across torch
versions, and any change to a stored value is caught on load.

Files are written atomically (temporary file in the same folder, ``fsync``, ``os.replace``), so a
crash never leaves a half-written ``.pt`` under the final name. While training, a
``<arch>-s<seed>.partial.pt`` file holds everything needed to resume (model, optimizer, RNG
states, epoch, best weights so far); an interrupted :func:`train_teacher` call picks it up, and it
is removed once the final checkpoint is written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import shlex
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_env.utils import atomic_torch_save

__all__ = [
    "TEACHER_FORMAT",
    "TEACHER_POOLS",
    "TEACHER_POOL_EPOCHS",
    "TeacherCheckpointError",
    "TeacherNotFoundError",
    "TeacherChecksumError",
    "TeacherMismatchError",
    "default_recipe",
    "train_teacher",
    "save_teacher",
    "load_teacher",
    "read_teacher_metadata",
    "state_dict_sha256",
    "teacher_path",
    "teachers_dir",
    "ensure_teacher_pool",
    "list_teachers",
    "train_command",
    "evaluate_accuracy",
]

TEACHER_FORMAT = "kd_env.teacher/1"
PARTIAL_FORMAT = "kd_env.teacher_partial/1"
_SHA_SCHEME = "kd_env.state_dict_sha256/1"

#: Default teacher pool per dataset. The CIFAR pools are the four teachers of MTKD-RL.
TEACHER_POOLS: dict[str, list[str]] = {
    "cifar100": ["RegNetY_400MF", "RegNetX_400MF", "resnet32x4", "wrn_28_4"],
    "cifar10": ["RegNetY_400MF", "RegNetX_400MF", "resnet32x4", "wrn_28_4"],
    # heterogeneous: an MLP, two plain CNNs and a ResNet with different training budgets, so
    # the teachers differ clearly in accuracy (about 84/82/87/90% test); the pool trains in
    # about 3-4 minutes on 2 CPU cores.
    "fashion_mnist": ["mlp", "cnn_w8", "cnn_w16", "resnet8"],
    "synthetic": ["mlp", "cnn_w8", "cnn_w16"],
}

#: Default epochs per teacher of each default pool (also used for a pool member trained alone).
TEACHER_POOL_EPOCHS: dict[str, dict[str, int]] = {
    "cifar100": {arch: 240 for arch in TEACHER_POOLS["cifar100"]},
    "cifar10": {arch: 240 for arch in TEACHER_POOLS["cifar10"]},
    "fashion_mnist": {"mlp": 1, "cnn_w8": 3, "cnn_w16": 5, "resnet8": 5},
    "synthetic": {"mlp": 2, "cnn_w8": 3, "cnn_w16": 4},
}

# dataset -> (epochs, lr, batch_size)
_DATASET_RECIPES: dict[str, dict[str, Any]] = {
    "cifar100": {"epochs": 240, "lr": 0.05, "batch_size": 64},
    "cifar10": {"epochs": 240, "lr": 0.05, "batch_size": 64},
    "fashion_mnist": {"epochs": 5, "lr": 0.05, "batch_size": 128},
    "synthetic": {"epochs": 3, "lr": 0.05, "batch_size": 64},
}
_SMALL_LR_ARCH_PREFIXES = ("MobileNet", "ShuffleV")  # CRD recipe: lr 0.01 for these
_LR_MILESTONES = (0.625, 0.75, 0.875)


# --------------------------------------------------------------------------------------------
# errors


class TeacherCheckpointError(RuntimeError):
    """A teacher checkpoint is missing, unreadable, corrupt or not the teacher asked for."""


class TeacherNotFoundError(TeacherCheckpointError, FileNotFoundError):
    """The teacher checkpoint file does not exist."""


class TeacherChecksumError(TeacherCheckpointError):
    """The stored weights do not match the checksum written with them."""


class TeacherMismatchError(TeacherCheckpointError, ValueError):
    """The checkpoint holds another architecture or dataset than expected."""


# --------------------------------------------------------------------------------------------
# paths and recipe


def _default_cache_dir() -> Path:
    from kd_env.data import default_cache_dir

    return Path(default_cache_dir())


def teachers_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds all teacher checkpoints: ``<cache_dir>/teachers``."""
    return (Path(cache_dir) if cache_dir is not None else _default_cache_dir()) / "teachers"


def teacher_path(arch: str, dataset: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the checkpoint of ``arch`` trained on ``dataset`` with ``seed`` lives."""
    return teachers_dir(cache_dir) / dataset / f"{arch}-s{int(seed)}.pt"


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".pt")] + ".partial.pt" if path.name.endswith(".pt") else path.name + ".partial.pt")


def default_recipe(arch: str, dataset: str) -> dict[str, Any]:
    """The default ``epochs``, ``lr`` and ``batch_size`` for ``arch`` on ``dataset``.

    Epochs come from :data:`TEACHER_POOL_EPOCHS` when ``arch`` is in the dataset's pool, else from
    the dataset default (240 for CIFAR). MobileNet/ShuffleNet use lr 0.01 as in CRD.
    """
    recipe = dict(_DATASET_RECIPES.get(dataset, {"epochs": 10, "lr": 0.05, "batch_size": 64}))
    recipe["epochs"] = TEACHER_POOL_EPOCHS.get(dataset, {}).get(arch, recipe["epochs"])
    if arch.startswith(_SMALL_LR_ARCH_PREFIXES):
        recipe["lr"] = 0.01
    return recipe


def lr_milestones(epochs: int) -> list[int]:
    """Epoch indices (0-based epochs completed) after which the lr is multiplied by 0.1."""
    return [int(round(f * epochs)) for f in _LR_MILESTONES]


def _lr_for_epoch(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of 0-based ``epoch``: ``base_lr * 0.1**(#milestones <= epoch)``."""
    return base_lr * 0.1 ** sum(1 for m in lr_milestones(epochs) if epoch >= m)


def train_command(
    dataset: str,
    archs: Sequence[str] | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """The shell command that trains ``archs`` (default: the pool) of ``dataset``."""
    parts = ["kd-env", "teachers", "train", "--dataset", dataset]
    for arch in archs or ():
        parts += ["--arch", arch]
    if seed != 0:
        parts += ["--seed", str(seed)]
    if cache_dir is not None:
        parts += ["--cache-dir", str(cache_dir)]
    return shlex.join(parts)


# --------------------------------------------------------------------------------------------
# atomic files and checksums


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state dict, independent of how ``torch.save`` lays it out.

    For every entry in sorted key order the digest takes, each prefixed by its byte length: the
    UTF-8 key, the dtype name (e.g. ``torch.float32``), the shape as comma-separated ints and
    the raw bytes of the contiguous CPU tensor.
    """
    digest = hashlib.sha256()
    digest.update(_SHA_SCHEME.encode())

    def put(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for key in sorted(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().to("cpu").contiguous()
        put(key.encode("utf-8"))
        put(str(tensor.dtype).encode())
        put(",".join(str(s) for s in tensor.shape).encode())
        put(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"torch": str(torch.__version__)}
    try:
        import torchvision

        versions["torchvision"] = str(torchvision.__version__)
    except Exception:  # pragma: no cover - torchvision is a dependency
        versions["torchvision"] = "unavailable"
    kd_version = None
    with contextlib.suppress(Exception):
        import kd_env

        kd_version = getattr(kd_env, "__version__", None)
    if kd_version is None:
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            kd_version = version("kd-env")
    versions["kd_env"] = str(kd_version or "unknown")
    return versions


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # contiguous (not channels_last) CPU copies: the saved layout is independent of training
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# save / load


def save_teacher(
    state_dict: dict[str, torch.Tensor] | nn.Module,
    path: str | os.PathLike,
    metadata: dict[str, Any],
) -> Path:
    """Write a teacher checkpoint atomically, adding checksum, versions and creation time.

    ``metadata`` must hold at least ``arch``, ``dataset``, ``num_classes`` and ``in_channels``
    and only plain Python types (it is read back with ``weights_only=True``).
    """
    if isinstance(state_dict, nn.Module):
        state_dict = _cpu_state_dict(state_dict)
    else:
        state_dict = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    missing = [k for k in ("arch", "dataset", "num_classes", "in_channels") if k not in metadata]
    if missing:
        raise ValueError(f"teacher metadata lacks {missing}")
    meta = dict(metadata)
    meta.setdefault("versions", _versions())
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["sha256"] = state_dict_sha256(state_dict)
    meta["sha256_scheme"] = _SHA_SCHEME
    path = Path(path)
    atomic_torch_save({"format": TEACHER_FORMAT, "metadata": meta, "state_dict": state_dict}, path)
    return path


def _guess_train_command(path: Path, expected_arch: str | None, expected_dataset: str | None) -> str:
    """Best guess of the command that creates ``path`` (uses the cache layout)."""
    arch, seed, dataset, cache_dir = expected_arch, 0, expected_dataset, None
    stem = path.name[:-3] if path.name.endswith(".pt") else path.stem
    if "-s" in stem:
        name, _, seed_text = stem.rpartition("-s")
        if seed_text.isdigit():
            arch = arch or name
            seed = int(seed_text)
    if path.parent.parent.name == "teachers":
        dataset = dataset or path.parent.name
        cache_dir = path.parent.parent.parent
        with contextlib.suppress(Exception):
            if cache_dir.resolve() == _default_cache_dir().resolve():
                cache_dir = None
    return train_command(dataset or "<dataset>", [arch or "<arch>"], seed=seed, cache_dir=cache_dir)


def _read_checkpoint(path: Path, expected_arch: str | None = None, expected_dataset: str | None = None, *, mmap: bool = False) -> dict[str, Any]:
    if not path.is_file():
        raise TeacherNotFoundError(
            f"teacher checkpoint {str(path)!r} does not exist. Train it with:\n"
            f"  {_guess_train_command(path, expected_arch, expected_dataset)}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # zip/pickle/EOF errors: the bytes are not a complete checkpoint
        if "Weights only load failed" in str(exc):
            raise TeacherCheckpointError(
                f"{str(path)!r} holds objects other than tensors and plain Python types, so it is not a "
                f"{TEACHER_FORMAT!r} teacher checkpoint (refusing to unpickle it). Retrain it with "
                f"{_guess_train_command(path, expected_arch, expected_dataset)}"
            ) from exc
        raise TeacherCheckpointError(
            f"teacher checkpoint {str(path)!r} is corrupt or truncated and cannot be read "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Delete it and "
            f"retrain it ({_guess_train_command(path, expected_arch, expected_dataset)}) or re-download it."
        ) from exc
    if (
        not isinstance(checkpoint, dict)
        or checkpoint.get("format") != TEACHER_FORMAT
        or not isinstance(checkpoint.get("metadata"), dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
    ):
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise TeacherCheckpointError(
            f"{str(path)!r} is not a kd_env teacher checkpoint (format {found!r}, expected "
            f"{TEACHER_FORMAT!r}); retrain it with "
            f"{_guess_train_command(path, expected_arch, expected_dataset)}"
        )
    return checkpoint


def read_teacher_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of a teacher checkpoint (the weights are not verified)."""
    checkpoint = _read_checkpoint(Path(path), mmap=True)
    return dict(checkpoint["metadata"])


def load_teacher(
    path: str | os.PathLike,
    *,
    expected_arch: str | None = None,
    expected_dataset: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a verified teacher checkpoint as a frozen zoo model in eval mode.

    The returned :class:`~kd_env.models.base.KDModel` has ``requires_grad=False`` everywhere and
    carries the checkpoint's metadata as ``model.teacher_metadata``.

    Raises:
        TeacherNotFoundError: the file does not exist (the message gives the train command).
        TeacherCheckpointError: the file is truncated, corrupt or not a teacher checkpoint.
        TeacherChecksumError: the weights do not match the stored SHA-256.
        TeacherMismatchError: ``expected_arch``/``expected_dataset`` differ from the checkpoint's.
    """
    from kd_env.models import create_model

    path = Path(path)
    checkpoint = _read_checkpoint(path, expected_arch, expected_dataset)
    meta, state_dict = checkpoint["metadata"], checkpoint["state_dict"]
    for key in ("arch", "dataset", "num_classes", "in_channels", "sha256"):
        if key not in meta:
            raise TeacherCheckpointError(f"teacher checkpoint {str(path)!r} lacks metadata field {key!r}; retrain it")
    try:
        digest = state_dict_sha256(state_dict)
    except TypeError as exc:
        raise TeacherCheckpointError(f"teacher checkpoint {str(path)!r} is corrupt: {exc}") from exc
    if digest != meta["sha256"]:
        raise TeacherChecksumError(
            f"checksum mismatch in teacher checkpoint {str(path)!r}: the weights hash to {digest[:16]}..., "
            f"the file records {str(meta['sha256'])[:16]}...; the file is corrupt or was modified. "
            f"Delete it and retrain it ({_guess_train_command(path, expected_arch, expected_dataset)}) "
            "or re-download it."
        )
    if expected_arch is not None and meta["arch"] != expected_arch:
        raise TeacherMismatchError(
            f"teacher checkpoint {str(path)!r} holds arch {meta['arch']!r}, expected arch {expected_arch!r}"
        )
    if expected_dataset is not None and meta["dataset"] != expected_dataset:
        raise TeacherMismatchError(
            f"teacher checkpoint {str(path)!r} was trained on dataset {meta['dataset']!r}, "
            f"expected dataset {expected_dataset!r}"
        )
    try:
        model = create_model(
            meta["arch"],
            num_classes=int(meta["num_classes"]),
            in_channels=int(meta["in_channels"]),
            **dict(meta.get("model_kwargs") or {}),
        )
    except ValueError as exc:
        raise TeacherCheckpointError(f"cannot build the model of teacher checkpoint {str(path)!r}: {exc}") from exc
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise TeacherCheckpointError(
            f"teacher checkpoint {str(path)!r} does not fit the current {meta['arch']!r} model "
            f"(saved with kd_env {meta.get('versions', {}).get('kd_env', '?')}): {exc}. Retrain it."
        ) from exc
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    model.teacher_metadata = dict(meta)
    return model


# --------------------------------------------------------------------------------------------
# training


def _uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _prepare(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: Callable[..., torch.Tensor],
    *,
    batch_size: int = 1000,
    channels_last: bool = False,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on uint8 ``images`` (eval transform)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    eval_generator = torch.Generator(device=images.device)
    for start in range(0, images.shape[0], batch_size):
        x = transform(images[start : start + batch_size], eval_generator, train=False)
        logits = model(_prepare(x, channels_last))
        correct += (logits.argmax(dim=1) == labels[start : start + batch_size].to(logits.device).long()).sum()
    model.train(was_training)
    return float(correct.item()) / max(1, images.shape[0])


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_teacher(
    arch: str,
    dataset: Any,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    path: str | os.PathLike | None = None,
    progress: bool = True,
    resume: bool = True,
    channels_last: bool | None = None,
    eval_batch_size: int = 1000,
    model_kwargs: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> Path:
    """Train ``arch`` on ``dataset`` with the standard recipe and write its checkpoint.

    Args:
        arch: a zoo model name (:func:`kd_env.models.list_models`).
        dataset: a dataset name for :func:`kd_env.data.load_dataset` or loaded ``DatasetSplits``.
        epochs, batch_size, lr: ``None`` takes :func:`default_recipe` (CIFAR: 240, 64, 0.05 or
            0.01 for MobileNet/ShuffleNet).
        momentum, weight_decay: SGD settings (0.9, 5e-4).
        seed: seeds the weight init, the batch order and the augmentation; same seed, same
            weights on CPU.
        device: where the model and the data tensors live.
        cache_dir: cache root (default :func:`kd_env.data.default_cache_dir`).
        data_root, download: passed to ``load_dataset`` when ``dataset`` is a name.
        path: checkpoint file (default :func:`teacher_path` of arch, dataset, seed, cache_dir).
        progress: show a tqdm bar (epoch, loss, val acc).
        resume: continue from ``<name>.partial.pt`` if an earlier call was interrupted; with
            ``False`` any partial state is discarded.
        channels_last: use the channels-last memory format for conv nets (``None``: on CPU).
        eval_batch_size: batch size of the val/test passes.
        model_kwargs: extra factory options for ``create_model`` (stored in the metadata, so
            :func:`load_teacher` rebuilds the same model); ``image_size`` is filled in for
            factories that take it.
        on_epoch_end: ``callback(epoch, info)`` called after each epoch (1-based) once the
            resumable state is on disk; ``info`` has ``loss``, ``val_acc``, ``lr``,
            ``best_val_acc``. An exception raised here interrupts training resumably.

    Returns:
        The path of the checkpoint. Metadata: arch, dataset, num_classes, in_channels,
        image_shape, epochs, seed, batch_size, lr, val_acc (best), best_epoch, test_acc (of the
        best-val weights), history, train_time_s, versions, created, sha256.
    """
    from kd_env.data import BatchTransform, batch_indices, default_augmentation, load_dataset
    from kd_env.models import create_model

    device = torch.device(device)
    if isinstance(dataset, str):
        splits = load_dataset(dataset, data_root, download=download, device=device)
    else:
        splits = dataset
    dataset_name = str(splits.name)
    recipe = default_recipe(arch, dataset_name)
    epochs = int(recipe["epochs"] if epochs is None else epochs)
    batch_size = int(recipe["batch_size"] if batch_size is None else batch_size)
    lr = float(recipe["lr"] if lr is None else lr)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    path = Path(path) if path is not None else teacher_path(arch, dataset_name, seed, cache_dir)
    partial = _partial_path(path)

    train_x, train_y = splits.train_images.to(device), splits.train_labels.to(device)
    val_x, val_y = splits.val_images.to(device), splits.val_labels.to(device)
    test_x, test_y = splits.test_images.to(device), splits.test_labels.to(device)
    num_classes = int(splits.num_classes)
    in_channels = int(train_x.shape[1])
    # image_size reaches only the factories that depend on it (e.g. mlp); it is stored so that
    # load_teacher rebuilds the same model
    model_kwargs = {"image_size": int(train_x.shape[-1]), **(model_kwargs or {})}
    transform = BatchTransform(splits.mean, splits.std, **default_augmentation(dataset_name))

    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes, in_channels=in_channels, **model_kwargs).to(device)
    if channels_last is None:
        channels_last = device.type == "cpu" and _uses_conv(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    eval_kwargs = {"batch_size": eval_batch_size, "channels_last": channels_last}

    config = {
        "arch": arch,
        "dataset": dataset_name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "num_train": int(train_x.shape[0]),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "seed": int(seed),
        "model_kwargs": model_kwargs,
    }
    start_epoch, best_val, best_epoch = 0, -1.0, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    elapsed_before = 0.0

    if partial.exists() and not resume:
        partial.unlink()
    if partial.exists():
        try:
            saved = torch.load(partial, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or saved.get("format") != PARTIAL_FORMAT:
                raise ValueError("not a kd_env partial teacher file")
            if saved["config"] != config:
                diff = {k: (saved["config"].get(k), v) for k, v in config.items() if saved["config"].get(k) != v}
                raise ValueError(f"it was made with other settings {diff}")
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
            _set_rng_state(saved["rng"], device)
            start_epoch = int(saved["epoch"])
            best_val, best_epoch = float(saved["best_val_acc"]), int(saved["best_epoch"])
            best_state = saved["best_state"]
            history = list(saved["history"])
            elapsed_before = float(saved.get("train_time_s", 0.0))
            if progress:
                print(f"[kd_env] resuming {arch} on {dataset_name} from epoch {start_epoch + 1}/{epochs} ({partial})")
        except Exception as exc:
            warnings.warn(f"ignoring partial teacher state {str(partial)!r} and starting over: {exc}", stacklevel=2)
            torch.manual_seed(seed)
            model = create_model(arch, num_classes=num_classes, in_channels=in_channels, **model_kwargs).to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
            generator.manual_seed(seed)
            start_epoch, best_val, best_epoch, best_state, history, elapsed_before = 0, -1.0, 0, None, [], 0.0

    from tqdm.auto import tqdm

    bar = tqdm(
        total=epochs,
        initial=start_epoch,
        desc=f"{arch}@{dataset_name}",
        unit="ep",
        disable=not progress,
        dynamic_ncols=True,
    )
    t_start = time.perf_counter()
    num_train = int(train_x.shape[0])
    drop_last = num_train % batch_size == 1  # a batch of one breaks BatchNorm
    has_val = int(val_x.shape[0]) > 0
    try:
        for epoch in range(start_epoch, epochs):
            epoch_lr = _lr_for_epoch(lr, epoch, epochs)
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            seen = 0
            batches = batch_indices(num_train, batch_size, generator, shuffle=True, drop_last=drop_last)
            inner = tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, mininterval=1.0, dynamic_ncols=True)
            for idx in inner:
                idx = idx.to(device)
                x = _prepare(transform(train_x[idx], generator, train=True), channels_last)
                y = train_y[idx].long()
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().double() * y.shape[0]
                seen += y.shape[0]
            inner.close()
            train_loss = float(loss_sum.item()) / max(1, seen)
            if not torch.isfinite(torch.tensor(train_loss)):
                raise FloatingPointError(f"training {arch} diverged at epoch {epoch + 1} (loss {train_loss})")
            if has_val:
                val_acc = evaluate_accuracy(model, val_x, val_y, transform, **eval_kwargs)
            else:  # no validation split (val_fraction=0): keep the last epoch
                val_acc = float("nan")
            if not has_val or val_acc > best_val:
                best_val, best_epoch, best_state = val_acc, epoch + 1, _cpu_state_dict(model)
            history.append({"epoch": epoch + 1, "lr": epoch_lr, "train_loss": train_loss, "val_acc": val_acc if has_val else None})
            elapsed = elapsed_before + time.perf_counter() - t_start
            atomic_torch_save(
                {
                    "format": PARTIAL_FORMAT,
                    "config": config,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "rng": _rng_state(device),
                    "epoch": epoch + 1,
                    "best_val_acc": best_val,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "history": history,
                    "train_time_s": elapsed,
                },
                partial,
            )
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.4f}", best=f"{best_val:.4f}", lr=f"{epoch_lr:.3g}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, {"loss": train_loss, "val_acc": val_acc, "lr": epoch_lr, "best_val_acc": best_val})
    finally:
        bar.close()

    assert best_state is not None
    model.load_state_dict(best_state)
    test_acc = evaluate_accuracy(model, test_x, test_y, transform, **eval_kwargs) if test_x.shape[0] else 0.0
    metadata = {
        **{k: v for k, v in config.items() if k != "num_train"},
        "image_shape": [int(s) for s in train_x.shape[1:]],
        "val_acc": best_val if has_val else None,
        "best_epoch": best_epoch,
        "test_acc": test_acc,
        "mean": [float(m) for m in torch.as_tensor(splits.mean).flatten().tolist()],
        "std": [float(s) for s in torch.as_tensor(splits.std).flatten().tolist()],
        "augmentation": {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in default_augmentation(dataset_name).items()},
        "history": history,
        "train_time_s": elapsed_before + time.perf_counter() - t_start,
        "device": str(device),
    }
    save_teacher(best_state, path, metadata)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    if progress:
        print(f"[kd_env] {arch} on {dataset_name}: val acc {best_val:.4f} (epoch {best_epoch}), test acc {test_acc:.4f} -> {path}")
    return path


# --------------------------------------------------------------------------------------------
# pools


def _pool(dataset: str, archs: Iterable[str] | None) -> list[str]:
    if archs is not None:
        return list(archs)
    if dataset not in TEACHER_POOLS:
        raise KeyError(f"no default teacher pool for dataset {dataset!r}; known: {sorted(TEACHER_POOLS)}; pass archs=")
    return list(TEACHER_POOLS[dataset])


def ensure_teacher_pool(
    dataset: str,
    archs: Sequence[str] | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    train_missing: bool = False,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    device: str | torch.device = "cpu",
    epochs: int | dict[str, int] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Paths of the teacher checkpoints of ``dataset`` (default pool), training missing ones on request.

    Raises:
        TeacherNotFoundError: some files are missing and ``train_missing`` is False; the message
            lists them and gives the command that trains them.
    """
    archs = _pool(dataset, archs)
    paths = [teacher_path(arch, dataset, seed, cache_dir) for arch in archs]
    missing = [(arch, p) for arch, p in zip(archs, paths) if not p.is_file()]
    if missing and not train_missing:
        listing = "\n".join(f"  {p}" for _, p in missing)
        raise TeacherNotFoundError(
            f"{len(missing)} of {len(archs)} teacher checkpoints for {dataset!r} are missing:\n{listing}\n"
            f"Train them with:\n  {train_command(dataset, [a for a, _ in missing], seed=seed, cache_dir=cache_dir)}\n"
            "(or pass train_missing=True)"
        )
    if missing:
        from kd_env.data import load_dataset

        splits = load_dataset(dataset, data_root, download=download, device=device)
        for arch, p in missing:
            arch_epochs = epochs.get(arch) if isinstance(epochs, dict) else epochs
            train_teacher(arch, splits, epochs=arch_epochs, seed=seed, device=device, path=p, progress=progress)
    return paths


def list_teachers(cache_dir: str | os.PathLike | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
    """Metadata of every teacher checkpoint in the cache (each dict gains a ``path`` key).

    Unreadable files are listed with an ``error`` key instead of raising. Partial (in-progress)
    files are skipped.
    """
    root = teachers_dir(cache_dir)
    if not root.is_dir():
        return []
    pattern = f"{dataset}/*.pt" if dataset else "*/*.pt"
    entries = []
    for file in sorted(root.glob(pattern)):
        if file.name.endswith(".partial.pt") or file.name.startswith("."):
            continue
        try:
            meta = read_teacher_metadata(file)
        except TeacherCheckpointError as exc:
            meta = {"dataset": file.parent.name, "arch": file.stem, "error": str(exc)}
        meta["path"] = str(file)
        entries.append(meta)
    return entries

