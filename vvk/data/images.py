"""Reading and writing images: 8-bit RGB whatever the file stores, upright by EXIF.

Images are read as 8-bit RGB whatever they are stored as (greyscale, CMYK, 16-bit, palette,
alpha) and turned upright by their EXIF orientation when the caller's expected width and height
(e.g. a COCO annotation's) are those of the upright image (see ``probe_image``). A file that
cannot be read raises ``ImageReadError`` with the reason as its message, for callers that skip
and count bad records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# EXIF orientations 5-8 turn the image by 90 degrees, so width and height swap.
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True)
class ImageProbe:
    """What an image file holds, read from its header without decoding the pixels.

    ``size`` is (width, height) as the pixels will be returned by ``load_rgb`` with ``upright``;
    ``conversion`` names the conversion to 8-bit RGB (None when already RGB).
    """

    size: tuple[int, int]
    mode: str
    exif_orientation: int
    conversion: str | None


class ImageReadError(Exception):
    """An image that cannot be read; the reason is the message."""


def _conversion(mode: str, info: dict) -> str | None:
    if mode == "RGB":
        return None
    if mode.startswith("I") or mode == "F":
        return "16bit"
    if mode == "CMYK":
        return "cmyk"
    if "A" in mode or (mode == "P" and "transparency" in info):
        return "alpha"
    if mode in ("L", "1"):
        return "greyscale"
    return "other_mode"


def probe_image(path: str | os.PathLike, *, expected_size: tuple[int, int] | None = None) -> ImageProbe:
    """Header facts of an image; raises ``ImageReadError`` when it cannot be opened.

    EXIF orientation is honoured when ``expected_size`` (the annotation file's width, height)
    matches the upright size, or when there is no expected size. If it matches only the stored
    size, the annotations were drawn on the stored pixels, and orientation is ignored
    (``exif_orientation`` then reads 1).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
            stored = im.size
            mode, info = im.mode, dict(im.info)
    except FileNotFoundError:
        raise ImageReadError("missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"unreadable ({type(e).__name__})") from None
    if orientation not in range(1, 9):
        orientation = 1
    upright = stored[::-1] if orientation in _SWAPPING_ORIENTATIONS else stored
    if expected_size is not None and upright != expected_size and stored == expected_size:
        orientation, upright = 1, stored
    return ImageProbe(
        size=upright, mode=mode, exif_orientation=orientation, conversion=_conversion(mode, info)
    )


def load_rgb(path: str | os.PathLike, *, exif_orientation: int = 1) -> np.ndarray:
    """Decode an image as ``(H, W, 3)`` uint8 RGB, turned by ``exif_orientation`` (see probe_image).

    16-bit images are scaled to 8 bits; alpha is composited onto black (the padding colour);
    CMYK and greyscale go through PIL's conversions. Raises ``ImageReadError``.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            if exif_orientation != 1:
                im = ImageOps.exif_transpose(im)
            return _to_rgb_array(im)
    except FileNotFoundError:
        raise ImageReadError("missing") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"unreadable ({type(e).__name__})") from None


def _to_rgb_array(im) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        # (H, W) 16/32-bit grey -> 8 bits, then replicated to 3 channels
        grey = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode != "F" else max(1.0, float(grey.max()))
        grey8 = np.clip(np.round(grey * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        rgba = np.asarray(im).astype(np.uint16)  # (H, W, 4)
        alpha = rgba[:, :, 3:4]
        return ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
    return np.array(im.convert("RGB"))  # a writable copy: torch wraps it without copying again


def write_jpeg(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write ``(H, W, 3)`` uint8 RGB with fixed encoder settings, so equal pixels give equal bytes."""
    from PIL import Image

    Image.fromarray(image).save(path, format="JPEG", quality=95, subsampling="4:2:0", optimize=False)
