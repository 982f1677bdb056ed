"""Dataset names and the kd-env cache folder: the parts of the data layer that need neither
torch nor torchvision.

Kept apart from :mod:`kd_env.data.sources` so that ``import kd_env`` and an env on data held
as tensors (the synthetic dataset, or splits built in memory) never import torchvision: its
import pulls in ``torch._dynamo`` and sympy, about 165 MB of resident memory and 3 s per
process, paid again by every subprocess worker. ``sources`` (which reads files through
torchvision's dataset classes) is imported only on the paths that read a dataset from disk.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["DATASET_NAMES", "DatasetNotFoundError", "canonical_name", "default_cache_dir"]

#: Datasets read from disk (``"synthetic"`` is generated in memory, see ``tensors.make_synthetic``).
DATASET_NAMES: tuple[str, ...] = ("cifar100", "cifar10", "fashion_mnist")

# Accepted spellings -> canonical name. Users type "fashion-mnist" or "CIFAR-100" as often as
# the canonical form, and a KeyError for a hyphen would be a poor first experience.
_ALIASES: dict[str, str] = {
    "cifar100": "cifar100",
    "cifar10": "cifar10",
    "fashionmnist": "fashion_mnist",
    "fmnist": "fashion_mnist",
    "synthetic": "synthetic",
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files were found nowhere and downloading was not requested.

    The message lists every place looked (and why each was rejected) and the ways to provide
    the files.
    """


def canonical_name(name: str) -> str:
    """Return the canonical dataset name (``"cifar100"``, ``"cifar10"``, ``"fashion_mnist"``,
    ``"synthetic"``) for any common spelling, e.g. ``"CIFAR-100"`` or ``"fashion-mnist"``.

    Raises:
        ValueError: the name is not a supported dataset.
    """
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    try:
        return _ALIASES[key]
    except KeyError:
        known = ", ".join(repr(n) for n in (*DATASET_NAMES, "synthetic"))
        raise ValueError(f"unknown dataset {name!r}; expected one of {known}") from None


def default_cache_dir() -> Path:
    """Folder for kd-env's cached files (prepared datasets live under ``<cache>/data``).

    ``$KD_ENV_CACHE`` if set; otherwise the platform's user cache folder: ``$XDG_CACHE_HOME/kd_env``
    or ``~/.cache/kd_env`` on Linux, ``~/Library/Caches/kd_env`` on macOS and
    ``%LOCALAPPDATA%\\kd_env\\Cache`` on Windows. Computed here rather than with platformdirs to
    avoid a dependency for three lines. The folder is not created.
    """
    override = os.environ.get("KD_ENV_CACHE")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        root = Path(base) if base else Path.home() / "AppData" / "Local"
        return root / "kd_env" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "kd_env"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # XDG says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "kd_env"
