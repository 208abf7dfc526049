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

import h5py
from footage import film_grain_video  # bench/footage.py (this folder is on sys.path)


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
            film_grain_video(root / f"v{i:03d}.mp4", args.seconds, size=(320, 240), fps=25)
        one_sec, clips = timed_run(root, Path(tmp) / "one.h5", extra)
        two_sec, clips2 = timed_run(root, Path(tmp) / "two.h5", [*extra, "--gpus", "2"])
        assert clips == clips2, (clips, clips2)
    print(f"{args.videos} videos x {args.seconds:g} s, {clips} clips, {os.cpu_count()} CPU cores")
    print(f"1 rank : {clips / one_sec:7.2f} clips/s ({one_sec:.1f} s, model load included)")
    print(f"2 ranks: {clips / two_sec:7.2f} clips/s ({two_sec:.1f} s, barrier and merge included)")
    print(f"ratio 2 ranks / 1 rank: {one_sec / two_sec:.2f}  [~2 with one GPU a rank]")


if __name__ == "__main__":
    main()
