"""stable-baselines3 agents on the kd-env environments, configured the RL Baselines3 Zoo way.

The algorithms are SB3's own (PPO, A2C, SAC, TD3, DDPG), unmodified; this module only chooses
their hyperparameters and builds the vectorised environment they train on:

* :func:`load_hyperparams` (in :mod:`kd_env.agents.sb3_hyperparams`, re-exported here) reads
  ``hyperparams/<algo>.yml`` in RL Zoo's layout and parses it without ``eval``.
* :func:`make_sb3_agent` builds the vec env (batch-level ``gym.Env`` -> ``Monitor`` ->
  ``DummyVecEnv``; per-sample ``VectorEnv`` -> :class:`~kd_env.envs.sb3_vec.SB3VecEnvAdapter`
  -> ``VecMonitor``; then ``VecNormalize`` if the section says ``normalize``), the action noise
  of TD3/DDPG, and the model, always on the CPU (the student may use the GPU inside the env).
* :func:`save_sb3_agent` / :func:`load_sb3_agent` write and read the model zip and, as RL Zoo
  does, the ``VecNormalize`` statistics as ``vecnormalize.pkl`` in the same folder (one folder
  per agent), both atomically.
* :func:`continue_sb3_episode` lets a loaded model go on with the episode of an env restored
  from a checkpoint (``kd-env train --resume``) instead of resetting it.

With ``normalize`` on, the model's ``predict`` expects *normalised* observations, as every SB3
model trained behind ``VecNormalize`` does: evaluate on ``model.get_env()`` or on
:func:`make_sb3_eval_env`, never on the raw env.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecNormalize, is_vecenv_wrapped

from kd_env.envs import make_sb3_per_sample_env
from kd_env.envs.per_sample_env import PerSampleKDVectorEnv
from kd_env.envs.sb3_vec import SB3VecEnvAdapter
from kd_env.utils import atomic_write

# the yaml reading lives in its own module; its public names stay importable from here
from .sb3_hyperparams import (
    ALGORITHMS,
    ALLOWED_NAMES,
    ENV_SIDE_KEYS,
    PER_SAMPLE_SUFFIX,
    check_algo,
    load_hyperparams,
    parse_python_literal,
    preprocess_hyperparams,
    raw_hyperparams,
    section_name,
)

#: Name of the VecNormalize statistics file next to a saved model (RL Zoo's convention).
VEC_NORMALIZE_FILE = "vecnormalize.pkl"


# ---------------------------------------------------------------------------------- env building
def _is_per_sample(env: Any) -> bool:
    if isinstance(env, SB3VecEnvAdapter):
        return True
    if isinstance(env, VecEnv):
        return isinstance(env.unwrapped, SB3VecEnvAdapter)
    return isinstance(env, gym.vector.VectorEnv) and isinstance(env.unwrapped, PerSampleKDVectorEnv)


def _env_id_of(env: Any) -> str | None:
    """The registered id an env was made from (``gym.make`` / ``gym.make_vec`` set ``spec``)."""
    if isinstance(env, str):
        return env
    inner = env.unwrapped if isinstance(env, VecEnv) else env
    if isinstance(inner, SB3VecEnvAdapter):
        inner = inner.env
    spec = getattr(inner, "spec", None)
    return None if spec is None else spec.id


def _monitored(env: gym.Env, monitor_kwargs: Mapping[str, Any]) -> gym.Env:
    # SB3 wraps a bare gym.Env in Monitor itself but not a VecEnv: without it no ep_rew_mean is logged
    return env if is_wrapped(env, Monitor) else Monitor(env, **monitor_kwargs)


def _make_monitored_env(env_id: str, env_kwargs: Mapping[str, Any], monitor_kwargs: Mapping[str, Any]) -> gym.Env:
    return _monitored(gym.make(env_id, **env_kwargs), monitor_kwargs)


def make_sb3_vec_env(
    env: gym.Env | gym.vector.VectorEnv | VecEnv | str,
    *,
    per_sample: bool = False,
    n_envs: int = 1,
    env_kwargs: Mapping[str, Any] | None = None,
    monitor_kwargs: Mapping[str, Any] | None = None,
) -> VecEnv:
    """The SB3 ``VecEnv`` an agent trains on (before ``VecNormalize``).

    Args:
        env: a batch-level ``gym.Env`` (wrapped in ``Monitor`` and a one-env ``DummyVecEnv``),
            a per-sample ``VectorEnv`` (wrapped in the SB3 adapter and ``VecMonitor``), an SB3
            ``VecEnv`` (used as is), or an env id (built with ``env_kwargs``: ``n_envs``
            batch-level copies, or one per-sample env with ``n_envs`` slots).
        per_sample: build the per-sample env when ``env`` is an id.
        n_envs: copies (batch-level) or sample slots (per-sample) when ``env`` is an id.
        env_kwargs: keyword arguments of the env when ``env`` is an id.
        monitor_kwargs: keyword arguments of SB3's ``Monitor`` (batch-level only).
    """
    env_kwargs = dict(env_kwargs or {})
    monitor_kwargs = dict(monitor_kwargs or {})
    if isinstance(env, str):
        if per_sample:
            return VecMonitor(make_sb3_per_sample_env(env, num_envs=n_envs, **env_kwargs))
        return DummyVecEnv([functools.partial(_make_monitored_env, env, env_kwargs, monitor_kwargs) for _ in range(n_envs)])
    if env_kwargs:
        raise ValueError("env_kwargs only apply when env is an id; this env is already built")
    if isinstance(env, VecEnv):
        return env
    if isinstance(env, gym.vector.VectorEnv):
        if not isinstance(env.unwrapped, PerSampleKDVectorEnv):
            raise ValueError(
                f"SB3 does not take Gymnasium vector envs; only kd-env's per-sample env is adapted, got {type(env.unwrapped).__name__}"
            )
        return VecMonitor(SB3VecEnvAdapter(env))
    if isinstance(env, gym.Env):
        if per_sample:
            raise ValueError("per_sample=True needs the per-sample env (gym.make_vec(..., vectorization_mode='vector_entry_point'))")
        monitored = _monitored(env, monitor_kwargs)
        return DummyVecEnv([lambda: monitored])
    raise ValueError(f"env must be a gym.Env, a kd-env per-sample VectorEnv, an SB3 VecEnv or an env id, got {type(env).__name__}")


def _action_noise(noise_type: str, noise_std: float, n_actions: int) -> ActionNoise:
    """RL Zoo's ``noise_type``/``noise_std`` keys as an SB3 action-noise object."""
    mean, sigma = np.zeros(n_actions), float(noise_std) * np.ones(n_actions)
    if noise_type.strip() == "normal":
        return NormalActionNoise(mean=mean, sigma=sigma)
    if noise_type.strip() == "ornstein-uhlenbeck":
        return OrnsteinUhlenbeckActionNoise(mean=mean, sigma=sigma)
    raise ValueError(f"noise_type must be 'normal' or 'ornstein-uhlenbeck', got {noise_type!r}")


def make_sb3_agent(
    algo: str,
    env: gym.Env | gym.vector.VectorEnv | VecEnv | str,
    env_id: str | None = None,
    per_sample: bool = False,
    seed: int = 0,
    tensorboard_log: str | None = None,
    **overrides: Any,
) -> BaseAlgorithm:
    """An SB3 model with the recommended hyperparameters, on the CPU, ready to ``learn``.

    Args:
        algo: ``"ppo"``, ``"a2c"``, ``"sac"``, ``"td3"`` or ``"ddpg"``.
        env: see :func:`make_sb3_vec_env`; a per-sample env selects the per-sample section.
        env_id: which yaml section to use; default: the id the env was made from.
        per_sample: use the ``/per-sample`` section (implied by a per-sample env).
        seed: seeds the model and the env (same seed -> same run on CPU).
        tensorboard_log: SB3's TensorBoard folder.
        **overrides: replace yaml entries before parsing, as RL Zoo's ``--hyperparams``
            (raw yaml values are fine: ``learning_rate="lin_1e-3"``, ``normalize=False``,
            ``policy_kwargs="dict(net_arch=[32])"``), plus ``env_kwargs`` when ``env`` is an id.
            The model's ``n_timesteps`` recommendation is the yaml's; pass it to ``learn``.
    """
    name = check_algo(algo)
    if overrides.get("device", "cpu") != "cpu":
        raise ValueError("the agent runs on the CPU (device='cpu'); put the student on the GPU with the env's device argument")
    overrides.pop("device", None)
    per_sample = per_sample or _is_per_sample(env)
    if env_id is None:
        env_id = _env_id_of(env)
    hyperparams = preprocess_hyperparams({**raw_hyperparams(name, env_id, per_sample), **overrides})
    side = {key: hyperparams.pop(key) for key in ENV_SIDE_KEYS if key in hyperparams}

    vec_env = make_sb3_vec_env(
        env,
        per_sample=per_sample,
        n_envs=side.get("n_envs", 1),
        env_kwargs=side.get("env_kwargs"),
        monitor_kwargs=side.get("monitor_kwargs"),
    )
    normalize = side.get("normalize", False)
    if normalize is not False and not is_vecenv_wrapped(vec_env, VecNormalize):
        vec_env = VecNormalize(vec_env, **normalize)

    if side.get("noise_type") is not None:
        if name not in ("sac", "td3", "ddpg"):
            raise ValueError(f"noise_type is for off-policy algorithms (sac, td3, ddpg), not {name}")
        if "noise_std" not in side:
            raise ValueError("noise_type needs noise_std")
        action_shape = vec_env.action_space.shape
        assert action_shape is not None  # a Box
        hyperparams["action_noise"] = _action_noise(side["noise_type"], side["noise_std"], int(np.prod(action_shape)))

    policy = hyperparams.pop("policy", "MlpPolicy")
    hyperparams.setdefault("verbose", 0)
    return ALGORITHMS[name](policy, vec_env, seed=seed, tensorboard_log=tensorboard_log, device="cpu", **hyperparams)


def make_sb3_eval_env(
    model: BaseAlgorithm,
    env: gym.Env | gym.vector.VectorEnv | VecEnv | str,
    *,
    per_sample: bool = False,
    env_kwargs: Mapping[str, Any] | None = None,
) -> VecEnv:
    """A vec env for evaluating ``model``: ``env`` behind a frozen copy of the model's
    ``VecNormalize`` statistics (no updates, raw rewards), as RL Zoo's evaluation env."""
    vec_env = make_sb3_vec_env(env, per_sample=per_sample, env_kwargs=env_kwargs)
    trained = model.get_vec_normalize_env()
    if trained is None:
        return vec_env
    frozen: VecNormalize = pickle.loads(pickle.dumps(trained))
    frozen.set_venv(vec_env)
    frozen.training = False
    frozen.norm_reward = False
    return frozen


# ---------------------------------------------------------------------------------- save / load
def _model_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    # SB3 appends .zip when saving to a name without it; keep save and load in agreement
    return path if path.suffix == ".zip" else path.with_name(path.name + ".zip")


def save_sb3_agent(model: BaseAlgorithm, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` (SB3's zip, written atomically) and its ``VecNormalize`` statistics as
    ``vecnormalize.pkl`` in the same folder (RL Zoo's layout: one folder per agent).

    A stale ``vecnormalize.pkl`` is removed when the model has no ``VecNormalize``, so that
    :func:`load_sb3_agent` never applies another agent's statistics. Returns the zip's path.
    """
    model_path = _model_path(path)
    stats_path = model_path.parent / VEC_NORMALIZE_FILE
    vec_normalize = model.get_vec_normalize_env()
    # statistics first: a crash in between leaves the old model with new statistics at worst,
    # never a half-written file
    if vec_normalize is not None:
        atomic_write(stats_path, lambda file: pickle.dump(vec_normalize, file))
    else:
        stats_path.unlink(missing_ok=True)
    atomic_write(model_path, lambda file: model.save(file))  # type: ignore[arg-type]  # SB3 types it BufferedIOBase; any binary file works
    return model_path


def load_sb3_agent(
    algo: str,
    path: str | os.PathLike[str],
    env: gym.Env | gym.vector.VectorEnv | VecEnv | str,
    *,
    per_sample: bool = False,
    env_kwargs: Mapping[str, Any] | None = None,
    training: bool = False,
) -> BaseAlgorithm:
    """Load a :func:`save_sb3_agent` model onto ``env``, behind its saved ``VecNormalize``.

    Args:
        algo: the algorithm it was trained with.
        path: the zip (``.zip`` may be left out).
        env: as in :func:`make_sb3_vec_env` (it must not carry its own ``VecNormalize``).
        per_sample: build the per-sample env when ``env`` is an id.
        env_kwargs: keyword arguments of the env when ``env`` is an id.
        training: ``False`` (default) freezes the statistics and gives raw rewards, for
            evaluation (RL Zoo's ``enjoy``); ``True`` to continue training.

    Note:
        ``vecnormalize.pkl`` is a pickle (SB3's and RL Zoo's format): load only files you trust.
    """
    name = check_algo(algo)
    model_path = _model_path(path)
    if not model_path.is_file():
        raise FileNotFoundError(f"no SB3 model at {model_path}")
    vec_env = make_sb3_vec_env(env, per_sample=per_sample or _is_per_sample(env), env_kwargs=env_kwargs)
    stats_path = model_path.parent / VEC_NORMALIZE_FILE
    if stats_path.is_file():
        if is_vecenv_wrapped(vec_env, VecNormalize):
            raise ValueError(f"env already has a VecNormalize; pass the bare env so the saved statistics in {stats_path} apply")
        vec_env = VecNormalize.load(str(stats_path), vec_env)
        vec_env.training = training
        if not training:
            vec_env.norm_reward = False
    return ALGORITHMS[name].load(model_path, env=vec_env, device="cpu")


def continue_sb3_episode(model: BaseAlgorithm, last_observation: np.ndarray) -> None:
    """Make ``model.learn`` continue the episode its env is in instead of resetting the env.

    SB3 resets the env at the start of ``learn`` unless the model holds a last observation; a
    model fresh from :func:`load_sb3_agent` holds none. Here it gets the restored env's (the
    student's run continues where the checkpoint stopped), normalised by the model's
    ``VecNormalize`` if it has one, with no episode start pending; SB3's ``Monitor`` (batch-level
    env) is told that the episode goes on. Call before ``learn(..., reset_num_timesteps=False)``.

    Args:
        model: a loaded model whose env is the restored one.
        last_observation: the restored env's last observation (``env.unwrapped.last_observation``),
            ``[D]`` or ``[num_envs, D]``.
    """
    vec_env = model.get_env()
    if vec_env is None:
        raise ValueError("the model has no env; load it with env= (load_sb3_agent does)")
    raw = np.asarray(last_observation, dtype=np.float32).reshape(vec_env.num_envs, -1)
    normalizer = model.get_vec_normalize_env()
    # SB3 keeps these as private attributes; this is the one place in kd-env that sets them
    model._last_obs = normalizer.normalize_obs(raw) if normalizer is not None else raw
    if normalizer is not None:
        normalizer.old_obs = raw
    model._last_episode_starts = np.zeros(vec_env.num_envs, dtype=bool)
    if all(vec_env.env_is_wrapped(Monitor)):
        vec_env.set_attr("needs_reset", False)  # Monitor refuses a step before a reset otherwise


__all__ = [
    "ALGORITHMS",
    "ALLOWED_NAMES",
    "PER_SAMPLE_SUFFIX",
    "VEC_NORMALIZE_FILE",
    "continue_sb3_episode",
    "load_hyperparams",
    "load_sb3_agent",
    "make_sb3_agent",
    "make_sb3_eval_env",
    "make_sb3_vec_env",
    "parse_python_literal",
    "preprocess_hyperparams",
    "raw_hyperparams",
    "save_sb3_agent",
    "section_name",
]
