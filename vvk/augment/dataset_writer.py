"""Copy-Paste over a whole COCO dataset, written as a new COCO dataset.

    SRC (read only) --load, validate, probe images--> Plan --render copies (W processes)-->
    images in DST's temporary twin --gather in order, number--> instances json --rename--> DST

Determinism: each copy draws from its own generator (``render.copy_rng``) and ids are given
after gathering in (destination, copy) order, so the bytes do not depend on ``workers``.
Safety: SRC is never written; everything goes to a hidden folder beside DST that is renamed
into place at the end, so an interrupted run leaves no half dataset. Interrupted (SIGINT, or
SIGTERM under the CLI), the run stops its workers and removes that folder; killed, its workers
die with it (``_init_worker``) and the next run into the same parent folder removes the folder
(``_remove_dead_stages``).
"""

from __future__ import annotations

import difflib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from vvk import __version__
from vvk.augment.jitter import Polygons, source_box
from vvk.augment.render import (
    CopyPasteOptions,
    Plan,
    PlannedImage,
    PlannedObject,
    RenderedCopy,
    annotation_record,
    render_copy,
)
from vvk.data.coco import CocoDataset, find_coco_layout, load_coco
from vvk.data.images import ImageProbe, ImageReadError, load_rgb, probe_image, write_jpeg
from vvk.errors import VvkError
from vvk.interrupts import STOP_SIGNALS, HeldStopSignals
from vvk.staging import check_destination, staged_folder

Progress = Callable[[int, int], None]  # (destinations done, destinations in all)


def augment_coco(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    options: CopyPasteOptions,
    images: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``options.copies`` copy-pasted images per image of SRC as a new COCO dataset at DST.

    Returns a summary: images written, objects pasted / dropped by occlusion / cut by the crop,
    the warnings (skipped or converted inputs, by reason) and the seconds taken.
    """
    start = time.perf_counter()
    ann_path, images_dir = find_coco_layout(src, images=images, annotations=annotations)
    src_roots = [Path(src), ann_path.parent, images_dir]
    source_layout = find_coco_layout(source) if source is not None else None
    if source_layout is not None:
        src_roots += [Path(source), source_layout[0].parent, source_layout[1]]
    dst = check_destination(Path(dst), src_roots, overwrite=overwrite)
    dataset = load_coco(ann_path, images_dir)
    paste_from = load_coco(*source_layout) if source_layout is not None else dataset
    if workers is not None and workers < 1:
        raise VvkError(f"workers={workers}: must be at least 1 (None: chosen)", params=("workers",))
    # Contexts exit in reverse: workers stop before the staging folder is renamed or removed.
    with staged_folder(dst) as stage, _one_torch_thread():
        plan, categories, issues = build_plan(dataset, paste_from, options)
        image_dir = stage / dataset.split
        image_dir.mkdir()
        used: dict[str, int] = {}
        with _rendering(plan, image_dir, workers, used) as rendered:
            copies = _gather(rendered, len(plan.destinations), progress)
        instances = _coco_json(dataset, paste_from, plan, categories, copies, source=source)
        ann_out = stage / "annotations" / f"instances_{dataset.split}.json"
        ann_out.parent.mkdir()
        ann_out.write_text(json.dumps(instances, separators=(",", ":")) + "\n", encoding="utf-8")
    for copy in copies:
        issues.update(copy["issues"])
    seconds = time.perf_counter() - start
    return {
        "dst": str(dst),
        "annotations": str(dst / "annotations" / ann_out.name),
        "images_written": len(instances["images"]),
        "objects_written": len(instances["annotations"]),
        "objects_pasted": sum(c["num_pasted"] for c in copies),
        "objects_dropped": sum(c["num_dropped"] for c in copies),
        "objects_cropped_out": sum(c["num_cropped_out"] for c in copies),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(copies) / seconds, 2),  # the effective rate, start-up included
        "workers": used["workers"],
        "warnings": dict(sorted((+issues).items())),
    }


# --------------------------------------------------------------------------------------------
# Planning: which images and objects take part, with which output category ids


def build_plan(
    dataset: CocoDataset,
    paste_from: CocoDataset,
    options: CopyPasteOptions,
) -> tuple[Plan, list[dict[str, Any]], Counter]:
    """The plan, the output category list and the input problems found (by reason)."""
    categories, category_map = merge_categories(dataset, paste_from, options.categories)
    issues = Counter(dataset.issues)
    probes = _probe_all(dataset, issues, prefix="")
    destinations = tuple(
        _planned(dataset, image_id, probe, {c["id"]: c["id"] for c in dataset.categories}, crowd=True)
        for image_id, probe in probes.items()
    )
    if paste_from is dataset:
        source_probes = probes
    else:
        issues.update({f"source_{k}": v for k, v in paste_from.issues.items()})
        source_probes = _probe_all(paste_from, issues, prefix="source_")
    sources = tuple(
        image
        for image_id, probe in source_probes.items()
        if (image := _planned(paste_from, image_id, probe, category_map, crowd=False)).objects
    )
    if not destinations:
        raise VvkError(f"{dataset.annotations_path}: none of its images can be read")
    if not sources:
        wanted = f" of categories {','.join(options.categories)}" if options.categories else ""
        raise VvkError(f"{paste_from.annotations_path}: no objects{wanted} to paste")
    return Plan(destinations, sources, options), categories, issues


def merge_categories(
    dataset: CocoDataset, paste_from: CocoDataset, wanted: tuple[str, ...] | None
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Output categories (the destination's, then pasteable source ones it lacks, by name) and
    a map from pasteable source category ids to output ids."""
    by_name = {c["name"]: c for c in paste_from.categories}
    if wanted is not None:
        for name in wanted:
            if name not in by_name:
                close = difflib.get_close_matches(name, list(by_name), n=1)
                hint = f"did you mean {close[0]!r}" if close else "see the categories in the source json"
                raise VvkError(f"--categories: no category named {name!r} in the source", hint=hint)
    pasteable = [c for c in paste_from.categories if wanted is None or c["name"] in wanted]
    categories = [dict(c) for c in dataset.categories]
    out_ids = {c["name"]: c["id"] for c in categories}
    next_id = max((c["id"] for c in categories), default=0) + 1
    category_map = {}
    for cat in pasteable:
        if cat["name"] not in out_ids:
            categories.append({**cat, "id": next_id})
            out_ids[cat["name"]] = next_id
            next_id += 1
        category_map[cat["id"]] = out_ids[cat["name"]]
    return categories, category_map


def _probe_all(dataset: CocoDataset, issues: Counter, *, prefix: str) -> dict[int, ImageProbe]:
    """Header probes of the readable images whose size matches the json; the others, and the
    conversions ahead, are counted in ``issues``. Only headers are read, never the pixels."""
    usable = {}
    for image in dataset.images.values():
        try:
            probe = probe_image(dataset.image_path(image), expected_size=(image.width, image.height))
        except ImageReadError as e:
            issues[prefix + ("image_missing" if str(e) == "missing" else "image_unreadable")] += 1
            continue
        if probe.size != (image.width, image.height):
            issues[prefix + "image_size_mismatch"] += 1
            continue
        usable[image.id] = probe
        if probe.conversion:
            issues[f"{prefix}image_converted_{probe.conversion}"] += 1
        if probe.exif_orientation != 1:
            issues[prefix + "image_exif_rotated"] += 1
    return usable


def _planned(
    dataset: CocoDataset, image_id: int, probe: ImageProbe, category_map: dict[int, int], *, crowd: bool
) -> PlannedImage:
    image = dataset.images[image_id]
    objects = []
    for a in dataset.annotations[image_id]:
        if a.category_id not in category_map or (a.iscrowd and not crowd):
            continue
        seg = Polygons.from_coco(a.segmentation) if isinstance(a.segmentation, list) else a.segmentation
        box = source_box(seg, image.height, image.width)
        objects.append(PlannedObject(a.id, category_map[a.category_id], seg, a.iscrowd, box))
    return PlannedImage(
        id=image.id,
        path=str(dataset.image_path(image)),
        height=image.height,
        width=image.width,
        exif_orientation=probe.exif_orientation,
        license=image.license,
        objects=tuple(objects),
    )


# --------------------------------------------------------------------------------------------
# Rendering, in this process or in a pool of spawned ones

_WORKER: dict[str, Any] = {}
T = TypeVar("T")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _init_worker(plan: Plan, image_dir: Path, threads: int | None, parent: int | None = None) -> None:
    if parent is not None:
        _die_with(parent)
        # Ctrl-C, `timeout` and batch schedulers signal the whole process group: the parent
        # stops the pool and cleans up; a worker that died first would only add a traceback or
        # a broken pool. Both were blocked since this process was spawned (``_LazyPool._start``):
        # a pending one is dropped.
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # one per process: W processes share W cores
    _WORKER.update(plan=plan, image_dir=image_dir)


def _die_with(parent: int) -> None:
    """End this worker when ``parent`` dies, however it dies (SIGKILL included): re-parented to
    init, it would go on writing into a staging folder nobody will rename.

    Linux: the kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``), immediately,
    even while this process is busy in compiled code. Elsewhere a daemon thread polls the parent
    id (``os.getppid`` changes on re-parenting), which acts within a second once the GIL is free.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before the request was in place
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="vvk-parent-watch").start()


def _watch_parent(parent: int, interval: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _render_destination(index: int) -> list[dict[str, Any]]:
    """Every copy of destination ``index``: images written, records returned (ids not yet set)."""
    plan: Plan = _WORKER["plan"]
    dst = plan.destinations[index]
    try:
        pixels = load_rgb(dst.path, exif_orientation=dst.exif_orientation)
    except ImageReadError:
        pixels = None
    return [
        _copy_record(plan, dst, render_copy(plan, dst, pixels, copy)) for copy in range(plan.options.copies)
    ]


def _copy_record(plan: Plan, dst: PlannedImage, rendered: RenderedCopy) -> dict[str, Any]:
    """Write the copy's image; its COCO records and counts, as plain data for the parent."""
    issues = Counter(rendered.issues)
    annotations = []
    file_name = None
    if rendered.image is not None:
        file_name = f"{dst.id:012d}_cp{rendered.copy:02d}.jpg"
        write_jpeg(_WORKER["image_dir"] / file_name, rendered.image)
        for inst in rendered.instances:
            ann = annotation_record(inst, plan.options.mask_format)
            if ann is None:
                issues["objects_lost_as_polygons"] += 1
            else:
                annotations.append(ann)
    return {
        "destination_id": dst.id,
        "source_id": rendered.source_id,
        "copy": rendered.copy,
        "license": dst.license,
        "file_name": file_name,
        "annotations": annotations,
        "num_pasted": rendered.num_pasted,
        "num_dropped": rendered.num_dropped,
        "num_cropped_out": rendered.num_cropped_out,
        "issues": dict(issues),
    }


# A spawned worker imports torch and vvk and unpickles the plan before its first image: 4.4 s
# on the 2-core AMD EPYC vvk is measured on (`python -c "import torch, vvk.augment.render"`,
# twice). A run of 200 small outputs takes less than two of those on one core, which is why two
# workers started up front were slower than one (issue 22).
WORKER_START_S = 4.4


def auto_workers(remaining: int, seconds_each: float, *, cores: int) -> int:
    """Processes worth rendering ``remaining`` destinations of ``seconds_each``: this one, plus
    a worker for every two start-ups of work left (a worker must repay its start-up and the
    core it takes from this process meanwhile), at most ``cores``."""
    helpers = int(remaining * seconds_each // (2 * WORKER_START_S))
    return max(1, min(cores, 1 + helpers))


@contextmanager
def _rendering(
    plan: Plan, image_dir: Path, workers: int | None, used: dict[str, int]
) -> Iterator[Iterable[list[dict[str, Any]]]]:
    """Rendered destinations, in order. This process renders; ``workers - 1`` spawned helpers
    join as they come up (``None``: as many as ``auto_workers`` finds worth it after timing the
    first destination here), so that a run too short to repay their start-up is not slowed by
    it. ``used["workers"]``: this process and the helpers that came up before the work ran out."""
    _init_worker(plan, image_dir, None)
    pool = _LazyPool(plan, image_dir)
    try:
        yield pool.results(len(plan.destinations), workers, used)
    finally:
        pool.close()


def _ready() -> int:
    """A worker's first task: done once it has started (imports, plan unpickled)."""
    return os.getpid()


class _LazyPool:
    """Spawned helpers that take destinations once they have started, while this process
    renders the others; results come back in destination order."""

    def __init__(self, plan: Plan, image_dir: Path):
        self.plan, self.image_dir = plan, image_dir
        self.executor: ProcessPoolExecutor | None = None

    def _start(self, helpers: int) -> list:
        import multiprocessing

        # The plan goes to each worker once, through the initializer, not with every task.
        self.executor = ProcessPoolExecutor(
            max_workers=helpers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.plan, self.image_dir, 1, os.getpid()),
        )
        # Each submit while no worker is idle starts one. A worker inherits the signal mask of
        # the thread that spawns it, so it starts with SIGINT and SIGTERM blocked: a Ctrl-C to the
        # process group during its start-up (imports, unpickling the plan) is no traceback, and
        # `_init_worker` then ignores them and unblocks. Here a signal waits until the workers'
        # start-up data is written: cut short, it would leave them reading a truncated pickle.
        with HeldStopSignals(block=True):
            return [self.executor.submit(_ready) for _ in range(helpers)]

    def results(self, total: int, workers: int | None, used: dict[str, int]) -> Iterator[list[dict]]:
        done: dict[int, list[dict]] = {}
        pending: dict[int, Any] = {}  # destination -> future
        ahead, emitted = 0, 0  # the next destination to hand out; the next to yield
        helpers, starting = 0, []
        used["workers"] = 1
        if workers is None and total > 1:  # time one destination here, then decide
            done[0], seconds = _seconds_without_compiling(lambda: _render_destination(0))
            ahead = 1
            workers = auto_workers(total - 1, seconds, cores=os.cpu_count() or 1)
        helpers = min((workers or 1) - 1, total - ahead)
        if helpers > 0:
            starting = self._start(helpers)
        while emitted < total:
            ready = sum(f.done() for f in starting)  # helpers up: keep two destinations queued for each
            while ahead < total and len(pending) < 2 * ready:
                pending[ahead], ahead = self.executor.submit(_render_destination, ahead), ahead + 1
            for index in [i for i, f in pending.items() if f.done()]:
                done[index] = pending.pop(index).result()
            while emitted in done:
                yield done.pop(emitted)
                emitted += 1
            if ahead < total:  # this process renders the next one meanwhile
                done[ahead], ahead = _render_destination(ahead), ahead + 1
            elif pending:
                wait(pending.values(), return_when=FIRST_COMPLETED)
        used["workers"] += sum(f.done() for f in starting)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _seconds_without_compiling(work: Callable[[], T]) -> tuple[T, float]:
    """``work()``, and the seconds it took less those numba spent compiling or loading kernels
    in it: the first destination compiles the mask kernels (seconds on a new numba cache, where
    rendering takes a fraction of one), which would have started every helper for any dataset."""
    import numba.core.event

    started = time.perf_counter()
    with numba.core.event.install_listener(
        "numba:compiler_lock", numba.core.event.TimingListener()
    ) as compiling:
        result = work()
    return result, time.perf_counter() - started - (compiling.duration if compiling.done else 0.0)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Resampling on one thread in this process too: ``workers`` is then the cores used, and
    torch's intra-op threads do not fight each other on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _gather(results: Iterable[list[dict]], total: int, progress: Progress | None) -> list[dict]:
    copies = []
    for done, records in enumerate(results, start=1):
        copies.extend(records)
        if progress is not None:
            progress(done, total)
    return copies


# --------------------------------------------------------------------------------------------
# Output


def _coco_json(
    dataset: CocoDataset,
    paste_from: CocoDataset,
    plan: Plan,
    categories: list[dict[str, Any]],
    copies: list[dict[str, Any]],
    *,
    source: str | os.PathLike | None,
) -> dict[str, Any]:
    images, annotations = [], []
    size = plan.options.size
    for copy in copies:
        if copy["file_name"] is None:
            continue
        image_id = len(images) + 1
        image = {"id": image_id, "file_name": copy["file_name"], "width": size, "height": size}
        if copy["license"] is not None:
            image["license"] = copy["license"]
        image["vvk"] = {k: copy[k] for k in ("destination_id", "source_id", "copy")}
        images.append(image)
        for ann in copy["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    record = {
        "version": __version__,
        "method": "copy-paste",
        "src": str(dataset.annotations_path),
        "source": str(paste_from.annotations_path) if source is not None else None,
        **asdict(plan.options),
    }
    info = {**dataset.info, "description": f"Copy-Paste augmentation of {dataset.annotations_path.name}"}
    return {
        "info": info,
        "licenses": dataset.licenses,
        "images": images,
        "annotations": annotations,
        "categories": categories,
        "vvk": record,
    }
