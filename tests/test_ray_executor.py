"""Sweep executors (issue #14): retries and failed-run reports (local), and the Ray executor on a
local 2-CPU Ray instance: the same table as the local executor, a killed worker retried, a killed
driver continued. The Ray tests are skipped where Ray is not installed (``pip install "kd-env[ray]"``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from processes import child_environment

from kd_env.cli import main
from kd_env.comparison import Method, Preset, run_benchmark, sweep

REPO = Path(__file__).resolve().parents[1]
ENV = "MultiTeacherKD-Synthetic-v0"
SHORT = {"epochs": 2, "max_steps_per_epoch": 5}
#: table columns that measure the machine rather than the method
MACHINE_COLUMNS = {"wall_time_s_mean", "peak_memory_mib_max"}


def _preset(methods: list[Method], seeds: list[int], env_kwargs: dict[str, Any] | None = None) -> Preset:
    return Preset(env_id=ENV, methods=methods, seeds=seeds, env_kwargs=dict(env_kwargs or SHORT), train_teachers=False)


def _processes(marker: str) -> list[tuple[int, int]]:
    """``(pid, parent pid)`` of live processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = dict(line.split(":\t", 1) for line in (entry / "status").read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if marker in command and not status.get("State", "").startswith("Z"):
            found.append((int(entry.name), int(status["PPid"])))
    return found


def _wait_until(condition: Any, what: str, tries: int = 1200, pause: float = 0.05) -> None:
    """Poll ``condition()`` until it holds (bounded: fails the test naming ``what``)."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(pause)
    pytest.fail(f"timed out waiting for {what}")


def _table(out: Path) -> list[dict[str, Any]]:
    """The rows of ``results.json`` without the columns that measure the machine."""
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{key: value for key, value in row.items() if key not in MACHINE_COLUMNS} for row in rows]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[ModuleType]:
    """A local Ray instance of 2 CPUs for this module's Ray tests (skipped without Ray)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------------ without Ray
def test_ray_asked_for_without_ray_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    assert main(["bench", "--preset", "suite-synthetic", "--out", str(tmp_path), "--executor", "ray", "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert 'pip install "kd-env[ray]"' in error and "--executor local" in error
    assert not (tmp_path / "runs").exists()  # nothing ran
    # the Ray-only options are refused with the local executor
    assert main(["bench", "--preset", "suite-synthetic", "--out", str(tmp_path), "--gpus-per-run", "0.5"]) == 2
    assert "--gpus-per-run only apply to --executor ray" in capsys.readouterr().err


def test_local_executor_retries_a_killed_run_from_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = sweep.plan(_preset([Method("AVER", "aver")], [0]), tmp_path, checkpoint_every=3)
    # the child SIGKILLs itself at its 8th update; the retry resumes from the checkpoint of update 6
    # and makes only 4 updates, so it is not killed again
    monkeypatch.setenv("KD_ENV_CRASH_AT", "step@8")
    executor = sweep.LocalExecutor(1, 1, retries=1)
    assert executor.run(runs, progress=False) == []
    assert executor.retry.attempts == {runs[0].run_dir: 1}
    assert "resuming the run" in (runs[0].run_dir / "log.txt").read_text()
    assert json.loads((runs[0].run_dir / "result.json").read_text())["env_steps"] == 10


def test_a_run_failing_every_attempt_is_reported_in_the_tables(tmp_path: Path) -> None:
    broken = Method("AVER broken", "aver", agent_kwargs={"no_such_argument": 1})  # fails in the child, every time
    preset = _preset([Method("AVER", "aver"), broken], [0])
    with pytest.raises(sweep.SweepFailedError, match="1 of 2 runs failed") as caught:
        run_benchmark(preset, tmp_path, progress=False, retries=1)
    assert [row["method"] for row in caught.value.rows] == ["AVER"]
    ((run, error),) = caught.value.failures
    assert run.method.label == "AVER broken" and "failed 2 attempt(s)" in error and "no_such_argument" in error
    report = json.loads((tmp_path / "results.json").read_text())
    assert [row["method"] for row in report["rows"]] == ["AVER"]
    assert [(row["method"], row["seed"]) for row in report["failed"]] == [("AVER broken", 0)]
    assert "no_such_argument" in report["failed"][0]["error"]
    markdown = (tmp_path / "results.md").read_text()
    assert "### Failed runs (1 of 2" in markdown and "| AVER broken |" in markdown and "no_such_argument" in markdown
    assert "| AVER | method |" in markdown  # the finished run keeps its row


# ------------------------------------------------------------------------------------ on Ray
def test_ray_executor_gives_the_local_table(tmp_path: Path, ray_cluster: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["bench", "--preset", "suite-synthetic", "--env-arg", "max_steps_per_epoch=2", "--threads", "1", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "local"), "--jobs", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--executor", "ray", "--cpus-per-run", "1"]) == 0
    assert "### noisy" in capsys.readouterr().out
    assert _table(tmp_path / "ray") == _table(tmp_path / "local")
    assert json.loads((tmp_path / "ray" / "stats.json").read_text()) == json.loads((tmp_path / "local" / "stats.json").read_text())
    local_runs = sorted((tmp_path / "local" / "runs").iterdir())
    assert [folder.name for folder in local_runs] == sorted(folder.name for folder in (tmp_path / "ray" / "runs").iterdir())
    for folder in local_runs:  # every run computed exactly the same, wherever it went
        local = json.loads((folder / "result.json").read_text())
        remote = json.loads((tmp_path / "ray" / "runs" / folder.name / "result.json").read_text())
        assert remote["episodes"] == local["episodes"] and remote["val_curve"] == local["val_curve"], folder.name
        assert list((tmp_path / "ray" / "runs" / folder.name / "tb").glob("events.*"))  # TensorBoard, in the shared folder
    assert "[ray] node" in (tmp_path / "ray" / "runs" / local_runs[0].name / "log.txt").read_text()


def test_ray_worker_killed_mid_run_is_retried_and_the_sweep_completes(tmp_path: Path, ray_cluster: ModuleType) -> None:
    from kd_env.comparison.ray_executor import RayExecutor

    runs = sweep.plan(_preset([Method("AVER", "aver")], [0], {"epochs": 2, "max_steps_per_epoch": 40}), tmp_path, checkpoint_every=3)
    run_dir = runs[0].run_dir
    executor = RayExecutor(retries=2)
    outcome: dict[str, Any] = {}
    sweep_thread = threading.Thread(target=lambda: outcome.update(failures=executor.run(runs, progress=False)))
    sweep_thread.start()
    try:
        marker = f"--run-one {run_dir.absolute()}"
        # mid-run: the child has written its first checkpoint
        _wait_until(lambda: (run_dir / "checkpoints" / "state.json").exists() and _processes(marker), "the run's first checkpoint")
        ((_child, worker),) = _processes(marker)
        os.kill(worker, signal.SIGKILL)  # the Ray worker running the task dies; its child follows
        checkpointed = json.loads((run_dir / "checkpoints" / "state.json").read_text())["env_steps"]
    finally:
        sweep_thread.join(timeout=600)
    assert outcome["failures"] == []
    assert executor.retry.attempts == {run_dir: 1}
    log = (run_dir / "log.txt").read_text()
    assert "resuming the run" in log and log.count("[ray] node") == 2
    result = json.loads((run_dir / "result.json").read_text())
    assert len(result["episodes"]) == 1 and result["env_steps"] > checkpointed  # it went on past the kill


def test_ray_driver_killed_mid_sweep_continues_with_the_same_command(tmp_path: Path, ray_cluster: ModuleType) -> None:
    from kd_env.comparison.ray_executor import RayExecutor

    env_kwargs = {"epochs": 2, "max_steps_per_epoch": 10}
    preset = _preset([Method("AVER", "aver")], [0, 1, 2], env_kwargs)
    address = ray_cluster.get_runtime_context().gcs_address
    driver = (
        "import sys\nfrom pathlib import Path\nfrom kd_env.comparison import Method, Preset, run_benchmark\n"
        "from kd_env.comparison.ray_executor import RayExecutor\n"
        f"preset = Preset(env_id={ENV!r}, methods=[Method('AVER', 'aver')], seeds=[0, 1, 2], env_kwargs={env_kwargs!r}, "
        "train_teachers=False)\n"
        f"run_benchmark(preset, Path(sys.argv[1]), progress=False, executor=RayExecutor(address={address!r}))\n"
    )
    # the driver SIGKILLs itself when its first run has finished, the second one still going
    environment = child_environment(KD_ENV_CRASH_AT="sweep:ray-run-finished")
    killed = subprocess.run(
        [sys.executable, "-c", driver, str(tmp_path)], env=environment, cwd=REPO, timeout=600, check=False, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    runs = sweep.plan(preset, tmp_path)
    finished = {run.run_dir: (run.run_dir / "result.json").stat().st_mtime_ns for run in runs if run.done}
    assert 1 <= len(finished) < len(runs)
    # Ray ends the dead driver's tasks, and their children with them
    _wait_until(lambda: not _processes(f"--run-one {tmp_path}"), "the dead driver's runs to stop")
    rows = run_benchmark(preset, tmp_path, progress=False, executor=RayExecutor())  # the same sweep again
    assert {run_dir: (run_dir / "result.json").stat().st_mtime_ns for run_dir in finished} == finished  # not rerun
    assert all(run.done for run in runs)
    ((row,),) = [rows]
    assert row["seeds"] == 3 and len(row["test_acc_per_seed"]) == 3
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
