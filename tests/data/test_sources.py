"""Dataset sources: folder layouts, CSV/TSV lists, ActivityNet captions, and their errors."""

from __future__ import annotations

import pytest

from vvk.data.sources import open_source, read_captions, read_list, scan_folder
from vvk.errors import VvkError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_class_folders_give_labels_by_sorted_class_name(tmp_path):
    for rel in ("walk/a.mp4", "run/b.avi", "run/c.MP4", "jump/d.mkv", "jump/notes.txt", "walk/.hidden.mp4"):
        _touch(tmp_path / rel)
    source = scan_folder(tmp_path)
    assert source.classes == ["jump", "run", "walk"]
    got = {p.rsplit("/", 1)[1]: label for p, label in ((i.path, i.label) for i in source.items)}
    assert got == {"d.mkv": 0, "b.avi": 1, "c.MP4": 1, "a.mp4": 2}  # .txt and hidden files ignored


def test_flat_folder_is_unlabelled(tmp_path):
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "sub" / "b.mp4")
    source = scan_folder(tmp_path)
    assert source.classes == [] and [i.label for i in source.items] == [-1, -1]


def test_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(VvkError, match="no video files"):
        scan_folder(tmp_path)
    with pytest.raises(VvkError, match="no such folder or file"):
        open_source(tmp_path / "nope")


def test_csv_list_with_header_names_and_segments(tmp_path):
    (tmp_path / "list.csv").write_text(
        "path,label,start,end\nclips/a.mp4,walk,1.5,4\nclips/b.mp4,run,0,2.5\n# a comment\n\nc.mp4,walk\n"
    )
    source = read_list(tmp_path / "list.csv")
    assert source.classes == ["run", "walk"]
    a, b, c = source.items
    assert a.path == str(tmp_path / "clips" / "a.mp4") and (a.label, a.start, a.end) == (1, 1.5, 4.0)
    assert (b.label, b.start, b.end) == (0, 0.0, 2.5)
    assert (c.label, c.start, c.end) == (1, None, None)
    assert a.video_id == "a"


def test_tsv_list_with_integer_labels_and_no_labels(tmp_path):
    (tmp_path / "l.tsv").write_text("x.mp4\t3\ny.mp4\t0\n")
    assert [i.label for i in read_list(tmp_path / "l.tsv").items] == [3, 0]
    (tmp_path / "plain.txt").write_text("x.mp4\ny.mp4\n")
    assert [i.label for i in read_list(tmp_path / "plain.txt").items] == [-1, -1]


@pytest.mark.parametrize(
    "text,message",
    [
        ("a.mp4,1,2\n", "list.csv:1: expected path[,label[,start,end]], got 3 fields"),
        ("a.mp4,1,x,4\n", "list.csv:1: field 'start' is not a number of seconds: 'x'"),
        ("a.mp4,1,5,4\n", "list.csv:1: field 'end' (4.0) must be after 'start' (5.0)"),
        ("a.mp4,walk\nb.mp4,3\n", "list.csv:2: field 'label' mixes class names and numbers ('3')"),
        ("path,label\n", "no videos listed"),
    ],
)
def test_malformed_lists_name_the_file_line_and_field(tmp_path, text, message):
    (tmp_path / "list.csv").write_text(text)
    with pytest.raises(VvkError) as e:
        read_list(tmp_path / "list.csv")
    assert message in str(e.value)


def test_activitynet_captions(shared_data):
    table = read_captions(shared_data / "video" / "activitynet" / "captions.tsv")
    assert set(table) == {"v_ZNVhz7ctTq0", "v_GGSY1Qvo990"}
    first = table["v_ZNVhz7ctTq0"][0]
    assert first.text.startswith("A fluffy dog") and (first.start, first.end) == (0.0, 1.97)
    assert len(table["v_GGSY1Qvo990"]) == 6


def test_caption_file_errors(tmp_path):
    (tmp_path / "c.tsv").write_text("id\tcaption\tstart\tend\nv\tx\t0\t1\n")
    with pytest.raises(VvkError, match="header lacks column"):
        read_captions(tmp_path / "c.tsv")
    (tmp_path / "c.tsv").write_text("video_id\tcaption\tstart\tend\nv\tx\tsoon\t1\n")
    with pytest.raises(VvkError, match=r"c.tsv:2: field 'start'"):
        read_captions(tmp_path / "c.tsv")


@pytest.fixture
def listed(tmp_path):
    """<tmp>/elsewhere/far.mp4, <tmp>/data/{near.mp4, sub/deep.mp4, link.mp4 -> far.mp4,
    away -> elsewhere}."""
    _touch(tmp_path / "elsewhere" / "far.mp4")
    _touch(tmp_path / "data" / "near.mp4")
    _touch(tmp_path / "data" / "sub" / "deep.mp4")
    (tmp_path / "data" / "link.mp4").symlink_to(tmp_path / "elsewhere" / "far.mp4")
    (tmp_path / "data" / "away").symlink_to(tmp_path / "elsewhere")
    return tmp_path


def test_relative_list_paths_stay_in_the_lists_folder(listed):
    far = listed / "elsewhere" / "far.mp4"
    (listed / "data" / "list.csv").write_text(
        f"path,label\nnear.mp4,a\nsub/deep.mp4,b\n../elsewhere/far.mp4,c\naway/far.mp4,c\nlink.mp4,b\n{far},a\n"
    )
    source = read_list(listed / "data" / "list.csv")
    # Relative paths may not leave the folder by '..' or a linked folder; a link to a file is the
    # folder's file, as when the folder is scanned. Absolute paths are read as written.
    assert [i.path for i in source.items] == [
        str(listed / "data" / "near.mp4"),
        str(listed / "data" / "sub" / "deep.mp4"),
        str(listed / "data" / "link.mp4"),
        str(far),
    ]
    assert [(r["path"], r["problem"]) for r in source.skipped] == [
        ("../elsewhere/far.mp4", "outside"),
        ("away/far.mp4", "outside"),
    ]
    assert source.skipped[0]["detail"].startswith("list.csv line 3: leads with '..' to")
    assert source.skipped[1]["detail"].startswith("list.csv line 4: leads through a link to")
    # Class indices come from every line: a skipped line does not shift the others' labels.
    assert source.classes == ["a", "b", "c"] and [i.label for i in source.items] == [0, 1, 1, 0]


def test_root_resolves_relative_paths_and_confines_absolute_ones(listed):
    far = listed / "elsewhere" / "far.mp4"
    lists = listed / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text(f"near.mp4\nsub/deep.mp4\n{listed / 'data' / 'near.mp4'}\n{far}\n")
    source = read_list(lists / "train.txt", root=listed / "data")
    assert [i.path for i in source.items] == [
        str(listed / "data" / "near.mp4"),
        str(listed / "data" / "sub" / "deep.mp4"),
        str(listed / "data" / "near.mp4"),
    ]
    assert [r["path"] for r in source.skipped] == [str(far)]
    # Without root the same list reads its own folder, where these files are not.
    assert read_list(lists / "train.txt").items[0].path == str(lists / "near.mp4")


def test_open_source_takes_video_files_and_several_sources(listed, tmp_path):
    video = listed / "data" / "near.mp4"
    assert [i.path for i in open_source(video).items] == [str(video)]
    for rel in ("walk/a.mp4", "run/b.mp4"):
        _touch(tmp_path / "classes" / rel)
    (tmp_path / "named.csv").write_text(f"{video},walk\n{tmp_path / 'gone.mp4'},jump\n")
    merged = open_source([tmp_path / "classes", tmp_path / "named.csv", tmp_path / "gone.mp4"])
    # Class names are merged by name; a missing path in a sequence is an item, as in a list.
    assert merged.classes == ["jump", "run", "walk"]
    assert [(i.path.rsplit("/", 1)[1], i.label) for i in merged.items] == [
        ("b.mp4", 1), ("a.mp4", 2), ("near.mp4", 2), ("gone.mp4", 0), ("gone.mp4", -1),
    ]  # fmt: skip
    (tmp_path / "numbers.csv").write_text(f"{video},3\n")
    with pytest.raises(VvkError, match="integer label 3, while other sources name their classes"):
        open_source([tmp_path / "classes", tmp_path / "numbers.csv"])


def test_errors_name_the_data_parameter(tmp_path):
    with pytest.raises(VvkError) as info:
        open_source(tmp_path / "nope")
    assert str(info.value) == f"data={tmp_path / 'nope'}: no such folder or file"
    assert info.value.params == ("data",)
    with pytest.raises(VvkError, match=r"^data=\[\]: no paths given"):
        open_source([])
