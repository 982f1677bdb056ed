"""``kd-env tune``: the same tuning budget for every method (issue #28; :mod:`kd_env.comparison.tune`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kd_env.cli.common import _add_threads_arg, _apply_threads, _key_values


def add_tune_parser(subparsers: Any) -> None:
    from kd_env.comparison import PRESETS

    tune = subparsers.add_parser(
        "tune",
        help="tune methods of an experiment with Optuna (TPE, median pruner), the same number of trials each",
        description="One Optuna study per --method: trials of the method at sampled parameters (agents/hyperparams/search/<agent>.yml) "
        "on the tuning scenarios x --tuning-seeds (never evaluation seeds), objective the mean best validation accuracy. "
        "Settings not given as flags come from the experiment's `tune:` section. The study is kept in OUT/study.journal (rerun the same command to continue it); the best parameters and the budget "
        "spent go to OUT/best_params.yaml, which `kd-env bench --tuned OUT/best_params.yaml` evaluates as '<label> (tuned)' rows.",
    )
    what = tune.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", default=None, choices=list(PRESETS), help="a built-in preset")
    what.add_argument("--spec", default=None, metavar="FILE", help="an experiment file (YAML)")
    tune.add_argument(
        "--method",
        dest="methods",
        action="append",
        default=None,
        metavar="LABEL",
        help="a method label to tune (repeat; default: tune.methods)",
    )
    tune.add_argument("--trials", type=int, default=None, help="trials per method, the same budget for every method (default: tune.trials)")
    tune.add_argument(
        "--tuning-seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="seeds of the tuning runs, never evaluation seeds (default: tune.tuning_seeds)",
    )
    tune.add_argument(
        "--scenarios", nargs="+", default=None, metavar="POOL", help="the scenarios to tune on (default: tune.scenarios, else all)"
    )
    tune.add_argument(
        "--startup-trials", type=int, default=None, help="random trials before TPE, finished trials before pruning (default 5)"
    )
    tune.add_argument("--sampler-seed", type=int, default=None, help="TPE's seed (default 0)")
    tune.add_argument("--space-dir", default=None, metavar="DIR", help="folder of <agent>.yml search spaces (default: the shipped ones)")
    tune.add_argument("--out", default=None, help="output folder (default: results/tune-<preset or file name>)")
    tune.add_argument("--env-arg", action="append", metavar="KEY=VALUE", help="override an env argument of every run")
    tune.add_argument("--jobs", type=int, default=1, help="runs at once on this machine; also the trials that go at once")
    tune.add_argument("--retries", type=int, default=None, help="times a failed run is tried again (default 2)")
    tune.add_argument("--executor", choices=["local", "ray"], default="local", help="where the runs go, as for kd-env bench")
    tune.add_argument("--no-progress", action="store_true")
    _add_threads_arg(tune)
    tune.set_defaults(func=cmd_tune)


def _experiment(args: argparse.Namespace) -> tuple[Any, str, dict[Any, int]]:
    """The experiment, its file's name and its keys' lines."""
    from kd_env.comparison.spec import PRESET_FOLDER, load_preset, load_spec, preset_text
    from kd_env.comparison.spec_schema import parse_yaml

    if args.spec:
        source, text = args.spec, Path(args.spec).read_text()
        preset = load_spec(args.spec)
    else:
        source, text = f"{PRESET_FOLDER}/{args.preset}.yaml", preset_text(args.preset)
        preset = load_preset(args.preset)
    return preset, source, parse_yaml(text, source)[1]


def tune_settings(args: argparse.Namespace, section: Any, source: str) -> Any:
    """The session's :class:`~kd_env.comparison.tune.TuneSettings`: each from its flag, else from the
    experiment's ``tune:`` section (``section``, or ``None``), else its default.

    Raises:
        ValueError: the methods, the budget or the tuning seeds given nowhere.
    """
    from kd_env.comparison.tune import TuneSettings

    # each setting: (its TuneSettings field, its args attribute and key of the tune: section, its flag)
    settings = [
        ("labels", "methods", "--method"),
        ("trials", "trials", "--trials"),
        ("tuning_seeds", "tuning_seeds", "--tuning-seeds"),
        ("scenarios", "scenarios", "--scenarios"),
        ("startup_trials", "startup_trials", "--startup-trials"),
        ("sampler_seed", "sampler_seed", "--sampler-seed"),
    ]
    values: dict[str, Any] = {}
    arguments: dict[str, str] = {}
    for name, key, flag in settings:
        if getattr(args, key) is not None:
            values[name], arguments[name] = getattr(args, key), flag
        elif section is not None:
            values[name], arguments[name] = getattr(section, key), f"tune.{key} of {source}"
    missing = [flag for name, _, flag in settings[:3] if name not in values]
    if missing:
        raise ValueError(f"give {', '.join(missing)}, or write a `tune:` section in the experiment file ({source})")
    return TuneSettings(
        labels=tuple(values["labels"]),
        trials=values["trials"],
        tuning_seeds=tuple(values["tuning_seeds"]),
        scenarios=tuple(None if pool in ("null", "none") else pool for pool in values.get("scenarios", ())),
        space_folder=args.space_dir,
        arguments=arguments,
        **{name: values[name] for name in ("startup_trials", "sampler_seed") if name in values},  # else TuneSettings' defaults
    )


def cmd_tune(args: argparse.Namespace) -> int:
    from kd_env.comparison.planned import DEFAULT_RETRIES
    from kd_env.comparison.spec import fold_overrides
    from kd_env.comparison.tune import tune
    from kd_env.comparison.tuned import BEST_PARAMS_FILE, budget_table

    retries = DEFAULT_RETRIES if args.retries is None else args.retries
    if args.jobs < 1 or retries < 0:
        print(f"error: --jobs must be >= 1 and --retries >= 0, got {args.jobs} and {retries}", file=sys.stderr)
        return 2
    preset, source, lines = _experiment(args)
    preset = fold_overrides(preset, _key_values(args.env_arg, "--env-arg"))
    threads = _apply_threads(args.threads, jobs=args.jobs) if args.executor == "local" else args.threads
    try:
        settings = tune_settings(args, preset.tune, source)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"results/tune-{preset.name or 'custom'}")
    entries = tune(
        preset,
        out,
        settings,
        source,
        lines,
        executor=args.executor,
        jobs=args.jobs,
        threads=threads,
        retries=retries,
        progress=not args.no_progress,
    )
    print(budget_table(entries))
    print(f"best parameters and budget: {out / BEST_PARAMS_FILE}; evaluate them: kd-env bench ... --tuned {out / BEST_PARAMS_FILE}")
    return 0
