"""AVA CSV, label map and excluded-timestamps reading; UCF101-24's pickle as key frames."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from vvk.data.ava import match_videos, read_ava, read_excluded, read_label_map, read_ucf24
from vvk.errors import VvkError

PBTXT = """item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crawl"
  id: 2
}
item {
  name: "dance"
  id: 5
}
"""
# The 2018 ActivityNet label map spells blocks "label" and ids "label_id".
PBTXT_2018 = 'label {\n  name: "bend/bow (at the waist)"\n  label_id: 1\n  label_type: PERSON_MOVEMENT\n}\n'


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_rows_of_one_person_become_one_box_with_its_actions(tmp_path):
    csv = _write(
        tmp_path / "train.csv",
        "video_id,timestamp,x1,y1,x2,y2,action_id,person_id\n"  # a header line is allowed
        "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,1,0\n"
        "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,5,0\n"  # the same person dancing too
        "-5KQ66BBWC4,0902,0.332,0.194,0.481,0.891,2,1\n"
        "-5KQ66BBWC4,0903,0.077,0.151,0.283,0.811,1,0\n"
        "1j20qq1JyX4,0902.5,0.1,0.2,0.3,0.4,2\n",  # 7 columns: no person id
    )
    ann = read_ava(csv, label_map=_write(tmp_path / "labels.pbtxt", PBTXT))
    assert [f.key for f in ann.frames] == [
        ("-5KQ66BBWC4", 902.0),
        ("-5KQ66BBWC4", 903.0),
        ("1j20qq1JyX4", 902.5),
    ]
    first = ann.frames[0]
    np.testing.assert_allclose(first.boxes, [[0.077, 0.151, 0.283, 0.811], [0.332, 0.194, 0.481, 0.891]])
    assert first.actions == ((1, 5), (2,)) and first.person_ids == (0, 1)
    assert ann.frames[2].person_ids == (-1,)
    assert ann.classes == {1: "bend/bow (at the waist)", 2: "crawl", 5: "dance"}
    assert ann.multi_label and ann.num_boxes == 4 and not ann.skipped


def test_bad_rows_are_skipped_and_counted(tmp_path):
    csv = _write(
        tmp_path / "val.csv",
        "vid,902,0.1,0.1,0.5,0.5,1,0\n"
        "vid,902,0.1,0.1,0.5,0.5,80,0\n"  # an action the label map lacks
        "vid,902,0.5,0.1,0.4,0.5,1,1\n"  # x2 < x1
        "vid,902,0.5,0.1,1.2,0.5,1,2\n"  # outside 0..1
        "vid,-1,0.1,0.1,0.5,0.5,1,0\n"  # negative timestamp
        "vid,903,0.1,0.1,0.5,0.5,1,0\n"  # an excluded key frame (two rows)
        "vid,903,0.1,0.1,0.5,0.5,2,0\n"
        "other,0904,0.1,0.1,0.5,0.5,2,0\n",
    )
    excluded = _write(tmp_path / "excluded.csv", "vid,0903\n")
    ann = read_ava(csv, label_map=_write(tmp_path / "labels.pbtxt", PBTXT), excluded=excluded)
    assert [f.key for f in ann.frames] == [("other", 904.0), ("vid", 902.0)]
    assert ann.skipped == {"unknown_action": 1, "bad_box": 2, "bad_timestamp": 1, "excluded": 2}
    matched = match_videos(ann, {"vid": 902.0, "elsewhere": 10.0})
    assert matched.frames == []  # "other" has no video; 902 s is the end of "vid", not inside it
    assert matched.skipped == {**ann.skipped, "missing_video": 1, "past_end": 1}
    assert match_videos(ann, {"vid": 902.04, "other": 1000.0}).frames == ann.frames


def test_without_a_label_map_every_action_found_is_a_class(tmp_path):
    csv = _write(tmp_path / "a.csv", "v,1,0,0,1,1,12,0\nv,2,0,0,1,1,3,0\n")
    assert read_ava(csv).classes == {3: "3", 12: "12"}


@pytest.mark.parametrize(
    "text,problem",
    [
        ("v,1,0,0,1,1\n", r"a\.csv:1: expected video_id, timestamp, .* got 6 fields"),
        ("v,1,0,0,1,1,2,0\nv,one,0,0,1,1,2,0\n", r"a\.csv:2: field 'timestamp' is not a number: 'one'"),
        ("v,1,0,0,1,nan,2,0\n", r"a\.csv:1: field 'y2' is not a number"),
        ("v,1,0,0,1,1,sit,0\n", r"a\.csv:1: field 'action_id' is not an integer: 'sit'"),
        ("v,1,0,0,1,1,2,0.93\n", r"a\.csv:1: field 'person_id' is not an integer"),
    ],
)
def test_malformed_rows_are_one_line_errors_naming_file_and_line(tmp_path, text, problem):
    with pytest.raises(VvkError, match=problem):
        read_ava(_write(tmp_path / "a.csv", text))


def test_label_maps_in_both_pbtxt_forms_and_csv(tmp_path):
    assert read_label_map(_write(tmp_path / "m.pbtxt.txt", PBTXT_2018)) == {1: "bend/bow (at the waist)"}
    csv = _write(tmp_path / "m.csv", 'id,name\n5,dance\n1,"bend/bow (at the waist)"\n')
    assert read_label_map(csv) == {1: "bend/bow (at the waist)", 5: "dance"}
    bad = 'item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "b"\n}\n'
    with pytest.raises(VvkError, match=r"m2\.pbtxt:5: a label block needs one name"):
        read_label_map(_write(tmp_path / "m2.pbtxt", bad))
    with pytest.raises(VvkError, match=r"m3\.csv:2: action id 1 is listed twice"):
        read_label_map(_write(tmp_path / "m3.csv", "1,a\n1,b\n"))
    with pytest.raises(VvkError, match=r"m4\.csv: no labels"):
        read_label_map(_write(tmp_path / "m4.csv", "id,name\n"))
    with pytest.raises(VvkError, match=r"label map .*nope\.pbtxt: cannot read"):
        read_label_map(tmp_path / "nope.pbtxt")


def test_excluded_timestamps(tmp_path):
    assert read_excluded(_write(tmp_path / "e.csv", "a,0902\nb,1798\n")) == {("a", 902.0), ("b", 1798.0)}
    with pytest.raises(VvkError, match=r"e2\.csv:1: expected video_id,timestamp, got 3 fields"):
        read_excluded(_write(tmp_path / "e2.csv", "a,0902,1\n"))


def test_split_is_seeded_and_partitions_the_key_frames(tmp_path):
    csv = _write(tmp_path / "a.csv", "".join(f"v,{t},0,0,1,1,1,0\n" for t in range(40)))
    ann = read_ava(csv)
    first, second = ann.split(fraction=0.5, seed=4)
    assert sorted(f.timestamp for f in first.frames + second.frames) == list(map(float, range(40)))
    assert 10 < len(first.frames) < 30
    again, _ = ann.split(fraction=0.5, seed=4)
    assert [f.key for f in again.frames] == [f.key for f in first.frames]
    other, _ = ann.split(fraction=0.5, seed=5)
    assert [f.key for f in other.frames] != [f.key for f in first.frames]


def test_ucf24_tubes_become_per_frame_key_frames(tmp_path):
    # x, y, w, h in 1-based pixels of 320×240, stored as uint8 as the file does: 161 + 160 wraps there
    boxes = np.array([[1, 1, 160, 120], [161, 121, 160, 120], [250, 1, 80, 40]], dtype=np.uint8)
    db = {
        "Walk/v_Walk_g01_c01": {
            "numf": np.uint16(10),
            "label": 1,
            "annotations": [
                {"sf": 2, "ef": 5, "label": 1, "boxes": boxes},  # its 3rd box leaves the 320-wide frame
                {"sf": 3, "ef": 4, "label": 0, "boxes": boxes[:1]},  # a second person on frame 3
                {"sf": 8, "ef": 12, "label": 1, "boxes": np.ones((4, 4), np.uint8)},  # past frame 10
                {"sf": 0, "ef": 1, "label": 7, "boxes": boxes[:1]},  # not a class
            ],
        },
        "Walk/v_Walk_g02_c01": {
            "numf": 5,
            "label": 1,
            "annotations": [{"sf": 0, "ef": 2, "label": 1, "boxes": boxes[:2]}],
        },
    }
    path = tmp_path / "pyannot_with_class_names.pkl"
    path.write_bytes(pickle.dumps({"db": db, "classes": ["Run", "Walk"]}))
    ann = read_ucf24(path, fps={"v_Walk_g01_c01": 20.0})
    assert not ann.multi_label and ann.classes == {0: "Run", 1: "Walk"}
    assert [f.timestamp for f in ann.frames] == [2.5 / 20, 3.5 / 20]  # frame centres
    np.testing.assert_allclose(ann.frames[0].boxes, [[0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(ann.frames[1].boxes, [[0.5, 0.5, 1.0, 1.0], [0, 0, 0.5, 0.5]])
    assert ann.frames[1].actions == ((1,), (0,)) and ann.frames[1].person_ids == (0, 1)
    assert ann.skipped == {"bad_box": 1, "bad_tube": 1, "unknown_action": 1, "missing_video": 2}


def test_real_ucf24_pickle_on_the_shared_clips(shared_data):
    from vvk.data.decode import probe

    root = shared_data / "video" / "ucf24"
    fps = {path.stem: probe(path).fps for path in sorted(root.glob("*.mp4"))}
    ann = read_ucf24(root / "pyannot_with_class_names.pkl", fps=fps)
    assert len(ann.classes) == 24 and {f.video_id for f in ann.frames} == set(fps)
    assert (len(ann.frames), ann.num_boxes) == (1357, 1896)
    assert set(ann.skipped) == {"missing_video"}  # every tube of the 9 clips fits its video and frame
    # Basketball/v_Basketball_g01_c02's first tube starts at frame 63 with the box x, y, w, h
    # = 189, 99, 47, 95 in 1-based pixels of 320×240.
    fps_basketball = fps["v_Basketball_g01_c02"]
    first = next(f for f in ann.frames if f.video_id == "v_Basketball_g01_c02")
    assert first.timestamp == pytest.approx(63.5 / fps_basketball)
    np.testing.assert_allclose(first.boxes, [[188 / 320, 98 / 240, 235 / 320, 193 / 240]])
    assert first.actions == ((0,),) and ann.classes[0] == "Basketball"
