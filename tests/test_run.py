"""The runner: every kind of policy on one env, TensorBoard tags, checkpoints and resume."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_env.run import RunConfig, train

ENV = "MultiTeacherKD-Synthetic-v0"
SHORT = {"epochs": 2, "max_steps_per_epoch": 5}


def _scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return sorted((event.step, event.value) for event in events.Scalars(tag))


@pytest.mark.parametrize(
    "agent, per_sample",
    [
        ("aver", False),
        ("ebkd", True),
        ("oracle", True),
        ("no-kd", False),
        ("reinforce", False),
        ("reinforce", True),
        ("mtkd-rl", True),
        ("ppo", False),
        ("a2c", True),
    ],
)
def test_every_kind_of_policy_runs_one_student_training(tmp_path, agent, per_sample):
    result = train(RunConfig(ENV, agent, str(tmp_path / "run"), per_sample=per_sample, env_kwargs=SHORT, progress=False))
    assert result.env_steps == 10  # one episode: 2 epochs x 5 updates, not a step more
    assert len(result.episodes) == 1 and 0.0 <= result.test_acc <= 1.0
    assert [step for step, _ in result.val_curve] == [5, 10]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["episodes"] == result.episodes
    weights = _scalars(tmp_path / "run", "weights/logit/cnn_w16")
    assert [step for step, _ in weights] == list(range(1, 11))
    assert _scalars(tmp_path / "run", "final/test_acc")[0][1] == pytest.approx(result.test_acc)
    if agent == "no-kd":  # the runner made the env in the policy's own action mode ("raw")
        assert saved["env_steps"] == 10 and all(value == 0.0 for _, value in weights)


def test_tensorboard_tag_scheme(tmp_path):
    train(RunConfig(ENV, "reinforce", str(tmp_path / "run"), env_kwargs=SHORT, agent_kwargs={"n_steps": 4}, progress=False))
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for teacher in ("mlp", "cnn_w8", "cnn_w16"):
        assert {f"weights/logit/{teacher}", f"weights/feature/{teacher}", f"loss/kd/{teacher}"} <= tags
    assert {"reward/mean", "loss/ce", "loss/total", "train/lr", "eval/val_acc", "eval/test_acc", "final/test_acc"} <= tags
    assert {"agent/policy_loss", "agent/entropy"} <= tags


@pytest.mark.parametrize("agent", ["reinforce", "camkd"])
def test_resume_continues_the_same_run(tmp_path, agent):
    agent_kwargs = {"n_steps": 4} if agent == "reinforce" else {}  # updates at steps 4 and 8, around the cut
    config = {"env_id": ENV, "agent": agent, "env_kwargs": SHORT, "agent_kwargs": agent_kwargs, "checkpoint_every": 3, "progress": False}
    straight = train(RunConfig(**config, run_dir=str(tmp_path / "straight")))
    train(RunConfig(**config, run_dir=str(tmp_path / "stopped"), total_steps=6))  # "interrupted" after step 6
    resumed = train(RunConfig(ENV, agent, str(tmp_path / "stopped"), total_steps=10, progress=False), resume=True)
    assert resumed.env_steps == 10
    assert resumed.episodes == straight.episodes and resumed.val_curve == straight.val_curve
    assert resumed.weight_trajectory == straight.weight_trajectory
    # one TensorBoard curve, each step once
    assert [step for step, _ in _scalars(tmp_path / "stopped", "reward/mean")] == list(range(1, 11))
    assert _scalars(tmp_path / "stopped", "reward/mean") == _scalars(tmp_path / "straight", "reward/mean")
    if agent == "reinforce":
        from kd_env.agents import Reinforce

        a = Reinforce.load(tmp_path / "straight" / "checkpoints" / "agent.pt")
        b = Reinforce.load(tmp_path / "stopped" / "checkpoints" / "agent.pt")
        assert a.num_updates == b.num_updates > 0
        for key, value in a.policy.state_dict().items():
            assert torch.equal(value, b.policy.state_dict()[key]), key


def test_existing_run_needs_resume(tmp_path):
    config = RunConfig(ENV, "aver", str(tmp_path / "run"), env_kwargs=SHORT, progress=False)
    train(config)
    with pytest.raises(FileExistsError, match="resume"):
        train(config)
    with pytest.raises(ValueError, match="unknown agent"):
        RunConfig(ENV, "dqn", str(tmp_path / "other"))


def test_sb3_run_resumes_the_same_student_run(tmp_path):
    """SB3 keeps no rollout in its checkpoint, so the agent is not bit-exact across a resume;
    the student's run is: it continues where it stopped instead of starting over."""
    config = {"env_id": ENV, "agent": "ppo", "env_kwargs": SHORT, "checkpoint_every": 3, "progress": False}
    train(RunConfig(**config, run_dir=str(tmp_path / "run"), total_steps=6))
    statistics = tmp_path / "run" / "checkpoints" / "vecnormalize.pkl"
    observations_seen = pickle.loads(statistics.read_bytes()).obs_rms.count
    resumed = train(RunConfig(ENV, "ppo", str(tmp_path / "run"), total_steps=10, progress=False), resume=True)
    assert resumed.env_steps == 10 and len(resumed.episodes) == 1  # one student run, not two
    assert [step for step, _ in resumed.val_curve] == [5, 10]
    assert [step for step, _ in _scalars(tmp_path / "run", "train/epoch")] == list(range(1, 11))
    assert [value for _, value in _scalars(tmp_path / "run", "train/epoch")][5:] == [1.0] * 4 + [2.0]  # not epoch 0 again
    # the resumed agent keeps training its VecNormalize statistics (4 more observations), not frozen ones
    assert pickle.loads(statistics.read_bytes()).obs_rms.count == pytest.approx(observations_seen + 4)


def test_global_rng_states_round_trip_through_the_checkpoint_reader(tmp_path):
    import random

    import numpy as np

    from kd_env.checkpoint_format import CheckpointReadError
    from kd_env.run.run_folder import _restore_global_rng, _save_global_rng

    _save_global_rng(tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    for draw in (lambda: torch.rand(5), lambda: np.random.rand(5), random.random):
        draw()  # move every generator on
    _restore_global_rng(tmp_path / "rng.pt")
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    _restore_global_rng(tmp_path / "absent.pt")  # a checkpoint from before rng.pt: nothing to restore
    torch.save({"torch": torch.get_rng_state()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointReadError, match="not a run's global RNG states.*kd_env.rng/1"):
        _restore_global_rng(tmp_path / "foreign.pt")
