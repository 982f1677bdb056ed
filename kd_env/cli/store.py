"""``kd-env store {list,verify,clear,size}``: the teacher-output stores in the cache, and the size
of the one an env would build."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kd_env.cli.common import _add_common_cache_args, _key_values, _print_help, print_table


def add_store_parser(subparsers: Any) -> None:
    """``kd-env store {list,verify,clear}``."""
    store = subparsers.add_parser(
        "store",
        help="list, verify or clear the teacher-output stores in the cache",
        description="Teacher-output stores hold the teachers' outputs over a training set, built once "
        "and memory-mapped by later runs. They are a cache: clearing one only costs a rebuild.",
    )
    store.set_defaults(func=lambda args: _print_help(store))
    sub = store.add_subparsers(dest="store_command", metavar="{list,verify,clear,size}")
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
    size = sub.add_parser(
        "size",
        help="the size of the store an env would build (e.g. with augment_views), before building it",
        description="Loads the data and teachers of an env (nothing is computed over the training set) and prints the size "
        "of its teacher-output store and the free space of the cache's disk.",
    )
    size.add_argument("--env", default=None, help="a registered env id, e.g. MultiTeacherKD-FashionMNIST-v0 (its dataset)")
    size.add_argument(
        "--env-arg", action="append", metavar="KEY=VALUE", help="env keyword argument (repeatable), e.g. augment=true augment_views=4"
    )
    size.set_defaults(func=cmd_store_size)


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
    print_table(header, rows)


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


def cmd_store_size(args: argparse.Namespace) -> int:
    from kd_env.envs import KDEnvSettings
    from kd_env.envs.assembly import planned_store_size
    from kd_env.teacher_outputs import format_bytes, stores_dir
    from kd_env.teacher_outputs.size import free_bytes

    kwargs: dict[str, Any] = {}
    if args.env:
        import gymnasium as gym

        import kd_env  # noqa: F401  (registers the ids)

        kwargs.update(gym.spec(args.env).kwargs)
    kwargs.update(_key_values(args.env_arg, "--env-arg"))
    settings = KDEnvSettings.from_kwargs("kd-env store size", **kwargs)
    size, what = planned_store_size(settings)
    rows = f"{what['images']:,} images" + (f" x {what['views']} views" if what["views"] else "")
    kept = f", keeping {what['contents']}" if what["contents"] else ""
    print(f"teacher-output store for {what['dataset']}, {rows}, {len(what['teachers'])} teachers ({', '.join(what['teachers'])}){kept}:")
    print(f"  {size.describe()}")
    root = stores_dir(settings.cache_dir)
    free = free_bytes(root)
    verdict = "fits" if size.total <= free else "does NOT fit: the env refuses to build it"
    print(f"  free on the disk of {root}: {format_bytes(free)} ({verdict})")
    return 0


def cmd_store_clear(args: argparse.Namespace) -> int:
    from kd_env.teacher_outputs import clear_stores, stores_dir

    removed, freed = clear_stores(args.cache_dir, args.keys or None)
    print(f"removed {removed} teacher-output store(s), {freed / 2**20:.1f} MiB, from {stores_dir(args.cache_dir)}")
    return 0
