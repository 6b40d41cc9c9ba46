"""Which kernel backends can run on this machine, and why not when they cannot."""

from __future__ import annotations

import os
import shutil


def _triton_status(cuda: bool) -> tuple[bool, str]:
    try:
        import triton
    except ImportError:
        return False, "triton is not installed"
    if cuda:
        return True, f"triton {triton.__version__} on CUDA"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1, fp32 only)"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the interpreter on the CPU)"


def _cuda_ext_status(cuda: bool) -> tuple[bool, str]:
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None
    )
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc not found"
    if not cuda:
        return False, "no CUDA device"
    return True, f"compiled on first use with {nvcc}"


def available_backends() -> dict[str, dict[str, object]]:
    """``{backend: {"usable": bool, "detail": str}}`` for reference, triton and cuda."""
    import torch

    cuda = torch.cuda.is_available()
    report = {"reference": (True, "pure PyTorch; CPU, GPU and deterministic fallback")}
    report["triton"] = _triton_status(cuda)
    report["cuda"] = _cuda_ext_status(cuda)
    return {name: {"usable": ok, "detail": detail} for name, (ok, detail) in report.items()}
