"""Preprocessing shared by extract, train and eval: the one place where clip layouts change.

Layouts (einops letters: ``t`` frames, ``h w`` pixels, ``c`` channels, ``b`` batch):

* decoded clip: ``(t, h, w, c)`` uint8 RGB, short side already resized by the decoder
  (``vidfeat.video.reader`` resizes only the sampled frames, in the decode worker);
* crops: ``(t, s, s, c)`` uint8, still in the worker (small to send between processes and to copy
  to the GPU: 4x fewer bytes than float);
* model input: ``(b, c, t, s, s)`` float, normalised with the card's mean/std, made on the
  model's device by ``Normalize`` (mean/std kept there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

__all__ = ["crop_positions", "spatial_crops", "Normalize", "normalize", "TrainAugment"]


def crop_positions(length: int, size: int, n: int) -> list[int]:
    """Start offsets of ``n`` crops of ``size`` along an axis of ``length``: the centre for n=1;
    start, centre and end for n=3 (the official 3-crop test protocol)."""
    if length < size:
        raise ValueError(f"cannot crop {size} pixels from {length}")
    centre = (length - size) // 2
    if n == 1:
        return [centre]
    if n == 3:
        return [0, centre, length - size]
    raise ValueError(f"crops must be 1 or 3, got {n}")


def spatial_crops(frames: Sequence[np.ndarray] | np.ndarray | Sequence[torch.Tensor], size: int, n: int = 1):
    """``t`` frames ``(h, w, c)`` (a list, or one ``(t, h, w, c)`` array) -> ``(n, t, size, size, c)``:
    crops along the long side, centred on the other. Only the crops are copied. Torch tensors
    (frames from the GPU decoder) give a tensor on their device."""
    h, w = frames[0].shape[:2]
    if h >= w:
        x = (w - size) // 2
        boxes = [(y, x) for y in crop_positions(h, size, n)]
    else:
        y = (h - size) // 2
        boxes = [(y, x) for x in crop_positions(w, size, n)]
    shape = (n, len(frames), size, size, frames[0].shape[2])
    if isinstance(frames[0], torch.Tensor):  # frames decoded on the GPU stay there
        out = torch.empty(shape, dtype=frames[0].dtype, device=frames[0].device)
    else:
        out = np.empty(shape, dtype=frames[0].dtype)
    for i, (y, x) in enumerate(boxes):
        for j, frame in enumerate(frames):
            out[i, j] = frame[y : y + size, x : x + size]
    return out


class Normalize:
    """``(b, t, h, w, c)`` uint8 -> ``(b, c, t, h, w)`` normalised ``dtype``, with the mean and std
    held on ``device`` once (building them per batch would copy them from the host each time,
    which blocks the host on CUDA). One fused pass: ``x * (1 / (255 std)) - mean / std``."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * s)).to(torch.float32).view(1, -1, 1, 1, 1).to(device)
        self.shift = (m / s).to(torch.float32).view(1, -1, 1, 1, 1).to(device)
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        """Where the mean and std are held: clips must be there."""
        return self.scale.device

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.device != self.scale.device:
            raise ValueError(f"clips are on {clips.device}, the normaliser on {self.scale.device}")
        x = rearrange(clips, "b t h w c -> b c t h w").to(torch.float32)
        return torch.addcmul(-self.shift, x, self.scale).to(self.dtype).contiguous()


def normalize(
    clips: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(b, t, h, w, c)`` uint8 -> ``(b, c, t, h, w)`` normalised ``dtype`` (on the tensor's device).

    For one-off calls; a loop over batches keeps a :class:`Normalize` instead."""
    return Normalize(mean, std, clips.device, dtype)(clips)


@dataclass
class TrainAugment:
    """The paper's training augmentation: random short-side scale, random crop, horizontal flip.

    The official recipe scales the short side to a random value in [256, 320] and crops 224; here
    the range is relative to the crop size (``scale``), so small models get the same jitter.
    ``vflip`` (vertical flip) and ``reverse`` (time reversal) are off by default: they only suit
    data whose labels survive them or are swapped with them (see :class:`LabelSwaps`).
    """

    crop_size: int
    scale: tuple[float, float] = (256 / 224, 320 / 224)
    flip: bool = True
    vflip: bool = False
    reverse: bool = False

    def short_side(self, rng: np.random.Generator) -> int:
        low, high = (max(self.crop_size, round(self.crop_size * s)) for s in self.scale)
        return int(rng.integers(low, high + 1))

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[str, ...]]:
        """``(t, h, w, c)`` uint8 -> one random ``(t, crop, crop, c)`` crop and the operations applied
        to it: each enabled one of ``"flip"``, ``"vflip"``, ``"reverse"`` with p=0.5."""
        _, h, w, _ = frames.shape
        s = self.crop_size
        y = int(rng.integers(0, h - s + 1))
        x = int(rng.integers(0, w - s + 1))
        out = frames[:, y : y + s, x : x + s]
        applied = []
        for name, enabled, axis in (("flip", self.flip, 2), ("vflip", self.vflip, 1), ("reverse", self.reverse, 0)):
            if enabled and rng.random() < 0.5:
                out = np.flip(out, axis=axis)
                applied.append(name)
        return np.ascontiguousarray(out), tuple(applied)


@dataclass(frozen=True)
class LabelSwaps:
    """Class pairs whose labels trade places when a clip is flipped or reversed in time.

    Something-Something's "pushing something from left to right" becomes "... right to left" in
    a mirrored clip; a "move_up" clip played backwards is a "move_down" clip. Each field holds
    ``[a, b]`` class-name pairs for one operation of :class:`TrainAugment`; classes in no pair
    keep their label.
    """

    flip: tuple[tuple[str, str], ...] = ()
    vflip: tuple[tuple[str, str], ...] = ()
    reverse: tuple[tuple[str, str], ...] = ()

    def tables(self, classes: Sequence[str]) -> dict[str, list[int]]:
        """Per operation, the label index each class index becomes; a ValueError names a pair
        that is not two distinct known classes, or a class in two pairs of one operation."""
        index = {name: i for i, name in enumerate(classes)}
        tables = {}
        for op in ("flip", "vflip", "reverse"):
            table = list(range(len(classes)))
            seen: set[str] = set()
            for pair in getattr(self, op):
                unknown = [c for c in pair if c not in index]
                if len(pair) != 2 or pair[0] == pair[1] or unknown:
                    why = f"unknown class {unknown[0]!r}" if unknown else "not two different classes"
                    raise ValueError(f"{op} swap {list(pair)}: {why}")
                if seen & set(pair):
                    raise ValueError(f"{op} swap {list(pair)}: {sorted(seen & set(pair))[0]!r} is already in another pair")
                seen.update(pair)
                a, b = index[pair[0]], index[pair[1]]
                table[a], table[b] = b, a
            tables[op] = table
        return tables
