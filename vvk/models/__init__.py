"""Model zoo: the registry, the families registered in it, checkpoint I/O and pretrained loading."""

from vvk.models import backbones, detectors, texture, trackers  # noqa: F401  (importing them fills the registry)
from vvk.models.checkpoint import save
from vvk.models.pretrained import load
from vvk.models.profile import count_params
from vvk.models.registry import build, get_entry, list_models, register

__all__ = ["build", "count_params", "get_entry", "list_models", "load", "register", "save"]
