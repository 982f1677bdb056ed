"""The quadratic programme behind AEKD's weights, solved: the min-norm point of a capped simplex.

AEKD weighs the teachers by the minimum-norm point of the convex hull of their KD gradients,
each weight capped (``min_a a^T G a`` over ``{sum a = 1, 0 <= a <= cap}`` for the Gram matrix
``G``). :func:`capped_simplex_min_norm_exact` solves it exactly (active set, float64; what
:func:`~kd_env.baselines.rules.aekd_weights` calls), :func:`capped_simplex_min_norm` by
accelerated projected gradient with :func:`project_capped_simplex`, the exact projection.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["capped_simplex_min_norm", "capped_simplex_min_norm_exact", "project_capped_simplex"]


# ------------------------------------------------------------------------------------------------
# AEKD: min-norm point of the capped convex hull of the teachers' KD gradients
# ------------------------------------------------------------------------------------------------
#
# The official code solves this QP with scikit-learn's OneClassSVM on a precomputed Gram
# matrix, a heavy dependency for a problem with 2 to 8 variables, and torch has no well-kept
# QP solver. The solver below is a few lines of a standard method: accelerated projected
# gradient (FISTA, with O'Donoghue-Candes adaptive restart) whose projection onto the capped
# simplex is exact (a search over the 2K breakpoints of a piecewise-linear function).


def project_capped_simplex(values: torch.Tensor, cap: float = 1.0) -> torch.Tensor:
    """Euclidean projection onto ``{x : sum_k x_k = 1, 0 <= x_k <= cap}`` along the last dim.

    The projection is ``x_k = clip(v_k - tau, 0, cap)`` where ``tau`` solves
    ``s(tau) = sum_k clip(v_k - tau, 0, cap) = 1``. ``s`` is non-increasing and piecewise linear
    with breakpoints ``v_k`` and ``v_k - cap``, so ``tau`` is found exactly by evaluating ``s`` at
    the ``2K`` sorted breakpoints and interpolating on the bracketing segment (no iteration).

    Args:
        values: ``[..., K]``.
        cap: upper bound of each entry; needs ``cap * K >= 1`` (else the set is empty).
    """
    num = values.shape[-1]
    if cap * num < 1.0 - 1e-12:
        raise ValueError(f"cap={cap} < 1/K with K={num}: the capped simplex is empty")
    cap = min(float(cap), 1.0)
    breakpoints = torch.cat([values - cap, values], dim=-1).sort(dim=-1).values  # [..., 2K]
    # s(tau) at every breakpoint: [..., 2K], non-increasing
    sums = (values.unsqueeze(-2) - breakpoints.unsqueeze(-1)).clamp(0.0, cap).sum(-1)
    # s(first breakpoint) = K * cap >= 1 and s(last breakpoint) = 0, so [j-1, j] brackets s = 1.
    upper = (sums > 1.0).sum(dim=-1, keepdim=True).clamp(1, 2 * num - 1)
    b_lo, b_hi = breakpoints.gather(-1, upper - 1), breakpoints.gather(-1, upper)
    s_lo, s_hi = sums.gather(-1, upper - 1), sums.gather(-1, upper)
    drop = s_lo - s_hi
    fraction = torch.where(drop > 0, (s_lo - 1.0) / torch.where(drop > 0, drop, torch.ones_like(drop)), 0.0)
    tau = b_lo + fraction * (b_hi - b_lo)
    return (values - tau).clamp(0.0, cap)


def capped_simplex_min_norm(gram: torch.Tensor, cap: float = 1.0, max_iter: int = 2000, tol: float = 1e-12) -> torch.Tensor:
    """Solve ``min_a a^T G a`` subject to ``sum_k a_k = 1`` and ``0 <= a_k <= cap``.

    This is the min-norm point of the convex hull of vectors ``g_k`` with Gram matrix
    ``G_jk = g_j . g_k`` (MGDA), each weight capped at ``cap``. Method: FISTA with adaptive
    restart and exact projection (:func:`project_capped_simplex`), in float64. The step is
    ``1/L`` with ``L = 2 * lambda_max(P G P)`` and ``P = I - 11^T/K``: only the curvature along the
    feasible plane matters, so a component shared by all ``g_k`` does not slow the solver down.
    It stops when a step moves the iterate by less than ``tol`` (max norm), at most ``max_iter``
    steps; typical accuracy of the weights is far below 1e-6.

    Degenerate cases return uniform weights: ``cap * K <= 1`` (infeasible, or the single
    feasible point; the official AE-KD code clamps ``nu`` to 1, which forces uniform weights),
    and a Gram matrix that is flat on the feasible plane (identical ``g_k``: every feasible
    point is optimal).

    Args:
        gram: ``[K, K]`` symmetric positive semi-definite.
        cap: the per-weight cap ``C`` (AE-KD's "tolerance", default there 0.6).

    Returns:
        ``[K]`` float64 weights on the capped simplex.
    """
    num = gram.shape[0]
    if gram.shape != (num, num) or num < 1:
        raise ValueError(f"gram must be a square [K, K] matrix, got shape {tuple(gram.shape)}")
    g = gram.detach().to(device="cpu", dtype=torch.float64)
    g = 0.5 * (g + g.T)
    uniform = torch.full((num,), 1.0 / num, dtype=torch.float64)
    if num == 1 or cap * num <= 1.0 + 1e-12:
        return uniform
    centering = torch.eye(num, dtype=torch.float64) - 1.0 / num
    lipschitz = 2.0 * float(torch.linalg.eigvalsh(centering @ g @ centering)[-1])
    scale = float(g.diagonal().max())
    if not (math.isfinite(lipschitz) and lipschitz > 1e-13 * max(scale, 0.0) and lipschitz > 0.0):
        return uniform  # flat on the feasible plane (to rounding): every feasible point is optimal
    step = 2.0 / lipschitz  # gradient of a^T G a is 2 G a
    x = uniform
    y = uniform
    t = 1.0
    for _ in range(max_iter):
        x_new = project_capped_simplex(y - step * (g @ y), cap)
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        if float(torch.dot(y - x_new, x_new - x)) > 0.0:  # momentum points uphill: restart
            t_new, y = 1.0, x_new
        else:
            y = x_new + ((t - 1.0) / t_new) * (x_new - x)
        moved = float((x_new - x).abs().max())
        x, t = x_new, t_new
        if moved < tol:
            break
    return x


def capped_simplex_min_norm_exact(gram: torch.Tensor | np.ndarray, cap: float = 1.0) -> torch.Tensor:
    """:func:`capped_simplex_min_norm`'s problem, solved exactly by a primal active-set method.

    ``min_a a^T G a`` s.t. ``sum_k a_k = 1``, ``0 <= a_k <= cap``, for the small ``K`` of AEKD
    (``K <= 16`` is the intended range; any ``K`` works, at ``O(K^3)`` an iteration). Why not
    FISTA: it needs 5-330 iterations of ~15 small torch ops each; the problem is tiny, and on
    the optimal face (which entries sit at 0, at the cap, or in between) the minimiser is the
    solution of one linear system. The method walks from the uniform point, keeping a working
    set of active bounds: on the current face it takes the exact minimising step (a Newton
    step in a basis of ``sum = 0``, eigendecomposed so that a positive semi-definite ``G`` is
    handled: a flat direction with a slope is followed to the next bound), stops at the first
    bound it meets, and when the face's minimiser is reached frees the bound whose KKT
    multiplier has the wrong sign; it ends when every multiplier has the right sign, at the
    exact KKT point (up to float64 rounding). Typically ``K`` to ``2K`` iterations.

    Same conventions as :func:`capped_simplex_min_norm`: float64, ``cap`` above 1 acts as 1,
    uniform weights when ``cap * K <= 1`` (the official code's clamp) or when ``G`` is flat on
    the feasible plane. Where the minimiser is not unique (``g_k`` affinely dependent, e.g.
    more teachers than the gradients' dimension plus one) the two solvers may return different
    minimisers of the same value. If the walk has not ended after ``50 + 20 K`` iterations
    (cycling on a degenerate vertex, never seen in tests) it falls back to the FISTA solver.

    Args:
        gram: ``[K, K]`` symmetric positive semi-definite (torch or numpy).
        cap: the per-weight cap ``C``.

    Returns:
        ``[K]`` float64 CPU weights on the capped simplex.
    """
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy() if isinstance(gram, torch.Tensor) else np.asarray(gram, np.float64)
    num = g.shape[0]
    if g.shape != (num, num) or num < 1:
        raise ValueError(f"gram must be a square [K, K] matrix, got shape {tuple(g.shape)}")
    g = 0.5 * (g + g.T)
    uniform = np.full(num, 1.0 / num)
    if num == 1 or cap * num <= 1.0 + 1e-12:
        return torch.from_numpy(uniform)
    cap = min(float(cap), 1.0)
    scale = float(np.abs(g).max())
    if not math.isfinite(scale):
        raise ValueError("gram has non-finite entries")
    if scale == 0.0:
        return torch.from_numpy(uniform)
    flat = 1e-12 * scale * num  # curvature (and slope) below this is rounding: treated as zero
    x = uniform.copy()
    at_zero = np.zeros(num, dtype=bool)
    at_cap = np.zeros(num, dtype=bool)
    for _ in range(50 + 20 * num):
        free = np.flatnonzero(~(at_zero | at_cap))
        grad = g @ x  # half the gradient; the factor 2 changes no sign or ratio below
        step = np.zeros(num)
        if free.size >= 2:
            # a basis of {p : sum p = 0} on the free entries: p = Z d with Z = [I; -1^T]
            basis = np.vstack([np.eye(free.size - 1), -np.ones((1, free.size - 1))])
            reduced = basis.T @ g[np.ix_(free, free)] @ basis
            curvature, vectors = np.linalg.eigh(reduced)
            slope = vectors.T @ (basis.T @ grad[free])
            positive = curvature > flat
            if np.any(np.abs(slope[~positive]) > flat):
                # a flat direction with a slope: go down it as far as the bounds allow (the
                # set is bounded, so a long step always meets a bound)
                direction = basis @ -(vectors[:, ~positive] @ slope[~positive])
                step[free] = direction * (1e3 / max(float(np.abs(direction).max()), 1e-300))
            else:
                step[free] = basis @ (vectors[:, positive] @ (-slope[positive] / curvature[positive]))
        if np.abs(step).max() > 1e-15:
            # the longest part of the step that stays feasible; the first bound met joins the set
            to_zero = np.full(num, np.inf)
            to_cap = np.full(num, np.inf)
            down, up = step < 0, step > 0
            to_zero[down] = -x[down] / step[down]
            to_cap[up] = (cap - x[up]) / step[up]
            limits = np.minimum(to_zero, to_cap)
            blocking = int(np.argmin(limits))
            length = min(1.0, max(float(limits[blocking]), 0.0))
            x = x + length * step
            if length < 1.0:
                if to_zero[blocking] <= to_cap[blocking]:
                    x[blocking], at_zero[blocking] = 0.0, True
                else:
                    x[blocking], at_cap[blocking] = cap, True
                still_free = ~(at_zero | at_cap)
                x[still_free] += (1.0 - x.sum()) / int(still_free.sum())  # keep the sum 1 against rounding drift
                continue
        # the face's minimiser: the multipliers of its active bounds decide
        grad = g @ x
        level = float(grad[free].mean()) if free.size else 0.0
        wrong_zero = np.where(at_zero, level - grad, -np.inf)  # > 0: moving off 0 goes down
        wrong_cap = np.where(at_cap, grad - level, -np.inf)  # > 0: moving off the cap goes down
        worst_zero, worst_cap = int(np.argmax(wrong_zero)), int(np.argmax(wrong_cap))
        if max(wrong_zero[worst_zero], wrong_cap[worst_cap]) <= flat:
            return torch.from_numpy(np.clip(x, 0.0, cap))
        if wrong_zero[worst_zero] >= wrong_cap[worst_cap]:
            at_zero[worst_zero] = False
        else:
            at_cap[worst_cap] = False
    return capped_simplex_min_norm(torch.from_numpy(g), cap)
