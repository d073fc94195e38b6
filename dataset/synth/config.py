"""The knobs of the synthetic benchmark, in one frozen dataclass.

Each field carries its own help text in ``metadata["help"]``; the command line
and the class docstring are built from it, so a knob is documented once.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

GENERATOR_VERSION = "1.0"
"""Bumped whenever the same seed and knobs would produce different data."""


def _knob(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the generated data (same config -> same bytes).

    The defaults make a set that is hard for retrieval (colour variants of the
    same garment, front/back views, worn versus flat, occlusion, motion blur,
    compression, clips without a catalogue match) while every annotated box
    stays a garment a good detector can find.
    """

    items: int = _knob(20, "catalogue items; each gets a shop-image folder and one clip")
    seed: int = _knob(0, "random seed; data depends only on the seed and these knobs")
    first_id: int = _knob(1, "id of the first item; items are first_id .. first_id+items-1 as 6-digit strings "
                             "(below 100000), so splits with disjoint ranges never collide")
    colour_variant_share: float = _knob(0.4, "share of catalogue items that have a colour variant in the catalogue "
                                             "(same silhouette and pattern, other colours)")
    shop_size: int = _knob(800, "side of the square shop images in pixels")
    shop_images_min: int = _knob(3, "fewest shop images per item")
    shop_images_max: int = _knob(6, "most shop images per item")
    clip_frames: int = _knob(400, "frames per clip")
    clip_width: int = _knob(540, "clip width in pixels (even)")
    clip_height: int = _knob(960, "clip height in pixels (even)")
    fps: float = _knob(25.0, "clip frame rate")
    annotation_step: int = _knob(40, "annotated frames are the multiples of this below clip_frames")
    uncatalogued_share: float = _knob(0.15, "extra clips whose garment is not in the catalogue (annotated "
                                            "instance_id 0), as a fraction of the number of items (0..1)")
    absent_start_share: float = _knob(0.3, "share of clips whose target appears only after absent_frames")
    absent_frames: int = _knob(80, "frames without the target at the start of those clips")
    clutter: int = _knob(3, "distractor garments hung in the room, besides the presenter's own outfit")
    motion: float = _knob(1.0, "scale of presenter motion: translation, zoom, rotation, perspective, sway, turns")
    blur: float = _knob(1.0, "motion-blur strength (exposure in frames) and chance of defocus; 0 disables")
    lighting: float = _knob(1.0, "scale of lighting and white-balance changes over time and between images")
    overlays: float = _knob(1.0, "density of live-stream UI and shop text overlays (0 none, 1 typical)")
    crf: int = _knob(28, "H.264 constant rate factor of the clips (higher = stronger compression)")
    jpeg_quality: int = _knob(90, "JPEG quality of the shop images")
    min_visible: float = _knob(0.35, "a garment is annotated only when at least this share of it is visible")

    def __post_init__(self) -> None:
        checks = [
            (self.items >= 1, "items must be >= 1"),
            (1 <= self.first_id and self.first_id + self.items - 1 < 100_000,
             "first_id .. first_id+items-1 must lie in 1..99999 (the contest instance-id rule)"),
            (0.0 <= self.colour_variant_share <= 1.0, "colour_variant_share must be in 0..1"),
            (64 <= self.shop_size <= 4096, "shop_size must be in 64..4096"),
            (1 <= self.shop_images_min <= self.shop_images_max <= 20, "need 1 <= shop_images_min <= shop_images_max <= 20"),
            (self.clip_frames >= 1, "clip_frames must be >= 1"),
            (self.clip_width % 2 == 0 and self.clip_height % 2 == 0, "clip width and height must be even (H.264)"),
            (self.clip_width >= 64 and self.clip_height >= 64, "clip width and height must be >= 64"),
            (self.fps > 0, "fps must be > 0"),
            (self.annotation_step >= 1, "annotation_step must be >= 1"),
            (0.0 <= self.uncatalogued_share <= 1.0, "uncatalogued_share must be in 0..1"),
            (0.0 <= self.absent_start_share <= 1.0, "absent_start_share must be in 0..1"),
            (self.absent_frames >= 0, "absent_frames must be >= 0"),
            (0 <= self.clutter <= 12, "clutter must be in 0..12"),
            (self.motion >= 0 and self.blur >= 0 and self.lighting >= 0 and self.overlays >= 0,
             "motion, blur, lighting and overlays must be >= 0"),
            (0 <= self.crf <= 51, "crf must be in 0..51"),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be in 1..100"),
            (0.0 <= self.min_visible <= 1.0, "min_visible must be in 0..1"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("invalid SynthConfig: " + "; ".join(problems))

    @property
    def item_ids(self) -> list[str]:
        """The catalogue's item ids, in order."""
        return [f"{self.first_id + k:06d}" for k in range(self.items)]

    @property
    def uncatalogued_clips(self) -> int:
        """How many clips show a garment that is not in the catalogue."""
        return int(round(self.items * self.uncatalogued_share))

    @property
    def annotated_frames(self) -> list[int]:
        """Indices of the annotated frames: multiples of ``annotation_step`` below ``clip_frames``."""
        return list(range(0, self.clip_frames, self.annotation_step))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def knob_help() -> list[tuple[str, Any, str]]:
    """``(name, default, help)`` of every knob, in declaration order."""
    rows = []
    for f in fields(SynthConfig):
        default = f.default if f.default is not MISSING else None
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows


SynthConfig.__doc__ = (SynthConfig.__doc__ or "") + "\n    Knobs (default: meaning):\n\n" + "\n".join(
    f"    - ``{name}`` ({default!r}): {text}" for name, default, text in knob_help()) + "\n"
