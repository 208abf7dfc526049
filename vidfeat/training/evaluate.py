"""Classification accuracy of a model on labelled videos: top-1, top-5, per class, confusion.

The clip protocol is the model card's preprocessing: the centre clip of each video (or of each
row's ``[start_sec, end_sec]``), 1 centre crop, or 3 crops along the long side combined by
:func:`vidfeat.model.runtime.combine_views` (softmax probabilities averaged, as ``vidfeat extract``
does; the official test protocol uses 3). Training validates with the same
code (:func:`run_eval`), one crop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import DataLoader

from ..pipeline import shm
from ..model.cards import DEFAULT_MODEL, find_card
from .data import ClipDataset, Failed, check_labels, collate, read_entries
from ..errors import ConfigError
from ..model.timesformer import TimeSformer
from ..model.runtime import PRECISIONS, autocast_dtype, combine_views, resolve_device
from ..video.transforms import Normalize
from ..model.weights import load_model

__all__ = [
    "DEFAULT_MODEL",
    "PRECISIONS",
    "Tally",
    "autocast_dtype",
    "evaluate",
    "model_input",
    "resolve_device",
    "run_eval",
]


def model_input(clips: torch.Tensor, normalize: Normalize) -> torch.Tensor:
    """``(b, v, t, h, w, c)`` uint8 batch -> ``(b*v, c, t, h, w)`` normalised float on the
    device of ``normalize`` (built once per run, as extraction does: its mean and std stay there).

    The uint8 clips travel to the device (4x fewer bytes than float) and are normalised there.
    """
    flat = rearrange(clips, "b v t h w c -> (b v) t h w c").to(normalize.device, non_blocking=True)
    return normalize(flat)


@dataclass
class Tally:
    """Counts of an evaluation, summable across batches and ranks."""

    num_classes: int
    confusion: torch.Tensor = field(init=False)  # (C, C) int64: rows true class, columns top-1 prediction
    top5: int = 0  # clips whose label is among the 5 best (all classes when there are fewer)
    loss_sum: float = 0.0  # summed negative log-likelihood of the labels
    failed: list[Failed] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def add(self, log_probs: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: ``(b, C)`` log-probabilities, ``(b,)`` labels."""
        log_probs, labels = log_probs.detach().float().cpu(), labels.cpu()
        best = log_probs.argmax(dim=-1)
        self.confusion += torch.bincount(
            labels * self.num_classes + best, minlength=self.num_classes**2
        ).view(self.num_classes, self.num_classes)
        top = log_probs.topk(min(5, self.num_classes), dim=-1).indices
        self.top5 += int((top == labels[:, None]).any(dim=-1).sum())
        self.loss_sum += float(F.nll_loss(log_probs, labels, reduction="sum"))

    def all_reduce(self) -> None:
        """Sum the counts of every rank (call on all ranks of an initialised process group)."""
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        confusion = self.confusion.to(device)
        totals = torch.tensor([float(self.top5), self.loss_sum], dtype=torch.float64, device=device)
        dist.all_reduce(confusion)
        dist.all_reduce(totals)
        gathered: list[list[Failed]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, self.failed)
        self.confusion = confusion.cpu()
        self.top5, self.loss_sum = int(totals[0]), float(totals[1])
        self.failed = sorted({f.path: f for part in gathered for f in part}.values())

    def summary(self, classes: list[str]) -> dict:
        """top1, top5, loss, count, per-class accuracy (None for a class without clips), the
        confusion matrix, the classes and the videos that could not be decoded."""
        count = self.count
        per_row = self.confusion.sum(dim=1)
        correct = self.confusion.diagonal()
        return {
            "count": count,
            "top1": float(correct.sum()) / count if count else None,
            "top5": self.top5 / count if count else None,
            "loss": self.loss_sum / count if count else None,
            "per_class": {
                name: (float(correct[i]) / int(per_row[i]) if per_row[i] else None) for i, name in enumerate(classes)
            },
            "confusion": self.confusion.tolist(),
            "classes": list(classes),
            "skipped": [{"path": f.path, "reason": f.reason} for f in self.failed],
        }


@torch.no_grad()
def run_eval(
    model: torch.nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    normalize: Normalize,
    ctx: contextlib.AbstractContextManager | None = None,
) -> Tally:
    """Evaluate ``model`` on the clips of ``loader`` (a :class:`ClipDataset` with ``collate``).

    ``normalize``: the model's input normalisation, on the model's device. ``ctx``: the autocast
    context (none: full precision). The model is left in eval mode.
    """
    model.eval()
    tally = Tally(num_classes)
    for batch in loader:
        tally.failed.extend(batch.failed)
        if not len(batch.labels):
            continue
        views = batch.clips.shape[1]
        with ctx or contextlib.nullcontext():
            logits = model(model_input(batch.clips, normalize))
        scores, _ = combine_views(logits, views)
        tally.add(F.log_softmax(scores, dim=-1), batch.labels)
    return tally


def evaluate(
    model_source: str | Path | TimeSformer | None,
    data: str | Path,
    *,
    crops: int = 1,
    batch_size: int = 8,
    workers: int = 2,
    device: str = "auto",
    precision: str = "auto",
    echo=None,
) -> dict:
    """Accuracy of a model on labelled videos (a class-folder tree or a CSV/TSV list).

    ``model_source``: anything ``load_model`` takes, a loaded model with its ``card``, or None for
    :data:`DEFAULT_MODEL`. Every label of ``data`` must be one of the model's classes. Returns the
    :meth:`Tally.summary` dict plus the model name. ``echo``: gets a lowered shared-memory plan in one line.
    """
    if model_source is None:
        if find_card(DEFAULT_MODEL) is None:
            raise ConfigError(
                f"the default model {DEFAULT_MODEL!r} is not bundled with this vidfeat yet: pass --weights "
                "(a run directory of `vidfeat train`, a card name or a checkpoint)"
            )
        model_source = DEFAULT_MODEL
    where = resolve_device(device)
    model = model_source if isinstance(model_source, TimeSformer) else load_model(model_source)
    card = model.card
    if not card.classes or card.config.num_classes == 0:
        raise ConfigError(f"model {card.name!r} has no classifier head: it cannot be evaluated on labels")
    entries = read_entries(data)
    check_labels(entries, card.classes, source=str(data))
    dataset = ClipDataset(entries, card.classes, card.preprocess, crops=crops)
    pre = card.preprocess
    batch_bytes = batch_size * shm.clip_bytes(pre, crops)  # uint8 clips
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, **shm.loader_args(workers, batch_bytes, echo=echo))
    dtype = autocast_dtype(precision, where)
    ctx = torch.autocast(device_type=where.type, dtype=dtype) if dtype is not None else None
    tally = run_eval(
        model.to(where),
        loader,
        num_classes=card.config.num_classes,
        normalize=Normalize(pre.mean, pre.std, where),
        ctx=ctx,
    )
    return {"model": card.name, **tally.summary(card.classes)}
