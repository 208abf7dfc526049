"""``vidfeat extract --ray``: videos handed out dynamically to Ray actors (optional extra
``vidfeat[ray]``).

::

    driver (vidfeat.pipeline.driver)                Ray actors (one per GPU, or per CPU slot)
    -------------------------------------------     -----------------------------------------
    list videos, skip those already done        ->  _Embedder: ModelRunner.setup once on its
    RayExecutor: keep 2 videos queued on every      device, a decode worker process (DataLoader
    actor                                           over ClipStream), one batch in flight
    results (a few KB a clip) -> FeatureWriter  <-  one VideoResult a video
    (chunk files, resume, failure table)

Long videos do not pile up behind one GPU: an actor gets its next video when it has finished
one. An actor that dies (a lost node, a crash inside FFmpeg) has its queued videos handed to the
others and is replaced; a video on which actors died ``_MAX_ATTEMPTS`` times is recorded as failed.
Only Ray's own APIs move work and results (actors, ``ray.wait``, ``ray.get``).

Actors are named ``vidfeat-embedder-<n>`` in the Ray namespace ``vidfeat``, so they can be
inspected (``ray list actors``).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import replace
from pathlib import Path

from ..errors import VidfeatError, one_line, traceback_reason

__all__ = ["RayExecutor", "extract_ray"]

_QUEUED_PER_ACTOR = 2  # one video running, one waiting: the actor never waits for the driver
_MAX_ATTEMPTS = 3  # actors that may die on one video before it counts as failed
NAMESPACE = "vidfeat"
_WAIT_SEC = 1.0  # the driver checks for Ctrl-C at least this often while the actors work


class _Embedder:
    """Holds the model on its device; embeds one video per call (the Ray actor's class).
    ``options`` are the run's, its decoder already the one the file records."""

    def __init__(self, options, use_gpu: bool, threads: int) -> None:
        import torch

        from ..video.decoders import nvdec_unavailable
        from ..video.sampling import ClipSampling
        from .runner import ModelRunner, resolve_device
        from .workers import usable_decoder

        torch.set_num_threads(max(1, threads))
        if use_gpu:
            options.device = options.device or "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        device, _ = resolve_device(options)
        if options.decoder == "nvdec":  # the file records nvdec: every actor must decode with it
            reason = "the model runs on the CPU" if device.type != "cuda" else nvdec_unavailable(device.index or 0)
            if reason:
                raise VidfeatError(f"NVDEC is not available on a Ray actor ({reason}): rerun with --decoder pyav")
        self.decoder = usable_decoder(options.decoder, device)
        self.runner = ModelRunner.setup(options)
        self.card = self.runner.model.card
        self.options = options
        self.sampling = ClipSampling(self.card.preprocess.num_frames, options.fps or self.card.preprocess.fps,
                                     options.stride_sec)  # fmt: skip
        self.threads = max(1, threads)

    def pid(self) -> int:
        return os.getpid()

    def embed(self, job):
        """``job``: (id, name, path, size_bytes, mtime) -> (id, VideoResult, decode_sec, model_sec)."""
        from torch.utils.data import DataLoader

        from .runner import Batcher
        from ..video.source import is_opener
        from .workers import PREFETCH, ClipItem, ClipStream, VideoEnd, crash_reason, video_result

        vid, name, path, size, mtime = job
        source = path if is_opener(path) else Path(path)  # a video read in place is opened by the decode worker
        stream = ClipStream([(0, source, None)], self.sampling, self.card, self.options.crops, self.threads,
                            decoder=self.decoder)  # fmt: skip
        workers = 1 if (self.options.workers is None or self.options.workers > 0) else 0
        loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=PREFETCH if workers else None,
                            multiprocessing_context="spawn" if self.decoder == "nvdec" and workers else None)  # fmt: skip
        rows, end = [], None
        batcher = Batcher(self.runner, lambda i, f, lg: rows.append((i.index, f, lg, i.start_sec, i.end_sec, i.valid_frames)))
        try:
            for item in loader:
                if isinstance(item, VideoEnd):
                    end = item
                elif isinstance(item, ClipItem):
                    batcher.add(item)
        except RuntimeError as exc:  # the decode worker died (a crash inside FFmpeg on this file)
            if "DataLoader worker" not in str(exc):
                raise
            return vid, _failed(job, crash_reason(exc)), 0.0, self.runner.model_sec
        batcher.flush()
        rows.sort(key=lambda r: r[0])
        dim, classes = self.runner.model.num_features, len(self.card.classes)
        return vid, video_result(name, size, mtime, end, rows, dim, classes), end.decode_sec, self.runner.model_sec


def _failed(job, reason: str):
    """The result of a video that failed as a whole (``job``: (id, name, path, size_bytes, mtime))."""
    from ..store import VideoResult

    _, name, _, size, mtime = job
    return VideoResult(path=name, status="failed", error=reason, size_bytes=size, mtime=mtime)


def _connect(address: str | None):
    try:
        import ray
    except ImportError:
        raise VidfeatError("--ray needs Ray: pip install 'vidfeat[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace=NAMESPACE, include_dashboard=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise VidfeatError(f"cannot reach the Ray cluster {address or '(RAY_ADDRESS or local)'}: "
                               f"{one_line(exc)[:200]}") from exc  # fmt: skip
    return ray


class RayExecutor:
    """Embeds a run's videos with Ray actors (see the module docstring), for
    :func:`vidfeat.pipeline.driver.extract`.

    ``address``: a Ray cluster (None: ``RAY_ADDRESS`` or a new local cluster; an already
    initialised Ray is used as is). ``actors``: how many (default: one per GPU of the cluster,
    else one per CPU when decoding in the actor, ``--workers 0``, or per two CPUs). ``echo``
    gets the start-up line.
    """

    def __init__(self, *, address: str | None = None, actors: int | None = None, echo=lambda line: None) -> None:
        self.address, self.actors, self.echo = address, actors, echo
        self.ray = None
        self.gpus = self.count = 0
        self.cpus_each = 2

    def setup(self, options, progress):
        """Connect; ``options`` with the decoder and precision of the actors (the file records them)."""
        import torch

        from .workers import usable_decoder

        ray = self.ray = _connect(self.address)
        resources = ray.cluster_resources()
        on_gpus = options.device in (None, "cuda") or str(options.device).startswith("cuda")
        self.gpus = int(resources.get("GPU", 0)) if on_gpus else 0
        self.cpus_each = 1 if options.workers == 0 else 2
        self.count = self.actors or (self.gpus if self.gpus else max(1, int(resources.get("CPU", 1)) // self.cpus_each))
        decoder = options.decoder
        if not (decoder == "nvdec" and self.gpus):  # NVDEC on the actors' GPUs is checked by each actor
            decoder = usable_decoder(decoder, torch.device("cuda" if self.gpus else "cpu"), progress.note)
        dtype = options.dtype or ("bf16" if self.gpus else "fp32")  # the actors' precision, not this process's
        return replace(options, decoder=decoder, dtype=dtype)

    def workers(self, todo) -> int:
        self.echo(f"ray: {self.count} actors ({'1 GPU' if self.gpus else f'{self.cpus_each} CPU'} each) for {len(todo)} videos")
        return self.count

    def run(self, job) -> None:
        import copy

        ray, count, options = self.ray, self.count, job.options
        job.prepared = None  # the actors build the model
        pending = deque((vid, v.name, v.source if v.source is not None else os.path.abspath(v.path), st.st_size, st.st_mtime)
                        for vid, (v, st) in enumerate(job.todo))  # fmt: skip
        actor_class = ray.remote(num_cpus=self.cpus_each, num_gpus=1 if self.gpus else 0)(_Embedder)
        started = 0

        def start_actor():
            nonlocal started
            handle = actor_class.options(name=f"vidfeat-embedder-{started}", namespace=NAMESPACE,
                                         lifetime=None).remote(copy.copy(options), bool(self.gpus), self.cpus_each)  # fmt: skip
            started += 1
            return handle

        alive: list = []
        model_sec: dict = {}  # actor -> its cumulative model time
        try:
            alive += [start_actor() for _ in range(min(count, len(pending)))]
            queued: dict = {}  # ObjectRef -> (actor, job)
            attempts: dict[int, int] = {}
            while pending or queued:
                for actor in alive:
                    while pending and sum(1 for a, _ in queued.values() if a is actor) < _QUEUED_PER_ACTOR:
                        video = pending.popleft()
                        queued[actor.embed.remote(video)] = (actor, video)
                if not queued:
                    raise VidfeatError("every Ray actor died: see the Ray logs (ray logs / /tmp/ray)")
                done, _ = ray.wait(list(queued), num_returns=1, timeout=_WAIT_SEC)
                job.stop.check()  # Ctrl-C: stop between videos
                if not done:
                    continue
                actor, video = queued.pop(done[0])
                try:
                    vid, result, decode_sec, model_sec[actor] = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:  # a bug in the actor: this video fails, the run goes on
                    result = _failed(video, f"internal error in the Ray actor: {one_line(exc.cause)[:200]}")
                    decode_sec = 0.0
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    if getattr(exc, "actor_init_failed", False):  # every actor would fail the same way
                        reason = one_line(traceback_reason(str(exc))) or type(exc).__name__
                        raise VidfeatError(f"the Ray actors cannot start: {reason[:300]}") from None
                    attempts[video[0]] = attempts.get(video[0], 0) + 1
                    if actor in alive:  # the first of its videos to fail: replace the actor
                        alive.remove(actor)
                        if started < count + 2 * count * _MAX_ATTEMPTS:
                            alive.append(start_actor())
                    if attempts[video[0]] < _MAX_ATTEMPTS:
                        pending.appendleft(video)
                        continue
                    result = _failed(video, f"the Ray actor died {_MAX_ATTEMPTS} times on this video ({type(exc).__name__})")
                    decode_sec = 0.0
                job.record(video[0], result, decode_sec, sum(model_sec.values()))
        finally:
            for actor in alive:
                ray.kill(actor)


def extract_ray(videos, output: Path, options, progress=None, *, address: str | None = None, actors: int | None = None,
                echo=lambda line: None):  # fmt: skip
    """Extract ``videos`` into ``output`` with Ray actors: :func:`vidfeat.pipeline.driver.extract`
    with a :class:`RayExecutor` (``address``, ``actors``, ``echo``: see there)."""
    from .driver import extract

    return extract(videos, output, options, progress, RayExecutor(address=address, actors=actors, echo=echo))
