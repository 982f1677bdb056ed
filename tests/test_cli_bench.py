"""The command line and the benchmark sweep, end to end on the synthetic env."""

from __future__ import annotations

import json

import pytest

from kd_env import bench
from kd_env.bench import Method, Preset, run_benchmark
from kd_env.cli import main


def test_cli_train_and_resume(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    args = ["train", "--env", "MultiTeacherKD-Synthetic-v0", "--agent", "camkd", "--run-dir", run_dir,
            "--env-arg", "epochs=1", "--env-arg", "max_steps_per_epoch=4", "--no-progress"]
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
    with pytest.raises(SystemExit):
        main(["train", "--agent", "not-an-agent"])
    with pytest.raises(SystemExit, match="key=value"):
        main(["train", "--agent", "aver", "--env-arg", "epochs"])


def test_bench_sweep_tables_plots_and_resume(tmp_path, monkeypatch):
    preset = Preset(
        env_id="MultiTeacherKD-Synthetic-v0",
        methods=[Method("AVER", "aver"), Method("EBKD per-sample", "ebkd", per_sample=True)],
        seeds=[0, 1],
        env_kwargs={"epochs": 2, "max_steps_per_epoch": 3},
    )
    rows = run_benchmark(preset, tmp_path, progress=False)
    assert {row["method"] for row in rows} == {"AVER", "EBKD per-sample"}
    for row in rows:
        assert row["seeds"] == 2 and len(row["test_acc_per_seed"]) == 2 and row["test_acc_std"] >= 0
    for name in ("results.md", "results.csv", "results.json", "val_acc.png", "weights.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "+-" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    assert len(list((tmp_path / "runs").glob("*/tb/events.*"))) == 4

    def fail(config):
        raise AssertionError(f"{config.run_dir} ran again")

    monkeypatch.setattr(bench, "_run_in_subprocess", fail)  # finished runs are not run again
    assert run_benchmark(preset, tmp_path, progress=False) == rows
