"""The extraction driver: plan the run from the store and the model card, open the writer, hand
the videos to an executor, finalise the file, summarise.

::

    driver (this module)                         executor
    ------------------------------------------   ----------------------------------------------
    options, model card, clip sampling           local (vidfeat.pipeline.local): decode workers
    FeatureWriter: resume or refuse the output   in DataLoader processes -> one ModelRunner
    plan: skip videos done, record missing ones  ray (vidfeat.pipeline.ray): one ModelRunner per
    progress, Ctrl-C and SIGTERM                 Ray actor, videos handed out one at a time
    record each finished video                <- (video, VideoResult) as each video finishes
    finalize the file, count statuses

An executor has three methods: ``setup(options, progress)`` returns the options the run will
use (the decoder that will actually decode, and for Ray the precision of its actors), which
the file then records; ``workers(todo)`` says how many decode processes (or actors) it runs;
``run(job)`` embeds every video of ``job.todo`` and calls ``job.record`` for each.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from ..errors import VidfeatError
from ..model.cards import DEFAULT_MODEL, ModelCard
from ..store import FeatureWriter, VideoResult, stored_settings, summarize
from ..store.format import SHARD_FILE_RE
from ..video.inputs import VideoFile, identity_mtime
from ..video.sampling import ClipSampling
from .progress import Progress

__all__ = ["ExtractOptions", "ExtractReport", "Job", "StopOnSignal", "extract", "failures_exit_code", "stored_root",
           "with_root"]  # fmt: skip


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
    root: str | None = None  # absolute folder the video names are relative to (vidfeat.video.inputs.Inputs.root)


def failures_exit_code(status_counts: dict[str, int]) -> int:
    """The exit status of a finished run from the videos of its output by status: 3 when the
    file holds failed or partial videos (from this run or an earlier one), else 0."""
    return 3 if status_counts.get("failed") or status_counts.get("partial") else 0


@dataclass
class ExtractReport:
    output: Path
    skipped: int = 0  # already done by an earlier run
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "partial": 0, "failed": 0})  # this run
    in_file: dict[str, int] = field(default_factory=dict)  # videos by status in the output after the run
    clips: int = 0
    interrupted: bool = False
    # Stopped by SIGTERM: what finished is committed in the work directory, the final file is not
    # assembled (its time grows with the file; a scheduler's grace period does not).
    terminated: bool = False
    # Interrupted (Ctrl-C) where finishing would rewrite the whole existing file (the run replaces
    # videos it holds): committed as after SIGTERM, the file left as it was for the rerun.
    deferred: bool = False
    # The status when the output holds failed or partial videos. A torchrun rank says 0: torchrun
    # takes any other status of one rank as that rank's failure and stops the others (rank 0 may
    # be merging); `--gpus` reads the 3 off the final file instead.
    failures_exit: int = 3

    @property
    def exit_code(self) -> int:
        """143: stopped by SIGTERM; 130: interrupted; 3: the output holds failed or partial
        videos (from this run or an earlier one); 0: every video in the output is ok."""
        if self.terminated:
            return 128 + signal.SIGTERM
        if self.interrupted:
            return 130
        return self.failures_exit if failures_exit_code(self.in_file) else 0


@dataclass
class Job:
    """What an executor works on: the videos still to do, and where their results go."""

    todo: list  # (VideoFile, InPlaceStat) pairs; a video's id is its index here
    card: ModelCard
    sampling: ClipSampling
    options: ExtractOptions
    writer: FeatureWriter
    report: ExtractReport
    progress: Progress
    prepared: object = None  # the model's prepare_model result, for an executor that builds it here
    stop: StopOnSignal | None = None

    def record(self, vid: int, result: VideoResult, decode_sec: float, model_sec: float) -> None:
        """Hand a finished video to the writer and count and show it (``vid``: its index in ``todo``)."""
        meta = self.todo[vid][0].meta
        if meta and not result.meta:
            result = replace(result, meta=meta)
        self.writer.add(result)
        self.report.counts[result.status] += 1
        self.report.clips += result.num_clips
        if result.status != "ok":
            self.progress.failure(result.path, result.status, result.error)
        if result.warning:
            self.progress.warning(result.path, result.warning)
        self.progress.video_done(vid, result.size_bytes, result.duration_sec, decode_sec, model_sec)


def extract(videos: list[VideoFile], output: Path, options: ExtractOptions, progress: Progress | None = None,
            executor=None) -> ExtractReport:  # fmt: skip
    """Extract every video of ``videos`` into ``output`` (resuming what an earlier run finished).

    ``videos`` and ``options.root`` come from :func:`vidfeat.video.inputs.discover` (``Inputs.videos``
    and ``Inputs.root``), called with ``root=stored_root(output)`` for an existing output so that
    names stay those of the earlier runs. ``executor``: who embeds the videos (default: a
    :class:`vidfeat.pipeline.local.LocalExecutor`; :class:`vidfeat.pipeline.ray.RayExecutor`)."""
    from ..model.weights import prepare_model

    if executor is None:
        from .local import LocalExecutor

        executor = LocalExecutor()
    options = with_root(options, videos)
    if options.decoder != "pyav" and any(v.source is not None for v in videos):
        raise VidfeatError(
            f"--decoder {options.decoder} reads local files only: videos in tar shards or object storage are decoded "
            "with --decoder pyav"
        )
    progress = progress or Progress(enabled=False)
    options = executor.setup(options, progress)
    prepared = prepare_model(options.model, num_frames=options.num_frames)  # built only if work is left
    card = prepared.card
    sampling = ClipSampling(card.preprocess.num_frames, options.fps or card.preprocess.fps, options.stride_sec)
    report = ExtractReport(output=output)

    with open_writer(output, card, sampling, options, prepared.embedding_dim) as writer:
        todo = plan(videos, writer, report, progress)
        job = Job(todo, card, sampling, options, writer, report, progress, prepared)
        del prepared  # the executor may drop the job's reference once it has built the model
        progress.start(total=len(todo), total_bytes=sum(st.st_size for _, st in todo), skipped=report.skipped,
                       workers=executor.workers(todo))  # fmt: skip
        try:
            if todo:
                with StopOnSignal() as job.stop:
                    executor.run(job)
        except KeyboardInterrupt:
            report.interrupted = True
            report.terminated = job.stop is not None and job.stop.terminated
        finally:
            progress.close()
        # Leaving the block commits what finished. After SIGTERM, or a Ctrl-C whose finish would
        # rewrite the whole file, the assembly waits for the rerun: the run exits within seconds.
        report.deferred = report.interrupted and not report.terminated and writer.finalize_rewrites()
        if not (report.terminated or report.deferred):
            writer.finalize()
    report.in_file = summarize(output)["status"] if output.exists() else {}
    return report


def _settings(card: ModelCard, sampling: ClipSampling, options: ExtractOptions) -> dict:
    """The root attributes that define the result (a rerun must match them to resume)."""
    from .runner import resolve_device

    pre = card.preprocess
    _, dtype = resolve_device(options)
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
        "decoder": options.decoder,  # what decoded: the decoders give slightly other pixels, so other numbers
        "root": str(options.root or ""),  # video names are relative to it (vidfeat.video.inputs); "": not given
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
        if not v.local:
            continue
        full = Path(os.path.abspath(v.path))
        depth = len(v.name.split("/"))
        if full.as_posix().endswith(v.name):
            roots.add(str(full.parents[depth - 1]))
    return roots.pop() if len(roots) == 1 else None


def open_writer(output: Path, card: ModelCard, sampling: ClipSampling, options: ExtractOptions,
                embedding_dim: int) -> FeatureWriter:  # fmt: skip
    """The run's writer: resumes ``output`` or refuses it when it was made with other settings.
    A shard's file (``IIIII-of-NNNNN.h5``) is always one plain file: merge reads it in path order."""
    return FeatureWriter(
        output,
        settings=_settings(card, sampling, options),
        classes=card.classes,
        embedding_dim=embedding_dim,
        embedding_dtype=options.embedding_dtype,
        overwrite=options.overwrite,
        retry_failed=options.retry_failed,
        flush_seconds=options.commit_seconds,
        grow=SHARD_FILE_RE.match(output.name) is None,
    )


class InPlaceStat(NamedTuple):
    """The resume key of a video to do: a local file's size and modification time, or for a
    video read in place its size and its identity (ETag, modification time, or a tar member's
    place) hashed to a float (:func:`vidfeat.video.inputs.identity_mtime`)."""

    st_size: int
    st_mtime: float


def plan(videos: list[VideoFile], writer: FeatureWriter, report: ExtractReport, progress: Progress):
    """The ``(video, stat)`` pairs still to do. Videos done by an earlier run are counted as
    skipped; a listed file that is missing now is recorded as failed, unless an earlier run
    already has its result (a file gone now cannot be redone: its row is kept). A damaged
    shard's placeholder (``VideoFile.error``) is recorded as failed, once for the same damage."""
    todo: list[tuple[VideoFile, InPlaceStat]] = []
    for v in videos:
        if v.error:
            key = (0, identity_mtime(v.identity))
            if writer.is_done(v.name, *key):
                report.skipped += 1
                continue
            writer.add(VideoResult(path=v.name, status="failed", error=v.error, size_bytes=key[0], mtime=key[1]))
            report.counts["failed"] += 1
            progress.failure(v.name, "failed", v.error)
            continue
        if v.source is not None:
            st = InPlaceStat(int(v.size or 0), identity_mtime(v.identity))
            if writer.is_done(v.name, st.st_size, st.st_mtime):
                report.skipped += 1
            else:
                todo.append((v, st))
            continue
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
            todo.append((v, InPlaceStat(st.st_size, st.st_mtime)))  # the key only: os.stat_result is ~4x its size
    return todo


class StopOnSignal:
    """The first SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop, SLURM's time limit) only asks
    the run to stop; the executor then raises KeyboardInterrupt at a safe point (between loader
    items). Python's default raises it wherever the main process happens to be, for instance
    inside a garbage-collector callback, which prints a traceback and swallows the interrupt,
    and SIGTERM's default kills the process with its last finished videos uncommitted. A second
    signal interrupts at once. Outside the main thread (a library caller's thread) signals
    cannot be handled and nothing changes. ``terminated``: the stop came from SIGTERM."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.terminated = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.terminated = signum == signal.SIGTERM

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
