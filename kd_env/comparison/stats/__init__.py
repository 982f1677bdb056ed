"""The benchmark's statistics and plots, as RL benchmarks report them.

The metrics and their names follow rliable (Agarwal et al., "Deep Reinforcement Learning at the
Edge of the Statistical Precipice", NeurIPS 2021), computed here with ``scipy.stats`` (``bootstrap``,
``trim_mean``, ``mannwhitneyu``) instead of rliable itself (rliable 1.2.0 needs ``arch<8``, and arch
7.2 fails to import with pandas 3.1). All resampling is done by ``scipy.stats.bootstrap`` with
vectorised statistics; this package has no resampling loops of its own.

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

Modules
    :mod:`~kd_env.comparison.stats.scores` (the data model, normalised scores),
    :mod:`~kd_env.comparison.stats.metrics` (IQM, mean, median, optimality gap),
    :mod:`~kd_env.comparison.stats.intervals` (bootstrap CIs, probability of improvement, paired
    differences), :mod:`~kd_env.comparison.stats.profiles` (performance profiles),
    :mod:`~kd_env.comparison.stats.plots` and :mod:`~kd_env.comparison.stats.tables` (the report).
"""

from kd_env.comparison.stats.intervals import (
    Estimate,
    aggregate_interval_estimates,
    interval_estimate,
    paired_difference_ci,
    probability_of_improvement,
    probability_of_improvement_ci,
)
from kd_env.comparison.stats.metrics import LOWER_IS_BETTER, METRIC_LABELS, METRICS, Metric, iqm, mean, median, optimality_gap
from kd_env.comparison.stats.plots import plot_interval_estimates, plot_performance_profiles
from kd_env.comparison.stats.profiles import Profile, default_taus, performance_profile, run_score_distribution
from kd_env.comparison.stats.scores import MIN_SEEDS, normalize, normalized_score, scores_from_records, validate_scores
from kd_env.comparison.stats.tables import markdown_table, summary_table, write_report, write_tables

__all__ = [
    "MIN_SEEDS",
    "Metric",
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
