"""Tests of the model zoo: registry, the KDModel output contract and parameter counts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
import torch
from torch import nn

from kd_env.models import MODELS, KDModel, ModelOutput, create_model, list_models, register_model

CIFAR_MODELS = [
    "resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_2", "wrn_40_2", "wrn_28_4", "vgg8", "vgg13", "MobileNetV2", "MobileNetV2_s1", "mobile_half",
    "ShuffleV2", "RegNetX_200MF", "RegNetX_400MF", "RegNetY_400MF",
]  # fmt: skip
SMALL_MODELS = ["mlp", "cnn_w8", "cnn_w16", "cnn_w32", "cnn_w64"]

# Published sizes (millions of params, 100 classes) from RepDistiller / CRD. RepDistiller's
# "MobileNetV2" is our ``mobile_half``.
PUBLISHED_M = {
    "resnet8": 0.08, "resnet20": 0.28, "resnet32": 0.47, "resnet56": 0.86, "resnet110": 1.74,
    "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_16_2": 0.70, "wrn_40_2": 2.26, "vgg8": 3.96,
    "vgg13": 9.46, "mobile_half": 0.81, "ShuffleV2": 1.36,
}  # fmt: skip

# Exact counts of this implementation (100 classes; the small nets with 10 classes and
# in_channels=1), pinned so an accidental architecture change is caught. No published size is
# asserted for these ones: MobileNetV2 (width 1.0) 2.35M, RegNetX_200MF 2.36M,
# RegNetX_400MF 4.81M, RegNetY_400MF 5.75M, wrn_28_4 5.87M.
EXACT = {
    "resnet8": 83_892, "resnet20": 278_324, "resnet32": 472_756, "resnet56": 861_620,
    "resnet110": 1_736_564, "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
    "wrn_16_2": 703_284, "wrn_40_2": 2_255_156, "wrn_28_4": 5_872_180,
    "vgg8": 3_965_028, "vgg13": 9_462_180, "MobileNetV2": 2_353_060, "MobileNetV2_s1": 2_353_060, "mobile_half": 812_836,
    "ShuffleV2": 1_355_528, "RegNetX_200MF": 2_355_156, "RegNetX_400MF": 4_813_988,
    "RegNetY_400MF": 5_749_012,
    "mlp": 203_530, "cnn_w8": 6_274, "cnn_w16": 24_058, "cnn_w32": 94_186, "cnn_w64": 372_682,
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Run these batch-2 forwards on one thread.

    Intra-op threads buy nothing on such tiny tensors, and when the cores are busy with other
    work, OpenMP threads waiting on each other made this file ~10x slower (60 s instead of 6 s).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_output(model: KDModel, x: torch.Tensor, num_classes: int) -> ModelOutput:
    """Assert the KDModel contract on input ``x`` and return the output."""
    model.eval()
    with torch.no_grad():
        out = model.forward_all(x)
        logits = model(x)
    assert isinstance(out, ModelOutput)
    b = x.shape[0]
    assert out.logits.shape == (b, num_classes)
    assert out.feature_map.dim() == 4
    assert out.feature_map.shape[:2] == (b, model.feature_channels)
    # the embedding is the pooled KD tap, unless the network has layers between the two
    # (the official MobileNetV2: tap on the last block, then the 1x1 head conv, then the pooling)
    assert out.embedding.shape == (b, getattr(model, "embedding_channels", model.feature_channels))
    torch.testing.assert_close(out.embedding, model.embed(out.feature_map))
    torch.testing.assert_close(logits, model.head_logits(out.feature_map))
    if getattr(model, "embedding_channels", model.feature_channels) == model.feature_channels and not getattr(
        model, "tap_last_block", False
    ):
        torch.testing.assert_close(out.embedding, out.feature_map.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, out.logits)
    assert torch.isfinite(out.logits).all()
    return out


def test_registry_has_all_names() -> None:
    assert set(CIFAR_MODELS + SMALL_MODELS) <= set(list_models())
    assert list_models() == sorted(MODELS)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=100)
    assert model.num_classes == 100 and model.in_channels == 3
    check_output(model, torch.randn(2, 3, 32, 32), 100)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_small_inputs(name: str) -> None:
    """Grayscale 28x28 with 10 classes, and tiny 3x16x16 inputs, both work."""
    torch.manual_seed(0)
    gray = create_model(name, num_classes=10, in_channels=1)
    assert gray.in_channels == 1
    check_output(gray, torch.randn(2, 1, 28, 28), 10)
    check_output(create_model(name, num_classes=10), torch.randn(2, 3, 16, 16), 10)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_model_contract(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    out = check_output(model, torch.randn(2, 1, 28, 28), 10)
    if name.startswith("cnn"):
        assert out.feature_map.shape[-2:] == (7, 7)
    else:
        assert out.feature_map.shape[-2:] == (1, 1)
    check_output(create_model(name, num_classes=100, in_channels=1), torch.randn(2, 1, 28, 28), 100)


def test_mlp_other_image_size() -> None:
    model = create_model("mlp", num_classes=10, in_channels=3, image_size=16)
    check_output(model, torch.randn(2, 3, 16, 16), 10)


# Parameters whose gradient is exactly zero in train mode, by construction: the BatchNorm shift
# after these blocks' projection is a per-channel constant (the map is 1x1 at a 16x16 input), which
# the next block's 1x1 expansion conv carries to its BatchNorm, and batch statistics remove it.
ZERO_GRADIENT_IN_TRAIN_MODE = {"mobile_half": {f"blocks.{i}.body.2.1.bias" for i in range(13, 17)}}


@pytest.mark.parametrize("name", ["resnet8", "mobile_half", "ShuffleV2", "cnn_w8", "mlp"])
def test_train_mode_backward_reaches_every_parameter_with_the_finite_difference_gradient(name: str) -> None:
    """A train-mode backward on batch 2 gives every parameter a finite gradient, nonzero except
    where batch statistics make the loss invariant to it, and the gradient is the loss's: its
    directional derivative along a random direction equals a central finite difference (float64)."""
    in_ch, size = (1, 28) if name in SMALL_MODELS else (3, 16)
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=in_ch).double().train()
    images = torch.randn(2, in_ch, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss() -> torch.Tensor:
        # random weights on every output, so no symmetry (BN's zero-mean outputs) cancels a term
        out = model.forward_all(images)
        r_logits = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        r_map = torch.randn(out.feature_map.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        return (out.logits * r_logits).sum() + (out.feature_map * r_map).mean()

    loss().backward()
    named = list(model.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in named)
    grads = {n: cast(torch.Tensor, p.grad) for n, p in named}  # none is None (asserted above)
    assert {n for n, _ in named if not grads[n].abs().max() > 0} == ZERO_GRADIENT_IN_TRAIN_MODE.get(name, set())
    directions = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64) for i, (_, p) in enumerate(named)
    ]
    analytic = float(sum((grads[n] * d).sum() for (n, _), d in zip(named, directions)))
    eps = 1e-8  # these untrained BN nets are very curved: a larger step is off by percents
    with torch.no_grad():
        for (_, p), d in zip(named, directions):
            p.add_(eps * d)
        plus = float(loss())
        for (_, p), d in zip(named, directions):
            p.sub_(2 * eps * d)
        minus = float(loss())
    assert abs(analytic) > 1.0
    assert (plus - minus) / (2 * eps) == pytest.approx(analytic, rel=1e-3)


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_published_param_counts(name: str) -> None:
    ref = PUBLISHED_M[name] * 1e6
    # 3%, or half a unit of the last published digit (0.08M is a rounded 0.0839M).
    tol = max(0.03 * ref, 0.005e6)
    assert abs(n_params(create_model(name, num_classes=100)) - ref) <= tol


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_param_counts(name: str) -> None:
    if name in SMALL_MODELS:
        model = create_model(name, num_classes=10, in_channels=1)
    else:
        model = create_model(name, num_classes=100)
    assert n_params(model) == EXACT[name]


def test_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="resnet32x4"):
        create_model("resnet9000")


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError):
        register_model("resnet8")(lambda **_: create_model("cnn_w8"))
