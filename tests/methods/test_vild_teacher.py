"""ViLD's teachers and crops (vvk.methods.vild.teacher, .crops, .stand_in)."""

import math

import pytest
import torch
import torch.nn.functional as F

from vvk.errors import VvkError
from vvk.methods.vild.crops import crop_regions, enlarge_boxes
from vvk.methods.vild.teacher import (
    ClipTeacher,
    StandInTeacher,
    load_stand_in,
    load_teacher,
    save_stand_in,
)
from vvk.methods.vild.text import TEMPLATES, text_classifier


def test_boxes_are_enlarged_about_their_centres_and_cut_to_the_image():
    boxes = torch.tensor([[10.0, 10.0, 30.0, 50.0], [80.0, 0.0, 100.0, 20.0]])
    # centre (20, 30), half size (15, 30): (5, 0, 35, 60); centre (90, 10), half (15, 15): (75, -5, 105, 25)
    expected = torch.tensor([[5.0, 0.0, 35.0, 60.0], [75.0, 0.0, 100.0, 25.0]])
    assert torch.equal(enlarge_boxes(boxes, 1.5, height=100, width=100), expected)
    assert torch.equal(enlarge_boxes(boxes, 1.0, height=100, width=100), boxes)


def test_a_crop_on_the_pixel_grid_at_its_own_size_is_the_pixels():
    image = torch.rand(3, 12, 16)
    crops = crop_regions(image, torch.tensor([[4.0, 2.0, 12.0, 10.0]]), size=8, scales=(1.0,))
    assert crops.shape == (1, 1, 3, 8, 8)
    assert torch.allclose(crops[0, 0], image[:, 2:10, 4:12], atol=1e-6)


def test_a_crop_shrunk_by_two_averages_each_two_by_two_block():
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)
    (crop,) = crop_regions(image, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), size=4, scales=(1.0,))[0]
    assert torch.allclose(crop, F.avg_pool2d(image[None], 2)[0], atol=1e-5)


def test_crops_come_at_every_scale_and_none_for_no_boxes():
    image = torch.rand(3, 20, 20)
    assert crop_regions(image, torch.tensor([[5.0, 5.0, 10.0, 10.0]] * 3), size=4).shape == (2, 3, 3, 4, 4)
    assert crop_regions(image, torch.zeros(0, 4), size=4).shape == (2, 0, 3, 4, 4)


def test_background_crops_stay_clear_of_the_objects_and_inside_the_image():
    import numpy as np
    from torchvision.ops import box_iou

    from vvk.methods.vild.stand_in import MAX_BACKGROUND_IOU, background_boxes

    objects = torch.tensor([[20.0, 20.0, 60.0, 60.0], [100.0, 30.0, 120.0, 90.0]])  # sides 20..60
    drawn = background_boxes(objects, 128, 160, 50, np.random.default_rng(0))
    sides = drawn[:, 2:] - drawn[:, :2]
    assert len(drawn) == 50
    assert box_iou(drawn, objects).max() < MAX_BACKGROUND_IOU
    assert (drawn[:, :2] >= 0).all() and (drawn[:, 2] <= 160).all() and (drawn[:, 3] <= 128).all()
    assert sides.min() >= 20 and sides.max() <= 120
    # an image that is all object has no background to give
    whole = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    assert len(background_boxes(whole, 64, 64, 5, np.random.default_rng(0))) == 0


def _stand_in(**kw) -> StandInTeacher:
    torch.manual_seed(0)
    return StandInTeacher(["Zero", "one", "two"], dim=8, image_size=16, width=4, **kw).eval()


def test_the_stand_in_vocabulary_is_its_normalised_table_and_synonyms_average():
    teacher = _stand_in()
    rows = F.normalize(teacher.table.detach(), dim=-1)
    got = teacher.embed_vocabulary([["two"], ["zero"], ["one", "two", "unknown synonym"]])
    assert torch.allclose(got[0], rows[2]) and torch.allclose(got[1], rows[0])  # names are cleaned
    assert torch.allclose(got[2], F.normalize(rows[1] + rows[2], dim=0), atol=1e-6)
    assert torch.allclose(teacher.embed_images(torch.rand(5, 3, 16, 16)).norm(dim=-1), torch.ones(5))


def test_the_stand_in_refuses_a_name_it_was_not_trained_with():
    with pytest.raises(VvkError, match="does not know 'mug'.*knows only zero, one, two"):
        _stand_in().embed_vocabulary([["mug"]])


def test_the_stand_in_logits_are_scaled_cosines_with_its_table():
    teacher = _stand_in()
    crops = torch.rand(4, 3, 16, 16)
    expected = teacher.embed_images(crops) @ F.normalize(teacher.table, dim=-1).t() / 0.07
    assert torch.allclose(teacher(crops), expected, atol=1e-4)


def test_a_saved_stand_in_loads_to_the_same_embeddings(tmp_path):
    teacher = _stand_in()
    path = save_stand_in(teacher, tmp_path / "t.safetensors", metadata={"note": "x"})
    loaded = load_teacher(str(path))
    crops = torch.rand(3, 3, 16, 16)
    assert torch.equal(loaded.embed_images(crops), teacher.embed_images(crops))
    assert torch.equal(loaded.embed_vocabulary([["one"]]), teacher.embed_vocabulary([["one"]]))


def test_a_file_that_is_not_a_stand_in_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    for name, message in (("other", "not a stand-in teacher"), ("junk", "not a readable safetensors")):
        with pytest.raises(VvkError, match=message) as info:
            load_stand_in(tmp_path / f"{name}.safetensors")
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, message", [("no-such-teacher", "not a teacher vvk knows"),
                                           ("missing.safetensors", "no such file")])  # fmt: skip
def test_an_unknown_teacher_is_a_one_line_error(spec, message):
    with pytest.raises(VvkError, match=message) as info:
        load_teacher(spec)
    assert "\n" not in str(info.value) and info.value.params == ("teacher",)


def test_a_weights_entry_of_another_task_is_refused_as_a_teacher():
    with pytest.raises(VvkError, match="has task 'image-backbone'.*vision-language"):
        load_teacher("resnet50.tv_in1k")


def _tiny_clip():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()


def test_the_clip_teacher_embeds_names_through_the_templates_and_crops_with_openai_statistics():
    from open_clip import tokenize

    model = _tiny_clip()
    teacher = ClipTeacher(model, name="tiny")
    assert (teacher.dim, teacher.image_size) == (16, 32)
    expected = text_classifier(lambda texts: model.encode_text(tokenize(texts)), [["cat"], ["dog", "puppy"]])
    assert torch.allclose(teacher.embed_vocabulary([["cat"], ["dog", "puppy"]]), expected, atol=1e-6)
    assert len(TEMPLATES) == 63
    crops = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        by_hand = F.normalize(model.encode_image((crops - mean) / std), dim=-1)
    assert torch.allclose(teacher.embed_images(crops), by_hand, atol=1e-6)
    assert math.isclose(float(teacher.embed_images(crops).norm(dim=-1).mean()), 1.0, rel_tol=1e-6)


def test_the_clip_teacher_refuses_a_text_longer_than_its_context_rather_than_cut_it():
    teacher = ClipTeacher(_tiny_clip(), name="tiny")
    fits = "red mug " * 8  # its longest prompt ("This is a jpeg corrupted photo of a ...") fits 77 tokens
    teacher.check_text(fits)
    assert teacher.embed_vocabulary([[fits]]).shape == (1, 16)
    too_long = "red mug " * 40
    with pytest.raises(
        VvkError, match=r"^query 'red mug .*': \d+ tokens in its longest prompt, more than the 77"
    ) as error:
        teacher.embed_vocabulary([["cat"], [too_long]])
    assert "\n" not in str(error.value) and "refuses a query rather than truncate" in str(error.value)


def test_a_query_encoder_over_clip_embeds_free_text_and_caches_nothing_it_refused():
    from vvk.models.detectors.query_modulation import TextQueryEncoder

    encoder = TextQueryEncoder(ClipTeacher(_tiny_clip(), name="tiny"), 4)
    assert encoder(["red mug", "a stapler on a desk"]).shape == (2, 4)
    with pytest.raises(VvkError, match="tokens in its longest prompt"):
        encoder(["cat", "red mug " * 40])
    assert sorted(encoder.cache) == ["a stapler on a desk", "red mug"]
