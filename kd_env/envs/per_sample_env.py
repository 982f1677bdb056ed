"""The per-sample multi-teacher KD environment (MTKD-RL's formulation) as a Gymnasium VectorEnv."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from kd_env.engine.modes import entry_point
from kd_env.envs.core import (
    KDEnvCore,
    checkpoint_option,
    final_metrics,
    supported_render_mode,
)
from kd_env.observations import CompactStates, SampleStateSpec, per_sample_state, sample_state, state_digest


class PerSampleKDVectorEnv(KDEnvCore, VectorEnv):
    """
    ## Description

    MTKD-RL's formulation of multi-teacher KD: every sample of a training batch is a decision.
    The vector env's sub-envs are the sample slots of one batch (``num_envs`` = batch size);
    one vector ``step`` applies each slot's teacher weights to that sample's loss terms and makes
    one student update. Everything else (engine, data, teachers, rewards, episode) is the
    batch-level :class:`~kd_env.envs.batch_env.MultiTeacherKDEnv`'s.

    ## Action Space

    Per slot ``Box(-1, 1, (K,))``, or ``(2K,)`` with feature KD (logit head then feature head),
    mapped per sample by ``softmax(scale * a)``; ``action_mode="simplex"`` takes non-negative
    weights and renormalises them, ``action_mode="raw"`` applies non-negative weights as they
    are. The batched ``action_space`` is ``[num_envs, ...]``. NaN,
    inf, a wrong shape (or negative / all-zero simplex rows) raise ``ValueError`` and leave the
    student unchanged. Softmax-mode actions outside ``[-1, 1]`` are clipped to the Box (a
    warning the first time), as in the batch env.

    ## Observation Space

    Per slot, MTKD-RL's state for each teacher: ``[feature cosine, KL, teacher CE, teacher
    embedding, teacher logits]`` (cosine only with feature KD), raw and unnormalised as in the
    official code, clipped to ``[-obs_clip, obs_clip]`` for finite bounds.
    ``include_embeddings=False`` drops the embeddings; ``logits=k`` keeps the k largest teacher
    logits, ``logits=None`` none. ``state_parts`` selects the ``performance`` / ``gap`` groups.
    ``feature_names`` names every column. ``state_parts`` may add ``"agreement"``: per teacher,
    how much the other teachers back its prediction (label- and class-free). With ``labels="none"`` the teacher CE columns are absent
    (they read the training labels), and MTKD-RL's agent, whose confidence prior reads them, is
    refused.

    An agent that keeps states for later (MTKD-RL keeps an epoch's) can hold them as
    :meth:`compact_states` and rebuild them bit for bit with :meth:`expand_states`.

    ## Rewards

    * ``"neg_loss"`` (default here, the paper's): each sample's negative weighted loss,
      z-scored within the batch and clipped to [0, 1].
    * ``"label_logprob"`` (the router's): each sample's log-probability that the weighted teacher
      mixture gives its true label, ``log sum_k w_ik softmax(z_ik / T)[y_i]``, divided by
      ``log(C)``; it credits each teacher for being right on that sample and never reads the
      student (:class:`~kd_env.envs.rewards.RewardTracker` says why that matters). It reads the
      training labels: refused with ``labels="none"``, the noisy labels with ``labels="noisy"``.
    * ``"val_loss_delta"`` and ``"val_acc"``: as in the batch env; every slot gets the update's
      reward (they measure the whole update, not one sample).
    * ``"val_label_logprob"`` (the label-free router's, issue #23), with ``probe_rows=P``: P
      validation images follow the batch's B rows in every observation (``num_envs = B + P``,
      ``infos["probe"]`` marks them); their weights reach no student, and each is paid the
      ``label_logprob`` of its weights on its *validation* label
      (:class:`~kd_env.envs.probe.ValidationProbe`). The batch's rows get the probe's mean. It
      reads no training label: the reward of the label-free regime.

    ## Starting State

    As the batch env: ``reset(seed=...)`` starts a fresh student, every draw from the seed;
    ``reset(options={"checkpoint": path})`` continues a run saved by ``save(path)``.

    ## Episode End

    All slots terminate together when the training budget is spent or the student diverges
    (``infos["diverged"]``). Autoreset is ``NEXT_STEP``: the ``step`` after the end resets
    (new seed from the env's generator), ignores its actions and returns zero rewards.

    ## Arguments

    ```python
    import gymnasium as gym
    import kd_env

    envs = gym.make_vec("MultiTeacherKD-FashionMNIST-v0", num_envs=64, vectorization_mode="vector_entry_point")
    ```

    ``num_envs`` > 1 sets the batch size (``num_envs=1``, ``gym.make_vec``'s default, keeps the
    ``batch_size`` argument or the dataset default); with ``probe_rows=P`` the env has
    ``batch_size + P`` slots. ``include_embeddings``, ``logits``,
    ``obs_clip``, and every argument of the batch-level env except ``steps_per_action``, the
    label regime (``labels``, ``label_noise``, ``label_noise_kind``, ``label_noise_seed``)
    included, and the fixed augmented views (``augment_views``, ``views_seed``, ``views_store``;
    with views the compact states hold each sample's view's row, and rebuild bit for bit;
    ``views_store="logits"`` needs ``include_embeddings=False``). There is no render mode: any
    ``render_mode`` warns and rendering stays off.

    ``pickle`` / ``copy.deepcopy`` give a faithful copy, as for the batch env.

    ## Version History

    * v0: initial release (``reward_mode="label_logprob"`` added within v0: new option, the
      other modes unchanged; the label regimes added within v0, the default ``labels="full"``
      the earlier behaviour bit for bit).
    * v0, issue #21 (no change to any run that worked before): the env runs in its own torch
      modes (grad on, inference mode off, autocast off, eager under ``torch.compile``), so a
      caller's ``no_grad`` / ``inference_mode`` / ``autocast`` no longer breaks or changes a run;
      unknown arguments raise ``TypeError`` in Python's wording ("got an unexpected keyword
      argument"); float64 and torch-tensor actions are applied as their float32 rounding; the
      vector env carries ``autoreset_mode`` as an attribute, as Gymnasium's do.
    * v0, issue #23 (new options, every earlier run unchanged): ``reward_mode="val_label_logprob"``
      with ``probe_rows`` (the probe's rows after the batch's); the ``"agreement"`` state part.
    * v0, issue #27 (new options, every earlier run unchanged): ``augment_views``, ``views_seed``,
      ``views_store``.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
    # Gymnasium's own vector envs carry it as an attribute too, and tools read that (torchrl's
    # GymWrapper: AttributeError without it)
    autoreset_mode = AutoresetMode.NEXT_STEP

    def __init__(
        self,
        num_envs: int = 1,
        include_embeddings: bool = True,
        logits: str | int | None = "all",
        obs_clip: float = 1e3,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        init_args = {
            "num_envs": num_envs,
            "include_embeddings": include_embeddings,
            "logits": logits,
            "obs_clip": obs_clip,
            "render_mode": render_mode,
            **kwargs,
        }
        self.render_mode = supported_render_mode(render_mode, self.metadata["render_modes"], type(self).__name__)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            # not silently the default batch size: num_envs is the batch size of this env
            raise ValueError(f"num_envs is the batch size here (one slot per sample): an integer >= 1, got {num_envs!r}")
        if num_envs > 1:
            if kwargs.get("batch_size") not in (None, num_envs):
                raise ValueError(f"num_envs={num_envs} and batch_size={kwargs['batch_size']} disagree: they are the same thing here")
            kwargs["batch_size"] = num_envs
        kwargs.setdefault("reward_mode", "neg_loss")
        self._setup_core(kwargs, init_args)
        self.batch_size = self.engine.config.batch_size
        # the validation probe's rows follow the batch's (reward_mode="val_label_logprob")
        self.probe_rows = self.settings.probe_rows
        self.num_envs = self.batch_size + self.probe_rows
        if self.engine.steps_per_epoch * self.batch_size > int(self.engine.data.train_labels.shape[0]):
            # drop_last=False with a last, partial batch: the slots are the samples of a full batch
            raise ValueError(
                f"drop_last=False: the last batch of each epoch has fewer than {self.batch_size} samples, and the per-sample env "
                "has one slot per sample of a full batch; keep drop_last=True here (the batch-level env takes drop_last=False)"
            )
        self.obs_clip = float(obs_clip)
        embedding_dims = tuple(int(shape[0]) for shape in self.engine.teacher_shapes)
        self.state_spec = SampleStateSpec(
            tuple(self.teacher_names),
            embedding_dims,
            self.engine.num_classes,
            self.settings.feature_kd,
            include_embeddings,
            logits,
            tuple(self.settings.state_parts),
            label_free=self.settings.labels == "none",
        )
        if self.state_spec.size == 0:
            raise ValueError(
                f"the per-sample state would have no column: state_parts={list(self.settings.state_parts)!r}, "
                f"include_embeddings={include_embeddings!r}, logits={logits!r}, labels={self.settings.labels!r} "
                "(which withholds teacher_ce); keep the 'gap' part, the embeddings or some logits"
            )
        if include_embeddings and "performance" in self.state_spec.state_parts and self.engine.config.views_contents == "logits":
            raise ValueError(
                "views_store='logits' keeps no teacher embeddings, and include_embeddings=True puts them in the state: "
                "use views_store='embeddings' or include_embeddings=False"
            )
        self.feature_names = self.state_spec.names
        self.single_observation_space = spaces.Box(-self.obs_clip, self.obs_clip, (self.state_spec.size,), dtype=np.float32)
        self.single_action_space = self._single_action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._needs_reset = True
        self._observation_indices: torch.Tensor | None = None  # training rows of _last_observation
        self._exact_rebuild: bool | None = None  # checked on the first compact_states call

    @entry_point  # the env's torch modes, not the caller's (skrl, CleanRL-style loops step under no_grad)
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        checkpoint = checkpoint_option(seed, options)
        super().reset(seed=seed)
        if checkpoint is not None:
            self.load(checkpoint)
            observation = self.last_observation
            assert observation is not None
            return observation, {}
        self._start_episode()
        self._needs_reset = False
        return self._observation(), {}

    @entry_point  # the env's torch modes, not the caller's (skrl, CleanRL-style loops step under no_grad)
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._last_observation is None:
            raise RuntimeError("call reset() before step()")
        if self._needs_reset:  # NEXT_STEP autoreset: this step only starts the next episode
            observation, _ = self.reset()
            zeros = np.zeros(self.num_envs, dtype=bool)
            return observation, np.zeros(self.num_envs), zeros, zeros.copy(), {}
        logit_weights, feature_weights = self._weights_for(actions, self.action_space.shape)
        batch = self.batch_size
        probe_weights = logit_weights[batch:]
        result = self.engine.step(logit_weights[:batch], None if feature_weights is None else feature_weights[:batch])
        if not result.diverged:
            rewards = self._rewards(result, probe_weights)
            if not np.isfinite(rewards).all():  # finite loss, non-finite outcome: undo it, diverged
                self.engine.rollback(result)
        if result.diverged:
            rewards = np.full(self.num_envs, float(self.settings.divergence_penalty))
        terminated = bool(result.diverged or result.done)
        self._needs_reset = terminated
        observation = self._last_observation.copy() if terminated else self._observation()
        infos = self._infos(result, probe_weights)
        flags = np.full(self.num_envs, terminated, dtype=bool)
        return observation, rewards.astype(np.float64), flags, np.zeros(self.num_envs, dtype=bool), infos

    def _rewards(self, result: Any, probe_weights: torch.Tensor) -> np.ndarray:
        """One reward per slot; with the validation probe, each probe row is paid its own and the
        batch's rows the probe's mean (the update's reward, as the shared modes give every slot)."""
        if not self.probe_rows:
            return self.rewards.sample_rewards(result)
        probe_rewards = self.rewards.probe_rewards(probe_weights).double().cpu().numpy()
        return np.concatenate([np.full(self.batch_size, probe_rewards.mean()), probe_rewards])

    def _observation(self) -> np.ndarray:
        assert self.engine.current is not None
        state = per_sample_state(self.engine.current, self.state_spec, self.obs_clip)
        if self.rewards.probe is not None:
            state = torch.cat([state, self.rewards.probe.states(self.state_spec, self.obs_clip)])
        self._last_observation = state.cpu().numpy().astype(np.float32)
        # the kept teacher rows: training indices, or with augment_views each sample's view's row
        self._observation_indices = self.engine.current.kept_rows.detach().to("cpu", copy=True)
        return self._last_observation.copy()

    # ------------------------------------------------------------------ compact states
    def compact_states(self, observation: np.ndarray) -> CompactStates | None:
        """A small stand-in for ``observation``, the observation this env last returned, from
        which :meth:`expand_states` rebuilds it bit for bit: the samples' training rows and the
        columns that depend on the student (cosine, KL). The teachers' columns (CE, embedding,
        logits) are read again from the teacher-output store (or the in-memory cache) then.

        With ``augment_views`` the rows are the samples' views' (``image * V + view``), so the
        states rebuild bit for bit there too.

        Returns None where that cannot be done: augmentation on without ``augment_views`` (the
        teachers saw pixels that are gone), ``observation`` not the one this env last returned (a wrapper changed it, or
        an older one), or a rebuild on this device not bit for bit the same (checked once, on
        the first call; a warning then).
        """
        last = self._last_observation
        if last is None or self._observation_indices is None or not self.engine.teacher_outputs_by_index or self.probe_rows:
            return None
        observation = np.asarray(observation)
        if observation.shape != last.shape or observation.dtype != last.dtype or not np.array_equal(observation, last):
            return None
        columns = self.state_spec.student_columns
        compact = CompactStates(
            self._observation_indices.clone(), torch.from_numpy(observation[:, columns].copy()), state_digest(observation)
        )
        if self._exact_rebuild is None:
            self._exact_rebuild = bool(np.array_equal(self._rebuild(compact).numpy(), observation))
            if not self._exact_rebuild:
                gym.logger.warn("rebuilt per-sample states differ from the observed ones on this device: states are kept whole")
        return compact if self._exact_rebuild else None

    def expand_states(self, compact: CompactStates) -> torch.Tensor:
        """The states ``compact`` stands for: ``[B, state_dim]`` float32 on the CPU, bit for bit.

        Raises:
            ValueError: the rebuilt states differ from the observed ones (``compact`` came from an
                env with other teachers, data or store dtype).
        """
        return next(self.expand_states_many([compact]))

    def expand_states_many(self, compacts: Sequence[CompactStates], rows_per_read: int | None = None) -> Iterator[torch.Tensor]:
        """:meth:`expand_states` of each of ``compacts``, in order, reading the teachers' rows of
        several batches at once: about ``rows_per_read`` rows (default a sixteenth of the
        training set), dense enough in the store's files to be read as blocks rather than a
        system call per row (MTKD-RL's epoch-end update on Fashion-MNIST: 1.6 s instead of
        2.3 s, 421 SGD steps included), and few enough to hold (10 MB here).

        Raises:
            ValueError: as :meth:`expand_states`.
        """
        if rows_per_read is None:
            rows_per_read = max(1, int(self.engine.data.train_labels.shape[0]) // 16)
        group: list[CompactStates] = []
        group_rows = 0
        for position, compact in enumerate(compacts):
            group.append(compact)
            group_rows += len(compact.indices)
            if group_rows >= rows_per_read or position == len(compacts) - 1:
                parts = self.engine.teacher_performance_batches([member.indices for member in group])
                for member, part in zip(group, parts, strict=True):
                    states = self._states_from(member, *part)
                    if state_digest(states.numpy()) != member.digest:
                        raise ValueError(
                            "compact states do not rebuild to the states that were observed: they come from an env with other "
                            "teachers, data or teacher-output store dtype; use them with the env (arguments) they came from"
                        )
                    yield states
                group, group_rows = [], 0

    def _rebuild(self, compact: CompactStates) -> torch.Tensor:
        return self._states_from(compact, *self.engine.teacher_performance(compact.indices))

    def _states_from(
        self,
        compact: CompactStates,
        teacher_logits: torch.Tensor,
        teacher_embeddings: list[torch.Tensor],
        teacher_ce: torch.Tensor | None,
    ) -> torch.Tensor:
        # [B, K] zeros: the student columns are filled in below
        placeholder = teacher_logits.new_zeros(teacher_logits.shape[1], teacher_logits.shape[0])
        states = sample_state(
            self.state_spec,
            self.obs_clip,
            feature_cosine=placeholder if self.state_spec.feature_kd else None,
            kd_loss=placeholder,
            teacher_ce=teacher_ce,
            teacher_embeddings=teacher_embeddings,
            teacher_logits=teacher_logits,
        ).cpu()
        states[:, self.state_spec.student_columns] = compact.student_columns
        return states

    def _infos(self, result: Any, probe_weights: torch.Tensor) -> dict[str, Any]:
        """Vector-env infos: one value per slot, with Gymnasium's ``_key`` masks (all slots).
        The probe rows (``infos["probe"]``) have their weights, and NaN where a value is the
        update's (KL, CE)."""

        def padded(values: torch.Tensor) -> np.ndarray:  # the batch's rows, then NaN for the probe's
            array = values.detach().cpu().numpy()
            return np.concatenate([array, np.full((self.probe_rows, *array.shape[1:]), np.nan, dtype=array.dtype)])

        per_slot: dict[str, Any] = {
            "weights": torch.cat([result.logit_weights, probe_weights.to(result.logit_weights)]).cpu().numpy().astype(np.float32),
            "kd_loss": padded(result.kd_loss).astype(np.float32),
            # absent in the label-free regime: the student's training CE reads the labels
            **({} if result.student_ce is None else {"ce": padded(result.student_ce).astype(np.float64)}),
            "loss": np.full(self.num_envs, result.loss),
            "epoch": np.full(self.num_envs, self.engine.epoch),
            "step": np.full(self.num_envs, self.engine.global_step),
            "lr": np.full(self.num_envs, self.engine.lr),
            "diverged": np.full(self.num_envs, result.diverged),
        }
        if self.probe_rows:
            per_slot["probe"] = np.arange(self.num_envs) >= self.batch_size
        if result.feature_weights is not None:
            per_slot["feature_weights"] = result.feature_weights.cpu().numpy().astype(np.float32)
        if result.epoch_end:
            per_slot["val_acc"] = np.full(self.num_envs, result.val_acc)
            if result.test_acc is not None:
                per_slot["test_acc"] = np.full(self.num_envs, result.test_acc)
        for key, value in final_metrics(self.engine, result).items():
            per_slot[key] = np.full(self.num_envs, value)
        infos = dict(per_slot)
        infos.update({f"_{key}": np.ones(self.num_envs, dtype=bool) for key in per_slot})
        return infos

    def close_extras(self, **kwargs: Any) -> None:
        self.engine.current = None
        self._last_observation = None
        self._observation_indices = None

    def _extra_state(self) -> dict[str, Any]:
        return {"needs_reset": self._needs_reset, "observation_indices": self._observation_indices}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._needs_reset = bool(state["needs_reset"])
        # absent from checkpoints written before compact states: then none are made until the next observation
        self._observation_indices = state.get("observation_indices")


def per_sample_arguments() -> frozenset[str]:
    """The per-sample env's own constructor arguments, which are not
    :class:`~kd_env.envs.KDEnvSettings` fields (``num_envs``, ``include_embeddings``, ``logits``,
    ``obs_clip``, ``render_mode``): what an experiment file's check must not send to the settings."""
    parameters = inspect.signature(PerSampleKDVectorEnv.__init__).parameters
    return frozenset(name for name, parameter in parameters.items() if name != "self" and parameter.kind is not parameter.VAR_KEYWORD)
