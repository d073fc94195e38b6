"""Image file I/O at the boundary where OpenCV's BGR becomes the project's RGB."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from dataset.errors import ImageError


class ImageTooLarge(ImageError):
    """A header claiming more pixels than a reader should ever decode; callers refuse it by size, not as corrupt."""


def read_image(path: Path | str) -> np.ndarray:
    """Read an image file as an RGB uint8 array; ``ImageError`` names the file when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    data = np.fromfile(path, dtype=np.uint8)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV refuses a header claiming more pixels than its limit: a decompression bomb
        raise ImageTooLarge(path, "header claims more pixels than the decoder's limit "
                                  "(a decompression bomb?)") from None
    if image is None:
        raise ImageError(path, "not a decodable image (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` from the file header alone, so sizing a catalogue never decodes pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except Image.DecompressionBombError as exc:  # not an OSError: PIL's guard against a header's huge claim
        claimed = re.search(r"\d+ pixels", str(exc))
        raise ImageTooLarge(path, f"header claims {claimed.group(0) if claimed else 'too many pixels'}, over "
                                  "the decoder's limit (a decompression bomb?)") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageError(path, f"not a readable image: {str(exc).replace(str(path), path.name)}") from None


def write_image(path: Path | str, image: np.ndarray, quality: int = 92) -> Path:
    """Write an RGB uint8 image; JPEG quality applies to ``.jpg``/``.jpeg``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageError(path, "could not encode image")
    encoded.tofile(path)
    return path
