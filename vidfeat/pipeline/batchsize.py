"""The default batch size of a model step: the largest that fits in the accelerator's memory
with a margin, measured once per model, input size and device and remembered on disk.

On CUDA two probe forwards (``PROBE`` clips and twice that) give the peak memory as
``fixed + per_clip * batch`` (weights and workspace, plus activations that grow with the batch);
the batch is then the largest that keeps the peak under ``MARGIN`` of the memory free before the
probes, capped at ``MAX_BATCH`` and rounded down to a multiple of 8 when larger than 8 (matmul
shapes the kernels like). The result is stored in ``batch_sizes.json`` in the cache folder, keyed
by everything that changes it (:func:`cache_key`), so a later run starts at once. The CPU has no
such limit: 4 clips a step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..model.cards import vidfeat_home

__all__ = ["CPU_BATCH", "MARGIN", "MAX_BATCH", "PROBE", "cache_key", "fit_batch", "find_batch_size", "cache_file"]

CPU_BATCH = 4
MARGIN = 0.85  # share of the free memory the peak may take
MAX_BATCH = 256
PROBE = 2  # clips in the first probe forward; the second runs twice as many


def cache_file() -> Path:
    """``batch_sizes.json`` in vidfeat's home (:func:`vidfeat.model.cards.vidfeat_home`)."""
    return vidfeat_home() / "batch_sizes.json"


def fit_batch(peak_bytes: Callable[[int], int], free_bytes: int, probe: int = PROBE) -> int:
    """The largest batch whose predicted peak stays under ``MARGIN * free_bytes``.

    ``peak_bytes(b)`` runs one step of ``b`` clips and returns its peak memory; it is called for
    ``probe`` and ``2 * probe`` clips. Returns at least 1 (a model that does not fit one clip fails
    on its own first step with the out-of-memory error)."""
    low, high = peak_bytes(probe), peak_bytes(2 * probe)
    per_clip = max(1, (high - low) // probe)
    fixed = low - per_clip * probe
    batch = int((MARGIN * free_bytes - fixed) // per_clip)
    batch = max(1, min(MAX_BATCH, batch))
    return batch - batch % 8 if batch > 8 else batch


def cache_key(model, device: torch.device, dtype: torch.dtype, crops: int, compiled: bool = False) -> str:
    """Everything the fitted batch depends on: architecture, input size, dtype, crops, compile,
    the device's name and total memory, and the torch version."""
    c = model.config
    frames = model.card.preprocess.num_frames if getattr(model, "card", None) else c.num_frames
    size = model.card.preprocess.crop_size if getattr(model, "card", None) else c.img_size
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name}/{props.total_memory}"
    else:
        where = device.type
    arch = f"{c.attention_type}-d{c.embed_dim}x{c.depth}h{c.num_heads}p{c.patch_size}m{c.mlp_ratio}"
    return f"{arch}|{frames}x{size}|{str(dtype).removeprefix('torch.')}|crops{crops}|compile{int(compiled)}|{where}|torch{torch.__version__}"


def _read(path: Path) -> dict:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def _write(path: Path, values: dict) -> None:
    """Best effort (a read-only home must not stop a run); atomic so readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(values, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def find_batch_size(
    model,
    device: torch.device,
    dtype: torch.dtype,
    crops: int,
    forward: Callable[[torch.Tensor], object] | None = None,
    compiled: bool = False,
    cache: Path | None = None,
) -> int:
    """Clips per model step for ``model`` on ``device`` (see the module docstring).

    ``forward`` is what a step runs on a normalised ``(b, c, t, s, s)`` input (default: the
    model's ``forward_features`` then ``forward_head`` under autocast to ``dtype``)."""
    if device.type != "cuda":
        return CPU_BATCH
    cache = cache or cache_file()
    key = cache_key(model, device, dtype, crops, compiled)
    known = _read(cache)
    if isinstance(known.get(key), int) and known[key] > 0:
        return known[key]

    c = model.config
    frames, size = model.card.preprocess.num_frames, model.card.preprocess.crop_size

    def step(x: torch.Tensor):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model.forward_head(model.forward_features(x))

    forward = forward or step

    @torch.inference_mode()
    def peak_bytes(batch: int) -> int:
        x = torch.zeros(batch * crops, c.in_chans, frames, size, size, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del x
        return peak

    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    # Memory this process already holds (the weights) is in the peaks, and no longer free.
    batch = fit_batch(peak_bytes, free + torch.cuda.memory_allocated(device))
    torch.cuda.empty_cache()
    known[key] = batch
    _write(cache, known)
    return batch
