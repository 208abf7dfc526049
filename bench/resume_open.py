"""How long a resumed run takes to learn what is done: reopening a work directory of committed
chunks (32 videos each, as a run commits them) with the tables log, and without it (every chunk
opened, as before the log existed). Each reopen runs in a fresh process, several times.

    python bench/resume_open.py --videos 64000            # 2,000 chunks
    python bench/resume_open.py --videos 64000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from store_scale import SETTINGS, collection  # noqa: E402

CLASSES = [f"class {i}" for i in range(8)]
DIM = 8


def write(out: Path, n_videos: int) -> None:
    from vidfeat.store import FeatureWriter, VideoResult

    paths, counts, status = collection(n_videos)
    with FeatureWriter(out, settings=SETTINGS, classes=CLASSES, embedding_dim=DIM, flush_videos=32) as writer:
        for path, n, s in zip(paths, np.minimum(counts, 4).tolist(), status.tolist()):
            n = 0 if s == 2 else n
            start = np.arange(n) * 4.0
            writer.add(VideoResult(path=path, status=("ok", "partial", "failed")[s], error="x" if s == 2 else "",
                                   size_bytes=1000 + n, mtime=1.7e9, duration_sec=n * 4.0 + 4, fps=30.0, width=64,
                                   height=64, embedding=np.zeros((n, DIM), np.float32),
                                   logits=np.zeros((n, len(CLASSES)), np.float32), start_sec=start,
                                   end_sec=start + 8, valid_frames=np.full(n, 8, np.int32)))  # fmt: skip


def reopen(out: Path) -> float:
    """Seconds to open a FeatureWriter on ``out`` (imports excluded), in a fresh process."""
    code = (
        "import sys, time; from pathlib import Path; from vidfeat.store import FeatureWriter; import resume_open as b;"
        "t = time.perf_counter();"
        "w = FeatureWriter(Path(sys.argv[1]), settings=b.SETTINGS, classes=b.CLASSES, embedding_dim=b.DIM);"
        "took = time.perf_counter() - t; w.close(); print(took)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True, env=env)
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=64000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "feats.h5"
        t = time.perf_counter()
        write(out, args.videos)
        parts = Path(str(out) + ".parts")
        chunks = len(list(parts.glob("chunk-*.h5")))
        print(f"{args.videos} videos committed as {chunks} chunks in {time.perf_counter() - t:.1f} s")
        with_log = [reopen(out) for _ in range(args.repeat)]
        (parts / "tables.jsonl").rename(parts / "tables.jsonl.off")
        without = [reopen(out) for _ in range(args.repeat)]
        for name, runs in (("with the tables log", with_log), ("every chunk opened", without)):
            print(f"reopen {name:22s} median {statistics.median(runs):6.2f} s  (runs: {', '.join(f'{r:.2f}' for r in runs)})")
        print(f"ratio (every chunk / log): {statistics.median(without) / statistics.median(with_log):.1f}x")


if __name__ == "__main__":
    main()
