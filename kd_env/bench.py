"""The benchmark: methods x seeds on one env configuration, one fair footing for all.

``kd-env bench --preset NAME --out DIR`` (or :func:`run_benchmark`) runs every method of a preset
for every seed, each run in its own process (so each run's peak memory is its own and a crash
stops only that run), through the same runner and env as ``kd-env train``. Every method trains
one student for the same budget; the number reported per run is the test accuracy of the
student with the best *validation* accuracy (the test set is never used to choose anything).

Outputs in ``DIR``: ``results.md`` / ``results.csv`` / ``results.json`` (mean +- std over
seeds per method), ``val_acc.png`` (validation accuracy over training, mean over seeds),
``weights.png`` (each method's teacher weights over training), and one folder per run with its
TensorBoard events. An interrupted sweep continues where it stopped: finished runs (those with a
``result.json``) are not run again, and a run stopped mid-way resumes from its checkpoint.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kd_env.run import RunConfig

FMNIST_ID = "MultiTeacherKD-FashionMNIST-v0"
SMOOTHING_WINDOW = 25


@dataclass(frozen=True)
class Method:
    """One row of the results table."""

    label: str
    agent: str
    per_sample: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Preset:
    env_id: str
    methods: list[Method]
    seeds: list[int]
    env_kwargs: dict[str, Any]
    students: list[str | None] = field(default_factory=lambda: [None])
    description: str = ""


_BASELINES = [
    Method("AVER", "aver"),
    Method("EBKD", "ebkd"),
    Method("CA-MKD", "camkd"),
    Method("AEKD", "aekd"),
    Method("Best teacher", "best"),
    Method("Random Dirichlet", "random"),
]
_PER_SAMPLE = {"reward_mode": "neg_loss"}

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        env_id=FMNIST_ID,
        methods=[Method("AVER", "aver"), Method("EBKD", "ebkd"), Method("REINFORCE", "reinforce")],
        seeds=[0],
        env_kwargs={"epochs": 1, "device": "cpu"},
        description="Fashion-MNIST, 1 epoch, 3 methods, 1 seed: a few minutes on 2 CPU cores with teachers cached",
    ),
    "fmnist": Preset(
        env_id=FMNIST_ID,
        methods=_BASELINES
        + [
            # the per-sample rules applied per sample, as published (the batch-level env averages them)
            Method("EBKD (per-sample)", "ebkd", per_sample=True, env_kwargs=_PER_SAMPLE),
            Method("CA-MKD (per-sample)", "camkd", per_sample=True, env_kwargs=_PER_SAMPLE),
            Method("REINFORCE", "reinforce"),
            Method("REINFORCE (per-sample)", "reinforce", per_sample=True, env_kwargs=_PER_SAMPLE),
            Method("MTKD-RL", "mtkd-rl", per_sample=True, env_kwargs=_PER_SAMPLE),
            Method("PPO", "ppo"),
            Method("PPO (per-sample)", "ppo", per_sample=True, env_kwargs=_PER_SAMPLE),
            Method("REINFORCE state=performance", "reinforce", env_kwargs={"state_parts": ["performance"]}),
            Method("REINFORCE state=gap", "reinforce", env_kwargs={"state_parts": ["gap"]}),
        ],
        seeds=[0, 1, 2],
        env_kwargs={"epochs": 3, "device": "cpu"},
        description="Fashion-MNIST default pool, every method, 3 seeds, plus the REINFORCE state ablation",
    ),
    "cifar100-paper": Preset(
        env_id="MultiTeacherKD-CIFAR100-v0",
        methods=[m for m in _BASELINES if m.agent in ("aver", "ebkd", "camkd", "aekd")]
        + [
            Method("MTKD-RL", "mtkd-rl", per_sample=True, env_kwargs=_PER_SAMPLE),
            Method("REINFORCE", "reinforce"),
            Method("PPO", "ppo"),
        ],
        seeds=[0, 1, 2],
        env_kwargs={"epochs": 240, "device": "cuda"},
        students=["RegNetX_200MF", "MobileNetV2", "ShuffleV2", "resnet56"],
        description="MTKD-RL's CIFAR-100 setup (4-teacher pool, 4 students, 240 epochs): a GPU job",
    ),
}


def _run_name(method: Method, student: str | None, seed: int) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in method.label.lower()).strip("-")
    return f"{slug}{'__' + student if student else ''}__seed{seed}"


def plan(preset: Preset, out: Path, overrides: dict[str, Any] | None = None) -> list[tuple[Method, str | None, RunConfig]]:
    """Every run of a preset as a :class:`RunConfig`, in a stable order."""
    runs = []
    for student in preset.students:
        for method in preset.methods:
            for seed in preset.seeds:
                env_kwargs = {**preset.env_kwargs, **method.env_kwargs, **(overrides or {})}
                if student:
                    env_kwargs["student"] = student
                config = RunConfig(
                    env_id=preset.env_id,
                    agent=method.agent,
                    run_dir=str(out / "runs" / _run_name(method, student, seed)),
                    per_sample=method.per_sample,
                    env_kwargs=env_kwargs,
                    agent_kwargs=dict(method.agent_kwargs),
                    seed=seed,
                    progress=False,
                )
                runs.append((method, student, config))
    return runs


def _run_in_subprocess(config: RunConfig) -> None:
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bench_config.json").write_text(json.dumps(asdict(config), indent=1))
    log = run_dir / "log.txt"
    with log.open("a") as handle:
        completed = subprocess.run(
            [sys.executable, "-m", "kd_env.bench", "--run-one", str(run_dir)], stdout=handle, stderr=subprocess.STDOUT
        )
    if completed.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"run {run_dir.name} failed (exit {completed.returncode}); its log ends with:\n{tail}")


def _run_one(run_dir: Path) -> None:
    """Child process: run (or resume) the run described by ``bench_config.json``."""
    from kd_env.run import train

    config = RunConfig(**json.loads((run_dir / "bench_config.json").read_text()))
    resume = (run_dir / "checkpoints" / "state.json").exists()
    train(config, resume=resume)


def run_benchmark(
    preset: str | Preset, out: str | Path, overrides: dict[str, Any] | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Run (or continue) a preset's sweep (a name of :data:`PRESETS` or a :class:`Preset`) and
    write the tables and plots. Returns the rows."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset_name, preset = preset, PRESETS[preset]
    else:
        preset_name = "custom"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(preset, out, overrides)
    from tqdm.auto import tqdm

    bar = tqdm(runs, desc=f"bench {preset_name}", unit="run", disable=not progress)
    for method, student, config in bar:
        bar.set_postfix_str(Path(config.run_dir).name)
        if not (Path(config.run_dir) / "result.json").exists():
            _run_in_subprocess(config)
    rows = summarise(runs)
    write_tables(rows, out, preset_name, preset)
    plot(runs, out)
    return rows


def _load_result(config: RunConfig) -> dict[str, Any]:
    return json.loads((Path(config.run_dir) / "result.json").read_text())


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[tuple[Method, str | None, RunConfig]]) -> list[dict[str, Any]]:
    """One row per (method, student): mean and std over seeds."""
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for method, student, config in runs:
        groups.setdefault((method.label, student), []).append(_load_result(config))
    rows = []
    for (label, student), results in groups.items():
        test = [100 * r["episodes"][-1]["final_test_acc"] for r in results if r["episodes"]]
        val = [100 * r["episodes"][-1]["best_val_acc"] for r in results if r["episodes"]]
        test_mean, test_std = _mean_std(test)
        val_mean, val_std = _mean_std(val)
        rows.append(
            {
                "method": label,
                "student": student or "",
                "seeds": len(results),
                "test_acc_mean": round(test_mean, 2),
                "test_acc_std": round(test_std, 2),
                "best_val_acc_mean": round(val_mean, 2),
                "best_val_acc_std": round(val_std, 2),
                "wall_time_s_mean": round(statistics.fmean(r["wall_time_s"] for r in results), 1),
                "peak_memory_mib_max": round(max(r["peak_memory_mib"] for r in results), 1),
                "test_acc_per_seed": [round(v, 2) for v in test],
            }
        )
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path, preset_name: str, preset: Preset) -> None:
    (out / "results.json").write_text(json.dumps({"preset": preset_name, "description": preset.description, "rows": rows}, indent=1))
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[k for k in rows[0] if k != "test_acc_per_seed"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v for k, v in row.items() if k != "test_acc_per_seed"})
    lines = [
        f"Preset `{preset_name}`: {preset.description}.",
        "Test accuracy of the best-validation student, mean +- std over seeds.",
        "",
        "| method | student | seeds | test acc (%) | best val acc (%) | wall time (s) | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["student"], -r["test_acc_mean"])):
        lines.append(
            f"| {row['method']} | {row['student'] or '-'} | {row['seeds']} | {row['test_acc_mean']:.2f} +- {row['test_acc_std']:.2f} "
            f"| {row['best_val_acc_mean']:.2f} +- {row['best_val_acc_std']:.2f} | {row['wall_time_s_mean']:.0f} | {row['peak_memory_mib_max']:.0f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot(runs: list[tuple[Method, str | None, RunConfig]], out: Path) -> None:
    """``val_acc.png`` and ``weights.png`` (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by_method: dict[str, list[dict[str, Any]]] = {}
    for method, student, config in runs:
        key = method.label + (f" / {student}" if student else "")
        by_method.setdefault(key, []).append(_load_result(config))

    colors = plt.cm.tab20(np.linspace(0, 1, max(len(by_method), 2)))
    figure, axis = plt.subplots(figsize=(8, 5))
    for color, (label, results) in zip(colors, by_method.items()):
        curves = [r["val_curve"] for r in results if r["val_curve"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        steps = [point[0] for point in curves[0][:length]]
        values = np.mean([[100 * point[1] for point in c[:length]] for c in curves], axis=0)
        axis.plot(steps, values, marker="o", label=label, color=color)
    axis.set_xlabel("student updates")
    axis.set_ylabel("validation accuracy (%), mean over seeds")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "val_acc.png", dpi=120)
    plt.close(figure)

    columns = 3
    rows = (len(by_method) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False, sharey=True)
    for axis, (label, results) in zip(axes.flat, by_method.items()):
        trajectory = results[0]["weight_trajectory"]  # the first seed's run
        if trajectory:
            steps = np.array([point[0] for point in trajectory])
            weights = np.array([point[1] for point in trajectory])
            # a moving average: stochastic policies draw new weights every step
            window = max(1, min(SMOOTHING_WINDOW, len(steps) // 10))
            kernel = np.ones(window) / window
            for index, name in enumerate(results[0]["teacher_names"]):
                smoothed = np.convolve(weights[:, index], kernel, mode="valid")
                axis.plot(steps[window - 1 :], smoothed, label=name, linewidth=1.0)
        axis.set_title(label, fontsize=9)
        axis.set_ylim(-0.03, 1.03)
    for axis in list(axes.flat)[len(by_method):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.supxlabel("student updates")
    figure.supylabel(f"teacher weight (batch mean, moving average of {SMOOTHING_WINDOW} updates)")
    figure.tight_layout()
    figure.savefig(out / "weights.png", dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run-one":
        _run_one(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m kd_env.bench --run-one RUN_DIR (use `kd-env bench` instead)")
