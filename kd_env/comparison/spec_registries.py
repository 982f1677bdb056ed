"""What an experiment file needs from kd-env's registries, checked before anything runs.

:func:`check_spec` imports the file's ``imports``, registers its inline pools
(:func:`register_inline_pools`) and checks its agents, pools, env id and every method's env and
agent arguments against the registries (:mod:`kd_env.registry`, :mod:`kd_env.teachers`,
:mod:`kd_env.envs`), raising :class:`~kd_env.comparison.spec_schema.SpecError` at the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kd_env.comparison.presets import InlinePool, Preset
from kd_env.comparison.spec_schema import Key, SpecContext

_INLINE_POOLS: dict[str, InlinePool] = {}


def register_inline_pools(preset: Preset) -> None:
    """Register the preset's inline pools with :func:`kd_env.register_pool` (again with a new
    definition when another file used the name before; a built-in or user's pool of that name is
    an error)."""
    from kd_env.teachers import POOLS, register_pool

    for name, pool in preset.pools.items():
        if name in POOLS and _INLINE_POOLS.get(name) == pool:
            continue
        if name in POOLS and name not in _INLINE_POOLS:
            raise ValueError(
                f"inline pool {name!r}: a pool of that name exists already ({POOLS[name].description}); rename the inline pool"
            )
        description = pool.description or f"declared inline by preset {preset.name or 'custom'}"
        if pool.recipes is not None:
            register_pool(name, recipes=list(pool.recipes), description=description, overwrite=True)
        else:
            register_pool(name, paths=list(pool.paths or ()), description=description, overwrite=True)
        _INLINE_POOLS[name] = pool


def check_spec(preset: Preset, source: str = "<preset>") -> None:
    """What an experiment needs from the registries, checked before anything runs: its imports
    import, its inline pools register, its agents, pools and env id are known, and every
    method's env and agent arguments are accepted. Raises :class:`SpecError`."""
    check_registries(preset, SpecContext(source, None, {}))


def check_registries(preset: Preset, context: SpecContext) -> None:
    import inspect

    import gymnasium as gym

    from kd_env.envs import ENV_IDS, KDEnvSettings
    from kd_env.envs.per_sample_env import per_sample_arguments
    from kd_env.registry import get_policy, import_policy_modules, policy_names
    from kd_env.teachers import POOLS

    for index, module in enumerate(preset.imports):
        try:
            import_policy_modules([module])
        except ValueError as exc:  # not found: the message says where it looked and what to do
            raise context.error(("imports", index), str(exc).split("\n")[0]) from exc
        except Exception as exc:  # noqa: BLE001  (an error inside the user's module: named, traceback with --debug)
            raise context.error(("imports", index), f"importing {module!r} failed: {type(exc).__name__}: {exc}".split("\n")[0]) from exc
    try:
        register_inline_pools(preset)
    except (TypeError, ValueError) as exc:
        raise context.error(("scenarios", preset.scenarios.index(next(iter(preset.pools)))), str(exc)) from None
    if preset.env_id not in ENV_IDS:
        raise context.error(("env_id",), f"unknown env id {preset.env_id!r}", f"known: {', '.join(ENV_IDS)}")
    for index, scenario in enumerate(preset.scenarios):
        if scenario is not None and scenario not in POOLS:
            raise context.error(
                ("scenarios", index),
                f"unknown pool {scenario!r}",
                f"known: {', '.join(sorted(POOLS))}, or an inline pool {{name: {scenario}, recipes: [...]}} / {{name: {scenario}, paths: [...]}}",
            )
    for name, pool in preset.pools.items():
        for index, path in enumerate(pool.paths or ()):
            if not Path(path).is_file():
                raise context.error(("scenarios", preset.scenarios.index(name), "paths", index), f"no teacher checkpoint at {path}")
    defaults = gym.spec(preset.env_id).kwargs
    where = {"pool": preset.scenarios[0]} if preset.scenarios[0] else {}
    where.update({"student": preset.students[0]} if preset.students[0] else {})
    try:
        KDEnvSettings.from_kwargs(**{**defaults, **preset.env_kwargs, **where})
    except (TypeError, ValueError) as exc:
        raise context.error(("env_kwargs",), str(exc)) from None
    for index, method in enumerate(preset.methods):
        key: Key = ("methods", index)
        try:
            spec = get_policy(method.agent)
        except ValueError:
            raise context.error((*key, "agent"), f"unknown agent {method.agent!r}", f"known: {', '.join(policy_names())}") from None
        if spec.per_sample is not None and spec.per_sample != method.per_sample:
            env = "per-sample" if spec.per_sample else "batch-level"
            raise context.error(
                (*key, "per_sample"),
                f"agent {method.agent!r} runs on the {env} env only",
                f"set per_sample: {str(spec.per_sample).lower()}",
            )
        env_kwargs = {**defaults, **preset.env_kwargs, **method.env_kwargs, **where}
        if spec.action_mode is not None:
            env_kwargs.setdefault("action_mode", spec.action_mode)  # as the runner sets it
        checks: list[tuple[Key, dict[str, Any]]] = [
            ((*key, "env_kwargs"), env_kwargs),
            ((*key, "pretrain"), {**env_kwargs, **(method.pretrain.env_kwargs if method.pretrain else {})}),
        ]
        checks += [
            ((*key, "student_env_kwargs", student), {**env_kwargs, **extra, "student": student})
            for student, extra in method.student_env_kwargs.items()
        ]
        # the per-sample env's own arguments (include_embeddings, logits, ...) are its, not KDEnvSettings'
        own = per_sample_arguments() if method.per_sample else frozenset()
        for where_key, kwargs in checks:
            try:
                KDEnvSettings.from_kwargs(**{name: value for name, value in kwargs.items() if name not in own})
            except (TypeError, ValueError) as exc:
                raise context.error(where_key, str(exc)) from None
        try:
            inspect.signature(spec.factory).bind(None, seed=0, **method.agent_kwargs)
        except TypeError as exc:
            raise context.error((*key, "agent_kwargs"), f"agent {method.agent!r} does not take these arguments: {exc}") from None
        except ValueError:  # no signature to read (a builtin): the run will tell
            pass
