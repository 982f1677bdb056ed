"""The batch-level multi-teacher KD environment: one teacher-weight vector per student update."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kd_env.engine.modes import entry_point
from kd_env.envs.core import (
    KDEnvCore,
    checkpoint_option,
    step_info,
    supported_render_mode,
)
from kd_env.observations import BatchFeatureSpec, batch_features


class MultiTeacherKDEnv(KDEnvCore, gym.Env[np.ndarray, np.ndarray]):
    """
    ## Description

    A student network learns from K frozen teachers by knowledge distillation. At every step the
    agent chooses how much to trust each teacher; the environment applies those weights to one
    SGD update of the student and reports how training went. One episode is one full training
    run of a fresh student (``epochs`` over the training set).

    The student's loss on a batch is
    ``CE + alpha * mean_b sum_k w_k KL_T(teacher_k || student) + beta * mean_b sum_k v_k MSE_k``,
    with ``w`` the logit-KD weights and ``v`` the feature-KD weights (FitNet-style MSE between
    the adapted student feature map and teacher k's, as in MTKD-RL).

    Observation and action of a step belong to the same batch: the observation describes the
    batch the action's weights will be applied to.

    ## Action Space

    ``Box(-1, 1, (K,), float32)``, or ``(2K,)`` with feature KD on (first the logit head, then the
    feature head). Each head is mapped to the simplex by ``softmax(scale * a)``.
    With ``action_mode="simplex"`` the space is ``Box(0, 1)`` of the same shape and each head is
    renormalised to sum to one (negative entries or an all-zero head raise ``ValueError``);
    with ``action_mode="raw"`` the non-negative weights are applied as they are (MTKD-RL's
    warm-up epoch uses all-ones weights, a K-times KD scale).
    NaN, inf or a wrong shape raise ``ValueError`` and leave the student unchanged. Softmax-mode
    actions outside ``[-1, 1]`` are clipped to the Box, as Gymnasium's continuous envs do (a
    warning the first time); simplex and raw weights above 1 keep their meaning.

    ## Observation Space

    A 1-D float32 ``Box`` with finite bounds. For each teacher (teacher-major order), batch means
    of: teacher CE against the label, teacher accuracy, teacher entropy (the ``performance``
    group), KD loss to the student and feature cosine similarity (the ``gap`` group; cosine only
    with feature KD); then training progress in [0, 1], the current learning rate and the
    student's CE. ``env.unwrapped.feature_names`` names every entry and
    ``env.unwrapped.teacher_names`` the teachers. ``state_parts`` selects the groups.
    With ``labels="none"`` the entries that read a training label are absent (teacher CE,
    teacher accuracy, the student's CE): ``3K + 2`` entries instead of ``5K + 3`` (with feature
    KD), and the names say which.

    ## Rewards

    * ``"val_loss_delta"`` (default): the drop of the student's CE on a fixed held-out batch of
      the validation split across the update, divided by ``log(C)``. Default because it measures
      what the weights did to the student's generalisation, at every step; the paper's training
      loss reward can be raised by trusting whichever teacher the student already agrees with.
    * ``"neg_loss"``: MTKD-RL's reward, the negative weighted training loss of the batch just
      trained on, divided by ``log(C)``.
    * ``"val_acc"``: sparse; at each epoch end the gain in validation accuracy since the previous
      epoch end (from chance for the first), so the return is the final accuracy above chance.
    * ``"label_logprob"``: the batch mean of the per-sample log-probability that the weighted
      teacher mixture gives the true label (see the per-sample env), divided by ``log(C)``.
      It reads the training labels: refused with ``labels="none"``, the noisy labels with
      ``labels="noisy"``.
    * ``"val_label_logprob"`` (with ``probe_rows=P``, issue #23): the same log-probability on P
      validation images drawn each step (:class:`~kd_env.envs.probe.ValidationProbe`), under the
      step's weight vector, averaged: the label-based reward that remains without training
      labels (the validation split keeps its labels in every regime).

    ``reward_scale`` multiplies every reward. A diverging student gets ``divergence_penalty``.

    ## Starting State

    ``reset(seed=...)`` builds a fresh student and feature adapters (new initialisation), a new
    SGD optimizer and LR schedule and a new data order, every random draw derived from the seed.
    The teachers and the dataset are loaded once, at construction.
    ``reset(options={"checkpoint": path})`` instead continues the training run saved by
    ``env.unwrapped.save(path)`` (the observation it returns is the saved one); other option keys
    raise ``ValueError``.

    ## Episode End

    ``terminated=True`` when the training budget (``epochs`` x updates per epoch) is spent (the
    remaining budget is in the observation), or when the student diverges (non-finite loss:
    the update is skipped, ``info["diverged"] = True``). The environment never truncates.

    ## Arguments

    ```python
    import gymnasium as gym
    import kd_env

    env = gym.make("MultiTeacherKD-FashionMNIST-v0", student="cnn_w8", epochs=3, reward_mode="neg_loss")
    ```

    All keyword arguments are JSON-serialisable; see :class:`kd_env.envs.settings.KDEnvSettings`:
    ``dataset``, ``student``, ``teachers`` (architectures from the cache, checkpoint paths or
    ``"random:<arch>"``), ``epochs``, ``batch_size``, ``lr``, ``device``, ``data_root``,
    ``download``, ``cache_dir``, ``train_teachers``, ``feature_kd``, ``reward_mode``,
    ``action_mode``, ``scale``, ``temperature``, ``alpha``, ``beta``, ``kd_scale``, ``augment``,
    ``max_steps_per_epoch``, ``val_fraction``, ``reward_scale``, ``divergence_penalty``,
    ``probe_size``, ``state_parts``, ``synthetic``; the label regime of the training split:
    ``labels`` (``"full"``, the default: true labels; ``"none"``: no training labels, the loss is
    the distillation terms alone, the label-based observation entries are absent, and a reward,
    feature term or policy that reads training labels is refused at construction; ``"noisy"``:
    ``label_noise`` (a rate in ``[0, 1)``, required) of the training labels corrupted once,
    ``label_noise_kind`` ``"symmetric"`` or ``"pairs"`` (``c -> c + 1 mod C``), from
    ``label_noise_seed`` (default: derived from ``split_seed``)); validation and test keep their
    true labels in every regime. Fixed augmented views (issue #27, FKD-style): ``augment_views``
    (V views per training image, drawn once from ``views_seed`` with the augmentation, which must
    be on; the teachers' outputs on them kept in the teacher-output store, so the teachers never
    run during training; each step gives every sample one of its views, from the run's
    generator), ``views_store`` (``"logits"``, ``"embeddings"`` or ``"maps"``: what the store
    keeps per view; ``None`` picks ``"maps"`` with feature KD). ``kd-env store size`` states the
    store's size before it is built; a disk that cannot hold it is refused. Plus ``steps_per_action`` (updates per
    action, rewards summed) and ``render_mode``: ``"ansi"`` (``render()`` returns a one-line text
    summary), ``"human"`` (that line is printed at every reset and step) or None; other modes
    (SB3's ``make_vec_env`` asks for ``"rgb_array"``) warn and turn rendering off.

    ## Copies and workers

    ``pickle`` and ``copy.deepcopy`` give a faithful copy: rebuilt from the constructor arguments,
    checked to have the same teachers and data, with the training state restored (the next
    update of the copy equals the original's). In a worker forked after ``import kd_env``
    (``gym.make_vec(..., vectorization_mode="async")`` on Linux) torch runs on one thread.

    ## Version History

    * v0: initial release (``reward_mode="label_logprob"`` added within v0: new option, the
      other modes unchanged; the label regimes ``labels``, ``label_noise``,
      ``label_noise_kind``, ``label_noise_seed`` added within v0: the default ``labels="full"``
      is the earlier behaviour bit for bit).
    * v0, issue #21 (no change to any run that worked before): the env runs in its own torch
      modes (grad on, inference mode off, autocast off, eager under ``torch.compile``), so a
      caller's ``no_grad`` / ``inference_mode`` / ``autocast`` no longer breaks or changes a run;
      unknown arguments raise ``TypeError`` in Python's wording ("got an unexpected keyword
      argument"); float64 and torch-tensor actions are applied as their float32 rounding.
    * v0, issue #23 (new options, every earlier run unchanged): ``reward_mode="val_label_logprob"``
      with ``probe_rows``; ``state_parts`` may add ``"agreement"``.
    * v0, issue #27 (new options, every earlier run unchanged): ``augment_views``,
      ``views_seed``, ``views_store``.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 1}

    def __init__(self, steps_per_action: int = 1, render_mode: str | None = None, **kwargs: Any) -> None:
        if steps_per_action < 1:
            raise ValueError(f"steps_per_action must be >= 1, got {steps_per_action}")
        self.render_mode = supported_render_mode(render_mode, self.metadata["render_modes"], type(self).__name__)
        self.steps_per_action = int(steps_per_action)
        self._setup_core(kwargs, {"steps_per_action": steps_per_action, "render_mode": render_mode, **kwargs})
        self.feature_spec = BatchFeatureSpec(
            tuple(self.teacher_names),
            self.engine.num_classes,
            self.settings.feature_kd,
            tuple(self.settings.state_parts),
            label_free=self.settings.labels == "none",
        )
        self.feature_names = self.feature_spec.names
        self.max_lr = max(1.0, float(self.engine.config.lr))
        low, high = self.feature_spec.bounds(self.max_lr)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = self._single_action_space()
        self._last_info: dict[str, Any] = {}
        self._shown = True  # "human" mode: whether the current state was printed already

    # ------------------------------------------------------------------ Gymnasium API
    @entry_point  # the env's torch modes, not the caller's (skrl, CleanRL-style loops step under no_grad)
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        checkpoint = checkpoint_option(seed, options)
        super().reset(seed=seed)
        if checkpoint is not None:
            self.load(checkpoint)
            observation = self.last_observation
            assert observation is not None
        else:
            self._start_episode()
            observation = self._observation()
        self._last_info = {"epoch": int(self.engine.epoch), "step": int(self.engine.global_step), "lr": float(self.engine.lr)}
        self._after_update()
        return observation, dict(self._last_info)

    @entry_point  # the env's torch modes, not the caller's (skrl, CleanRL-style loops step under no_grad)
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._last_observation is None:
            raise RuntimeError("call reset() before step()")
        if self.engine.current is None:
            raise RuntimeError("the episode has ended; call reset() to start a new student")
        logit_weights, feature_weights = self._weights_for(action, self.action_space.shape)
        reward, terminated, info = 0.0, False, {}
        for _ in range(self.steps_per_action):
            result = self.engine.step(logit_weights, feature_weights)
            step_reward = 0.0 if result.diverged else self.rewards.batch_reward(result)
            if not np.isfinite(step_reward):  # finite loss, non-finite outcome: undo it, diverged
                self.engine.rollback(result)
            info = step_info(self.engine, result)
            if result.diverged:
                reward, terminated = float(self.settings.divergence_penalty), True
                break
            reward += step_reward
            if result.done:
                terminated = True
                break
        observation = self._observation() if not terminated else self._terminal_observation()
        self._last_info = info
        self._after_update()
        return observation, float(reward), bool(terminated), False, info

    def render(self) -> str | None:
        """``"ansi"``: the last step as one line of text; ``"human"``: print it (once per step)."""
        if self.render_mode == "ansi":
            return self._text()
        if self.render_mode == "human":
            self._show()
        elif self.render_mode is None:
            gym.logger.warn("render() was called without a render_mode: build the env with render_mode='ansi' or 'human'")
        return None

    def _text(self) -> str:
        info = self._last_info
        weights = info.get("weights")
        shown = "" if weights is None else " ".join(f"{n}={w:.2f}" for n, w in zip(self.teacher_names, weights))
        return f"epoch {info.get('epoch', 0)} step {info.get('step', 0)} lr {info.get('lr', 0):.4g} weights: {shown}"

    def _after_update(self) -> None:
        # "human" rendering happens in reset and step, as in Gymnasium's envs; render() right
        # after (RL Zoo's enjoy calls it every step) does not print the same line again
        self._shown = False
        if self.render_mode == "human":
            self._show()

    def _show(self) -> None:
        if not self._shown:
            print(self._text(), flush=True)
            self._shown = True

    def _view_state(self) -> dict[str, Any]:
        return {"last_info": self._last_info}

    def _load_view_state(self, state: dict[str, Any]) -> None:
        self._last_info = dict(state["last_info"])

    def close(self) -> None:
        # teachers and data stay (re-creating them is the expensive part); drop the episode state
        self.engine.current = None
        self._last_observation = None

    # ------------------------------------------------------------------ observations
    def _observation(self) -> np.ndarray:
        assert self.engine.current is not None
        self._last_observation = batch_features(
            self.engine.current, self.feature_spec, progress=self.engine.progress, lr=self.engine.lr, max_lr=self.max_lr
        )
        return self._last_observation.copy()

    def _terminal_observation(self) -> np.ndarray:
        """No next batch exists at the end: the last observation with progress set to its final value."""
        assert self._last_observation is not None
        observation = self._last_observation.copy()
        observation[self.feature_names.index("progress")] = np.float32(self.engine.progress)
        observation[self.feature_names.index("lr")] = np.float32(min(self.engine.lr, self.max_lr))
        self._last_observation = observation
        return observation.copy()
