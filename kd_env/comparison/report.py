"""A sweep's report, always rebuilt from its run folders.

Written to the output folder:

* ``results.md`` / ``results.csv`` / ``results.json``: one row per (scenario, student, method):
  test accuracy of the best-validation student, mean +- std over seeds, with a 95% bootstrap CI
  of the mean; references (oracle, equal weights, best teacher, no KD) listed apart;
* for a scenario suite (the preset's ``baseline`` and ``oracle`` methods present, >= 2 seeds):
  ``stats.md/.csv/.json`` with the normalised score ``(acc - AVER) / (oracle - AVER)`` per
  scenario aggregated over scenarios (IQM, mean, median, optimality gap, probability of
  improvement over AVER, each with a stratified-bootstrap CI), ``interval_estimates.png`` and
  ``performance_profiles.png`` (:mod:`kd_env.comparison.stats`);
* ``contrasts.md/.json`` for the preset's planned contrasts (ablations: a method against
  another, paired by seed; :mod:`kd_env.comparison.contrasts`);
* ``val_acc.png`` (validation accuracy over training, mean over seeds) and ``weights.png``
  (each method's teacher weights over training, first seed), one panel row per scenario.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_env.comparison import stats
from kd_env.comparison.contrasts import paired_accuracy_difference, write_contrasts
from kd_env.comparison.results import load_result, scenario_scores, test_accuracy

if TYPE_CHECKING:
    from kd_env.comparison.planned import PlannedRun
    from kd_env.comparison.presets import Preset

SMOOTHING_WINDOW = 25


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; NaN where not defined (no value; one value's std)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def _mean_ci(values: list[float]) -> tuple[float, float]:
    """95% bootstrap percentile CI of the mean over seeds (NaN with fewer than 2 seeds)."""
    if len(values) < 2 or not all(np.isfinite(values)):
        return float("nan"), float("nan")
    estimate = stats.interval_estimate(np.asarray(values, dtype=float)[:, None], stats.mean)
    return estimate.low, estimate.high


def summarise(runs: Sequence[PlannedRun], baseline: str | None = None) -> list[dict[str, Any]]:
    """One row per (scenario, student, method): mean, std and CI over seeds, and the paired (by
    seed) difference to the ``baseline`` method's accuracy in the same scenario with its CI."""
    groups: dict[tuple[str, str, str], list[tuple[PlannedRun, dict[str, Any]]]] = {}
    for run in runs:
        key = (run.scenario or "", run.student or "", run.method.label)
        groups.setdefault(key, []).append((run, load_result(run)))
    by_seed = {key: {run.config.seed: test_accuracy(result) for run, result in members} for key, members in groups.items()}
    rows = []
    for (scenario, student, label), members in groups.items():
        results = [result for _, result in members]
        test = [test_accuracy(r) for r in results]
        difference = paired_accuracy_difference(by_seed[(scenario, student, label)], by_seed.get((scenario, student, baseline or ""), {}))
        delta, delta_low, delta_high = difference["difference"], difference["ci_low"], difference["ci_high"]
        val = [100 * r["episodes"][-1]["best_val_acc"] for r in results if r["episodes"]]
        test_mean, test_std = _mean_std(test)
        ci_low, ci_high = _mean_ci(test)
        val_mean, val_std = _mean_std(val)
        rows.append(
            {
                "scenario": scenario,
                "student": student,
                "method": label,
                "reference": members[0][0].method.reference,
                "seeds": len(results),
                "test_acc_mean": round(test_mean, 2),
                "test_acc_std": round(test_std, 2),
                "test_acc_ci_low": round(ci_low, 2),
                "test_acc_ci_high": round(ci_high, 2),
                "vs_baseline_mean": round(delta, 2),
                "vs_baseline_ci_low": round(delta_low, 2),
                "vs_baseline_ci_high": round(delta_high, 2),
                "best_val_acc_mean": round(val_mean, 2),
                "best_val_acc_std": round(val_std, 2),
                "wall_time_s_mean": round(statistics.fmean(r["wall_time_s"] for r in results), 1),
                "peak_memory_mib_max": round(max(r["peak_memory_mib"] for r in results), 1),
                "test_acc_per_seed": [round(v, 2) for v in test],
            }
        )
    return rows


#: A statistic the number of seeds does not define (one seed's std, CI or paired difference).
NOT_DEFINED = "n/a"


def _fmt(value: float) -> str:
    return NOT_DEFINED if not np.isfinite(value) else f"{value:.2f}"


def _ci(low: float, high: float) -> str:
    return f"[{_fmt(low)}, {_fmt(high)}]" if np.isfinite(low) and np.isfinite(high) else NOT_DEFINED


def preset_line(preset_name: str, preset: Preset) -> str:
    """``Preset `name`: description.`` (no description: ``Preset `name`.``)."""
    description = preset.description.strip().rstrip(".")
    return f"Preset `{preset_name}`: {description}." if description else f"Preset `{preset_name}`."


def results_markdown(rows: list[dict[str, Any]], preset_name: str, preset: Preset) -> str:
    lines = [
        preset_line(preset_name, preset),
        "Test accuracy (%) of the best-validation student: mean +- std over seeds [95% bootstrap CI of the mean]; "
        f"the mean paired (same seed) difference to {preset.baseline} in points [95% bootstrap CI].",
    ]
    for scenario in dict.fromkeys(row["scenario"] for row in rows):
        if scenario:
            lines += ["", f"### {scenario}"]
        lines += [
            "",
            f"| method | kind | student | seeds | test acc (%) | 95% CI | vs {preset.baseline} (paired) | 95% CI | best val acc (%) | wall time (s) | peak memory (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        in_scenario = [row for row in rows if row["scenario"] == scenario]
        # references first, then the competitors, best first
        for row in sorted(in_scenario, key=lambda r: (not r["reference"], r["student"], -r["test_acc_mean"])):
            lines.append(
                f"| {row['method']} | {'reference' if row['reference'] else 'method'} | {row['student'] or '-'} | {row['seeds']} "
                f"| {_fmt(row['test_acc_mean'])} +- {_fmt(row['test_acc_std'])} | {_ci(row['test_acc_ci_low'], row['test_acc_ci_high'])} "
                f"| {_fmt(row['vs_baseline_mean'])} | {_ci(row['vs_baseline_ci_low'], row['vs_baseline_ci_high'])} "
                f"| {_fmt(row['best_val_acc_mean'])} +- {_fmt(row['best_val_acc_std'])} | {row['wall_time_s_mean']:.0f} | {row['peak_memory_mib_max']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], out: Path, preset_name: str, preset: Preset) -> None:
    (out / "results.json").write_text(json.dumps({"preset": preset_name, "description": preset.description, "rows": rows}, indent=1))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[k for k in rows[0] if k != "test_acc_per_seed"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v for k, v in row.items() if k != "test_acc_per_seed"})
    (out / "results.md").write_text(results_markdown(rows, preset_name, preset))


def write_statistics(runs: Sequence[PlannedRun], out: Path, preset: Preset) -> list[dict[str, Any]] | None:
    """Normalised scores and their interval estimates (``stats.*``, two plots); ``None`` if the
    preset is not a scenario suite."""
    scores = scenario_scores(runs, preset)
    if scores is None:
        return None
    raw, tasks = scores
    try:
        normalised = stats.normalize(raw, low=preset.baseline, high=preset.oracle, tasks=tasks)
    except ValueError as exc:  # e.g. the oracle did not beat AVER somewhere: no scale to normalise on
        (out / "stats.md").write_text(f"Normalised scores not computed: {exc}\n")
        return None
    rows = stats.write_report(normalised, out, baseline=preset.baseline, references=preset.references())
    write_leader_comparison(normalised, out, preset.references(), label_confidence_methods(preset))
    return rows


def label_confidence_methods(preset: Preset) -> set[str]:
    """Labels of the preset's methods that are label-confidence rules (``ce-softmax``,
    ``ce-route``): the strongest simple rules wherever training labels are read, the bar a
    learned method must clear (issue #22)."""
    from kd_env.baselines.policies import LABEL_CONFIDENCE_RULES

    return {method.label for method in preset.methods if method.agent in LABEL_CONFIDENCE_RULES and not method.reference}


def write_leader_comparison(
    normalised: dict[str, np.ndarray], out: Path, references: set[str], label_rules: set[str] | frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """``leader.md/.json``: the competitor with the highest IQM normalised score against every
    other method: the paired (by seed, stratified by scenario) bootstrap CI of the IQM difference
    and the probability of improvement with its CI. "Leads" means the difference's CI is above 0.

    ``label_rules``: the methods that are label-confidence rules; the leader is named against the
    best of them (by IQM) in a sentence of its own, since a learned method that reads the labels
    only counts as the leader where it clears that bar."""
    competitors = [name for name in normalised if name not in references]
    if not competitors:
        return []
    leader = max(competitors, key=lambda name: float(stats.iqm(normalised[name])))
    rows: list[dict[str, Any]] = []
    for other in (name for name in normalised if name != leader):
        difference = stats.paired_difference_ci(normalised[leader], normalised[other], stats.iqm)
        improvement = stats.probability_of_improvement_ci(normalised[leader], normalised[other])
        rows.append(
            {
                "leader": leader,
                "versus": other,
                "reference": other in references,
                "iqm_difference": round(difference.point, 3),
                "iqm_difference_ci_low": round(difference.low, 3),
                "iqm_difference_ci_high": round(difference.high, 3),
                "p_improvement": round(improvement.point, 3),
                "p_improvement_ci_low": round(improvement.low, 3),
                "p_improvement_ci_high": round(improvement.high, 3),
                "leads": difference.low > 0,
                "label_confidence_rule": other in label_rules,
            }
        )
    lines = [
        f"The leader among the competing methods by IQM normalised score: **{leader}**. Against every other method: "
        "IQM difference [95% paired stratified-bootstrap CI] and probability of improvement [95% CI].",
        "",
        *_label_rule_bar(leader, rows, normalised, label_rules),
        "| versus | kind | IQM difference | 95% CI | P(leader > versus) | 95% CI | leads |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["reference"], -r["iqm_difference"])):
        lines.append(
            f"| {row['versus']} | {'reference' if row['reference'] else 'method'} | {row['iqm_difference']:.3f} "
            f"| [{row['iqm_difference_ci_low']:.3f}, {row['iqm_difference_ci_high']:.3f}] | {row['p_improvement']:.3f} "
            f"| [{row['p_improvement_ci_low']:.3f}, {row['p_improvement_ci_high']:.3f}] | {'yes' if row['leads'] else 'no'} |"
        )
    (out / "leader.md").write_text("\n".join(lines) + "\n")
    (out / "leader.json").write_text(json.dumps(rows, indent=1))
    return rows


def _label_rule_bar(
    leader: str, rows: list[dict[str, Any]], normalised: dict[str, np.ndarray], label_rules: set[str] | frozenset[str]
) -> list[str]:
    """The leader against the best label-confidence rule, as a paragraph (none without such a rule)."""
    present = [name for name in normalised if name in label_rules]
    if not present:
        return []
    best = max(present, key=lambda name: float(stats.iqm(normalised[name])))
    if leader in label_rules:
        return [f"The leader is a label-confidence rule (no learning): **{leader}** is the bar, and no method clears it.", ""]
    row = next(r for r in rows if r["versus"] == best)
    verdict = (
        "the leader clears it (the CI is above 0)"
        if row["leads"]
        else "the leader does **not** clear it (the CI reaches 0 or below): no method leads the rule that reads the same labels"
    )
    return [
        f"Against the strongest label-confidence rule, **{best}**: IQM difference {row['iqm_difference']:.3f} "
        f"[{row['iqm_difference_ci_low']:.3f}, {row['iqm_difference_ci_high']:.3f}]; {verdict}.",
        "",
    ]


def plot(runs: Sequence[PlannedRun], out: Path) -> None:
    """``val_acc.png`` and ``weights.png`` (matplotlib, headless), a row of panels per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        scenario = run.scenario or "default"
        key = run.method.label + (f" / {run.student}" if run.student else "")
        groups.setdefault(scenario, {}).setdefault(key, []).append(load_result(run))
    _plot_val_curves(plt, groups, out / "val_acc.png")
    _plot_weights(plt, groups, out / "weights.png")


def _plot_val_curves(plt: Any, groups: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    figure, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 5), squeeze=False)
    for axis, (scenario, by_method) in zip(axes.flat, groups.items()):
        colors = plt.cm.tab20(np.linspace(0, 1, max(len(by_method), 2)))
        for color, (label, results) in zip(colors, by_method.items()):
            curves = [r["val_curve"] for r in results if r["val_curve"]]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            steps = [point[0] for point in curves[0][:length]]
            values = np.mean([[100 * point[1] for point in c[:length]] for c in curves], axis=0)
            axis.plot(steps, values, marker="o", label=label, color=color)
        axis.set_title(scenario)
        axis.set_xlabel("student updates")
        axis.set_ylabel("validation accuracy (%), mean over seeds")
        axis.legend(fontsize=6)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_weights(plt: Any, groups: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    columns = max(len(by_method) for by_method in groups.values())
    figure, axes = plt.subplots(len(groups), columns, figsize=(3.2 * columns, 2.6 * len(groups)), squeeze=False, sharey=True)
    for row, (scenario, by_method) in enumerate(groups.items()):
        for column, (label, results) in enumerate(by_method.items()):
            axis = axes[row, column]
            trajectory = results[0]["weight_trajectory"]  # the first seed's run
            if trajectory:
                steps = np.array([point[0] for point in trajectory])
                weights = np.array([point[1] for point in trajectory])
                # a moving average: stochastic policies draw new weights every step
                window = max(1, min(SMOOTHING_WINDOW, len(steps) // 10))
                kernel = np.ones(window) / window
                for index, name in enumerate(results[0]["teacher_names"]):
                    smoothed = np.convolve(weights[:, index], kernel, mode="valid")
                    axis.plot(steps[window - 1 :], smoothed, label=name, linewidth=1.0)
            axis.set_title(f"{scenario}: {label}", fontsize=7)
            axis.set_ylim(-0.03, 1.03)
            if column == 0:
                axis.legend(fontsize=5)
        for column in range(len(by_method), columns):
            axes[row, column].axis("off")
    figure.supxlabel("student updates")
    figure.supylabel(f"teacher weight (batch mean, moving average of {SMOOTHING_WINDOW} updates)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(runs: Sequence[PlannedRun], out: Path, preset_name: str, preset: Preset) -> list[dict[str, Any]]:
    """Tables, statistics and plots of a finished sweep; returns the per-method rows."""
    rows = summarise(runs, preset.baseline)
    write_tables(rows, out, preset_name, preset)
    write_statistics(runs, out, preset)
    write_contrasts(runs, out, preset_name, preset)
    plot(runs, out)
    return rows


# --------------------------------------------------------------------------- failed runs (issue #14)
def failed_row(run: PlannedRun, error: str) -> dict[str, Any]:
    """One failed run: its cell (scenario, student, method, seed), folder and last error."""
    return {
        "scenario": run.scenario or "",
        "student": run.student or "",
        "method": run.method.label,
        "seed": run.config.seed,
        "run": run.run_dir.name,
        "error": error,
    }


def _cell(text: str, limit: int = 400) -> str:
    """``text`` fit for one markdown table cell: one line, no column separators, at most about
    ``limit`` characters (its first line and its end; the whole text is in ``results.json``)."""
    text = " ".join(text.split())
    if len(text) > limit:
        first = text[: limit // 4]
        text = f"{first} ... {text[-(limit - len(first)) :]}"
    return text.replace("|", "\\|")


def write_report_with_failures(
    runs: Sequence[PlannedRun], failures: Sequence[tuple[PlannedRun, str]], out: Path, preset_name: str, preset: Preset
) -> list[dict[str, Any]]:
    """The report of a sweep whose ``failures`` (``(run, error)``) failed every attempt: the
    tables and plots of the finished runs, and the failed runs with their errors (a "Failed runs"
    table at the end of ``results.md``, and ``"failed"`` in ``results.json``). The normalised
    statistics need every cell, so ``stats.md`` only says why they are missing. Returns the rows
    of the finished runs."""
    done = [run for run in runs if run.done]
    rows = summarise(done, preset.baseline) if done else []
    if rows:
        write_tables(rows, out, preset_name, preset)
        plot(done, out)
        markdown = (out / "results.md").read_text()
    else:
        markdown = f"{preset_line(preset_name, preset)}\nNo run finished.\n"
    failed = [failed_row(run, error) for run, error in failures]
    lines = [
        "",
        f"### Failed runs ({len(failed)} of {len(runs)}, after their retries; rerun the same command to try them again)",
        "",
        "| scenario | method | student | seed | run folder | error (the end of the run's log.txt) |",
        "|---|---|---|---|---|---|",
    ]
    for row in failed:
        lines.append(
            f"| {row['scenario'] or '-'} | {row['method']} | {row['student'] or '-'} | {row['seed']} | {row['run']} "
            f"| {_cell(row['error'])} |"
        )
    (out / "results.md").write_text(markdown + "\n".join(lines) + "\n")
    (out / "results.json").write_text(
        json.dumps({"preset": preset_name, "description": preset.description, "rows": rows, "failed": failed}, indent=1)
    )
    (out / "stats.md").write_text(f"Normalised scores not computed: {len(failed)} of {len(runs)} runs failed (see results.md).\n")
    return rows
