"""A static HTML report of a pipeline run, so a person can see at a glance why each clip got its answer.

``OUT_DIR/report.html`` opens in any browser without a server: a summary
table (counts, time and peak memory per stage, the contest score per level),
the problems found (skipped files, sampled frames a clip does not hold, dropped
parts of files), then one row per clip with the chosen frame (``frame_box`` drawn) beside the chosen shop image
(``item_box`` drawn), the distance, the decision and, on annotated roots,
right/wrong per level and the true item. Thumbnails are JPEG files in
``OUT_DIR/report/``. Written with the standard library only (``html.escape``).
"""
from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from dataset.errors import DataError
from dataset.frames import read_frames
from dataset.images import read_image, write_image
from dataset.records import Dataset
from dataset.score import ScoreReport
from dataset.score.metric import LEVELS
from metric_sub.vote import Candidate

if TYPE_CHECKING:
    from pipeline.run import PipelineResult

log = logging.getLogger(__name__)

THUMB_HEIGHT = 220
BOX_COLOUR = (255, 40, 40)

STYLE = """
body{font-family:sans-serif;margin:16px;color:#222}
table{border-collapse:collapse;margin-bottom:18px}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f2f2f2}
.ok{background:#e3f6e3}.bad{background:#fbe3e3}.none{background:#f6f6f6}
img{height:%dpx;display:block}
""" % THUMB_HEIGHT


def thumbnail(image: np.ndarray, box: Sequence[int] | None, height: int = THUMB_HEIGHT) -> np.ndarray:
    """The image scaled to ``height`` with ``box`` (original pixels) drawn on it."""
    scale = height / image.shape[0]
    small = cv2.resize(image, (max(1, round(image.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)
    if box is not None:
        x1, y1, x2, y2 = (round(v * scale) for v in box)
        cv2.rectangle(small, (x1, y1), (x2, y2), BOX_COLOUR, 2)
    return small


def _shop_image(data: Dataset, item_id: str, img_name: str) -> Path | None:
    item = data.items.get(item_id)
    for image in item.images if item else ():
        if image.stem == img_name:
            return image.path
    return None


def _thumbs(out_dir: Path, data: Dataset, video_id: str, entry: dict) -> tuple[str, str]:
    """Relative paths of the frame and shop thumbnails of one prediction ('' where unreadable)."""
    folder = out_dir / "report"
    first = entry["result"][0]
    frame_name = shop_name = ""
    try:
        clip = read_frames(data.videos[video_id].path, [entry["frame_index"]])
        if clip.frames:
            write_image(folder / f"{video_id}_frame.jpg", thumbnail(clip.frames[0], first["frame_box"]), 85)
            frame_name = f"report/{video_id}_frame.jpg"
    except DataError as exc:
        log.warning("report: %s", exc)
    path = _shop_image(data, entry["item_id"], first["img_name"])
    if path is not None:
        try:
            write_image(folder / f"{video_id}_shop.jpg", thumbnail(read_image(path), first["item_box"]), 85)
            shop_name = f"report/{video_id}_shop.jpg"
        except DataError as exc:
            log.warning("report: %s", exc)
    return frame_name, shop_name


def _img(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">' if src else "<i>unavailable</i>"


def _summary_table(result: PipelineResult, report: ScoreReport | None) -> str:
    s = result.summary
    rows = [("clips", s["clips"]), ("matched", s["matched"]), ("abstained", s["abstained"]),
            ("skipped", s["skipped"])]
    rows += [(f"abstained: {why}", n) for why, n in s["abstain_reasons"].items()]
    finished = {stage: record for stage, record in result.stages.items() if record.memory is not None}
    rows += [(f"time {stage}", record.describe()) for stage, record in finished.items()]
    rows += [(f"peak memory {stage}", f"{record.memory.peak_rss_mib:.0f} MiB") for stage, record in finished.items()]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    parts = [f'<table id="summary">{body}</table>', _problems_table(s)]
    if report is not None:
        head = "<tr><th>level</th><th>P</th><th>R</th><th>F1</th><th>TP</th><th>FP</th><th>FN</th></tr>"
        lines = "".join(
            f"<tr><td>{name}</td><td>{st.precision:.3f}</td><td>{st.recall:.3f}</td><td>{st.f1:.3f}</td>"
            f"<td>{st.tp}</td><td>{st.fp}</td><td>{st.fn}</td></tr>"
            for name, st in ((n, report.levels[n]) for n in LEVELS))
        parts.append(f'<table id="score">{head}{lines}<tr><th colspan="3">final (0.2 item + 0.6 frame + 0.2 box)'
                     f'</th><td colspan="4"><b>{report.final:.4f}</b></td></tr></table>')
    return "\n".join(parts)


def _problems_table(summary: dict) -> str:
    """Every skipped file, clip with missing frames and dropped part of a file, one row each."""
    rows = [("skipped", path, why) for path, why in summary["skipped_files"].items()]
    rows += [("missing frames", f"clip {clip}", f"frames {m['frames']} not in the file ({m['file_frames']} "
              "frames); no boxes there") for clip, m in summary["missing_frames"].items()]
    rows += [("warning", path, why) for path, problems in summary["warnings"].items() for why in problems]
    if not rows:
        return '<table id="problems"><tr><th>problems</th><td>none</td></tr></table>'
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="problems"><tr><th>problem</th><th>where</th><th>what</th></tr>{body}</table>'


def write_report(out_dir: Path | str, data: Dataset, result: PipelineResult, report: ScoreReport | None = None,
                 pairs: Sequence[Candidate] = ()) -> Path:
    """Write ``report.html`` and its thumbnails for a finished run; returns the HTML path."""
    out_dir = Path(out_dir)
    (out_dir / "report").mkdir(parents=True, exist_ok=True)
    outcomes = {c.video_id: c for c in report.clips} if report is not None else {}
    distance = {p.video_id: p.distance for p in pairs}
    head = ["clip", "decision", "chosen frame", "chosen shop image", "distance"]
    if report is not None:
        head += ["truth", "item", "frame", "box", "why"]
    rows = []
    for video_id, decision in result.decisions.items():
        entry = result.result.get(video_id)
        outcome = outcomes.get(video_id)
        cells = [html.escape(video_id), html.escape(decision)]
        if entry is not None:
            frame_src, shop_src = _thumbs(out_dir, data, video_id, entry)
            first = entry["result"][0]
            cells += [f"{_img(frame_src, 'frame')}frame {entry['frame_index']} box {first['frame_box']}",
                      f"{_img(shop_src, 'shop')}item {html.escape(entry['item_id'])} / "
                      f"{html.escape(first['img_name'])} box {first['item_box']}",
                      f"{distance[video_id]:.3f}" if video_id in distance else "-"]
        else:
            cells += ["-", "-", "-"]
        css = "none"
        if report is not None:
            if outcome is not None:
                cells.append(html.escape(", ".join(outcome.truth_items) or "no catalogue item"))
                cells += ["&#10003;" if ok else "&#10007;" for ok in outcome.passed]
                cells.append(html.escape(outcome.reason))
                css = "ok" if all(outcome.passed) and entry else ("bad" if entry or outcome.has_gt else "none")
            else:
                cells += ["-"] * 5
        rows.append(f'<tr class="{css}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    document = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>shopmatch report</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>Clip to shop item matches</h1>\n"
        f"<p>{html.escape(', '.join(str(r) for r in data.roots))}</p>\n"
        f"{_summary_table(result, report)}\n"
        f'<table id="clips"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>\n' + "\n".join(rows)
        + "\n</table></body></html>\n")
    path = out_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(path)
    return path
