"""MTKD-RL's agent network and its loss, as the official code has them (``models/policy.py:
PolicyTrans`` and ``train_loops.py: train_agent`` of ``winycg/MTKD-RL``).

* :func:`confidence_prior` and the softmax gap priors: parameter-free teacher weights read from
  the per-sample state's CE, KL and cosine columns (found by name: :class:`PriorColumns`);
* :class:`MTKDRLNetwork`: a shared stem and one softmax head per KD term, each mixed with its priors;
* :func:`reward_weighted_log_loss`: the official agent loss.

:class:`~kd_env.agents.mtkd_rl.MTKDRL` trains this network the official way,
:class:`~kd_env.agents.mtkd_rl_pg.MTKDRLPG` by a policy gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kd_env.engine.losses import camkd_weights_from_ce

__all__ = ["BCE_LOG_FLOOR", "MTKDRLNetwork", "PriorColumns", "confidence_prior", "reward_weighted_log_loss"]

# torch's binary_cross_entropy clamps log(p) at -100 so a zero weight gives a finite loss; the
# official agent loss is that BCE, so the same floor keeps it identical.
BCE_LOG_FLOOR = -100.0


# CA-MKD's rule on the CE columns of the state: one formula, owned by the baselines
confidence_prior = camkd_weights_from_ce


@dataclass(frozen=True)
class PriorColumns:
    """Where the prior inputs sit in the flat per-sample state: one column index per teacher.

    ``feature_cosine`` is None without feature KD (no feature head).
    """

    teacher_ce: tuple[int, ...]
    kd_loss: tuple[int, ...]
    feature_cosine: tuple[int, ...] | None

    @classmethod
    def from_feature_names(cls, feature_names: Sequence[str], teacher_names: Sequence[str], feature_kd: bool) -> PriorColumns:
        """Find the columns by name (``"<teacher>/teacher_ce"``, ...) in the env's ``feature_names``.

        Raises:
            ValueError: a needed column is missing (the state must keep both the ``performance``
                and the ``gap`` groups: MTKD-RL's priors read CE, KL and cosine).
        """
        position = {name: index for index, name in enumerate(feature_names)}

        def columns(column: str) -> tuple[int, ...]:
            names = [f"{teacher}/{column}" for teacher in teacher_names]
            missing = [name for name in names if name not in position]
            if missing:
                raise ValueError(
                    f"the per-sample state has no column(s) {missing}; MTKD-RL's priors need teacher_ce, "
                    "kd_loss (and feature_cosine with feature KD): keep state_parts=['performance', 'gap']"
                )
            return tuple(position[name] for name in names)

        return cls(columns("teacher_ce"), columns("kd_loss"), columns("feature_cosine") if feature_kd else None)

    def to_dict(self) -> dict[str, list[int] | None]:
        return {
            "teacher_ce": list(self.teacher_ce),
            "kd_loss": list(self.kd_loss),
            "feature_cosine": None if self.feature_cosine is None else list(self.feature_cosine),
        }

    @classmethod
    def from_dict(cls, columns: dict[str, list[int] | None]) -> PriorColumns:
        cosine = columns["feature_cosine"]
        return cls(
            tuple(columns["teacher_ce"] or ()),
            tuple(columns["kd_loss"] or ()),
            None if cosine is None else tuple(cosine),
        )


class MTKDRLNetwork(nn.Module):
    """The official ``PolicyTrans``: a shared stem, one softmax head per KD term, fixed priors.

    ``stem``: Linear(state_dim -> hidden, no bias) + ReLU over all teachers' rows at once;
    ``logit_head`` / ``feature_head``: Linear(hidden -> K) + softmax over teachers. Each head's
    output is mixed with two parameter-free priors read from the state:

    * logit KD: agent, confidence ``(1 - softmax(CE)) / (K - 1)``, logit gap ``softmax(KL)``;
    * feature KD: agent, confidence, feature gap ``softmax(cos)``;

    with equal weights 1/3, or with ``dynamic=True`` a learnable 3-vector per head (initialised
    to ones) through a softmax. All are convex mixes of simplex rows, so every output row is on
    the simplex.

    Args:
        state_dim: size of the flat per-sample state.
        columns: where CE, KL and cosine sit in it.
        num_teachers: ``K``.
        heads: 2 with feature KD (logit and feature heads), 1 without.
        dynamic: learn the mixing coefficients.
        hidden: stem width (128 in the official code).
    """

    # buffers (registered in __init__)
    ce_index: torch.Tensor
    kl_index: torch.Tensor
    cos_index: torch.Tensor

    def __init__(
        self,
        state_dim: int,
        columns: PriorColumns,
        num_teachers: int,
        heads: int = 2,
        dynamic: bool = False,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if heads not in (1, 2):
            raise ValueError(f"heads must be 1 (logit KD) or 2 (logit and feature KD), got {heads}")
        if heads == 2 and columns.feature_cosine is None:
            raise ValueError("the feature head needs the feature_cosine columns of the state")
        self.num_teachers = num_teachers
        self.heads = heads
        self.dynamic = dynamic
        self.stem = nn.Sequential(nn.Linear(state_dim, hidden, bias=False), nn.ReLU())
        self.logit_head = nn.Linear(hidden, num_teachers)
        self.feature_head = nn.Linear(hidden, num_teachers) if heads == 2 else None
        # three sources (agent, confidence, gap) per head, as hard-coded in the official code
        self.logit_mix = nn.Parameter(torch.ones(3)) if dynamic else None
        self.feature_mix = nn.Parameter(torch.ones(3)) if dynamic and heads == 2 else None
        # prior column indices travel with the module (and its state_dict) as buffers
        self.register_buffer("ce_index", torch.tensor(columns.teacher_ce, dtype=torch.long), persistent=False)
        self.register_buffer("kl_index", torch.tensor(columns.kd_loss, dtype=torch.long), persistent=False)
        cos = columns.feature_cosine if columns.feature_cosine is not None else []
        self.register_buffer("cos_index", torch.tensor(cos, dtype=torch.long), persistent=False)

    def priors(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter-free prior weights ``[B, K]``: ``confidence``, ``logit_gap`` (and ``feature_gap``)."""
        priors = {
            "confidence": confidence_prior(states[:, self.ce_index]),
            "logit_gap": torch.softmax(states[:, self.kl_index], dim=-1),
        }
        if self.heads == 2:
            priors["feature_gap"] = torch.softmax(states[:, self.cos_index], dim=-1)
        return priors

    @staticmethod
    def _mix(mix: nn.Parameter | None) -> torch.Tensor:
        """Coefficients of (agent, confidence, gap): 1/3 each, or softmax of the learned 3-vector."""
        if mix is None:
            return torch.full((3,), 1.0 / 3.0)
        return torch.softmax(mix, dim=0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Teacher weights ``[B, heads, K]`` (each row on the simplex) for states ``[B, state_dim]``."""
        hidden = self.stem(states)
        priors = self.priors(states)
        sources = [(self.logit_head, priors["logit_gap"], self.logit_mix)]
        if self.feature_head is not None:
            sources.append((self.feature_head, priors["feature_gap"], self.feature_mix))
        weights = []
        for head, gap_prior, mix in sources:  # at most two heads, each with its own layer
            agent = torch.softmax(head(hidden), dim=-1)
            coefficients = self._mix(mix).to(states)
            mixed = coefficients[0] * agent + coefficients[1] * priors["confidence"] + coefficients[2] * gap_prior
            weights.append(mixed)
        return torch.stack(weights, dim=1)


def reward_weighted_log_loss(weights: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """The official agent loss: ``sum_heads mean_{i,k} [-r_i * log w[i, head, k]]``.

    This is ``F.binary_cross_entropy(w, ones, weight=r[:, None])`` per head, summed over heads
    (``train_loops.py: train_agent``), with the same ``log`` floor of -100.

    Args:
        weights: ``[B, heads, K]`` from :class:`MTKDRLNetwork`.
        rewards: ``[B]`` per-sample rewards.
    """
    log_weights = torch.log(weights).clamp_min(BCE_LOG_FLOOR)
    per_head = -(rewards[:, None, None] * log_weights).mean(dim=(0, 2))
    return per_head.sum()
