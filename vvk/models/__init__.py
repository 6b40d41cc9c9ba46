"""Model zoo: the registry, the families registered in it, and checkpoint I/O."""

from vvk.models import backbones  # noqa: F401  (importing the families fills the registry)
from vvk.models.checkpoint import load, save
from vvk.models.profile import count_params
from vvk.models.registry import build, get_entry, list_models, register

__all__ = ["build", "count_params", "get_entry", "list_models", "load", "register", "save"]
