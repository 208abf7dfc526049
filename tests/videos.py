"""Test fixtures: small videos whose frames tell their own index, and broken media files.

Every frame made by :func:`make_video` shows, upright (in display orientation):

* a red band across the top sixth: it tells up from down after rotation and checks the RGB
  channel order and the chroma conversion;
* below it a 4 x 4 grid of big cells, dark gray (bit 0) or light gray (bit 1): the frame's
  index in 16 bits, most significant bit first, row by row.

The cells are big and the two levels far apart, so the index survives lossy compression,
chroma subsampling, resizing and rotation; :func:`frame_index_of` reads it back and refuses
(ValueError) a frame it cannot read unambiguously, e.g. a blend of two frames.

Videos are encoded with PyAV and explicit PTS, so frame times are exact (variable frame rate
included); the ffmpeg CLI is used only for what PyAV cannot do and the helpers that need it
skip the test when it is missing. Encoders missing from the PyAV wheel also skip
(:func:`require_encoder`).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

INDEX_BITS = 16
GRID = 4  # GRID x GRID cells, INDEX_BITS == GRID * GRID
BAND_FRACTION = 1 / 6  # the red band's share of the height
LOW, HIGH = 32, 160  # cell gray levels for bit 0 and bit 1
RED = (255, 0, 0)
DEFAULT_TIME_BASE = Fraction(1, 30000)  # exact for 24/25/30/60 fps, 29.97 fps and milliseconds

# Quiet, fast settings per encoder (tiny frames, so speed beats compression).
_ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast"},  # keeps B-frames: frames come out reordered
    "libx265": {"preset": "ultrafast", "x265-params": "log-level=none"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
    "mpeg4": {"qscale": "2"},
}


def has_encoder(name: str) -> bool:
    """Whether the PyAV wheel has the video encoder ``name``."""
    try:
        av.codec.Codec(name, "w")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


def require_encoder(name: str) -> None:
    """Skip the calling test when the PyAV wheel lacks the encoder ``name``."""
    if not has_encoder(name):
        pytest.skip(f"PyAV has no {name} encoder")


def require_ffmpeg() -> str:
    """Path of the ffmpeg CLI; skips the calling test when it is not installed."""
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.skip("the ffmpeg CLI is not installed")
    return path


# --- frame content ---------------------------------------------------------------------------


def _edges(length: int, parts: int, start: int = 0) -> list[int]:
    return [start + round(i * (length - start) / parts) for i in range(parts + 1)]


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """The upright RGB picture (height, width, 3) of frame ``index``."""
    if not 0 <= index < 2**INDEX_BITS:
        raise ValueError(f"frame index {index} does not fit in {INDEX_BITS} bits")
    image = np.full((height, width, 3), LOW, np.uint8)
    band = max(1, round(height * BAND_FRACTION))
    image[:band] = RED
    rows, cols = _edges(height, GRID, band), _edges(width, GRID)
    for bit in range(INDEX_BITS):
        if index >> (INDEX_BITS - 1 - bit) & 1:
            r, c = divmod(bit, GRID)
            image[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = HIGH
    return image


def frame_index_of(rgb: np.ndarray) -> int:
    """Read the index from an upright frame made by :func:`frame_image` (any size).

    Raises ValueError when a cell is neither clearly dark nor clearly light.
    """
    height, width = rgb.shape[:2]
    gray = rgb.astype(np.float32).mean(axis=2)
    top = height * BAND_FRACTION
    cell_h, cell_w = (height - top) / GRID, width / GRID
    index = 0
    for bit in range(INDEX_BITS):
        r, c = divmod(bit, GRID)
        y0, x0 = top + r * cell_h, c * cell_w
        inner = gray[
            int(y0 + cell_h / 4) : max(int(y0 + 3 * cell_h / 4), int(y0 + cell_h / 4) + 1),
            int(x0 + cell_w / 4) : max(int(x0 + 3 * cell_w / 4), int(x0 + cell_w / 4) + 1),
        ]
        level = float(inner.mean())
        if abs(level - (LOW + HIGH) / 2) < (HIGH - LOW) / 4:
            raise ValueError(f"cell {bit} is ambiguous (mean gray {level:.0f})")
        index = index << 1 | (level > (LOW + HIGH) / 2)
    return index


def red_band_edge(rgb: np.ndarray) -> str:
    """Which edge of a frame the red band lies along: "top", "bottom", "left" or "right"."""
    height, width = rgb.shape[:2]
    pixels = rgb.astype(np.float32)
    redness = pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2
    dy, dx = max(1, height // 12), max(1, width // 12)
    strips = {
        "top": redness[:dy],
        "bottom": redness[-dy:],
        "left": redness[:, :dx],
        "right": redness[:, -dx:],
    }
    return max(strips, key=lambda edge: float(strips[edge].mean()))


# --- good videos -----------------------------------------------------------------------------


def make_video(
    path: str | os.PathLike[str],
    *,
    seconds: float | None = None,
    num_frames: int | None = None,
    fps: int | Fraction = 25,
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    frame_times: Sequence[float] | None = None,
    rotation: int = 0,
    display_matrix: bool = True,
    time_base: Fraction = DEFAULT_TIME_BASE,
    faststart: bool = False,
    container_format: str | None = None,
    gop: int | None = None,
    muxer_options: dict[str, str] | None = None,
) -> list[float]:
    """Encode a video of index frames (see the module docstring); return the frame times.

    Frame ``i`` shows index ``i``. Give ``num_frames`` or ``seconds`` (frames at ``i / fps``),
    or ``frame_times`` (seconds, increasing, for a variable frame rate). Times are rounded to
    ``time_base`` ticks; the returned times are the exact tick times written (containers with
    a coarser clock, e.g. Matroska's milliseconds, round them again). ``size`` is the DISPLAY
    (width, height); with ``rotation`` (counter-clockwise degrees, FFmpeg's display-matrix
    convention) the coded picture is turned the other way and the display matrix is set, so a
    correct reader shows the frame upright at ``size``; ``display_matrix=False`` leaves the
    matrix out (to add rotation metadata another way, e.g. :func:`tag_rotate_with_ffmpeg`),
    so that the file's frames look turned by ``-rotation``. ``faststart`` puts an mp4's index in
    front of the data. ``container_format`` overrides the format guessed from the file name.
    ``gop`` caps the frames between keyframes (the encoder may put more keyframes), so that a
    reader can seek; ``muxer_options`` go to the container's muxer. Skips the test when the
    encoder is missing.
    """
    require_encoder(codec)
    if frame_times is None:
        if num_frames is None:
            if seconds is None:
                raise ValueError("give seconds, num_frames or frame_times")
            num_frames = round(seconds * fps)
        frame_times = [float(Fraction(i) / Fraction(fps)) for i in range(num_frames)]
    ticks = [round(Fraction(t) / time_base) for t in frame_times]
    if any(b <= a for a, b in zip(ticks, ticks[1:])):
        raise ValueError("frame times must increase by at least one time_base tick")
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90 degrees")
    turns = rotation // 90 % 4
    width, height = size
    coded_w, coded_h = (height, width) if turns % 2 else (width, height)
    options = {"movflags": "faststart"} if faststart else {}
    options.update(muxer_options or {})
    with av.open(os.fspath(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=fps, options=_ENCODER_OPTIONS.get(codec, {}))
        stream.width, stream.height, stream.pix_fmt = coded_w, coded_h, pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        if turns and display_matrix:
            stream.set_display_rotation(rotation)
        frame_step = round(1 / (Fraction(fps) * time_base))
        for i, tick in enumerate(ticks):
            coded = np.ascontiguousarray(np.rot90(frame_image(i, width, height), -turns))
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            frame.pts, frame.time_base = tick, time_base
            frame.duration = ticks[i + 1] - tick if i + 1 < len(ticks) else frame_step
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return [float(tick * time_base) for tick in ticks]


def make_video_without_duration(path: str | os.PathLike[str], **kwargs: object) -> list[float]:
    """A Matroska file written as a live stream: its header declares no duration (and it has
    no index, so seeking searches the file). Takes :func:`make_video`'s arguments."""
    return make_video(path, container_format="matroska", muxer_options={"live": "1"}, **kwargs)  # type: ignore[arg-type]


def declare_mkv_duration(path: str | os.PathLike[str], seconds: float) -> None:
    """Overwrite the duration a :func:`make_video` Matroska file declares (its frames stay)."""
    data = bytearray(Path(path).read_bytes())
    at = data.find(bytes.fromhex("448988"))  # Duration element, 8-byte float, in ms here
    if at < 0 or data.find(bytes.fromhex("448988"), at + 1) >= 0:
        raise ValueError("expected one 8-byte Duration element")
    data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)
    Path(path).write_bytes(bytes(data))


def ffmpeg_first_frame(path: str | os.PathLike[str]) -> np.ndarray:
    """The first frame as the ffmpeg CLI shows it (auto-rotated), RGB (H, W, 3).

    An oracle independent of vidfeat for the display orientation. Skips without the CLI.
    """
    ffmpeg = require_ffmpeg()
    ppm = subprocess.run(
        [ffmpeg, "-v", "error", "-i", os.fspath(path), "-frames:v", "1", "-f", "image2pipe",
         "-vcodec", "ppm", "-"],
        check=True,
        capture_output=True,
    ).stdout
    # PPM: "P6 <width> <height> 255" (whitespace separated), then the RGB pixels.
    width, height = (int(field) for field in ppm.split(maxsplit=3)[1:3])
    pixels = ppm[len(ppm) - width * height * 3 :]
    return np.frombuffer(pixels, np.uint8).reshape(height, width, 3)


def tag_rotate_with_ffmpeg(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], degrees: int
) -> None:
    """Copy ``src`` to ``dst`` (mp4) with the ffmpeg CLI, adding a ``rotate=degrees`` tag.

    The mp4 muxer turns the tag into a display matrix, as phone videos carry. FFmpeg versions
    disagree on the tag's sign, so compare readers with :func:`ffmpeg_first_frame` instead of
    assuming a direction. Skips the test without the CLI.
    """
    ffmpeg = require_ffmpeg()
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-i", os.fspath(src), "-c", "copy",
         "-metadata:s:v:0", f"rotate={degrees}", os.fspath(dst)],
        check=True,
    )


# --- broken files ----------------------------------------------------------------------------


def make_empty(path: str | os.PathLike[str]) -> None:
    """A 0-byte file."""
    Path(path).write_bytes(b"")


def make_text(path: str | os.PathLike[str]) -> None:
    """A text file (whatever its name, e.g. ``notes.mp4``)."""
    Path(path).write_text("this is not a video\n" * 50)


def make_truncated_header(path: str | os.PathLike[str], keep: int = 2048) -> None:
    """An mp4 cut to its first ``keep`` bytes: its index (moov, written last) is gone."""
    make_video(path, num_frames=50)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:keep])


def make_truncated_tail(
    path: str | os.PathLike[str], *, seconds: float = 4.0, keep_fraction: float = 0.4
) -> list[float]:
    """A faststart mp4 cut after ``keep_fraction`` of its media data (a download cut short).

    The index in front still declares the full duration. Returns the frame times written.
    """
    times = make_video(path, seconds=seconds, faststart=True)
    data = Path(path).read_bytes()
    start, end = _mp4_box(data, b"mdat")
    Path(path).write_bytes(data[: start + int((end - start) * keep_fraction)])
    return times


def _mp4_box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(start, end) of the payload of the first top-level mp4 box of type ``kind``."""
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        header = 8
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
            header = 16
        elif size == 0:
            size = len(data) - offset
        if data[offset + 4 : offset + 8] == kind:
            return offset + header, offset + size
        offset += size
    raise ValueError(f"no {kind!r} box")


def make_corrupt_middle(
    path: str | os.PathLike[str], *, seconds: float = 4.0, at: float = 0.5, span: float = 0.2
) -> list[float]:
    """A faststart mp4 whose frame data is overwritten with random bytes in the middle.

    ``span`` of the media data starting at fraction ``at`` of it is garbage; the index is
    intact, so the file opens and decodes normally up to the damage. Returns the frame times.
    """
    times = make_video(path, seconds=seconds, faststart=True)
    data = bytearray(Path(path).read_bytes())
    start, end = _mp4_box(bytes(data), b"mdat")
    first = start + int((end - start) * at)
    count = int((end - start) * span)
    data[first : first + count] = np.random.default_rng(0).bytes(count)
    Path(path).write_bytes(bytes(data))
    return times


def make_audio_only(path: str | os.PathLike[str], seconds: float = 1.0) -> None:
    """An AAC audio file with no video stream (``.m4a`` or ``.mp4``)."""
    rate = 16000
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(int(seconds * rate) // 1024):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_still_image(
    path: str | os.PathLike[str], codec: str = "png", size: tuple[int, int] = (64, 48)
) -> None:
    """A single PNG (``codec="png"``) or JPEG (``"mjpeg"``) image, whatever the file name."""
    width, height = size
    pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    context = av.CodecContext.create(codec, "w")
    context.width, context.height, context.pix_fmt = width, height, pix_fmt
    context.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(frame_image(0, width, height), format="rgb24")
    packets = context.encode(frame.reformat(format=pix_fmt)) + context.encode(None)
    Path(path).write_bytes(b"".join(bytes(packet) for packet in packets))


def make_zero_length_stream(path: str | os.PathLike[str]) -> None:
    """A Matroska file that declares a video stream but holds no frame.

    Made by cutting a real ``.mkv`` right after the ID of its first Cluster (the frames).
    """
    make_video(path, num_frames=10, container_format="matroska")
    data = Path(path).read_bytes()
    cluster = data.find(bytes.fromhex("1F43B675"))
    Path(path).write_bytes(data[: cluster + 4])


def make_unreadable(path: str | os.PathLike[str]) -> None:
    """A valid video with no read permission (mode 000).

    Root ignores file permissions: a test running as root must read it as another user.
    """
    make_video(path, num_frames=5)
    os.chmod(path, 0)


def make_noise_video(
    path: str | os.PathLike[str],
    seconds: float,
    *,
    size: str = "64x48",
    fps: int = 5,
    gop: int = 25,
    faststart: bool = False,
) -> int:
    """An H.264 mp4 of random gray noise made by the ffmpeg CLI: incompressible, so the file is
    large for its resolution (about 2.4 KB a 64x48 frame), as a byte-counting test needs.
    Keyframes every ``gop`` frames; the index at the end unless ``faststart``. Returns the size
    in bytes. Skips the test without the CLI."""
    ffmpeg = require_ffmpeg()
    flags = ["-movflags", "+faststart"] if faststart else []
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
         f"nullsrc=s={size}:r={fps},geq=lum='random(1)*255':cb=128:cr=128", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "ultrafast", "-g", str(gop), "-pix_fmt", "yuv420p",
         *flags, os.fspath(path)],
        check=True,
    )
    return os.path.getsize(path)
