"""Finding dataset files on disk and reading them into uint8 tensors.

torchvision's dataset classes do all downloading, md5 checking and file parsing; this module
only decides *where* the files are (and never downloads unless asked) and turns what
torchvision read into ``[N, C, H, W]`` uint8 / ``[N]`` int64 tensors in one vectorised op.

Search order used by :func:`find_data_root` for a dataset:

1. the explicit ``data_root`` argument,
2. ``$KD_ENV_DATA``,
3. ``default_cache_dir() / "data"``,
4. known system folders (:data:`SYSTEM_DATA_DIRS`, e.g. Debian's ``dataset-fashion-mnist``
   package at ``/usr/share/datasets/fashion-mnist``),
5. a download through torchvision (``download=True``) -- only when the caller asks for it,
6. otherwise :class:`DatasetNotFoundError`, whose message lists every place looked and how to
   provide the files.

CIFAR checksums: by default the files are read with torchvision's own ``CIFAR10`` /
``CIFAR100`` classes, which check every file against the official md5 sums -- so a corrupted
or truncated download is refused instead of silently training on garbage. Files that are not
the official ones (for instance the small files a test suite writes in the same format) are
refused too; for those, pass ``verify_checksums=False``, which reads through
``_UncheckedCIFAR10`` / ``_UncheckedCIFAR100``: subclasses whose file lists carry ``md5=None``
(torchvision's ``check_integrity`` then only checks that each file exists). Verification is a
per-call opt-out rather than a global switch so real runs can never lose it by accident.

Fashion-MNIST checksums: torchvision only knows md5 sums of the *compressed* upstream
downloads, and Debian's package recompressed those files (its ``.gz`` sums differ while the
decompressed bytes are the originals), so the *decompressed arrays* are checked instead: the
SHA-256 of each file's pixels or labels (the bytes after the idx header) must equal
:data:`FASHION_MNIST_SHA256`, computed once from the release (about 0.1 s per read). A file that
cannot be decompressed or parsed, or whose content differs, raises :class:`DataFileError`
naming the file and the fix. ``verify_checksums=False`` skips the content check, for files in
the same format that are not the release (test fixtures).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST
from torchvision.datasets.utils import check_integrity

# names and the cache folder live in the torch-free .names (so that importing kd_env does not
# import torchvision); re-exported here, where they always were
from .names import (
    DATASET_NAMES,
    DatasetNotFoundError,
    canonical_name,
    default_cache_dir,
)

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_SHA256",
    "SYSTEM_DATA_DIRS",
    "DataFileError",
    "DatasetNotFoundError",
    "RawDataset",
    "canonical_name",
    "default_cache_dir",
    "find_data_root",
    "read_dataset",
]

#: Read-only folders where a system package installs a dataset. Consulted after the user's own
#: folders; looked up at call time, so tests can monkeypatch it.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

# The four idx files torchvision's FashionMNIST reader opens from <root>/FashionMNIST/raw/.
_FASHION_FILES: tuple[str, ...] = tuple(name[: -len(".gz")] for name, _ in FashionMNIST.resources)


# --------------------------------------------------------------------------------------------
# Layout checks: does a folder hold a dataset in a form torchvision can read?
# --------------------------------------------------------------------------------------------


def _cifar_class(name: str, verify_checksums: bool) -> type[CIFAR10]:
    if name == "cifar100":
        return CIFAR100 if verify_checksums else _UncheckedCIFAR100
    return CIFAR10 if verify_checksums else _UncheckedCIFAR10


def _cifar_files(cls: type[CIFAR10]) -> list[str]:
    return [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _missing_cifar(root: Path, name: str) -> list[str]:
    """Relative paths of the CIFAR files missing under ``root`` (existence only; md5 is
    checked by torchvision when reading)."""
    cls = _cifar_class(name, verify_checksums=True)
    folder = root / cls.base_folder
    return [f"{cls.base_folder}/{f}" for f in _cifar_files(cls) if not (folder / f).is_file()]


def _fashion_ready(root: Path) -> bool:
    """True if ``root`` is in torchvision's layout: uncompressed files in FashionMNIST/raw/."""
    raw = root / "FashionMNIST" / "raw"
    return all((raw / f).is_file() for f in _FASHION_FILES)


def _fashion_sources(folder: Path) -> dict[str, Path] | None:
    """Map each idx file name to a file (plain or ``.gz``) holding it inside ``folder``.

    Accepts the flat layout of the upstream release and of Debian's package (the four
    ``*-ubyte.gz`` next to each other) and torchvision's ``FashionMNIST/raw/`` with only the
    ``.gz`` files left. Returns None unless all four are present.
    """
    found: dict[str, Path] = {}
    for base in _FASHION_FILES:
        for candidate in (
            folder / base,
            folder / f"{base}.gz",
            folder / "FashionMNIST" / "raw" / f"{base}.gz",
        ):
            if candidate.is_file():
                found[base] = candidate
                break
        else:
            return None
    return found


#: SHA-256 of the decompressed Fashion-MNIST arrays: the bytes after each idx file's header
#: (pixels as uint8, row-major; labels as uint8), computed from Debian's ``dataset-fashion-mnist``,
#: whose decompressed files are the upstream release's.
FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "train-labels-idx1-ubyte": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "t10k-images-idx3-ubyte": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "t10k-labels-idx1-ubyte": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}


class DataFileError(RuntimeError):
    """A dataset file is damaged: it cannot be decompressed or parsed, or its content differs
    from the release's checksum. The message names the file and how to replace it."""


def _replace_advice(path: Path) -> str:
    cache = default_cache_dir() / "data"
    with_cache = ""
    try:
        if path.resolve().is_relative_to(cache.resolve()):
            with_cache = f"it is kd-env's prepared copy: delete {path.parent} and it is prepared again from the source files; "
    except OSError:
        pass
    return (
        f"Fix: {with_cache}replace the file with the release's (Debian: apt-get install --reinstall "
        "dataset-fashion-mnist; or kd-env data fetch fashion_mnist --download into an empty folder)"
    )


def _atomic_write_from(source: Path, target: Path) -> None:
    """Write ``source`` (decompressed if it ends in .gz) to ``target`` via temp file + rename.

    A concurrent reader (another run sharing the cache) therefore sees either no file or the
    complete file, never a half-written one; two concurrent writers both produce the same
    bytes, and the last rename wins harmlessly.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        opener = gzip.open if source.suffix == ".gz" else open
        with os.fdopen(fd, "wb") as out, opener(source, "rb") as src:
            try:
                shutil.copyfileobj(src, out, length=1 << 20)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # the source, not the target
                raise DataFileError(
                    f"{source} cannot be decompressed ({type(exc).__name__}: {exc}): it is truncated or corrupt. " + _replace_advice(source)
                ) from None
        # mkstemp creates 0600; a shared cache should be readable by other users' runs.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _prepare_fashion(sources: dict[str, Path], cache_data: Path) -> Path:
    """Put the four idx files into ``<cache_data>/FashionMNIST/raw/`` and return ``cache_data``.

    Files already there are kept (they were written atomically, so they are complete).
    """
    raw = cache_data / "FashionMNIST" / "raw"
    for base, source in sources.items():
        target = raw / base
        if not target.is_file():
            _atomic_write_from(source, target)
    return cache_data


# --------------------------------------------------------------------------------------------
# The finder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    label: str  # where this candidate came from, for the error message
    path: Path | None  # None: not configured (e.g. $KD_ENV_DATA unset)


def _candidate_places(name: str, data_root: str | os.PathLike[str] | None) -> list[_Place]:
    env = os.environ.get("KD_ENV_DATA")
    places = [
        _Place("data_root argument", Path(data_root).expanduser() if data_root is not None else None),
        _Place("$KD_ENV_DATA", Path(env).expanduser() if env else None),
        _Place("kd-env cache (default_cache_dir()/data)", default_cache_dir() / "data"),
    ]
    places += [_Place("system folder", p) for p in SYSTEM_DATA_DIRS.get(name, ())]
    return places


def _how_to_provide(name: str, download_target: Path) -> str:
    if name == "fashion_mnist":
        layout = (
            "the four files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (plain or .gz) either directly in "
            "the folder or under <folder>/FashionMNIST/raw/"
        )
        extra = ["  - on Debian/Ubuntu: apt-get install dataset-fashion-mnist (found automatically)"]
    else:
        cls = _cifar_class(name, verify_checksums=True)
        layout = f"<folder>/{cls.base_folder}/ with {', '.join(_cifar_files(cls))} (extract {cls.filename} from {cls.url} into the folder)"
        extra = []
    lines = [
        "How to provide the files:",
        f"  - put {layout}, then set KD_ENV_DATA=<folder> or pass data_root=<folder>",
        *extra,
        f"  - or pass download=True to let torchvision download them into {download_target}",
    ]
    return "\n".join(lines)


def find_data_root(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    verify_checksums: bool = True,
) -> Path:
    """Return the folder to hand to torchvision's dataset class as ``root`` for ``name``.

    See the module docstring for the search order. For Fashion-MNIST, a folder holding only
    compressed or flat files (e.g. Debian's ``/usr/share/datasets/fashion-mnist``) is prepared
    into ``default_cache_dir()/data/FashionMNIST/raw/`` (decompressed, atomically) and the cache
    folder is returned, since the source may be read-only and torchvision wants the
    uncompressed files in its own layout.

    Args:
        name: dataset name (any spelling :func:`canonical_name` accepts), not ``"synthetic"``.
        data_root: folder tried first.
        download: if nothing is found, download with torchvision into the first configured
            place (``data_root``, else ``$KD_ENV_DATA``, else the cache). Never done otherwise.
        verify_checksums: only used when downloading: which CIFAR class runs the download (see
            the module docstring).

    Raises:
        DatasetNotFoundError: nothing found and ``download`` is False.
    """
    name = canonical_name(name)
    if name == "synthetic":
        raise ValueError("the synthetic dataset is generated in memory and has no data root")

    places = _candidate_places(name, data_root)
    looked: list[str] = []
    for place in places:
        if place.path is None:
            looked.append(f"  - {place.label}: not set")
            continue
        path = place.path
        if name == "fashion_mnist":
            if _fashion_ready(path):
                return path
            sources = _fashion_sources(path)
            if sources is not None:
                return _prepare_fashion(sources, default_cache_dir() / "data")
            looked.append(f"  - {place.label}: {path} (no Fashion-MNIST idx files)")
        else:
            missing = _missing_cifar(path, name)
            if not missing:
                return path
            looked.append(f"  - {place.label}: {path} (missing {', '.join(missing)})")

    # The first configured place is where the user expects data to live.
    target = next(p.path for p in places if p.path is not None)
    if download:
        _download(name, target, verify_checksums)
        return target

    raise DatasetNotFoundError(
        f"{name} not found (download=False, so nothing was downloaded). Looked in:\n"
        + "\n".join(looked)
        + "\n"
        + _how_to_provide(name, target)
    )


def _download(name: str, target: Path, verify_checksums: bool) -> None:
    """Download through torchvision (it checks the archive's md5 and extracts it)."""
    target.mkdir(parents=True, exist_ok=True)
    if name == "fashion_mnist":
        FashionMNIST(str(target), train=True, download=True)
    else:
        _cifar_class(name, verify_checksums)(str(target), train=True, download=True)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class _UncheckedCIFAR10(CIFAR10):
    """torchvision's CIFAR-10 reader with md5 checks off (each file must still exist).

    For files in the official format that are not the official files -- typically the small
    ones a test suite writes. Used only when the caller passes ``verify_checksums=False``.
    """

    train_list = [[f, None] for f, _ in CIFAR10.train_list]
    test_list = [[f, None] for f, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _UncheckedCIFAR100(CIFAR100):
    """torchvision's CIFAR-100 reader with md5 checks off; see :class:`_UncheckedCIFAR10`."""

    train_list = [[f, None] for f, _ in CIFAR100.train_list]
    test_list = [[f, None] for f, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


@dataclass
class RawDataset:
    """A dataset as read from disk, before the validation split."""

    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]


def _hwc_to_chw(array: Any) -> torch.Tensor:
    """HWC uint8 numpy batch -> contiguous CHW uint8 tensor, one copy, no per-image loop."""
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _read_cifar(name: str, root: Path, verify_checksums: bool) -> RawDataset:
    cls = _cifar_class(name, verify_checksums)
    try:
        train = cls(str(root), train=True)
        test = cls(str(root), train=False)
    except RuntimeError as err:
        if not verify_checksums:
            raise
        # torchvision says "not found or corrupted"; the files exist (the finder checked), so
        # name the ones whose md5 differs from the official release.
        folder = root / cls.base_folder
        entries = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
        bad = [f"{f} (expected md5 {md5})" for f, md5 in entries if not check_integrity(folder / f, md5)]
        raise RuntimeError(
            f"{name} files under {folder} failed torchvision's md5 check: {', '.join(bad) or err}. "
            "They are not the official release (corrupted or truncated download, or files made "
            "by hand). Re-download them (download=True into an empty folder), or, only for files "
            "you generated yourself such as test fixtures, pass verify_checksums=False."
        ) from err
    return RawDataset(
        train_images=_hwc_to_chw(train.data),
        train_labels=torch.as_tensor(train.targets, dtype=torch.int64),
        test_images=_hwc_to_chw(test.data),
        test_labels=torch.as_tensor(test.targets, dtype=torch.int64),
        class_names=list(train.classes),
    )


def _read_fashion(root: Path, verify_checksums: bool = True) -> RawDataset:
    raw = root / "FashionMNIST" / "raw"
    try:
        train = FashionMNIST(str(root), train=True)
        test = FashionMNIST(str(root), train=False)
    except (RuntimeError, ValueError, AssertionError, IndexError, EOFError) as exc:
        # torchvision's idx parser fails deep inside with no file name: name the folder and files
        raise DataFileError(
            f"the Fashion-MNIST files in {raw} cannot be parsed ({type(exc).__name__}: {exc}): one of "
            f"{', '.join(_FASHION_FILES)} is truncated or not an idx file. " + _replace_advice(raw / _FASHION_FILES[0])
        ) from None
    # Guard against a truncated or foreign idx file that still has a valid header.
    if len(train.data) != 60000 or len(test.data) != 10000:
        raise DataFileError(
            f"Fashion-MNIST under {raw} has {len(train.data)} train / {len(test.data)} test images, expected "
            f"60000 / 10000. " + _replace_advice(raw / _FASHION_FILES[0])
        )
    if verify_checksums:
        arrays = {
            "train-images-idx3-ubyte": train.data,
            "train-labels-idx1-ubyte": train.targets,
            "t10k-images-idx3-ubyte": test.data,
            "t10k-labels-idx1-ubyte": test.targets,
        }
        bad = [
            name
            for name, array in arrays.items()
            if hashlib.sha256(array.to(torch.uint8).contiguous().numpy().tobytes()).hexdigest() != FASHION_MNIST_SHA256[name]
        ]
        if bad:
            raise DataFileError(
                f"the content of {', '.join(str(raw / name) for name in bad)} differs from the Fashion-MNIST release "
                "(SHA-256 of the decompressed array): the file is damaged or not the original. "
                + _replace_advice(raw / bad[0])
                + "; for files you made yourself, pass verify_checksums=False"
            )
    # torchvision's MNIST readers already return uint8 [N, H, W] tensors: add the channel axis.
    return RawDataset(
        train_images=train.data.unsqueeze(1).contiguous(),
        train_labels=train.targets.to(torch.int64),
        test_images=test.data.unsqueeze(1).contiguous(),
        test_labels=test.targets.to(torch.int64),
        class_names=list(FashionMNIST.classes),
    )


def read_dataset(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    verify_checksums: bool = True,
) -> RawDataset:
    """Find (see :func:`find_data_root`) and read a dataset's train and test sets."""
    name = canonical_name(name)
    root = find_data_root(name, data_root, download=download, verify_checksums=verify_checksums)
    if name == "fashion_mnist":
        return _read_fashion(root, verify_checksums)
    return _read_cifar(name, root, verify_checksums)
