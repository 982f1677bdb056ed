"""One runner for any policy on any registered env: our agents, SB3's algorithms, the baselines
and the user's own policies (:func:`kd_env.register_policy`).

``train(...)`` (and ``kd-env train``) builds the env and the policy, and drives one run:
TensorBoard logging with a stable tag scheme, a progress bar, checkpoints of policy + env every
``checkpoint_every`` env steps and at the end, and ``resume=True`` that continues a stopped run
into the same TensorBoard curve. The agent runs on the CPU, the student on ``device``.

Units: one *env step* is one student update (for the per-sample env, one vector step).

How a policy is driven depends on the ``kind`` of its registry entry (:mod:`kd_env.registry`),
one :class:`Driver` per kind (:data:`DRIVERS`): ``"policy"`` (the baselines, user policies:
``predict`` steps the env), ``"agent"`` (our agents: ``learn`` with a per-step callback),
``"sb3"`` (SB3's algorithms: ``learn`` with an SB3 callback).

TensorBoard tags (stable; ``<teacher>`` is the teacher's name, x axis = env steps):

* ``weights/logit/<teacher>``, ``weights/feature/<teacher>``: batch-mean weights applied
* ``reward/mean``; ``loss/total``, ``loss/ce``, ``loss/kd/<teacher>``
* ``train/lr``, ``train/epoch``; ``eval/val_acc``, ``eval/test_acc`` (epoch ends)
* ``final/best_val_acc``, ``final/test_acc`` (end of each student run: test accuracy of the
  best-validation student); ``agent/<name>`` (the agent's own losses)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import resource
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

import kd_env  # noqa: F401  (registers the env ids)
from kd_env.registry import PolicySpec, get_policy, import_policy_modules, policy_names
from kd_env.utils import atomic_write, crash_point, fsync_dir, remove_stale_temporaries

logger = logging.getLogger(__name__)

__all__ = [
    "DRIVERS",
    "CheckpointError",
    "RunFolderBusyError",
    "Driver",
    "PolicyActionError",
    "RunConfig",
    "RunContext",
    "RunLogger",
    "RunResult",
    "make_env",
    "peak_rss_mib",
    "policy_names",
    "purge_tensorboard_events",
    "reduce_vector_info",
    "train",
    "verify_checkpoint",
]

RUN_FILE = "run.json"
STATE_FILE = "state.json"
ENV_CHECKPOINT = "env.pt"
# per-step weights are kept for plots up to this many steps, then every n-th step
MAX_TRAJECTORY_POINTS = 5000

SavePolicy = Callable[[Path], object]


@dataclass
class RunConfig:
    """Everything that defines a run (saved as ``run.json``; ``resume`` re-reads it).

    ``imports`` are imported first (here, and again wherever the config is re-created, e.g. in
    the benchmark's child processes), so that a module calling :func:`kd_env.register_policy`
    is loaded; then ``agent`` must be a registered name (:func:`kd_env.policy_names`).
    """

    env_id: str
    agent: str
    run_dir: str
    per_sample: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    total_steps: int | None = None
    """Env steps to run; ``None`` = ``student_runs`` whole student training runs (episodes)."""
    student_runs: int = 1
    """Whole student runs to train when ``total_steps`` is ``None`` (e.g. a policy learned over
    several runs, then evaluated frozen: the benchmark's transfer protocol)."""
    seed: int = 0
    checkpoint_every: int = 0
    """Env steps between checkpoints (0: only at the end)."""
    tensorboard: bool = True
    progress: bool = True
    imports: list[str] = field(default_factory=list)
    """Modules to import before the policy is looked up (``kd-env train --import``)."""

    def __post_init__(self) -> None:
        self.imports = list(self.imports)
        if isinstance(self.student_runs, bool) or not isinstance(self.student_runs, int) or self.student_runs < 1:
            raise ValueError(f"student_runs must be an integer >= 1, got {self.student_runs!r}")
        import_policy_modules(self.imports)
        spec = get_policy(self.agent)  # ValueError listing the known names
        if spec.per_sample is True and not self.per_sample:
            self.per_sample = True  # e.g. the published MTKD-RL agent is defined on the per-sample state
        elif spec.per_sample is False and self.per_sample:
            raise ValueError(f"policy {self.agent!r} is registered for the batch-level env only (per_sample=False)")

    @property
    def spec(self) -> PolicySpec:
        """The policy's registry entry."""
        return get_policy(self.agent)


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
    action_mode = config.spec.action_mode
    if action_mode is not None:
        kwargs.setdefault("action_mode", action_mode)  # e.g. "simplex" for the rules, "raw" for no-kd
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
        if info.get("diverged"):
            # the student diverged (the update was rolled back): the episode ends without a result
            # of its own, recorded so that the run's result says so instead of losing the episode
            episode = {"best_val_acc": float("nan"), "best_epoch": -1.0, "final_test_acc": float("nan"), "diverged": 1.0}
            self.state["episodes"].append(episode)
        for name, value in (losses or {}).items():
            self._scalar(f"agent/{name}", value)
        if self.bar is not None:
            self.bar.update(1)
            shown = " ".join(f"{w:.2f}" for w in weights)
            postfix = {"epoch": int(info["epoch"]), "w": shown}
            if self.state["val_curve"]:
                postfix["val"] = f"{self.state['val_curve'][-1][1]:.3f}"
            self.bar.set_postfix(postfix, refresh=False)
        crash_point("step")  # after the step is logged, before any checkpoint of it

    def flush(self) -> None:
        """Write the buffered TensorBoard events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def purge_tensorboard_events(folder: Path, last_step: int) -> int:
    """Drop the events logged after ``last_step`` (the checkpoint a run resumes from) from the
    event files in ``folder``; returns how many were dropped.

    ``SummaryWriter(purge_step=...)`` alone is not enough: TensorBoard applies it only to files
    it reads *before* the new one, and event files are read in name order, which starts with the
    creation second, so a run killed and resumed within one second read the killed run's points
    last and showed them twice. Rewriting the old files (atomically, one at a time) removes them
    for every reader; it also drops a record a kill cut in half.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for path in sorted(folder.glob("events.out.tfevents.*")):
        # raw records, written back unchanged (the parsing loader would migrate their format)
        records = list(RawEventFileLoader(str(path)).Load())
        events = [Event.FromString(record) for record in records]
        kept = [record for record, event in zip(records, events) if not event.HasField("summary") or event.step <= last_step]
        if len(kept) == len(records):
            continue
        dropped += len(records) - len(kept)

        def write(file: Any, kept: list[bytes] = kept) -> None:
            writer = RecordWriter(file)
            for record in kept:
                writer.write(record)

        atomic_write(path, write)
    return dropped


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
# A checkpoint is one unit: its files (the policy's, env.pt, state.json) are written into a
# staging folder, then manifest.json (each file's size and SHA-256) is written last, then the
# staging folder is renamed into place. A kill at any instant leaves either the previous complete
# checkpoint or the new one (recovered on the next start, see _recover_checkpoints), never a mix.
CHECKPOINTS = "checkpoints"
STAGING = ".checkpoints.incoming"
RETIRED = ".checkpoints.old"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "kd_env.checkpoint/1"
LOCK_FILE = ".lock"


class CheckpointError(ValueError):
    """A run's checkpoint is damaged (a file differs from its manifest) and cannot be resumed."""


class RunFolderBusyError(RuntimeError):
    """Another process holds the run folder's lock (a run, or a sweep's child, is using it)."""


def _checkpoint_dir(config: RunConfig) -> Path:
    return Path(config.run_dir) / CHECKPOINTS


def _write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda file: file.write(json.dumps(payload, indent=1).encode()))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path, env_steps: int) -> None:
    """Seal a staged checkpoint: every file's size and SHA-256, written last."""
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.name != MANIFEST_FILE
    }
    _write_json(folder / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "env_steps": env_steps, "files": files})


def _manifest_problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` is not a complete, intact unit (``None``: it is)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return f"it has no {MANIFEST_FILE} (it was never completed)"
    except (OSError, ValueError) as exc:
        return f"its {MANIFEST_FILE} cannot be read ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
        return f"its {MANIFEST_FILE} is not a {MANIFEST_FORMAT} manifest"
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
            return f"{name} differs from the size and SHA-256 its manifest records (modified, or damaged on disk)"
    return None


def verify_checkpoint(folder: str | os.PathLike) -> None:
    """Check a run's checkpoint folder against its manifest.

    A folder without a manifest but with ``state.json`` is a checkpoint written before manifests
    existed and is accepted as it is.

    Raises:
        CheckpointError: a file is missing or differs from the manifest, or the manifest is unreadable.
    """
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).exists() and (folder / STATE_FILE).exists():
        return  # pre-manifest checkpoint
    problem = _manifest_problem(folder)
    if problem is not None:
        raise CheckpointError(
            f"the checkpoint in {folder} cannot be resumed: {problem}. Start the run again in a new --run-dir (or delete this run folder)"
        )


def _recover_checkpoints(run_dir: Path) -> None:
    """Finish or undo a checkpoint swap a kill interrupted, and delete stale temporaries.

    Called under the run folder's lock. ``checkpoints`` missing means the kill fell between the two
    renames: the sealed staging folder (newer) is put in place, else the retired one (older).
    """
    current, staging, retired = run_dir / CHECKPOINTS, run_dir / STAGING, run_dir / RETIRED
    if not current.exists():
        if staging.is_dir() and _manifest_problem(staging) is None:
            os.replace(staging, current)
        elif retired.is_dir():
            os.replace(retired, current)
    for leftover in (staging, retired):
        if leftover.exists():
            shutil.rmtree(leftover)
    for folder in (run_dir, current):
        if folder.is_dir():
            for path in remove_stale_temporaries(folder):
                logger.info("removed the stale temporary %s (a write a kill interrupted)", path)


def _commit_checkpoint(run_dir: Path, write: Callable[[Path], None], env_steps: int) -> None:
    """Write one checkpoint as a unit: ``write(staging)`` fills the staging folder, the manifest
    seals it, and renames put it in place of the previous one (which is deleted last)."""
    staging, current, retired = run_dir / STAGING, run_dir / CHECKPOINTS, run_dir / RETIRED
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        write(staging)
        _write_manifest(staging, env_steps)
        crash_point("checkpoint:sealed")
        fsync_dir(staging)
        if current.exists():
            os.replace(current, retired)
        crash_point("checkpoint:swap")  # between the renames: no checkpoints/ at all
        os.replace(staging, current)
        fsync_dir(run_dir)
    except BaseException:
        # a full disk or an error mid-write: the previous checkpoint stays the current one
        if not current.exists() and retired.exists():
            os.replace(retired, current)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if retired.exists():
        shutil.rmtree(retired)


RNG_FILE = "rng.pt"


def _save_global_rng(path: Path) -> None:
    """The process-wide RNG states (torch's, NumPy's legacy global one, Python's) that policies
    draw from without owning a generator (SB3 samples actions with torch's, its replay buffers
    and action noise with NumPy's)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],  # type: ignore[attr-defined]  # numpy's stubs give get_state() the dict of legacy=False
        "python": random.getstate(),
    }
    atomic_write(path, lambda file: torch.save(state, file))


def _restore_global_rng(path: Path) -> None:
    if not path.exists():
        return  # a checkpoint written before rng.pt existed: the env's torch state is all there is
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])


@contextlib.contextmanager
def _run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for a run's lifetime (``flock`` on ``run_dir/.lock``).

    Two processes on one run folder (a rerun sweep while the last one's child is still going, two
    ``kd-env train --resume``) would write interleaved checkpoints and duplicate TensorBoard points;
    the second one is refused instead. The kernel drops the lock when the holder dies, kill -9
    included, so a stale lock file never blocks anyone.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS: no lock
        yield
        return
    descriptor = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "?"
            raise RunFolderBusyError(
                f"run folder {run_dir} is in use by another process (pid {holder}); wait for it to end or stop it, or use another --run-dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


# ---------------------------------------------------------------------- drivers
class PolicyActionError(ValueError):
    """A policy returned an action the env refused (wrong shape, NaN, ...); the student was not updated."""


@dataclass
class RunContext:
    """What a :class:`Driver` needs to drive one run."""

    config: RunConfig
    spec: PolicySpec
    env: Any
    """The run's env as :func:`make_env` built it (what the policy is given)."""
    kd: Any
    """``env.unwrapped``: the kd-env env (its ``engine``, ``save`` / ``load``, ``last_observation``)."""
    logger: RunLogger
    remaining: int
    """Env steps left to run."""
    resumed: bool
    """Continuing from a checkpoint (the env is restored, the policy loaded)."""
    save_checkpoint: Callable[[SavePolicy], None]

    @property
    def checkpoints(self) -> Path:
        return _checkpoint_dir(self.config)

    @property
    def budget(self) -> int:
        """The env step at which the run stops."""
        return int(self.config.total_steps or self.kd.engine.total_steps * self.config.student_runs)

    @property
    def env_steps_per_timestep(self) -> int:
        """Timesteps (SB3's count) per env step: one per sample slot on the per-sample env."""
        return int(getattr(self.env, "num_envs", 1)) if self.config.per_sample else 1

    def batch_info(self, info: dict[str, Any]) -> dict[str, Any]:
        return reduce_vector_info(info) if self.config.per_sample else info

    def checkpoint_if_due(self, save_policy: SavePolicy) -> bool:
        """Checkpoint if this step is due; returns whether the budget is spent."""
        last = self.logger.step >= self.budget
        if _checkpoint_due(self.config, self.logger.step, last):
            self.save_checkpoint(save_policy)
        return last


class Driver(ABC):
    """How the runner builds, checkpoints, restores and steps one kind of policy."""

    checkpoint_file: ClassVar[str]
    """The policy's file in the run's ``checkpoints`` folder."""

    def build(self, context: RunContext) -> Any:
        """A new policy from the registry's factory: ``factory(env, seed=..., **agent_kwargs)``."""
        return context.spec.factory(context.env, seed=context.config.seed, **context.config.agent_kwargs)

    def restore(self, context: RunContext) -> Any:
        """The checkpointed policy: the entry's ``loader``, else the factory's policy with its
        checkpoint loaded (when it has ``load`` and a checkpoint was written)."""
        path = context.checkpoints / self.checkpoint_file
        if context.spec.loader is not None:
            return context.spec.loader(path, context.env)
        policy = self.build(context)
        if callable(getattr(policy, "load", None)) and path.exists():
            loaded = policy.load(path, env=context.env)
            return policy if loaded is None else loaded  # classmethod (returns) or in place (None)
        return policy

    def save(self, policy: Any, folder: Path) -> None:
        """Write the policy's checkpoint (policies without ``save`` keep none)."""
        if callable(getattr(policy, "save", None)):
            policy.save(folder / self.checkpoint_file)

    def run(self, context: RunContext) -> None:
        """Build (or restore, with the env) the policy and drive it for ``context.remaining`` steps."""
        if context.resumed:
            context.kd.load(context.checkpoints / ENV_CHECKPOINT)
            policy = self.restore(context)
            # building the restored policy drew from the global RNGs (e.g. SB3 initialises its
            # networks before loading them): put back their state at the checkpoint, so that the
            # policy's next random draws (SB3's action sampling) are the uninterrupted run's
            _restore_global_rng(context.checkpoints / RNG_FILE)
        else:
            policy = self.build(context)
        self.drive(context, policy)

    @abstractmethod
    def drive(self, context: RunContext, policy: Any) -> None:
        """Step the env ``context.remaining`` times with ``policy``, logging and checkpointing."""


class PredictDriver(Driver):
    """Policies that only act (the baselines, user policies): ``predict`` steps the env."""

    checkpoint_file = "policy.pt"

    def drive(self, context: RunContext, policy: Any) -> None:
        env = context.env
        if context.resumed:
            observation = context.kd.last_observation
        else:
            observation, _ = env.reset(seed=context.config.seed)
        for _ in range(context.remaining):
            action = _predict(context, policy, observation)
            try:
                observation, reward, terminated, truncated, info = env.step(action)
            except ValueError as exc:  # the env checks actions before it touches the student
                raise PolicyActionError(_bad_action_message(context, policy, action, exc)) from exc
            context.logger.log(context.batch_info(info), float(np.mean(reward)), None)
            if np.any(terminated) or np.any(truncated):
                observation, _ = env.reset()  # before the checkpoint, so a resume starts stepping
            if context.checkpoint_if_due(lambda folder: self.save(policy, folder)):
                return


def _predict(context: RunContext, policy: Any, observation: Any) -> Any:
    result = policy.predict(observation, deterministic=True)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise PolicyActionError(
            f"policy {context.config.agent!r} ({type(policy).__name__}).predict returned {type(result).__name__}; "
            "it must return (action, state) as SB3's predict does: return action, state"
        )
    return result[0]


def _bad_action_message(context: RunContext, policy: Any, action: Any, exc: ValueError) -> str:
    try:
        array = np.asarray(action, dtype=np.float64)
        returned = f"shape {array.shape}, {int(np.size(array) - np.isfinite(array).sum())} NaN/inf entries"
    except (TypeError, ValueError):
        returned = f"{type(action).__name__} that is not a numeric array"
    space = context.env.action_space
    mode = context.kd.settings.action_mode
    return (
        f"policy {context.config.agent!r} ({type(policy).__name__}) returned an action the env refused: {returned} "
        f"(env: {exc}). The student was not updated. Fix: predict must return a finite float array of shape "
        f"{tuple(space.shape)} (the env's action_space: one entry per teacher and head"
        f"{', one row per sample' if context.config.per_sample else ''}), valid in action_mode={mode!r}"
    )


class AgentDriver(Driver):
    """kd-env's agent protocol (:class:`kd_env.agents.BaseAgent`): ``learn`` with a per-step callback."""

    checkpoint_file = "agent.pt"

    def drive(self, context: RunContext, policy: Any) -> None:
        def on_step(record: dict[str, Any]) -> bool:
            context.logger.log(context.batch_info(record["info"]), float(record["reward_mean"]), record["losses"])
            return not context.checkpoint_if_due(lambda folder: self.save(policy, folder))

        timesteps = context.remaining * context.env_steps_per_timestep
        policy.learn(timesteps, callback=on_step, reset_num_timesteps=not context.resumed)


class SB3Driver(Driver):
    """stable-baselines3's algorithms, as they are (:mod:`kd_env.agents.sb3`)."""

    checkpoint_file = "agent.zip"

    def build(self, context: RunContext) -> Any:
        config = context.config
        return context.spec.factory(
            context.env, seed=config.seed, env_id=config.env_id, per_sample=config.per_sample, **config.agent_kwargs
        )

    def restore(self, context: RunContext) -> Any:
        from kd_env.agents.sb3 import continue_sb3_episode

        model = super().restore(context)
        continue_sb3_episode(model, context.kd.last_observation)  # the student's run goes on
        return model

    def save(self, policy: Any, folder: Path) -> None:
        from kd_env.agents.sb3 import save_sb3_agent

        save_sb3_agent(policy, folder / self.checkpoint_file)

    def drive(self, context: RunContext, policy: Any) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        driver = self

        class Logging(BaseCallback):
            def _on_step(self) -> bool:
                info = _sb3_batch_info(self.locals["infos"])
                values = self.model.logger.name_to_value.items()
                losses = {key.split("/")[-1]: value for key, value in values if key.startswith("train/")}
                # the env's own reward, as for every other agent: behind VecNormalize,
                # locals["rewards"] is the scaled reward the algorithm learns from
                normalizer = self.model.get_vec_normalize_env()
                rewards = self.locals["rewards"] if normalizer is None else normalizer.get_original_reward()
                context.logger.log(info, float(np.mean(rewards)), losses or None)
                # stop at the budget: SB3 would finish its rollout past it otherwise
                return not context.checkpoint_if_due(lambda folder: driver.save(self.model, folder))

        timesteps = context.remaining * policy.get_env().num_envs
        policy.learn(timesteps, callback=Logging(), reset_num_timesteps=not context.resumed)


DRIVERS: dict[str, Driver] = {"policy": PredictDriver(), "agent": AgentDriver(), "sb3": SB3Driver()}
"""One driver per registry ``kind`` (:data:`kd_env.registry.POLICY_KINDS`)."""


# ---------------------------------------------------------------------- the run
def _prepare_run_dir(config: RunConfig, resume: bool) -> RunConfig:
    """Write (or, on resume, re-read) ``run.json``; returns the run's config. Called under the lock."""
    run_dir = Path(config.run_dir)
    if resume:
        saved = json.loads((run_dir / RUN_FILE).read_text())
        # a resumed run keeps its definition; only the budget may be extended
        total_steps = config.total_steps if config.total_steps is not None else saved["total_steps"]
        config = RunConfig(**{**saved, "total_steps": total_steps, "progress": config.progress, "run_dir": str(run_dir)})
    elif (_checkpoint_dir(config) / STATE_FILE).exists():
        raise FileExistsError(f"{run_dir} holds a run already: pass resume=True (--resume) or choose another run_dir")
    _write_json(run_dir / RUN_FILE, asdict(config))
    return config


def _initial_state(config: RunConfig, resume: bool) -> dict[str, Any]:
    """The run's records: fresh, or those of the last checkpoint (verified against its manifest)."""
    path = _checkpoint_dir(config) / STATE_FILE
    if not (resume and path.exists()):
        return {"env_steps": 0, "episodes": [], "val_curve": [], "weight_trajectory": [], "wall_time_s": 0.0}
    verify_checkpoint(path.parent)
    state = json.loads(path.read_text())
    state["val_curve"] = [tuple(item) for item in state["val_curve"]]
    state["weight_trajectory"] = [tuple(item) for item in state["weight_trajectory"]]
    return state


def train(config: RunConfig, resume: bool = False) -> RunResult:
    """Run ``config.agent`` on ``config.env_id`` (see the module docstring).

    The run folder is locked for the run's lifetime (:class:`RunFolderBusyError` if another
    process holds it). ``resume=True`` continues from the last complete checkpoint, or from the
    start when the run was stopped before its first one.
    """
    run_dir = Path(config.run_dir)
    if resume and not (run_dir / RUN_FILE).exists():
        raise FileNotFoundError(f"nothing to resume in {run_dir}: it has no {RUN_FILE}")
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_folder_lock(run_dir):
        _recover_checkpoints(run_dir)
        return _train_locked(config, resume)


def _train_locked(config: RunConfig, resume: bool) -> RunResult:
    config = _prepare_run_dir(config, resume)
    run_dir = Path(config.run_dir)
    torch.manual_seed(config.seed)
    env = make_env(config)
    kd = env.unwrapped  # make_env's envs: gym.make's wrappers, or the per-sample env itself
    teacher_names = list(kd.teacher_names)
    total_steps = config.total_steps or kd.engine.total_steps * config.student_runs
    state = _initial_state(config, resume)
    if state["env_steps"] == 0 and (run_dir / "tb").exists():
        # events of an attempt killed before its first checkpoint: a fresh start replaces them
        shutil.rmtree(run_dir / "tb")
    elif (run_dir / "tb").exists():
        purge_tensorboard_events(run_dir / "tb", state["env_steps"])
    logger = RunLogger(config, teacher_names, total_steps, state["env_steps"], state)
    clock = {"since": time.perf_counter()}

    def account_time() -> None:
        now = time.perf_counter()
        state["wall_time_s"] = state.get("wall_time_s", 0.0) + now - clock["since"]
        clock["since"] = now

    def save_checkpoint(save_policy: SavePolicy) -> None:
        state["env_steps"] = logger.step
        account_time()
        logger.flush()  # the points up to the checkpoint reach the disk with it: a kill loses none

        def write(folder: Path) -> None:
            _save_global_rng(folder / RNG_FILE)
            save_policy(folder)
            crash_point("checkpoint:policy")
            kd.save(folder / ENV_CHECKPOINT)
            crash_point("checkpoint:env")
            _write_json(folder / STATE_FILE, state)

        _commit_checkpoint(run_dir, write, logger.step)

    remaining = total_steps - state["env_steps"]
    spec = config.spec
    context = RunContext(config, spec, env, kd, logger, remaining, resume and state["env_steps"] > 0, save_checkpoint)
    try:
        if remaining > 0:
            DRIVERS[spec.kind].run(context)
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
    _write_json(Path(config.run_dir) / "result.json", asdict(result))
    return result


def _checkpoint_due(config: RunConfig, step: int, last: bool) -> bool:
    return last or (config.checkpoint_every > 0 and step % config.checkpoint_every == 0)


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


def _sb3_batch_info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """SB3 hands one info dict per slot; the per-sample env's slots share the batch's values."""
    if len(infos) == 1:
        return infos[0]
    skip = {"terminal_observation", "episode", "TimeLimit.truncated"}
    stacked = {key: np.stack([np.asarray(item[key]) for item in infos]) for key in infos[0] if key not in skip}
    return reduce_vector_info(stacked)
