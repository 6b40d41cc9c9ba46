"""Clip samplers: the index maths alone, no decoding."""

from __future__ import annotations

import numpy as np
import pytest

from vvk.data.samplers import (
    AudioVisualClip,
    Caption,
    LongShortClips,
    RandomClip,
    TwoViews,
    UniformClips,
    clip_positions,
    clip_span,
    cvrl_gap_cdf,
    long_short_positions,
    overlapping_captions,
    random_start,
    sample_cvrl_gap,
    two_view_starts,
    uniform_starts,
    window_seconds,
)


def test_span_and_positions():
    assert clip_span(16, 2) == 31
    assert clip_span(1, 5) == 1
    np.testing.assert_array_equal(clip_positions(3, 4, 2), [3, 5, 7, 9])
    with pytest.raises(ValueError):
        clip_span(0, 1)


def test_uniform_starts_cover_first_to_last_valid_start():
    np.testing.assert_array_equal(uniform_starts(100, 31, 3), [0, 34, 69])  # last valid start 69
    np.testing.assert_array_equal(uniform_starts(100, 31, 1), [34])  # the centre
    np.testing.assert_array_equal(uniform_starts(31, 31, 4), [0, 0, 0, 0])  # exactly fits
    np.testing.assert_array_equal(uniform_starts(30, 31, 3), [0, 0, 0])  # looped from the start


def test_random_start_is_uniform_over_valid_starts():
    rng = np.random.default_rng(0)
    starts = np.array([random_start(40, 31, rng) for _ in range(20000)])
    assert starts.min() == 0 and starts.max() == 9  # 10 valid starts
    counts = np.bincount(starts, minlength=10) / len(starts)
    np.testing.assert_allclose(counts, 0.1, atol=0.01)


def test_cvrl_gap_cdf_endpoints_and_shape():
    assert cvrl_gap_cdf(0, 50) == 0
    assert cvrl_gap_cdf(50, 50) == 1
    assert cvrl_gap_cdf(25, 50) == pytest.approx(0.75)  # half the range holds 3/4 of the mass


def test_cvrl_gap_follows_the_linearly_decreasing_density():
    starts, rng = 40, np.random.default_rng(1)
    gaps = np.array([sample_cvrl_gap(starts, rng) for _ in range(40000)])
    assert gaps.min() == 0 and gaps.max() <= starts - 1
    for k in (0, 5, 10, 20, 30, 39):
        # P(gap <= k) = P(continuous draw < k + 1) = F(k + 1)
        assert (gaps <= k).mean() == pytest.approx(cvrl_gap_cdf(k + 1, starts), abs=0.01)
    # The density falls: small gaps are much more common than large ones.
    assert (gaps < 10).sum() > 3 * (gaps >= 30).sum()


def test_two_view_starts_are_valid_and_order_is_shuffled():
    rng = np.random.default_rng(2)
    num_frames, span = 120, 31
    firsts_later = 0
    for _ in range(2000):
        a, b, gap = two_view_starts(num_frames, span, rng)
        assert abs(a - b) == gap
        assert min(a, b) >= 0 and max(a, b) + span <= num_frames
        firsts_later += a > b
    assert 800 < firsts_later < 1200  # either view comes first, about half the time
    gaps = [two_view_starts(num_frames, span, rng, max_gap=5)[2] for _ in range(500)]
    assert max(gaps) <= 5


def test_two_views_on_a_clip_that_just_fits_have_gap_zero():
    a, b, gap = two_view_starts(31, 31, np.random.default_rng(0))
    assert (a, b, gap) == (0, 0, 0)


def test_long_short_short_clip_lies_inside_and_index_map_points_at_it():
    rng = np.random.default_rng(3)
    for _ in range(500):
        long_pos, short_pos, index_map = long_short_positions(200, rng, long=(8, 4), short=(8, 1))
        assert long_pos[0] <= short_pos[0] and short_pos[-1] <= long_pos[-1]
        assert short_pos[0] in long_pos  # starts on a long frame
        # index_map[j] is short frame j on the long clip's axis: interpolating the long
        # positions there gives the short frame's position back.
        np.testing.assert_allclose(np.interp(index_map, np.arange(8), long_pos), short_pos)
    # Same stride: the map is integral and selects the very same positions.
    long_pos, short_pos, index_map = long_short_positions(100, rng, long=(16, 2), short=(4, 2))
    np.testing.assert_array_equal(long_pos[index_map.astype(int)], short_pos)
    with pytest.raises(ValueError):
        long_short_positions(100, rng, long=(4, 1), short=(8, 1))


def test_sampler_plans():
    rng = np.random.default_rng(4)
    plan = RandomClip(frames=8, stride=3)(50, rng)
    assert list(plan.views) == ["video"] and np.all(np.diff(plan.views["video"]) == 3)
    plan = UniformClips(frames=4, stride=2, num_clips=3)(30, rng)
    assert plan.views["video"].shape == (3, 4)
    np.testing.assert_array_equal(plan.views["video"][:, 0], [0, 12, 23])
    plan = TwoViews(frames=4, stride=2)(30, rng)
    a, b = plan.views["video"], plan.views["video_b"]
    assert abs(a[0] - b[0]) == int(plan.extras["gap"])
    plan = LongShortClips(long_frames=4, long_stride=4, short_frames=4, short_stride=1)(40, rng)
    assert plan.extras["index_map"].shape == (4,)


def test_clips_longer_than_the_video_start_anywhere_and_run_past_its_end():
    """The reference loops short videos (sample_sequence: offset ~ U[0, L) when the clip does not
    fit; sample_ssl_sequence: both views' offsets independent in [0, L))."""
    rng = np.random.default_rng(0)
    starts = [int(RandomClip(frames=16, stride=2)(10, rng).views["video"][0]) for _ in range(400)]
    assert set(starts) == set(range(10))  # every position of the 10, none beyond
    pairs = [TwoViews(frames=16, stride=2)(10, rng) for _ in range(400)]
    a = np.array([int(p.views["video"][0]) for p in pairs])
    b = np.array([int(p.views["video_b"][0]) for p in pairs])
    assert set(a) == set(b) == set(range(10)) and abs(np.corrcoef(a, b)[0, 1]) < 0.15
    assert all(abs(x - y) == int(p.extras["gap"]) for x, y, p in zip(a, b, pairs, strict=True))
    plan = RandomClip(frames=16, stride=2)(10, rng)
    np.testing.assert_array_equal(np.diff(plan.views["video"]), 2)  # positions keep counting up


def test_audio_visual_window_spans_the_clip():
    plan = AudioVisualClip(frames=32, stride=1, fps=10.0)(100, np.random.default_rng(5))
    first, end = plan.window
    assert first == plan.views["video"][0] and end == plan.views["video"][-1] + 1
    t0, t1 = window_seconds(plan.window, 10.0)
    assert t1 - t0 == pytest.approx(3.2)  # VATT: 32 frames at 10 fps = 3.2 s of audio


def test_overlapping_captions_keep_positive_overlaps_in_time_order():
    caps = [
        Caption("late", 8.0, 12.0),
        Caption("early", 0.0, 2.0),
        Caption("touching", 5.0, 6.0),
        Caption("mid", 3.0, 5.5),
    ]
    assert [c.text for c in overlapping_captions(caps, 1.0, 5.0)] == ["early", "mid"]
    assert [c.text for c in overlapping_captions(caps, 6.0, 8.0)] == []  # touching ends only
    assert [c.text for c in overlapping_captions(caps, 0.0, 20.0)] == ["early", "mid", "touching", "late"]
