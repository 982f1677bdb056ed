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

Three modules: this one (load and dump, the shipped presets, the output folder's record),
:mod:`~kd_env.comparison.spec_schema` (YAML with each key's line, the type checker, :class:`SpecError`)
and :mod:`~kd_env.comparison.spec_registries` (the checks against the registries, inline pools).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kd_env.comparison.presets import InlinePool, Method, Preset
from kd_env.comparison.spec_registries import check_registries, check_spec, register_inline_pools
from kd_env.comparison.spec_schema import (
    PRESET_KEYS,
    Key,
    SpecContext,
    SpecDumper,
    SpecError,
    as_dataclass,
    check_keys,
    convert,
    describe_hint,
    parse_yaml,
)

#: Where the shipped presets' files are (package data of ``kd_env.comparison``).
PRESET_FOLDER = "preset_specs"

#: The resolved spec a sweep's output folder keeps (what ran: overrides folded in, paths absolute).
SPEC_FILE = "spec.yaml"


# ------------------------------------------------------------------------------------ load / dump
def _scenarios(value: Any, context: SpecContext) -> tuple[list[str | None], dict[str, InlinePool]]:
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
        check_keys(item, allowed, here, context, "a pool name, null, or an inline pool {name: ..., recipes: [...] or paths: [...]}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise context.error((*here, "name"), f"an inline pool needs a name (a string), got {name!r}")
        pool = as_dataclass({k: v for k, v in item.items() if k != "name"}, InlinePool, here, context)
        if pool.paths is not None:
            pool = dataclasses.replace(pool, paths=tuple(_resolved(p, context) for p in pool.paths))
        names.append(name)
        pools[name] = pool
    return names, pools


def _resolved(path: str, context: SpecContext) -> str:
    """A relative path from the file's folder, made absolute (runs start elsewhere)."""
    if context.base is None or Path(path).is_absolute():
        return path
    return str((context.base / path).resolve())


def _is_file_import(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry


def _from_data(data: Any, context: SpecContext, name: str) -> Preset:
    check_keys(data, list(PRESET_KEYS), (), context, "a mapping of experiment keys")
    hints = typing.get_type_hints(Preset)
    values: dict[str, Any] = {}
    for key in PRESET_KEYS:
        if key == "scenarios":
            continue
        if key in data:
            values[key] = convert(data[key], hints[key], (key,), context)
        elif key in ("env_id", "methods", "seeds"):
            raise context.error((), f"missing key {key!r} ({describe_hint(hints[key])})")
    values["scenarios"], values["pools"] = _scenarios(data["scenarios"], context) if "scenarios" in data else ([None], {})
    values["name"] = values.get("name") or name
    values["imports"] = [_resolved(entry, context) if _is_file_import(entry) else entry for entry in values.get("imports", [])]
    _check_references(values, data, context)
    return Preset(**{"env_kwargs": {}, **values})


def _check_references(values: dict[str, Any], data: Mapping[str, Any], context: SpecContext) -> None:
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
    section = values.get("tune")
    if section is not None:  # what kd-env tune would run: checked with the file, nothing runs first
        for index, label in enumerate(section.methods):
            if label not in labels:
                raise context.error(("tune", "methods", index), f"{label!r} is not a method label", f"the methods: {', '.join(labels)}")
        for index, scenario in enumerate(section.scenarios):
            if scenario not in preset.scenarios:
                raise context.error(
                    ("tune", "scenarios", index), f"{scenario!r} is not a scenario of the file", f"the scenarios: {preset.scenarios}"
                )
        shared = sorted(set(section.tuning_seeds) & set(preset.seeds))
        if shared:
            raise context.error(
                ("tune", "tuning_seeds"), f"seeds {shared} are evaluation seeds of the file", "tuning seeds must be disjoint from `seeds`"
            )
        if section.trials < 1:
            raise context.error(("tune", "trials"), f"the budget must be at least 1 trial per method, got {section.trials}")
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
    data, lines = parse_yaml(text, source)
    context = SpecContext(source, None if base is None else Path(base), lines)
    preset = _from_data(data, context, name)
    if check:
        check_registries(preset, context)
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
    for key in PRESET_KEYS:
        value = getattr(preset, key)
        if key in ("baseline", "oracle") and value not in labels:
            continue  # the default label of a preset without that row: a file may not name a missing method
        if key == "tune" and value is None:
            continue  # no tune section: kd-env tune takes its flags
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
    return yaml.dump(data, Dumper=SpecDumper, sort_keys=False, default_flow_style=flow, width=_WIDTH, allow_unicode=True)


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


def import_spec_pools(path: str | Path) -> None:
    """Register the inline pools of the experiment file at ``path``: what a run's process does
    when its ``imports`` name the sweep's ``spec.yaml`` (:func:`kd_env.registry.import_policy_modules`)."""
    register_inline_pools(load_spec(path, check=False))


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

    from kd_env.version import __version__

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
        f"# the resolved experiment of this sweep, written by kd-env {__version__}; kd-env bench --spec {path} --out {out} continues it\n"
        + dump_spec(preset)
    )
    provenance_path = out / PROVENANCE_FILE
    try:
        provenance = json.loads(provenance_path.read_text())
    except (OSError, ValueError):
        provenance = {"spec": SPEC_FILE, "sessions": []}
    session: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kd_env_version": __version__,
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
