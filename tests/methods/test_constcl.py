"""ConST-CL: the reference shapes and head sizes, region boxes (random, from a file, through the
views' crop and flip), the argmax positives, the local loss's negative set, the shared decoder,
and the tiny preset on real clips."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_cvrl import check_tiny_run  # pytest puts this folder on sys.path (no packages in tests/)

from vvk.data import collate, open_video_dataset
from vvk.data.video_transforms import VideoAugment
from vvk.errors import VvkError
from vvk.methods import constcl
from vvk.methods.constcl.boxes import BoxTable, CropFlip, FileBoxes, random_boxes
from vvk.methods.constcl.local import InstanceReconstructor, context_steps
from vvk.methods.constcl.loss import instance_direction_loss, instance_loss, match_instances
from vvk.testing import link_videos


def test_reference_shapes_and_head_sizes():
    with torch.device("meta"):
        model = constcl.build(constcl.PRESETS["paper"])
        views = torch.empty(4, 3, 16, 224, 224)  # B = 2 clips x 2 views, view a first
        out = model.outputs(views, torch.empty(4, 8, 1, 4))
        memory = model.reconstructor.memory(out["res5_1"])
    per_view = {name: tuple(out[name].chunk(2)[0].shape) for name in out}
    assert per_view["res5"] == per_view["res5_1"] == (2, 2048, 8, 7, 7)
    assert per_view["regions"] == (2, 8, 2048)
    assert tuple(memory.chunk(2)[0].shape) == (2, 245, 2064)  # 5·7·7 tokens, 2048 + 8 + 8 channels
    assert per_view["hidden"] == (2, 8, 384)
    assert per_view["translated"] == (2, 8, 2048)
    assert per_view["embedding"] == (2, 128)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.head) == 12_857_472
    assert count(model.reconstructor) == 6_928_356
    assert count(model.backbone) == 51_879_744  # ResNet3DY: 51.88M


def test_context_frames_around_the_key_frame():
    assert context_steps(8, 5) == [2, 3, 4, 5, 6]  # the reference's frames for T' = 8
    assert context_steps(16, 5) == [2, 5, 8, 11, 14]
    assert context_steps(4, 3) == [1, 2, 3]
    with pytest.raises(ValueError):
        context_steps(8, 4)
    with pytest.raises(VvkError, match="context_frames=5, frames=8"):
        constcl.build(dataclasses.replace(constcl.PRESETS["tiny"], context_frames=5))


def test_random_boxes_follow_the_reference_distribution():
    torch.manual_seed(0)
    boxes = random_boxes(20000, 8)
    x1, y1, x2, y2 = boxes.unbind(-1)
    assert float(x1.min()) >= 0 and float(x1.max()) < 1 and abs(float(x1.mean()) - 0.5) < 0.01
    assert float(y1.min()) >= 0 and abs(float(y1.mean()) - 0.5) < 0.01
    assert float(torch.maximum(x2, y2).max()) <= 1 - 1e-3 + 1e-6  # float32
    width, height = x2 - x1, y2 - y1
    inside = (x2 < 1 - 1e-3) & (y2 < 1 - 1e-3)  # boxes the clipping did not touch
    assert float(width[inside].min()) >= 0.1 - 1e-6 and float(width.max()) <= 0.5 + 1e-6
    aspect = height[inside] / width[inside]
    assert float(aspect.min()) >= 0.5 - 1e-4 and float(aspect.max()) <= 2 + 1e-4
    # Independent draws (the reference's shared seed would make x1 == y1): no correlation.
    assert abs(float(torch.corrcoef(torch.stack([x1.flatten(), y1.flatten()]))[0, 1])) < 0.02


def test_argmax_matching_picks_the_constructed_instance():
    torch.manual_seed(0)
    regions_a = torch.randn(3, 6, 32)
    order = torch.stack([torch.randperm(6) for _ in range(3)])  # view b lists a's instances shuffled
    regions_b = torch.gather(regions_a, 1, order[..., None].expand(-1, -1, 32)) * 2.0
    regions_b = regions_b + 0.05 * torch.randn_like(regions_b)  # scaled and noisy: cosine still wins
    a2b, b2a = match_instances(regions_a, regions_b)
    inverse = order.argsort(dim=1)  # where a's instance j went in view b
    assert torch.equal(a2b, inverse)
    assert torch.equal(b2a, order)


def _explicit_direction(translated, targets, match, temperature):
    """-log(e^{s+} / (e^{s+} + Σ over other videos' instances e^{s})), row by row."""
    b, n, _ = translated.shape
    q, k = F.normalize(translated, dim=-1), F.normalize(targets, dim=-1)
    rows = []
    for i in range(b):
        for j in range(n):
            positive = q[i, j] @ k[i, match[i, j]] / temperature
            negatives = torch.cat([q[i, j] @ k[other].T for other in range(b) if other != i]) / temperature
            rows.append(torch.logsumexp(torch.cat([positive[None], negatives]), 0) - positive)
    return torch.stack(rows)


def test_local_loss_negatives_are_other_videos_only():
    torch.manual_seed(0)
    translated, targets = (
        torch.randn(3, 4, 16, dtype=torch.float64),
        torch.randn(3, 4, 16, dtype=torch.float64),
    )
    match = torch.tensor([[0, 0, 1, 1], [3, 2, 1, 0], [2, 2, 2, 2]])  # video 0 never matches 2 or 3
    rows = instance_direction_loss(translated, targets, match, 0.2, reduction="none")
    torch.testing.assert_close(rows, _explicit_direction(translated, targets, match, 0.2))
    torch.testing.assert_close(rows.mean(), instance_direction_loss(translated, targets, match, 0.2))
    same = targets.clone()
    same[0, 2:] = torch.randn(2, 16, dtype=torch.float64)  # video 0's instances that no row of 0 matched
    changed = instance_direction_loss(translated, same, match, 0.2, reduction="none")
    torch.testing.assert_close(changed[:4], rows[:4])  # video 0's rows ignore them
    other = targets.clone()
    other[1, 0] = torch.randn(16, dtype=torch.float64)  # another video's instance: a negative of video 0
    changed = instance_direction_loss(translated, other, match, 0.2, reduction="none")
    assert not torch.allclose(changed[:4], rows[:4])


def test_both_directions_use_one_decoder():
    torch.manual_seed(0)
    head = InstanceReconstructor(
        channels=32, decoder_dim=8, decoder_layers=2, decoder_heads=2, context_frames=3
    )
    features, boxes = torch.randn(4, 32, 4, 3, 3), random_boxes(4, 5, 1)
    out = head(features, boxes)
    swap = [2, 3, 0, 1]  # view b first: the same function must give the same rows, swapped
    swapped = head(features[swap], boxes[swap])
    torch.testing.assert_close(swapped["translated"], out["translated"][swap])
    # Row by row: view b's instances decoded in view a's memory by the same decoder and projection.
    memory = head.memory(F.normalize(features, dim=1))
    b2a = head.projection(head.decoder(out["regions"][2:], memory[:2]))
    torch.testing.assert_close(out["translated"][2:], b2a)
    loss = instance_loss(out["regions"], out["translated"], 0.2)
    loss.backward()
    assert all(p.grad is not None for p in head.decoder.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxes_follow_the_views_crop_and_flip(seed):
    torch.manual_seed(seed)
    height, width, view_side, clips = 64, 112, 32, 6
    video = torch.zeros(clips, 3, 4, 80, 128, dtype=torch.uint8)  # frames padded to a canvas
    box = torch.tensor([0.25, 0.375, 0.625, 0.8125])  # whole pixels of the 112 x 64 frame
    x1, y1, x2, y2 = (box * torch.tensor([width, height, width, height])).long().tolist()
    video[..., y1:y2, x1:x2] = 255
    frame_size = torch.tensor([[height, width]] * clips)
    augment = VideoAugment(size=view_side, jitter=0.0, grayscale=0.0, blur=0.0, zero_center=False)
    views = augment(video, frame_size)
    crop = CropFlip.of(augment, frame_size)
    mapped = crop.apply(box.expand(clips, 4)).clamp(0, 1)
    for i in range(clips):
        ys, xs = torch.nonzero(views[i, 0, 0] > 0.5, as_tuple=True)
        found = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() / view_side
        # Bilinear edges thresholded at 0.5: within a view pixel.
        torch.testing.assert_close(mapped[i], found, atol=1.0 / view_side, rtol=0)
    assert 0 < int(crop.flipped.sum()) < clips or seed != 0  # both cases occur


def _write(path, text):
    path.write_text(text)
    return path


def test_box_table_reads_ava_style_rows(tmp_path):
    csv = _write(
        tmp_path / "boxes.csv",
        "video_id,timestamp,x1,y1,x2,y2,action,person\n"
        "clip,902,0.1,0.2,0.5,0.9,12,0\n"
        "clip,902,0.1,0.2,0.5,0.9,80,0\n"  # the same person, another action: one box
        "clip,902,0.6,0.1,0.9,0.7,12,1\n"
        "clip,903,0.2,0.2,0.6,0.9,12,0\n"
        "other,1.5,0,0,1,1\n",
    )
    table = BoxTable.read(csv)
    assert len(table) == 4
    np.testing.assert_allclose(table.at("clip", 902.3, 0.5), [[0.1, 0.2, 0.5, 0.9], [0.6, 0.1, 0.9, 0.7]])
    assert table.at("clip", 902.7, 0.5).shape == (1, 4)  # 903 is nearer
    assert table.at("clip", 905.0, 0.5).shape == (0, 4)  # too far from any annotation
    assert table.at("missing", 902.0, 0.5).shape == (0, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clip,1.0,0.1,0.2\n", r"boxes.csv:1: expected video_id, timestamp"),
        ("clip,1.0,0.1,0.2,0.5,0.6\nclip,2.0,0.1,x,0.5,0.6\n", r"boxes.csv:2: field 'y1' is not a number"),
        ("clip,1.0,0.5,0.2,0.4,0.6\n", r"boxes.csv:1: box \(0.5, 0.2, 0.4, 0.6\) must have"),
        ("clip,1.0,0.1,0.2,1.5,0.6\n", r"boxes.csv:1: box"),
        ("# nothing\n", r"no boxes"),
    ],
)
def test_box_table_errors_name_the_line_and_field(tmp_path, text, message):
    with pytest.raises(VvkError, match=message):
        BoxTable.read(_write(tmp_path / "boxes.csv", text))


def test_a_missing_boxes_file_is_a_clear_error(tmp_path):
    preset = dataclasses.replace(constcl.PRESETS["tiny"], boxes=str(tmp_path / "nope.csv"))
    with pytest.raises(VvkError, match="nope.csv: cannot read"):
        constcl.build(preset)


def test_tubes_follow_the_best_overlapping_detection(tmp_path):
    csv = _write(
        tmp_path / "boxes.csv",
        "walk,1.0,0.10,0.1,0.30,0.9\nwalk,1.0,0.70,0.1,0.90,0.9\n"  # two people at t = 1 s
        "walk,2.0,0.15,0.1,0.35,0.9\nwalk,2.0,0.75,0.1,0.95,0.9\n"  # both moved right at t = 2 s
        "walk,3.0,0.72,0.1,0.92,0.9\n",  # only the second one is detected at t = 3 s
    )
    source = FileBoxes(BoxTable.read(csv), num=3, max_gap=0.25)
    tubes = source.instances("walk", np.array([1.0, 2.0, 3.0]))  # key frame: t = 2 s
    assert tubes.shape == (3, 3, 4) and np.isnan(tubes[2]).all()  # two detections, one empty slot
    left = int(np.argmin(tubes[:2, 1, 0]))
    np.testing.assert_allclose(
        tubes[left], [[0.10, 0.1, 0.30, 0.9], [0.15, 0.1, 0.35, 0.9], [0.15, 0.1, 0.35, 0.9]]
    )
    np.testing.assert_allclose(
        tubes[1 - left], [[0.70, 0.1, 0.90, 0.9], [0.75, 0.1, 0.95, 0.9], [0.72, 0.1, 0.92, 0.9]]
    )


def _ucf_boxes_csv(shared_data, folder, fps_of):
    """The UCF101-24 person tubes of the clips in ``folder`` as an AVA-style CSV (times of frame
    centres; the pickle's boxes are x, y, width, height in pixels of 320 × 240 frames)."""
    with open(shared_data / "video" / "ucf24" / "pyannot_with_class_names.pkl", "rb") as f:
        db = pickle.load(f, encoding="latin1")["db"]
    lines = []
    for key, entry in db.items():
        video_id = str(key).split("/")[-1]
        if video_id not in fps_of:
            continue
        for tube in entry["annotations"]:
            for k, (x, y, w, h) in enumerate(np.asarray(tube["boxes"], dtype=float)):
                seconds = (tube["sf"] + k + 0.5) / fps_of[video_id]
                lines.append(f"{video_id},{seconds:.4f},{x / 320},{y / 240},{(x + w) / 320},{(y + h) / 240}")
    return _write(folder / "boxes.csv", "\n".join(lines) + "\n")


def test_detected_boxes_on_real_clips_land_where_the_people_are(tmp_path, shared_data):
    videos = link_videos(tmp_path / "videos", sorted((shared_data / "video" / "ucf24").glob("*.mp4")))
    preset = dataclasses.replace(constcl.PRESETS["tiny"], pooling="tube")
    dataset = open_video_dataset(
        videos, sampler=constcl.sampler(preset), size=preset.size, cache_dir=tmp_path
    )
    batch = collate([dataset[(i, 7)] for i in range(6)])
    fps_of = {
        p.split("/")[-1][:-4]: float(g[1]) for p, g in zip(batch["path"], batch["frame_grid"], strict=True)
    }
    csv = _ucf_boxes_csv(shared_data, tmp_path, fps_of)
    torch.manual_seed(0)
    model = constcl.build(dataclasses.replace(preset, boxes=str(csv)))
    views = model.views(batch)
    steps = model.reconstructor.pooled_steps(-(-preset.frames // model.time_stride))
    frames = [model.time_stride * k for k in steps]  # the input frames of the tube
    boxes = model.boxes(batch, (model.augment_a, model.augment_b), frames)  # (2B, N, S, 4)
    assert boxes.shape == (12, preset.num_boxes, len(frames), 4)
    table, key = model.boxes.table, frames[len(frames) // 2]
    found = 0
    for view, augment in enumerate((model.augment_a, model.augment_b)):
        crop = CropFlip.of(augment, batch["frame_size"])
        for i, (path, grid) in enumerate(zip(batch["path"], batch["frame_grid"].double(), strict=True)):
            seconds = float(grid[0] + (batch["positions"][i, view, key] + 0.5) / grid[1])
            people = torch.from_numpy(table.at(path.split("/")[-1][:-4], seconds, preset.box_max_gap))
            if not len(people):
                continue
            one = CropFlip(crop=crop.crop[i : i + 1], flipped=crop.flipped[i : i + 1],
                           frame_size=crop.frame_size[i : i + 1])  # fmt: skip
            expected = one.apply(people[None])[0]
            for person in expected:
                inside = person.clamp(0, 1)
                if (inside[2:] - inside[:2]).prod() < 0.5 * (person[2:] - person[:2]).prod():
                    continue  # mostly outside this view: replaced by a random box
                distance = (boxes[view * 6 + i, :, len(frames) // 2] - inside.float()).abs().amax(dim=-1)
                assert float(distance.min()) < 1e-5, (path, view, person)
                found += 1
    assert found >= 6  # people were looked up and placed, not only random boxes
    with torch.no_grad():
        out = model.outputs(views, boxes)
        assert math.isfinite(float(instance_loss(out["regions"], out["translated"], 0.2)))


def test_tiny_preset_learns_on_real_clips(tmp_path, shared_data):
    curves, early, late = check_tiny_run(
        "constcl", tmp_path, shared_data, parts=("global", "local"), steps=150
    )
    assert late["local"] < early["local"] - 0.1, curves["local"]
    weight = constcl.PRESETS["tiny"].local_weight
    assert np.allclose(
        curves["loss"], np.add(curves["global"], np.multiply(weight, curves["local"])), atol=1e-4
    )
