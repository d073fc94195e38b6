"""Live-stream clips: a presenter in a room wears or holds the garment, moves, turns, and the stream UI runs.

A clip is a few segments (target absent at the start, worn, held up). Each
segment's sprites are drawn once; every frame then costs a background copy,
one or two warps and blends over the sprites' regions, a lighting lookup
table and the UI patches, and is streamed into the H.264 writer. Label maps
and boxes are computed only on the annotated frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dataset.annotations import video_annotation_dict
from dataset.jsonio import write_json_atomic
from dataset.records import AnnotatedFrame, Instance, Video
from dataset.synth import body as B
from dataset.synth import compose, figure, motion, props, scenes
from dataset.synth import garments as G
from dataset.synth.compose import BODY, Canvas, Raster, Sprite, stack
from dataset.synth.config import SynthConfig
from dataset.synth.overlays import StreamUI
from dataset.synth.plan import ClipPlan
from dataset.synth.shop import flat_sprite
from dataset.video_write import Mp4Writer

TARGET = 2
OUTFIT = {"upper": 3, "lower": 4, "outer": 5}
HUNG = 10
"""Labels: the presented garment, the presenter's own clothes, garments hung in the room (10, 11, ...)."""


@dataclass(frozen=True)
class Segment:
    """Frames ``start..end-1`` in one mode: "absent" (no target), "worn" or "held"."""

    start: int
    end: int
    mode: str


@dataclass
class Staging:
    """A segment's sprites (presenter per view, held garment per view, each with its bender),
    the held garment's pivot (body units) and the turn angle per frame."""

    segment: Segment
    presenter: dict[int, compose.Swayer]
    held: dict[int, compose.Swayer]
    pivot: tuple[float, float]
    theta: np.ndarray


def plan_segments(rng: np.random.Generator, config: SynthConfig) -> list[Segment]:
    """Absent start (for some clips), then one or two segments of wearing and holding the garment.

    The target always shows by the last annotated frame, so every catalogue
    clip has its item in at least one annotated frame.
    """
    frames = config.clip_frames
    last = config.annotated_frames[-1]
    segments: list[Segment] = []
    start = 0
    if last > 0 and rng.random() < config.absent_start_share:
        start = min(config.absent_frames + int(rng.integers(0, 20)), last)
        if start > 0:
            segments.append(Segment(0, start, "absent"))
    modes = ["worn", "held"] if rng.random() < 0.6 else ["held", "worn"]
    remaining = frames - start
    if remaining >= 160 and rng.random() < 0.5:
        cut = start + int(remaining * rng.uniform(0.35, 0.65))
        segments += [Segment(start, cut, modes[0]), Segment(cut, frames, modes[1])]
    else:
        segments.append(Segment(start, frames, modes[0]))
    return segments


def outfit(rng: np.random.Generator, target: G.Design) -> dict[str, G.Design]:
    """The presenter's own clothes: a top and a bottom, sometimes a jacket or coat."""
    clothes = {"upper": G.random_design(rng, "upper"), "lower": G.random_design(rng, "lower")}
    if target.silhouette.part != "outer" and rng.random() < 0.15:
        clothes["outer"] = G.random_design(rng, "outer")
    return clothes


def wearing(clothes: dict[str, G.Design], target: G.Design, mode: str) -> list[tuple[G.Design, int]]:
    """What the presenter wears in a segment: the target replaces the clothes it would cover.

    While wearing the target the presenter takes off her own jacket, and tucks
    her top in when the target is a skirt or trousers, so the target shows.
    """
    worn = {part: (design, OUTFIT[part]) for part, design in clothes.items()}
    if mode == "worn":
        part = target.silhouette.part
        if part != "outer":
            worn.pop("outer", None)
        if part == "lower":
            worn["upper"] = (G.tucked(clothes["upper"]), OUTFIT["upper"])
        if part == "full":
            worn.pop("upper")
            worn.pop("lower")
            worn["full"] = (target, TARGET)
        else:
            worn[part] = (target, TARGET)
    return list(worn.values())


def held_sprite(design: G.Design, view: int, scale: float, skin: tuple[int, int, int], rng: np.random.Generator) -> Sprite:
    """The garment held up by its shoulders (or waistband), sleeves hanging, sometimes on a hanger, hands on top.

    Anchor ``top`` is the garment's top centre, the pivot it swings about.
    """
    pose = B.flat_pose(float(rng.uniform(3, 9)))
    shape = G.outline(design, view, pose)
    lo, hi = G.bounds(shape)
    top = (0.0, float(design.silhouette.top_y))
    raster = Raster.around(np.minimum(lo, (-0.3, top[1] - props.HANGER_RISE - 0.1)), hi, scale, margin=0.06)
    layers = [G.render(design, view, pose, raster, rng, TARGET, shape), props.hands(raster, shape.grips, skin)]
    if rng.random() < 0.5:
        half = design.silhouette.shoulder * 0.8 if design.silhouette.part != "lower" else design.silhouette.waist
        layers.insert(0, props.hanger(raster, top, half, (40, 40, 40)))
    return stack(layers, (raster.width, raster.height), {"top": raster.to_px(top)})


def hold_position(design: G.Design, rng: np.random.Generator) -> tuple[float, float]:
    """Where (body units) the held garment's top centre is: at the chest, a little to one side."""
    return float(rng.uniform(-0.35, 0.35)), float(rng.uniform(1.55, 2.0) if design.silhouette.part != "lower" else rng.uniform(1.9, 2.4))


def sway_profile(sprite: Sprite, anchor_row: float, span: float, hem: bool) -> np.ndarray:
    """How far each row moves per unit of sway: a hip sway (zero at neck and feet) or a hem swing (growing downwards)."""
    rows = np.clip((np.arange(sprite.size[1], dtype=np.float32) - anchor_row) / max(span, 1.0), 0.0, 1.0)
    return rows ** 2 if hem else np.sin(np.pi * rows)


def stage(segment: Segment, person: figure.Person, clothes: dict[str, G.Design], target: G.Design, scale: float,
          rng: np.random.Generator, config: SynthConfig) -> Staging:
    """Draw a segment's sprites and plan its turns (presenter turns when worn, garment flips when held)."""
    worn = wearing(clothes, target, segment.mode)
    held: dict[int, compose.Swayer] = {}
    pivot = (0.0, 0.0)
    if segment.mode == "held":
        pivot = hold_position(target, rng)
        lo = target.silhouette.top_y
        grips = G.outline(target, G.FRONT, B.flat_pose(6.0)).grips
        hands_at = tuple((pivot[0] + gx, pivot[1] + gy - lo) for gx, gy in grips)
        pose = B.holding_pose((hands_at[0], hands_at[1]), rng)
        for view in (G.FRONT, G.BACK):
            sprite = held_sprite(target, view, scale, person.skin, rng)
            held[view] = compose.Swayer(sprite, sway_profile(sprite, sprite.anchors["top"][1], sprite.size[1], hem=True), 2.0)
        views = (G.FRONT,)
    else:
        pose = B.hip_pose(rng) if rng.random() < 0.35 else B.relaxed_pose(rng)
        views = (G.FRONT, G.BACK)
    presenter: dict[int, compose.Swayer] = {}
    for view in views:
        sprite = figure.dressed(person, pose, view, worn, scale, rng)
        presenter[view] = compose.Swayer(sprite, sway_profile(sprite, sprite.anchors["neck"][1], (B.FOOT_Y - B.NECK_Y) * scale,
                                                              hem=False))
    rate = 0.7 * config.motion if segment.mode != "held" else 0.5 * config.motion
    theta = motion.turns(rng, segment.start, segment.end, rate)
    return Staging(segment, presenter, held, pivot, theta)


def hang_distractors(canvas: Canvas, room: scenes.Room, count: int, scale: float,
                     rng: np.random.Generator) -> dict[int, G.Shown]:
    """Garments on the clothes rail behind the presenter: background distractors (instance id 0)."""
    placed: dict[int, G.Shown] = {}
    width = canvas.size[0]
    slots = np.linspace(room.rail_span[0], room.rail_span[1], count + 2)[1:-1] if count else []
    for k, x in enumerate(slots):
        design = G.random_design(rng)
        view = G.FRONT if rng.random() < 0.8 else G.BACK
        label = HUNG + k
        size = scale * rng.uniform(0.45, 0.7)
        sprite = flat_sprite(design, view, size, rng, label, with_hanger=True)
        top = sprite.anchors["top"]
        jitter = rng.uniform(-0.3, 0.3) * width / max(count + 1, 1)
        hook = props.HANGER_RISE * size
        matrix = cv2.getRotationMatrix2D(top, float(rng.uniform(-4, 4)), 1.0)
        matrix[:, 2] += np.array([x + jitter, room.rail_y + hook]) - np.array(top)
        canvas.paste(sprite, np.vstack([matrix, [0, 0, 1]]), {BODY: BODY, label: label})
        placed[label] = G.Shown(design, 0, display=0, viewpoint=view)
    return placed


@dataclass
class Track:
    """Where the presenter is in each frame: neck position (pixels), zoom, lean (degrees), perspective
    corner offsets (fractions of the sprite height), body sway and garment swing (units), pendulum (degrees)."""

    x: np.ndarray
    y: np.ndarray
    zoom: np.ndarray
    angle: np.ndarray
    corners: np.ndarray
    sway: np.ndarray
    swing: np.ndarray
    pendulum: np.ndarray


def track(rng: np.random.Generator, config: SynthConfig, neck: tuple[float, float]) -> Track:
    """Smooth random presenter motion scaled by the ``motion`` knob."""
    n, m = config.clip_frames, config.motion
    w, h = config.clip_width, config.clip_height
    x = neck[0] + motion.wander(rng, n, 0.08 * w * m) + motion.steps(rng, n, 0.12 * w * m, int(rng.poisson(1.0)))
    y = neck[1] + motion.wander(rng, n, 0.012 * h * m, (20, 80))
    zoom = 1.0 + motion.wander(rng, n, 0.07 * m, (80, 300))
    angle = motion.wander(rng, n, 3.0 * m, (40, 160))
    corners = np.stack([motion.wander(rng, n, 0.025 * m, (80, 300)) for _ in range(8)], axis=1).reshape(n, 4, 2)
    return Track(x, y, zoom, angle, corners, motion.wander(rng, n, 0.1 * m, (30, 100)),
                 motion.wander(rng, n, 0.2 * m, (20, 60)), motion.wander(rng, n, 5.0 * m, (30, 90)))


def _affine(tx: float, ty: float, angle: float, sx: float, sy: float, ox: float, oy: float) -> np.ndarray:
    """T(tx, ty) . R(angle) . S(sx, sy) . T(-ox, -oy) as a 3x3 matrix."""
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    return np.array([[c * sx, -s * sy, tx - c * sx * ox + s * sy * oy],
                     [s * sx, c * sy, ty - s * sx * ox - c * sy * oy],
                     [0.0, 0.0, 1.0]])


def presenter_matrix(sprite: Sprite, t: int, tr: Track, xscale: float) -> np.ndarray:
    """Sprite pixels -> frame pixels: placement, lean, zoom, turn squash, then a perspective tilt."""
    neck = sprite.anchors["neck"]
    a = _affine(tr.x[t], tr.y[t], tr.angle[t], tr.zoom[t] * xscale, tr.zoom[t], neck[0], neck[1])
    w, h = sprite.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = compose.apply(a, src) + tr.corners[t] * h * tr.zoom[t]
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32))


def line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised motion-blur kernel: a line of ``length`` pixels at ``angle`` radians."""
    size = int(np.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = np.cos(angle) * (length - 1) / 2, np.sin(angle) * (length - 1) / 2
    cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), (1.0,), 1, cv2.LINE_AA)
    return kernel / max(float(kernel.sum()), 1e-6)


def _blur_motion(frame: np.ndarray, region: tuple[int, int, int, int], previous: np.ndarray | None,
                 current: np.ndarray, sprite_size: tuple[int, int], strength: float) -> None:
    """Blur the presenter's region along its motion since the last frame (exposure ``strength`` frames)."""
    if previous is None or strength <= 0:
        return
    w, h = sprite_size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h], [w / 2, h / 4]], np.float64)
    moves = compose.apply(current, corners) - compose.apply(previous, corners)
    length = float(np.linalg.norm(moves, axis=1).max()) * strength
    if length < 1.5:
        return
    mean = moves.mean(axis=0)
    kernel = line_kernel(min(length, 25.0), float(np.arctan2(mean[1], mean[0])))
    pad = kernel.shape[0]
    x0, y0 = max(region[0] - pad, 0), max(region[1] - pad, 0)
    x1, y1 = min(region[2] + pad, frame.shape[1]), min(region[3] + pad, frame.shape[0])
    frame[y0:y1, x0:x1] = cv2.filter2D(frame[y0:y1, x0:x1], -1, kernel, borderType=cv2.BORDER_REFLECT)


def _union(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


@dataclass
class Scene:
    """Everything a clip's frames are made of, drawn or planned once."""

    background: Canvas
    garments: dict[int, G.Shown]
    stagings: list[Staging]
    track: Track
    light: motion.Lighting
    front: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]
    ui: StreamUI
    scale: float


def build_scene(clip: ClipPlan, config: SynthConfig) -> Scene:
    """The room with its hung garments, the presenter's sprites per segment, motion, lighting, props and UI."""
    rng = np.random.default_rng([config.seed, clip.stream, clip.index])
    w, h = config.clip_width, config.clip_height
    room = scenes.room(rng, w, h)
    scale = h * rng.uniform(0.8, 1.2) / B.BODY_HEIGHT
    background = Canvas(room.image, np.zeros((h, w), np.uint8))
    hung = hang_distractors(background, room, config.clutter, scale, rng)
    background.image[:] = (background.image * scenes.vignette(w, h, 0.35)[..., None]).astype(np.uint8)
    person = figure.random_person(rng)
    clothes = outfit(rng, clip.design)
    stagings = [stage(seg, person, clothes, clip.design, scale, rng, config) for seg in plan_segments(rng, config)]
    neck = (w * rng.uniform(0.38, 0.62), h * rng.uniform(0.02, 0.08) + (B.NECK_Y + 0.05) * scale)
    tr = track(rng, config, neck)
    light = motion.lighting(rng, config.clip_frames, config.lighting, config.blur, w / 540.0)
    front = scenes.foreground(rng, w, h)
    ui = StreamUI(w, h, rng, config.overlays)
    garments = {**hung, **{OUTFIT[part]: G.Shown(design, 0, display=1, viewpoint=None) for part, design in clothes.items()}}
    return Scene(background, garments, stagings, tr, light, front, ui, scale)


@dataclass
class Shot:
    """One composited frame before lighting and UI, with what the annotation needs to know about it."""

    canvas: Canvas
    matrix: np.ndarray
    view: int
    held_view: int


def compose_frame(scene: Scene, staging: Staging, t: int, tracked: bool, previous: np.ndarray | None,
                  blur: float) -> Shot:
    """Room, presenter (bent, placed, turned, tilted), held garment, motion blur, foreground props."""
    tr, scale = scene.track, scene.scale
    canvas = Canvas(scene.background.image.copy(), scene.background.labels.copy() if tracked else None)
    canvas.expected = dict(scene.background.expected)
    turn = float(np.cos(staging.theta[t - staging.segment.start]))
    held_mode = staging.segment.mode == "held"
    view = G.FRONT if held_mode or turn >= 0 else G.BACK
    held_view = G.BACK if held_mode and turn < 0 else G.FRONT
    squash = max(abs(turn), 0.06)
    bender = staging.presenter[view]
    sprite = bender.sprite
    matrix = presenter_matrix(sprite, t, tr, 1.0 if held_mode else squash)
    region = canvas.paste(bender(tr.sway[t] * scale, tracked), matrix, {k: k for k in (BODY, TARGET, *OUTFIT.values())})
    if held_mode:
        held = staging.held[held_view]
        top = held.sprite.anchors["top"]
        neck = sprite.anchors["neck"]
        pivot = (neck[0] + staging.pivot[0] * scale, neck[1] + (staging.pivot[1] - B.NECK_Y) * scale)
        local = _affine(pivot[0], pivot[1], tr.pendulum[t], squash, 1.0, top[0], top[1])
        region = _union(region, canvas.paste(held(tr.swing[t] * scale, tracked), matrix @ local, {BODY: BODY, TARGET: TARGET}))
    if region is not None:
        _blur_motion(canvas.image, region, previous, matrix, sprite.size, blur)
    for mask, rgba, at in scene.front:
        canvas.cover(mask, rgba, at)
    return Shot(canvas, matrix, view, held_view)


def finish_frame(scene: Scene, image: np.ndarray, t: int) -> np.ndarray:
    """Camera and stream effects on a composited frame: focus hunting, lighting, then the UI on top."""
    if scene.light.defocus[t] > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), float(scene.light.defocus[t]))
    image = cv2.LUT(image, scene.light.lut(t))
    scene.ui.draw(image, t)
    return image


def annotate(scene: Scene, shot: Shot, staging: Staging, clip: ClipPlan, config: SynthConfig) -> dict[int, Instance]:
    """The visible garments of an annotated frame by label, the presented one (if shown) first."""
    info = dict(scene.garments)
    mode = staging.segment.mode
    if mode != "absent":
        worn = mode == "worn"
        info[TARGET] = G.Shown(clip.design, clip.instance_id, display=int(worn),
                                viewpoint=shot.view if worn else shot.held_view)
    boxes = shot.canvas.visible_boxes(sorted(info), config.min_visible, max(4, config.clip_width // 60))
    return {gid: info[gid].instance(box, shot.view) for gid, box in boxes.items()}


def render_clip(clip: ClipPlan, config: SynthConfig, root: Path) -> dict:
    """Render, encode and annotate one clip; returns its ground-truth summary for the manifest."""
    scene = build_scene(clip, config)
    annotated = set(config.annotated_frames)
    frames: list[AnnotatedFrame] = []
    target_frames: list[int] = []
    previous: np.ndarray | None = None
    path = root / "video" / f"{clip.video_id}.mp4"
    w, h = config.clip_width, config.clip_height
    with Mp4Writer(path, w, h, config.fps, crf=config.crf, preset="superfast") as writer:
        for staging in scene.stagings:
            for t in range(staging.segment.start, staging.segment.end):
                shot = compose_frame(scene, staging, t, t in annotated, previous, 0.6 * config.blur)
                previous = shot.matrix
                writer.write(finish_frame(scene, shot.canvas.image, t))
                if t in annotated:
                    instances = annotate(scene, shot, staging, clip, config)
                    frames.append(AnnotatedFrame(t, tuple(instances.values())))
                    if TARGET in instances:
                        target_frames.append(t)
    video = Video(clip.video_id, path, frames=tuple(frames), width=w, height=h)
    write_json_atomic(root / "video_annotation" / f"{clip.video_id}.json", video_annotation_dict(video), indent=1)
    segments = [staging.segment for staging in scene.stagings]
    return {
        "video_id": clip.video_id, "item_id": clip.item_id, "in_catalogue": clip.item_id is not None,
        "instance_id": clip.instance_id, "variant_of": clip.variant_of, "label": clip.design.label,
        "absent_until": segments[0].end if segments[0].mode == "absent" else 0,
        "segments": [{"start": s.start, "end": s.end, "mode": s.mode} for s in segments],
        "target_frames": target_frames,
    }
