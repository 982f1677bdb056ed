"""The tuned parameters file (issue #28): what ``kd-env tune`` writes, what ``kd-env bench --tuned`` reads.

``<out>/best_params.yaml`` holds, per tuned method (by its label in the experiment), the best
trial's parameters and the budget the study spent::

    preset: suite-v2-label-free
    env_id: MultiTeacherKD-FashionMNIST-v0
    tuning_seeds: [100, 101]
    scenarios: [specialists]
    methods:
      AEKD:
        agent: aekd
        params: {cap: 0.83}
        best_value: 0.7412          # mean best validation accuracy over scenarios x tuning seeds
        best_trial: 5
        untuned_value: 0.7330       # trial 0: the method's untuned settings, on the same seeds
        best_is_untuned: false      # true: no trial beat them; the method's row is its tuned row
        trials_budget: 8
        trials_run: 8               # complete + pruned + failed: every method gets the same number
        trials_complete: 6
        trials_pruned: 2
        trials_failed: 0
        trials_interrupted: 0       # killed mid-trial and tried again: not counted in trials_run
        wall_time_s: 412.0
        cpu_seconds: 780.5          # the trials' runs' wall time x their torch threads

:func:`add_tuned_rows` adds a row ``<label> (tuned)`` after each tuned method of an experiment:
the same method with its ``agent_kwargs`` updated by the tuned parameters, evaluated at the
experiment's (evaluation) seeds, and a contrast ``(<label> (tuned), <label>)`` so the report
compares the two paired by seed; each of the experiment's contrasts with a tuned side is added
again with the tuned rows in (tuned against tuned: the fair comparison). A method whose untuned
settings won its study gets no row of its own (it would rerun the same runs): its row stands as
its tuned row in those contrasts. Tuning seeds that are evaluation seeds are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kd_env.comparison.presets import Method, Preset
from kd_env.comparison.spec_schema import SpecContext, SpecDumper, SpecError, parse_yaml

__all__ = ["BEST_PARAMS_FILE", "TUNED_SUFFIX", "add_tuned_rows", "budget_table", "read_tuned", "write_tuned"]

BEST_PARAMS_FILE = "best_params.yaml"

#: What a tuned row's label adds to its method's label.
TUNED_SUFFIX = " (tuned)"


def write_tuned(path: Path, header: Mapping[str, Any], methods: Mapping[str, Mapping[str, Any]]) -> None:
    """Write (atomically) the tuned file at ``path``: ``header`` (preset, env id, tuning seeds and
    scenarios) and the ``methods``' entries, merged over the entries of methods already in the file."""
    from kd_env.utils import atomic_write

    entries: dict[str, Any] = {}
    if path.exists():
        entries = dict((yaml.safe_load(path.read_text()) or {}).get("methods") or {})
    entries.update({label: dict(entry) for label, entry in methods.items()})
    data = {**header, "methods": entries}
    text = "# written by kd-env tune (issue #28); kd-env bench --tuned THIS_FILE adds the tuned rows\n"
    text += yaml.dump(data, Dumper=SpecDumper, sort_keys=False, default_flow_style=None, width=140, allow_unicode=True)
    atomic_write(path, lambda file: file.write(text.encode()))


def read_tuned(path: str | Path) -> tuple[dict[str, Any], SpecContext]:
    """The tuned file's data and its context (for errors with lines)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the tuned parameters: {exc.strerror or exc}") from exc
    data, lines = parse_yaml(text, str(path))
    context = SpecContext(str(path), path.parent, lines)
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        raise context.error((), "expected the file kd-env tune writes (a mapping with a `methods` mapping)")
    return data, context


def add_tuned_rows(preset: Preset, path: str | Path) -> Preset:
    """``preset`` with a ``<label> (tuned)`` row after every method the file at ``path`` tuned
    (those with parameters), and a contrast of each tuned row with its method.

    Raises:
        SpecError: at the file's key: another env id, tuning seeds that are evaluation seeds of
            ``preset``, a label that is no method of ``preset``, another agent than the method's.
    """
    data, context = read_tuned(path)
    if data.get("env_id") not in (None, preset.env_id):
        raise context.error(("env_id",), f"tuned on {data['env_id']!r}, but the experiment runs {preset.env_id!r}")
    tuning_seeds = data.get("tuning_seeds") or []
    shared = sorted(set(tuning_seeds) & set(preset.seeds))
    if shared:
        raise context.error(
            ("tuning_seeds",),
            f"seeds {shared} are evaluation seeds of the experiment ({list(preset.seeds)})",
            "tuned settings must be evaluated on seeds they were not chosen on",
        )
    by_label = {method.label: method for method in preset.methods}
    tuned: dict[str, Method] = {}
    for label, entry in data["methods"].items():
        key = ("methods", label)
        if label not in by_label:
            raise context.error(key, f"{label!r} is not a method of the experiment", f"the methods: {', '.join(by_label)}")
        if not isinstance(entry, dict):
            raise context.error(key, "expected a mapping (agent, params, ...)")
        method = by_label[label]
        if entry.get("agent") != method.agent:
            raise context.error((*key, "agent"), f"tuned for agent {entry.get('agent')!r}, but the method runs {method.agent!r}")
        params = entry.get("params")
        if params is None:  # no trial completed: nothing to evaluate
            continue
        if not isinstance(params, dict):
            raise context.error((*key, "params"), f"expected a mapping of the agent's arguments, got {params!r}")
        if entry.get("best_is_untuned"):  # the untuned settings won: the method's row is its tuned row
            continue
        new_label = label + TUNED_SUFFIX
        if new_label in by_label:
            raise context.error(key, f"the experiment has a method {new_label!r} already")
        tuned[label] = dataclasses.replace(method, label=new_label, agent_kwargs={**method.agent_kwargs, **params})
    methods: list[Method] = []
    for method in preset.methods:
        methods.append(method)
        if method.label in tuned:
            methods.append(tuned[method.label])
    # each tuned row against its untuned self, then the experiment's own contrasts read again with
    # the tuned rows wherever a side was tuned (a rule without a knob, or a method whose untuned
    # settings won, stands as it is)
    contrasts = [*preset.contrasts, *((row.label, label) for label, row in tuned.items())]
    for pair in preset.contrasts:
        if any(label in tuned for label in pair):
            again = (tuned[pair[0]].label if pair[0] in tuned else pair[0], tuned[pair[1]].label if pair[1] in tuned else pair[1])
            if again not in contrasts:
                contrasts.append(again)
    return dataclasses.replace(preset, methods=methods, contrasts=contrasts)


def budget_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """The budget each method's study spent, and its best trial, as a markdown table."""
    lines = [
        "| method | trials (budget) | complete | pruned | failed | interrupted | wall time | CPU-hours | untuned val acc "
        "| best val acc | best params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, entry in methods.items():
        best, untuned = entry.get("best_value"), entry.get("untuned_value")
        params = ", ".join(f"{k}={_short(v)}" for k, v in (entry.get("params") or {}).items()) or "none (no trial completed)"
        if entry.get("best_is_untuned"):
            params = f"the untuned settings ({params})"
        lines.append(
            f"| {label} | {entry['trials_run']} ({entry['trials_budget']}) | {entry['trials_complete']} | {entry['trials_pruned']} "
            f"| {entry['trials_failed']} | {entry['trials_interrupted']} | {entry['wall_time_s'] / 60:.1f} min "
            f"| {entry['cpu_seconds'] / 3600:.2f} | {'n/a' if untuned is None else f'{100 * untuned:.2f}'} "
            f"| {'n/a' if best is None else f'{100 * best:.2f}'} | {params} |"
        )
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
