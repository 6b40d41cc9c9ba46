"""The Triton kernels compile for a Hopper GPU (sm_90) without one: Triton's own front end,
LLVM and ptxas run on the CPU. Catches what the interpreter cannot (types, layouts, shared
memory), in a fresh process because TRITON_INTERPRET=1 is set for the rest of the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vvk.kernels.contrastive import triton as contrastive
    from vvk.kernels.roi_align_3d import triton as roi

    TARGET = GPUTarget("cuda", 90, 32)

    def build(fn, types, constants, num_warps):
        signature = {a: "constexpr" if a in constants else types.get(a, "i32") for a in fn.arg_names}
        src = ASTSource(fn=fn, signature=signature, constexprs=constants)
        kernel = triton.compile(src, target=TARGET, options={"num_warps": num_warps})
        assert kernel.asm["cubin"], fn.__name__
        print(fn.__name__, constants)

    CONTRASTIVE = (("bf16", 512, "ieee"), ("fp32", 256, "tf32"), ("fp32", 128, "ieee"), ("fp16", 64, "ieee"))
    for dtype, block_d, precision in CONTRASTIVE:
        types = {a: "*" + dtype for a in ("Q", "K", "OUT")}
        types.update({a: "*fp32" for a in ("SCALE", "LSE", "GRAD")})
        types.update({a: "*i64" for a in ("POS", "GQ", "GK")})
        types.update({a: "i64" for a in ("stride_qn", "stride_qd", "stride_kn", "stride_kd", "stride_pn")})
        block = 64 if block_d <= 128 else 32
        variants = [(contrastive._lse_fwd_kernel, {})]
        variants += [(contrastive._lse_bwd_kernel, {"FOR_KEYS": keys}) for keys in (False, True)]
        for kernel, extra in variants:
            for groups in (False, True):
                constants = dict(HAS_GROUPS=groups, BLOCK_M=block, BLOCK_N=block, BLOCK_D=block_d,
                                 PRECISION=precision, **extra)
                build(kernel, types, constants, 8 if block_d >= 256 else 4)

    for dtype, table in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
        types = {"X": "*" + dtype, "OUT": "*" + dtype, "GRAD_X": "*" + table, "TABLE": "*" + table}
        types["BATCH"] = "*i64"
        types.update({a: "i64" for a in ("stride_b", "stride_c", "stride_t", "stride_h", "stride_w")})
        for backward in (False, True):
            build(roi._roi_align_3d_kernel, types, dict(BACKWARD=backward, BLOCK_C=32, BLOCK_P=128), 4)
    """
)


def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("\n") == 4 * 3 * 2 + 3 * 2
