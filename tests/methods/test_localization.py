"""Action localization with given boxes: the RoI head, key-frame clips, training, and the
protocol end to end (AVA CSV and UCF101-24's pickle, through ``vvk eval action-localization``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from vvk.data.ava import Annotations, KeyFrame
from vvk.errors import VvkError
from vvk.examples.synthetic import write_mp4
from vvk.methods.localization import PRESETS, action_localization
from vvk.methods.localization.data import clip_times, collate_key_frames
from vvk.methods.localization.head import RoIActionHead, build_localizer, clip_rois, feature_name
from vvk.methods.localization.train import frame_boxes, localization_loss
from vvk.models import build
from vvk.testing import link_videos

TINY = PRESETS["tiny"]
LEFT, RIGHT = [0.05, 0.1, 0.45, 0.9], [0.55, 0.1, 0.95, 0.9]


def test_rois_are_in_pixels_of_each_clips_own_frame():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.25, 0.5, 0.75, 1.0]])
    rois = clip_rois(boxes, torch.tensor([0, 1]), torch.tensor([[40, 80], [64, 64]]), steps=3)
    # clip 1 is padded to the batch's 64 × 80 canvas: its box is relative to its own 64 × 64 frame
    assert rois.tolist() == [[0, 0, 0, 0, 3, 40, 40], [1, 0, 16, 32, 3, 48, 64]]


def _identity_head(channels: int, **kwargs) -> RoIActionHead:
    head = RoIActionHead(
        channels=channels, num_classes=channels, spatial_scale=0.25, roi_size=3, **kwargs
    ).eval()
    if head.decoder is None:
        with torch.no_grad():
            head.classifier.weight.copy_(torch.eye(channels))
            head.classifier.bias.zero_()
    return head


def test_linear_head_is_the_temporal_mean_then_roi_align_then_max():
    """SlowFast's AVA head, temporal average pooling, torchvision's RoIAlign, a spatial max,
    computed with torchvision on the averaged map."""
    torch.manual_seed(0)
    features = torch.randn(2, 5, 4, 6, 7)  # (B, C, T', H', W') at stride 4
    rois = clip_rois(torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.3, 0.0, 1.0, 0.5]]), torch.tensor([1, 0]),
                     torch.tensor([[24, 28], [24, 28]]), steps=4)  # fmt: skip
    logits = _identity_head(5)(features, rois)
    boxes = torch.cat([rois[:, :1], rois[:, 2:4], rois[:, 5:]], dim=1)  # (K, 5) b, x1, y1, x2, y2
    expected = roi_align(features.mean(dim=2), boxes, 3, spatial_scale=0.25, aligned=True).amax(dim=(2, 3))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_only_the_transformer_head_sees_the_context_outside_the_box():
    torch.manual_seed(0)
    features = torch.randn(1, 8, 2, 8, 8)
    rois = clip_rois(
        torch.tensor([[0.0, 0.0, 0.25, 0.25]]), torch.tensor([0]), torch.tensor([[32, 32]]), steps=2
    )
    changed = features.clone()
    changed[..., 4:, 4:] += 5.0  # far from the box's cells (0..2, 0..2)
    linear, transformer = _identity_head(8), _identity_head(8, kind="transformer", decoder_dim=8)
    torch.testing.assert_close(linear(changed, rois), linear(features, rois))
    assert not torch.allclose(transformer(changed, rois), transformer(features, rois))
    assert transformer(features, rois).shape == (1, 8)
    with pytest.raises(VvkError, match="head=mlp: not a head"):
        RoIActionHead(channels=8, num_classes=2, spatial_scale=1.0, kind="mlp")


def test_the_y_backbones_local_branch_and_no_res5():
    assert feature_name(build("r3d-y-tiny")) == "res5_1" and feature_name(build("r3d-tiny")) == "res5"
    with pytest.raises(VvkError, match="pools a 3D ResNet's res5 map; this backbone has none"):
        feature_name(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("finetune", [False, True])
def test_backbone_frozen_unless_finetuned_and_always_in_eval_mode(finetune):
    torch.manual_seed(0)
    preset = dataclasses.replace(TINY, finetune_backbone=finetune)
    model = build_localizer(build("r3d-tiny"), num_classes=3, preset=preset).train()
    assert not model.backbone.training and model.head.training
    video = torch.rand(2, 3, 8, 32, 48) * 2 - 1
    logits = model(
        video, torch.tensor([LEFT, RIGHT, LEFT]), torch.tensor([0, 0, 1]), torch.tensor([[32, 48]] * 2)
    )
    logits.sum().backward()
    assert logits.shape == (3, 3)
    assert all(p.grad is not None for p in model.head.parameters())
    assert all((p.grad is not None) == finetune for p in model.backbone.parameters())


def test_clip_times_centre_the_key_frame_and_stay_in_the_video():
    times = clip_times(1.02, fps=25.0, frames=4, stride=2, duration=10.0)
    np.testing.assert_allclose(times, [1.02 - 0.16, 1.02 - 0.08, 1.02, 1.02 + 0.08])
    np.testing.assert_allclose(clip_times(0.1, fps=10.0, frames=3, stride=1, duration=0.2), [0.0, 0.1, 0.15])


def test_collate_pads_clips_and_indexes_boxes():
    samples = [
        {"video": torch.ones(3, 2, 4, 6, dtype=torch.uint8), "boxes": torch.rand(2, 4),
         "targets": torch.eye(2), "index": 7},
        {"video": torch.ones(3, 2, 5, 3, dtype=torch.uint8), "boxes": torch.rand(1, 4),
         "targets": torch.ones(1, 2), "index": 2},
    ]  # fmt: skip
    batch = collate_key_frames(samples)
    assert batch["video"].shape == (2, 3, 2, 5, 6)
    assert batch["video"][0, :, :, 4].sum() == 0 and batch["video"][1, :, :, :, 3:].sum() == 0  # zero padding
    assert batch["frame_size"].tolist() == [[4, 6], [5, 3]]
    assert batch["batch_index"].tolist() == [0, 0, 1] and batch["index"].tolist() == [7, 2]
    assert batch["targets"].shape == (3, 2)


def test_loss_is_sigmoid_per_action_or_softmax_over_actions():
    logits, targets = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 1.0]])
    multi = localization_loss(logits, targets, multi_label=True)
    torch.testing.assert_close(
        multi, -(F.logsigmoid(logits) * targets + F.logsigmoid(-logits) * (1 - targets)).mean()
    )
    single = localization_loss(logits, torch.tensor([[0.0, 0.0, 1.0]]), multi_label=False)
    torch.testing.assert_close(single, -logits.log_softmax(dim=1)[0, 2])


def test_frame_boxes_list_each_action_of_a_box_and_score_every_box_for_every_class():
    frame = KeyFrame("v", 1.0, np.array([LEFT, RIGHT]), ((1, 3), (2,)), (0, 1))
    truth, detections = frame_boxes(
        Annotations([frame], {1: "a", 2: "b", 3: "c"}, multi_label=True, source="x"),
        [np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.4]])],
        [1, 2, 3],
    )
    assert truth[("v", 1.0)].labels.tolist() == [1, 3, 2]
    np.testing.assert_allclose(truth[("v", 1.0)].boxes, [LEFT, LEFT, RIGHT])
    found = detections[("v", 1.0)]
    assert found.labels.tolist() == [1, 2, 3, 1, 2, 3]
    assert found.scores.tolist() == [0.9, 0.1, 0.2, 0.3, 0.8, 0.4]
    np.testing.assert_allclose(found.boxes, [LEFT] * 3 + [RIGHT] * 3)


def _sides_video(path, *, bright_left: bool) -> None:
    """3 s at 10 fps of a bright patterned half and a dark flat half."""
    frames = np.full((30, 48, 64, 3), 20, dtype=np.uint8)
    stripes = np.where((np.arange(32) // 4) % 2 == 0, 250, 150).astype(np.uint8)  # (32,) columns
    half = slice(0, 32) if bright_left else slice(32, 64)
    frames[:, :, half] = stripes[None, None, :, None]
    write_mp4(path, frames, fps=10)


def test_the_head_learns_what_is_in_the_boxes(tmp_path):
    """Trained on a video with the bright person on the left, scored on one where it stands on
    the right: only what the boxes hold tells the actions apart, and frame-mAP is then 1."""
    (tmp_path / "videos").mkdir()
    _sides_video(tmp_path / "videos" / "a.mp4", bright_left=True)
    _sides_video(tmp_path / "videos" / "b.mp4", bright_left=False)
    rows = lambda video, bright, dark: "".join(  # noqa: E731
        f"{video},{t},{','.join(map(str, bright))},1,0\n{video},{t},{','.join(map(str, dark))},2,1\n"
        for t in (0.5, 1.0, 1.5, 2.0, 2.5)
    )
    (tmp_path / "train.csv").write_text(rows("a", LEFT, RIGHT))
    (tmp_path / "val.csv").write_text(rows("b", RIGHT, LEFT))
    torch.manual_seed(0)
    result = action_localization(
        build("r3d-tiny").eval(), tmp_path / "videos", annotations=tmp_path / "val.csv",
        train_annotations=tmp_path / "train.csv", preset=dataclasses.replace(TINY, steps=30, size=48),
        cache_dir=tmp_path, device="cpu",
    )  # fmt: skip
    assert result["per_class"] == {"1": 1.0, "2": 1.0} and result["frame_mAP"] == 1.0
    assert (result["train_key_frames"], result["eval_key_frames"], result["eval_boxes"]) == (5, 5, 10)
    assert result["split"] == str(tmp_path / "train.csv") and result["skipped"] == {}


def _ava_files(folder):
    """A hand-made AVA set over two shared videos (arm_wrestling: 10 s; v_Fencing_g01_c06: 6.96 s):
    two people per key frame, a label map of actions 1-3, an excluded key frame, and bad rows."""
    people = lambda video, t, extra="": (  # noqa: E731
        f"{video},{t},0.05,0.2,0.45,0.95,1,0\n{video},{t},0.05,0.2,0.45,0.95,{1 + t % 2},0\n"
        f"{video},{t},0.55,0.2,0.95,0.95,3,1\n{extra}"
    )
    train = "".join(people("arm_wrestling", t) for t in range(1, 9))
    val = "".join(people("v_Fencing_g01_c06", t) for t in range(1, 7))
    val += (
        "no_such_video,1,0.1,0.1,0.5,0.5,1,0\n"  # missing video
        "v_Fencing_g01_c06,7,0.1,0.1,0.5,0.5,1,0\n"  # past the end of a 6.96 s video
        "v_Fencing_g01_c06,1,0.5,0.1,1.5,0.5,1,2\n"  # box outside 0..1
        "v_Fencing_g01_c06,2,0.1,0.1,0.5,0.5,99,2\n"  # an action the label map lacks
    )
    labels = "".join(f'item {{\n  name: "act{i}"\n  id: {i}\n}}\n' for i in (1, 2, 3))
    files = {
        "train.csv": train,
        "val.csv": val,
        "excluded.csv": "v_Fencing_g01_c06,0006\n",
        "labels.pbtxt": labels,
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return {name: str(folder / name) for name in files}


def test_ava_csv_end_to_end_through_the_command(cli, shared_data, tmp_path):
    video = shared_data / "video"
    videos = link_videos(
        tmp_path / "videos",
        [video / "kinetics" / "arm_wrestling.mp4", video / "ucf24" / "v_Fencing_g01_c06.mp4"],
    )
    files = _ava_files(tmp_path)
    out = tmp_path / "result.json"
    result = cli(
        "eval", "action-localization", "--data", str(videos), "--annotations", files["val.csv"],
        "--train-annotations", files["train.csv"], "--label-map", files["labels.pbtxt"],
        "--excluded", files["excluded.csv"], "--backbone", "r3d-tiny", "--preset", "tiny", "--steps", "5",
        "--json", "--out", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert json.loads(out.read_text()) == record
    assert sorted(p.name for p in videos.iterdir()) == ["arm_wrestling.mp4", "v_Fencing_g01_c06.mp4"]
    assert record["protocol"] == "action-localization" and record["weights"] == "random:r3d-tiny"
    assert record["split"] == files["train.csv"]
    assert (record["train_key_frames"], record["train_boxes"]) == (8, 16)
    assert (record["eval_key_frames"], record["eval_boxes"]) == (5, 10)  # second 6 is excluded
    assert record["skipped"] == {
        "excluded": 3,
        "missing_video": 1,
        "past_end": 1,
        "bad_box": 1,
        "unknown_action": 1,
    }
    assert set(record["per_class"]) == {"act1", "act2", "act3"}
    assert all(0.0 < ap <= 1.0 for ap in record["per_class"].values())
    assert record["frame_mAP"] == pytest.approx(np.mean(list(record["per_class"].values())))
    assert record["preset"]["steps"] == 5 and record["preset"]["frames"] == TINY.frames


def test_malformed_or_unmatched_annotations_are_one_line_errors(cli, shared_data, tmp_path):
    videos = link_videos(tmp_path / "videos", [shared_data / "video" / "ucf24" / "v_Fencing_g01_c06.mp4"])
    common = [
        "eval",
        "action-localization",
        "--data",
        str(videos),
        "--backbone",
        "r3d-tiny",
        "--preset",
        "tiny",
    ]
    (tmp_path / "bad.csv").write_text("v_Fencing_g01_c06,1,0.1,0.1,0.5,0.5,1,0\nv_Fencing_g01_c06,1,0.1\n")
    (tmp_path / "other.csv").write_text("elsewhere,1,0.1,0.1,0.5,0.5,1,0\n")
    cases = [
        (["--annotations", str(tmp_path / "bad.csv")], f"{tmp_path / 'bad.csv'}:2: expected video_id,"),
        (["--annotations", str(tmp_path / "other.csv")],
         f"--annotations {tmp_path / 'other.csv'}: no key frame of the videos in --data"),
        (["--annotations", str(tmp_path / "no.csv")], f"annotations {tmp_path / 'no.csv'}: cannot read"),
        (["--annotations", str(shared_data / "video" / "ucf24" / "pyannot_with_class_names.pkl"),
          "--label-map", "x.pbtxt"], "--label-map and --excluded are AVA files"),
    ]  # fmt: skip
    for argv, expected in cases:
        result = cli(*common, *argv)
        lines = result.stderr.strip().splitlines()
        assert result.code == 1 and len(lines) == 1 and expected in lines[0], result.stderr


def test_ucf24_clips_end_to_end_through_the_command(cli, shared_data, tmp_path):
    """The 9 UCF101-24 clips and their pickle, a per-frame split, the transformer head: the
    mechanics of the softmax path on real data (a random backbone: the score means nothing)."""
    root = shared_data / "video" / "ucf24"
    annotations = str(root / "pyannot_with_class_names.pkl")
    result = cli(
        "eval", "action-localization", "--data", str(root), "--annotations", annotations,
        "--backbone", "r3d-tiny", "--preset", "tiny", "--head", "transformer", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert (
        record["train_key_frames"] + record["eval_key_frames"] == 1357
    )  # every annotated frame of the 9 clips
    assert record["train_boxes"] + record["eval_boxes"] == 1896
    assert 300 < record["eval_key_frames"] < 1057  # a half, drawn per frame
    assert "per-frame split" in record["split"]
    # The 9 clips are 8 classes (two Basketball clips); every one is in the evaluated half.
    assert sorted(record["per_class"]) == ["Basketball", "Biking", "CliffDiving", "Fencing", "HorseRiding",
                                           "IceDancing", "SalsaSpin", "SkateBoarding"]  # fmt: skip
    assert 0.0 < record["frame_mAP"] <= 1.0 and record["preset"]["head"] == "transformer"
    assert set(record["skipped"]) == {"missing_video"} and record["bad_files"] == 0
