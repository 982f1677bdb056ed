"""Experiments as files (issue #24): a benchmark :class:`~kd_env.comparison.presets.Preset` written
in YAML, run by ``kd-env bench --spec FILE``. Every built-in preset is such a file
(``preset_specs/*.yaml``, package data), loaded the same way.

The schema is the dataclasses' fields (:class:`Preset`, :class:`Method`, :class:`Pretrain`,
:class:`~kd_env.teachers.TeacherRecipe`): a key is a field's name, its value has the field's type,
and a key without a default is required. Two things only the file has: a scenario may be a
mapping that declares a pool inline (``{name: mine, recipes: [...]}`` or ``{name: mine, paths:
[...]}``, into :attr:`Preset.pools`), and relative paths (``.py`` imports, checkpoint paths) are
read from the file's folder. Numbers like ``5e-4`` are floats (YAML 1.2; PyYAML's YAML 1.1 reads
them as strings).

Why PyYAML and a checker of our own, rather than pydantic or OmegaConf: PyYAML is a dependency
already, its composer gives every node's line, and the checker walks the dataclasses' type hints,
so the dataclasses stay the one definition of a preset (about 150 lines). pydantic would be a new
compiled dependency of the core package, its errors carry no line numbers, and it would want
models that repeat the dataclasses; OmegaConf's interpolation and merging solve problems an
experiment file does not have (Hydra users can still write these files from their configs).

Bad input (an unknown key, a wrong type, an unknown agent or pool, a label used twice, a contrast
naming no method, a missing import) raises :class:`SpecError`: one line naming the file, the key
path and line, and what is allowed; nothing runs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from kd_env.comparison.presets import InlinePool, Method, Preset

Key = tuple[str | int, ...]

#: Where the shipped presets' files are (package data of ``kd_env.comparison``).
PRESET_FOLDER = "preset_specs"

#: The resolved spec a sweep's output folder keeps (what ran: overrides folded in, paths absolute).
SPEC_FILE = "spec.yaml"

#: Keys in the order files are written; the rest of :class:`Preset`'s fields are not file keys.
_PRESET_KEYS = (
    "name",
    "description",
    "env_id",
    "env_kwargs",
    "scenarios",
    "control_scenarios",
    "students",
    "seeds",
    "imports",
    "methods",
    "baseline",
    "oracle",
    "contrasts",
    "train_teachers",
)


class SpecError(ValueError):
    """A bad experiment file: ``FILE: key.path: what is wrong (line N); what is allowed``."""


# ------------------------------------------------------------------------------------------ YAML
# libyaml's parser where PyYAML has it: 8 times faster (kd-env reads the presets' descriptions at start-up)
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """PyYAML's safe loader reading ``1e-3`` as a float, as YAML 1.2 (and every user) does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors (presets share dicts), lists of scalars on one line."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _where(source: str, key: Key, lines: Mapping[Key, int]) -> str:
    path = ""
    for part in key:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return f"{source}: {path or '(top level)'}"


def _line(key: Key, lines: Mapping[Key, int]) -> str:
    for end in range(len(key), -1, -1):  # the key's line, else its nearest parent's
        if key[:end] in lines:
            return f" (line {lines[key[:end]]})"
    return ""


class _Context:
    """The file being read: its name (for messages), folder (for relative paths) and lines."""

    def __init__(self, source: str, base: Path | None, lines: Mapping[Key, int]) -> None:
        self.source, self.base, self.lines = source, base, lines

    def error(self, key: Key, message: str, allowed: str = "") -> SpecError:
        return SpecError(f"{_where(self.source, key, self.lines)}: {message}{_line(key, self.lines)}{'; ' + allowed if allowed else ''}")


def _node_lines(node: yaml.Node, key: Key, lines: dict[Key, int], context: _Context) -> None:
    """Each key path's line (1-based), and duplicate keys refused (PyYAML keeps the last silently)."""
    lines.setdefault(key, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            child = (*key, name)
            lines[child] = key_node.start_mark.line + 1
            if name in seen:
                raise context.error(child, f"key {name!r} given twice")
            seen.add(name)
            _node_lines(value_node, child, lines, context)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*key, index), lines, context)


def _parse(text: str, source: str) -> tuple[Any, dict[Key, int]]:
    lines: dict[Key, int] = {}
    context = _Context(source, None, lines)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SpecError(f"{source}: not valid YAML: {problem}{where}") from exc
    if node is not None:
        _node_lines(node, (), lines, context)
    return data, lines


# ------------------------------------------------------------------------------ the type checker
def _describe(hint: Any) -> str:
    """A type hint in words, for messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    if origin is list or (origin is tuple and args[-1:] == (Ellipsis,)):
        return f"a list of ({_describe(args[0])})"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping with keys {', '.join(_keys(hint))}"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", Any: "any value"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _yaml_type(value: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _keys(cls: Any) -> list[str]:
    if cls is Preset:
        return list(_PRESET_KEYS)
    return [f.name for f in dataclasses.fields(cls)]


def _convert(value: Any, hint: Any, key: Key, context: _Context) -> Any:
    """``value`` (from YAML) as ``hint`` says, or :class:`SpecError` at ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(value, option, key, context)
            except SpecError:
                continue
        try:
            return _convert(value, options[-1], key, context)
        except SpecError:
            if len(options) == 1 and not _is_scalar(options[0]):
                raise  # the error inside the one structured option says more
            raise context.error(key, f"expected {_describe(hint)}, got {value!r} ({_yaml_type(value)})") from None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if hint in ok:
        if not ok[hint]:
            raise context.error(key, f"expected {_describe(hint)}, got {value!r} ({_yaml_type(value)})")
        return float(value) if hint is float else value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise context.error(key, f"expected {_describe(hint)}, got {value!r} ({_yaml_type(value)})")
        if origin is tuple and args[-1:] != (Ellipsis,):
            if len(value) != len(args):
                raise context.error(key, f"expected {_describe(hint)}, got {len(value)} items")
            return tuple(_convert(item, arg, (*key, i), context) for i, (item, arg) in enumerate(zip(value, args)))
        items = [_convert(item, args[0], (*key, i), context) for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise context.error(key, f"expected a mapping of names to values, got {value!r} ({_yaml_type(value)})")
        return {k: _convert(v, args[1], (*key, k), context) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _dataclass(value, hint, key, context)
    raise TypeError(f"no rule for {hint!r}")  # a field type this module does not know yet


def _is_scalar(hint: Any) -> bool:
    return hint in (bool, int, float, str)


def _check_keys(value: Any, allowed: list[str], key: Key, context: _Context, what: str) -> None:
    if not isinstance(value, dict):
        raise context.error(key, f"expected {what}, got {value!r} ({_yaml_type(value)})")
    for name in value:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise context.error((*key, name), f"unknown key {name!r}{hint}", f"allowed: {', '.join(allowed)}")


def _dataclass(value: Any, cls: Any, key: Key, context: _Context) -> Any:
    """A mapping as ``cls`` (its fields are the keys; the ones without default are required)."""
    allowed = _keys(cls)
    _check_keys(value, allowed, key, context, f"a mapping with keys {', '.join(allowed)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in allowed:
            continue
        if f.name not in value:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise context.error(key, f"missing key {f.name!r} ({_describe(hints[f.name])})")
            continue
        kwargs[f.name] = _convert(value[f.name], hints[f.name], (*key, f.name), context)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the dataclass's own check (e.g. an empty class subset)
        raise context.error(key, str(exc)) from None


# ------------------------------------------------------------------------------------ load / dump
def _scenarios(value: Any, context: _Context) -> tuple[list[str | None], dict[str, InlinePool]]:
    """The ``scenarios`` list: pool names (``null``: the env's default pool) and inline pools."""
    key: Key = ("scenarios",)
    if not isinstance(value, list) or not value:
        raise context.error(key, f"expected a non-empty list of pool names or inline pools, got {value!r}")
    names: list[str | None] = []
    pools: dict[str, InlinePool] = {}
    allowed = ["name", *(f.name for f in dataclasses.fields(InlinePool))]
    for index, item in enumerate(value):
        here = (*key, index)
        if item is None or isinstance(item, str):
            names.append(item)
            continue
        _check_keys(item, allowed, here, context, "a pool name, null, or an inline pool {name: ..., recipes: [...] or paths: [...]}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise context.error((*here, "name"), f"an inline pool needs a name (a string), got {name!r}")
        pool = _dataclass({k: v for k, v in item.items() if k != "name"}, InlinePool, here, context)
        if pool.paths is not None:
            pool = dataclasses.replace(pool, paths=tuple(_resolved(p, context) for p in pool.paths))
        names.append(name)
        pools[name] = pool
    return names, pools


def _resolved(path: str, context: _Context) -> str:
    """A relative path from the file's folder, made absolute (runs start elsewhere)."""
    if context.base is None or Path(path).is_absolute():
        return path
    return str((context.base / path).resolve())


def _is_file_import(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry


def _from_data(data: Any, context: _Context, name: str) -> Preset:
    _check_keys(data, list(_PRESET_KEYS), (), context, "a mapping of experiment keys")
    hints = typing.get_type_hints(Preset)
    values: dict[str, Any] = {}
    for key in _PRESET_KEYS:
        if key == "scenarios":
            continue
        if key in data:
            values[key] = _convert(data[key], hints[key], (key,), context)
        elif key in ("env_id", "methods", "seeds"):
            raise context.error((), f"missing key {key!r} ({_describe(hints[key])})")
    values["scenarios"], values["pools"] = _scenarios(data["scenarios"], context) if "scenarios" in data else ([None], {})
    values["name"] = values.get("name") or name
    values["imports"] = [_resolved(entry, context) if _is_file_import(entry) else entry for entry in values.get("imports", [])]
    _check_references(values, data, context)
    return Preset(**{"env_kwargs": {}, **values})


def _check_references(values: dict[str, Any], data: Mapping[str, Any], context: _Context) -> None:
    """What refers to what inside the file: unique labels, seeds, scenarios and students; the
    contrasts, baseline, oracle and control scenarios naming methods and scenarios of the file."""
    preset = Preset(**{**values, "env_kwargs": {}, "contrasts": []})  # the contrasts are checked here, with their lines
    preset.contrasts = values.get("contrasts", [])
    if not preset.methods:
        raise context.error(("methods",), "an experiment needs at least one method")
    if not preset.seeds:
        raise context.error(("seeds",), "an experiment needs at least one seed")
    listed: list[tuple[str, list[Any]]] = [
        ("methods", [m.label for m in preset.methods]),
        ("seeds", list(preset.seeds)),
        ("scenarios", list(preset.scenarios)),
    ]
    for field_name, entries in listed:
        seen: dict[Any, int] = {}
        for index, value in enumerate(entries):
            if value in seen:
                what = "label" if field_name == "methods" else "entry"
                raise context.error(
                    (field_name, index, "label") if field_name == "methods" else (field_name, index),
                    f"{what} {value!r} is used twice (also {field_name}[{seen[value]}]); each must be unique",
                )
            seen[value] = index
    for index, student in enumerate(preset.students):
        if preset.students.index(student) != index:
            raise context.error(("students", index), f"student {student!r} is listed twice")
    labels = [m.label for m in preset.methods]
    for index, pair in enumerate(preset.contrasts):
        for side, label in enumerate(pair):
            if label not in labels:
                raise context.error(("contrasts", index, side), f"{label!r} is not a method label", f"the methods: {', '.join(labels)}")
        if pair[0] == pair[1]:
            raise context.error(("contrasts", index), f"contrast {list(pair)} compares a method with itself")
    for key in ("baseline", "oracle"):  # the defaults may be absent (no normalised score); a given one must exist
        if key in data and getattr(preset, key) not in labels:
            raise context.error((key,), f"{getattr(preset, key)!r} is not a method label", f"the methods: {', '.join(labels)}")
    for index, method in enumerate(preset.methods):
        for student in method.student_env_kwargs:
            if student not in preset.students:
                raise context.error(
                    ("methods", index, "student_env_kwargs", student),
                    f"{student!r} is not a student of the file",
                    f"the students: {preset.students}",
                )
    for index, scenario in enumerate(preset.control_scenarios):
        if scenario not in preset.scenarios:
            raise context.error(
                ("control_scenarios", index), f"{scenario!r} is not a scenario of the file", f"the scenarios: {preset.scenarios}"
            )


def parse_spec(text: str, source: str = "<spec>", base: str | Path | None = None, name: str = "custom", check: bool = True) -> Preset:
    """The :class:`Preset` an experiment file's ``text`` describes.

    Args:
        source: the file's name in error messages.
        base: the folder relative paths are read from (``None``: left relative).
        name: the preset's name when the file gives none.
        check: also check what needs the registries (:func:`check_spec`): imports, agents,
            pools, env and agent arguments.

    Raises:
        SpecError: one line naming ``source``, the key path, the line and what is allowed.
    """
    data, lines = _parse(text, source)
    context = _Context(source, None if base is None else Path(base), lines)
    preset = _from_data(data, context, name)
    if check:
        _check_registries(preset, context)
    return preset


def load_spec(path: str | Path, check: bool = True) -> Preset:
    """The :class:`Preset` of the experiment file at ``path`` (named after the file unless it gives
    a ``name``); see :func:`parse_spec`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the experiment file: {exc.strerror or exc}") from exc
    return parse_spec(text, str(path), path.resolve().parent, path.stem, check)


def spec_data(preset: Preset) -> dict[str, Any]:
    """A preset as the plain data of its file (every key, defaults included, but a baseline or oracle
    label that names no method; inline pools in ``scenarios``)."""
    data: dict[str, Any] = {}
    labels = {method.label for method in preset.methods}
    for key in _PRESET_KEYS:
        value = getattr(preset, key)
        if key in ("baseline", "oracle") and value not in labels:
            continue  # the default label of a preset without that row: a file may not name a missing method
        if key == "scenarios":
            value = [_pool_data(s, preset.pools[s]) if s in preset.pools else s for s in value]
        elif key == "methods":
            value = [_plain(method) for method in value]
        else:
            value = _plain(value)
        data[key] = value
    return data


def _pool_data(name: str, pool: InlinePool) -> dict[str, Any]:
    data: dict[str, Any] = {"name": name}
    if pool.recipes is not None:
        data["recipes"] = [{k: v for k, v in _plain(recipe).items() if v is not None} for recipe in pool.recipes]
    if pool.paths is not None:
        data["paths"] = list(pool.paths)
    if pool.description:
        data["description"] = pool.description
    return data


def _plain(value: Any) -> Any:
    """Dataclasses as dicts, tuples as lists, copies of everything (a dump shares nothing)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return copy.deepcopy(value)


def _method_data(method: Method) -> dict[str, Any]:
    """A method's keys that differ from the defaults (label and agent always)."""
    defaults = Method(method.label, method.agent)
    return {
        f.name: _plain(getattr(method, f.name))
        for f in dataclasses.fields(Method)
        if getattr(method, f.name) != getattr(defaults, f.name) or f.name in ("label", "agent")
    }


def _yaml(data: Any, flow: bool | None) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=flow, width=_WIDTH, allow_unicode=True)


_WIDTH = 140


def dump_spec(preset: Preset) -> str:
    """A preset as an experiment file's text (:func:`parse_spec` reads it back to an equal preset):
    every top-level key, a method per line (its keys that differ from the defaults)."""
    data = spec_data(preset)
    text = ""
    for key, value in data.items():
        if key != "methods":  # a scalar alone would make the mapping "flow" style: {key: value}
            text += _yaml({key: value}, None if isinstance(value, (list, dict)) else False)
            continue
        text += "methods:\n"
        for method in preset.methods:
            line = "- " + _yaml(_method_data(method), True).strip()
            if len(line) > _WIDTH or "\n" in line:  # too long for a line: a block, its small mappings inline
                line = "- " + _yaml(_method_data(method), None).strip().replace("\n", "\n  ")
            text += line + "\n"
    return text


# ------------------------------------------------------------------------------ registry checks
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


def import_spec_pools(path: str | Path) -> None:
    """Register the inline pools of the experiment file at ``path``: what a run's process does
    when its ``imports`` name the sweep's ``spec.yaml`` (:func:`kd_env.registry.import_policy_modules`)."""
    register_inline_pools(load_spec(path, check=False))


def check_spec(preset: Preset, source: str = "<preset>") -> None:
    """What an experiment needs from the registries, checked before anything runs: its imports
    import, its inline pools register, its agents, pools and env id are known, and every
    method's env and agent arguments are accepted. Raises :class:`SpecError`."""
    _check_registries(preset, _Context(source, None, {}))


def _per_sample_arguments() -> set[str]:
    """The per-sample env's constructor arguments that are not :class:`KDEnvSettings` fields."""
    import inspect

    from kd_env.envs import PerSampleKDVectorEnv

    parameters = inspect.signature(PerSampleKDVectorEnv.__init__).parameters
    return {name for name, parameter in parameters.items() if name != "self" and parameter.kind is not parameter.VAR_KEYWORD}


def _check_registries(preset: Preset, context: _Context) -> None:
    import inspect

    import gymnasium as gym

    from kd_env.envs import ENV_IDS, KDEnvSettings
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
        own = _per_sample_arguments() if method.per_sample else set()
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


# ------------------------------------------------------------------------- the shipped presets
def preset_names() -> list[str]:
    """The built-in presets: the files in ``kd_env/comparison/preset_specs``."""
    from importlib.resources import files

    folder = files("kd_env.comparison").joinpath(PRESET_FOLDER)
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    """A built-in preset's file, as shipped (comments included): ``kd-env bench --show-preset``."""
    from importlib.resources import files

    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return files("kd_env.comparison").joinpath(PRESET_FOLDER, f"{name}.yaml").read_text()


def load_preset(name: str) -> Preset:
    """A built-in preset, read from its file as ``--spec`` reads any file (the registry checks are
    left to the run: loading one must not import every agent's library)."""
    return parse_spec(preset_text(name), f"{PRESET_FOLDER}/{name}.yaml", None, name, check=False)


def fold_overrides(preset: Preset, overrides: Mapping[str, Any] | None) -> Preset:
    """The preset with ``--env-arg`` overrides written into it: every run gets the same env
    arguments as with the overrides beside it (:func:`kd_env.comparison.sweep.plan`), so the
    output folder's spec says what ran."""
    if not overrides:
        return preset
    methods = [dataclasses.replace(m, env_kwargs={k: v for k, v in m.env_kwargs.items() if k not in overrides}) for m in preset.methods]
    return dataclasses.replace(preset, env_kwargs={**preset.env_kwargs, **overrides}, methods=methods)


def differences(before: Preset, now: Preset) -> list[str]:
    """What makes ``now`` run something else than ``before`` under the same run folders: the env
    id and arguments, a method of the same label with other settings, an inline pool of the same
    name with other teachers. New methods, seeds, scenarios and students only add runs, and the
    report's keys (contrasts, baseline, ...) rebuild the tables: neither is a difference."""
    found: list[str] = []

    def show(value: Any) -> str:
        return json.dumps(_plain(value), sort_keys=True)

    for key in ("env_id", "env_kwargs"):
        if getattr(before, key) != getattr(now, key):
            found.append(f"{key}: {show(getattr(before, key))} there, {show(getattr(now, key))} here")
    earlier = {m.label: m for m in before.methods}
    for method in now.methods:
        old = earlier.get(method.label)
        if old is not None and old != method:
            changed = [f.name for f in dataclasses.fields(Method) if getattr(old, f.name) != getattr(method, f.name)]
            details = "; ".join(f"{name} {show(getattr(old, name))} there, {show(getattr(method, name))} here" for name in changed)
            found.append(f"method {method.label!r}: {details}")
    for name, pool in now.pools.items():
        if name in before.pools and before.pools[name] != pool:
            found.append(f"inline pool {name!r}: {show(before.pools[name])} there, {show(pool)} here")
    return found


# ------------------------------------------------------------------------- the output folder
PROVENANCE_FILE = "provenance.json"


def code_commit() -> str | None:
    """The commit of the kd-env code that runs (``git rev-parse HEAD`` in its checkout, with
    ``+dirty`` when tracked files are modified), or ``None``: not a git checkout, no git, any error."""
    import subprocess

    package = Path(__file__).resolve().parents[1]
    try:

        def git(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10, check=False)

        # the package's own files must be tracked: an installed copy inside someone else's
        # repository (a virtualenv in a project) is not that repository's commit
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no", ".").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def record_spec(preset: Preset, out: Path) -> None:
    """Keep what a sweep runs in its output folder: ``spec.yaml`` (the resolved spec) and
    ``provenance.json`` (kd-env's version and commit, one entry per session).

    Raises:
        SpecError: the folder holds a sweep whose runs this spec would change
            (:func:`differences`); the message lists what differs.
    """
    import datetime
    import platform

    import kd_env

    path = out / SPEC_FILE
    if path.exists():
        before = load_spec(path, check=False)
        found = differences(before, preset)
        if found:
            raise SpecError(
                f"{out} holds a sweep of another experiment ({path}), and resuming it with this one would mix runs of "
                f"different settings: {'; '.join(found)}. Use another --out (a sweep may grow: new methods, seeds, "
                "scenarios and students are added to a finished one, but a run's settings cannot change)"
            )
    path.write_text(
        f"# the resolved experiment of this sweep, written by kd-env {kd_env.__version__}; kd-env bench --spec {path} --out {out} continues it\n"
        + dump_spec(preset)
    )
    provenance_path = out / PROVENANCE_FILE
    try:
        provenance = json.loads(provenance_path.read_text())
    except (OSError, ValueError):
        provenance = {"spec": SPEC_FILE, "sessions": []}
    session: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kd_env_version": kd_env.__version__,
        "python": platform.python_version(),
    }
    commit = code_commit()
    if commit is not None:
        session["commit"] = commit
    provenance.setdefault("sessions", []).append(session)
    provenance_path.write_text(json.dumps(provenance, indent=1))


__all__ = [
    "PROVENANCE_FILE",
    "SPEC_FILE",
    "SpecError",
    "check_spec",
    "code_commit",
    "differences",
    "dump_spec",
    "fold_overrides",
    "import_spec_pools",
    "load_preset",
    "load_spec",
    "parse_spec",
    "preset_names",
    "preset_text",
    "record_spec",
    "register_inline_pools",
    "spec_data",
]
