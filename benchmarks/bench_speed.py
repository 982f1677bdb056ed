"""Speed and memory of kd-env against hand-written and reference loops, measured side by side.

Run (after ``make install``; trains the Fashion-MNIST teacher pool first if it is not cached):

    .venv/bin/python benchmarks/bench_speed.py            # all sections
    .venv/bin/python benchmarks/bench_speed.py --section step --repeats 30

Sections (each prints ratios; the goals are from the project's issues):

* ``step``: one engine update with uniform weights / one bare hand-written multi-teacher KD
  update (same models, same batch, teachers run every step in both): goal <= 1.05.
* ``epoch``: the wall time of an epoch of a reference loop written the way the public MTKD-RL /
  RepDistiller code does it (torch ``DataLoader`` over torchvision's dataset with PIL
  transforms, teachers one after another, the KD loss computed again for the reward) / the
  same epoch through kd-env (uint8 tensors, teacher outputs cached since augmentation is off,
  every quantity computed once): goal >= 2.0. Each side runs in its own process so their
  peak memory (max RSS) is measured separately.
* ``env``: a batch-level env step and a per-sample env step / the engine step alone, same
  weights: goal <= 1.05 each.
* ``store`` (issue #8): env construction + reset with a warm teacher-output store (goal <= 2 s),
  the store's build time and size, and the float16 store's error against float32 on a batch
  (KD loss, feature MSE, total loss; goal <= 1e-3).
* ``run``: whole 1-epoch and 3-epoch runs, set-up included, kd-env (warm store) against the
  reference loop, each in its own process: time ratio (goals >= 2 and >= 2.5) and peak RSS
  ratio (goal <= 1.5).
* ``teachers16``: 16 small untrained nets as teachers, teachers run every step: one engine update
  / (the 16 teachers' forward passes + the student's step, timed separately): goal <= 1.10; and
  the 16-teacher store's build time and size.
* ``accuracy``: the student's final test accuracy after one epoch with a float16 and a float32
  store, 3 seeds each (goal: within the seed spread).
* ``agents``: one 1-epoch ``kd-env train`` run of the per-sample MTKD-RL agent, of the router
  (the suite's leading agent) and of the label-free router (issue #23: no training labels, paid
  on the validation probe), each against AVER in the same regime, each run in its own process:
  wall time and peak RSS ratios (goal <= 1.05 each).
* ``views`` (issue #27): augmentation on (crop + flip), ``--train-size`` images (default 20,000),
  one epoch each, its own process each, set-up included: the official-style loop (PIL crop and
  flip in the ``DataLoader``), kd-env with fresh augmentation (the teachers on every batch) and
  kd-env with ``augment_views=--views`` (default 4; the store built beforehand, warm): the ratios
  official-style / kd-env with views (goal >= 2.0) and official-style / fresh augmentation.
* ``imports`` (issue #12): resident memory (RSS) of a fresh process after ``import torch``,
  after ``import kd_env`` (and its time), and of one synthetic-env worker (an env built, reset
  and stepped once, as in each ``SubprocVecEnv`` / async worker); which heavy modules each
  stage has loaded; and what ``import torchvision`` would add on top.
* ``sweep`` (issue #14): ``kd-env bench``'s local executor, the wall time of one sweep (a preset,
  ``--sweep-preset``, default ``quick``; ``--steps`` caps each run's updates per epoch) with
  ``--jobs 1`` (every core for one run at a time) and with ``--jobs 2`` (two runs at once, the
  cores divided between them), teachers and teacher-output stores made beforehand; the speed-up
  jobs 1 / jobs 2.

Timing rounds alternate between the variants (A B A B ...) and report medians, so machine
noise hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# the sections' other halves, beside this script (its folder is on sys.path when it runs): the
# sections timed in this process, and what the child processes run
from speed_children import IMPORTS_CHILD, child
from speed_inprocess import bench_accuracy, bench_env, bench_step, bench_teachers16, setup


def _run_child(kind: str, steps: int, batch_size: int, epochs: int = 1, *extra: str) -> dict:
    """One measurement in a fresh process (its own peak RSS); the child's last JSON line."""
    output = (
        subprocess.run(
            [
                *(sys.executable, __file__, "--child", kind, "--steps", str(steps)),
                *("--batch-size", str(batch_size), "--epochs", str(epochs), *extra),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()
    )
    record = json.loads(output[-1])
    for line in output[:-1]:
        if line.startswith('{"setup_seconds"'):
            record.update(json.loads(line))
    return record


def bench_epoch(steps: int, batch_size: int, rounds: int) -> None:
    """An epoch of the reference loop against the same epoch through kd-env, one process per run."""
    results: dict[str, list[dict]] = {"reference": [], "kd_env": []}
    _run_child("construct", steps, batch_size)  # the store exists before anything is timed
    for _ in range(rounds):
        for kind in results:
            results[kind].append(_run_child(kind, steps, batch_size))
    seconds = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
    memory = {kind: max(r["peak_rss_mib"] for r in runs) for kind, runs in results.items()}
    label = "a full epoch" if steps <= 0 else f"{steps} updates"
    print(f"[epoch] Fashion-MNIST, batch {batch_size}, {label}, median of {rounds} rounds, one process per run, set-up included")
    print(f"  reference loop {seconds['reference']:.2f} s | kd-env {seconds['kd_env']:.2f} s")
    print(f"  ratio reference / kd-env = {seconds['reference'] / seconds['kd_env']:.2f}  (goal >= 2.0)")
    print(f"  peak RSS: reference {memory['reference']:.0f} MiB | kd-env {memory['kd_env']:.0f} MiB")
    setup = statistics.median(r.get("setup_seconds", float("nan")) for r in results["kd_env"])
    print(f"  of kd-env's time, env construction + reset (warm teacher-output store): {setup:.2f} s")


def bench_views(steps: int, batch_size: int, rounds: int, train_size: int, views: int) -> None:
    """Augmentation on: the official-style loop, kd-env with fresh augmentation and kd-env with
    fixed views (store warm), one epoch each in its own process, rounds alternating."""
    extra = ("--train-size", str(train_size), "--views", str(views))
    built = _run_child("views:construct", 0, batch_size, 1, *extra)  # builds the store of views if missing
    results: dict[str, list[dict]] = {"reference": [], "fresh": [], "views": []}
    for _ in range(rounds):
        for kind in results:
            results[kind].append(_run_child(f"views:{kind}", steps, batch_size, 1, *extra))
    seconds = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
    memory = {kind: max(r["peak_rss_mib"] for r in runs) for kind, runs in results.items()}
    label = "a full epoch" if steps <= 0 or steps >= 10**9 else f"{steps} updates"
    print(
        f"[views] Fashion-MNIST, augmentation on (crop 4 + flip), {train_size} training images, batch {batch_size}, {label}, "
        f"median of {rounds}, one process per run, set-up included"
    )
    print(f"  store of {views} views: construction + reset {built['seconds']:.1f} s (the build, when it ran then)")
    print(
        f"  official-style loop {seconds['reference']:.2f} s | kd-env, fresh augmentation {seconds['fresh']:.2f} s | "
        f"kd-env, {views} views {seconds['views']:.2f} s"
    )
    print(f"  ratio official-style / kd-env with {views} views = {seconds['reference'] / seconds['views']:.2f}  (goal >= 2.0)")
    print(f"  ratio official-style / kd-env with fresh augmentation = {seconds['reference'] / seconds['fresh']:.2f}")
    print(f"  peak RSS: official-style {memory['reference']:.0f} MiB | fresh {memory['fresh']:.0f} MiB | views {memory['views']:.0f} MiB")


def bench_store(batch_size: int, rounds: int) -> None:
    """Construction + reset with a warm store; build time and size; float16 against float32."""
    from kd_env.engine import per_sample_kd_loss

    _run_child("construct", 0, batch_size)  # builds the store if missing, so the rounds below find it warm
    construct = [_run_child("construct", 0, batch_size)["seconds"] for _ in range(rounds)]
    engines = {dtype: setup(batch_size, cache=True, store_dtype=dtype)[0] for dtype in ("float16", "float32")}
    store = engines["float16"].teacher_source.store
    assert store is not None, "the teacher-output store could not be used (see the warning above)"
    print(f"[store] Fashion-MNIST pool, {store.num_samples} training images, batch {batch_size}")
    print(f"  env construction + reset, warm store: {statistics.median(construct):.2f} s (median of {rounds}; goal <= 2 s)")
    for dtype, engine in engines.items():
        dtype_store = engine.teacher_source.store
        assert dtype_store is not None, f"the {dtype} teacher-output store could not be used (see the warning above)"
        print(f"  {dtype} store: {dtype_store.nbytes / 2**20:.0f} MiB, built in {dtype_store.manifest['build_seconds']:.1f} s")
    batches = {dtype: engine.reset(seed=0) for dtype, engine in engines.items()}
    weights = torch.full((batch_size, engines["float16"].num_teachers), 1.0 / engines["float16"].num_teachers)
    errors = {}
    for name, value in {
        "KD loss": lambda b: per_sample_kd_loss(b.student_logits.detach(), b.teacher_logits, 4.0).mean(),
        "feature MSE": lambda b: b.feature_mse.detach().mean(),
        "total loss": lambda b: (
            b.student_ce.detach() + (weights * b.kd_loss.detach()).sum(1) + 5.0 * (weights * b.feature_mse.detach()).sum(1)
        ).mean(),
    }.items():
        half, full = float(value(batches["float16"])), float(value(batches["float32"]))
        errors[name] = abs(half - full) / abs(full)
    print(
        "  float16 vs float32 store on one batch, relative error: "
        + ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
        + "  (goal <= 1e-3)"
    )


def bench_run(batch_size: int, rounds: int) -> None:
    """Whole 1- and 3-epoch runs, set-up included, kd-env against the reference loop."""
    _run_child("construct", 0, batch_size)  # the store exists before anything is timed
    for epochs, goal in ((1, 2.0), (3, 2.5)):
        results: dict[str, list[dict]] = {"reference": [], "kd_env": []}
        for _ in range(rounds):
            for kind in results:
                results[kind].append(_run_child(kind, 0, batch_size, epochs))
        seconds = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
        memory = {kind: max(r["peak_rss_mib"] for r in runs) for kind, runs in results.items()}
        print(f"[run] {epochs}-epoch run, set-up included, batch {batch_size}, median of {rounds}, one process each")
        print(
            f"  reference {seconds['reference']:.1f} s | kd-env {seconds['kd_env']:.1f} s | "
            f"ratio {seconds['reference'] / seconds['kd_env']:.2f} (goal >= {goal})"
        )
        print(
            f"  peak RSS: reference {memory['reference']:.0f} MiB | kd-env {memory['kd_env']:.0f} MiB | "
            f"ratio {memory['kd_env'] / memory['reference']:.2f} (goal <= 1.5)"
        )


# (label, AVER's run, the agent's run): MTKD-RL against AVER on the per-sample env with MTKD-RL's
# reward (the same env, loss terms and reward computation, equal weights; the batch-level env's
# default reward would add a validation probe to AVER's side), and the suite's leading agent, the
# router, with its label_logprob credit against AVER with the cheapest reward mode, as the suite runs rules
_AGENT_PAIRS = [
    ("MTKD-RL per-sample", "per-sample:aver@neg_loss", "mtkd-rl"),
    ("Router per-sample", "aver@neg_loss", "router@label_logprob"),
    # issue #23: without training labels, the router paid on 256 validation images a step
    ("Label-free router (PPO, MLP, probe 256)", "label-free:aver@neg_loss", "label-free:router@val_label_logprob"),
]


def bench_agents(batch_size: int, rounds: int, only: list[str] | None = None) -> None:
    """Per-sample agents against AVER: one 1-epoch `kd-env train` run each, own processes,
    rounds alternating between the runs.

    Reported per pair: the median time and the largest peak RSS of each side, and the medians
    over rounds of the paired ratios (agent / AVER within one round: the runs of a round are
    minutes apart, so load that drifts over the whole benchmark cancels). Peak RSS varies by
    +-5% between identical runs (the epoch-end evaluation's transient allocations), hence both.
    ``only``: the pairs whose label contains one of these strings (default: every pair).
    """
    pairs = [pair for pair in _AGENT_PAIRS if not only or any(text in pair[0] for text in only)]
    _run_child("construct", 0, batch_size)
    specs = list(dict.fromkeys(spec for _, aver, agent in pairs for spec in (aver, agent)))
    results: dict[str, list[dict]] = {spec: [] for spec in specs}
    for _ in range(rounds):
        for spec in specs:
            results[spec].append(_run_child(f"agent:{spec}", 0, batch_size, 1))
    seconds = {spec: statistics.median(r["seconds"] for r in runs) for spec, runs in results.items()}
    memory = {spec: max(r["peak_rss_mib"] for r in runs) for spec, runs in results.items()}
    print(f"[agents] one 1-epoch `kd-env train` run each (Fashion-MNIST, default pool), {rounds} rounds")
    for label, aver, agent in pairs:
        paired = {
            key: statistics.median(mine[key] / theirs[key] for mine, theirs in zip(results[agent], results[aver]))
            for key in ("seconds", "peak_rss_mib")
        }
        print(
            f"  {label} ({agent}) {seconds[agent]:.1f} s, {memory[agent]:.0f} MiB | AVER ({aver}) {seconds[aver]:.1f} s, "
            f"{memory[aver]:.0f} MiB | ratios: time {seconds[agent] / seconds[aver]:.3f}, memory {memory[agent] / memory[aver]:.3f}; "
            f"paired medians: time {paired['seconds']:.3f}, memory {paired['peak_rss_mib']:.3f} (goal <= 1.05 each)"
        )
        for key, unit in (("seconds", "s"), ("peak_rss_mib", "MiB")):
            print(
                f"    {key} per round: agent {[round(r[key], 1) for r in results[agent]]}, AVER {[round(r[key], 1) for r in results[aver]]} {unit}"
            )


def bench_imports(rounds: int) -> None:
    """RSS of ``import kd_env`` and of one synthetic-env worker, each child a fresh process."""
    if not sys.platform.startswith("linux"):
        print("[imports] skipped: reads /proc/self/status (Linux only)")
        return

    def measure() -> dict:
        output = subprocess.run([sys.executable, "-c", IMPORTS_CHILD], check=True, capture_output=True, text=True)
        return json.loads(output.stdout.strip().splitlines()[-1])

    measure()  # trains the synthetic teachers into the cache if missing: not part of a worker's cost
    records = [measure() for _ in range(rounds)]
    median = {
        key: statistics.median(r[key] for r in records)
        for key in ("python", "torch", "kd_env", "worker", "plus_torchvision", "kd_env_import_s")
    }
    print(f"[imports] fresh processes, 1 torch thread, median of {rounds}; RSS in MiB")
    print(
        f"  python {median['python']:.0f} | import torch {median['torch']:.0f} | import kd_env {median['kd_env']:.0f} "
        f"(+{median['kd_env'] - median['torch']:.0f} over torch; {median['kd_env_import_s']:.2f} s)"
    )
    print(f"    heavy modules loaded by import kd_env: {records[-1]['kd_env_modules'] or 'none'}")
    print(f"  synthetic-env worker (built, reset, one step) {median['worker']:.0f}; loaded: {records[-1]['worker_modules']}")
    print(f"  import torchvision on top of that worker: +{median['plus_torchvision'] - median['worker']:.0f}")


def bench_sweep(preset_name: str, steps: int) -> None:
    """One sweep through the local executor with ``--jobs 1`` and with ``--jobs 2``: wall times."""
    import dataclasses
    import tempfile

    from kd_env.comparison import run_benchmark
    from kd_env.comparison.sweep import plan, prepare_teachers, resolve_preset
    from kd_env.utils import available_cores, threads_per_run

    overrides = {"max_steps_per_epoch": steps} if steps else {}
    _, preset = resolve_preset(preset_name)
    prepare_teachers(preset, overrides)  # trained once, outside the timings
    # one untimed run per scenario first: it builds the teacher-output stores both sweeps then read
    warm_up = dataclasses.replace(preset, methods=preset.methods[:1], seeds=preset.seeds[:1], students=preset.students[:1])
    with tempfile.TemporaryDirectory(prefix="kd_env_bench_sweep_") as out:
        run_benchmark(warm_up, out, overrides, progress=False, jobs=2)
    seconds: dict[int, float] = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory(prefix="kd_env_bench_sweep_") as out:
            runs = len(plan(preset, Path(out)))
            start = time.perf_counter()
            run_benchmark(preset_name, out, overrides, progress=False, jobs=jobs)
            seconds[jobs] = time.perf_counter() - start
    cap = f"at most {steps} updates per epoch" if steps else "full epochs"
    print(f"[sweep] preset {preset_name} ({runs} runs, {cap}), local executor, {available_cores()} cores, set-up included")
    print(
        f"  --jobs 1 ({threads_per_run(1)} threads per run) {seconds[1]:.1f} s | --jobs 2 ({threads_per_run(2)} per run) "
        f"{seconds[2]:.1f} s | speed-up jobs 1 / jobs 2 = {seconds[1] / seconds[2]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--section",
        action="append",
        choices=["all", "step", "epoch", "env", "store", "run", "teachers16", "accuracy", "agents", "imports", "sweep", "views"],
        help="repeatable; default: all",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: $KD_BENCH_THREADS or 2)")
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per dtype in the accuracy section")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=0, help="updates per epoch measured (0: a full epoch)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sweep-preset", default="quick", help="the preset the sweep section runs")
    parser.add_argument(
        "--agent-pair", action="append", help="repeatable: the agents section's pairs whose label contains this (e.g. Label-free)"
    )
    parser.add_argument("--train-size", type=int, default=20000, help="training images in the views section")
    parser.add_argument("--views", type=int, default=4, help="augment_views in the views section")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:  # the children read it too
        os.environ["KD_BENCH_THREADS"] = str(args.threads)
    steps = args.steps if args.steps > 0 else 10**9
    if args.child:
        child(args.child, steps, args.batch_size, args.epochs, args.train_size, args.views)
        return
    sections = set(args.section or ["all"])
    if "all" in sections:
        sections = {"step", "epoch", "env", "store", "run", "teachers16", "accuracy", "agents", "imports", "sweep", "views"}
    torch.set_num_threads(int(os.environ.get("KD_BENCH_THREADS", "2")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    if "step" in sections:
        bench_step(args.repeats, args.batch_size)
    if "env" in sections:
        bench_env(args.repeats, args.batch_size)
    if "epoch" in sections:
        bench_epoch(args.steps, args.batch_size, args.rounds)
    if "store" in sections:
        bench_store(args.batch_size, max(3, args.rounds))
    if "run" in sections:
        bench_run(args.batch_size, args.rounds)
    if "teachers16" in sections:
        bench_teachers16(args.repeats, args.batch_size)
    if "accuracy" in sections:
        bench_accuracy(args.batch_size, args.seeds)
    if "agents" in sections:
        bench_agents(args.batch_size, args.rounds, args.agent_pair)
    if "imports" in sections:
        bench_imports(max(3, args.rounds))
    if "sweep" in sections:
        bench_sweep(args.sweep_preset, args.steps)
    if "views" in sections:
        bench_views(steps, args.batch_size, args.rounds, args.train_size, args.views)


if __name__ == "__main__":
    main()
