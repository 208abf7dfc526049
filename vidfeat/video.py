"""Streaming video decode into clips, with PyAV only (no subprocess).

Timeline: every time in this module (``Clip.start_sec``, ``Clip.end_sec``,
``ClipReader.duration_sec`` and the target times of :mod:`vidfeat.clips`) is in seconds from
the first decoded video frame, which is time 0. Typical mp4 files start at 0 anyway; for others
(MPEG-TS starting at 1.4 s, streams with a start offset) the offset does not leak into clip
times. Frame times come from each frame's PTS (falling back to its DTS, then to the previous
frame's time plus its duration), never from an assumed constant frame rate; a frame whose time
goes backwards is dropped, and of frames with the same time the later one is shown.

The video ends at ``E`` = last frame's time + its duration (the frame's own duration, else the
last frame interval, else one frame at the stream's average rate).

:class:`ClipReader` decodes sequentially and yields :class:`Clip` objects in index order as soon
as each is complete. For each target time it uses the decoded frame shown at that time (the
last frame with time <= target); only those frames are converted to RGB (and resized and
rotated), and it keeps only what the open clips still need, so memory stays bounded by about
one clip window whatever the video length. ``read_at`` (one clip at a time, for training and
evaluation) runs the same loop from the keyframe before the clip: frame times come from the
stamps, placed on the timeline by the first frame's, so a seek changes no frame nor time.
``measure_end`` finds ``E`` from the last keyframe interval.

Rotation metadata (the display matrix) is applied in steps of 90 degrees; a mirroring in the
matrix is not. Pixel aspect ratio is not corrected: sizes are in stored pixels.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType

import av
import av.stream
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream

from vidfeat.clips import SHOW_TOLERANCE, ClipSampling
from vidfeat.errors import VideoError, one_line

INTERPOLATION = "FAST_BILINEAR"
"""swscale interpolation used when resizing sampled frames.

Plain bilinear without an anti-aliasing filter: what the official TimeSformer pipeline does
(``F.interpolate(mode="bilinear")`` on decoded frames), and about 1.7x cheaper than swscale's
filtered ``BILINEAR`` (0.51 vs 0.99 ms a 720p frame to 398x224, one core), which matters since
resizing the sampled frames is the decode workers' main cost after decoding itself."""

# A video is partial when decoding ends before PARTIAL_FRACTION * stated - PARTIAL_SLACK_SEC
# seconds, `stated` being the length the metadata declares on the timeline (VideoInfo.duration_sec).
PARTIAL_FRACTION = 0.9
PARTIAL_SLACK_SEC = 0.5

REPEAT_WARN_FRACTION = 0.5
"""ClipReader.warning: warn when more than this share of the sampled targets repeat a frame."""

FPS_WARN_MARGIN = 0.01
"""ClipReader.warning: warn when the sampling fps exceeds the stream's average rate by more."""

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
    frame to the declared end (``None`` when it declares none, see :class:`_Declared`), and
    ``fps`` the average frame rate (``None`` when unknown).
    """

    duration_sec: float | None
    fps: float | None
    width: int
    height: int
    rotation: int
    codec: str
    pix_fmt: str


@dataclass
class Clip:
    """One clip: ``frame_list`` holds its T uint8 ``(H, W, 3)`` RGB frames, upright, resized as
    requested; ``frames`` stacks them into one ``(T, H, W, 3)`` array.

    The frames stay separate arrays (overlapping clips share them, padding repeats one) so that a
    consumer that crops, like extraction, copies only the crop instead of stacking whole frames
    first (a 25 MB copy per TimeSformer-L clip at 224 px).

    ``start_sec`` and ``end_sec`` are the times of the frames used for the first target and for
    the last real target; frames after the first ``valid_frames`` repeat the last real frame.
    """

    index: int
    frame_list: list[np.ndarray]
    start_sec: float
    end_sec: float
    valid_frames: int

    @property
    def frames(self) -> np.ndarray:
        return np.stack(self.frame_list)


class _Decoded:
    """A decoded frame on the timeline; ``raw`` is dropped once it is converted to ``rgb``."""

    __slots__ = ("time", "raw", "rgb")

    def __init__(self, time: float, raw: VideoFrame) -> None:
        self.time = time
        self.raw: VideoFrame | None = raw
        self.rgb: np.ndarray | None = None


class _OpenClip:
    """A clip being filled: ``slots[k]`` is the frame chosen for target ``k``."""

    __slots__ = ("index", "targets", "slots")

    def __init__(self, index: int, targets: tuple[float, ...]) -> None:
        self.index = index
        self.targets = targets
        self.slots: list[_Decoded] = []

    @property
    def full(self) -> bool:
        return len(self.slots) == len(self.targets)

    def fill_before(self, frame: _Decoded, time: float) -> bool:
        """Use ``frame`` for the unresolved targets before ``time``; return whether any."""
        slots, targets = self.slots, self.targets
        added = False
        while len(slots) < len(targets) and targets[len(slots)] < time - SHOW_TOLERANCE:
            slots.append(frame)
            added = True
        return added


def _reason(error: BaseException) -> str:
    """A one-line reason for an FFmpeg or OS error."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    where = getattr(error, "filename", None)
    if isinstance(where, str) and where.endswith(")"):  # the failing FFmpeg call
        text = f"{text} ({where})"
    return one_line(text)


def _check_file(path: str) -> None:
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


def _open_container(path: str) -> InputContainer:
    """Open ``path`` with PyAV; VideoError (one-line reason) when it cannot be opened as media."""
    try:
        return av.open(path, metadata_errors="replace")
    except PermissionError:
        raise VideoError("permission denied") from None
    except FileNotFoundError:
        raise VideoError("file not found") from None
    except av.FFmpegError as error:
        raise VideoError(f"not a readable video file: {_reason(error)}") from None


def _video_info(frame, duration: float | None, rate: Fraction | None, codec: str) -> VideoInfo:
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


def _pick_stream(container: InputContainer) -> VideoStream:
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


# Demuxers whose container duration is the segment's end time, not a length: see _Declared.
_END_DURATION_DEMUXERS = frozenset({"matroska,webm"})


@dataclass(frozen=True)
class _Declared:
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
    def read(cls, container: InputContainer, stream: VideoStream) -> _Declared:
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


class _VideoSource:
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

    def __init__(self, path: str | os.PathLike[str], threads: int = 0) -> None:
        self._path = os.fspath(path)
        _check_file(self._path)
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
        container = _open_container(self._path)
        self._container = container
        try:
            stream = _pick_stream(container)
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
        declared = _Declared.read(container, stream).length(self._zero_on_clock())
        return _video_info(frame, declared, stream.average_rate, stream.codec_context.name)

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

    def _end_first_pass(self) -> None:
        """Drop the pass opened with the first frame. Its generator and this source refer to each
        other, so left to the garbage collector the decoder and FFmpeg's threads would outlive
        ``close()``; a process forked meanwhile (a decode worker) then hangs when its own
        collector frees that copy (FFmpeg waits there for threads the fork did not copy)."""
        timeline, self._timeline, self._first = self._timeline, None, None
        if timeline is not None:
            with contextlib.suppress(ValueError):  # it is running: it ends with the caller's loop
                timeline.close()


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Open a video, decode its first frame and return its :class:`VideoInfo`.

    Raises VideoError (one-line reason) when the file cannot be opened or decoded.
    """
    source = _VideoSource(path)
    source.close()
    return source.info


def probe_duration(path: str | os.PathLike[str]) -> float | None:
    """The video's duration in seconds as its metadata declares it, without decoding a frame.

    The declared length of :class:`VideoInfo` (``duration_sec``), measured from the video
    stream's start time (the container's where the stream declares none) as the best estimate
    of the first frame's time, which only decoding tells: the two differ when the stream's
    first frames cannot be decoded or its start time is not its first frame's. ``None`` when
    the metadata declares none and for any file that cannot be opened as a video (missing, not
    a video, no video stream): it never raises for a bad file. A cheap estimate (e.g. for
    progress), not the measured end.
    """
    try:
        _check_file(os.fspath(path))
        with av.open(os.fspath(path), metadata_errors="replace") as container:
            return _Declared.read(container, _pick_stream(container)).length(None)
    except (VideoError, av.FFmpegError, OSError, ValueError):
        return None


class ClipReader:
    """Decode a video into :class:`Clip` objects, streaming, with bounded memory.

    Opening checks the file and decodes its first frame; it raises VideoError with a one-line
    reason for a missing, unreadable or empty file, a file that is not a video (text, audio
    only, a still image) or a video stream without decodable frames. ``info`` describes the
    video. Iterate (once) to get the clips in index order, or call :meth:`read_at` for one clip
    at a given time; ``short_side`` resizes every frame so that its short side has that many
    pixels (aspect kept), ``None`` keeps the native size. ``threads`` is the decoder thread
    count (0: FFmpeg chooses). ``decoder`` is ``"pyav"``, or one of :mod:`vidfeat.decoders`
    (``"torchcodec"``: the same FFmpeg decoding through torchcodec; ``"nvdec"``: on the GPU,
    frames are then CUDA tensors): every decoder gives the same sampling, times and statuses.

    Once iteration ends, ``status`` is ``"ok"`` or ``"partial"`` (decoding stopped on an error,
    or ended far before the declared length ``info.duration_sec``), ``error`` the one-line
    reason for ``partial`` (else ``""``) and ``duration_sec`` the measured end ``E`` of the
    video. The container is closed when iteration ends, on ``close()`` and when leaving a
    ``with`` block.

    ``sampled_frames`` counts the real targets of the clips read so far (padding excluded) and
    ``repeated_frames`` those of them that show the same decoded frame as the previous target
    of their clip; ``warning`` is one line when the sampling repeats frames (more than
    ``REPEAT_WARN_FRACTION`` of the targets, or an ``fps`` above the stream's average rate by
    more than ``FPS_WARN_MARGIN``), else ``""``. ``decoded_frames`` counts the frames decoded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sampling: ClipSampling,
        short_side: int | None = 224,
        threads: int = 0,
        decoder: str = "pyav",
    ) -> None:
        if short_side is not None and (
            not isinstance(short_side, int) or isinstance(short_side, bool) or short_side < 1
        ):
            raise ValueError(f"short_side must be a positive integer or None, got {short_side!r}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.sampling = sampling
        self.short_side = short_side
        if decoder == "pyav":
            self._source = _VideoSource(path, threads)
        else:
            from vidfeat.decoders import open_source

            self._source = open_source(decoder, path, threads)
        self.info = self._source.info
        self.status = "ok"
        self.error = ""
        self.duration_sec: float | None = None
        self.sampled_frames = 0
        self.repeated_frames = 0
        self._size = _coded_output_size(*self._source.coded_size, short_side)
        self._pending: deque[_OpenClip] = deque()
        self._newest: _Decoded | None = None
        self._iterated = False

    def __enter__(self) -> ClipReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the container and drop buffered frames (safe to call more than once)."""
        self._source.close()
        self._pending.clear()
        self._newest = None

    @property
    def buffered_frames(self) -> int:
        """Decoded frames held right now (by the clips being filled, and the newest frame)."""
        held = {id(frame) for clip in self._pending for frame in clip.slots}
        if self._newest is not None:
            held.add(id(self._newest))
        return len(held)

    @property
    def decoded_frames(self) -> int:
        """Frames the decoder has produced so far (the first frame, decoded on opening, included)."""
        return self._source.decoded_frames

    @property
    def warning(self) -> str:
        """One line when the sampling mostly repeats frames (see the class docstring), else ""."""
        fps, rate = self.sampling.fps, self.info.fps
        too_fast = rate is not None and fps > rate * (1 + FPS_WARN_MARGIN)
        sampled, repeated = self.sampled_frames, self.repeated_frames
        repeats = sampled > 0 and repeated > REPEAT_WARN_FRACTION * sampled
        if not (too_fast or repeats):
            return ""
        source = f"a {rate:.1f} fps video" if rate is not None else "a video of unknown frame rate"
        text = f"sampling at {fps:g} fps from {source}"
        if sampled:
            text += f": {100 * repeated // sampled}% of sampled frames repeat the previous one"
        return text

    def _to_rgb(self, frame: _Decoded) -> None:
        """Convert a sampled frame once: resize, rgb24, rotate upright; release the raw frame."""
        if frame.rgb is None:
            assert frame.raw is not None
            frame.rgb = self._source.to_rgb(frame.raw, self._size)
            frame.raw = None

    def _finish(self, clip: _OpenClip, valid: int) -> Clip:
        slots = clip.slots
        last = slots[valid - 1]
        self.sampled_frames += valid
        self.repeated_frames += sum(1 for k in range(1, valid) if slots[k] is slots[k - 1])
        arrays = [frame.rgb for frame in slots[:valid]]
        arrays += [last.rgb] * (len(clip.targets) - valid)
        return Clip(
            index=clip.index,
            frame_list=arrays,
            start_sec=slots[0].time,
            end_sec=last.time,
            valid_frames=valid,
        )

    def _start_reading(self) -> None:
        if self._iterated:
            raise RuntimeError("a ClipReader can be read only once")
        if self._source.closed:
            raise RuntimeError("the ClipReader is closed")
        self._iterated = True

    def __iter__(self) -> Iterator[Clip]:
        self._start_reading()
        try:
            yield from self._clips(self.sampling, self._source.frames())
        finally:
            self.close()

    def measure_end(self) -> float:
        """The measured end ``E`` of the video (the end the tiling uses), cheaply.

        Seeks to the last keyframe and decodes from there (the whole video only where the file
        cannot seek, e.g. a raw stream without timestamps); sets ``duration_sec``. Call it
        before reading; the reader stays usable. On a file with a decode error before its last
        keyframe this is the end of the stream, where the tiling stops at the error.
        """
        if self._iterated or self._source.closed:
            raise RuntimeError("measure_end must come before reading the ClipReader")
        self.duration_sec = self._source.measure_end()
        return self.duration_sec

    def read_at(self, start_sec: float) -> Clip:
        """Decode the one clip whose targets are ``start_sec + k / fps`` (training: a random time).

        The clip 0 of ``sampling.at(start_sec)``, read by the loop that tiles the video: the
        same PTS sampling, resizing and padding, so targets at or after the video's end repeat
        the last frame (``valid_frames`` counts the real targets, at least 1, so a start past
        the end gives the last frame). Decoding starts at the keyframe before ``start_sec``
        (the same frames and times as decoding from the start) and stops once the clip is
        complete; ``status`` is settled only when the video was decoded to its end. Like
        iterating, this uses the reader up and closes it.
        """
        if start_sec < 0:
            raise ValueError(f"start_sec must be >= 0, got {start_sec}")
        self._start_reading()
        try:
            sampling = self.sampling.at(start_sec)
            return next(self._clips(sampling, self._source.frames_from(start_sec)))
        finally:
            self.close()

    def _clips(
        self, sampling: ClipSampling, frames: Iterator[tuple[float, VideoFrame]]
    ) -> Iterator[Clip]:
        """The clips of ``sampling`` in index order from ``frames`` (which start at or before
        the first target); stops after ``sampling.max_clips`` clips, else at the video's end."""
        pending = self._pending
        limit = sampling.max_clips
        next_index = 0
        for time, raw in frames:
            newest = self._newest
            if newest is not None and time > newest.time:
                # Every target before `time` not yet resolved shows `newest`.
                while (limit is None or next_index < limit) and sampling.clip_start(next_index) < time - SHOW_TOLERANCE:
                    self._open_clip(sampling, next_index)
                    next_index += 1
                for clip in pending:
                    if clip.fill_before(newest, time):
                        self._to_rgb(newest)
                while pending and pending[0].full and sampling.clip_exists(pending[0].index, time):
                    clip = pending.popleft()
                    yield self._finish(clip, sampling.num_frames)
                    if limit is not None and clip.index == limit - 1:
                        return
            self._newest = _Decoded(time, raw)
        newest = self._newest
        end = self._source.end_sec
        if newest is None or end is None:
            raise VideoError(f"no video frame could be decoded: {self._source.error or 'no frames'}")
        self._settle(end)  # decoding has ended: settled before the last clips are handed out
        count = sampling.num_clips(end)
        for index in range(next_index, count):
            self._open_clip(sampling, index)
        while pending and pending[0].index < count:
            clip = pending.popleft()
            valid = sampling.valid_frames(clip.index, end)
            if len(clip.slots) < valid:
                self._to_rgb(newest)
                clip.slots += [newest] * (valid - len(clip.slots))
            yield self._finish(clip, valid)

    def _open_clip(self, sampling: ClipSampling, index: int) -> None:
        self._pending.append(_OpenClip(index, sampling.clip_targets(index)))

    def _settle(self, end: float) -> None:
        """Set ``status``, ``error`` and ``duration_sec`` once decoding has ended at ``end``."""
        self.duration_sec = end
        stated = self.info.duration_sec
        if self._source.error:
            self.status = "partial"
            self.error = f"decoding stopped at {end:.1f} s: {self._source.error}"
        elif stated is not None and end < PARTIAL_FRACTION * stated - PARTIAL_SLACK_SEC:
            self.status = "partial"
            self.error = f"decoded {end:.1f} s of {stated:.1f} s"


def _coded_output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Size to scale a coded frame to so that its short side is ``short_side`` (aspect kept).

    The long side is rounded to an even number of pixels: swscale's vectorised paths need it
    (an odd width converts about 2x slower), and the aspect changes by at most one pixel.
    """
    if short_side is None:
        return width, height
    if width <= height:
        return short_side, max(2, 2 * round(height * short_side / width / 2))
    return max(2, 2 * round(width * short_side / height / 2)), short_side
