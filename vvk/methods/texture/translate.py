"""Re-texturing images with a trained texture model (``vvk.methods.texture.train``).

::

    from vvk.methods.texture.translate import load_texture_model

    model = load_texture_model("runs/brick")          # a run folder or its texture.safetensors
    out = model.translate(image)                      # (H, W, 3) uint8 -> (H, W, 3) uint8

An image is resized to the model's training side (squashed to a square, as the reference's
``Resize([S, S])``), translated, and resized back to its own size. Batch norm uses each image's
own statistics, as the reference's evaluation does (``train.py`` never calls ``.eval()``):
the running averages of training describe the training views only, and a model is meant for
other images. Images are translated one at a time, so an output does not depend on which
other images were translated with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vvk.errors import VvkError
from vvk.methods.texture.views import resize, to_uint8, to_unit_range


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Batch norm layers of ``model`` normalise with the batch's statistics and leave their
    running averages alone (training mode without tracking), restored afterwards."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.train()
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (training, tracking) in zip(norms, saved, strict=True):
            m.training, m.track_running_stats = training, tracking


class TextureModel:
    """The generators of a texture run and its texture code: ``translate`` re-textures images."""

    def __init__(self, g_a: nn.Module, g_b: nn.Module, code: torch.Tensor, size: int, source: Path):
        self.g_a, self.g_b, self.size, self.source = g_a, g_b, size, source
        self.code = code  # (C,): the texture encoder's output, constant over space

    @property
    def device(self) -> torch.device:
        return self.code.device

    @torch.no_grad()
    def translate(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 in the content's shapes and the model's texture -> (H, W, 3) uint8."""
        height, width = image.shape[:2]
        x = resize(to_unit_range(image), (self.size, self.size))[None].to(self.device)  # (1, 3, S, S)
        with batch_statistics(self.g_a), batch_statistics(self.g_b):
            shape, stats = self.g_a.encode_shape(x)  # (1, C, S/4, S/4)
            texture = self.code[None, :, None, None].expand_as(shape)
            y = self.g_b.decode(shape, texture, stats)  # (1, 3, S, S) in [-1, 1]
        return to_uint8(resize(y[0].cpu(), (height, width)))


def load_texture_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> TextureModel:
    """The model of a texture run folder (its ``texture.safetensors``) or of that file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vvk.methods.overrides import from_dict
    from vvk.methods.texture.train import MODEL_FILE, TexturePreset
    from vvk.models.texture.sitt import SITTGenerator

    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        hint = " (is the run finished? resume it with --resume)" if path.is_dir() else ""
        raise VvkError(f"weights={path}: no texture model {MODEL_FILE} here{hint}", params=["weights"])
    try:
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise VvkError(f"weights={file}: not a texture model ({e})", params=["weights"]) from None
    if metadata.get("format") != "vvk-texture" or "texture_code" not in tensors:
        raise VvkError(f"weights={file}: not a vvk texture model (written by vvk translate-texture)")
    settings = from_dict(TexturePreset(), json.loads(metadata["preset"]), what=str(file))
    generators = []
    for prefix in ("g_a.", "g_b."):
        g = SITTGenerator(settings.ngf)
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            g.load_state_dict(state)
        except RuntimeError as e:
            raise VvkError(
                f"weights={file}: does not fit the SITT generator ({str(e).splitlines()[0]})"
            ) from None
        generators.append(g.to(device))
    return TextureModel(*generators, tensors["texture_code"].to(device), settings.size, file)
