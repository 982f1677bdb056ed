"""What a run records as it goes: TensorBoard scalars under a stable tag scheme (see
:mod:`kd_env.run`), the progress bar, and the curves and episodes of its result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kd_env.run.config import RunConfig
from kd_env.utils import atomic_write, crash_point

# per-step weights are kept for plots up to this many steps, then every n-th step
MAX_TRAJECTORY_POINTS = 5000


class RunLogger:
    """TensorBoard (through ``torch.utils.tensorboard``) + progress bar + the run's records."""

    def __init__(self, config: RunConfig, teacher_names: list[str], total_steps: int, start_step: int, state: dict[str, Any]) -> None:
        self.config = config
        self.teacher_names = teacher_names
        self.step = start_step
        self.state = state
        self.writer = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events written after the checkpoint we resume from: one clean curve
            self.writer = SummaryWriter(str(Path(config.run_dir) / "tb"), purge_step=start_step + 1 if start_step else None)
        self.bar = None
        if config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=f"{config.agent} on {config.env_id}", unit="step")
        self.stride = max(1, total_steps // MAX_TRAJECTORY_POINTS)

    def _scalar(self, tag: str, value: float) -> None:
        if self.writer is not None and np.isfinite(value):
            self.writer.add_scalar(tag, float(value), self.step)

    def log(self, info: dict[str, Any], reward_mean: float, losses: dict[str, float] | None) -> None:
        """Record one env step. ``info`` is the batch-level info (vector infos are reduced first)."""
        self.step += 1
        weights = np.asarray(info["weights"], dtype=np.float64)
        for name, weight in zip(self.teacher_names, weights):
            self._scalar(f"weights/logit/{name}", weight)
        if "feature_weights" in info:
            for name, weight in zip(self.teacher_names, np.asarray(info["feature_weights"])):
                self._scalar(f"weights/feature/{name}", weight)
        for name, value in zip(self.teacher_names, np.asarray(info["kd_loss"])):
            self._scalar(f"loss/kd/{name}", value)
        self._scalar("reward/mean", reward_mean)
        self._scalar("loss/total", info["loss"])
        self._scalar("loss/ce", info.get("ce", float("nan")))  # absent in the label-free regime
        self._scalar("train/lr", info["lr"])
        self._scalar("train/epoch", info["epoch"])
        if self.step % self.stride == 0:
            self.state["weight_trajectory"].append((self.step, [round(float(w), 5) for w in weights]))
        if "val_acc" in info:
            self._scalar("eval/val_acc", info["val_acc"])
            self._scalar("eval/test_acc", info.get("test_acc", float("nan")))
            self.state["val_curve"].append((self.step, float(info["val_acc"])))
        if "final_test_acc" in info:
            episode = {key: float(info[key]) for key in ("best_val_acc", "best_epoch", "final_test_acc")}
            self.state["episodes"].append(episode)
            self._scalar("final/best_val_acc", episode["best_val_acc"])
            self._scalar("final/test_acc", episode["final_test_acc"])
        if info.get("diverged"):
            # the student diverged (the update was rolled back): the episode ends without a result
            # of its own, recorded so that the run's result says so instead of losing the episode
            episode = {"best_val_acc": float("nan"), "best_epoch": -1.0, "final_test_acc": float("nan"), "diverged": 1.0}
            self.state["episodes"].append(episode)
        for name, value in (losses or {}).items():
            self._scalar(f"agent/{name}", value)
        if self.bar is not None:
            self.bar.update(1)
            shown = " ".join(f"{w:.2f}" for w in weights)
            postfix = {"epoch": int(info["epoch"]), "w": shown}
            if self.state["val_curve"]:
                postfix["val"] = f"{self.state['val_curve'][-1][1]:.3f}"
            self.bar.set_postfix(postfix, refresh=False)
        crash_point("step")  # after the step is logged, before any checkpoint of it

    def flush(self) -> None:
        """Write the buffered TensorBoard events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def purge_tensorboard_events(folder: Path, last_step: int) -> int:
    """Drop the events logged after ``last_step`` (the checkpoint a run resumes from) from the
    event files in ``folder``; returns how many were dropped.

    ``SummaryWriter(purge_step=...)`` alone is not enough: TensorBoard applies it only to files
    it reads *before* the new one, and event files are read in name order, which starts with the
    creation second, so a run killed and resumed within one second read the killed run's points
    last and showed them twice. Rewriting the old files (atomically, one at a time) removes them
    for every reader; it also drops a record a kill cut in half.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for path in sorted(folder.glob("events.out.tfevents.*")):
        # raw records, written back unchanged (the parsing loader would migrate their format)
        records = list(RawEventFileLoader(str(path)).Load())
        events = [Event.FromString(record) for record in records]
        kept = [record for record, event in zip(records, events) if not event.HasField("summary") or event.step <= last_step]
        if len(kept) == len(records):
            continue
        dropped += len(records) - len(kept)

        def write(file: Any, kept: list[bytes] = kept) -> None:
            writer = RecordWriter(file)
            for record in kept:
                writer.write(record)

        atomic_write(path, write)
    return dropped


def reduce_vector_info(info: dict[str, Any]) -> dict[str, Any]:
    """A per-sample env's infos (one value per slot) as one batch-level info."""
    reduced: dict[str, Any] = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        array = np.asarray(value)
        reduced[key] = array.mean(0) if key in ("weights", "feature_weights", "kd_loss") else array.reshape(-1)[0]
    return reduced
