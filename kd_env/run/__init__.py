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

The package: :mod:`~kd_env.run.config` (:class:`RunConfig`, :class:`RunResult`, :func:`make_env`),
:mod:`~kd_env.run.records` (:class:`RunLogger`: TensorBoard, progress bar, curves),
:mod:`~kd_env.run.run_folder` (checkpoints as units, the run folder's lock),
:mod:`~kd_env.run.drivers` (:data:`DRIVERS`); :func:`train` here ties them together.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from kd_env.registry import policy_names
from kd_env.run.config import RUN_FILE, RunConfig, RunResult, make_env
from kd_env.run.drivers import DRIVERS, Driver, PolicyActionError, RunContext, SavePolicy
from kd_env.run.records import RunLogger, purge_tensorboard_events, reduce_vector_info
from kd_env.run.run_folder import (
    ENV_CHECKPOINT,
    RNG_FILE,
    STATE_FILE,
    CheckpointError,
    RunFolderBusyError,
    _checkpoint_dir,
    _commit_checkpoint,
    _recover_checkpoints,
    _run_folder_lock,
    _save_global_rng,
    _write_json,
    verify_checkpoint,
)
from kd_env.utils import crash_point

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
    "ThreadCountWarning",
    "make_env",
    "peak_rss_mib",
    "policy_names",
    "purge_tensorboard_events",
    "reduce_vector_info",
    "train",
    "verify_checkpoint",
]


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
    _warn_if_threads_changed(state)
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
        state["torch_threads"] = torch.get_num_threads()
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


class ThreadCountWarning(UserWarning):
    """A run resumed with another torch thread count than the one its checkpoint was written with."""


def _warn_if_threads_changed(state: dict[str, Any]) -> None:
    """Warn (once, at resume) when the checkpoint was written with another torch thread count.

    A float sum split over another number of threads is added in another order: the resumed
    run then differs from the uninterrupted one in the last bits, and the logged weights may
    flip a rounded digit. Not an error: the run is as valid, only not bit-identical.
    """
    saved = state.get("torch_threads")  # absent in checkpoints written before it was recorded
    current = torch.get_num_threads()
    if saved is not None and int(saved) != current:
        warnings.warn(
            f"resuming a run whose checkpoint was written with {saved} torch thread(s) on {current}: "
            f"the resumed run is not bit-identical to an uninterrupted one (resume on {saved}: `kd-env train --resume --threads {saved}`, "
            f"or torch.set_num_threads({saved}) before train(..., resume=True))",
            ThreadCountWarning,
            stacklevel=3,
        )


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
