"""The contest metric: three-level F1 over clips, final = 0.2·F1_item + 0.6·F1_frame + 0.2·F1_box.

The official formulas were published as unreadable images; this follows the
participants' re-implementation (hukefei/taobaolive ``match_eval.py``), with
the departures listed below. The unit is a clip (video).

* **Ground truth.** A clip *has ground truth* when any box in any of its
  annotated frames has ``instance_id != 0``, exactly the participants' test;
  whether that item is in the catalogue does not matter (such clips are
  listed as ``unreachable_clips``). NGT counts those clips, NP the predicted
  clips. P = TP/NP, R = TP/NGT, F1 = 2PR/(P+R), each 0 when undefined.
* **Item level.** TP when the predicted ``item_id`` is the item
  (``dataset.identity.item_of_instance``) of some box in any annotated frame.
* **Frame level.** TP when the item level passed and the annotated frame with
  the predicted ``frame_index`` holds a box of that item. With
  ``frame_tolerance`` N > 0, the nearest annotated frame within N frames is
  used instead (an exact frame is always nearest; at a tie, either frame
  holding the item passes).
* **Box level.** TP when the frame level passed and some ``result[*].item_box``
  has IoU > 0.5 (mmdet "+1 pixel" areas) with a box of that item in
  ``image_annotation/<item_id>/<img_name>.json``. An image with no boxes at
  all (or no annotation file) counts as one box covering the whole image.
  An ``img_name`` that is not an image of the item fails. ``frame_box`` is not
  scored; its IoU is reported as a diagnostic.
* A clip with ground truth and no prediction is a FN at every level; a failed
  prediction on such a clip is a FP and a FN at the failing levels. A
  prediction on a clip without ground truth, on a clip id not in the dataset,
  or on a clip without an annotation file is a FP at every level and adds no
  FN. (The participants' script added a FN for a wrong prediction on a clip
  without ground truth and ignored unknown clip ids; neither is kept, so that
  R = TP/NGT as the official text defines it and stray keys cost precision.)
* Box-level GT boxes are those of the predicted item only (the participants'
  script accepted any box of the shop image, including instance_id 0
  garments such as the trousers next to the sold top).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataset.boxes import iou
from dataset.errors import DataError, ImageError
from dataset.identity import item_of_instance
from dataset.images import image_size
from dataset.records import AnnotatedFrame, Dataset, ShopImage, Video
from dataset.score.result_file import ClipPrediction

LEVELS = ("item", "frame", "box")
WEIGHTS = {"item": 0.2, "frame": 0.6, "box": 0.2}
IOU_THRESHOLD = 0.5

Box = Sequence[float]


@dataclass
class LevelStats:
    """TP/FP/FN counts of one level and the P/R/F1 they give."""

    name: str
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


@dataclass(frozen=True)
class ClipOutcome:
    """How one clip scored, with the first reason it failed, for reports.

    ``code`` is one of: ok, no_prediction, unknown_clip, unannotated_clip,
    no_ground_truth, wrong_item, frame_not_annotated, frame_without_item,
    item_box_miss.
    """

    video_id: str
    has_gt: bool
    truth_items: tuple[str, ...]
    predicted_item: str | None
    predicted_frame: int | None
    passed: tuple[bool, bool, bool]
    code: str
    reason: str
    matched_frame: int | None = None
    item_box_iou: float | None = None
    frame_box_iou: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"video_id": self.video_id, "has_gt": self.has_gt, "truth_items": list(self.truth_items),
                "predicted_item": self.predicted_item, "predicted_frame": self.predicted_frame,
                "matched_frame": self.matched_frame, "passed": dict(zip(LEVELS, self.passed)),
                "code": self.code, "reason": self.reason, "item_box_iou": self.item_box_iou,
                "frame_box_iou": self.frame_box_iou}


@dataclass
class ScoreReport:
    """Per-level stats, the weighted final score and per-clip outcomes."""

    levels: dict[str, LevelStats]
    clips: list[ClipOutcome]
    frame_tolerance: int = 0
    n_gt: int = 0
    n_pred: int = 0
    unknown_clips: list[str] = field(default_factory=list)
    unannotated_clips: list[str] = field(default_factory=list)
    unreachable_clips: list[str] = field(default_factory=list)

    @property
    def final(self) -> float:
        return sum(WEIGHTS[name] * self.levels[name].f1 for name in LEVELS)

    @property
    def frame_box_ious(self) -> list[float]:
        return [c.frame_box_iou for c in self.clips if c.frame_box_iou is not None]

    @property
    def frame_box_iou_mean(self) -> float | None:
        values = self.frame_box_ious
        return sum(values) / len(values) if values else None

    @property
    def failure_counts(self) -> dict[str, int]:
        return dict(Counter(c.code for c in self.clips if c.code != "ok").most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "final": self.final,
            "weights": dict(WEIGHTS),
            "frame_tolerance": self.frame_tolerance,
            "n_gt": self.n_gt,
            "n_pred": self.n_pred,
            "levels": {name: self.levels[name].to_dict() for name in LEVELS},
            "diagnostics": {
                "frame_box_iou_mean": self.frame_box_iou_mean,
                "frame_box_iou_clips": len(self.frame_box_ious),
                "unknown_clips": list(self.unknown_clips),
                "unannotated_clips": list(self.unannotated_clips),
                "unreachable_clips": list(self.unreachable_clips),
                "failures": self.failure_counts,
            },
            "clips": [c.to_dict() for c in self.clips],
        }

    def format_table(self) -> str:
        """A plain-text summary for the terminal."""
        lines = [f"{'level':<6} {'P':>7} {'R':>7} {'F1':>7} {'TP':>6} {'FP':>6} {'FN':>6}"]
        for name in LEVELS:
            s = self.levels[name]
            lines.append(f"{name:<6} {s.precision:7.4f} {s.recall:7.4f} {s.f1:7.4f} {s.tp:6d} {s.fp:6d} {s.fn:6d}")
        lines.append(f"final  {self.final:.4f}   (0.2*F1 item + 0.6*F1 frame + 0.2*F1 box)")
        tolerance = "exact" if self.frame_tolerance == 0 else f"+/-{self.frame_tolerance} frames"
        lines.append(f"clips with ground truth (NGT) {self.n_gt}, predicted (NP) {self.n_pred}, "
                     f"frame match {tolerance}")
        mean = self.frame_box_iou_mean
        lines.append("frame_box IoU mean " + (f"{mean:.4f} over {len(self.frame_box_ious)} clips"
                                              if mean is not None else "n/a (no prediction on an item's frame)"))
        for label, ids in (("unknown clip ids (FP)", self.unknown_clips),
                           ("predicted clips without annotation file (FP)", self.unannotated_clips),
                           ("GT clips whose item is not in the catalogue", self.unreachable_clips)):
            if ids:
                shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
                lines.append(f"{label}: {len(ids)}: {shown}")
        if self.failure_counts:
            lines.append("failures: " + ", ".join(f"{code} {n}" for code, n in self.failure_counts.items()))
        return "\n".join(lines)


def clip_truth(video: Video) -> tuple[bool, tuple[str, ...]]:
    """Whether a clip has ground truth (any box with ``instance_id != 0``) and its items, sorted."""
    ids = [inst.instance_id for frame in video.frames or () for inst in frame.instances if inst.instance_id != 0]
    items = {item_of_instance(i) for i in ids}
    return bool(ids), tuple(sorted(i for i in items if i is not None))


def item_boxes(instances: Iterable, item_id: str) -> list[Box]:
    """The boxes of one item among annotated instances."""
    return [inst.box for inst in instances if item_of_instance(inst.instance_id) == item_id]


def _best_iou(predicted: Iterable[Box], truth: Sequence[Box]) -> float | None:
    values = [iou(p, t, plus_one=True) for p in predicted for t in truth]
    return max(values) if values else None


def nearest_frames(video: Video, frame_index: int, tolerance: int) -> list[AnnotatedFrame]:
    """The annotated frame(s) a predicted frame index is judged on: exact, or nearest within tolerance."""
    exact = video.frame(frame_index)
    if exact is not None or tolerance <= 0:
        return [exact] if exact is not None else []
    near = [f for f in video.frames or () if abs(f.frame_index - frame_index) <= tolerance]
    if not near:
        return []
    best = min(abs(f.frame_index - frame_index) for f in near)
    return [f for f in near if abs(f.frame_index - frame_index) == best]


class ShopTruth:
    """The GT boxes of shop images, with image sizes read at most once per image.

    A size is needed only for an image without boxes (the whole image is the
    box); the annotation's width/height is used when present, else the file.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._sizes: dict[Path, tuple[int, int]] = {}

    def image(self, item_id: str, img_name: str) -> ShopImage | None:
        item = self.dataset.items.get(item_id)
        return next((im for im in item.images if im.stem == img_name), None) if item else None

    def size(self, image: ShopImage) -> tuple[int, int]:
        if image.width is not None and image.height is not None:
            return image.width, image.height
        if image.path not in self._sizes:
            self._sizes[image.path] = image_size(image.path)
        return self._sizes[image.path]

    def boxes(self, image: ShopImage, item_id: str) -> list[Box]:
        """Boxes of the item in the image, or the whole image when the image has no boxes at all."""
        if not image.instances:
            width, height = self.size(image)
            return [(0, 0, width, height)]
        return item_boxes(image.instances, item_id)


def _item_box_check(pred: ClipPrediction, shop: ShopTruth) -> tuple[float | None, list[str]]:
    """Best item_box IoU over the entries, and why entries could not be checked."""
    if pred.item_id not in shop.dataset.items:
        return None, [f"item {pred.item_id} has no image folder in the dataset"]
    best: float | None = None
    problems: list[str] = []
    for entry in pred.entries:
        image = shop.image(pred.item_id, entry.img_name)
        if image is None:
            problems.append(f"img_name {entry.img_name!r} is not an image of item {pred.item_id}")
            continue
        try:
            truth = shop.boxes(image, pred.item_id)
        except ImageError as exc:
            problems.append(str(exc))
            continue
        if not truth:
            problems.append(f"image {image.img_name} of item {pred.item_id} has no box of the item")
        value = _best_iou([entry.item_box], truth)
        if value is not None and (best is None or value > best):
            best = value
    return best, problems


def _judge(pred: ClipPrediction, video: Video, truth_items: tuple[str, ...], tolerance: int,
           shop: ShopTruth) -> ClipOutcome:
    """The outcome of a prediction on an annotated clip that has ground truth."""
    base = dict(video_id=pred.video_id, has_gt=True, truth_items=truth_items,
                predicted_item=pred.item_id, predicted_frame=pred.frame_index)
    if pred.item_id not in truth_items:
        return ClipOutcome(**base, passed=(False, False, False), code="wrong_item",
                           reason=f"item {pred.item_id} is not in the clip (truth: {', '.join(truth_items) or '-'})")
    frames = nearest_frames(video, pred.frame_index, tolerance)
    holding = [f for f in frames if item_boxes(f.instances, pred.item_id)]
    matched = (holding or frames or [None])[0]
    frame_iou = (_best_iou([e.frame_box for e in pred.entries], item_boxes(holding[0].instances, pred.item_id))
                 if holding else None)
    item_iou, problems = _item_box_check(pred, shop)
    details = dict(matched_frame=matched.frame_index if matched else None, item_box_iou=item_iou,
                   frame_box_iou=frame_iou)
    if not frames:
        return ClipOutcome(**base, **details, passed=(True, False, False), code="frame_not_annotated",
                           reason=f"frame {pred.frame_index} is not an annotated frame"
                                  + (f" within {tolerance} frames" if tolerance else ""))
    if not holding:
        return ClipOutcome(**base, **details, passed=(True, False, False), code="frame_without_item",
                           reason=f"frame {matched.frame_index} has no box of item {pred.item_id}")
    if item_iou is None or item_iou <= IOU_THRESHOLD:
        shown = "no item_box could be checked" if item_iou is None else f"best item_box IoU {item_iou:.3f} <= 0.5"
        return ClipOutcome(**base, **details, passed=(True, True, False), code="item_box_miss",
                           reason="; ".join([shown, *problems]))
    return ClipOutcome(**base, **details, passed=(True, True, True), code="ok", reason="ok")


def _stray(pred: ClipPrediction, code: str, reason: str, truth_items: tuple[str, ...] = ()) -> ClipOutcome:
    """A prediction the ground truth cannot confirm: a FP at every level."""
    return ClipOutcome(pred.video_id, False, truth_items, pred.item_id, pred.frame_index,
                       (False, False, False), code, reason)


def _missed(video_id: str, truth_items: tuple[str, ...]) -> ClipOutcome:
    return ClipOutcome(video_id, True, truth_items, None, None, (False, False, False),
                       "no_prediction", "clip has ground truth but no prediction")


def _outcome(video_id: str, pred: ClipPrediction | None, dataset: Dataset, tolerance: int,
             shop: ShopTruth) -> ClipOutcome:
    video = dataset.videos.get(video_id)
    if video is None:
        assert pred is not None
        return _stray(pred, "unknown_clip", "clip id is not in the dataset")
    if video.frames is None:
        assert pred is not None
        return _stray(pred, "unannotated_clip", "clip has no annotation file")
    has_gt, truth_items = clip_truth(video)
    if pred is None:
        return _missed(video_id, truth_items)
    if not has_gt:
        return _stray(pred, "no_ground_truth", "clip has no box with instance_id != 0", truth_items)
    return _judge(pred, video, truth_items, tolerance, shop)


def _count(levels: dict[str, LevelStats], outcome: ClipOutcome) -> None:
    predicted = outcome.predicted_item is not None
    for name, passed in zip(LEVELS, outcome.passed):
        stats = levels[name]
        if passed:
            stats.tp += 1
            continue
        stats.fp += predicted
        stats.fn += outcome.has_gt


def score(predictions: Mapping[str, ClipPrediction], dataset: Dataset, frame_tolerance: int = 0) -> ScoreReport:
    """Score typed predictions (``load_result``) against an annotated dataset.

    Raises ``DataError`` when no clip of the dataset is annotated: every
    prediction would be a FP and the score would be a meaningless 0.
    """
    if frame_tolerance < 0:
        raise ValueError(f"frame_tolerance {frame_tolerance}: must be >= 0")
    if not dataset.annotated:
        raise DataError(", ".join(str(r) for r in dataset.roots) or "?",
                        "no clip has a video annotation; there is nothing to score against")
    shop = ShopTruth(dataset)
    gt_clips = {vid for vid, v in dataset.videos.items() if v.frames is not None and clip_truth(v)[0]}
    levels = {name: LevelStats(name) for name in LEVELS}
    clips = []
    for video_id in sorted(gt_clips | set(predictions)):
        outcome = _outcome(video_id, predictions.get(video_id), dataset, frame_tolerance, shop)
        _count(levels, outcome)
        clips.append(outcome)
    return ScoreReport(
        levels=levels, clips=clips, frame_tolerance=frame_tolerance, n_gt=len(gt_clips), n_pred=len(predictions),
        unknown_clips=[c.video_id for c in clips if c.code == "unknown_clip"],
        unannotated_clips=[c.video_id for c in clips if c.code == "unannotated_clip"],
        unreachable_clips=[c.video_id for c in clips
                           if c.has_gt and not any(i in dataset.items for i in c.truth_items)],
    )
