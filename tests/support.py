"""Helpers shared by test modules: a free loopback port, a seeded tiny detector, and a tiny dataset with tiny
model checkpoints.

The tiny models have fixed random weights and score thresholds at 0, so every
picture yields boxes: tests built on them check plumbing (the same answer from
every entry point, resumes, refusals), not accuracy.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
import yaml

from bbox_sub.config import CONFIG_DIR as DETECTOR_CONFIGS, load_detector_config
from bbox_sub.model import Detector, build_detector
from dataset.synth import generate
from dataset.synth.config import SynthConfig
from metric_sub.config import CONFIG_DIR as EMBEDDER_CONFIGS, load_embedder_config
from metric_sub.model import build_embedder
from runtime.checkpoint import save_checkpoint

UPLOAD_LIMIT = 1_000_000
REPO = Path(__file__).resolve().parents[1]


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(**settings: str) -> dict[str, str]:
    """The environment of a service subprocess: CPU, offline, this checkout, and ``settings`` (``SHOPMATCH_*``);
    no settings file from the caller's environment (each server is given its own)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **settings}
    if "SHOPMATCH_CONFIG_FILE" not in settings:
        env.pop("SHOPMATCH_CONFIG_FILE", None)
    return env


class ServiceProcess:
    """``python -m service`` in a subprocess on a free loopback port, ready (``/readyz`` 200) on return."""

    def __init__(self, config: Path, data_dir: Path, log: Path, env: dict[str, str] | None = None,
                 ready_s: float = 120) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--config", str(config), "--data-dir", str(data_dir),
             "--port", str(self.port)], cwd=REPO, env=env or service_env(), stdout=log.open("ab"),
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"server did not get ready:\n{log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


def kill_during(server: ServiceProcess, request: Callable[[], object], after_s: float) -> object:
    """Send ``request`` from a thread and SIGKILL ``server`` ``after_s`` later, mid-request: the response, or
    the transport error the client saw."""
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(request())
        except httpx.TransportError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(after_s)
    server.stop(signal.SIGKILL)
    thread.join(timeout=60)
    return outcome[0] if outcome else None


def lines_until(process: subprocess.Popen, count: int, deadline: float) -> list[str]:
    """The process's first ``count`` stdout lines, waiting at most until ``deadline``."""
    lines: list[str] = []
    while len(lines) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
    return lines


def kill_writer_mid_change(script: str, *, lines: int, pause_s: float, wait_s: float = 120) -> list[str]:
    """Run ``script`` (a writer printing each committed generation), SIGKILL it ``pause_s`` after its
    ``lines``-th line: the generations it printed. The pause lands the signal at another point of a change."""
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = lines_until(writer, lines, time.monotonic() + wait_s)
        assert seen, writer.stderr.read() if writer.poll() is not None else "the writer printed nothing"
        time.sleep(pause_s)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)
        writer.stdout.close()
        writer.stderr.close()
    assert writer.returncode == -signal.SIGKILL, "the writer ended before the kill"
    return seen


def seeded_tiny_detector() -> Detector:
    """The tiny detector in eval mode with the same random weights on every call, so that two copies (one per
    device or precision) compute the same function."""
    torch.manual_seed(0)
    return build_detector(load_detector_config("tiny").model).eval()


def make_tiny_setup(base: Path) -> dict[str, Path]:
    """A 4-item generated root, tiny detector and embedder configs + checkpoints, and a service settings file."""
    root = base / "data"
    generate(root, SynthConfig(items=4, seed=3, shop_size=128, shop_images_min=2, shop_images_max=2,
                               clip_frames=61, clip_width=128, clip_height=224, uncatalogued_share=0.0,
                               absent_start_share=0.0, clutter=1), workers=1, contact_sheet=False)
    detector = yaml.safe_load((DETECTOR_CONFIGS / "tiny.yaml").read_text())
    detector["model"].update(detections_per_img=4, box_score_thresh=0.0)
    # One shop image and one crop per forward pass: CPU convolutions round differently with the batch size,
    # and with random weights the scores and distances crowd within that rounding, so the service (batched
    # per request) and the batch pipeline (batched per chunk) must run the same passes to agree exactly.
    detector["infer"].update(image_score_thresh=0.0, video_score_thresh=0.0, frames=[0, 20, 40, 60],
                             image_short_side=128, video_short_side=128, image_batch=1)
    (base / "detector.yaml").write_text(yaml.safe_dump(detector))
    embedder = yaml.safe_load((EMBEDDER_CONFIGS / "tiny.yaml").read_text())
    embedder["data"]["bucket_scale"] = 0.2
    embedder.setdefault("embed", {})["batch_size"] = 1
    (base / "embedder.yaml").write_text(yaml.safe_dump(embedder))
    torch.manual_seed(0)
    save_checkpoint(base / "detector.pth",
                    {"model": build_detector(load_detector_config(base / "detector.yaml").model).state_dict()})
    save_checkpoint(base / "embedder.pth",
                    {"model": build_embedder(load_embedder_config(base / "embedder.yaml")).state_dict()})
    settings = {"detector": {"config": str(base / "detector.yaml"), "weights": str(base / "detector.pth")},
                "embedders": [{"config": str(base / "embedder.yaml"), "weights": str(base / "embedder.pth")}],
                "roots": [str(root)], "device": "cpu", "limits": {"max_upload_bytes": UPLOAD_LIMIT},
                # No micro-batching across requests: which jobs share a pass would depend on timing (the
                # rebuild embeds items concurrently), and so would the rounding, most of all in bf16.
                "batching": {"max_crops": 1}}
    (base / "service.yaml").write_text(yaml.safe_dump(settings))
    return {"base": base, "root": root, "service_config": base / "service.yaml",
            "detector_config": base / "detector.yaml", "detector_weights": base / "detector.pth",
            "embedder_config": base / "embedder.yaml", "embedder_weights": base / "embedder.pth"}
