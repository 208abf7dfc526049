"""Cosine nearest-neighbour search over a vidfeat file, exact and streaming.

The embedding matrix is read in blocks of rows (``chunk_rows``), each block's rows are
L2-normalised and scored against the normalised queries, and a running top-k is kept, so memory
is bounded by one block plus ``k`` per query whatever the size of the file. Rows that cannot be
scored (NaN rows, e.g. the video-level mean of a video without clips) never match.

Ties are broken by row number (the lower row first), so the result does not depend on the block
size. Video-level search uses ``/videos/embedding_mean`` when the file has it (format version 2)
and otherwise computes the means from the clips, streaming
(:func:`vidfeat.store.means.video_means`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from ..errors import VidfeatError
from ..store.format import block_rows
from ..store.means import softmax

__all__ = ["Hit", "exact_search", "normalise", "search", "chunk_rows_for"]

Level = Literal["clip", "video"]


@dataclass(frozen=True)
class Hit:
    """One search result: a clip (``level="clip"``) or a whole video (``level="video"``)."""

    row: int  # row in /clips (clip level) or /videos (video level)
    video: str  # the video's relative path
    start_sec: float  # clip span (the whole video at video level: 0 to its last clip's end)
    end_sec: float
    similarity: float  # cosine similarity to the query
    top_class: str  # most probable class (of the clip, or of the video's mean softmax)
    score: float  # its probability
    text: str = ""  # the captions said during the clip (/clips/text; "" without captions or at video level)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# helpers


def normalise(block: np.ndarray) -> np.ndarray:
    """Rows as float32 unit vectors; zero and NaN rows become NaN (they never match)."""
    block = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = block / norms
    out[~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)] = np.nan
    return out


def chunk_rows_for(width: int) -> int:
    """Rows of a ``[N, width]`` matrix read and scored per step: one store block of float32 rows."""
    return block_rows(4 * int(width))


def _merge_topk(best_s, best_r, scores, rows, k):
    """Keep the ``k`` best of (previous best) + (this block), ordered by score desc then row asc."""
    s = np.concatenate([best_s, scores], axis=1)
    r = np.concatenate([best_r, rows], axis=1)
    order = np.lexsort((r, -s), axis=-1)[:, :k] if s.shape[0] else np.zeros((0, 0), np.int64)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)


# exact search


def exact_search(
    matrix,
    queries: np.ndarray,
    *,
    k: int = 10,
    chunk_rows: int | None = None,
    exclude: Callable[[int, int], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``matrix`` most cosine-similar to each query, streaming.

    Args:
        matrix: ``[N, D]`` array or h5py dataset; read ``chunk_rows`` rows at a time.
        queries: ``[Q, D]`` (or ``[D]``) query vectors (normalised here).
        k: results per query.
        chunk_rows: rows read and scored per step (default: :func:`chunk_rows_for` the width).
        exclude: ``exclude(start, stop) -> bool [Q, stop - start]``, true where a row may not match
            that query (same video, the query clip itself).

    Returns ``(similarity [Q, k'], rows [Q, k'])`` best first, ``k' = min(k, N)``; a query with
    fewer than ``k'`` eligible rows gets row -1 and similarity -inf in the remaining places.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    chunk_rows = chunk_rows_for(matrix.shape[1]) if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    q = normalise(np.atleast_2d(queries))
    if np.isnan(q).any():
        raise VidfeatError("the query has no embedding (a video without clips, or a zero vector)")
    n = int(matrix.shape[0])
    k = min(k, n) if n else k
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.full((len(q), 0), -1, np.int64)
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        block = normalise(matrix[start:stop])
        scores = (q @ block.T).astype(np.float32)  # [Q, rows]
        scores[np.isnan(scores)] = -np.inf
        if exclude is not None:
            scores[exclude(start, stop)] = -np.inf
        rows = np.broadcast_to(np.arange(start, stop, dtype=np.int64), scores.shape)
        best_s, best_r = _merge_topk(best_s, best_r, scores, rows, k)
    best_r = np.where(np.isneginf(best_s), -1, best_r)
    return best_s, best_r


# the search of the CLI and of vidfeat.search


def video_row(f, video: str) -> int:
    """Row of ``video`` in /videos: a binary search reading one path a step (the /videos table
    is never loaded whole); VidfeatError if the file does not hold it."""
    paths = f.h5["videos/path"]
    lo, hi = 0, int(paths.shape[0])
    target = video.encode("utf-8")  # UTF-8 byte order = the file's code point order
    while lo < hi:
        mid = (lo + hi) // 2
        name = paths[mid]
        name = name.encode("utf-8") if isinstance(name, str) else bytes(name)
        if name < target:
            lo = mid + 1
        else:
            hi = mid
    if lo < int(paths.shape[0]) and paths.asstr()[lo] == video:
        return lo
    raise VidfeatError(f"no video {video!r} in {f.path}: `vidfeat info {f.path}` lists them")


def video_path(f, v: int) -> str:
    """Path of video row ``v`` (one read)."""
    return str(f.h5["videos/path"].asstr()[int(v)])


def clip_at(f, video: str, at: float) -> int:
    """Row of the clip of ``video`` whose span holds ``at`` seconds (the one whose middle is
    nearest when several or none do)."""
    v = video_row(f, video)
    h5 = f.h5
    first, count = int(h5["videos/clip_offset"][v]), int(h5["videos/clip_count"][v])
    if count == 0:
        status, error = h5["videos/status"].asstr()[v], h5["videos/error"].asstr()[v]
        raise VidfeatError(f"{video} has no clips (status {status}: {error or 'no frames'})")
    starts = h5["clips/start_sec"][first : first + count]
    ends = h5["clips/end_sec"][first : first + count]
    inside = (starts <= at) & (at <= ends)
    middle_gap = np.abs((starts + ends) / 2 - at)
    middle_gap[~inside] += np.inf if inside.any() else 0.0
    return first + int(np.argmin(middle_gap))


def search(
    f,
    *,
    query: np.ndarray | None = None,
    clip: int | None = None,
    video: str | None = None,
    at: float | None = None,
    k: int = 10,
    level: Level = "clip",
    exclude_same_video: bool = False,
    chunk_rows: int | None = None,
    index=None,
) -> list[Hit]:
    """Nearest clips (or videos) of one query in an open :class:`~vidfeat.store.FeatureFile`.

    The query is one of: ``query`` (a ``[D]`` embedding), ``clip`` (a row of /clips), or
    ``video`` (a path in the file) with ``at`` (seconds: the clip there; at video level ``at`` may
    be omitted: the video's mean). A query clip never matches itself, and a query video never
    matches itself at video level. ``exclude_same_video`` drops every clip of the query's video.
    ``index``: a :class:`vidfeat.retrieval.index.FaissIndex` to use instead of exact search (clip level).
    """
    if level not in ("clip", "video"):
        raise ValueError(f"level must be 'clip' or 'video', got {level!r}")
    given = sum(x is not None for x in (query, clip, video))
    if given != 1:
        raise VidfeatError("give exactly one query: an embedding, a clip row, or a video (with a time)")
    n = len(f)
    self_row = q_video = None
    if clip is not None:
        if not 0 <= clip < n:
            raise VidfeatError(f"clip row {clip} is out of range: {f.path} has {n} clips (rows 0-{n - 1})")
        self_row = int(clip)
    elif video is not None:
        if at is None and level == "clip":
            raise VidfeatError("a video query at clip level needs a time (--at SECONDS)")
        if at is not None:
            self_row = clip_at(f, video, at)
        else:
            q_video = video_row(f, video)
    if self_row is not None:
        q_video = int(f.h5["clips/video"][self_row])
    h5 = f.h5

    if level == "video":
        # the stored means (format version 2) are searched in place; older files compute them
        stored = "videos/embedding_mean" in h5 and "videos/scores_mean" in h5
        means = h5["videos/embedding_mean"] if stored else f.video_embeddings()
        scores = h5["videos/scores_mean"] if stored else f.video_scores()
        if query is None:
            query = means[q_video] if self_row is None else h5["clips/embedding"][self_row]
        skip = q_video

        def exclude(start, stop):
            out = np.zeros((1, stop - start), bool)
            if skip is not None and start <= skip < stop:
                out[0, skip - start] = True
            return out

        sims, rows = exact_search(means, query, k=k, chunk_rows=chunk_rows, exclude=exclude)
        hits = []
        for s, v in zip(sims[0], rows[0]):
            if v < 0:
                continue
            last = int(h5["videos/clip_offset"][v] + h5["videos/clip_count"][v] - 1)
            video_scores = np.asarray(scores[int(v)])
            c = int(np.argmax(video_scores))
            hits.append(Hit(row=int(v), video=video_path(f, v), start_sec=0.0,
                            end_sec=float(h5["clips/end_sec"][last]), similarity=float(s),
                            top_class=f.classes[c], score=float(video_scores[c])))  # fmt: skip
        return hits

    if query is None:
        query = h5["clips/embedding"][self_row]
    # the query video's clips are the contiguous rows [lo, hi): excluded by range, no row reads
    lo = hi = 0
    if exclude_same_video and q_video is not None:
        lo = int(h5["videos/clip_offset"][q_video])
        hi = lo + int(h5["videos/clip_count"][q_video])

    def excluded(rows: np.ndarray) -> np.ndarray:
        out = (rows >= lo) & (rows < hi)
        if self_row is not None:
            out |= rows == self_row
        return out

    if index is not None:
        sims, rows = index.search(query, k=k, exclude=excluded, n=n, excluded=hi - lo + 1)
    else:

        def exclude(start, stop):
            return excluded(np.arange(start, stop, dtype=np.int64))[None]

        sims, rows = exact_search(f.embeddings, query, k=k, chunk_rows=chunk_rows, exclude=exclude)
    return [clip_hit(f, int(r), float(s)) for s, r in zip(sims[0], rows[0]) if r >= 0]


def clip_hit(f, row: int, similarity: float) -> Hit:
    """The :class:`Hit` of clip ``row``."""
    p = softmax(f.h5["clips/logits"][row])
    c = int(np.argmax(p))
    text = f.h5["clips/text"].asstr()[row] if "clips/text" in f.h5 else ""
    return Hit(row=row, video=video_path(f, f.h5["clips/video"][row]), start_sec=float(f.h5["clips/start_sec"][row]),
               end_sec=float(f.h5["clips/end_sec"][row]), similarity=similarity,
               top_class=f.classes[c], score=float(p[c]), text=text)  # fmt: skip


def precision_at_k(f, labels: np.ndarray, *, k: int = 5) -> tuple[float, int]:
    """``(precision, queries)``: for each clip with a label (``labels[row] != ""``) that has at
    least ``k`` same-label clips in other videos, the share of its ``k`` nearest labelled clips
    from other videos (exact cosine search) that carry its label, averaged over those queries."""
    labels = np.asarray(labels, dtype=object)
    labelled = labels != ""
    video_of = f.h5["clips/video"][:]
    hits = queries = 0
    for row in np.flatnonzero(labelled):
        gallery = labelled & (video_of != video_of[row])
        if (gallery & (labels == labels[row])).sum() < k:
            continue
        _, rows = exact_search(f.embeddings, f.embeddings[row], k=k, exclude=lambda a, b: ~gallery[a:b][None])
        hits += int((labels[rows[0]] == labels[row]).sum())
        queries += 1
    return (hits / (k * queries) if queries else float("nan")), queries
