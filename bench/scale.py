"""Scale-out benchmark: throughput of `vidfeat extract` with 1 rank and with 2 torchrun ranks
(``--gpus 2``; gloo, so it runs on the CPU too) on the same generated videos, printed as a ratio.

On one GPU per rank the ratio should approach 2; on a CPU-only box both ranks share the cores,
so it measures the overhead of sharding, the barrier and the merge rather than a speed-up.

    python bench/scale.py                          # 8 videos of 20 s, the bundled tiny model
    python bench/scale.py --videos 2 --seconds 3   # a quick check that it runs
    python bench/scale.py --model base --device cuda --videos 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import h5py
import numpy as np


def make_video(path: Path, seconds: float, size=(320, 240), fps=25) -> None:
    """A moving gradient with noise, H.264."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(0).integers(0, 24, size=(4, h, w, 1), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.stack([(xx + i * 3) % 232, (yy + i) % 232, (xx + yy + i * 5) % 232], -1).astype(np.uint8)
            img += noise[i % 4]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def timed_run(videos: Path, out: Path, extra: list[str]) -> tuple[float, int]:
    """(wall seconds, clips in the final file) of one `vidfeat extract` run."""
    cmd = [sys.executable, "-m", "vidfeat", "extract", str(videos), "-o", str(out), "--quiet", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    with h5py.File(out) as f:
        return wall, int(f["clips/embedding"].shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", default=None, help="default: the bundled tiny model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=None, help="decode workers (divided between the ranks)")
    args = parser.parse_args()
    extra = []
    for flag, value in (("--model", args.model), ("--device", args.device), ("--workers", args.workers)):
        if value is not None:
            extra += [flag, str(value)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        root.mkdir()
        for i in range(args.videos):
            make_video(root / f"v{i:03d}.mp4", args.seconds)
        one_sec, clips = timed_run(root, Path(tmp) / "one.h5", extra)
        two_sec, clips2 = timed_run(root, Path(tmp) / "two.h5", [*extra, "--gpus", "2"])
        assert clips == clips2, (clips, clips2)
    print(f"{args.videos} videos x {args.seconds:g} s, {clips} clips, {os.cpu_count()} CPU cores")
    print(f"1 rank : {clips / one_sec:7.2f} clips/s ({one_sec:.1f} s, model load included)")
    print(f"2 ranks: {clips / two_sec:7.2f} clips/s ({two_sec:.1f} s, barrier and merge included)")
    print(f"ratio 2 ranks / 1 rank: {one_sec / two_sec:.2f}  [~2 with one GPU a rank]")


if __name__ == "__main__":
    main()
