"""The tiling contract (vidfeat.video.sampling): examples and properties checked against the definition."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from vidfeat.video.sampling import END_TOLERANCE, REAL_TOLERANCE, ClipSampling

# --- construction ----------------------------------------------------------------------------


def test_default_stride_is_half_a_clip() -> None:
    sampling = ClipSampling(num_frames=96, fps=7.5)
    assert sampling.clip_sec == pytest.approx(12.8)
    assert sampling.stride_sec == pytest.approx(6.4)
    assert sampling == ClipSampling(96, 7.5, 6.4)


def test_explicit_stride_is_kept() -> None:
    sampling = ClipSampling(8, 4, stride_sec=0.75)
    assert sampling.stride_sec == 0.75
    assert sampling.clip_start(3) == pytest.approx(2.25)


def test_sampling_is_frozen() -> None:
    sampling = ClipSampling(8, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampling.fps = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0, "fps": 4}, "num_frames must be at least 1"),
        ({"num_frames": -3, "fps": 4}, "num_frames must be at least 1"),
        ({"num_frames": 2.5, "fps": 4}, "num_frames must be an integer"),
        ({"num_frames": True, "fps": 4}, "num_frames must be an integer"),
        ({"num_frames": "8", "fps": 4}, "num_frames must be an integer"),
        ({"num_frames": 8, "fps": 0}, "fps must be a positive"),
        ({"num_frames": 8, "fps": -4}, "fps must be a positive"),
        ({"num_frames": 8, "fps": math.nan}, "fps must be a positive"),
        ({"num_frames": 8, "fps": math.inf}, "fps must be a positive"),
        ({"num_frames": 8, "fps": "4"}, "fps must be a number"),
        ({"num_frames": 8, "fps": 4, "stride_sec": 0}, "stride_sec must be a positive"),
        ({"num_frames": 8, "fps": 4, "stride_sec": -1.0}, "stride_sec must be a positive"),
        ({"num_frames": 8, "fps": 4, "stride_sec": math.nan}, "stride_sec must be a positive"),
        ({"num_frames": 8, "fps": 4, "offset_sec": -0.5}, "offset_sec must be a finite time >= 0"),
        ({"num_frames": 8, "fps": 4, "offset_sec": math.inf}, "offset_sec must be a finite time >= 0"),
        ({"num_frames": 8, "fps": 4, "offset_sec": math.nan}, "offset_sec must be a finite time >= 0"),
        ({"num_frames": 8, "fps": 4, "offset_sec": "1"}, "offset_sec must be a finite time >= 0"),
        ({"num_frames": 8, "fps": 4, "max_clips": 0}, "max_clips must be a positive integer"),
        ({"num_frames": 8, "fps": 4, "max_clips": 1.5}, "max_clips must be a positive integer"),
        ({"num_frames": 8, "fps": 4, "max_clips": True}, "max_clips must be a positive integer"),
    ],
)
def test_invalid_sampling_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClipSampling(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("end", [-1.0, math.nan, math.inf])
def test_invalid_end_is_refused(end: float) -> None:
    sampling = ClipSampling(8, 4)
    with pytest.raises(ValueError, match="end_sec"):
        sampling.num_clips(end)
    with pytest.raises(ValueError, match="end_sec"):
        sampling.valid_frames(0, end)


def test_negative_clip_index_is_refused() -> None:
    with pytest.raises(ValueError, match="clip index"):
        ClipSampling(8, 4).clip_targets(-1)


# --- examples --------------------------------------------------------------------------------


def test_targets_of_a_clip() -> None:
    sampling = ClipSampling(4, 8)  # clip 0.5 s, stride 0.25 s
    assert sampling.clip_targets(0) == (0.0, 0.125, 0.25, 0.375)
    assert sampling.clip_targets(2) == (0.5, 0.625, 0.75, 0.875)


@pytest.mark.parametrize(
    ("end", "clips"),
    [
        (0.0, 1),
        (0.3, 1),
        (2.0, 1),  # exactly one clip long
        (2.0 + END_TOLERANCE / 2, 1),  # within tolerance of one clip
        (2.01, 2),
        (3.0, 2),
        (3.01, 3),
        (10.0, 9),
    ],
)
def test_number_of_clips(end: float, clips: int) -> None:
    assert ClipSampling(8, 4).num_clips(end) == clips  # clip 2 s, stride 1 s


def test_short_video_gives_one_padded_clip() -> None:
    sampling = ClipSampling(8, 8)  # targets every 0.125 s
    assert sampling.num_clips(0.3) == 1
    assert sampling.valid_frames(0, 0.3) == 3  # 0, 0.125, 0.25
    assert sampling.valid_frames(0, 0.25) == 2  # 0.25 itself is the end, not a frame
    assert sampling.valid_frames(0, 0.0) == 1  # never empty


def test_last_clip_of_a_longer_video_is_padded() -> None:
    sampling = ClipSampling(8, 5)  # clip 1.6 s, stride 0.8 s
    assert sampling.num_clips(3.0) == 3
    assert [sampling.valid_frames(i, 3.0) for i in range(3)] == [8, 8, 7]


def test_gaps_when_stride_exceeds_clip() -> None:
    sampling = ClipSampling(4, 4, stride_sec=3.0)  # clip 1 s every 3 s
    assert sampling.num_clips(6.5) == 3  # starts 0, 3, 6
    assert sampling.num_clips(6.0) == 2  # a clip starting at the end has no frame
    assert sampling.valid_frames(2, 6.5) == 2  # 6.0, 6.25


def test_one_clip_at_a_time() -> None:
    sampling = ClipSampling(4, 8).at(1.3)  # targets every 0.125 s from 1.3 s
    assert (sampling.offset_sec, sampling.max_clips, sampling.stride_sec) == (1.3, 1, 0.25)
    assert sampling.clip_targets(0) == pytest.approx((1.3, 1.425, 1.55, 1.675))
    assert [sampling.num_clips(end) for end in (0.0, 1.4, 1.6, 100.0)] == [1, 1, 1, 1]
    assert [sampling.valid_frames(0, end) for end in (0.0, 1.4, 1.55, 1.6, 100.0)] == [1, 1, 2, 3, 4]
    assert not sampling.clip_exists(1, 100.0)


def test_a_tiling_with_an_offset() -> None:
    sampling = ClipSampling(8, 4, offset_sec=1.5)  # clips of 2 s every 1 s from 1.5 s
    assert sampling.clip_start(2) == 3.5
    assert sampling.num_clips(3.5) == 1  # clip 0 covers [1.5, 3.5)
    assert sampling.num_clips(5.5) == 3  # starts 1.5, 2.5, 3.5: the last reaches 5.5
    assert sampling.num_clips(5.6) == 4
    assert ClipSampling(8, 4, offset_sec=1.5, max_clips=2).num_clips(5.6) == 2


# --- properties against the definition -------------------------------------------------------


@st.composite
def samplings_and_ends(
    draw: st.DrawFn, max_stride_ratio: float = 1.0
) -> tuple[ClipSampling, float]:
    """A sampling (stride up to ``max_stride_ratio`` clips, or the default) and a video end."""
    num_frames = draw(st.integers(1, 128))
    fps = draw(st.floats(0.5, 120.0))
    clip_sec = num_frames / fps
    ratio = draw(st.floats(0.1, max_stride_ratio) | st.none())
    stride = None if ratio is None else ratio * clip_sec
    end = draw(st.floats(0.0, 20.0)) * clip_sec
    return ClipSampling(num_frames, fps, stride), end


def reference_clip_count(sampling: ClipSampling, end: float) -> int:
    """The definition, literally: clip i > 0 exists iff clip i - 1 did not reach the end."""
    stride, clip, offset = sampling.stride_sec, sampling.clip_sec, sampling.offset_sec
    assert stride is not None
    n = 1
    while (
        (sampling.max_clips is None or n < sampling.max_clips)
        and offset + (n - 1) * stride + clip < end - END_TOLERANCE
        and offset + n * stride < end - REAL_TOLERANCE
    ):
        n += 1
    return n


@given(samplings_and_ends(max_stride_ratio=3.0), st.floats(0.0, 30.0), st.none() | st.integers(1, 5))
def test_clip_count_with_an_offset_and_a_cap(
    case: tuple[ClipSampling, float], offset: float, cap: int | None
) -> None:
    base, end = case
    sampling = dataclasses.replace(base, offset_sec=offset * base.clip_sec, max_clips=cap)
    assert sampling.num_clips(end) == reference_clip_count(sampling, end)
    assert sampling.clip_targets(0)[0] == sampling.offset_sec


@given(samplings_and_ends(max_stride_ratio=3.0))
def test_clip_count_follows_the_definition(case: tuple[ClipSampling, float]) -> None:
    sampling, end = case
    assert sampling.num_clips(end) == reference_clip_count(sampling, end)


@given(samplings_and_ends())
def test_clips_cover_the_video_minimally(case: tuple[ClipSampling, float]) -> None:
    sampling, end = case
    n = sampling.num_clips(end)
    starts = [sampling.clip_start(i) for i in range(n)]
    assert starts[0] == 0.0
    for before, after in zip(starts, starts[1:]):
        # No gap between consecutive clips (up to float rounding: stride == clip_sec gives
        # i * stride one ulp above (i - 1) * stride + clip_sec).
        assert after <= before + sampling.clip_sec + 1e-12
    assert starts[-1] + sampling.clip_sec >= end - END_TOLERANCE  # the last reaches the end
    if n > 1:  # and it is needed: without it the end is not reached
        assert starts[-2] + sampling.clip_sec < end - END_TOLERANCE


@given(samplings_and_ends(max_stride_ratio=3.0))
def test_valid_frames_count_the_real_targets(case: tuple[ClipSampling, float]) -> None:
    sampling, end = case
    n = sampling.num_clips(end)
    for index in sorted({0, max(0, n - 3), max(0, n - 2), n - 1}):
        targets = sampling.clip_targets(index)
        real = [t < end - REAL_TOLERANCE for t in targets]
        valid = sampling.valid_frames(index, end)
        assert 1 <= valid <= sampling.num_frames
        assert real[:valid] == [True] * valid or (index == 0 and valid == 1 and not any(real))
        assert not any(real[valid:])  # real targets are a prefix: padding only at the end
        if targets[-1] < end - REAL_TOLERANCE:
            assert valid == sampling.num_frames


@given(samplings_and_ends())
def test_targets_are_evenly_spaced_inside_the_clip(case: tuple[ClipSampling, float]) -> None:
    sampling, end = case
    index = sampling.num_clips(end) - 1
    targets = sampling.clip_targets(index)
    start = sampling.clip_start(index)
    assert len(targets) == sampling.num_frames
    assert targets[0] == start
    for k, t in enumerate(targets):
        assert t == pytest.approx(start + k / sampling.fps, abs=1e-9)
        assert start <= t < start + sampling.clip_sec


@given(samplings_and_ends(max_stride_ratio=3.0), st.floats(0.0, 5.0))
def test_more_video_never_means_fewer_clips(case: tuple[ClipSampling, float], extra: float) -> None:
    sampling, end = case
    longer = end + extra * sampling.clip_sec
    assert sampling.num_clips(longer) >= sampling.num_clips(end)
    last = sampling.num_clips(end) - 1
    assert sampling.valid_frames(last, longer) >= sampling.valid_frames(last, end)


@given(samplings_and_ends(max_stride_ratio=3.0))
def test_every_clip_but_the_first_starts_inside_the_video(case: tuple[ClipSampling, float]) -> None:
    sampling, end = case
    assume(end > 0)
    n = sampling.num_clips(end)
    assert all(sampling.clip_start(i) < end for i in range(n))
    assert sampling.clip_exists(n - 1, end) and not sampling.clip_exists(n, end)
