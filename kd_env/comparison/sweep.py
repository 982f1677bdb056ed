"""Running a preset: plan the runs, train the scenarios' teachers, run every run, write the report.

``kd-env bench --preset NAME --out DIR`` (or :func:`run_benchmark`) runs every cell of a preset,
each run in its own process (so each run's peak memory is its own and a crash stops only that
run), ``jobs`` at a time with the machine's cores divided among them. Every method trains one
student per cell for the same budget; the number reported per run is the test accuracy of the
student with the best *validation* accuracy (the test set is never used to choose anything).

A run folder is the unit of resume: a run with a ``result.json`` is done and is not run again;
an interrupted sweep continues with the same command, and a run that was stopped continues from
its last checkpoint (runs checkpoint every :data:`SWEEP_CHECKPOINT_EVERY` updates). Each run holds
its folder's lock while it goes (a second process on it is refused, see :func:`kd_env.run.train`),
and children die with the sweep, even when the sweep is killed (``PR_SET_PDEATHSIG`` on Linux).
The tables and plots are always rebuilt from the run folders (:mod:`kd_env.comparison.report`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from kd_env.comparison.planned import DEFAULT_RETRIES, Executor, PlannedRun, RetryPolicy, die_with_parent
from kd_env.comparison.presets import Method, Preset
from kd_env.comparison.shipped import PRESETS
from kd_env.run import RunConfig
from kd_env.utils import crash_point

#: Student updates between a sweep run's checkpoints: a killed run loses at most this many
#: (a Fashion-MNIST epoch of batch 128 is 421 updates; a checkpoint costs well under a second).
SWEEP_CHECKPOINT_EVERY = 100


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def run_name(method: Method, scenario: str | None, student: str | None, seed: int) -> str:
    """``<scenario>__<method>__<student>__seed<n>`` (absent parts left out)."""
    parts = [scenario, _slug(method.label), student, f"seed{seed}"]
    return "__".join(part for part in parts if part)


def _imports(preset: Preset, out: Path, imports: list[str] | None) -> list[str]:
    """What every run imports: the preset's modules, the caller's, and the sweep's ``spec.yaml``
    when the preset declares pools of its own (the run's process registers them from it)."""
    from kd_env.comparison.spec import SPEC_FILE

    spec_file = [str((out / SPEC_FILE).resolve())] if preset.pools else []
    return list(dict.fromkeys([*preset.imports, *(imports or []), *spec_file]))


def _env_kwargs(
    preset: Preset, method: Method, scenario: str | None, student: str | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    per_student = method.student_env_kwargs.get(student, {}) if student else {}
    env_kwargs = {**preset.env_kwargs, **method.env_kwargs, **per_student, **(overrides or {})}
    if student:
        env_kwargs["student"] = student
    if scenario:
        env_kwargs["pool"] = scenario
    return env_kwargs


def planned_run(
    preset: Preset,
    method: Method,
    scenario: str | None,
    student: str | None,
    run_dir: Path,
    *,
    seed: int,
    out: Path,
    env_kwargs: dict[str, Any] | None = None,
    agent_kwargs: dict[str, Any] | None = None,
    student_runs: int = 1,
    overrides: dict[str, Any] | None = None,
    imports: list[str] | None = None,
    checkpoint_every: int = SWEEP_CHECKPOINT_EVERY,
    tensorboard: bool = True,
) -> PlannedRun:
    """One run of ``method`` on ``scenario`` x ``student`` as every sweep starts it (its own
    process, no progress bar, the preset's imports); ``env_kwargs`` / ``agent_kwargs`` default to
    the method's on that cell."""
    config = RunConfig(
        env_id=preset.env_id,
        agent=method.agent,
        run_dir=str(run_dir),
        per_sample=method.per_sample,
        env_kwargs=_env_kwargs(preset, method, scenario, student, overrides) if env_kwargs is None else env_kwargs,
        agent_kwargs=dict(method.agent_kwargs) if agent_kwargs is None else agent_kwargs,
        seed=seed,
        student_runs=student_runs,
        checkpoint_every=checkpoint_every,
        progress=False,
        tensorboard=tensorboard,
        imports=_imports(preset, out, imports),
    )
    return PlannedRun(method, scenario, student, config)


def pretraining_chain(
    preset: Preset,
    method: Method,
    scenario: str | None,
    student: str | None,
    out: Path,
    overrides: dict[str, Any] | None = None,
    imports: list[str] | None = None,
    checkpoint_every: int = SWEEP_CHECKPOINT_EVERY,
) -> list[PlannedRun]:
    """The runs that train a transfer method's policy for ``scenario``, in order: one run over
    ``pretrain.student_runs`` student runs (its own seed, never one of the evaluation seeds), or,
    with ``leave_one_pool_out``, one such run per other scenario, each starting from the policy
    the one before saved. Runs with the same training share them (the same folder)."""
    assert method.pretrain is not None
    pretrain = method.pretrain
    if pretrain.leave_one_pool_out:
        pools: list[str | None] = [pool for pool in preset.scenarios if pool != scenario]
        if not pools:
            raise ValueError(f"{method.label}: leave_one_pool_out needs at least two scenarios, got {list(preset.scenarios)}")
    else:
        pools = [scenario]
    chain: list[PlannedRun] = []
    for position, pool in enumerate(pools):
        env_kwargs = {**_env_kwargs(preset, method, pool, student, overrides), **pretrain.env_kwargs}
        agent_kwargs = dict(method.agent_kwargs)
        if chain:  # carry the policy on: the previous pool's saved agent, still learning
            agent_kwargs.update(policy_path=str(chain[-1].run_dir / "checkpoints" / "agent.pt"), learn=True)
        # the identity names everything the trained policy depends on (the chain so far too)
        parts: list[Any] = [method.agent, method.per_sample, env_kwargs, pretrain.student_runs, pretrain.seed]
        if pretrain.leave_one_pool_out:
            parts += [method.agent_kwargs, "leave-out", scenario, pools[: position + 1]]
        identity = json.dumps(parts, sort_keys=True)
        tag = "pretrain-" + hashlib.sha256(identity.encode()).hexdigest()[:10]
        if pretrain.leave_one_pool_out:
            tag = f"without-{scenario}__{position}-{pool}__{tag}"
        name = "__".join(part for part in ((None if pretrain.leave_one_pool_out else scenario), student, method.agent, tag) if part)
        run_dir = out / "pretrain" / name
        chain.append(
            planned_run(
                preset,
                method,
                pool,
                student,
                run_dir,
                seed=pretrain.seed,
                out=out,
                env_kwargs=env_kwargs,
                agent_kwargs=agent_kwargs,
                student_runs=pretrain.student_runs,
                imports=imports,
                checkpoint_every=checkpoint_every,
            )
        )
    return chain


def pretraining_run(
    preset: Preset,
    method: Method,
    scenario: str | None,
    student: str | None,
    out: Path,
    overrides: dict[str, Any] | None = None,
    imports: list[str] | None = None,
    checkpoint_every: int = SWEEP_CHECKPOINT_EVERY,
) -> PlannedRun:
    """The run that saves the policy a transfer method evaluates on ``scenario``: the last of its
    :func:`pretraining_chain`."""
    return pretraining_chain(preset, method, scenario, student, out, overrides, imports, checkpoint_every)[-1]


def plan(
    preset: Preset,
    out: Path,
    overrides: dict[str, Any] | None = None,
    imports: list[str] | None = None,
    checkpoint_every: int = SWEEP_CHECKPOINT_EVERY,
) -> list[PlannedRun]:
    """Every run of a preset, in a stable order (method, scenario, student, seed: a sweep cut
    short has whole methods, every scenario and seed of each); each run checkpoints every
    ``checkpoint_every`` updates (and at its end). A transfer method's runs evaluate, frozen, the
    policy its :func:`pretraining_run` saves."""
    runs = []
    for method in preset.methods:
        for scenario in preset.scenarios:
            for student in preset.students:
                agent_kwargs = dict(method.agent_kwargs)
                if method.pretrain is not None:
                    trained = pretraining_run(preset, method, scenario, student, out, overrides, imports, checkpoint_every)
                    agent_kwargs.update(policy_path=str(trained.run_dir / "checkpoints" / "agent.pt"), learn=False)
                for seed in preset.seeds:
                    run_dir = out / "runs" / run_name(method, scenario, student, seed)
                    runs.append(
                        planned_run(
                            preset,
                            method,
                            scenario,
                            student,
                            run_dir,
                            seed=seed,
                            out=out,
                            agent_kwargs=agent_kwargs,
                            overrides=overrides,
                            imports=imports,
                            checkpoint_every=checkpoint_every,
                        )
                    )
    return runs


def plan_pretraining_stages(
    preset: Preset,
    out: Path,
    overrides: dict[str, Any] | None = None,
    imports: list[str] | None = None,
    checkpoint_every: int = SWEEP_CHECKPOINT_EVERY,
) -> list[list[PlannedRun]]:
    """The distinct pretraining runs of a preset's transfer methods, in stages: stage ``i`` holds
    the ``i``-th run of every chain (:func:`pretraining_chain`), so a stage's runs can go at once
    and each starts from a policy an earlier stage saved."""
    stages: list[dict[Path, PlannedRun]] = []
    for scenario in preset.scenarios:
        for student in preset.students:
            for method in preset.methods:
                if method.pretrain is not None:
                    chain = pretraining_chain(preset, method, scenario, student, out, overrides, imports, checkpoint_every)
                    for position, run in enumerate(chain):
                        if position == len(stages):
                            stages.append({})
                        stages[position].setdefault(run.run_dir, run)
    return [list(stage.values()) for stage in stages]


def plan_pretraining(
    preset: Preset,
    out: Path,
    overrides: dict[str, Any] | None = None,
    imports: list[str] | None = None,
    checkpoint_every: int = SWEEP_CHECKPOINT_EVERY,
) -> list[PlannedRun]:
    """The distinct pretraining runs of a preset's transfer methods (run before the others), in
    the order of :func:`plan_pretraining_stages`."""
    return [run for stage in plan_pretraining_stages(preset, out, overrides, imports, checkpoint_every) for run in stage]


def prepare_teachers(preset: Preset, overrides: dict[str, Any] | None = None) -> None:
    """Train the scenarios' missing teachers once, before the runs (runs never train teachers,
    so parallel runs cannot race to build the same checkpoint)."""
    if not preset.train_teachers:
        return
    import gymnasium as gym

    from kd_env.data import load_dataset
    from kd_env.envs import ENV_IDS, KDEnvSettings
    from kd_env.teachers import ensure_pool

    dataset = ENV_IDS.get(preset.env_id)
    if dataset is None:
        return
    base = {**preset.env_kwargs, **(overrides or {})}
    settings = KDEnvSettings.from_kwargs(**{**gym.spec(preset.env_id).kwargs, **base, "dataset": dataset})
    splits = load_dataset(
        dataset,
        settings.data_root,
        download=settings.download,
        val_fraction=settings.val_fraction,
        split_seed=settings.split_seed,
        verify_checksums=settings.verify_checksums,
        **settings.synthetic,
    )
    for scenario in preset.scenarios:
        ensure_pool(scenario or "capacity", splits, seed=settings.teacher_seed, cache_dir=settings.cache_dir, train_missing=True)


# ------------------------------------------------------------------------------------ executors
class SweepFailedError(RuntimeError):
    """Some runs failed every attempt. The report was written all the same (``rows`` of the
    finished runs; the failed ones listed with their errors); rerunning the command retries them."""

    def __init__(self, message: str, rows: list[dict[str, Any]], failures: list[tuple[PlannedRun, str]]) -> None:
        super().__init__(message)
        self.rows = rows
        self.failures = failures


class LocalExecutor:
    """Runs planned runs as child processes on this machine, ``jobs`` at once.

    Each child gets ``threads`` torch threads (``OMP_NUM_THREADS`` and ``--threads``): the cores
    divided among the runs, since oversubscribed threads are what makes a loaded CPU crawl.
    Children die with the sweep: they are terminated if the parent is interrupted. A failed run is
    tried ``retries`` more times (:class:`RetryPolicy`; :func:`run_benchmark` and ``kd-env bench``
    pass :data:`DEFAULT_RETRIES`).
    """

    def __init__(self, jobs: int = 1, threads: int | None = None, retries: int = 0) -> None:
        from kd_env.utils import threads_per_run

        self.jobs = max(1, int(jobs))
        self.threads = threads or threads_per_run(self.jobs)
        self.retry = RetryPolicy(retries)

    def _start(self, run: PlannedRun) -> subprocess.Popen[bytes]:
        from kd_env.utils import thread_environment

        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "bench_config.json").write_text(json.dumps(asdict(run.config), indent=1))
        environment = thread_environment(self.threads)
        log = (run.run_dir / "log.txt").open("ab")
        command = [sys.executable, "-m", "kd_env.comparison", "--run-one", str(run.run_dir), "--threads", str(self.threads)]
        try:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, preexec_fn=die_with_parent(os.getpid()))
        finally:
            log.close()

    def run(self, runs: list[PlannedRun], progress: bool = True, description: str = "bench") -> list[tuple[PlannedRun, str]]:
        """Run every run that is not done; returns ``(run, error)`` for the runs that failed."""
        from tqdm.auto import tqdm

        todo = [run for run in runs if not run.done]
        failures: list[tuple[PlannedRun, str]] = []
        running: dict[subprocess.Popen[bytes], PlannedRun] = {}
        bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=description, unit="run", disable=not progress)
        shown_postfix = ""
        try:
            while todo or running:
                while todo and len(running) < self.jobs:
                    run = todo.pop(0)
                    running[self._start(run)] = run
                    crash_point("sweep:child-started")
                postfix = f"running {len(running)}, failed {len(failures)}"
                if postfix != shown_postfix:  # only on a change: each call redraws (a line in a log file)
                    bar.set_postfix_str(postfix)
                    shown_postfix = postfix
                finished = [process for process in running if process.poll() is not None]
                if not finished:
                    time.sleep(0.2)
                    continue
                for process in finished:
                    run = running.pop(process)
                    if process.returncode != 0 or not run.done:
                        tail = (run.run_dir / "log.txt").read_text(errors="replace")[-1500:]
                        failure = self.retry.failed(run, f"exit {process.returncode}; log ends with:\n{tail}")
                        if failure is None:  # tried again, from its last checkpoint
                            todo.append(run)
                            continue
                        failures.append(failure)
                    bar.update(1)
        finally:
            for process in running:  # interrupted: take the children down with the sweep
                process.terminate()
            for process in running:
                process.wait()
            bar.close()
        return failures


def resolve_preset(preset: str | Preset) -> tuple[str, Preset]:
    """``(name, preset)`` for a preset name of :data:`PRESETS` or a :class:`Preset`."""
    if isinstance(preset, Preset):
        return preset.name or "custom", preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset, PRESETS[preset]


def run_benchmark(
    preset: str | Preset,
    out: str | Path,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    jobs: int = 1,
    threads: int | None = None,
    imports: list[str] | None = None,
    executor: str | Executor = "local",
    retries: int = DEFAULT_RETRIES,
) -> list[dict[str, Any]]:
    """Run (or continue) a preset's sweep and write its tables and plots. Returns the table rows.

    ``executor``: ``"local"`` (child processes here, ``jobs`` at once), ``"ray"`` (a Ray task per
    run, :class:`~kd_env.comparison.ray_executor.RayExecutor` with its defaults) or an executor
    object; a failed run is tried ``retries`` more times (:class:`RetryPolicy`).

    Raises:
        SweepFailedError: some runs failed every attempt; the report lists them with their errors
            (the others are kept; rerunning the command continues where it stopped).
    """
    from kd_env.comparison.report import write_report, write_report_with_failures
    from kd_env.comparison.spec import check_spec, fold_overrides, record_spec

    preset_name, preset = resolve_preset(preset)
    # what runs, in one place: the overrides and imports folded into the preset, which is checked
    # (nothing runs on a bad one) and kept in the output folder (a resume of another is refused)
    preset = fold_overrides(preset, overrides)
    # a .py file by its absolute path: the runs may start in another folder (a Ray node)
    files = [str(Path(entry).resolve()) if entry.endswith((".py", ".yaml", ".yml")) else entry for entry in imports or []]
    preset = replace(preset, name=preset_name, imports=list(dict.fromkeys([*preset.imports, *files])))
    check_spec(preset, f"preset {preset_name}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record_spec(preset, out)
    runs = plan(preset, out)
    pretraining = plan_pretraining(preset, out)
    if not all(run.done for run in runs + pretraining):
        prepare_teachers(preset)
    if executor == "local":
        executor = LocalExecutor(jobs, threads, retries)
    elif executor == "ray":
        from kd_env.comparison.ray_executor import RayExecutor

        executor = RayExecutor(threads=threads, retries=retries)
    elif isinstance(executor, str):
        raise ValueError(f"unknown executor {executor!r}; choose local or ray")
    # the online methods first; then the transfer methods' policies are trained, and evaluated frozen
    online = [run for run in runs if run.method.pretrain is None]
    transfer = [run for run in runs if run.method.pretrain is not None]
    failures = executor.run(online, progress=progress, description=f"bench {preset_name}")
    if transfer:
        stages = plan_pretraining_stages(preset, out)
        for position, stage in enumerate(stages):
            stage_name = "pretraining" if len(stages) == 1 else f"pretraining, stage {position + 1} of {len(stages)}"
            stage_failures = executor.run(stage, progress=progress, description=f"bench {preset_name}: {stage_name}")
            failures += stage_failures
            if stage_failures:  # a later stage would start from a policy that was never saved
                break
        failures += executor.run(transfer, progress=progress, description=f"bench {preset_name}: transfer")
    if failures:
        rows = write_report_with_failures(runs, failures, out, preset_name, preset)
        details = "\n\n".join(f"{run.run_dir.name}: {error}" for run, error in failures)
        raise SweepFailedError(
            f"{len(failures)} of {len(runs)} runs failed (listed in {out / 'results.md'}; rerun the same command to retry them):\n{details}",
            rows,
            failures,
        )
    return write_report(runs, out, preset_name, preset)


def _run_one(run_dir: Path, threads: int | None) -> None:
    """Child process: run (or resume) the run described by ``bench_config.json``."""
    if threads:
        from kd_env.utils import set_threads

        set_threads(threads)
    from kd_env.run import train

    config = RunConfig(**json.loads((run_dir / "bench_config.json").read_text()))
    # a folder with run.json was started before: train resumes it from its last complete
    # checkpoint (or from the start, replacing the TensorBoard points, if it made none)
    resume = (run_dir / "run.json").exists()
    if resume:
        print(f"resuming the run in {run_dir}", flush=True)
    train(config, resume=resume)


def main(argv: list[str]) -> None:
    if len(argv) in (2, 4) and argv[0] == "--run-one":
        threads = int(argv[3]) if len(argv) == 4 and argv[2] == "--threads" else None
        _run_one(Path(argv[1]), threads)
    else:
        sys.exit("usage: python -m kd_env.comparison --run-one RUN_DIR [--threads N] (use `kd-env bench` instead)")
