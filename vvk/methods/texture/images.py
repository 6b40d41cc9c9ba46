"""Reading the images of texture translation, with errors that name the file.

A texture must show some texture: at least ``MIN_TEXTURE_SIDE`` pixels a side (the texture
encoder pools its quarter-resolution map to 9×9; a smaller image is a flat colour at the
training size). Greyscale and other modes become RGB (``vvk.data.images.load_rgb``): the
scikit-image textures of the demo are greyscale.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vvk.data.images import ImageReadError, load_rgb
from vvk.data.media import VIDEO_EXTENSIONS
from vvk.errors import VvkError

MIN_TEXTURE_SIDE = 16
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | os.PathLike, *, role: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB of ``path``; a one-line ``VvkError`` naming the file otherwise."""
    path = Path(path)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        raise VvkError(
            f"{role}={path}: a video; expected an image ({' '.join(IMAGE_SUFFIXES)})", params=[role]
        )
    if path.is_dir():
        raise VvkError(f"{role}={path}: a folder; expected an image file", params=[role])
    try:
        return load_rgb(path)
    except ImageReadError as e:
        reason = "no such file" if str(e) == "missing" else f"cannot be read as an image, {e}"
        raise VvkError(f"{role}={path}: {reason}", params=[role]) from None


def read_texture(path: str | os.PathLike) -> np.ndarray:
    """The texture exemplar: ``read_image``, at least ``MIN_TEXTURE_SIDE`` pixels a side."""
    image = read_image(path, role="texture")
    height, width = image.shape[:2]
    if min(height, width) < MIN_TEXTURE_SIDE:
        raise VvkError(
            f"texture={path}: {width}×{height} px holds no texture; at least "
            f"{MIN_TEXTURE_SIDE}×{MIN_TEXTURE_SIDE} is needed",
            params=["texture"],
        )
    return image


def read_content(path: str | os.PathLike) -> np.ndarray:
    """An image to learn shapes from or to re-texture."""
    return read_image(path, role="image")
