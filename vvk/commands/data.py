"""``vvk data``: check a video folder for files training would skip, and build its index."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from vvk.commands._options import DecoderOpt, JsonOpt
from vvk.commands._output import Output

app = typer.Typer(help="Video datasets: find bad files, build the index.", no_args_is_help=True)

SourceArg = Annotated[
    Path, typer.Argument(help="A folder of videos (flat or class/video.ext) or a CSV/TSV list of videos.")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, help="Probing threads (default: 2 per CPU).")
]

_COLUMNS = [
    ("path", "path"),
    ("status", "status"),
    ("duration", "seconds"),
    ("fps", "fps"),
    ("frames", "frames"),
    ("size", "size"),
    ("audio", "audio"),
    ("detail", "detail"),
]


_USABLE = ("ok", "short")  # statuses of files that training reads


@app.command("check")
def check(
    source: SourceArg,
    decoder: DecoderOpt = "auto",
    frames: Annotated[
        int, typer.Option(min=1, help="Clip length: shorter videos are reported as short (looped).")
    ] = 1,
    stride: Annotated[int, typer.Option(min=1, help="Clip frame stride (with --frames).")] = 1,
    deep: Annotated[
        bool, typer.Option("--deep", help="Decode every frame (slow, finds damage mid-file).")
    ] = False,
    workers: WorkersOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List every media file with its problem (or ok): empty, not a video, truncated, audio only,
    undecodable. Videos shorter than the clip (--frames/--stride) are listed as short: training
    loops them, as the reference samplers do. Nothing is written anywhere.

    EXAMPLES: vvk data check videos/ --frames 16 --stride 2
              vvk data check videos/ --json | jq -r 'select(.status != "ok") | .path'
    """
    from vvk.data.index import build_index
    from vvk.data.samplers import clip_span

    paths = _media_paths(source)
    index = build_index(paths, decoder=decoder, deep=deep, workers=workers, progress=not json_output)
    span = clip_span(frames, stride)
    rows = [_row(entry, span) for entry in index]
    out = Output(json_output)
    out.table(rows, _COLUMNS)
    bad = [r for r in rows if r["status"] not in _USABLE]
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(r["status"] for r in bad).items()))
    short = sum(r["status"] == "short" for r in rows)
    out.note(
        f"{len(rows)} file(s): {len(rows) - len(bad)} ok"
        + (f" ({short} short, looped)" if short else "")
        + f", {len(bad)} bad"
        + (f" ({kinds})" if kinds else "")
    )


@app.command("index")
def index(
    source: SourceArg,
    decoder: DecoderOpt = "auto",
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write the index here (default: the user cache, ~/.cache/vvk/index)."),
    ] = None,
    workers: WorkersOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Build the index training reads (duration, fps, frames, size, audio, problems) and cache it
    outside the input folder; only files changed since the last build are probed again.

    EXAMPLES: vvk data index videos/  ·  vvk data index train.csv --out runs/k400/index.json
    """
    from vvk.data.index import build_index, cache_path, ensure_outside

    out_file = cache_path(source) if out_file is None else ensure_outside(out_file, source)
    paths = _media_paths(source)
    built = build_index(paths, cache=out_file, decoder=decoder, workers=workers, progress=not json_output)
    problems = built.problems()
    record = {
        "index": str(out_file),
        "files": len(built),
        "usable": len(built) - sum(problems.values()),
        "bad": dict(sorted(problems.items())),
    }
    Output(json_output).table([record], [(k, k) for k in record])


def _media_paths(source: Path) -> list[str]:
    from vvk.data.sources import find_media, open_source

    if source.is_dir():  # every media file, labelled layout or not: audio-only files are reported too
        return [str(p) for p in find_media(source)]
    return [item.path for item in open_source(source).items]


def _row(entry, span: int) -> dict[str, object]:
    meta = entry.meta
    status, detail = entry.problem or "ok", entry.detail
    if status == "ok" and meta is not None and meta.num_frames < span:
        status, detail = "short", f"{meta.num_frames} frames, the clip needs {span}: looped"
    return {
        "path": entry.path,
        "status": status,
        "duration": round(meta.duration, 3) if meta else None,
        "fps": round(meta.fps, 3) if meta else None,
        "frames": meta.num_frames if meta else None,
        "size": [meta.width, meta.height] if meta else None,
        "audio": meta.has_audio if meta else None,
        "detail": detail,
    }
