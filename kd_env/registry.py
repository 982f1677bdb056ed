"""The policy registry: every name ``kd-env train --agent NAME`` and ``kd-env bench`` accept.

One registry holds the built-ins (our agents ``reinforce``, ``mtkd-rl``, ``router`` and
``mtkd-rl-pg``, SB3's ``ppo``, ``a2c``, ``sac``, ``td3``, ``ddpg``, the baselines of
:data:`kd_env.baselines.BASELINE_POLICIES` and the learned baseline ``mmkd``)
and the user's own methods, so a new method runs through the same runner, env, TensorBoard tags
and benchmark as the rest without editing kd-env::

    import kd_env

    class MyPolicy:
        def __init__(self, env, seed=0, **kwargs): ...
        def predict(self, observation, state=None, episode_start=None, deterministic=False):
            return action, state                     # SB3's protocol

    kd_env.register_policy("mine", MyPolicy)

then ``kd-env train --import my_module --agent mine``. ``--import`` (``RunConfig.imports``)
imports the module before the policy is built, in every process that builds it.

The contract of a factory
-------------------------
``factory(env, seed=..., **agent_kwargs) -> policy``. ``env`` is the run's env (``gym.make``'s
batch-level env, or the per-sample ``VectorEnv``); ``agent_kwargs`` are ``--agent-arg``s. The
policy has ``predict(observation, state=None, episode_start=None, deterministic=False) ->
(action, state)`` and optionally ``learn``, ``save(path)`` and ``load(path, env=...)``. What the
runner does with it depends on ``kind``:

* ``"policy"`` (default): the runner steps the env with ``predict`` (``deterministic=True``)
  and never calls ``learn``. With ``save`` and ``load``, checkpoints hold the policy too (as
  ``policy.pt``) and ``--resume`` restores it: a fresh policy from the factory, then
  ``policy.load(path, env=env)`` (a classmethod returning the loaded policy, as SB3's and
  kd-env's, or a method restoring in place and returning None). Without them a resumed run
  builds the policy afresh from the factory.
* ``"agent"``: a learner following kd-env's agent protocol (:class:`kd_env.agents.BaseAgent`):
  the runner calls ``learn(total_timesteps, callback=..., reset_num_timesteps=...)`` with a
  callback taking a :class:`kd_env.agents.StepRecord` and returning False to stop; checkpoints
  go through ``save`` / ``load`` (as ``agent.pt``).
* ``"sb3"``: reserved for the built-in stable-baselines3 algorithms.

Entry points
------------
An installed package can declare policies in the entry-point group ``kd_env.policies``
(``pyproject.toml``: ``[project.entry-points."kd_env.policies"] mine = "my_pkg.policies:MyPolicy"``).
They are looked up lazily: the entry point is loaded the first time its name is asked for. The
object it names is the factory; its attributes ``per_sample``, ``action_mode`` and ``kind``
(class attributes, for a class) give the options, when present. An entry point may also name a
module that calls :func:`register_policy` for its own name when imported.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import types
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ENTRY_POINT_GROUP",
    "POLICY_KINDS",
    "PolicySpec",
    "get_policy",
    "import_policy_modules",
    "policy_names",
    "register_policy",
    "unregister_policy",
]

ENTRY_POINT_GROUP = "kd_env.policies"
POLICY_KINDS = ("policy", "agent", "sb3")
USER_KINDS = ("policy", "agent")

PolicyFactory = Callable[..., Any]
PolicyLoader = Callable[[Path, Any], Any]


@dataclass(frozen=True)
class PolicySpec:
    """One registry entry.

    Attributes:
        name: what ``--agent`` takes.
        factory: ``factory(env, seed=..., **kwargs) -> policy``.
        kind: how the runner drives it (see the module docstring).
        per_sample: ``True``: needs the per-sample env (the runner switches to it); ``False``:
            the batch-level env only (asking for the per-sample env is an error); ``None``: either.
        action_mode: the env ``action_mode`` the policy's actions are meant for (the runner
            sets it unless the env arguments do); ``None``: the env's default.
        loader: ``loader(path, env) -> policy`` rebuilding a checkpoint on resume; ``None``:
            the factory, then the policy's ``load`` (see the module docstring).
        builtin: part of kd-env (overwriting it needs ``overwrite=True``).
    """

    name: str
    factory: PolicyFactory
    kind: str = "policy"
    per_sample: bool | None = None
    action_mode: str | None = None
    loader: PolicyLoader | None = None
    builtin: bool = False


_REGISTRY: dict[str, PolicySpec] = {}
_BUILTINS_LOADED = False


def _validate(name: str, factory: Any, kind: str, per_sample: Any, action_mode: Any) -> None:
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"a policy name must be a non-empty string without surrounding spaces, got {name!r}")
    if not callable(factory):
        raise ValueError(f"the factory of policy {name!r} must be callable (factory(env, seed=..., **kwargs)), got {factory!r}")
    if kind not in POLICY_KINDS:
        raise ValueError(f"kind of policy {name!r} must be one of {POLICY_KINDS}, got {kind!r}")
    if per_sample not in (None, True, False):
        raise ValueError(f"per_sample of policy {name!r} must be None, True or False, got {per_sample!r}")
    # the value itself is checked by the env (its settings own the list of action modes)
    if action_mode is not None and not isinstance(action_mode, str):
        raise ValueError(f"action_mode of policy {name!r} must be an env action mode name or None, got {action_mode!r}")


def _add(spec: PolicySpec, overwrite: bool) -> None:
    existing = _REGISTRY.get(spec.name)
    if existing is not None and not overwrite:
        what = "a built-in policy" if existing.builtin else "already registered"
        raise ValueError(
            f"policy name {spec.name!r} is {what} ({existing.kind}: {_describe(existing.factory)}); "
            "choose another name, or pass overwrite=True to replace it"
        )
    _REGISTRY[spec.name] = spec


def _describe(factory: Any) -> str:
    if isinstance(factory, functools.partial):
        return f"{_describe(factory.func)} with {factory.args}"
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


def register_policy(
    name: str,
    factory: PolicyFactory,
    *,
    per_sample: bool | None = None,
    action_mode: str | None = None,
    kind: str = "policy",
    loader: PolicyLoader | None = None,
    overwrite: bool = False,
) -> PolicySpec:
    """Make ``factory`` available as ``--agent name`` to ``kd-env train`` / ``bench`` and ``kd_env.run``.

    Args:
        name: the policy's name.
        factory: ``factory(env, seed=..., **agent_kwargs) -> policy`` (see the module docstring).
        per_sample: ``True`` if it needs the per-sample env, ``False`` if only the batch-level
            env, ``None`` if either.
        action_mode: the env ``action_mode`` its actions are meant for (``"softmax"``,
            ``"simplex"``, ``"raw"``); ``None`` keeps the env's default (``"softmax"``).
        kind: ``"policy"`` (driven with ``predict``) or ``"agent"`` (trained with ``learn``).
        loader: ``loader(path, env) -> policy`` for ``--resume``; default: the factory, then
            the policy's ``load(path, env=env)``.
        overwrite: replace an existing entry (a built-in included) instead of raising.

    Returns:
        The new :class:`PolicySpec`.

    Raises:
        ValueError: a bad argument, or ``name`` is taken and ``overwrite`` is False.
    """
    _ensure_builtins()
    _validate(name, factory, kind, per_sample, action_mode)
    if kind not in USER_KINDS:
        raise ValueError(
            f"kind={kind!r} is reserved for kd-env's SB3 algorithms; register an SB3-style learner as "
            f"kind='agent' or drive it with predict as kind='policy'"
        )
    spec = PolicySpec(name, factory, kind, per_sample, action_mode, loader, builtin=False)
    _add(spec, overwrite)
    return spec


def unregister_policy(name: str) -> None:
    """Remove a user's policy (built-ins cannot be removed). Unknown names raise ``KeyError``."""
    _ensure_builtins()
    spec = _REGISTRY.get(name)
    if spec is None:
        raise KeyError(f"no policy named {name!r}")
    if spec.builtin:
        raise ValueError(f"{name!r} is a built-in policy; it can be replaced (overwrite=True) but not removed")
    del _REGISTRY[name]


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    # looked up through the module at call time, so tests can substitute it
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(entry_point: importlib.metadata.EntryPoint) -> PolicySpec:
    """Register the policy an entry point names (a factory, or a module that registers itself)."""
    loaded = entry_point.load()
    if isinstance(loaded, types.ModuleType):
        if entry_point.name not in _REGISTRY:
            raise ValueError(
                f"entry point {entry_point.name!r} = {entry_point.value!r} ({ENTRY_POINT_GROUP}) names a module "
                f"that did not register a policy called {entry_point.name!r}"
            )
        return _REGISTRY[entry_point.name]
    options = {key: getattr(loaded, key) for key in ("per_sample", "action_mode", "kind") if hasattr(loaded, key)}
    return register_policy(entry_point.name, loaded, **options)


def get_policy(name: str) -> PolicySpec:
    """The entry for ``name``: registered, built-in, or from an installed entry point.

    Raises:
        ValueError: unknown name; the message lists the known names and how to add one.
    """
    _ensure_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for entry_point in _entry_points():
        if entry_point.name == name:
            return _load_entry_point(entry_point)
    raise ValueError(
        f"unknown agent {name!r}; known policies: {', '.join(policy_names())}. A policy of your own is "
        "added with kd_env.register_policy(name, factory) in a module that the run imports "
        "(kd-env train --import MODULE, RunConfig(imports=[...])), or through the "
        f"{ENTRY_POINT_GROUP!r} entry-point group of an installed package"
    )


def policy_names() -> list[str]:
    """Every name ``--agent`` accepts: registered ones in registration order (built-ins first),
    then installed entry points not loaded yet (a name that shadows a registered one is skipped
    with a warning)."""
    _ensure_builtins()
    names = list(_REGISTRY)
    for entry_point in _entry_points():
        if entry_point.name in _REGISTRY:
            if _REGISTRY[entry_point.name].builtin:
                warnings.warn(
                    f"entry point {entry_point.name!r} = {entry_point.value!r} ({ENTRY_POINT_GROUP}) has the name "
                    "of a built-in policy and is ignored; rename it",
                    stacklevel=2,
                )
        elif entry_point.name not in names:
            names.append(entry_point.name)
    return names


def import_policy_modules(modules: Iterable[str]) -> None:
    """Import ``modules`` (so that their :func:`register_policy` calls run).

    An entry is a module name (importable: installed, or on ``PYTHONPATH``), a ``.py`` file (loaded
    as the module named after the file, once per process), or an experiment file (``.yaml`` /
    ``.yml``, :mod:`kd_env.comparison.spec`: its inline teacher pools are registered).

    Raises:
        ValueError: a module or file cannot be found (an error *inside* a module propagates as is).
    """
    for module in modules:
        if module.endswith((".yaml", ".yml")):
            from kd_env.comparison.spec import import_spec_pools  # lazily: the benchmark is not the registry's business

            import_spec_pools(module)
            continue
        if module.endswith(".py"):
            _import_file(Path(module))
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise  # the module exists but something it imports is missing: its own error
            raise ValueError(
                f"cannot import {module!r} (--import / RunConfig.imports): {exc}. The module must be importable "
                "by name: install it, or put its folder on PYTHONPATH (e.g. PYTHONPATH=. kd-env train ...), "
                "or give the path of its .py file"
            ) from exc


def _import_file(path: Path) -> None:
    """Run a ``.py`` file as the module named after it (``my_policies.py``: ``my_policies``), so that
    its classes pickle under that name; a second import of the same file does nothing."""
    import importlib.util
    import sys

    path = path.resolve()
    if not path.is_file():
        raise ValueError(f"cannot import {str(path)!r} (--import / RunConfig.imports): no such file")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return
        raise ValueError(f"cannot import {str(path)!r}: a module named {name!r} is loaded already ({loaded!r}); rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


# ------------------------------------------------------------------------------------------------
# built-ins: read from the registries that define them, on first use (SB3 is imported only then)
# ------------------------------------------------------------------------------------------------


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True  # set first: the imports below must not recurse into here
    try:
        # every public function loads the built-ins first, so they precede the user's entries
        for spec in _builtin_specs():
            _REGISTRY[spec.name] = spec
    except BaseException:
        _BUILTINS_LOADED = False
        raise


def _builtin_specs() -> list[PolicySpec]:
    from kd_env.agents import MTKDRL, MTKDRLPG, Reinforce
    from kd_env.agents.mtkd_rl_pg import MTKDRL_PG_DEFAULTS
    from kd_env.agents.sb3 import ALGORITHMS, load_sb3_agent, make_sb3_agent
    from kd_env.baselines import BASELINE_POLICIES, MMKD, load_baseline, make_baseline

    specs = [
        PolicySpec("reinforce", Reinforce, kind="agent", loader=_classmethod_loader(Reinforce), builtin=True),
        # the published agent is defined on the per-sample state; its warm-up applies all-ones
        # weights as they are, hence "raw"
        PolicySpec("mtkd-rl", MTKDRL, kind="agent", per_sample=True, action_mode="raw", loader=_classmethod_loader(MTKDRL), builtin=True),
        # issue #10: per-sample routing by a true policy gradient (best with reward_mode="label_logprob");
        # weights sent as they are (softmax of the sampled logits), hence "raw"
        PolicySpec(
            "router",
            functools.partial(MTKDRLPG, network="scorer"),
            kind="agent",
            per_sample=True,
            action_mode="raw",
            loader=_classmethod_loader(MTKDRLPG),
            builtin=True,
        ),
        # MTKD-RL's network measured best with z-scored advantages and wider exploration
        # (Fashion-MNIST specialists val 71.5 vs 58.7 with the router's defaults; AVER 61.3)
        PolicySpec(
            "mtkd-rl-pg",
            functools.partial(MTKDRLPG, **MTKDRL_PG_DEFAULTS),
            kind="agent",
            per_sample=True,
            action_mode="raw",
            loader=_classmethod_loader(MTKDRLPG),
            builtin=True,
        ),
    ]
    for algo in ALGORITHMS:
        specs.append(
            PolicySpec(
                algo,
                functools.partial(make_sb3_agent, algo),
                kind="sb3",
                loader=functools.partial(_load_sb3, load_sb3_agent, algo),
                builtin=True,
            )
        )
    for name, cls in BASELINE_POLICIES.items():
        specs.append(
            PolicySpec(
                name,
                functools.partial(make_baseline, name),
                kind="policy",
                action_mode=cls.action_mode,
                loader=load_baseline,
                builtin=True,
            )
        )
    # MMKD (ICME 2023) learns its weight networks inside predict (meta steps on the engine's
    # student): a policy, per sample (its feature network reads the whole batch), simplex weights
    specs.append(
        PolicySpec("mmkd", MMKD, kind="policy", per_sample=True, action_mode="simplex", loader=_classmethod_loader(MMKD), builtin=True)
    )
    return specs


def _classmethod_loader(cls: Any) -> PolicyLoader:
    def load(path: Path, env: Any) -> Any:
        return cls.load(path, env=env)

    return load


def _load_sb3(load_sb3_agent: Callable[..., Any], algo: str, path: Path, env: Any) -> Any:
    # training=True: a resumed run keeps updating VecNormalize's statistics and normalising rewards
    return load_sb3_agent(algo, path, env, training=True)
