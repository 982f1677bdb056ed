"""Tests of kd_env.data: finding files, reading CIFAR / Fashion-MNIST through torchvision,
validation splits, the synthetic dataset, batched augmentation and epoch batching.

Nothing here downloads: an autouse fixture replaces torchvision's download function with one
that fails the test, and isolates the search path ($KD_ENV_DATA, the cache, system folders)
so the state of the machine running the tests cannot leak in.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
import torchvision.datasets.mnist as tv_mnist

from kd_env.data import (
    BatchTransform,
    DatasetNotFoundError,
    DatasetSplits,
    batch_indices,
    default_augmentation,
    default_cache_dir,
    find_data_root,
    load_dataset,
    make_synthetic,
    sources,
)
from kd_env.data.datasets import split_train_val

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _real_fashion_mnist_root() -> Path | None:
    """Where the finder finds the real Fashion-MNIST for whoever runs the tests (Debian's folder,
    $KD_ENV_DATA or the user's cache: tests/conftest.py passes it on as $KD_ENV_DATA), looked up
    at import, before the ``isolated`` fixture empties the search path."""
    try:
        return find_data_root("fashion_mnist")
    except DatasetNotFoundError:
        return None


REAL_FASHION_ROOT = _real_fashion_mnist_root()


# ------------------------------------------------------------------------------------------
# Fixtures and file writers
# ------------------------------------------------------------------------------------------


def _no_download(*args, **kwargs):
    raise AssertionError(f"a download was attempted: {args} {kwargs}")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Empty search path and no network: every test starts from a known state."""
    monkeypatch.delenv("KD_ENV_DATA", raising=False)
    monkeypatch.setenv("KD_ENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", {})
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", _no_download)
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", _no_download)
    return tmp_path


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Write <root>/cifar-100-python/{train,test,meta} in the real on-disk format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    out: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        # Rows are 3072 bytes: the 1024 R values (row-major 32x32), then G, then B.
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        _dump(
            folder / split,
            {
                "data": data,
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "filenames": [f"img_{split}_{i}.png" for i in range(n)],
                "batch_label": f"{split} batch",
            },
        )
        out[f"{split}_data"], out[f"{split}_labels"] = data, np.array(fine)
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        },
    )
    return out


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    """Write <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    train_data, train_labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        _dump(
            folder / f"data_batch_{i}",
            {"data": data, "labels": labels, "filenames": ["x.png"] * per_batch, "batch_label": f"batch {i}"},
        )
        train_data.append(data)
        train_labels += labels
    test_data = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_labels = rng.integers(0, 10, size=n_test).tolist()
    _dump(
        folder / "test_batch",
        {"data": test_data, "labels": test_labels, "filenames": ["x.png"] * n_test, "batch_label": "test"},
    )
    _dump(
        folder / "batches.meta",
        {"label_names": [f"name_{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072},
    )
    return {
        "train_data": np.concatenate(train_data),
        "train_labels": np.array(train_labels),
        "test_data": test_data,
        "test_labels": np.array(test_labels),
    }


def assert_cifar_layout(images: torch.Tensor, rows: np.ndarray) -> None:
    """Pixel (c, y, x) of image i must be byte c*1024 + y*32 + x of file row i."""
    assert images.dtype == torch.uint8 and images.shape == (len(rows), 3, 32, 32)
    assert images.is_contiguous()
    expected = torch.from_numpy(rows.reshape(-1, 3, 32, 32))
    assert torch.equal(images, expected)
    # Spot checks spelled out, independent of the reshape above.
    assert images[0, 0, 0, 0] == rows[0, 0]
    assert images[1, 1, 2, 3] == rows[1, 1024 + 2 * 32 + 3]
    assert images[-1, 2, 31, 31] == rows[-1, 3071]


# ------------------------------------------------------------------------------------------
# Finding data
# ------------------------------------------------------------------------------------------


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_ENV_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("KD_ENV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "kd_env"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "kd_env"


def test_finder_order_explicit_env_cache(isolated, monkeypatch):
    explicit, env, cache_data = isolated / "explicit", isolated / "env", isolated / "cache" / "data"
    for root in (explicit, env, cache_data):
        write_cifar100(root)
    monkeypatch.setenv("KD_ENV_DATA", str(env))
    assert find_data_root("cifar100", explicit) == explicit
    assert find_data_root("cifar100") == env
    # An explicit root without the files falls through to the next place.
    assert find_data_root("cifar100", isolated / "empty") == env
    monkeypatch.delenv("KD_ENV_DATA")
    assert find_data_root("CIFAR-100") == cache_data


def test_missing_everywhere_raises_helpful_error_without_download(isolated, monkeypatch):
    monkeypatch.setenv("KD_ENV_DATA", str(isolated / "env"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", isolated / "explicit")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for needle in (
        str(isolated / "explicit"),
        str(isolated / "env"),
        str(isolated / "cache" / "data"),
        "missing cifar-100-python/train",
        "KD_ENV_DATA",
        "data_root",
        "download=True",
    ):
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert not (isolated / "explicit").exists(), "the finder must not create folders when not downloading"


def test_missing_fashion_mnist_message_names_system_folder_and_apt(isolated, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", {"fashion_mnist": (isolated / "usr-share",)})
    with pytest.raises(DatasetNotFoundError) as info:
        find_data_root("fashion-mnist")
    message = str(info.value)
    assert "$KD_ENV_DATA: not set" in message
    assert str(isolated / "usr-share") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message


def test_download_only_when_asked_and_into_first_place(isolated, monkeypatch):
    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, **kwargs):
        calls.append((url, Path(download_root), md5))
        write_cifar100(Path(download_root))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    target = isolated / "explicit"
    with pytest.raises(DatasetNotFoundError):
        load_dataset("cifar100", target, verify_checksums=False)
    assert calls == []
    data = load_dataset("cifar100", target, download=True, verify_checksums=False, val_fraction=0.0)
    assert len(calls) == 1 and calls[0][1] == target and calls[0][0].startswith("https://")
    assert data.train_images.shape == (20, 3, 32, 32)
    # Found now: no second download.
    load_dataset("cifar100", target, download=True, verify_checksums=False)
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------


def test_cifar100_reader_places_pixels_and_labels(isolated):
    written = write_cifar100(isolated / "root")
    data = load_dataset("cifar100", isolated / "root", val_fraction=0.0, verify_checksums=False)
    assert data.name == "cifar100" and data.num_classes == 100
    assert data.class_names == [f"fine_{i}" for i in range(100)]
    assert data.mean == (0.5071, 0.4867, 0.4408) and data.std == (0.2675, 0.2565, 0.2761)
    assert data.image_shape == (3, 32, 32)
    assert_cifar_layout(data.train_images, written["train_data"])
    assert_cifar_layout(data.test_images, written["test_data"])
    # Fine labels, not coarse ones.
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == written["train_labels"].tolist()
    assert data.test_labels.tolist() == written["test_labels"].tolist()
    assert data.val_images.shape == (0, 3, 32, 32) and data.val_labels.shape == (0,)


def test_cifar10_reader_concatenates_batches(isolated):
    written = write_cifar10(isolated / "root")
    data = load_dataset("cifar10", isolated / "root", val_fraction=0.0, verify_checksums=False)
    assert data.num_classes == 10 and data.class_names == [f"name_{i}" for i in range(10)]
    assert data.mean == (0.4914, 0.4822, 0.4465)
    assert_cifar_layout(data.train_images, written["train_data"])
    assert_cifar_layout(data.test_images, written["test_data"])
    assert data.train_labels.tolist() == written["train_labels"].tolist()
    assert data.test_labels.tolist() == written["test_labels"].tolist()


@pytest.mark.parametrize("name,writer", [("cifar100", write_cifar100), ("cifar10", write_cifar10)])
def test_checksums_refuse_non_official_files(isolated, name, writer):
    writer(isolated / "root")
    with pytest.raises(RuntimeError) as info:
        load_dataset(name, isolated / "root")  # verify_checksums defaults to True
    message = str(info.value)
    assert "md5" in message and "verify_checksums=False" in message
    assert ("test_batch" if name == "cifar10" else "train (expected md5") in message


def write_fashion_mnist(folder: Path, layout: str = "flat", seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST idx files in the release's on-disk format, random content.

    idx: a big-endian int32 header (magic 0x0803 for images, 0x0801 for labels, then each
    dimension), then the uint8 values row-major. ``layout="flat"``: the four ``.gz`` side by side
    (the release's and Debian's folder); ``"torchvision"``: uncompressed under
    ``FashionMNIST/raw/`` (what torchvision's download and kd-env's preparation leave).
    Returns each file's array (images [N, 28, 28], labels [N]).
    """
    import gzip

    rng = np.random.default_rng(seed)
    target = folder if layout == "flat" else folder / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for prefix, n in (("train", 60000), ("t10k", 10000)):  # the reader insists on the release's sizes
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, size=n, dtype=np.uint8)
    for name, array in arrays.items():
        magic = 0x0803 if array.ndim == 3 else 0x0801
        content = np.array([magic, *array.shape], dtype=">i4").tobytes() + array.tobytes()
        if layout == "flat":
            # level 0: random bytes do not compress, and storing them keeps the test fast
            (target / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=0))
        else:
            (target / name).write_bytes(content)
    return arrays


def _sha256_of_arrays(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    import hashlib

    return {name: hashlib.sha256(array.tobytes()).hexdigest() for name, array in arrays.items()}


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_reader_places_pixels_and_labels(isolated, monkeypatch, layout):
    """The real-file reader on files in the release's format, so that it is tested with no data installed."""
    folder = isolated / "fashion"
    written = write_fashion_mnist(folder, layout)
    # the release's checksums replaced by those of the written arrays: the verifying path runs
    monkeypatch.setattr(sources, "FASHION_MNIST_SHA256", _sha256_of_arrays(written))
    data = load_dataset("fashion_mnist", folder, val_fraction=0.0)
    raw = (isolated / "cache" / "data" if layout == "flat" else folder) / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FASHION_FILES), "flat files are prepared into the cache"
    assert data.name == "fashion_mnist" and data.num_classes == 10 and data.image_shape == (1, 28, 28)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.mean == (0.2860,) and data.std == (0.3530,)
    for images, labels, prefix in ((data.train_images, data.train_labels, "train"), (data.test_images, data.test_labels, "t10k")):
        pixels = written[f"{prefix}-images-idx3-ubyte"]
        assert images.dtype == torch.uint8 and images.shape == (len(pixels), 1, 28, 28) and images.is_contiguous()
        assert torch.equal(images[:, 0], torch.from_numpy(pixels))
        # pixel (y, x) of image i is byte 16 + i*784 + y*28 + x of the file: spelled out, independent of the above
        flat = pixels.reshape(-1)
        assert images[0, 0, 0, 0] == flat[0] and images[1, 0, 2, 3] == flat[784 + 2 * 28 + 3] and images[-1, 0, 27, 27] == flat[-1]
        assert labels.dtype == torch.int64 and labels.tolist() == written[f"{prefix}-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_reader_refuses_a_changed_pixel_naming_the_file(isolated, monkeypatch):
    folder = isolated / "fashion"
    written = write_fashion_mnist(folder, "torchvision")
    monkeypatch.setattr(sources, "FASHION_MNIST_SHA256", _sha256_of_arrays(written))
    path = folder / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    content = bytearray(path.read_bytes())
    content[16 + 1234] ^= 0x01  # one pixel of the test set, past the 16-byte header
    path.write_bytes(bytes(content))
    with pytest.raises(sources.DataFileError) as info:
        load_dataset("fashion_mnist", folder)
    message = str(info.value)
    assert str(path) in message and "differs from the Fashion-MNIST release" in message, message
    assert "train-images-idx3-ubyte" not in message, "only the changed file is named"
    assert load_dataset("fashion_mnist", folder, val_fraction=0.0, verify_checksums=False).test_images.shape == (10000, 1, 28, 28)


def test_fashion_mnist_release_from_the_folder_the_finder_uses(isolated):
    """The real files, wherever the finder found them for this user (Debian's folder, $KD_ENV_DATA
    or the user's cache), read with the release's checksums."""
    if REAL_FASHION_ROOT is None:
        pytest.fail("Fashion-MNIST is missing: `make data` (which `make test` runs) puts it in place")
    data = load_dataset("fashion_mnist", REAL_FASHION_ROOT)  # verify_checksums defaults to True
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train_labels), len(data.val_labels), len(data.test_labels)) == (54000, 6000, 10000)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    # The real files: 6000 train and 1000 test images per class, pixel mean ~0.286.
    all_train = torch.cat([data.train_labels, data.val_labels])
    assert torch.bincount(all_train, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [1000] * 10
    assert abs(data.train_images.float().mean().item() / 255 - 0.2860) < 0.002
    # the same files side by side in another folder (the release's flat layout, uncompressed) are
    # prepared into a fresh cache and read alike
    flat = isolated / "flat"
    flat.mkdir()
    for name in FASHION_FILES:
        (flat / name).symlink_to(REAL_FASHION_ROOT / "FashionMNIST" / "raw" / name)
    again = load_dataset("fashion_mnist", flat)
    assert (isolated / "cache" / "data" / "FashionMNIST" / "raw" / FASHION_FILES[0]).is_file()
    assert torch.equal(again.val_images, data.val_images) and torch.equal(again.test_labels, data.test_labels)


def test_fashion_mnist_prepared_from_flat_gz_files(isolated):
    """Any folder holding the four .gz files (the upstream layout) is prepared into the cache."""
    import gzip

    flat = isolated / "flat"
    flat.mkdir()
    for images_name, labels_name, n in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
    ):
        # idx format: magic (0x0803 images / 0x0801 labels), big-endian dims, then bytes.
        header = np.array([0x0803, n, 28, 28], dtype=">i4").tobytes()
        with gzip.open(flat / f"{images_name}.gz", "wb", compresslevel=1) as f:
            f.write(header + bytes(n * 28 * 28))
        with gzip.open(flat / f"{labels_name}.gz", "wb", compresslevel=1) as f:
            f.write(np.array([0x0801, n], dtype=">i4").tobytes() + (np.arange(n) % 10).astype(np.uint8).tobytes())
    root = find_data_root("fashion_mnist", flat)
    assert root == isolated / "cache" / "data"
    assert not list((root / "FashionMNIST" / "raw").glob(".*.tmp")), "no temp files left behind"
    data = load_dataset("fashion_mnist", flat, val_fraction=0.0, verify_checksums=False)  # not the release's pixels
    assert data.test_labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


# ------------------------------------------------------------------------------------------
# Splits, synthetic data, DatasetSplits
# ------------------------------------------------------------------------------------------


def test_split_deterministic_disjoint_and_complete():
    n = 1000
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1)
    labels = torch.arange(n)  # doubles as the sample id
    tr_x, tr_y, va_x, va_y = split_train_val(images, labels, 0.1, split_seed=3)
    assert len(va_y) == 100 and len(tr_y) == 900
    assert set(tr_y.tolist()).isdisjoint(va_y.tolist())
    assert sorted(tr_y.tolist() + va_y.tolist()) == list(range(n))
    assert torch.equal(tr_x.view(-1), images.view(-1)[tr_y]), "images travel with their labels"
    again = split_train_val(images, labels, 0.1, split_seed=3)
    assert torch.equal(again[3], va_y)
    other = split_train_val(images, labels, 0.1, split_seed=4)
    assert not torch.equal(other[3], va_y)
    # Independent of the global RNG.
    torch.manual_seed(123)
    assert torch.equal(split_train_val(images, labels, 0.1, split_seed=3)[3], va_y)
    empty = split_train_val(images, labels, 0.0, split_seed=3)
    assert empty[2].shape == (0, 1, 1, 1) and torch.equal(empty[1], labels)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            split_train_val(images, labels, bad, split_seed=0)


def test_synthetic_dataset_is_deterministic_and_learnable():
    a = load_dataset("synthetic", num_classes=5, image_size=10, channels=3, seed=7)
    b = load_dataset("synthetic", num_classes=5, image_size=10, channels=3, seed=7)
    assert a.image_shape == (3, 10, 10) and a.num_classes == 5 and len(a.mean) == 3
    for field in DatasetSplits._TENSOR_FIELDS:
        assert torch.equal(getattr(a, field), getattr(b, field))
    c = make_synthetic(seed=8)
    assert not torch.equal(make_synthetic(seed=7).train_images, c.train_images)
    assert (len(a.train_labels), len(a.val_labels), len(a.test_labels)) == (461, 51, 256)
    # Learnable: class means of the train part classify the test part well.
    x_tr, x_te = a.train_images.float().flatten(1), a.test_images.float().flatten(1)
    means = torch.stack([x_tr[a.train_labels == k].mean(0) for k in range(5)])
    predicted = torch.cdist(x_te, means).argmin(1)
    assert (predicted == a.test_labels).float().mean() > 0.9
    # Defaults, and a clear error for unknown keywords.
    d = load_dataset("synthetic")
    assert d.num_classes == 4 and d.image_shape == (1, 8, 8)
    with pytest.raises(TypeError):
        load_dataset("synthetic", colour=True)
    with pytest.raises(TypeError):
        load_dataset("cifar100", num_classes=3)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def test_dataset_splits_to_and_validation():
    data = load_dataset("synthetic", device="cpu")
    moved = data.to(torch.device("cpu"))
    assert moved is not data and moved.device == torch.device("cpu")
    assert "train=461" in repr(data)
    with pytest.raises(ValueError):
        DatasetSplits(
            "x",
            data.train_images.float(),
            data.train_labels,
            data.val_images,
            data.val_labels,
            data.test_images,
            data.test_labels,
            4,
            data.mean,
            data.std,
        )


# ------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------


def _images(b=16, c=3, h=8, w=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Values 1..255 so zero padding is distinguishable from content.
    return torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def test_eval_mode_is_pure_normalisation():
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    t = BatchTransform(mean, std, crop_padding=4, horizontal_flip=True)
    x = _images()
    out = t(x, torch.Generator().manual_seed(0), train=False)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, expected)
    # No augmentation configured: training mode is normalisation too.
    torch.testing.assert_close(BatchTransform(mean, std)(x), expected)


def test_augmentation_deterministic_given_generator():
    t = BatchTransform((0.5,) * 3, (0.25,) * 3, crop_padding=2, horizontal_flip=True)
    x = _images(b=64)
    a = t(x, torch.Generator().manual_seed(5))
    b = t(x, torch.Generator().manual_seed(5))
    c = t(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The global RNG is neither used nor advanced.
    state = torch.get_rng_state()
    t(x, torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())


def test_horizontal_flip_is_per_sample_and_exact():
    t = BatchTransform((0.0,), (1 / 255,), horizontal_flip=True)  # out == pixel value
    row = torch.arange(1, 6, dtype=torch.uint8)  # [1 2 3 4 5]
    image = row.view(1, 1, 1, 5).expand(64, 1, 3, 5).contiguous()
    out = t(image, torch.Generator().manual_seed(0))
    flipped = torch.tensor([5.0, 4, 3, 2, 1])
    kept = torch.tensor([1.0, 2, 3, 4, 5])
    is_flipped = (out[:, 0] == flipped).all(-1).all(-1)
    is_kept = (out[:, 0] == kept).all(-1).all(-1)
    assert torch.all(is_flipped ^ is_kept), "each image is either flipped or untouched, whole"
    assert 10 < int(is_flipped.sum()) < 54, "roughly half are flipped"


def test_random_crop_shifts_content_with_zero_padding():
    p = 2
    t = BatchTransform((0.0,) * 3, (1 / 255,) * 3, crop_padding=p)  # out == pixel value
    x = _images(b=32)
    out = t(x, torch.Generator().manual_seed(1)).round().to(torch.uint8)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    seen = set()
    for n in range(len(x)):
        matches = [
            (dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1) if torch.equal(out[n], padded[n, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1, f"sample {n} is not a window of its own padded image"
        seen.add(matches[0])
    assert len(seen) > 5, "offsets vary per sample"
    # A known shift: a single bright pixel moves opposite to the crop offset.
    dot = torch.zeros(200, 1, 5, 5, dtype=torch.uint8)
    dot[:, 0, 2, 2] = 255
    moved = BatchTransform((0.0,), (1 / 255,), crop_padding=1)(dot, torch.Generator().manual_seed(2))
    positions = {tuple(torch.nonzero(m[0] == 255)[0].tolist()) for m in moved}
    assert positions == {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}
    assert torch.all(moved.sum(dim=(1, 2, 3)) == 255), "nothing but the dot survives, padding is zero"


def test_transform_rejects_bad_input():
    t = BatchTransform((0.5,), (0.25,))
    with pytest.raises(TypeError):
        t(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError):
        t(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError):
        BatchTransform((0.5,), (0.0,))


def test_default_augmentation():
    assert default_augmentation("cifar100") == {"crop_padding": 4, "horizontal_flip": True}
    assert default_augmentation("CIFAR-10") == {"crop_padding": 4, "horizontal_flip": True}
    assert default_augmentation("fashion_mnist") == {}
    assert default_augmentation("synthetic") == {}
    BatchTransform((0.5,), (0.25,), **default_augmentation("synthetic"))


# ------------------------------------------------------------------------------------------
# Epoch batching
# ------------------------------------------------------------------------------------------


def test_batch_indices_cover_each_index_once():
    g = torch.Generator().manual_seed(0)
    batches = batch_indices(103, 10, g)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    flat = torch.cat(batches)
    assert sorted(flat.tolist()) == list(range(103)) and flat.dtype == torch.int64
    assert flat.tolist() != list(range(103)), "shuffled"
    # The next epoch is a different permutation from the same generator stream...
    assert torch.cat(batch_indices(103, 10, g)).tolist() != flat.tolist()
    # ...and the same seed replays the same epoch.
    assert torch.equal(torch.cat(batch_indices(103, 10, torch.Generator().manual_seed(0))), flat)
    dropped = batch_indices(103, 10, g, drop_last=True)
    assert [len(b) for b in dropped] == [10] * 10 and len(set(torch.cat(dropped).tolist())) == 100
    ordered = batch_indices(25, 10, g, shuffle=False)
    assert torch.cat(ordered).tolist() == list(range(25))
    assert batch_indices(0, 4, g) == []
    with pytest.raises(ValueError):
        batch_indices(10, 0, g)
