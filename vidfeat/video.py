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
one clip window whatever the video length.

Rotation metadata (the display matrix) is applied in steps of 90 degrees; a mirroring in the
matrix is not. Pixel aspect ratio is not corrected: sizes are in stored pixels.
"""

from __future__ import annotations

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

from vidfeat.clips import REAL_TOLERANCE, SHOW_TOLERANCE, ClipSampling
from vidfeat.errors import VideoError

INTERPOLATION = "FAST_BILINEAR"
"""swscale interpolation used when resizing sampled frames.

Plain bilinear without an anti-aliasing filter: what the official TimeSformer pipeline does
(``F.interpolate(mode="bilinear")`` on decoded frames), and about 1.7x cheaper than swscale's
filtered ``BILINEAR`` (0.51 vs 0.99 ms a 720p frame to 398x224, one core), which matters since
resizing the sampled frames is the decode workers' main cost after decoding itself."""

# A video is partial when decoding ends before PARTIAL_FRACTION * stated - PARTIAL_SLACK_SEC
# seconds, `stated` being the duration the container declares.
PARTIAL_FRACTION = 0.9
PARTIAL_SLACK_SEC = 0.5

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
    ``duration_sec`` is the duration the container declares (``None`` when it declares none)
    and ``fps`` its average frame rate (``None`` when unknown).
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
    return " ".join(str(text).split())


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


def _declared_duration(container: InputContainer, stream: VideoStream) -> float | None:
    """The duration the metadata declares: the stream's, else the container's; None if neither."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


class _VideoSource:
    """An open video stream decoding into timeline-stamped frames.

    Opening decodes the first frame (it fixes time 0, the display size and the rotation).
    ``frames()`` yields ``(time, frame)`` with non-decreasing times. A decode or demux error
    ends the stream early: ``error`` then holds its one-line reason. After ``frames()`` is
    exhausted, ``end_sec`` is the measured end ``E``.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int = 0) -> None:
        name = os.fspath(path)
        _check_file(name)
        try:
            container = av.open(name, metadata_errors="replace")
        except PermissionError:
            raise VideoError("permission denied") from None
        except av.FFmpegError as error:
            raise VideoError(f"not a readable video file: {_reason(error)}") from None
        self._container: InputContainer | None = container
        self.error = ""
        self.end_sec: float | None = None
        try:
            stream = _pick_stream(container)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            self._stream = stream
            self._time_base = stream.time_base or Fraction(1, 1)
            rate = stream.average_rate
            self._nominal_step = 1 / float(rate) if rate else 0.0
            self._timeline = self._timed_frames()
            first = next(self._timeline, None)
            if first is None:
                if self.error:
                    raise VideoError(f"no video frame could be decoded: {self.error}")
                raise VideoError("video stream has no frames")
            self._first = first
            self.coded_size = (first[1].width, first[1].height)
            self.info = self._describe(first[1])
        except BaseException:
            self.close()
            raise

    def _describe(self, frame: VideoFrame) -> VideoInfo:
        stream = self._stream
        container = self._container
        assert container is not None
        duration = _declared_duration(container, stream)
        rotation = (round(frame.rotation / 90) % 4) * 90
        width, height = frame.width, frame.height
        if rotation in (90, 270):
            width, height = height, width
        rate = stream.average_rate
        return VideoInfo(
            duration_sec=duration,
            fps=float(rate) if rate else None,
            width=width,
            height=height,
            rotation=rotation,
            codec=stream.codec_context.name,
            pix_fmt=frame.format.name,
        )

    def _decoded(self) -> Iterator[VideoFrame]:
        """Frames in presentation order; stops at the first demux/decode error."""
        container = self._container
        assert container is not None
        stream = self._stream
        try:
            for packet in container.demux(stream):
                yield from stream.decode(packet)
        except av.FFmpegError as error:
            self.error = _reason(error)
            try:  # frames already inside the decoder are good: drain them
                yield from stream.decode(None)
            except av.FFmpegError:
                pass

    def _duration(self, frame: VideoFrame, interval: float) -> float:
        """A frame's duration: its own, else the last frame interval, else the nominal one."""
        if (frame.duration or 0) > 0:
            return frame.duration * self._time_base.numerator / self._time_base.denominator
        return interval if interval > 0 else self._nominal_step

    def _timed_frames(self) -> Iterator[tuple[float, VideoFrame]]:
        num, den = self._time_base.numerator, self._time_base.denominator
        origin_ts: int | None = None  # timestamp of the first stamped frame...
        origin_sec = 0.0  # ...and its timeline time
        last: tuple[float, VideoFrame] | None = None
        last_stamp: int | None = None
        interval = 0.0
        for frame in self._decoded():
            stamp = frame.pts if frame.pts is not None else frame.dts
            if stamp is not None and origin_ts is not None:
                time = (stamp - origin_ts) * num / den + origin_sec
            else:  # no timestamp (or the first one): continue from the previous frame
                time = 0.0 if last is None else last[0] + self._duration(last[1], interval)
                if stamp is not None:
                    origin_ts, origin_sec = stamp, time
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
        if last_stamp is not None and origin_ts is not None and (frame.duration or 0) > 0:
            # Exact in ticks: no float drift between the last frame's time and the end.
            self.end_sec = (last_stamp + frame.duration - origin_ts) * num / den + origin_sec
        else:
            self.end_sec = time + self._duration(frame, interval)

    def frames(self) -> Iterator[tuple[float, VideoFrame]]:
        """All frames from the first one on, each with its timeline time (once only)."""
        yield self._first
        yield from self._timeline

    @property
    def closed(self) -> bool:
        return self._container is None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Open a video, decode its first frame and return its :class:`VideoInfo`.

    Raises VideoError (one-line reason) when the file cannot be opened or decoded.
    """
    source = _VideoSource(path)
    source.close()
    return source.info


def probe_duration(path: str | os.PathLike[str]) -> float | None:
    """The video's duration in seconds as its metadata declares it, without decoding a frame.

    The video stream's duration, else the container's. ``None`` when the metadata declares none
    and for any file that cannot be opened as a video (missing, not a video, no video stream):
    it never raises for a bad file. A cheap estimate (e.g. for progress), not the measured end.
    """
    try:
        _check_file(os.fspath(path))
        with av.open(os.fspath(path), metadata_errors="replace") as container:
            return _declared_duration(container, _pick_stream(container))
    except (VideoError, av.FFmpegError, OSError, ValueError):
        return None


class ClipReader:
    """Decode a video into :class:`Clip` objects, streaming, with bounded memory.

    Opening checks the file and decodes its first frame; it raises VideoError with a one-line
    reason for a missing, unreadable or empty file, a file that is not a video (text, audio
    only, a still image) or a video stream without decodable frames. ``info`` describes the
    video. Iterate (once) to get the clips in index order; ``short_side`` resizes every frame so
    that its short side has that many pixels (aspect kept), ``None`` keeps the native size.
    ``threads`` is the decoder thread count (0: FFmpeg chooses).

    Once iteration ends, ``status`` is ``"ok"`` or ``"partial"`` (decoding stopped on an error,
    or ended far before the declared duration), ``error`` the one-line reason for ``partial``
    (else ``""``) and ``duration_sec`` the measured end ``E`` of the video. The container is
    closed when iteration ends, on ``close()`` and when leaving a ``with`` block.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sampling: ClipSampling,
        short_side: int | None = 224,
        threads: int = 0,
    ) -> None:
        if short_side is not None and (
            not isinstance(short_side, int) or isinstance(short_side, bool) or short_side < 1
        ):
            raise ValueError(f"short_side must be a positive integer or None, got {short_side!r}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.sampling = sampling
        self.short_side = short_side
        self._source = _VideoSource(path, threads)
        self.info = self._source.info
        self.status = "ok"
        self.error = ""
        self.duration_sec: float | None = None
        self._rotate_k = self.info.rotation // 90
        self._size = _coded_output_size(*self._source.coded_size, short_side)
        # One converter per video: VideoFrame.to_ndarray(width=...) builds a new swscale context
        # (with its own threads) for every frame, which cost more than the scaling itself.
        # One thread: parallelism comes from the decode processes.
        self._reformatter = VideoReformatter()
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

    def _to_rgb(self, frame: _Decoded) -> None:
        """Convert a sampled frame once: resize, rgb24, rotate upright; release the raw frame."""
        if frame.rgb is None:
            assert frame.raw is not None
            width, height = self._size
            rgb = self._reformatter.reformat(
                frame.raw, width=width, height=height, format="rgb24", interpolation=INTERPOLATION, threads=1
            ).to_ndarray()
            frame.rgb = np.rot90(rgb, self._rotate_k) if self._rotate_k else rgb
            frame.raw = None

    def _open_clip(self, index: int) -> None:
        self._pending.append(_OpenClip(index, self.sampling.clip_targets(index)))

    def _finish(self, clip: _OpenClip, valid: int) -> Clip:
        slots = clip.slots
        last = slots[valid - 1]
        arrays = [frame.rgb for frame in slots[:valid]]
        arrays += [last.rgb] * (len(clip.targets) - valid)
        return Clip(
            index=clip.index,
            frame_list=arrays,
            start_sec=slots[0].time,
            end_sec=last.time,
            valid_frames=valid,
        )

    def __iter__(self) -> Iterator[Clip]:
        if self._iterated:
            raise RuntimeError("a ClipReader can be iterated only once")
        if self._source.closed:
            raise RuntimeError("the ClipReader is closed")
        self._iterated = True
        try:
            yield from self._clips()
        finally:
            self.close()

    def _clips(self) -> Iterator[Clip]:
        sampling = self.sampling
        pending = self._pending
        next_index = 0
        for time, raw in self._source.frames():
            newest = self._newest
            if newest is not None and time > newest.time:
                # Every target before `time` not yet resolved shows `newest`.
                while sampling.clip_start(next_index) < time - SHOW_TOLERANCE:
                    self._open_clip(next_index)
                    next_index += 1
                for clip in pending:
                    if clip.fill_before(newest, time):
                        self._to_rgb(newest)
                while pending and pending[0].full and sampling.clip_exists(pending[0].index, time):
                    yield self._finish(pending.popleft(), sampling.num_frames)
            self._newest = _Decoded(time, raw)
        newest = self._newest
        end = self._source.end_sec
        assert newest is not None and end is not None
        count = sampling.num_clips(end)
        for index in range(next_index, count):
            self._open_clip(index)
        while pending and pending[0].index < count:
            clip = pending.popleft()
            valid = sampling.valid_frames(clip.index, end)
            if len(clip.slots) < valid:
                self._to_rgb(newest)
                clip.slots += [newest] * (valid - len(clip.slots))
            yield self._finish(clip, valid)
        self._settle(end)

    def read_at(self, start_sec: float) -> Clip:
        """Decode the one clip whose targets are ``start_sec + k / fps`` (training: a random time).

        The same decoding, PTS sampling, resizing and padding as the tiled clips: targets at or
        after the video's end repeat the last frame (``valid_frames`` counts the real targets, at
        least 1, so a start past the end gives the last frame). Decoding stops once the clip is
        complete; ``status`` is settled only when the video was decoded to its end. The returned
        clip has index 0. Like iterating, this uses the reader up and closes it.
        """
        if start_sec < 0:
            raise ValueError(f"start_sec must be >= 0, got {start_sec}")
        if self._iterated or self._source.closed:
            raise RuntimeError("a ClipReader can be read only once")
        self._iterated = True
        sampling = self.sampling
        clip = _OpenClip(0, tuple(start_sec + k / sampling.fps for k in range(sampling.num_frames)))
        try:
            newest: _Decoded | None = None
            for time, raw in self._source.frames():
                if newest is not None and time > newest.time:
                    if clip.fill_before(newest, time):
                        self._to_rgb(newest)
                    if clip.full:
                        return self._finish(clip, sampling.num_frames)
                newest = _Decoded(time, raw)
            end = self._source.end_sec
            assert newest is not None and end is not None
            valid = max(1, sum(1 for t in clip.targets if t < end - REAL_TOLERANCE))
            if len(clip.slots) < valid:
                self._to_rgb(newest)
                clip.slots += [newest] * (valid - len(clip.slots))
            self._settle(end)
            return self._finish(clip, valid)
        finally:
            self.close()

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
