"""SiamFC training pairs (vvk.data.track_pairs): the three layouts, pair sampling, crops, bad records."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_siamfc_crops import reference_crop  # pytest puts this folder on sys.path

from vvk.data.track_pairs import (
    SKIPPED,
    TrackPairs,
    collate_pairs,
    detect_layout,
    read_tracks,
    read_ucf24_annotations,
)
from vvk.errors import VvkError

BACKGROUND, SQUARE = 80, 230


def _frame(width: int, height: int, x0: int, y0: int, side: int) -> np.ndarray:
    """A grey frame with a bright ``side``² square whose top-left pixel is (x0, y0), 0-based."""
    image = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    image[y0 : y0 + side, x0 : x0 + side] = SQUARE
    return image


def _jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def _bright_center(crop: torch.Tensor) -> tuple[float, float]:
    """(x, y) centroid of the square's pixels in a crop, 0-based pixel centres."""
    ys, xs = torch.nonzero(crop.mean(dim=0) > (BACKGROUND + SQUARE) / 2 / 255, as_tuple=True)
    return xs.double().mean().item(), ys.double().mean().item()


def _box_center(box: torch.Tensor) -> tuple[float, float]:
    """The centre of an XYWH box in torchvision's coordinates, as 0-based pixel centres."""
    x, y, w, h = box.reshape(4).tolist()
    return x + w / 2 - 0.5, y + h / 2 - 0.5


def _square_at(i: int) -> tuple[int, int]:
    return 10 + 3 * i, 8 + i  # a target moving right and down


@pytest.fixture
def got10k(tmp_path: Path) -> Path:
    """seqA: 12 frames, 3 and 4 absent, 7 fully covered; seqB: 6 frames, line 2 unparsable,
    line 3 a zero-width box, frame 5's file missing; seqC: listed, not there."""
    root = tmp_path / "got10k" / "train"
    for name, count in (("seqA", 12), ("seqB", 6)):
        lines = []
        for i in range(count):
            x0, y0 = _square_at(i)
            _jpeg(root / name / f"{i + 1:08d}.jpg", _frame(64, 48, x0, y0, 10))
            lines.append(f"{x0 + 1},{y0 + 1},10,10")  # 1-based x, y
        if name == "seqB":
            lines[1], lines[2] = "abc,1,2,3", "5,5,0,4"
            (root / name / "00000005.jpg").unlink()
        (root / name / "groundtruth.txt").write_text("\n".join(lines) + "\n")
    (root / "seqA" / "absence.label").write_text("".join("1\n" if i in (3, 4) else "0\n" for i in range(12)))
    (root / "seqA" / "cover.label").write_text("".join("0\n" if i == 7 else "8\n" for i in range(12)))
    (root / "list.txt").write_text("seqA\nseqB\nseqC\n")
    return root


USABLE = {"seqA": {0, 1, 2, 5, 6, 8, 9, 10, 11}, "seqB": {0, 3, 5}}


def test_got10k_tracks_usable_frames_and_bad_records(got10k):
    layout, tracks, counts = read_tracks(got10k)
    assert layout == "got10k"
    assert {t.name: set(t.usable.tolist()) for t in tracks} == USABLE
    data = TrackPairs(got10k)
    assert data.skipped == {"bad_line": 1, "bad_box": 1, "missing_frame": 1, "missing_sequence": 1}
    assert set(data.skipped) <= set(SKIPPED)
    assert data.absent == 3
    seq_b = next(t for t in data.tracks if t.name == "seqB")
    assert np.isnan(seq_b.boxes[1]).all() and seq_b.boxes[3].tolist() == [20, 12, 10, 10]  # rows stay aligned


def test_absent_and_bad_frames_are_never_chosen(got10k):
    data = TrackPairs(got10k, pairs_per_epoch=300, max_stretch=0, max_translate=0)
    seen = {name: set() for name in USABLE}
    for key in range(300):
        _, _, info = data[key]
        seen[info["track"]].update(info["frames"].tolist())
        assert [Path(p).name for p in info["paths"]] == [f"{n + 1:08d}.jpg" for n in info["frames"].tolist()]
    assert seen == USABLE  # every usable frame is drawn, and nothing else


def test_max_gap_is_respected(got10k):
    gaps = set()
    data = TrackPairs(got10k, max_gap=2, pairs_per_epoch=300)
    for key in range(300):
        info = data[key][2]
        a, b = info["frames"].tolist()
        gaps.add(abs(a - b))
        if a == b:  # only where no other usable frame is near (seqB's 0: 3 and 5 are too far)
            assert not [n for n in USABLE[info["track"]] if 0 < abs(n - a) <= 2]
    assert gaps == {0, 1, 2}
    data = TrackPairs(got10k, max_gap=0, pairs_per_epoch=50)
    assert all(len(set(data[k][2]["frames"].tolist())) == 1 for k in range(50))


def test_target_is_centred_in_both_crops(got10k):
    data = TrackPairs(got10k, pairs_per_epoch=20, max_stretch=0, max_translate=0)
    padded = 0
    for key in range(20):
        exemplar, search, info = data[key]
        assert exemplar.shape == (3, 127, 127) and search.shape == (3, 255, 255)
        assert exemplar.dtype == search.dtype == torch.float32
        for crop, box, size in ((exemplar, info["exemplar_box"], 127), (search, info["search_box"], 255)):
            cx, cy = _bright_center(crop)
            assert abs(cx - (size - 1) / 2) < 0.6 and abs(cy - (size - 1) / 2) < 0.6
            assert _box_center(box) == pytest.approx(((size - 1) / 2,) * 2)
            # SiamFC's geometry: 10-pixel box, context 0.5 -> z_sz = 20, x_sz = 20 * 255 / 127
            assert box.reshape(4)[2].item() == pytest.approx(10 * 127 / 20, rel=1e-5)
        frame_box = info["boxes"][1].tolist()  # torchvision XYWH: the square's own pixels
        assert frame_box == [*_square_at(info["frames"][1].item()), 10, 10]
        if frame_box[0] + 5 - 20 < -1:  # the search crop (40 frame pixels) starts left of the frame
            padded += 1  # there it shows the frame's mean colour, not black
            assert (BACKGROUND - 1) / 255 < search[:, 127, 0].min().item() < (BACKGROUND + 25) / 255
    assert padded


def test_augmentation_moves_the_target_where_info_says(got10k):
    data = TrackPairs(got10k, pairs_per_epoch=40)
    offsets, widths = set(), set()
    for key in range(40):
        exemplar, search, info = data[key]
        for crop, box, size in ((exemplar, info["exemplar_box"], 127), (search, info["search_box"], 255)):
            bx, by = _box_center(box)
            cx, cy = _bright_center(crop)
            assert abs(cx - bx) < 0.75 and abs(cy - by) < 0.75
            dx, dy = bx - (size - 1) / 2, by - (size - 1) / 2
            assert max(abs(dx), abs(dy)) <= 4 + 1e-4 and dx == pytest.approx(round(dx), abs=1e-4)
            offsets.add((round(dx), round(dy)))
            width = box.reshape(4)[2].item()
            assert 10 * 127 / 20 / 1.05 <= width <= 10 * 127 / 20 / 0.95 + 1e-4  # ±5 % stretch
            widths.add(round(width, 3))
    assert len(offsets) > 10 and len(widths) > 40  # shifts and stretches vary, per crop


def test_same_key_same_pair_and_variety_across_keys(got10k):
    data = TrackPairs(got10k, pairs_per_epoch=30)
    first = data[(4, 1234)]
    again = data[(4, 1234)]
    in_worker = pickle.loads(pickle.dumps(data))[(4, 1234)]  # what a loader worker computes
    for other in (again, in_worker):
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
        assert first[2]["track"] == other[2]["track"] and torch.equal(first[2]["frames"], other[2]["frames"])
        assert torch.equal(first[2]["search_box"], other[2]["search_box"])
    pairs = {(data[k][2]["track"], tuple(data[k][2]["frames"].tolist())) for k in range(30)}
    assert len(pairs) >= 15
    assert not torch.equal(data[0][1], data[1][1])
    with pytest.raises(IndexError):
        data[30]


def test_a_frame_lost_after_opening_is_replaced_and_reported(got10k):
    data = TrackPairs(got10k, pairs_per_epoch=40)
    for f in (got10k / "seqB").glob("*.jpg"):
        f.unlink()
    reported = 0
    for key in range(40):
        _, _, info = data[key]
        assert info["track"] == "seqA"
        reported += len(info["skipped"])
        assert all(r["problem"] == "missing" and "seqB" in r["path"] for r in info["skipped"])
    assert reported > 0
    batch = collate_pairs([data[k] for k in range(4)])
    assert batch["exemplar"].shape == (4, 3, 127, 127) and batch["search"].shape == (4, 3, 255, 255)
    assert len(batch["info"]) == 4 and "skipped" not in batch["info"][0]


def test_keys_from_the_training_loop_sampler(got10k):
    from vvk.data.loader import make_loader

    data = TrackPairs(got10k, pairs_per_epoch=8)
    loader = make_loader(data, batch_size=4, num_workers=0, seed=3, collate_fn=collate_pairs)
    batch = next(iter(loader))
    assert batch["exemplar"].shape == (4, 3, 127, 127) and batch["search"].shape == (4, 3, 255, 255)
    assert batch["skipped"] == [] and len(batch["info"]) == 4
    again = next(iter(make_loader(data, batch_size=4, num_workers=0, seed=3, collate_fn=collate_pairs)))
    assert torch.equal(batch["search"], again["search"])  # a resumed run draws the same pairs
    assert torch.equal(data[np.int64(5)][1], data[5][1])


@pytest.mark.parametrize("name", ["../outside", "/etc", "link"])
def test_list_names_never_reach_outside_the_root(got10k, tmp_path, name):
    (tmp_path / "outside").mkdir()
    (got10k / "link").symlink_to(tmp_path / "outside")
    (got10k / "list.txt").write_text(f"seqA\n{name}\n")
    with pytest.raises(VvkError) as error:
        TrackPairs(got10k)
    message = str(error.value)
    assert "\n" not in message and f"{got10k / 'list.txt'}: line 2" in message and "outside" in message


def test_a_folder_of_no_known_layout_is_a_one_line_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(VvkError, match=r"^root=.*stuff: no tracking data \(expected OTB") as error:
        TrackPairs(tmp_path / "stuff")
    assert "\n" not in str(error.value)
    (tmp_path / "GOT-10k" / "train").mkdir(parents=True)
    (tmp_path / "GOT-10k" / "train" / "list.txt").write_text("")
    with pytest.raises(VvkError, match=r"give one split, root=.*GOT-10k[/\\]train"):
        detect_layout(tmp_path / "GOT-10k")
    with pytest.raises(VvkError, match="no such folder"):
        detect_layout(tmp_path / "nowhere")


def test_otb_layout_through_the_otb_reader(tmp_path):
    root = tmp_path / "otb"
    lines = []
    for i in range(8):
        x0, y0 = _square_at(i)
        _jpeg(root / "Walker" / "img" / f"{i + 1:04d}.jpg", _frame(64, 48, x0, y0, 10))
        lines.append(f"{x0 + 1}\t{y0 + 1}\t10\t10" if i != 5 else f"{x0 + 1}\t{y0 + 1}\t0\t10")
    (root / "Walker" / "groundtruth_rect.txt").write_text("\n".join(lines) + "\n")
    _jpeg(root / "Broken" / "img" / "0001.jpg", _frame(64, 48, 1, 1, 10))
    _jpeg(root / "Broken" / "img" / "0002.jpg", _frame(64, 48, 1, 1, 10))
    (root / "Broken" / "groundtruth_rect.txt").write_text("2,2,10,10\n2,2,ten,10\n")
    _jpeg(root / "Lonely" / "img" / "0001.jpg", _frame(64, 48, 1, 1, 10))
    _jpeg(root / "Lonely" / "img" / "0002.jpg", _frame(64, 48, 1, 1, 10))
    (root / "Lonely" / "groundtruth_rect.txt").write_text("2,2,10,10\n2,2,-1,10\n")  # one usable frame
    data = TrackPairs(root, pairs_per_epoch=60, max_stretch=0, max_translate=0)
    assert data.layout == "otb" and [t.name for t in data.tracks] == ["Walker"]
    assert data.skipped == {"bad_sequence": 1, "bad_box": 2, "short_track": 1}
    for key in range(60):
        _, search, info = data[key]
        assert 5 not in info["frames"].tolist()
        cx, cy = _bright_center(search)
        assert abs(cx - 127) < 0.6 and abs(cy - 127) < 0.6


def _write_video(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.bit_rate = "yuv420p", 4_000_000
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


def _ucf_square(i: int) -> tuple[int, int]:
    return 6 + 6 * i, 30 + 2 * i  # frame pixels of a 160×120 video; reaches x = 120 (canvas 241)


@pytest.fixture
def ucf24(tmp_path: Path) -> Path:
    """One 20-frame 160×120 video (half UCF101's 320×240) of a moving 20² square, its tube drawn
    on the 320×240 canvas in uint8 (x + w passes 255); a video without a file; a bad tube."""
    root = tmp_path / "ucf24"
    frames = np.stack([_frame(160, 120, *_ucf_square(i), 20) for i in range(20)])
    _write_video(root / "Walk" / "v_Walk_g01_c01.mp4", frames)
    boxes = np.array([[2 * x + 1, 2 * y + 1, 40, 40] for x, y in map(_ucf_square, range(2, 18))], np.uint8)
    tube = {"sf": 2, "ef": 18, "label": 0, "boxes": boxes}
    bad = {"sf": 5, "ef": 30, "label": 0, "boxes": boxes}  # past the video's 20 frames
    db = {
        "Walk/v_Walk_g01_c01": {"numf": np.uint8(20), "label": 0, "annotations": [tube, bad]},
        "Walk/v_Walk_g02_c01": {"numf": np.uint8(20), "label": 0, "annotations": [tube]},
    }
    with open(root / "pyannot_with_class_names.pkl", "wb") as f:
        pickle.dump({"db": db, "trainvideos": ["Walk/v_Walk_g01_c01"], "classes": ["Walk"]}, f)
    return root


def test_ucf24_tubes_decoded_and_boxes_scaled_to_the_video(ucf24):
    data = TrackPairs(ucf24, pairs_per_epoch=12, max_stretch=0, max_translate=0, decoder="pyav")
    assert data.layout == "ucf24" and [t.name for t in data.tracks] == ["Walk/v_Walk_g01_c01#0"]
    assert data.skipped == {"missing_video": 1, "bad_tube": 1}
    track = data.tracks[0]
    assert track.frame_numbers.tolist() == list(range(2, 18)) and track.canvas == (240, 320)
    assert (track.boxes[:, 0] + track.boxes[:, 2]).max() > 255  # a sum that wraps in the file's uint8
    for key in range(12):
        exemplar, search, info = data[key]
        assert info["boxes"].canvas_size == (120, 160)
        for i, box in zip(info["frames"].tolist(), info["boxes"].tolist(), strict=True):
            assert box == pytest.approx([*_ucf_square(i), 20, 20])
        for crop, size in ((exemplar, 127), (search, 255)):
            cx, cy = _bright_center(crop)  # the decoded frame is the annotated one
            assert abs(cx - (size - 1) / 2) < 1.5 and abs(cy - (size - 1) / 2) < 1.5


def test_ucf24_pickle_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    path = tmp_path / "pyannot_with_class_names.pkl"
    path.write_bytes(pickle.dumps({"db": {"a/b": Payload()}}))
    with pytest.raises(VvkError, match=r"not a UCF101-24 annotation pickle .*builtins\.print"):
        read_ucf24_annotations(path)


def _check_real_pairs(data: TrackPairs, keys: range) -> None:
    """Boxes inside their frames; crops as RoIAlign defines them around the box centre; with
    the same frame twice, the exemplar is the search crop's centre (SiamFC's two scales agree)."""
    for key in keys:
        exemplar, search, info = data[key]
        frames, _ = data._read(*_track_rows(data, info))
        for frame, box, crop, size in zip(frames, info["boxes"], (exemplar, search), (127, 255), strict=True):
            height, width = frame.shape[-2:]
            x, y, w, h = box.tolist()
            assert x >= 0 and y >= 0 and x + w <= width and y + h <= height and w > 0 and h > 0
            side = math.sqrt((w + (w + h) / 2) * (h + (w + h) / 2)) * size / 127
            center = (x + w / 2 - 0.5, y + h / 2 - 0.5)
            expected = reference_crop(frame, center, side, size, frame.mean(dim=(1, 2)))
            torch.testing.assert_close(crop, expected, atol=1e-4, rtol=0)
        if info["frames"][0] == info["frames"][1]:
            torch.testing.assert_close(exemplar, search[:, 64:191, 64:191], atol=1e-4, rtol=0)


def _track_rows(data: TrackPairs, info: dict):
    """The pair's track and rows, to read its frames again."""
    track = next(t for t in data.tracks if t.name == info["track"])
    return track, np.array(
        [int(np.flatnonzero(track.frame_numbers == n)[0]) for n in info["frames"].tolist()]
    )


def test_real_otb_crossing_and_couple(shared_data):
    root = shared_data / "tracking" / "otb"
    data = TrackPairs(root, pairs_per_epoch=16, max_stretch=0, max_translate=0)
    assert data.layout == "otb" and not data.skipped
    assert {t.name: len(t.usable) for t in data.tracks} == {"Couple": 140, "Crossing": 120}
    _check_real_pairs(data, range(8))
    same_frame = TrackPairs(root, pairs_per_epoch=4, max_gap=0, max_stretch=0, max_translate=0)
    _check_real_pairs(same_frame, range(4))


def test_real_ucf24_pickle_and_clips(shared_data):
    root = shared_data / "video" / "ucf24"
    annotations = read_ucf24_annotations(root / "pyannot_with_class_names.pkl")
    assert len(annotations["db"]) == 3194 and len(annotations["classes"]) == 24
    first = annotations["db"]["Basketball/v_Basketball_g01_c02"]["annotations"][0]
    assert (first["sf"], first["ef"], first["boxes"][0].tolist()) == (63, 111, [189, 99, 47, 95])
    data = TrackPairs(root, pairs_per_epoch=6, max_stretch=0, max_translate=0, decoder="pyav")
    assert data.skipped == {"missing_video": 3194 - 9}
    assert len({t.source for t in data.tracks}) == 9 and len(data.tracks) == 15
    for track in data.tracks:  # x, y, w, h on UCF101's 320×240 frames, every row
        x, y, w, h = track.boxes.T
        assert (w > 0).all() and (h > 0).all() and (x >= 1).all() and (y >= 1).all()
        assert (x - 1 + w <= 320).all() and (y - 1 + h <= 240).all()
    _check_real_pairs(data, range(4))
    same_frame = TrackPairs(
        root, pairs_per_epoch=2, max_gap=0, max_stretch=0, max_translate=0, decoder="pyav"
    )
    _check_real_pairs(same_frame, range(2))

    from vvk.data.decode import every_frame, probe

    _, _, info = data[0]
    path = Path(info["paths"][0])
    decoded = [image for _, image in every_frame(path, meta=probe(path))]
    track, rows = _track_rows(data, info)
    x, y, w, h = track.boxes[rows].T  # 1-based on 320×240 -> torchvision's XYWH on 340×256
    scaled = np.stack([(x - 1) * 340 / 320, (y - 1) * 256 / 240, w * 340 / 320, h * 256 / 240], axis=1)
    np.testing.assert_allclose(info["boxes"].numpy(), scaled, rtol=1e-6)
    frames, _ = data._read(track, rows)
    for n, frame in zip(info["frames"].tolist(), frames, strict=True):
        assert frame.shape == (3, 256, 340)  # these copies are 340×256: boxes scaled by 340/320, 256/240
        assert torch.equal((frame * 255).round().byte().permute(1, 2, 0), torch.from_numpy(decoded[n]))
