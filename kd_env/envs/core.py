"""What both environment views share: the engine core, the step's ``info``, the run's final
numbers, the training-state checkpoint, faithful pickling, ``reset`` options, the render-mode
policy and the single-thread rule for forked workers."""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from kd_env.action_weights import action_to_weights, validate_action
from kd_env.checkpoint_format import read_checkpoint, write_checkpoint
from kd_env.engine import DistillationEngine, StepResult
from kd_env.engine.modes import entry_point, student_autograd
from kd_env.envs.assembly import build_engine
from kd_env.envs.probe import ValidationProbe
from kd_env.envs.rewards import RewardTracker
from kd_env.envs.settings import KDEnvSettings


def step_info(engine: DistillationEngine, result: StepResult) -> dict[str, Any]:
    """The deterministic ``info`` of one update (no wall-clock values, so checkers can compare)."""
    info: dict[str, Any] = {
        "weights": result.logit_weights.mean(0).cpu().numpy().astype(np.float32),
        "kd_loss": result.kd_loss.mean(0).cpu().numpy().astype(np.float32),
        # absent in the label-free regime: the student's training CE reads the labels
        **({} if result.student_ce is None else {"ce": float(result.student_ce.mean())}),
        "loss": float(result.loss),
        "epoch": int(engine.epoch),
        "step": int(engine.global_step),
        "lr": float(engine.lr),
        "diverged": bool(result.diverged),
    }
    if result.feature_weights is not None:
        info["feature_weights"] = result.feature_weights.mean(0).cpu().numpy().astype(np.float32)
    if result.feature_mse is not None:
        info["feature_mse"] = result.feature_mse.mean(0).cpu().numpy().astype(np.float32)
    if result.epoch_end:
        info["val_acc"] = float(result.val_acc) if result.val_acc is not None else float("nan")
        if result.test_acc is not None:
            info["test_acc"] = float(result.test_acc)
    info.update(final_metrics(engine, result))
    return info


def final_metrics(engine: DistillationEngine, result: StepResult) -> dict[str, float]:
    """At the end of a training run: the best validation accuracy, its epoch, and the test
    accuracy of that best-validation student (the number to report). Empty before the end."""
    if not result.done or result.diverged or engine.best_student_state is None:
        return {}
    test_acc, _ = engine.evaluate("test", engine.best_student())
    return {"best_val_acc": float(engine.best_val_acc), "best_epoch": float(engine.best_epoch), "final_test_acc": float(test_acc)}


# ---------------------------------------------------------------------- forked workers
_forked = False
"""Set in a child created by ``os.fork`` after this module was imported."""


def _mark_forked() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
    os.register_at_fork(after_in_child=_mark_forked)


def _one_thread_if_forked() -> None:
    """In a forked worker, run torch on one thread.

    ``gym.make_vec(..., vectorization_mode="async")`` builds one env in the parent (to read its
    spaces) and then forks its workers (Linux's default start method). The parent's torch work
    started OpenMP's thread pool, which does not survive ``fork``: the child's first parallel
    op waits forever on threads that do not exist. One thread per worker avoids the pool (as
    PyTorch's own DataLoader workers do) and is also the right size for N workers sharing the
    machine's cores. Spawned workers import afresh and keep torch's default.
    """
    if _forked and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


# ---------------------------------------------------------------------- render modes
def supported_render_mode(render_mode: str | None, supported: list[str], owner: str) -> str | None:
    """``render_mode`` if the env can render it; otherwise a warning and ``None`` (rendering off).

    Gymnasium's own envs warn on a mode they do not support rather than raise, and tools rely
    on that: SB3's ``make_vec_env`` asks for ``"rgb_array"`` (falling back only on
    ``TypeError``), RL Zoo's ``enjoy`` for ``"human"``. Storing ``None`` (not the unsupported
    mode) makes SB3's ``VecEnv.render`` warn and return ``None`` instead of tiling ``None`` images.
    """
    if render_mode is None or render_mode in supported:
        return render_mode
    shown = supported or "no modes"
    gym.logger.warn(f"{owner} cannot render render_mode={render_mode!r} (it supports {shown}); rendering is off and render() returns None")
    return None


# ---------------------------------------------------------------------- reset options
RESET_OPTIONS = ("checkpoint",)
"""The keys ``reset(options=...)`` understands."""


def checkpoint_option(seed: int | None, options: dict[str, Any] | None) -> Path | None:
    """The checkpoint path of ``reset(options={"checkpoint": path})``, or ``None``.

    Unknown keys raise ``ValueError`` (silently ignoring a misspelt option would run a different
    experiment than the one asked for). ``seed`` together with a checkpoint is refused too: the
    checkpoint carries its own random state, so the seed would be ignored.
    """
    if not options:
        return None
    unknown = sorted(set(options) - set(RESET_OPTIONS))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; kd-env understands {list(RESET_OPTIONS)}")
    path = options.get("checkpoint")
    if path is None:
        return None
    if seed is not None:
        raise ValueError("reset(seed=..., options={'checkpoint': ...}): a checkpoint carries its own random state; pass one or the other")
    return Path(path)


CHECKPOINT_FORMAT = "kd_env.env/1"
PICKLE_FORMAT = "kd_env.pickle/1"
# settings that must match between a checkpoint and the env that loads it
_COMPAT_KEYS = ("dataset", "student", "epochs", "batch_size", "feature_kd", "reward_mode", "max_steps_per_epoch")
# label-regime settings that must match too: the values checkpoints written before them stand for
_COMPAT_DEFAULTS: dict[str, Any] = {
    "labels": "full",
    "label_noise": None,
    "label_noise_kind": "symmetric",
    "label_noise_seed": None,
    "probe_rows": 0,  # the validation probe's rows (issue #23): part of the per-sample env's shape
}


class KDEnvCore:
    """What the batch-level and the per-sample env share: settings, engine, action space,
    rewards, and the training-state checkpoint (``save`` / ``load``).

    Subclasses call :meth:`_setup_core` first in ``__init__`` and keep ``_last_observation``
    up to date; :meth:`_extra_state` / :meth:`_load_extra_state` add what is theirs alone.
    """

    settings: KDEnvSettings
    engine: DistillationEngine
    np_random: np.random.Generator
    # declared as in gym.Env and VectorEnv (both bases of the subclasses), which set them
    _np_random: np.random.Generator | None
    _np_random_seed: int | None
    _last_observation: np.ndarray | None

    # construction (teachers trained on first use, data, kept teacher outputs), reset, step and
    # checkpoint restores run in the env's own torch modes, not the caller's (engine/modes.py)
    @student_autograd()
    def _setup_core(self, kwargs: dict[str, Any], init_args: dict[str, Any]) -> None:
        """Build settings and engine from ``kwargs``; ``init_args`` are the constructor's
        arguments as given (what :meth:`__setstate__` rebuilds the env from)."""
        _one_thread_if_forked()  # before any torch work in this process
        self._init_args = copy.deepcopy(init_args)
        self._resources_digest: str | None = None
        self._clip_warned = False
        self.settings = KDEnvSettings.from_kwargs(f"{type(self).__name__}.__init__", **kwargs)
        self.engine = build_engine(self.settings)
        self.teacher_names = list(self.engine.teacher_names)
        self.num_teachers = self.engine.num_teachers
        self.heads = 2 if self.settings.feature_kd else 1
        probe = ValidationProbe(self.engine, self.settings.probe_rows) if self.settings.probe_rows > 0 else None
        self.rewards = RewardTracker(self.engine, self.settings.reward_mode, self.settings.probe_size, self.settings.reward_scale, probe)
        self._last_observation = None
        self._episode_seed: int | None = None

    @property
    def last_observation(self) -> np.ndarray | None:
        """A copy of the observation the env last returned (e.g. to continue after :meth:`load`)."""
        return None if self._last_observation is None else self._last_observation.copy()

    def _single_action_space(self) -> spaces.Box:
        low = -1.0 if self.settings.action_mode == "softmax" else 0.0
        return spaces.Box(low, 1.0, (self.heads * self.num_teachers,), dtype=np.float32)

    def _start_episode(self) -> None:
        """A fresh student; every random draw of the episode derives from this one integer."""
        self._episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.engine.reset(self._episode_seed)
        self.rewards.reset(self._episode_seed)

    def _weights_for(self, action: Any, shape: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert shape is not None  # the shape of a Box action space
        array = validate_action(action, shape, self.settings.action_mode, self.num_teachers)
        if self.settings.action_mode == "softmax":
            array = self._clip_to_box(array)
        return action_to_weights(array, self.num_teachers, self.heads, self.settings.action_mode, self.settings.scale)

    def _clip_to_box(self, array: np.ndarray) -> np.ndarray:
        """Clip softmax-mode logits to the action space's ``[-1, 1]``.

        Out-of-bounds logits used to be extrapolated (``softmax(scale * 5)``), giving an agent
        that ignores the bounds weights no in-bounds action can reach. Gymnasium's continuous
        envs clip to their Box (Pendulum, MountainCarContinuous) and SB3's PPO/A2C clip before
        ``step``, so the env clips too; the first clipped action warns once per env, so an agent
        bug does not go unnoticed. (Simplex and raw weights are not logits: their values above
        1 keep their meaning, a larger share or a larger scale.)
        """
        clipped = np.clip(array, -1.0, 1.0)
        if not self._clip_warned and not np.array_equal(clipped, array):
            self._clip_warned = True
            gym.logger.warn(
                f"action outside the action space [-1, 1] (min {float(array.min()):.3g}, max {float(array.max()):.3g}) "
                "was clipped to it; warned once per env"
            )
        return clipped

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _compat_settings(self) -> dict[str, Any]:
        values = {key: getattr(self.settings, key) for key in (*_COMPAT_KEYS, *_COMPAT_DEFAULTS)}
        values["teacher_names"] = list(self.teacher_names)
        return values

    def _training_state(self) -> dict[str, Any]:
        """The whole training state, as :meth:`save` writes it (requires a started episode)."""
        if self._last_observation is None:
            raise RuntimeError("nothing to save: call reset() first")
        return {
            "kind": type(self).__name__,
            "settings": self._compat_settings(),
            "engine": self.engine.state_dict(),
            "rewards": self.rewards.state_dict(),
            "np_random": self.np_random.bit_generator.state,
            "episode_seed": self._episode_seed,
            "last_observation": torch.from_numpy(self._last_observation.copy()),
            **self._extra_state(),
        }

    def _restore_training_state(self, state: dict[str, Any]) -> None:
        """Install a :meth:`_training_state` (already checked to fit this env)."""
        self.engine.load_state_dict(state["engine"])
        self.rewards.load_state_dict(state["rewards"])
        self.np_random.bit_generator.state = state["np_random"]
        self._episode_seed = state["episode_seed"]
        self._last_observation = state["last_observation"].numpy().astype(np.float32)
        self._load_extra_state(state)

    def save(self, path: str | Path) -> Path:
        """Write the whole training state (student, adapters, optimizer, schedule, data order,
        RNG, reward state) atomically. ``load`` on an env built with the same arguments resumes it,
        and so does ``reset(options={"checkpoint": path})`` (through any wrapper)."""
        return write_checkpoint(path, CHECKPOINT_FORMAT, self._training_state())

    @entry_point  # checkpoint tensors (momentum, BN statistics) must not be inference tensors
    def load(self, path: str | Path) -> None:
        """Restore a :meth:`save` checkpoint; ``ValueError`` names what does not match.

        Through ``gym.make``'s wrappers prefer ``env.reset(options={"checkpoint": path})``: it
        restores the same state and returns its observation, and wrappers that track episodes
        (Gymnasium's env checker and order enforcing, ``RecordEpisodeStatistics``) see a reset.
        """
        state = read_checkpoint(
            path,
            CHECKPOINT_FORMAT,
            what="kd-env environment checkpoint",
            fix="save it again with env.unwrapped.save(path)",
            kind_key="kind",
            kind=type(self).__name__,
            required={"settings": dict},
        )
        expected = self._compat_settings()
        saved = {**_COMPAT_DEFAULTS, **state["settings"]}
        mismatched = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
        if mismatched:
            details = ", ".join(f"{k}: checkpoint {a!r} vs env {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"checkpoint {path} was made by a different environment ({details}); build the env with the same arguments")
        self._restore_training_state(state)

    # ------------------------------------------------------------------ pickling / copying
    def _view_state(self) -> dict[str, Any]:
        """What a subclass keeps outside the training state (e.g. the last info, for render)."""
        return {}

    def _load_view_state(self, state: dict[str, Any]) -> None:
        pass

    def _resources_fingerprint(self) -> str:
        """SHA-256 over the teachers' weights and the dataset tensors (computed once).

        A pickled env is rebuilt from its constructor arguments; this digest proves the rebuilt
        env found the same teachers and data (a cache cleared or retrained in between would
        otherwise give a different environment silently).
        """
        if self._resources_digest is None:
            digest = hashlib.sha256()
            named = [(f"teacher{k}.{n}", t) for k, teacher in enumerate(self.engine.teachers) for n, t in teacher.state_dict().items()]
            named += [(name, getattr(self.engine.data, name)) for name in self.engine.data._TENSOR_FIELDS]
            for name, tensor in named:
                flat = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                digest.update(flat.view(torch.uint8).numpy().tobytes())
            self._resources_digest = digest.hexdigest()
        return self._resources_digest

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (and ``copy.deepcopy``) as constructor arguments + training state.

        The env's live objects cannot be pickled faithfully: the prepared batch holds an
        autograd graph (pickling drops it, and the copy's next update would differ) and the
        teacher-output store is memory-mapped. So a copy is rebuilt the way ``load`` restores a
        checkpoint: a new env from the same arguments, then the training state, with the
        prepared batch recomputed exactly. Small (no data, no teachers), but a rebuild costs
        what building the env costs.
        """
        episode_over = self.engine.current is None
        return {
            "format": PICKLE_FORMAT,
            "class": type(self).__name__,
            "init_args": self._init_args,
            "fingerprint": self._resources_fingerprint(),
            "spec": self.__dict__.get("spec"),
            "np_random": None if self._np_random is None else self._np_random.bit_generator.state,
            "np_random_seed": self._np_random_seed,
            "training": None if self._last_observation is None else self._training_state(),
            "episode_over": episode_over,
            "view": self._view_state(),
        }

    @student_autograd()  # checkpoint tensors (momentum, BN statistics) must not be inference tensors
    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != PICKLE_FORMAT:
            raise pickle.UnpicklingError(f"not a pickled kd-env environment (format {PICKLE_FORMAT})")
        type(self).__init__(self, **copy.deepcopy(state["init_args"]))
        if self._resources_fingerprint() != state["fingerprint"]:
            raise pickle.UnpicklingError(
                f"cannot restore this pickled {state['class']}: its teachers or dataset differ from the original's "
                "(teacher cache or data changed since it was pickled); build the env afresh instead"
            )
        if state["spec"] is not None:
            self.spec = state["spec"]
        if state["np_random"] is not None:
            generator = np.random.Generator(getattr(np.random, state["np_random"]["bit_generator"])())
            generator.bit_generator.state = state["np_random"]
            self._np_random, self._np_random_seed = generator, state["np_random_seed"]
        if state["training"] is not None:
            # the engine restores the global torch RNG of the checkpoint; a copy must not
            # change the RNG of the process that unpickles it
            with torch.random.fork_rng(devices=[]):
                self._restore_training_state(state["training"])
            if state["episode_over"]:
                self.engine.current = None  # a diverged episode stays over in the copy too
        self._load_view_state(state["view"])
