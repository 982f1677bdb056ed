"""kd-env with the RL ecosystem's tools as they are (issue #12): Gymnasium's async vector env,
SB3's ``make_vec_env``, RL Zoo, TensorBoard curves across agents, copies of envs, resuming
through ``gym.make``'s wrappers, out-of-bounds actions and reset options, import weight."""

from __future__ import annotations

import copy
import importlib.resources
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from processes import child_environment
from stable_baselines3.common.env_util import make_vec_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import kd_env  # noqa: F401  (registers the ids)
from kd_env.envs import MultiTeacherKDEnv, PerSampleKDVectorEnv
from kd_env.run import RunConfig, train

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
FAST: dict[str, Any] = {"epochs": 2, "max_steps_per_epoch": 4}
REPO = Path(__file__).resolve().parents[1]
# generous: a child imports torch (~4 s on a loaded 2-core machine) and builds small envs; a
# hang (the failure these tests guard against) runs into it, a pass finishes far inside it
CHILD_TIMEOUT_S = 240


def _action(env: Any, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, env.action_space.shape).astype(np.float32)


def _steps(env: Any, actions: list[np.ndarray]) -> list[tuple[np.ndarray, Any, Any]]:
    """(observation, reward, weights) of each step: what a faithful copy must reproduce."""
    trace = []
    for action in actions:
        observation, reward, _, _, info = env.step(action)
        trace.append((np.asarray(observation), np.asarray(reward), np.asarray(info["weights"])))
    return trace


def _assert_same(first: list[tuple[np.ndarray, Any, Any]], second: list[tuple[np.ndarray, Any, Any]]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def _run_child(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (the test cache inherited); a hang fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            cwd=cwd,
            check=False,  # the caller asserts on the return code, showing stderr
            env=child_environment(PYTHONPATH=str(REPO)),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child process hung (no result in {CHILD_TIMEOUT_S} s); its output: {exc.stdout!r} {exc.stderr!r}")


def _run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", *args],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            cwd=cwd,
            check=False,
            env=child_environment(),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args[0]} did not finish in {CHILD_TIMEOUT_S} s: {exc.stdout!r} {exc.stderr!r}")


@pytest.fixture(scope="module", autouse=True)
def _synthetic_teachers_trained() -> None:
    """Train the synthetic pool here, once, so that child processes only load it."""
    gym.make(SYNTHETIC, **FAST).close()


# ------------------------------------------------------------------ 1. async vector env
def test_async_make_vec_with_the_default_fork_start_method_runs_and_matches_sync():
    script = """
        import sys
        import numpy as np, torch, gymnasium as gym, kd_env
        torch.set_num_threads(2)  # the parent's thread pool is what a forked child inherited broken
        kwargs = {"epochs": 2, "max_steps_per_epoch": 4}
        actions = np.random.default_rng(0).uniform(-1, 1, (3, 2, 6)).astype(np.float32)
        results = {}
        for mode in ("async", "sync"):
            if mode == "sync":
                torch.set_num_threads(1)  # as in the forked workers: same summation order, same numbers
            envs = gym.make_vec("MultiTeacherKD-Synthetic-v0", num_envs=2, vectorization_mode=mode, **kwargs)
            envs.reset(seed=0)
            results[mode] = [envs.step(action)[1] for action in actions]
            envs.close()
        assert np.array_equal(np.array(results["async"]), np.array(results["sync"])), results
        print("OK", flush=True)
    """
    if sys.platform != "linux":
        pytest.skip("fork is the default start method on Linux only")
    completed = _run_child(script)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("OK")


# ------------------------------------------------------------------ 2. render modes
def test_unsupported_render_modes_warn_and_sb3_make_vec_env_works():
    with pytest.warns(UserWarning, match="cannot render render_mode='rgb_array'"):
        env = MultiTeacherKDEnv(dataset="synthetic", render_mode="rgb_array", **FAST)
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="without a render_mode"):
        assert env.render_mode is None and env.render() is None
    # SB3 asks for "rgb_array" and falls back only on TypeError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        vec_env = make_vec_env(SYNTHETIC, n_envs=2, seed=0, env_kwargs=FAST)
    observation = vec_env.reset()
    observation, rewards, _, _ = vec_env.step(np.stack([_action(env), _action(env, 1)]))
    assert observation.shape == (2, *env.observation_space.shape) and rewards.shape == (2,)
    vec_env.close()
    with pytest.warns(UserWarning, match="cannot render"):
        PerSampleKDVectorEnv(num_envs=8, dataset="synthetic", render_mode="human", **FAST).close()


def test_human_render_mode_prints_each_step_once(capsys):
    env = gym.make(SYNTHETIC, render_mode="human", **FAST)
    env.reset(seed=0)
    env.step(_action(env))
    env.render()  # RL Zoo's enjoy renders after every step: no second copy of the line
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 0 step 0") and lines[1].startswith("epoch 0 step 1")
    assert "cnn_w16=" in lines[1]


# ------------------------------------------------------------------ 3. reward/mean
def test_reward_mean_is_the_env_reward_for_sb3_agents_behind_vecnormalize(tmp_path, monkeypatch):
    returned: list[float] = []
    step = MultiTeacherKDEnv.step

    def recording_step(self: MultiTeacherKDEnv, action: np.ndarray) -> Any:
        result = step(self, action)
        returned.append(result[1])
        return result

    monkeypatch.setattr(MultiTeacherKDEnv, "step", recording_step)
    # the synthetic PPO section has normalize: true, so SB3 learns from scaled rewards
    train(RunConfig(SYNTHETIC, "ppo", str(tmp_path / "run"), env_kwargs=FAST, progress=False))
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    logged = [event.value for event in sorted(events.Scalars("reward/mean"), key=lambda event: event.step)]
    assert len(logged) == len(returned) == 8
    # float32 on the way through SB3's buffers
    np.testing.assert_allclose(logged, returned, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ 4. copies
@pytest.mark.parametrize("copier", [lambda env: pickle.loads(pickle.dumps(env)), copy.deepcopy], ids=["pickle", "deepcopy"])
def test_mid_episode_copies_are_faithful(copier):
    env = gym.make(SYNTHETIC, **FAST)
    env.reset(seed=3)
    env.step(_action(env, 9))
    clone = copier(env)
    assert clone.unwrapped is not env.unwrapped and clone.unwrapped.spec == env.unwrapped.spec
    actions = [_action(env, seed) for seed in range(4)]
    _assert_same(_steps(clone, actions), _steps(env, actions))
    # the copy's generator goes on as the original's: the same next episode
    np.testing.assert_array_equal(clone.reset()[0], env.reset()[0])

    vector = gym.make_vec(SYNTHETIC, num_envs=8, vectorization_mode="vector_entry_point", **FAST)
    vector.reset(seed=3)
    vector.step(_action(vector, 9))
    vector_clone = copier(vector)
    actions = [_action(vector, seed) for seed in range(4)]
    _assert_same(_steps(vector_clone, actions), _steps(vector, actions))


def test_a_copy_is_refused_when_its_teachers_changed(tmp_path):
    cache = Path(os.environ["KD_ENV_CACHE"]) / "teachers" / "synthetic"
    first, second = sorted(cache.glob("*.pt"))[:2]
    teacher = tmp_path / "teacher.pt"
    shutil.copy(first, teacher)
    env = MultiTeacherKDEnv(dataset="synthetic", teachers=[str(teacher), str(second)], **FAST)
    env.reset(seed=0)
    payload = pickle.dumps(env)
    shutil.copy(second, teacher)  # e.g. the teacher was retrained since
    with pytest.raises(pickle.UnpicklingError, match="teachers or dataset differ"):
        pickle.loads(payload)


# ------------------------------------------------------------------ 5. resume through gym.make
def test_load_then_step_through_gym_make_and_reset_option_with_the_checker_on(tmp_path):
    original = gym.make(SYNTHETIC, **FAST)
    original.reset(seed=1)
    original.step(_action(original, 5))
    path = original.unwrapped.save(tmp_path / "env.pt")
    actions = [_action(original, seed) for seed in range(3)]
    expected = _steps(original, actions)

    fresh = gym.make(SYNTHETIC, **FAST)  # the registration's default wrappers
    fresh.unwrapped.load(path)
    _assert_same(_steps(fresh, actions), expected)

    checked = gym.make(SYNTHETIC, disable_env_checker=False, **FAST)  # Gymnasium's passive checker
    _, info = checked.reset(options={"checkpoint": str(path)})
    assert info["step"] == 1
    _assert_same(_steps(checked, actions), expected)
    vector = gym.make_vec(SYNTHETIC, num_envs=8, vectorization_mode="vector_entry_point", **FAST)
    with pytest.raises(ValueError, match="holds a MultiTeacherKDEnv checkpoint"):
        vector.reset(options={"checkpoint": str(path)})


# ------------------------------------------------------------------ 6. bounds and options
def test_out_of_bounds_softmax_actions_are_clipped_with_one_warning():
    env = gym.make(SYNTHETIC, **FAST).unwrapped
    reference = copy.deepcopy(env)
    env.reset(seed=0)
    reference.reset(seed=0)
    action = np.array([5.0, -3.0, 0.5, 1.5, -1.0, 0.0], dtype=np.float32)
    with pytest.warns(UserWarning, match="clipped"):
        wild = env.step(action)
    _assert_same([(wild[0], np.asarray(wild[1]), wild[4]["weights"])], _steps(reference, [np.clip(action, -1, 1)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per env
        env.step(action)

    vector = PerSampleKDVectorEnv(num_envs=8, dataset="synthetic", **FAST)
    vector.reset(seed=0)
    with pytest.warns(UserWarning, match="clipped"):
        _, _, _, _, infos = vector.step(np.full(vector.action_space.shape, 4.0, dtype=np.float32))
    np.testing.assert_allclose(infos["weights"], 1 / 3, rtol=1e-6)


def test_reset_options_are_checked():
    env = gym.make(SYNTHETIC, **FAST)
    env.reset(options={})  # Gymnasium's checker passes an empty dict
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"teachers": ["mlp"]})
    with pytest.raises(ValueError, match="own random state"):
        env.reset(seed=0, options={"checkpoint": "env.pt"})
    vector = gym.make_vec(SYNTHETIC, num_envs=8, vectorization_mode="vector_entry_point", **FAST)
    with pytest.raises(ValueError, match="unknown reset option"):
        vector.reset(options={"budget": 3})


# ------------------------------------------------------------------ 7. RL Zoo
@pytest.mark.slow  # 30 s or more on a loaded 2-core machine
def test_rl_zoo_trains_and_enjoys_with_the_package_hyperparameters(tmp_path):
    pytest.importorskip("rl_zoo3", reason="rl_zoo3 is in the test extra: pip install -e '.[test]'")
    # the package's yaml, wherever it is installed (the README's one-liner)
    conf = Path(str(importlib.resources.files("kd_env.agents").joinpath("hyperparams", "ppo.yml")))
    common = ["--algo", "ppo", "--env", SYNTHETIC, "--gym-packages", "kd_env", "--device", "cpu", "-f", "logs"]
    env_kwargs = ["--env-kwargs", "epochs:2", "max_steps_per_epoch:4"]
    trained = _run_module("rl_zoo3.train", *common, "--conf-file", str(conf), "-n", "32", "--seed", "0", *env_kwargs, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = tmp_path / "logs" / "ppo" / f"{SYNTHETIC}_1"
    assert (run / f"{SYNTHETIC}.zip").is_file() and (run / SYNTHETIC / "vecnormalize.pkl").is_file()
    config = (run / SYNTHETIC / "config.yml").read_text()
    assert "- n_steps\n    - 16" in config  # the package's section, not the zoo's n_steps=2048

    enjoyed = _run_module("rl_zoo3.enjoy", *common, "-n", "9", *env_kwargs, cwd=tmp_path)  # render_mode="human"
    assert enjoyed.returncode == 0, enjoyed.stderr[-3000:]
    assert "epoch 1 step 5" in enjoyed.stdout and "Episode Length 8" in enjoyed.stdout


# ------------------------------------------------------------------ 8. import weight
def test_import_and_a_synthetic_env_do_not_import_torchvision():
    script = """
        import sys
        import numpy as np, gymnasium as gym, kd_env
        after_import = "torchvision" in sys.modules
        env = gym.make("MultiTeacherKD-Synthetic-v0", epochs=2, max_steps_per_epoch=4)
        env.reset(seed=0)
        env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        print(after_import, "torchvision" in sys.modules)
        from kd_env.data import find_data_root  # the disk path still works, loading it now
        print("torchvision" in sys.modules)
    """
    completed = _run_child(script)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == ["False", "False", "True"]
