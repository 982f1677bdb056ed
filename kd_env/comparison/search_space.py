"""Search spaces for ``kd-env tune`` (issue #28): which of an agent's arguments are tuned, over what.

One YAML file per agent, ``agents/hyperparams/search/<agent>.yml`` (package data of
``kd_env.agents``, beside RL Zoo-style ``hyperparams/<algo>.yml``), a mapping of the agent's
keyword arguments (its ``agent_kwargs``) to their ranges::

    learning_rate: {low: 1.0e-4, high: 3.0e-2, log: true}   # a float, log-uniform
    n_steps: {choices: [1, 2, 4, 8]}                         # categorical
    ppo_epochs: {low: 2, high: 8}                            # an integer (both ends integers)

Keys of a range: ``low`` / ``high`` (with ``log`` and ``step``), or ``choices``. A file is checked
before anything runs: every parameter must be one the agent takes (its factory's signature, an
SB3 algorithm's constructor and RL Zoo's env-side keys, a rule's constructor), a range must hold
a value (``low < high``; ``log`` needs ``low > 0``), ``choices`` a non-empty list. A bad file is
one :class:`~kd_env.comparison.spec_schema.SpecError` naming the file, the key and its line.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_env.comparison.spec_schema import SpecContext, SpecError, check_keys, parse_yaml

__all__ = [
    "Param",
    "SearchSpace",
    "accepted_parameters",
    "default_space_folder",
    "load_search_space",
    "space_path",
    "untuned_values",
]

_RANGE_KEYS = ["low", "high", "log", "step", "choices"]


@dataclass(frozen=True)
class Param:
    """One tuned argument: a float or integer range (``low``..``high``, ``log``, ``step``), or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def kind(self) -> str:
        """``"categorical"``, ``"int"`` or ``"float"``."""
        if self.choices is not None:
            return "categorical"
        integral = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
        return "int" if integral and (self.step is None or float(self.step).is_integer()) else "float"

    def holds(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's space: one of the ``choices``, or a number in
        ``[low, high]`` (an integer for an integer range). Optuna would take a value outside with a
        warning, but TPE then models it (a 0 in a log range breaks its density), so it is refused."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        assert self.low is not None and self.high is not None
        if self.kind == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def suggest(self, trial: Any) -> Any:
        """The value of this parameter for an Optuna ``trial`` (``trial.suggest_*``)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """An agent's search space, read from ``source``."""

    agent: str
    source: str
    params: tuple[Param, ...]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Every parameter's value for ``trial`` (Optuna's define-by-run)."""
        return {param.name: param.suggest(trial) for param in self.params}


def default_space_folder() -> Path:
    """The shipped search spaces: ``agents/hyperparams/search`` (``kd_env.agents.hyperparams``)."""
    from importlib.resources import files

    return Path(str(files("kd_env.agents").joinpath("hyperparams", "search")))


def space_path(agent: str, folder: str | Path | None = None) -> Path:
    """Where the search space of ``agent`` is: ``<folder>/<agent>.yml`` (default folder: the shipped one)."""
    return Path(folder or default_space_folder()) / f"{agent}.yml"


def _constructor(agent: str) -> tuple[Any, set[str], str | None]:
    """Where the registered ``agent``'s keyword arguments are declared, looking through the
    factories that pass them on: the callable to read (a rule's constructor for ``make_baseline``,
    an SB3 algorithm's for ``make_sb3_agent``, else the factory itself, a partial's fixed keywords
    as its defaults), the names kd-env passes itself, and the SB3 algorithm (or ``None``)."""
    from kd_env.registry import get_policy

    factory: Any = get_policy(agent).factory
    fixed = factory.args if isinstance(factory, functools.partial) else ()
    name = getattr(factory.func if isinstance(factory, functools.partial) else factory, "__name__", "")
    if name == "make_baseline" and fixed:
        from kd_env.baselines.policies import BASELINE_POLICIES, registry_key

        return BASELINE_POLICIES[registry_key(fixed[0])].__init__, {"self", "env", "seed"}, None
    if name == "make_sb3_agent" and fixed:
        from kd_env.agents.sb3_hyperparams import ALGORITHMS

        return ALGORITHMS[fixed[0]].__init__, {"self", "env", "policy", "seed", "device"}, fixed[0]
    return factory, {"env", "seed"}, None


def accepted_parameters(agent: str) -> set[str] | None:
    """The keyword arguments the registered ``agent`` takes (:func:`_constructor`; an SB3 agent
    also RL Zoo's env-side keys), or ``None`` when they cannot be read (a factory with
    ``**kwargs`` that is none of kd-env's)."""
    function, passed, algo = _constructor(agent)
    names = _keywords(function)
    if names is None:
        return None
    if algo is not None:
        from kd_env.agents.sb3_hyperparams import ENV_SIDE_KEYS

        names |= set(ENV_SIDE_KEYS)
    return names - passed


def untuned_values(
    agent: str, agent_kwargs: dict[str, Any], space: SearchSpace, env_id: str | None, per_sample: bool
) -> tuple[dict[str, Any], list[str]]:
    """The values a method runs with untuned, for each parameter of ``space``: its ``agent_kwargs``,
    else what the agent's factory fixes or defaults to (an SB3 agent: its RL Zoo-style yaml section
    for ``env_id``, then the algorithm's constructor). Returns the values Optuna can take and the
    names of those it cannot (no default found, or a value outside ``choices``), each with why."""
    function, _, algo = _constructor(agent)
    known = _defaults(function)
    if algo is not None:
        from kd_env.agents.sb3_hyperparams import raw_hyperparams

        known.update(raw_hyperparams(algo, env_id, per_sample))
    known.update(agent_kwargs)
    values: dict[str, Any] = {}
    missing: list[str] = []
    for param in space.params:
        if param.name not in known:
            missing.append(f"{param.name} (no default found)")
        elif not param.holds(known[param.name]):
            missing.append(f"{param.name}={known[param.name]!r} (not in the space)")
        else:
            values[param.name] = known[param.name]
    return values, missing


def _defaults(function: Any) -> dict[str, Any]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _keywords(function: Any) -> set[str] | None:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def load_search_space(agent: str, folder: str | Path | None = None, path: str | Path | None = None) -> SearchSpace:
    """The search space of ``agent`` (from ``path``, else ``<folder>/<agent>.yml``), checked.

    Raises:
        SpecError: no such file (the agent has no knob to tune), not a mapping of ranges, a
            parameter the agent does not take, an empty range; the message names the file, key and line.
    """
    file = Path(path) if path is not None else space_path(agent, folder)
    if not file.is_file():
        raise SpecError(
            f"{file}: no search space for agent {agent!r} (a rule without a knob has none); "
            f"write one ({', '.join(_RANGE_KEYS)} per argument) or leave the method out"
        )
    data, lines = parse_yaml(file.read_text(), str(file))
    context = SpecContext(str(file), file.parent, lines)
    if not isinstance(data, dict) or not data:
        raise context.error((), "expected a mapping of the agent's arguments to ranges ({low: ..., high: ...} or {choices: [...]})")
    accepted = accepted_parameters(agent)
    params = []
    for name, value in data.items():
        if accepted is not None and name not in accepted:
            raise context.error((name,), f"agent {agent!r} does not take an argument {name!r}", f"it takes: {', '.join(sorted(accepted))}")
        params.append(_param(str(name), value, context))
    return SearchSpace(agent, str(file), tuple(params))


def _param(name: str, value: Any, context: SpecContext) -> Param:
    check_keys(value, _RANGE_KEYS, (name,), context, "a range {low: ..., high: ..., log: ..., step: ...} or {choices: [...]}")
    if "choices" in value:
        if set(value) - {"choices"}:
            raise context.error((name,), "give either choices or low/high, not both")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise context.error((name, "choices"), f"an empty range: expected a non-empty list of values, got {choices!r}")
        return Param(name, choices=tuple(choices))
    for key in ("low", "high"):
        if key not in value:
            raise context.error((name,), f"missing key {key!r} (a number)")
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise context.error((name, key), f"expected a finite number, got {number!r}")
    low, high = value["low"], value["high"]
    if not low < high:
        raise context.error((name, "high"), f"an empty range: low {low!r} must be below high {high!r}")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise context.error((name, "log"), f"expected true or false, got {log!r}")
    if log and low <= 0:
        raise context.error((name, "low"), f"a log range needs low > 0, got {low!r}")
    step = value.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or step > high - low):
        raise context.error((name, "step"), f"expected a number in (0, high - low], got {step!r}")
    if step is not None and log:
        raise context.error((name, "step"), "a log range takes no step")
    return Param(name, low=low, high=high, log=log, step=step)
