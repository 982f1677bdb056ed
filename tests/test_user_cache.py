"""The README's test command for a non-root user: Fashion-MNIST in the user's cache (where
``make data`` puts it without apt), no Debian folder, and the tests' private cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from processes import child_environment

from kd_env.data import DatasetNotFoundError, find_data_root

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CONFTEST = Path(__file__).with_name("conftest.py")


def _real_raw_folder() -> Path:
    try:
        root = find_data_root("fashion_mnist")
    except DatasetNotFoundError:  # pragma: no cover - make test always puts the data in place
        pytest.fail("Fashion-MNIST is missing: run `make data`")
    return root / "FashionMNIST" / "raw"


def test_conftest_finds_data_in_a_non_root_users_cache(tmp_path):
    user_cache = tmp_path / "xdg"
    raw = user_cache / "kd_env" / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:  # the layout torchvision's download leaves in the user's cache
        (raw / name).symlink_to(_real_raw_folder() / name)
    script = f"""
import os, runpy
import kd_env.data.sources as sources
sources.SYSTEM_DATA_DIRS["fashion_mnist"] = ()  # no Debian folder, as for most users
namespace = runpy.run_path({str(CONFTEST)!r})
assert os.environ["KD_ENV_DATA"] == {str(user_cache / "kd_env" / "data")!r}, os.environ.get("KD_ENV_DATA")
assert os.environ["KD_ENV_CACHE"] != {str(user_cache / "kd_env")!r}  # the tests' cache is private
from kd_env.data import load_dataset
splits = load_dataset("fashion_mnist")
print(splits.train_labels.numel() + splits.val_labels.numel(), splits.test_labels.numel())
"""
    environment = {k: v for k, v in child_environment().items() if k not in ("KD_ENV_CACHE", "KD_ENV_DATA")}
    environment["XDG_CACHE_HOME"] = str(user_cache)
    completed = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == ["60000", "10000"]
