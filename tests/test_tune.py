"""kd-env tune (issue #28): search spaces checked, the same budget per method, the tuned rows, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from processes import child_environment

optuna = pytest.importorskip("optuna")

from kd_env.cli import main  # noqa: E402
from kd_env.comparison import Method, Preset  # noqa: E402
from kd_env.comparison.planned import PlannedRun  # noqa: E402
from kd_env.comparison.search_space import accepted_parameters, load_search_space  # noqa: E402
from kd_env.comparison.spec import SpecError, dump_spec  # noqa: E402
from kd_env.comparison.sweep import plan  # noqa: E402
from kd_env.comparison.tune import STUDY_FILE, TuneSettings, tune  # noqa: E402
from kd_env.comparison.tuned import BEST_PARAMS_FILE, add_tuned_rows  # noqa: E402

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
TINY = {"epochs": 2, "max_steps_per_epoch": 3, "feature_kd": False}
SHIPPED_AGENTS = ["router", "mtkd-rl-pg", "reinforce", "ppo", "sac", "mtkd-rl", "mmkd", "aekd", "ce-softmax", "random"]


def _preset(**changes: Any) -> Preset:
    values: dict[str, Any] = {
        "env_id": SYNTHETIC,
        "methods": [Method("AVER", "aver"), Method("AEKD", "aekd"), Method("Random", "random")],
        "seeds": [0, 1],
        "env_kwargs": dict(TINY),
        "name": "tiny",
        "train_teachers": False,
    }
    return Preset(**{**values, **changes})


class FakeExecutor:
    """Writes each run's result.json at once: best validation accuracy from its agent arguments."""

    def __init__(self, score: Any) -> None:
        self.score = score
        self.calls: list[list[PlannedRun]] = []

    def run(self, runs: list[PlannedRun], progress: bool = True, description: str = "") -> list[tuple[PlannedRun, str]]:
        self.calls.append(runs)
        for run in runs:
            if run.done:
                continue
            value = self.score(run.config.agent_kwargs, run.config.seed)
            run.run_dir.mkdir(parents=True, exist_ok=True)
            episode = {"best_val_acc": value, "best_epoch": 1.0, "final_test_acc": 0.0}
            (run.run_dir / "result.json").write_text(json.dumps({"episodes": [episode], "wall_time_s": 2.0}))
        return []


def _settings(**changes: Any) -> TuneSettings:
    values: dict[str, Any] = {"labels": ("AEKD", "Random"), "trials": 4, "tuning_seeds": (100, 101), "startup_trials": 2}
    return TuneSettings(**{**values, **changes})


def _score(kwargs: dict[str, Any], seed: int) -> float:
    return 0.5 + 0.1 * kwargs.get("cap", 0.0) + 0.01 * kwargs.get("concentration", 0.0)


# ------------------------------------------------------------------------------- bad input
def test_shipped_search_spaces_name_only_arguments_their_agents_take():
    for agent in SHIPPED_AGENTS:
        space = load_search_space(agent)
        accepted = accepted_parameters(agent)
        assert accepted is not None and space.params, agent
        assert {param.name for param in space.params} <= accepted, agent


def _space(folder: Path, agent: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{agent}.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        ("cap: {low: 0.2, high: 1.0}\nalpha: {low: 0.1, high: 0.5}\n", "alpha", 2, "does not take an argument 'alpha'"),
        ("cap: {low: 0.8, high: 0.8}\n", "cap.high", 1, "an empty range"),
        ("cap: {choices: []}\n", "cap.choices", 1, "an empty range"),
        ("cap: {low: 0.0, high: 1.0, log: true}\n", "cap.low", 1, "log range needs low > 0"),
    ],
)
def test_a_bad_search_space_is_one_error_naming_file_and_key_and_nothing_runs(tmp_path, text, key, line, message):
    path = _space(tmp_path / "spaces", "aekd", text)
    executor = FakeExecutor(_score)
    with pytest.raises(SpecError) as error:
        tune(_preset(), tmp_path / "out", _settings(labels=("AEKD",), space_folder=str(path.parent)), executor=executor, progress=False)
    assert str(error.value).startswith(f"{path}: {key}: ") and message in str(error.value) and f"(line {line})" in str(error.value)
    assert executor.calls == [] and not (tmp_path / "out").exists()


def test_tuning_seeds_that_are_evaluation_seeds_are_refused_at_the_files_key(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(dump_spec(_preset()))
    out = tmp_path / "out"
    args = ["tune", "--spec", str(spec), "--method", "AEKD", "--trials", "2", "--tuning-seeds", "1", "100", "--out", str(out)]
    assert main(args) == 1
    error = capsys.readouterr().err
    line = spec.read_text().splitlines().index("seeds: [0, 1]") + 1
    assert f"{spec}: seeds: tuning seeds [1] (--tuning-seeds) are evaluation seeds" in error and f"(line {line})" in error
    assert not out.exists()
    assert main([*args[:-4], "100", "--method", "EBKD?", "--out", str(out)]) == 1
    assert "'EBKD?' (--method) is not a method label" in capsys.readouterr().err
    assert main([*args[:-4], "100", "--method", "AVER", "--out", str(out)]) == 1  # AVER has no knob
    assert "no search space for agent 'aver'" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ("{methods: [AEKD, EBKD?], trials: 2, tuning_seeds: [100]}", "tune.methods[1]", "'EBKD?' is not a method label"),
        ("{methods: [AEKD], trials: 2, tuning_seeds: [1, 100]}", "tune.tuning_seeds", "seeds [1] are evaluation seeds of the file"),
        ("{methods: [AEKD], trials: 0, tuning_seeds: [100]}", "tune.trials", "at least 1 trial per method, got 0"),
        ("{methods: [AEKD], trials: 2, tuning_seeds: [100], scenarios: [nowhere]}", "tune.scenarios[0]", "'nowhere' is not a scenario"),
        ("{methods: [AEKD], trials: 2}", "tune", "missing key 'tuning_seeds'"),
    ],
)
def test_a_bad_tune_section_is_one_error_at_its_key(tmp_path, section, key, message):
    from kd_env.comparison.spec import load_spec

    spec = tmp_path / "tiny.yaml"
    spec.write_text(dump_spec(_preset()) + f"tune: {section}\n")
    with pytest.raises(SpecError, match=rf"{spec}: {re.escape(key)}: .*{re.escape(message)}"):
        load_spec(spec)


def test_the_tune_section_runs_without_flags_and_flags_override_it(tmp_path, capsys, monkeypatch):
    import kd_env.comparison.tune as tune_module
    from kd_env.comparison.presets import Tuning
    from kd_env.comparison.spec import load_spec

    spec = tmp_path / "tiny.yaml"
    section = Tuning(methods=["AEKD", "Random"], trials=3, tuning_seeds=[100, 101], startup_trials=2)
    spec.write_text(dump_spec(_preset(tune=section)))
    assert load_spec(spec).tune == section  # written and read back
    seen: list[TuneSettings] = []
    monkeypatch.setattr(tune_module, "tune", lambda preset, out, settings, *args, **kwargs: seen.append(settings) or {})
    assert main(["tune", "--spec", str(spec), "--out", str(tmp_path / "out")]) == 0
    assert (seen[0].labels, seen[0].trials, seen[0].tuning_seeds, seen[0].startup_trials) == (("AEKD", "Random"), 3, (100, 101), 2)
    assert seen[0].given_as("trials") == f"tune.trials of {spec}"
    assert main(["tune", "--spec", str(spec), "--trials", "5", "--method", "AEKD", "--out", str(tmp_path / "out")]) == 0
    assert (seen[1].labels, seen[1].trials, seen[1].tuning_seeds) == (("AEKD",), 5, (100, 101))
    # without a section, the three settings must come as flags: nothing runs
    spec.write_text(dump_spec(_preset()))
    assert main(["tune", "--spec", str(spec), "--trials", "2", "--out", str(tmp_path / "out")]) == 2
    assert "give --method, --tuning-seeds, or write a `tune:` section" in capsys.readouterr().err and len(seen) == 2


def test_shipped_search_spaces_hold_their_agents_untuned_settings():
    from kd_env.comparison.search_space import untuned_values

    for agent in SHIPPED_AGENTS:
        values, missing = untuned_values(agent, {}, load_search_space(agent), "MultiTeacherKD-FashionMNIST-v0", False)
        assert not missing, f"{agent}: {missing}"
        assert set(values) == {param.name for param in load_search_space(agent).params}
    # a method's own agent_kwargs win over the defaults; a value outside the space is named
    space = load_search_space("aekd")
    assert untuned_values("aekd", {"cap": 0.75}, space, None, False) == ({"cap": 0.75}, [])
    assert untuned_values("aekd", {"cap": 0.1}, space, None, False) == ({}, ["cap=0.1 (not in the space)"])


def test_the_first_trial_of_a_study_is_the_methods_untuned_settings(tmp_path, capsys):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    preset = _preset(
        methods=[Method("AEKD", "aekd", agent_kwargs={"cap": 0.9}), Method("Random", "random", agent_kwargs={"concentration": 50.0})]
    )
    executor = FakeExecutor(_score)
    entries = tune(preset, tmp_path, _settings(trials=3), executor=executor, progress=False)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / STUDY_FILE)))
    first = optuna.load_study(study_name="AEKD", storage=storage).trials[0]
    assert first.params == {"cap": 0.9} and first.user_attrs["untuned"] is True
    assert entries["AEKD"]["untuned_value"] == pytest.approx(_score({"cap": 0.9}, 0), abs=1e-6)
    assert entries["AEKD"]["trials_run"] == 3  # the untuned trial counts in the budget
    assert entries["AEKD"]["best_is_untuned"] == (entries["AEKD"]["best_trial"] == 0)
    # a setting outside the space cannot be a trial: said, and the study samples all its trials
    assert "Random: the untuned settings are not a trial (concentration=50.0 (not in the space)" in capsys.readouterr().err
    assert entries["Random"]["untuned_value"] is None and entries["Random"]["trials_run"] == 3


# ------------------------------------------------------------------------- budget and output
def test_every_method_gets_the_same_budget_and_the_bench_reads_the_best_parameters(tmp_path):
    executor = FakeExecutor(_score)
    entries = tune(_preset(), tmp_path, _settings(), executor=executor, progress=False)
    for label in ("AEKD", "Random"):
        entry = entries[label]
        assert entry["trials_budget"] == entry["trials_run"] == 4
        assert entry["trials_complete"] + entry["trials_pruned"] + entry["trials_failed"] == 4
        assert entry["cpu_seconds"] > 0 and entry["wall_time_s"] >= 0
    assert 0.2 <= entries["AEKD"]["params"]["cap"] <= 1.0
    assert entries["AEKD"]["best_value"] == pytest.approx(_score(entries["AEKD"]["params"], 0), abs=1e-6)
    written = yaml.safe_load((tmp_path / BEST_PARAMS_FILE).read_text())
    assert written["methods"] == entries and written["tuning_seeds"] == [100, 101]
    assert "| AEKD | 4 (4) |" in (tmp_path / "tuning.md").read_text()
    # every trial ran at the tuning seeds only
    seeds = {run.config.seed for call in executor.calls for run in call}
    assert seeds == {100, 101}

    preset = add_tuned_rows(_preset(), tmp_path / BEST_PARAMS_FILE)
    labels = [method.label for method in preset.methods]
    assert labels == ["AVER", "AEKD", "AEKD (tuned)", "Random", "Random (tuned)"]
    assert ("AEKD (tuned)", "AEKD") in preset.contrasts
    # the experiment's own contrasts again, tuned against tuned (AVER has no knob: as it is)
    with_contrasts = add_tuned_rows(_preset(contrasts=[("AEKD", "Random"), ("AEKD", "AVER")]), tmp_path / BEST_PARAMS_FILE)
    assert with_contrasts.contrasts[-2:] == [("AEKD (tuned)", "Random (tuned)"), ("AEKD (tuned)", "AVER")]
    # a method whose untuned settings won gets no row (the same runs): its row stands as its tuned row
    data = yaml.safe_load((tmp_path / BEST_PARAMS_FILE).read_text())
    data["methods"]["Random"]["best_is_untuned"] = True
    (tmp_path / "kept.yaml").write_text(yaml.safe_dump(data))
    kept = add_tuned_rows(_preset(contrasts=[("AEKD", "Random")]), tmp_path / "kept.yaml")
    assert [method.label for method in kept.methods] == ["AVER", "AEKD", "AEKD (tuned)", "Random"]
    assert kept.contrasts == [("AEKD", "Random"), ("AEKD (tuned)", "AEKD"), ("AEKD (tuned)", "Random")]
    tuned_runs = [run for run in plan(preset, tmp_path / "bench") if run.method.label == "AEKD (tuned)"]
    assert [run.config.seed for run in tuned_runs] == [0, 1]  # the evaluation seeds
    assert all(run.config.agent_kwargs == entries["AEKD"]["params"] for run in tuned_runs)

    # a tuned file is refused for an experiment whose evaluation seeds include its tuning seeds
    with pytest.raises(SpecError, match=r"best_params.yaml: tuning_seeds: seeds \[100\] are evaluation seeds"):
        add_tuned_rows(_preset(seeds=[0, 100]), tmp_path / BEST_PARAMS_FILE)

    # continuing with a larger budget adds trials only; the same budget runs nothing
    calls = len(executor.calls)
    tune(_preset(), tmp_path, _settings(), executor=executor, progress=False)
    assert len(executor.calls) == calls
    # a space with choices continues too (its identity read back from the journal is the same)
    folder = tmp_path / "spaces"
    _space(folder, "random", "concentration: {choices: [0.5, 1.0, 2.0]}\n")
    with_choices = _settings(labels=("Random",), trials=2, space_folder=str(folder))
    tune(_preset(), tmp_path / "choices", with_choices, executor=executor, progress=False)
    assert tune(_preset(), tmp_path / "choices", with_choices, executor=executor, progress=False)["Random"]["trials_run"] == 2
    assert tune(_preset(), tmp_path, _settings(trials=5), executor=executor, progress=False)["AEKD"]["trials_run"] == 5


def test_the_median_pruner_stops_a_clearly_bad_trial(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / STUDY_FILE)))
    study = optuna.create_study(study_name="AEKD", storage=storage, direction="maximize")
    for cap in (0.9, 0.8, 0.95, 0.21):
        study.enqueue_trial({"cap": cap})
    executor = FakeExecutor(lambda kwargs, seed: kwargs["cap"])
    entries = tune(
        _preset(), tmp_path, _settings(labels=("AEKD",), trials=4, tuning_seeds=(100, 101, 102)), executor=executor, progress=False
    )
    assert entries["AEKD"]["trials_pruned"] == 1 and entries["AEKD"]["trials_complete"] == 3
    assert entries["AEKD"]["params"] == {"cap": 0.95}
    pruned = [t for t in optuna.load_study(study_name="AEKD", storage=storage).trials if t.state.name == "PRUNED"]
    assert [t.params for t in pruned] == [{"cap": 0.21}] and list(pruned[0].intermediate_values) == [0]
    # the pruned trial's seeds 101 and 102 never ran
    ran = {(run.config.agent_kwargs["cap"], run.config.seed) for call in executor.calls for run in call}
    assert (0.21, 100) in ran and (0.21, 101) not in ran


def test_a_trial_left_running_is_tried_again_and_not_counted(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / STUDY_FILE)))
    study = optuna.create_study(study_name="AEKD", storage=storage, direction="maximize")
    finished = study.ask({"cap": optuna.distributions.FloatDistribution(0.2, 1.0)})
    study.tell(finished, 0.6)
    left = study.ask({"cap": optuna.distributions.FloatDistribution(0.2, 1.0)})  # a session killed here
    executor = FakeExecutor(_score)
    entries = tune(_preset(), tmp_path, _settings(labels=("AEKD",), trials=3), executor=executor, progress=False)
    assert entries["AEKD"]["trials_run"] == 3 and entries["AEKD"]["trials_interrupted"] == 1
    trials = optuna.load_study(study_name="AEKD", storage=storage).trials
    assert trials[0].value == 0.6 and trials[1].state.name == "FAIL"
    assert trials[2].params == left.params and trials[2].user_attrs["retry_of"] == left.number


def test_a_resumed_study_keeps_its_untuned_trial_and_samples_afresh(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    executor = FakeExecutor(_score)
    preset = _preset(methods=[Method("AEKD", "aekd", agent_kwargs={"cap": 0.9})])
    storage = JournalStorage(JournalFileBackend(str(tmp_path / STUDY_FILE)))
    # the killed session's sampler as tune() seeds a new study's (sampler_seed 0, no trials before)
    sampler = optuna.samplers.TPESampler(n_startup_trials=4, seed=0, constant_liar=True)
    study = optuna.create_study(study_name="AEKD", storage=storage, direction="maximize", sampler=sampler)
    study.enqueue_trial({"cap": 0.9}, user_attrs={"untuned": True})
    distribution = {"cap": optuna.distributions.FloatDistribution(0.2, 1.0)}
    untuned = study.ask(distribution)  # a session killed while its untuned trial and a sampled one ran
    sampled = study.ask(distribution)
    entries = tune(preset, tmp_path, _settings(labels=("AEKD",), trials=4, startup_trials=4), executor=executor, progress=False)
    trials = optuna.load_study(study_name="AEKD", storage=storage).trials
    retried = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert retried[untuned.number].params == {"cap": 0.9} and retried[untuned.number].user_attrs["untuned"] is True
    assert entries["AEKD"]["untuned_value"] == pytest.approx(_score({"cap": 0.9}, 0), abs=1e-6)
    # the new session's random trials are not the killed session's again
    fresh = [t.params["cap"] for t in trials if t.number > sampled.number and "retry_of" not in t.user_attrs]
    assert fresh and sampled.params["cap"] not in fresh


# --------------------------------------------------------------------------- a real study, killed
@pytest.mark.slow
def test_a_study_killed_mid_trial_continues_without_losing_finished_trials(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    spec = tmp_path / "tiny.yaml"
    spec.write_text(dump_spec(_preset(methods=[Method("AEKD", "aekd")], train_teachers=True)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kd_env.cli", "tune", "--spec", str(spec), "--method", "AEKD", "--trials", "3"]
    command += ["--tuning-seeds", "100", "--startup-trials", "1", "--out", str(out), "--jobs", "1", "--threads", "1", "--no-progress"]
    environment = child_environment(KD_ENV_CACHE=str(tmp_path / "cache"))
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def trials() -> list[Any]:
        if not (out / STUDY_FILE).exists():
            return []
        try:
            return optuna.load_study(study_name="AEKD", storage=JournalStorage(JournalFileBackend(str(out / STUDY_FILE)))).trials
        except KeyError:  # the study is not created yet
            return []

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        states = [t.state.name for t in trials()]
        if "COMPLETE" in states and states[-1] == "RUNNING":
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[0].decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = [(t.number, t.params, t.value) for t in trials() if t.state.name == "COMPLETE"]
    assert before and trials()[-1].state.name == "RUNNING"

    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    after = trials()
    assert [(t.number, t.params, t.value) for t in after if t.number in {n for n, _, _ in before}] == before
    entry = yaml.safe_load((out / BEST_PARAMS_FILE).read_text())["methods"]["AEKD"]
    assert entry["trials_run"] == 3 and entry["trials_interrupted"] == 1
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after) == 3


def test_bench_tuned_adds_the_tuned_rows_to_what_it_runs(tmp_path, monkeypatch, capsys):
    import kd_env.comparison

    tune(_preset(), tmp_path, _settings(labels=("AEKD",), trials=2), executor=FakeExecutor(_score), progress=False)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(dump_spec(_preset()))
    seen: list[Preset] = []

    def fake_run_benchmark(preset: Preset, out: Any, *args: Any, **kwargs: Any) -> list[Any]:
        seen.append(preset)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.md").write_text("")
        return []

    monkeypatch.setattr(kd_env.comparison, "run_benchmark", fake_run_benchmark)
    assert main(["bench", "--spec", str(spec), "--tuned", str(tmp_path / BEST_PARAMS_FILE), "--out", str(tmp_path / "bench")]) == 0
    assert [method.label for method in seen[0].methods] == ["AVER", "AEKD", "AEKD (tuned)", "Random"]
    best = yaml.safe_load((tmp_path / BEST_PARAMS_FILE).read_text())["methods"]["AEKD"]["params"]
    assert seen[0].methods[2].agent_kwargs == best and seen[0].seeds == [0, 1]
