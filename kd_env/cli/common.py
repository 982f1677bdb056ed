"""Pieces the ``kd-env`` command groups share: common arguments, ``key=value`` parsing, thread
counts, help and plain-text tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def _add_common_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache root (default: $KD_ENV_CACHE or ~/.cache/kd_env); teachers go to <cache-dir>/teachers",
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


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


def _add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per run (default: the cores available to this process divided among the runs that go at once)",
    )


def _apply_threads(threads: int | None, jobs: int = 1) -> int:
    """Set this process's torch thread count before any torch work; returns it. Child processes
    (a sweep's runs) get theirs in their own environment, from the executor."""
    from kd_env.utils import set_threads, threads_per_run

    return set_threads(threads if threads is not None else threads_per_run(jobs))


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """``header`` and ``rows`` as left-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
