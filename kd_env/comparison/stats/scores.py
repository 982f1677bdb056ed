"""The statistics' data model: score dicts (checked, built from run records, ordered) and the
normalised score."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MIN_SEEDS = 5
"""Seeds per (method, scenario) cell the benchmark runs (the issue's minimum)."""


def validate_scores(score_dict: Mapping[str, np.ndarray], tasks: Sequence[str] | None = None) -> None:
    """Check a score dict: 2-D ``[num_runs, num_tasks]`` arrays, one shape for all, finite.

    Raises ``ValueError`` naming the method (and the run and task of a non-finite score; task names
    come from ``tasks`` where given) on an empty dict, a non-2-D array, shapes that differ between
    methods, or a NaN / infinite score.
    """
    if not score_dict:
        raise ValueError("no methods: the score dict is empty")
    shapes = {name: np.shape(scores) for name, scores in score_dict.items()}
    first_name, first_shape = next(iter(shapes.items()))
    for name, shape in shapes.items():
        if len(shape) != 2 or 0 in shape:
            raise ValueError(f"method {name!r}: scores must be a non-empty [num_runs, num_tasks] array, got shape {shape}")
        if shape != first_shape:
            raise ValueError(
                f"method {name!r} has scores of shape {shape} but {first_name!r} has {first_shape}: "
                "every method needs the same seeds x tasks (runs are paired by seed)"
            )
    if tasks is not None and len(tasks) != first_shape[1]:
        raise ValueError(f"{len(tasks)} task names for {first_shape[1]} tasks")
    for name, scores in score_dict.items():
        bad = np.argwhere(~np.isfinite(np.asarray(scores, dtype=float)))
        if len(bad):
            run, task = (int(i) for i in bad[0])
            label = tasks[task] if tasks is not None else f"task {task}"
            raise ValueError(
                f"method {name!r}: non-finite score {scores[run, task]} at run {run}, {label} "
                f"({len(bad)} such cells); failed runs are refused, not dropped: rerun them"
            )


def _checked(score_dict: Mapping[str, np.ndarray], min_runs: int = 1) -> dict[str, np.ndarray]:
    """``validate_scores`` plus a minimum number of runs; returns float arrays."""
    validate_scores(score_dict)
    arrays = {name: np.asarray(scores, dtype=float) for name, scores in score_dict.items()}
    num_runs = next(iter(arrays.values())).shape[0]
    if num_runs < min_runs:
        raise ValueError(f"a bootstrap confidence interval needs at least {min_runs} runs per task, got {num_runs}")
    return arrays


def scores_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    value: str,
    method: str = "method",
    task: str = "scenario",
    run: str = "seed",
) -> tuple[dict[str, np.ndarray], list[str], list[Any]]:
    """Build a score dict from one record (a mapping) per run.

    Each record gives the run's method, task, run id (seed) and score under the keys ``method``,
    ``task``, ``run`` and ``value``. Returns ``(score_dict, task_names, run_ids)``; tasks and runs
    are sorted, methods keep their first-seen order. Raises ``ValueError`` naming the cell for a
    duplicate record or a (method, task, seed) cell with no record (a failed or missing run).
    """
    cells: dict[tuple[str, str, Any], float] = {}
    methods: dict[str, None] = {}
    for record in records:
        key = (str(record[method]), str(record[task]), record[run])
        if key in cells:
            raise ValueError(f"two results for method {key[0]!r}, {task} {key[1]!r}, {run} {key[2]!r}")
        cells[key] = float(record[value])
        methods[key[0]] = None
    if not cells:
        raise ValueError("no records")
    task_names = sorted({key[1] for key in cells})
    run_ids = sorted({key[2] for key in cells})
    score_dict: dict[str, np.ndarray] = {}
    for name in methods:
        array = np.empty((len(run_ids), len(task_names)))
        for i, run_id in enumerate(run_ids):
            for j, task_name in enumerate(task_names):
                if (name, task_name, run_id) not in cells:
                    raise ValueError(f"no result for method {name!r}, {task} {task_name!r}, {run} {run_id!r}: rerun it")
                array[i, j] = cells[(name, task_name, run_id)]
        score_dict[name] = array
    validate_scores(score_dict, task_names)
    return score_dict, task_names, run_ids


def normalized_score(acc: np.ndarray | float, low: np.ndarray | float, high: np.ndarray | float) -> np.ndarray:
    """Normalised score ``(acc - low) / (high - low)``, elementwise with numpy broadcasting.

    In the benchmark ``low`` is AVER's (equal weights) mean accuracy over seeds on the scenario
    and ``high`` the oracle's, so AVER's mean scores 0 and the oracle's 1. Raises ``ValueError``
    where ``high <= low`` (a zero or negative range would divide by zero or flip the sign of
    every comparison).
    """
    acc, low, high = (np.asarray(v, dtype=float) for v in (acc, low, high))
    span = high - low
    bad = np.argwhere(~(span > 0))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        raise ValueError(f"normalised score needs high > low, but high - low = {span[index]} at index {index}")
    return (acc - low) / span


def normalize(score_dict: Mapping[str, np.ndarray], low: str, high: str, tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Normalise every method's raw scores per task by :func:`normalized_score`.

    ``low`` and ``high`` name the reference methods (``"AVER"`` and the oracle): per task, low is
    the mean over runs of ``score_dict[low]`` and high that of ``score_dict[high]``. Raises
    ``ValueError`` for a missing reference or a task where high's mean is not above low's (named
    from ``tasks`` where given).
    """
    validate_scores(score_dict, tasks)
    for name in (low, high):
        if name not in score_dict:
            raise ValueError(f"reference method {name!r} is not among the methods {sorted(score_dict)}")
    low_means = np.mean(score_dict[low], axis=0)
    high_means = np.mean(score_dict[high], axis=0)
    for j in np.flatnonzero(~(high_means > low_means)):
        label = tasks[int(j)] if tasks is not None else f"task {j}"
        raise ValueError(
            f"{label}: {high!r} mean {high_means[j]:.4g} is not above {low!r} mean {low_means[j]:.4g}; "
            "the normalised score (acc - low) / (high - low) is undefined there"
        )
    return {name: normalized_score(scores, low_means, high_means) for name, scores in score_dict.items()}


def _ordered(names: Iterable[str], references: Iterable[str]) -> tuple[list[str], list[str]]:
    """Competitors then references, each in the given order."""
    references = set(references)
    names = list(names)
    return [n for n in names if n not in references], [n for n in names if n in references]
