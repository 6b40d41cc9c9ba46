"""``vvk data``: check a video folder for files training would skip, and build its index."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from vvk.commands._options import DataArgs, DecoderOpt, JsonOpt, as_flags, read_data
from vvk.commands._output import Output

app = typer.Typer(help="Video datasets: find bad files, build the index.", no_args_is_help=True)

RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root", help="Folder that lists' relative paths resolve in and must stay in (default: the list's)."
    ),
]
FLAGS = {"data": "DATA...", "root": "--root"}
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
    sources: DataArgs,
    decoder: DecoderOpt = "auto",
    frames: Annotated[
        int, typer.Option(min=1, help="Clip length: shorter videos are reported as short (looped).")
    ] = 1,
    stride: Annotated[int, typer.Option(min=1, help="Clip frame stride (with --frames).")] = 1,
    deep: Annotated[
        bool, typer.Option("--deep", help="Decode every frame (slow, finds damage mid-file).")
    ] = False,
    root: RootOpt = None,
    workers: WorkersOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List every media file with its problem (or ok): empty, unreadable, not a video,
    truncated, audio only, undecodable, or named by a list outside its folder. Videos shorter
    than the clip (--frames/--stride) are listed as short: training loops them, as the
    reference samplers do, so they are not bad. Nothing is written anywhere.

    Exits 1 when any file is bad (0 when all are ok or short), so a script can stop on bad
    data: vvk data check videos/ && vvk pretrain constcl --data videos/

    EXAMPLES: vvk data check videos/ --frames 16 --stride 2
              ls clips/*.mp4 | vvk data check -
              vvk data check videos/ --json | jq -r 'select(.status != "ok") | .path'
    """
    from vvk.data.index import build_index
    from vvk.data.paths import real_path
    from vvk.data.samplers import clip_span

    with as_flags(**FLAGS):
        paths, skipped = _media_paths(read_data(sources), root)
    index = build_index(paths, decoder=decoder, deep=deep, workers=workers, progress=not json_output)
    span = clip_span(frames, stride)
    rows = [_row(path, index[real_path(path)], span) for path in paths]
    rows += [_skipped_row(record) for record in skipped]
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
    if bad:
        raise typer.Exit(1)


@app.command("index")
def index(
    sources: DataArgs,
    decoder: DecoderOpt = "auto",
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write the index here (default: the user cache, ~/.cache/vvk/index)."),
    ] = None,
    root: RootOpt = None,
    workers: WorkersOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Build the index training reads (duration, fps, frames, size, audio, problems) and cache it
    outside the input folder; only files changed since the last build are probed again.

    EXAMPLES: vvk data index videos/  ·  vvk data index train.csv --out runs/k400/index.json
    """
    from vvk.data.index import build_index, cache_path, ensure_outside
    from vvk.data.sources import data_paths

    data = read_data(sources)
    with as_flags(**FLAGS):
        for given in data_paths(data) if out_file is not None else ():
            ensure_outside(out_file, given)
        written = cache_path(data) if out_file is None else out_file
        paths, skipped = _media_paths(data, root)
    built = build_index(paths, cache=written, decoder=decoder, workers=workers, progress=not json_output)
    problems = built.problems() + Counter(r["problem"] for r in skipped)
    record = {
        "index": str(written),  # --out as typed
        "files": len(built),
        "usable": len(built) - sum(problems.values()),
        "bad": dict(sorted(problems.items())),
    }
    Output(json_output).table([record], [(k, k) for k in record])


def _media_paths(data, root: Path | None) -> tuple[list[str], list[dict[str, str]]]:
    """The media files ``data`` names (a folder's under its name as typed, each once) and the
    list lines skipped (``VideoSource.skipped``)."""
    from vvk.data.sources import data_paths, find_media, open_source

    given = data_paths(data)
    # Folders give every media file, labelled layout or not: audio-only files are reported too.
    paths = [str(f) for path in given if os.path.isdir(path) for f in find_media(path)]
    others = [path for path in given if not os.path.isdir(path)]  # lists and video files
    skipped: list[dict[str, str]] = []
    if others:
        found = open_source(others if isinstance(data, list) else others[0], root=root)
        paths += [item.path for item in found.items]
        skipped = found.skipped
    return list(dict.fromkeys(paths)), skipped


def _skipped_row(record: dict[str, str]) -> dict[str, object]:
    """A list line that was not probed (it names a file outside the list's folder)."""
    row: dict[str, object] = dict.fromkeys(key for key, _ in _COLUMNS)
    return {**row, "path": record["path"], "status": record["problem"], "detail": record["detail"]}


def _row(path: str, entry, span: int) -> dict[str, object]:
    meta = entry.meta
    status, detail = entry.problem or "ok", entry.detail
    if status == "ok" and meta is not None and meta.num_frames < span:
        status, detail = "short", f"{meta.num_frames} frames, the clip needs {span}: looped"
    return {
        "path": path,
        "status": status,
        "duration": round(meta.duration, 3) if meta else None,
        "fps": round(meta.fps, 3) if meta else None,
        "frames": meta.num_frames if meta else None,
        "size": [meta.width, meta.height] if meta else None,
        "audio": meta.has_audio if meta else None,
        "detail": detail,
    }
