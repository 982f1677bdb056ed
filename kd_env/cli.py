"""The ``kd-env`` command line.

Layout: :func:`build_parser` creates the top-level parser and calls one ``add_<group>_parser``
function per command group; every leaf command sets ``func`` (via ``set_defaults``) to a
``cmd_<group>_<name>(args) -> int`` function, which :func:`main` calls. To add a command, write
an ``add_..._parser(subparsers)`` and a ``cmd_...`` function and call the former from
:func:`build_parser`.

Commands:
    kd-env teachers train --dataset fashion_mnist [--arch mlp --arch cnn_w16 ...] [--epochs N]
    kd-env teachers list [--dataset NAME] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
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
    try:
        archs = args.arch or T.TEACHER_POOLS[args.dataset]
    except KeyError:
        print(
            f"error: no default teacher pool for dataset {args.dataset!r} (known: {', '.join(sorted(T.TEACHER_POOLS))}); "
            "pass --arch",
            file=sys.stderr,
        )
        return 2
    todo = []
    for arch in archs:
        path = T.teacher_path(arch, args.dataset, args.seed, args.cache_dir)
        if path.is_file() and not args.force:
            print(f"{arch}: {path} exists, skipping (use --force to retrain)")
        else:
            todo.append((arch, path))
    if not todo:
        return 0
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
        meta = T.read_teacher_metadata(path)
        print(
            f"{arch}: val acc {_fmt_acc(meta.get('val_acc'))}, test acc {_fmt_acc(meta.get('test_acc'))}, "
            f"{meta['epochs']} epochs, {meta['train_time_s']:.1f} s -> {path}"
        )
    return 0


def _fmt_acc(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def cmd_teachers_list(args: argparse.Namespace) -> int:
    from kd_env import teachers as T

    entries = T.list_teachers(args.cache_dir, dataset=args.dataset)
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    if not entries:
        print(f"no teacher checkpoints in {T.teachers_dir(args.cache_dir)}")
        return 0
    header = ("dataset", "arch", "seed", "epochs", "val_acc", "test_acc", "path")
    rows = [
        (
            str(e.get("dataset", "?")),
            str(e.get("arch", "?")),
            str(e.get("seed", "-")),
            str(e.get("epochs", "-")),
            _fmt_acc(e.get("val_acc")),
            _fmt_acc(e.get("test_acc")) if "error" not in e else "CORRUPT",
            e["path"],
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


# --------------------------------------------------------------------------------------------
# top level


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``kd-env`` parser: one subparser per command group."""
    parser = argparse.ArgumentParser(prog="kd-env", description="kd-env: multi-teacher knowledge distillation as a Gymnasium env")
    parser.set_defaults(func=lambda args: _print_help(parser))
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    add_teachers_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (errors of the library print one message, status 1)."""
    from kd_env.teachers import TeacherCheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TeacherCheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
