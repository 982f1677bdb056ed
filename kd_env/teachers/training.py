"""Training one teacher with the standard recipe, resumably.

:func:`train_teacher` keeps the weights with the best *validation* accuracy; the test accuracy of
those weights is measured once at the end, on the **true** labels, and stored in the metadata,
together with the accuracy on the teacher's own classes and on the rest (a specialist or a
relabelled teacher is judged by what it gets right, not by the labels it was trained on).

While training, a ``<name>-s<seed>.partial.pt`` file holds everything needed to resume (model,
optimizer, RNG states, epoch, best weights so far); an interrupted call picks it up, and it is
removed once the final checkpoint is written.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_env.utils import atomic_torch_save

from .checkpoints import _cpu_state_dict, _partial_path, save_teacher, teacher_path
from .recipes import default_recipe, derangement, lr_for_epoch

PARTIAL_FORMAT = "kd_env.teacher_partial/1"


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
    predictions = predict_classes(model, images, transform, batch_size=batch_size, channels_last=channels_last)
    return float((predictions == labels.to(predictions.device).long()).float().mean()) if labels.numel() else 0.0


@torch.no_grad()
def predict_classes(
    model: nn.Module,
    images: torch.Tensor,
    transform: Callable[..., torch.Tensor],
    *,
    batch_size: int = 1000,
    channels_last: bool = False,
) -> torch.Tensor:
    """The arg-max class of ``model`` for every uint8 image (eval mode, eval transform), ``[N]``."""
    was_training = model.training
    model.eval()
    eval_generator = torch.Generator(device=images.device)
    parts = []
    for start in range(0, images.shape[0], batch_size):
        x = transform(images[start : start + batch_size], eval_generator, train=False)
        parts.append(model(_prepare(x, channels_last)).argmax(dim=1))
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=images.device)


def accuracy_by_class_group(predictions: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None) -> dict[str, float | None]:
    """Accuracy on the true labels: overall, on ``classes`` (its own) and on the other classes.

    ``None`` where a group is empty (a teacher trained on every class has no "rest").
    """
    labels = labels.to(predictions.device).long()
    correct = (predictions == labels).float()

    def mean(mask: torch.Tensor) -> float | None:
        return float(correct[mask].mean()) if bool(mask.any()) else None

    own = (
        torch.ones_like(labels, dtype=torch.bool)
        if classes is None
        else torch.isin(labels, torch.as_tensor(list(classes), device=labels.device))
    )
    return {"acc": mean(torch.ones_like(own)), "acc_own": mean(own), "acc_rest": mean(~own)}


@dataclass
class _TeacherData:
    """The tensors one teacher is trained and selected on (subset and relabelled as the recipe
    says), and the untouched test split it is reported on."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _teacher_data(splits: Any, device: torch.device, classes: tuple[int, ...] | None, label_map: list[int] | None) -> _TeacherData:
    def select(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = images.to(device), labels.to(device)
        if classes is not None:
            keep = torch.isin(labels, torch.as_tensor(classes, device=device))
            images, labels = images[keep], labels[keep]
        if label_map is not None:
            labels = torch.as_tensor(label_map, device=device)[labels]
        return images, labels

    train_x, train_y = select(splits.train_images, splits.train_labels)
    val_x, val_y = select(splits.val_images, splits.val_labels)
    if train_x.shape[0] == 0:
        raise ValueError(f"no training images of classes {list(classes or [])} in {splits.name}")
    return _TeacherData(train_x, train_y, val_x, val_y, splits.test_images.to(device), splits.test_labels.to(device))


@dataclass
class _Progress:
    """What a (possibly resumed) training run has done so far."""

    epoch: int = 0
    best_val: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _restore_partial(
    partial: Path,
    config: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> _Progress:
    """Load an interrupted run's state into ``model``/``optimizer``/``generator`` (raises if it
    does not belong to this run)."""
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
    return _Progress(
        epoch=int(saved["epoch"]),
        best_val=float(saved["best_val_acc"]),
        best_epoch=int(saved["best_epoch"]),
        best_state=saved["best_state"],
        history=list(saved["history"]),
        elapsed=float(saved.get("train_time_s", 0.0)),
    )


def _save_partial(
    partial: Path,
    config: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
    progress: _Progress,
) -> None:
    atomic_torch_save(
        {
            "format": PARTIAL_FORMAT,
            "config": config,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "rng": _rng_state(device),
            "epoch": progress.epoch,
            "best_val_acc": progress.best_val,
            "best_epoch": progress.best_epoch,
            "best_state": progress.best_state,
            "history": progress.history,
            "train_time_s": progress.elapsed,
        },
        partial,
    )


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: _TeacherData,
    transform: Any,
    generator: torch.Generator,
    batch_size: int,
    channels_last: bool,
    description: str,
    progress: bool,
) -> float:
    """One epoch of SGD on cross-entropy; returns the mean training loss."""
    from tqdm.auto import tqdm

    from kd_env.data import batch_indices

    device = data.train_x.device
    num_train = int(data.train_x.shape[0])
    drop_last = num_train % batch_size == 1  # a batch of one breaks BatchNorm
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    batches = batch_indices(num_train, batch_size, generator, shuffle=True, drop_last=drop_last)
    seen = 0
    for idx in tqdm(batches, desc=description, leave=False, disable=not progress, mininterval=1.0, dynamic_ncols=True):
        idx = idx.to(device)
        x = _prepare(transform(data.train_x[idx], generator, train=True), channels_last)
        y = data.train_y[idx].long()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * y.shape[0]
        seen += y.shape[0]
    return float(loss_sum.item()) / max(1, seen)


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
    classes: Sequence[int] | None = None,
    relabel: int | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | Any | None = None,
    data_root: str | Any | None = None,
    download: bool = False,
    path: str | Any | None = None,
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
        classes: train (and select the best epoch) only on these classes' images: a specialist.
        relabel: train on labels moved by :func:`~kd_env.teachers.recipes.derangement` with this
            seed: a confidently, systematically wrong teacher.
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
        image_shape, epochs, seed, batch_size, lr, recipe (classes, relabel, label_map),
        val_acc (best, on the labels trained with), best_epoch, test_acc / test_acc_own /
        test_acc_rest (of the best-val weights, on the true labels), history, train_time_s,
        versions, created, sha256.
    """
    from tqdm.auto import tqdm

    from kd_env.data import BatchTransform, default_augmentation, load_dataset
    from kd_env.models import create_model

    from .recipes import TeacherRecipe

    device = torch.device(device)
    splits = load_dataset(dataset, data_root, download=download, device=device) if isinstance(dataset, str) else dataset
    dataset_name = str(splits.name)
    num_classes = int(splits.num_classes)
    recipe = default_recipe(arch, dataset_name)
    epochs = int(recipe["epochs"] if epochs is None else epochs)
    batch_size = int(recipe["batch_size"] if batch_size is None else batch_size)
    lr = float(recipe["lr"] if lr is None else lr)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    data_recipe = TeacherRecipe(arch, seed=seed, classes=None if classes is None else tuple(classes), relabel=relabel)
    if data_recipe.classes is not None and not all(0 <= c < num_classes for c in data_recipe.classes):
        raise ValueError(f"classes {list(data_recipe.classes)} out of range for {dataset_name} ({num_classes} classes)")
    label_map = None if relabel is None else derangement(num_classes, relabel)
    path = Path(path) if path is not None else teacher_path(data_recipe.name, dataset_name, seed, cache_dir)
    partial = _partial_path(path)
    data = _teacher_data(splits, device, data_recipe.classes, label_map)
    in_channels = int(data.train_x.shape[1])
    # image_size reaches only the factories that depend on it (e.g. mlp); it is stored so that
    # load_teacher rebuilds the same model
    model_kwargs = {"image_size": int(data.train_x.shape[-1]), **(model_kwargs or {})}
    transform = BatchTransform(splits.mean, splits.std, **default_augmentation(dataset_name))

    config = {
        "arch": arch,
        "dataset": dataset_name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "num_train": int(data.train_x.shape[0]),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "seed": int(seed),
        "model_kwargs": model_kwargs,
        "recipe": data_recipe.to_metadata(num_classes),
    }

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
        torch.manual_seed(seed)
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels, **model_kwargs).to(device)
        if use_channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        return model, optimizer, torch.Generator(device=device).manual_seed(seed)

    probe = create_model(arch, num_classes=num_classes, in_channels=in_channels, **model_kwargs)
    use_channels_last = (device.type == "cpu" and _uses_conv(probe)) if channels_last is None else channels_last
    model, optimizer, generator = fresh()
    state = _Progress()
    if partial.exists() and not resume:
        partial.unlink()
    if partial.exists():
        try:
            state = _restore_partial(partial, config, model, optimizer, generator, device)
            if progress:
                print(f"[kd_env] resuming {data_recipe.name} on {dataset_name} from epoch {state.epoch + 1}/{epochs} ({partial})")
        except Exception as exc:
            warnings.warn(f"ignoring partial teacher state {str(partial)!r} and starting over: {exc}", stacklevel=2)
            model, optimizer, generator = fresh()
            state = _Progress()

    eval_kwargs: dict[str, Any] = {"batch_size": eval_batch_size, "channels_last": use_channels_last}
    has_val = int(data.val_x.shape[0]) > 0
    bar = tqdm(
        total=epochs, initial=state.epoch, desc=f"{data_recipe.name}@{dataset_name}", unit="ep", disable=not progress, dynamic_ncols=True
    )
    started = time.perf_counter() - state.elapsed
    try:
        for epoch in range(state.epoch, epochs):
            epoch_lr = lr_for_epoch(lr, epoch, epochs)
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr
            train_loss = _train_epoch(
                model, optimizer, data, transform, generator, batch_size, use_channels_last, f"epoch {epoch + 1}", progress
            )
            if not torch.isfinite(torch.tensor(train_loss)):
                raise FloatingPointError(f"training {arch} diverged at epoch {epoch + 1} (loss {train_loss})")
            # no validation split (val_fraction=0): keep the last epoch
            val_acc = evaluate_accuracy(model, data.val_x, data.val_y, transform, **eval_kwargs) if has_val else float("nan")
            if not has_val or val_acc > state.best_val:
                state.best_val, state.best_epoch, state.best_state = val_acc, epoch + 1, _cpu_state_dict(model)
            state.history.append({"epoch": epoch + 1, "lr": epoch_lr, "train_loss": train_loss, "val_acc": val_acc if has_val else None})
            state.epoch, state.elapsed = epoch + 1, time.perf_counter() - started
            _save_partial(partial, config, model, optimizer, generator, device, state)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.4f}", best=f"{state.best_val:.4f}", lr=f"{epoch_lr:.3g}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, {"loss": train_loss, "val_acc": val_acc, "lr": epoch_lr, "best_val_acc": state.best_val})
    finally:
        bar.close()

    assert state.best_state is not None
    model.load_state_dict(state.best_state)
    predictions = predict_classes(model, data.test_x, transform, **eval_kwargs)
    test = accuracy_by_class_group(predictions, data.test_y, data_recipe.classes)
    metadata = {
        **{k: v for k, v in config.items() if k != "num_train"},
        "image_shape": [int(s) for s in data.train_x.shape[1:]],
        "val_acc": state.best_val if has_val else None,
        "best_epoch": state.best_epoch,
        "test_acc": test["acc"] if test["acc"] is not None else 0.0,
        "test_acc_own": test["acc_own"],
        "test_acc_rest": test["acc_rest"],
        "mean": [float(m) for m in torch.as_tensor(splits.mean).flatten().tolist()],
        "std": [float(s) for s in torch.as_tensor(splits.std).flatten().tolist()],
        "augmentation": {
            k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in default_augmentation(dataset_name).items()
        },
        "history": state.history,
        "train_time_s": time.perf_counter() - started,
        "device": str(device),
    }
    save_teacher(state.best_state, path, metadata)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    if progress:
        print(
            f"[kd_env] {data_recipe.name} on {dataset_name}: val acc {state.best_val:.4f} (epoch {state.best_epoch}), test acc {metadata['test_acc']:.4f} -> {path}"
        )
    return path
