"""The extraction pipeline: videos -> decode workers -> batched model -> one writer.

::

    decode workers (DataLoader processes)        main process
    ---------------------------------------      -------------------------------------------------
    ClipReader: PyAV decode, sample by PTS,  ->  batch clips across videos: one copy from shared
    resize only sampled frames, crop (uint8)     memory into a pinned uint8 buffer (CUDA)
    into shared memory                           -> device (non-blocking) -> normalise -> bf16 SDPA
    one item per clip + one end-of-video item    -> CLS embedding + logits (averaged over crops)
                                                 -> a finished video goes to FeatureWriter
                                                    (chunk files, atomic, resumable)

Memory is bounded: a worker holds one clip window of the video it decodes, and the loader keeps
``prefetch`` items per worker. The model step for batch k+1 is queued before the results of
batch k are read back, so the GPU does not wait for Python. Videos finish out of order; the
writer sorts them when it assembles the final file.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import shm
from .cards import DEFAULT_MODEL, ModelCard
from .clips import ClipSampling
from .errors import VideoError, VidfeatError
from .inputs import VideoFile
from .model import TimeSformer
from .progress import Progress
from .runtime import one_line
from .store import FeatureWriter, VideoResult, stored_settings, summarize
from .transforms import Normalize, spatial_crops
from .video import ClipReader
from .watchdog import Board, Watchdog, stall_reason
from .weights import prepare_model

__all__ = ["ExtractOptions", "ExtractReport", "extract", "stored_root"]


@dataclass
class ExtractOptions:
    model: str = DEFAULT_MODEL  # anything load_model takes
    fps: float | None = None  # None: the card's
    num_frames: int | None = None  # None: the card's
    stride_sec: float | None = None  # None: half a clip
    batch_size: int | None = None  # clips per model step; None: as large as fits
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # "bf16" | "fp32"; None: bf16 on cuda, fp32 on cpu
    workers: int | None = None  # decode processes; 0 decodes in the main process
    crops: int = 1  # 1 centre crop, or 3 crops along the long side (averaged)
    embedding_dtype: str = "float16"
    commit_seconds: float = 10.0  # commit finished videos to disk at least this often (0: each video)
    overwrite: bool = False
    retry_failed: bool = False
    decoder: str = "pyav"  # pyav | torchcodec | nvdec (NVDEC_WORKERS GPU decoders beside CPU ones)
    compile: bool = False  # torch.compile the model step
    root: str | None = None  # absolute folder the video names are relative to (vidfeat.inputs.Inputs.root)


@dataclass
class ExtractReport:
    output: Path
    skipped: int = 0  # already done by an earlier run
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "partial": 0, "failed": 0})  # this run
    in_file: dict[str, int] = field(default_factory=dict)  # videos by status in the output after the run
    clips: int = 0
    interrupted: bool = False
    # The status when the output holds failed or partial videos. A torchrun rank says 0: torchrun
    # takes any other status of one rank as that rank's failure and stops the others (rank 0 may
    # be merging); `--gpus` reads the 3 off the final file instead.
    failures_exit: int = 3

    @property
    def exit_code(self) -> int:
        """130: interrupted; 3: the output holds failed or partial videos (from this run or an
        earlier one); 0: every video in the output is ok."""
        if self.interrupted:
            return 130
        return self.failures_exit if self.in_file.get("failed") or self.in_file.get("partial") else 0


# ---------------------------------------------------------------------------------------------
# decode side (runs in DataLoader workers)


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


def decode_video(
    video: int, path: Path, sampling: ClipSampling, card: ModelCard, crops: int, threads: int, decoder: str = "pyav"
):
    """Yield the ClipItems of one video, then its VideoEnd. Never raises for a bad video.
    ``decoder``: see ``vidfeat.decoders``; crops of GPU-decoded frames are copied to the host
    (the loader hands items between processes)."""
    start = time.perf_counter()
    sent, info = 0, None
    status, error, duration, warning = "failed", "", math.nan, ""
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
    except VideoError as exc:
        error = one_line(exc)
    except Exception as exc:  # noqa: BLE001 - a bug or an exotic file must not end the run
        error = f"internal error: {type(exc).__name__}: {one_line(exc)}"
        if os.environ.get("VIDFEAT_RAISE_ERRORS"):
            traceback.print_exc()
    if status == "failed" and sent:  # died after some clips: keep them
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
    )


class ClipStream(IterableDataset):
    """Every job's clips (jobs: (video id, path)); with n workers, worker w decodes jobs
    w, w + n, w + 2n, ... in that order. Each worker marks on ``board`` (a
    :class:`vidfeat.watchdog.Board` in shared memory) the video it is on and whether it is working
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
        shard = self.jobs if worker is None else self.jobs[worker.id :: worker.num_workers]
        for video, path in shard:
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


def usable_decoder(decoder: str, device: torch.device) -> str:
    """``decoder``, or "pyav" with one line on stderr when NVDEC cannot run here; a VidfeatError
    when torchcodec was asked for and does not work."""
    from .decoders import DECODERS, nvdec_unavailable, torchcodec_unavailable

    if decoder not in DECODERS:
        raise VidfeatError(f"--decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "torchcodec" and (reason := torchcodec_unavailable()):
        raise VidfeatError(reason)
    if decoder == "nvdec":
        reason = "the model runs on the CPU" if device.type != "cuda" else nvdec_unavailable(device.index or 0)
        if reason:
            import sys

            print(f"NVDEC is not available ({reason}): decoding on the CPU with PyAV", file=sys.stderr)
            return "pyav"
    return decoder


# ---------------------------------------------------------------------------------------------
# model side


class ModelRunner:
    """Runs batches of uint8 crops through the model; one batch in flight while the next is built.

    ``submit`` queues the work (asynchronous on CUDA) and starts the copy of its results into
    pinned host memory; ``collect`` waits for that batch only. On CUDA out-of-memory the batch size
    is halved and the batch retried, so the default batch size is "as large as fits".
    """

    def __init__(
        self, model: TimeSformer, device: torch.device, dtype: torch.dtype, crops: int, batch_size: int, compile: bool = False
    ):
        self.model, self.device, self.dtype, self.crops = model, device, dtype, crops
        # torch.compile of the model step (its outputs equal eager's; tests/test_compile.py)
        self._step = torch.compile(self._model_step) if compile else self._model_step
        self.batch_size = batch_size
        self.pre = model.card.preprocess
        self.normalize = Normalize(self.pre.mean, self.pre.std, device)  # mean/std stay on the device
        self.model_sec = 0.0
        self._staging: list[torch.Tensor] = []  # CUDA: two pinned uint8 batch buffers, used in turn
        self._turn = 0

    def _stage(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate a batch, into pinned memory on CUDA so the copy to the GPU is asynchronous.

        Two buffers alternate: the one batch k filled is free again once batch k's results were
        collected (its event follows its host-to-device copy), which happens before batch k + 2
        is staged."""
        if self.device.type != "cuda":
            return torch.cat(crops) if len(crops) > 1 else crops[0]
        shape = (sum(c.shape[0] for c in crops), *crops[0].shape[1:])
        numel = math.prod(shape)
        if not self._staging or self._staging[0].numel() < numel:
            self._staging = [torch.empty(numel, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self._turn ^= 1
        out = self._staging[self._turn][:numel].view(shape)
        return torch.cat(crops, out=out)

    def _forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(clips.to(self.device, non_blocking=True))
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            feats, logits = self._step(x)
        return feats.float(), logits.float()

    def _model_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        return feats, self.model.forward_head(feats)

    @torch.inference_mode()
    def submit(self, crops: list[torch.Tensor]):
        """``crops``: one ``(n, t, s, s, c)`` uint8 tensor per clip."""
        clips = self._stage(crops)  # (clips * n, t, s, s, c)
        start = time.perf_counter()
        while True:
            try:
                parts = [self._forward(part) for part in clips.split(self.batch_size * self.crops)]
                break
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()
        from .runtime import combine_views

        logits, feats = combine_views(torch.cat([p[1] for p in parts]), self.crops, torch.cat([p[0] for p in parts]))
        if self.device.type == "cuda":
            host = (torch.empty(feats.shape, pin_memory=True), torch.empty(logits.shape, pin_memory=True))
            host[0].copy_(feats, non_blocking=True)
            host[1].copy_(logits, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return host, event, start
        self.model_sec += time.perf_counter() - start
        return (feats, logits), None, start

    def collect(self, handle) -> tuple[np.ndarray, np.ndarray]:
        (feats, logits), event, start = handle
        if event is not None:
            event.synchronize()
            self.model_sec += time.perf_counter() - start
        return feats.numpy(), logits.numpy()


def _auto_batch_size(
    model: TimeSformer, device: torch.device, crops: int, dtype: torch.dtype | None = None, compile: bool = False
) -> int:
    """Clips per model step: the largest that fits with a margin (see :mod:`vidfeat.batchsize`);
    out-of-memory still halves it later. ``dtype`` None: bf16 on CUDA."""
    from .batchsize import find_batch_size

    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return find_batch_size(model, device, dtype, crops, compiled=compile)


# ---------------------------------------------------------------------------------------------
# the run


def _settings(card: ModelCard, sampling: ClipSampling, options: ExtractOptions) -> dict:
    """The root attributes that define the result (a rerun must match them to resume)."""
    pre = card.preprocess
    _, dtype = _resolve_device(options)
    return {
        "model": card.name,
        "weights_sha256": card.weights.sha256,
        "attention_type": card.config.attention_type,
        "num_frames": sampling.num_frames,
        "fps": sampling.fps,
        "stride_sec": sampling.stride_sec,
        "input_size": pre.crop_size,
        "short_side": pre.short_side,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "crops": options.crops,
        "embedding_dtype": options.embedding_dtype,
        "dtype": str(dtype).removeprefix("torch."),  # model precision: bf16 and fp32 give other numbers
        "root": str(options.root or ""),  # video names are relative to it (vidfeat.inputs); "": not given
    }


def stored_root(output: Path) -> str | None:
    """The input root recorded by an earlier run of ``output`` (its final file, else its work
    directory's manifest), or None for a new output."""
    root = stored_settings(output).get("root")
    return str(root) if root else None


def with_root(options: ExtractOptions, videos: list[VideoFile]) -> ExtractOptions:
    """``options`` with its input root set: a library caller that gave none gets the folder the
    names were made against (see :func:`_root_of`)."""
    return options if options.root is not None else replace(options, root=_root_of(videos))


def _root_of(videos: list[VideoFile]) -> str | None:
    """The folder that each video's name is relative to (one for all), from the videos themselves."""
    roots = set()
    for v in videos:
        full = Path(os.path.abspath(v.path))
        depth = len(v.name.split("/"))
        if full.as_posix().endswith(v.name):
            roots.add(str(full.parents[depth - 1]))
    return roots.pop() if len(roots) == 1 else None


def _resolve_device(options: ExtractOptions) -> tuple[torch.device, torch.dtype]:
    from .runtime import autocast_dtype, resolve_device

    device = resolve_device(options.device)
    return device, autocast_dtype(options.dtype, device) or torch.float32


def _default_workers() -> int:
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def extract(videos: list[VideoFile], output: Path, options: ExtractOptions, progress: Progress | None = None) -> ExtractReport:
    """Extract every video of ``videos`` into ``output`` (resuming what an earlier run finished).

    ``videos`` and ``options.root`` come from :func:`vidfeat.inputs.discover` (``Inputs.videos``
    and ``Inputs.root``), called with ``root=stored_root(output)`` for an existing output so that
    names stay those of the earlier runs."""
    options = with_root(options, videos)
    device, dtype = _resolve_device(options)
    prepared = prepare_model(options.model, num_frames=options.num_frames)  # built only if work is left
    card = prepared.card
    sampling = ClipSampling(card.preprocess.num_frames, options.fps or card.preprocess.fps, options.stride_sec)
    workers = _default_workers() if options.workers is None else options.workers
    options = replace(options, decoder=usable_decoder(options.decoder, device))
    progress = progress or Progress(enabled=False)
    report = ExtractReport(output=output)

    with open_writer(output, card, sampling, options, prepared.embedding_dim) as writer:
        todo = plan(videos, writer, report, progress)
        progress.start(
            total=len(todo), total_bytes=sum(st.st_size for _, st in todo), skipped=report.skipped, workers=workers
        )
        try:
            if todo:
                model = prepared.build(device)
                del prepared  # its state dict, a copy of the weights, is not kept for the run
                batch = options.batch_size or _auto_batch_size(model, device, options.crops, dtype, options.compile)
                runner = ModelRunner(model, device, dtype, options.crops, batch, compile=options.compile)
                with _StopOnCtrlC() as stop, _DurationProbe(todo, progress) as probe:
                    _Run(todo, sampling, card, options, workers, runner, writer, report, progress, stop, probe).run()
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            progress.close()
        writer.finalize()
    report.in_file = summarize(output)["status"]
    return report


def open_writer(output: Path, card: ModelCard, sampling: ClipSampling, options: ExtractOptions,
                embedding_dim: int) -> FeatureWriter:  # fmt: skip
    """The run's writer: resumes ``output`` or refuses it when it was made with other settings."""
    return FeatureWriter(
        output,
        settings=_settings(card, sampling, options),
        classes=card.classes,
        embedding_dim=embedding_dim,
        embedding_dtype=options.embedding_dtype,
        overwrite=options.overwrite,
        retry_failed=options.retry_failed,
        flush_seconds=options.commit_seconds,
    )


def plan(videos: list[VideoFile], writer: FeatureWriter, report: ExtractReport, progress: Progress):
    """The ``(video, stat)`` pairs still to do. Videos done by an earlier run are counted as
    skipped; a listed file that is missing now is recorded as failed, unless an earlier run
    already has its result (a file gone now cannot be redone: its row is kept)."""
    todo: list[tuple[VideoFile, os.stat_result]] = []
    for v in videos:
        try:
            st = os.stat(v.path)
        except OSError as exc:  # a stale --list entry, or vanished since it was listed
            if writer.has(v.name):
                report.skipped += 1
                continue
            reason = "not found" if isinstance(exc, FileNotFoundError) else f"cannot stat: {exc.strerror or exc}"
            writer.add(VideoResult(path=v.name, status="failed", error=reason, size_bytes=0, mtime=0.0))
            report.counts["failed"] += 1
            progress.failure(v.name, "failed", reason)
            continue
        if writer.is_done(v.name, st.st_size, st.st_mtime):
            report.skipped += 1
        else:
            todo.append((v, st))
    return todo


def video_result(name: str, size_bytes: int, mtime: float, end: VideoEnd, rows: list, embedding_dim: int,
                 num_classes: int) -> VideoResult:  # fmt: skip
    """One video's result from its :class:`VideoEnd` and its clip ``rows``, sorted by clip index:
    ``(index, embedding, logits, start_sec, end_sec, valid_frames)``. A video on which the model
    produced NaN/inf fails (its rows are dropped)."""
    embedding = np.stack([r[1] for r in rows]) if rows else np.zeros((0, embedding_dim), np.float32)
    logits = np.stack([r[2] for r in rows]) if rows else np.zeros((0, num_classes), np.float32)
    status, error = end.status, end.error
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
        embedding=embedding,
        logits=logits,
        start_sec=np.array([r[3] for r in rows], np.float64),
        end_sec=np.array([r[4] for r in rows], np.float64),
        valid_frames=np.array([r[5] for r in rows], np.int32),
    )


def record(vid: int, result: VideoResult, writer: FeatureWriter, report: ExtractReport, progress: Progress,
           decode_sec: float, model_sec: float) -> None:  # fmt: skip
    """Hand a finished video to the writer and count and show it (``vid``: its index in the plan)."""
    writer.add(result)
    report.counts[result.status] += 1
    report.clips += result.num_clips
    if result.status != "ok":
        progress.failure(result.path, result.status, result.error)
    if result.warning:
        progress.warning(result.path, result.warning)
    progress.video_done(vid, result.size_bytes, result.duration_sec, decode_sec, model_sec)


class _DurationProbe:
    """Reads each video's duration from its container metadata (no decoding) in a thread, so
    that progress and ETA count video-seconds from the start of the run.

    The decode workers are forked while this thread runs. A fork copies whatever lock the
    thread holds at that moment (Python's import locks inside PyAV, FFmpeg's own) into the
    child, where nobody will release it: the worker then hangs on its first open. So the
    thread probes under ``_busy`` and the pipeline forks only inside :meth:`forking`."""

    def __init__(self, todo, progress: Progress, probe=None) -> None:
        self.todo, self.progress = todo, progress
        self._read = probe  # None: vidfeat.video.probe_duration
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="vidfeat-probe", daemon=True)

    def _probe(self) -> None:
        if self._read is None:
            from .video import probe_duration as read
        else:
            read = self._read
        for vid, (v, _) in enumerate(self.todo):
            with self._busy:
                if self._stop.is_set():
                    return
                duration = read(v.path)
            self.progress.expect(vid, duration)

    @contextlib.contextmanager
    def forking(self):
        """Hold the probe between two files while the caller starts processes. Garbage is freed
        first, here: a decoder left to the collector (a caller's reader never closed) would be
        freed in each forked worker too, which hangs there (vidfeat.video._VideoSource.close)."""
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

    def __init__(self, todo, card: ModelCard, runner: ModelRunner, writer: FeatureWriter, report, progress) -> None:
        self.todo, self.card, self.runner, self.writer = todo, card, runner, writer
        self.report, self.progress = report, progress
        self.clips: dict[int, list] = {}  # video -> [(index, emb, logits, start, end, valid)]
        self.ends: dict[int, VideoEnd] = {}
        self.batch: list[ClipItem] = []
        self.in_flight = None  # (items, handle): the batch the model is working on
        self.finished: set[int] = set()

    def add(self, item: ClipItem | VideoEnd) -> None:
        if isinstance(item, VideoEnd):
            self.ends[item.video] = item
        else:
            self.batch.append(item)
        if len(self.batch) >= self.runner.batch_size:
            self.submit()
        self.finish_ready()

    def submit(self) -> None:
        """Queue the current batch, then read back the previous one (the model never waits)."""
        handle = self.runner.submit([b.crops for b in self.batch]) if self.batch else None
        for b in self.batch:  # copied into the model's batch: free their shared memory now (vidfeat.shm)
            b.crops = None
        if self.in_flight:
            self._drain(self.in_flight)
        self.in_flight, self.batch = ((self.batch, handle) if handle else None), []

    def flush(self) -> None:
        self.submit()  # queue the last partial batch (reading back the one before it)
        if self.in_flight:
            self._drain(self.in_flight)
            self.in_flight = None
        self.finish_ready()

    def _drain(self, flight) -> None:
        items, handle = flight
        feats, logits = self.runner.collect(handle)
        for item, f, lg in zip(items, feats, logits):
            self.clips.setdefault(item.video, []).append(
                (item.index, f, lg, item.start_sec, item.end_sec, item.valid_frames)
            )
            self.progress.clip_done(item.video, item.end_sec)

    def finish_ready(self) -> None:
        for vid in [v for v, end in self.ends.items() if len(self.clips.get(v, [])) == end.clips]:
            end = self.ends.pop(vid)
            self._write(vid, end, sorted(self.clips.pop(vid, []), key=lambda r: r[0]))

    def discard(self, vid: int) -> None:
        """Forget what arrived of a video whose decoding was cut short (it will be redone)."""
        self.clips.pop(vid, None)
        self.ends.pop(vid, None)
        self.batch = [b for b in self.batch if b.video != vid]

    def fail(self, vid: int, reason: str) -> None:
        """Record a video that cannot be decoded without crashing the decoder."""
        self.discard(vid)
        nan = math.nan
        self._write(vid, VideoEnd(vid, "failed", reason, 0, nan, nan, 0, 0, 0.0), [])

    def _write(self, vid: int, end: VideoEnd, rows: list) -> None:
        v, st = self.todo[vid]
        dim, classes = self.runner.model.num_features, len(self.card.classes)
        result = video_result(v.name, st.st_size, st.st_mtime, end, rows, dim, classes)
        self.finished.add(vid)
        record(vid, result, self.writer, self.report, self.progress, end.decode_sec, self.runner.model_sec)


class _StopOnCtrlC:
    """The first SIGINT only asks the run to stop; :meth:`_Run.run` then raises KeyboardInterrupt at a
    safe point (between loader items). Python's default raises it wherever the main process
    happens to be, for instance inside a garbage-collector callback, which prints a traceback
    and swallows the interrupt. A second Ctrl-C interrupts at once. Outside the main thread
    (a library caller's thread) signals cannot be handled and nothing changes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> _StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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

    def __init__(self, todo, sampling: ClipSampling, card: ModelCard, options: ExtractOptions, workers: int,
                 runner: ModelRunner, writer: FeatureWriter, report: ExtractReport, progress: Progress,
                 stop: _StopOnCtrlC, probe: _DurationProbe) -> None:  # fmt: skip
        self.todo, self.sampling, self.card, self.options = todo, sampling, card, options
        self.runner, self.stop, self.probe = runner, stop, probe
        pre = card.preprocess
        self.clip_bytes = options.crops * pre.num_frames * pre.crop_size**2 * 3  # uint8 crops of one clip
        fitted = shm.plan(workers, PREFETCH, runner.batch_size, self.clip_bytes)
        if fitted.note:
            import sys

            print(fitted.note, file=sys.stderr)
        self.workers, self.prefetch, runner.batch_size = fitted.workers, fitted.prefetch, fitted.batch
        self.threads = max(1, (os.cpu_count() or 2) // max(1, self.workers))  # FFmpeg threads per decoder
        self.collector = _Collector(todo, card, runner, writer, report, progress)

    def run(self) -> None:
        collector, stop = self.collector, self.stop
        pending = [(i, v.path) for i, (v, _) in enumerate(self.todo)]
        isolate: list[tuple[int, Path]] = []  # suspects of a crash, each to be retried alone
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
                    isolate += [(j, p) for j, p in pending if j in suspects]
                    pending = [(j, p) for j, p in pending if j not in suspects]
                pending = [(j, p) for j, p in pending if j not in collector.finished]
            if full:  # out of the handler, so that no traceback keeps the loader's workers alive
                items = loader = None
                collector.flush()  # the videos received whole are kept
                raise shm.ShmFull(full)
