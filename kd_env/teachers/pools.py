"""Teacher pools: named sets of teachers, built from recipes, trained once and cached.

Built-in pools (the benchmark's *scenarios*; every one exists for every dataset):

* ``capacity``: the dataset's default pool (:data:`TEACHER_POOLS`), teachers of different
  capacity trained on all the data. The control: no teacher is wrong in a structured way.
* ``noisy``: one good teacher and three trained on fixed label derangements (each class mapped
  to another one): confident and systematically wrong. The best weighting trusts the good one.
* ``specialists``: four teachers, each trained only on its own quarter of the classes
  (Fashion-MNIST: {0,1,2} {3,4,5} {6,7} {8,9}): accurate there, confidently wrong elsewhere. The
  best weighting routes each sample to its class's specialist.
* ``overlap``: three teachers, each trained on a window of half the classes, the windows
  overlapping (Fashion-MNIST: {0-4} {3-7} {7-9,0,1}): some classes have two competent teachers,
  some one. The best weighting routes, sharing where two are right.
* ``mixed``: five teachers of three kinds: one generalist, two specialists on the two halves of
  the classes, two relabelled (confidently wrong). The best weighting trusts the generalist and
  the specialist of the sample's half, never the relabelled ones.

The last two differ from the first three in K (3 and 5) and in structure, so that a policy
trained on some pools can be evaluated on one it never saw (issue #22).

Users add their own pools with :func:`register_pool` (checkpoint paths, or recipes that are
trained and cached like the built-in ones).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .recipes import TEACHER_POOLS, TeacherRecipe
from .teacher_files import TeacherCheckpointError, TeacherNotFoundError, teacher_path, teachers_dir, verify_teacher

PathLike = str | os.PathLike

#: The architecture and epochs of the scenario pools' teachers per dataset: small, quick nets on
#: the CPU datasets (a Fashion-MNIST MLP trains an epoch in about a second); a ResNet on CIFAR.
SCENARIO_TEACHER: dict[str, tuple[str, int | None]] = {
    "fashion_mnist": ("mlp", 3),
    "synthetic": ("mlp", 3),
    "cifar10": ("resnet8x4", None),
    "cifar100": ("resnet8x4", None),
}
NUM_SPECIALISTS = 4
NUM_WRONG_TEACHERS = 3


def _scenario_teacher(dataset: str) -> tuple[str, int | None]:
    return SCENARIO_TEACHER.get(dataset, ("mlp", None))


def capacity_recipes(dataset: str, num_classes: int) -> list[TeacherRecipe]:
    """The dataset's default pool (today's teachers)."""
    if dataset not in TEACHER_POOLS:
        raise KeyError(f"no default teacher pool for dataset {dataset!r}; known: {sorted(TEACHER_POOLS)}")
    return [TeacherRecipe(arch) for arch in TEACHER_POOLS[dataset]]


def noisy_recipes(dataset: str, num_classes: int) -> list[TeacherRecipe]:
    """One good teacher (seed 0) and three relabelled by derangements (seeds 1-3)."""
    arch, epochs = _scenario_teacher(dataset)
    good = TeacherRecipe(arch, epochs=epochs, seed=0)
    return [good] + [TeacherRecipe(arch, epochs=epochs, seed=k, relabel=k) for k in range(1, NUM_WRONG_TEACHERS + 1)]


def specialist_groups(num_classes: int, groups: int = NUM_SPECIALISTS) -> list[tuple[int, ...]]:
    """Contiguous, near-equal class groups: 10 classes -> (0,1,2) (3,4,5) (6,7) (8,9)."""
    if num_classes < groups:
        raise ValueError(f"{groups} specialists need at least {groups} classes, the dataset has {num_classes}")
    base, extra = divmod(num_classes, groups)
    bounds, start = [], 0
    for index in range(groups):
        size = base + (1 if index < extra else 0)
        bounds.append(tuple(range(start, start + size)))
        start += size
    return bounds


def specialists_recipes(dataset: str, num_classes: int) -> list[TeacherRecipe]:
    """Four teachers, each trained only on its own quarter of the classes."""
    arch, epochs = _scenario_teacher(dataset)
    return [TeacherRecipe(arch, epochs=epochs, seed=k, classes=group) for k, group in enumerate(specialist_groups(num_classes))]


NUM_OVERLAP_TEACHERS = 3


def overlap_groups(num_classes: int, groups: int = NUM_OVERLAP_TEACHERS) -> list[tuple[int, ...]]:
    """``groups`` windows of ``ceil(C / 2)`` consecutive classes (wrapping around), starting at
    evenly spaced classes: 10 classes -> (0-4) (3-7) (7-9, 0, 1). Every class is in at least one
    window; with ``groups >= 3`` some are in two."""
    if num_classes < groups:
        raise ValueError(f"{groups} overlapping teachers need at least {groups} classes, the dataset has {num_classes}")
    size = -(-num_classes // 2)  # ceil
    starts = [round(index * num_classes / groups) for index in range(groups)]
    return [tuple(sorted((start + offset) % num_classes for offset in range(size))) for start in starts]


def overlap_recipes(dataset: str, num_classes: int) -> list[TeacherRecipe]:
    """Three teachers, each trained on its window of half the classes, the windows overlapping."""
    arch, epochs = _scenario_teacher(dataset)
    return [TeacherRecipe(arch, epochs=epochs, seed=k, classes=group) for k, group in enumerate(overlap_groups(num_classes))]


def mixed_recipes(dataset: str, num_classes: int) -> list[TeacherRecipe]:
    """Five teachers: a generalist (seed 0), specialists on the lower and upper half of the
    classes (seeds 1, 2), and two relabelled by derangements (seeds 3, 4)."""
    arch, epochs = _scenario_teacher(dataset)
    half = num_classes // 2
    return [
        TeacherRecipe(arch, epochs=epochs, seed=0),
        TeacherRecipe(arch, epochs=epochs, seed=1, classes=tuple(range(half))),
        TeacherRecipe(arch, epochs=epochs, seed=2, classes=tuple(range(half, num_classes))),
        TeacherRecipe(arch, epochs=epochs, seed=3, relabel=3),
        TeacherRecipe(arch, epochs=epochs, seed=4, relabel=4),
    ]


@dataclass(frozen=True)
class PoolSpec:
    """A named teacher pool: recipes (trained and cached on first use) or checkpoint paths.

    Args:
        name: the pool's name (``pool=`` of the envs, ``--pool`` of the CLI).
        description: one line, shown in listings and reports.
        recipes: ``(dataset, num_classes) -> [TeacherRecipe, ...]``; or ``None`` with ``paths``.
        paths: teacher checkpoint files (a fixed pool); or ``None`` with ``recipes``.
    """

    name: str
    description: str
    recipes: Callable[[str, int], list[TeacherRecipe]] | None = None
    paths: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.recipes is None) == (self.paths is None):
            raise ValueError(f"pool {self.name!r}: give exactly one of recipes= or paths=")


POOLS: dict[str, PoolSpec] = {
    "capacity": PoolSpec("capacity", "the dataset's default pool: teachers of different capacity (the control)", capacity_recipes),
    "noisy": PoolSpec("noisy", "one good teacher + three trained on label derangements (confidently wrong)", noisy_recipes),
    "specialists": PoolSpec("specialists", "four teachers, each trained only on its quarter of the classes", specialists_recipes),
    "overlap": PoolSpec(
        "overlap", "three teachers on overlapping windows of half the classes (one or two competent per class)", overlap_recipes
    ),
    "mixed": PoolSpec("mixed", "a generalist, two half-class specialists and two relabelled teachers (K = 5)", mixed_recipes),
}


def register_pool(
    name: str,
    *,
    recipes: Callable[[str, int], list[TeacherRecipe]] | Sequence[TeacherRecipe] | None = None,
    paths: Sequence[PathLike] | None = None,
    description: str = "",
    overwrite: bool = False,
) -> PoolSpec:
    """Add a teacher pool that the envs (``pool=name``), ``kd-env train`` and ``kd-env bench`` accept.

    Args:
        name: the pool's name.
        recipes: a list of :class:`TeacherRecipe` (trained and cached on first use, like the
            built-in pools), or a function ``(dataset, num_classes) -> list`` for a pool that
            adapts to the dataset.
        paths: teacher checkpoint files instead (they must share one dataset and class count;
            checked when an env is built).
        description: one line for listings.
        overwrite: replace an existing pool of that name (built-in pools included).

    Example::

        kd_env.register_pool("mine", paths=["ckpt/a.pt", "ckpt/b.pt"])
        env = gym.make("MultiTeacherKD-FashionMNIST-v0", pool="mine")
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a pool needs a non-empty name, got {name!r}")
    if name in POOLS and not overwrite:
        raise ValueError(f"a pool named {name!r} exists already ({POOLS[name].description}); pass overwrite=True to replace it")
    if recipes is not None and not callable(recipes):
        fixed = list(recipes)
        if not fixed or not all(isinstance(r, TeacherRecipe) for r in fixed):
            raise TypeError(f"pool {name!r}: recipes must be a non-empty list of TeacherRecipe or a function")
        recipe_fn: Callable[[str, int], list[TeacherRecipe]] | None = lambda dataset, num_classes: list(fixed)  # noqa: E731
    else:
        recipe_fn = recipes
    if paths is not None and not list(paths):
        raise ValueError(f"pool {name!r}: paths is empty")
    spec = PoolSpec(name, description or name, recipe_fn, None if paths is None else tuple(str(p) for p in paths))
    POOLS[name] = spec
    return spec


def get_pool(name: str) -> PoolSpec:
    """The pool called ``name`` (``ValueError`` naming the known pools otherwise)."""
    if name not in POOLS:
        raise ValueError(
            f"unknown teacher pool {name!r}; known pools: {', '.join(sorted(POOLS))}. "
            "Add your own with kd_env.register_pool(name, paths=[...] or recipes=[...])"
        )
    return POOLS[name]


def pool_members(
    name: str, dataset: str, num_classes: int, *, seed: int = 0, cache_dir: PathLike | None = None
) -> list[tuple[str, Path, TeacherRecipe | None]]:
    """``(teacher name, checkpoint path, recipe or None)`` for every teacher of a pool.

    ``seed`` is added to each recipe's seed (``teacher_seed`` of the envs): another draw of the
    same pool.
    """
    spec = get_pool(name)
    if spec.paths is not None:
        return [(Path(p).stem, Path(p), None) for p in spec.paths]
    assert spec.recipes is not None
    members: list[tuple[str, Path, TeacherRecipe | None]] = []
    for recipe in spec.recipes(dataset, num_classes):
        shifted = TeacherRecipe(recipe.arch, recipe.epochs, recipe.seed + seed, recipe.classes, recipe.relabel)
        members.append((shifted.name, teacher_path(shifted.name, dataset, shifted.seed, cache_dir), shifted))
    return members


def train_pool_member(
    recipe: TeacherRecipe, splits: Any, path: Path, *, device: Any = "cpu", progress: bool = True, **overrides: Any
) -> Path:
    """Train one recipe's teacher on loaded ``splits`` into ``path``.

    ``overrides`` go to :func:`~kd_env.teachers.training.train_teacher` (``epochs``,
    ``batch_size``, ``lr``, ``resume``; ``None`` values keep the recipe's).
    """
    from .training import train_teacher

    overrides = {key: value for key, value in overrides.items() if value is not None}
    overrides.setdefault("epochs", recipe.epochs)
    return train_teacher(
        recipe.arch,
        splits,
        seed=recipe.seed,
        classes=recipe.classes,
        relabel=recipe.relabel,
        device=device,
        path=path,
        progress=progress,
        **overrides,
    )


def pool_train_command(name: str, dataset: str, *, seed: int = 0, cache_dir: PathLike | None = None) -> str:
    """The shell command that trains a pool's missing teachers."""
    command = f"kd-env teachers train --dataset {dataset} --pool {name}"
    if seed:
        command += f" --seed {seed}"
    if cache_dir is not None:
        command += f" --cache-dir {cache_dir}"
    return command


def ensure_pool(
    name: str,
    splits: Any,
    *,
    seed: int = 0,
    cache_dir: PathLike | None = None,
    train_missing: bool = False,
    device: Any = "cpu",
    progress: bool = True,
) -> list[tuple[str, Path]]:
    """``(teacher name, checkpoint path)`` of a pool on loaded ``splits``, training missing ones on request.

    Raises:
        TeacherNotFoundError: teachers are missing and ``train_missing`` is False (the message
            lists them and gives the command that trains them), or a fixed pool's file is missing.
    """
    members = pool_members(name, str(splits.name), int(splits.num_classes), seed=seed, cache_dir=cache_dir)
    missing = [(member, path, recipe) for member, path, recipe in members if not path.is_file()]
    if missing and (not train_missing or any(recipe is None for _, _, recipe in missing)):
        listing = "\n".join(f"  {path}" for _, path, _ in missing)
        fix = (
            "Train them with:\n  " + pool_train_command(name, str(splits.name), seed=seed, cache_dir=cache_dir)
            if all(recipe is not None for _, _, recipe in missing)
            else "Check the paths given to kd_env.register_pool."
        )
        raise TeacherNotFoundError(
            f"{len(missing)} of {len(members)} teachers of pool {name!r} ({splits.name}) are missing:\n{listing}\n{fix}"
        )
    for _, path, recipe in missing:
        assert recipe is not None
        train_pool_member(recipe, splits, path, device=device, progress=progress)
    return [(member, path) for member, path, _ in members]


def ensure_teacher_pool(
    dataset: str,
    archs: Sequence[str] | None = None,
    *,
    seed: int = 0,
    cache_dir: PathLike | None = None,
    train_missing: bool = False,
    data_root: PathLike | None = None,
    download: bool = False,
    device: Any = "cpu",
    epochs: int | dict[str, int] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Paths of plain teachers of ``dataset`` (default: the ``capacity`` pool's architectures),
    training missing ones on request.

    Raises:
        TeacherNotFoundError: some files are missing and ``train_missing`` is False; the message
            lists them and gives the command that trains them.
    """
    from .teacher_files import train_command
    from .training import train_teacher

    if archs is None:
        if dataset not in TEACHER_POOLS:
            raise KeyError(f"no default teacher pool for dataset {dataset!r}; known: {sorted(TEACHER_POOLS)}; pass archs=")
        archs = TEACHER_POOLS[dataset]
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


def list_teachers(cache_dir: PathLike | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
    """Metadata of every teacher checkpoint in the cache (each dict gains a ``path`` key).

    Every file's weights are checked against their SHA-256 (a flipped byte is reported, not
    listed as healthy); unreadable or damaged files are listed with an ``error`` key (and
    ``unreadable: True`` for a permission problem) instead of raising. Partial (in-progress)
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
            meta = verify_teacher(file)
        except TeacherCheckpointError as exc:
            meta = {"dataset": file.parent.name, "arch": file.stem, "error": str(exc), "unreadable": isinstance(exc, PermissionError)}
        meta["path"] = str(file)
        entries.append(meta)
    return entries
