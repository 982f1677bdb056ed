"""One runner for any policy on any registered env: our agents, SB3's algorithms, the baselines.

``train(...)`` (and ``kd-env train``) builds the env, the agent or baseline, and drives one run:
TensorBoard logging with a stable tag scheme, a progress bar, checkpoints of agent + env every
``checkpoint_every`` env steps and at the end, and ``resume=True`` that continues a stopped run
into the same TensorBoard curve. The agent runs on the CPU, the student on ``device``.

Units: one *env step* is one student update (for the per-sample env, one vector step).

TensorBoard tags (stable; ``<teacher>`` is the teacher's name, x axis = env steps):

* ``weights/logit/<teacher>``, ``weights/feature/<teacher>``: batch-mean weights applied
* ``reward/mean``; ``loss/total``, ``loss/ce``, ``loss/kd/<teacher>``
* ``train/lr``, ``train/epoch``; ``eval/val_acc``, ``eval/test_acc`` (epoch ends)
* ``final/best_val_acc``, ``final/test_acc`` (end of each student run: test accuracy of the
  best-validation student); ``agent/<name>`` (the agent's own losses)
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import kd_env  # noqa: F401  (registers the env ids)
from kd_env.envs.common import KDEnvSettings

OUR_AGENTS = ("reinforce", "mtkd-rl")
SB3_AGENTS = ("ppo", "a2c", "sac", "td3", "ddpg")
BASELINE_NAMES = ("aver", "ebkd", "camkd", "aekd", "best", "random")
AGENTS = OUR_AGENTS + SB3_AGENTS + BASELINE_NAMES
RUN_FILE = "run.json"
STATE_FILE = "state.json"
# per-step weights are kept for plots up to this many steps, then every n-th step
MAX_TRAJECTORY_POINTS = 5000


@dataclass
class RunConfig:
    """Everything that defines a run (saved as ``run.json``; ``resume`` re-reads it)."""

    env_id: str
    agent: str
    run_dir: str
    per_sample: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    total_steps: int | None = None
    """Env steps to run; ``None`` = one student training run (one episode)."""
    seed: int = 0
    checkpoint_every: int = 0
    """Env steps between checkpoints (0: only at the end)."""
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}; choose one of {', '.join(AGENTS)}")
        if self.agent == "mtkd-rl" and not self.per_sample:
            self.per_sample = True  # the published agent is defined on the per-sample state


@dataclass
class RunResult:
    """What one run measured (also written as ``result.json`` in the run folder)."""

    env_id: str
    agent: str
    seed: int
    per_sample: bool
    env_steps: int
    episodes: list[dict[str, float]]
    """One entry per finished student run: best_val_acc, best_epoch, final_test_acc."""
    val_curve: list[tuple[int, float]]
    """(env step, validation accuracy) at each epoch end."""
    weight_trajectory: list[tuple[int, list[float]]]
    """(env step, batch-mean logit weights) per step (strided for long runs)."""
    teacher_names: list[str]
    wall_time_s: float
    peak_memory_mib: float

    @property
    def test_acc(self) -> float:
        return self.episodes[-1]["final_test_acc"] if self.episodes else float("nan")

    @property
    def best_val_acc(self) -> float:
        return self.episodes[-1]["best_val_acc"] if self.episodes else float("nan")


def _env_kwargs(config: RunConfig) -> dict[str, Any]:
    kwargs = dict(config.env_kwargs)
    if config.agent in BASELINE_NAMES:
        kwargs.setdefault("action_mode", "simplex")  # the rules give simplex weights
    elif config.agent == "mtkd-rl":
        kwargs.setdefault("action_mode", "raw")  # its warm-up applies all-ones weights as they are
    return kwargs


def make_env(config: RunConfig) -> Any:
    """The env of a run: batch-level ``gym.make`` or the per-sample ``gym.make_vec``."""
    kwargs = _env_kwargs(config)
    if config.per_sample:
        return gym.make_vec(config.env_id, vectorization_mode="vector_entry_point", **kwargs)
    # no passive checker: it refuses a step that follows a restore instead of a reset (resume);
    # the env itself is checked by Gymnasium's and SB3's checkers in the tests
    return gym.make(config.env_id, disable_env_checker=True, **kwargs)


class RunLogger:
    """TensorBoard (through ``torch.utils.tensorboard``) + progress bar + the run's records."""

    def __init__(self, config: RunConfig, teacher_names: list[str], total_steps: int, start_step: int, state: dict[str, Any]) -> None:
        self.config = config
        self.teacher_names = teacher_names
        self.step = start_step
        self.state = state
        self.writer = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events written after the checkpoint we resume from: one clean curve
            self.writer = SummaryWriter(str(Path(config.run_dir) / "tb"), purge_step=start_step + 1 if start_step else None)
        self.bar = None
        if config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=f"{config.agent} on {config.env_id}", unit="step")
        self.stride = max(1, total_steps // MAX_TRAJECTORY_POINTS)

    def _scalar(self, tag: str, value: float) -> None:
        if self.writer is not None and np.isfinite(value):
            self.writer.add_scalar(tag, float(value), self.step)

    def log(self, info: dict[str, Any], reward_mean: float, losses: dict[str, float] | None) -> None:
        """Record one env step. ``info`` is the batch-level info (vector infos are reduced first)."""
        self.step += 1
        weights = np.asarray(info["weights"], dtype=np.float64)
        for name, weight in zip(self.teacher_names, weights):
            self._scalar(f"weights/logit/{name}", weight)
        if "feature_weights" in info:
            for name, weight in zip(self.teacher_names, np.asarray(info["feature_weights"])):
                self._scalar(f"weights/feature/{name}", weight)
        for name, value in zip(self.teacher_names, np.asarray(info["kd_loss"])):
            self._scalar(f"loss/kd/{name}", value)
        self._scalar("reward/mean", reward_mean)
        self._scalar("loss/total", info["loss"])
        self._scalar("loss/ce", info["ce"])
        self._scalar("train/lr", info["lr"])
        self._scalar("train/epoch", info["epoch"])
        if self.step % self.stride == 0:
            self.state["weight_trajectory"].append((self.step, [round(float(w), 5) for w in weights]))
        if "val_acc" in info:
            self._scalar("eval/val_acc", info["val_acc"])
            self._scalar("eval/test_acc", info.get("test_acc", float("nan")))
            self.state["val_curve"].append((self.step, float(info["val_acc"])))
        if "final_test_acc" in info:
            episode = {key: float(info[key]) for key in ("best_val_acc", "best_epoch", "final_test_acc")}
            self.state["episodes"].append(episode)
            self._scalar("final/best_val_acc", episode["best_val_acc"])
            self._scalar("final/test_acc", episode["final_test_acc"])
        for name, value in (losses or {}).items():
            self._scalar(f"agent/{name}", value)
        if self.bar is not None:
            self.bar.update(1)
            shown = " ".join(f"{w:.2f}" for w in weights)
            postfix = {"epoch": int(info["epoch"]), "w": shown}
            if self.state["val_curve"]:
                postfix["val"] = f"{self.state['val_curve'][-1][1]:.3f}"
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def reduce_vector_info(info: dict[str, Any]) -> dict[str, Any]:
    """A per-sample env's infos (one value per slot) as one batch-level info."""
    reduced: dict[str, Any] = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        array = np.asarray(value)
        reduced[key] = array.mean(0) if key in ("weights", "feature_weights", "kd_loss") else array.reshape(-1)[0]
    return reduced


# ---------------------------------------------------------------------- checkpoints
def _checkpoint_dir(config: RunConfig) -> Path:
    return Path(config.run_dir) / "checkpoints"


def _write_json(path: Path, payload: Any) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(payload, indent=1))
    os.replace(temp, path)


class _Driver:
    """Builds the policy for a run and steps it; one subclass per kind of policy."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def env_steps_per_timestep(self, env: Any) -> int:
        return int(getattr(env, "num_envs", 1)) if self.config.per_sample else 1


def _our_agent(config: RunConfig, env: Any) -> Any:
    if config.agent == "reinforce":
        from kd_env.agents.reinforce import Reinforce

        return Reinforce(env, seed=config.seed, **config.agent_kwargs)
    from kd_env.agents.mtkd_rl import MTKDRL

    return MTKDRL(env, seed=config.seed, **config.agent_kwargs)


def _load_our_agent(config: RunConfig, path: Path, env: Any) -> Any:
    if config.agent == "reinforce":
        from kd_env.agents.reinforce import Reinforce

        return Reinforce.load(path, env=env)
    from kd_env.agents.mtkd_rl import MTKDRL

    return MTKDRL.load(path, env=env)


def train(config: RunConfig, resume: bool = False) -> RunResult:
    """Run ``config.agent`` on ``config.env_id`` (see the module docstring)."""
    run_dir = Path(config.run_dir)
    checkpoints = _checkpoint_dir(config)
    if resume:
        if not (run_dir / RUN_FILE).exists():
            raise FileNotFoundError(f"nothing to resume in {run_dir}: it has no {RUN_FILE}")
        saved = json.loads((run_dir / RUN_FILE).read_text())
        # a resumed run keeps its definition; only the budget may be extended
        total_steps = config.total_steps if config.total_steps is not None else saved["total_steps"]
        config = RunConfig(**{**saved, "total_steps": total_steps, "progress": config.progress, "run_dir": str(run_dir)})
        _write_json(run_dir / RUN_FILE, asdict(config))
    else:
        if (checkpoints / STATE_FILE).exists():
            raise FileExistsError(f"{run_dir} holds a run already: pass resume=True (--resume) or choose another run_dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / RUN_FILE, asdict(config))
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    env = make_env(config)
    kd = env.unwrapped  # make_env's envs: gym.make's wrappers, or the per-sample env itself
    teacher_names = list(kd.teacher_names)
    episode_steps = kd.engine.total_steps
    total_steps = config.total_steps or episode_steps
    state: dict[str, Any] = {"env_steps": 0, "episodes": [], "val_curve": [], "weight_trajectory": [], "wall_time_s": 0.0}
    if resume and (checkpoints / STATE_FILE).exists():
        state = json.loads((checkpoints / STATE_FILE).read_text())
        state["val_curve"] = [tuple(item) for item in state["val_curve"]]
        state["weight_trajectory"] = [tuple(item) for item in state["weight_trajectory"]]
    resumed = resume and state["env_steps"] > 0
    logger = RunLogger(config, teacher_names, total_steps, state["env_steps"], state)
    clock = {"since": time.perf_counter()}

    def account_time() -> None:
        now = time.perf_counter()
        state["wall_time_s"] = state.get("wall_time_s", 0.0) + now - clock["since"]
        clock["since"] = now

    def save_checkpoint(save_policy: Callable[[Path], Any]) -> None:
        save_policy(checkpoints)
        kd.save(checkpoints / "env.pt")
        state["env_steps"] = logger.step
        account_time()
        _write_json(checkpoints / STATE_FILE, state)

    remaining = total_steps - state["env_steps"]
    try:
        if remaining > 0:
            if config.agent in BASELINE_NAMES:
                _run_baseline(config, env, kd, logger, remaining, resumed, save_checkpoint)
            elif config.agent in OUR_AGENTS:
                _run_our_agent(config, env, kd, logger, remaining, resumed, save_checkpoint)
            else:
                _run_sb3(config, env, kd, logger, remaining, resumed, save_checkpoint)
    finally:
        logger.close()
    if logger.step > state["env_steps"]:
        account_time()
    result = RunResult(
        env_id=config.env_id,
        agent=config.agent,
        seed=config.seed,
        per_sample=config.per_sample,
        env_steps=logger.step,
        episodes=state["episodes"],
        val_curve=state["val_curve"],
        weight_trajectory=state["weight_trajectory"],
        teacher_names=teacher_names,
        wall_time_s=state["wall_time_s"],
        peak_memory_mib=_peak_memory_mib(kd),
    )
    _write_json(run_dir / "result.json", asdict(result))
    return result


def _peak_memory_mib(kd: Any) -> float:
    device = kd.engine.device
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's peak resident memory. ``VmHWM`` is reset by ``exec``, unlike ``ru_maxrss``,
    which a child started by ``subprocess`` inherits from its (maybe much larger) parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _checkpoint_due(config: RunConfig, step: int, last: bool) -> bool:
    return last or (config.checkpoint_every > 0 and step % config.checkpoint_every == 0)


def _run_baseline(config, env, kd, logger, remaining, resumed, save_checkpoint) -> None:
    from kd_env.baselines import load_baseline, make_baseline

    checkpoints = _checkpoint_dir(config)
    policy_path = checkpoints / "policy.pt"
    if resumed:
        kd.load(checkpoints / "env.pt")
        policy = load_baseline(policy_path, env)
        observation = kd.last_observation
    else:
        policy = make_baseline(config.agent, env, seed=config.seed, **config.agent_kwargs)
        observation, _ = env.reset(seed=config.seed)
    for index in range(remaining):
        action, _ = policy.predict(observation, deterministic=True)
        observation, reward, terminated, truncated, info = env.step(action)
        batch_info = reduce_vector_info(info) if config.per_sample else info
        logger.log(batch_info, float(np.mean(reward)), None)
        if np.any(terminated) or np.any(truncated):
            observation, _ = env.reset()
        if _checkpoint_due(config, logger.step, index == remaining - 1):
            save_checkpoint(lambda folder: policy.save(folder / "policy.pt"))


def _run_our_agent(config, env, kd, logger, remaining, resumed, save_checkpoint) -> None:
    checkpoints = _checkpoint_dir(config)
    if resumed:
        kd.load(checkpoints / "env.pt")
        agent = _load_our_agent(config, checkpoints / "agent.pt", env)
    else:
        agent = _our_agent(config, env)
    per_step = agent.num_envs

    def on_step(record: dict[str, Any]) -> bool:
        info = reduce_vector_info(record["info"]) if config.per_sample else record["info"]
        logger.log(info, float(record["reward_mean"]), record["losses"])
        last = logger.step >= (config.total_steps or kd.engine.total_steps)
        if _checkpoint_due(config, logger.step, last):
            save_checkpoint(lambda folder: agent.save(folder / "agent.pt"))
        return not last

    agent.learn(remaining * per_step, callback=on_step, reset_num_timesteps=not resumed)


def _run_sb3(config, env, kd, logger, remaining, resumed, save_checkpoint) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    from kd_env.agents.sb3 import load_sb3_agent, make_sb3_agent, save_sb3_agent

    checkpoints = _checkpoint_dir(config)
    if resumed:
        kd.load(checkpoints / "env.pt")
        model = load_sb3_agent(config.agent, checkpoints / "agent.zip", env)
        # SB3 resets the env at the start of learn() unless it holds a last observation: give it
        # the restored env's, so the student's run continues instead of starting over
        vec_env = model.get_env()
        raw = np.asarray(kd.last_observation, dtype=np.float32).reshape(vec_env.num_envs, -1)
        normalizer = model.get_vec_normalize_env()
        model._last_obs = normalizer.normalize_obs(raw) if normalizer is not None else raw
        if normalizer is not None:
            normalizer.old_obs = raw
        model._last_episode_starts = np.zeros(vec_env.num_envs, dtype=bool)
        if not config.per_sample:
            vec_env.set_attr("needs_reset", False)  # SB3's Monitor: the episode goes on, it was restored
    else:
        model = make_sb3_agent(config.agent, env, env_id=config.env_id, per_sample=config.per_sample, seed=config.seed, **config.agent_kwargs)
    per_step = model.get_env().num_envs

    class Logging(BaseCallback):
        def _on_step(self) -> bool:
            info = _sb3_batch_info(self.locals["infos"])
            losses = {k.split("/")[-1]: v for k, v in self.model.logger.name_to_value.items() if k.startswith("train/")}
            logger.log(info, float(np.mean(self.locals["rewards"])), losses or None)
            last = logger.step >= (config.total_steps or kd.engine.total_steps)
            if _checkpoint_due(config, logger.step, last):
                save_checkpoint(lambda folder: save_sb3_agent(self.model, folder / "agent.zip"))
            return not last  # SB3 would finish its rollout past the budget otherwise

    model.learn(remaining * per_step, callback=Logging(), reset_num_timesteps=not resumed)


def _sb3_batch_info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """SB3 hands one info dict per slot; the per-sample env's slots share the batch's values."""
    if len(infos) == 1:
        return infos[0]
    skip = {"terminal_observation", "episode", "TimeLimit.truncated"}
    stacked = {key: np.stack([np.asarray(item[key]) for item in infos]) for key in infos[0] if key not in skip}
    return reduce_vector_info(stacked)


def settings_help() -> str:
    """The env keyword arguments, for the CLI's help."""
    return ", ".join(sorted(KDEnvSettings.__dataclass_fields__))
