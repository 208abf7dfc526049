"""Streaming decode into clips (vidfeat.video.reader) on real encoded videos.

Every fixture frame shows its own index (tests/videos.py), so each test checks that the frame
sampled for a target time is the frame shown at that time, with the exact frame times.
"""

from __future__ import annotations

import shutil

import bisect
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from videos import (
    declare_mkv_duration,
    ffmpeg_first_frame,
    frame_index_of,
    make_audio_only,
    make_corrupt_middle,
    make_empty,
    make_still_image,
    make_text,
    make_truncated_header,
    make_truncated_tail,
    make_unreadable,
    make_video,
    make_video_without_duration,
    make_zero_length_stream,
    red_band_edge,
    require_ffmpeg,
    tag_rotate_with_ffmpeg,
)
from vidfeat.video.sampling import SHOW_TOLERANCE, ClipSampling
from vidfeat.errors import VideoError
from vidfeat.video.reader import Clip, ClipReader, probe, probe_duration
from vidfeat.video.source import VideoInfo

CODEC_NAMES = {"libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9", "mpeg4": "mpeg4"}


def read(
    path: Path, sampling: ClipSampling, short_side: int | None = None, threads: int = 0
) -> tuple[ClipReader, list[Clip]]:
    with ClipReader(path, sampling, short_side=short_side, threads=threads) as reader:
        return reader, list(reader)


def expected_clip(
    times: list[float], sampling: ClipSampling, end: float, index: int
) -> tuple[list[int], int]:
    """Frame indexes a clip must show (the frame shown at each target), and valid_frames."""
    valid = sampling.valid_frames(index, end)
    targets = sampling.clip_targets(index)[:valid]
    shown = [max(0, bisect.bisect_right(times, t + SHOW_TOLERANCE) - 1) for t in targets]
    return shown + [shown[-1]] * (sampling.num_frames - valid), valid


def check_clips(
    reader: ClipReader, clips: list[Clip], times: list[float], sampling: ClipSampling
) -> None:
    """Clips match the tiling contract for frames written at ``times`` (first frame = 0)."""
    times = [t - times[0] for t in times]
    end = reader.duration_sec
    assert end is not None and end > times[-1] - 1e-9 or reader.status == "partial"
    assert [clip.index for clip in clips] == list(range(sampling.num_clips(end)))
    for clip in clips:
        shown, valid = expected_clip(times, sampling, end, clip.index)
        assert clip.frames.dtype == np.uint8 and clip.frames.ndim == 4
        assert clip.frames.shape[0] == sampling.num_frames and clip.frames.shape[3] == 3
        assert clip.valid_frames == valid
        assert [frame_index_of(frame) for frame in clip.frames] == shown, f"clip {clip.index}"
        assert clip.start_sec == pytest.approx(times[shown[0]], abs=1e-6)
        assert clip.end_sec == pytest.approx(times[shown[valid - 1]], abs=1e-6)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- good videos -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "ext", "fps"),
    [
        ("libx264", "mp4", 24),
        ("libx264", "mp4", 25),
        ("libx264", "mp4", 30),
        ("libx264", "mp4", 60),
        ("libx264", "mp4", Fraction(30000, 1001)),
        ("libx264", "mkv", 25),
        ("libx264", "ts", 30),  # MPEG-TS starts at an offset: the timeline still starts at 0
        ("libx265", "mp4", 25),
        ("libvpx-vp9", "webm", 25),
        ("mpeg4", "mp4", 30),
    ],
)
def test_clips_sample_the_frame_shown_at_each_target(
    tmp_path: Path, codec: str, ext: str, fps: int | Fraction
) -> None:
    path = tmp_path / f"video.{ext}"
    times = make_video(path, seconds=3, fps=fps, codec=codec)
    sampling = ClipSampling(8, 5)  # clip 1.6 s, stride 0.8 s: 3 clips, the last one padded
    reader, clips = read(path, sampling)
    assert reader.info == VideoInfo(
        duration_sec=pytest.approx(len(times) / fps, abs=0.05),
        fps=pytest.approx(float(fps), rel=1e-3),
        width=64,
        height=48,
        rotation=0,
        codec=CODEC_NAMES[codec],
        pix_fmt="yuv420p",
        first_frame_sec=pytest.approx(0.0, abs=0.1),  # the video starts its file
    )
    assert (reader.status, reader.error) == ("ok", "")
    assert reader.duration_sec == pytest.approx(len(times) / fps, abs=1e-6)
    assert len(clips) == 3  # target 3.0 s is past the end but at 29.97 fps (3.003 s)
    assert clips[-1].valid_frames == (8 if len(times) / fps > 3 else 7)
    check_clips(reader, clips, times, sampling)


def test_targets_between_frames_and_a_custom_stride(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    times = make_video(path, seconds=2, fps=60)
    sampling = ClipSampling(5, 7, stride_sec=0.3)
    reader, clips = read(path, sampling, threads=1)
    check_clips(reader, clips, times, sampling)
    assert len(clips) == sampling.num_clips(2.0) == 6


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_variable_frame_rate(tmp_path: Path, ext: str) -> None:
    times = [0.0, 0.04, 0.1, 0.5, 0.52, 0.54, 1.0, 2.3, 2.34, 2.38, 2.9, 3.0, 3.05, 3.3]
    path = tmp_path / f"vfr.{ext}"
    assert make_video(path, frame_times=times) == times
    sampling = ClipSampling(8, 5)
    reader, clips = read(path, sampling)
    assert reader.duration_sec is not None and reader.duration_sec > times[-1]
    check_clips(reader, clips, times, sampling)
    # A 1.3 s freeze: every target inside it shows frame 6 (t = 1.0).
    assert [frame_index_of(f) for f in clips[1].frames[1:7]] == [6, 6, 6, 6, 6, 6]


def test_timeline_starts_at_the_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "late.mkv"
    times = make_video(path, frame_times=[5.0 + i / 25 for i in range(50)])
    sampling = ClipSampling(8, 4)
    reader, clips = read(path, sampling)
    assert clips[0].start_sec == 0.0
    assert reader.duration_sec == pytest.approx(2.0)
    # The container declares the end, 7 s (the last frame ends 7 s into the file): 2 s long.
    assert (reader.status, reader.info.duration_sec, probe_duration(path)) == ("ok", 2.0, 2.0)
    check_clips(reader, clips, times, sampling)


def test_frames_without_timestamps_follow_the_stream_rate(tmp_path: Path) -> None:
    path = tmp_path / "raw.h264"  # an elementary stream: no PTS, no DTS, no duration
    times = make_video(path, num_frames=30, container_format="h264")
    sampling = ClipSampling(4, 4)
    reader, clips = read(path, sampling)
    assert reader.info.duration_sec is None
    assert reader.duration_sec == pytest.approx(1.2)
    assert reader.status == "ok"
    check_clips(reader, clips, times, sampling)


def test_a_sub_second_video_gives_one_padded_clip(tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    times = make_video(path, num_frames=7)  # 0.28 s
    sampling = ClipSampling(8, 8)  # targets every 0.125 s
    reader, clips = read(path, sampling)
    assert len(clips) == 1
    assert clips[0].valid_frames == 3
    assert [frame_index_of(f) for f in clips[0].frames] == [0, 3, 6, 6, 6, 6, 6, 6]
    assert (clips[0].start_sec, clips[0].end_sec) == (0.0, pytest.approx(0.24))
    assert reader.duration_sec == pytest.approx(0.28)
    check_clips(reader, clips, times, sampling)


def test_a_single_frame_video(tmp_path: Path) -> None:
    path = tmp_path / "one.mp4"
    make_video(path, num_frames=1)
    reader, clips = read(path, ClipSampling(4, 2))
    assert len(clips) == 1 and clips[0].valid_frames == 1
    assert [frame_index_of(f) for f in clips[0].frames] == [0, 0, 0, 0]
    assert reader.duration_sec == pytest.approx(0.04)
    assert reader.status == "ok"


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied(tmp_path: Path, rotation: int) -> None:
    path = tmp_path / f"rotated{rotation}.mp4"
    times = make_video(path, seconds=1, size=(64, 48), rotation=rotation)
    sampling = ClipSampling(4, 4)
    reader, clips = read(path, sampling)
    assert (reader.info.rotation, reader.info.width, reader.info.height) == (rotation, 64, 48)
    assert clips[0].frames.shape == (4, 48, 64, 3)
    assert all(red_band_edge(frame) == "top" for clip in clips for frame in clip.frames)
    check_clips(reader, clips, times, sampling)
    _, small = read(path, sampling, short_side=24)
    assert small[0].frames.shape == (4, 24, 32, 3)
    assert red_band_edge(small[0].frames[0]) == "top"


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_matches_ffmpeg_display(tmp_path: Path, rotation: int) -> None:
    """Independent oracle: the ffmpeg CLI's auto-rotated picture."""
    path = tmp_path / f"rotated{rotation}.mp4"
    make_video(path, num_frames=3, size=(64, 48), rotation=rotation)
    shown = ffmpeg_first_frame(path)
    _, clips = read(path, ClipSampling(2, 25))
    ours = clips[0].frames[0]
    assert ours.shape == shown.shape == (48, 64, 3)
    assert red_band_edge(shown) == "top"
    assert np.abs(ours.astype(int) - shown.astype(int)).mean() < 3


def test_rotate_tag_written_by_ffmpeg(tmp_path: Path) -> None:
    plain = tmp_path / "coded.mp4"
    make_video(plain, num_frames=3, size=(64, 48), rotation=90, display_matrix=False)
    tagged = tmp_path / "tagged.mp4"
    tag_rotate_with_ffmpeg(plain, tagged, 90)
    shown = ffmpeg_first_frame(tagged)
    reader, clips = read(tagged, ClipSampling(2, 25))
    ours = clips[0].frames[0]
    assert reader.info.rotation in (90, 270)
    assert (reader.info.height, reader.info.width) == ours.shape[:2] == shown.shape[:2]
    assert red_band_edge(ours) == red_band_edge(shown)
    assert np.abs(ours.astype(int) - shown.astype(int)).mean() < 3


@pytest.mark.parametrize(
    ("codec", "ext", "pix_fmt", "size"),
    [
        ("libx264", "mp4", "yuv444p", (97, 61)),  # odd size (4:2:0 cannot be odd)
        ("libx264", "mp4", "yuv420p10le", (64, 48)),
        ("libx264", "mp4", "yuv444p10le", (97, 61)),
        ("libx265", "mp4", "yuv420p10le", (64, 48)),
        ("libvpx-vp9", "webm", "yuv444p", (65, 49)),
    ],
)
def test_pixel_formats_and_odd_sizes(
    tmp_path: Path, codec: str, ext: str, pix_fmt: str, size: tuple[int, int]
) -> None:
    path = tmp_path / f"video.{ext}"
    times = make_video(path, seconds=1, codec=codec, pix_fmt=pix_fmt, size=size)
    sampling = ClipSampling(4, 4)
    reader, clips = read(path, sampling)
    assert (reader.info.pix_fmt, reader.info.width, reader.info.height) == (pix_fmt, *size)
    assert clips[0].frames.shape == (4, size[1], size[0], 3)
    assert red_band_edge(clips[0].frames[0]) == "top"
    band = clips[0].frames[0, :4].reshape(-1, 3).mean(axis=0)
    assert band[0] > 200 and band[1] < 60 and band[2] < 60  # red stays red: RGB order
    check_clips(reader, clips, times, sampling)
    _, resized = read(path, sampling, short_side=40)
    width = 2 * round(size[0] * 40 / size[1] / 2)  # the long side is rounded to even
    assert resized[0].frames.shape == (4, 40, width, 3)
    assert frame_index_of(resized[0].frames[1]) == 6  # shown at 0.25 s: t = 0.24 s


def test_default_short_side_is_224(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    make_video(path, num_frames=10, size=(64, 48))
    with ClipReader(path, ClipSampling(2, 25)) as reader:
        clips = list(reader)
    assert clips[0].frames.shape == (2, 224, 298, 3)  # 64 * 224 / 48 = 298.7, rounded to even
    assert [frame_index_of(f) for f in clips[0].frames] == [0, 1]


def test_portrait_short_side_is_the_width(tmp_path: Path) -> None:
    path = tmp_path / "portrait.mp4"
    make_video(path, num_frames=10, size=(48, 64))
    _, clips = read(path, ClipSampling(2, 25), short_side=24)
    assert clips[0].frames.shape == (2, 32, 24, 3)


def test_file_names_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    folder = tmp_path / "my videos été"
    folder.mkdir()
    path = folder / "clip #1 日本語 – final.mp4"
    times = make_video(path, seconds=1)
    sampling = ClipSampling(4, 4)
    assert probe(path).codec == "h264"
    reader, clips = read(path, sampling)
    check_clips(reader, clips, times, sampling)
    with ClipReader(str(path), sampling, short_side=None) as by_name:  # a str works as a Path does
        check_clips(by_name, list(by_name), times, sampling)


def test_only_sampled_frames_are_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "video.mp4"
    make_video(path, seconds=2, fps=60)
    converted = 0
    original = ClipReader._to_rgb

    def counting(self: ClipReader, frame: object) -> None:
        nonlocal converted
        converted += getattr(frame, "rgb") is None
        original(self, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(ClipReader, "_to_rgb", counting)
    _, clips = read(path, ClipSampling(4, 2))  # 2 frames per second of 60
    used = {frame_index_of(f) for clip in clips for f in clip.frames}
    assert converted == len(used) == 4


_PEAK_RSS = """
import resource, sys
from vidfeat.video.sampling import ClipSampling
from vidfeat.video.reader import ClipReader
most = 0
with ClipReader(sys.argv[1], ClipSampling(8, 8), short_side=None) as reader:
    for clip in reader:
        most = max(most, reader.buffered_frames)
print(most, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow  # encodes and decodes a 60 s 320x240 video
def test_memory_is_bounded_by_one_clip_window(tmp_path: Path) -> None:
    """Peak RSS of a fresh process reading every clip does not grow with the video's length.

    Measured on the process, not with tracemalloc: decoded and converted pictures live in
    FFmpeg's buffers, which tracemalloc does not see."""

    def peak(seconds: int) -> tuple[int, int]:
        path = tmp_path / f"long{seconds}.mp4"
        make_video(path, seconds=seconds, size=(320, 240))
        out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, check=True)
        most_buffered, rss_kib = map(int, out.stdout.split())
        return most_buffered, rss_kib * 1024

    short_buffered, short_rss = peak(8)
    long_buffered, long_rss = peak(60)
    frame_bytes = 320 * 240 * 3
    assert max(short_buffered, long_buffered) <= 8 + 2
    # keeping the 1500 frames of the long video would add 345 MB; one window is 8 frames (1.8 MB)
    assert long_rss - short_rss < 10 * frame_bytes, (short_rss, long_rss)


# --- lifecycle -------------------------------------------------------------------------------


def test_reader_iterates_once_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    make_video(path, seconds=2)
    before = open_fds()
    reader = ClipReader(path, ClipSampling(4, 4))
    assert open_fds() > before
    clips = list(reader)
    assert open_fds() == before  # closed once iteration ends
    assert len(clips) == 3
    with pytest.raises(RuntimeError, match="once"):
        list(reader)


def test_leaving_a_with_block_early_closes(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    make_video(path, seconds=4)
    before = open_fds()
    with ClipReader(path, ClipSampling(4, 4)) as reader:
        for clip in reader:
            break
    assert clip.index == 0
    assert open_fds() == before
    assert reader.buffered_frames == 0
    with pytest.raises(RuntimeError):
        list(reader)


def test_probe(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    make_video(path, seconds=2, fps=30, size=(96, 64), rotation=90)
    before = open_fds()
    assert probe(path) == VideoInfo(
        duration_sec=pytest.approx(2.0),
        fps=pytest.approx(30.0),
        width=96,
        height=64,
        rotation=90,
        codec="h264",
        pix_fmt="yuv420p",
        first_frame_sec=0.0,
    )
    assert open_fds() == before


def test_invalid_arguments(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    make_video(path, num_frames=3)
    with pytest.raises(ValueError, match="short_side"):
        ClipReader(path, ClipSampling(2, 2), short_side=0)
    with pytest.raises(ValueError, match="threads"):
        ClipReader(path, ClipSampling(2, 2), threads=-1)


# --- bad inputs ------------------------------------------------------------------------------


def _make_directory(path: Path) -> None:
    path.mkdir()


BAD_FILES: list[tuple[str, str, Callable[[Path], object], str]] = [
    ("missing", "missing.mp4", lambda path: None, "file not found"),
    ("directory", "folder.mp4", _make_directory, "is a directory"),
    ("empty", "empty.mp4", make_empty, "empty file"),
    ("text", "notes.mp4", make_text, "not a readable video file"),
    ("truncated header", "cut.mp4", make_truncated_header, "not a readable video file"),
    ("audio only", "sound.m4a", make_audio_only, "audio only"),
    ("png", "picture.png", make_still_image, "still image"),
    ("png named mp4", "picture.mp4", make_still_image, "still image"),
    ("jpeg named mp4", "photo.mp4", lambda p: make_still_image(p, "mjpeg"), "still image"),
    ("zero-length stream", "nothing.mkv", make_zero_length_stream, "no frames"),
]


@pytest.mark.parametrize(
    ("name", "maker", "reason"),
    [pytest.param(name, maker, reason, id=kind) for kind, name, maker, reason in BAD_FILES],
)
def test_bad_files_raise_video_error(
    tmp_path: Path, name: str, maker: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / name
    maker(path)
    before = open_fds()
    with pytest.raises(VideoError, match=reason) as error:
        ClipReader(path, ClipSampling(4, 4))
    assert "\n" not in str(error.value)
    with pytest.raises(VideoError, match=reason):
        probe(path)
    assert open_fds() == before  # containers closed on failure too


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.mp4"
    make_unreadable(path)
    if os.geteuid() == 0:
        # Root reads any file, and a child process switched to another user can neither run this
        # venv's interpreter (under /root) nor be forked safely from this multi-threaded process.
        # So make the open fail the way FFmpeg reports EACCES, and check how it is reported.
        real_open = av.open

        def refusing_open(name, *args, **kwargs):
            if os.fspath(name) == os.fspath(path):
                raise PermissionError(13, "Permission denied", os.fspath(name))
            return real_open(name, *args, **kwargs)

        monkeypatch.setattr(av, "open", refusing_open)
    with pytest.raises(VideoError, match="permission denied"):
        ClipReader(path, ClipSampling(4, 4))
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    monkeypatch.undo()
    ClipReader(path, ClipSampling(4, 4)).close()  # the same file, readable: the control case


def test_truncated_tail_keeps_the_decoded_clips(tmp_path: Path) -> None:
    path = tmp_path / "download.mp4"
    times = make_truncated_tail(path, seconds=4.0, keep_fraction=0.6)
    sampling = ClipSampling(4, 4)  # clip 1 s, stride 0.5 s
    reader, clips = read(path, sampling)
    assert reader.status == "partial"
    assert reader.duration_sec is not None and reader.duration_sec < 3.0
    assert reader.error == f"decoded {reader.duration_sec:.1f} s of 4.0 s"
    assert clips, "the decoded part still gives clips"
    check_clips(reader, clips, times, sampling)


def test_corruption_mid_file_keeps_the_clips_before_it(tmp_path: Path) -> None:
    path = tmp_path / "damaged.mp4"
    times = make_corrupt_middle(path, seconds=4.0, at=0.7)
    sampling = ClipSampling(4, 4)
    reader, clips = read(path, sampling)
    assert reader.status == "partial"
    assert reader.error.startswith("decoding stopped at ")
    assert "Invalid data" in reader.error and "\n" not in reader.error
    assert reader.duration_sec is not None and 0.5 < reader.duration_sec < 3.9
    check_clips(reader, clips, times, sampling)


def test_partial_status_is_set_only_after_iteration(tmp_path: Path) -> None:
    path = tmp_path / "damaged.mp4"
    make_corrupt_middle(path, seconds=4.0, at=0.7)
    reader = ClipReader(path, ClipSampling(4, 4))
    assert (reader.status, reader.duration_sec) == ("ok", None)
    clips = list(reader)
    assert [clip.index for clip in clips] == list(range(len(clips)))
    assert reader.status == "partial"


@pytest.mark.parametrize(("ext", "container_format", "declared"), [
    ("mp4", None, 3.0),
    ("mkv", None, 3.0),
    ("ts", None, 3.0),
    ("h264", "h264", None),  # a raw elementary stream declares no duration
])
def test_probe_duration_reads_the_metadata(
    tmp_path: Path, ext: str, container_format: str | None, declared: float | None
) -> None:
    path = tmp_path / f"video.{ext}"
    make_video(path, seconds=3, fps=25, container_format=container_format)
    before = open_fds()
    assert probe_duration(path) == (None if declared is None else pytest.approx(declared, abs=0.05))
    assert open_fds() == before


def test_probe_duration_does_not_decode(tmp_path: Path) -> None:
    """A download cut short still declares its full length: the metadata, not the frames."""
    path = tmp_path / "download.mp4"
    make_truncated_tail(path, seconds=4.0, keep_fraction=0.3)
    assert probe_duration(path) == pytest.approx(4.0)
    reader, _ = read(path, ClipSampling(4, 4))
    assert reader.duration_sec is not None and reader.duration_sec < 2.0  # the frames end early


@pytest.mark.parametrize(
    ("name", "maker"),
    [pytest.param(name, maker, id=kind) for kind, name, maker, _ in BAD_FILES],
)
def test_probe_duration_of_a_bad_file_is_none(
    tmp_path: Path, name: str, maker: Callable[[Path], object]
) -> None:
    path = tmp_path / name
    maker(path)
    before = open_fds()
    if name == "nothing.mkv":  # its header declares a length though no frame follows
        assert probe_duration(path) == pytest.approx(0.4)
    else:
        assert probe_duration(path) is None
    assert open_fds() == before


# --- seeking: read_at and the measured end ---------------------------------------------------

# Irregular frame spacing (10 ms to 0.6 s) over about 10 s, with a freeze.
VFR_TIMES = [round(sum(0.01 + 0.09 * ((i * 7) % 5) for i in range(n)), 2) for n in range(60)]
VFR_TIMES = VFR_TIMES[:40] + [VFR_TIMES[39] + 0.6 + t - VFR_TIMES[40] for t in VFR_TIMES[40:]]

SEEK_VIDEOS: dict[str, Callable[[Path], list[float]]] = {
    "cfr.mp4": lambda p: make_video(p, seconds=8, fps=25, gop=12),
    "vfr.mkv": lambda p: make_video(p, frame_times=VFR_TIMES, gop=6),
    "offset.ts": lambda p: make_video(p, seconds=6, fps=30, gop=15),  # MPEG-TS: starts at 1.4 s
    "late.mkv": lambda p: make_video(p, frame_times=[5.0 + i / 25 for i in range(150)], gop=10),
    "undeclared.mkv": lambda p: make_video_without_duration(p, seconds=6, fps=25, gop=10),
    "raw.h264": lambda p: make_video(p, seconds=4, fps=25, container_format="h264"),  # no seeking
}


@pytest.mark.parametrize("name", list(SEEK_VIDEOS))
def test_read_at_gives_what_decoding_from_the_start_gives(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    times = SEEK_VIDEOS[name](path)
    times = [t - times[0] for t in times]
    sampling = ClipSampling(6, 5, stride_sec=0.7)
    tiler, tiled = read(path, sampling)
    end = tiler.duration_sec
    assert end is not None
    for clip in tiled:
        with ClipReader(path, sampling, short_side=None) as reader:
            one = reader.read_at(sampling.clip_start(clip.index))
        assert [frame_index_of(f) for f in one.frames] == [frame_index_of(f) for f in clip.frames]
        assert (one.start_sec, one.end_sec, one.valid_frames) == (
            clip.start_sec, clip.end_sec, clip.valid_frames
        ), f"clip {clip.index}"
    # Starts between frames, on frames, and past the end.
    for start in [0.0, 0.013, 1.0, end / 2 + 0.031, end - 0.5, end - 1e-4, end + 3.0]:
        with ClipReader(path, sampling, short_side=None) as reader:
            one = reader.read_at(start)
        shown, valid = expected_clip(times, sampling.at(start), end, 0)
        assert [frame_index_of(f) for f in one.frames] == shown, f"start {start}"
        assert one.valid_frames == valid
        assert one.start_sec == pytest.approx(times[shown[0]], abs=1e-6)
        assert one.end_sec == pytest.approx(times[shown[valid - 1]], abs=1e-6)
    with ClipReader(path, sampling) as reader:
        assert reader.measure_end() == pytest.approx(end, abs=1e-9)
        assert reader.duration_sec == pytest.approx(end, abs=1e-9)
        late = reader.read_at(end - 0.3)  # the reader still reads after measuring
    assert late.valid_frames == sampling.at(end - 0.3).valid_frames(0, end)


def test_a_late_clip_decodes_about_one_keyframe_interval(tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    make_video(path, seconds=40, fps=25, gop=25)
    sampling = ClipSampling(8, 8)  # 1 s: 25 frames of video
    with ClipReader(path, sampling, short_side=None) as reader:
        clip = reader.read_at(36.02)
    times = [i / 25 for i in range(1000)]
    assert [frame_index_of(f) for f in clip.frames] == expected_clip(times, sampling.at(36.02), 40.0, 0)[0]
    # The first frame (on opening), at most one keyframe interval before the clip, the clip's
    # 25 frames, and the few the decoder hands out before the one after the clip.
    assert 25 < reader.decoded_frames <= 1 + 25 + 25 + 4
    with ClipReader(path, sampling, short_side=None) as reader:
        assert reader.measure_end() == pytest.approx(40.0)
        measured = reader.decoded_frames
    assert measured <= 1 + 25


def test_measure_end_ignores_a_wrong_declared_duration(tmp_path: Path) -> None:
    path = tmp_path / "claims20s.mkv"
    make_video(path, seconds=3, fps=25, gop=10)
    declare_mkv_duration(path, 20.0)
    with ClipReader(path, ClipSampling(4, 4)) as reader:
        assert reader.info.duration_sec == pytest.approx(20.0)
        assert reader.measure_end() == pytest.approx(3.0)
    cut = tmp_path / "download.mp4"  # the index declares 4 s, the frames stop early
    make_truncated_tail(cut, seconds=4.0, keep_fraction=0.3)
    tiler, _ = read(cut, ClipSampling(4, 4))
    with ClipReader(cut, ClipSampling(4, 4)) as reader:
        assert reader.measure_end() == pytest.approx(tiler.duration_sec) and tiler.duration_sec < 2.0


# --- videos whose first frame is not at time 0 of the file -----------------------------------

# The decoders that must agree on statuses and durations; torchcodec is skipped where unusable.
DECODERS = ["pyav", "torchcodec"]


def read_with(path: Path, sampling: ClipSampling, decoder: str) -> tuple[ClipReader, list[Clip]]:
    if decoder == "torchcodec":
        from vidfeat.video.decoders import torchcodec_unavailable

        reason = torchcodec_unavailable()
        if reason:
            pytest.skip(reason)
    with ClipReader(path, sampling, short_side=None, decoder=decoder) as reader:
        return reader, list(reader)


def ffmpeg(*args: str | Path) -> None:
    """Run the ffmpeg CLI quietly on ``args``; skips the test without it."""
    subprocess.run([require_ffmpeg(), "-v", "error", "-y", *map(str, args)], check=True, capture_output=True)


def shift_with_ffmpeg(src: Path, dst: Path, offset_sec: float) -> None:
    """Remux ``src`` into ``dst`` (the format of its name) with every timestamp ``offset_sec``
    later: the first frame sits at ``offset_sec`` on the file's clock."""
    ffmpeg("-i", src, "-c", "copy", "-output_ts_offset", f"{offset_sec:g}", dst)


def add_earlier_audio(src: Path, dst: Path, delay_sec: float, audio_sec: float) -> None:
    """Remux the video of ``src`` into ``dst`` ``delay_sec`` after the start of an
    ``audio_sec`` tone: the container starts with the audio, the video later."""
    ffmpeg("-f", "lavfi", "-i", f"sine=d={audio_sec:g}", "-itsoffset", f"{delay_sec:g}", "-i", src,
           "-map", "0:a", "-map", "1:v", "-c:v", "copy", "-c:a", "aac", dst)  # fmt: skip


# name -> how the 6 s base video is turned into it (FFmpeg's metadata for each, measured):
OFFSET_VIDEOS: dict[str, Callable[[Path, Path], None]] = {
    # no stream duration; the container's (Segment Duration) is the end, 36 s, from start 30 s
    "offset.mkv": lambda src, dst: shift_with_ffmpeg(src, dst, 30.0),
    # stream start 31.4 s (MPEG-TS adds 1.4 s), stream and container duration 6 s
    "offset.ts": lambda src, dst: shift_with_ffmpeg(src, dst, 30.0),
    # stream start 30 s, stream duration 6 s
    "offset.mp4": lambda src, dst: shift_with_ffmpeg(src, dst, 30.0),
    # video from about 4 s, no stream duration; container from 0 s (the audio) to 10 s
    "late.mkv": lambda src, dst: add_earlier_audio(src, dst, 4.0, 10.0),
    # video stream from 5.4 s for 6 s; container from 1.4 s (the audio) for 10 s
    "late.ts": lambda src, dst: add_earlier_audio(src, dst, 4.0, 10.0),
}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", list(OFFSET_VIDEOS))
def test_a_video_starting_late_in_its_file_is_complete(tmp_path: Path, name: str, decoder: str) -> None:
    """Its declared length counts from its first frame, as the timeline does: 6 s, not 36."""
    base = tmp_path / "base.mp4"
    times = make_video(base, seconds=6, fps=25, gop=25)
    path = tmp_path / name
    OFFSET_VIDEOS[name](base, path)
    sampling = ClipSampling(8, 8.0)  # 1 s clips every 0.5 s
    reader, clips = read_with(path, sampling, decoder)
    assert (reader.status, reader.error) == ("ok", "")
    assert reader.duration_sec == pytest.approx(6.0, abs=1e-3)
    assert reader.info.duration_sec == pytest.approx(6.0, abs=0.03)
    assert reader.info.duration_sec == probe(path).duration_sec  # every decoder: PyAV's number
    assert probe_duration(path) == pytest.approx(reader.info.duration_sec, abs=1e-9)
    assert len(clips) == 11
    check_clips(reader, clips, times, sampling)
    with ClipReader(path, sampling, short_side=None, decoder=decoder) as measured:
        assert measured.measure_end() == pytest.approx(reader.duration_sec, abs=1e-9)


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_matroska_duration_counts_as_an_end_or_a_length(tmp_path: Path, decoder: str) -> None:
    """FFmpeg writes the Segment Duration as the end time (36 s for 30 s to 36 s), mkvmerge as
    the length (6 s): both read as 6 s, and a video starting at 0 reads the same either way."""
    base = tmp_path / "base.mp4"
    make_video(base, seconds=6, fps=25, gop=25)
    as_length = tmp_path / "length.mkv"
    shift_with_ffmpeg(base, as_length, 30.0)
    declare_mkv_duration(as_length, 6.0)
    at_zero = tmp_path / "zero.mkv"
    make_video(at_zero, seconds=3, fps=25)
    declare_mkv_duration(at_zero, 6.0)  # claims 6 s, the frames end at 3 s
    reader, _ = read_with(as_length, ClipSampling(8, 8.0), decoder)
    assert (reader.status, reader.info.duration_sec, probe_duration(as_length)) == ("ok", 6.0, 6.0)
    reader, _ = read_with(at_zero, ClipSampling(8, 8.0), decoder)
    assert (reader.status, reader.error, reader.info.duration_sec) == ("partial", "decoded 3.0 s of 6.0 s", 6.0)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize(("offset_sec", "duration_as_length"), [(0.0, False), (30.0, False), (30.0, True)])
def test_a_cut_matroska_file_with_an_offset_is_partial(
    tmp_path: Path, decoder: str, offset_sec: float, duration_as_length: bool
) -> None:
    """Half the bytes of a 20 s video (cut at a packet): partial with or without a start offset,
    and whichever way the Segment Duration is written, the same reason as the file starting at 0."""
    base = tmp_path / "base.mp4"
    times = make_video(base, seconds=20, fps=25, gop=25)
    path = tmp_path / "cut.mkv"
    shift_with_ffmpeg(base, path, offset_sec)
    if duration_as_length:
        declare_mkv_duration(path, 20.0)
    data = path.read_bytes()
    # cut where a packet starts: a frame whose bytes are cut in two would decode as a concealed
    # copy of the one before it, whose content then depends on where the encoder's bytes fell
    with av.open(str(path)) as container:
        starts = [p.pos for p in container.demux(video=0) if p.pos is not None and p.pos >= len(data) // 2]
    path.write_bytes(data[: min(starts)])
    assert probe_duration(path) == pytest.approx(20.0)
    sampling = ClipSampling(8, 8.0)
    reader, clips = read_with(path, sampling, decoder)
    end = reader.duration_sec
    assert end is not None and 5.0 < end < 15.0
    assert (reader.status, reader.error) == ("partial", f"decoded {end:.1f} s of 20.0 s")
    assert reader.info.duration_sec == pytest.approx(20.0)
    check_clips(reader, clips, times, sampling)


# --- sampling warnings -----------------------------------------------------------------------


def repeats_in(clips: list[Clip]) -> tuple[int, int]:
    """(real targets, real targets showing the previous target's frame) of decoded clips."""
    sampled = repeated = 0
    for clip in clips:
        shown = [frame_index_of(f) for f in clip.frame_list[: clip.valid_frames]]
        sampled += len(shown)
        repeated += sum(1 for a, b in zip(shown, shown[1:]) if a == b)
    return sampled, repeated


def test_sampling_above_the_video_rate_warns(tmp_path: Path) -> None:
    path = tmp_path / "slow.mp4"
    make_video(path, seconds=3, fps=10)
    reader, clips = read(path, ClipSampling(16, 30))
    assert (reader.sampled_frames, reader.repeated_frames) == repeats_in(clips) == (170, 106)
    assert reader.warning == "sampling at 30 fps from a 10.0 fps video: 62% of sampled frames repeat the previous one"
    with ClipReader(path, ClipSampling(16, 30)) as one:
        assert one.warning == "sampling at 30 fps from a 10.0 fps video"  # nothing sampled yet
        clip = one.read_at(1.0)
    assert (one.sampled_frames, one.repeated_frames) == repeats_in([clip]) == (16, 10)
    assert one.warning.endswith(": 62% of sampled frames repeat the previous one")


@pytest.mark.parametrize(
    ("fps", "repeated", "warns"),
    # Just above 25 fps, target 1 (at 1 / fps s) comes before frame 1 (at 0.04 s): one repeat.
    [(8, 0, False), (25, 0, False), (25.2, 1, False), (25.3, 1, True)],
)
def test_sampling_at_or_below_the_video_rate(tmp_path: Path, fps: float, repeated: int, warns: bool) -> None:
    path = tmp_path / "video.mp4"
    make_video(path, seconds=2, fps=25)
    reader, clips = read(path, ClipSampling(8, fps))
    assert (reader.sampled_frames, reader.repeated_frames) == repeats_in(clips)
    assert reader.repeated_frames == repeated
    share = 100 * repeated // reader.sampled_frames
    expected = f"sampling at {fps:g} fps from a 25.0 fps video: {share}% of sampled frames repeat the previous one"
    assert reader.warning == (expected if warns else "")


def test_padding_is_not_a_repeat_but_a_freeze_is(tmp_path: Path) -> None:
    short = tmp_path / "short.mp4"
    make_video(short, num_frames=10, fps=10)  # 1 s: a 16-frame clip at 8 fps is half padding
    reader, clips = read(short, ClipSampling(16, 8))
    assert clips[0].valid_frames == 8
    assert (reader.sampled_frames, reader.repeated_frames, reader.warning) == (8, 0, "")
    frozen = tmp_path / "frozen.mp4"  # one frame a second, then 25 fps: rate metadata says 25
    make_video(frozen, frame_times=[0.0, 1.0, 2.0, 3.0] + [3.04 + i / 25 for i in range(10)])
    reader, clips = read(frozen, ClipSampling(8, 8, stride_sec=2.0))
    sampled, repeated = repeats_in(clips)
    assert (reader.sampled_frames, reader.repeated_frames) == (sampled, repeated)
    assert repeated * 2 > sampled
    assert reader.warning.startswith("sampling at 8 fps from a ")
    assert reader.warning.endswith(f": {100 * repeated // sampled}% of sampled frames repeat the previous one")


# --- closing frees the decoder at once ------------------------------------------------------------


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("use", ["iterate", "measure_end", "read_at", "unread"])
def test_closing_a_reader_frees_its_decoder_threads_so_a_fork_cannot_hang(tmp_path, decoder, use):
    """FFmpeg's decode threads must be gone when the reader is closed, not when the garbage
    collector gets to it: a process forked in between (a decode worker) would hang freeing its
    copy of the decoder, waiting for threads the fork did not copy."""
    import gc

    if decoder == "torchcodec":
        from vidfeat.video.decoders import torchcodec_unavailable

        if reason := torchcodec_unavailable():
            pytest.skip(reason)
    path = tmp_path / "v.mp4"
    make_video(path, seconds=4.0, fps=30, size=(160, 96))
    sampling = ClipSampling(8, 4.0)
    with ClipReader(path, sampling, short_side=32, threads=2, decoder=decoder) as warm_up:
        list(warm_up)  # starts the process-wide pools (torch's threads), which stay
    gc.collect()
    gc.disable()  # only reference counting frees what close() lets go
    try:
        before = _native_threads()
        reader = ClipReader(path, sampling, short_side=32, threads=2, decoder=decoder)
        if use == "iterate":
            assert len(list(reader)) == 3
        elif use == "measure_end":
            assert reader.measure_end() == pytest.approx(4.0, abs=0.05)
            reader.close()
        elif use == "read_at":
            assert reader.read_at(1.0).valid_frames == 8
        else:
            reader.close()
        assert _native_threads() == before
        pid = os.fork()
        if pid == 0:  # the child frees whatever the parent left to the collector
            gc.collect()
            os._exit(0)
        assert _exit_code(pid, within_sec=60) == 0, "the forked child hung freeing the decoder"
    finally:
        gc.enable()


def _exit_code(pid: int, within_sec: float) -> int | None:
    """The exit code of child ``pid``; None (and the child killed) if it has not ended by then:
    the limit only keeps a hang from stopping the suite, a pass takes milliseconds."""
    import time

    deadline = time.monotonic() + within_sec
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


def test_first_frame_sec_is_where_the_video_starts_on_the_players_clock(tmp_path: Path) -> None:
    """A file whose audio starts 2 s before its video: clip time 0 (the first frame) is 2 s into
    the player's clock, which captions are timed on; a video starting its file is at 0."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg CLI not installed (test fixture)")
    late = tmp_path / "late.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=5", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=10:duration=3", "-filter_complex", "[1:v]setpts=PTS+2/TB[v]",
                    "-map", "0:a", "-map", "[v]", "-c:v", "libx264", "-c:a", "flac", str(late)], check=True)  # fmt: skip
    assert probe(late).first_frame_sec == pytest.approx(2.0, abs=0.05)
    plain = tmp_path / "plain.mp4"
    make_video(plain, seconds=1, fps=10)
    assert probe(plain).first_frame_sec == 0.0
