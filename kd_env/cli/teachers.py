"""``kd-env teachers {train,list}``: train teacher checkpoints into the cache, and list them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kd_env.cli.common import _add_common_cache_args, _print_help, print_table


def add_teachers_parser(subparsers: Any) -> None:
    """``kd-env teachers {train,list}``."""
    teachers = subparsers.add_parser("teachers", help="train and list teacher checkpoints")
    teachers.set_defaults(func=lambda args: _print_help(teachers))
    sub = teachers.add_subparsers(dest="teachers_command", metavar="{train,list}")
    _add_teachers_train_parser(sub)
    _add_teachers_list_parser(sub)


def _add_teachers_train_parser(sub: Any) -> None:
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


def _add_teachers_list_parser(sub: Any) -> None:
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
    print_table(header, rows)
    for entry in entries:  # a damaged or unreadable checkpoint: say why and how to fix it
        if "error" in entry:
            print(f"error: {entry['error']}", file=sys.stderr)
    return 1 if any("error" in entry for entry in entries) else 0
