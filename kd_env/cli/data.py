"""``kd-env data {check,fetch}``: find or fetch a dataset."""

from __future__ import annotations

import argparse
from typing import Any

from kd_env.cli.common import _print_help


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
