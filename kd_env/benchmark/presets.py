"""Benchmark presets: which methods run on which scenarios, students and seeds.

A :class:`Preset` is a grid: scenarios (teacher pools) x students x methods x seeds, all on one
env id with the same budget. Every method trains one student per cell through the same runner
and env as ``kd-env train``; at a given seed every method starts from the same student
initialisation and data order (paired by seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FMNIST_ID = "MultiTeacherKD-FashionMNIST-v0"
SYNTHETIC_ID = "MultiTeacherKD-Synthetic-v0"


@dataclass(frozen=True)
class Method:
    """One row of the results table.

    Args:
        label: the name shown in tables and plots.
        agent: a registered policy name (``kd-env train --agent``).
        per_sample: run on the per-sample env.
        env_kwargs: env arguments of this method (on top of the preset's).
        agent_kwargs: the agent's or rule's keyword arguments.
        reference: a reference (oracle, equal weights, best teacher, no KD) rather than a competitor.
    """

    label: str
    agent: str
    per_sample: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    reference: bool = False


@dataclass
class Preset:
    """A sweep: ``scenarios x students x methods x seeds`` on ``env_id``.

    ``scenarios`` are teacher pool names (``None``: the env's default pool). With more than one
    scenario and the ``baseline`` / ``oracle`` methods present, the report adds the normalised
    score ``(acc - baseline) / (oracle - baseline)`` and its interval estimates.
    """

    env_id: str
    methods: list[Method]
    seeds: list[int]
    env_kwargs: dict[str, Any]
    students: list[str | None] = field(default_factory=lambda: [None])
    scenarios: list[str | None] = field(default_factory=lambda: [None])
    description: str = ""
    baseline: str = "AVER"
    """Label of the method that scores 0 in the normalised score."""
    oracle: str = "Oracle"
    """Label of the method that scores 1 in the normalised score."""
    train_teachers: bool = True
    """Train the scenarios' missing teachers before the sweep (cheap pools only)."""

    def references(self) -> set[str]:
        return {method.label for method in self.methods if method.reference}


# the rules give exact simplex weights; the per-sample env applies them per sample, as published
_PER_SAMPLE = {"reward_mode": "neg_loss"}
_LABEL_CREDIT = {"reward_mode": "label_logprob"}
# a rule does not read the reward: the cheapest mode keeps every rule's step equally fast
_RULE = {"reward_mode": "neg_loss"}

_BASELINES = [
    Method("AVER", "aver"),
    Method("EBKD", "ebkd"),
    Method("CA-MKD", "camkd"),
    Method("AEKD", "aekd"),
    Method("Best teacher", "best"),
    Method("Random Dirichlet", "random"),
]

_REFERENCES = [
    Method("Oracle", "oracle", per_sample=True, env_kwargs=_PER_SAMPLE, reference=True),
    Method("AVER", "aver", env_kwargs=_RULE, reference=True),
    Method("Best teacher", "best", env_kwargs=_RULE, reference=True),
    Method("No KD", "no-kd", env_kwargs=_RULE, reference=True),
]

_SUITE_COMPETITORS = [
    Method("EBKD", "ebkd", env_kwargs=_RULE),
    Method("EBKD (per-sample)", "ebkd", per_sample=True, env_kwargs=_PER_SAMPLE),
    Method("CA-MKD", "camkd", env_kwargs=_RULE),
    Method("CA-MKD (per-sample)", "camkd", per_sample=True, env_kwargs=_PER_SAMPLE),
    Method("AEKD", "aekd", env_kwargs=_RULE),
    Method("Random Dirichlet", "random", env_kwargs=_RULE),
    Method("REINFORCE", "reinforce"),
    Method("REINFORCE (per-sample)", "reinforce", per_sample=True, env_kwargs=_PER_SAMPLE),
    Method("MTKD-RL", "mtkd-rl", per_sample=True, env_kwargs=_PER_SAMPLE),
    Method("PPO", "ppo"),
    Method("PPO (per-sample)", "ppo", per_sample=True, env_kwargs=_PER_SAMPLE),
    # issue #10: per-sample routing by a true policy gradient on the paper's state, rewarded by
    # the log-probability the weighted teachers give the true label (agents/mtkd_rl_pg.py)
    Method("Router (per-sample)", "router", per_sample=True, env_kwargs=_LABEL_CREDIT),
    Method("MTKD-RL-PG", "mtkd-rl-pg", per_sample=True, env_kwargs=_LABEL_CREDIT),
]

SUITE_SCENARIOS: list[str | None] = ["capacity", "noisy", "specialists"]

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        env_id=FMNIST_ID,
        methods=[Method("AVER", "aver"), Method("EBKD", "ebkd"), Method("REINFORCE", "reinforce")],
        seeds=[0],
        env_kwargs={"epochs": 1, "device": "cpu"},
        description="Fashion-MNIST, 1 epoch, 3 methods, 1 seed: a few minutes on 2 CPU cores with teachers cached",
    ),
    "suite": Preset(
        env_id=FMNIST_ID,
        methods=_REFERENCES + _SUITE_COMPETITORS,
        seeds=[0, 1, 2, 3, 4],
        # sized for the 90-minute budget on 2 CPU cores (teachers cached): 12,800 training
        # images, 2 epochs = 200 updates of 128, logit KD only (no feature maps to read or
        # adapters to train: a step costs about what the student alone costs). The scenarios
        # still separate the methods by 10-20 points at this budget.
        env_kwargs={"epochs": 2, "train_size": 12800, "feature_kd": False, "device": "cpu"},
        scenarios=SUITE_SCENARIOS,
        description="the scenario suite: capacity (control), noisy, specialists x every method x 5 seeds on Fashion-MNIST",
    ),
    "suite-synthetic": Preset(
        env_id=SYNTHETIC_ID,
        methods=[m for m in _REFERENCES if m.agent in ("oracle", "aver")] + [Method("CA-MKD (per-sample)", "camkd", per_sample=True, env_kwargs=_PER_SAMPLE)],
        seeds=[0, 1],
        # KD weighted up (alpha 5, logit KD only) so that on 8x8 images, where CE alone does well,
        # whom the student trusts still decides the outcome
        env_kwargs={"epochs": 2, "alpha": 5.0, "feature_kd": False, "synthetic": {"num_classes": 8, "train_size": 1024}},
        scenarios=["noisy", "specialists"],
        description="a tiny synthetic suite (seconds): the scenario machinery end to end",
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
        train_teachers=False,
    ),
}
