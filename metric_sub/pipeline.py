"""The whole matcher: a dataset root in, ``result.json`` out, every stage cached so a killed run resumes.

``python -m metric_sub.pipeline DATA_ROOT [DATA_ROOT ...] OUT_DIR [--detector CFG WEIGHTS]
[--embedders CFG WEIGHTS [CFG WEIGHTS ...]] [--embedder-set data.bucket_scale=0.5] [--match match.yaml]
[--set vote.cutoff=1.0]``

Public API (the REST service calls it)::

    result = run_pipeline(["data/test"], "runs/test", detector=("tiny", "det/model_final.pth"),
                          embedders=[("lite0", None), ("lite1", None)], match_config=None, device="auto")
    result.result_path, result.result, result.decisions, result.summary, result.score

Stages and what each leaves in ``OUT_DIR``:

1. ``detect``: ``boxes.json`` (``bbox_sub.schema``) with its per-file cache
   ``boxes.json.cache.jsonl``. Without a detector, ``ground_truth_boxes=True``
   uses the annotated boxes instead (a matching-only figure).
2. ``embed``: ``embed/embeddings.npy`` + ``embed/embeddings.json``, computed in
   resumable chunks (``metric_sub.embed``).
3. ``match``: ``result.json`` (seed-solution.md 2.1) and ``decisions.json``
   (every clip: matched, abstained or skipped, and why). Seconds; always rerun,
   so new voting settings apply to cached embeddings.
4. ``score`` (annotated roots only): ``score.json``, the contest metric.
5. ``report``: ``report.html`` with thumbnails in ``report/``.

``stages.json`` records the key of every finished stage (inputs, configs,
weights); a stage whose key is unchanged is skipped, a stage cut short by a
crash continues from its own cache. ``summary.json`` holds the counts and the
time per stage.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbox_sub.config import DetectorConfig, load_detector_config
from bbox_sub.infer import run_inference
from dataset.errors import DataError, Issue, IssueLog
from dataset.jsonio import digest, file_stamp, write_json_atomic
from dataset.layout import load_dataset
from dataset.records import Dataset
from dataset.runtime import pick_device
from dataset.score import load_result, score, write_result
from metric_sub.config import EmbedderConfig, load_embedder_config
from metric_sub.data import ground_truth_crops
from metric_sub.embed import boxes_document_to_refs, load_embeddings, load_runner, model_key, run_embedding
from metric_sub.match import MatchConfig, load_match_config, match_embeddings

log = logging.getLogger(__name__)

STAGES = ("detect", "embed", "match", "score", "report")
SKIPPED = "skipped: "
ModelSpec = tuple[str | Path | DetectorConfig | EmbedderConfig, str | Path | None]
"""A config (bundled name, YAML path or loaded config) and its weights (``None``: ImageNet init, Lite only)."""

DEFAULT_EMBEDDERS: tuple[ModelSpec, ...] = (("lite0", None), ("lite1", None), ("lite2", None))


@dataclass
class PipelineResult:
    """What a run produced; ``score`` is the contest metric's report dict when the root is annotated.

    ``decisions`` maps every clip to what happened (matched, abstained with
    the reason, or skipped); ``skipped`` maps every unreadable file to why.
    """

    out_dir: Path
    result_path: Path | None
    result: dict[str, dict] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    score: dict[str, Any] | None = None
    report_path: Path | None = None
    stopped_after: str | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """Counts of matched / abstained / skipped clips with their reasons, and the time per stage."""
        skipped = [v for v, why in self.decisions.items() if why.startswith(SKIPPED)]
        abstained = {v: why for v, why in self.decisions.items() if v not in self.result and v not in skipped}
        return {
            "clips": len(self.decisions), "matched": len(self.result), "abstained": len(abstained),
            "skipped": len(skipped),
            "abstain_reasons": dict(Counter(_reason_kind(why) for why in abstained.values()).most_common()),
            "skipped_files": dict(self.skipped),
            "stage_seconds": {k: round(v, 2) for k, v in self.stage_seconds.items()},
            "score": None if self.score is None else round(self.score["final"], 4),
        }


def _reason_kind(reason: str) -> str:
    """A reason without its numbers and ids, for counting."""
    words = reason.split(": ", 1)[-1] if reason.startswith("item ") else reason
    return words.split(" (")[0].split(" at distance")[0]


class StageLog:
    """``stages.json``: the key of each finished stage, so unchanged work is skipped on a rerun."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, stage: str, key: str) -> bool:
        return self.keys.get(stage) == key

    def finish(self, stage: str, key: str) -> None:
        self.keys[stage] = key
        write_json_atomic(self.path, self.keys, indent=1)


def _detector_config(spec: str | Path | DetectorConfig) -> DetectorConfig:
    return spec if isinstance(spec, DetectorConfig) else load_detector_config(spec)


def _embedder_config(spec: str | Path | EmbedderConfig) -> EmbedderConfig:
    return spec if isinstance(spec, EmbedderConfig) else load_embedder_config(spec)


def _weights(value: str | Path | None) -> Path | None:
    return None if value in (None, "-", "") else Path(value)


def _issue(entry: dict) -> Issue:
    return Issue(**entry)


def _skipped(issues: IssueLog) -> dict[str, str]:
    return {issue.path: issue.problem for issue in issues.errors}


def run_pipeline(data_roots: Path | str | Sequence[Path | str], out_dir: Path | str,
                 detector: ModelSpec | None = None, embedders: Sequence[ModelSpec] = DEFAULT_EMBEDDERS,
                 match_config: MatchConfig | Path | str | None = None, device: str = "auto",
                 ground_truth_boxes: bool = False, stop_after: str | None = None, report: bool = True,
                 progress: bool = True) -> PipelineResult:
    """Run (or resume) every stage on ``data_roots`` into ``out_dir``; see the module docstring.

    ``stop_after`` ends the run after the named stage (the rest resume later).
    Bad inputs (a corrupt clip or image) are skipped and listed in the result.
    """
    roots = [Path(data_roots)] if isinstance(data_roots, (str, Path)) else [Path(r) for r in data_roots]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if detector is None and not ground_truth_boxes:
        raise ValueError("give a detector (config, weights), or ground_truth_boxes=True for matching only")
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after={stop_after!r}: not one of {STAGES}")
    config = match_config if isinstance(match_config, MatchConfig) else load_match_config(match_config)
    torch_device = pick_device(device)
    issues = IssueLog()
    data = load_dataset(roots, issues)
    stages = StageLog(out / "stages.json")
    outcome = PipelineResult(out, None)

    def timed(name: str, index: int) -> _Stage:
        return _Stage(name, index, outcome.stage_seconds)

    with timed("detect", 1):
        refs = _detect_stage(data, roots, out, detector, ground_truth_boxes, str(torch_device), issues, stages,
                             progress)
    outcome.skipped = _skipped(issues)
    if stop_after == "detect":
        outcome.stopped_after = "detect"
        return outcome

    with timed("embed", 2):
        embed_dir = out / "embed"
        specs = [(_embedder_config(c), _weights(w)) for c, w in embedders]
        key = digest([r.to_json() for r in refs], [model_key(c, w, torch_device) for c, w in specs])
        if not (stages.done("embed", key) and (embed_dir / "embeddings.json").is_file()):
            runners = [load_runner(c, w, torch_device) for c, w in specs]
            # Clips are decoded again for their crops, with as many threads as the detector used.
            workers = _detector_config(detector[0]).infer.decode_workers if detector else 2
            # Small chunks: finer resume points and a progress bar whose ETA means something.
            run_embedding(runners, refs, embed_dir, sources_per_chunk=16, workers=workers, progress=progress)
            stages.finish("embed", key)
        embeddings, meta = load_embeddings(embed_dir)
        issues.extend(IssueLog([_issue(i) for i in meta["issues"]]))  # crops that could not be read
    outcome.skipped = _skipped(issues)
    if stop_after == "embed":
        outcome.stopped_after = "embed"
        return outcome

    with timed("match", 3):
        skipped_clips = {v.video_id: outcome.skipped[str(v.path)] for v in data.videos.values()
                         if str(v.path) in outcome.skipped}
        matched = match_embeddings(embeddings, meta["rows"], config, torch_device,
                                   clips=[v for v in data.videos if v not in skipped_clips])
        decisions = {**matched.decisions, **{v: SKIPPED + why for v, why in skipped_clips.items()}}
        outcome.decisions = dict(sorted(decisions.items()))
        outcome.result_path = write_result(out / "result.json", matched.result)
        outcome.result = json.loads(outcome.result_path.read_text())
        write_json_atomic(out / "decisions.json", outcome.decisions, indent=1)

    report_obj = None
    if data.annotated and stop_after != "match":
        with timed("score", 4):
            report_obj = score(load_result(outcome.result_path), data)
            outcome.score = report_obj.to_dict()
            write_json_atomic(out / "score.json", outcome.score, indent=1)

    if report and stop_after not in ("match", "score"):
        from metric_sub.report import write_report

        with timed("report", 5):
            outcome.report_path = write_report(out, data, outcome, report_obj, matched.pairs)
    write_json_atomic(out / "summary.json", outcome.summary, indent=1)
    return outcome


class _Stage:
    """Logs a stage's start and end and records its wall time."""

    def __init__(self, name: str, index: int, seconds: dict[str, float]) -> None:
        self.name, self.index, self.seconds = name, index, seconds

    def __enter__(self) -> _Stage:
        log.info("[%d/%d] %s", self.index, len(STAGES), self.name)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds[self.name] = time.perf_counter() - self.started
        log.info("[%d/%d] %s: %.1f s", self.index, len(STAGES), self.name, self.seconds[self.name])


def _detect_stage(data: Dataset, roots: list[Path], out: Path, detector: ModelSpec | None, ground_truth: bool,
                  device: str, issues: IssueLog, stages: StageLog, progress: bool) -> list:
    """Boxes of every shop image and sampled clip frame, as crop refs (skips recorded in ``issues``)."""
    if ground_truth or detector is None:
        return ground_truth_crops(data, min_frame=0, include_unlabelled=True)
    cfg, weights = _detector_config(detector[0]), Path(detector[1])
    boxes_path = out / "boxes.json"
    key = digest([str(r.resolve()) for r in roots], cfg.model_dump(mode="json"), file_stamp(weights))
    if stages.done("detect", key) and boxes_path.is_file():
        document = json.loads(boxes_path.read_text())
    else:
        document = run_inference(cfg, weights, roots, boxes_path, device, IssueLog(), progress)
        stages.finish("detect", key)
    for skipped in document["skipped"]:
        issues.error(DataError(skipped["path"], skipped["problem"]))
    return boxes_document_to_refs(document, data, issues, str(boxes_path))


def format_summary(result: PipelineResult) -> str:
    """The end-of-run summary for the terminal."""
    s = result.summary
    lines = [f"clips {s['clips']}: matched {s['matched']}, abstained {s['abstained']}, skipped {s['skipped']}"]
    lines += [f"  abstained: {n} x {why}" for why, n in s["abstain_reasons"].items()]
    lines += [f"  skipped {path}: {why}" for path, why in s["skipped_files"].items()]
    lines.append("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["stage_seconds"].items()))
    if result.score is not None:
        levels = result.score["levels"]
        lines.append(f"contest score {result.score['final']:.4f} (F1 item {levels['item']['f1']:.3f}, "
                     f"frame {levels['frame']['f1']:.3f}, box {levels['box']['f1']:.3f})")
    if result.result_path is not None:
        lines.append(f"result: {result.result_path}")
    if result.report_path is not None:
        lines.append(f"report: {result.report_path}")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m metric_sub.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="dataset root(s), then the output folder")
    parser.add_argument("--detector", nargs=2, metavar=("CFG", "WEIGHTS"), help="detector config and checkpoint")
    parser.add_argument("--detector-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a detector config value, e.g. infer.video_score_thresh=0.5")
    parser.add_argument("--ground-truth-boxes", action="store_true",
                        help="use the annotated boxes instead of a detector (matching-only evaluation)")
    parser.add_argument("--embedders", nargs="+", metavar="CFG WEIGHTS",
                        help="config and checkpoint pairs; '-' keeps a Lite config's ImageNet weights "
                             "(default: lite0 - lite1 - lite2 -)")
    parser.add_argument("--embedder-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value in every embedder config, e.g. data.bucket_scale=0.5")
    parser.add_argument("--match", type=Path, default=None, help="match config YAML (default: the bundled one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a match config value, e.g. vote.cutoff=1.0")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    parser.add_argument("--stop-after", choices=STAGES, help="stop after this stage (a rerun resumes)")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("need at least one dataset root and the output folder")
    if args.embedders and len(args.embedders) % 2:
        parser.error("--embedders takes CFG WEIGHTS pairs")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    embedders = (list(zip(args.embedders[::2], args.embedders[1::2])) if args.embedders
                 else list(DEFAULT_EMBEDDERS))
    try:
        config = load_match_config(args.match, args.overrides)
        embedders = [(load_embedder_config(name, args.embedder_set), weights) for name, weights in embedders]
        detector = ((load_detector_config(args.detector[0], args.detector_set), args.detector[1])
                    if args.detector else None)
        result = run_pipeline(args.paths[:-1], args.paths[-1], detector,
                              embedders, config, args.device, args.ground_truth_boxes, args.stop_after,
                              not args.no_report, not args.no_progress)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.stopped_after:
        print(f"stopped after {result.stopped_after}; run again to resume")
        return 0
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
