"""The networks of the per-sample router (:class:`~kd_env.agents.mtkd_rl_pg.MTKDRLPG`) and its
policy's log-probability; the learner that samples from them and updates them is in ``mtkd_rl_pg``.

* :class:`TeacherSlices`: where each teacher's scalar columns and logits sit in the flat
  per-sample state, and the per-teacher rows the scorer reads;
* :class:`TeacherScorer`: one small MLP shared by all teachers with a DeepSets context, so
  permuting the teachers permutes the scores;
* :class:`TeacherMLP`: one MLP over all teachers' rows at once, which knows each teacher by its
  position (a specialist's classes, a relabelled teacher's mapping), for a fixed pool;
* :func:`logistic_normal_log_prob`: ``log N(u; log w(s), sigma^2 I)``, the policy's exact log-probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

__all__ = ["SCALAR_COLUMNS", "TeacherMLP", "TeacherScorer", "TeacherSlices", "logistic_normal_log_prob"]

# per-teacher scalar columns the scorer reads (when the state has them), in this order
SCALAR_COLUMNS = ("feature_cosine", "kd_loss", "teacher_ce", "agreement")


def logistic_normal_log_prob(pre_softmax: torch.Tensor, mean: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """``log N(u; mean, sigma^2 I)`` summed over the last dim: the policy's exact log-probability.

    Args:
        pre_softmax: sampled logits ``u`` ``[..., K]``.
        mean: the policy's mean ``log w(s)`` ``[..., K]``.
        sigma: the (scheduled, not learned) standard deviation: a number, or a tensor that
            broadcasts against ``[..., K]`` (one value per rollout step).
    """
    sigma = torch.as_tensor(sigma, dtype=mean.dtype)
    squared = (pre_softmax - mean).pow(2) / (2.0 * sigma * sigma)
    return -(squared + torch.log(sigma) + 0.5 * np.log(2.0 * np.pi)).sum(-1)


class TeacherSlices:
    """Where each teacher's scalar columns and logits sit in the flat per-sample state.

    Built from the env's ``feature_names`` (``"<teacher>/teacher_ce"``, ``"<teacher>/logit3"``,
    ...); embeddings are left out (their size differs between teachers, and a shared scorer
    needs one row size).
    """

    def __init__(self, feature_names: Sequence[str], teacher_names: Sequence[str]) -> None:
        position = {name: index for index, name in enumerate(feature_names)}
        self.scalars = [name for name in SCALAR_COLUMNS if all(f"{t}/{name}" in position for t in teacher_names)]
        logit_counts = {sum(1 for n in feature_names if n.startswith(f"{t}/logit")) for t in teacher_names}
        if len(logit_counts) != 1:
            raise ValueError(f"teachers have different numbers of logit columns: {sorted(logit_counts)}")
        self.num_logits = logit_counts.pop()
        rows = []
        for teacher in teacher_names:
            row = [position[f"{teacher}/{name}"] for name in self.scalars]
            row += [position[f"{teacher}/logit{i}"] for i in range(self.num_logits)]
            rows.append(row)
        if not rows[0]:
            raise ValueError("the per-sample state has no per-teacher column the scorer can read (CE, KL, cosine, logits)")
        self.index = torch.tensor(rows, dtype=torch.long)  # [K, F]
        self.ce_position = self.scalars.index("teacher_ce") if "teacher_ce" in self.scalars else None

    @property
    def row_size(self) -> int:
        """Features per teacher: the columns, plus the CE gap to the teachers' mean when CE exists."""
        return int(self.index.shape[1]) + (1 if self.ce_position is not None else 0)

    def rows(self, states: torch.Tensor) -> torch.Tensor:
        """``[N, K, row_size]`` per-teacher rows of states ``[N, D]``."""
        rows = states[:, self.index]
        if self.ce_position is not None:
            ce = rows[..., self.ce_position]
            # how much better than the others: the comparison the routing rests on, given directly
            rows = torch.cat([rows, (ce - ce.mean(dim=1, keepdim=True)).unsqueeze(-1)], dim=-1)
        return rows


class TeacherScorer(nn.Module):
    """A teacher-permutation-equivariant scorer: ``score_k = rho([phi(x_k), mean_j phi(x_j)])``.

    Args:
        row_size: features per teacher.
        hidden: width of ``phi`` and ``rho``.
    """

    def __init__(self, row_size: int, hidden: int = 32) -> None:
        super().__init__()
        # ReLU, not tanh: on our CPUs torch's tanh costs 10x a ReLU (172 vs 17 us on [512, 32]),
        # and the scorer runs on every student update, inside the +5% overhead budget
        self.phi = nn.Sequential(nn.Linear(row_size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        # a small last layer starts every teacher at the same score: uniform weights at first
        last = cast(nn.Linear, self.rho[-1])
        nn.init.orthogonal_(last.weight, gain=0.01)
        nn.init.zeros_(last.bias)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Scores ``[N, K]`` for normalised per-teacher rows ``[N, K, row_size]``."""
        codes = self.phi(rows)
        context = codes.mean(dim=1, keepdim=True).expand_as(codes)
        return self.rho(torch.cat([codes, context], dim=-1)).squeeze(-1)


class TeacherMLP(nn.Module):
    """Scores ``[N, K]`` from all teachers' rows ``[N, K, row_size]`` at once, by position.

    The scorer is shared across teachers, so it can only learn what any teacher's row says about
    that teacher (how confident, how far from the student). Without labels, which teacher is
    right often depends on *which* teacher it is: a specialist's outputs look as confident off
    its classes as on them, a relabelled teacher's as confident as the good one's. This network
    reads the rows of all teachers in the pool's order, so it can learn "teacher 2 when the pool
    votes for one of teacher 2's classes"; the price is a fixed pool (same K, same order).

    Args:
        num_teachers: K; row_size: features per teacher; hidden: width of the two hidden layers.
    """

    def __init__(self, num_teachers: int, row_size: int, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_teachers * row_size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_teachers)
        # as the scorer: a small last layer starts every teacher at the same score
        nn.init.orthogonal_(self.head.weight, gain=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Scores ``[N, K]`` for normalised per-teacher rows ``[N, K, row_size]``."""
        return cast(torch.Tensor, self.head(self.body(rows.flatten(1))))
