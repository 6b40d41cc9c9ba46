"""Copy-Paste over a whole COCO dataset: real data, pixel truth, determinism, safety, bad input."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from vvk.augment import CopyPasteOptions, augment_coco, dataset_writer
from vvk.augment.copy_paste import survives_occlusion
from vvk.augment.dataset_writer import auto_workers, build_plan
from vvk.augment.jitter import jitter_image
from vvk.augment.render import annotation_record, draw_copy, jitter_objects, render_copy
from vvk.data.coco import check_instances, find_coco_layout, load_coco
from vvk.data.images import load_rgb, write_jpeg
from vvk.errors import VvkError


@pytest.fixture(scope="module")
def tiny_coco(shared_data) -> Path:
    return shared_data / "coco" / "tiny_coco"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def output_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_is_a_consistent_coco_dataset(tiny_coco, tmp_path):
    before = snapshot(tiny_coco)
    options = CopyPasteOptions(copies=2, size=256, seed=1)
    summary = augment_coco(tiny_coco, tmp_path / "out", options=options)
    assert snapshot(tiny_coco) == before  # SRC never written
    ann_path = tmp_path / "out" / "annotations" / "instances_train2017.json"
    assert summary["annotations"] == str(ann_path)
    assert check_instances(ann_path, tmp_path / "out" / "train2017") == []
    coco = COCO(str(ann_path))
    assert len(coco.imgs) == summary["images_written"] == 100
    assert len(coco.anns) == summary["objects_written"]
    assert summary["objects_pasted"] > 50 and summary["objects_dropped"] >= 0
    for ann in coco.anns.values():
        mask = coco.annToMask(ann)
        assert mask.shape == (256, 256) and ann["area"] == mask.sum() > 0
        assert ann["segmentation"]["size"] == [256, 256]
    data = json.loads(ann_path.read_text())
    source = json.loads((tiny_coco / "annotations" / "instances_train2017.json").read_text())
    assert data["categories"] == source["categories"]
    assert data["vvk"]["seed"] == 1 and data["vvk"]["copies"] == 2 and data["vvk"]["size"] == 256
    assert {im["vvk"]["copy"] for im in data["images"]} == {0, 1}
    assert summary["warnings"] == {"images_without_objects": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_pixel_truth_and_per_object_occlusion_on_real_data(tiny_coco, tmp_path):
    """Checked before JPEG encoding (lossless): the composed frame equals the independently
    re-jittered source under the pasted masks and the re-jittered destination everywhere else;
    the written dataset is then shown to hold exactly these frames (up to JPEG) and records."""
    options = CopyPasteOptions(copies=1, size=256, seed=3)
    dataset = load_coco(*find_coco_layout(tiny_coco))
    plan, _, _ = build_plan(dataset, dataset, options)
    augment_coco(tiny_coco, tmp_path / "out", options=options)
    written = json.loads((tmp_path / "out" / "annotations" / "instances_train2017.json").read_text())
    anns_by_image = {im["id"]: [] for im in written["images"]}
    for ann in written["annotations"]:
        anns_by_image[ann["image_id"]].append(ann)
    pasted_copies = 0
    for index, dst in enumerate(plan.destinations):
        pixels = load_rgb(dst.path, exif_orientation=dst.exif_orientation)
        rendered = render_copy(plan, dst, pixels, 0, keep_inputs=True)
        draw = draw_copy(plan, dst, 0)
        assert np.array_equal(rendered.jittered_dst, jitter_image(pixels, draw.dst_jitter))
        pasted = [inst for inst, flag in zip(rendered.instances, rendered.pasted_flags, strict=True) if flag]
        union = np.zeros((256, 256), bool)
        for inst in pasted:
            full = inst.mask.to_full()
            union |= full
            assert np.array_equal(rendered.image[full], rendered.jittered_src[full])
        assert np.array_equal(union, rendered.union.to_full())
        assert np.array_equal(rendered.image[~union], rendered.jittered_dst[~union])
        if pasted:
            pasted_copies += 1
            source = load_rgb(draw.source.path, exif_orientation=draw.source.exif_orientation)
            assert np.array_equal(rendered.jittered_src, jitter_image(source, draw.src_jitter))
        kept = {
            inst.origin: inst
            for inst, flag in zip(rendered.instances, rendered.pasted_flags, strict=True)
            if not flag
        }
        for before in jitter_objects(dst.objects, draw.dst_jitter):  # as render_copy does
            remaining = before.mask.to_full() & ~union
            rows, cols = np.nonzero(remaining)
            box_after = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) if rows.size else None
            keep = survives_occlusion(before.mask.box, box_after, int(remaining.sum()))
            assert (before.origin in kept) is keep
            if keep:
                assert np.array_equal(kept[before.origin].mask.to_full(), remaining)
        image_entry = written["images"][index]
        assert image_entry["vvk"]["destination_id"] == dst.id
        write_jpeg(tmp_path / "check.jpg", rendered.image)  # the file holds exactly this frame
        on_disk = tmp_path / "out" / "train2017" / image_entry["file_name"]
        assert on_disk.read_bytes() == (tmp_path / "check.jpg").read_bytes()
        records = [annotation_record(inst, "rle") for inst in rendered.instances]
        assert [{k: a[k] for k in records[0]} for a in anns_by_image[image_entry["id"]]] == records
    assert pasted_copies > 20


def test_same_seed_same_bytes_whatever_the_workers(tiny_coco, tmp_path, monkeypatch):
    options = CopyPasteOptions(copies=2, size=128, seed=7, blend_sigma=1.0)
    assert augment_coco(tiny_coco, tmp_path / "w1", options=options, workers=1)["workers"] == 1
    one = output_files(tmp_path / "w1")
    assert len(one) == 101
    # auto: 50 small images are far less work than a helper's start-up, so this process alone
    auto = augment_coco(tiny_coco, tmp_path / "auto", options=options)
    assert auto["workers"] == 1 and output_files(tmp_path / "auto") == one
    assert auto["images_per_second"] == pytest.approx(100 / auto["seconds"], rel=0.02)
    # two: slowed down here (the helper imports the real renderer), the helper comes up in time
    # and renders part of the images, which must change no byte
    real = dataset_writer.render_copy

    def slow_render_copy(*args, **kwargs):
        time.sleep(0.15)
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_writer, "render_copy", slow_render_copy)
    assert augment_coco(tiny_coco, tmp_path / "w2", options=options, workers=2)["workers"] == 2
    assert output_files(tmp_path / "w2") == one
    monkeypatch.undo()
    augment_coco(
        tiny_coco, tmp_path / "s8", options=CopyPasteOptions(copies=2, size=128, seed=8, blend_sigma=1.0)
    )
    assert output_files(tmp_path / "s8") != one


def test_auto_workers_start_helpers_only_when_the_work_repays_them():
    start = dataset_writer.WORKER_START_S
    assert auto_workers(200, 0.02, cores=2) == 1  # 4 s of work: less than two start-ups
    assert auto_workers(10, 2 * start / 10, cores=4) == 2  # exactly two start-ups: one helper
    assert auto_workers(10_000, 0.1, cores=2) == 2  # capped by the cores
    assert auto_workers(10_000, 0.1, cores=8) == 8
    assert auto_workers(0, 1.0, cores=8) == 1


def test_auto_workers_time_the_first_image_without_numbas_compile(monkeypatch):
    """On a new numba cache the first destination also compiles the mask kernels (seconds): the
    worker count must come from its rendering time alone."""
    from numba.core.compiler_lock import global_compiler_lock

    def render_while_compiling(index):
        with global_compiler_lock:  # what numba holds while it compiles or loads a kernel
            time.sleep(0.5)
        return [{"destination_id": index}]

    timed = []

    def one_process(remaining, seconds_each, *, cores):
        timed.append(seconds_each)
        return 1

    monkeypatch.setattr(dataset_writer, "_render_destination", render_while_compiling)
    monkeypatch.setattr(dataset_writer, "auto_workers", one_process)
    used = {}
    results = list(dataset_writer._LazyPool(None, None).results(3, None, used))
    assert [r[0]["destination_id"] for r in results] == [0, 1, 2] and used["workers"] == 1
    assert len(timed) == 1 and timed[0] < 0.25  # 0.5 s of it was compiling


def test_destination_rules_and_interrupted_runs(tiny_coco, tmp_path, monkeypatch):
    options = CopyPasteOptions(size=64)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    with pytest.raises(VvkError, match="folder is not empty"):
        augment_coco(tiny_coco, dst, options=options)
    with pytest.raises(VvkError, match="may not be inside"):
        augment_coco(tiny_coco, tiny_coco / "augmented", options=options)
    augment_coco(tiny_coco, dst, options=options, overwrite=True)
    assert not (dst / "keep.txt").exists() and (dst / "annotations").is_dir()

    import vvk.augment.dataset_writer as writer

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return render_copy(*args, **kwargs)

    monkeypatch.setattr(writer, "render_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        augment_coco(tiny_coco, tmp_path / "fresh", options=options)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        augment_coco(tiny_coco, dst, options=options, overwrite=True)
    assert not (tmp_path / "fresh").exists()
    assert (dst / "annotations" / "instances_train2017.json").is_file()  # the old output survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_polygon_output_is_consistent(tiny_coco, tmp_path):
    options = CopyPasteOptions(size=128, seed=2, mask_format="polygon")
    augment_coco(tiny_coco, tmp_path / "out", options=options)
    ann_path = tmp_path / "out" / "annotations" / "instances_train2017.json"
    assert check_instances(ann_path, tmp_path / "out" / "train2017") == []
    anns = json.loads(ann_path.read_text())["annotations"]
    assert all(isinstance(a["segmentation"], list) for a in anns if not a["iscrowd"])
    assert all(isinstance(a["segmentation"], dict) for a in anns if a["iscrowd"])
    coords = [v for a in anns if not a["iscrowd"] for poly in a["segmentation"] for v in poly]
    assert min(coords) >= 0 and max(coords) <= 128


# --------------------------------------------------------------------------------------------
# Another source dataset, category filters, bad input


def make_dataset(root: Path, images: list[tuple[str, np.ndarray | None, str]], annotations, categories):
    """Write images (name, pixels or None for missing, PIL save mode) and an instances json."""
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    entries = []
    for k, (name, pixels, mode) in enumerate(images, start=1):
        height, width = (48, 64) if pixels is None else pixels.shape[:2]
        entries.append({"id": k, "file_name": name, "width": width, "height": height})
        if pixels is not None:
            Image.fromarray(pixels).convert(mode).save(root / "train2017" / name)
    data = {"images": entries, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return root


def square(ann_id, image_id, category_id, x=8, y=8, side=24):
    poly = [x, y, x + side, y, x + side, y + side, x, y + side]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": [poly],
        "iscrowd": 0,
    }


def test_source_dataset_categories_by_name_and_filter(tiny_coco, tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    categories = [{"id": 5, "name": "dog"}, {"id": 6, "name": "unicorn"}]  # dog is 18 in COCO
    source = make_dataset(
        tmp_path / "src", [("a.png", photo, "RGB")], [square(1, 1, 5), square(2, 1, 6, x=36)], categories
    )
    options = CopyPasteOptions(copies=2, size=96, seed=0)
    summary = augment_coco(tiny_coco, tmp_path / "out", options=options, source=source)
    data = json.loads((tmp_path / "out" / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert len(names) == 81 and names[91] == "unicorn"  # appended after COCO's highest id, 90
    assert {im["vvk"]["source_id"] for im in data["images"]} == {1}
    pasted_categories = {a["category_id"] for a in data["annotations"]} - {
        a["category_id"]
        for a in json.loads((tiny_coco / "annotations" / "instances_train2017.json").read_text())[
            "annotations"
        ]
    }
    assert pasted_categories <= {91}
    assert summary["objects_pasted"] > 0 and data["vvk"]["source"].endswith("instances_train2017.json")

    only_unicorn = CopyPasteOptions(copies=2, size=96, seed=0, categories=("unicorn",))
    augment_coco(tiny_coco, tmp_path / "unicorn", options=only_unicorn, source=source)
    data = json.loads((tmp_path / "unicorn" / "annotations" / "instances_train2017.json").read_text())
    dog_in_input = sum(
        1
        for a in load_coco(*find_coco_layout(tiny_coco)).annotations.values()
        for x in a
        if x.category_id == 18
    )
    assert sum(a["category_id"] == 18 for a in data["annotations"]) <= 2 * dog_in_input
    with pytest.raises(VvkError, match="no category named 'unicor'.*did you mean 'unicorn'"):
        augment_coco(
            tiny_coco, tmp_path / "x", options=CopyPasteOptions(categories=("unicor",)), source=source
        )


def test_bad_inputs_are_skipped_or_converted_and_counted(tmp_path):
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    grey16 = (rng.integers(0, 65536, (48, 64))).astype(np.uint16)
    rgba = np.dstack([photo, np.full((48, 64), 200, np.uint8)])
    images = [
        ("rgb.jpg", photo, "RGB"),
        ("grey.jpg", photo, "L"),
        ("cmyk.jpg", photo, "CMYK"),
        ("deep.png", grey16, "I;16"),
        ("alpha.png", rgba, "RGBA"),
        ("missing.jpg", None, "RGB"),
        ("empty.jpg", photo, "RGB"),  # no annotations: still a destination
        ("corrupt.jpg", None, "RGB"),
        ("rotated.jpg", None, "RGB"),
        ("resized.jpg", photo, "RGB"),  # replaced below by a smaller file than the json says
    ]
    cats = [{"id": 1, "name": "thing"}]
    annotations = [square(k, k, 1) for k in (1, 2, 3, 4, 5, 6, 8, 9, 10)] + [
        square(20, 99, 1),  # unknown image
        square(21, 1, 7),  # unknown category
        {**square(22, 1, 1), "segmentation": [[5, 5, 10, 5, 20, 5]]},  # zero area
        {**square(23, 1, 1), "segmentation": [[70, 1, 90, 1, 90, 20]]},  # outside the 64-px image
    ]
    root = make_dataset(tmp_path / "bad", images, annotations, cats)
    (root / "train2017" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(photo[:30, :40]).save(root / "train2017" / "resized.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8  # stored sideways: 64 rows x 48 columns, upright 48 x 64 as the json says
    Image.fromarray(np.ascontiguousarray(np.rot90(photo, -1))).save(
        root / "train2017" / "rotated.jpg", exif=exif
    )

    summary = augment_coco(root, tmp_path / "out", options=CopyPasteOptions(copies=1, size=64, seed=0))
    assert summary["warnings"] == {
        "annotation_outside_image": 1,
        "annotation_unknown_category": 1,
        "annotation_unknown_image": 1,
        "annotation_zero_area": 1,
        "image_converted_16bit": 1,
        "image_converted_alpha": 1,
        "image_converted_cmyk": 1,
        "image_converted_greyscale": 1,
        "image_exif_rotated": 1,
        "image_missing": 1,
        "image_size_mismatch": 1,
        "image_unreadable": 1,
        "images_without_objects": 1,
    }
    assert summary["images_written"] == 7  # ten listed: one missing, one corrupt, one resized
    out = tmp_path / "out"
    assert check_instances(out / "annotations" / "instances_train2017.json", out / "train2017") == []
    for path in (out / "train2017").iterdir():
        assert Image.open(path).mode == "RGB"


def test_malformed_json_is_one_line_error(tmp_path):
    root = tmp_path / "broken"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    (root / "train2017" / "a.jpg").write_bytes(b"x")
    (root / "annotations" / "instances_train2017.json").write_text('{"images": [\n  1,,\n]}')
    with pytest.raises(VvkError) as info:
        augment_coco(root, tmp_path / "out", options=CopyPasteOptions())
    assert info.value.one_line().startswith(
        f"{root / 'annotations' / 'instances_train2017.json'}:2:5: malformed JSON"
    )
    assert not (tmp_path / "out").exists()


def test_file_names_that_leave_the_images_folder_are_skipped_and_counted(tiny_coco, tmp_path):
    """An annotation file cannot make Copy-Paste read a file outside its images folder: a
    ``../..`` name, an absolute path and a link out are skipped records, counted, and the planted
    file's pixels reach no output; the rest is exactly what the dataset without them gives."""
    source = json.loads((tiny_coco / "annotations" / "instances_train2017.json").read_text())
    annotated = {a["image_id"] for a in source["annotations"]}
    kept = [im for im in source["images"] if im["id"] in annotated][:3]
    kept_anns = [a for a in source["annotations"] if a["image_id"] in {im["id"] for im in kept}]
    first_anns = [a for a in kept_anns if a["image_id"] == kept[0]["id"]]

    def dataset(root: Path, images: list[dict], annotations: list[dict]) -> Path:
        (root / "annotations").mkdir(parents=True)
        (root / "train2017").mkdir()
        for image in kept:
            shutil.copy(tiny_coco / "train2017" / image["file_name"], root / "train2017")
        data = {**source, "images": kept + images, "annotations": kept_anns + annotations}
        (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
        return root

    secret = tmp_path / "secret.jpg"  # beside the dataset, the size of a real image, all magenta
    write_jpeg(secret, np.full((kept[0]["height"], kept[0]["width"], 3), MAGENTA, np.uint8))
    names = ["../../secret.jpg", str(secret), "link.jpg"]
    hostile_images = [{**kept[0], "id": 9000 + k, "file_name": name} for k, name in enumerate(names)]
    hostile_anns = [  # the first image's objects again: each hostile image is a paste source too
        {**a, "id": 900_000 + 1000 * k + j, "image_id": 9000 + k}
        for k in range(len(names))
        for j, a in enumerate(first_anns)
    ]
    hostile = dataset(tmp_path / "hostile", hostile_images, hostile_anns)
    (hostile / "train2017" / "link.jpg").symlink_to(secret)
    clean = dataset(tmp_path / "clean", [], [])

    options = CopyPasteOptions(copies=2, size=128, seed=0, max_objects=100)
    summary = augment_coco(hostile, tmp_path / "out", options=options)
    expected = augment_coco(clean, tmp_path / "expected", options=options)
    assert summary["warnings"] == {**expected["warnings"], "image_outside_folder": 3}
    written = output_files(tmp_path / "out" / "train2017")
    assert written == output_files(tmp_path / "expected" / "train2017") and len(written) == 6
    for path in (tmp_path / "out" / "train2017").iterdir():
        assert not _magenta(load_rgb(path)).any(), path


MAGENTA = (255, 0, 255)


def _magenta(pixels: np.ndarray) -> np.ndarray:
    r, g, b = (pixels[..., c].astype(int) for c in range(3))
    return (r > 200) & (g < 60) & (b > 200)
