"""The classic teacher-weighting rules against their formulas, written out independently here.

The references below use plain Python / numpy loops over samples, teachers and classes, so they
do not share code (or vectorisation mistakes) with ``baselines/rules.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

try:  # installed layout
    from kd_env.baselines import rules
except ImportError:  # source checkout with PYTHONPATH at the repository root
    from baselines import rules


# ------------------------------------------------------------------------------------------------
# independent references (loops, float64)
# ------------------------------------------------------------------------------------------------


def _softmax_row(row: np.ndarray) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _log_sum_exp(row: np.ndarray) -> float:
    top = max(row)
    return top + math.log(sum(math.exp(v - top) for v in row))


def ref_ebkd(teacher: np.ndarray) -> np.ndarray:
    num_teachers, batch, _ = teacher.shape
    out = np.zeros((batch, num_teachers))
    for b in range(batch):
        entropies = []
        for k in range(num_teachers):
            probs = _softmax_row(teacher[k, b])
            entropies.append(-sum(p * math.log(p) for p in probs if p > 0))
        total = sum(entropies)
        for k in range(num_teachers):
            if num_teachers == 1:
                out[b, k] = 1.0
            elif total == 0:
                out[b, k] = 1.0 / num_teachers
            else:
                out[b, k] = (1.0 - entropies[k] / total) / (num_teachers - 1)
    return out


def ref_camkd(teacher: np.ndarray, labels: np.ndarray) -> np.ndarray:
    num_teachers, batch, _ = teacher.shape
    out = np.zeros((batch, num_teachers))
    for b in range(batch):
        ce = [_log_sum_exp(teacher[k, b]) - teacher[k, b, labels[b]] for k in range(num_teachers)]
        soft = _softmax_row(np.array(ce))
        for k in range(num_teachers):
            out[b, k] = 1.0 if num_teachers == 1 else (1.0 - soft[k]) / (num_teachers - 1)
    return out


def ref_aekd_gradients(teacher: np.ndarray, student: np.ndarray, temperature: float) -> np.ndarray:
    """``g_k[c] = (1/B) sum_b (q_bc - p_k,bc)`` with loops."""
    num_teachers, batch, classes = teacher.shape
    grads = np.zeros((num_teachers, classes))
    for k in range(num_teachers):
        for b in range(batch):
            q = _softmax_row(student[b] / temperature)
            p = _softmax_row(teacher[k, b] / temperature)
            for c in range(classes):
                grads[k, c] += (q[c] - p[c]) / batch
    return grads


def ref_aekd_two_teachers(g1: np.ndarray, g2: np.ndarray, cap: float) -> float:
    """AE-KD's K = 2 closed form: ``alpha_1 = clip(((g2-g1).g2)/|g1-g2|^2, 1-C, C)``."""
    diff = g1 - g2
    return float(np.clip(np.dot(g2 - g1, g2) / np.dot(diff, diff), 1.0 - cap, cap))


def brute_force_three(gram: np.ndarray, cap: float, steps: int = 600) -> tuple[np.ndarray, float]:
    """Grid search of ``a^T G a`` over the capped simplex for K = 3 (grid spacing 1/steps)."""
    grid = np.arange(steps + 1) / steps
    a1, a2 = np.meshgrid(grid, grid, indexing="ij")
    a3 = 1.0 - a1 - a2
    alphas = np.stack([a1.ravel(), a2.ravel(), a3.ravel()], axis=1)
    feasible = np.all((alphas >= -1e-12) & (alphas <= cap + 1e-12), axis=1)
    alphas = alphas[feasible]
    values = np.einsum("ni,ij,nj->n", alphas, gram, alphas)
    best = int(np.argmin(values))
    return alphas[best], float(values[best])


def objective(gram: np.ndarray, alpha: np.ndarray) -> float:
    return float(alpha @ gram @ alpha)


def assert_kkt(gram: np.ndarray, alpha: np.ndarray, cap: float, tol: float) -> None:
    """Optimality of a capped-simplex QP point: one multiplier ``lam`` with grad_i = lam on free
    entries, grad_i >= lam at 0 and grad_i <= lam at the cap."""
    grad = 2.0 * gram @ alpha
    eps = 1e-7
    free = (alpha > eps) & (alpha < cap - eps)
    at_zero = alpha <= eps
    at_cap = alpha >= cap - eps
    lower = max(grad[free].max() if free.any() else -np.inf, grad[at_cap].max() if at_cap.any() else -np.inf)
    upper = min(grad[free].min() if free.any() else np.inf, grad[at_zero].min() if at_zero.any() else np.inf)
    assert lower <= upper + tol, (grad, alpha)


def _logits(seed: int, shape: tuple[int, ...], scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=generator)


# ------------------------------------------------------------------------------------------------
# AVER, EBKD, CA-MKD
# ------------------------------------------------------------------------------------------------


def test_aver_shapes_and_values() -> None:
    assert torch.equal(rules.aver_weights(4), torch.full((4,), 0.25))
    per_sample = rules.aver_weights(3, batch_size=5)
    assert per_sample.shape == (5, 3) and per_sample.dtype == torch.float32
    torch.testing.assert_close(per_sample.sum(1), torch.ones(5))
    assert torch.equal(rules.aver_weights(1, batch_size=2), torch.ones(2, 1))
    with pytest.raises(ValueError):
        rules.aver_weights(0)


@pytest.mark.parametrize("num_teachers", [1, 2, 3, 5])
def test_ebkd_matches_formula(num_teachers: int) -> None:
    teacher = _logits(num_teachers, (num_teachers, 6, 7))
    weights = rules.ebkd_weights(teacher)
    assert weights.shape == (6, num_teachers)
    np.testing.assert_allclose(weights.double().numpy(), ref_ebkd(teacher.double().numpy()), atol=1e-6)
    torch.testing.assert_close(weights.sum(1), torch.ones(6))


def test_ebkd_prefers_low_entropy() -> None:
    sharp = torch.tensor([[8.0, 0.0, 0.0]])
    flat = torch.tensor([[0.1, 0.0, 0.0]])
    teacher = torch.stack([flat, sharp])
    weights = rules.ebkd_weights(teacher)
    assert weights[0, 1] > weights[0, 0]
    np.testing.assert_allclose(weights.double().numpy(), ref_ebkd(teacher.double().numpy()), atol=1e-6)
    assert weights[0, 1] > 0.9  # the flat teacher's entropy is near log 3, the sharp one's near 0


@pytest.mark.parametrize("num_teachers", [1, 2, 3, 5])
def test_camkd_matches_formula(num_teachers: int) -> None:
    teacher = _logits(10 + num_teachers, (num_teachers, 6, 7))
    labels = torch.tensor([0, 1, 2, 3, 4, 6])
    weights = rules.camkd_weights(teacher, labels)
    assert weights.shape == (6, num_teachers)
    expected = ref_camkd(teacher.double().numpy(), labels.numpy())
    np.testing.assert_allclose(weights.double().numpy(), expected, atol=1e-6)
    torch.testing.assert_close(weights.sum(1), torch.ones(6))


def test_identical_teachers_get_uniform_weights() -> None:
    one = _logits(3, (1, 4, 6))
    teacher = one.expand(3, 4, 6).clone()
    labels = torch.tensor([0, 1, 2, 3])
    uniform = torch.full((4, 3), 1.0 / 3.0)
    torch.testing.assert_close(rules.ebkd_weights(teacher), uniform)
    torch.testing.assert_close(rules.camkd_weights(teacher, labels), uniform)
    student = _logits(4, (4, 6))
    torch.testing.assert_close(rules.aekd_weights(teacher, student), torch.full((3,), 1.0 / 3.0))


def _saturated(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, shape, generator=generator).float() * 2.0 - 1.0
    return 1e4 * signs


def test_saturated_logits_stay_finite_and_on_simplex() -> None:
    teacher = _saturated(0, (3, 8, 5))
    student = _saturated(1, (8, 5))
    labels = torch.arange(8) % 5
    for weights in (
        rules.ebkd_weights(teacher),
        rules.camkd_weights(teacher, labels),
        rules.aekd_weights(teacher, student).unsqueeze(0),
    ):
        assert torch.isfinite(weights).all()
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0]))


def test_ebkd_all_zero_entropy_is_uniform() -> None:
    # one-hot saturated teachers: every entropy is exactly 0 (the original is 0/0 here)
    teacher = torch.full((4, 2, 3), -1e4)
    teacher[:, :, 0] = 1e4
    assert (rules.ebkd_weights(teacher) == 0.25).all()
    # one saturated teacher among softer ones gets the largest weight, still on the simplex
    mixed = torch.stack([teacher[0], torch.zeros(2, 3), torch.ones(2, 3) * torch.tensor([1.0, 0.0, 0.0])])
    weights = rules.ebkd_weights(mixed)
    np.testing.assert_allclose(weights.double().numpy(), ref_ebkd(mixed.double().numpy()), atol=1e-6)
    assert (weights[:, 0] == 0.5).all()


def test_camkd_no_teacher_right() -> None:
    # every teacher puts -1e4 on the label, by different margins: huge, unequal cross-entropies
    teacher = torch.zeros(3, 4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    for k, margin in enumerate([1e4, 2e4, 3e4]):
        teacher[k, torch.arange(4), labels] = -margin
    weights = rules.camkd_weights(teacher, labels)
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    # the worst teacher gets 0, the two others share
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5, 0.0]]).expand(4, 3))
    expected = ref_camkd(teacher.double().numpy(), labels.numpy())
    np.testing.assert_allclose(weights.double().numpy(), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# the capped-simplex QP
# ------------------------------------------------------------------------------------------------


def _bisection_projection(values: np.ndarray, cap: float) -> np.ndarray:
    low, high = values.min() - cap - 1.0, values.max() + 1.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if np.clip(values - mid, 0.0, cap).sum() > 1.0:
            low = mid
        else:
            high = mid
    return np.clip(values - 0.5 * (low + high), 0.0, cap)


@pytest.mark.parametrize("num", [2, 3, 5, 8])
@pytest.mark.parametrize("cap", [0.3, 0.5, 0.6, 1.0, 3.0])
def test_projection_matches_bisection_and_refuses_an_empty_set(num: int, cap: float) -> None:
    values = _logits(num, (20, num), scale=1.5).double()
    if cap * num < 1:  # cap 0.3 with K = 2 or 3: no point of the simplex respects the cap
        with pytest.raises(ValueError, match="the capped simplex is empty"):
            rules.project_capped_simplex(values, cap)
        return
    projected = rules.project_capped_simplex(values, cap)
    for row, out in zip(values.numpy(), projected.numpy(), strict=True):
        np.testing.assert_allclose(out, _bisection_projection(row, min(cap, 1.0)), atol=1e-12)
    with pytest.raises(ValueError):
        rules.project_capped_simplex(values, 0.1)


@pytest.mark.parametrize("seed", range(6))
def test_min_norm_k3_matches_brute_force(seed: int) -> None:
    vectors = np.random.default_rng(seed).normal(size=(3, 5)) + 0.5
    gram = vectors @ vectors.T
    for cap in (0.4, 0.6, 1.0):
        alpha = rules.capped_simplex_min_norm(torch.from_numpy(gram), cap).numpy()
        grid_alpha, grid_value = brute_force_three(gram, cap)
        assert abs(alpha.sum() - 1.0) < 1e-12 and alpha.min() >= 0 and alpha.max() <= cap + 1e-12
        assert objective(gram, alpha) <= grid_value + 1e-12
        np.testing.assert_allclose(alpha, grid_alpha, atol=3.0 / 600)


@pytest.mark.parametrize("num", [2, 3, 4, 6, 8])
def test_min_norm_kkt(num: int) -> None:
    rng = np.random.default_rng(num)
    for trial in range(10):
        dim = 2 if trial % 3 == 0 else 12  # rank-deficient Gram matrices too
        vectors = rng.normal(size=(num, dim)) + rng.normal(size=dim)
        gram = vectors @ vectors.T
        cap = float(rng.uniform(1.0 / num, 1.0)) if trial % 2 else 0.6
        alpha = rules.capped_simplex_min_norm(torch.from_numpy(gram), cap).numpy()
        cap = min(cap, 1.0)
        if cap * num <= 1.0:
            np.testing.assert_allclose(alpha, np.full(num, 1.0 / num))
            continue
        assert abs(alpha.sum() - 1.0) < 1e-12 and alpha.min() >= 0 and alpha.max() <= cap + 1e-12
        assert_kkt(gram, alpha, cap, tol=1e-8 * np.abs(gram).max())
        # no random feasible point does better
        others = rules.project_capped_simplex(torch.from_numpy(rng.normal(size=(500, num))), cap).numpy()
        assert objective(gram, alpha) <= np.einsum("ni,ij,nj->n", others, gram, others).min() + 1e-12


# ------------------------------------------------------------------------------------------------
# AEKD
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("cap", [0.6, 0.8, 1.0])
def test_aekd_two_teachers_closed_form(seed: int, cap: float) -> None:
    teacher = _logits(100 + seed, (2, 8, 6))
    student = _logits(200 + seed, (8, 6))
    weights = rules.aekd_weights(teacher, student, temperature=4.0, cap=cap)
    grads = ref_aekd_gradients(teacher.double().numpy(), student.double().numpy(), 4.0)
    alpha_1 = ref_aekd_two_teachers(grads[0], grads[1], cap)
    assert weights.shape == (2,) and weights.dtype == torch.float32
    np.testing.assert_allclose(weights.double().numpy(), [alpha_1, 1.0 - alpha_1], atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_aekd_three_teachers_brute_force(seed: int) -> None:
    teacher = _logits(300 + seed, (3, 8, 6))
    student = _logits(400 + seed, (8, 6))
    grads = ref_aekd_gradients(teacher.double().numpy(), student.double().numpy(), 4.0)
    gram = grads @ grads.T
    weights = rules.aekd_weights(teacher, student, cap=0.6).double().numpy()
    grid_alpha, grid_value = brute_force_three(gram, 0.6)
    assert objective(gram, weights) <= grid_value + 1e-6 * gram.max()  # float32 output
    np.testing.assert_allclose(weights, grid_alpha, atol=3.0 / 600)


def test_aekd_matches_official_backward_passes() -> None:
    """The logits-only gradients give the weights of the official K backward passes."""
    teacher = _logits(7, (3, 6, 5)).double()
    student = _logits(8, (6, 5)).double().requires_grad_(True)
    temperature = 4.0
    grads = []
    for k in range(3):
        loss = (
            torch.nn.functional.kl_div(
                torch.log_softmax(student / temperature, dim=1),
                torch.softmax(teacher[k] / temperature, dim=1),
                reduction="batchmean",
            )
            * temperature**2
        )
        (grad,) = torch.autograd.grad(loss, student)
        grads.append(grad.mean(0))
    stacked = torch.stack(grads)
    expected = rules.capped_simplex_min_norm(stacked @ stacked.T, cap=0.6)
    torch.testing.assert_close(rules.aekd_weights(teacher, student.detach(), temperature, 0.6), expected)


def test_aekd_cap_respected() -> None:
    # teacher 0 equals the student: g_0 = 0, so without a cap it would take all the weight
    student = _logits(11, (8, 6))
    teacher = torch.stack([student, _logits(12, (8, 6)), _logits(13, (8, 6))])
    uncapped = rules.aekd_weights(teacher, student, cap=1.0)
    np.testing.assert_allclose(uncapped.numpy(), [1.0, 0.0, 0.0], atol=1e-6)
    capped = rules.aekd_weights(teacher, student, cap=0.6)
    assert capped.max() <= 0.6 + 1e-6 and capped.min() >= 0
    assert capped[0] == pytest.approx(0.6, abs=1e-6)
    torch.testing.assert_close(capped.sum(), torch.tensor(1.0))
    grads = ref_aekd_gradients(teacher.double().numpy(), student.double().numpy(), 4.0)
    grid_alpha, _ = brute_force_three(grads @ grads.T, 0.6)
    np.testing.assert_allclose(capped.double().numpy(), grid_alpha, atol=3.0 / 600)


def test_aekd_uniform_when_cap_below_one_over_k() -> None:
    student = _logits(21, (8, 6))
    teacher = torch.stack([student, _logits(22, (8, 6)), _logits(23, (8, 6)), _logits(24, (8, 6))])
    for cap in (0.2, 0.25):  # infeasible, and the single feasible point
        torch.testing.assert_close(rules.aekd_weights(teacher, student, cap=cap), torch.full((4,), 0.25))
    assert torch.equal(rules.aekd_weights(teacher[:1], student), torch.ones(1))


# ------------------------------------------------------------------------------------------------
# the exact solver (issue #25): against an independent QP solution (SciPy's SLSQP) and FISTA
# ------------------------------------------------------------------------------------------------


def slsqp_min_norm(gram: np.ndarray, cap: float) -> np.ndarray:
    """``min a^T G a`` on the capped simplex by SciPy's SLSQP at a tight tolerance (an independent
    general-purpose QP solution; G scaled to max |G| = 1 so that ``ftol`` is relative)."""
    from scipy.optimize import minimize

    num = gram.shape[0]
    scaled = gram / np.abs(gram).max()
    result = minimize(
        lambda a: a @ scaled @ a,
        np.full(num, 1.0 / num),
        jac=lambda a: 2.0 * scaled @ a,
        method="SLSQP",
        bounds=[(0.0, min(cap, 1.0))] * num,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(num)}],
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    # exit mode 8 ("positive directional derivative for linesearch") is SLSQP stopping where an
    # ftol of 1e-16 cannot be met in floating point, at the minimum; which of the two endings a
    # problem gets depends on the BLAS's summation order (the thread count), so both are accepted
    # and the point is checked for feasibility here and against the exact solver by the caller
    assert result.success or result.status == 8, result.message
    assert abs(result.x.sum() - 1.0) < 1e-9 and result.x.min() >= -1e-9 and result.x.max() <= min(cap, 1.0) + 1e-9
    return np.asarray(result.x)


def _random_gram(rng: np.random.Generator, num: int, dim: int) -> np.ndarray:
    # a shared component (teachers that agree) and a spread of scales, as AEKD's gradients have
    vectors = rng.normal(size=(num, dim)) * rng.uniform(0.1, 1.0, size=(num, 1)) + rng.normal(size=dim) * rng.uniform(0.0, 3.0)
    return vectors @ vectors.T


@pytest.mark.parametrize("num", [2, 3, 4, 5, 8, 12, 16])
def test_exact_min_norm_matches_an_independent_qp(num: int) -> None:
    """Unique minimisers (``g_k`` affinely independent, rank-deficient Gram matrices included:
    rank K - 1), caps inside (1/K, 1), at 1 and above 1: the weights agree within 1e-6."""
    rng = np.random.default_rng(1000 + num)
    for trial in range(12):
        dim = (num - 1, num + 3, 30)[trial % 3]  # rank K - 1 (singular), K, K
        gram = _random_gram(rng, num, max(dim, 1))
        cap = (0.6 if 0.6 * num > 1 else 1.0, float(rng.uniform(1.0 / num, 1.0)), 1.0, 3.0)[trial % 4]
        alpha = rules.capped_simplex_min_norm_exact(torch.from_numpy(gram), cap)
        assert alpha.dtype == torch.float64 and alpha.shape == (num,)
        alpha_np = alpha.numpy()
        assert abs(alpha_np.sum() - 1.0) < 1e-12 and alpha_np.min() >= 0 and alpha_np.max() <= min(cap, 1.0) + 1e-12
        assert_kkt(gram, alpha_np, min(cap, 1.0), tol=1e-9 * np.abs(gram).max())
        np.testing.assert_allclose(alpha_np, slsqp_min_norm(gram, cap), atol=1e-6)


@pytest.mark.parametrize("num", [3, 6, 16])
def test_exact_min_norm_degenerate_cases(num: int) -> None:
    rng = np.random.default_rng(2000 + num)
    uniform = np.full(num, 1.0 / num)
    gram = _random_gram(rng, num, 8)
    # cap below 1/K (infeasible: the official code's clamp) and at 1/K (the single feasible point)
    for cap in (0.5 / num, 1.0 / num):
        np.testing.assert_array_equal(rules.capped_simplex_min_norm_exact(gram, cap).numpy(), uniform)
    # identical gradients, and all-zero ones: every feasible point is optimal, uniform as FISTA
    same = np.tile(rng.normal(size=(1, 5)), (num, 1))
    np.testing.assert_allclose(rules.capped_simplex_min_norm_exact(same @ same.T, 0.6).numpy(), uniform, atol=1e-12)
    np.testing.assert_array_equal(rules.capped_simplex_min_norm_exact(np.zeros((num, num)), 0.6).numpy(), uniform)
    # more teachers than dimensions + 1 (rank 2): the minimiser is not unique, its value is
    for cap in (0.6, 1.0):
        low = _random_gram(rng, num, 2)
        alpha = rules.capped_simplex_min_norm_exact(low, cap).numpy()
        reference = slsqp_min_norm(low, cap)
        assert alpha @ low @ alpha <= reference @ low @ reference + 1e-10 * np.abs(low).max()
        assert_kkt(low, alpha, min(cap, 1.0), tol=1e-9 * np.abs(low).max())
    # one teacher with a zero gradient (the others affinely independent and their hull away from
    # 0): it takes the cap, the rest of the weight goes elsewhere
    vectors = rng.normal(size=(num, 40))
    vectors[0] = 0.0
    alpha = rules.capped_simplex_min_norm_exact(vectors @ vectors.T, 0.6).numpy()
    assert alpha[0] == pytest.approx(0.6, abs=1e-12)
    assert torch.equal(rules.capped_simplex_min_norm_exact(np.ones((1, 1)), 0.6), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        rules.capped_simplex_min_norm_exact(np.ones((2, 3)), 0.6)


@pytest.mark.parametrize("seed", range(4))
def test_exact_min_norm_matches_fista_on_aekd_gradients(seed: int) -> None:
    """On AEKD's own Gram matrices (batch-mean gradients of the KD loss) the exact solver gives
    the FISTA solver's weights within 1e-6, so it can replace it in :func:`rules.aekd_weights`."""
    for num in (2, 4, 5, 8):
        teacher = _logits(500 + seed * 10 + num, (num, 16, 10), scale=3.0).double().numpy()
        student = _logits(600 + seed * 10 + num, (16, 10)).double().numpy()
        grads = ref_aekd_gradients(teacher, student, 4.0)
        gram = torch.from_numpy(grads @ grads.T)
        for cap in (0.6, 1.0):
            expected = rules.capped_simplex_min_norm(gram, cap)
            torch.testing.assert_close(rules.capped_simplex_min_norm_exact(gram, cap), expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# loss scale, best teacher, random
# ------------------------------------------------------------------------------------------------


def test_kd_scale_for() -> None:
    assert rules.kd_scale_for("camkd", 3) == pytest.approx(1 / 3)
    assert rules.kd_scale_for("CA-MKD", 4) == pytest.approx(1 / 4)
    assert rules.kd_scale_for("ebkd", 3) == pytest.approx(2 / 3)
    for method in ("aver", "aekd", "mtkd_rl", "best"):
        assert rules.kd_scale_for(method, 3) == 1.0
    assert rules.kd_scale_for("ebkd", 1) == 1.0 and rules.kd_scale_for("camkd", 1) == 1.0


def test_best_teacher_weights() -> None:
    tie = rules.best_teacher_weights(torch.tensor([0.7, 0.9, 0.9]))
    assert torch.equal(tie, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(rules.best_teacher_weights([0.5, 0.2]), torch.tensor([1.0, 0.0]))
    assert torch.equal(rules.best_teacher_weights(np.array([0.1])), torch.tensor([1.0]))


def test_random_dirichlet_deterministic() -> None:
    for concentration in (1.0, 0.3, 5.0):
        first = rules.random_dirichlet_weights(4, torch.Generator().manual_seed(5), 16, concentration)
        again = rules.random_dirichlet_weights(4, torch.Generator().manual_seed(5), 16, concentration)
        other = rules.random_dirichlet_weights(4, torch.Generator().manual_seed(6), 16, concentration)
        assert torch.equal(first, again) and not torch.equal(first, other)
        assert first.shape == (16, 4) and first.dtype == torch.float32
    generator = torch.Generator().manual_seed(0)
    global_state = torch.get_rng_state()
    a = rules.random_dirichlet_weights(3, generator)
    b = rules.random_dirichlet_weights(3, generator)
    assert a.shape == (3,) and not torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), global_state)


@pytest.mark.parametrize("concentration", [1.0, 0.3, 5.0])
def test_random_dirichlet_moments(concentration: float) -> None:
    num, samples = 4, 20000
    generator = torch.Generator().manual_seed(1)
    weights = rules.random_dirichlet_weights(num, generator, samples, concentration).double()
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(samples, dtype=torch.float64))
    variance = (1 / num) * (1 - 1 / num) / (num * concentration + 1)
    mean_tol = 5 * math.sqrt(variance / samples)
    np.testing.assert_allclose(weights.mean(0).numpy(), np.full(num, 1 / num), atol=mean_tol)
    np.testing.assert_allclose(weights.var(0).numpy(), np.full(num, variance), rtol=0.06)


def test_random_dirichlet_tiny_concentration() -> None:
    weights = rules.random_dirichlet_weights(5, torch.Generator().manual_seed(2), 64, concentration=0.01)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(64))
    with pytest.raises(ValueError):
        rules.random_dirichlet_weights(3, torch.Generator(), concentration=0.0)


def test_one_teacher_everywhere() -> None:
    teacher = _logits(30, (1, 5, 4))
    labels = torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(rules.ebkd_weights(teacher), torch.ones(5, 1))
    assert torch.equal(rules.camkd_weights(teacher, labels), torch.ones(5, 1))
    assert torch.equal(rules.aekd_weights(teacher, _logits(31, (5, 4))), torch.ones(1))
    single = rules.random_dirichlet_weights(1, torch.Generator().manual_seed(0), 3)
    assert torch.equal(single, torch.ones(3, 1))


def test_exports() -> None:
    assert set(rules.__all__) <= set(dir(rules))


# ------------------------------------------------------------------------------------ label-confidence rules
def test_ce_softmax_is_the_softmax_of_minus_ce_over_tau():
    ce = torch.tensor([[0.1, 2.0, 0.5], [3.0, 3.0, 0.0]])
    for tau in (0.5, 1.0, 4.0):
        expected = torch.exp(-ce / tau) / torch.exp(-ce / tau).sum(dim=1, keepdim=True)
        torch.testing.assert_close(rules.ce_softmax_weights(ce, tau), expected)
    # at tau = 1 the weights are proportional to the probability each teacher gives the label
    probabilities = torch.exp(-ce)
    torch.testing.assert_close(rules.ce_softmax_weights(ce), probabilities / probabilities.sum(1, keepdim=True))
    # a [K] vector (the batch's mean CE) gives one [K] vector
    torch.testing.assert_close(rules.ce_softmax_weights(ce.mean(0)), torch.softmax(-ce.mean(0), 0))
    # the limits: tau -> 0 routes, tau -> inf is equal weights; saturated CE stays finite
    torch.testing.assert_close(rules.ce_softmax_weights(ce[:1], 1e-4), torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(rules.ce_softmax_weights(ce, 1e6), torch.full((2, 3), 1 / 3), atol=1e-5, rtol=0)
    huge = rules.ce_softmax_weights(torch.tensor([[1e4, 0.0, 1e4]]))
    assert torch.isfinite(huge).all() and huge.tolist() == [[0.0, 1.0, 0.0]]


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_ce_softmax_refuses_a_bad_tau(tau):
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        rules.ce_softmax_weights(torch.zeros(2, 3), tau)


def test_ce_route_puts_all_weight_on_the_lowest_ce_and_shares_ties():
    ce = torch.tensor([[0.3, 0.1, 0.2], [0.5, 0.5, 0.9], [1.0, 1.0, 1.0]])
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(rules.ce_route_weights(ce), expected)
    torch.testing.assert_close(rules.ce_route_weights(torch.tensor([2.0, 0.5, 0.5])), torch.tensor([0.0, 0.5, 0.5]))
