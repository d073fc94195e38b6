"""A batch run's stored boxes and vectors into the gallery, without running a model again.

``python -m service rebuild --run OUT_DIR`` reads what ``run.sh`` wrote (``boxes.json``, ``embed/``) and makes it
the gallery, so one batch run fills both ``result.json`` and the service. The run must have used the service's
models: the same detector weights and inference settings, the same embedder networks and weights (compared by
content); otherwise its vectors would not be comparable with the queries the service embeds, and it is refused
naming the first difference.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bbox_sub.config import load_detector_config
from dataset.boxes_file import load_boxes
from dataset.errors import DataError
from dataset.jsonio import file_digest
from metric_sub.embed import load_embeddings
from pipeline.model_set import ModelSet
from service.gallery import SourceBoxes


def _weights_digest(run_dir: Path, weights: str | None) -> str | None:
    if weights is None:
        return None
    try:
        return file_digest(weights)
    except OSError as exc:
        raise DataError(run_dir, f"the run's weights {weights} cannot be read to compare them: {exc.strerror}") from None


def check_run_models(run_dir: Path, boxes: Any, meta: dict, identity: dict, models: ModelSet) -> None:
    """Refuse a run made with other models than ``identity`` (``service.engine.model_identity``)."""
    det_name, det_digest = identity["detector"]
    settings = load_detector_config(models.detector.config).infer.model_dump(mode="json")
    if boxes.config != det_name or _weights_digest(run_dir, boxes.weights) != det_digest:
        raise DataError(run_dir, f"the run's detector ({boxes.config}, {boxes.weights}) is not the service's "
                                 f"({det_name}, {models.detector.weights})")
    differ = sorted(k for k in settings if boxes.settings.get(k) != settings[k])
    if differ:
        raise DataError(run_dir, f"the run's detector inference settings differ from the service's: {differ}")
    run_models = meta["models"]
    if len(run_models) != len(identity["embedders"]):
        raise DataError(run_dir, f"the run has {len(run_models)} embedders, the service {len(identity['embedders'])}")
    for run_model, (name, network, digest) in zip(run_models, identity["embedders"]):
        ran = {k: v for k, v in run_model["config"].items() if k not in ("embed", "train")}
        if run_model["name"] != name or ran != network or _weights_digest(run_dir, run_model["weights"]) != digest:
            raise DataError(run_dir, f"the run's embedder {run_model['name']} ({run_model['weights']}) is not the "
                                     f"service's {name}")


def run_sources(run_dir: Path | str, identity: dict, models: ModelSet) -> tuple[list[SourceBoxes], list[str]]:
    """Every item and clip a run encoded, as gallery entries, and the files it skipped (one line each)."""
    run_dir = Path(run_dir)
    if not (run_dir / "embed" / "embeddings.json").is_file():
        raise DataError(run_dir, "no embed/embeddings.json: not the output folder of a finished run.sh encode stage")
    if not (run_dir / "boxes.json").is_file():
        raise DataError(run_dir, "no boxes.json: a run on annotated boxes cannot fill a gallery of detected boxes")
    boxes = load_boxes(run_dir / "boxes.json")  # validated on read
    embeddings, meta = load_embeddings(run_dir / "embed")
    check_run_models(run_dir, boxes, meta, identity, models)
    rows_of: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, row in enumerate(meta["rows"]):
        rows_of[("item" if row["kind"] == "image" else "clip", row["source_id"])].append(index)
    problems: dict[str, list[str]] = defaultdict(list)
    for issue in meta["issues"]:
        problems[issue["path"]].append(f"{Path(issue['path']).name}: {issue['problem']}")
    entries = []
    for source in meta.get("sources", []):
        kind, source_id, files = source["kind"], source["source_id"], source["files"]
        rows = [meta["rows"][i] for i in rows_of[(kind, source_id)]]
        item = kind == "item"
        origin = str(Path(files[0]).parent) if item and files else (files[0] if files else "")
        entries.append(SourceBoxes(kind, source_id, origin,
                                   np.asarray(embeddings[rows_of[(kind, source_id)]], np.float32),
                                   [Path(r["path"]).stem if item else "" for r in rows],
                                   [-1 if item else int(r["frame"]) for r in rows],
                                   [tuple(r["box"]) for r in rows], [float(r["score"]) for r in rows],
                                   [int(r["group"]) for r in rows], int(source["pictures"]),
                                   [line for f in files for line in problems.get(f, [])]))
    listed = {f for s in meta.get("sources", []) for f in s["files"]}
    skipped = [line for path, lines in problems.items() if path not in listed for line in lines]
    return entries, skipped
