"""Which kernel backends can run on this machine, which one an op call uses, and the CUDA build.

Every op in ``vvk.kernels`` has three implementations:

- ``reference``: pure PyTorch. Runs everywhere, is deterministic, and is what a CPU tensor or
  ``torch.use_deterministic_algorithms(True)`` gets.
- ``triton``: Triton kernels; the default for CUDA tensors. On the CPU they run only under the
  interpreter (``TRITON_INTERPRET=1`` set before the first ``vvk.kernels.*.triton`` import), in
  fp32: that is how CI tests them.
- ``cuda``: a C++/CUDA extension compiled on first use with ``torch.utils.cpp_extension`` and
  cached in torch's extension folder (``TORCH_EXTENSIONS_DIR``). Never chosen automatically;
  ``VVK_DISABLE_CUDA_EXTENSIONS=1`` marks it unusable (e.g. after a failed build).

A call picks its backend from, in order: the op's ``backend=`` argument, the ``VVK_KERNEL_BACKEND``
environment variable, then the rule above.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
from pathlib import Path

BACKENDS = ("reference", "triton", "cuda")
ENV_VAR = "VVK_KERNEL_BACKEND"
DISABLE_CUDA_VAR = "VVK_DISABLE_CUDA_EXTENSIONS"


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


def nvcc_path() -> str | None:
    """The nvcc executable (PATH, then $CUDA_HOME/bin), or None."""
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None
    )
    return nvcc if nvcc and os.path.exists(nvcc) else None


def _cuda_ext_status(cuda: bool) -> tuple[bool, str]:
    if os.environ.get(DISABLE_CUDA_VAR) == "1":
        return False, f"disabled by {DISABLE_CUDA_VAR}=1"
    nvcc = nvcc_path()
    if not nvcc:
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


def resolve_backend(requested: str | None, device) -> str:
    """The backend an op call on ``device`` runs, or ValueError naming why the request cannot run.

    Args:
        requested: ``None`` (automatic), or one of ``BACKENDS``.
        device: the ``torch.device`` of the op's inputs.
    """
    import torch

    choice = requested or os.environ.get(ENV_VAR) or None
    if choice is None:
        if device.type != "cuda" or torch.are_deterministic_algorithms_enabled():
            return "reference"
        return "triton" if _triton_status(True)[0] else "reference"
    if choice not in BACKENDS:
        raise ValueError(
            f"kernel backend {choice!r} is not one of {', '.join(BACKENDS)} (backend= or {ENV_VAR})"
        )
    if choice == "triton" and device.type != "cuda":
        usable, detail = _triton_status(False)
        if not usable or device.type != "cpu":
            raise ValueError(f"the triton backend cannot run on {device}: {detail}")
    if choice == "cuda":
        usable, detail = _cuda_ext_status(device.type == "cuda")
        if device.type != "cuda":
            raise ValueError(f"the cuda backend needs CUDA tensors, got {device}")
        if not usable:
            raise ValueError(f"the cuda backend cannot run: {detail}")
    return choice


def no_autocast(device):
    """A context with autocast off on ``device`` (a ``torch.device``): for kernel code that picks
    its compute dtype itself, where autocast would turn some of its matmuls to bfloat16/float16."""
    import contextlib

    import torch

    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def implementation(package: str, backend: str):
    """The module ``<package>.<backend>``, imported on first use: Triton kernels are defined, and
    CUDA sources built, only when a call needs them."""
    return importlib.import_module(f"{package}.{backend}")


def _pip_cuda_includes() -> list[str]:
    """Header folders of pip's CUDA wheels (``nvidia/cu*/include``).

    ATen's CUDA headers include ``cusparse.h`` and ``cublas_v2.h``; a minimal CUDA toolkit (nvcc
    and cudart only) lacks them, while the wheels torch depends on ship them.
    """
    import sysconfig

    root = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    return sorted(str(p) for p in root.glob("cu*/include") if (p / "cusparse.h").exists())


@functools.cache
def load_cuda_extension(name: str, folder: Path):
    """Compile (first call) or load (later calls, and later processes) the extension in ``folder``.

    All ``*.cpp`` and ``*.cu`` files in ``folder`` are built into one Python module named
    ``name``; torch caches the build under ``TORCH_EXTENSIONS_DIR`` and rebuilds when a source
    changes.
    """
    if nvcc_path() is None:
        raise RuntimeError(f"cannot build the {name} CUDA extension: nvcc not found (set CUDA_HOME)")
    from torch.utils.cpp_extension import load

    sources = sorted(str(p) for p in folder.iterdir() if p.suffix in (".cpp", ".cu"))
    return load(
        name=name,
        sources=sources,
        extra_include_paths=_pip_cuda_includes(),
        extra_cflags=["-O3"],
        # No --use_fast_math: the kernels are tested for parity with the reference.
        # --split-compile=0 optimises the kernels of a file on all cores (first-use build time).
        extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", "--split-compile=0"],
        verbose=os.environ.get("VVK_VERBOSE_BUILD") == "1",
    )
