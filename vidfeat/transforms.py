"""Preprocessing shared by extract, train and eval: the one place where clip layouts change.

Layouts (einops letters: ``t`` frames, ``h w`` pixels, ``c`` channels, ``b`` batch):

* decoded clip: ``(t, h, w, c)`` uint8 RGB, short side already resized by the decoder
  (``vidfeat.video`` resizes only the sampled frames, in the decode worker);
* crops: ``(t, s, s, c)`` uint8, still in the worker (small to send between processes and to copy
  to the GPU: 4x fewer bytes than float);
* model input: ``(b, c, t, s, s)`` float, normalised with the card's mean/std, made on the
  model's device by ``normalize``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

__all__ = ["crop_positions", "spatial_crops", "normalize", "TrainAugment"]


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


def spatial_crops(frames: Sequence[np.ndarray] | np.ndarray, size: int, n: int = 1) -> np.ndarray:
    """``t`` frames ``(h, w, c)`` (a list, or one ``(t, h, w, c)`` array) -> ``(n, t, size, size, c)``:
    crops along the long side, centred on the other. Only the crops are copied."""
    h, w = frames[0].shape[:2]
    if h >= w:
        x = (w - size) // 2
        boxes = [(y, x) for y in crop_positions(h, size, n)]
    else:
        y = (h - size) // 2
        boxes = [(y, x) for x in crop_positions(w, size, n)]
    out = np.empty((n, len(frames), size, size, frames[0].shape[2]), dtype=frames[0].dtype)
    for i, (y, x) in enumerate(boxes):
        for j, frame in enumerate(frames):
            out[i, j] = frame[y : y + size, x : x + size]
    return out


def normalize(
    clips: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(b, t, h, w, c)`` uint8 -> ``(b, c, t, h, w)`` normalised ``dtype`` (on the tensor's device)."""
    x = rearrange(clips, "b t h w c -> b c t h w").to(torch.float32).div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return x.sub_(m).div_(s).to(dtype).contiguous()


@dataclass
class TrainAugment:
    """The paper's training augmentation: random short-side scale, random crop, horizontal flip.

    The official recipe scales the short side to a random value in [256, 320] and crops 224; here
    the range is relative to the crop size (``scale``), so small models get the same jitter.
    """

    crop_size: int
    scale: tuple[float, float] = (256 / 224, 320 / 224)
    flip: bool = True

    def short_side(self, rng: np.random.Generator) -> int:
        low, high = (max(self.crop_size, round(self.crop_size * s)) for s in self.scale)
        return int(rng.integers(low, high + 1))

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``(t, h, w, c)`` uint8 -> one random ``(t, crop, crop, c)`` crop, flipped with p=0.5."""
        _, h, w, _ = frames.shape
        s = self.crop_size
        y = int(rng.integers(0, h - s + 1))
        x = int(rng.integers(0, w - s + 1))
        out = frames[:, y : y + s, x : x + s]
        if self.flip and rng.random() < 0.5:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)
