"""SiamFC tracker: following a synthetic moving square (also into the frame's corner, where the
crops are padded), the scale search on a growing target, frame and box checks, the ``track``
helper, and five real OTB frames on a real vvk backbone."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from test_siamfc import pool_siamfc, square_image  # pytest puts this folder on sys.path
from torchvision import tv_tensors

from vvk.data.images import load_rgb
from vvk.errors import VvkError
from vvk.methods import tracking
from vvk.methods.tracking import SiamFCTracker, track

SIZE = (120, 160)  # frame (H, W)


def otb_box(center: tuple[float, float], side: float) -> tuple[float, float, float, float]:
    """The OTB box (1-based x, y, w, h) of a square of ``side`` centred on 0-based ``center``."""
    return (center[0] + 1 - (side - 1) / 2, center[1] + 1 - (side - 1) / 2, side, side)


def box_center(box) -> np.ndarray:
    return np.array([box[0] - 1 + (box[2] - 1) / 2, box[1] - 1 + (box[3] - 1) / 2])


@pytest.mark.parametrize(
    ("start", "velocity"),
    [((50.0, 60.0), (4.0, -2.0)), ((121.0, 90.0), (3.0, 2.0))],  # the second ends in the corner
    ids=["middle", "into-the-corner"],
)
def test_tracks_a_moving_square_within_a_few_pixels(start, velocity):
    centers = [(start[0] + i * velocity[0], start[1] + i * velocity[1]) for i in range(10)]
    frames = [square_image(SIZE, c, 20) for c in centers]
    boxes, fps = track(pool_siamfc(), frames, otb_box(centers[0], 20))
    assert boxes.shape == (10, 4) and fps > 0
    assert np.allclose(boxes[0], otb_box(centers[0], 20))
    errors = np.linalg.norm([box_center(b) - c for b, c in zip(boxes, centers, strict=True)], axis=1)
    assert errors.max() <= 3.0, errors
    assert np.allclose(boxes[:, 2:], 20, rtol=0.15)


def test_scale_search_picks_the_larger_scale_when_the_target_grows():
    tracker = SiamFCTracker(pool_siamfc())
    tracker.init(square_image(SIZE, (80, 60), 20), otb_box((80, 60), 20))
    sides = [20.0]
    for _ in range(20):  # the target is 27 px from the second frame on
        box = tracker.update(square_image(SIZE, (80, 60), 27))
        sides.append(box[2])
        assert box[2] == pytest.approx(box[3])
        if len(sides) <= 6:
            assert tracker.state.scale_index == 2  # scale_step ** +1 while the box is well short of 27
    # each step up grows the size by (1 - scale_lr) + scale_lr · scale_step
    assert np.allclose(np.diff(np.log(sides[:6])), np.log(0.41 + 0.59 * 1.0375))
    # then it settles (the scale penalty stops it a little short) and stays put
    assert 23.5 < sides[-1] <= 27 and sides[-1] == sides[-5]
    assert tracker.state.scale_index == 1
    assert np.allclose(box_center(box), (80, 60), atol=1.0)


def test_scale_stays_when_the_target_does_and_shrinks_when_it_shrinks():
    tracker = SiamFCTracker(pool_siamfc())
    tracker.init(square_image(SIZE, (80, 60), 26), otb_box((80, 60), 26))
    tracker.update(square_image(SIZE, (80, 60), 26))
    assert tracker.state.scale_index == 1
    tracker.update(square_image(SIZE, (80, 60), 22))
    assert tracker.state.scale_index == 0


class ScriptedModel(torch.nn.Module):
    """Returns the responses it is given, whatever the crops: the tracker's arithmetic alone."""

    total_stride = 8

    def __init__(self, responses: torch.Tensor):
        super().__init__()
        self.features = torch.nn.Module()
        self.features.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.responses = responses

    def exemplar(self, z):
        return z

    def search(self, x):
        assert x.shape[1:] == (3, 255, 255)
        return x

    def correlate(self, kernel, search):
        return self.responses


def bump(row: float, col: float, height: float = 1.0) -> torch.Tensor:
    grid = torch.arange(17.0)
    return height * torch.exp(-((grid[:, None] - row) ** 2 + (grid[None, :] - col) ** 2) / 2)


def test_the_response_peak_maps_to_frame_pixels_through_stride_upsampling_and_scale():
    responses = torch.stack([bump(8, 8, 0.5), bump(8 - 1, 8 + 2), bump(8, 8, 0.5)])[:, None]  # (3, 1, 17, 17)
    tracker = SiamFCTracker(ScriptedModel(responses), window_influence=0.0)
    frame = torch.zeros(3, 300, 400)
    tracker.init(frame, otb_box((200, 150), 40))
    x_size = tracker.state.x_size  # 2 · 40 · 255 / 127
    assert x_size == pytest.approx(80 * 255 / 127)
    box = tracker.update(frame)
    # one response cell = total stride 8 search-crop pixels = 8 · x_sz / 255 frame pixels
    expected = np.array([200 + 2 * 8 * x_size / 255, 150 - 1 * 8 * x_size / 255])
    assert np.allclose(box_center(box), expected, atol=8 / 16 * x_size / 255)
    assert tracker.state.scale_index == 1 and np.allclose(box[2:], 40)


@pytest.mark.parametrize(("ratio", "chosen"), [(1.02, 1), (1.03, 2)])
def test_side_scales_pay_the_scale_penalty(ratio, chosen):
    # 0.9745 · 1.02 < 1 < 0.9745 · 1.03: a side scale must beat the middle by 2.6 %
    responses = torch.stack([bump(8, 8, 0.9), bump(8, 8), bump(8, 8, ratio)])[:, None]
    tracker = SiamFCTracker(ScriptedModel(responses))
    frame = torch.zeros(3, 300, 400)
    tracker.init(frame, otb_box((200, 150), 40))
    tracker.update(frame)
    assert tracker.state.scale_index == chosen


def test_the_search_size_saturates_at_a_fifth_of_the_first():
    responses = torch.stack([bump(8, 8, 2.0), bump(8, 8), bump(8, 8)])[:, None]  # always "smaller"
    tracker = SiamFCTracker(ScriptedModel(responses))
    frame = torch.zeros(3, 120, 160)
    tracker.init(frame, otb_box((80, 60), 20))
    first = tracker.state.x_size
    for _ in range(90):  # 0.41 + 0.59 / 1.0375 = 0.979 per frame: below 0.2 after 76 frames
        box = tracker.update(frame)
    assert tracker.state.x_size == pytest.approx(0.2 * first)
    assert box[2] == pytest.approx(0.2 * 20)


def test_uint8_float_and_greyscale_frames_track_alike():
    first, second = square_image(SIZE, (70, 60), 20), square_image(SIZE, (76, 57), 20)
    box = otb_box((70, 60), 20)
    results = []
    for convert in (lambda f: f, lambda f: (f * 255).round().to(torch.uint8), lambda f: f[:1]):
        tracker = SiamFCTracker(pool_siamfc())
        tracker.init(convert(first), box)
        results.append(tracker.update(convert(second)))
    assert np.allclose(results[0], results[1], atol=0.5) and np.allclose(results[0], results[2])
    hwc = (second * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # as image readers return it
    tracker = SiamFCTracker(pool_siamfc())
    tracker.init((first * 255).round().to(torch.uint8), box)
    assert np.allclose(tracker.update(hwc), results[1])


def test_bad_boxes_and_frames_are_one_line_errors():
    frame = square_image(SIZE, (70, 60), 20)
    cases = [
        ((10, 10, 0, 5), r"box=\(10, 10, 0, 5\): width and height must be positive"),
        ((10, 10, 5, -1), "width and height must be positive"),
        ((200, 10, 5, 5), r"lies outside the 160×120 frame"),
        ((-30, 10, 20, 5), "lies outside"),
        ((10, float("nan"), 5, 5), "not finite"),
        ((10, 10, 5), "expected four numbers"),
        ("a box", "expected four numbers"),
    ]
    for box, message in cases:
        with pytest.raises(VvkError, match=message) as info:
            SiamFCTracker(pool_siamfc()).init(frame, box)
        assert "\n" not in str(info.value)
    with pytest.raises(VvkError, match=re.escape("frame: expected (3, H, W), got shape (120, 160)")):
        SiamFCTracker(pool_siamfc()).init(frame[0], (10, 10, 5, 5))
    with pytest.raises(VvkError, match="update before init"):
        SiamFCTracker(pool_siamfc()).update(frame)
    with pytest.raises(VvkError, match="scale_num=2: must be odd"):
        SiamFCTracker(pool_siamfc(), scale_num=2)
    with pytest.raises(VvkError, match="frames: empty"):
        track(pool_siamfc(), [], (10, 10, 5, 5))


def test_a_box_partly_outside_the_frame_and_typed_boxes_are_accepted():
    frame = square_image(SIZE, (3, 3), 20)
    tracker = SiamFCTracker(pool_siamfc())
    tracker.init(frame, (-5, -5, 16, 16))  # overlaps the top-left corner
    assert np.isfinite(tracker.update(frame)).all()
    xyxy = tv_tensors.BoundingBoxes([[60.0, 50.0, 80.0, 70.0]], format="XYXY", canvas_size=SIZE)
    tracker.init(frame, xyxy)
    assert np.allclose(tracker.box(), (60, 50, 20, 20))


def test_five_real_otb_frames_on_a_real_backbone(shared_data):
    sequence = shared_data / "tracking" / "otb" / "Crossing"
    lines = (sequence / "groundtruth_rect.txt").read_text().split("\n")[:5]
    # OTB files separate with commas, tabs or spaces depending on the sequence
    truth = np.array([[float(v) for v in re.split(r"[,\s]+", line.strip())] for line in lines])
    frames = [load_rgb(sequence / "img" / f"{i:04d}.jpg") for i in range(1, 6)]  # (240, 360, 3) uint8
    torch.manual_seed(0)
    model = tracking.build(tracking.PRESETS["tiny"])  # r3d-tiny at random weights
    boxes, fps = track(model, frames, truth[0])
    assert boxes.shape == (5, 4) and np.isfinite(boxes).all() and fps > 0
    assert np.array_equal(boxes[0], truth[0])
    centers = np.array([box_center(b) for b in boxes])
    assert (centers >= 0).all() and (centers[:, 0] <= 359).all() and (centers[:, 1] <= 239).all()
    assert (boxes[:, 2:] > 0).all()
    # with random weights nothing more is promised than a sane box near the start
    assert np.allclose(boxes[:, 2:], truth[0, 2:], rtol=0.2)
