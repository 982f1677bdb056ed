"""The experiment-file schema: YAML read with every key's line, and the dataclasses' type checker.

:func:`parse_yaml` reads an experiment file's text (PyYAML, ``1e-3`` as a float, duplicate keys
refused) and records each key path's line; :func:`convert` and :func:`as_dataclass` check a value
against a type hint or a dataclass's fields and raise :class:`SpecError` naming the file, the
key path, the line and what is allowed. :mod:`kd_env.comparison.spec` builds presets with them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import yaml

from kd_env.comparison.presets import Preset

Key = tuple[str | int, ...]

#: Keys in the order files are written; the rest of :class:`Preset`'s fields are not file keys.
PRESET_KEYS = (
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
    "tune",
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


class SpecDumper(yaml.SafeDumper):
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


class SpecContext:
    """The file being read: its name (for messages), folder (for relative paths) and lines."""

    def __init__(self, source: str, base: Path | None, lines: Mapping[Key, int]) -> None:
        self.source, self.base, self.lines = source, base, lines

    def error(self, key: Key, message: str, allowed: str = "") -> SpecError:
        return SpecError(f"{_where(self.source, key, self.lines)}: {message}{_line(key, self.lines)}{'; ' + allowed if allowed else ''}")


def _node_lines(node: yaml.Node, key: Key, lines: dict[Key, int], context: SpecContext) -> None:
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


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Key, int]]:
    lines: dict[Key, int] = {}
    context = SpecContext(source, None, lines)
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
def describe_hint(hint: Any) -> str:
    """A type hint in words, for messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_hint(a) for a in args if a is not type(None)) + " or null"
    if origin is list or (origin is tuple and args[-1:] == (Ellipsis,)):
        return f"a list of ({describe_hint(args[0])})"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(describe_hint(a) for a in args)})"
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
        return list(PRESET_KEYS)
    return [f.name for f in dataclasses.fields(cls)]


def convert(value: Any, hint: Any, key: Key, context: SpecContext) -> Any:
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
                return convert(value, option, key, context)
            except SpecError:
                continue
        try:
            return convert(value, options[-1], key, context)
        except SpecError:
            if len(options) == 1 and not _is_scalar(options[0]):
                raise  # the error inside the one structured option says more
            raise context.error(key, f"expected {describe_hint(hint)}, got {value!r} ({_yaml_type(value)})") from None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if hint in ok:
        if not ok[hint]:
            raise context.error(key, f"expected {describe_hint(hint)}, got {value!r} ({_yaml_type(value)})")
        return float(value) if hint is float else value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise context.error(key, f"expected {describe_hint(hint)}, got {value!r} ({_yaml_type(value)})")
        if origin is tuple and args[-1:] != (Ellipsis,):
            if len(value) != len(args):
                raise context.error(key, f"expected {describe_hint(hint)}, got {len(value)} items")
            return tuple(convert(item, arg, (*key, i), context) for i, (item, arg) in enumerate(zip(value, args)))
        items = [convert(item, args[0], (*key, i), context) for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise context.error(key, f"expected a mapping of names to values, got {value!r} ({_yaml_type(value)})")
        return {k: convert(v, args[1], (*key, k), context) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return as_dataclass(value, hint, key, context)
    raise TypeError(f"no rule for {hint!r}")  # a field type this module does not know yet


def _is_scalar(hint: Any) -> bool:
    return hint in (bool, int, float, str)


def check_keys(value: Any, allowed: list[str], key: Key, context: SpecContext, what: str) -> None:
    if not isinstance(value, dict):
        raise context.error(key, f"expected {what}, got {value!r} ({_yaml_type(value)})")
    for name in value:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise context.error((*key, name), f"unknown key {name!r}{hint}", f"allowed: {', '.join(allowed)}")


def as_dataclass(value: Any, cls: Any, key: Key, context: SpecContext) -> Any:
    """A mapping as ``cls`` (its fields are the keys; the ones without default are required)."""
    allowed = _keys(cls)
    check_keys(value, allowed, key, context, f"a mapping with keys {', '.join(allowed)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in allowed:
            continue
        if f.name not in value:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise context.error(key, f"missing key {f.name!r} ({describe_hint(hints[f.name])})")
            continue
        kwargs[f.name] = convert(value[f.name], hints[f.name], (*key, f.name), context)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the dataclass's own check (e.g. an empty class subset)
        raise context.error(key, str(exc)) from None
