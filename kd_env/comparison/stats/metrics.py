"""The aggregate metrics (rliable's): each takes scores of shape ``[..., num_runs, num_tasks]``
(the leading axes are bootstrap resamples) and returns one value per leading index (a numpy
scalar for a 2-D input)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.stats

Metric = Callable[[np.ndarray], Any]
"""An aggregate metric: scores ``[..., num_runs, num_tasks]`` -> one value per leading index."""


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
