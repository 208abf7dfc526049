"""Test footage for the bench scripts: H.264 that decodes at about real footage's cost.

A moving gradient with film-grain-like noise: a clean gradient compresses to almost nothing and
decodes ~3x faster than real video, which would flatter every decode figure.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def film_grain_video(path: str | Path, seconds: float, size: tuple[int, int] = (640, 360), fps: int = 30,
                     threads: int = 0) -> Path:  # fmt: skip
    """Write ``seconds`` of ``size`` (width, height) video at ``fps`` to ``path``; ``threads``:
    encoder threads (0: FFmpeg chooses; 1 when many files are encoded in parallel)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    grain = np.random.default_rng(0).integers(0, 24, size=(8, h, w, 1), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = threads
        for i in range(int(seconds * fps)):
            img = np.stack([(xx + i * 3) % 232, (yy + i) % 232, (xx + yy + i * 5) % 232], -1).astype(np.uint8)
            img += grain[i % 8]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)
