"""The REST service end to end: a real uvicorn server on 127.0.0.1, started here, on a generated dataset.

The models are the tiny configs with fixed random weights (and thresholds
at 0 so every picture yields boxes): what is tested is that the service
gives the batch pipeline's answer with the same weights, refuses bad input
with the right codes and keeps its gallery across restarts and crashes, not
the models' accuracy.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support import UPLOAD_LIMIT, ServiceProcess, kill_during, service_env


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def setup(tiny_setup: dict[str, Path]) -> dict[str, Path]:
    """The shared tiny dataset and models, plus a folder outside the root and links escaping into it."""
    base, root = tiny_setup["base"], tiny_setup["root"]
    outside = base / "outside"
    outside.mkdir()
    (outside / "0.jpg").write_bytes((root / "image" / "000001" / "0.jpg").read_bytes())
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "linked").mkdir()
    (root / "linked" / "0.jpg").symlink_to(outside / "0.jpg")
    return {**tiny_setup, "config": tiny_setup["service_config"]}


@pytest.fixture(scope="session")
def gallery(setup: dict[str, Path]) -> Path:
    """A gallery rebuilt from the whole dataset root with one command."""
    data_dir = setup["base"] / "gallery"
    done = subprocess.run([sys.executable, "-m", "service", "rebuild", "--config", str(setup["config"]),
                           "--data-dir", str(data_dir), "--root", str(setup["root"])],
                          cwd=REPO, env=service_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 items, 4 clips" in done.stdout
    return data_dir


@pytest.fixture(scope="session")
def server(setup: dict[str, Path], gallery: Path) -> Iterator[ServiceProcess]:
    running = ServiceProcess(setup["config"], gallery, setup["base"] / "server.log")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def pipeline_result(setup: dict[str, Path]) -> dict[str, dict]:
    """What the batch pipeline (run.sh) writes for the same root and weights."""
    from pipeline.run import run_pipeline

    base = setup["base"]
    result = run_pipeline([setup["root"]], base / "run", detector=(str(base / "detector.yaml"),
                                                                   str(base / "detector.pth")),
                          embedders=[(str(base / "embedder.yaml"), str(base / "embedder.pth"))], device="cpu",
                          report=False, progress=False)
    return result.result


def _folder(server: ServiceProcess, path: str, **extra: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/match/folder", json={"path": path, **extra}, timeout=120)


def _upload(server: ServiceProcess, files: list[Path], route: str = "/v1/match", **data: str) -> httpx.Response:
    handles = [("files", (f.name, f.read_bytes())) for f in files]
    return httpx.post(f"{server.url}{route}", files=handles, data=data, timeout=120)


def test_match_by_folder_and_upload_give_the_pipeline_answer(server: ServiceProcess, setup: dict[str, Path],
                                                             pipeline_result: dict[str, dict]) -> None:
    root = setup["root"]
    for clip in sorted((root / "video").glob("*.mp4")):
        by_path = _folder(server, f"video/{clip.name}")
        by_upload = _upload(server, [clip])
        assert by_path.status_code == by_upload.status_code == 200, (by_path.text, by_upload.text)
        a, b = by_path.json(), by_upload.json()
        assert a["query"] == {**b["query"], "id": clip.stem} and a["match"] == b["match"]
        expected = pipeline_result.get(clip.stem)
        got = a["match"]
        assert (got and got["item_id"]) == (expected and expected["item_id"]), (clip.stem, a, expected)
        if got:
            assert [got["frame_index"], got["img_name"]] == [expected["frame_index"],
                                                              expected["result"][0]["img_name"]]
    item_of_clip = {v: e["item_id"] for v, e in pipeline_result.items()}
    for folder in sorted(p for p in (root / "image").iterdir() if p.is_dir()):
        images = sorted(folder.iterdir())
        by_path = _folder(server, f"image/{folder.name}")
        by_upload = _upload(server, images, id=folder.name)
        assert by_path.status_code == by_upload.status_code == 200, (by_path.text, by_upload.text)
        got = by_path.json()["match"]
        assert got == by_upload.json()["match"]
        expected = [v for v, item in item_of_clip.items() if item == folder.name]
        assert ([got["video_id"]] if got else []) == expected, (folder.name, by_path.json())


def _stored_entries(settings_file: Path, data_dir: Path) -> dict[tuple[str, str], object]:
    """What a stored gallery holds, read in this process (the settings file is named for this call only)."""
    from service.engine import model_identity
    from service.gallery import open_gallery
    from service.settings import CONFIG_FILE_ENV, load_settings

    before = os.environ.get(CONFIG_FILE_ENV)
    try:
        settings = load_settings(settings_file, data_dir=data_dir)
    finally:
        os.environ.pop(CONFIG_FILE_ENV, None) if before is None else os.environ.update({CONFIG_FILE_ENV: before})
    store = open_gallery(settings, 64, model_identity(settings.model_set()))
    try:
        return {(s.kind, s.source_id): s for s in store.export()}
    finally:
        store.close()


def test_a_gallery_rebuilt_from_a_run_holds_what_embedding_the_root_gives(setup: dict[str, Path], gallery: Path,
                                                                           pipeline_result: dict[str, dict],
                                                                           tmp_path: Path) -> None:
    """``rebuild --run`` takes the batch run's boxes and vectors (no model runs): the same entries, boxes and
    vectors as the rebuild that embeds the root anew through the service's engine."""
    import numpy as np

    data_dir = tmp_path / "from_run"
    done = subprocess.run([sys.executable, "-m", "service", "rebuild", "--config", str(setup["config"]),
                           "--data-dir", str(data_dir), "--run", str(setup["base"] / "run")],
                          cwd=REPO, env=service_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 items, 4 clips" in done.stdout
    from_run, embedded = _stored_entries(setup["config"], data_dir), _stored_entries(setup["config"], gallery)
    assert from_run.keys() == embedded.keys()
    for key, entry in from_run.items():
        other = embedded[key]
        assert (entry.names, entry.frames, entry.boxes, entry.groups, entry.pictures) == \
            (other.names, other.frames, other.boxes, other.groups, other.pictures), key
        assert np.allclose(entry.vectors, other.vectors, atol=1e-5), key


def _not_logs(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not JSON log lines: where a refusal must stand alone."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("{")]


def test_a_run_made_with_other_models_is_refused_in_one_line(setup: dict[str, Path],
                                                             pipeline_result: dict[str, dict],
                                                             tmp_path: Path) -> None:
    import yaml

    detector = yaml.safe_load(Path(setup["detector_config"]).read_text())
    detector["infer"]["image_score_thresh"] = 0.5
    (tmp_path / "detector.yaml").write_text(yaml.safe_dump(detector))
    settings = yaml.safe_load(Path(setup["config"]).read_text())
    settings["detector"]["config"] = str(tmp_path / "detector.yaml")
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(settings))
    done = subprocess.run([sys.executable, "-m", "service", "rebuild", "--config", str(tmp_path / "service.yaml"),
                           "--data-dir", str(tmp_path / "gallery"), "--run", str(setup["base"] / "run")],
                          cwd=REPO, env=service_env(), capture_output=True, text=True, timeout=300)
    errors = _not_logs(done.stderr)
    assert done.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    assert "inference settings differ" in errors[0] and "image_score_thresh" in errors[0]


def test_the_service_without_models_refuses_in_one_line_naming_the_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "service", "--data-dir", str(tmp_path / "g"),
                           "--models", str(tmp_path / "none.yaml")],
                          cwd=REPO, env=service_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and _not_logs(done.stderr) == [
        f"error: {tmp_path / 'none.yaml'}: model set not found"], done.stderr
    absent = tmp_path / "repo_without_models"
    done = subprocess.run([sys.executable, "-c", "import sys, pipeline.model_set as m; "
                           f"m.DEFAULT_MODEL_SET = m.Path({str(absent / 'models.yaml')!r}); "
                           "from service.__main__ import main; sys.exit(main(['--data-dir', sys.argv[1]]))",
                           str(tmp_path / "g")], cwd=REPO, env=service_env(), capture_output=True, text=True,
                          timeout=120)
    lines = _not_logs(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "python -m pipeline.demo" in lines[0], done.stderr


def test_an_approximate_match_index_is_refused_at_start_instead_of_ignored(setup: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "service", "--config", str(setup["config"]),
                           "--data-dir", str(tmp_path / "g")], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**service_env(), "SHOPMATCH_MATCH_SET": '["index.kind=ivf"]'})
    lines = _not_logs(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and "match.index.kind='ivf'" in lines[0], done.stderr


def test_refusals_have_the_right_codes(server: ServiceProcess, setup: dict[str, Path]) -> None:
    base = setup["base"]
    refused = {403: [_folder(server, "image/../image/000001"), _folder(server, "/etc"),
                     _folder(server, str(base / "outside")), _folder(server, "escape"),
                     _folder(server, "linked")]}  # linked: its 0.jpg links outside the root
    missing = _folder(server, "image/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    (base / "notes.txt").write_text("hello")
    refused[415] = [_upload(server, [base / "notes.txt"])]
    (base / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 200)
    corrupt = _upload(server, [base / "broken.jpg"])
    assert corrupt.status_code == 422 and corrupt.json()["error"]["code"] == "corrupt_file"
    assert "/" not in corrupt.json()["error"]["message"]  # the file's name, not its staging path
    (base / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * (UPLOAD_LIMIT + 10))
    refused[413] = [_upload(server, [base / "big.jpg"])]
    refused[404] = [missing, httpx.delete(f"{server.url}/v1/gallery/items/999999")]
    refused[405] = [httpx.request("OPTIONS", f"{server.url}/v1/gallery/items/999999")]
    refused[422] = [corrupt, httpx.post(f"{server.url}/v1/match/folder", json={"nope": 1}),
                    _upload(server, [base / "broken.jpg"], route="/v1/gallery/upload")]  # no id
    for status, responses in refused.items():
        for response in responses:
            assert response.status_code == status, response.text
            assert response.json()["error"]["status"] == status, response.text
    assert refused[405][0].headers["Allow"] == "GET, DELETE"


def test_concurrent_adds_of_one_id_report_one_add_and_one_replacement(server: ServiceProcess) -> None:
    """The replaced flag comes from the store's write, so of two adds racing one new id exactly one adds."""
    def add(_: int) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/gallery", json={"path": "video/000001.mp4", "id": "race"}, timeout=120)

    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(add, range(2)))
        assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
        assert sorted(a.json()["replaced"] for a in answers) == [False, True]
        assert {a.json()["origin"] for a in answers} == {"video/000001.mp4"}  # relative to its data root
    finally:
        httpx.delete(f"{server.url}/v1/gallery/clips/race")
    assert httpx.get(f"{server.url}/v1/gallery/clips/race").status_code == 404


def test_api_key_is_required_except_for_health(setup: dict[str, Path], gallery: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import load_settings

    settings = load_settings(setup["config"], data_dir=gallery, api_key="s3cret")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/v1/gallery/stats").status_code == 401
        assert client.get("/v1/status").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 403
        assert client.get("/v1/gallery/stats", headers={"X-API-Key": "s3cret"}).status_code == 200


def _entries(url: str) -> list[dict]:
    return httpx.get(f"{url}/v1/gallery", params={"limit": 1000}).json()["entries"]


def test_gallery_changes_survive_restart(setup: dict[str, Path]) -> None:
    base, root = setup["base"], setup["root"]
    server = ServiceProcess(setup["config"], base / "restart", base / "restart.log")
    try:
        added = _upload(server, sorted((root / "image" / "000001").glob("*.jpg")), "/v1/gallery/upload",
                        id="000001")
        assert added.status_code == 201, added.text
        assert _upload(server, [root / "video" / "000002.mp4"], "/v1/gallery/upload").status_code == 201
        assert httpx.post(f"{server.url}/v1/gallery", json={"path": "video/000003.mp4"}).status_code == 201
        assert httpx.delete(f"{server.url}/v1/gallery/clips/000003").status_code == 200
        before = _entries(server.url)
        stats = httpx.get(f"{server.url}/v1/gallery/stats").json()
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'shopmatch_gallery_entries{kind="clip"} 1' in metrics
        assert 'shopmatch_model_batch_size_count{model="embedder"}' in metrics
        # After each change the gallery's own votes are computed in the background, not by the next match.
        deadline = time.monotonic() + 60
        while "shopmatch_gallery_votes_ready 1" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, "the gallery's votes were never precomputed"
            time.sleep(0.2)
    finally:
        server.stop()
    assert [(e["kind"], e["id"]) for e in before] == [("clip", "000002"), ("item", "000001")]
    server = ServiceProcess(setup["config"], base / "restart", base / "restart.log")
    try:
        assert _entries(server.url) == before
        assert httpx.get(f"{server.url}/v1/gallery/stats").json() == stats
    finally:
        server.stop()


def test_server_killed_during_add_restarts_consistent(setup: dict[str, Path], gallery: Path) -> None:
    base, root = setup["base"], setup["root"]
    data_dir = shutil.copytree(gallery, base / "killed")
    server = ServiceProcess(setup["config"], data_dir, base / "killed.log")
    before = _entries(server.url)
    kill_during(server, lambda: _upload(server, [root / "video" / "000001.mp4"], "/v1/gallery/upload", id="new1"),
                0.15)
    server = ServiceProcess(setup["config"], data_dir, base / "killed.log")
    try:
        after = _entries(server.url)
        stats = httpx.get(f"{server.url}/v1/gallery/stats").json()
        assert after in (before, sorted(before + [e for e in after if e["id"] == "new1"],
                                        key=lambda e: (e["kind"], e["id"])))
        assert stats["clip_boxes"] == sum(e["boxes"] for e in after if e["kind"] == "clip")
        assert stats["item_boxes"] == sum(e["boxes"] for e in after if e["kind"] == "item")
        assert len(list(data_dir.glob("segment-*.faiss*"))) == stats["segments"] > 0
        assert not any((data_dir / "uploads").iterdir())  # the killed request's staged clip is gone
        assert _folder(server, "video/000002.mp4").status_code == 200
    finally:
        server.stop()
