"""The per-GPU model runner that local runs, torchrun ranks and Ray actors all use.

:meth:`ModelRunner.setup` builds the model on the run's device, fits the batch size (the largest
that fits, :mod:`vidfeat.pipeline.batchsize`), compiles it if asked and fixes the precision.
:class:`Batcher` then gathers clips into batches and keeps one batch in flight: the model step
for batch k+1 is queued before the results of batch k are read back, so the GPU does not wait
for Python.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from ..model.timesformer import TimeSformer
from ..video.transforms import Normalize

__all__ = ["ModelRunner", "Batcher", "resolve_device", "auto_batch_size"]


def resolve_device(options) -> tuple[torch.device, torch.dtype]:
    """The device and model precision of a run's ``options`` (an ExtractOptions)."""
    from ..model.runtime import autocast_dtype
    from ..model.runtime import resolve_device as device_of

    device = device_of(options.device)
    return device, autocast_dtype(options.dtype, device) or torch.float32


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
        from ..model.runtime import combine_views

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



    @classmethod
    def setup(cls, options, prepared=None) -> ModelRunner:
        """The runner of a run's ``options`` (an ExtractOptions): the model built on its device
        (from ``prepared``, a :func:`vidfeat.model.weights.prepare_model` result, else from
        ``options.model``), at its precision, compiled if asked, with its batch size (fitted to
        the device when ``options.batch_size`` is None)."""
        from ..model.weights import prepare_model

        device, dtype = resolve_device(options)
        if prepared is None:
            prepared = prepare_model(options.model, num_frames=options.num_frames)
        model = prepared.build(device)
        batch = options.batch_size or auto_batch_size(model, device, options.crops, dtype, options.compile)
        return cls(model, device, dtype, options.crops, batch, compile=options.compile)


def auto_batch_size(
    model: TimeSformer, device: torch.device, crops: int, dtype: torch.dtype | None = None, compile: bool = False
) -> int:
    """Clips per model step: the largest that fits with a margin (see :mod:`vidfeat.pipeline.batchsize`);
    out-of-memory still halves it later. ``dtype`` None: bf16 on CUDA."""
    from .batchsize import find_batch_size

    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return find_batch_size(model, device, dtype, crops, compiled=compile)


class Batcher:
    """Gathers clips (items with ``crops``, ``video`` and ``index``) into batches of the runner's
    batch size and keeps one batch in flight. Each clip's results go to ``done(item, embedding,
    logits)`` once they are read back, in the order the clips were added."""

    def __init__(self, runner: ModelRunner, done: Callable[[object, np.ndarray, np.ndarray], None]) -> None:
        self.runner, self.done = runner, done
        self.batch: list = []
        self.in_flight = None  # (items, handle): the batch the model is working on

    def add(self, item) -> None:
        self.batch.append(item)
        if len(self.batch) >= self.runner.batch_size:
            self.submit()

    def submit(self) -> None:
        """Queue the current batch, then read back the previous one (the model never waits)."""
        handle = self.runner.submit([b.crops for b in self.batch]) if self.batch else None
        for b in self.batch:  # copied into the model's batch: free their shared memory now (vidfeat.pipeline.shm)
            b.crops = None
        if self.in_flight:
            self._drain(self.in_flight)
        self.in_flight, self.batch = ((self.batch, handle) if handle else None), []

    def flush(self) -> None:
        """Run the last partial batch and read back every result."""
        self.submit()  # queue the last partial batch (reading back the one before it)
        if self.in_flight:
            self._drain(self.in_flight)
            self.in_flight = None

    def discard(self, video: int) -> None:
        """Drop the clips of ``video`` not yet submitted."""
        self.batch = [b for b in self.batch if b.video != video]

    def _drain(self, flight) -> None:
        items, handle = flight
        feats, logits = self.runner.collect(handle)
        for item, f, lg in zip(items, feats, logits):
            self.done(item, f, lg)
