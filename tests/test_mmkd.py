"""MMKD (baselines/mmkd.py, mmkd_networks.py, mmkd_meta.py): the meta step against a hand-computed one, the hard buffer, runs
through the env and the runner, checkpoints and bad input.

The hand computation follows the authors' ``MetaSGD.meta_backward`` (reverse mode: the adjoints
of parameters and momentum carried back through the recorded SGD states, one Hessian-vector
product per step), written here with explicit tensors and formulas; the module differentiates
its forward unroll instead, so the two share no code and no algorithm.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import kd_env  # noqa: F401  (registers the env ids and policies)
from kd_env.baselines import MMKD, make_baseline
from kd_env.baselines.mmkd import (
    FeatureWeight,
    HardBatch,
    HardBuffer,
    LogitsWeight,
    MetaProblem,
    MMKDWeightNets,
    SGDSettings,
    meta_gradients,
    meta_update,
    unrolled_outer_loss,
)
from kd_env.checkpoint_format import CheckpointReadError
from kd_env.engine.adapters import FeatureAdapter, match_teacher_map
from kd_env.envs import PerSampleKDVectorEnv
from kd_env.registry import get_policy
from kd_env.run import RunConfig, train

SYNTHETIC = "MultiTeacherKD-Synthetic-v0"
SLOTS = 8


# ---------------------------------------------------------------------- (a) the meta step by hand
B, D, FEAT, C, K = 4, 3, 2, 3, 2
TEACHER_CHANNELS = (2, 3)
T, ALPHA, BETA = 4.0, 1.0, 2.0


class TinyStudent(nn.Module):
    """Linear features, linear head, linear adapters; feature maps are ``[B, channels, 1, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(D, FEAT)
        self.head = nn.Linear(FEAT, C)
        self.adapters = nn.ModuleList(nn.Linear(FEAT, c) for c in TEACHER_CHANNELS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        f = self.body(x)
        return self.head(f), f[:, :, None, None], [a(f)[:, :, None, None] for a in self.adapters]


def _tiny_problem(nesterov: bool) -> tuple[MetaProblem, TinyStudent, MMKDWeightNets]:
    torch.manual_seed(0)
    student = TinyStudent().double()
    nets = MMKDWeightNets(C, K, B, feature_kd=True).double()
    hard = HardBatch(
        images=torch.randn(B, D, dtype=torch.float64),
        labels=torch.tensor([0, 2, 1, 2]),
        teacher_logits=3 * torch.randn(K, B, C, dtype=torch.float64),
        teacher_maps=[torch.randn(B, c, 1, 1, dtype=torch.float64) for c in TEACHER_CHANNELS],
    )
    names = [name for name, _ in student.named_parameters()]
    params = [p.detach().clone() for p in student.parameters()]
    momentum = [0.1 * torch.randn_like(p) for p in params]  # a run under way: momentum exists

    def forward(theta: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        return functional_call(student, dict(zip(names, theta)), (hard.images,))

    sgd = SGDSettings(lr=0.3, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    problem = MetaProblem(forward, params, momentum, hard, sgd, ALPHA, BETA, T, matching_steps=2)
    return problem, student, nets


def _mlp_softmax(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.clamp(x @ w1.t() + b1, min=0) @ w2.t() + b2, dim=1)


def _hand_loss(theta: list[torch.Tensor], phi: list[torch.Tensor], hard: HardBatch, matching: bool) -> torch.Tensor:
    """The matching loss (or CE) of the tiny student, every formula written out."""
    w1, b1, w2, b2, a1, c1, a2, c2 = theta
    x, y = hard.images, hard.labels
    f = x @ w1.t() + b1
    z = f @ w2.t() + b2
    if not matching:
        return -(z.log_softmax(1)[torch.arange(B), y]).mean()
    lw1, lb1, lw2, lb2, fw1, fb1, fw2, fb2 = phi
    w = _mlp_softmax(torch.cat([hard.teacher_logits[0], hard.teacher_logits[1], z.detach()], 1), lw1, lb1, lw2, lb2)
    log_q = (z / T).log_softmax(1)
    kl = torch.stack([((zt / T).softmax(1) * ((zt / T).log_softmax(1) - log_q)).sum(1) * T**2 for zt in hard.teacher_logits], 1)
    maps = [m.flatten(1) for m in hard.teacher_maps]
    fd = f.detach()
    gram = torch.cat([maps[0] @ maps[0].t(), maps[1] @ maps[1].t(), fd @ fd.t()], 1)
    v = _mlp_softmax(gram, fw1, fb1, fw2, fb2)
    mse = torch.stack([((f @ a.t() + c) - m).pow(2).mean(1) for a, c, m in ((a1, c1, maps[0]), (a2, c2, maps[1]))], 1)
    return ALPHA * (w * kl).sum(1).mean() + BETA * (v * mse).sum(1).mean()


def _grad(output: torch.Tensor, inputs: list[torch.Tensor], **kwargs) -> list[torch.Tensor]:
    """Gradients, zeros for an input the output does not read (CE does not read the adapters),
    as the authors' torch 1.8 ``zero_grad`` left them."""
    grads = torch.autograd.grad(output, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def _hand_hypergradient(problem: MetaProblem, phi: list[torch.Tensor]) -> list[torch.Tensor]:
    """The authors' reverse-mode meta-backward, by hand: the look-ahead steps as their
    ``MetaSGD.step`` (torch's SGD, Nesterov when asked) takes them, the adjoints carried back by
    the heavy-ball formulas whatever the step was (their ``meta_backward``)."""
    lr, mu, wd = problem.sgd.lr, problem.sgd.momentum, problem.sgd.weight_decay
    theta = [p.clone() for p in problem.params]
    buf = [b.clone() for b in problem.momentum_buffers]
    states = []
    for matching in (True, True, False):  # two matching-only steps, then one on CE
        states.append(([p.clone() for p in theta], matching))
        leaves = [p.clone().requires_grad_(True) for p in theta]
        grads = _grad(_hand_loss(leaves, phi, problem.hard, matching), leaves)
        d_p = [g + wd * p for g, p in zip(grads, theta)]
        buf = [mu * m + d for m, d in zip(buf, d_p)]
        if problem.sgd.nesterov:  # torch's SGD: d_p + momentum * buf
            theta = [p - lr * (d + mu * m) for p, d, m in zip(theta, d_p, buf)]
        else:
            theta = [p - lr * m for p, m in zip(theta, buf)]
    leaves = [p.clone().requires_grad_(True) for p in theta]
    adj_theta = _grad(_hand_loss(leaves, phi, problem.hard, False), leaves)
    adj_buf = [torch.zeros_like(p) for p in theta]
    phi_grad = [torch.zeros_like(p) for p in phi]
    for state, matching in reversed(states):
        leaves = [p.clone().requires_grad_(True) for p in state]
        grads = _grad(_hand_loss(leaves, phi, problem.hard, matching), leaves, create_graph=True)
        x = sum((g * (a_m - lr * a_t)).sum() for g, a_t, a_m in zip(grads, adj_theta, adj_buf))
        hvp = _grad(x, leaves, retain_graph=True)
        if matching:  # the CE step does not read the weight networks
            phi_grad = [pg + g for pg, g in zip(phi_grad, torch.autograd.grad(x, phi))]
        adj_theta, adj_buf = (
            [a_t * (1 - lr * wd) + wd * a_m + h for a_t, a_m, h in zip(adj_theta, adj_buf, hvp)],
            [mu * a_m - lr * mu * a_t for a_t, a_m in zip(adj_theta, adj_buf)],
        )
    return phi_grad


@pytest.mark.parametrize(("nesterov", "hypergradient"), [(False, "authors"), (False, "exact"), (True, "authors")])
def test_meta_update_matches_a_hand_computed_step(nesterov: bool, hypergradient: str) -> None:
    """The default (the authors' adjoint) against the hand reference, with and without Nesterov
    (the authors' run uses --nesterov); without Nesterov the exact derivative equals it too."""
    problem, _, nets = _tiny_problem(nesterov=nesterov)
    problem.hypergradient = hypergradient
    phi = [p.detach().clone().requires_grad_(True) for p in nets.parameters()]
    expected_grads = _hand_hypergradient(problem, phi)
    assert all(float(g.abs().max()) > 0 for g in expected_grads)  # both networks are reached
    for got, expected in zip(meta_gradients(problem, nets), expected_grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # one Adam step (lr 1e-3, wd 1e-4), by its formula: at step 1 the bias-corrected moments are
    # g and g^2, so each parameter moves by lr * g / (|g| + eps), with g including the decay
    lr, wd, eps = 1e-3, 1e-4, 1e-8
    expected_phi = []
    for p, g in zip(phi, expected_grads):
        g = g + wd * p.detach()
        expected_phi.append(p.detach() - lr * g / (g.abs() + eps))
    optimizer = torch.optim.Adam(nets.parameters(), lr=lr, weight_decay=wd, eps=eps)
    meta_update(problem, nets, optimizer)
    for got, expected in zip(nets.parameters(), expected_phi):
        torch.testing.assert_close(got.detach(), expected, rtol=1e-9, atol=1e-12)


def test_exact_meta_gradient_with_nesterov_matches_finite_differences() -> None:
    # the authors' adjoint is exact for heavy-ball SGD only; with Nesterov the "exact" option is
    # checked against central differences. One matching step: the networks read detached student
    # outputs (as the authors'), so from the second step on their inputs move with the networks
    # in a way both derivatives leave out by design
    problem, _, nets = _tiny_problem(nesterov=True)
    problem.matching_steps = 1
    problem.hypergradient = "exact"
    grads = meta_gradients(problem, nets)
    direction = [torch.randn_like(p) for p in nets.parameters()]
    step = 1e-6

    def outer_at(scale: float) -> float:
        with torch.no_grad():
            for p, d in zip(nets.parameters(), direction):
                p.add_(scale * step * d)
        value = float(unrolled_outer_loss(problem, nets).detach())
        with torch.no_grad():
            for p, d in zip(nets.parameters(), direction):
                p.sub_(scale * step * d)
        return value

    numeric = (outer_at(1.0) - outer_at(-1.0)) / (2 * step)
    analytic = float(sum((g * d).sum() for g, d in zip(grads, direction)))
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_the_authors_and_the_exact_hypergradient_differ_under_nesterov_only() -> None:
    for nesterov in (False, True):
        problem, _, nets = _tiny_problem(nesterov=nesterov)
        authors = torch.cat([g.flatten() for g in meta_gradients(problem, nets)])
        problem.hypergradient = "exact"
        exact = torch.cat([g.flatten() for g in meta_gradients(problem, nets)])
        relative = float((authors - exact).norm() / exact.norm())
        if nesterov:
            assert relative > 0.05  # the departure issue #25 measured (27% on its toy model)
        else:
            assert relative < 1e-9
    problem.hypergradient = "plain"
    with pytest.raises(ValueError, match="hypergradient must be one of"):
        meta_gradients(problem, nets)


def test_meta_update_leaves_the_student_and_momentum_untouched() -> None:
    problem, student, nets = _tiny_problem(nesterov=True)
    before = [p.detach().clone() for p in student.parameters()]
    momentum = [b.clone() for b in problem.momentum_buffers]
    meta_update(problem, nets, torch.optim.Adam(nets.parameters(), lr=1e-3))
    for p, q in zip(student.parameters(), before):
        assert torch.equal(p.detach(), q)
    for b, m in zip(problem.momentum_buffers, momentum):
        assert torch.equal(b, m)


# ---------------------------------------------------------------------- (b) the hard buffer
def test_hard_buffer_fills_then_replaces_random_slots_with_misclassified_samples() -> None:
    buffer = HardBuffer(capacity=6, batch_size=4, generator=torch.Generator().manual_seed(0))
    buffer.add(torch.tensor([0, 1, 2, 3]), torch.zeros(4, dtype=torch.bool))
    assert buffer.indices.tolist() == [0, 1, 2, 3] and not buffer.full  # filling: whole batches, right or wrong
    buffer.add(torch.tensor([4, 5, 6, 7]), torch.ones(4, dtype=torch.bool))
    assert buffer.indices.tolist() == [0, 1, 2, 3, 4, 5] and buffer.full  # exactly the capacity
    before = buffer.indices.clone()
    buffer.add(torch.tensor([10, 11, 12, 13]), torch.tensor([True, False, True, False]))
    changed = (buffer.indices != before).nonzero().flatten()
    assert len(changed) == 2 and sorted(buffer.indices[changed].tolist()) == [10, 12]  # two distinct slots
    after = buffer.indices.clone()
    buffer.add(torch.tensor([20, 21, 22, 23]), torch.zeros(4, dtype=torch.bool))  # nothing misclassified
    assert torch.equal(buffer.indices, after)
    drawn = buffer.sample()
    assert len(drawn) == 4 and len(set(drawn.tolist())) == 4 and set(drawn.tolist()) <= set(after.tolist())
    # the draws come from the buffer's generator alone
    twin = HardBuffer(capacity=6, batch_size=4, generator=torch.Generator().manual_seed(0))
    for indices, wrong in (([0, 1, 2, 3], [0] * 4), ([4, 5, 6, 7], [1] * 4), ([10, 11, 12, 13], [1, 0, 1, 0])):
        twin.add(torch.tensor(indices), torch.tensor(wrong, dtype=torch.bool))
    assert torch.equal(twin.indices, after) and torch.equal(twin.sample(), drawn)


# ---------------------------------------------------------------------- (c) through the env and the runner
def _env(**kwargs) -> PerSampleKDVectorEnv:
    settings = {"action_mode": "simplex", "epochs": 2, "max_steps_per_epoch": 6, **kwargs}
    return PerSampleKDVectorEnv(num_envs=SLOTS, dataset="synthetic", **settings)


def test_mmkd_trains_through_the_env_and_changes_its_weight_networks() -> None:
    env = _env()
    try:
        policy = MMKD(env, buffer_size=16)
        before = {k: v.clone() for k, v in policy.nets.state_dict().items()}
        observation, _ = env.reset(seed=0)
        engine = env.engine
        for _ in range(12):
            action, _ = policy.predict(observation)
            assert action.shape == (SLOTS, 2 * engine.num_teachers)
            np.testing.assert_allclose(action.reshape(SLOTS, 2, -1).sum(-1), 1.0, rtol=1e-5)  # both heads on the simplex
            observation, reward, terminated, _, info = env.step(action)
            assert np.isfinite(reward).all() and not info["diverged"].any()
        # the authors' schedule: after updates 0 and 5 of each 6-update epoch (5 is also the last);
        # the one owed by the run's last update is never taken
        assert policy.meta_steps == 3
        assert terminated.all()
        changed = [k for k, v in policy.nets.state_dict().items() if not torch.equal(v, before[k])]
        assert set(changed) == set(before)  # every parameter of both networks learned
    finally:
        env.close()


def test_a_student_map_smaller_than_the_teachers_is_met_by_pooling_the_teachers_map() -> None:
    """feature_resize="smaller" (MMKD's MatchFeature): the mlp student's 1x1 map against the
    cnn teachers' 2x2 maps: the adapters keep 1x1, the teacher maps are average-pooled to it, in
    the engine's feature term and in MMKD's meta step; the default upsamples the student map."""
    upsampled = FeatureAdapter(4, 3, (8, 8))
    kept = FeatureAdapter(4, 3, (8, 8), resize="smaller")
    small, large = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 16, 16)
    assert upsampled(small).shape[-2:] == (8, 8) and kept(small).shape[-2:] == (2, 2)
    assert kept(large).shape[-2:] == (8, 8)  # a larger student map is pooled in both modes
    teacher_map = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(match_teacher_map(teacher_map, kept(small)), torch.nn.functional.adaptive_avg_pool2d(teacher_map, 2))
    assert match_teacher_map(teacher_map, upsampled(small)) is teacher_map
    for resize in ("student", "smaller"):
        env = _env(student="mlp", feature_resize=resize, reward_mode="neg_loss")
        try:
            env.reset(seed=0)
            engine, batch = env.engine, env.engine.current
            assert batch is not None and engine.adapters is not None and batch.student_feature_map is not None
            maps = [engine.adapters[k](batch.student_feature_map) for k in range(engine.num_teachers)]
            assert batch.feature_mse is not None
            for k, (adapted, teacher) in enumerate(zip(maps, batch.teacher_feature_maps)):
                if resize == "smaller":
                    assert adapted.shape[-2:] == (1, 1) if teacher.shape[-1] > 1 else adapted.shape[-2:] == teacher.shape[-2:]
                    target = torch.nn.functional.adaptive_avg_pool2d(teacher, adapted.shape[-2:])
                else:
                    assert adapted.shape == teacher.shape
                    target = teacher
                expected = (adapted - target).pow(2).flatten(1).mean(1)
                torch.testing.assert_close(batch.feature_mse[:, k], expected)
            policy = MMKD(env, buffer_size=16)
            observation, _ = env.reset(seed=0)
            for _ in range(3):  # a meta step after the first update, with the pooled maps
                observation, *_ = env.step(policy.predict(observation)[0])
            assert policy.meta_steps == 1
        finally:
            env.close()


def test_meta_step_leaves_the_engines_student_and_prepared_batch_as_they_were() -> None:
    env = _env()
    try:
        policy = MMKD(env, buffer_size=8)
        observation, _ = env.reset(seed=1)
        policy.predict(observation)  # fills the buffer with the first batch
        engine = env.engine
        assert engine.student is not None and engine.adapters is not None
        state = {k: v.clone() for k, v in engine.student.state_dict().items()}
        adapters = {k: v.clone() for k, v in engine.adapters.state_dict().items()}
        policy.meta_step()
        assert all(torch.equal(v, state[k]) for k, v in engine.student.state_dict().items())  # BN statistics too
        assert all(torch.equal(v, adapters[k]) for k, v in engine.adapters.state_dict().items())
        env.step(policy.predict(observation)[0])  # the prepared batch's graph is still intact
    finally:
        env.close()


def test_feature_weights_read_the_engines_own_augmented_forward() -> None:
    env = _env(augment=True, max_steps_per_epoch=3)
    try:
        engine = env.engine
        factory = engine.student_factory
        policy = MMKD(env, buffer_size=8)
        observation, _ = env.reset(seed=2)
        for _ in range(2):
            batch = engine.current
            assert batch is not None and engine.student is not None and batch.student_feature_map is not None
            # the batch's maps are those its logits came from (the same augmented images)
            for teacher, feature_map, logits in zip(engine.teachers, batch.teacher_feature_maps, batch.teacher_logits):
                torch.testing.assert_close(teacher.head_logits(feature_map), logits)
            torch.testing.assert_close(engine.student.head_logits(batch.student_feature_map), batch.student_logits)
            action, _ = policy.predict(observation)
            with torch.no_grad():
                expected = policy.nets.features(batch.teacher_feature_maps, batch.student_feature_map)
            np.testing.assert_allclose(action[:, engine.num_teachers :], expected.numpy(), rtol=1e-6)
            observation, *_ = env.step(action)
        policy.meta_step()
        # MMKD reads the batch: no model of the engine's, and not its student factory, is patched
        assert engine.student_factory is factory
        assert all("forward_all" not in vars(model) for model in (*engine.teachers, engine.student))
    finally:
        env.close()


def test_runner_trains_saves_and_resumes_mmkd(tmp_path: Path) -> None:
    spec = get_policy("mmkd")
    assert spec.per_sample is True and spec.action_mode == "simplex" and spec.kind == "policy"
    env_kwargs = {"epochs": 1, "max_steps_per_epoch": 8, "batch_size": SLOTS, "feature_kd": True}
    config = RunConfig(
        SYNTHETIC,
        "mmkd",
        str(tmp_path / "run"),
        env_kwargs=env_kwargs,
        agent_kwargs={"buffer_size": 16},
        total_steps=4,
        tensorboard=False,
        progress=False,
    )
    assert config.per_sample  # the registry switches the run to the per-sample env
    first = train(config)
    assert first.env_steps == 4
    saved = torch.load(tmp_path / "run" / "checkpoints" / "policy.pt", weights_only=True)
    config.total_steps = 8
    second = train(config, resume=True)
    assert second.env_steps == 8 and np.isfinite(second.best_val_acc)
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "policy.pt", weights_only=True)
    assert resumed["meta_steps"] > saved["meta_steps"]
    assert any(not torch.equal(resumed["nets"][k], v) for k, v in saved["nets"].items())


def test_save_and_load_restore_the_policy(tmp_path: Path) -> None:
    env = _env()
    try:
        policy = MMKD(env, seed=3, buffer_size=8)
        observation, _ = env.reset(seed=0)
        for _ in range(2):
            observation, *_ = env.step(policy.predict(observation)[0])
        path = policy.save(tmp_path / "mmkd.pt")
        loaded = MMKD.load(path, env=env)
        assert loaded.config == policy.config and loaded.meta_steps == policy.meta_steps
        assert torch.equal(loaded.buffer.indices, policy.buffer.indices)
        for k, v in policy.nets.state_dict().items():
            assert torch.equal(loaded.nets.state_dict()[k], v)
        np.testing.assert_array_equal(loaded.predict(observation)[0], policy.predict(observation)[0])
    finally:
        env.close()


# ---------------------------------------------------------------------- (d) bad input
def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batches of 4.*batch sizes \\[3\\]"):
        FeatureWeight(batch_size=4, num_teachers=2)([torch.randn(3, 2, 1, 1)] * 2, torch.randn(3, 2, 1, 1))
    with pytest.raises(ValueError, match="K=2 teachers, got 3"):
        FeatureWeight(batch_size=4, num_teachers=2)([torch.randn(4, 2, 1, 1)] * 3, torch.randn(4, 2, 1, 1))
    with pytest.raises(ValueError, match="K=2 teachers and C=5 classes"):
        LogitsWeight(num_classes=5, num_teachers=2)(torch.randn(2, 4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="capacity >= batch size"):
        HardBuffer(capacity=4, batch_size=8, generator=torch.Generator())
    env = _env()
    try:
        with pytest.raises(ValueError, match="raise buffer_size"):
            MMKD(env, buffer_size=4)
        with pytest.raises(ValueError, match="meta_freq must be an integer >= 1"):
            MMKD(env, meta_freq=0)
        with pytest.raises(ValueError, match="meta_lr must be > 0"):
            MMKD(env, meta_lr=0.0)
        with pytest.raises(ValueError, match=r"hypergradient must be one of \('authors', 'exact'\)"):
            MMKD(env, hypergradient="nesterov")
        with pytest.raises(ValueError, match="pass env="):
            MMKD.load(tmp_path / "x.pt")
        (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
        with pytest.raises(CheckpointReadError, match="corrupt"):
            MMKD.load(tmp_path / "foreign.pt", env=env)
        with pytest.raises(FileNotFoundError, match="does not exist"):
            MMKD.load(tmp_path / "missing.pt", env=env)
        aver = make_baseline("aver", env).save(tmp_path / "aver.pt")
        with pytest.raises(CheckpointReadError, match="not a kd-env MMKD checkpoint"):
            MMKD.load(aver, env=env)
        with pytest.raises(ValueError, match=r"observation has shape \(3,\)"):
            MMKD(env).predict(np.zeros(3, dtype=np.float32))
    finally:
        env.close()
    batch_env = gym.make(SYNTHETIC, action_mode="simplex", epochs=1, max_steps_per_epoch=2)
    try:
        with pytest.raises(ValueError, match="per-sample env"):
            MMKD(batch_env)
    finally:
        batch_env.close()
    camkd_env = _env(feature_term="camkd")
    try:
        with pytest.raises(ValueError, match="feature_term='mse'"):
            MMKD(camkd_env)
    finally:
        camkd_env.close()
