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


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory):
    """One real Milvus standalone (PyPI ``milvus``) on 127.0.0.1 for the whole session; tests use their own
    collections. Skips where the package is absent, except in CI (``CI`` set), which must run these tests."""
    from service.gallery.milvus_server import LocalMilvus, server_command

    if server_command() is None:
        if os.environ.get("CI"):
            pytest.fail("milvus-server is not installed (PyPI package milvus, pinned in requirements.txt)")
        pytest.skip("milvus-server is not installed (PyPI package milvus, pinned in requirements.txt)")
    server = LocalMilvus(tmp_path_factory.mktemp("milvus"), time_tick_ms=50).start()
    yield server
    server.stop()
