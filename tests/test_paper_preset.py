"""Issue #13: the ``cifar100-paper`` preset runs every method as its authors ran it.

* the preset's per-method settings against a table written from the authors' code (MMKD's
  included; its meta step has tests of its own in ``test_mmkd.py``);
* CA-MKD's feature-level weights (and the loss and gradient they give) against an independent
  computation; its first epoch without the feature term;
* MTKD-RL's ``dynamic`` per student, as the official README chooses it;
* the official MobileNetV2 (feature-map shape, the tap before any ReLU, multiply-adds);
* ``protocol="official"``: every training image, no validation split, the best test accuracy;
* ``benchmarks/gpu_smoke.py`` runs every method of the preset (on the CPU, 2 updates).

Everything is tiny (a few images, untrained ``random:`` teachers, one torch thread); CIFAR-100
data are files in the real on-disk format with random pixels, written here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import sys
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import kd_env  # noqa: F401  (registers the envs)
from kd_env.agents import MTKDRL
from kd_env.baselines.rules import kd_scale_for
from kd_env.comparison.presets import PAPER_DYNAMIC, PAPER_POOL_SIZE
from kd_env.comparison.shipped import PRESETS
from kd_env.comparison.sweep import plan
from kd_env.data.datasets import split_train_val
from kd_env.envs import KDEnvSettings, MultiTeacherKDEnv, PerSampleKDVectorEnv
from kd_env.models import create_model

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- the authors' settings
# Written from the authors' code (reference/baselines.md sections 0.1-4, reference/mtkd_rl.md):
# granularity of the weights, the factor on mean_b sum_k w_bk KL_bk that gives the published KD
# magnitude (K = 4), the feature term (None: logits only, "-b 0"), its weight in our
# mean_b sum_k v_bk MSE convention, the epoch it starts, the student's weight decay.
K = 4
AUTHORS: dict[str, dict[str, Any]] = {
    # Rorozhl/CA-MKD helper/loops.py AVERAGE_LOSS: (1/K) sum_k mean_b KL; run.sh -b 0; wd 5e-4
    "AVER": {"per_sample": False, "kd_scale": 1.0, "feature": None, "beta": None, "from_epoch": 0, "wd": 5e-4},
    # winycg/MTKD-RL train_loops.py train_avg: mean_k KL + 5 mean_k MSE; wd 1e-4
    "AVER (MTKD-RL)": {"per_sample": False, "kd_scale": 1.0, "feature": "mse", "beta": 5.0, "from_epoch": 0, "wd": 1e-4},
    # CA-MKD repo, EBKD branch: (1/(BK)) sum_b sum_k (1 - H_bk / sum_j H_bj) KL_bk, weights sum K-1
    "EBKD": {"per_sample": True, "kd_scale": 3 / 4, "feature": None, "beta": None, "from_epoch": 0, "wd": 5e-4},
    # CA-MKD repo, CAMKD branch: (1/(BK)) sum w KL; CalWeight feature term, -b 50 over (BK); off in epoch 1
    "CA-MKD": {"per_sample": True, "kd_scale": 1 / 4, "feature": "camkd", "beta": 50 / 4, "from_epoch": 1, "wd": 5e-4},
    # AnTuo1998/AE-KD (copied in the CA-MKD repo): sum_k alpha_k mean_b KL, one alpha per batch; -b 0
    "AEKD": {"per_sample": False, "kd_scale": 1.0, "feature": None, "beta": None, "from_epoch": 0, "wd": 5e-4},
    # Rorozhl/MMKD train_meta.py (README: -r 1 -a 1 -b 100, wd default 5e-4): per-sample meta-learned
    # weights, mean_b sum_k w KL + 100 mean_b sum_k v MSE (MatchFeature: sum over b and k / B)
    "MMKD": {"per_sample": True, "kd_scale": 1.0, "feature": "mse", "beta": 100.0, "from_epoch": 0, "wd": 5e-4},
    # winycg/MTKD-RL train_student_rl.py: per-sample weights, sum_k mean_b w KL + 5 sum_k mean_b v MSE
    "MTKD-RL": {"per_sample": True, "kd_scale": 1.0, "feature": "mse", "beta": 5.0, "from_epoch": 0, "wd": 1e-4},
}
# the student's lr for MobileNetV2 and ShuffleV2 (CA-MKD train_student.py and MMKD train_meta.py:
# 0.01 for those two; MTKD-RL's scripts: 0.05 for every student), whether the last partial batch
# trains (MTKD-RL's loaders keep it; the per-sample env cannot, so its MTKD-RL row drops it), and
# how maps of different sizes meet (MMKD's MatchFeature pools the teacher's map)
LIGHT_LR = {"AVER": 0.01, "EBKD": 0.01, "CA-MKD": 0.01, "AEKD": 0.01, "MMKD": 0.01}
KEEPS_LAST_BATCH = {"AVER (MTKD-RL)"}
RESIZE = {"MMKD": "smaller"}
AGENTS = {"AVER": "aver", "AVER (MTKD-RL)": "aver", "EBKD": "ebkd", "CA-MKD": "camkd", "AEKD": "aekd", "MMKD": "mmkd"}
PUBLISHED_DYNAMIC = {  # official README, top-1 %: (with --dynamic, without)
    "RegNetX_200MF": (79.93, 80.58),
    "MobileNetV2": (74.77, 74.29),
    "ShuffleV2": (78.74, 78.35),
    "resnet56": (74.95, 75.51),
}


def _settings_of(preset_name: str, tmp_path: Path) -> dict[tuple[str, str | None], tuple[Any, KDEnvSettings]]:
    """Every planned run of a preset, by (method, student): (the run's config, validated settings)."""
    runs = plan(PRESETS[preset_name], tmp_path)
    result = {}
    for run in runs:
        if run.config.seed != 0:
            continue
        settings = KDEnvSettings.from_kwargs(dataset="cifar100", **run.config.env_kwargs)
        result[(run.method.label, run.student)] = (run, settings)
    return result


@pytest.mark.parametrize("preset_name", ["cifar100-paper", "cifar100-paper-official"])
def test_preset_runs_each_baseline_as_its_authors_did(preset_name: str, tmp_path: Path) -> None:
    assert PAPER_POOL_SIZE == K
    runs = _settings_of(preset_name, tmp_path)
    labels = {label for label, _ in runs}
    assert set(AUTHORS) - {"MTKD-RL"} <= labels
    for (label, student), (run, settings) in runs.items():
        expected = AUTHORS["MTKD-RL"] if label.startswith("MTKD-RL") else AUTHORS.get(label)
        if expected is None:  # kd-env's own agents (REINFORCE, PPO): MTKD-RL's recipe
            assert (settings.weight_decay, settings.feature_term, settings.beta, settings.kd_scale) == (1e-4, "mse", 5.0, 1.0)
            continue
        assert run.config.per_sample == expected["per_sample"], label
        if label in AGENTS:
            assert run.config.agent == AGENTS[label], label
        assert settings.kd_scale == pytest.approx(expected["kd_scale"]), label
        assert settings.weight_decay == expected["wd"], label
        assert settings.feature_kd == (expected["feature"] is not None), label
        if expected["feature"] is not None:
            assert settings.feature_term == expected["feature"], label
            assert settings.beta == pytest.approx(expected["beta"]), label
            assert settings.feature_kd_from_epoch == expected["from_epoch"], label
        # the preset's factor is the library's published one (baselines.rules.kd_scale_for)
        if label in ("EBKD", "CA-MKD", "AEKD"):
            assert settings.kd_scale == pytest.approx(kd_scale_for(label, K))
        assert settings.epochs == 240 and settings.student == student
        light = student in ("MobileNetV2", "ShuffleV2")
        assert settings.resolved("lr") == (LIGHT_LR.get(label, 0.05) if light else 0.05), (label, student)
        assert settings.drop_last == (label not in KEEPS_LAST_BATCH), label
        assert settings.feature_resize == RESIZE.get(label, "student"), label
        assert settings.protocol == ("official" if preset_name.endswith("official") else "default")
        # a rule reads no reward; MTKD-RL's is the negative per-sample loss
        if label != "REINFORCE" and label != "PPO":
            assert settings.reward_mode == "neg_loss"


def test_dynamic_per_student_as_the_official_readme_chooses(tmp_path: Path) -> None:
    # the better of the README's two columns
    assert PAPER_DYNAMIC == {student: with_ > without for student, (with_, without) in PUBLISHED_DYNAMIC.items()}
    runs = _settings_of("cifar100-paper", tmp_path)
    for student in PUBLISHED_DYNAMIC:
        run, _ = runs[("MTKD-RL", student)]
        assert run.config.agent_kwargs["dynamic"] == PAPER_DYNAMIC
    # the official-protocol preset has both columns, for every student
    official = _settings_of("cifar100-paper-official", tmp_path / "official")
    for student in PUBLISHED_DYNAMIC:
        assert official[("MTKD-RL --dynamic", student)][0].config.agent_kwargs == {"dynamic": True}
        assert official[("MTKD-RL", student)][0].config.agent_kwargs == {"dynamic": False}


def test_mtkdrl_reads_dynamic_from_the_envs_student() -> None:
    kwargs: dict[str, Any] = {
        "dataset": "synthetic",
        "teachers": ["random:cnn_w8:1", "random:cnn_w8:2"],
        "student": "cnn_w8",
        "epochs": 1,
        "max_steps_per_epoch": 2,
        "action_mode": "raw",
        "reward_mode": "neg_loss",
        "num_envs": 8,
    }
    env = PerSampleKDVectorEnv(**kwargs)
    try:
        assert MTKDRL(env, dynamic={"cnn_w8": True, "mlp": False}).dynamic is True
        assert MTKDRL(env, dynamic={"cnn_w8": False}).dynamic is False
        assert MTKDRL(env, dynamic={"cnn_w8": True}).policy.logit_mix is not None  # the learnable mix exists
        with pytest.raises(ValueError, match="no entry for the env's student 'cnn_w8'"):
            MTKDRL(env, dynamic={"resnet56": True})
    finally:
        env.close()


# ---------------------------------------------------------------------- CA-MKD's feature term
def _camkd_env(**overrides: Any) -> Any:
    kwargs = {
        "dataset": "synthetic",
        "teachers": ["random:cnn_w8:1", "random:cnn_w16:2", "random:cnn_w8:3"],
        "student": "cnn_w8",
        "epochs": 2,
        "max_steps_per_epoch": 2,
        "action_mode": "simplex",
        "reward_mode": "neg_loss",
        "feature_term": "camkd",
        "beta": 12.5,
        "kd_scale": 0.25,
        "weight_decay": 0.0,  # so that .grad after the step is the loss's gradient alone
        "teacher_store": False,  # float32 teacher maps, as the independent computation's
        **overrides,
    }
    return gym.make("MultiTeacherKD-Synthetic-v0", **kwargs)


def _independent_camkd(engine: Any, logit_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """CA-MKD's feature weights v, the loss and its gradient w.r.t. the adapters, from scratch:
    a fresh student forward, each teacher's pooled head written out as a matrix product, the
    cross-entropy as logsumexp minus the label's logit, and the loss of the authors' formula."""
    batch, config = engine.current, engine.config
    images = engine.train_transform(engine.data.train_images[batch.indices], torch.Generator().manual_seed(0), train=True)
    student = engine.student.forward_all(images)
    student_map, logits = student.feature_map, student.logits
    labels = batch.labels
    v_columns, mse_columns = [], []
    for adapter, teacher, teacher_map in zip(engine.adapters, engine.teachers, engine.teacher_source.run(images)[2]):
        adapted = adapter(student_map)
        pooled = adapted.mean(dim=(2, 3))
        head = pooled @ teacher.classifier.weight.T + teacher.classifier.bias
        ce = torch.logsumexp(head, dim=1) - head.gather(1, labels[:, None]).squeeze(1)
        v_columns.append(ce)
        mse_columns.append(((adapted - teacher_map) ** 2).flatten(1).mean(1))
    ce = torch.stack(v_columns, dim=1)
    k = ce.shape[1]
    v = (1 - torch.exp(ce) / torch.exp(ce).sum(1, keepdim=True)) / (k - 1)
    mse = torch.stack(mse_columns, dim=1)
    t = config.temperature
    log_q = torch.log_softmax(logits / t, dim=1)
    kl = torch.stack(
        [(torch.softmax(z / t, 1) * (torch.log_softmax(z / t, 1) - log_q)).sum(1) * t * t for z in batch.teacher_logits], dim=1
    )
    student_ce = nn.functional.cross_entropy(logits, labels, reduction="none")
    # (1/(B K)) sum_b sum_k w KL with kd_scale = 1/K, and beta * mean_b sum_k v MSE
    loss = (student_ce + config.kd_scale * (logit_weights * kl).sum(1) + config.beta * (v * mse).sum(1)).mean()
    gradients = torch.autograd.grad(loss, [p for p in engine.adapters.parameters()])
    return v.detach(), loss.detach(), [g.detach() for g in gradients]


def test_camkd_feature_weights_loss_and_gradient_match_an_independent_computation() -> None:
    env = _camkd_env(feature_kd_from_epoch=0)
    try:
        env.reset(seed=0)
        engine = env.unwrapped.engine
        assert not engine.augmenting  # the independent forward sees the same images
        batch = engine.current
        weights = torch.tensor([0.5, 0.2, 0.3])
        v, loss, gradients = _independent_camkd(engine, weights.expand(batch.batch_size, 3))
        torch.testing.assert_close(batch.feature_head_weights.detach(), v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v.sum(1), torch.ones(batch.batch_size))
        assert batch.feature_head_weights.grad_fn is not None  # not detached, as in the authors' code
        # the policy's feature weights are ignored: CA-MKD's own weights are applied
        _, _, _, _, info = env.step(np.concatenate([weights.numpy(), np.array([1.0, 0.0, 0.0], np.float32)]))
        assert info["loss"] == pytest.approx(float(loss), rel=1e-5)
        np.testing.assert_allclose(info["feature_weights"], v.mean(0).numpy(), rtol=1e-5, atol=1e-6)
        for parameter, expected in zip(engine.adapters.parameters(), gradients):
            torch.testing.assert_close(parameter.grad, expected, rtol=1e-4, atol=1e-6)
    finally:
        env.close()


def test_camkd_first_epoch_has_no_feature_term() -> None:
    env = _camkd_env(feature_kd_from_epoch=1)
    try:
        env.reset(seed=0)
        engine = env.unwrapped.engine
        batch = engine.current
        weights = torch.full((3,), 1 / 3)
        expected = float((batch.student_ce + 0.25 * (batch.kd_loss * weights).sum(1)).mean().detach())
        _, _, _, _, info = env.step(np.concatenate([weights.numpy(), weights.numpy()]).astype(np.float32))
        assert info["loss"] == pytest.approx(expected, rel=1e-5)
        env.step(np.full(6, 1 / 3, np.float32))  # closes epoch 0
        assert engine.epoch == 1
        batch = engine.current
        without = float((batch.student_ce + 0.25 * (batch.kd_loss * weights).sum(1)).mean().detach())
        v, with_feature_term, _ = _independent_camkd(engine, weights.expand(batch.batch_size, 3))
        _, _, _, _, info = env.step(np.full(6, 1 / 3, np.float32))
        # epoch 1: the feature term counts, with CA-MKD's own weights v, as the authors' loss has it
        assert info["loss"] == pytest.approx(float(with_feature_term), rel=1e-5)
        assert info["loss"] - without > 1e-3
        np.testing.assert_allclose(info["feature_weights"], v.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    finally:
        env.close()


def test_settings_check_the_new_arguments() -> None:
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        KDEnvSettings.from_kwargs(weight_decay=-1.0)
    with pytest.raises(ValueError, match="protocol must be one of"):
        KDEnvSettings.from_kwargs(protocol="paper")
    with pytest.raises(ValueError, match="feature_term must be one of"):
        KDEnvSettings.from_kwargs(feature_term="fitnet")
    with pytest.raises(ValueError, match="set feature_kd=True"):
        KDEnvSettings.from_kwargs(feature_term="camkd", feature_kd=False)
    with pytest.raises(ValueError, match="feature_kd_from_epoch must be an integer >= 0"):
        KDEnvSettings.from_kwargs(feature_kd_from_epoch=-1)
    with pytest.raises(ValueError, match="protocol='official' has no validation split"):
        KDEnvSettings.from_kwargs(protocol="official")  # the default reward reads the validation split
    assert KDEnvSettings.from_kwargs(protocol="official", reward_mode="neg_loss").effective_val_fraction == 0.0


# ---------------------------------------------------------------------- MobileNetV2
def _multiply_adds(model: nn.Module, size: int = 32) -> int:
    """Multiply-adds of convolutions and linear layers, counted on a real forward pass."""
    total = 0

    def count(module: nn.Module, _: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output[0].numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return total


def _official_mobilenetv2_multiply_adds(stem_stride: int, num_classes: int = 100) -> int:
    """From the official network's layer table (RepDistiller mobilenetv2.py, width 1.0, T = 6),
    written out by hand: stem 3x3, per block expand 1x1 / depthwise 3x3 / project 1x1, head 1x1
    to 1280, classifier."""
    table = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    size = 32 // stem_stride
    total = size * size * 32 * 3 * 9
    channels = 32
    for t, c, n, s in table:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = channels * t
            total += size * size * channels * hidden  # expand, at the input resolution
            size = (size - 1) // stride + 1
            total += size * size * hidden * 9 + size * size * hidden * c  # depthwise, project
            channels = c
    return total + size * size * 320 * 1280 + 1280 * num_classes


def test_official_mobilenetv2_shape_tap_and_flops() -> None:
    model = create_model("MobileNetV2")
    model.eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(2, 3, 32, 32))
    assert tuple(out.feature_map.shape) == (2, 320, 2, 2)  # MTKD-RL's student map [320, 2, 2]
    assert tuple(out.embedding.shape) == (2, 1280)
    assert (out.feature_map < 0).any()  # the tap is a linear bottleneck: before any ReLU
    assert _multiply_adds(model) == _official_mobilenetv2_multiply_adds(2) == 22_381_056
    previous = create_model("MobileNetV2_s1")
    with torch.no_grad():
        previous_map = previous.eval().forward_all(torch.randn(2, 3, 32, 32)).feature_map
    assert tuple(previous_map.shape) == (2, 1280, 4, 4) and (previous_map >= 0).all()
    assert _multiply_adds(previous) == 89_140_224
    assert 3.9 < _multiply_adds(previous) / _multiply_adds(model) < 4.1
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in previous.parameters())


# ---------------------------------------------------------------------- protocol="official"
def _write_cifar100(root: Path, n_train: int) -> None:
    """``cifar-100-python/{train,test,meta}`` in the real pickle format, random pixels; the test
    file repeats the training images (4 classes), so that the student's test accuracy moves."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels, labels = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8), rng.integers(0, 4, n_train).tolist()
    for name in ("train", "test"):
        payload = {
            "data": pixels,
            "fine_labels": labels,
            "coarse_labels": [label // 5 for label in labels],
            "filenames": [f"{i}.png" for i in range(n_train)],
            "batch_label": name,
        }
        with open(folder / name, "wb") as file:
            pickle.dump(payload, file, protocol=2)
    with open(folder / "meta", "wb") as file:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}, file)


def test_official_protocol_split_keeps_all_50000_training_images() -> None:
    labels = torch.arange(50000) % 100
    images = torch.zeros(50000, 1, 1, 1, dtype=torch.uint8)
    settings = KDEnvSettings.from_kwargs(dataset="cifar100", protocol="official", reward_mode="neg_loss")
    train_images, train_labels, val_images, val_labels = split_train_val(images, labels, settings.effective_val_fraction, 0)
    assert train_labels.shape[0] == 50000 and val_labels.shape[0] == 0
    default = KDEnvSettings.from_kwargs(dataset="cifar100", reward_mode="neg_loss")
    assert split_train_val(images, labels, default.effective_val_fraction, 0)[1].shape[0] == 45000


def test_official_protocol_trains_on_every_image_and_reports_the_best_test_epoch(tmp_path: Path) -> None:
    _write_cifar100(tmp_path / "data", n_train=48)
    env = gym.make(
        "MultiTeacherKD-CIFAR100-v0",
        data_root=str(tmp_path / "data"),
        verify_checksums=False,
        cache_dir=str(tmp_path / "cache"),
        teachers=["random:resnet8:1", "random:resnet8:2"],
        student="resnet8",
        batch_size=16,
        epochs=4,
        lr=0.2,
        augment=False,
        feature_kd=False,
        action_mode="simplex",
        reward_mode="neg_loss",
        protocol="official",
    )
    try:
        env.reset(seed=0)
        engine = cast(MultiTeacherKDEnv, env.unwrapped).engine
        assert engine.data.train_labels.shape[0] == 48 and engine.data.val_labels.shape[0] == 0
        assert engine.steps_per_epoch == 3  # every image is trained on
        test_accs: list[float] = []
        info: dict[str, Any] = {}
        done = False
        while not done:
            _, _, done, _, info = env.step(np.full(2, 0.5, np.float32))
            if "test_acc" in info:
                test_accs.append(info["test_acc"])
                assert math.isnan(info["val_acc"])  # no validation split
        assert len(test_accs) == 4
        assert info["final_test_acc"] == pytest.approx(max(test_accs))
        assert info["best_epoch"] == int(np.argmax(test_accs))
        # scripted test accuracies: the second epoch's student is kept, not the last one's
        scripted = iter([0.1, 0.5, 0.3, 0.2])
        evaluate = engine.evaluate

        def scripted_evaluate(split: str = "val", model: Any = None) -> tuple[float, float]:
            return (next(scripted), 1.0) if split == "test" and model is None else evaluate(split, model)

        engine.evaluate = scripted_evaluate  # type: ignore[method-assign]  # scripted test accuracies, for this test only
        env.reset(seed=1)
        done, states = False, []
        while not done:
            _, _, done, _, info = env.step(np.full(2, 0.5, np.float32))
            if "test_acc" in info:
                # parameters only: the next batch's forward has already moved BN's running stats
                assert engine.student is not None
                states.append({k: v.detach().clone() for k, v in engine.student.named_parameters()})
        assert engine.best_epoch == 1 and engine.best_score == 0.5
        assert engine.best_student_state is not None
        for key, value in states[1].items():
            torch.testing.assert_close(engine.best_student_state[key], value)
    finally:
        env.close()


# ---------------------------------------------------------------------- the GPU smoke script
@pytest.mark.slow  # 30 s or more on a loaded 2-core machine
def test_gpu_smoke_runs_every_method_of_the_preset_on_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module
    spec.loader.exec_module(module)
    out = tmp_path / "smoke.json"
    report = module.main([
        "--device", "cpu", "--steps", "2", "--train-size", "64", "--test-size", "16", "--batch-size", "8",
        "--teachers", "resnet8", "resnet8", "--students", "resnet56", "--root", str(tmp_path / "data"), "--out", str(out),
    ])  # fmt: skip
    methods = [m.label for m in PRESETS["cifar100-paper"].methods]
    assert [t["method"] for t in report["timings"]] == methods
    ms = {}
    for timing in report["timings"]:
        assert timing["student"] == "resnet56" and timing["updates_timed"] == 2
        assert math.isfinite(timing["ms_per_update"]) and timing["ms_per_update"] > 0
        # two timed updates: their median is their mean
        assert timing["ms_per_update"] == pytest.approx(timing["ms_per_update_mean"], rel=1e-9)
        # the timed updates are a part of the run (which also built the env and ran 2 more updates)
        assert timing["updates_timed"] * timing["ms_per_update"] / 1000 < timing["run_wall_s"]
        assert math.isnan(timing["peak_gpu_mib"])  # no GPU: no figure, rather than a made-up 0
        ms[timing["method"]] = timing["ms_per_update"]
    assert "MMKD" in methods  # the learned baseline runs too (its meta step in the timed updates)
    per_sample = [m.label for m in PRESETS["cifar100-paper"].methods if m.per_sample]
    assert report["overheads"] == {
        f"{label} / {ref}": {"resnet56": pytest.approx(ms[label] / ms[ref], rel=1e-12)}
        for label in per_sample
        for ref in ("AVER (MTKD-RL)", "AVER")
    }
    assert report["median_ms_per_update"] == ms  # one student: the median over students is its figure
    saved = json.loads(out.read_text())
    assert saved["median_ms_per_update"] == ms and saved["overheads"] == report["overheads"]
    assert [{k: v for k, v in t.items() if k != "peak_gpu_mib"} for t in saved["timings"]] == [
        {k: v for k, v in t.items() if k != "peak_gpu_mib"} for t in report["timings"]
    ]


def test_student_env_kwargs_name_students_of_the_file_and_are_checked(tmp_path: Path) -> None:
    from kd_env.comparison.spec import SpecError, parse_spec

    text = (
        "env_id: MultiTeacherKD-Synthetic-v0\nseeds: [0]\nenv_kwargs: {epochs: 1}\nstudents: [cnn_w8, mlp]\n"
        "methods:\n- {label: AVER, agent: aver, student_env_kwargs: %s}\n"
    )
    preset = parse_spec(text % "{mlp: {lr: 0.01}}")
    runs = {run.student: run.config.env_kwargs for run in plan(preset, tmp_path)}
    assert runs["mlp"]["lr"] == 0.01 and "lr" not in runs["cnn_w8"]
    with pytest.raises(SpecError, match="'resnet56' is not a student of the file"):
        parse_spec(text % "{resnet56: {lr: 0.01}}")
    with pytest.raises(SpecError, match="lr must be > 0"):
        parse_spec(text % "{mlp: {lr: -1.0}}")
