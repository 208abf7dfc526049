"""Where and how a model runs: device and precision resolution, the crop rule, one-line reasons.

Extraction, evaluation and training all decide these things here, once. torch is imported inside
the functions so that reading a recipe (which checks a precision name) stays light.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from ..errors import ConfigError, one_line  # noqa: F401 - vidfeat.model.runtime.one_line, the one rule

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "PRECISIONS", "autocast_dtype", "combine_views", "device_name_problem", "one_line", "resolve_device"]

DEVICES = "auto, cpu, cuda or cuda:N"  # the device names resolve_device accepts
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def device_name_problem(name: str | None) -> str | None:
    """None when ``name`` is one of :data:`DEVICES` (None counts as ``auto``; case and spaces
    around it do not matter), else the one-line reason. The one rule for device names: the
    ``--device`` options and the recipes' ``run.device`` are both checked here."""
    name = "auto" if name is None else str(name).strip().lower()
    match = _DEVICE.fullmatch(name)
    if match is None or (match[2] is not None and match[1] != "cuda"):
        return f"unknown device {name!r}: use {DEVICES}"
    return None


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The torch device of a ``--device`` / ``run.device`` value.

    ``auto`` (or None): the CUDA device of this rank when CUDA is available, else the CPU. Any
    other value than :data:`DEVICES`, or CUDA asked for where there is none, is a one-line
    :class:`ConfigError`.
    """
    import torch

    problem = device_name_problem(name)
    if problem:
        raise ConfigError(problem)
    name = "auto" if name is None else str(name).strip().lower()
    match = _DEVICE.fullmatch(name)
    assert match is not None
    kind, index = match[1], match[2]
    if kind == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here: use cpu or auto")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but there are only {torch.cuda.device_count()} CUDA devices")
    return torch.device(name)


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting (one of :data:`PRECISIONS`), None for fp32.

    ``auto`` (or None): bf16 on CUDA, full precision on the CPU (CPU autocast only when asked
    for). ``vidfeat extract --dtype`` and the recipes' ``run.precision`` both resolve here.
    """
    import torch

    precision = "auto" if precision is None else precision
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def combine_views(
    logits: torch.Tensor, views: int, embeddings: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The crop rule: ``views`` consecutive rows of each clip -> one row per clip.

    ``logits``: ``(n*views, k)``; ``embeddings``: ``(n*views, d)`` or None. Returns ``(scores,
    embeddings)``, ``(n, k)`` and ``(n, d)`` float32. The scores are class scores whose softmax is
    the softmax probabilities averaged over the views (the official test protocol): the log of
    that average, or the logits themselves for one view. Embeddings are the mean over the views.
    """
    import torch

    logits = logits.float()
    if views == 1:
        scores = logits
    else:
        log_probs = torch.log_softmax(logits, dim=-1).view(-1, views, logits.shape[-1])
        scores = torch.logsumexp(log_probs, dim=1) - math.log(views)
    if embeddings is not None:
        embeddings = embeddings.float().view(-1, views, embeddings.shape[-1]).mean(dim=1)
    return scores, embeddings
