"""Extraction pipeline benchmarks; prints ratios (goals in brackets).

1. decode: frames/s of vidfeat's ClipReader (PTS sampling, conversion and resizing of the sampled
   frames) divided by raw PyAV decode frames/s of the same video, one process each   [>= 0.8]
2. memory: peak RSS of ClipReader over a 10-minute video divided by a 1-minute one    [<= 1.2]
3. end to end: clips/s and video-seconds/s of `vidfeat extract` with a small random model

    python bench/extract.py                      # generated 320x240 30 fps videos, L-style sampling
    python bench/extract.py --video my.mp4       # decode ratio on your own video
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from footage import film_grain_video as make_video  # bench/footage.py (this folder is on sys.path)

from vidfeat.video.sampling import ClipSampling
from vidfeat.video.reader import ClipReader


def raw_decode_fps(path: Path) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second) of plain PyAV decoding, all frames."""
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            n += 1
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def reader_fps(path: Path, sampling: ClipSampling, short_side: int) -> tuple[float, float, int]:
    """(frames per wall second, frames per CPU second, clips) of ClipReader over the video."""
    with av.open(str(path)) as container:
        frames = container.streams.video[0].frames
    wall, cpu, clips = time.perf_counter(), time.process_time(), 0
    with ClipReader(path, sampling, short_side=short_side) as reader:
        for _ in reader:
            clips += 1
    return frames / (time.perf_counter() - wall), frames / (time.process_time() - cpu), clips


def peak_rss_mb(path: Path, num_frames: int, fps: float, short_side: int) -> float:
    """Peak RSS of a fresh process that streams every clip of ``path`` (MiB)."""
    code = (
        "import resource, sys\n"
        "from vidfeat.video.sampling import ClipSampling\nfrom vidfeat.video.reader import ClipReader\n"
        f"with ClipReader(sys.argv[1], ClipSampling({num_frames}, {fps}), short_side={short_side}) as r:\n"
        "    for c in r: pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def end_to_end(folder: Path, tmp: Path, workers: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from checkpoints import save_tiny_model

    model = save_tiny_model(tmp / "model", num_frames=16, fps=7.5, size=64)
    out = tmp / "feats.h5"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vidfeat", "extract", str(folder), "-o", str(out), "--model", str(model),
         "--workers", str(workers), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    from vidfeat.store import open_features

    with open_features(out) as f:
        clips, seconds = len(f), float(np.nansum(f.videos.duration_sec))
    print(f"end to end ({workers} workers, random 2-block model, 16x64): {clips / wall:.1f} clips/s, "
          f"{seconds / wall:.1f} video-s/s (wall {wall:.1f} s incl. start-up; exit {proc.returncode})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, help="decode ratio on this video instead of a generated one")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--fps", type=float, default=7.5, help="sampling rate (TimeSformer-L: 96 frames at 7.5 fps)")
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sampling = ClipSampling(args.frames, args.fps)
    print(f"PyAV {av.__version__}, sampling {args.frames} frames at {args.fps} fps, short side {args.short_side}")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        one = make_video(tmp / "one_minute.mp4", 60)
        video = args.video or one
        raw, raw_cpu = max(raw_decode_fps(video) for _ in range(2))
        ours, ours_cpu, clips = max(reader_fps(video, sampling, args.short_side) for _ in range(2))
        print(f"decode: raw PyAV {raw:.0f} frames/s, ClipReader {ours:.0f} frames/s ({clips} clips): "
              f"ratio {ours / raw:.2f} [goal >= 0.8]; per CPU second {ours_cpu / raw_cpu:.2f}")  # fmt: skip

        ten = make_video(tmp / "ten_minutes.mp4", 600, size=(320, 240))
        rss_1 = peak_rss_mb(make_video(tmp / "one_small.mp4", 60, size=(320, 240)), args.frames, args.fps, args.short_side)
        rss_10 = peak_rss_mb(ten, args.frames, args.fps, args.short_side)
        print(f"memory: peak RSS 1 min {rss_1:.0f} MiB, 10 min {rss_10:.0f} MiB: ratio {rss_10 / rss_1:.2f} [goal <= 1.2]")

        folder = tmp / "videos"
        folder.mkdir()
        for i in range(4):
            make_video(folder / f"v{i}.mp4", 20 + 10 * i)
        end_to_end(folder, tmp, args.workers)
    print(f"max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
