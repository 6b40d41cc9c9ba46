#!/usr/bin/env bash
# Wheels that a lent GPU machine lacks and gpu_check.sh needs (its image has torch, triton,
# scikit-image and numpy, not PyAV or kornia), downloaded here into .whl/ (git-ignored through
# .git/info/exclude; about 42 MB) for the device tool to carry:
#
#     benchmarks/gpu_wheels.sh        # then: run(command=..., carry=[".whl"])
#
# The GPU image runs CPython 3.12 on x86_64 (see the device tool's KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl av==18.1.0 kornia==0.9.0 kornia_rs==0.2.0
ls -l .whl
