"""The shared loss formulas against the formulas written out directly."""

from __future__ import annotations

import math

import numpy as np
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


def test_kd_loss_is_zero_for_identical_logits_and_finite_for_saturated_ones():
    logits = torch.randn(4, 10)
    assert torch.allclose(per_sample_kd_loss(logits, logits[None]), torch.zeros(4, 1), atol=1e-6)
    saturated = torch.full((2, 4, 10), -1e4)
    saturated[:, :, 0] = 1e4
    assert torch.isfinite(per_sample_kd_loss(logits, saturated)).all()
    assert torch.isfinite(per_sample_entropy(saturated)).all()


def test_cross_entropy_and_entropy_against_direct_formulas():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]])  # K=1, B=2, C=3
    labels = torch.tensor([0, 2])
    ce = per_sample_cross_entropy(logits, labels)
    assert ce.shape == (2, 1)
    for b, label in enumerate(labels.tolist()):
        p = _softmax(logits[0, b].tolist())
        assert abs(ce[b, 0].item() + math.log(p[label])) < 1e-6
        assert abs(per_sample_entropy(logits)[b, 0].item() + sum(v * math.log(v) for v in p)) < 1e-6
    assert per_sample_cross_entropy(logits[0], labels).shape == (2,)


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


def test_adapter_resizes_to_the_teacher_map():
    larger = FeatureAdapter(8, 16, (2, 2))(torch.randn(3, 8, 4, 4))
    smaller = FeatureAdapter(8, 16, (8, 8))(torch.randn(3, 8, 4, 4))
    same = FeatureAdapter(8, 5, (4, 4))(torch.randn(3, 8, 4, 4))
    assert larger.shape == (3, 16, 2, 2)
    assert smaller.shape == (3, 16, 8, 8)
    assert same.shape == (3, 5, 4, 4)
    assert (same >= 0).all()  # ends in ReLU, like MTKD-RL's TransFeat
