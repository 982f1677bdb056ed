"""The sweep on a Ray cluster: each run a Ray task with its own resource request.

``kd-env bench --executor ray [--address auto|ray://HOST:10001] [--cpus-per-run C] [--gpus-per-run G]``
(or ``run_benchmark(..., executor=RayExecutor(...))``). Ray is an optional extra:
``pip install "kd-env[ray]"``.

Each run is one Ray task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (a fraction
shares a GPU). The task starts the same child the local executor starts, ``python -m
kd_env.comparison --run-one RUN_DIR --threads N``, on whichever node Ray placed it, with its log in
the run folder's ``log.txt``; so a run on a Ray node computes exactly what it computes locally.
The run folders, the teacher cache and the data must be on a filesystem every node sees at the
same path: the driver writes each run's ``bench_config.json``, the node writes the run's results,
TensorBoard events and checkpoints next to it, and the driver builds the tables from them.
``KD_ENV_*`` variables of the driver (``KD_ENV_CACHE``, ``KD_ENV_DATA``, ...) are passed to every
run, so every node reads the same teachers and data.

Faults: a task that fails (the run's exit status, a worker process or a node lost) is submitted
again under the sweep's :class:`~kd_env.comparison.planned.RetryPolicy` (Ray's own retries are off,
so that every attempt is counted and its error kept); the new attempt continues from the run's
last checkpoint. If the driver dies, Ray ends its tasks and their children follow (they get
SIGTERM when their worker dies); the same command continues the sweep.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from kd_env.comparison.planned import DEFAULT_RETRIES, PlannedRun, RetryPolicy, die_with_parent
from kd_env.utils import crash_point

#: The ``pip`` extra that installs Ray for this executor.
RAY_EXTRA = 'pip install "kd-env[ray]"'

#: Prefix of the driver's environment variables passed on to every run (cache and data roots).
FORWARDED_PREFIX = "KD_ENV_"


class RayNotInstalledError(RuntimeError):
    """``--executor ray`` was asked for but Ray is not installed here."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or :class:`RayNotInstalledError` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise RayNotInstalledError(
            f"the Ray executor needs Ray, which is not installed in this environment ({sys.executable}): "
            f"{RAY_EXTRA} (or pip install 'ray>=2.9'), or use --executor local"
        ) from exc
    return ray


def run_in_worker(run_dir: str, threads: int, environment: dict[str, str]) -> dict[str, Any]:
    """The Ray task's body: run (or resume) one run in a child process on this node.

    Returns ``{"returncode": ..., "node": ...}``. Raises ``FileNotFoundError`` when the run folder
    is not visible on this node (the sweep's output folder must be on a shared filesystem).
    """
    from kd_env.utils import thread_environment

    folder = Path(run_dir)
    node = socket.gethostname()
    if not (folder / "bench_config.json").is_file():
        raise FileNotFoundError(
            f"{folder / 'bench_config.json'} is not visible on node {node}: the sweep's --out must be a folder "
            "that every node of the Ray cluster mounts at the same path (a shared filesystem)"
        )
    child_environment = thread_environment(threads, {**os.environ, **environment})
    command = [sys.executable, "-m", "kd_env.comparison", "--run-one", str(folder), "--threads", str(threads)]
    with (folder / "log.txt").open("ab") as log:
        log.write(f"[ray] node {node}, worker pid {os.getpid()}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=child_environment, preexec_fn=die_with_parent(os.getpid())
        )
    try:
        return {"returncode": process.wait(), "node": node}
    finally:  # the task was cancelled (KeyboardInterrupt in the worker): the run stops with it
        if process.poll() is None:
            process.terminate()
            process.wait()


class RayExecutor:
    """Runs planned runs as Ray tasks, as many at once as the cluster has room for.

    Args:
        address: the cluster to join: ``"auto"`` (the one ``ray start`` runs on this node),
            ``"ray://HOST:10001"`` (Ray client) or ``"HOST:6379"``; ``None``: ``$RAY_ADDRESS`` if
            set, else a new local Ray instance (stopped at the end). A Ray already initialised in
            this process is used as it is.
        cpus_per_run: CPUs each run's task asks for (Ray's ``num_cpus``).
        gpus_per_run: GPUs each run's task asks for (``num_gpus``; a fraction shares a GPU). Ray
            sets ``CUDA_VISIBLE_DEVICES`` for the task; the preset's ``device`` env argument
            decides whether the run uses it (``--env-arg device=cuda``).
        threads: torch threads per run (default: ``cpus_per_run``, at least 1).
        retries: attempts after a run's first failure (:class:`~kd_env.comparison.planned.RetryPolicy`).
        local_cpus: CPUs of the local instance started when there is no cluster (default: all).
    """

    def __init__(
        self,
        address: str | None = None,
        cpus_per_run: float = 1.0,
        gpus_per_run: float = 0.0,
        threads: int | None = None,
        retries: int = DEFAULT_RETRIES,
        local_cpus: int | None = None,
    ) -> None:
        if cpus_per_run < 0 or gpus_per_run < 0 or cpus_per_run + gpus_per_run <= 0:
            raise ValueError(f"a run must ask for CPUs or GPUs: got cpus_per_run={cpus_per_run}, gpus_per_run={gpus_per_run}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.address = address
        self.cpus_per_run = float(cpus_per_run)
        self.gpus_per_run = float(gpus_per_run)
        self.threads = int(threads) if threads else max(1, int(cpus_per_run))
        self.retry = RetryPolicy(retries)
        self.local_cpus = local_cpus

    # ------------------------------------------------------------------ Ray set-up
    def _connect(self, ray: ModuleType) -> bool:
        """Join (or start) Ray unless this process already did; True when we started it here."""
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address is None:  # a local instance of our own
            options.update(include_dashboard=False, num_cpus=self.local_cpus)
        ray.init(address=address, **options)
        return True

    def _slots(self, ray: ModuleType) -> int:
        """How many runs the cluster can hold at once now (at least 1: an autoscaler adds nodes
        for a pending task)."""
        resources = ray.cluster_resources()
        limits = []
        if self.cpus_per_run > 0:
            limits.append(resources.get("CPU", 0.0) / self.cpus_per_run)
        if self.gpus_per_run > 0:
            limits.append(resources.get("GPU", 0.0) / self.gpus_per_run)
        return max(1, int(min(limits) + 1e-9))

    def _submit(self, ray: ModuleType, task: Any, run: PlannedRun) -> Any:
        """Write the run's ``bench_config.json`` (absolute paths: the node's working folder is not
        ours) and submit its task."""
        run_dir = run.run_dir.absolute()
        run_dir.mkdir(parents=True, exist_ok=True)
        config = replace(run.config, run_dir=str(run_dir))
        (run_dir / "bench_config.json").write_text(json.dumps(asdict(config), indent=1))
        environment = {key: value for key, value in os.environ.items() if key.startswith(FORWARDED_PREFIX)}
        return task.options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=0,
            retry_exceptions=False,
            name=f"kd-env {run_dir.name}",
        ).remote(str(run_dir), self.threads, environment)

    # ------------------------------------------------------------------ the sweep
    def run(self, runs: list[PlannedRun], progress: bool = True, description: str = "bench") -> list[tuple[PlannedRun, str]]:
        """Run every run that is not done; returns ``(run, error)`` for the runs that failed every attempt.

        Raises:
            RayNotInstalledError: Ray is not installed.
        """
        ray = require_ray()
        started = self._connect(ray)
        try:
            return self._run(ray, runs, progress, description)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: ModuleType, runs: list[PlannedRun], progress: bool, description: str) -> list[tuple[PlannedRun, str]]:
        from tqdm.auto import tqdm

        task = ray.remote(run_in_worker)
        todo = [run for run in runs if not run.done]
        failures: list[tuple[PlannedRun, str]] = []
        pending: dict[Any, PlannedRun] = {}
        bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=description, unit="run", disable=not progress)
        shown_postfix = ""
        try:
            while todo or pending:
                slots = self._slots(ray) if todo else 0
                while todo and len(pending) < slots:
                    run = todo.pop(0)
                    pending[self._submit(ray, task, run)] = run
                postfix = f"running {len(pending)}, failed {len(failures)}"
                if postfix != shown_postfix:  # only on a change: each call redraws (a line in a log file)
                    bar.set_postfix_str(postfix)
                    shown_postfix = postfix
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for reference in ready:
                    run = pending.pop(reference)
                    error = self._error(ray, reference, run)
                    if error is not None:
                        failure = self.retry.failed(run, error)
                        if failure is None:  # tried again, from its last checkpoint
                            todo.append(run)
                            continue
                        failures.append(failure)
                    bar.update(1)
                    crash_point("sweep:ray-run-finished")
        finally:
            for reference in pending:  # interrupted: stop the runs still going (their children follow)
                with contextlib.suppress(Exception):  # already finished, or its worker is gone
                    ray.cancel(reference, force=True)
            bar.close()
        return failures

    @staticmethod
    def _error(ray: ModuleType, reference: Any, run: PlannedRun) -> str | None:
        """``None`` when the run's task finished it, else what went wrong (with its log's end)."""
        try:
            outcome = ray.get(reference)
        except ray.exceptions.RayError as exc:  # the task raised, its worker died or its node was lost
            message = str(exc).strip().splitlines()
            problem = f"{type(exc).__name__}: {message[-1] if message else ''}"
        else:
            if outcome["returncode"] == 0 and run.done:
                return None
            problem = f"exit {outcome['returncode']} on node {outcome['node']}"
        log = run.run_dir / "log.txt"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log.txt)"
        return f"{problem}; log ends with:\n{tail}"
