"""A `vidfeat` command line run with one video held: its decode does not start until a release
file exists. Kill tests use it so that the run cannot finish before their kill point, whatever
the machine's speed (the points themselves are counts of committed chunk files)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_SCRIPT = """
import sys, time
from pathlib import Path
import vidfeat.pipeline.workers as workers
from vidfeat.cli import run
release, held = Path(sys.argv.pop(1)), sys.argv.pop(1)
real = workers.decode_video
def decode_video(video, path, *args, **kwargs):
    # a local path, or a video read in place (a shard's Sample or a bound opener of one)
    sample = getattr(path, "__self__", path)
    name = getattr(sample, "video_name", None) or str(path)
    if name.endswith(held):
        Path(str(release) + ".held").touch()  # the test may now signal the run
        while not release.exists():
            time.sleep(0.02)
    yield from real(video, path, *args, **kwargs)
workers.decode_video = decode_video
run()
"""

HANG_GUARD_SEC = 600
"""Not a timing assertion: a run that never reaches its kill point fails instead of hanging CI."""


def held_command(release: Path, held: str, args: list[str]) -> list[str]:
    """The command line that runs ``vidfeat ARGS`` with the video whose name ends with ``held``
    held until ``release`` exists."""
    return [sys.executable, "-c", _SCRIPT, str(release), held, *args]


def start_held(release: Path, held: str, args: list[str], **popen) -> subprocess.Popen:
    """Start :func:`held_command` in a session of its own (its decode workers die with it)."""
    return subprocess.Popen(held_command(release, held, args), start_new_session=True, **popen)


def kill_at_chunks(proc: subprocess.Popen, parts: Path, chunks: int) -> None:
    """SIGKILL the held run ``proc`` (and its decode workers) once ``parts`` holds ``chunks``
    committed chunk files. The run is held, so it is still running at that point; asserts so."""
    deadline = time.monotonic() + HANG_GUARD_SEC
    while proc.poll() is None and len(list(parts.glob("chunk-*.h5"))) < chunks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the held run ended (exit {proc.returncode}) before {chunks} chunks were committed"
    assert len(list(parts.glob("chunk-*.h5"))) >= chunks, f"no {chunks} chunks after {HANG_GUARD_SEC} s"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_held(proc: subprocess.Popen, release: Path) -> None:
    """Wait until the run ``proc`` has reached its held video."""
    deadline = time.monotonic() + HANG_GUARD_SEC
    marker = Path(str(release) + ".held")
    while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None and marker.exists(), f"the held run ended (exit {proc.returncode}) or never got there"
