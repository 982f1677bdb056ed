"""Reliability (issue #11): what survives a kill -9, a full disk, damaged files and bad arguments.

Kills are deterministic: a child process runs with ``$KD_ENV_CRASH_AT`` naming a crash point
(:func:`kd_env.utils.crash_point`), where it SIGKILLs itself, so each test stops a run at a chosen
instruction instead of at a moment chosen by a timer. A full disk is a writer that raises ENOSPC.
The README's "What survives what" table counts the cases of this module.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from processes import PIN_TORCH, child_environment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_env.run import CheckpointError, RunConfig, RunFolderBusyError, RunResult, train

ENV = "MultiTeacherKD-Synthetic-v0"
SHORT = {"epochs": 2, "max_steps_per_epoch": 5}
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ helpers
def _config(run_dir: Path, agent: str = "reinforce", **overrides: Any) -> dict[str, Any]:
    agent_kwargs = {"n_steps": 4} if agent == "reinforce" else {}
    config = {
        "env_id": ENV,
        "agent": agent,
        "run_dir": str(run_dir),
        "env_kwargs": SHORT,
        "agent_kwargs": agent_kwargs,
        "checkpoint_every": 3,
        "progress": False,
        "per_sample": agent in ("mtkd-rl",),
    }
    return {**config, **overrides}


def _run_killed(config: dict[str, Any], crash_at: str, resume: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``train`` in a child process that SIGKILLs itself at ``crash_at``; it must die there."""
    script = PIN_TORCH + (
        "import json, sys\nfrom kd_env.run import RunConfig, train\ntrain(RunConfig(**json.loads(sys.argv[1])), resume=sys.argv[2] == '1')"
    )
    environment = child_environment(KD_ENV_CRASH_AT=crash_at)
    process = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config), "1" if resume else "0"],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    return process


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return sorted((event.step, event.value) for event in events.Scalars(tag))


def _same_run(resumed: RunResult, straight: RunResult) -> None:
    assert resumed.env_steps == straight.env_steps
    assert resumed.episodes == straight.episodes
    assert resumed.val_curve == straight.val_curve
    assert resumed.weight_trajectory == straight.weight_trajectory


def _leftovers(run_dir: Path) -> list[str]:
    """Temporaries and unfinished checkpoint folders anywhere in a run folder."""
    return sorted(
        str(path.relative_to(run_dir))
        for path in run_dir.rglob("*")
        if path.name.endswith(".tmp") or path.name in (".checkpoints.incoming", ".checkpoints.old")
    )


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    """The uninterrupted runs the killed-and-resumed ones must equal."""
    root = tmp_path_factory.mktemp("straight")
    return {agent: train(RunConfig(**_config(root / agent, agent))) for agent in ("reinforce", "mtkd-rl")}


# ------------------------------------------------------------------------------------ item 2: checkpoints are one unit
@pytest.mark.parametrize(
    "agent, crash_at",
    [
        ("reinforce", "checkpoint:policy@2"),  # agent.pt of the 2nd checkpoint written, env.pt not
        ("reinforce", "checkpoint:env@2"),  # agent.pt and env.pt written, state.json not
        ("reinforce", "checkpoint:sealed@2"),  # all written and sealed, not yet in place
        ("reinforce", "checkpoint:swap@2"),  # between the two renames: no checkpoints/ at all
        ("mtkd-rl", "checkpoint:env@2"),
    ],
)
def test_kill_during_a_checkpoint_resumes_exactly(tmp_path, straight_runs, agent, crash_at):
    config = _config(tmp_path / "run", agent)
    _run_killed(config, crash_at)
    resumed = train(RunConfig(**{**config, "total_steps": None}), resume=True)
    _same_run(resumed, straight_runs[agent])
    assert _leftovers(tmp_path / "run") == []
    # one TensorBoard curve, each step once, the same values as the uninterrupted run
    assert [step for step, _ in _scalars(tmp_path / "run", "reward/mean")] == list(range(1, 11))
    if agent == "reinforce":
        from kd_env.agents import Reinforce

        agent_file = Reinforce.load(Path(config["run_dir"]) / "checkpoints" / "agent.pt")
        assert agent_file.num_updates == 2  # updates at steps 4 and 8, none lost or doubled


def test_kill_mid_write_leaves_no_temporary_behind(tmp_path, straight_runs):
    config = _config(tmp_path / "run")
    _run_killed(config, "atomic_write:env.pt@2")  # the temporary of the 2nd env.pt is written, not renamed
    assert any(name.endswith(".tmp") for name in _leftovers(tmp_path / "run"))
    # a stray temporary of an older version's flat checkpoint folder goes too
    stray = tmp_path / "run" / "checkpoints" / ".agent.zip.1234.abcd1234.tmp"
    stray.write_bytes(b"half a zip")
    resumed = train(RunConfig(**config), resume=True)
    _same_run(resumed, straight_runs["reinforce"])
    assert _leftovers(tmp_path / "run") == []


@pytest.mark.parametrize("crash_at", ["step@7", "step@2"])  # after a checkpoint (step 6) / before the first
def test_kill_between_checkpoints_duplicates_no_logged_point(tmp_path, straight_runs, crash_at):
    config = _config(tmp_path / "run")
    _run_killed(config, crash_at)
    resumed = train(RunConfig(**config), resume=True)
    _same_run(resumed, straight_runs["reinforce"])
    points = _scalars(tmp_path / "run", "reward/mean")
    assert [step for step, _ in points] == list(range(1, 11))


def test_resume_on_another_thread_count_warns_once_naming_both(tmp_path):
    import warnings

    from kd_env.run import ThreadCountWarning

    config = _config(tmp_path / "run")
    train(RunConfig(**{**config, "total_steps": 6}))  # conftest: one torch thread
    assert json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["torch_threads"] == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(RunConfig(**{**config, "total_steps": 8}), resume=True)  # same count: silent
    assert [w for w in caught if issubclass(w.category, ThreadCountWarning)] == []
    torch.set_num_threads(2)  # conftest puts it back after the test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(RunConfig(**{**config, "total_steps": 10}), resume=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, ThreadCountWarning)]
    assert len(messages) == 1 and "written with 1 torch thread(s) on 2" in messages[0] and "--threads 1" in messages[0]
    assert json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["torch_threads"] == 2


def test_full_disk_during_a_checkpoint_keeps_the_last_one(tmp_path, straight_runs, monkeypatch):
    import kd_env.envs.core as core

    real_write = core.write_checkpoint
    calls = {"n": 0}

    def full_disk(path: Any, format: str, payload: Any) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:  # the 2nd checkpoint's env.pt: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, format, payload)

    monkeypatch.setattr(core, "write_checkpoint", full_disk)
    config = _config(tmp_path / "run")
    with pytest.raises(OSError, match="No space left"):
        train(RunConfig(**config))
    assert json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["env_steps"] == 3
    assert _leftovers(tmp_path / "run") == []
    monkeypatch.setattr(core, "write_checkpoint", real_write)  # space freed
    _same_run(train(RunConfig(**config), resume=True), straight_runs["reinforce"])


def test_damaged_checkpoint_is_refused_by_name(tmp_path):
    config = _config(tmp_path / "run")
    train(RunConfig(**{**config, "total_steps": 6}))
    env_file = tmp_path / "run" / "checkpoints" / "env.pt"
    data = bytearray(env_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    env_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="env.pt differs"):
        train(RunConfig(**config), resume=True)


def test_a_run_folder_is_locked(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderBusyError, match="in use by another process"):
            train(RunConfig(**_config(run_dir)))
    train(RunConfig(**_config(run_dir, total_steps=2)))  # released: the run goes


# ------------------------------------------------------------------------------------ item 5: divergence
def test_huge_raw_action_is_rolled_back_as_divergence():
    import gymnasium as gym

    env = gym.make(ENV, action_mode="raw", **SHORT).unwrapped
    env.reset(seed=0)
    before = {k: v.clone() for k, v in env.engine.student.state_dict().items()}
    _, reward, terminated, _, info = env.step(np.full(env.action_space.shape, 1e30, dtype=np.float32))
    assert info["diverged"] is True and terminated and np.isfinite(reward)
    for key, value in env.engine.student.state_dict().items():
        assert torch.equal(value, before[key]), key  # the update was rolled back
    tensors = [*env.engine.student.state_dict().values(), *env.engine.adapters.state_dict().values()]
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


@pytest.mark.parametrize("per_sample", [False, True])
def test_diverging_run_writes_its_result(tmp_path, per_sample):
    config = RunConfig(
        ENV,
        "reinforce",
        str(tmp_path / "run"),
        per_sample=per_sample,
        env_kwargs={**SHORT, "lr": 1e6},
        agent_kwargs={"n_steps": 4},
        progress=False,
    )
    result = train(config)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result.env_steps == 10 and saved["env_steps"] == 10
    assert any(episode.get("diverged") for episode in result.episodes)
    for name in ("reward/mean", "loss/total"):
        assert all(np.isfinite(value) for _, value in _scalars(tmp_path / "run", name))


# ------------------------------------------------------------------------------------ item 4: the sweep
def _sweep_runs(out: Path, checkpoint_every: int = 3) -> list[Any]:
    from kd_env.comparison import Method, Preset, sweep

    preset = Preset(
        env_id=ENV,
        methods=[Method("REINFORCE", "reinforce", agent_kwargs={"n_steps": 4})],
        seeds=[0],
        env_kwargs=SHORT,
        train_teachers=False,
    )
    return sweep.plan(preset, out, checkpoint_every=checkpoint_every)


def _processes_running(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if marker in command and "zombie" not in state:
                pids.append(int(entry.name))
    return pids


def _wait_for_exit(pids: list[int], timeout_s: float) -> None:
    """Block until each of ``pids`` has ended (a process of ours or not); fail after ``timeout_s``."""
    import select

    for pid in pids:
        try:
            descriptor = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone
        try:
            readable, _, _ = select.select([descriptor], [], [], timeout_s)
            assert readable, f"process {pid} still runs {timeout_s} s after its parent was killed"
        finally:
            os.close(descriptor)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killed_sweep_takes_its_child_down_and_the_rerun_finishes_once(tmp_path, straight_runs):
    from kd_env.comparison import sweep

    runs = _sweep_runs(tmp_path)
    script = PIN_TORCH + (
        "import sys\nfrom pathlib import Path\nfrom kd_env.comparison import Method, Preset, sweep\n"
        f"preset = Preset(env_id={ENV!r}, methods=[Method('REINFORCE', 'reinforce', agent_kwargs={{'n_steps': 4}})], "
        f"seeds=[0], env_kwargs={SHORT!r}, train_teachers=False)\n"
        "sweep.LocalExecutor(1, 1).run(sweep.plan(preset, Path(sys.argv[1]), checkpoint_every=3), progress=False)"
    )
    environment = child_environment(KD_ENV_CRASH_AT="sweep:child-started")
    parent = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=environment, cwd=REPO, timeout=600)
    assert parent.returncode == -signal.SIGKILL  # the sweep was killed right after starting its child
    marker = f"--run-one {runs[0].run_dir}"
    # the child gets SIGTERM from the kernel when its parent dies: wait for its exit itself (a
    # pidfd becomes readable when the process ends), not for a guessed number of polls
    _wait_for_exit(_processes_running(marker), timeout_s=120)
    assert _processes_running(marker) == []
    assert sweep.LocalExecutor(1, 1).run(runs, progress=False) == []
    result = json.loads((runs[0].run_dir / "result.json").read_text())
    assert result["episodes"] == straight_runs["reinforce"].episodes
    assert [step for step, _ in _scalars(runs[0].run_dir, "reward/mean")] == list(range(1, 11))


def test_sweep_run_killed_mid_run_resumes_from_its_checkpoint(tmp_path, straight_runs, monkeypatch):
    from kd_env.comparison import sweep

    runs = _sweep_runs(tmp_path)
    assert runs[0].config.checkpoint_every == 3
    monkeypatch.setenv("KD_ENV_CRASH_AT", "step@8")  # the child dies after logging step 8
    failures = sweep.LocalExecutor(1, 1).run(runs, progress=False)
    assert len(failures) == 1 and "exit -9" in failures[0][1]
    assert json.loads((runs[0].run_dir / "checkpoints" / "state.json").read_text())["env_steps"] == 6
    monkeypatch.delenv("KD_ENV_CRASH_AT")
    assert sweep.LocalExecutor(1, 1).run(runs, progress=False) == []
    assert "resuming the run" in (runs[0].run_dir / "log.txt").read_text()
    result = json.loads((runs[0].run_dir / "result.json").read_text())
    assert result["episodes"] == straight_runs["reinforce"].episodes
    assert result["val_curve"] == [list(point) for point in straight_runs["reinforce"].val_curve]
    assert [step for step, _ in _scalars(runs[0].run_dir, "reward/mean")] == list(range(1, 11))


def test_sweep_refuses_a_second_process_on_a_run_folder(tmp_path):
    from kd_env.comparison import sweep

    runs = _sweep_runs(tmp_path)
    runs[0].run_dir.mkdir(parents=True)
    with open(runs[0].run_dir / ".lock", "w") as holder:  # a still-running orphan holds the folder
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        failures = sweep.LocalExecutor(1, 1).run(runs, progress=False)
    assert len(failures) == 1 and "in use by another process" in failures[0][1]
    assert not (runs[0].run_dir / "tb").exists()  # it wrote nothing


# ------------------------------------------------------------------------------------ item 8: teacher checkpoints
def _teacher_file(cache: Path) -> Path:
    from kd_env.models import create_model
    from kd_env.teachers import save_teacher, teacher_path

    torch.manual_seed(0)
    model = create_model("mlp", 10, 1, image_size=8)
    path = teacher_path("mlp", "synthetic", 0, cache)
    meta = {
        "arch": "mlp",
        "dataset": "synthetic",
        "num_classes": 10,
        "in_channels": 1,
        "model_kwargs": {"image_size": 8},
        "epochs": 1,
        "seed": 0,
        "test_acc": 0.5,
    }
    return save_teacher(model, path, meta)


@pytest.mark.parametrize("damage", ["random bytes", "foreign pickle", "flipped weights"])
def test_damaged_teacher_gives_a_fix_that_works(tmp_path, capsys, damage):
    from kd_env.cli import main
    from kd_env.teachers import TeacherCheckpointError, load_teacher

    path = _teacher_file(tmp_path)
    if damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "foreign pickle":
        torch.save({"model": torch.nn.Linear(2, 2)}, path)
    else:
        checkpoint = torch.load(path, weights_only=True)
        first = next(iter(checkpoint["state_dict"]))
        checkpoint["state_dict"][first].view(-1)[0] += 1.0
        torch.save(checkpoint, path)
    with pytest.raises(TeacherCheckpointError) as caught:
        load_teacher(path)
    assert "kd-env teachers train" in str(caught.value) and "--force" in str(caught.value)
    # the listing does not call it healthy, and says why
    assert main(["teachers", "list", "--cache-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "CORRUPT" in captured.out and "--force" in captured.err
    # the advised command without --force refuses to skip it silently
    assert main(["teachers", "train", "--dataset", "synthetic", "--arch", "mlp", "--cache-dir", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err


def test_unreadable_teacher_is_named_a_permission_problem(tmp_path, monkeypatch, capsys):
    from kd_env.cli import main
    from kd_env.teachers import TeacherPermissionError, load_teacher

    path = _teacher_file(tmp_path)

    def denied(*args: Any, **kwargs: Any) -> Any:  # what a non-root user gets for a 0600 file of root's
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(TeacherPermissionError, match="permission denied") as caught:
        load_teacher(path)
    assert "corrupt" not in str(caught.value) and "chmod" in str(caught.value)
    assert main(["teachers", "list", "--cache-dir", str(tmp_path)]) == 1
    assert "UNREADABLE" in capsys.readouterr().out
    assert path.exists()  # nothing deleted


# ------------------------------------------------------------------------------------ item 9: the CLI
def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    from kd_env.cli import main

    status = main(argv)
    captured = capsys.readouterr()
    assert status != 0, captured
    assert "Traceback" not in captured.err
    assert captured.err.startswith("error: ")
    return captured.err


def test_cli_errors_are_one_message_without_traceback(tmp_path, capsys, monkeypatch):
    from kd_env.cli import main

    train = ["train", "--env", ENV, "--agent", "aver", "--no-progress", "--run-dir"]
    error = _cli_error(capsys, [*train, str(tmp_path / "a"), "--env-arg", "no_such_argument=1"])
    assert "unknown environment argument(s) ['no_such_argument']" in error and len(error.strip().splitlines()) == 1
    # a read-only or full disk, as the OS reports it
    import kd_env.run as run

    for code, words in ((errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"), (errno.ENOSPC, "no space left")):

        def refuse(*args: Any, code: int = code, **kwargs: Any) -> None:
            raise OSError(code, os.strerror(code), str(tmp_path / "b" / "run.json"))

        monkeypatch.setattr(run, "_write_json", refuse)
        error = _cli_error(capsys, [*train, str(tmp_path / "b")])
        assert error.startswith(f"error: {words}") and "Fix:" in error and len(error.strip().splitlines()) == 1
    monkeypatch.undo()
    # --debug shows the traceback instead
    with pytest.raises(TypeError, match="no_such_argument"):
        main(["--debug", *train, str(tmp_path / "c"), "--env-arg", "no_such_argument=1"])


# ------------------------------------------------------------------------------------ items 6, 7: dataset files
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _release_folder() -> Path:
    """The release's four uncompressed files, wherever the finder finds them for this user
    (Debian's folder, $KD_ENV_DATA or the user's cache: tests/conftest.py passes it on), never a
    skip: without the data `make test` is not run as the README says (`make data` first)."""
    from kd_env.data import DatasetNotFoundError, find_data_root

    try:
        return find_data_root("fashion_mnist") / "FashionMNIST" / "raw"
    except DatasetNotFoundError as exc:
        pytest.fail(f"Fashion-MNIST is missing: `make data` (which `make test` runs) puts it in place ({exc})")


@pytest.fixture()
def fashion_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of links to the release's four files, a private cache, no other place to look."""
    from kd_env.data import sources

    release = _release_folder()  # before the private cache hides the user's
    monkeypatch.setenv("KD_ENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KD_ENV_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", {})
    folder = tmp_path / "fashion"
    folder.mkdir()
    for name in FASHION_FILES:
        (folder / name).symlink_to(release / name)
    return folder


def _replace_with(folder: Path, name: str, content: bytes, compressed: bool = True) -> None:
    """Put ``content`` in place of the link to the release's ``<name>`` (as ``<name>.gz`` if
    compressed)."""
    (folder / name).unlink()
    (folder / (f"{name}.gz" if compressed else name)).write_bytes(content)


def test_fashion_mnist_with_flipped_pixels_is_refused(fashion_folder):
    from kd_env.data import load_dataset
    from kd_env.data.sources import DataFileError

    pixels = bytearray((fashion_folder / "train-images-idx3-ubyte").read_bytes())
    flipped = np.random.default_rng(0).choice(np.arange(16, len(pixels)), 100_000, replace=False)
    for index in flipped:
        pixels[index] ^= 0xFF
    _replace_with(fashion_folder, "train-images-idx3-ubyte", bytes(pixels), compressed=False)
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte differs from the Fashion-MNIST release") as caught:
        load_dataset("fashion_mnist", fashion_folder)
    assert "Fix:" in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated .gz", "not gzip", "truncated idx"])
def test_damaged_fashion_mnist_file_is_named(fashion_folder, capsys, damage):
    import gzip

    from kd_env.cli import main
    from kd_env.data import load_dataset
    from kd_env.data.sources import DataFileError

    name = "t10k-labels-idx1-ubyte"
    raw = (fashion_folder / name).read_bytes()
    if damage == "truncated .gz":
        compressed = gzip.compress(raw)
        _replace_with(fashion_folder, name, compressed[: len(compressed) // 2])
    elif damage == "not gzip":
        _replace_with(fashion_folder, name, b"\x1f\x8b" + bytes(range(256)) * 10)
    else:
        _replace_with(fashion_folder, name, raw[:5000], compressed=False)
    with pytest.raises(DataFileError) as caught:
        load_dataset("fashion_mnist", fashion_folder)
    message = str(caught.value)
    assert (name in message or "FashionMNIST/raw" in message) and "Fix:" in message
    assert main(["data", "fetch", "fashion_mnist", "--data-root", str(fashion_folder)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "Traceback" not in error and len(error.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ item 10: arguments
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"epochs": -1}, "epochs must be an integer >= 1"),
        ({"epochs": "1"}, "epochs must be an integer >= 1"),
        ({"epochs": "abc"}, "epochs must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_steps_per_epoch": -3}, "max_steps_per_epoch"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"lr": "abc"}, "lr must be a finite number"),
        ({"scale": float("nan")}, "scale must be a finite number"),
        ({"probe_size": 0}, "probe_size must be an integer >= 1"),
        ({"state_parts": ["performnce"]}, "state_parts"),
        ({"state_parts": []}, "state_parts must be a non-empty list"),
        ({"teachers": "mlp"}, "teachers must be a non-empty list"),
        ({"student": "nope"}, "student must be a zoo model"),
        ({"no_such_argument": 1}, "unknown environment argument"),
    ],
)
def test_bad_env_arguments_are_refused_by_name(kwargs, message):
    import gymnasium as gym

    with pytest.raises((ValueError, TypeError), match=message):
        gym.make(ENV, **{**SHORT, **kwargs})


@pytest.mark.parametrize("num_envs", [0, -4])
def test_per_sample_num_envs_must_be_positive(num_envs):
    import gymnasium as gym

    with pytest.raises(ValueError, match="num_envs is the batch size"):
        gym.make_vec(ENV, num_envs=num_envs, vectorization_mode="vector_entry_point", **SHORT)


def test_bad_env_argument_from_the_cli_is_one_line(tmp_path, capsys):
    train = ["train", "--env", ENV, "--agent", "aver", "--no-progress", "--run-dir", str(tmp_path / "run")]
    for pair, message in (("epochs=abc", "epochs must be an integer"), ("lr=abc", "lr must be a finite number")):
        error = _cli_error(capsys, [*train, "--env-arg", pair])
        assert message in error and len(error.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ item 1: SB3 resume
def test_ppo_killed_and_resumed_equals_the_uninterrupted_run(tmp_path):
    """Within a rollout (the default n_steps 32 spans this whole 10-step run) a resumed PPO run is
    the uninterrupted one: VecNormalize keeps training and the global RNGs are restored."""
    config = _config(tmp_path / "killed", "ppo")
    straight = train(RunConfig(**{**config, "run_dir": str(tmp_path / "straight")}))
    _run_killed(config, "step@8")  # after the checkpoint of step 6
    _same_run(train(RunConfig(**config), resume=True), straight)


def test_ppo_resume_loses_the_rollout_in_progress(tmp_path):
    """What differs (README): SB3 keeps no rollout in a checkpoint, so a resumed run starts a new
    rollout at the checkpoint's step. With n_steps=4 and a checkpoint at step 6 (inside the
    rollout of steps 5-8), the actions are identical through step 8 and differ after the update
    the uninterrupted run makes at step 8 and the resumed one at step 10."""
    config = _config(tmp_path / "stopped", "ppo", agent_kwargs={"n_steps": 4, "batch_size": 4})
    straight = train(RunConfig(**{**config, "run_dir": str(tmp_path / "straight")}))
    train(RunConfig(**{**config, "total_steps": 6}))
    resumed = train(RunConfig(**{**config, "total_steps": 10}), resume=True)
    assert resumed.weight_trajectory[:8] == straight.weight_trajectory[:8]
    assert resumed.weight_trajectory[8:] != straight.weight_trajectory[8:]
    assert resumed.env_steps == straight.env_steps and len(resumed.episodes) == len(straight.episodes) == 1
