"""The PyAV frame source: a video file opened, checked and decoded onto the exact timeline.

:class:`VideoSource` owns the container and the timeline every decoder shares (times from each
frame's PTS relative to the first frame, dropped backward times, the measured end, the keyframe
seek); :mod:`vidfeat.video.decoders` builds its other sources on it and holds the one
``open_source`` registry, and :class:`vidfeat.video.reader.ClipReader` samples clips from
whichever source that registry opens. The file checks, the reasons a file is refused and the
declared length (:class:`Declared`) are here too, so that every decoder refuses the same files
for the same reasons.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.stream
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream

from ..errors import VideoError, one_line
from .sampling import SHOW_TOLERANCE

__all__ = ["INTERPOLATION", "VideoInfo", "VideoSource", "Declared", "check_file", "is_opener", "open_container",
           "opener_name", "pick_stream", "video_info"]  # fmt: skip

INTERPOLATION = "FAST_BILINEAR"
"""swscale interpolation used when resizing sampled frames.

Plain bilinear without an anti-aliasing filter: what the official TimeSformer pipeline does
(``F.interpolate(mode="bilinear")`` on decoded frames), and about 1.7x cheaper than swscale's
filtered ``BILINEAR`` (0.51 vs 0.99 ms a 720p frame to 398x224, one core), which matters since
resizing the sampled frames is the decode workers' main cost after decoding itself."""

# Seconds: a seek target past the end of any video, to land on its last keyframe.
_FAR_SEC = 1e7

_IMAGE_DEMUXERS = frozenset({"image2", "image2pipe"})
_IMAGE_CODECS = frozenset(
    {"png", "apng", "mjpeg", "jpeg2000", "jpegls", "jpegxl", "bmp", "tiff", "webp", "qoi"}
)


@dataclass
class VideoInfo:
    """What a video's metadata and first frame say about it.

    ``width`` and ``height`` are the display size in stored pixels: the coded frame size after
    the rotation metadata is applied (pixel aspect ratio is not corrected). ``rotation`` is the
    counter-clockwise rotation (0, 90, 180 or 270 degrees) that turns the coded picture upright:
    the display-matrix rotation as ffprobe and PyAV report it, modulo 360.
    ``duration_sec`` is the length the metadata declares, on the timeline: from the first decoded
    frame to the declared end (``None`` when it declares none, see :class:`Declared`), and
    ``fps`` the average frame rate (``None`` when unknown). ``first_frame_sec`` is where timeline
    time 0 (the first frame) lies on the player's clock, which starts at the container's start
    time: 0 for most files, more when the video starts after the audio or the file was cut
    (subtitles and captions are timed on that clock); ``None`` when the frames carry no stamps.
    """

    duration_sec: float | None
    fps: float | None
    width: int
    height: int
    rotation: int
    codec: str
    pix_fmt: str
    first_frame_sec: float | None = None


def _reason(error: BaseException) -> str:
    """A one-line reason for an FFmpeg or OS error."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    where = getattr(error, "filename", None)
    if isinstance(where, str) and where.endswith(")"):  # the failing FFmpeg call
        text = f"{text} ({where})"
    return one_line(text)


def check_file(path: str) -> None:
    """Raise VideoError for a path that is missing, not a file, or empty."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoError("file not found") from None
    except PermissionError:
        raise VideoError("permission denied") from None
    except OSError as error:
        raise VideoError(f"cannot stat file: {_reason(error)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoError("is a directory, not a video file")
    if not stat.S_ISREG(info.st_mode):
        raise VideoError("not a regular file")
    if info.st_size == 0:
        raise VideoError("empty file (0 bytes)")


def is_opener(path: object) -> bool:
    """Whether ``path`` is a video read in place (a :class:`vidfeat.video.remote.RemoteVideo` or
    :class:`vidfeat.video.shards.Sample`: plain data whose ``open_video()`` gives a seekable file)
    rather than a local path."""
    return callable(getattr(path, "open_video", None))


def opener_name(opener: object) -> str:
    """A printable name of a video read in place: its URL without credentials, or shard:member."""
    url = getattr(opener, "safe_url", None)
    if isinstance(url, str):
        return url
    return f"{getattr(opener, 'shard', '?')}:{getattr(opener, 'key', '?')}{getattr(opener, 'video_ext', '')}"


def open_container(path) -> InputContainer:
    """Open ``path`` with PyAV: a local path, or a seekable binary file object (the caller
    closes it after the container); VideoError (one-line reason) when it cannot be opened as media."""
    try:
        return av.open(path, mode="r", metadata_errors="replace")
    except VideoError:  # raised by a file object's read (a network failure after its retries)
        raise
    except PermissionError:
        raise VideoError("permission denied") from None
    except FileNotFoundError:
        raise VideoError("file not found") from None
    except av.FFmpegError as error:
        raise VideoError(f"not a readable video file: {_reason(error)}") from None


def video_info(frame, duration: float | None, rate: Fraction | None, codec: str) -> VideoInfo:
    """A video's :class:`VideoInfo` from its first decoded frame (size, rotation, pixel format)
    and its stream's declared duration, average rate and codec name."""
    rotation = (round(frame.rotation / 90) % 4) * 90
    width, height = frame.width, frame.height
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        duration_sec=duration,
        fps=float(rate) if rate else None,
        width=width,
        height=height,
        rotation=rotation,
        codec=codec,
        pix_fmt=frame.format.name,
    )


def pick_stream(container: InputContainer) -> VideoStream:
    """The first real video stream (cover art is not video); VideoError if there is none."""
    attached = av.stream.Disposition.attached_pic
    videos = [s for s in container.streams.video if not s.disposition & attached]
    if not videos:
        if container.streams.video:
            raise VideoError("no video stream (only a still cover image)")
        if container.streams.audio:
            raise VideoError("no video stream (audio only)")
        raise VideoError("no video stream")
    stream = videos[0]
    if stream.codec_context is None:
        raise VideoError("no decoder for this video codec")
    demuxer = container.format.name
    if demuxer in _IMAGE_DEMUXERS or demuxer.endswith("_pipe"):
        raise VideoError(f"still image ({demuxer}), not a video")
    if stream.codec_context.name in _IMAGE_CODECS and stream.frames == 1:
        raise VideoError(f"still image ({stream.codec_context.name}), not a video")
    return stream


# Demuxers whose container duration is the segment's end time, not a length: see Declared.
_END_DURATION_DEMUXERS = frozenset({"matroska,webm"})


@dataclass(frozen=True)
class Declared:
    """The span a video's metadata declares, in seconds on the file's clock (``None``: not
    declared): the video stream's start and duration, the container's start and duration.

    :meth:`length` puts it on the timeline, whose time 0 is the first decoded frame, which need
    not sit at time 0 of the file (an MPEG-TS clock at 1.4 s, a Matroska cut starting at 30 s,
    a video starting after the audio). FFmpeg reports the stream's duration as a length from the
    stream's start, so the declared end is start + duration. A container duration is a length
    from the container's start (the earliest stream's) for most demuxers, but Matroska/WebM
    hand the segment's Duration element through as it is, and writers disagree on it: FFmpeg's
    muxer writes the end of the last block on the file's clock (a cut from 30 s to 36 s declares
    36 s), mkvmerge the last end minus the first timestamp (6 s). For Matroska both readings
    count, and the earlier end after the first frame is the one declared: a video is reported
    partial only when it ends short under both. Files starting at 0, most of them, read the
    same either way.
    """

    stream_start: Fraction | None
    stream_duration: Fraction | None
    container_start: Fraction | None
    container_duration: Fraction | None
    end_duration: bool  # the container duration may be an end time (Matroska)

    @classmethod
    def read(cls, container: InputContainer, stream: VideoStream) -> Declared:
        tb = stream.time_base

        def stream_seconds(value: int | None) -> Fraction | None:
            return None if value is None or not tb else value * tb

        def container_seconds(value: int | None) -> Fraction | None:
            return None if value is None else Fraction(value, av.time_base)

        return cls(
            stream_start=stream_seconds(stream.start_time),
            stream_duration=stream_seconds(stream.duration or None),
            container_start=container_seconds(container.start_time),
            container_duration=container_seconds(container.duration or None),
            end_duration=container.format.name in _END_DURATION_DEMUXERS,
        )

    def length(self, first: float | Fraction | None) -> float | None:
        """Seconds from the first frame, at ``first`` on the file's clock, to the declared end;
        ``None`` when the metadata declares no end after the first frame. Without ``first`` (no
        frame decoded, or one without a timestamp) the stream's start, else the container's,
        stands in for it; a duration without a start is a length from the first frame."""
        if first is None:
            first = self.stream_start if self.stream_start is not None else self.container_start
        zero = Fraction(first) if first is not None else Fraction(0)
        if self.stream_duration:
            start = self.stream_start
            ends = [(zero if start is None else start) + self.stream_duration]
        elif self.container_duration:
            start = self.container_start
            ends = [(zero if start is None else start) + self.container_duration]
            if self.end_duration:
                ends.append(self.container_duration)
        else:
            return None
        lengths = [end - zero for end in ends if end > zero]
        return float(min(lengths)) if lengths else None


class VideoSource:
    """An open video stream decoding into timeline-stamped frames.

    Opening decodes the first frame (it fixes time 0, the display size and the rotation).
    ``frames()`` yields ``(time, frame)`` from the start with non-decreasing times;
    ``frames_from(t)`` seeks to the keyframe before ``t`` and yields the same frames, with the
    same times, as decoding from the start does from there on; ``measure_end()`` finds the
    measured end ``E`` by decoding only the last keyframe interval where the file allows it.
    Each of them starts a new pass over the file (the previous one is abandoned). A decode or
    demux error ends a pass early: ``error`` then holds its one-line reason. After a pass
    reaches the end of the stream, ``end_sec`` is the measured end ``E``. ``decoded_frames``
    counts the frames the decoder has produced, over all passes.
    """

    def __init__(self, path, threads: int = 0) -> None:
        """``path``: a local file, or a video read in place (:func:`is_opener`), opened here
        through its ``open_video()`` (and again for each pass from the start)."""
        self._opener = path if is_opener(path) else None
        self._file = None  # the opener's file object, closed with the container
        if self._opener is None:
            self._path = os.fspath(path)
            check_file(self._path)
        else:
            self._path = opener_name(path)
        self._threads = threads
        self._container: InputContainer | None = None
        self._reformatter: VideoReformatter | None = None
        self.error = ""
        self.end_sec: float | None = None
        self.decoded_frames = 0
        # (timestamp, timeline time) of the first stamped frame: places every stamp on the timeline.
        self._origin: tuple[int, float] | None = None
        self._fresh = True  # the pass opened with the first frame is not handed out yet
        self._timeline: Iterator[tuple[float, VideoFrame]] | None = None  # that pass
        self._first: tuple[float, VideoFrame] | None = None  # and its first frame
        self._open()
        try:
            stream = self._stream
            rate = stream.average_rate
            self._nominal_step = 1 / float(rate) if rate else 0.0
            self._timeline = self._timed_frames(from_start=True)
            first = next(self._timeline, None)
            if first is None:
                if self.error:
                    raise VideoError(f"no video frame could be decoded: {self.error}")
                raise VideoError("video stream has no frames")
            self._first = first
            self.coded_size = (first[1].width, first[1].height)
            self.info = self._describe(first[1])
            # Seeking needs times <-> stamps: a first frame without a stamp (raw streams) has none.
            self.seekable = self._origin is not None
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        if self._opener is None:
            container = open_container(self._path)
        else:
            self._file = self._opener.open_video()
            try:
                container = open_container(self._file)
            except BaseException:
                self._close_file()
                raise
        self._container = container
        try:
            stream = pick_stream(container)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self._threads
        except BaseException:
            self.close()
            raise
        self._stream = stream
        self._time_base = stream.time_base or Fraction(1, 1)

    def _describe(self, frame: VideoFrame) -> VideoInfo:
        stream = self._stream
        container = self._container
        assert container is not None
        zero = self._zero_on_clock()
        declared = Declared.read(container, stream)
        info = video_info(frame, declared.length(zero), stream.average_rate, stream.codec_context.name)
        if zero is None:
            return info
        return dataclasses.replace(info, first_frame_sec=float(zero - (declared.container_start or 0)))

    def _zero_on_clock(self) -> float | Fraction | None:
        """Where timeline time 0 lies on the file's clock, in seconds (from the first stamped
        frame: usually the first frame's own time); None while no frame had a stamp."""
        if self._origin is None:
            return None
        stamp, at = self._origin
        return stamp * self._time_base - Fraction(at)

    def _decoded(self) -> Iterator[VideoFrame]:
        """Frames in presentation order; stops at the first demux/decode error."""
        container = self._container
        assert container is not None
        stream = self._stream
        self.error = ""
        try:
            for packet in container.demux(stream):
                for frame in stream.decode(packet):
                    self.decoded_frames += 1
                    yield frame
        except av.FFmpegError as error:
            self.error = _reason(error)
            try:  # frames already inside the decoder are good: drain them
                for frame in stream.decode(None):
                    self.decoded_frames += 1
                    yield frame
            except av.FFmpegError:
                pass

    def _duration(self, frame: VideoFrame, interval: float) -> float:
        """A frame's duration: its own, else the last frame interval, else the nominal one."""
        if (frame.duration or 0) > 0:
            return frame.duration * self._time_base.numerator / self._time_base.denominator
        return interval if interval > 0 else self._nominal_step

    def _timed_frames(self, from_start: bool) -> Iterator[tuple[float, VideoFrame]]:
        """The timeline of one pass: from the first frame, or (after a seek) from wherever the
        demuxer is; a pass after a seek yields nothing when its first frame has no stamp."""
        num, den = self._time_base.numerator, self._time_base.denominator
        origin = None if from_start else self._origin
        last: tuple[float, VideoFrame] | None = None
        last_stamp: int | None = None
        interval = 0.0
        for frame in self._decoded():
            stamp = frame.pts if frame.pts is not None else frame.dts
            if stamp is not None and origin is not None:
                time = (stamp - origin[0]) * num / den + origin[1]
            elif last is None and not from_start:
                return  # landed on a frame whose time is unknown
            else:  # no timestamp (or the first one): continue from the previous frame
                time = 0.0 if last is None else last[0] + self._duration(last[1], interval)
                if stamp is not None:
                    origin = (stamp, time)
                    self._origin = origin
            if last is not None:
                if time < last[0]:
                    continue  # time going backwards: broken timestamps, drop the frame
                if time > last[0]:
                    interval = time - last[0]
            last, last_stamp = (time, frame), stamp
            yield last
        if last is None:
            return
        time, frame = last
        if last_stamp is not None and origin is not None and (frame.duration or 0) > 0:
            # Exact in ticks: no float drift between the last frame's time and the end.
            self.end_sec = (last_stamp + frame.duration - origin[0]) * num / den + origin[1]
        else:
            self.end_sec = time + self._duration(frame, interval)

    def frames(self) -> Iterator[tuple[float, VideoFrame]]:
        """All frames from the first one on, each with its timeline time."""
        if self._fresh:
            self._fresh = False
            yield self._first
            yield from self._timeline
            return
        # Decoding from the start again: reopen (a seek to the start is not exact everywhere).
        self.close()
        self._open()
        yield from self._timed_frames(from_start=True)

    def _seek(self, time: float) -> Iterator[tuple[float, VideoFrame]] | None:
        """A pass from the keyframe at or before ``time`` (as the demuxer finds it), or None."""
        container = self._container
        assert container is not None and self._origin is not None
        self._fresh = False
        stamp, at = self._origin
        tb = self._time_base
        target = stamp + math.floor((time - at) * tb.denominator / tb.numerator)
        try:
            container.seek(target, backward=True, any_frame=False, stream=self._stream)
        except av.FFmpegError:
            self.seekable = False  # e.g. a pipe-like format: decode from the start instead
            return None
        return self._timed_frames(from_start=False)

    def frames_from(self, time: float) -> Iterator[tuple[float, VideoFrame]]:
        """Frames from one at or before ``time`` on, with the times :meth:`frames` gives them.

        Seeks to the keyframe before ``time``; where the demuxer lands after ``time`` (an
        imprecise index) it seeks further back, and without a usable seek it decodes from the
        start.
        """
        back = 0.0
        while self.seekable and time - back > 0 and self._container is not None:
            timeline = self._seek(time - back)
            first = None if timeline is None else next(timeline, None)
            if first is not None and first[0] <= time + SHOW_TOLERANCE:
                yield first
                yield from timeline  # type: ignore[misc]
                return
            back = max(2 * back, 1.0)
        yield from self.frames()

    def measure_end(self) -> float:
        """The measured end ``E``, decoding from the last keyframe where seeking allows it."""
        if self.end_sec is not None:
            return self.end_sec
        for target in self._tail_targets():
            if not self.seekable:
                break
            timeline = self._seek(target)
            if timeline is None:
                break
            count, last = 0, None
            for last in timeline:
                count += 1
            # One frame without its own duration would take the nominal step where the full
            # pass takes the last frame interval: decode from further back then.
            if self.end_sec is not None and not self.error and last is not None:
                if count > 1 or (last[1].duration or 0) > 0:
                    return self.end_sec
            self.end_sec = None
        for _ in self.frames():
            pass
        assert self.end_sec is not None
        return self.end_sec

    def _tail_targets(self) -> Iterator[float]:
        """Seek times for :meth:`measure_end`: past the end, then ever further back from it."""
        declared = self.info.duration_sec
        if declared is None:
            yield _FAR_SEC
            return
        yield declared + 1.0
        back = 1.0
        while declared - back > 0:
            yield declared - back
            back *= 2

    def to_rgb(self, frame: VideoFrame, size: tuple[int, int]):
        """A decoded frame as upright ``(h, w, 3)`` uint8 RGB, scaled first to ``size``
        (width, height, in coded orientation), then rotated by the rotation metadata."""
        if self._reformatter is None:
            # One converter per video: VideoFrame.to_ndarray(width=...) builds a new swscale
            # context (with its own threads) for every frame, which cost more than the scaling
            # itself. One thread: parallelism comes from the decode processes.
            self._reformatter = VideoReformatter()
        width, height = size
        rgb = self._reformatter.reformat(
            frame, width=width, height=height, format="rgb24", interpolation=INTERPOLATION, threads=1
        ).to_ndarray()
        k = self.info.rotation // 90
        return np.rot90(rgb, k) if k else rgb

    @property
    def closed(self) -> bool:
        return self._container is None

    def close(self) -> None:
        self._end_first_pass()
        if self._container is not None:
            self._container.close()
            self._container = None
        self._stream = None
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _end_first_pass(self) -> None:
        """Drop the pass opened with the first frame. Its generator and this source refer to each
        other, so left to the garbage collector the decoder and FFmpeg's threads would outlive
        ``close()``; a process forked meanwhile (a decode worker) then hangs when its own
        collector frees that copy (FFmpeg waits there for threads the fork did not copy)."""
        timeline, self._timeline, self._first = self._timeline, None, None
        if timeline is not None:
            with contextlib.suppress(ValueError):  # it is running: it ends with the caller's loop
                timeline.close()
