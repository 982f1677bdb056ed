"""The ``kd-env`` command line.

Layout: :func:`build_parser` creates the top-level parser and calls one ``add_<group>_parser``
function per command group; every leaf command sets ``func`` (via ``set_defaults``) to a
``cmd_<group>_<name>(args) -> int`` function, which :func:`main` calls. To add a command, write
an ``add_..._parser(subparsers)`` and a ``cmd_...`` function and call the former from
:func:`build_parser`.

The groups: :mod:`~kd_env.cli.train`, :mod:`~kd_env.cli.bench` (and ``demo``), :mod:`~kd_env.cli.tune`,
:mod:`~kd_env.cli.teachers`, :mod:`~kd_env.cli.data`, :mod:`~kd_env.cli.store`; shared pieces in
:mod:`~kd_env.cli.common`, error messages in :mod:`~kd_env.cli.errors`.

Commands:
    kd-env demo                                   # the main job (see README)
    kd-env train --env ID --agent NAME [--per-sample] [--env-arg k=v ...] [--import MODULE] [--resume]
    kd-env bench --preset quick|suite|fmnist|cifar100-paper [--out DIR] [--jobs N]
    kd-env bench --spec my_experiment.yaml [--out DIR]  # an experiment file; --show-preset NAME prints one
    kd-env bench --spec FILE --tuned OUT/best_params.yaml  # adds '<label> (tuned)' rows (issue #28)
    kd-env tune --spec FILE --method LABEL ... --trials N --tuning-seeds 100 101 [--scenarios POOL ...] [--jobs N]
    kd-env data check|fetch DATASET
    kd-env teachers train --dataset fashion_mnist [--arch mlp --arch cnn_w16 ...] [--epochs N]
    kd-env teachers list [--dataset NAME] [--json]
    kd-env store list|verify|clear [KEY ...]      # teacher-output stores in the cache
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kd_env.cli.bench import add_bench_parser, add_demo_parser, cmd_bench, cmd_demo
from kd_env.cli.common import _print_help
from kd_env.cli.data import add_data_parser, cmd_data_check, cmd_data_fetch
from kd_env.cli.errors import describe_error
from kd_env.cli.store import add_store_parser, cmd_store_clear, cmd_store_list, cmd_store_verify
from kd_env.cli.teachers import add_teachers_parser, cmd_teachers_list, cmd_teachers_train
from kd_env.cli.train import add_train_parser, cmd_train
from kd_env.cli.tune import add_tune_parser, cmd_tune

__all__ = [
    "add_bench_parser",
    "add_data_parser",
    "add_demo_parser",
    "add_store_parser",
    "add_teachers_parser",
    "add_train_parser",
    "add_tune_parser",
    "build_parser",
    "cmd_bench",
    "cmd_data_check",
    "cmd_data_fetch",
    "cmd_demo",
    "cmd_store_clear",
    "cmd_store_list",
    "cmd_store_verify",
    "cmd_teachers_list",
    "cmd_teachers_train",
    "cmd_train",
    "cmd_tune",
    "describe_error",
    "main",
]


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
    add_tune_parser(subparsers)
    add_teachers_parser(subparsers)
    add_data_parser(subparsers)
    add_store_parser(subparsers)
    return parser


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
