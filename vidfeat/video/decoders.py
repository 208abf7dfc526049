"""The frame sources behind :class:`vidfeat.video.reader.ClipReader`, and ``open_source``, the one
registry that opens any of them.

``DECODERS``: ``"pyav"`` (the default, :class:`vidfeat.video.source.VideoSource`), ``"torchcodec"`` (torchcodec's
CPU decoder: the same FFmpeg, through PyTorch's library) and ``"nvdec"`` (torchcodec's CUDA
decoder on the GPU's NVDEC engines; frames come out as CUDA tensors). torchcodec is the optional
extra ``vidfeat[torchcodec]``; it links the system's FFmpeg shared libraries.

Only the frames themselves come from torchcodec. Everything that decides a clip is shared with
PyAV: the file checks and the reasons a file is refused (PyAV reads the header, no frame is
decoded twice), the declared duration and rate, and the timeline of :class:`vidfeat.video.source.VideoSource`
(times from each frame's PTS relative to the first frame, dropped backward times, the measured
end, the keyframe seek of ``read_at``), so the same video gives the same clips and times with
every decoder. Frames are converted to RGB only when sampled: torchcodec's packet decoder hands
out raw frames, and its colour converter runs on the chosen ones. The short-side resize is a
plain bilinear one (``F.interpolate``, no anti-aliasing, as the official pipeline), so pixels
may differ from PyAV's swscale ``FAST_BILINEAR`` by rounding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from fractions import Fraction
from types import SimpleNamespace

import av

from ..errors import VideoError, one_line
from .source import Declared, VideoInfo, VideoSource, is_opener, open_container, pick_stream, video_info

__all__ = ["DECODERS", "torchcodec_unavailable", "nvdec_unavailable", "open_source"]

DECODERS = ("pyav", "torchcodec", "nvdec")

# torchcodec reports a frame without a timestamp as FFmpeg's "no value" times the time base, a
# huge negative number of seconds; anything below this is taken as "no stamp".
_NO_STAMP_SEC = -1e9


def torchcodec_unavailable() -> str | None:
    """None when torchcodec imports and can open a video, else the one-line reason."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from its FFmpeg libraries
        reason = one_line(exc)[:160]
        return f"torchcodec is not usable ({reason}); install it with `pip install vidfeat[torchcodec]` next to FFmpeg 4-8"
    return None


_nvdec_reason: dict[int, str | None] = {}


def nvdec_unavailable(device_index: int = 0) -> str | None:
    """None when torchcodec decodes H.264 on CUDA device ``device_index``, else the one-line
    reason (no CUDA, no torchcodec, a torchcodec without CUDA, no NVDEC in the driver). Checked
    once per process on a small generated video."""
    if device_index in _nvdec_reason:
        return _nvdec_reason[device_index]
    reason = torchcodec_unavailable()
    if reason is None:
        import torch

        if not torch.cuda.is_available():
            reason = "no CUDA device"
        else:
            try:
                _decode_probe(f"cuda:{device_index}")
            except Exception as exc:  # noqa: BLE001 - any failure means "not here"
                reason = "torchcodec cannot decode on the GPU: " + one_line(exc)[:200]
    _nvdec_reason[device_index] = reason
    return reason


def _decode_probe(device: str) -> None:
    """Decode a small H.264 video made in memory on ``device`` (raises on failure)."""
    import io

    import numpy as np
    from torchcodec.decoders import ColorConverter, Demuxer

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256, 128, "yuv420p"
        for i in range(4):
            img = np.full((128, 256, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    demuxer = Demuxer(buffer.getvalue())
    decoder = demuxer.streams[0].make_decoder(device=device)
    frames = [f for packet in demuxer for f in decoder.decode(packet)] + decoder.drain()
    if not frames:
        raise RuntimeError("no frame decoded")
    ColorConverter(device=device).convert(frames[0])


class _Frame:
    """A torchcodec raw frame with the fields the timeline reads (times in seconds)."""

    __slots__ = ("raw", "pts", "dts", "duration", "width", "height", "rotation", "format")

    def __init__(self, raw) -> None:
        self.raw = raw
        self.pts = raw.pts_seconds if raw.pts_seconds > _NO_STAMP_SEC and math.isfinite(raw.pts_seconds) else None
        self.dts = None
        duration = raw.duration_seconds
        self.duration = duration if math.isfinite(duration) and duration > 0 else 0
        self.width, self.height = raw.width, raw.height
        self.rotation = raw.rotation or 0.0
        self.format = SimpleNamespace(name=raw.pixel_format)


class TorchcodecSource(VideoSource):
    """:class:`vidfeat.video.source.VideoSource` with frames from torchcodec's packet decoder on
    ``device`` ("cpu" or "cuda[:i]"). Stamps are in seconds (time base 1)."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 0, device: str = "cpu") -> None:
        self._device = device
        self._converter = None
        self._header: tuple[Declared, Fraction | None, str] | None = None
        self._tick: Fraction | None = None  # the stream's time base
        super().__init__(path, threads)

    def _open(self) -> None:
        from torchcodec.decoders import Demuxer

        if self._header is None:  # PyAV reads the header: the same refusals as the default decoder
            with open_container(self._path) as container:
                stream = pick_stream(container)
                self._header = (Declared.read(container, stream), stream.average_rate, stream.codec_context.name)
                index = stream.index
                self._tick = stream.time_base
            self._index = index
        try:
            demuxer = Demuxer(self._path, streams=self._index)
            self._decoder = demuxer.streams[0].make_decoder(device=self._device, num_ffmpeg_threads=self._threads)
        except (RuntimeError, ValueError) as error:
            raise VideoError(f"torchcodec cannot open this video: {one_line(error)[-200:]}") from None
        self._container = demuxer
        self._stream = SimpleNamespace(average_rate=self._header[1])
        self._time_base = Fraction(1, 1)

    def _describe(self, frame: _Frame) -> VideoInfo:
        assert self._header is not None
        declared, rate, codec = self._header
        return video_info(frame, declared.length(self._zero_on_clock()), rate, codec)

    def _zero_on_clock(self) -> float | Fraction | None:
        """As the PyAV source: torchcodec's stamps are seconds in floating point, put back on the
        stream's ticks so that the declared length is the very number PyAV gives."""
        if self._origin is None or not self._tick:
            return super()._zero_on_clock()
        stamp, at = self._origin
        return round(Fraction(stamp) / self._tick) * self._tick - Fraction(at)

    def _decoded(self) -> Iterator[_Frame]:
        demuxer, decoder = self._container, self._decoder
        assert demuxer is not None
        self.error = ""
        try:
            for packet in demuxer:
                for raw in decoder.decode(packet):
                    self.decoded_frames += 1
                    yield _Frame(raw)
            tail = decoder.drain()
        except RuntimeError as error:
            self.error = one_line(str(error)).rsplit(", ", 1)[-1] or "decoding failed"
            try:  # frames already inside the decoder are good: drain them
                tail = decoder.drain()
            except RuntimeError:
                tail = []
        for raw in tail:
            self.decoded_frames += 1
            yield _Frame(raw)

    def _seek(self, time: float) -> Iterator[tuple[float, _Frame]] | None:
        assert self._container is not None and self._origin is not None
        self._fresh = False
        stamp, at = self._origin
        try:
            self._container.seek(stamp + (time - at), stream=self._container.streams[0])
            self._decoder.reset()
        except RuntimeError:
            self.seekable = False
            return None
        return self._timed_frames(from_start=False)

    def to_rgb(self, frame: _Frame, size: tuple[int, int]):
        """Upright ``(h, w, 3)`` uint8 RGB with the short side scaled as ``size`` asks: a numpy
        array on the CPU, a CUDA tensor from NVDEC."""
        import torch
        import torch.nn.functional as F
        from torchcodec.decoders import ColorConverter

        if self._converter is None:
            self._converter = ColorConverter(device=self._device)
        rgb = self._converter.convert(frame.raw).data  # (3, h, w), upright
        width, height = size
        if self.info.rotation in (90, 270):
            width, height = height, width
        if rgb.shape[1:] != (height, width):
            x = rgb.unsqueeze(0).float()
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
            rgb = x[0].round_().clamp_(0, 255).to(torch.uint8)
        rgb = rgb.permute(1, 2, 0).contiguous()
        return rgb.numpy() if rgb.device.type == "cpu" else rgb

    def close(self) -> None:
        self._end_first_pass()
        self._container = None
        self._decoder = None


def open_source(decoder: str, path: str | os.PathLike[str], threads: int = 0) -> VideoSource:
    """The frame source of ``decoder`` (one of ``DECODERS``, or ``nvdec:N`` for CUDA device N)
    for ``path``, opened (its first frame decoded); VideoError when the file cannot be read or
    the decoder is not usable here."""
    if decoder == "pyav":
        return VideoSource(path, threads)
    if is_opener(path):
        raise VideoError(
            f"--decoder {decoder} reads local files only: videos in tar shards or object storage are decoded with "
            "--decoder pyav"
        )
    if decoder == "torchcodec":
        device = "cpu"
    elif decoder == "nvdec" or decoder.startswith("nvdec:"):
        device = "cuda" + decoder[len("nvdec") :]
    else:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    reason = torchcodec_unavailable()
    if reason:
        raise VideoError(reason)
    return TorchcodecSource(path, threads, device)
