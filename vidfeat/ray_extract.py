"""``vidfeat extract --ray``: videos handed out dynamically to Ray actors (optional extra
``vidfeat[ray]``).

::

    driver (this process)                           Ray actors (one per GPU, or per CPU slot)
    -------------------------------------------     -----------------------------------------
    list videos, skip those already done        ->  _Embedder: model loaded once on its device,
    keep 2 videos queued on every actor             a decode worker process (DataLoader over
    results (a few KB a clip) -> FeatureWriter  <-  ClipStream), ModelRunner batches
    (today's chunk files, resume, failure table)    one VideoResult a video

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
from pathlib import Path

from .errors import VidfeatError, one_line, traceback_reason

__all__ = ["extract_ray"]

_QUEUED_PER_ACTOR = 2  # one video running, one waiting: the actor never waits for the driver
_MAX_ATTEMPTS = 3  # actors that may die on one video before it counts as failed
NAMESPACE = "vidfeat"


class _Embedder:
    """Holds the model on its device; embeds one video per call (the Ray actor's class)."""

    def __init__(self, options, use_gpu: bool, threads: int) -> None:
        import torch

        from .clips import ClipSampling
        from .extract import ModelRunner, _auto_batch_size, _resolve_device, usable_decoder
        from .weights import load_model

        torch.set_num_threads(max(1, threads))
        if use_gpu:
            options.device = options.device or "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        device, dtype = _resolve_device(options)
        model = load_model(options.model, num_frames=options.num_frames, device=device)
        self.card = model.card
        self.options = options
        self.sampling = ClipSampling(self.card.preprocess.num_frames, options.fps or self.card.preprocess.fps,
                                     options.stride_sec)  # fmt: skip
        batch = options.batch_size or _auto_batch_size(model, device, options.crops, dtype, options.compile)
        self.runner = ModelRunner(model, device, dtype, options.crops, batch, compile=options.compile)
        self.decoder = usable_decoder(options.decoder, device)  # NVDEC on this actor's GPU, else PyAV
        self.threads = max(1, threads)

    def pid(self) -> int:
        return os.getpid()

    def embed(self, job):
        """``job``: (id, name, path, size_bytes, mtime) -> (id, VideoResult, decode_sec, model_sec)."""
        from torch.utils.data import DataLoader

        from .extract import PREFETCH, ClipItem, ClipStream, VideoEnd, crash_reason, video_result

        vid, name, path, size, mtime = job
        stream = ClipStream([(0, Path(path))], self.sampling, self.card, self.options.crops, self.threads,
                            decoder=self.decoder)  # fmt: skip
        workers = 1 if (self.options.workers is None or self.options.workers > 0) else 0
        loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=PREFETCH if workers else None,
                            multiprocessing_context="spawn" if self.decoder == "nvdec" and workers else None)  # fmt: skip
        rows, batch, end = [], [], None

        def run(items):
            feats, logits = self.runner.collect(self.runner.submit([b.crops for b in items]))
            rows.extend((i.index, f, lg, i.start_sec, i.end_sec, i.valid_frames) for i, f, lg in zip(items, feats, logits))

        try:
            for item in loader:
                if isinstance(item, VideoEnd):
                    end = item
                elif isinstance(item, ClipItem):
                    batch.append(item)
                    if len(batch) >= self.runner.batch_size:
                        run(batch)
                        batch = []
        except RuntimeError as exc:  # the decode worker died (a crash inside FFmpeg on this file)
            if "DataLoader worker" not in str(exc):
                raise
            return vid, _failed(job, crash_reason(exc)), 0.0, self.runner.model_sec
        if batch:
            run(batch)
        rows.sort(key=lambda r: r[0])
        dim, classes = self.runner.model.num_features, len(self.card.classes)
        return vid, video_result(name, size, mtime, end, rows, dim, classes), end.decode_sec, self.runner.model_sec


def _failed(job, reason: str):
    """The result of a video that failed as a whole (``job``: (id, name, path, size_bytes, mtime))."""
    from .store import VideoResult

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


def extract_ray(videos, output: Path, options, progress=None, *, address: str | None = None, actors: int | None = None,
                echo=print):  # fmt: skip
    """Extract ``videos`` into ``output`` with Ray actors; same file as :func:`vidfeat.extract.extract`.

    ``address``: a Ray cluster (None: ``RAY_ADDRESS`` or a new local cluster; an already
    initialised Ray is used as is). ``actors``: how many (default: one per GPU of the cluster,
    else one per CPU when decoding in the actor, ``--workers 0``, or per two CPUs).
    """
    import copy

    from .clips import ClipSampling
    from .extract import ExtractReport, open_writer, plan, record, with_root
    from .progress import Progress
    from .store import summarize
    from .weights import prepare_model

    options = with_root(options, videos)
    ray = _connect(address)
    prepared = prepare_model(options.model, num_frames=options.num_frames)  # the card and width; the actors build it
    card, embedding_dim = prepared.card, prepared.embedding_dim
    del prepared
    sampling = ClipSampling(card.preprocess.num_frames, options.fps or card.preprocess.fps, options.stride_sec)
    progress = progress or Progress(enabled=False)
    report = ExtractReport(output=output)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if options.device in (None, "cuda") or str(options.device).startswith("cuda") else 0
    cpus_each = 1 if options.workers == 0 else 2
    count = actors or (gpus if gpus else max(1, int(resources.get("CPU", 1)) // cpus_each))
    with open_writer(output, card, sampling, options, embedding_dim) as writer:
        todo = plan(videos, writer, report, progress)
        pending = deque((vid, v.name, os.path.abspath(v.path), st.st_size, st.st_mtime) for vid, (v, st) in enumerate(todo))
        sizes = {job[0]: job[3] for job in pending}
        echo(f"ray: {count} actors ({'1 GPU' if gpus else f'{cpus_each} CPU'} each) for {len(pending)} videos")
        progress.start(total=len(pending), total_bytes=sum(sizes.values()), skipped=report.skipped, workers=count)
        actor_class = ray.remote(num_cpus=cpus_each, num_gpus=1 if gpus else 0)(_Embedder)
        started = 0

        def start_actor():
            nonlocal started
            opts = copy.copy(options)
            handle = actor_class.options(name=f"vidfeat-embedder-{started}", namespace=NAMESPACE,
                                         lifetime=None).remote(opts, bool(gpus), cpus_each)  # fmt: skip
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
                        job = pending.popleft()
                        queued[actor.embed.remote(job)] = (actor, job)
                if not queued:
                    raise VidfeatError("every Ray actor died: see the Ray logs (ray logs / /tmp/ray)")
                done, _ = ray.wait(list(queued), num_returns=1)
                actor, job = queued.pop(done[0])
                try:
                    vid, result, decode_sec, model_sec[actor] = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:  # a bug in the actor: this video fails, the run goes on
                    result = _failed(job, f"internal error in the Ray actor: {one_line(exc.cause)[:200]}")
                    decode_sec = 0.0
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    if getattr(exc, "actor_init_failed", False):  # every actor would fail the same way
                        reason = one_line(traceback_reason(str(exc))) or type(exc).__name__
                        raise VidfeatError(f"the Ray actors cannot start: {reason[:300]}") from None
                    attempts[job[0]] = attempts.get(job[0], 0) + 1
                    if actor in alive:  # the first of its videos to fail: replace the actor
                        alive.remove(actor)
                        if started < count + 2 * count * _MAX_ATTEMPTS:
                            alive.append(start_actor())
                    if attempts[job[0]] < _MAX_ATTEMPTS:
                        pending.appendleft(job)
                        continue
                    result = _failed(job, f"the Ray actor died {_MAX_ATTEMPTS} times on this video ({type(exc).__name__})")
                    decode_sec = 0.0
                record(job[0], result, writer, report, progress, decode_sec, sum(model_sec.values()))
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            progress.close()
            for actor in alive:
                ray.kill(actor)
        writer.finalize()
    report.in_file = summarize(output)["status"]
    return report
