"""The statistics' plots (matplotlib, headless): interval estimates and performance profiles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from kd_env.comparison.stats.intervals import Estimate
from kd_env.comparison.stats.metrics import LOWER_IS_BETTER, _label
from kd_env.comparison.stats.profiles import Profile
from kd_env.comparison.stats.scores import _ordered


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
