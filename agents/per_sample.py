"""What kd-env's per-sample agents (MTKD-RL and the routers) share: finding the per-sample env
under its wrappers, and the state layout an agent's network is built for and checked against.

A layout is a JSON-able dict (state size, teachers, heads, and the columns or feature names the
network reads); an agent stores it in its checkpoint, so a predict-only agent is rebuilt without
an env and an env with other teachers or state options is refused on load.
"""

from __future__ import annotations

from typing import Any

from kd_env.envs.per_sample_env import PerSampleKDVectorEnv

from .mtkd_rl_network import PriorColumns

__all__ = ["per_sample_env", "refuse_label_free", "resolve_state_layout", "routing_layout_of", "state_layout_of"]


def refuse_label_free(env: PerSampleKDVectorEnv, agent_name: str, reads: str) -> None:
    """Raise ``ValueError`` where ``env`` withholds the training labels (``labels="none"``) and
    the agent's network reads ``reads``, a column computed from them."""
    if env.settings.labels == "none":
        raise ValueError(
            f"{agent_name} reads {reads}, which the env's labels='none' withholds (the per-sample state has no teacher_ce "
            "column then); run it with labels='full' or 'noisy', or use the router (network='scorer'), which reads the "
            "state it is given"
        )


def per_sample_env(env: Any, agent_name: str) -> PerSampleKDVectorEnv:
    """The per-sample env under any wrappers, checked for what a per-sample agent needs.

    Raises:
        ValueError: ``env`` is not the per-sample env, or not in ``action_mode="raw"`` (the
            agents send their weights exactly: simplex rows, or MTKD-RL's all-ones warm-up).
    """
    base = getattr(env, "unwrapped", env)
    if not isinstance(base, PerSampleKDVectorEnv):
        raise ValueError(
            f"{agent_name} runs on the per-sample env (PerSampleKDVectorEnv, e.g. gym.make_vec(id, num_envs=B, "
            f"vectorization_mode='vector_entry_point', action_mode='raw')), got {type(base).__name__}"
        )
    if base.settings.action_mode != "raw":
        raise ValueError(
            f"{agent_name} gives its weights exactly as they are: build the per-sample env with "
            f"action_mode='raw' (got {base.settings.action_mode!r})"
        )
    return base


def resolve_state_layout(env_layout: dict[str, Any] | None, saved_layout: dict[str, Any] | None, agent_name: str) -> dict[str, Any]:
    """The state layout an agent is built for: the env's (checked against ``saved_layout`` when
    both are given), or ``saved_layout`` for a predict-only agent without an env."""
    if env_layout is not None:
        if saved_layout is not None and saved_layout != env_layout:
            differences = [key for key in env_layout if env_layout[key] != saved_layout.get(key)]
            raise ValueError(
                f"the env's state layout does not match the agent's ({', '.join(differences)} differ): "
                "build the env with the same teachers and state options"
            )
        return env_layout
    if saved_layout is None:
        raise ValueError(f"a predict-only {agent_name} needs state_layout; use {agent_name}.load(path) for a trained agent")
    return saved_layout


def _common_layout(env: PerSampleKDVectorEnv) -> dict[str, Any]:
    """The layout entries every per-sample agent depends on: state size, teachers, heads."""
    shape = env.single_observation_space.shape
    assert shape is not None  # a Box
    return {
        "state_dim": int(shape[0]),
        "num_teachers": int(env.num_teachers),
        "heads": int(env.heads),
        "teacher_names": list(env.teacher_names),
    }


def state_layout_of(env: PerSampleKDVectorEnv) -> dict[str, Any]:
    """What :class:`~kd_env.agents.mtkd_rl.MTKDRL`'s network depends on in the env's state: the
    common entries and the prior columns (JSON-able; checked on load).

    Raises:
        ValueError: the env is label-free (MTKD-RL's confidence prior is CA-MKD's rule on the
            teachers' CE with the training label).
    """
    refuse_label_free(env, "MTKD-RL", "each teacher's CE on the training label (its confidence prior)")
    columns = PriorColumns.from_feature_names(env.feature_names, env.teacher_names, env.heads == 2)
    return {**_common_layout(env), "columns": columns.to_dict()}


def routing_layout_of(env: PerSampleKDVectorEnv) -> dict[str, Any]:
    """What :class:`~kd_env.agents.mtkd_rl_pg.MTKDRLPG`'s networks depend on in the env's state:
    the common entries and every feature name (JSON-able; checked on load)."""
    return {**_common_layout(env), "feature_names": list(env.feature_names)}
