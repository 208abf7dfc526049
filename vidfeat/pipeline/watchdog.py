"""Decode workers that stop making progress.

A decode worker can block for good: FFmpeg looping on a malformed file, a read from a hung
network filesystem. The loader would then wait for it forever and the run would never end. So
each worker marks on a shared :class:`Board` which video it is on and since when it has been
working on its next clip (not counting the time it waits for the main process to want that
clip), and the :class:`Watchdog` thread of the main process kills a worker that has spent more
than ``STALL_SEC`` on one clip. The loader then reports the worker's death, and the run records
that video as failed ("the decoder stalled") and goes on with the others.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

__all__ = ["CHECK_SEC", "STALL_SEC", "Board", "Watchdog", "stall_reason"]

STALL_SEC = 300.0
"""Seconds one clip may take a worker before it counts as stalled: far above any real clip (a
4K long-GOP clip decodes in well under a minute on one core) and above the shared-memory wait
(:data:`vidfeat.pipeline.shm.WAIT_SEC`)."""
CHECK_SEC = 5.0  # how often the watchdog looks


def stall_reason(seconds: float) -> str:
    return f"the decoder stalled: no clip after {seconds:.0f} s (its worker was stopped)"


class Board:
    """Shared memory the decode workers write and the main process reads: per worker, the video
    it is on (-1: none), since when it has been working on its next clip (0: waiting), its pid."""

    def __init__(self, workers: int) -> None:
        n = max(1, workers)
        self.video = mp.Array("q", [-1] * n, lock=False)
        self.busy_since = mp.Array("d", [0.0] * n, lock=False)
        self.pid = mp.Array("q", [0] * n, lock=False)

    # the worker's side

    def start(self, worker: int, video: int) -> None:
        self.pid[worker] = os.getpid()
        self.video[worker] = video
        self.busy_since[worker] = time.monotonic()

    def waiting(self, worker: int) -> None:
        """The clip is ready: from now on the worker waits for the main process."""
        self.busy_since[worker] = 0.0

    def working(self, worker: int) -> None:
        self.busy_since[worker] = time.monotonic()

    def done(self, worker: int) -> None:
        self.video[worker] = -1
        self.busy_since[worker] = 0.0

    # the main process's side

    def videos(self) -> set[int]:
        return {v for v in self.video if v >= 0}


class Watchdog:
    """Kills the workers of ``board`` that stall (see the module docstring); ``stalled`` maps
    each such video to the seconds its clip had taken."""

    def __init__(self, board: Board, workers: int) -> None:
        self.board, self.workers = board, workers
        self.stalled: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vidfeat-watchdog", daemon=True)

    def _watch(self) -> None:
        board = self.board
        while not self._stop.wait(CHECK_SEC):
            now = time.monotonic()
            for w in range(self.workers):
                since, video, pid = board.busy_since[w], board.video[w], board.pid[w]
                if since and video >= 0 and pid and now - since > STALL_SEC:
                    self.stalled[video] = now - since
                    board.busy_since[w] = 0.0
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
