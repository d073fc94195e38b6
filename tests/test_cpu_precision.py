"""bf16 on the CPU: chosen by the CPU's instructions, and close to float32 where it runs.

The choice itself is tested for both answers of ``cpu_has_bf16`` on any
machine. bf16 numerics run where the product's own check says this CPU runs
bf16: oneDNN refuses bf16 convolutions on CPUs without AVX-512, so forcing it
there would test a path the product never takes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bbox_sub.config import load_detector_config
from bbox_sub.detect import BatchDetector
from bbox_sub.model import build_detector
from metric_sub.config import load_embedder_config
from metric_sub.embed import ModelRunner
from metric_sub.model import build_embedder
from runtime import precision
from runtime.precision import autocast, autocast_dtype, channels_last_pays
from support import seeded_tiny_detector

pytestmark = pytest.mark.cpu_kernels

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu() -> None:
    if not precision.cpu_has_bf16():
        pytest.skip("this CPU runs float32 (no AMX/AVX512-BF16, or limited by ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA)")


@pytest.mark.parametrize("limit, allowed", [("", True), ("ALL", True), ("avx2", False), ("AVX512_CORE", False),
                                            ("AVX512_CORE_BF16", True), ("avx512_core_amx", True),
                                            ("NOT_AN_ISA", False)])
def test_onednn_isa_limit_decides_bf16(monkeypatch: pytest.MonkeyPatch, limit: str, allowed: bool) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert precision.onednn_isa_allows_bf16() is allowed


@pytest.mark.parametrize("variable, value", [("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")])
def test_an_avx2_limit_turns_bf16_off_on_any_cpu(variable: str, value: str) -> None:
    """What an AVX2-only CPU runs, reproduced on any CPU by the limit torch and oneDNN read at start-up."""
    code = ("import torch; from runtime.precision import cpu_has_bf16, effective_dtype; "
            "print(cpu_has_bf16(), effective_dtype(torch.device('cpu'), 'bf16'))")
    env = {**os.environ, variable: value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", "fp32"]


@pytest.mark.parametrize("native", [True, False])
def test_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    assert autocast_dtype(CPU, "bf16") == (torch.bfloat16 if native else None)
    assert autocast_dtype(CPU, "fp16") is None and autocast_dtype(CPU, "fp32") is None
    assert channels_last_pays(CPU, "bf16") is native and not channels_last_pays(CPU, "fp32")
    conv = nn.Conv2d(3, 4, 3)
    with torch.inference_mode(), autocast(CPU, "bf16"):
        out = conv(torch.rand(1, 3, 8, 8))
    assert out.dtype == (torch.bfloat16 if native else torch.float32)
    detector = BatchDetector(build_detector(load_detector_config("tiny").model), CPU, precision="bf16")
    assert detector.channels_last is native
    config = load_embedder_config("tiny", ["embed.dtype=bf16"])
    runner = ModelRunner(config, build_embedder(config), CPU)
    assert (runner.dtype, runner.channels_last) == (("bf16", True) if native else ("fp32", False))


def test_bf16_detector_features_are_close_to_fp32(bf16_cpu: None) -> None:
    images = torch.rand(2, 3, 256, 448)
    fp32 = BatchDetector(seeded_tiny_detector(), CPU, precision="fp32")
    bf16 = BatchDetector(seeded_tiny_detector(), CPU, precision="bf16")
    assert bf16.channels_last and not fp32.channels_last
    with torch.inference_mode():
        exact = fp32.model.backbone(images)
        with autocast(CPU, "bf16"):
            low = bf16.model.backbone(images.contiguous(memory_format=torch.channels_last))
    for level, reference in exact.items():
        assert low[level].dtype == torch.bfloat16
        error = (low[level].float() - reference).norm() / reference.norm()
        assert error < 0.02, f"level {level}: relative error {error:.4f}"
    frames = [np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)]
    (found,) = bf16(frames, 256, 448)
    assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32
    assert len(found.boxes) and (found.boxes >= -1).all() and (found.boxes[:, 2:] <= [201, 301]).all()


def test_bf16_embeddings_are_close_to_fp32(bf16_cpu: None) -> None:
    rng = np.random.default_rng(1)
    runners = {}
    for dtype in ("fp32", "bf16"):
        config = load_embedder_config("tiny", [f"embed.dtype={dtype}"])
        torch.manual_seed(0)
        runners[dtype] = ModelRunner(config, build_embedder(config), CPU)
    width, height = runners["fp32"].sizes[4]
    crops = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(6)]
    exact, low = (runners[dtype].embed_crops(crops, [4] * len(crops)) for dtype in ("fp32", "bf16"))
    assert low.dtype == np.float32 and np.allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-4)
    assert (exact * low).sum(axis=1).min() >= 0.99
