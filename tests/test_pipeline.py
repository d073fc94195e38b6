"""The whole pipeline on generated data: valid result.json, resume after a kill, corrupt clips, the score.

One session-wide set of inputs (a train and a disjoint test root, the tiny
detector trained for a few steps) serves every test here and in
``test_report.py``. The embedder is EfficientNet-Lite0 with its ImageNet
weights: a tiny embedder trained for a few steps maps every crop to nearly
the same vector, and the voting rules then (rightly) abstain everywhere,
which would leave nothing to compare. A detector trained for two steps
proposes poor boxes, so its runs check the plumbing; the score is checked
with annotated boxes (matching only), where chance is at most 1/items.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from bbox_sub.config import DetectorConfig, load_detector_config
from bbox_sub.train import train as train_detector
from dataset.frames import read_frames
from dataset.layout import load_dataset
from dataset.score import load_result
from dataset.synth import SynthConfig, generate
from dataset.video_write import write_mp4
from pipeline.run import PipelineResult, format_summary, run_pipeline

REPO = Path(__file__).resolve().parents[1]
ITEMS = 6
DETECTOR_SET = ["infer.image_score_thresh=0.0", "infer.video_score_thresh=0.0", "model.detections_per_img=3",
                "infer.frames=[80, 120, 160]", "infer.image_short_side=128", "infer.video_short_side=128"]


@dataclass(frozen=True)
class Inputs:
    train: Path
    test: Path
    detector: tuple[DetectorConfig, Path]
    embedder: tuple[str, None]
    base: Path


def _root(folder: Path, first_id: int, seed: int) -> Path:
    generate(folder, SynthConfig(items=ITEMS, seed=seed, first_id=first_id, shop_size=160, shop_images_min=2,
                                 shop_images_max=3, clip_frames=161, clip_width=128, clip_height=224,
                                 uncatalogued_share=0.0, absent_start_share=0.0, clutter=1),
             workers=1, contact_sheet=False)
    return folder


def build_inputs(base: Path) -> Inputs:
    """Generate and train once per session (reused when ``base`` already holds them)."""
    base.mkdir(parents=True, exist_ok=True)
    train_root, test_root = base / "train", base / "test"
    if not (test_root / "synth_manifest.json").is_file():
        _root(train_root, 1, 21)
        _root(test_root, 301, 22)
    stage = ("train.stages=[{name: s1, iterations: 2, base_lr: 0.02, batch_size: 2, schedule: cosine, "
             "warmup_iters: 1, min_sizes: [128], max_size: 256}]")
    det_cfg = load_detector_config("tiny", [stage, "train.workers=0", "train.val_fraction=0",
                                            "train.eval_every=1000", *DETECTOR_SET])
    weights = base / "detector" / "model_final.pth"
    if not weights.is_file():
        train_detector(det_cfg, [train_root], base / "detector", device="cpu")
    return Inputs(train_root, test_root, (det_cfg, weights), ("lite0", None), base)


@pytest.fixture(scope="session")
def pipeline_inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return build_inputs(tmp_path_factory.getbasetemp() / "pipeline_inputs")


@pytest.fixture(scope="session")
def detector_run(pipeline_inputs: Inputs) -> PipelineResult:
    """An uninterrupted run with the tiny detector."""
    return run_pipeline(pipeline_inputs.test, pipeline_inputs.base / "run_straight", detector=pipeline_inputs.detector,
                        embedders=[pipeline_inputs.embedder], device="cpu", progress=False)


def test_detector_run_writes_a_valid_result_and_a_summary(detector_run: PipelineResult,
                                                          pipeline_inputs: Inputs) -> None:
    predictions = load_result(detector_run.result_path)  # validates the schema
    clips = set(load_dataset(pipeline_inputs.test).videos)
    assert set(detector_run.decisions) == clips
    assert set(predictions) <= clips
    summary = json.loads((detector_run.out_dir / "summary.json").read_text())
    assert summary["clips"] == ITEMS and summary["matched"] + summary["abstained"] == ITEMS
    assert set(summary["stage_seconds"]) == {"encode", "match", "score", "report"}
    for name, stage in summary["stages"].items():
        assert stage["cached"] is False and stage["resumed_sources"] == 0, name
        assert stage["peak_rss_mib"] > 0 and stage["end_rss_mib"] > 0, name
        assert stage["peak_scope"] in ("stage", "process") and stage["peak_rss_mib"] <= summary["peak_rss_mib"]
    assert summary["missing_frames"] == {}
    assert detector_run.score is not None and 0.0 <= detector_run.score["final"] <= 1.0
    assert summary["matched"] >= 2, detector_run.decisions  # the comparisons below are not vacuous
    for entry in json.loads(detector_run.result_path.read_text()).values():
        assert isinstance(entry["frame_index"], int) and entry["frame_index"] in (80, 120, 160)
        assert all(isinstance(v, int) for v in entry["result"][0]["item_box"] + entry["result"][0]["frame_box"])


def test_each_clip_and_image_is_decoded_once_per_run(pipeline_inputs: Inputs, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection and the crops read the same decoded pictures: one open per clip and per shop image."""
    import dataset.frames
    import pipeline.source

    opened: Counter[str] = Counter()

    def counting(read):
        def wrapper(path, *args, **kwargs):
            opened[str(path)] += 1
            return read(path, *args, **kwargs)
        return wrapper

    for name, reader in list(dataset.frames._READERS.items()):
        monkeypatch.setitem(dataset.frames._READERS, name, counting(reader))
    monkeypatch.setattr(pipeline.source, "read_image", counting(pipeline.source.read_image))
    result = run_pipeline(pipeline_inputs.test, tmp_path / "out", detector=pipeline_inputs.detector,
                          embedders=[pipeline_inputs.embedder], device="cpu", progress=False, report=False)
    data = load_dataset(pipeline_inputs.test)
    files = [str(v.path) for v in data.videos.values()] + [str(i.path) for it in data.items.values()
                                                            for i in it.images]
    assert opened == Counter(files), opened
    assert len(result.decisions) == ITEMS


def test_killed_run_resumes_to_the_same_result(detector_run: PipelineResult, pipeline_inputs: Inputs,
                                               tmp_path: Path) -> None:
    out = tmp_path / "killed"
    det_cfg, det_weights = pipeline_inputs.detector
    cfg_path = tmp_path / "detector.yaml"
    cfg_path.write_text(json.dumps(det_cfg.model_dump(mode="json")))
    command = [str(REPO / "run.sh"), str(pipeline_inputs.test), str(out), "--detector", str(cfg_path),
               str(det_weights), "--embedders", "lite0", "-", "--device", "cpu", "--no-progress",
               "--sources-per-group", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    store = out / "sources"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if store.is_dir() and len(list(store.glob("*.npz"))) >= 2:  # one group of two sources written
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert not (out / "result.json").is_file(), "the run finished before it could be killed"
    (store / "0123456789abcdef.npz.partial").write_bytes(b"PK\x03\x04cut")  # a write cut short is ignored
    resumed = run_pipeline(pipeline_inputs.test, out, detector=(cfg_path, det_weights),
                           embedders=[pipeline_inputs.embedder], device="cpu", progress=False, report=False)
    assert resumed.result_path.read_bytes() == detector_run.result_path.read_bytes()
    encode = json.loads((out / "summary.json").read_text())["stages"]["encode"]
    assert not encode["cached"] and encode["resumed_sources"] >= 2, encode  # the sources done before the kill

    # Stopping between stages and resuming gives the same file too, and skips finished stages.
    staged = tmp_path / "staged"
    first = run_pipeline(pipeline_inputs.test, staged, detector=pipeline_inputs.detector,
                         embedders=[pipeline_inputs.embedder], device="cpu", stop_after="encode", progress=False)
    assert first.result_path is None and (staged / "boxes.json").is_file()
    encoded = (staged / "embed" / "embeddings.npy").stat().st_mtime_ns
    second = run_pipeline(pipeline_inputs.test, staged, detector=pipeline_inputs.detector,
                          embedders=[pipeline_inputs.embedder], device="cpu", progress=False, report=False)
    assert second.result_path.read_bytes() == detector_run.result_path.read_bytes()
    assert (staged / "embed" / "embeddings.npy").stat().st_mtime_ns == encoded  # the finished stage was not rerun
    # The rerun says encoding was cached and keeps the time the first run took, instead of its own.
    stages = json.loads((staged / "summary.json").read_text())["stages"]
    computed = json.loads((staged / "stages.json").read_text())["encode"]["seconds"]
    assert stages["encode"]["cached"] and stages["encode"]["computed"]["seconds"] == computed > 0
    assert not stages["match"]["cached"]


def test_corrupt_clip_is_skipped_and_reported(pipeline_inputs: Inputs, tmp_path: Path) -> None:
    root = shutil.copytree(pipeline_inputs.test, tmp_path / "root")
    clips = sorted(load_dataset(root).videos)
    broken = root / "video" / f"{clips[0]}.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500)
    result = run_pipeline(root, tmp_path / "out", detector=pipeline_inputs.detector,
                          embedders=[pipeline_inputs.embedder], device="cpu", progress=False, report=False)
    assert result.decisions[clips[0]].startswith("skipped: ")
    assert str(broken) in result.skipped
    assert result.summary["skipped"] == 1 and clips[0] not in result.result
    # Every readable clip went through detection and voting and got a decision of its own.
    assert all(not result.decisions[c].startswith("skipped") for c in clips[1:])
    boxes = json.loads((tmp_path / "out" / "boxes.json").read_text())
    assert {b["video_id"] for b in boxes["videos"]} == set(clips[1:])


def test_frames_a_short_clip_lacks_are_counted_in_the_summary_and_report(pipeline_inputs: Inputs,
                                                                        tmp_path: Path) -> None:
    """A clip of 100 frames where the detector samples frames 80, 120 and 160: two are not in the file."""
    root = shutil.copytree(pipeline_inputs.test, tmp_path / "root")
    clip_id = sorted(load_dataset(root).videos)[0]
    path = root / "video" / f"{clip_id}.mp4"
    frames = read_frames(path, range(100)).frames
    write_mp4(path, frames)
    out = tmp_path / "out"
    result = run_pipeline(root, out, detector=pipeline_inputs.detector, embedders=[pipeline_inputs.embedder],
                          device="cpu", progress=False)
    expected = {"count": 2, "frames": [120, 160], "file_frames": 100}
    assert json.loads((out / "summary.json").read_text())["missing_frames"] == {clip_id: expected}
    assert "frames [120, 160] not in the file (100 frames)" in (out / "report.html").read_text()
    assert "frames [120, 160] not in the file" in format_summary(result)
    assert not result.decisions[clip_id].startswith("skipped"), "the frames it holds still count"
    # A rerun finds detection cached and still reports them.
    again = run_pipeline(root, out, detector=pipeline_inputs.detector, embedders=[pipeline_inputs.embedder],
                         device="cpu", progress=False, report=False)
    assert again.stages["encode"].cached and again.summary["missing_frames"] == {clip_id: expected}


def test_matching_beats_chance(pipeline_inputs: Inputs, tmp_path: Path) -> None:
    """Annotated boxes and the ImageNet Lite0 embedder, zero-shot: matching alone.

    Chance: a random item per clip is right with probability 1/ITEMS at every
    level, so every F1 and the final score are at most 1/ITEMS = 0.25.
    """
    result = run_pipeline(pipeline_inputs.test, tmp_path / "out", embedders=[("lite0", None)], device="cpu",
                          ground_truth_boxes=True, progress=False, report=False)
    assert result.score["final"] > 2 / ITEMS, result.score["final"]


def test_cli_rejects_a_run_without_boxes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline", str(tmp_path), str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "error" in done.stderr


def test_calibrate_writes_a_config_at_least_as_good_as_the_seed(detector_run: PipelineResult,
                                                                 pipeline_inputs: Inputs, tmp_path: Path) -> None:
    from metric_sub.calibrate import main as calibrate
    from metric_sub.match import load_match_config

    out = tmp_path / "match.yaml"
    assert calibrate(["--workdir", str(detector_run.out_dir), "--data", str(pipeline_inputs.test),
                      "--out", str(out)]) == 0
    config = load_match_config(out)
    workdir = shutil.copytree(detector_run.out_dir, tmp_path / "run")
    embedded = (workdir / "embed" / "embeddings.npy").stat().st_mtime_ns
    rerun = run_pipeline(pipeline_inputs.test, workdir, detector=pipeline_inputs.detector,
                         embedders=[pipeline_inputs.embedder], match_config=config, device="cpu", progress=False,
                         report=False)
    assert (workdir / "embed" / "embeddings.npy").stat().st_mtime_ns == embedded  # cached stages are reused
    assert rerun.score["final"] >= detector_run.score["final"]


def test_calibrate_scores_each_direction_as_the_pipeline_would(detector_run: PipelineResult,
                                                               pipeline_inputs: Inputs, tmp_path: Path) -> None:
    from metric_sub.calibrate import DIRECTIONS, grid_search
    from metric_sub.embed import load_embeddings
    from metric_sub.match import load_match_config

    base = load_match_config()
    embeddings, meta = load_embeddings(detector_run.out_dir / "embed")
    vote = base.vote
    points = grid_search(embeddings, meta["rows"], load_dataset(pipeline_inputs.test), base, (vote.quantile,),
                         (vote.vote_share,), (vote.cutoff,), (vote.assignment,))
    assert sorted(p.direction for p in points) == sorted(DIRECTIONS)
    reverse = next(p for p in points if p.direction == "clip_to_shop")
    workdir = shutil.copytree(detector_run.out_dir, tmp_path / "run")
    rerun = run_pipeline(pipeline_inputs.test, workdir, detector=pipeline_inputs.detector,
                         embedders=[pipeline_inputs.embedder],
                         match_config=load_match_config(None, ["vote.direction=clip_to_shop"]), device="cpu",
                         progress=False, report=False)
    assert (reverse.final, reverse.matched) == (rerun.score["final"], len(rerun.result))


def test_match_rules_bench_reproduces_the_pipeline_with_the_bundled_rules(detector_run: PipelineResult,
                                                                           pipeline_inputs: Inputs,
                                                                           tmp_path: Path) -> None:
    from bench.match_rules import VARIANTS
    from bench.match_rules import main as match_rules

    out = tmp_path / "rules.json"
    bundled_yaml = REPO / "metric_sub" / "config" / "match.yaml"
    match_rules(["--run", "tiny", str(detector_run.out_dir), str(pipeline_inputs.test), "--out", str(out),
                 "--config", "same file", str(bundled_yaml)])
    rows = {row["rules"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {*VARIANTS, "bundled", "same file"}
    assert (rows["same file"]["score"], rows["same file"]["matched"]) == (rows["bundled"]["score"],
                                                                          rows["bundled"]["matched"])
    assert rows["bundled"]["score"] == detector_run.score["final"]
    assert rows["bundled"]["matched"] == len(detector_run.result)
