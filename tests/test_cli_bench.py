"""The command line and the benchmark sweep, end to end on the synthetic env."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from output_checks import assert_csv_matches_json, assert_png

from kd_env.cli import main
from kd_env.comparison import PRESETS, Method, Preset, run_benchmark, sweep
from kd_env.envs import ENV_IDS, KDEnvSettings
from kd_env.envs.per_sample_env import per_sample_arguments
from kd_env.registry import get_policy


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


def _assert_rows_match_run_folders(rows: list[dict], runs: list[sweep.PlannedRun]) -> None:
    """Each row's per-seed accuracies are its runs' ``result.json`` numbers, its mean their mean."""
    for row in rows:
        members = [
            run
            for run in runs
            if (run.method.label, run.scenario or "", run.student or "") == (row["method"], row["scenario"], row["student"])
        ]
        results = [json.loads((run.run_dir / "result.json").read_text()) for run in members]
        per_seed = [round(100 * result["episodes"][-1]["final_test_acc"], 2) for result in results]
        assert row["seeds"] == len(members) and row["test_acc_per_seed"] == per_seed, (row, per_seed)
        assert row["test_acc_mean"] == pytest.approx(np.mean(per_seed), abs=0.011)
        if len(per_seed) > 1:
            assert row["test_acc_std"] == pytest.approx(np.std(per_seed, ddof=1), abs=0.011)
        else:  # one seed defines no standard deviation (the tables say n/a)
            assert np.isnan(row["test_acc_std"])


def _assert_tables_agree(out: Path, rows: list[dict]) -> None:
    """results.json holds ``rows``; the CSV and the markdown say what it says."""
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    assert_csv_matches_json(out / "results.csv", rows, left_out=["test_acc_per_seed"])
    markdown = (out / "results.md").read_text()
    for row in rows:
        std = "n/a" if np.isnan(row["test_acc_std"]) else f"{row['test_acc_std']:.2f}"
        assert f"| {row['method']} |" in markdown and f"{row['test_acc_mean']:.2f} +- {std}" in markdown


@pytest.mark.slow
def test_bench_sweep_tables_plots_and_resume(tmp_path, monkeypatch):
    preset = Preset(
        env_id="MultiTeacherKD-Synthetic-v0",
        methods=[Method("AVER", "aver"), Method("EBKD per-sample", "ebkd", per_sample=True)],
        seeds=[0, 1],
        env_kwargs={"epochs": 2, "max_steps_per_epoch": 3},
    )
    rows = run_benchmark(preset, tmp_path, progress=False, jobs=2)
    assert {row["method"] for row in rows} == {"AVER", "EBKD per-sample"}
    _assert_rows_match_run_folders(rows, sweep.plan(preset, tmp_path))
    _assert_tables_agree(tmp_path, rows)
    for name in ("val_acc.png", "weights.png"):
        assert_png(tmp_path / name)
    assert len(list((tmp_path / "runs").glob("*/tb/events.*"))) == 4

    def fail(self, run):
        raise AssertionError(f"{run.run_dir} ran again")

    monkeypatch.setattr(sweep.LocalExecutor, "_start", fail)  # finished runs are not run again
    assert run_benchmark(preset, tmp_path, progress=False) == rows


def _assert_valid_run(run: sweep.PlannedRun, preset_name: str) -> None:
    """What a run needs before it starts, checked without starting it: a registered env id and
    agent, on the env the method says, with env arguments the settings accept and agent
    arguments its factory accepts."""
    config = run.config
    where = f"{preset_name}: {config.run_dir}"
    assert config.env_id in ENV_IDS, where
    spec = get_policy(config.agent)  # ValueError naming the known agents
    # a method's label says per-sample or not: the runner must not switch envs behind it
    assert config.per_sample == run.method.per_sample, (
        f"{where}: {config.agent} runs on the {'per-sample' if config.per_sample else 'batch'} env"
    )
    env_kwargs = dict(config.env_kwargs)
    if spec.action_mode is not None:
        env_kwargs.setdefault("action_mode", spec.action_mode)  # as the runner sets it
    if config.per_sample:  # the per-sample env's own arguments (include_embeddings, logits, ...)
        env_kwargs = {name: value for name, value in env_kwargs.items() if name not in per_sample_arguments()}
    settings = KDEnvSettings.from_kwargs(**{**gym.spec(config.env_id).kwargs, **env_kwargs})
    assert settings.dataset == ENV_IDS[config.env_id], where
    inspect.signature(spec.factory).bind(None, seed=config.seed, **config.agent_kwargs)  # TypeError naming an unknown argument


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_plans_valid_runs(tmp_path, name):
    """Each preset's grid (and its transfer methods' pretraining) expands to runs that could start:
    checked without running them, so the GPU presets are checked on CPU too."""
    preset = PRESETS[name]
    gym.spec(preset.env_id)  # registered
    runs = sweep.plan(preset, tmp_path)
    assert len(runs) == len(preset.scenarios) * len(preset.students) * len(preset.methods) * len(preset.seeds)
    assert len({run.run_dir for run in runs}) == len(runs), "two runs share a folder"
    for run in runs + sweep.plan_pretraining(preset, tmp_path):
        _assert_valid_run(run, name)
    if len(preset.scenarios) > 1:
        labels = {method.label for method in preset.methods}
        assert {preset.baseline, preset.oracle} <= labels
        assert set(preset.control_scenarios) <= set(preset.scenarios)


def test_a_bad_preset_entry_fails_the_plan_check(tmp_path):
    """The check above catches what a preset can get wrong."""
    base = PRESETS["suite-synthetic"]
    for method, error in (
        (Method("typo", "aver", env_kwargs={"reward_mod": "neg_loss"}), "unknown environment argument"),
        (Method("bad value", "aver", env_kwargs={"reward_mode": "loss"}), "reward_mode must be one of"),
        (Method("unknown pool", "aver", env_kwargs={"pool": "nope"}), "nope"),
        (Method("bad agent argument", "mtkd-rl", per_sample=True, agent_kwargs={"dynamc": True}), "dynamc"),
        (Method("switched env", "mtkd-rl"), "per-sample"),
    ):
        preset = Preset(env_id=base.env_id, methods=[method], seeds=[0], env_kwargs=dict(base.env_kwargs))
        with pytest.raises((AssertionError, TypeError, ValueError), match=error):
            for run in sweep.plan(preset, tmp_path):
                _assert_valid_run(run, "bad")


@pytest.mark.slow
def test_kd_env_bench_runs_the_synthetic_suite_end_to_end(tmp_path, capsys):
    """``kd-env bench`` on the tiny synthetic preset: the scenario pools trained, the runs, the
    per-scenario tables, the normalised statistics, the leader comparison and the plots."""
    out = tmp_path / "out"
    # --env-arg reaches every run; teacher_store=true is the default, so the results are the preset's
    argv = ["bench", "--preset", "suite-synthetic", "--out", str(out), "--jobs", "2", "--no-progress", "--env-arg", "teacher_store=true"]
    assert main(argv) == 0
    output = capsys.readouterr().out
    assert (out / "results.md").read_text() in output and (out / "stats.md").read_text() in output

    preset = PRESETS["suite-synthetic"]
    runs = sweep.plan(preset, out, overrides={"teacher_store": True})
    assert all(json.loads((run.run_dir / "run.json").read_text())["env_kwargs"]["teacher_store"] is True for run in runs)
    rows = json.loads((out / "results.json").read_text())["rows"]
    _assert_rows_match_run_folders(rows, runs)
    _assert_tables_agree(out, rows)
    assert "### noisy" in output and "### specialists" in output

    by_key = {(row["scenario"], row["method"]): row for row in rows}
    oracle, aver = by_key[("specialists", "Oracle")], by_key[("specialists", "AVER")]
    assert oracle["test_acc_mean"] > aver["test_acc_mean"] + 5, (oracle, aver)
    stats_rows = json.loads((out / "stats.json").read_text())
    assert_csv_matches_json(out / "stats.csv", stats_rows)
    assert {row["method"] for row in stats_rows} == {"Oracle", "AVER", "CA-MKD (per-sample)"}
    aver_row = next(row for row in stats_rows if row["method"] == "AVER")
    assert abs(aver_row["mean"]) < 1e-9  # AVER scores 0 by definition of the normalised score
    oracle_row = next(row for row in stats_rows if row["method"] == "Oracle")
    assert np.isclose(oracle_row["mean"], 1.0)
    for name in ("val_acc.png", "weights.png", "interval_estimates.png", "performance_profiles.png"):
        assert_png(out / name)
    # the leading competitor (the only one here) against every other method, with paired CIs
    leader_rows = json.loads((out / "leader.json").read_text())
    assert {row["leader"] for row in leader_rows} == {"CA-MKD (per-sample)"}
    assert {row["versus"] for row in leader_rows} == {"Oracle", "AVER"}
    for row in leader_rows:
        assert row["iqm_difference_ci_low"] <= row["iqm_difference"] <= row["iqm_difference_ci_high"]
        assert row["leads"] == (row["iqm_difference_ci_low"] > 0)

    assert main(["bench", "--preset", "suite-synthetic", "--out", str(out), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_transfer_methods_pretrain_once_then_evaluate_frozen(tmp_path):
    """The transfer protocol: one pretraining run per scenario shared by the transfer rows, its
    seed never an evaluation seed; the evaluation runs load its policy and do not learn."""
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
