"""Class probabilities and per-video means: the one softmax and the one per-video mean of
vidfeat (assembly stores the means, verify checks them, search and the reader read them)."""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import numpy as np

from .format import _block_rows


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of each row of ``logits`` (``[C]`` or ``[N, C]``), in float64.

    Stable (the row maximum is subtracted first); rows with inf or NaN give NaN rows, which
    verify names and search never matches.
    """
    z = np.array(logits, dtype=np.float64)  # a copy: the caller's array is left alone
    with np.errstate(invalid="ignore", over="ignore"):
        z -= z.max(axis=-1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=-1, keepdims=True)
    return z


def iter_video_means(
    embedding: h5py.Dataset | np.ndarray, logits: h5py.Dataset | np.ndarray, counts: np.ndarray, block_rows: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per-video means of the clip rows, streamed: (first video, embedding means, score means).

    The clips of video ``v`` are the ``counts[v]`` rows after those of the videos before it
    (the /videos order, as every vidfeat file stores them). Embedding means average the stored
    embeddings; score means average ``softmax(logits)`` (class probabilities). Both are computed
    in float64 and given as float32; videos without clips get NaN rows. Reads at most
    ``block_rows`` clip rows at a time.
    """
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    n = len(counts)
    v = 0
    while v < n:
        start = int(ends[v] - counts[v])
        w = max(v + 1, int(np.searchsorted(ends, start + block_rows, side="right")))
        w = min(w, v + block_rows)  # many videos without clips: bounded memory too
        stop = int(ends[w - 1])
        sums_e = np.zeros((w - v, embedding.shape[1]), np.float64)
        sums_p = np.zeros((w - v, logits.shape[1]), np.float64)
        for r in range(start, stop, block_rows):
            r2 = min(stop, r + block_rows)
            owner = np.searchsorted(ends, np.arange(r, r2), side="right") - v
            first, at = np.unique(owner, return_index=True)
            sums_e[first] += np.add.reduceat(embedding[r:r2].astype(np.float64), at, axis=0)
            sums_p[first] += np.add.reduceat(softmax(logits[r:r2]), at, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = counts[v:w, None].astype(np.float64)
            yield v, (sums_e / c).astype(np.float32), (sums_p / c).astype(np.float32)
        v = w


def video_means(h5: h5py.Group, *, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(embedding_mean [V, D], scores_mean [V, C])`` float32 of an open vidfeat file: read from
    /videos/embedding_mean and /videos/scores_mean when the file has them (format version 2),
    else computed from /clips with :func:`iter_video_means` (``block_rows`` rows per step)."""
    if "videos/embedding_mean" in h5 and "videos/scores_mean" in h5:
        return h5["videos/embedding_mean"][()].astype(np.float32), h5["videos/scores_mean"][()].astype(np.float32)
    emb, logits = h5["clips/embedding"], h5["clips/logits"]
    counts = h5["videos/clip_count"][()]
    out_e = np.empty((len(counts), emb.shape[1]), np.float32)
    out_p = np.empty((len(counts), logits.shape[1]), np.float32)
    block = block_rows or _block_rows(emb.shape[1], logits.shape[1])
    for v, mean_e, mean_p in iter_video_means(emb, logits, counts, block):
        out_e[v : v + len(mean_e)] = mean_e
        out_p[v : v + len(mean_p)] = mean_p
    return out_e, out_p
