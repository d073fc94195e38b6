"""Service replicas sharing one Milvus gallery: real uvicorn servers on 127.0.0.1 and a real Milvus standalone.

The gallery is rebuilt into Milvus with ``python -m service rebuild`` and
copied into a local gallery folder with ``python -m service migrate``; a
local-backend server on that copy and a Milvus replica then answer every
query of the generated root with the same matches. A writer replica and a
read-only replica share the Milvus gallery: a change through the writer is
seen by the reader's next request, the reader refuses changes (409), and the
writer killed with SIGKILL mid-add leaves both replicas agreeing on one whole
generation.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import ServiceProcess, kill_during, service_env

REPO = Path(__file__).resolve().parents[1]
COLLECTION = "service_replicas"


def _env(uri: str, **gallery: str) -> dict[str, str]:
    settings = {"SHOPMATCH_GALLERY__BACKEND": "milvus", "SHOPMATCH_GALLERY__URI": uri,
                "SHOPMATCH_GALLERY__COLLECTION": COLLECTION,
                **{f"SHOPMATCH_GALLERY__{k.upper()}": v for k, v in gallery.items()}}
    return service_env(**settings)


@pytest.fixture(scope="module")
def galleries(tiny_setup: dict[str, Path], milvus_server) -> dict[str, Path]:
    """The root rebuilt into Milvus, then migrated into a local gallery folder."""
    base, config = tiny_setup["base"], tiny_setup["service_config"]
    env = _env(milvus_server.uri)
    rebuilt = subprocess.run([sys.executable, "-m", "service", "rebuild", "--config", str(config), "--data-dir",
                              str(base / "milvus-scratch"), "--root", str(tiny_setup["root"])],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert "4 items, 4 clips" in rebuilt.stdout
    local = base / "migrated"
    migrated = subprocess.run([sys.executable, "-m", "service", "migrate", "--from", "milvus", "--to", "local",
                               "--config", str(config), "--data-dir", str(local)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert "migrated 4 items, 4 clips from milvus to local" in migrated.stdout
    return {"local": local, "scratch": base / "milvus-scratch"}


@pytest.fixture(scope="module")
def replicas(tiny_setup: dict[str, Path], milvus_server,
             galleries: dict[str, Path]) -> Iterator[dict[str, ServiceProcess]]:
    base, config = tiny_setup["base"], tiny_setup["service_config"]
    started: dict[str, ServiceProcess] = {}
    try:
        started["writer"] = ServiceProcess(config, base / "scratch-writer", base / "writer.log",
                                           _env(milvus_server.uri))
        started["reader"] = ServiceProcess(config, base / "scratch-reader", base / "reader.log",
                                           _env(milvus_server.uri, writer="false"))
        started["local"] = ServiceProcess(config, galleries["local"], base / "local.log")
        yield started
    finally:
        for replica in started.values():
            replica.stop()


def _match(replica: ServiceProcess, path: str) -> dict:
    answer = httpx.post(f"{replica.url}/v1/match/folder", json={"path": path}, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _entries(replica: ServiceProcess) -> list[dict]:
    return httpx.get(f"{replica.url}/v1/gallery", params={"limit": 1000}).json()["entries"]


def test_both_backends_answer_the_same_matches(replicas: dict[str, ServiceProcess],
                                               tiny_setup: dict[str, Path]) -> None:
    root = tiny_setup["root"]
    queries = [f"video/{clip.name}" for clip in sorted((root / "video").glob("*.mp4"))]
    queries += [f"image/{folder.name}" for folder in sorted((root / "image").iterdir()) if folder.is_dir()]
    matched = 0
    for path in queries:
        local, milvus = _match(replicas["local"], path), _match(replicas["reader"], path)
        assert (local["match"], local["candidates"], local["reason"]) == \
            (milvus["match"], milvus["candidates"], milvus["reason"]), path
        matched += local["match"] is not None
    assert matched  # the tiny models pair something, so the comparison covers the voting
    stats = {name: httpx.get(f"{replicas[name].url}/v1/gallery/stats").json() for name in ("local", "reader")}
    assert stats["reader"]["backend"] == "milvus" and stats["local"]["backend"] == "local"
    for key in ("items", "clips", "item_boxes", "clip_boxes", "dim", "models"):
        assert stats["local"][key] == stats["reader"][key], key


def test_a_write_through_one_replica_is_seen_by_the_other(replicas: dict[str, ServiceProcess],
                                                          tiny_setup: dict[str, Path]) -> None:
    writer, reader = replicas["writer"], replicas["reader"]
    clip = tiny_setup["root"] / "video" / "000002.mp4"
    added = httpx.post(f"{writer.url}/v1/gallery/upload", files=[("files", (clip.name, clip.read_bytes()))],
                       data={"id": "shared1"}, timeout=120)
    assert added.status_code == 201, added.text
    generation = added.json()["generation"]
    seen = httpx.get(f"{reader.url}/v1/gallery/clips/shared1")
    assert seen.status_code == 200 and seen.json()["boxes"] == added.json()["boxes"]
    assert _match(reader, "image/000002")["generation"] == generation
    assert _entries(reader) == _entries(writer)
    refused = httpx.post(f"{reader.url}/v1/gallery", json={"path": "video/000003.mp4", "id": "x"}, timeout=120)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "read_only_replica"
    assert httpx.delete(f"{reader.url}/v1/gallery/clips/shared1").status_code == 409
    assert httpx.delete(f"{writer.url}/v1/gallery/clips/shared1").status_code == 200
    assert httpx.get(f"{reader.url}/v1/gallery/clips/shared1").status_code == 404
    assert _match(reader, "image/000002")["generation"] == generation + 1


def test_writer_replica_killed_mid_add_leaves_one_generation(replicas: dict[str, ServiceProcess], milvus_server,
                                                             tiny_setup: dict[str, Path]) -> None:
    base, root = tiny_setup["base"], tiny_setup["root"]
    reader = replicas["reader"]
    before = _entries(reader)
    writer = replicas.pop("writer")
    clip = root / "video" / "000001.mp4"
    kill_during(writer, lambda: httpx.post(f"{writer.url}/v1/gallery/upload", data={"id": "killed1"},
                                           files=[("files", (clip.name, clip.read_bytes()))], timeout=120), 0.3)
    replicas["writer"] = ServiceProcess(tiny_setup["service_config"], base / "scratch-writer", base / "writer.log",
                                        _env(milvus_server.uri))
    after = _entries(reader)
    assert after in (before, sorted(before + [e for e in after if e["id"] == "killed1"],
                                    key=lambda e: (e["kind"], e["id"])))
    assert _entries(replicas["writer"]) == after
    for replica in (reader, replicas["writer"]):
        stats = httpx.get(f"{replica.url}/v1/gallery/stats").json()
        assert stats["clip_boxes"] == sum(e["boxes"] for e in after if e["kind"] == "clip")
        assert stats["item_boxes"] == sum(e["boxes"] for e in after if e["kind"] == "item")
    assert _match(reader, "video/000002.mp4")["generation"] == _match(replicas["writer"], "video/000002.mp4")[
        "generation"]
