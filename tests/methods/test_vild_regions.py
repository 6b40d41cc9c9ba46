"""ViLD's distillation targets on disk (vvk.methods.vild.regions): embeddings as the formula says,
shards that a killed run leaves whole and a second run continues, and refusals of a folder made
from other images or by another teacher."""

import json

import pytest
import torch
import torch.nn.functional as F

from vvk.data.detection import open_coco, read_image
from vvk.errors import VvkError
from vvk.methods.vild.crops import crop_regions
from vvk.methods.vild.regions import (
    MANIFEST,
    RegionStore,
    embed_regions,
    file_proposals,
    region_embeddings,
)
from vvk.methods.vild.teacher import StandInTeacher


@pytest.fixture(scope="module")
def coco(small_detection_example):
    return open_coco(small_detection_example / "train")


def _teacher(seed: int = 0) -> StandInTeacher:
    torch.manual_seed(seed)
    return StandInTeacher([str(d) for d in range(10)], dim=8, image_size=16, width=4).eval()


def _proposals_file(tmp_path, coco) -> str:
    """Three boxes per image, scored 0.2, 0.9, 0.5 (so the kept order is the 2nd, 3rd, 1st)."""
    rows = []
    for image_id in coco.images:
        for k, score in enumerate((0.2, 0.9, 0.5)):
            rows.append({"image_id": image_id, "bbox": [4 * k, 2 * k, 20 + k, 30], "score": score})
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps(rows))
    return str(path)


def _image(coco, image_id):
    return torch.from_numpy(read_image(coco, coco.images[image_id])).permute(2, 0, 1).float() / 255


def test_a_region_embedding_is_the_normalised_sum_of_its_1x_and_1_5x_crops(coco):
    teacher = _teacher()
    image = _image(coco, next(iter(coco.images)))
    boxes = torch.tensor([[10.0, 12.0, 40.0, 50.0], [0.0, 0.0, 96.0, 96.0]])
    crops = crop_regions(image, boxes, 16)  # (2, R, 3, 16, 16)
    by_hand = F.normalize(teacher.embed_images(crops[0]) + teacher.embed_images(crops[1]), dim=-1)
    assert torch.allclose(region_embeddings(teacher, image, boxes, batch=3), by_hand, atol=1e-6)


def test_the_store_holds_each_images_best_proposals_and_their_embeddings(tmp_path, coco):
    teacher = _teacher()
    result = embed_regions(coco, file_proposals(_proposals_file(tmp_path, coco)), teacher, tmp_path / "r",
                           proposals_name="p.json", max_regions=2, shard_images=4)  # fmt: skip
    assert (result.images, result.regions, result.resumed_from) == (10, 20, 0)
    store = RegionStore(tmp_path / "r")
    store.check(coco, teacher=teacher.name)
    assert sorted(store) == sorted(coco.images) and len(list((tmp_path / "r").glob("shard-*"))) == 3
    image_id = list(coco.images)[5]
    boxes, embeddings = store[image_id]
    assert torch.equal(boxes, torch.tensor([[4.0, 2.0, 25.0, 32.0], [8.0, 4.0, 30.0, 34.0]]))  # 0.9, 0.5
    expected = region_embeddings(teacher, _image(coco, image_id), boxes)
    assert torch.allclose(embeddings, expected, atol=2e-3)  # stored as float16
    best_boxes, best_embeddings = RegionStore(tmp_path / "r", max_regions=1)[image_id]  # max_num_rois
    assert torch.equal(best_boxes, boxes[:1]) and torch.equal(best_embeddings, embeddings[:1])


def test_a_killed_run_keeps_its_whole_shards_and_a_second_run_continues(tmp_path, coco):
    proposals = file_proposals(_proposals_file(tmp_path, coco))
    calls = []

    def dying(image_id, image):
        calls.append(image_id)
        if len(calls) == 6:  # in the second shard
            raise KeyboardInterrupt
        return proposals(image_id, image)

    with pytest.raises(KeyboardInterrupt):
        embed_regions(coco, dying, _teacher(), tmp_path / "r", proposals_name="p", shard_images=4)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [MANIFEST, "shard-00000.safetensors"]
    with pytest.raises(VvkError, match="incomplete"):
        RegionStore(tmp_path / "r")
    result = embed_regions(coco, proposals, _teacher(), tmp_path / "r", proposals_name="p", shard_images=4)
    assert (result.resumed_from, result.images) == (4, 6)
    embed_regions(coco, proposals, _teacher(), tmp_path / "whole", proposals_name="p", shard_images=4)
    resumed, whole = RegionStore(tmp_path / "r"), RegionStore(tmp_path / "whole")
    for image_id in coco.images:
        assert all(torch.equal(a, b) for a, b in zip(resumed[image_id], whole[image_id], strict=True))


def test_a_folder_made_otherwise_is_refused(tmp_path, coco, small_detection_example):
    proposals = file_proposals(_proposals_file(tmp_path, coco))
    embed_regions(coco, proposals, _teacher(), tmp_path / "r", proposals_name="p", shard_images=4)
    with pytest.raises(VvkError, match="made with max_regions=300, this run has 5"):
        embed_regions(
            coco, proposals, _teacher(), tmp_path / "r", proposals_name="p", max_regions=5, shard_images=4
        )
    store = RegionStore(tmp_path / "r")
    with pytest.raises(VvkError, match="embedded by teacher stand-in, this run uses clip-vit-b-32.openai"):
        store.check(coco, teacher="clip-vit-b-32.openai")
    other = open_coco(small_detection_example / "val", what="val")
    with pytest.raises(VvkError, match="made from another dataset") as info:
        store.check(other)
    assert "\n" not in str(info.value) and info.value.params == ("regions",)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(VvkError, match="not a regions folder"):
        embed_regions(coco, proposals, _teacher(), tmp_path / "junk", proposals_name="p")
    with pytest.raises(VvkError, match="not made by `vvk detect embed-regions`"):
        RegionStore(tmp_path / "junk")


def test_a_bad_proposals_file_names_the_entry(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}, {"image_id": 2}]))
    with pytest.raises(VvkError, match="entry 1 lacks a valid image_id or bbox"):
        file_proposals(path)
