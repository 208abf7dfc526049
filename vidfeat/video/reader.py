"""Streaming video decode into clips, from the frame source of any decoder (no subprocess).

Timeline: every time in this module (``Clip.start_sec``, ``Clip.end_sec``,
``ClipReader.duration_sec`` and the target times of :mod:`vidfeat.video.sampling`) is in seconds from
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
``measure_end`` finds ``E`` from the last keyframe interval. The timeline itself belongs to the
frame source (:class:`vidfeat.video.source.VideoSource` and the sources built on it in
:mod:`vidfeat.video.decoders`).

Rotation metadata (the display matrix) is applied in steps of 90 degrees; a mirroring in the
matrix is not. Pixel aspect ratio is not corrected: sizes are in stored pixels.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import av
import numpy as np
from av.video.frame import VideoFrame

from ..errors import VideoError
from .decoders import open_source
from .sampling import SHOW_TOLERANCE, ClipSampling
from .source import Declared, VideoInfo, VideoSource, check_file, is_opener, pick_stream

# A video is partial when decoding ends before PARTIAL_FRACTION * stated - PARTIAL_SLACK_SEC
# seconds, `stated` being the length the metadata declares on the timeline (VideoInfo.duration_sec).
PARTIAL_FRACTION = 0.9
PARTIAL_SLACK_SEC = 0.5

REPEAT_WARN_FRACTION = 0.5
"""ClipReader.warning: warn when more than this share of the sampled targets repeat a frame."""

FPS_WARN_MARGIN = 0.01
"""ClipReader.warning: warn when the sampling fps exceeds the stream's average rate by more."""

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


def probe(path) -> VideoInfo:
    """Open a video (a local path, or a video read in place: :func:`~vidfeat.video.source.is_opener`),
    decode its first frame and return its :class:`VideoInfo`.

    Raises VideoError (one-line reason) when the file cannot be opened or decoded.
    """
    source = VideoSource(path)
    source.close()
    return source.info


def probe_duration(path) -> float | None:
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
        if is_opener(path):  # a video read in place: open it here (never before a fork)
            with contextlib.closing(path.open_video()) as f, av.open(f, metadata_errors="replace") as container:
                return Declared.read(container, pick_stream(container)).length(None)
        check_file(os.fspath(path))
        with av.open(os.fspath(path), metadata_errors="replace") as container:
            return Declared.read(container, pick_stream(container)).length(None)
    except (VideoError, av.FFmpegError, OSError, ValueError):
        return None


def read_frame(path: str | os.PathLike[str], at_sec: float, short_side: int | None = None) -> np.ndarray:
    """The upright ``(h, w, 3)`` uint8 RGB frame shown at ``at_sec`` seconds on the timeline (the
    last frame for a time past the end), as a one-frame clip of :meth:`ClipReader.read_at` reads
    it: the same stream choice (cover art skipped), rotation and times as extraction. A clip's
    ``start_sec`` gives its first frame. VideoError (one-line reason) for a file that cannot be
    read."""
    with ClipReader(path, ClipSampling(num_frames=1, fps=1.0), short_side=short_side) as reader:
        return reader.read_at(max(0.0, at_sec)).frame_list[0]


class ClipReader:
    """Decode a video into :class:`Clip` objects, streaming, with bounded memory.

    Opening checks the file and decodes its first frame; it raises VideoError with a one-line
    reason for a missing, unreadable or empty file, a file that is not a video (text, audio
    only, a still image) or a video stream without decodable frames. ``info`` describes the
    video. Iterate (once) to get the clips in index order, or call :meth:`read_at` for one clip
    at a given time; ``short_side`` resizes every frame so that its short side has that many
    pixels (aspect kept), ``None`` keeps the native size. ``threads`` is the decoder thread
    count (0: FFmpeg chooses). ``decoder`` is ``"pyav"``, or one of :mod:`vidfeat.video.decoders`
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
        path,  # a local path, or a video read in place (vidfeat.video.source.is_opener)
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
