"""Shared memory for decoded clips.

Decode workers hand each clip to the main process through shared memory (torch's file
descriptor sharing, backed by ``/dev/shm``), so the clips in flight must fit there. A container's
``/dev/shm`` is often small (Docker's default is 64 MB; one TimeSformer-L clip is 14.5 MB), and
when it is full, torch's queue feeder thread drops the clip with a traceback and the run then
waits forever for it. So:

- :func:`plan` fits the loader to the free space before the run. The clips in flight are
  ``workers x prefetch`` (queued by the workers) plus one model batch (held by the main process
  until its step has copied them). It lowers the prefetch, then the workers, then the batch until
  they fit under ``MARGIN`` of the free space, and decodes in the main process (no shared memory)
  when not even two clips fit; its ``note`` says what it changed, in one line.
- :func:`share` moves a clip into shared memory inside the worker, before the loader's queue
  pickles it: a shortfall there (another process filling ``/dev/shm``) is waited out for up to
  ``WAIT_SEC``, then raised as :class:`ShmFull`, which ends the run with one line (finished
  videos are kept, and a rerun resumes).

Ranks of one machine (torchrun's ``LOCAL_WORLD_SIZE``) share ``/dev/shm`` and each plans for its
share of it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..errors import VidfeatError, traceback_reason

__all__ = ["MARGIN", "SHM_DIR", "WAIT_SEC", "LoaderPlan", "ShmFull", "clip_bytes", "free_bytes", "loader_args", "plan",
           "share"]  # fmt: skip

SHM_DIR = Path("/dev/shm")
MARGIN = 0.7  # share of the free space the clips in flight may take
WAIT_SEC = 120.0  # how long a worker waits for space before the run stops


class ShmFull(VidfeatError):
    """Shared memory stayed too full to hand a decoded clip to the main process."""

    def __init__(self, message: str) -> None:
        # Re-raised in the main process by the DataLoader, the message is the worker's whole
        # traceback, whose last line ends with this one's own message.
        super().__init__(traceback_reason(message))


class LoaderPlan(NamedTuple):
    workers: int
    prefetch: int
    batch: int
    note: str = ""  # one line when the plan lowered anything, else ""


def free_bytes(path: Path = SHM_DIR) -> int | None:
    """Free bytes of the shared-memory filesystem, or None where there is none to measure."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _mb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def clip_bytes(preprocess, crops: int = 1) -> int:
    """Bytes of one clip's uint8 crops (``preprocess``: a card's Preprocess): crops x frames x
    size x size x 3 colours."""
    return crops * preprocess.num_frames * preprocess.crop_size**2 * 3


def _local_ranks() -> int:
    from .shard import torchrun_env

    return max(1, torchrun_env().local_world_size)


def plan(workers: int, prefetch: int, batch: int, clip_bytes: int, free: int | None = None) -> LoaderPlan:
    """The workers, prefetch and batch that keep the clips in flight under ``MARGIN`` of the free
    shared memory (``free``: measured when None; this rank's share of it)."""
    if workers == 0:
        return LoaderPlan(0, prefetch, batch)
    free = free_bytes() if free is None else free
    if free is None:
        return LoaderPlan(workers, prefetch, batch)
    free //= _local_ranks()
    fits = int(MARGIN * free // max(1, clip_bytes))  # clips that may be in flight
    w, p, b = workers, prefetch, batch
    if w * p + b > fits:  # fewer clips queued per worker
        p = max(1, min(p, (fits - b) // w))
    if w * p + b > fits:  # then fewer workers (p is 1 here)
        w = max(1, min(w, fits - b))
    if w * p + b > fits:  # then a smaller batch (w and p are 1 here)
        b = max(1, fits - w)
    if (w, p, b) == (workers, prefetch, batch):
        return LoaderPlan(w, p, b)
    need = (workers * prefetch + batch) * clip_bytes / MARGIN
    advice = f"give it more (docker run --shm-size={max(1, -(-int(need) // 10**9))}g) for full speed"
    if w * p + b > fits:  # not even one queued clip beside one held
        note = (f"shared memory (/dev/shm) has {_mb(free)} free, too little for 2 x {_mb(clip_bytes)} in flight: "
                f"decoding in the main process (slow); {advice}")  # fmt: skip
        return LoaderPlan(0, prefetch, batch, note)
    running = f"{w} decode workers, prefetch {p}" + (f", batch {b}" if b != batch else "")
    asked = f"{workers}, {prefetch}" + (f", {batch}" if b != batch else "")
    note = f"shared memory (/dev/shm) has {_mb(free)} free: running {running} (asked {asked}); {advice}"
    return LoaderPlan(w, p, b, note)


def loader_args(workers: int, item_bytes: int, prefetch: int = 2, echo: Callable[[str], None] | None = None) -> dict:
    """``num_workers`` and ``prefetch_factor`` for a DataLoader whose items (collated batches of
    ``item_bytes``) come through shared memory, one held by the caller at a time; a lowered plan
    is said in one line to ``echo`` (None: not said)."""
    fitted = plan(workers, prefetch, 1, item_bytes)
    if fitted.note and echo is not None:
        echo(fitted.note)
    return {"num_workers": fitted.workers, "prefetch_factor": fitted.prefetch if fitted.workers else None}


def share(tensor, wait_sec: float = WAIT_SEC):
    """``tensor`` moved into shared memory (in place); waits out a full ``/dev/shm`` for up to
    ``wait_sec`` seconds, then raises :class:`ShmFull`."""
    deadline = time.monotonic() + wait_sec
    pause = 0.05
    while True:
        try:
            return tensor.share_memory_()
        except RuntimeError as exc:
            if "shared memory" not in str(exc) and "No space left" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise ShmFull(full_message(tensor.nbytes, wait_sec)) from None
        time.sleep(pause)
        pause = min(1.0, pause * 2)


def full_message(clip_bytes: int, wait_sec: float = WAIT_SEC) -> str:
    """The one line :class:`ShmFull` says."""
    free = free_bytes()
    where = f"{_mb(free)} free" if free is not None else "full"
    return (f"shared memory (/dev/shm) stayed full ({where}, {_mb(clip_bytes)} to hand over) for {wait_sec:.0f} s: "
            f"give the container more (docker run --shm-size=16g) or use fewer workers, then rerun "
            f"(extract keeps finished videos; train resumes with --resume)")  # fmt: skip
