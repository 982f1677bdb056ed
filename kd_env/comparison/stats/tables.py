"""The statistics' tables (one row per method, as md / csv / json) and :func:`write_report`,
which writes them with the plots."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd_env.comparison.stats.intervals import (
    Estimate,
    aggregate_interval_estimates,
    paired_difference_ci,
    probability_of_improvement_ci,
)
from kd_env.comparison.stats.metrics import METRIC_LABELS, METRICS, Metric, iqm
from kd_env.comparison.stats.plots import plot_interval_estimates, plot_performance_profiles
from kd_env.comparison.stats.profiles import performance_profile
from kd_env.comparison.stats.scores import _checked, _ordered


def summary_table(
    score_dict: Mapping[str, np.ndarray],
    baseline: str,
    references: Iterable[str] = frozenset(),
    metrics: Mapping[str, Metric] | None = None,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    estimates: Mapping[str, Mapping[str, Estimate]] | None = None,
) -> list[dict[str, Any]]:
    """One row (a flat dict) per method, competitors first, ready for md / csv / json.

    Columns: ``method``, ``group`` (``"reference"`` or ``"competitor"``), ``runs``, ``tasks``; for
    each metric ``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high``; ``baseline`` and, against
    it, ``p_improvement`` (P(method > baseline)) with its CI, and ``iqm_diff`` = IQM(method) -
    IQM(baseline) with its paired CI (see :func:`paired_difference_ci`). ``estimates`` may pass
    precomputed :func:`aggregate_interval_estimates` output.
    """
    arrays = _checked(score_dict, min_runs=2)
    if baseline not in arrays:
        raise ValueError(f"baseline {baseline!r} is not among the methods {sorted(arrays)}")
    metrics = METRICS if metrics is None else metrics
    if estimates is None:
        estimates = aggregate_interval_estimates(arrays, metrics, reps, confidence, seed)
    competitors, refs = _ordered(arrays, references)
    rows: list[dict[str, Any]] = []
    for name in competitors + refs:
        scores = arrays[name]
        row: dict[str, Any] = {
            "method": name,
            "group": "reference" if name in refs else "competitor",
            "runs": scores.shape[0],
            "tasks": scores.shape[1],
        }
        for key in metrics:
            estimate = estimates[name][key]
            row.update({key: estimate.point, f"{key}_ci_low": estimate.low, f"{key}_ci_high": estimate.high})
        improvement = probability_of_improvement_ci(scores, arrays[baseline], reps, confidence, seed)
        difference = paired_difference_ci(scores, arrays[baseline], iqm, reps, confidence, seed)
        row.update(
            {
                "baseline": baseline,
                "p_improvement": improvement.point,
                "p_improvement_ci_low": improvement.low,
                "p_improvement_ci_high": improvement.high,
                "iqm_diff": difference.point,
                "iqm_diff_ci_low": difference.low,
                "iqm_diff_ci_high": difference.high,
            }
        )
        rows.append(row)
    return rows


def _estimate(point: float, low: float, high: float, digits: int) -> str:
    """``point [low, high]``; ``n/a`` for what the number of runs does not define."""

    def number(value: float) -> str:
        return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"

    return f"{number(point)} [{number(low)}, {number(high)}]" if np.isfinite(low) and np.isfinite(high) else f"{number(point)} [n/a]"


def markdown_table(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """A markdown table of :func:`summary_table` rows: ``point [low, high]`` per estimate."""
    if not rows:
        raise ValueError("no rows")
    estimates = [key for key in rows[0] if f"{key}_ci_low" in rows[0]]
    baseline = rows[0]["baseline"]
    titles = {**METRIC_LABELS, "p_improvement": f"P(X > {baseline})", "iqm_diff": f"IQM(X) - IQM({baseline})"}
    header = ["method", "group", "runs x tasks"] + [titles.get(key, key) for key in estimates]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], row["group"], f"{row['runs']} x {row['tasks']}"]
        cells += [_estimate(row[k], row[k + "_ci_low"], row[k + "_ci_high"], digits) for k in estimates]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[Mapping[str, Any]], out: str | Path, stem: str = "stats", header: str = "") -> None:
    """Write ``rows`` as ``<stem>.md`` (``header`` then the table), ``<stem>.csv`` and ``<stem>.json`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text((header + "\n\n" if header else "") + markdown_table(rows))
    with open(out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps(list(rows), indent=2) + "\n")


def write_report(
    score_dict: Mapping[str, np.ndarray],
    out: str | Path,
    baseline: str,
    references: Iterable[str] = frozenset(),
    taus: Sequence[float] | np.ndarray | None = None,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """All of it for normalised scores: ``stats.md/.csv/.json``, ``interval_estimates.png``, ``performance_profiles.png``.

    Returns the :func:`summary_table` rows.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = _checked(score_dict, min_runs=2)
    references = set(references)
    estimates = aggregate_interval_estimates(arrays, METRICS, reps, confidence, seed)
    rows = summary_table(arrays, baseline, references, METRICS, reps, confidence, seed, estimates)
    runs, tasks = next(iter(arrays.values())).shape
    header = (
        f"Normalised scores, {runs} seeds x {tasks} scenarios per method: point estimate "
        f"[{confidence:.0%} stratified-bootstrap percentile CI, {reps} resamples] "
        "(Agarwal et al., NeurIPS 2021)."
    )
    write_tables(rows, out, "stats", header)
    plot_interval_estimates(estimates, out / "interval_estimates.png", references)
    plot_performance_profiles(performance_profile(arrays, taus, reps, confidence, seed), out / "performance_profiles.png", references)
    return rows
