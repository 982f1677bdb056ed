"""Planned contrasts: one method against another, paired by seed (issue #10's ablations).

A preset names its contrasts as ``(method, compared_with)`` label pairs, e.g. a per-sample rule
against the same rule on the batch-level env, or an agent without part of its state against the
full agent. For each pair the report writes ``contrasts.md`` / ``contrasts.json``:

* per scenario, the mean over seeds of ``acc(method) - acc(compared_with)`` (test accuracy in
  points, the same seed on both sides, so the data order and student initialisation both share
  cancel) with its 95% paired bootstrap CI;
* over the scenarios that enter the normalised score (not the control scenarios), the paired
  difference of the IQM normalised scores with its stratified-bootstrap CI (where the preset has
  its baseline and oracle rows), the statistic the suite ranks methods by.

A CI that excludes 0 is a difference the seeds resolve; one that spans 0 is not. The bootstrap
and metrics are :mod:`kd_env.comparison.stats`' (scipy's), not repeated here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_env.comparison import stats
from kd_env.comparison.results import load_result, scenario_scores, task_name, test_accuracy

if TYPE_CHECKING:
    from kd_env.comparison.planned import PlannedRun
    from kd_env.comparison.presets import Preset


def paired_accuracy_difference(method: dict[int, float], compared_with: dict[int, float]) -> dict[str, Any]:
    """``mean_seed(acc_method - acc_compared_with)`` over the seeds both have, with its 95%
    paired bootstrap CI; NaN with fewer than 2 common seeds (one seed gives no interval, and a
    difference without one reads as a result). The report's "vs AVER" column uses it too."""
    seeds = sorted(set(method) & set(compared_with))
    if len(seeds) < 2:
        return {"seeds": len(seeds), "difference": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    x = np.array([[method[seed]] for seed in seeds], dtype=float)
    y = np.array([[compared_with[seed]] for seed in seeds], dtype=float)
    estimate = stats.paired_difference_ci(x, y, stats.mean)
    return {"seeds": len(seeds), "difference": estimate.point, "ci_low": estimate.low, "ci_high": estimate.high}


def contrast_rows(
    accuracies: dict[tuple[str, str], dict[int, float]],
    contrasts: Sequence[tuple[str, str]],
    normalised: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """The rows of ``contrasts.md``.

    Args:
        accuracies: ``{(scenario, method): {seed: test accuracy}}``.
        contrasts: ``(method, compared_with)`` label pairs.
        normalised: ``{method: [seeds, scenarios]}`` normalised scores (rows paired by seed), or
            ``None``: then only the per-scenario rows.
    """
    scenarios = sorted({scenario for scenario, _ in accuracies})
    rows: list[dict[str, Any]] = []
    for method, compared_with in contrasts:
        for scenario in scenarios:
            if (scenario, method) not in accuracies or (scenario, compared_with) not in accuracies:
                continue
            difference = paired_accuracy_difference(accuracies[(scenario, method)], accuracies[(scenario, compared_with)])
            rows.append({"method": method, "compared_with": compared_with, "scenario": scenario, "unit": "test acc (points)", **difference})
        if normalised is not None and method in normalised and compared_with in normalised:
            x, y = normalised[method], normalised[compared_with]
            estimate = stats.paired_difference_ci(x, y, stats.iqm)
            rows.append(
                {
                    "method": method,
                    "compared_with": compared_with,
                    "scenario": "all (normalised)",
                    "unit": "IQM normalised score",
                    "seeds": int(x.shape[0]),
                    "difference": estimate.point,
                    "ci_low": estimate.low,
                    "ci_high": estimate.high,
                }
            )
    return rows


def _verdict(row: dict[str, Any]) -> str:
    if not np.isfinite(row["ci_low"]):
        return "too few seeds"
    if row["ci_low"] > 0:
        return "higher"
    if row["ci_high"] < 0:
        return "lower"
    return "not resolved"


def contrasts_markdown(rows: Sequence[dict[str, Any]], preset_name: str) -> str:
    lines = [
        f"# Contrasts: {preset_name}",
        "",
        "Paired by seed: mean of (method - compared with), 95% bootstrap CI; the last row of each pair",
        "is the paired difference of the IQM normalised scores over the non-control scenarios.",
        "",
        "| method | compared with | scenario | difference | 95% CI | seeds | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        digits = 2 if row["unit"].startswith("test") else 3
        ci = f"[{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]" if np.isfinite(row["ci_low"]) else "n/a"
        difference = f"{row['difference']:+.{digits}f}" if np.isfinite(row["difference"]) else "n/a"
        lines.append(
            f"| {row['method']} | {row['compared_with']} | {row['scenario']} | {difference} | {ci} | {row['seeds']} | {_verdict(row)} |"
        )
    return "\n".join(lines) + "\n"


def write_contrasts(
    runs: Sequence[PlannedRun],
    out: Path,
    preset_name: str,
    preset: Preset,
) -> list[dict[str, Any]] | None:
    """``contrasts.md`` / ``contrasts.json`` for the preset's contrasts (``None`` if it has none)."""
    if not preset.contrasts:
        return None
    accuracies: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        scenario = task_name(run)
        accuracies.setdefault((scenario, run.method.label), {})[run.config.seed] = test_accuracy(load_result(run))
    normalised = None
    scores = scenario_scores(runs, preset)
    if scores is not None:
        try:
            normalised = stats.normalize(scores[0], low=preset.baseline, high=preset.oracle, tasks=scores[1])
        except ValueError:  # no scale to normalise on (stats.md says why): per-scenario rows only
            normalised = None
    rows = contrast_rows(accuracies, preset.contrasts, normalised)
    (out / "contrasts.md").write_text(contrasts_markdown(rows, preset_name))
    (out / "contrasts.json").write_text(json.dumps(rows, indent=1))
    return rows
