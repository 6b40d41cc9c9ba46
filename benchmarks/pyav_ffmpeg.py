"""The FFmpeg that PyAV's wheel bundles, made loadable by torchcodec where the system has none.

    LD_LIBRARY_PATH=$(python benchmarks/pyav_ffmpeg.py) python benchmarks/peers.py --only decode

torchcodec links against ``libavcodec.so.62`` and its siblings by their plain names (one core
library per FFmpeg major version, 4 to 8); PyAV's wheel ships the same libraries renamed by
auditwheel (``av.libs/libavcodec-5e6b81c2.so.62.28.102``). This makes a folder of links with the
plain names (``<tmp>/vvk-pyav-ffmpeg-<av version>``) and prints it, followed by ``av.libs``
itself (where those libraries find their own dependencies: ``$ORIGIN`` is the link's folder), for
``LD_LIBRARY_PATH``, which the loader reads once, at the start of a process. Exits 1 with the
reason when PyAV is missing or bundles no FFmpeg. Benchmarks only: vvk itself decodes with PyAV.
"""

from __future__ import annotations

import re
import tempfile
from importlib import metadata
from pathlib import Path

LIBRARIES = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale", "swresample")
BUNDLED = re.compile(r"^lib(?P<name>[a-z]+)-[0-9a-f]{8}\.so\.(?P<major>\d+)(\.\d+)*$")


def link_folder() -> str:
    """``LINKS:AV_LIBS``: the folder of plain-named links, made if missing, and PyAV's library folder."""
    try:
        bundled = Path(metadata.distribution("av").locate_file("av.libs"))
        version = metadata.version("av")
    except metadata.PackageNotFoundError:
        raise SystemExit("pyav_ffmpeg: PyAV is not installed (pip install av)") from None
    found = {}
    for path in bundled.glob("lib*.so.*") if bundled.is_dir() else ():
        match = BUNDLED.match(path.name)
        if match and match["name"] in LIBRARIES:
            found[f"lib{match['name']}.so.{match['major']}"] = path
    if len(found) != len(LIBRARIES):
        raise SystemExit(f"pyav_ffmpeg: {bundled} holds {sorted(found)}, not all of {LIBRARIES}")
    links = Path(tempfile.gettempdir()) / f"vvk-pyav-ffmpeg-{version}"
    links.mkdir(exist_ok=True)
    for name, target in found.items():
        link = links / name
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    return f"{links}:{bundled}"


if __name__ == "__main__":
    print(link_folder())
