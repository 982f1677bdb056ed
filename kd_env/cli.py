"""The ``kd-env`` command line.

Layout: :func:`build_parser` creates the top-level parser and calls one ``add_<group>_parser``
function per command group; every leaf command sets ``func`` (via ``set_defaults``) to a
``cmd_<group>_<name>(args) -> int`` function, which :func:`main` calls. To add a command, write
an ``add_..._parser(subparsers)`` and a ``cmd_...`` function and call the former from
:func:`build_parser`.

Commands:
    kd-env demo                                   # the main job (see README)
    kd-env train --env ID --agent NAME [--per-sample] [--env-arg k=v ...] [--import MODULE] [--resume]
    kd-env bench --preset quick|suite|fmnist|cifar100-paper [--out DIR] [--jobs N]
    kd-env data check|fetch DATASET
    kd-env teachers train --dataset fashion_mnist [--arch mlp --arch cnn_w16 ...] [--epochs N]
    kd-env teachers list [--dataset NAME] [--json]
    kd-env store list|verify|clear [KEY ...]      # teacher-output stores in the cache
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _add_common_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache root (default: $KD_ENV_CACHE or ~/.cache/kd_env); teachers go to <cache-dir>/teachers",
    )


# --------------------------------------------------------------------------------------------
# teachers


def add_teachers_parser(subparsers: Any) -> None:
    """``kd-env teachers {train,list}``."""
    teachers = subparsers.add_parser("teachers", help="train and list teacher checkpoints")
    teachers.set_defaults(func=lambda args: _print_help(teachers))
    sub = teachers.add_subparsers(dest="teachers_command", metavar="{train,list}")

    train = sub.add_parser(
        "train",
        help="train teacher checkpoints (default: the dataset's teacher pool)",
        description="Train teachers with the standard recipe and store them in the cache. Checkpoints "
        "that already exist are skipped unless --force; interrupted runs resume.",
    )
    train.add_argument("--dataset", required=True, help="cifar100, cifar10, fashion_mnist or synthetic")
    train.add_argument(
        "--arch",
        action="append",
        default=None,
        help="zoo architecture to train; repeat for several (default: the dataset's pool)",
    )
    train.add_argument(
        "--pool",
        default=None,
        help="train a named pool's teachers (capacity, noisy, specialists, or a registered one); "
        "default without --arch: capacity, the dataset's default pool",
    )
    train.add_argument("--epochs", type=int, default=None, help="epochs for every teacher (default: per-teacher recipe)")
    train.add_argument("--batch-size", type=int, default=None, help="default: recipe (64 CIFAR, 128 Fashion-MNIST)")
    train.add_argument("--lr", type=float, default=None, help="initial learning rate (default: recipe)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    train.add_argument("--data-root", default=None, help="folder with the dataset files")
    train.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--force", action="store_true", help="retrain teachers whose checkpoint exists")
    train.add_argument("--no-resume", action="store_true", help="discard interrupted runs instead of resuming")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common_cache_args(train)
    train.set_defaults(func=cmd_teachers_train)

    lister = sub.add_parser("list", help="list the teacher checkpoints in the cache")
    lister.add_argument("--dataset", default=None, help="only this dataset")
    lister.add_argument("--json", action="store_true", help="print the metadata as JSON")
    _add_common_cache_args(lister)
    lister.set_defaults(func=cmd_teachers_list)


def cmd_teachers_train(args: argparse.Namespace) -> int:
    import torch

    from kd_env import teachers as T
    from kd_env.data import load_dataset

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.pool is not None and args.arch:
        print("error: give --pool or --arch, not both", file=sys.stderr)
        return 2
    if args.pool is not None or not args.arch:
        return _train_pool(args, args.pool or "capacity")
    todo, damaged = [], 0
    for arch in args.arch:
        path = T.teacher_path(arch, args.dataset, args.seed, args.cache_dir)
        if path.exists() and not args.force:
            damaged += not _existing_teacher_ok(arch, path)
        else:
            todo.append((arch, path))
    if not todo:
        return 1 if damaged else 0
    splits = load_dataset(args.dataset, args.data_root, download=args.download, device=args.device)
    for arch, path in todo:
        T.train_teacher(
            arch,
            splits,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            path=path,
            progress=not args.no_progress,
            resume=not args.no_resume,
        )
        _print_trained(arch, path)
    return 1 if damaged else 0


def _existing_teacher_ok(name: str, path: Path) -> bool:
    """Report an existing checkpoint that is skipped: healthy (True), or damaged/unreadable (False,
    with the error and its fix on stderr, since skipping it would leave it broken)."""
    from kd_env import teachers as T

    try:
        T.verify_teacher(path)
    except T.TeacherCheckpointError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        return False
    print(f"{name}: {path} exists, skipping (use --force to retrain)")
    return True


def _print_trained(name: str, path: Path) -> None:
    from kd_env import teachers as T

    meta = T.read_teacher_metadata(path)
    print(
        f"{name}: val acc {_fmt_acc(meta.get('val_acc'))}, test acc {_fmt_acc(meta.get('test_acc'))} "
        f"(own classes {_fmt_acc(meta.get('test_acc_own'))}, rest {_fmt_acc(meta.get('test_acc_rest'))}), "
        f"{meta['epochs']} epochs, {meta['train_time_s']:.1f} s -> {path}"
    )


def _train_pool(args: argparse.Namespace, pool: str) -> int:
    """``kd-env teachers train --pool NAME``: every recipe of the pool (existing files skipped)."""
    from kd_env import teachers as T
    from kd_env.data import load_dataset

    splits = load_dataset(args.dataset, args.data_root, download=args.download, device=args.device)
    members = T.pool_members(pool, args.dataset, int(splits.num_classes), seed=args.seed, cache_dir=args.cache_dir)
    damaged = 0
    for name, path, recipe in members:
        if recipe is None:
            print(f"{name}: {path} is a fixed checkpoint of pool {pool!r}, nothing to train")
            continue
        if path.exists() and not args.force:
            damaged += not _existing_teacher_ok(name, path)
            continue
        T.train_pool_member(
            recipe,
            splits,
            path,
            device=args.device,
            progress=not args.no_progress,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            resume=not args.no_resume,
        )
        _print_trained(name, path)
    return 1 if damaged else 0


def _fmt_acc(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _recipe_text(recipe: Any) -> str:
    """``classes 0-2`` / ``relabelled (perm 1)`` / ``all`` for a checkpoint's recipe metadata."""
    if not isinstance(recipe, dict):
        return "all"
    parts = []
    if recipe.get("classes") is not None:
        parts.append("classes " + ",".join(str(c) for c in recipe["classes"]))
    if recipe.get("relabel") is not None:
        parts.append(f"relabelled (perm {recipe['relabel']})")
    return "; ".join(parts) or "all"


def cmd_teachers_list(args: argparse.Namespace) -> int:
    from kd_env import teachers as T

    entries = T.list_teachers(args.cache_dir, dataset=args.dataset)
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    if not entries:
        print(f"no teacher checkpoints in {T.teachers_dir(args.cache_dir)}")
        return 0
    # accuracies on the TRUE labels: overall, on the teacher's own classes and on the rest
    header = ("dataset", "name", "arch", "seed", "epochs", "recipe", "test_acc", "own", "rest", "path")
    rows = [
        (
            str(e.get("dataset", "?")),
            Path(e["path"]).name.rsplit("-s", 1)[0],
            str(e.get("arch", "?")),
            str(e.get("seed", "-")),
            str(e.get("epochs", "-")),
            _recipe_text(e.get("recipe")),
            _fmt_acc(e.get("test_acc")) if "error" not in e else ("UNREADABLE" if e.get("unreadable") else "CORRUPT"),
            _fmt_acc(e.get("test_acc_own")),
            _fmt_acc(e.get("test_acc_rest")),
            e["path"],
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for entry in entries:  # a damaged or unreadable checkpoint: say why and how to fix it
        if "error" in entry:
            print(f"error: {entry['error']}", file=sys.stderr)
    return 1 if any("error" in entry for entry in entries) else 0


# --------------------------------------------------------------------------------------------
# top level


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# --------------------------------------------------------------------------------------------
# data


def add_data_parser(subparsers: Any) -> None:
    """``kd-env data {check,fetch}``."""
    data = subparsers.add_parser("data", help="find or fetch datasets")
    data.set_defaults(func=lambda args: _print_help(data))
    sub = data.add_subparsers(dest="data_command", metavar="{check,fetch}")
    for name, help_text, func in (
        ("check", "say where a dataset is found (exit 1 if nowhere)", cmd_data_check),
        ("fetch", "prepare a dataset in the cache (with --download: download it if missing)", cmd_data_fetch),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("dataset", help="cifar100, cifar10 or fashion_mnist")
        command.add_argument("--data-root", default=None)
        if name == "fetch":
            command.add_argument("--download", action="store_true", help="download with torchvision if missing")
        command.set_defaults(func=func)


def cmd_data_check(args: argparse.Namespace) -> int:
    from kd_env.data import find_data_root

    print(f"{args.dataset}: {find_data_root(args.dataset, args.data_root)}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from kd_env.data import load_dataset

    splits = load_dataset(args.dataset, args.data_root, download=args.download)
    print(
        f"{args.dataset}: {splits.train_labels.numel()} train, {splits.val_labels.numel()} val, {splits.test_labels.numel()} test images ready"
    )
    return 0


# --------------------------------------------------------------------------------------------
# train (the runner) and bench (the sweep)


def _key_values(pairs: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON where they parse (numbers, lists, true), else strings."""
    result: dict[str, Any] = {}
    for pair in pairs or ():
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"error: {what} takes key=value, got {pair!r}")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


def add_train_parser(subparsers: Any) -> None:
    train = subparsers.add_parser(
        "train",
        help="train an agent or run a baseline on an env (TensorBoard, checkpoints, --resume)",
        description="One student training run driven by any policy. Example: kd-env train --env "
        "MultiTeacherKD-FashionMNIST-v0 --agent reinforce --env-arg epochs=3",
    )
    train.add_argument("--env", default="MultiTeacherKD-FashionMNIST-v0", help="a registered env id")
    # no argparse choices: a policy registered by an --import module is only known after the import
    train.add_argument(
        "--agent",
        required=True,
        help="a registered policy name: an agent (reinforce, ppo, ...), a baseline (camkd, ...), a reference "
        "(oracle, no-kd) or one of yours (see --import); an unknown name prints the full list",
    )
    train.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (repeatable), e.g. one that calls kd_env.register_policy(...); it must be importable (PYTHONPATH)",
    )
    train.add_argument("--per-sample", action="store_true", help="use the per-sample env (MTKD-RL's formulation)")
    train.add_argument(
        "--env-arg", action="append", metavar="KEY=VALUE", help="env keyword argument (repeatable), e.g. epochs=3 device=cuda"
    )
    train.add_argument("--agent-arg", action="append", metavar="KEY=VALUE", help="agent keyword argument (repeatable), e.g. n_steps=32")
    train.add_argument("--total-steps", type=int, default=None, help="student updates to run (default: one training run)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--run-dir", default=None, help="default: runs/<env>__<agent>__seed<seed>")
    train.add_argument("--checkpoint-every", type=int, default=500, help="student updates between checkpoints (0: only at the end)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--no-tensorboard", action="store_true")
    _add_threads_arg(train)
    train.set_defaults(func=cmd_train)


def _add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per run (default: the cores available to this process divided among the runs that go at once)",
    )


def _apply_threads(threads: int | None, jobs: int = 1) -> int:
    """Set the thread count before any torch work (children inherit it through OMP_NUM_THREADS)."""
    from kd_env.utils import set_threads, threads_per_run

    return set_threads(threads if threads is not None else threads_per_run(jobs))


def cmd_train(args: argparse.Namespace) -> int:
    _apply_threads(args.threads)
    from kd_env.run import RunConfig, train

    run_dir = args.run_dir or f"runs/{args.env}__{args.agent}{'-per-sample' if args.per_sample else ''}__seed{args.seed}"
    config = RunConfig(
        env_id=args.env,
        agent=args.agent,
        run_dir=run_dir,
        per_sample=args.per_sample,
        env_kwargs=_key_values(args.env_arg, "--env-arg"),
        agent_kwargs=_key_values(args.agent_arg, "--agent-arg"),
        total_steps=args.total_steps,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        tensorboard=not args.no_tensorboard,
        progress=not args.no_progress,
        imports=list(args.imports),
    )
    result = train(config, resume=args.resume)
    for index, episode in enumerate(result.episodes):
        print(
            f"student run {index + 1}: test accuracy {episode['final_test_acc']:.4f} "
            f"(best-validation checkpoint, val {episode['best_val_acc']:.4f} at epoch {int(episode['best_epoch']) + 1})"
        )
    print(f"{result.env_steps} student updates in {result.wall_time_s:.0f} s; TensorBoard: {run_dir}/tb")
    return 0


def add_bench_parser(subparsers: Any) -> None:
    from kd_env.comparison import PRESETS

    bench = subparsers.add_parser(
        "bench",
        help="run methods x scenarios x seeds through the same runner; tables, statistics and plots",
        description="Presets: " + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items()),
    )
    bench.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    bench.add_argument("--out", default=None, help="output folder (default: results/<preset>)")
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
    bench.add_argument("--no-progress", action="store_true")
    _add_threads_arg(bench)
    # where the runs go (issue #14): this machine, or a Ray cluster
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
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from kd_env.comparison.sweep import DEFAULT_RETRIES, SweepFailedError

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

    out = args.out or f"results/{args.preset}"
    try:
        run_benchmark(
            args.preset,
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
    return cmd_bench(argparse.Namespace(preset="quick", out=args.out, env_arg=None, no_progress=False, threads=None))


# --------------------------------------------------------------------------------------------
# store (teacher-output stores)


def add_store_parser(subparsers: Any) -> None:
    """``kd-env store {list,verify,clear}``."""
    store = subparsers.add_parser(
        "store",
        help="list, verify or clear the teacher-output stores in the cache",
        description="Teacher-output stores hold the teachers' outputs over a training set, built once "
        "and memory-mapped by later runs. They are a cache: clearing one only costs a rebuild.",
    )
    store.set_defaults(func=lambda args: _print_help(store))
    sub = store.add_subparsers(dest="store_command", metavar="{list,verify,clear}")
    lister = sub.add_parser("list", help="list the stores (quick checks)")
    lister.add_argument("--json", action="store_true", help="print the entries as JSON")
    _add_common_cache_args(lister)
    lister.set_defaults(func=cmd_store_list)
    verify = sub.add_parser("verify", help="hash every block of every store (or of KEY ...); exit 1 if one is bad")
    verify.add_argument("keys", nargs="*", metavar="KEY", help="key prefixes (default: all stores)")
    _add_common_cache_args(verify)
    verify.set_defaults(func=cmd_store_verify)
    clear = sub.add_parser("clear", help="delete the stores (or those of KEY ...), leftovers and lock files")
    clear.add_argument("keys", nargs="*", metavar="KEY", help="key prefixes (default: all stores)")
    _add_common_cache_args(clear)
    clear.set_defaults(func=cmd_store_clear)


def _store_rows(entries: list[dict[str, Any]]) -> None:
    header = ("key", "teachers", "samples", "dtype", "MiB", "status")
    rows = [
        (
            e["key"],
            ",".join(e.get("teachers", [])) or "?",
            str(e.get("num_samples", "?")),
            str(e.get("dtype", "?")),
            f"{e['bytes'] / 2**20:.1f}",
            e["status"],
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_store_list(args: argparse.Namespace) -> int:
    from kd_env.teacher_outputs import list_stores, stores_dir

    entries = list_stores(args.cache_dir)
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
    elif not entries:
        print(f"no teacher-output stores in {stores_dir(args.cache_dir)}")
    else:
        _store_rows(entries)
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    from kd_env.teacher_outputs import list_stores, stores_dir

    entries = [e for e in list_stores(args.cache_dir, verify=True) if not args.keys or any(e["key"].startswith(k) for k in args.keys)]
    if not entries:
        print(f"no teacher-output stores to verify in {stores_dir(args.cache_dir)}")
        return 0
    _store_rows(entries)
    bad = [e for e in entries if e["status"] != "ok"]
    if bad:
        print(f"{len(bad)} of {len(entries)} stores failed; `kd-env store clear KEY` removes one (runs rebuild it)", file=sys.stderr)
    return 1 if bad else 0


def cmd_store_clear(args: argparse.Namespace) -> int:
    from kd_env.teacher_outputs import clear_stores, stores_dir

    removed, freed = clear_stores(args.cache_dir, args.keys or None)
    print(f"removed {removed} teacher-output store(s), {freed / 2**20:.1f} MiB, from {stores_dir(args.cache_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``kd-env`` parser: one subparser per command group."""
    parser = argparse.ArgumentParser(prog="kd-env", description="kd-env: multi-teacher knowledge distillation as a Gymnasium env")
    # read by main() wherever it stands on the command line; declared here for --help
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    parser.set_defaults(func=lambda args: _print_help(parser))
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    add_demo_parser(subparsers)
    add_train_parser(subparsers)
    add_bench_parser(subparsers)
    add_teachers_parser(subparsers)
    add_data_parser(subparsers)
    add_store_parser(subparsers)
    return parser


#: Errors the library raises on purpose, with messages written for the user: printed as they are.
_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError, RuntimeError, OSError)

_OS_ERROR_ADVICE = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}


def describe_error(exc: BaseException) -> str:
    """One message for an error the CLI reports without a traceback (what went wrong and, where
    the library knows it, the fix)."""
    if isinstance(exc, OSError) and exc.errno in _OS_ERROR_ADVICE and not type(exc).__module__.startswith("kd_env"):
        where = exc.filename or "a file"
        what = _OS_ERROR_ADVICE[exc.errno]
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some space and rerun (with --resume for kd-env train: the last complete checkpoint was kept)"
        else:
            fix = (
                "fix the permissions, or use a writable place: --cache-dir or $KD_ENV_CACHE for the cache, "
                "--data-root or $KD_ENV_DATA for data, --run-dir / --out for results"
            )
        return f"{what}: {where}. Fix: {fix}"
    message = str(exc) or type(exc).__name__
    # gymnasium re-raises an env constructor's error with the call appended: keep the error itself
    message = message.split(" was raised from the environment creator for ")[0]
    if isinstance(exc, _EXPECTED_ERRORS):
        return message
    return f"{type(exc).__name__}: {message} (unexpected: rerun with --debug for the traceback, and please report it)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status. An error prints one message on stderr (status 1; 130
    when interrupted); ``--debug`` (anywhere on the command line) shows the traceback instead."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    arguments = [argument for argument in arguments if argument != "--debug"]
    parser = build_parser()
    args = parser.parse_args(arguments)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # every error: one message, the traceback only on request
        if debug:
            raise
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
