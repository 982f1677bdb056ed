"""``kd-env bench`` (methods x scenarios x seeds through the runner, then tables, statistics and
plots) and ``kd-env demo`` (the teacher pool, then the quick benchmark)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from kd_env.cli.common import _add_threads_arg, _apply_threads, _key_values
from kd_env.utils import available_cores


def add_bench_parser(subparsers: Any) -> None:
    from kd_env.comparison import PRESETS

    bench = subparsers.add_parser(
        "bench",
        help="run methods x scenarios x seeds through the same runner; tables, statistics and plots",
        description="Runs a built-in preset (--preset) or an experiment file (--spec FILE: a YAML file that says what a preset "
        "says; `--show-preset suite > mine.yaml` prints one to start from). Presets: "
        + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items()),
    )
    what = bench.add_mutually_exclusive_group()
    what.add_argument("--preset", default=None, choices=list(PRESETS), help="a built-in preset (default: quick)")
    what.add_argument("--spec", default=None, metavar="FILE", help="an experiment file (YAML): env, scenarios, methods, seeds, ...")
    what.add_argument(
        "--show-preset",
        default=None,
        choices=list(PRESETS),
        metavar="NAME",
        help="print a built-in preset's file (to copy and edit) and exit",
    )
    bench.add_argument("--out", default=None, help="output folder (default: results/<preset or file name>)")
    bench.add_argument("--env-arg", action="append", metavar="KEY=VALUE", help="override an env argument of every run")
    bench.add_argument("--jobs", type=int, default=1, help="runs at once on this machine (the cores are divided among them)")
    bench.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module first in every run (one that calls kd_env.register_policy / register_pool)",
    )
    bench.add_argument(
        "--tuned",
        default=None,
        metavar="FILE",
        help="a best_params.yaml of kd-env tune: adds a '<label> (tuned)' row after each tuned method (its tuned agent arguments, "
        "the evaluation seeds) and a contrast of the two",
    )
    bench.add_argument("--no-progress", action="store_true")
    _add_threads_arg(bench)
    _add_executor_args(bench)
    bench.set_defaults(func=cmd_bench)


def _add_executor_args(bench: argparse.ArgumentParser) -> None:
    """Where the runs go (issue #14): this machine, or a Ray cluster."""
    bench.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: child processes on this machine, --jobs at once (default); ray: one Ray task per run "
        '(pip install "kd-env[ray]"); the output folder, teacher cache and data must then be on a filesystem every node sees',
    )
    bench.add_argument(
        "--address",
        default=None,
        help="--executor ray: the cluster to join, 'auto' (started by `ray start` on this node) or ray://HOST:10001 "
        "(default: $RAY_ADDRESS, else a local Ray instance on this machine)",
    )
    bench.add_argument("--cpus-per-run", type=float, default=None, help="--executor ray: CPUs each run asks for (default 1)")
    bench.add_argument(
        "--gpus-per-run",
        type=float,
        default=None,
        help="--executor ray: GPUs each run asks for, a fraction shares a GPU (default 0; add --env-arg device=cuda)",
    )
    bench.add_argument(
        "--retries",
        type=int,
        default=None,
        help="times a failed run is tried again, from its last checkpoint, before it is reported as failed (default 2)",
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from kd_env.comparison.sweep import DEFAULT_RETRIES, SweepFailedError

    if getattr(args, "show_preset", None):
        from kd_env.comparison.spec import preset_text

        print(preset_text(args.show_preset), end="")
        return 0
    jobs = getattr(args, "jobs", 1)
    retries = DEFAULT_RETRIES if getattr(args, "retries", None) is None else args.retries
    if jobs < 1 or retries < 0:
        print(f"error: --jobs must be >= 1 and --retries >= 0, got {jobs} and {retries}", file=sys.stderr)
        return 2
    executor = _bench_executor(args, retries)
    if isinstance(executor, int):  # an error, printed
        return executor
    # local: each run is a child process with its share of the cores (OMP_NUM_THREADS and --threads);
    # ray: each run gets the threads of its CPU request (or --threads)
    threads = _apply_threads(getattr(args, "threads", None), jobs=jobs) if executor == "local" else None
    from kd_env.comparison import run_benchmark

    preset: Any = getattr(args, "preset", None) or "quick"
    if getattr(args, "spec", None):
        from kd_env.comparison.spec import load_spec

        # read and checked before anything runs: a bad file is one line naming the key and its line
        preset = load_spec(args.spec)
    if getattr(args, "tuned", None):
        from kd_env.comparison.sweep import resolve_preset
        from kd_env.comparison.tuned import add_tuned_rows

        name, resolved = resolve_preset(preset)
        preset = add_tuned_rows(dataclasses.replace(resolved, name=name), args.tuned)
    out = args.out or f"results/{preset if isinstance(preset, str) else preset.name}"
    try:
        run_benchmark(
            preset,
            out,
            _key_values(args.env_arg, "--env-arg"),
            progress=not args.no_progress,
            jobs=jobs,
            threads=threads,
            imports=getattr(args, "imports", []),
            executor=executor,
            retries=retries,
        )
    except SweepFailedError as exc:  # the report lists the failed runs: show it, then the errors
        _print_bench_report(out)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_bench_report(out)
    return 0


def _bench_executor(args: argparse.Namespace, retries: int) -> Any:
    """``"local"``, a :class:`~kd_env.comparison.ray_executor.RayExecutor`, or an exit status after
    printing why the options cannot be used (Ray missing: the extra to install)."""
    name = getattr(args, "executor", "local")
    ray_options = {
        "address": getattr(args, "address", None),
        "cpus_per_run": getattr(args, "cpus_per_run", None),
        "gpus_per_run": getattr(args, "gpus_per_run", None),
    }
    if name == "local":
        given = [f"--{key.replace('_', '-')}" for key, value in ray_options.items() if value is not None]
        if given:
            print(f"error: {', '.join(given)} only apply to --executor ray", file=sys.stderr)
            return 2
        return "local"
    from kd_env.comparison import ray_executor

    try:
        ray_executor.require_ray()
        return ray_executor.RayExecutor(
            address=ray_options["address"],
            cpus_per_run=1.0 if ray_options["cpus_per_run"] is None else ray_options["cpus_per_run"],
            gpus_per_run=0.0 if ray_options["gpus_per_run"] is None else ray_options["gpus_per_run"],
            threads=getattr(args, "threads", None),
            retries=retries,
        )
    except (ray_executor.RayNotInstalledError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, ray_executor.RayNotInstalledError) else 2


def _print_bench_report(out: str) -> None:
    """The sweep's tables (and statistics) on stdout, and where everything is."""
    print((Path(out) / "results.md").read_text())
    if (Path(out) / "stats.md").exists():
        print((Path(out) / "stats.md").read_text())
    print(f"tables, statistics, plots and TensorBoard runs: {out}")


def add_demo_parser(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the main job: teacher pool (trained once, then cached) and the quick benchmark on Fashion-MNIST",
    )
    demo.add_argument("--out", default="results/quick")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from kd_env.data import load_dataset
    from kd_env.teachers import ensure_teacher_pool, read_teacher_metadata

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    dataset = "fashion_mnist"
    load_dataset(dataset)  # a missing dataset fails here, with the places it looked
    paths = ensure_teacher_pool(dataset, train_missing=True)
    print("teachers (test accuracy):")
    for path in paths:
        meta = read_teacher_metadata(path)
        print(f"  {meta['arch']:>8}: {meta['test_acc']:.4f}")
    print("students distilled from them (quick preset: 1 epoch, 1 seed):")
    # two runs at once, one thread each, where there are two cores: the small students barely use
    # a second thread, so this takes about half the time of one run after another
    jobs = min(2, available_cores())
    return cmd_bench(argparse.Namespace(preset="quick", out=args.out, env_arg=None, no_progress=False, threads=None, jobs=jobs))
