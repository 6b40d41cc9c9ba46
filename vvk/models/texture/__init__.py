"""Texture translation networks; importing this package registers them (task ``"texture"``):
``sitt``."""

from vvk.models.texture.sitt import (
    PONO,
    SITT,
    PatchDiscriminator,
    SITTGenerator,
    TextureLayer,
    orthogonal_init_,
    sitt,
)

__all__ = ["PONO", "SITT", "PatchDiscriminator", "SITTGenerator", "TextureLayer", "orthogonal_init_", "sitt"]
