"""Shared test fixtures: offline mode, the optional real-data sample, tiny media files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def taobao_sample() -> Path:
    """The real 10-clip contest sample; tests using it skip where ``../shared/data`` is absent."""
    root = SHARED_DATA / "taobao_live_sample"
    if not root.is_dir():
        pytest.skip("../shared/data/taobao_live_sample is not present")
    return root


@pytest.fixture
def reference_annotations() -> Path:
    """The real annotation rows of the official 25-item demo set (no pixels)."""
    folder = SHARED_DATA / "taobao_live_sample" / "reference_annotations" / "live_demo_20200117"
    if not folder.is_dir():
        pytest.skip("../shared/data reference annotations are not present")
    return folder


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny generated root with tiny random-weight models, shared by the service and image tests."""
    from support import make_tiny_setup

    return make_tiny_setup(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def free_port() -> int:
    from support import free_loopback_port

    return free_loopback_port()
