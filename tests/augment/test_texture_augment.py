"""SITT texture augmentation of an ImageFolder (``vvk.augment.texture``) on real DTD textures:
which classes, how many images, from what, reproducibly, and nothing half-written."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.datasets import ImageFolder

from vvk.augment.texture import augment_texture, choose_classes, read_image_folder, tail_classes
from vvk.errors import VvkError

SHORT = ("steps=3", "size=32")  # a texture model in well under a second
# A long-tailed set: the mean count is 3.75, so braided and bubbly are the tail
COUNTS = {"banded": 6, "blotchy": 6, "braided": 2, "bubbly": 1}
SIZES = {"banded": (64, 48), "blotchy": (48, 64), "braided": (56, 56), "bubbly": (40, 72)}  # (w, h)


def build_dataset(root: Path, shared_data: Path, counts: dict[str, int]) -> Path:
    """``root/<class>/<image>.png``: the first images of real DTD classes, downscaled."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for path in sorted((shared_data / "textures" / "dtd" / name).iterdir())[:n]:
            image = Image.open(path).convert("RGB").resize(SIZES.get(name, (48, 48)))
            image.save(root / name / f"{path.stem}.png")
    return root


def texture_file(shared_data: Path, dest: Path, name: str = "cobwebbed", size: int = 64) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = sorted((shared_data / "textures" / "dtd" / name).iterdir())[0]
    Image.open(source).convert("RGB").resize((size, size)).save(dest)
    return dest


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder``, by relative path: its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(shared_data, tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("lt") / "data", shared_data, COUNTS)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    """One default run (tail classes, up to the largest class), its summary and folder."""
    out = tmp_path_factory.mktemp("runs") / "sitt"
    return augment_texture(dataset, out, overrides=SHORT, device="cpu"), out


# --------------------------------------------------------------------------------------------
# Choosing classes


def test_tail_is_below_the_mean_count():
    assert tail_classes({"a": 5, "b": 5, "c": 10}) == ["a", "b"]  # the median (5) would give none
    assert tail_classes({"a": 20, "b": 19, "c": 20}) == ["b"]
    assert tail_classes({"a": 3, "b": 3}) == []


def test_class_choices_and_their_errors():
    counts = {"a": 5, "b": 5, "c": 10}
    assert choose_classes(counts, "all") == ["a", "b", "c"]
    assert choose_classes(counts, "c, a") == ["a", "c"]  # the dataset's order
    assert choose_classes(counts, ["b"]) == ["b"]
    with pytest.raises(VvkError) as e:
        choose_classes(counts, "a,zebra")
    assert str(e.value) == "classes=zebra: no such class in the dataset (classes: a, b, c)"
    with pytest.raises(VvkError) as e:
        choose_classes({"a": 4, "b": 4}, "tail")
    assert str(e.value) == (
        "classes=tail: every class has 4 images, none is rarer (pass classes=all or a list of class names)"
    )


def test_image_folder_reading(tmp_path):
    root = tmp_path / "d"
    for rel in ("b/x.PNG", "b/sub/y.jpg", "b/.hidden.jpg", "b/notes.txt", "b/.cache/z.jpg", "a/1.webp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / ".git").mkdir()
    (root / "README.md").write_text("x")
    (root / "b" / "sub" / "loop").symlink_to(root / "b" / "sub")  # a loop: walked once
    (root / "a" / "more").symlink_to(root / "b" / "sub")  # a folder linked inside: followed
    folder = read_image_folder(root)
    assert folder.classes == {"a": ("a/1.webp", "a/more/y.jpg"), "b": ("b/sub/y.jpg", "b/x.PNG")}


# --------------------------------------------------------------------------------------------
# A real run


def test_tail_classes_get_up_to_the_largest_count(run, dataset):
    summary, out = run
    assert summary["classes"] == [
        {"class": "braided", "images": 2, "new": 4, "models": 2},  # one model per own image
        {"class": "bubbly", "images": 1, "new": 5, "models": 1},
    ]
    assert (summary["images_written"], summary["models_trained"], summary["warnings"]) == (9, 3, {})
    assert sorted(os.listdir(out)) == ["augment.json", "images", "manifest.jsonl", "models"]
    assert sorted(os.listdir(out / "images")) == ["braided", "bubbly"]
    assert ImageFolder(out / "images").classes == ["braided", "bubbly"]  # torchvision reads it as it is
    assert sorted(p.name for p in (out / "images" / "bubbly").iterdir()) == [
        f"sitt-{i:05d}.png" for i in range(5)
    ]
    assert sorted(p.name for p in (out / "images" / "braided").iterdir()) == [
        f"sitt-{i:05d}.png" for i in range(4)
    ]
    assert sorted(os.listdir(dataset)) == sorted(COUNTS)  # the input is untouched
    assert sum(len(os.listdir(dataset / c)) for c in COUNTS) == sum(COUNTS.values())


def test_manifest_names_sources_of_other_classes_textures_and_models(run, dataset):
    summary, out = run
    records = manifest(out)
    assert [r["image"] for r in records] == [f"images/braided/sitt-{i:05d}.png" for i in range(4)] + [
        f"images/bubbly/sitt-{i:05d}.png" for i in range(5)
    ]
    for r in records:
        assert r["source_class"] != r["class"] and r["source"].startswith(r["source_class"] + "/")
        assert (dataset / r["source"]).is_file() and r["seed"] == 0
        assert r["texture_from"] == "dataset" and r["texture"].startswith(r["class"] + "/")
        assert (out / r["model"] / "texture.safetensors").is_file()
        assert not (out / r["model"] / "checkpoints").exists()  # the model file is all that is kept
        new = np.asarray(Image.open(out / r["image"]))
        source = np.asarray(Image.open(dataset / r["source"]))
        assert new.shape == source.shape  # at its source's own size
        assert np.abs(new.astype(int) - source).mean() > 5  # re-textured, not copied
    braided = [r for r in records if r["class"] == "braided"]
    assert {r["texture"] for r in braided} == {"braided/braided_0002.png", "braided/braided_0006.png"}
    assert [r["model"] for r in braided][:2] == [r["model"] for r in braided][2:]  # model i mod 2
    assert braided[0]["model"] != braided[1]["model"]
    for name in ("braided", "bubbly"):  # drawn without replacement: 4 and 5 of 13 and 14 images
        sources = [r["source"] for r in records if r["class"] == name]
        assert len(set(sources)) == len(sources)
    assert {r["texture"] for r in records if r["class"] == "bubbly"} == {"bubbly/bubbly_0038.png"}
    record = json.loads((out / "augment.json").read_text())
    assert record["classes"]["bubbly"]["models"] == [
        {
            "folder": "models/bubbly/00-bubbly_0038",
            "texture": "bubbly/bubbly_0038.png",
            "texture_from": "dataset",
        }
    ]
    assert record["preset"]["steps"] == 3 and record["dataset"] == str(dataset.resolve())


def test_same_seed_same_bytes_other_seed_other_images(run, dataset, tmp_path):
    _, first = run
    again = augment_texture(dataset, tmp_path / "again", overrides=SHORT, device="cpu")
    assert again["images_written"] == 9
    images = {k: v for k, v in files(first).items() if k.endswith(".png")}
    assert {k: v for k, v in files(tmp_path / "again").items() if k.endswith(".png")} == images
    assert len(images) == 9
    # The models' tensors too (the files' JSON headers are not in a fixed order; run records
    # hold times and ids)
    models = sorted(p.relative_to(first) for p in first.glob("models/*/*/texture.safetensors"))
    assert len(models) == 3
    for model in models:
        a, b = load_file(first / model), load_file(tmp_path / "again" / model)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (first / "manifest.jsonl").read_bytes() == (tmp_path / "again" / "manifest.jsonl").read_bytes()
    other = augment_texture(dataset, tmp_path / "other", overrides=SHORT, device="cpu", seed=1)
    assert [r["seed"] for r in manifest(tmp_path / "other")] == [1] * 9
    assert [r["source"] for r in manifest(tmp_path / "other")] != [r["source"] for r in manifest(first)]
    assert files(tmp_path / "other" / "images" / "bubbly") != files(first / "images" / "bubbly")
    assert other["classes"] == run[0]["classes"]


def test_textures_folder_chosen_classes_per_class_and_bad_images(shared_data, tmp_path):
    counts = {"banded": 6, "blotchy": 6, "braided": 2, "bubbly": 1}
    data = build_dataset(tmp_path / "data", shared_data, counts)
    (data / "banded" / "broken.jpg").write_text("not an image")  # counted: banded has 7
    Image.new("RGB", (1, 1)).save(data / "braided" / "dot.png")  # an image, but no texture
    textures = tmp_path / "tex"
    texture_file(shared_data, textures / "bubbly" / "web.jpg")
    summary = augment_texture(
        data, tmp_path / "out", textures=textures, classes="bubbly,braided", per_class=17,
        overrides=SHORT, device="cpu",
    )  # fmt: skip
    assert summary["classes"] == [
        {"class": "braided", "images": 3, "new": 17, "models": 2},  # its two real images, not the dot
        {"class": "bubbly", "images": 1, "new": 17, "models": 1},  # the one texture given
    ]
    assert summary["warnings"] == {"images too small for a texture": 1, "images unreadable": 1}
    skipped = json.loads((tmp_path / "out" / "augment.json").read_text())["skipped"]
    assert skipped == {"banded/broken.jpg": "unreadable", "braided/dot.png": "too small for a texture"}
    records = manifest(tmp_path / "out")
    bubbly = [r for r in records if r["class"] == "bubbly"]
    assert {(r["texture"], r["texture_from"], r["model"]) for r in bubbly} == {
        ("bubbly/web.jpg", "textures", "models/bubbly/00-web")
    }
    readable = {f"{c}/{p.name}" for c in ("banded", "blotchy", "braided") for p in (data / c).iterdir()}
    readable -= {"banded/broken.jpg"}
    assert len(readable) == 15  # 6 + 6 + 3 (the dot re-textures fine)
    sources = [r["source"] for r in bubbly]
    assert set(sources[:15]) == readable  # every readable one once before any again
    assert "banded/broken.jpg" not in {r["source"] for r in records}
    assert {r["texture"] for r in records if r["class"] == "braided"} == {
        "braided/braided_0002.png",
        "braided/braided_0006.png",
    }


def test_interrupted_texture_run_leaves_nothing(dataset, tmp_path, monkeypatch):
    import vvk.methods.texture.train as train

    real, calls = train.train_texture, []

    def second_interrupted(*args, **kwargs):
        calls.append(kwargs["out"])
        result = real(*args, **kwargs)
        return dataclasses.replace(result, status="interrupted") if len(calls) == 2 else result

    monkeypatch.setattr(train, "train_texture", second_interrupted)
    parent = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        augment_texture(dataset, parent / "out", overrides=SHORT, device="cpu")
    assert len(calls) == 2 and calls[0].parent.parent.parent.name.endswith(".partial")  # it trained
    assert list(parent.iterdir()) == []  # neither OUT nor its staging folder


# --------------------------------------------------------------------------------------------
# Refused before anything is trained or written


def _refused(dataset, out, **kwargs) -> str:
    with pytest.raises(VvkError) as e:
        augment_texture(dataset, out, overrides=SHORT, device="cpu", **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_output_may_not_overlap_the_inputs(dataset, tmp_path):
    inside = _refused(dataset, dataset / "aug")
    assert (
        inside == f"{dataset / 'aug'}: the output may not be inside, or contain, the input folder {dataset}"
    )
    assert not (dataset / "aug").exists()
    assert "may not be inside, or contain" in _refused(dataset, dataset)
    assert "may not be inside, or contain" in _refused(dataset, dataset.parent)
    textures = tmp_path / "tex"
    (textures / "bubbly").mkdir(parents=True)
    assert f"the input folder {textures}" in _refused(dataset, textures / "out", textures=textures)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert _refused(dataset, tmp_path / "full") == (
        f"{tmp_path / 'full'}: folder is not empty (pass --overwrite to replace it)"
    )
    assert os.listdir(tmp_path / "full") == ["keep.txt"]


def test_empty_dataset_and_empty_class_folder(shared_data, tmp_path):
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    assert _refused(empty, tmp_path / "o") == (
        f"dataset={empty}: no class folders with images (expected {empty}/<class>/<image>)"
    )
    assert _refused(tmp_path / "nope", tmp_path / "o") == f"dataset={tmp_path / 'nope'}: no such folder"
    data = build_dataset(tmp_path / "d", shared_data, {"banded": 2, "bubbly": 1})
    (data / "zebra").mkdir()
    (data / "zebra" / "clip.mp4").write_bytes(b"x")  # not an image
    assert _refused(data, tmp_path / "o") == (
        f"dataset={data}: class folder {data / 'zebra'} holds no images "
        "(.jpg .jpeg .png .bmp .tif .tiff .webp) (add images to it or remove it)"
    )
    assert not (tmp_path / "o").exists()


def test_linked_files_count_a_linked_folder_outside_is_refused(shared_data, tmp_path):
    data = build_dataset(tmp_path / "d", shared_data, {"banded": 2, "bubbly": 1})
    elsewhere = tmp_path / "elsewhere"
    texture_file(shared_data, elsewhere / "photo.png")
    (data / "bubbly" / "link.png").symlink_to(elsewhere / "photo.png")  # a subset made of links
    assert read_image_folder(data).classes["bubbly"] == ("bubbly/bubbly_0038.png", "bubbly/link.png")
    (data / "banded" / "more").symlink_to(elsewhere)  # a folder on the way leads outside
    assert (
        _refused(data, tmp_path / "o") == f"banded/more: leads through a link to {elsewhere}, outside {data}"
    )
    (data / "banded" / "more").unlink()
    (data / "zebra").symlink_to(elsewhere)
    assert _refused(data, tmp_path / "o") == f"zebra: leads through a link to {elsewhere}, outside {data}"
    assert not (tmp_path / "o").exists()


def test_unknown_class_and_nothing_to_add(dataset, tmp_path):
    assert _refused(dataset, tmp_path / "o", classes="bubbly,zebra") == (
        "classes=zebra: no such class in the dataset (classes: banded, blotchy, braided, bubbly)"
    )
    assert _refused(dataset, tmp_path / "o", classes="banded") == (
        "the chosen classes (banded) already have as many images as the largest class (6): nothing to add "
        "(give per_class=N)"
    )
    assert _refused(dataset, tmp_path / "o", per_class=0) == "per_class=0: must be at least 1"
    assert _refused(dataset, tmp_path / "o", preset="huge").startswith("preset=huge: expected one of")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("notes.jpg", b"a text file, renamed", "cannot be read as an image"),
        ("clip.mp4", b"\x00\x00\x00\x18ftypmp42", "a video; expected an image"),
        ("dot.png", None, "1×1 px holds no texture; at least 16×16 is needed"),
    ],
)
def test_bad_texture_files_are_one_line_errors(dataset, tmp_path, name, content, reason):
    textures = tmp_path / "tex"
    path = textures / "bubbly" / name
    path.parent.mkdir(parents=True)
    if content is None:
        Image.new("RGB", (1, 1)).save(path)
    else:
        path.write_bytes(content)
    message = _refused(dataset, tmp_path / "o", textures=textures)
    assert message.startswith(f"textures={path}: {reason}")
    assert not (tmp_path / "o").exists() and sorted(os.listdir(tmp_path)) == ["tex"]


def test_textures_folder_must_name_classes(dataset, tmp_path):
    textures = tmp_path / "tex"
    (textures / "zebra").mkdir(parents=True)
    assert _refused(dataset, tmp_path / "o", textures=textures) == (
        f"textures={textures}: folder 'zebra' names no class of the dataset "
        "(classes: banded, blotchy, braided, bubbly)"
    )
    (textures / "zebra").rmdir()
    (textures / "bubbly").mkdir()
    assert _refused(dataset, tmp_path / "o", textures=textures) == (
        f"textures={textures}: folder {textures / 'bubbly'} is empty"
    )
