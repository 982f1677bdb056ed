"""The shared loss formulas against the formulas written out directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_env.engine import (
    FeatureAdapter,
    feature_cosine,
    per_sample_cross_entropy,
    per_sample_entropy,
    per_sample_feature_mse,
    per_sample_kd_loss,
    weighted_teacher_loss,
)


def _softmax(row):
    exps = [math.exp(v - max(row)) for v in row]
    return [e / sum(exps) for e in exps]


def test_per_sample_kd_loss_matches_the_formula_written_out():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    teachers = torch.randn(3, 5, 7, generator=generator, dtype=torch.float64) * 3
    temperature = 4.0
    got = per_sample_kd_loss(student, teachers, temperature)
    assert got.shape == (5, 3)
    for b in range(5):
        q = _softmax([v / temperature for v in student[b].tolist()])
        for k in range(3):
            p = _softmax([v / temperature for v in teachers[k, b].tolist()])
            expected = temperature**2 * sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
            assert abs(got[b, k].item() - expected) < 1e-9


def test_kd_loss_is_zero_for_identical_logits_and_exact_for_saturated_ones():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(per_sample_kd_loss(logits, logits[None]), torch.zeros(4, 1), atol=1e-6)
    saturated = torch.full((2, 4, 10), -1e4)
    saturated[:, :, 0] = 1e4
    # a one-hot teacher: p log p = 0 off the top class, so T^2 KL(p || q) = -T^2 log q_0
    temperature = 4.0
    got = per_sample_kd_loss(logits, saturated, temperature)
    expected = -(temperature**2) * torch.nn.functional.log_softmax(logits / temperature, dim=1)[:, 0]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected[:, None].expand(4, 2), rtol=1e-5, atol=1e-5)
    assert (expected > 1.0).all()  # the student is far from one-hot: a real, large loss
    entropy = per_sample_entropy(saturated)
    assert torch.isfinite(entropy).all()
    torch.testing.assert_close(entropy, torch.zeros(4, 2), rtol=0, atol=1e-6)  # one-hot: no uncertainty


def test_cross_entropy_and_entropy_against_direct_formulas():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]])  # K=1, B=2, C=3
    labels = torch.tensor([0, 2])
    ce = per_sample_cross_entropy(logits, labels)
    assert ce.shape == (2, 1)
    for b, label in enumerate(labels.tolist()):
        p = _softmax(logits[0, b].tolist())
        assert abs(ce[b, 0].item() + math.log(p[label])) < 1e-6
        assert abs(per_sample_entropy(logits)[b, 0].item() + sum(v * math.log(v) for v in p)) < 1e-6
    # the student's [B, C] logits: the same values, without the teacher axis
    torch.testing.assert_close(per_sample_cross_entropy(logits[0], labels), ce[:, 0])
    assert per_sample_cross_entropy(logits[0], labels)[1].item() == pytest.approx(math.log(3))  # uniform row
    # entropy at a temperature: the entropy of softmax(z / T)
    q = _softmax([v / 2.0 for v in logits[0, 0].tolist()])
    assert per_sample_entropy(logits, temperature=2.0)[0, 0].item() == pytest.approx(-sum(v * math.log(v) for v in q), rel=1e-6)


def test_feature_terms_and_weighting():
    student_map = torch.randn(3, 4, 2, 2)
    teacher_map = torch.randn(3, 4, 2, 2)
    mse = per_sample_feature_mse(student_map, teacher_map)
    expected = np.mean((student_map.numpy() - teacher_map.numpy()) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(mse.numpy(), expected, rtol=1e-6)
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    np.testing.assert_allclose(
        feature_cosine(a, b).numpy(),
        [float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(3)],
        rtol=1e-5,
    )
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert weighted_teacher_loss(losses, torch.tensor([0.25, 0.75])).item() == (1 * 0.25 + 2 * 0.75 + 3 * 0.25 + 4 * 0.75) / 2
    per_sample = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert weighted_teacher_loss(losses, per_sample).item() == (1 + 4) / 2


def _bilinear_upsample_reference(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of the last two axes (square maps), align_corners=False, written out: output
    pixel i reads source coordinate (i + 0.5) * in / out - 0.5, clamped at 0, between its two neighbours."""
    n = x.shape[-1]
    out = np.zeros(x.shape[:-2] + (size, size))
    coords = []
    for i in range(size):
        src = max((i + 0.5) * n / size - 0.5, 0.0)
        low = min(int(math.floor(src)), n - 1)
        coords.append((low, min(low + 1, n - 1), src - low))
    for i, (i0, i1, fi) in enumerate(coords):
        for j, (j0, j1, fj) in enumerate(coords):
            out[..., i, j] = (
                (1 - fi) * (1 - fj) * x[..., i0, j0]
                + (1 - fi) * fj * x[..., i0, j1]
                + fi * (1 - fj) * x[..., i1, j0]
                + fi * fj * x[..., i1, j1]
            )
    return out


def _adapter_reference(adapter: FeatureAdapter, resized: np.ndarray) -> np.ndarray:
    """1x1 conv (a matrix product over channels, plus the bias), train-mode BatchNorm (the batch's
    mean and biased variance, eps, gamma, beta), ReLU; from the adapter's own parameters."""
    assert adapter.conv.bias is not None  # the adapter's conv has a bias
    weight = adapter.conv.weight.detach().double().numpy()[:, :, 0, 0]
    conv = np.einsum("oc,bchw->bohw", weight, resized) + adapter.conv.bias.detach().double().numpy()[None, :, None, None]
    mean = conv.mean(axis=(0, 2, 3), keepdims=True)
    var = conv.var(axis=(0, 2, 3), keepdims=True)
    gamma = adapter.bn.weight.detach().double().numpy()[None, :, None, None]
    beta = adapter.bn.bias.detach().double().numpy()[None, :, None, None]
    return np.maximum((conv - mean) / np.sqrt(var + adapter.bn.eps) * gamma + beta, 0.0)


def test_adapter_resizes_to_the_teacher_map_then_applies_conv_bn_relu():
    torch.manual_seed(0)
    student_map = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    x = student_map.double().numpy()
    # 4x4 -> 2x2: adaptive average pooling is the mean of each 2x2 block
    pooled = x.reshape(3, 8, 2, 2, 2, 2).mean(axis=(3, 5))
    cases = [((2, 2), 16, pooled), ((8, 8), 16, _bilinear_upsample_reference(x, 8)), ((4, 4), 5, x)]
    for size, channels, resized in cases:
        adapter = FeatureAdapter(8, channels, size).train()
        with torch.no_grad():  # a non-trivial BN affine, so that gamma and beta are checked too
            adapter.bn.weight.uniform_(0.5, 1.5)
            adapter.bn.bias.uniform_(-0.5, 0.5)
        out = adapter(student_map)
        assert out.shape == (3, channels, *size)
        np.testing.assert_allclose(out.detach().double().numpy(), _adapter_reference(adapter, resized), rtol=1e-4, atol=1e-5)
        assert (out >= 0).all() and (out == 0).any()  # ends in ReLU, like MTKD-RL's TransFeat
