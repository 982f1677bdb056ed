"""The distillation engine: the loss it optimises, determinism, bad input, caching, resume."""

from __future__ import annotations

import pytest
import torch
from kd_reference import evaluate, normalise, per_sample_loss, reference_batch


def _params(engine):
    return [p.detach().clone() for p in list(engine.student.parameters()) + list(engine.adapters.parameters())]


def _run(engine, steps, weights):
    losses = []
    for _ in range(steps):
        losses.append(engine.step(weights).loss)
    return losses


def test_step_optimises_the_documented_loss(make_engine):
    """``CE + alpha * kd_scale * sum_k w_k KL_T + beta * sum_k v_k MSE_k``, every term recomputed
    from the networks (the feature term from the student's adapted map and the teachers' maps)."""
    # float32 teacher outputs in memory (the store keeps feature maps in float16)
    engine = make_engine(alpha=0.7, beta=2.0, kd_scale=0.5, temperature=3.0, teacher_store=False)
    batch = engine.reset(seed=1)
    logit_weights = torch.tensor([[0.2, 0.8]]).expand(batch.batch_size, 2).contiguous()
    feature_weights = torch.rand(batch.batch_size, 2, generator=torch.Generator().manual_seed(0))
    reference = reference_batch(engine, temperature=3.0)
    expected = per_sample_loss(reference, logit_weights, feature_weights, alpha=0.7, kd_scale=0.5, beta=2.0)
    assert reference.feature_mse is not None and (reference.feature_mse > 0).all()
    result = engine.step(logit_weights, feature_weights)
    assert result.loss == pytest.approx(float(expected.mean()), rel=1e-5)
    torch.testing.assert_close(result.per_sample_loss.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.kd_loss.double(), reference.kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.feature_mse.double(), reference.feature_mse, rtol=1e-5, atol=1e-5)
    assert result.kd_loss.shape == (batch.batch_size, 2)


def test_same_seed_same_run(make_engine):
    first, second = make_engine(), make_engine()
    first.reset(seed=7)
    second.reset(seed=7)
    weights = torch.tensor([0.3, 0.7])
    assert _run(first, 10, weights) == _run(second, 10, weights)
    other = make_engine()
    other.reset(seed=8)
    assert _run(other, 3, weights) != _run(make_engine_reset(make_engine, 7), 3, weights)


def make_engine_reset(make_engine, seed):
    engine = make_engine()
    engine.reset(seed=seed)
    return engine


@pytest.mark.parametrize(
    "weights, message",
    [
        (torch.tensor([float("nan"), 0.5]), "NaN"),
        (torch.tensor([float("inf"), 0.5]), "NaN or inf"),
        (torch.tensor([0.2, 0.3, 0.5]), "shape"),
        (torch.tensor([-0.5, 1.5]), "negative"),
    ],
)
def test_bad_weights_raise_and_change_nothing(make_engine, weights, message):
    engine = make_engine()
    engine.reset(seed=0)
    before = _params(engine)
    step_before = engine.global_step
    with pytest.raises(ValueError, match=message):
        engine.step(weights)
    assert engine.global_step == step_before
    for old, new in zip(before, _params(engine)):
        assert torch.equal(old, new)
    engine.step(torch.tensor([0.5, 0.5]))  # the engine is still usable


def test_divergence_skips_the_update(make_engine):
    engine = make_engine()
    engine.reset(seed=0)
    engine.current.student_ce = engine.current.student_ce * float("nan")
    before = _params(engine)
    result = engine.step(torch.tensor([0.5, 0.5]))
    assert result.diverged and result.done
    for old, new in zip(before, _params(engine)):
        assert torch.equal(old, new)


def test_cached_teacher_outputs_change_nothing(make_engine):
    # the in-memory cache (the store's own equivalence tests are in test_teacher_outputs.py)
    cached = make_engine(cache_teacher_outputs=True, teacher_store=False)
    live = make_engine(cache_teacher_outputs=False)
    assert cached.teacher_source.memory is not None and live.teacher_source.memory is None
    cached.reset(seed=3)
    live.reset(seed=3)
    weights = torch.tensor([0.6, 0.4])
    for a, b in zip(_run(cached, 6, weights), _run(live, 6, weights)):
        assert a == pytest.approx(b, rel=1e-5)


def test_epochs_end_with_evaluation_and_the_budget_terminates(make_engine):
    engine = make_engine(epochs=2, max_steps_per_epoch=3)
    engine.reset(seed=0)
    results, evaluated = [], []
    for _ in range(6):
        results.append(engine.step(torch.tensor([0.5, 0.5])))
        if results[-1].epoch_end:
            # the student as the epoch end left it: after the first epoch, the next batch's
            # train-mode forward has since moved BatchNorm's running statistics, so the copy the
            # engine kept (the first evaluation is the best so far); after the last, the student
            state = engine.best_student_state if engine.current is not None else None
            evaluated.append((evaluate(engine, "val", state=state)[0], evaluate(engine, "test", state=state)[0]))
    assert [r.epoch_end for r in results] == [False, False, True, False, False, True]
    assert [r.val_acc for r in results] == [None, None, evaluated[0][0], None, None, evaluated[1][0]]
    assert [r.test_acc for r in results] == [None, None, evaluated[0][1], None, None, evaluated[1][1]]
    assert results[-1].done and engine.done and engine.current is None
    assert [r.done for r in results[:-1]] == [False] * 5
    # the kept student is the first epoch with the best validation accuracy, and it scores it
    best = 0 if evaluated[0][0] >= evaluated[1][0] else 1
    assert engine.best_epoch == best and engine.best_score == evaluated[best][0]
    assert evaluate(engine, "val", state=engine.best_student_state)[0] == evaluated[best][0]
    with pytest.raises(RuntimeError, match="budget"):
        engine.step(torch.tensor([0.5, 0.5]))
    # the schedule: 10x decays at round(0.625 * 2) = 1 and round(0.75 * 2) = round(0.875 * 2) = 2 epochs
    assert engine.lr == pytest.approx(engine.config.lr * 0.01)


def test_resume_mid_epoch_matches_an_uninterrupted_run(make_engine, tmp_path):
    weights = torch.tensor([0.25, 0.75])
    reference = make_engine(epochs=2)
    reference.reset(seed=5)
    reference_losses = _run(reference, 2 * reference.steps_per_epoch, weights)

    interrupted = make_engine(epochs=2)
    interrupted.reset(seed=5)
    cut = reference.steps_per_epoch + 3  # mid-way through the second epoch
    first_part = _run(interrupted, cut, weights)
    torch.save(interrupted.state_dict(), tmp_path / "engine.pt")
    del interrupted
    resumed = make_engine(epochs=2)
    resumed.load_state_dict(torch.load(tmp_path / "engine.pt", weights_only=True))
    second_part = _run(resumed, 2 * reference.steps_per_epoch - cut, weights)
    assert first_part + second_part == reference_losses
    assert resumed.evaluate("test") == reference.evaluate("test")


def test_load_refuses_a_mismatched_checkpoint(make_engine):
    engine = make_engine(epochs=2)
    engine.reset(seed=0)
    state = engine.state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        make_engine(batch_size=16).load_state_dict(state)
    state["teacher_names"] = ["a", "b"]
    with pytest.raises(ValueError, match="teachers"):
        make_engine().load_state_dict(state)


def test_per_batch_and_per_sample_weights_agree(make_engine):
    per_batch, per_sample = make_engine(), make_engine()
    per_batch.reset(seed=2)
    batch = per_sample.reset(seed=2)
    a = per_batch.step(torch.tensor([0.1, 0.9])).loss
    b = per_sample.step(torch.tensor([[0.1, 0.9]]).repeat(batch.batch_size, 1)).loss
    assert a == pytest.approx(b)


@pytest.mark.parametrize(
    "source",
    [{"cache_teacher_outputs": False}, {"teacher_store": False}, {}],
    ids=["teachers-per-batch", "in-memory-cache", "store"],
)
def test_prepared_batch_carries_its_own_forward_passes_feature_maps(make_engine, source):
    engine = make_engine(**source)
    batch = engine.reset(seed=4)
    assert engine.student is not None and batch.student_feature_map is not None
    # the student's map is the one its logits came from (same forward, same graph)
    assert batch.student_feature_map.requires_grad
    torch.testing.assert_close(engine.student.head_logits(batch.student_feature_map), batch.student_logits)
    assert len(batch.teacher_feature_maps) == engine.num_teachers
    images = normalise(engine, engine.data.train_images[batch.indices])  # synthetic: no augmentation
    for teacher, feature_map in zip(engine.teachers, batch.teacher_feature_maps):
        assert feature_map.dtype == torch.float32 and not feature_map.requires_grad
        # the store keeps feature maps in float16: equal to its rounding
        tolerance = {"rtol": 2e-3, "atol": 2e-3} if engine.teacher_source.store is not None else {}
        torch.testing.assert_close(feature_map, teacher.forward_all(images).feature_map, **tolerance)
    assert (engine.teacher_source.store is not None) == (source == {})


def test_prepared_batch_has_no_feature_maps_without_feature_kd(make_engine):
    batch = make_engine(feature_kd=False, cache_teacher_outputs=False).reset(seed=0)
    assert batch.teacher_feature_maps == [] and batch.student_feature_map is None


def test_drop_last_false_trains_on_the_last_partial_batch_and_resumes(make_engine, tmp_path):
    """drop_last=False (MTKD-RL's loaders): ceil(N / B) updates an epoch, every training sample
    once, the last batch the remainder; a checkpoint inside the epoch resumes it exactly. The
    default (True) keeps N // B full batches."""
    weights = torch.tensor([0.25, 0.75])
    dropping, keeping = make_engine(batch_size=48), make_engine(batch_size=48, drop_last=False)
    num_train = int(keeping.data.train_labels.shape[0])
    assert num_train % 48, "the synthetic training split must leave a partial batch"
    assert dropping.steps_per_epoch == num_train // 48 and keeping.steps_per_epoch == num_train // 48 + 1
    keeping.reset(seed=3)
    sizes = [len(indices) for indices in keeping._epoch_batches]
    assert sizes == [48] * (num_train // 48) + [num_train % 48]
    assert sorted(torch.cat(keeping._epoch_batches).tolist()) == list(range(num_train))
    reference_losses = _run(keeping, 2 * keeping.steps_per_epoch, weights)
    interrupted = make_engine(batch_size=48, drop_last=False)
    interrupted.reset(seed=3)
    cut = interrupted.steps_per_epoch + 1
    first_part = _run(interrupted, cut, weights)
    torch.save(interrupted.state_dict(), tmp_path / "engine.pt")
    resumed = make_engine(batch_size=48, drop_last=False)
    resumed.load_state_dict(torch.load(tmp_path / "engine.pt", weights_only=True))
    assert first_part + _run(resumed, 2 * keeping.steps_per_epoch - cut, weights) == reference_losses
    with pytest.raises(ValueError, match="drop_last"):
        make_engine(batch_size=48).load_state_dict(torch.load(tmp_path / "engine.pt", weights_only=True))


def test_the_per_sample_env_refuses_a_partial_last_batch():
    from kd_env.envs import PerSampleKDVectorEnv

    with pytest.raises(ValueError, match="drop_last=False: the last batch of each epoch has fewer than 32 samples"):
        PerSampleKDVectorEnv(num_envs=32, dataset="synthetic", train_size=100, drop_last=False)
    env = PerSampleKDVectorEnv(num_envs=25, dataset="synthetic", train_size=100, drop_last=False)  # 100 = 4 x 25: no partial batch
    assert env.engine.steps_per_epoch == 4
    env.close()
