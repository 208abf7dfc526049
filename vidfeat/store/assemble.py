"""Assembly of the final file: merge the previous final file and the committed chunks (oldest
first) into one new file, streaming one row range at a time, then compute the per-video means
(:func:`vidfeat.store.means.iter_video_means`).
The file is written by :func:`vidfeat.store.final.write_final` (free-space check, reservation,
no chunk cache, temporary name, fsync, rename), as merged shards are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .format import (
    CAPTION_ATTRS,
    _CLIP_COPY,
    _CLIP_ROW_COLUMNS,
    _STR,
    _STRING_COLUMNS,
    VIDEO_COLUMNS,
    _block_rows,
    _open_h5,
    _read_table,
    segment_bases,
)
from .caption_source import CaptionSource, caption_bytes, write_captions
from .captions import CaptionTable, has_captions
from .final import create_dataset, estimate_bytes, write_final
from .means import iter_video_means

KEEP = "keep"
"""``assemble(captions=KEEP)``: carry the first source's captions (the previous final file's)."""


def _needed_bytes(
    table: Mapping[str, np.ndarray], classes: Sequence[str], embedding_dim: int, embedding_dtype: np.dtype
) -> int:
    """An upper estimate of the size of the assembled file."""
    n_videos, n_clips, n_classes = len(table["path"]), int(table["clip_count"].sum()), len(classes)
    shapes = [((n_videos,), dtype) for dtype in VIDEO_COLUMNS.values()]
    shapes += [((n_videos, embedding_dim), np.float32), ((n_videos, n_classes), np.float32)]
    shapes += [((n_clips, embedding_dim), embedding_dtype), ((n_clips, n_classes), np.float32), ((n_clips,), np.int64)]
    shapes += [((n_clips,), dtype) for dtype in _CLIP_ROW_COLUMNS.values()]
    strings = [*classes, *(s for name in _STRING_COLUMNS for s in table[name].tolist())]
    return estimate_bytes(shapes, strings)


# merging sources into the final file


@dataclass
class _Merged:
    """The assembled /videos table and, per source, the row ranges to copy (src, dst, count)."""

    table: dict[str, np.ndarray]
    runs: list[list[tuple[int, int, int]]]


def _merge(tables: Sequence[Mapping[str, np.ndarray]]) -> _Merged:
    """Latest row per path (later tables win), sorted by path; plan the clip copies.

    Linear in rows and sources besides one sort: the rows of all tables are sorted by path
    once (stable, so a later table's row of a path comes after an earlier one's) and each
    source's rows are grouped by one more sort, never by a scan of all rows per source."""
    if not tables:
        empty = {name: np.empty(0, dtype=object if name in _STRING_COLUMNS else dtype)
                 for name, dtype in VIDEO_COLUMNS.items()}  # fmt: skip
        return _Merged(empty, [])
    paths = np.concatenate([np.asarray(table["path"], dtype=object) for table in tables])
    src_all = np.repeat(np.arange(len(tables), dtype=np.int64), [len(table["path"]) for table in tables])
    order = np.argsort(paths, kind="stable")  # str order = code point order = UTF-8 byte order
    ordered = paths[order]
    last = np.ones(len(order), dtype=bool)  # the last row of each path in the stable order wins
    last[:-1] = ordered[1:] != ordered[:-1]
    pick = order[last]  # rows of the concatenated tables, in path order
    src = src_all[pick]
    merged = {}
    for name, dtype in VIDEO_COLUMNS.items():
        column = np.concatenate([np.asarray(table[name]) for table in tables])[pick]
        merged[name] = column.astype(object) if name in _STRING_COLUMNS else column.astype(dtype, copy=False)
    counts = merged["clip_count"]
    src_offsets = merged["clip_offset"].copy()
    merged["clip_offset"] = np.cumsum(counts) - counts
    runs: list[list[tuple[int, int, int]]] = [[] for _ in tables]
    with_clips = np.flatnonzero(counts > 0)
    # by source, then by the source's clip rows: each source's copies in its own row order
    grouped = with_clips[np.lexsort((src_offsets[with_clips], src[with_clips]))]
    for source, s, d, c in zip(src[grouped].tolist(), src_offsets[grouped].tolist(),
                               merged["clip_offset"][grouped].tolist(), counts[grouped].tolist()):  # fmt: skip
        coalesced = runs[source]
        if coalesced and coalesced[-1][0] + coalesced[-1][2] == s and coalesced[-1][1] + coalesced[-1][2] == d:
            coalesced[-1] = (coalesced[-1][0], coalesced[-1][1], coalesced[-1][2] + c)
        else:
            coalesced.append((s, d, c))
    return _Merged(merged, runs)


def _video_column_blocks(counts: np.ndarray, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, /clips/video values) in blocks of about ``block_rows`` rows."""
    ends = np.cumsum(counts)
    v, n = 0, len(counts)
    while v < n:
        start = int(ends[v] - counts[v])
        w = max(v + 1, int(np.searchsorted(ends, start + block_rows, side="right")))
        yield start, np.repeat(np.arange(v, w, dtype=np.int64), counts[v:w])
        v = w


def assemble(
    output: Path,
    tmp: Path,
    sources: Sequence[Path],
    *,
    attrs: Mapping[str, Any],
    classes: Sequence[str],
    embedding_dim: int,
    embedding_dtype: np.dtype,
    kept: str,
    rerun: str,
    captions: CaptionSource | CaptionTable | str | None = KEEP,
    first_frame_sec: np.ndarray | None = None,
    bases: tuple[int, int] = (0, 0),
    contiguous: bool = False,
) -> int:
    """Write ``output`` from ``sources`` (oldest first) through ``tmp``; return its clip count.
    ``kept`` and ``rerun`` finish the one-line StoreError of a failed write (see
    :func:`~vidfeat.store.final.write_final`).

    A source may be a segment of a grown file (its rows are counted in that file:
    :func:`~vidfeat.store.format.segment_bases`).

    ``captions``: :data:`KEEP` carries the captions of the first source (the previous final
    file) for the videos the new file keeps, read a block at a time; a
    :class:`~vidfeat.store.caption_source.CaptionSource` or
    :class:`~vidfeat.store.captions.CaptionTable` whose video rows are the first source's
    replaces them; None writes none. ``first_frame_sec``
    ([rows of the first source]) replaces that column of the first source's videos. /clips/text
    is recomputed from the captions and the new clip times. ``bases`` (videos, clips): a
    segment of a grown file (:mod:`vidfeat.store.segments`) counts /videos/clip_offset and
    /clips/video from the rows of the segments before it, and is written ``contiguous`` (no HDF5
    chunks: the copies, which interleave sources, then write each byte once instead of rewriting
    the chunks they share; a segment is never appended to)."""
    tables = []
    keep, keep_from = captions is KEEP, None
    if keep:
        captions = None
    for i, source in enumerate(sources):
        with _open_h5(source, "committed results", "delete it to redo the videos it holds") as h5:
            width = h5["clips/embedding"].shape[1]
            if width != embedding_dim or h5["clips/embedding"].dtype != embedding_dtype:
                raise StoreError(f"{source} holds {h5['clips/embedding'].dtype} embeddings of size {width}, "
                                 f"not {embedding_dtype} of size {embedding_dim}; delete it or rerun with --overwrite")
            tables.append(_read_table(h5))
            source_videos, source_clips = segment_bases(h5)  # a segment counts rows of its whole file
            if source_clips:
                tables[-1]["clip_offset"] = tables[-1]["clip_offset"] - source_clips
            if i == 0 and keep and has_captions(h5):
                keep_from = (source, source_videos)
                attrs = {**attrs, **{key: h5.attrs[key] for key in CAPTION_ATTRS if key in h5.attrs}}
    if keep_from is not None:  # the first source's own, scanned a block at a time
        captions = CaptionSource.of_file(keep_from[0], len(tables[0]["path"]), video_base=keep_from[1])
    elif isinstance(captions, CaptionTable):
        captions = CaptionSource.of_table(captions, len(tables[0]["path"]) if tables else 0)
    if first_frame_sec is not None:
        tables[0]["first_frame_sec"] = np.asarray(first_frame_sec, dtype=np.float64)
    merged = _merge(tables)
    video_base, clip_base = bases
    if clip_base:
        merged.table["clip_offset"] = merged.table["clip_offset"] + clip_base
    if captions is not None:
        first_rows = _rows_in(tables[0]["path"], merged.table["path"])
    needed = _needed_bytes(merged.table, classes, embedding_dim, embedding_dtype)
    if captions is not None:
        needed += caption_bytes(captions, first_rows, merged.table["clip_count"], clip_sec=_clip_sec(attrs),
                                stride_sec=float(attrs.get("stride_sec", 0) or 0))  # fmt: skip

    def fill(out: h5py.File) -> None:
        _write(out, sources, merged, attrs=attrs, classes=classes, embedding_dim=embedding_dim,
               embedding_dtype=embedding_dtype, video_base=video_base, contiguous=contiguous)  # fmt: skip
        if captions is not None:
            write_captions(out, captions, first_rows, counts=merged.table["clip_count"],
                           first_frame_sec=merged.table["first_frame_sec"], video_base=video_base)  # fmt: skip

    write_final(output, tmp, needed, fill, action="assemble", kept=kept, rerun=rerun)
    return int(merged.table["clip_count"].sum())


def _clip_sec(attrs: Mapping[str, Any]) -> float:
    """A clip's length in seconds from the run's settings (frames / sampling rate)."""
    try:
        return float(attrs["num_frames"]) / float(attrs["fps"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0.0


def _rows_in(old_paths: np.ndarray, new_paths: np.ndarray) -> np.ndarray:
    """For each of ``new_paths``, its row in ``old_paths`` (in any order), or -1."""
    if not len(old_paths) or not len(new_paths):
        return np.full(len(new_paths), -1, dtype=np.int64)
    order = np.argsort(old_paths, kind="stable")
    ordered = old_paths[order]
    at = np.minimum(np.searchsorted(ordered, new_paths), len(ordered) - 1)
    return np.where(ordered[at] == new_paths, order[at], -1).astype(np.int64)


def _contiguous_dataset(h5: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
    """A dataset stored in one piece (no chunks): written once, never resized."""
    return h5.create_dataset(name, shape=shape, dtype=dtype)


def _write(
    out: h5py.File,
    sources: Sequence[Path],
    merged: _Merged,
    *,
    attrs: Mapping[str, Any],
    classes: Sequence[str],
    embedding_dim: int,
    embedding_dtype: np.dtype,
    video_base: int = 0,
    contiguous: bool = False,
) -> None:
    table, num_classes = merged.table, len(classes)
    make = _contiguous_dataset if contiguous else create_dataset
    n_videos, n_clips = len(table["path"]), int(table["clip_count"].sum())
    block = _block_rows(embedding_dim, num_classes)
    for key, value in attrs.items():
        out.attrs[key] = value
    out.create_dataset("classes", data=np.array(list(classes), dtype=object), dtype=_STR)
    for name, dtype in VIDEO_COLUMNS.items():
        ds = make(out, f"videos/{name}", (n_videos,), dtype)
        if n_videos:
            ds[...] = table[name]
    clips = {
        "embedding": make(out, "clips/embedding", (n_clips, embedding_dim), embedding_dtype),
        "logits": make(out, "clips/logits", (n_clips, num_classes), np.float32),
        **{name: make(out, f"clips/{name}", (n_clips,), dt) for name, dt in _CLIP_ROW_COLUMNS.items()},
    }
    video = make(out, "clips/video", (n_clips,), np.int64)
    for source, runs in zip(sources, merged.runs):
        if not runs:
            continue
        with _open_h5(source, "committed results", "delete it to redo the videos it holds") as h5:
            for s, d, count in runs:
                for k in range(0, count, block):
                    b = min(block, count - k)
                    for name in _CLIP_COPY:
                        clips[name][d + k : d + k + b] = h5[f"clips/{name}"][s + k : s + k + b]
    for start, values in _video_column_blocks(table["clip_count"], block):
        if len(values):
            video[start : start + len(values)] = values + video_base
    means = {
        "embedding_mean": make(out, "videos/embedding_mean", (n_videos, embedding_dim), np.float32),
        "scores_mean": make(out, "videos/scores_mean", (n_videos, num_classes), np.float32),
    }
    for v, emb_mean, scores_mean in iter_video_means(clips["embedding"], clips["logits"], table["clip_count"], block):
        means["embedding_mean"][v : v + len(emb_mean)] = emb_mean
        means["scores_mean"][v : v + len(scores_mean)] = scores_mean
