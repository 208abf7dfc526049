"""The output lock: one process at a time writes an output (extraction, adding captions).

An advisory ``flock`` on ``feats.h5.parts/lock``, taken without waiting: a second writer gets a
one-line StoreError. A flock belongs to the open file description, which processes forked while
it is held (decode workers) share: closing our fd alone would leave it held until the last of
them exits, so the process that took it unlocks it (``LOCK_UN``) before closing, and a forked
child closing its copy leaves it held.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StoreError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "lock"


class OutputLock:
    """``take()`` locks ``parts/lock`` for ``output`` (``parts`` must exist); ``release()``
    unlocks it. Also a context manager."""

    def __init__(self, output: Path, parts: Path) -> None:
        self.output, self.path = output, parts / LOCK_NAME
        self._fd: int | None = None
        self._pid = 0  # the process that took the lock

    def take(self) -> None:
        # os.open gives a non-inheritable fd (O_CLOEXEC): a program started with exec does not get it.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._pid = os.getpid()
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise StoreError(
                f"another vidfeat process is writing {self.output} (it holds {self.path}): "
                "wait for it to finish or choose another -o"
            ) from None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if fcntl is not None and self._pid == os.getpid():
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.take()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
