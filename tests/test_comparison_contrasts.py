"""Planned contrasts (ablations) of a sweep's report: paired differences checked by hand."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kd_env.comparison.contrasts import contrast_rows, paired_accuracy_difference, write_contrasts
from kd_env.comparison.presets import Method, Preset
from kd_env.comparison.shipped import PRESETS


def test_paired_difference_is_the_mean_of_per_seed_differences():
    method = {0: 80.0, 1: 82.0, 2: 85.0}
    compared_with = {0: 79.0, 1: 79.5, 2: 84.0, 3: 99.0}  # seed 3 has no partner: left out
    row = paired_accuracy_difference(method, compared_with)
    assert row["seeds"] == 3
    assert row["difference"] == pytest.approx(np.mean([1.0, 2.5, 1.0]))
    # every per-seed difference is positive, so every bootstrap mean is, and the CI lies inside
    # the range of the per-seed differences
    assert 1.0 <= row["ci_low"] <= row["difference"] <= row["ci_high"] <= 2.5


def test_a_difference_the_seeds_do_not_resolve_has_a_ci_spanning_zero():
    row = paired_accuracy_difference({0: 80.0, 1: 78.0, 2: 81.0}, {0: 79.0, 1: 80.0, 2: 80.0})
    assert row["ci_low"] < 0 < row["ci_high"]


def test_rows_per_scenario_and_in_normalised_score():
    accuracies = {
        ("noisy", "A"): {0: 70.0, 1: 71.0},
        ("noisy", "B"): {0: 69.0, 1: 69.0},
        ("specialists", "A"): {0: 60.0, 1: 62.0},
        ("specialists", "B"): {0: 61.0, 1: 63.0},
    }
    normalised = {"A": np.array([[0.5, 0.2], [0.6, 0.3]]), "B": np.array([[0.4, 0.1], [0.5, 0.2]])}
    rows = contrast_rows(accuracies, [("A", "B")], normalised)
    assert [row["scenario"] for row in rows] == ["noisy", "specialists", "all (normalised)"]
    assert rows[0]["difference"] == pytest.approx(1.5)
    assert rows[1]["difference"] == pytest.approx(-1.0)
    # IQM over 4 values is the mean of the middle two: A (0.3, 0.5) -> 0.4, B (0.2, 0.4) -> 0.3
    assert rows[2]["difference"] == pytest.approx(0.1)


def test_a_contrast_naming_an_absent_method_is_refused():
    methods = [Method("AVER", "aver"), Method("EBKD", "ebkd")]
    with pytest.raises(ValueError, match="'EBKD \\(per-sample\\)'.*not methods of the preset"):
        Preset(env_id="x", methods=methods, seeds=[0], env_kwargs={}, contrasts=[("EBKD (per-sample)", "EBKD")])
    with pytest.raises(ValueError, match="with itself"):
        Preset(env_id="x", methods=methods, seeds=[0], env_kwargs={}, contrasts=[("EBKD", "EBKD")])


def test_every_builtin_preset_names_only_its_own_methods():
    assert PRESETS["suite"].contrasts and PRESETS["suite-ablations"].contrasts
    for preset in PRESETS.values():
        labels = {method.label for method in preset.methods}
        assert all(a in labels and b in labels for a, b in preset.contrasts)


def _fake_run(root: Path, label: str, scenario: str, seed: int, test_acc: float) -> SimpleNamespace:
    run_dir = root / f"{scenario}__{label}__seed{seed}"
    run_dir.mkdir(parents=True)
    episode = {"final_test_acc": test_acc, "best_val_acc": test_acc, "best_epoch": 1}
    (run_dir / "result.json").write_text(json.dumps({"episodes": [episode], "wall_time_s": 1.0, "peak_memory_mib": 1.0}))
    method = Method(label, label.lower(), aggregate=True)
    return SimpleNamespace(method=method, scenario=scenario, student=None, config=SimpleNamespace(seed=seed), run_dir=run_dir)


def test_write_contrasts_reads_the_run_folders(tmp_path: Path):
    preset = Preset(
        env_id="x",
        methods=[Method("AVER", "aver"), Method("Oracle", "oracle"), Method("Variant", "variant")],
        seeds=[0, 1],
        env_kwargs={},
        scenarios=["noisy"],
        contrasts=[("Variant", "AVER")],
    )
    accuracies = {"AVER": [0.70, 0.72], "Oracle": [0.80, 0.82], "Variant": [0.75, 0.78]}
    runs = [_fake_run(tmp_path, label, "noisy", seed, acc) for label, accs in accuracies.items() for seed, acc in enumerate(accs)]
    rows = write_contrasts(runs, tmp_path, "toy", preset)  # type: ignore[arg-type]  # stand-ins with the PlannedRun fields it reads
    assert rows is not None
    assert rows[0]["difference"] == pytest.approx(100 * np.mean([0.05, 0.06]))
    # normalised: (acc - AVER) / (Oracle - AVER) per seed = 0.5 and 0.6; AVER scores 0
    assert rows[1]["scenario"] == "all (normalised)"
    assert rows[1]["difference"] == pytest.approx(0.55)
    saved = json.loads((tmp_path / "contrasts.json").read_text())
    assert [row["difference"] for row in saved] == pytest.approx([row["difference"] for row in rows])
    table = (tmp_path / "contrasts.md").read_text()
    assert "| Variant | AVER | noisy | +5.50 |" in table and "higher" in table
