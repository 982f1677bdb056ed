"""A sweep's results as the report and the contrasts read them: one run's ``result.json``, its
reported test accuracy, and the per-scenario score matrices of the statistics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_env.comparison import stats

if TYPE_CHECKING:
    from kd_env.comparison.planned import PlannedRun
    from kd_env.comparison.presets import Preset


def load_result(run: PlannedRun) -> dict[str, Any]:
    return json.loads((run.run_dir / "result.json").read_text())


def test_accuracy(result: dict[str, Any]) -> float:
    """The run's reported number: test accuracy (%) of its best-validation student (NaN if none)."""
    return 100 * result["episodes"][-1]["final_test_acc"] if result["episodes"] else float("nan")


def task_name(run: PlannedRun) -> str:
    """A run's task in the statistics: its scenario, with the student folded in where the
    preset varies it (``"noisy/cnn_w16"``), or ``"default"``."""
    return "/".join(part for part in (run.scenario, run.student) if part) or "default"


def scenario_scores(runs: Sequence[PlannedRun], preset: Preset) -> tuple[dict[str, np.ndarray], list[str]] | None:
    """Test accuracies as ``{method: [seeds, scenarios]}`` (student folded into the scenario
    name), or ``None`` when the preset has no baseline/oracle pair or fewer than 2 seeds."""
    labels = {run.method.label for run in runs}
    if preset.baseline not in labels or preset.oracle not in labels or len(preset.seeds) < 2:
        return None
    records = [
        {
            "method": run.method.label,
            "scenario": task_name(run),
            "seed": run.config.seed,
            "acc": test_accuracy(load_result(run)),
        }
        for run in runs
        if run.method.aggregate and run.scenario not in preset.control_scenarios
    ]
    score_dict, tasks, _ = stats.scores_from_records(records, value="acc")
    return score_dict, list(tasks)
