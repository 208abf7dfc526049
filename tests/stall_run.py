"""Run by tests/test_watchdog.py in a process of its own (a regression would hang, not fail):
extract a folder where decoding ``stuck.mp4`` blocks forever, with a short stall limit."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import vidfeat.pipeline.workers as workers_module
from vidfeat.pipeline import watchdog
from vidfeat.pipeline.driver import ExtractOptions, extract
from vidfeat.video.inputs import discover

watchdog.STALL_SEC, watchdog.CHECK_SEC = float(sys.argv[3]), 0.2
real_decode = workers_module.decode_video


def decode_video(video, path, *args, **kwargs):
    items = real_decode(video, path, *args, **kwargs)
    if Path(path).name.startswith("stuck"):  # runs in the decode worker: one clip, then it blocks
        yield next(items)
        while True:
            time.sleep(3600)
    yield from items


workers_module.decode_video = decode_video
found = discover([Path(sys.argv[1])])
report = extract(found.videos, Path(sys.argv[2]), ExtractOptions(workers=int(sys.argv[4]), root=str(found.root)))
print("counts", report.counts, "exit", report.exit_code)
