"""Issue #24: experiments as files (``kd-env bench --spec FILE``, :mod:`kd_env.comparison.spec`).

* every shipped preset file plans exactly the runs its Python preset planned (names included);
* a user's policy module and a 15-line file run with one command, and the user's rows are in
  every table (``results.md/.csv``, ``stats.md``, ``leader.md``);
* the output folder keeps the resolved spec and provenance; a resume with other settings is refused;
* bad input is one line naming the file, the key path, the line and what is allowed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
from presets_before_files import PRESETS_BEFORE

import kd_env
from kd_env.cli import main
from kd_env.comparison import PRESETS, Method, Preset, sweep
from kd_env.comparison.report import results_markdown
from kd_env.comparison.spec import SpecError, dump_spec, load_spec, parse_spec, preset_text


def _plan(preset: Preset, out: Path) -> list[tuple[str, dict]]:
    return [(run.run_dir.name, dataclasses.asdict(run.config)) for run in sweep.plan(preset, out) + sweep.plan_pretraining(preset, out)]


@pytest.mark.parametrize("name", sorted(PRESETS_BEFORE))
def test_each_shipped_file_plans_the_runs_of_its_python_preset(tmp_path, name):
    """The file is the preset: the same runs, in the same order, with the same names and settings
    (so sweeps finished before the presets became files resume), and the same report settings."""
    assert set(PRESETS_BEFORE) <= set(PRESETS)  # the presets that existed as Python, plus the files added since
    loaded, before = PRESETS[name], PRESETS_BEFORE[name]
    assert _plan(loaded, tmp_path) == _plan(before, tmp_path)
    assert dataclasses.replace(loaded, name="") == before
    # and a file written from it reads back to it (what the output folder's spec.yaml relies on)
    assert parse_spec(dump_spec(loaded), check=False) == loaded


SUITE_V2 = {"suite-v2-labels": "full", "suite-v2-label-free": "none", "suite-v2-noisy-labels": "noisy"}


@pytest.mark.parametrize("name", sorted(SUITE_V2))
def test_suite_v2_presets_plan_every_pool_method_and_seed_in_their_regime(tmp_path, name):
    from kd_env.baselines import BASELINE_POLICIES
    from kd_env.baselines.policies import LABEL_CONFIDENCE_RULES

    preset = PRESETS[name]
    assert preset.env_kwargs["labels"] == SUITE_V2[name] and preset.seeds == [0, 1, 2, 3, 4]
    runs = sweep.plan(preset, tmp_path)
    assert len(runs) == len(preset.scenarios) * len(preset.methods) * len(preset.seeds)
    assert {run.config.env_kwargs["labels"] for run in runs} == {SUITE_V2[name]}
    agents = {method.agent for method in preset.methods}
    if SUITE_V2[name] == "none":  # nothing that the regime refuses
        assert not any(getattr(BASELINE_POLICIES.get(agent), "needs_training_labels", False) for agent in agents if agent != "oracle")
        assert not any(method.env_kwargs.get("reward_mode") == "label_logprob" for method in preset.methods)
        assert {"overlap", "mixed", "noisy", "specialists"} <= set(preset.scenarios)
    else:  # labels read: the label-confidence rules are in, as the bar
        assert set(LABEL_CONFIDENCE_RULES) <= agents


def test_show_preset_prints_the_file_to_start_from(tmp_path, capsys):
    assert main(["bench", "--show-preset", "suite"]) == 0
    text = capsys.readouterr().out
    assert text == preset_text("suite")
    mine = tmp_path / "mine.yaml"
    mine.write_text(text)
    copied = load_spec(mine, check=False)
    assert copied.name == "mine" and dataclasses.replace(copied, name="suite") == PRESETS["suite"]


def test_register_pool_and_teacher_recipe_at_the_top_level():
    """As the README writes them."""
    spec = kd_env.register_pool("top-level-pool", recipes=[kd_env.TeacherRecipe("mlp", epochs=1, classes=(0, 1))], overwrite=True)
    assert spec.recipes is not None and spec.recipes("synthetic", 4)[0].classes == (0, 1)


def test_tables_say_n_a_for_what_one_seed_does_not_define():
    row = {
        "scenario": "",
        "student": "",
        "method": "AVER",
        "reference": False,
        "seeds": 1,
        "test_acc_mean": 71.2,
        "test_acc_std": float("nan"),
        "test_acc_ci_low": float("nan"),
        "test_acc_ci_high": float("nan"),
        "vs_baseline_mean": float("nan"),
        "vs_baseline_ci_low": float("nan"),
        "vs_baseline_ci_high": float("nan"),
        "best_val_acc_mean": 70.0,
        "best_val_acc_std": float("nan"),
        "wall_time_s_mean": 3.0,
        "peak_memory_mib_max": 500.0,
    }
    markdown = results_markdown([row], "custom", Preset("x", [Method("AVER", "aver")], [0], {}))
    assert markdown.startswith("Preset `custom`.\n")  # no description: nothing after the name
    line = next(line for line in markdown.splitlines() if line.startswith("| AVER"))
    assert "71.20 +- n/a | n/a | n/a | n/a | 70.00 +- n/a" in line and "+- 0.00" not in line and "[-" not in line


# ----------------------------------------------------------------------------------- bad input
GOOD = """\
env_id: MultiTeacherKD-Synthetic-v0
env_kwargs: {epochs: 1}
scenarios: [noisy]
seeds: [0, 1]
methods:
- {label: AVER, agent: aver}
- {label: Oracle, agent: oracle, per_sample: true, reference: true}
contrasts: [[Oracle, AVER]]
"""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "env_kwargs: {epochs: 1}",
            "env_kwargs: {epochs: 1}\nseed: [0]",
            ": seed: unknown key 'seed' (did you mean 'seeds'?) (line 3); allowed: name,",
        ),
        ("seeds: [0, 1]", "seeds: [0, one]", "seeds[1]: expected an integer, got 'one' (a string) (line 4)"),
        ("per_sample: true, reference", "per_sample: yes please, reference", "methods[1].per_sample: expected true or false"),
        ("{label: AVER, agent: aver}", "{label: AVER, agent: avr}", "methods[0].agent: unknown agent 'avr' (line 6); known: reinforce,"),
        ("scenarios: [noisy]", "scenarios: [noisy, noisier]", "scenarios[1]: unknown pool 'noisier' (line 3); known: capacity,"),
        (
            "{label: Oracle,",
            "{label: AVER,",
            "methods[1].label: label 'AVER' is used twice (also methods[0]); each must be unique (line 7)",
        ),
        ("[[Oracle, AVER]]", "[[Oracle, EBKD]]", "contrasts[0][1]: 'EBKD' is not a method label (line 8); the methods: AVER, Oracle"),
        ("env_kwargs: {epochs: 1}", "env_kwargs: {epochs: 1}\nimports: [no_such_module]", "imports[0]: cannot import 'no_such_module'"),
        ("env_kwargs: {epochs: 1}", "env_kwargs: {epochs: 1}\nimports: [missing.py]", "imports[0]: cannot import"),
        ("{epochs: 1}", "{epochs: 1, reward_mod: neg_loss}", "env_kwargs: KDEnvSettings() got an unexpected keyword argument 'reward_mod'"),
        (
            "{label: AVER, agent: aver}",
            "{label: AVER, agent: mtkd-rl}",
            "methods[0].per_sample: agent 'mtkd-rl' runs on the per-sample env only (line 6)",
        ),
        ("scenarios: [noisy]", "scenarios: [noisy, {name: mine, recipes: []}]", "scenarios[1]: an inline pool needs at least one teacher"),
        ("scenarios: [noisy]", "scenarios: [noisy, {name: mine, paths: [nowhere.pt]}]", "scenarios[1].paths[0]: no teacher checkpoint at"),
        ("scenarios: [noisy]", "scenarios: [noisy, {name: noisy, paths: [a.pt]}]", "scenarios[1]: entry 'noisy' is used twice"),
        ("seeds: [0, 1]", "seeds: [0, 1]\nseeds: [2]", "seeds: key 'seeds' given twice (line 5)"),
        ("methods:", "methods: [", "not valid YAML"),
        ("env_id: MultiTeacherKD-Synthetic-v0\n", "", "(top level): missing key 'env_id'"),
    ],
)
def test_bad_input_is_one_line_naming_the_file_key_and_line(tmp_path, capsys, old, new, expected):
    assert old in GOOD
    path = tmp_path / "experiment.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message
    # through the CLI: that line, no traceback, and nothing ran
    assert main(["bench", "--spec", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_numbers_read_as_a_user_means_them():
    preset = parse_spec(GOOD.replace("{epochs: 1}", "{epochs: 1, lr: 1e-3, weight_decay: 5E-4}"), check=False)
    assert preset.env_kwargs == {"epochs": 1, "lr": 0.001, "weight_decay": 0.0005}


# ---------------------------------------------------------------------- the user's experiment
POLICIES = '''
import numpy as np
import kd_env

class Pick:
    """All the weight on one teacher."""
    def __init__(self, env, seed=0, teacher=0):
        self.k, self.teacher = env.unwrapped.num_teachers, teacher
    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        weights = np.zeros(observation.shape[:-1] + (self.k,), dtype=np.float32)
        weights[..., self.teacher] = 1.0
        return weights, state

kd_env.register_policy("first-teacher", Pick, action_mode="simplex", per_sample=False)
kd_env.register_policy("last-teacher", lambda env, seed=0: Pick(env, seed, -1), action_mode="simplex", per_sample=False)
'''

# what the README shows: two methods of the user's, AVER and the oracle, two pools (one inline), 2 seeds, 1 epoch
EXPERIMENT = """\
env_id: MultiTeacherKD-Synthetic-v0
env_kwargs: {epochs: 1, alpha: 5.0, feature_kd: false, synthetic: {num_classes: 8, train_size: 1024}}
imports: [my_policies.py]
scenarios:
- noisy
- name: one-wrong
  recipes: [{arch: mlp, epochs: 3}, {arch: mlp, epochs: 3, seed: 1, relabel: 1}]
seeds: [0, 1]
methods:
- {label: AVER, agent: aver, reference: true}
- {label: Oracle, agent: oracle, per_sample: true, env_kwargs: {reward_mode: neg_loss}, reference: true}
- {label: First teacher, agent: first-teacher}
- {label: Last teacher, agent: last-teacher}
"""


@pytest.mark.slow
def test_a_users_method_and_pool_run_from_one_file(tmp_path, capsys):
    """The target of #24: a policy module and a 15-line file, one command, the user's rows in
    every table; the folder keeps the resolved spec; the same command continues the sweep, and
    one with other settings is refused."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_policies.py").write_text(POLICIES)
    spec = folder / "my_experiment.yaml"
    spec.write_text(EXPERIMENT)
    assert len(EXPERIMENT.splitlines()) <= 15
    out = tmp_path / "out"

    assert main(["bench", "--spec", str(spec), "--out", str(out), "--jobs", "2", "--no-progress"]) == 0, capsys.readouterr().err
    mine = {"First teacher", "Last teacher"}
    results = (out / "results.md").read_text()
    assert results.startswith("Preset `my_experiment`.") and "### noisy" in results and "### one-wrong" in results
    for label in mine:
        assert results.count(f"| {label} |") == 2  # a row per scenario
    with (out / "results.csv").open() as handle:
        assert {(row["scenario"], row["method"]) for row in csv.DictReader(handle)} >= {
            (s, m) for s in ("noisy", "one-wrong") for m in mine
        }
    assert all(f"| {label} |" in (out / "stats.md").read_text() for label in mine)
    leader = json.loads((out / "leader.json").read_text())
    assert {row["leader"] for row in leader} <= mine and {row["versus"] for row in leader} >= {"AVER", "Oracle"}
    assert all(f"| {label} |" in (out / "leader.md").read_text() or f"**{label}**" in (out / "leader.md").read_text() for label in mine)

    # the folder keeps what ran: the resolved spec (absolute paths) and kd-env's version
    kept = load_spec(out / "spec.yaml")
    assert kept.imports == [str(folder / "my_policies.py")] and set(kept.pools) == {"one-wrong"}
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["sessions"][0]["kd_env_version"] == kd_env.__version__

    # the same command continues (nothing runs again); so does the kept spec
    done = {run.run_dir: run.run_dir.joinpath("result.json").stat().st_mtime for run in sweep.plan(kept, out)}
    assert main(["bench", "--spec", str(out / "spec.yaml"), "--out", str(out), "--no-progress"]) == 0
    assert {path: path.joinpath("result.json").stat().st_mtime for path in done} == done
    # other settings under the same run names are refused, saying what differs
    spec.write_text(EXPERIMENT.replace("epochs: 1,", "epochs: 2,"))
    assert main(["bench", "--spec", str(spec), "--out", str(out), "--no-progress"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"error: {out} holds a sweep of another experiment") and '"epochs": 1' in error and '"epochs": 2' in error
