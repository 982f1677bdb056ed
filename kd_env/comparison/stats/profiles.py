"""Performance profiles: the fraction of runs scoring above each threshold, with bootstrap bands."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kd_env.comparison.stats.intervals import interval_estimate
from kd_env.comparison.stats.scores import _checked


@dataclass(frozen=True)
class Profile:
    """A performance profile: the value at each threshold ``tau``, with its confidence band."""

    taus: np.ndarray
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray


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
