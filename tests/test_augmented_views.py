"""Fixed augmented views (issue #27): the views' draw and rendering, the store's key, the student's
pixels against the stored outputs, no teacher pass while training, resume, bad input, the disk
check, the per-sample env's compact states and ``kd-env store size``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kd_env  # noqa: F401  (registers the envs)
from kd_env.agents.mtkd_rl import MTKDRL
from kd_env.data import BatchTransform
from kd_env.engine import EngineConfig
from kd_env.engine import teacher_source as source_module
from kd_env.envs import PerSampleKDVectorEnv
from kd_env.observations import CompactStates
from kd_env.teacher_outputs import TeacherOutputStore, TeacherStoreError, TeacherStoreUnavailable
from kd_env.teacher_outputs import size as size_module

WEIGHTS = torch.tensor([0.6, 0.4])
VIEWS = {"augment": True, "augment_views": 4, "feature_kd": False}


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("kd_env")]


def _manual_view(engine, index: int, view: int) -> torch.Tensor:
    """One training image in one of its views, cropped and flipped by hand (no batched op)."""
    row, col, flip = (int(v) for v in engine.views.table[index, view])
    padding = engine.train_transform.crop_padding
    image = engine.data.train_images[index].to(torch.float32)
    height, width = image.shape[-2:]
    padded = F.pad(image, (padding,) * 4)
    crop = padded[:, row : row + height, col : col + width]
    if flip:
        crop = crop.flip(-1)
    mean = torch.tensor(engine.data.mean).view(-1, 1, 1)
    std = torch.tensor(engine.data.std).view(-1, 1, 1)
    return (crop / 255.0 - mean) / std


# ------------------------------------------------------------------------------------------------
# the views: drawn once, rendered as a random batch would be
# ------------------------------------------------------------------------------------------------


def test_apply_views_gives_the_random_augmentation_bit_for_bit():
    transform = BatchTransform((0.5,), (0.25,), crop_padding=4, horizontal_flip=True)
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    randomly = transform(images, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # the same draws, in __call__'s order
    offsets = torch.randint(0, 9, (2, 16), generator=generator)
    flips = torch.rand(16, generator=generator) < 0.5
    views = torch.stack([offsets[0], offsets[1], flips.long()], dim=1)
    assert torch.equal(transform.apply_views(images, views), randomly)


def test_draw_views_is_seeded_and_within_the_augmentation():
    transform = BatchTransform((0.5,), (0.25,), crop_padding=4, horizontal_flip=True)
    table = transform.draw_views(50, 6, seed=1)
    assert table.shape == (50, 6, 3) and table.dtype == torch.int16
    assert torch.equal(table, transform.draw_views(50, 6, seed=1))
    assert not torch.equal(table, transform.draw_views(50, 6, seed=2))
    assert int(table[..., :2].min()) == 0 and int(table[..., :2].max()) == 8 and set(table[..., 2].unique().tolist()) == {0, 1}
    crop_only = BatchTransform((0.5,), (0.25,), crop_padding=2).draw_views(50, 2, seed=1)
    assert int(crop_only[..., 2].abs().sum()) == 0
    with pytest.raises(ValueError, match="views must be >= 1"):
        transform.draw_views(5, 0, seed=0)


# ------------------------------------------------------------------------------------------------
# the store: its key, what the student sees, the teachers never run
# ------------------------------------------------------------------------------------------------


def test_store_key_follows_the_views_count_seed_and_augmentation(make_engine, cache):
    def store_of(**overrides):
        engine = make_engine(**{**VIEWS, "cache_dir": str(cache), **overrides})
        assert engine.teacher_source.store is not None
        return engine.teacher_source.store

    base = store_of()
    views = base.manifest["key_inputs"]["views"]
    assert views["count"] == 4 and views["seed"] == 0 and views["crop_padding"] == 4 and views["horizontal_flip"]
    images = int(make_engine(cache_dir=str(cache), feature_kd=False).data.train_labels.shape[0])
    assert base.num_samples == 4 * images and base.manifest["key_inputs"]["arrays"] == ["logits", "embeddings"]
    others = [store_of(augment_views=3), store_of(views_seed=1), store_of(views_store="logits")]
    assert len({base.path, *(store.path for store in others)}) == 4
    assert not others[2].has_embeddings
    assert store_of().path == base.path  # the same views: the same store, opened again


def test_the_student_trains_on_the_stored_views_pixels(make_engine, cache):
    engine = make_engine(**VIEWS, cache_dir=str(cache), store_dtype="float16", epochs=1)
    engine.reset(seed=0)
    seen: list[torch.Tensor] = []
    assert engine.student is not None
    forward_all = engine.student.forward_all

    def recording(images):
        seen.append(images.detach().clone())
        return forward_all(images)

    engine.student.forward_all = recording  # records the next batch's pixels
    engine.step(WEIGHTS)
    batch = engine.current
    assert batch is not None and batch.views is not None and batch.teacher_rows is not None
    assert torch.equal(batch.teacher_rows, batch.indices * 4 + batch.views)
    pixels = seen[0]
    for position in range(batch.batch_size):  # the student's input is the view, cropped and flipped by hand
        expected = _manual_view(engine, int(batch.indices[position]), int(batch.views[position]))
        torch.testing.assert_close(pixels[position], expected, rtol=0, atol=1e-5)
    # the teachers on the student's input give the stored outputs (embeddings float16 in the store)
    logits, embeddings, _ = source_module.run_teachers(engine.teachers, pixels, engine.teacher_format)
    torch.testing.assert_close(batch.teacher_logits, logits, rtol=1e-4, atol=1e-5)
    for stored, fresh in zip(batch.teacher_embeddings, embeddings, strict=True):
        torch.testing.assert_close(stored, fresh, rtol=2e-3, atol=2e-3)
    assert len({int(v) for v in batch.views}) > 1  # the views vary within a batch


def test_teachers_never_run_while_training_with_views(make_engine, cache, monkeypatch):
    engine = make_engine(**VIEWS, cache_dir=str(cache))  # builds the store: the teachers' one pass

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher ran during training")

    monkeypatch.setattr(source_module, "run_teachers", refuse)
    for teacher in engine.teachers:
        monkeypatch.setattr(teacher, "forward_all", refuse)
        monkeypatch.setattr(teacher, "forward", refuse)
    engine.reset(seed=1)
    steps = 0
    while not engine.done:  # two epochs, epoch ends (evaluations) included
        engine.step(WEIGHTS)
        steps += 1
    assert steps == engine.total_steps and engine.epoch == 2


def test_same_seed_same_run_and_resume_is_bit_identical(make_engine, cache, tmp_path):
    first, second = make_engine(**VIEWS, cache_dir=str(cache)), make_engine(**VIEWS, cache_dir=str(cache))
    first.reset(seed=5)
    second.reset(seed=5)
    for _ in range(3):
        assert first.step(WEIGHTS).loss == second.step(WEIGHTS).loss
    torch.save(first.state_dict(), tmp_path / "engine.pt")
    state = torch.load(tmp_path / "engine.pt", weights_only=True)
    assert first.current is not None
    views_then = first.current.views.clone()
    losses = [first.step(WEIGHTS).loss for _ in range(first.steps_per_epoch + 2)]  # across an epoch end
    resumed = make_engine(**VIEWS, cache_dir=str(cache))
    resumed.load_state_dict(state)
    assert resumed.current is not None and torch.equal(resumed.current.views, views_then)
    assert [resumed.step(WEIGHTS).loss for _ in range(len(losses))] == losses
    other = make_engine(**{**VIEWS, "augment_views": 2}, cache_dir=str(cache))
    with pytest.raises(ValueError, match="augment_views=4.*never mixes the views of two stores"):
        other.load_state_dict(state)


def test_views_held_in_memory_give_the_stores_run(make_engine, cache):
    stored = make_engine(**VIEWS, cache_dir=str(cache), store_dtype="float32")
    memory = make_engine(**VIEWS, teacher_store=False)
    assert stored.teacher_source.store is not None and memory.teacher_source.memory is not None
    stored.reset(seed=2)
    memory.reset(seed=2)
    assert [stored.step(WEIGHTS).loss for _ in range(5)] == [memory.step(WEIGHTS).loss for _ in range(5)]


# ------------------------------------------------------------------------------------------------
# bad input: one clear error, or a rebuild with one line saying why
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"augment": True, "augment_views": 0}, "augment_views must be an integer >= 1"),
        ({"augment": True, "augment_views": 2.5}, "augment_views must be an integer >= 1"),
        ({"augment_views": 4}, "augment_views=4 draws views with the augmentation, which is off"),
        ({"augment": False, "augment_views": 4}, "augment_views=4 draws views with the augmentation, which is off"),
        ({"views_seed": 3}, "views_seed=3 applies to augment_views only"),
        ({"views_store": "logits"}, "views_store='logits' applies to augment_views only"),
        ({"augment": True, "augment_views": 4, "views_store": "all"}, "views_store must be one of"),
        ({"augment": True, "augment_views": 4, "feature_kd": False, "views_store": "maps"}, "feature KD, which is off"),
    ],
)
def test_bad_view_arguments_are_refused_with_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make("MultiTeacherKD-Synthetic-v0", **kwargs)


def test_the_engine_refuses_bad_views_too(make_engine):
    with pytest.raises(ValueError, match="augment=False"):
        EngineConfig(augment=False, augment_views=2).check(2)
    with pytest.raises(ValueError, match="cache_teacher_outputs=False"):
        EngineConfig(augment=True, augment_views=2, cache_teacher_outputs=False).check(2)
    with pytest.raises(ValueError, match="which is off for this engine"):
        make_engine(augment_views=2)  # the synthetic dataset does not augment by default


def test_feature_kd_without_stored_maps_is_refused_with_their_size(make_engine, cache):
    with pytest.raises(ValueError, match=r"views_store='maps' \(.* MiB for .* rows .*feature maps .*\), or feature_kd=False"):
        make_engine(augment=True, augment_views=4, views_store="embeddings", cache_dir=str(cache))
    engine = make_engine(augment=True, augment_views=2, cache_dir=str(cache))  # feature KD: the maps by default
    assert engine.teacher_source.store is not None and engine.teacher_source.store.has_feature_maps
    engine.reset(seed=0)
    assert engine.current is not None and engine.current.feature_mse is not None


def test_a_store_of_other_views_is_never_used(make_engine, cache, caplog):
    four = make_engine(**VIEWS, cache_dir=str(cache)).teacher_source.store
    two = make_engine(**{**VIEWS, "augment_views": 2}, cache_dir=str(cache)).teacher_source.store
    assert four is not None and two is not None
    with pytest.raises(TeacherStoreError, match="built for 2 augmented views per image .*expected"):
        TeacherOutputStore.open(two.path, expected_key=four.path.name)
    four_path, two_path = four.path, two.path
    four.close()
    two.close()
    shutil.rmtree(four_path)
    shutil.copytree(two_path, four_path)  # the 2-view store under the 4-view store's key
    with caplog.at_level(logging.WARNING, logger="kd_env"):
        rebuilt = make_engine(**VIEWS, cache_dir=str(cache)).teacher_source.store
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "built for 2 augmented views per image" in warnings[0] and "rebuilding" in warnings[0]
    assert rebuilt is not None and rebuilt.manifest["key_inputs"]["views"]["count"] == 4


def test_a_disk_that_cannot_hold_the_store_is_refused_with_the_numbers(make_engine, cache, monkeypatch, caplog):
    monkeypatch.setattr(size_module.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**6, used=10**6 - 4096, free=4096))
    with pytest.raises(TeacherStoreUnavailable, match=r"needs .* MiB but the disk at .* has 4\.0 KiB free.*augment_views=4"):
        make_engine(**VIEWS, cache_dir=str(cache))
    root = cache / "teacher_outputs"
    assert not root.exists() or [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    with caplog.at_level(logging.WARNING, logger="kd_env"):  # without views: the outputs in memory, as on a full disk
        engine = make_engine(cache_dir=str(cache))
    assert engine.teacher_source.store is None and engine.teacher_source.memory is not None
    assert len(_warnings(caplog)) == 1 and "free" in _warnings(caplog)[0]


# ------------------------------------------------------------------------------------------------
# the per-sample env: compact states rebuild bit for bit with views
# ------------------------------------------------------------------------------------------------

TEACHERS = ["random:cnn_w8:1", "random:cnn_w8:2"]
BATCH = 8


def make_per_sample_env(**overrides) -> PerSampleKDVectorEnv:
    kwargs = {
        "dataset": "synthetic",
        "teachers": TEACHERS,
        "epochs": 2,
        "max_steps_per_epoch": 3,
        "action_mode": "raw",
        "num_envs": BATCH,
        "augment": True,
        "augment_views": 3,
        **overrides,
    }
    return PerSampleKDVectorEnv(**kwargs)


@pytest.mark.parametrize("env_kwargs", [{}, {"feature_kd": False, "teacher_store": False}])
def test_compact_states_rebuild_bit_for_bit_with_views(env_kwargs):
    compact_env, whole_env = make_per_sample_env(**env_kwargs), make_per_sample_env(**env_kwargs)
    compact = MTKDRL(compact_env, dynamic=True, seed=0, agent_step=None)
    whole = MTKDRL(whole_env, dynamic=True, seed=0, agent_step=None, compact_buffer=False)
    compact.learn(2 * BATCH)
    whole.learn(2 * BATCH)
    assert [type(stored) for stored, _ in compact.buffer] == [CompactStates, CompactStates]
    for (stored, _), (states, _) in zip(compact.buffer, whole.buffer, strict=True):
        assert isinstance(stored, CompactStates) and int(stored.indices.max()) >= 0
        assert torch.equal(compact_env.expand_states(stored), states)
    compact.learn(4 * BATCH, reset_num_timesteps=False)  # epoch-end updates on compact states
    whole.learn(4 * BATCH, reset_num_timesteps=False)
    assert compact.num_updates == whole.num_updates == 2
    for (name, value), (_, other) in zip(compact.policy.named_parameters(), whole.policy.named_parameters(), strict=True):
        assert torch.equal(value, other), name


def test_compact_states_hold_the_views_rows():
    env = make_per_sample_env(feature_kd=False)
    observation, _ = env.reset(seed=0)
    compact = env.compact_states(observation)
    batch = env.engine.current
    assert compact is not None and batch is not None and batch.teacher_rows is not None
    assert torch.equal(compact.indices, batch.teacher_rows.cpu())
    np.testing.assert_array_equal(env.expand_states(compact).numpy(), observation)


def test_logits_only_store_refuses_embeddings_in_the_state():
    with pytest.raises(ValueError, match="views_store='logits' keeps no teacher embeddings"):
        make_per_sample_env(feature_kd=False, views_store="logits")
    env = make_per_sample_env(feature_kd=False, views_store="logits", include_embeddings=False)
    observation, _ = env.reset(seed=0)
    env.step(np.ones(env.action_space.shape, dtype=np.float32))
    assert env.engine.teacher_source.store is not None and not env.engine.teacher_source.store.has_embeddings


# ------------------------------------------------------------------------------------------------
# kd-env store size
# ------------------------------------------------------------------------------------------------


def test_cli_store_size_states_the_size_before_building(capsys):
    from kd_env.cli import main as cli_main

    args = ["store", "size", "--env-arg", "dataset=synthetic", "--env-arg", "augment=true", "--env-arg", "augment_views=4"]
    assert cli_main([*args, "--env-arg", "feature_kd=false"]) == 0
    printed = capsys.readouterr().out
    assert "x 4 views" in printed and "keeping embeddings" in printed and "logits" in printed and "(fits)" in printed
    assert cli_main(args) == 0
    assert "feature maps" in capsys.readouterr().out
