"""Decode workers: a video in, its clips (uint8 crops, sampled by frame timestamps) and one
end-of-video item out. They run in DataLoader processes (:mod:`vidfeat.pipeline.local`, a Ray
actor's decode process) or in the calling process; a bad video never raises here, it ends with
a failed or partial :class:`VideoEnd`.
"""

from __future__ import annotations

import math
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from . import shm
from ..errors import NetworkVideoError, VideoError, VidfeatError
from ..model.cards import ModelCard
from ..model.runtime import one_line
from ..store import VideoResult
from ..video.reader import ClipReader
from ..video.sampling import ClipSampling
from ..video.transforms import spatial_crops

__all__ = ["ClipItem", "VideoEnd", "ClipStream", "decode_video", "worker_jobs", "crash_reason", "usable_decoder",
           "default_workers", "video_result", "PREFETCH", "NVDEC_WORKERS", "MAX_DEFAULT_WORKERS"]  # fmt: skip


@dataclass
class ClipItem:
    video: int  # index into the run's job list
    index: int  # clip index within the video
    crops: torch.Tensor  # (n, t, s, s, c) uint8
    start_sec: float
    end_sec: float
    valid_frames: int


@dataclass
class VideoEnd:
    video: int
    status: str  # ok | partial | failed
    error: str
    clips: int  # how many ClipItems this video sent
    duration_sec: float
    fps: float
    width: int
    height: int
    decode_sec: float
    warning: str = ""  # "" or one line: the sampling mostly repeats frames (ClipReader.warning)
    first_frame_sec: float = math.nan  # where clip time 0 is on the player's clock (VideoInfo)
    retry: bool = False  # failed on the network (after its retries): recorded so that a rerun tries it again


def decode_video(
    video: int, path, sampling: ClipSampling, card: ModelCard, crops: int, threads: int, decoder: str = "pyav"
):
    """Yield the ClipItems of one video, then its VideoEnd. Never raises for a bad video.
    ``path``: a local path or a video read in place (:func:`vidfeat.video.source.is_opener`),
    opened here. ``decoder``: see ``vidfeat.video.decoders``; crops of GPU-decoded frames are
    copied to the host (the loader hands items between processes). A video whose bytes could
    not be fetched (:class:`~vidfeat.errors.NetworkVideoError`) fails whole, with ``retry`` set,
    even after some clips: its clips are dropped and a rerun decodes it again."""
    start = time.perf_counter()
    sent, info = 0, None
    status, error, duration, warning = "failed", "", math.nan, ""
    retry = False
    try:
        with ClipReader(path, sampling, short_side=card.preprocess.short_side, threads=threads, decoder=decoder) as reader:
            info = reader.info
            for clip in reader:
                views = spatial_crops(clip.frame_list, card.preprocess.crop_size, crops)
                views = views.cpu() if isinstance(views, torch.Tensor) else torch.from_numpy(views)
                yield ClipItem(video, clip.index, views, clip.start_sec, clip.end_sec, clip.valid_frames)
                sent += 1
            status, error, duration = reader.status, reader.error, reader.duration_sec
            warning = reader.warning
    except NetworkVideoError as exc:
        error, retry = one_line(exc), True
    except VideoError as exc:
        error = one_line(exc)
    except Exception as exc:  # noqa: BLE001 - a bug or an exotic file must not end the run
        error = f"internal error: {type(exc).__name__}: {one_line(exc)}"
        if os.environ.get("VIDFEAT_RAISE_ERRORS"):
            traceback.print_exc()
    if status == "failed" and sent and not retry:  # died after some clips: keep them
        status = "partial"
    yield VideoEnd(
        video=video,
        status=status,
        error=error,
        clips=sent,
        duration_sec=float(duration) if duration is not None else math.nan,
        fps=float(info.fps) if info and info.fps else math.nan,
        width=int(info.width) if info else 0,
        height=int(info.height) if info else 0,
        decode_sec=time.perf_counter() - start,
        warning=warning,
        first_frame_sec=float(info.first_frame_sec) if info and info.first_frame_sec is not None else math.nan,
        retry=retry,
    )


def worker_jobs(jobs: list, worker: int, workers: int) -> list:
    """The jobs ``(video id, path, group)`` worker ``worker`` of ``workers`` decodes, in order:
    with groups numbered in order of first appearance (a job without a group is a group of its
    own), the jobs of groups ``worker``, ``worker + workers``, ... So videos without groups go
    round-robin (jobs w, w + n, ...), and every video of one group (one tar shard) goes to one
    worker, which reads the shard in order."""
    numbers: dict[object, int] = {}
    mine = []
    for job in jobs:
        key = job[2] if job[2] is not None else ("job", job[0])
        number = numbers.setdefault(key, len(numbers))
        if number % workers == worker:
            mine.append(job)
    return mine


class ClipStream(IterableDataset):
    """Every job's clips (jobs: (video id, path or opener, group)); with n workers, worker w
    decodes the jobs of :func:`worker_jobs` in that order. Each worker marks on ``board`` (a
    :class:`vidfeat.pipeline.watchdog.Board` in shared memory) the video it is on and whether it is working
    on a clip, so that the main process knows which video a dead worker was on and can stop one
    that stalls."""

    def __init__(self, jobs, sampling: ClipSampling, card: ModelCard, crops: int, threads: int, board=None, decoder="pyav"):
        self.jobs, self.sampling, self.card, self.crops, self.threads = jobs, sampling, card, crops, threads
        self.decoder = decoder
        self.board = board

    def __iter__(self):
        worker = get_worker_info()
        if worker is not None:  # Ctrl-C in a terminal reaches the whole group: the main process decides
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        board = self.board if worker is not None else None
        shard = self.jobs if worker is None else worker_jobs(self.jobs, worker.id, worker.num_workers)
        for video, path, _ in shard:
            if board is not None:
                board.start(worker.id, video)
            for item in decode_video(video, path, self.sampling, self.card, self.crops, self.threads,
                                     _worker_decoder(self.decoder, worker)):  # fmt: skip
                if worker is not None and isinstance(item, ClipItem):
                    shm.share(item.crops)  # here a full /dev/shm is waited out or named, not dropped
                if board is not None:
                    board.waiting(worker.id)
                yield item
                if board is not None:
                    board.working(worker.id)
        if board is not None:
            board.done(worker.id)


PREFETCH = 4
"""Clips each decode worker may have queued for the main process (fewer where /dev/shm is small)."""

NVDEC_WORKERS = 4
"""With ``decoder="nvdec"``, decode workers 0..NVDEC_WORKERS-1 decode on the GPU, the others
with PyAV on the CPU: both feed the model."""


def _worker_decoder(decoder: str, worker) -> str:
    if decoder != "nvdec" or worker is None:
        return decoder
    return decoder if worker.id < NVDEC_WORKERS else "pyav"


def crash_reason(exc: BaseException) -> str:
    """The failure reason of a video its decode worker died on (``exc``: the loader's error)."""
    return f"the decoder crashed on this video ({one_line(exc)[:100]})"


def usable_decoder(decoder: str, device: torch.device, note: Callable[[str], None] = lambda line: None) -> str:
    """The decoder that will decode: ``decoder``, or "pyav" when NVDEC cannot run here (saying
    why in one line to ``note``); a VidfeatError when torchcodec was asked for and does not work."""
    from ..video.decoders import DECODERS, nvdec_unavailable, torchcodec_unavailable

    if decoder not in DECODERS:
        raise VidfeatError(f"--decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "torchcodec" and (reason := torchcodec_unavailable()):
        raise VidfeatError(reason)
    if decoder == "nvdec":
        reason = "the model runs on the CPU" if device.type != "cuda" else nvdec_unavailable(device.index or 0)
        if reason:
            note(f"NVDEC is not available ({reason}): decoding on the CPU with PyAV")
            return "pyav"
    return decoder


MAX_DEFAULT_WORKERS = 16
"""The default decode workers never exceed this, however many cores the machine has."""


def default_workers(ranks_here: int = 1) -> int:
    """The default decode workers of one process: the machine's cores - 1, at most
    :data:`MAX_DEFAULT_WORKERS`, shared between the ``ranks_here`` ranks of one machine (at least 1 each)."""
    machine = min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 2) - 1)
    return max(1, machine // max(1, ranks_here))


def video_result(name: str, size_bytes: int, mtime: float, end: VideoEnd, rows: list, embedding_dim: int,
                 num_classes: int) -> VideoResult:  # fmt: skip
    """One video's result from its :class:`VideoEnd` and its clip ``rows``, sorted by clip index:
    ``(index, embedding, logits, start_sec, end_sec, valid_frames)``. A video on which the model
    produced NaN/inf fails (its rows are dropped)."""
    embedding = np.stack([r[1] for r in rows]) if rows else np.zeros((0, embedding_dim), np.float32)
    logits = np.stack([r[2] for r in rows]) if rows else np.zeros((0, num_classes), np.float32)
    status, error = end.status, end.error
    if end.retry:  # no size: the resume key never matches, so a rerun decodes it again
        size_bytes, mtime, rows = 0, -1.0, []
        embedding, logits = embedding[:0], logits[:0]
    if rows and not (np.isfinite(embedding).all() and np.isfinite(logits).all()):
        status, error, rows = "failed", "the model produced NaN/inf on this video", []
        embedding, logits = embedding[:0], logits[:0]
    return VideoResult(
        path=name,
        status=status,
        error=error,
        warning=end.warning,
        size_bytes=size_bytes,
        mtime=mtime,
        duration_sec=end.duration_sec,
        fps=end.fps,
        width=end.width,
        height=end.height,
        first_frame_sec=end.first_frame_sec,
        embedding=embedding,
        logits=logits,
        start_sec=np.array([r[3] for r in rows], np.float64),
        end_sec=np.array([r[4] for r in rows], np.float64),
        valid_frames=np.array([r[5] for r in rows], np.int32),
    )
