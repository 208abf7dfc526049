"""The local executor: decode workers in DataLoader processes feed one ModelRunner in this
process.

::

    decode workers (DataLoader processes)        this process
    ---------------------------------------      -------------------------------------------------
    ClipReader: PyAV decode, sample by PTS,  ->  batch clips across videos: one copy from shared
    resize only sampled frames, crop (uint8)     memory into a pinned uint8 buffer (CUDA)
    into shared memory                           -> device (non-blocking) -> normalise -> bf16 SDPA
    one item per clip + one end-of-video item    -> CLS embedding + logits (averaged over crops)
                                                 -> a finished video goes to the driver's writer

Memory is bounded: a worker holds one clip window of the video it decodes, and the loader keeps
``prefetch`` items per worker (fitted to the free shared memory, :mod:`vidfeat.pipeline.shm`).
Videos finish out of order; the writer sorts them when it assembles the final file. A decode
worker that crashes or stalls (:mod:`vidfeat.pipeline.watchdog`) costs only its video.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import threading
from dataclasses import replace

from torch.utils.data import DataLoader

from . import shm
from .progress import Progress
from .runner import Batcher, ModelRunner, resolve_device
from .watchdog import Board, Watchdog, stall_reason
from .workers import PREFETCH, ClipItem, ClipStream, VideoEnd, crash_reason, default_workers, usable_decoder, video_result

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Embeds a run's videos in this process with decode worker processes (see the module docstring)."""

    def __init__(self) -> None:
        self._workers = 0

    def setup(self, options, progress: Progress):
        """``options`` with the decoder that will decode here (NVDEC falls back to PyAV, saying why)."""
        device, _ = resolve_device(options)
        self._workers = default_workers() if options.workers is None else options.workers
        return replace(options, decoder=usable_decoder(options.decoder, device, progress.note))

    def workers(self, todo) -> int:
        return self._workers

    def run(self, job) -> None:
        """Embed ``job.todo`` (a :class:`vidfeat.pipeline.driver.Job`)."""
        runner = ModelRunner.setup(job.options, job.prepared)
        job.prepared = None  # its state dict, a copy of the weights, is not kept for the run
        with _DurationProbe(job.todo, job.progress) as probe:
            _Run(job, self._workers, runner, probe).run()


class _DurationProbe:
    """Reads each video's duration from its container metadata (no decoding) in a thread, so
    that progress and ETA count video-seconds from the start of the run.

    The decode workers are forked while this thread runs. A fork copies whatever lock the
    thread holds at that moment (Python's import locks inside PyAV, FFmpeg's own) into the
    child, where nobody will release it: the worker then hangs on its first open. So the
    thread probes under ``_busy`` and the pipeline forks only inside :meth:`forking`."""

    def __init__(self, todo, progress: Progress, probe=None) -> None:
        self.todo, self.progress = todo, progress
        self._read = probe  # None: vidfeat.video.reader.probe_duration
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="vidfeat-probe", daemon=True)

    def _probe(self) -> None:
        if self._read is None:
            from ..video.reader import probe_duration as read
        else:
            read = self._read
        for vid, (v, _) in enumerate(self.todo):
            if v.source is not None:  # read in place: opened only in its decode worker, after the fork
                continue
            with self._busy:
                if self._stop.is_set():
                    return
                duration = read(v.path)
            self.progress.expect(vid, duration)

    @contextlib.contextmanager
    def forking(self):
        """Hold the probe between two files while the caller starts processes. Garbage is freed
        first, here: a decoder left to the collector (a caller's reader never closed) would be
        freed in each forked worker too, which hangs there (vidfeat.video.reader._VideoSource.close)."""
        with self._busy:
            gc.collect()
            yield

    def __enter__(self) -> _DurationProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _Collector:
    """Gathers clips from the loader into model batches and finished videos into the writer."""

    def __init__(self, job, runner: ModelRunner) -> None:
        self.job, self.runner = job, runner
        self.batcher = Batcher(runner, self._computed)
        self.clips: dict[int, list] = {}  # video -> [(index, emb, logits, start, end, valid)]
        self.ends: dict[int, VideoEnd] = {}
        self.finished: set[int] = set()

    def add(self, item: ClipItem | VideoEnd) -> None:
        if isinstance(item, VideoEnd):
            self.ends[item.video] = item
        else:
            self.batcher.add(item)
        self.finish_ready()

    def flush(self) -> None:
        self.batcher.flush()
        self.finish_ready()

    def _computed(self, item: ClipItem, embedding, logits) -> None:
        self.clips.setdefault(item.video, []).append(
            (item.index, embedding, logits, item.start_sec, item.end_sec, item.valid_frames)
        )
        self.job.progress.clip_done(item.video, item.end_sec)

    def finish_ready(self) -> None:
        for vid in [v for v, end in self.ends.items() if len(self.clips.get(v, [])) == end.clips]:
            end = self.ends.pop(vid)
            self._write(vid, end, sorted(self.clips.pop(vid, []), key=lambda r: r[0]))

    def discard(self, vid: int) -> None:
        """Forget what arrived of a video whose decoding was cut short (it will be redone)."""
        self.clips.pop(vid, None)
        self.ends.pop(vid, None)
        self.batcher.discard(vid)

    def fail(self, vid: int, reason: str) -> None:
        """Record a video that cannot be decoded without crashing the decoder."""
        self.discard(vid)
        nan = math.nan
        self._write(vid, VideoEnd(vid, "failed", reason, 0, nan, nan, 0, 0, 0.0), [])

    def _write(self, vid: int, end: VideoEnd, rows: list) -> None:
        v, st = self.job.todo[vid]
        dim, classes = self.runner.model.num_features, len(self.job.card.classes)
        result = video_result(v.name, st.st_size, st.st_mtime, end, rows, dim, classes)
        self.finished.add(vid)
        self.job.record(vid, result, end.decode_sec, self.runner.model_sec)


def _received(items):
    """The loader's items. A worker that dies right after sending a batch takes its shared-memory
    file descriptors with it, and receiving that batch then fails (EOFError, ConnectionError or
    FileNotFoundError from the descriptor hand-over): that is the worker's crash too, so it is
    raised as the DataLoader's own "worker exited" RuntimeError, which :meth:`_Run.run` handles."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (EOFError, ConnectionError, FileNotFoundError) as exc:
            raise RuntimeError(f"DataLoader worker died while sending a batch ({type(exc).__name__}: {exc})") from exc
        yield item


class _Run:
    """Decode and embed every video of ``todo`` (a list of (VideoFile, stat)); ``run()`` does it.

    If a decode worker dies (a crash inside FFmpeg on a hostile file), the videos the workers
    were on are retried one at a time in a worker of their own: the one that crashes again is
    recorded as failed, the others succeed, and the rest of the run goes on with fresh workers.
    """

    def __init__(self, job, workers: int, runner: ModelRunner, probe: _DurationProbe) -> None:
        self.todo, self.sampling, self.card, self.options = job.todo, job.sampling, job.card, job.options
        self.runner, self.stop, self.probe = runner, job.stop, probe
        self.clip_bytes = shm.clip_bytes(job.card.preprocess, job.options.crops)
        fitted = shm.plan(workers, PREFETCH, runner.batch_size, self.clip_bytes)
        if fitted.note:
            job.progress.note(fitted.note)
        self.workers, self.prefetch, runner.batch_size = fitted.workers, fitted.prefetch, fitted.batch
        self.threads = max(1, (os.cpu_count() or 2) // max(1, self.workers))  # FFmpeg threads per decoder
        self.collector = _Collector(job, runner)

    def run(self) -> None:
        collector, stop = self.collector, self.stop
        # (video id, what the worker opens, group): a shard's videos share a group, one worker reads them
        pending = [(i, v.source if v.source is not None else v.path, v.group) for i, (v, _) in enumerate(self.todo)]
        isolate: list[tuple[int, object, str | None]] = []  # suspects of a crash, each to be retried alone
        while pending or isolate:
            alone = bool(isolate)
            jobs, n = ([isolate.pop(0)], 1) if alone else (pending, self.workers)
            board = Board(n)
            stream = ClipStream(jobs, self.sampling, self.card, self.options.crops, self.threads, board,
                                 decoder=self.options.decoder)
            loader = DataLoader(
                stream,
                batch_size=None,
                num_workers=n,
                pin_memory=False,  # ModelRunner._stage copies each batch into pinned memory once
                prefetch_factor=self.prefetch if n else None,
                in_order=False,  # take whichever worker is ready: a slow video does not stall the others
                multiprocessing_context="spawn" if self.options.decoder == "nvdec" and n else None,  # CUDA in workers
            )
            full = ""
            dog = Watchdog(board, n)
            try:
                with self.probe.forking():  # the workers are forked here
                    items = iter(loader)
                if n and threading.current_thread() is threading.main_thread():
                    # The DataLoader's SIGCHLD handler raises "worker exited unexpectedly" at any point
                    # of the main process, even inside the writer. Without it the same error comes
                    # from next(items) (the loader polls its workers), where it is handled below.
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                with dog if n else contextlib.nullcontext():
                    for item in _received(items):
                        stop.check()
                        collector.add(item)
                collector.flush()
                if not alone:
                    pending = []
            except shm.ShmFull as exc:  # raised in a worker
                full = str(exc)
            except RuntimeError as exc:
                stop.check()  # workers that a terminal's Ctrl-C reached before they ignored it
                if not n or "DataLoader worker" not in str(exc):
                    raise
                collector.flush()
                for vid, seconds in dog.stalled.items():  # stopped by the watchdog: no retry
                    collector.fail(vid, stall_reason(seconds))
                if alone:
                    vid = jobs[0][0]
                    if vid not in collector.finished:
                        collector.fail(vid, crash_reason(exc))
                    continue
                # the videos the other workers were on: redone, alone first unless a stall (whose
                # culprit is known) stopped them
                suspects = {v for v in board.videos() if v not in collector.finished}
                for vid in suspects:
                    collector.discard(vid)
                if not dog.stalled:
                    isolate += [job for job in pending if job[0] in suspects]
                    pending = [job for job in pending if job[0] not in suspects]
                pending = [job for job in pending if job[0] not in collector.finished]
            if full:  # out of the handler, so that no traceback keeps the loader's workers alive
                items = loader = None
                collector.flush()  # the videos received whole are kept
                raise shm.ShmFull(full)
