"""The policy registry: a user's own policy runs through the runner and the CLI without editing kd-env."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from processes import child_environment

import kd_env
from kd_env import cli, registry
from kd_env.run import PolicyActionError, RunConfig, train

ENV = "MultiTeacherKD-Synthetic-v0"
TINY = {"epochs": 1, "max_steps_per_epoch": 5}
NAME = "test-equal-logits"


class EqualLogits:
    """A user's policy: the same logit for every teacher (uniform weights in the default softmax mode)."""

    def __init__(self, env: Any, seed: int = 0, value: float = 0.25) -> None:
        self.env = env
        self.seed = seed
        self.value = value

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        return np.full(self.env.action_space.shape, self.value, dtype=np.float32), state


class BadAction:
    """Acts well for ``good_steps`` steps, then returns ``kind`` ("shape" or "nan"); remembers the
    student as it was when it returned the bad action."""

    last: ClassVar[BadAction]  # the latest instance, for the test to inspect

    def __init__(self, env: Any, seed: int = 0, kind: str = "shape", good_steps: int = 2) -> None:
        self.env, self.kind, self.good_steps = env, kind, good_steps
        self.calls = 0
        self.student_before: dict[str, torch.Tensor] | None = None
        BadAction.last = self

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        self.calls += 1
        action = np.zeros(self.env.action_space.shape, dtype=np.float32)
        if self.calls <= self.good_steps:
            return action, state
        student = self.env.unwrapped.engine.student
        self.student_before = {key: value.clone() for key, value in student.state_dict().items()}
        if self.kind == "shape":
            return action[:-1], state
        action[0] = np.nan
        return action, state


@pytest.fixture()
def registered():
    kd_env.register_policy(NAME, EqualLogits)
    yield NAME
    registry.unregister_policy(NAME)


def test_a_registered_policy_runs_through_the_runner(tmp_path, registered):
    assert registered in kd_env.policy_names()
    result = train(RunConfig(ENV, registered, str(tmp_path / "run"), env_kwargs=TINY, agent_kwargs={"value": -0.5}, progress=False))
    assert result.env_steps == 5 and len(result.episodes) == 1
    for _, weights in result.weight_trajectory:
        assert weights == pytest.approx([1 / 3] * 3, abs=1e-5)  # equal logits -> equal weights
    # a policy without save/load: the env is checkpointed, the policy rebuilt from the factory on resume
    assert (tmp_path / "run" / "checkpoints" / "env.pt").exists()
    assert not (tmp_path / "run" / "checkpoints" / "policy.pt").exists()


def test_a_registered_policy_resumes(tmp_path, registered):
    config = {
        "env_id": ENV,
        "agent": registered,
        "env_kwargs": {"epochs": 2, "max_steps_per_epoch": 3},
        "checkpoint_every": 2,
        "progress": False,
    }
    straight = train(RunConfig(**config, run_dir=str(tmp_path / "straight")))
    train(RunConfig(**config, run_dir=str(tmp_path / "stopped"), total_steps=4))
    resumed = train(RunConfig(ENV, registered, str(tmp_path / "stopped"), total_steps=6, progress=False), resume=True)
    assert resumed.env_steps == 6 and resumed.episodes == straight.episodes


def test_a_registered_policy_runs_through_the_cli(tmp_path, registered, capsys):
    run_dir = tmp_path / "cli-run"
    status = cli.main(
        [
            "train",
            "--env",
            ENV,
            "--agent",
            registered,
            "--env-arg",
            "epochs=1",
            "--env-arg",
            "max_steps_per_epoch=5",
            "--agent-arg",
            "value=1.0",
            "--run-dir",
            str(run_dir),
            "--no-progress",
            "--no-tensorboard",
        ]
    )
    assert status == 0
    assert "5 student updates" in capsys.readouterr().out
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["agent"] == registered and saved["agent_kwargs"] == {"value": 1.0} and saved["imports"] == []


@pytest.mark.slow  # 30 s or more on a loaded 2-core machine
def test_kd_env_train_imports_the_users_module(tmp_path):
    """The same through a fresh process: the module that registers the policy is only known by --import."""
    module_dir = tmp_path / "user_code"
    module_dir.mkdir()
    (module_dir / "my_kd_policies.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import kd_env


            class FirstTeacher:
                def __init__(self, env, seed=0):
                    self.env = env

                def predict(self, observation, state=None, episode_start=None, deterministic=False):
                    action = np.zeros(self.env.action_space.shape, dtype=np.float32)
                    k = self.env.unwrapped.num_teachers
                    action[..., ::k] = 1.0  # action_mode="simplex": every head all on the first teacher
                    return action, state


            kd_env.register_policy("first-teacher", FirstTeacher, action_mode="simplex", per_sample=False)
            """
        )
    )
    run_dir = tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("kd-env")),
        "train",
        "--import",
        "my_kd_policies",
        "--agent",
        "first-teacher",
        "--env",
        ENV,
        "--env-arg",
        "epochs=1",
        "--env-arg",
        "max_steps_per_epoch=5",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        "--no-tensorboard",
    ]
    environment = child_environment(PYTHONPATH=str(module_dir))
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["env_steps"] == 5
    assert all(weights == [1.0, 0.0, 0.0] for _, weights in result["weight_trajectory"])
    assert json.loads((run_dir / "run.json").read_text())["imports"] == ["my_kd_policies"]
    # without the import the name is unknown, and the error says how to add it
    completed = subprocess.run(command[:2] + command[4:], env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert "unknown agent 'first-teacher'" in completed.stderr and "--import MODULE" in completed.stderr


@pytest.mark.parametrize("kind, returned", [("shape", r"shape \(5,\)"), ("nan", "1 NaN/inf entries")])
def test_a_bad_action_names_the_policy_and_leaves_the_student_unchanged(tmp_path, kind, returned):
    kd_env.register_policy("test-bad", BadAction, overwrite=True)
    try:
        with pytest.raises(PolicyActionError, match=rf"policy 'test-bad' \(BadAction\) returned .*{returned}") as caught:
            train(RunConfig(ENV, "test-bad", str(tmp_path / "run"), env_kwargs=TINY, agent_kwargs={"kind": kind}, progress=False))
    finally:
        registry.unregister_policy("test-bad")
    message = str(caught.value)
    assert "The student was not updated" in message and "shape (6,)" in message  # the fix: the expected shape
    policy = BadAction.last
    assert policy.calls == 3 and policy.student_before is not None
    student = policy.env.unwrapped.engine.student
    for key, value in student.state_dict().items():
        assert torch.equal(value, policy.student_before[key]), key


def test_predict_must_return_action_and_state(tmp_path):
    class ActionOnly(EqualLogits):
        def predict(self, observation, state=None, episode_start=None, deterministic=False):
            return super().predict(observation)[0]

    kd_env.register_policy("test-action-only", ActionOnly)
    try:
        with pytest.raises(PolicyActionError, match=r"must return \(action, state\)"):
            train(RunConfig(ENV, "test-action-only", str(tmp_path / "run"), env_kwargs=TINY, progress=False))
    finally:
        registry.unregister_policy("test-action-only")


def test_unknown_names_and_collisions(tmp_path, registered):
    with pytest.raises(ValueError, match="unknown agent 'dqn'") as caught:
        RunConfig(ENV, "dqn", str(tmp_path / "run"))
    for name in ("reinforce", "mtkd-rl", "ppo", "sac", "camkd", "oracle", "no-kd", registered):
        assert name in str(caught.value)
    assert "kd_env.register_policy" in str(caught.value)
    with pytest.raises(ValueError, match="'ppo' is a built-in policy"):
        kd_env.register_policy("ppo", EqualLogits)
    with pytest.raises(ValueError, match="already registered"):
        kd_env.register_policy(registered, EqualLogits)
    with pytest.raises(ValueError, match="kind"):
        kd_env.register_policy("test-other", EqualLogits, kind="sb3")
    with pytest.raises(ValueError, match="per_sample=False"):
        kd_env.register_policy("test-batch-only", EqualLogits, per_sample=False)
        RunConfig(ENV, "test-batch-only", str(tmp_path / "run"), per_sample=True)
    registry.unregister_policy("test-batch-only")
    with pytest.raises(ValueError, match="but not removed"):
        registry.unregister_policy("aver")


def test_overwriting_a_built_in(tmp_path):
    original = registry.get_policy("aver")
    try:
        kd_env.register_policy("aver", EqualLogits, overwrite=True)
        result = train(RunConfig(ENV, "aver", str(tmp_path / "run"), env_kwargs=TINY, progress=False))
        assert result.env_steps == 5
        assert registry.get_policy("aver").factory is EqualLogits
    finally:
        registry._REGISTRY["aver"] = original  # the built-in back for the other tests


def test_built_ins_are_entries_of_the_same_registry():
    kinds = {name: registry.get_policy(name).kind for name in kd_env.policy_names()}
    assert {kinds[name] for name in ("reinforce", "mtkd-rl")} == {"agent"}
    assert {kinds[name] for name in ("ppo", "a2c", "sac", "td3", "ddpg")} == {"sb3"}
    from kd_env.baselines import BASELINE_POLICIES

    for name, cls in BASELINE_POLICIES.items():
        spec = registry.get_policy(name)
        assert spec.kind == "policy" and spec.action_mode == cls.action_mode
    assert registry.get_policy("no-kd").action_mode == "raw"
    assert registry.get_policy("mtkd-rl").per_sample is True


def test_entry_points_are_discovered_lazily(tmp_path, monkeypatch):
    (tmp_path / "kd_plugin_for_tests.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            LOADED = []


            class PluginPolicy:
                action_mode = "simplex"

                def __init__(self, env, seed=0):
                    LOADED.append(seed)
                    self.env = env

                def predict(self, observation, state=None, episode_start=None, deterministic=False):
                    return np.ones(self.env.action_space.shape, dtype=np.float32), state
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    group = registry.ENTRY_POINT_GROUP
    points = [
        importlib.metadata.EntryPoint(name="plugin-policy", value="kd_plugin_for_tests:PluginPolicy", group=group),
        importlib.metadata.EntryPoint(name="ppo", value="kd_plugin_for_tests:PluginPolicy", group=group),
    ]

    def entry_points(**selection: Any) -> list[importlib.metadata.EntryPoint]:
        return [point for point in points if selection.get("group") == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with pytest.warns(UserWarning, match="'ppo'.*built-in"):
        names = kd_env.policy_names()
    assert "plugin-policy" in names and "kd_plugin_for_tests" not in sys.modules  # listed, not loaded
    try:
        result = train(RunConfig(ENV, "plugin-policy", str(tmp_path / "run"), env_kwargs=TINY, seed=3, progress=False))
        assert sys.modules["kd_plugin_for_tests"].LOADED == [3]
        assert registry.get_policy("plugin-policy").action_mode == "simplex"  # read from the class
        assert all(weights == pytest.approx([1 / 3] * 3, abs=1e-5) for _, weights in result.weight_trajectory)
        assert registry.get_policy("ppo").builtin  # an entry point cannot take a built-in's name
    finally:
        registry.unregister_policy("plugin-policy")


def test_a_missing_import_module_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot import 'no_such_module_kd'.*PYTHONPATH"):
        RunConfig(ENV, "aver", str(tmp_path / "run"), imports=["no_such_module_kd"])
