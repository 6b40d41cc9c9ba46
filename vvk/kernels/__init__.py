"""Custom ops (RoIAlign-3D, tiled contrastive similarity), each with a pure-PyTorch reference."""

from vvk.kernels.backends import available_backends

__all__ = ["available_backends"]
