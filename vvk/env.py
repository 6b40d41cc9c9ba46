"""What this machine has: versions, devices, kernel backends, video decoders (``vvk info``)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import vvk

# (name shown, distribution name)
PACKAGES = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("triton", "triton"),
    ("av", "av"),
    ("torchcodec", "torchcodec"),
    ("open_clip", "open-clip-torch"),
    ("kornia", "kornia"),
    ("safetensors", "safetensors"),
    ("huggingface_hub", "huggingface-hub"),
    ("pycocotools", "pycocotools"),
    ("flwr", "flwr"),
)


def package_versions() -> dict[str, str | None]:
    """Installed versions read from package metadata (nothing is imported); None if absent."""
    versions: dict[str, str | None] = {}
    for shown, dist in PACKAGES:
        try:
            versions[shown] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[shown] = None
    return versions


def device_report() -> dict[str, object]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu_threads": torch.get_num_threads(),
    }


def environment_report() -> dict[str, object]:
    from vvk.data.decoders import available_decoders
    from vvk.kernels.backends import available_backends

    return {
        "vvk": vvk.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        **device_report(),
        "kernel_backends": available_backends(),
        "video_decoders": available_decoders(),
    }
