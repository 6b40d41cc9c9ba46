"""Subtitle captions: SubRip and WebVTT cues, markup, language suffixes, bad timings."""

from __future__ import annotations

import pytest

from vvk.data.subtitles import read_caption_source, read_subtitles, subtitle_captions
from vvk.errors import VvkError

SRT = """\ufeff1
00:00:01,000 --> 00:00:04,250
A woman <i>lifts</i> a barbell
over her head

2
00:01:02,5 --> 00:01:03,000
{\\an8}She drops it

3
00:01:05,000 --> 00:01:06,000
<b></b>
"""

VTT = """WEBVTT - a header line

NOTE a comment block
with two lines

intro
00:02.500 --> 00:04.000 align:start position:10%
<v Roger>Hello <00:00:03.000><c.yellow>there</c>

01:00:00.000 --> 01:00:01.500
Late cue
"""


def test_srt_cues_with_markup_multiline_text_and_a_bom(tmp_path):
    path = tmp_path / "lift.srt"
    path.write_text(SRT.replace("\n", "\r\n"), encoding="utf-8")
    cues = read_subtitles(path)
    assert [(c.text, c.start, c.end) for c in cues] == [
        ("A woman lifts a barbell over her head", 1.0, 4.25),
        ("She drops it", 62.5, 63.0),
    ]  # the third cue is empty once its markup is gone


def test_vtt_cues_with_identifiers_settings_notes_and_short_timestamps(tmp_path):
    path = tmp_path / "talk.vtt"
    path.write_text(VTT, encoding="utf-8")
    cues = read_subtitles(path)
    assert [(c.text, c.start, c.end) for c in cues] == [
        ("Hello there", 2.5, 4.0),
        ("Late cue", 3600.0, 3601.5),
    ]


def test_a_folder_maps_subtitles_to_videos_by_stem(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "talk.en.vtt").write_text(VTT, encoding="utf-8")
    (tmp_path / "sub" / "lift.2021.srt").write_text(SRT, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a subtitle")
    found = subtitle_captions(tmp_path)
    assert sorted(found) == ["lift.2021", "talk"]  # "en" is a language tag, "2021" is not
    assert [c.text for c in found["talk"]] == ["Hello there", "Late cue"]
    assert read_caption_source(tmp_path) == found


def test_caption_source_reads_a_table_and_refuses_what_names_no_video(tmp_path, shared_data):
    table = read_caption_source(shared_data / "video" / "activitynet" / "captions.tsv")
    assert sorted(table) == ["v_GGSY1Qvo990", "v_ZNVhz7ctTq0"]
    (tmp_path / "one.srt").write_text(SRT, encoding="utf-8")
    with pytest.raises(VvkError, match="names no video"):
        read_caption_source(tmp_path / "one.srt")
    with pytest.raises(VvkError, match="no such caption file"):
        read_caption_source(tmp_path / "missing.tsv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VvkError, match="no .srt or .vtt"):
        read_caption_source(tmp_path / "empty")


@pytest.mark.parametrize(
    ("timing", "message"),
    [("00:00:01,000 --> soon", "malformed cue timing"), ("00:00:05,000 --> 00:00:01,000", "cue ends")],
)
def test_bad_timings_name_the_file_and_line(tmp_path, timing, message):
    path = tmp_path / "bad.srt"
    path.write_text(f"1\n{timing}\nText\n", encoding="utf-8")
    with pytest.raises(VvkError, match=rf"bad\.srt:2: {message}"):
        read_subtitles(path)


def test_a_folder_is_read_as_a_video_folder_and_a_link_loop_is_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "talk.vtt").write_text(VTT, encoding="utf-8")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "lift.srt").write_text(SRT, encoding="utf-8")
    (tmp_path / "kept" / "other.srt").write_text(SRT, encoding="utf-8")
    (folder / "lift.srt").symlink_to(tmp_path / "kept" / "lift.srt")  # a link farm, as for videos
    (folder / "up").symlink_to(tmp_path / "kept")  # a linked folder is not searched
    (folder / "loop.srt").symlink_to("loop.srt")
    with caplog.at_level("WARNING", logger="vvk.data"):
        found = subtitle_captions(folder)
    assert sorted(found) == ["lift", "talk"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{folder / 'loop.srt'}: cannot be opened (Too many levels of symbolic links)")
    assert warning.endswith("; skipped")
