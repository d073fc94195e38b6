"""The service refuses, cheaply, what it cannot afford: each refusal checked against a real uvicorn server on
127.0.0.1 (``support.ServiceProcess``) with an API key and tight limits, then a bounded Schemathesis run
against the same server, which must find the OpenAPI schema saying exactly what the server does.

Nothing here measures speed: the checks are status codes, error bodies, what the logs hold, and the
server's resident memory staying put while it refuses pixels it was never going to decode.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml
from support import UPLOAD_LIMIT, ServiceProcess

KEY = "hardening-key"
HEADERS = {"X-API-Key": KEY}
REQUEST_PIXELS = 150_000
"""Above one tiny clip's 4 sampled frames of 128x224 and one tiny item's two 128x128 images."""
RSS_GROWTH_BOUND_KIB = 64 * 1024
"""What refusing may cost the server in resident memory; decoding the refused request would take ~1.7 GB."""


def claiming_jpeg(width: int, height: int) -> bytes:
    """A tiny JPEG (under a kilobyte) whose header claims ``width`` x ``height`` pixels."""
    ok, encoded = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    start = data.index(b"\xff\xc0")  # baseline SOF0: length (2 bytes), precision (1), height, width
    struct.pack_into(">HH", data, start + 5, height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def extra_root(tmp_path_factory: pytest.TempPathFactory, tiny_setup: dict[str, Path]) -> Path:
    """A second data root holding what the tiny dataset must not: FIFOs and a decompression bomb."""
    root = tmp_path_factory.mktemp("extra_root")
    os.mkfifo(root / "pipe.mp4")
    folder = root / "with_fifo"
    folder.mkdir()
    for image in sorted((tiny_setup["root"] / "image" / "000001").glob("*.jpg")):
        (folder / image.name).write_bytes(image.read_bytes())
    os.mkfifo(folder / "9.jpg")
    (root / "bombs").mkdir()
    (root / "bombs" / "bomb.jpg").write_bytes(claiming_jpeg(60000, 60000))
    return root


@pytest.fixture(scope="module")
def hardened(tiny_setup: dict[str, Path], extra_root: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A server with an API key, a small pixel budget and a tiny queue-wait budget, on an empty gallery."""
    base = tmp_path_factory.mktemp("hardened")
    settings = yaml.safe_load(tiny_setup["service_config"].read_text())
    settings["roots"].append(str(extra_root))
    settings["api_key"] = KEY
    settings["limits"].update(max_request_pixels=REQUEST_PIXELS, max_pixels_in_flight=REQUEST_PIXELS)
    settings["batching"]["max_queue_wait_s"] = 1e-6
    (base / "service.yaml").write_text(yaml.safe_dump(settings))
    server = ServiceProcess(base / "service.yaml", base / "gallery", base / "server.log")
    yield server
    server.stop()


def _data_dir(server: ServiceProcess) -> Path:
    return server.log.parent / "gallery"


def _client(server: ServiceProcess, keyed: bool = True) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=HEADERS if keyed else {}, timeout=60)


def _assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The response is ``status`` with the JSON error shape (and ``code``); returns the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert error["status"] == status and isinstance(error["message"], str), error
    if code is not None:
        assert error["code"] == code, error
    return error


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def _log_tail(server: ServiceProcess, since: int) -> str:
    return server.log.read_bytes()[since:].decode(errors="replace")


def test_readyz_says_only_ready_and_the_details_need_the_key(hardened: ServiceProcess) -> None:
    public = httpx.get(f"{hardened.url}/readyz")
    assert public.status_code == 200 and public.json() == {"status": "ready"}
    with _client(hardened, keyed=False) as anonymous:
        _assert_error(anonymous.get("/v1/status"), 401, "unauthorized")
        _assert_error(anonymous.get("/v1/gallery/stats", headers={"X-API-Key": "wrong"}), 403, "forbidden")
        schema = anonymous.get("/openapi.json")  # the docs are public, so Swagger UI can load and send the key
        assert schema.status_code == 200 and anonymous.get("/docs").status_code == 200
    assert schema.json()["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the server's API key"}
    with _client(hardened) as client:
        status = client.get("/v1/status").json()
        assert status["status"] == "ready" and status["problem"] is None
        assert set(status["models"]) == {"detector", "embedders"}
        stats = client.get("/v1/gallery/stats").json()
        assert stats["data_dir"] == "gallery"


def test_claimed_pixels_are_refused_before_decoding(hardened: ServiceProcess) -> None:
    claims = [("files", (f"{n}.jpg", claiming_jpeg(6000, 6000))) for n in range(16)]
    assert sum(len(data) for _, (_, data) in claims) < 16 * 1024  # 576 million pixels claimed in under 16 KB
    before = _rss_kib(hardened.process.pid)
    with _client(hardened) as client:
        for route, data in (("/v1/match", {}), ("/v1/gallery/upload", {"id": "claims"})):
            error = _assert_error(client.post(route, files=claims, data=data), 413, "too_many_pixels")
            assert "576000000 pixels" in error["message"] and str(REQUEST_PIXELS) in error["message"]
        # One of them alone is under the per-image limit, not under this server's request budget.
        _assert_error(client.post("/v1/match", files=claims[:1]), 413, "too_many_pixels")
    growth = _rss_kib(hardened.process.pid) - before
    assert growth < RSS_GROWTH_BOUND_KIB, f"server RSS grew by {growth} KiB while refusing"


def test_a_decompression_bomb_is_refused_by_size_naming_the_file(hardened: ServiceProcess, extra_root: Path) -> None:
    bomb = (extra_root / "bombs" / "bomb.jpg").read_bytes()
    with _client(hardened) as client:
        uploaded = _assert_error(client.post("/v1/match", files=[("files", ("bomb.jpg", bomb))]), 422,
                                 "image_too_large")
        by_path = _assert_error(client.post("/v1/match/folder", json={"path": "bombs"}), 422, "image_too_large")
    for error in (uploaded, by_path):
        assert error["message"].startswith("bomb.jpg: header claims 3600000000 pixels"), error
        assert str(extra_root) not in error["message"] and "upload-" not in error["message"]


def test_the_batch_readers_take_a_bomb_for_a_bad_file(extra_root: Path) -> None:
    from dataset.errors import DataError
    from dataset.images import image_size, read_image

    for reader in (image_size, read_image):
        with pytest.raises(DataError, match="bomb.jpg: header claims"):
            reader(extra_root / "bombs" / "bomb.jpg")


def test_long_paths_are_refused_and_stay_out_of_the_logs(hardened: ServiceProcess) -> None:
    since = hardened.log.stat().st_size
    with _client(hardened) as client:
        name = _assert_error(client.post("/v1/match/folder", json={"path": "a" * 300}), 404, "not_found")
        assert "over 255 bytes" in name["message"] and len(name["message"]) < 400
        _assert_error(client.post("/v1/gallery", json={"path": "b/" * 500}), 404, "not_found")
        huge = "c" * (UPLOAD_LIMIT - 1000)  # under the body limit: the schema refuses it
        schema = _assert_error(client.post("/v1/match/folder", json={"path": huge}), 422, "invalid_request")
        assert len(schema["message"]) < 400
        _assert_error(client.post("/v1/match/folder", json={"path": ""}), 422, "invalid_request")
    logged = _log_tail(hardened, since)
    assert "a" * 250 not in logged and "c" * 250 not in logged and "Traceback" not in logged


def test_fifos_are_skipped_in_folders_and_refused_by_name(hardened: ServiceProcess) -> None:
    with _client(hardened) as client:  # a read that opened a FIFO would block until this client times out
        _assert_error(client.post("/v1/match/folder", json={"path": "pipe.mp4"}), 422, "not_a_regular_file")
        folder = client.post("/v1/match/folder", json={"path": "with_fifo"})
    assert folder.status_code == 200, folder.text
    assert folder.json()["query"]["pictures"] == 2


def test_a_chunked_upload_over_the_limit_is_413(hardened: ServiceProcess) -> None:
    request = httpx.Request("POST", f"{hardened.url}/v1/match",
                            files=[("files", ("big.jpg", b"\xff\xd8\xff" + b"\0" * (UPLOAD_LIMIT + 100_000)))])
    body = request.read()

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the bytes received can tell
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    response = httpx.post(f"{hardened.url}/v1/match", content=chunks(), timeout=60,
                          headers={**HEADERS, "Content-Type": request.headers["Content-Type"]})
    error = _assert_error(response, 413, "too_large")
    assert str(UPLOAD_LIMIT) in error["message"]


def test_an_unexpected_failure_is_a_json_500_with_its_request_id(hardened: ServiceProcess,
                                                                 tiny_setup: dict[str, Path]) -> None:
    uploads = _data_dir(hardened) / "uploads"
    since = hardened.log.stat().st_size
    uploads.rename(uploads.with_name("uploads-moved"))  # staging an upload now fails where nothing expects it
    try:
        with _client(hardened) as client:
            image = (tiny_setup["root"] / "image" / "000001" / "0.jpg").read_bytes()
            response = client.post("/v1/match", files=[("files", ("0.jpg", image))])
    finally:
        uploads.with_name("uploads-moved").rename(uploads)
    error = _assert_error(response, 500, "internal_error")
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"] and str(_data_dir(hardened)) not in error["message"]
    logged = _log_tail(hardened, since)
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    failure = [line for line in lines if line.get("event") == "failure"]
    assert [(f["request_id"], f["exception"]) for f in failure] == [(request_id, "FileNotFoundError")], logged
    assert len(failure[0]["message"]) <= 200 and "Traceback" not in logged  # not logged again by the server


def test_admission_refuses_what_would_wait_past_the_budget(hardened: ServiceProcess) -> None:
    """The queue-wait budget is tiny: an idle server still serves, a request arriving behind another is
    refused (once one request has been measured). Which of the concurrent ones arrives second depends on
    timing, so a few bounded rounds of three are sent until one is refused."""
    with _client(hardened) as client:
        first = client.post("/v1/match/folder", json={"path": "image/000001"})
        assert first.status_code == 200, first.text
        answers: list[httpx.Response] = []
        with ThreadPoolExecutor(3) as pool:
            for _ in range(5):
                answers += pool.map(lambda _: client.post("/v1/match/folder", json={"path": "image/000002"}),
                                    range(3))
                if any(a.status_code == 503 for a in answers):
                    break
        refused = [a for a in answers if a.status_code == 503]
        assert refused and all(a.status_code in (200, 503) for a in answers), [a.text for a in answers]
        error = _assert_error(refused[0], 503, "queue_wait")
        assert "expected wait" in error["message"] and int(refused[0].headers["Retry-After"]) >= 1
        assert client.post("/v1/match/folder", json={"path": "image/000001"}).status_code == 200  # idle again


def test_schemathesis_finds_the_schema_exact(hardened: ServiceProcess, tmp_path: Path) -> None:
    """All checks, a bounded number of examples per operation. Uploads of generated bytes are refused as
    unsupported media (415), which no schema can rule out, so positive data may answer 415 too."""
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.positive_data_acceptance]\n'
                      'expected-statuses = ["2xx", "401", "403", "404", "409", "415", "429"]\n')
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
               f"{hardened.url}/openapi.json", "--header", f"X-API-Key: {KEY}", "--checks", "all",
               "--max-examples", "15", "--workers", "1", "--seed", "20", "--request-timeout", "30"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "12/12" in done.stdout, done.stdout[-3000:]
