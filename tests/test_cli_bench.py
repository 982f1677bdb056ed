"""The command line and the benchmark sweep, end to end on the synthetic env."""

from __future__ import annotations

import csv
import json
import struct

import numpy as np
import pytest

from kd_env.comparison import PRESETS, Method, Preset, run_benchmark, sweep
from kd_env.cli import main


def test_cli_train_and_resume(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    args = [
        "train",
        "--env",
        "MultiTeacherKD-Synthetic-v0",
        "--agent",
        "camkd",
        "--run-dir",
        run_dir,
        "--env-arg",
        "epochs=1",
        "--env-arg",
        "max_steps_per_epoch=4",
        "--no-progress",
    ]
    assert main(args) == 0
    output = capsys.readouterr().out
    assert "test accuracy" in output and f"{run_dir}/tb" in output
    assert main(args) == 1  # the run exists: the error says to resume
    assert "resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--total-steps", "6"]) == 0  # extend the budget


def test_cli_reports_bad_input_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KD_ENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KD_ENV_DATA", str(tmp_path / "data"))
    assert main(["data", "check", "cifar100", "--data-root", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error:") and str(tmp_path / "data") in error  # it lists where it looked
    assert main(["train", "--agent", "not-an-agent"]) != 0
    assert "unknown agent 'not-an-agent'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="key=value"):
        main(["train", "--agent", "aver", "--env-arg", "epochs"])


def test_bench_sweep_tables_plots_and_resume(tmp_path, monkeypatch):
    preset = Preset(
        env_id="MultiTeacherKD-Synthetic-v0",
        methods=[Method("AVER", "aver"), Method("EBKD per-sample", "ebkd", per_sample=True)],
        seeds=[0, 1],
        env_kwargs={"epochs": 2, "max_steps_per_epoch": 3},
    )
    rows = run_benchmark(preset, tmp_path, progress=False, jobs=2)
    assert {row["method"] for row in rows} == {"AVER", "EBKD per-sample"}
    for row in rows:
        assert row["seeds"] == 2 and len(row["test_acc_per_seed"]) == 2 and row["test_acc_std"] >= 0
    for name in ("val_acc.png", "weights.png"):
        assert _png_size(tmp_path / name)[0] > 100
    # the CSV and the markdown say what the JSON says
    table = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert table == rows
    with (tmp_path / "results.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["method"], float(r["test_acc_mean"])) for r in csv_rows] == [(r["method"], r["test_acc_mean"]) for r in rows]
    markdown = (tmp_path / "results.md").read_text()
    for row in rows:
        assert f"| {row['method']} |" in markdown and f"{row['test_acc_mean']:.2f} +- {row['test_acc_std']:.2f}" in markdown
    assert len(list((tmp_path / "runs").glob("*/tb/events.*"))) == 4

    def fail(self, run):
        raise AssertionError(f"{run.run_dir} ran again")

    monkeypatch.setattr(sweep.LocalExecutor, "_start", fail)  # finished runs are not run again
    assert run_benchmark(preset, tmp_path, progress=False) == rows


def _png_size(path):
    """(width, height) from a PNG header; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_every_preset_plans_valid_runs(tmp_path):
    """Each preset's grid expands to runs whose configs name registered agents and valid env arguments."""
    from kd_env.envs import KDEnvSettings

    for name, preset in PRESETS.items():
        runs = sweep.plan(preset, tmp_path / name)
        assert len(runs) == len(preset.scenarios) * len(preset.students) * len(preset.methods) * len(preset.seeds), name
        assert len({run.run_dir for run in runs}) == len(runs), f"{name}: two runs share a folder"
        for run in runs:
            KDEnvSettings.from_kwargs(**{"dataset": "synthetic", **{k: v for k, v in run.config.env_kwargs.items() if k != "device"}})
        if len(preset.scenarios) > 1:
            labels = {method.label for method in preset.methods}
            assert {preset.baseline, preset.oracle} <= labels, name


def test_suite_on_synthetic_separates_oracle_from_aver(tmp_path):
    """The scenario machinery end to end: pools trained, runs, per-scenario table, normalised statistics."""
    rows = run_benchmark("suite-synthetic", tmp_path, progress=False, jobs=2)
    by_key = {(row["scenario"], row["method"]): row for row in rows}
    oracle, aver = by_key[("specialists", "Oracle")], by_key[("specialists", "AVER")]
    assert oracle["test_acc_mean"] > aver["test_acc_mean"] + 5, (oracle, aver)
    stats_rows = json.loads((tmp_path / "stats.json").read_text())
    methods = {row["method"] for row in stats_rows}
    assert {"Oracle", "AVER", "CA-MKD (per-sample)"} <= methods
    aver_row = next(row for row in stats_rows if row["method"] == "AVER")
    assert abs(aver_row["mean"]) < 1e-9  # AVER scores 0 by definition of the normalised score
    oracle_row = next(row for row in stats_rows if row["method"] == "Oracle")
    assert np.isclose(oracle_row["mean"], 1.0)
    for name in ("interval_estimates.png", "performance_profiles.png"):
        assert _png_size(tmp_path / name)[0] > 100
    assert "### specialists" in (tmp_path / "results.md").read_text()
    # the leading competitor (the only one here) against every other method, with paired CIs
    leader_rows = json.loads((tmp_path / "leader.json").read_text())
    assert {row["leader"] for row in leader_rows} == {"CA-MKD (per-sample)"}
    assert {row["versus"] for row in leader_rows} == {"Oracle", "AVER"}
    for row in leader_rows:
        assert row["iqm_difference_ci_low"] <= row["iqm_difference"] <= row["iqm_difference_ci_high"]
        assert row["leads"] == (row["iqm_difference_ci_low"] > 0)


def test_cli_bench_runs_a_preset(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--preset",
                "suite-synthetic",
                "--out",
                str(tmp_path),
                "--jobs",
                "2",
                "--no-progress",
                "--env-arg",
                "max_steps_per_epoch=3",
            ]
        )
        == 0
    )
    output = capsys.readouterr().out
    assert "### noisy" in output and "Normalised scores" in output  # computed, or the reason why not
    assert main(["bench", "--preset", "suite-synthetic", "--out", str(tmp_path), "--jobs", "0"]) == 2


def test_transfer_methods_pretrain_once_then_evaluate_frozen(tmp_path):
    """The transfer protocol: one pretraining run per scenario shared by the transfer rows, its
    seed never an evaluation seed; the evaluation runs load its policy and do not learn."""
    from pathlib import Path

    from kd_env.comparison.presets import Pretrain

    suite = PRESETS["suite"]
    pretraining = sweep.plan_pretraining(suite, tmp_path)
    assert len(pretraining) == len(suite.scenarios)  # both transfer rows share one per scenario
    for run in pretraining:
        assert run.config.student_runs == 3 and run.config.seed not in suite.seeds
        assert run.config.env_kwargs["student"] == "cnn_w8"
    transfer = [run for run in sweep.plan(suite, tmp_path) if run.method.pretrain is not None]
    assert transfer and all(run.config.agent_kwargs["learn"] is False for run in transfer)
    assert {Path(run.config.agent_kwargs["policy_path"]).parent.parent for run in transfer} == {run.run_dir for run in pretraining}

    # end to end on the synthetic env: the pretraining runs first, its policy is what is evaluated
    preset = Preset(
        env_id="MultiTeacherKD-Synthetic-v0",
        methods=[
            Method("AVER", "aver"),
            Method(
                "Router (transfer)",
                "router",
                per_sample=True,
                env_kwargs={"reward_mode": "label_logprob"},
                pretrain=Pretrain(student_runs=2, seed=50),
            ),
        ],
        seeds=[0],
        env_kwargs={"epochs": 1, "max_steps_per_epoch": 4, "feature_kd": False},
        scenarios=["specialists"],
    )
    rows = run_benchmark(preset, tmp_path / "e2e", progress=False, jobs=2)
    assert {row["method"] for row in rows} == {"AVER", "Router (transfer)"}
    (trained,) = sweep.plan_pretraining(preset, tmp_path / "e2e")
    assert json.loads((trained.run_dir / "result.json").read_text())["env_steps"] == 8  # two student runs of 4
