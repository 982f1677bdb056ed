"""The benchmark's statistics and plots, as RL benchmarks report them.

The metrics and their names follow rliable (Agarwal et al., "Deep Reinforcement Learning at the
Edge of the Statistical Precipice", NeurIPS 2021), computed here with ``scipy.stats`` (``bootstrap``,
``trim_mean``, ``mannwhitneyu``) instead of rliable itself (rliable 1.2.0 needs ``arch<8``, and arch
7.2 fails to import with pandas 3.1). All resampling is done by ``scipy.stats.bootstrap`` with
vectorised statistics; this module has no resampling loops of its own.

Data model
    A *score dict* maps a method's name to a float array of shape ``[num_runs, num_tasks]``:
    ``scores[n, m]`` is the score of run ``n`` (a seed) on task ``m`` (a teacher-pool scenario),
    as rliable's ``score_dict``. Every method has the same shape, and row ``n`` is the same seed for
    every method: the benchmark pairs runs by seed (the same data order and student
    initialisation for every method at a given seed), which :func:`paired_difference_ci` uses.
    The issue asks for at least :data:`MIN_SEEDS` seeds per cell; the bootstrap itself needs 2.

Missing and failed runs
    Refused, never dropped: a NaN or infinite score, or a (method, task, seed) cell with no
    result, raises ``ValueError`` naming the method, the task and the run. Dropping a run would
    break the pairing by seed and give tasks different weights in the stratified bootstrap;
    rerun the failed cell instead.

Normalised scores
    Raw test accuracies differ between scenarios, so each scenario's scores are mapped by
    :func:`normalized_score` to ``(acc - AVER) / (oracle - AVER)``: 0 is equal weights (AVER's
    mean over seeds on that scenario), 1 the oracle's. Normalised scores aggregate over scenarios.

Confidence intervals
    Stratified bootstrap, rliable's default: the runs of each task are resampled with replacement
    independently of the other tasks (tasks are fixed, runs are random), and the interval is the
    percentile interval of the bootstrap distribution (rliable's default ``method='percentile'``).
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

MIN_SEEDS = 5
"""Seeds per (method, scenario) cell the benchmark runs (the issue's minimum)."""

Metric = Callable[[np.ndarray], Any]
"""An aggregate metric: scores ``[..., num_runs, num_tasks]`` -> one value per leading index."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float


@dataclass(frozen=True)
class Profile:
    """A performance profile: the value at each threshold ``tau``, with its confidence band."""

    taus: np.ndarray
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray


# ----------------------------------------------------------------------------- data model


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


# ----------------------------------------------------------------------------- aggregate metrics
# Each metric takes scores of shape [..., num_runs, num_tasks] (the leading axes are bootstrap
# resamples) and returns one value per leading index (a numpy scalar for a 2-D input).


def mean(scores: np.ndarray) -> Any:
    """Mean: the mean over tasks of the per-task mean score over runs (rliable ``aggregate_mean``)."""
    return np.mean(np.mean(scores, axis=-2), axis=-1)


def median(scores: np.ndarray) -> Any:
    """Median: the median over tasks of the per-task mean score over runs (rliable ``aggregate_median``).

    Note it is the median of task means, not of all runs.
    """
    return np.median(np.mean(scores, axis=-2), axis=-1)


def iqm(scores: np.ndarray) -> Any:
    """Interquartile mean: the 25% trimmed mean of all runs' scores pooled over tasks.

    ``scipy.stats.trim_mean(scores, 0.25)`` over runs x tasks: the lowest and highest 25% of the
    pooled scores are discarded and the middle 50% averaged (rliable ``aggregate_iqm``).
    """
    pooled = np.reshape(scores, (*np.shape(scores)[:-2], -1))
    return scipy.stats.trim_mean(pooled, proportiontocut=0.25, axis=-1)


def optimality_gap(scores: np.ndarray, gamma: float = 1.0) -> Any:
    """Optimality gap: ``gamma - mean(min(score, gamma))`` over all runs and tasks.

    How far the scores fall short of the target ``gamma`` (1 = the oracle's normalised score);
    scores above ``gamma`` count as ``gamma`` (rliable ``aggregate_optimality_gap``). Lower is better.
    """
    return gamma - np.mean(np.minimum(scores, gamma), axis=(-2, -1))


METRICS: dict[str, Metric] = {"iqm": iqm, "mean": mean, "median": median, "optimality_gap": optimality_gap}
"""The aggregate metrics reported by default, by key."""

METRIC_LABELS: dict[str, str] = {"iqm": "IQM", "mean": "Mean", "median": "Median", "optimality_gap": "Optimality Gap"}

LOWER_IS_BETTER: frozenset[str] = frozenset({"optimality_gap"})
"""Metrics where lower is better: for these, X beats Y when the CI of metric(X) - metric(Y) is below 0."""


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# ----------------------------------------------------------------------------- bootstrap


def _percentile_interval(
    samples: Sequence[np.ndarray], statistic: Callable[..., Any], reps: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap CI with ``scipy.stats.bootstrap``, each sample resampled independently.

    ``statistic(*samples, axis=-1)`` gets every sample resampled with replacement along its last
    axis, independently of the others (``paired=False``); passing one sample per task makes the
    bootstrap stratified over tasks.
    """
    result = scipy.stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=reps,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        paired=False,
        axis=-1,
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _stratified_statistic(metric: Metric) -> Callable[..., Any]:
    """A bootstrap statistic that stacks one resampled sample per task back into ``[..., runs, tasks]``."""

    def statistic(*columns: np.ndarray, axis: int = -1) -> Any:
        return metric(np.stack(columns, axis=-1))

    return statistic


def interval_estimate(scores: np.ndarray, metric: Metric = iqm, reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """``metric(scores)`` with its stratified-bootstrap percentile confidence interval."""
    scores = _checked({"scores": scores}, min_runs=2)["scores"]
    columns = [scores[:, task] for task in range(scores.shape[1])]
    low, high = _percentile_interval(columns, _stratified_statistic(metric), reps, confidence, seed)
    return Estimate(float(metric(scores)), low, high)


def aggregate_interval_estimates(
    score_dict: Mapping[str, np.ndarray],
    metrics: Mapping[str, Metric] | None = None,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Estimate]]:
    """Every method's aggregate metrics with stratified-bootstrap CIs: ``{method: {metric: Estimate}}``.

    ``metrics`` defaults to :data:`METRICS` (IQM, mean, median, optimality gap); rliable's
    ``get_interval_estimates`` with ``method='percentile'``.
    """
    arrays = _checked(score_dict, min_runs=2)
    metrics = METRICS if metrics is None else metrics
    return {
        name: {key: interval_estimate(scores, metric, reps, confidence, seed) for key, metric in metrics.items()}
        for name, scores in arrays.items()
    }


def _checked_pair(x: np.ndarray, y: np.ndarray, min_runs: int = 1, paired: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate two methods' scores: finite, 2-D, same tasks (and the same runs when ``paired``)."""
    x, y = (np.asarray(v, dtype=float) for v in (x, y))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or (paired and x.shape != y.shape):
        need = "the same shape (runs paired by seed)" if paired else "the same number of tasks"
        raise ValueError(f"X has scores of shape {x.shape} and Y {y.shape}; they need 2-D [num_runs, num_tasks] arrays with {need}")
    # validate each alone: the runs of X and Y may differ in number when not paired
    _checked({"X": x}, min_runs)
    _checked({"Y": y}, min_runs)
    return x, y


def _probability_of_improvement(x: np.ndarray, y: np.ndarray) -> Any:
    """P(X > Y) averaged over tasks, for ``x``, ``y`` of shape ``[..., runs, tasks]``."""
    # U = #(x > y) + #(x == y) / 2 over the run pairs of each task; the p-value (whose method is
    # set here only to skip the exact distribution) is not used
    u = scipy.stats.mannwhitneyu(x, y, axis=-2, alternative="greater", method="asymptotic").statistic
    return np.mean(u / (x.shape[-2] * y.shape[-2]), axis=-1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """Average probability of improvement of X over Y (rliable ``probability_of_improvement``).

    ``P(X > Y) = 1/M sum_m P(X_m > Y_m)`` over the M tasks, where ``P(X_m > Y_m)`` is the
    Mann-Whitney U statistic of X's runs against Y's on task m divided by ``n_x * n_y``: the
    fraction of (run of X, run of Y) pairs where X scores higher, ties counting 1/2. It is 1 when
    X beats Y on every pair, 0.5 for identical score distributions. ``x`` and ``y`` are
    ``[num_runs, num_tasks]`` arrays with the same number of tasks.
    """
    arrays = _checked_pair(x, y)
    return float(_probability_of_improvement(*arrays))


def probability_of_improvement_ci(x: np.ndarray, y: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """:func:`probability_of_improvement` with a stratified-bootstrap percentile CI.

    X's and Y's runs are resampled independently of each other and within each task (rliable's
    ``StratifiedIndependentBootstrap``).
    """
    x, y = _checked_pair(x, y, min_runs=2)
    tasks = x.shape[1]

    def statistic(*columns: np.ndarray, axis: int = -1) -> Any:
        return _probability_of_improvement(np.stack(columns[:tasks], axis=-1), np.stack(columns[tasks:], axis=-1))

    samples = [x[:, task] for task in range(tasks)] + [y[:, task] for task in range(tasks)]
    low, high = _percentile_interval(samples, statistic, reps, confidence, seed)
    return Estimate(float(_probability_of_improvement(x, y)), low, high)


def paired_difference_ci(
    x: np.ndarray, y: np.ndarray, metric: Metric = iqm, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """``metric(X) - metric(Y)`` with a paired, stratified-bootstrap percentile CI.

    Runs are paired by seed: a resample draws seeds with replacement within each task,
    independently across tasks (stratified), and takes the same seeds for X and Y (paired), so
    the per-seed variation both methods share (data order, student initialisation) cancels. A
    lower bound above 0 says X's aggregate is above Y's at this confidence (for a metric in
    :data:`LOWER_IS_BETTER`, an upper bound below 0 says X is better). ``x`` and ``y`` have
    the same shape ``[num_runs, num_tasks]``, row n being seed n for both.
    """
    x, y = _checked_pair(x, y, min_runs=2, paired=True)
    runs, tasks = x.shape
    task_index = np.arange(tasks)

    def statistic(*run_indices: np.ndarray, axis: int = -1) -> Any:
        rows = np.stack(run_indices, axis=-1).astype(np.intp)  # [..., runs, tasks]: seeds drawn per task
        return metric(x[rows, task_index]) - metric(y[rows, task_index])

    # the bootstrap resamples seed indices, one sample per task; the statistic gathers both methods' scores
    low, high = _percentile_interval([np.arange(runs)] * tasks, statistic, reps, confidence, seed)
    return Estimate(float(metric(x) - metric(y)), low, high)


# ----------------------------------------------------------------------------- performance profiles


def run_score_distribution(scores: np.ndarray, tau: float) -> Any:
    """Score distribution at ``tau``: the fraction of all runs (over tasks) scoring above ``tau``.

    rliable's ``run_score_deviation``, the default performance profile.
    """
    return np.mean(scores > tau, axis=(-2, -1))


def default_taus(score_dict: Mapping[str, np.ndarray], num: int = 101) -> np.ndarray:
    """``num`` evenly spaced thresholds spanning every score in ``score_dict``."""
    pooled = np.concatenate([np.ravel(scores) for scores in _checked(score_dict).values()])
    return np.linspace(pooled.min(), pooled.max(), num)


def performance_profile(
    score_dict: Mapping[str, np.ndarray],
    taus: Sequence[float] | np.ndarray | None = None,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Profile]:
    """Every method's performance profile (run-score distribution) with stratified-bootstrap CIs.

    At each threshold ``tau`` the profile is :func:`run_score_distribution`, the fraction of runs
    with score > tau (rliable ``create_performance_profile`` with ``use_score_distribution=True``).
    Every threshold uses the same seed and so the same resamples: the band is one bootstrap.
    ``taus`` defaults to :func:`default_taus`.
    """
    arrays = _checked(score_dict, min_runs=2)
    taus = default_taus(arrays) if taus is None else np.asarray(taus, dtype=float)
    profiles: dict[str, Profile] = {}
    for name, scores in arrays.items():
        estimates = [interval_estimate(scores, functools.partial(run_score_distribution, tau=tau), reps, confidence, seed) for tau in taus]
        profiles[name] = Profile(
            taus=taus,
            point=np.array([e.point for e in estimates]),
            low=np.array([e.low for e in estimates]),
            high=np.array([e.high for e in estimates]),
        )
    return profiles


# ----------------------------------------------------------------------------- plots


def _ordered(names: Iterable[str], references: Iterable[str]) -> tuple[list[str], list[str]]:
    """Competitors then references, each in the given order."""
    references = set(references)
    names = list(names)
    return [n for n in names if n not in references], [n for n in names if n in references]


def plot_interval_estimates(
    estimates: Mapping[str, Mapping[str, Estimate]],
    path: str | Path,
    references: Iterable[str] = frozenset(),
    metrics: Sequence[str] | None = None,
) -> None:
    """rliable-style interval-estimate plot: one panel per metric, one row per method.

    Each row is a horizontal bar spanning the CI with a tick at the point estimate. Competitors are
    on top in the given order; reference methods (``references``, e.g. AVER and the oracle) are
    below a separator, in grey. Written as PNG to ``path`` (matplotlib, headless).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    competitors, refs = _ordered(estimates, references)
    names = competitors + refs
    metrics = list(next(iter(estimates.values()))) if metrics is None else list(metrics)
    colors = plt.cm.tab10(np.arange(len(competitors)) % 10)
    rows = np.arange(len(names))[::-1]  # the first method on top
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1.5, 0.4 * len(names) + 1.2), sharey=True, squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for row, name in zip(rows, names):
            estimate = estimates[name][metric]
            color = colors[competitors.index(name)] if name in competitors else "0.55"
            axis.barh(row, estimate.high - estimate.low, left=estimate.low, height=0.6, color=color, alpha=0.75)
            axis.vlines(estimate.point, row - 0.3, row + 0.3, color="black", linewidth=1.5)
        if competitors and refs:
            axis.axhline(rows[len(competitors)] + 0.5, color="0.3", linestyle=":", linewidth=1)
        axis.set_title(_label(metric) + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(rows, names)
    figure.supxlabel("normalised score: point estimate (tick) and confidence interval (bar)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_performance_profiles(profiles: Mapping[str, Profile], path: str | Path, references: Iterable[str] = frozenset()) -> None:
    """Performance profiles: fraction of runs with normalised score > tau, with CI bands.

    Competitors are solid coloured lines, reference methods dashed grey-scale ones. Written as PNG
    to ``path`` (matplotlib, headless).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    competitors, refs = _ordered(profiles, references)
    colors = plt.cm.tab10(np.arange(len(competitors)) % 10)
    greys = [str(v) for v in np.linspace(0.0, 0.6, max(len(refs), 1))]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, color, style in [(n, c, "-") for n, c in zip(competitors, colors)] + [(n, g, "--") for n, g in zip(refs, greys)]:
        profile = profiles[name]
        axis.plot(profile.taus, profile.point, style, color=color, label=name, linewidth=1.5)
        axis.fill_between(profile.taus, profile.low, profile.high, color=color, alpha=0.15, linewidth=0)
    axis.set_xlabel(r"normalised score $\tau$")
    axis.set_ylabel(r"fraction of runs with score > $\tau$")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------- tables


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
        cells += [f"{row[k]:.{digits}f} [{row[k + '_ci_low']:.{digits}f}, {row[k + '_ci_high']:.{digits}f}]" for k in estimates]
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


__all__ = [
    "MIN_SEEDS",
    "METRICS",
    "METRIC_LABELS",
    "LOWER_IS_BETTER",
    "Estimate",
    "Profile",
    "validate_scores",
    "scores_from_records",
    "normalized_score",
    "normalize",
    "mean",
    "median",
    "iqm",
    "optimality_gap",
    "interval_estimate",
    "aggregate_interval_estimates",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "paired_difference_ci",
    "run_score_distribution",
    "default_taus",
    "performance_profile",
    "plot_interval_estimates",
    "plot_performance_profiles",
    "summary_table",
    "markdown_table",
    "write_tables",
    "write_report",
]
