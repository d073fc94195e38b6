"""The contest data layer shared by both stages.

Everything that reads or writes the Taobao Live contest layout lives here once:
annotation records and parsing, the dataset-root scanner, video frame reading,
box utilities, the synthetic benchmark generator (``dataset.synth``) and the
contest scorer (``dataset.score``). It imports no torch: how models run (device,
precision, checkpoints, weights) lives in ``runtime``, so data tools and the
scorer load without it (``tests/test_runtime.py`` holds that line).

Colour convention: every image or frame held in memory by this project is an
``uint8`` array of shape ``(H, W, 3)`` in **RGB** order. Conversion to and from
OpenCV's BGR happens only at the file boundary (``dataset.images``,
``dataset.frames``, ``dataset.video_write``).
"""
from dataset.exports import lazy_exports

_EXPORTS = {
    "Dataset": "records", "Item": "records", "ShopImage": "records", "Video": "records",
    "load_dataset": "layout", "check_root": "layout",
    "read_frames": "frames", "probe": "frames", "read_image": "images",
    "DataError": "errors", "IssueLog": "errors",
    "load_result": "score", "write_result": "score",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
