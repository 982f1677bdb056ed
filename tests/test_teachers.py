"""Teacher training, checkpoint integrity, pools and the ``kd-env teachers`` CLI (synthetic data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from processes import child_environment

from kd_env import teachers as T
from kd_env.cli import main as cli_main
from kd_env.data import BatchTransform, load_dataset
from kd_env.models import create_model


@pytest.fixture(scope="module")
def splits():
    return load_dataset("synthetic")


def _train(splits, tmp_path: Path, arch: str = "cnn_w8", epochs: int = 2, name: str | None = None, **kwargs) -> Path:
    path = tmp_path / "teachers" / "synthetic" / (name or f"{arch}-s{kwargs.get('seed', 0)}.pt")
    return T.train_teacher(arch, splits, epochs=epochs, path=path, progress=False, **kwargs)


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory) -> Path:
    return _train(splits, tmp_path_factory.mktemp("cache"))


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _no_stray_files(folder: Path) -> None:
    stray = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith((".tmp", ".partial.pt"))]
    assert stray == []


# ------------------------------------------------------------------------------------- save/load


def test_save_load_round_trip_outputs_and_metadata(tmp_path):
    torch.manual_seed(1)
    model = create_model("cnn_w8", num_classes=4, in_channels=1).eval()
    meta = {"arch": "cnn_w8", "dataset": "synthetic", "num_classes": 4, "in_channels": 1, "epochs": 0, "seed": 3, "note": [1, 2.5, "x"]}
    path = T.save_teacher(model, tmp_path / "t.pt", meta)
    loaded = T.load_teacher(path, expected_arch="cnn_w8", expected_dataset="synthetic")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    read = T.read_teacher_metadata(path)
    for key, value in meta.items():
        assert read[key] == value
        assert loaded.teacher_metadata[key] == value
    assert read["sha256"] == T.state_dict_sha256(model.state_dict())
    assert set(read["versions"]) == {"kd_env", "torch", "torchvision"}
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    _no_stray_files(tmp_path)


def test_trained_checkpoint_metadata_and_test_acc(trained, splits):
    meta = T.read_teacher_metadata(trained)
    assert meta["arch"] == "cnn_w8" and meta["dataset"] == "synthetic"
    assert meta["num_classes"] == 4 and meta["in_channels"] == 1 and meta["epochs"] == 2 and meta["seed"] == 0
    assert 0.0 <= meta["val_acc"] <= 1.0 and meta["val_acc"] == max(h["val_acc"] for h in meta["history"])
    model = T.load_teacher(trained)
    acc = T.evaluate_accuracy(model, splits.test_images, splits.test_labels, BatchTransform(splits.mean, splits.std))
    assert acc == pytest.approx(meta["test_acc"])
    _no_stray_files(trained.parent)


def test_mlp_teacher_rebuilds_with_image_size(splits, tmp_path):
    path = _train(splits, tmp_path, arch="mlp", epochs=1)
    meta = T.read_teacher_metadata(path)
    assert meta["model_kwargs"]["image_size"] == splits.test_images.shape[-1] == 8
    model = T.load_teacher(path)
    assert model.image_size == 8 and model.hidden[1].in_features == 8 * 8  # built for 8x8 images, not the default 28x28
    # the rebuilt network is the trained one: its outputs are the saved weights' and it scores the
    # test accuracy recorded at training time
    rebuilt = create_model("mlp", num_classes=4, in_channels=1, image_size=8)
    rebuilt.load_state_dict(_state(path))
    images = BatchTransform(splits.mean, splits.std)(splits.test_images[:16], train=False)
    with torch.no_grad():
        torch.testing.assert_close(model(images), rebuilt.eval()(images))
    acc = T.evaluate_accuracy(model, splits.test_images, splits.test_labels, BatchTransform(splits.mean, splits.std))
    assert acc == pytest.approx(meta["test_acc"]) and acc > 0.5  # trained (0.99 measured), chance is 0.25


def test_same_seed_same_weights(splits, tmp_path, trained):
    again = _train(splits, tmp_path)
    a, b = _state(trained), _state(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = _state(_train(splits, tmp_path, seed=1))
    assert any(not torch.equal(a[k], other[k]) for k in a if a[k].is_floating_point())


# ------------------------------------------------------------------------------------- integrity


def test_truncated_file_raises_corrupt_error(trained, tmp_path):
    bad = tmp_path / "truncated.pt"
    data = trained.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(T.TeacherCheckpointError) as info:
        T.load_teacher(bad)
    message = str(info.value)
    assert str(bad) in message and "corrupt or truncated" in message and "retrain" in message
    with pytest.raises(T.TeacherCheckpointError, match="truncated"):
        T.read_teacher_metadata(bad)


def test_flipped_payload_bytes_raise_checksum_error(trained, tmp_path):
    data = bytearray(trained.read_bytes())
    weight = _state(trained)["classifier.weight"]
    start = data.find(weight.numpy().tobytes())
    assert start > 0
    data[start + 5] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(T.TeacherChecksumError) as info:
        T.load_teacher(bad)
    assert str(bad) in str(info.value) and "checksum" in str(info.value)


def test_wrong_expected_arch_or_dataset(trained):
    with pytest.raises(T.TeacherMismatchError) as info:
        T.load_teacher(trained, expected_arch="resnet8")
    assert "cnn_w8" in str(info.value) and "resnet8" in str(info.value)
    with pytest.raises(T.TeacherMismatchError) as info:
        T.load_teacher(trained, expected_dataset="cifar100")
    assert "synthetic" in str(info.value) and "cifar100" in str(info.value)


def test_missing_file_names_train_command(tmp_path):
    path = T.teacher_path("cnn_w16", "fashion_mnist", seed=2, cache_dir=tmp_path)
    with pytest.raises(T.TeacherNotFoundError) as info:
        T.load_teacher(path)
    message = str(info.value)
    assert str(path) in message
    assert f"kd-env teachers train --dataset fashion_mnist --arch cnn_w16 --seed 2 --cache-dir {tmp_path}" in message
    assert isinstance(info.value, FileNotFoundError)


def test_not_a_teacher_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(T.TeacherCheckpointError, match="not a kd_env teacher checkpoint"):
        T.load_teacher(path)


# ------------------------------------------------------------------------------------- resume / atomic


def test_interrupted_training_resumes_and_matches(splits, tmp_path, trained):
    # ``trained``: the uninterrupted 2-epoch run with the same settings
    seen: list[int] = []

    def interrupt(epoch, info):
        seen.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(splits, tmp_path, on_epoch_end=interrupt)
    folder = tmp_path / "teachers" / "synthetic"
    assert (folder / "cnn_w8-s0.partial.pt").is_file() and not (folder / "cnn_w8-s0.pt").exists()
    path = _train(splits, tmp_path, on_epoch_end=interrupt)
    assert seen == [1, 2]  # the second call started at epoch 2
    a, b = _state(trained), _state(path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert T.read_teacher_metadata(path)["history"] == T.read_teacher_metadata(trained)["history"]
    _no_stray_files(folder)


def test_resume_false_starts_over(splits, tmp_path):
    def stop(epoch, info):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        _train(splits, tmp_path, epochs=2, on_epoch_end=stop)
    seen: list[int] = []
    _train(splits, tmp_path, epochs=2, resume=False, on_epoch_end=lambda e, i: seen.append(e))
    assert seen == [1, 2]


def test_partial_with_other_settings_is_ignored(splits, tmp_path):
    def stop(epoch, info):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        _train(splits, tmp_path, epochs=2, on_epoch_end=stop)
    seen: list[int] = []
    with pytest.warns(UserWarning, match="other settings"):
        _train(splits, tmp_path, epochs=3, on_epoch_end=lambda e, i: seen.append(e))
    assert seen == [1, 2, 3]


def test_failed_save_keeps_old_file_and_no_temp(trained, tmp_path, monkeypatch):
    path = tmp_path / "t.pt"
    path.write_bytes(trained.read_bytes())

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        T.save_teacher(create_model("cnn_w8", 4, 1), path, {"arch": "cnn_w8", "dataset": "synthetic", "num_classes": 4, "in_channels": 1})
    monkeypatch.undo()
    assert path.read_bytes() == trained.read_bytes()
    _no_stray_files(tmp_path)


# ------------------------------------------------------------------------------------- pools / CLI


def test_pools_and_recipes():
    assert T.TEACHER_POOLS["cifar100"] == ["RegNetY_400MF", "RegNetX_400MF", "resnet32x4", "wrn_28_4"]
    for dataset, pool in T.TEACHER_POOLS.items():
        assert set(T.TEACHER_POOL_EPOCHS[dataset]) == set(pool)
        assert 3 <= len(pool) <= 4
    assert T.default_recipe("resnet32x4", "cifar100") == {"epochs": 240, "lr": 0.05, "batch_size": 64}
    assert T.default_recipe("MobileNetV2", "cifar100")["lr"] == 0.01
    assert T.default_recipe("ShuffleV2", "cifar10")["lr"] == 0.01
    assert T.lr_milestones(240) == [150, 180, 210]
    assert T.teacher_path("mlp", "fashion_mnist", 3, "/c") == Path("/c/teachers/fashion_mnist/mlp-s3.pt")


@pytest.mark.parametrize("num_classes", [4, 10, 100])
def test_overlap_and_mixed_pools_have_the_structure_they_claim(num_classes):
    from kd_env.teachers.pools import mixed_recipes, overlap_groups, overlap_recipes

    groups = overlap_groups(num_classes)
    half = -(-num_classes // 2)
    assert len(groups) == 3 and all(len(group) == half for group in groups)
    coverage = [sum(cls in group for group in groups) for cls in range(num_classes)]
    assert min(coverage) >= 1 and max(coverage) == 2  # every class has a competent teacher; some have two
    assert [recipe.classes for recipe in overlap_recipes("fashion_mnist", num_classes)] == groups
    mixed = mixed_recipes("fashion_mnist", num_classes)
    kinds = [(recipe.classes is None, recipe.relabel is not None) for recipe in mixed]
    assert kinds == [(True, False), (False, False), (False, False), (True, True), (True, True)]  # generalist, 2 specialists, 2 relabelled
    assert set(mixed[1].classes) | set(mixed[2].classes) == set(range(num_classes)) and not set(mixed[1].classes) & set(mixed[2].classes)
    assert len({(recipe.name, recipe.seed) for recipe in mixed}) == 5  # five distinct checkpoint files
    for name, k in (("overlap", 3), ("mixed", 5)):
        members = T.pool_members(name, "fashion_mnist", num_classes)
        assert len(members) == k and len({member for member, _, _ in members}) == k


def test_overlap_pool_refuses_too_few_classes():
    from kd_env.teachers.pools import overlap_groups

    with pytest.raises(ValueError, match="3 overlapping teachers need at least 3 classes"):
        overlap_groups(2)


def test_ensure_teacher_pool(tmp_path):
    with pytest.raises(T.TeacherNotFoundError) as info:
        T.ensure_teacher_pool("synthetic", cache_dir=tmp_path)
    message = str(info.value)
    for arch in T.TEACHER_POOLS["synthetic"]:
        assert str(T.teacher_path(arch, "synthetic", cache_dir=tmp_path)) in message
    assert "kd-env teachers train --dataset synthetic --arch mlp --arch cnn_w8 --arch cnn_w16" in message
    paths = T.ensure_teacher_pool("synthetic", cache_dir=tmp_path, train_missing=True, epochs=1, progress=False)
    assert [p.name for p in paths] == [f"{a}-s0.pt" for a in T.TEACHER_POOLS["synthetic"]]
    assert T.ensure_teacher_pool("synthetic", cache_dir=tmp_path) == paths
    listed = T.list_teachers(tmp_path)
    assert sorted(e["arch"] for e in listed) == sorted(T.TEACHER_POOLS["synthetic"])
    (paths[0].parent / "junk-s0.pt").write_bytes(b"not a zip")
    assert any("error" in e for e in T.list_teachers(tmp_path, dataset="synthetic"))


def test_cli_train_and_list(tmp_path, capsys):
    args = [
        "teachers",
        "train",
        "--dataset",
        "synthetic",
        "--arch",
        "mlp",
        "--arch",
        "cnn_w8",
        "--epochs",
        "1",
        "--cache-dir",
        str(tmp_path),
        "--no-progress",
    ]
    assert cli_main(args) == 0
    for arch in ("mlp", "cnn_w8"):
        meta = T.read_teacher_metadata(T.teacher_path(arch, "synthetic", cache_dir=tmp_path))
        assert meta["epochs"] == 1
    capsys.readouterr()
    assert cli_main(args) == 0  # existing checkpoints are skipped
    assert "skipping" in capsys.readouterr().out
    assert cli_main(["teachers", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mlp" in out and "cnn_w8" in out and "test_acc" in out
    assert cli_main(["teachers", "list", "--cache-dir", str(tmp_path), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert {e["arch"] for e in entries} == {"mlp", "cnn_w8"}


def test_cli_errors(tmp_path, capsys):
    assert cli_main(["teachers", "train", "--dataset", "nope", "--cache-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: unknown dataset 'nope'") and "fashion_mnist" in error  # names the known ones
    assert cli_main(["teachers", "train", "--dataset", "synthetic", "--pool", "nope", "--cache-dir", str(tmp_path)]) == 1
    assert "unknown teacher pool 'nope'" in capsys.readouterr().err
    assert cli_main([]) == 2
    assert cli_main(["teachers"]) == 2


def test_no_validation_split_keeps_last_epoch(tmp_path):
    splits = load_dataset("synthetic", val_fraction=0.0)
    path = _train(splits, tmp_path, epochs=2)
    meta = T.read_teacher_metadata(path)
    assert meta["val_acc"] is None and meta["best_epoch"] == 2 and 0.0 <= meta["test_acc"] <= 1.0


# ------------------------------------------------------------------------------------- damaged cache, end to end
# The unit tests above call load_teacher; these go through what a user runs: gym.make and
# `kd-env train`, on a private cache holding the synthetic default pool with one damaged member.

SYNTHETIC_ID = "MultiTeacherKD-Synthetic-v0"


def _damage(path: Path, how: str) -> None:
    """Truncate the checkpoint, or change one weight so that only its checksum can tell."""
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        checkpoint = torch.load(path, weights_only=True)
        first = next(iter(checkpoint["state_dict"]))
        checkpoint["state_dict"][first].view(-1)[0] += 1.0
        torch.save(checkpoint, path)


def _pool_with_a_damaged_member(cache: Path, how: str) -> Path:
    """The synthetic ``capacity`` pool in ``cache`` (untrained stand-ins: only loading is tested),
    its last member damaged; returns that member's path."""
    splits = load_dataset("synthetic")
    members = T.pool_members("capacity", "synthetic", splits.num_classes, seed=0, cache_dir=cache)
    for arch, path, _ in members:
        torch.manual_seed(0)
        model = create_model(arch, splits.num_classes, 1, image_size=8)
        meta = {
            "arch": arch,
            "dataset": "synthetic",
            "num_classes": splits.num_classes,
            "in_channels": 1,
            "model_kwargs": {"image_size": 8},
        }
        T.save_teacher(model, path, meta)
    damaged = members[-1][1]
    _damage(damaged, how)
    return damaged


@pytest.mark.parametrize("how", ["truncated", "flipped weight"])
def test_gym_make_refuses_a_damaged_cached_teacher_naming_the_file(tmp_path, how):
    import gymnasium as gym

    import kd_env  # noqa: F401  (registers the ids)

    damaged = _pool_with_a_damaged_member(tmp_path, how)
    content = damaged.read_bytes()
    with pytest.raises(T.TeacherCheckpointError) as info:
        gym.make(SYNTHETIC_ID, cache_dir=str(tmp_path))
    message = str(info.value)
    assert str(damaged) in message, message
    assert ("checksum" if how == "flipped weight" else "corrupt or truncated") in message, message
    assert f"kd-env teachers train --dataset synthetic --arch cnn_w16 --cache-dir {tmp_path} --force" in message, message
    # the synthetic env trains *missing* teachers on first use: a damaged one is not silently replaced
    assert damaged.read_bytes() == content
    # the same file named as a teacher of its own, not through the pool
    with pytest.raises(T.TeacherCheckpointError, match=str(damaged)):
        gym.make(SYNTHETIC_ID, teachers=["cnn_w16"], cache_dir=str(tmp_path))


def test_kd_env_train_exits_non_zero_naming_a_damaged_cached_teacher(tmp_path):
    """The installed ``kd-env`` command in a child process, with the cache given by $KD_ENV_CACHE."""
    import shutil
    import subprocess
    import sys

    command = shutil.which("kd-env", path=str(Path(sys.executable).parent))
    assert command is not None, f"kd-env is not installed next to {sys.executable}: run `make install`"
    damaged = _pool_with_a_damaged_member(tmp_path / "cache", "truncated")
    argv = [command, "train", "--env", SYNTHETIC_ID, "--agent", "aver", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    environment = child_environment(KD_ENV_CACHE=str(tmp_path / "cache"))
    completed = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1, (completed.returncode, completed.stdout[-2000:], completed.stderr[-2000:])
    assert completed.stderr.startswith("error: ") and "Traceback" not in completed.stderr, completed.stderr[-2000:]
    assert str(damaged) in completed.stderr and "--force" in completed.stderr, completed.stderr
    assert not (tmp_path / "run" / "result.json").exists()
