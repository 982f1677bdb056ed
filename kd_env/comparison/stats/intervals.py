"""Confidence intervals by the stratified percentile bootstrap (``scipy.stats.bootstrap``):
interval estimates of the aggregate metrics, the probability of improvement and the paired
difference between two methods."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

from kd_env.comparison.stats.metrics import METRICS, Metric, iqm
from kd_env.comparison.stats.scores import _checked


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float


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
