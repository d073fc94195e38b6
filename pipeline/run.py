"""The whole matcher: dataset roots in, ``result.json`` out, every source cached so a killed run resumes.

``python -m pipeline DATA_ROOT [DATA_ROOT ...] OUT_DIR [--detector CFG WEIGHTS]
[--embedders CFG WEIGHTS [CFG WEIGHTS ...]] [--embedder-set data.bucket_scale=0.5] [--match match.yaml]
[--set vote.cutoff=1.0]`` (``./run.sh`` runs it)

Public API (the REST service and the benchmarks call it)::

    result = run_pipeline(["data/test"], "runs/test", detector=("tiny", "det/model_final.pth"),
                          embedders=[("lite0", None), ("lite1", None)], device="auto")
    result.result_path, result.result, result.decisions, result.summary, result.score

Stages and what each leaves in ``OUT_DIR``:

1. ``encode``: every item folder and clip through the one per-source path (``pipeline.source``: read once,
   detect, crop, embed), each source's boxes and vectors written together under ``sources/``
   (``pipeline.store``), then gathered into ``boxes.json`` (``dataset.boxes_file``; the detector's boxes) and
   ``embed/embeddings.npy`` + ``embed/embeddings.json`` (``metric_sub.embed``). Without a detector,
   ``ground_truth_boxes=True`` embeds the annotated boxes instead (a matching-only figure).
2. ``match``: ``result.json`` (seed-solution.md 2.1) and ``decisions.json`` (every clip: matched, abstained or
   skipped, and why). Seconds; always rerun, so new voting settings apply to stored vectors.
3. ``score`` (annotated roots only): ``score.json``, the contest metric.
4. ``report``: ``report.html`` with thumbnails in ``report/``.

``stages.json`` records the key of every finished stage (inputs, configs, weights) and what computing it took;
a stage whose key is unchanged is skipped, and a run cut short continues with the sources not yet written.
``summary.json`` holds the counts, every skipped file, missing frame and warning, and per stage its wall time in
this run, whether it was cached (with the time it took when computed) or resumed (how many sources an earlier
run had finished), and its resident memory (peak, at its end, growth).

Inputs are checked before any work (``pipeline.checks``). The command line exits with 0 when the run finished
(or stopped where asked), 2 when an input is wrong (one line naming it), 1 when the run failed on the way (a file
that could not be written, one line naming it), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.contrib.logging import logging_redirect_tqdm

from bbox_sub.config import DetectorConfig, load_detector_config
from dataset.errors import DataError, Issue, IssueLog
from dataset.frames import BACKENDS
from dataset.jsonio import digest, write_json_atomic
from dataset.layout import load_dataset
from dataset.memory import MemoryMeter, StageMemory
from dataset.records import Dataset
from dataset.score import load_result, score, write_result
from metric_sub.config import EmbedderConfig, load_embedder_config
from metric_sub.embed import load_embeddings
from metric_sub.match import MatchConfig, load_match_config, match_embeddings
from pipeline.checks import check_config_name, check_inputs, prepare_out_dir
from pipeline.encode import (SOURCES_PER_GROUP, DetectorSpec, EmbedderSpec, encode_sources, gather, load_encoder,
                             models_key, write_outputs)
from pipeline.model_set import DEFAULT_MODEL_SET, MAKE_DEFAULT, REPO, ModelSet, load_model_set
from pipeline.source import annotated_sources, dataset_sources
from pipeline.store import SourceStore
from runtime.allocator import release_freed_memory
from runtime.device import pick_device

log = logging.getLogger(__name__)

STAGES = ("encode", "match", "score", "report")
SKIPPED = "skipped: "
ModelSpec = tuple[str | Path | DetectorConfig | EmbedderConfig, str | Path | None]
"""A config (bundled name, YAML path or loaded config) and its weights (``None``: ImageNet init, Lite only)."""

@dataclass
class StageRecord:
    """What one stage cost in this run, and whether it computed anything.

    A cached stage keeps, in ``computed``, the seconds and resumed files of
    the run that computed it, so a rerun does not pass off the time it took
    to find the cache as the stage's cost.
    """

    seconds: float = 0.0
    cached: bool = False
    resumed_sources: int = 0
    computed: dict[str, Any] | None = None
    memory: StageMemory | None = None
    steps: dict[str, float] | None = None
    """Seconds per step inside the stage, where it has steps (encode: read, detect, embed, write)."""
    engine: dict[str, Any] | None = None
    """Where the stage ran, when not in this process (encode on Ray: the cluster, the actor pool, and how many
    actors encoded how many sources on which node)."""

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"seconds": round(self.seconds, 2), "cached": self.cached,
                                  "resumed_sources": self.resumed_sources}
        if self.steps is not None:
            record["steps"] = self.steps
        if self.engine is not None:
            record["engine"] = self.engine
        if self.cached:
            record["computed"] = self.computed
        if self.memory is not None:
            record.update(self.memory.to_json())
        return record

    def describe(self) -> str:
        """``12.3 s``, ``0.1 s (cached; computed in 85.5 s)`` or ``40.2 s (resumed: 12 files found done)``."""
        text = f"{self.seconds:.1f} s"
        if self.cached:
            took = (self.computed or {}).get("seconds")
            text += " (cached" + ("" if took is None else f"; computed in {took:.1f} s") + ")"
        elif self.resumed_sources:
            text += f" (resumed: {self.resumed_sources} files found done)"
        return text


@dataclass
class PipelineResult:
    """What a run produced; ``score`` is the contest metric's report dict when the root is annotated.

    ``decisions`` maps every clip to what happened (matched, abstained with
    the reason, or skipped); ``skipped`` maps every unreadable file to why;
    ``missing_frames`` maps a clip to the sampled frames its file does not
    hold; ``warnings`` maps a file to the parts of it that were dropped.
    """

    out_dir: Path
    result_path: Path | None
    result: dict[str, dict] = field(default_factory=dict)
    decisions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing_frames: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    score: dict[str, Any] | None = None
    report_path: Path | None = None
    stopped_after: str | None = None

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Wall seconds per stage in this run (a cached stage: the time to find its cache)."""
        return {name: record.seconds for name, record in self.stages.items()}

    @property
    def summary(self) -> dict[str, Any]:
        """Counts of matched / abstained / skipped clips with their reasons, every problem, and per stage its
        time and memory."""
        skipped = [v for v, why in self.decisions.items() if why.startswith(SKIPPED)]
        abstained = {v: why for v, why in self.decisions.items() if v not in self.result and v not in skipped}
        return {
            "clips": len(self.decisions), "matched": len(self.result), "abstained": len(abstained),
            "skipped": len(skipped),
            "abstain_reasons": dict(Counter(_reason_kind(why) for why in abstained.values()).most_common()),
            "skipped_files": dict(self.skipped),
            "missing_frames": dict(self.missing_frames),
            "warnings": dict(self.warnings),
            "stage_seconds": {k: round(v, 2) for k, v in self.stage_seconds.items()},
            "stages": {name: record.to_json() for name, record in self.stages.items()},
            "peak_rss_mib": None if self.peak_rss_mib is None else round(self.peak_rss_mib, 1),
            "score": None if self.score is None else round(self.score["final"], 4),
        }


def _reason_kind(reason: str) -> str:
    """A reason without its numbers and ids, for counting."""
    words = reason.split(": ", 1)[-1] if reason.startswith("item ") else reason
    return words.split(" (")[0].split(" at distance")[0]


class StageLog:
    """``stages.json``: per finished stage the key of its inputs, so unchanged work is skipped on a rerun, and
    what computing it took (``seconds``, ``resumed_sources``), so a rerun can still report it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = json.loads(path.read_text()) if path.is_file() else {}
        # Files written before the timings held the bare key.
        self.entries: dict[str, dict[str, Any]] = {k: v if isinstance(v, dict) else {"key": v}
                                                   for k, v in raw.items()}

    def done(self, stage: str, key: str) -> bool:
        return self.entries.get(stage, {}).get("key") == key

    def computed(self, stage: str) -> dict[str, Any]:
        """What the run that computed ``stage`` recorded (seconds, resumed files), where known."""
        entry = self.entries.get(stage, {})
        return {"seconds": entry.get("seconds"), "resumed_sources": entry.get("resumed_sources", 0)}

    def finish(self, stage: str, key: str, seconds: float, resumed_sources: int) -> None:
        self.entries[stage] = {"key": key, "seconds": round(seconds, 2), "resumed_sources": resumed_sources}
        write_json_atomic(self.path, self.entries, indent=1)


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


def _embedder_weights_needed(specs: Sequence[tuple[EmbedderConfig, Path | None]]) -> None:
    """A random-init embedder without a checkpoint would fail only after detection; refuse it now."""
    for config, weights in specs:
        if weights is None and config.model.init == "random":
            raise ValueError(f"embedder config {config.name!r} starts from random weights: give its trained "
                             "checkpoint instead of '-'")


def run_pipeline(data_roots: Path | str | Sequence[Path | str], out_dir: Path | str, *,
                 detector: ModelSpec | None = None, embedders: Sequence[ModelSpec] | None = None,
                 models: ModelSet | Path | str | None = None,
                 match_config: MatchConfig | Path | str | None = None, device: str = "auto",
                 ground_truth_boxes: bool = False, stop_after: str | None = None, report: bool = True,
                 sources_per_group: int = SOURCES_PER_GROUP, video_backend: str = "auto", progress: bool = True,
                 engine: Literal["local", "ray"] = "local", ray_address: str | None = None) -> PipelineResult:
    """Run (or resume) every stage on ``data_roots`` into ``out_dir``; see the module docstring.

    ``stop_after`` ends the run after the named stage (the rest resume later). ``sources_per_group`` sources
    are embedded together and written when done: fewer hold less memory and resume at finer steps, more fill
    the embedders' batches better. ``engine="ray"`` encodes on a Ray cluster (``pipeline.ray_engine``): the
    one at ``ray_address``, or a local instance started for the run; the stored sources are the same.
    The models not given (``detector``, ``embedders``) come from the model set ``models`` (a
    ``pipeline.model_set`` file; default: the bundled one the demo writes), as does its match config when
    ``match_config`` is not given. Wrong inputs raise before anything is written (``pipeline.checks``);
    bad files inside a root (a corrupt clip or image) are skipped and listed
    in the result.
    """
    roots = [Path(data_roots)] if isinstance(data_roots, (str, Path)) else [Path(r) for r in data_roots]
    out = Path(out_dir)
    if embedders is None or (detector is None and not ground_truth_boxes):
        model_set = models if isinstance(models, ModelSet) else load_model_set(models)
        detector = detector or (model_set.detector.config, model_set.detector.weights)
        embedders = embedders or [(e.config, e.weights) for e in model_set.embedders]
        match_config = match_config if match_config is not None else model_set.match
    if sources_per_group < 1:
        raise ValueError(f"sources_per_group={sources_per_group}: need at least 1")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine={engine!r}: not 'local' or 'ray'")
    if ray_address and engine != "ray":
        raise ValueError("ray_address needs engine='ray'")
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after={stop_after!r}: not one of {STAGES}")
    config = match_config if isinstance(match_config, MatchConfig) else load_match_config(match_config)
    specs = [(_embedder_config(c), _weights(w)) for c, w in embedders]
    detector = None if detector is None or ground_truth_boxes else (_detector_config(detector[0]),
                                                                    Path(detector[1]))
    check_inputs(roots, out, detector_weights=None if detector is None else detector[1],
                 embedder_weights=[w for _, w in specs], device=device)
    _embedder_weights_needed(specs)
    prepare_out_dir(out)
    torch_device = pick_device(device)
    issues = IssueLog()
    data = load_dataset(roots, issues)
    stages = StageLog(out / "stages.json")
    outcome = PipelineResult(out, None)
    meter = MemoryMeter()

    def timed(name: str) -> _Stage:
        return _Stage(name, outcome, meter)

    with timed("encode") as stage:
        embeddings, meta = _encode_stage(data, out, detector, specs, torch_device, stages, stage,
                                         group_size=sources_per_group, video_backend=video_backend,
                                         progress=progress, engine=engine,
                                         ray_address=ray_address, asked_device=device)
        issues.extend(IssueLog([_issue(i) for i in meta["issues"]]))
        outcome.missing_frames = {m["video_id"]: {"count": len(m["frames"]), "frames": m["frames"],
                                                  "file_frames": m["file_frames"]}
                                  for m in meta.get("missing_frames", [])}
    _collect_issues(outcome, issues)
    if stop_after == "encode":
        outcome.stopped_after = "encode"
        return outcome

    with timed("match"):
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
        with timed("score"):
            report_obj = score(load_result(outcome.result_path), data)
            outcome.score = report_obj.to_dict()
            write_json_atomic(out / "score.json", outcome.score, indent=1)

    if report and stop_after not in ("match", "score"):
        from pipeline.report import write_report

        with timed("report"):
            outcome.report_path = write_report(out, data, outcome, report_obj, matched.pairs)
    outcome.peak_rss_mib = meter.process_peak_mib
    write_json_atomic(out / "summary.json", outcome.summary, indent=1)
    return outcome


class _Stage:
    """Logs a stage's start and end, and records its wall time and memory in ``outcome.stages``.

    Freed memory the allocator kept during the stage is handed back at its end
    (``release_freed_memory``), so one stage's peak does not stay resident
    through the next.
    """

    def __init__(self, name: str, outcome: PipelineResult, meter: MemoryMeter) -> None:
        self.name, self.index, self.outcome, self.meter = name, STAGES.index(name) + 1, outcome, meter
        self.record = outcome.stages[name] = StageRecord()

    def __enter__(self) -> _Stage:
        log.info("[%d/%d] %s", self.index, len(STAGES), self.name)
        self.meter.start()
        self.started = time.perf_counter()
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __exit__(self, *exc: object) -> None:
        self.record.seconds = self.elapsed()
        release_freed_memory()
        self.record.memory = self.meter.stop()
        log.info("[%d/%d] %s: %s", self.index, len(STAGES), self.name, self.record.describe())


def _collect_issues(outcome: PipelineResult, issues: IssueLog) -> None:
    """Skipped files and dropped parts of files, as the summary lists them."""
    outcome.skipped = _skipped(issues)
    warnings: dict[str, list[str]] = {}
    for issue in issues.warnings:
        warnings.setdefault(issue.path, []).append(issue.problem)
    outcome.warnings = warnings


def _encode_stage(data: Dataset, out: Path, detector: DetectorSpec | None, specs: list[EmbedderSpec],
                  device: Any, stages: StageLog, stage: _Stage, *, group_size: int, progress: bool,
                  video_backend: str = "auto", engine: str = "local", ray_address: str | None = None,
                  asked_device: str = "auto") -> tuple[Any, dict]:
    """The encode stage in this process, or with its sources encoded on a Ray cluster."""
    if engine != "ray":
        return _encode_sources(data, out, detector, specs, device, stages, stage, group_size=group_size,
                               video_backend=video_backend, progress=progress)
    try:
        from pipeline.ray_engine import ray_cluster
    except ModuleNotFoundError as exc:
        if exc.name != "ray" and not (exc.name or "").startswith("ray."):
            raise
        raise ValueError("engine 'ray' needs Ray: pip install 'shopmatch[ray]' (or the lock, requirements.txt)") \
            from exc

    with ray_cluster(address=ray_address, device=asked_device) as cluster:
        return _encode_sources(data, out, detector, specs, device, stages, stage, group_size=group_size,
                               video_backend=video_backend, progress=progress, cluster=cluster)


def _encode_sources(data: Dataset, out: Path, detector: DetectorSpec | None, specs: list[EmbedderSpec],
                    device: Any, stages: StageLog, stage: _Stage, *, group_size: int, progress: bool,
                    video_backend: str = "auto", cluster: Any = None) -> tuple[Any, dict]:
    """Every source's boxes and vectors (the sources already stored are read back, not recomputed)."""
    sources = annotated_sources(data) if detector is None else dataset_sources(data, detector[0].infer.frames)
    models = models_key(detector, specs, device) if cluster is None else cluster.models_key(detector, specs)
    store = SourceStore(out / "sources", models)
    keys = [store.key(s) for s in sources]
    key = digest(keys)
    embed_dir = out / "embed"
    if stages.done("encode", key) and (embed_dir / "embeddings.json").is_file():
        stage.record.cached, stage.record.computed = True, stages.computed("encode")
        log.info("encode: cached in %s (the inputs, configs and weights are unchanged)", embed_dir)
        return load_embeddings(embed_dir)
    todo = [(s, k) for s, k in zip(sources, keys) if not store.has(k)]
    stage.record.resumed_sources = len(sources) - len(todo)
    if stage.record.resumed_sources:
        log.info("resuming: %d of %d sources found done in %s; skipped", stage.record.resumed_sources,
                 len(sources), store.folder)
    if cluster is not None:
        report = cluster.encode(todo, store, detector=detector, embedders=specs, group_size=group_size,
                                video_backend=video_backend, progress=progress)
        stage.record.engine = report.engine
    else:
        # The models load even when every source is stored: weights that cannot be loaded are named now, not on
        # the first run that has something new to encode.
        encoder = load_encoder(detector=detector, embedders=specs, device=device)
        workers = detector[0].infer.decode_workers if detector else 2
        report = encode_sources(encoder, todo, store, workers=workers, group_size=group_size,
                                video_backend=video_backend, progress=progress)
        del encoder
    stage.record.steps = {name: round(value, 2) for name, value in report.seconds.items()}
    gathered = gather(sources, keys, store, report.failures)
    resumed = gathered.resumed({k for _, k in todo})
    write_outputs(out, gathered, detector=detector, embedders=specs, resumed=resumed)
    stages.finish("encode", key, stage.elapsed(), stage.record.resumed_sources)
    return load_embeddings(embed_dir)


def format_summary(result: PipelineResult) -> str:
    """The end-of-run summary for the terminal."""
    s = result.summary
    lines = [f"clips {s['clips']}: matched {s['matched']}, abstained {s['abstained']}, skipped {s['skipped']}"]
    lines += [f"  abstained: {n} x {why}" for why, n in s["abstain_reasons"].items()]
    lines += [f"  skipped {path}: {why}" for path, why in s["skipped_files"].items()]
    lines += [f"  clip {clip}: frames {m['frames']} not in the file ({m['file_frames']} frames); no boxes there"
              for clip, m in s["missing_frames"].items()]
    if s["warnings"]:
        lines.append(f"  {sum(map(len, s['warnings'].values()))} warnings on {len(s['warnings'])} files "
                     f"(listed in summary.json)")
    lines.append("time per stage: " + ", ".join(f"{k} {r.describe()}" for k, r in result.stages.items()))
    peaks = [f"{k} {r.memory.peak_rss_mib:.0f}" for k, r in result.stages.items() if r.memory is not None]
    if peaks and result.peak_rss_mib is not None:
        lines.append(f"peak memory (MiB): {', '.join(peaks)}; whole run {result.peak_rss_mib:.0f}")
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
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="dataset root(s), then the output folder")
    parser.add_argument("--models", type=Path, metavar="FILE",
                        help="model set whose detector, embedders and match config are used where not given "
                             f"(default: the bundled one, {DEFAULT_MODEL_SET.relative_to(REPO)}, which "
                             f"`{MAKE_DEFAULT}` writes)")
    parser.add_argument("--detector", nargs=2, metavar=("CFG", "WEIGHTS"), help="detector config and checkpoint")
    parser.add_argument("--detector-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a detector config value, e.g. infer.video_score_thresh=0.5")
    parser.add_argument("--ground-truth-boxes", action="store_true",
                        help="use the annotated boxes instead of a detector (matching-only evaluation)")
    parser.add_argument("--embedders", nargs="+", metavar="CFG WEIGHTS",
                        help="config and checkpoint pairs; '-' keeps a Lite config's ImageNet weights")
    parser.add_argument("--embedder-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value in every embedder config, e.g. data.bucket_scale=0.5")
    parser.add_argument("--match", type=Path, default=None,
                        help="match config YAML (default: the model set's, else the bundled one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a match config value, e.g. vote.cutoff=1.0")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    parser.add_argument("--video-backend", choices=("auto", *BACKENDS),
                        default=os.environ.get("SHOPMATCH_VIDEO_BACKEND", "auto"),
                        help="library decoding the clips (default $SHOPMATCH_VIDEO_BACKEND, else auto: decord, "
                             "then OpenCV for a file decord cannot read)")
    parser.add_argument("--stop-after", choices=STAGES, help="stop after this stage (a rerun resumes)")
    parser.add_argument("--sources-per-group", type=int, default=SOURCES_PER_GROUP, metavar="N",
                        help="items and clips embedded together and written when done: fewer hold less memory "
                             f"and resume at finer steps (default {SOURCES_PER_GROUP})")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where the encode stage runs: in this process, or on a Ray cluster (needs the ray "
                             "extra: pip install shopmatch[ray])")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="with --engine ray: the cluster to join (HOST:PORT of `ray start --head`, or auto); "
                             "without it a local Ray instance is started for the run")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("need at least one dataset root and the output folder")
    if args.embedders and len(args.embedders) % 2:
        parser.error("--embedders takes CFG WEIGHTS pairs")
    if args.sources_per_group < 1:
        parser.error("--sources-per-group must be at least 1")
    if args.ray_address and args.engine != "ray":
        parser.error("--ray-address needs --engine ray")
    if args.video_backend not in ("auto", *BACKENDS):  # a default from the environment skips argparse's check
        parser.error(f"SHOPMATCH_VIDEO_BACKEND={args.video_backend!r}: expected auto or one of {BACKENDS}")
    return args


def _load_models(args: argparse.Namespace) -> tuple[ModelSpec | None, list[ModelSpec], Path | None]:
    """The detector and embedder configs with their overrides, and the match config file: what is not named
    comes from the model set. A config name that is neither a file nor bundled fails naming it."""
    detector_pair = tuple(args.detector) if args.detector else None
    pairs = list(zip(args.embedders[::2], args.embedders[1::2])) if args.embedders else None
    match = args.match
    if pairs is None or (detector_pair is None and not args.ground_truth_boxes):
        model_set = load_model_set(args.models)
        if detector_pair is None and not args.ground_truth_boxes:
            detector_pair = (model_set.detector.config, model_set.detector.weights)
        pairs = pairs or [(e.config, e.weights) for e in model_set.embedders]
        match = match or model_set.match
    for name, _ in pairs:
        check_config_name(name, "embedder")
    embedders = [(load_embedder_config(name, args.embedder_set), weights) for name, weights in pairs]
    if detector_pair is None:
        return None, embedders, match
    check_config_name(detector_pair[0], "detector")
    return (load_detector_config(detector_pair[0], args.detector_set), detector_pair[1]), embedders, match


def _os_problem(exc: OSError) -> str:
    """An operating-system error as one line naming the file."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    try:
        detector, embedders, match = _load_models(args)
        config = load_match_config(match, args.overrides)
        with logging_redirect_tqdm():
            result = run_pipeline(args.paths[:-1], args.paths[-1], detector=detector, embedders=embedders,
                                  match_config=config, device=args.device,
                                  ground_truth_boxes=args.ground_truth_boxes, stop_after=args.stop_after,
                                  report=not args.no_report, sources_per_group=args.sources_per_group,
                                  video_backend=args.video_backend,
                                  progress=not args.no_progress, engine=args.engine,
                                  ray_address=args.ray_address)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_os_problem(exc)} (the run stopped; run again to resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run again to resume", file=sys.stderr)
        return 130
    if result.stopped_after:
        print(f"stopped after {result.stopped_after}; run again to resume")
        return 0
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
