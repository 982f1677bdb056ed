"""Tuning every method with the same budget (issue #28): Optuna, TPE and a median pruner, as RL Zoo's ``--optimize``.

``kd-env tune --spec FILE --method LABEL ... --trials N --tuning-seeds 100 101 --out DIR`` (or
:func:`tune`) runs one Optuna study per method of an experiment. A trial is the method at sampled
parameters (its search space, :mod:`~kd_env.comparison.search_space`, over its ``agent_kwargs``)
trained on the tuning scenarios x students x tuning seeds, each a whole student run through the
same executors as the benchmark (:class:`~kd_env.comparison.sweep.LocalExecutor` with ``--jobs``,
or Ray). Its objective is the mean best *validation* accuracy of those runs (a run whose student
diverged counts 0); the test set is never read. Tuning seeds must be disjoint from the
experiment's evaluation seeds.

Sampler and pruner: TPE (``startup_trials`` random trials first, ``constant_liar`` for trials that
run at once) and a median pruner. The pruner's steps are the tuning seeds: after the runs of
seed ``i`` (every tuning scenario and student), a trial reports the mean best validation accuracy
of its runs so far and stops if it is below the median of the finished trials at that step.
(Pruning inside a run, at epoch ends, would stop and restart the runs, and an SB3 agent's
schedules depend on the length ``learn`` is given: the pruned and the evaluated runs would differ.)
``parallel`` trials go at once (default ``jobs``): their runs of one seed are one executor call.

The study is a file, ``<out>/study.journal`` (Optuna's JournalStorage: appends, one study per
method), so an interrupted study continues with the same command: finished trials are kept, a
trial killed mid-way is marked failed-as-interrupted (not counted in the budget) and its
parameters are tried again first; its runs that finished are reused (a trial's run folders are
named by its parameters) and a run that was stopped continues from its checkpoint.

A new study's first trial is the method's untuned settings (its ``agent_kwargs``, else the agent's
defaults: :func:`~kd_env.comparison.search_space.untuned_values`), as RL Zoo tries the defaults
first: the tuned row is picked against them on the same seeds, and the file reports both values.

Every method gets the same number of trials (``trials``, the untuned one included): counted are
complete, pruned and failed ones (a run that failed every attempt fails its trial). The best trial's parameters and the
budget spent (trials, wall time, CPU-seconds) go to ``<out>/best_params.yaml``
(:mod:`~kd_env.comparison.tuned`), which ``kd-env bench --tuned`` reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_env.comparison.planned import DEFAULT_RETRIES, Executor, PlannedRun
from kd_env.comparison.presets import Method, Preset
from kd_env.comparison.search_space import SearchSpace, load_search_space, untuned_values
from kd_env.comparison.spec_schema import Key, SpecError
from kd_env.comparison.sweep import _slug, planned_run, prepare_teachers
from kd_env.comparison.tuned import BEST_PARAMS_FILE, budget_table, write_tuned

__all__ = ["STUDY_FILE", "TuneSettings", "check_tuning", "tune"]

STUDY_FILE = "study.journal"

#: The user attribute that marks a study's first trial, the method's untuned settings.
UNTUNED = "untuned"


@dataclass(frozen=True)
class TuneSettings:
    """What a tuning session does, beside the experiment.

    Args:
        labels: the methods to tune (labels of the experiment).
        trials: the budget: trials per method (the same for every method).
        tuning_seeds: seeds of the tuning runs; never evaluation seeds of the experiment.
        scenarios: the pools to tune on (scenarios of the experiment); empty: all of them.
        startup_trials: random trials before TPE models, and finished trials before the pruner prunes.
        sampler_seed: TPE's seed (a resumed study continues from ``sampler_seed + trials so far``, interrupted ones included).
        space_folder: where ``<agent>.yml`` search spaces are (default: the shipped ones).
        parallel: trials at once (``None``: the executor's ``jobs``, else 1).
    """

    labels: tuple[str, ...]
    trials: int
    tuning_seeds: tuple[int, ...]
    scenarios: tuple[str | None, ...] = ()
    startup_trials: int = 5
    sampler_seed: int = 0
    space_folder: str | None = None
    parallel: int | None = None
    arguments: dict[str, str] = field(default_factory=dict)
    """How the caller gave each setting, for error messages (``{"tuning_seeds": "--tuning-seeds"}``)."""

    def given_as(self, name: str) -> str:
        return self.arguments.get(name, name)


def check_tuning(
    preset: Preset, settings: TuneSettings, source: str, lines: dict[Key, int] | None = None
) -> list[tuple[Method, SearchSpace]]:
    """Every method's search space, after checking the settings against the experiment (read from
    ``source``; ``lines``: its keys' lines). Nothing runs before this passes.

    Raises:
        SpecError: one line naming the file and key: a label that is no method, a transfer
            method, a search space that names an argument the agent does not take or has an empty
            range, tuning seeds that are evaluation seeds, a scenario the experiment does not have,
            a budget below 1.
    """
    from kd_env.comparison.spec_schema import SpecContext

    context = SpecContext(source, None, lines or {})
    if settings.trials < 1:
        raise SpecError(f"{settings.given_as('trials')}: the budget must be at least 1 trial per method, got {settings.trials}")
    if not settings.tuning_seeds:
        raise SpecError(f"{settings.given_as('tuning_seeds')}: give at least one tuning seed")
    if len(set(settings.tuning_seeds)) != len(settings.tuning_seeds):
        raise SpecError(f"{settings.given_as('tuning_seeds')}: a seed is listed twice: {list(settings.tuning_seeds)}")
    shared = sorted(set(settings.tuning_seeds) & set(preset.seeds))
    if shared:
        raise context.error(
            ("seeds",),
            f"tuning seeds {shared} ({settings.given_as('tuning_seeds')}) are evaluation seeds of the experiment {list(preset.seeds)}",
            "tuning seeds must be disjoint from the evaluation seeds",
        )
    for scenario in settings.scenarios:
        if scenario not in preset.scenarios:
            raise context.error(
                ("scenarios",),
                f"{scenario!r} ({settings.given_as('scenarios')}) is not a scenario of the experiment",
                f"the scenarios: {preset.scenarios}",
            )
    by_label = {method.label: (index, method) for index, method in enumerate(preset.methods)}
    if not settings.labels:
        raise SpecError(f"{settings.given_as('labels')}: name at least one method to tune")
    found = []
    for label in settings.labels:
        if label not in by_label:
            raise context.error(
                ("methods",), f"{label!r} ({settings.given_as('labels')}) is not a method label", f"the methods: {', '.join(by_label)}"
            )
        index, method = by_label[label]
        if method.pretrain is not None:
            raise context.error(
                ("methods", index, "pretrain"), f"{label!r} pretrains a frozen policy: tuning a transfer method is not supported"
            )
        found.append((method, load_search_space(method.agent, settings.space_folder)))
    if len(set(settings.labels)) != len(settings.labels):
        raise SpecError(f"{settings.given_as('labels')}: a method is listed twice: {list(settings.labels)}")
    return found


# ------------------------------------------------------------------------------------ the runs
def params_id(params: dict[str, Any]) -> str:
    """A short digest of a trial's parameters: its run folders' name (a retried trial reuses them)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def trial_runs(
    preset: Preset, method: Method, params: dict[str, Any], seed: int, scenarios: list[str | None], out: Path
) -> list[PlannedRun]:
    """The runs of one trial at one tuning seed: every tuning scenario x student."""
    tuned = dataclasses.replace(method, agent_kwargs={**method.agent_kwargs, **params})
    folder = out / "trials" / _slug(method.label) / params_id(params)
    runs = []
    for scenario in scenarios:
        for student in preset.students:
            name = "__".join(part for part in (scenario, student, f"seed{seed}") if part)
            runs.append(planned_run(preset, tuned, scenario, student, folder / name, seed=seed, out=out, tensorboard=False))
    return runs


def _score(run: PlannedRun) -> tuple[float, float]:
    """A finished run's best validation accuracy (0 for a diverged student) and wall time."""
    result = json.loads((run.run_dir / "result.json").read_text())
    episodes = result.get("episodes") or []
    best = float(episodes[-1]["best_val_acc"]) if episodes else float("nan")
    return (0.0 if math.isnan(best) else best), float(result.get("wall_time_s", 0.0))


# ----------------------------------------------------------------------------------- the study
def _counted(study: Any) -> dict[str, int]:
    """The study's trials by outcome: complete, pruned, failed (counted in the budget) and interrupted (not)."""
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif trial.state == TrialState.FAIL:
            counts["failed" if "error" in trial.user_attrs else "interrupted"] += 1
    return counts


def _recover_interrupted(study: Any) -> int:
    """Trials left running by a killed session: marked failed (interrupted, not counted) and their
    parameters queued to be tried first. Returns how many."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        again = {"retry_of": trial.number, **({UNTUNED: True} if trial.user_attrs.get(UNTUNED) else {})}
        study.enqueue_trial(dict(trial.params), user_attrs=again)
    return len(stale)


def _open_study(storage: Any, method: Method, settings: TuneSettings, identity: dict[str, Any]) -> Any:
    import optuna

    study = optuna.create_study(study_name=method.label, storage=storage, direction="maximize", load_if_exists=True)
    before = study.user_attrs.get("identity")
    if before is not None and before != identity:
        changed = [key for key in identity if before.get(key) != identity[key]]
        raise SpecError(
            f"the study of {method.label!r} in this folder was run with other settings ({', '.join(changed)}): "
            f"{json.dumps({k: before.get(k) for k in changed})} there; use another --out"
        )
    study.set_user_attr("identity", identity)
    # a resumed session seeds TPE apart from the sessions before it (trials left running included),
    # or its random start-up trials would repeat theirs
    earlier = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(
        n_startup_trials=settings.startup_trials, seed=settings.sampler_seed + earlier, constant_liar=True
    )
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=0)
    return study


def _run_study(
    preset: Preset,
    method: Method,
    space: SearchSpace,
    settings: TuneSettings,
    scenarios: list[str | None],
    storage: Any,
    executor: Executor,
    parallel: int,
    threads: int,
    out: Path,
    progress: bool,
) -> dict[str, Any]:
    """One method's study, run (or continued) until ``settings.trials`` trials are counted."""
    from optuna.trial import TrialState

    identity = {
        "agent": method.agent,
        "tuning_seeds": list(settings.tuning_seeds),
        "scenarios": list(scenarios),
        "space": [dataclasses.asdict(param) for param in space.params],
    }
    identity = json.loads(json.dumps(identity))  # as the journal gives it back (a range's choices: a list)
    study = _open_study(storage, method, settings, identity)
    if not study.get_trials(deepcopy=False):
        _enqueue_untuned(study, preset, method, space)
    interrupted = _recover_interrupted(study)
    if interrupted:
        print(f"{method.label}: {interrupted} trial(s) interrupted by a stop; their parameters are tried again", file=sys.stderr)
    while (done := sum(v for k, v in _counted(study).items() if k != "interrupted")) < settings.trials:
        started = time.perf_counter()
        batch = []
        for _ in range(min(parallel, settings.trials - done)):
            trial = study.ask()
            batch.append((trial, space.suggest(trial)))
        scores: dict[int, list[float]] = {trial.number: [] for trial, _ in batch}
        seconds: dict[int, float] = {trial.number: 0.0 for trial, _ in batch}
        alive = batch
        for step, seed in enumerate(settings.tuning_seeds):
            runs = {trial.number: trial_runs(preset, method, params, seed, scenarios, out) for trial, params in alive}
            numbers = ", ".join(str(number) for number in runs)
            failures = executor.run(
                [run for group in runs.values() for run in group],
                progress=progress,
                description=f"tune {method.label}: trial {numbers}, seed {seed}",
            )
            failed = {run.run_dir: error for run, error in failures}
            survivors = []
            for trial, params in alive:
                errors = [failed[run.run_dir] for run in runs[trial.number] if run.run_dir in failed]
                for run in runs[trial.number]:
                    if run.run_dir not in failed:
                        value, wall = _score(run)
                        scores[trial.number].append(value)
                        seconds[trial.number] += wall
                trial.set_user_attr("run_seconds", seconds[trial.number])
                if errors:
                    trial.set_user_attr("error", errors[0][-1000:])
                    study.tell(trial, state=TrialState.FAIL)
                    _say(method, trial.number, "failed (a run failed every attempt)", None, params)
                    continue
                value = sum(scores[trial.number]) / len(scores[trial.number])
                trial.report(value, step)
                if step < len(settings.tuning_seeds) - 1 and trial.should_prune():
                    study.tell(trial, state=TrialState.PRUNED)
                    _say(method, trial.number, f"pruned after seed {seed}", value, params)
                    continue
                survivors.append((trial, params))
            alive = survivors
        for trial, params in alive:
            value = sum(scores[trial.number]) / len(scores[trial.number])
            study.tell(trial, value)
            _say(method, trial.number, "complete", value, params)
        study.set_user_attr("wall_time_s", study.user_attrs.get("wall_time_s", 0.0) + time.perf_counter() - started)
        study.set_user_attr("threads", threads)
    return _summary(study, method, settings)


def _enqueue_untuned(study: Any, preset: Preset, method: Method, space: SearchSpace) -> None:
    """A new study's first trial: the method as the experiment runs it untuned (RL Zoo's practice
    of trying the defaults first), so the tuned row is chosen against them on the same seeds."""
    values, missing = untuned_values(method.agent, dict(method.agent_kwargs), space, preset.env_id, method.per_sample)
    if missing:
        print(
            f"{method.label}: the untuned settings are not a trial ({', '.join(missing)}; {space.source}): widen the space to hold them",
            file=sys.stderr,
        )
        return
    study.enqueue_trial(values, user_attrs={UNTUNED: True})


def _say(method: Method, number: int, what: str, value: float | None, params: dict[str, Any]) -> None:
    """One line per finished trial, on stderr (``progress`` only turns the executor's bars off)."""
    shown = "" if value is None else f", mean best val acc {100 * value:.2f}"
    print(f"{method.label} trial {number}: {what}{shown}; {json.dumps(params)}", file=sys.stderr, flush=True)


def _summary(study: Any, method: Method, settings: TuneSettings) -> dict[str, Any]:
    """A method's entry of the tuned file: best parameters and the budget spent."""
    from optuna.trial import TrialState

    counts = _counted(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda trial: trial.value) if complete else None
    marked: set[int] = set()  # the untuned trial, and its retries (a journal from before retries carried the mark)
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(UNTUNED) or trial.user_attrs.get("retry_of") in marked:
            marked.add(trial.number)
    untuned = [trial for trial in complete if trial.number in marked]
    untuned_value = untuned[0].value if untuned else None
    threads = study.user_attrs.get("threads", 1)
    run_seconds = sum(trial.user_attrs.get("run_seconds", 0.0) for trial in study.get_trials(deepcopy=False))
    return {
        "agent": method.agent,
        "params": None if best is None else dict(best.params),
        "best_value": None if best is None else round(float(best.value), 6),
        "best_trial": None if best is None else best.number,
        "untuned_value": None if untuned_value is None else round(float(untuned_value), 6),
        "best_is_untuned": best is not None and best.number in marked,
        "trials_budget": settings.trials,
        "trials_run": counts["complete"] + counts["pruned"] + counts["failed"],
        "trials_complete": counts["complete"],
        "trials_pruned": counts["pruned"],
        "trials_failed": counts["failed"],
        "trials_interrupted": counts["interrupted"],
        "wall_time_s": round(float(study.user_attrs.get("wall_time_s", 0.0)), 1),
        "cpu_seconds": round(run_seconds * threads, 1),
    }


def tune(
    preset: Preset,
    out: str | Path,
    settings: TuneSettings,
    source: str = "<experiment>",
    lines: dict[Key, int] | None = None,
    executor: str | Executor = "local",
    jobs: int = 1,
    threads: int | None = None,
    retries: int = DEFAULT_RETRIES,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Tune ``settings.labels`` of ``preset`` (module docstring); returns the tuned file's method
    entries (also written to ``<out>/best_params.yaml``, and the budget table to ``<out>/tuning.md``).

    Raises:
        SpecError: bad settings or search spaces (:func:`check_tuning`): nothing runs.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from kd_env.comparison.spec import check_spec, record_spec
    from kd_env.comparison.sweep import LocalExecutor
    from kd_env.utils import threads_per_run

    methods = check_tuning(preset, settings, source, lines)
    check_spec(preset, source)
    scenarios = list(settings.scenarios or preset.scenarios)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record_spec(preset, out)  # the experiment the trials run (a folder of another one is refused)
    prepare_teachers(dataclasses.replace(preset, scenarios=scenarios))
    if executor == "local":
        threads = threads or threads_per_run(jobs)
        executor = LocalExecutor(jobs, threads, retries)
    elif executor == "ray":
        from kd_env.comparison.ray_executor import RayExecutor

        executor = RayExecutor(threads=threads, retries=retries)
    elif isinstance(executor, str):
        raise ValueError(f"unknown executor {executor!r}; choose local or ray")
    parallel = settings.parallel or max(1, jobs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / STUDY_FILE)))
    header = {
        "preset": preset.name or "custom",
        "env_id": preset.env_id,
        "tuning_seeds": list(settings.tuning_seeds),
        "scenarios": scenarios,
        "evaluation_seeds": list(preset.seeds),
    }
    entries: dict[str, dict[str, Any]] = {}
    for method, space in methods:
        entries[method.label] = _run_study(
            preset, method, space, settings, scenarios, storage, executor, parallel, threads or 1, out, progress
        )
        write_tuned(out / BEST_PARAMS_FILE, header, {method.label: entries[method.label]})
    (out / "tuning.md").write_text(budget_table(entries))
    return entries
