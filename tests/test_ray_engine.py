"""``--engine ray`` on a real two-node Ray cluster on this machine: the same result.json as the embedded run, also
when a worker node is killed mid-run or the run itself is killed and restarted, and a corrupt clip skipped and
reported.

One cluster serves the module (a head with 2 CPUs, a worker with 1, each its own ``ray start`` process); the
inputs and the embedded reference run are ``test_pipeline``'s session fixtures (the tiny detector, Lite0). Runs
that must be cut short embed two sources per group, so that some are stored before the cut.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataset.layout import load_dataset
from pipeline.run import PipelineResult, run_pipeline
from ray_cluster import DRIVER_ENV, LocalRayCluster, _children, new_cluster
from test_pipeline import ITEMS, Inputs, detector_run, pipeline_inputs  # noqa: F401  (the shared session inputs)

REPO = Path(__file__).resolve().parents[1]
SOURCES = 2 * ITEMS  # an item folder and a clip per item
WAIT = 240.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    logs = tmp_path_factory.mktemp("ray_logs")
    ray_cluster = new_cluster(logs)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DRIVER_ENV.items():
            patch.setenv(name, value)
        try:
            ray_cluster.start_head(cpus=2)
            ray_cluster.wait_for(1)
            ray_cluster.start_worker("worker", cpus=1)
            ray_cluster.wait_for(2)
            yield ray_cluster
        finally:
            ray_cluster.stop()


def _ray_run(inputs: Inputs, root: Path, out: Path, cluster: LocalRayCluster, **options) -> PipelineResult:
    return run_pipeline(root, out, detector=inputs.detector, embedders=[inputs.embedder], device="cpu",
                        progress=False, report=False, engine="ray", ray_address=cluster.address, **options)


def _encode_record(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["stages"]["encode"]


def _stored(out: Path) -> int:
    store = out / "sources"
    return len(list(store.glob("*.npz"))) if store.is_dir() else 0


def test_ray_run_gives_the_embedded_result(cluster: LocalRayCluster, pipeline_inputs: Inputs,
                                           detector_run: PipelineResult, tmp_path: Path) -> None:
    result = _ray_run(pipeline_inputs, pipeline_inputs.test, tmp_path / "out", cluster)
    assert result.result_path.read_bytes() == detector_run.result_path.read_bytes()
    assert (tmp_path / "out" / "boxes.json").read_text() != ""
    engine = _encode_record(tmp_path / "out")["engine"]
    assert engine["name"] == "ray" and engine["cluster"]["CPU"] == 3
    # Two CPUs of three for encode actors, one left to the read tasks.
    assert engine["attempts"][0]["pool"]["max_actors"] == 2 and "error" not in engine["attempts"][0]
    assert sum(node["sources"] for node in engine["nodes"].values()) == SOURCES
    assert 1 <= engine["actors"] <= 2 and all(node["alive_at_end"] for node in engine["nodes"].values())
    steps = _encode_record(tmp_path / "out")["steps"]
    assert steps["detect"] > 0 and steps["embed"] > 0


def test_a_worker_node_killed_mid_run_changes_nothing(cluster: LocalRayCluster, pipeline_inputs: Inputs,
                                                      detector_run: PipelineResult, tmp_path: Path) -> None:
    out = tmp_path / "out"
    worker = cluster.nodes[-1]
    killed = threading.Event()

    def kill_when_busy() -> None:
        """Kill the worker node once it runs an encode actor and some sources are stored."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and worker.process.poll() is None:
            titles = []
            for pid in _children(worker.process.pid):
                try:
                    titles.append(Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    pass
            if _stored(out) >= 1 and any(b"EncodeActor" in t for t in titles):
                worker.kill()
                killed.set()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    try:
        result = _ray_run(pipeline_inputs, pipeline_inputs.test, out, cluster, sources_per_group=2)
    finally:
        killer.join(timeout=WAIT)
        if not killed.is_set():  # the run ended first: stop the watch from killing a later test's worker
            worker.killed = True
    assert killed.is_set(), "the worker node never ran an encode actor while sources were left"
    assert result.result_path.read_bytes() == detector_run.result_path.read_bytes()
    engine = _encode_record(out)["engine"]
    assert engine["attempts"][0]["sources"] == SOURCES
    # Ray recovered inside the job, or the job was run again over what was not stored, on the head alone.
    assert len(engine["attempts"]) == 1 or engine["attempts"][1]["pool"]["max_actors"] == 1, engine
    cluster.start_worker("worker-2", cpus=1)  # the next tests get two nodes again
    cluster.wait_for(2)


def test_a_killed_run_resumes_to_the_same_result(cluster: LocalRayCluster, pipeline_inputs: Inputs,
                                                 detector_run: PipelineResult, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    det_cfg, det_weights = pipeline_inputs.detector
    cfg_path = tmp_path / "detector.yaml"
    cfg_path.write_text(json.dumps(det_cfg.model_dump(mode="json")))
    command = [str(REPO / "run.sh"), str(pipeline_inputs.test), str(out), "--detector", str(cfg_path),
               str(det_weights), "--embedders", "lite0", "-", "--device", "cpu", "--no-progress", "--no-report",
               "--sources-per-group", "2", "--engine", "ray", "--ray-address", cluster.address]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **DRIVER_ENV}, start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT
        while process.poll() is None and time.monotonic() < deadline and _stored(out) < 2:
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the driver dies; Ray ends its job's actors and tasks
        process.wait(timeout=60)
    assert not (out / "result.json").is_file(), "the run finished before it could be killed"
    stored = _stored(out)
    assert 2 <= stored < SOURCES
    resumed = _ray_run(pipeline_inputs, pipeline_inputs.test, out, cluster, sources_per_group=2)
    assert resumed.result_path.read_bytes() == detector_run.result_path.read_bytes()
    encode = _encode_record(out)
    assert not encode["cached"] and encode["resumed_sources"] >= 2, encode
    assert encode["engine"]["attempts"][0]["sources"] == SOURCES - encode["resumed_sources"]


def test_a_corrupt_clip_is_skipped_and_reported(cluster: LocalRayCluster, pipeline_inputs: Inputs,
                                                tmp_path: Path) -> None:
    root = shutil.copytree(pipeline_inputs.test, tmp_path / "root")
    clips = sorted(load_dataset(root).videos)
    broken = root / "video" / f"{clips[0]}.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500)
    result = _ray_run(pipeline_inputs, root, tmp_path / "out", cluster)
    assert result.decisions[clips[0]].startswith("skipped: ")
    assert str(broken) in result.skipped and result.summary["skipped"] == 1
    assert all(not result.decisions[c].startswith("skipped") for c in clips[1:])
    boxes = json.loads((tmp_path / "out" / "boxes.json").read_text())
    assert {b["video_id"] for b in boxes["videos"]} == set(clips[1:])
    engine = _encode_record(tmp_path / "out")["engine"]
    assert sum(node["sources"] for node in engine["nodes"].values()) == SOURCES - 1


def test_the_local_engine_never_imports_ray() -> None:
    code = ("import sys, pipeline.run, pipeline.encode, pipeline.source, pipeline.store; "
            "pipeline.run._parse_args(['root', 'out']); print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_actor_pool_leaves_cpus_to_the_read_tasks() -> None:
    from pipeline.ray_engine import plan_pool

    assert plan_pool({"CPU": 2.0}, device="auto").max_actors == 1
    assert plan_pool({"CPU": 16.0}, device="auto").max_actors == 12
    gpus = plan_pool({"CPU": 16.0, "GPU": 4.0}, device="auto")
    assert (gpus.max_actors, gpus.num_gpus, gpus.device) == (4, 1.0, "cuda")
    assert plan_pool({"CPU": 16.0, "GPU": 4.0}, device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="no GPUs"):
        plan_pool({"CPU": 8.0}, device="cuda")
    with pytest.raises(ValueError, match="need 2"):
        plan_pool({"CPU": 1.0}, device="auto")
