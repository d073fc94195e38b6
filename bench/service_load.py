"""Load on the REST service: N concurrent clients matching clips and item folders over loopback.

``python -m bench.service_load [--clients 1 4 8] [--requests 40] [--max-seconds 60] [--items 8]
[--api-key KEY] [--out runs/bench/service_load.json]``

It prepares a small synthetic root, tiny models with fixed random weights
(speed does not depend on training) and a gallery (``python -m service
rebuild``), then starts a server on a free 127.0.0.1 port with the service's
default limits (and ``--api-key``, which the clients send, as a deployment
would). Each client level sends a bounded number of requests (by path and by
upload, clips and folders) within a bounded time. Reported per level:
latency p50/p95/p99, throughput, errors (503s counted apart) and the
server's peak RSS (VmHWM). The result goes to ``--out``, outside the
committed ``bench/results/`` unless named there.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.common import print_table, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "runs" / "bench" / "service_load.json"


def prepare(base: Path, items: int) -> tuple[Path, Path]:
    """A synthetic root, tiny random-weight models and a settings file; returns (settings file, root)."""
    import torch

    from bbox_sub.config import CONFIG_DIR as DETECTOR_CONFIGS, load_detector_config
    from bbox_sub.model import build_detector
    from dataset.synth import generate
    from dataset.synth.config import SynthConfig
    from metric_sub.config import CONFIG_DIR as EMBEDDER_CONFIGS, load_embedder_config
    from metric_sub.model import build_embedder
    from runtime.checkpoint import save_checkpoint

    root = base / "data"
    generate(root, SynthConfig(items=items, seed=5, shop_size=256, shop_images_min=2, shop_images_max=3,
                               clip_frames=161, clip_width=270, clip_height=480, uncatalogued_share=0.0),
             workers=1, contact_sheet=False)
    detector = yaml.safe_load((DETECTOR_CONFIGS / "tiny.yaml").read_text())
    detector["model"].update(detections_per_img=4, box_score_thresh=0.0)
    detector["infer"].update(image_score_thresh=0.0, video_score_thresh=0.0, frames=list(range(0, 161, 20)))
    (base / "detector.yaml").write_text(yaml.safe_dump(detector))
    torch.manual_seed(0)
    save_checkpoint(base / "detector.pth",
                    {"model": build_detector(load_detector_config(base / "detector.yaml").model).state_dict()})
    save_checkpoint(base / "embedder.pth", {"model": build_embedder(load_embedder_config("tiny")).state_dict()})
    settings = {"detector": {"config": str(base / "detector.yaml"), "weights": str(base / "detector.pth")},
                "embedders": [{"config": str(EMBEDDER_CONFIGS / "tiny.yaml"), "weights": str(base / "embedder.pth")}],
                "roots": [str(root)], "log_level": "warning"}
    (base / "service.yaml").write_text(yaml.safe_dump(settings))
    return base / "service.yaml", root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def client(http: httpx.AsyncClient, jobs: list[tuple[str, Path]], root: Path, until: float,
                 latencies: list[float], codes: list[int]) -> None:
    for mode, path in jobs:
        if time.monotonic() > until:
            return
        started = time.perf_counter()
        if mode == "upload":
            files = [("files", (p.name, p.read_bytes())) for p in ([path] if path.is_file() else sorted(path.iterdir()))]
            response = await http.post("/v1/match", files=files, data={"id": path.stem})
        else:
            response = await http.post("/v1/match/folder", json={"path": str(path.relative_to(root))})
        latencies.append(time.perf_counter() - started)
        codes.append(response.status_code)


async def run_level(url: str, root: Path, clients: int, requests: int, max_seconds: float,
                    headers: dict[str, str] | None = None) -> dict:
    targets = sorted((root / "video").glob("*.mp4")) + sorted(p for p in (root / "image").iterdir() if p.is_dir())
    rng = np.random.default_rng(clients)
    latencies: list[float] = []
    codes: list[int] = []
    per_client = max(1, requests // clients)
    plans = [[("upload" if rng.random() < 0.3 else "path", targets[int(rng.integers(len(targets)))])
              for _ in range(per_client)] for _ in range(clients)]
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as http:
        started = time.perf_counter()
        until = time.monotonic() + max_seconds
        await asyncio.gather(*(client(http, plan, root, until, latencies, codes) for plan in plans))
        wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": len(codes), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "req_per_s": len(codes) / wall, "errors": sum(c != 200 and c != 503 for c in codes),
            "rejected_503": codes.count(503)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=40, help="requests per client level (bounded)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time bound per client level")
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--api-key", help="run the server with this API key and send it with every request")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"result JSON (default: {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    headers = {}
    if args.api_key:
        from service.settings import Settings

        env["SHOPMATCH_API_KEY"] = args.api_key
        headers[Settings.model_fields["api_key_header"].default] = args.api_key
    with tempfile.TemporaryDirectory(prefix="service-load-") as tmp:
        base = Path(tmp)
        config, root = prepare(base, args.items)
        subprocess.run([sys.executable, "-m", "service", "rebuild", "--config", str(config), "--data-dir",
                        str(base / "gallery"), "--root", str(root)], cwd=REPO, env=env, check=True,
                       capture_output=True)
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "service", "--config", str(config), "--data-dir",
                                   str(base / "gallery"), "--port", str(port)], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=(base / "server.log").open("wb"))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            asyncio.run(run_level(url, root, 1, 2, 30, headers))  # warm-up: first calls allocate and load
            rows = []
            for clients in args.clients:
                row = asyncio.run(run_level(url, root, clients, args.requests, args.max_seconds, headers))
                row["peak_rss_mib"] = peak_rss_mib(server.pid)
                rows.append(row)
                print_table([row], list(row))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print()
    print_table(rows, list(rows[0]))
    path = write_result(args.out, "service_load", rows, {"items": args.items, "clips": args.items,
                                                        "requests_per_level": args.requests,
                                                        "api_key": bool(args.api_key),
                                                        "models": "tiny detector + tiny embedder, random weights",
                                                        "mix": "70% by path, 30% by upload; clips and folders"})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
