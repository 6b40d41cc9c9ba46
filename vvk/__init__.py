"""vvk: video and image understanding research toolkit.

Importing ``vvk`` is cheap: it does not import torch. Subpackages (``vvk.models``,
``vvk.kernels``, ``vvk.data``, ...) import torch when they are imported themselves.
"""

from vvk.errors import VvkError

__version__ = "0.1.0.dev0"

__all__ = ["VvkError", "__version__"]
