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

from kd_env.checkpoint_format import read_checkpoint, write_checkpoint
from kd_env.engine.modes import student_autograd

from .evaluation import accuracy_by_class_group, channels_last_input, evaluate_accuracy, predict_classes, uses_conv
from .recipes import default_recipe, derangement, lr_for_epoch
from .teacher_files import _cpu_state_dict, _partial_path, save_teacher, teacher_path

PARTIAL_FORMAT = "kd_env.teacher_partial/1"


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
    saved = read_checkpoint(partial, PARTIAL_FORMAT, what="partial teacher state", fix="delete it, or train with resume=False")
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
    write_checkpoint(
        partial,
        PARTIAL_FORMAT,
        {
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
        x = channels_last_input(transform(data.train_x[idx], generator, train=True), channels_last)
        y = data.train_y[idx].long()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * y.shape[0]
        seen += y.shape[0]
    return float(loss_sum.item()) / max(1, seen)


@student_autograd()  # trained on first use, possibly while an env is built under a caller's no_grad
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
    from kd_env.data import load_dataset

    device = torch.device(device)
    splits = load_dataset(dataset, data_root, download=download, device=device) if isinstance(dataset, str) else dataset
    run = _set_up(
        arch,
        splits,
        {"epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "seed": seed},
        classes=classes,
        relabel=relabel,
        device=device,
        path=Path(path) if path is not None else None,
        cache_dir=cache_dir,
        channels_last=channels_last,
        eval_batch_size=eval_batch_size,
        model_kwargs=model_kwargs,
    )
    model, optimizer, generator, state = _start_or_resume(run, resume, progress)
    started = time.perf_counter() - state.elapsed
    _train_epochs(run, model, optimizer, generator, state, started, progress, on_epoch_end)
    _save_final(run, _final_metadata(run, splits, model, state, started), state, progress)
    return run.path


@dataclass
class _Run:
    """What one teacher's training is set up with; fixed for the run, resumed or not."""

    name: str
    """The recipe's name (the checkpoint's stem without the seed)."""
    dataset: str
    classes: tuple[int, ...] | None
    data: _TeacherData
    transform: Any
    config: dict[str, Any]
    """The settings a partial state must have been made with; the core of the final metadata."""
    device: torch.device
    channels_last: bool
    eval_batch_size: int
    path: Path
    partial: Path

    @property
    def eval_kwargs(self) -> dict[str, Any]:
        return {"batch_size": self.eval_batch_size, "channels_last": self.channels_last}


def _set_up(
    arch: str,
    splits: Any,
    hyper: dict[str, Any],
    *,
    classes: Sequence[int] | None,
    relabel: int | None,
    device: torch.device,
    path: Path | None,
    cache_dir: Any,
    channels_last: bool | None,
    eval_batch_size: int,
    model_kwargs: dict[str, Any] | None,
) -> _Run:
    """Resolve the recipe's defaults, check them, select the recipe's data and fix the run's config."""
    from kd_env.data import BatchTransform, default_augmentation
    from kd_env.models import create_model

    from .recipes import TeacherRecipe

    dataset_name, num_classes = str(splits.name), int(splits.num_classes)
    defaults = default_recipe(arch, dataset_name)
    epochs = int(defaults["epochs"] if hyper["epochs"] is None else hyper["epochs"])
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    seed = int(hyper["seed"])
    recipe = TeacherRecipe(arch, seed=seed, classes=None if classes is None else tuple(classes), relabel=relabel)
    if recipe.classes is not None and not all(0 <= c < num_classes for c in recipe.classes):
        raise ValueError(f"classes {list(recipe.classes)} out of range for {dataset_name} ({num_classes} classes)")
    label_map = None if relabel is None else derangement(num_classes, relabel)
    data = _teacher_data(splits, device, recipe.classes, label_map)
    in_channels = int(data.train_x.shape[1])
    # image_size reaches only the factories that depend on it (e.g. mlp); it is stored so that
    # load_teacher rebuilds the same model
    model_kwargs = {"image_size": int(data.train_x.shape[-1]), **(model_kwargs or {})}
    config = {
        "arch": arch,
        "dataset": dataset_name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "num_train": int(data.train_x.shape[0]),
        "epochs": epochs,
        "batch_size": int(defaults["batch_size"] if hyper["batch_size"] is None else hyper["batch_size"]),
        "lr": float(defaults["lr"] if hyper["lr"] is None else hyper["lr"]),
        "momentum": hyper["momentum"],
        "weight_decay": hyper["weight_decay"],
        "seed": seed,
        "model_kwargs": model_kwargs,
        "recipe": recipe.to_metadata(num_classes),
    }
    if channels_last is None:  # channels-last pays off for conv nets on CPU only
        probe = create_model(arch, num_classes=num_classes, in_channels=in_channels, **model_kwargs)
        channels_last = device.type == "cpu" and uses_conv(probe)
    path = path if path is not None else teacher_path(recipe.name, dataset_name, seed, cache_dir)
    return _Run(
        name=recipe.name,
        dataset=dataset_name,
        classes=recipe.classes,
        data=data,
        transform=BatchTransform(splits.mean, splits.std, **default_augmentation(dataset_name)),
        config=config,
        device=device,
        channels_last=bool(channels_last),
        eval_batch_size=eval_batch_size,
        path=path,
        partial=_partial_path(path),
    )


def _fresh(run: _Run) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    """A new model (seeded), its SGD optimizer and the batch-order generator."""
    from kd_env.models import create_model

    config = run.config
    torch.manual_seed(config["seed"])
    model = create_model(config["arch"], num_classes=config["num_classes"], in_channels=config["in_channels"], **config["model_kwargs"])
    model = model.to(run.device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"])
    return model, optimizer, torch.Generator(device=run.device).manual_seed(config["seed"])


def _start_or_resume(run: _Run, resume: bool, progress: bool) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator, _Progress]:
    """A fresh run, or the interrupted one from its partial file (a partial file that does not
    belong to this run is reported and ignored; with ``resume=False`` it is deleted)."""
    model, optimizer, generator = _fresh(run)
    if run.partial.exists() and not resume:
        run.partial.unlink()
    if not run.partial.exists():
        return model, optimizer, generator, _Progress()
    try:
        state = _restore_partial(run.partial, run.config, model, optimizer, generator, run.device)
    except Exception as exc:
        warnings.warn(f"ignoring partial teacher state {str(run.partial)!r} and starting over: {exc}", stacklevel=3)
        model, optimizer, generator = _fresh(run)
        return model, optimizer, generator, _Progress()
    if progress:
        epochs = run.config["epochs"]
        print(f"[kd_env] resuming {run.name} on {run.dataset} from epoch {state.epoch + 1}/{epochs} ({run.partial})")
    return model, optimizer, generator, state


def _train_epochs(
    run: _Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: _Progress,
    started: float,
    progress: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> None:
    """The remaining epochs: train, validate, keep the best weights, write the partial state."""
    from tqdm.auto import tqdm

    config, data = run.config, run.data
    epochs, lr = config["epochs"], config["lr"]
    has_val = int(data.val_x.shape[0]) > 0
    bar = tqdm(total=epochs, initial=state.epoch, desc=f"{run.name}@{run.dataset}", unit="ep", disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(state.epoch, epochs):
            epoch_lr = lr_for_epoch(lr, epoch, epochs)
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr
            train_loss = _train_epoch(
                model, optimizer, data, run.transform, generator, config["batch_size"], run.channels_last, f"epoch {epoch + 1}", progress
            )
            if not torch.isfinite(torch.tensor(train_loss)):
                raise FloatingPointError(f"training {config['arch']} diverged at epoch {epoch + 1} (loss {train_loss})")
            # no validation split (val_fraction=0): keep the last epoch
            val_acc = evaluate_accuracy(model, data.val_x, data.val_y, run.transform, **run.eval_kwargs) if has_val else float("nan")
            if not has_val or val_acc > state.best_val:
                state.best_val, state.best_epoch, state.best_state = val_acc, epoch + 1, _cpu_state_dict(model)
            state.history.append({"epoch": epoch + 1, "lr": epoch_lr, "train_loss": train_loss, "val_acc": val_acc if has_val else None})
            state.epoch, state.elapsed = epoch + 1, time.perf_counter() - started
            _save_partial(run.partial, config, model, optimizer, generator, run.device, state)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.4f}", best=f"{state.best_val:.4f}", lr=f"{epoch_lr:.3g}")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, {"loss": train_loss, "val_acc": val_acc, "lr": epoch_lr, "best_val_acc": state.best_val})
    finally:
        bar.close()


def _final_metadata(run: _Run, splits: Any, model: nn.Module, state: _Progress, started: float) -> dict[str, Any]:
    """Load the best-validation weights into ``model``, test them on the true labels, and
    describe the run (the checkpoint's metadata, before versions, creation time and checksum)."""
    from kd_env.data import default_augmentation

    assert state.best_state is not None
    model.load_state_dict(state.best_state)
    predictions = predict_classes(model, run.data.test_x, run.transform, **run.eval_kwargs)
    test = accuracy_by_class_group(predictions, run.data.test_y, run.classes)
    has_val = int(run.data.val_x.shape[0]) > 0
    return {
        **{k: v for k, v in run.config.items() if k != "num_train"},
        "image_shape": [int(s) for s in run.data.train_x.shape[1:]],
        "val_acc": state.best_val if has_val else None,
        "best_epoch": state.best_epoch,
        "test_acc": test["acc"] if test["acc"] is not None else 0.0,
        "test_acc_own": test["acc_own"],
        "test_acc_rest": test["acc_rest"],
        "mean": [float(m) for m in torch.as_tensor(splits.mean).flatten().tolist()],
        "std": [float(s) for s in torch.as_tensor(splits.std).flatten().tolist()],
        "augmentation": {
            k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in default_augmentation(run.dataset).items()
        },
        "history": state.history,
        "train_time_s": time.perf_counter() - started,
        "device": str(run.device),
    }


def _save_final(run: _Run, metadata: dict[str, Any], state: _Progress, progress: bool) -> None:
    """Write the checkpoint of the best-validation weights, then drop the partial state."""
    assert state.best_state is not None
    save_teacher(state.best_state, run.path, metadata)
    with contextlib.suppress(FileNotFoundError):
        run.partial.unlink()
    if progress:
        print(
            f"[kd_env] {run.name} on {run.dataset}: val acc {state.best_val:.4f} (epoch {state.best_epoch}), "
            f"test acc {metadata['test_acc']:.4f} -> {run.path}"
        )
