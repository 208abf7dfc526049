"""Assembly of the final file: merge the previous final file and the committed chunks (oldest
first) into one new file, streaming one row range at a time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .format import (
    _CLIP_COPY,
    _CLIP_ROW_COLUMNS,
    _STR,
    _STRING_COLUMNS,
    VIDEO_COLUMNS,
    _block_rows,
    _open_h5,
    _read_table,
)

_DATASET_CHUNK_BYTES = 1 << 20  # HDF5 chunk size of the final file's datasets (about 1 MiB)


def _dataset_chunks(shape: tuple[int, ...], dtype: Any) -> tuple[int, ...]:
    """HDF5 chunk shape of about 1 MiB, whole rows."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = max(1, min(1 << 16, _DATASET_CHUNK_BYTES // max(1, row_bytes)))
    return (rows, *shape[1:])


# merging sources into the final file


@dataclass
class _Merged:
    """The assembled /videos table and, per source, the row ranges to copy (src, dst, count)."""

    table: dict[str, np.ndarray]
    runs: list[list[tuple[int, int, int]]]


def _merge(tables: Sequence[Mapping[str, np.ndarray]]) -> _Merged:
    """Latest row per path (later tables win), sorted by path; plan the clip copies."""
    winner: dict[str, tuple[int, int]] = {}
    for source, table in enumerate(tables):
        for row, path in enumerate(table["path"].tolist()):
            winner[path] = (source, row)
    paths = sorted(winner)  # code point order = UTF-8 byte order
    n = len(paths)
    src = np.fromiter((winner[p][0] for p in paths), dtype=np.int64, count=n)
    row = np.fromiter((winner[p][1] for p in paths), dtype=np.int64, count=n)
    merged = {
        name: np.empty(n, dtype=object if name in _STRING_COLUMNS else dtype) for name, dtype in VIDEO_COLUMNS.items()
    }
    for source, table in enumerate(tables):
        sel = np.flatnonzero(src == source)
        for name in VIDEO_COLUMNS:
            merged[name][sel] = table[name][row[sel]]
    counts = merged["clip_count"]
    src_offsets = merged["clip_offset"].copy()
    merged["clip_offset"] = np.cumsum(counts) - counts
    runs: list[list[tuple[int, int, int]]] = []
    for source in range(len(tables)):
        sel = np.flatnonzero((src == source) & (counts > 0))
        order = sel[np.argsort(src_offsets[sel], kind="stable")]
        coalesced: list[tuple[int, int, int]] = []
        for s, d, c in zip(src_offsets[order].tolist(), merged["clip_offset"][order].tolist(), counts[order].tolist()):
            if coalesced and coalesced[-1][0] + coalesced[-1][2] == s and coalesced[-1][1] + coalesced[-1][2] == d:
                coalesced[-1] = (coalesced[-1][0], coalesced[-1][1], coalesced[-1][2] + c)
            else:
                coalesced.append((s, d, c))
        runs.append(coalesced)
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


def _create_dataset(h5: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
    """A chunked dataset, resizable along rows (so other tools can append)."""
    return h5.create_dataset(
        name, shape=shape, dtype=dtype, chunks=_dataset_chunks(shape, dtype), maxshape=(None, *shape[1:])
    )


def _assemble(
    dest: Path,
    sources: Sequence[Path],
    *,
    attrs: Mapping[str, Any],
    classes: Sequence[str],
    embedding_dim: int,
    embedding_dtype: np.dtype,
) -> int:
    """Write the final file from ``sources`` (oldest first) to ``dest``; return its clip count."""
    tables = []
    for source in sources:
        with _open_h5(source, "committed results", "delete it to redo the videos it holds") as h5:
            width = h5["clips/embedding"].shape[1]
            if width != embedding_dim or h5["clips/embedding"].dtype != embedding_dtype:
                raise StoreError(f"{source} holds {h5['clips/embedding'].dtype} embeddings of size {width}, "
                                 f"not {embedding_dtype} of size {embedding_dim}; delete it or rerun with --overwrite")
            tables.append(_read_table(h5))
    merged = _merge(tables)
    table, num_classes = merged.table, len(classes)
    n_videos, n_clips = len(table["path"]), int(table["clip_count"].sum())
    block = _block_rows(embedding_dim, num_classes)
    with h5py.File(dest, "w") as out:
        for key, value in attrs.items():
            out.attrs[key] = value
        out.create_dataset("classes", data=np.array(list(classes), dtype=object), dtype=_STR)
        for name, dtype in VIDEO_COLUMNS.items():
            ds = _create_dataset(out, f"videos/{name}", (n_videos,), dtype)
            if n_videos:
                ds[...] = table[name]
        clips = {
            "embedding": _create_dataset(out, "clips/embedding", (n_clips, embedding_dim), embedding_dtype),
            "logits": _create_dataset(out, "clips/logits", (n_clips, num_classes), np.float32),
            **{name: _create_dataset(out, f"clips/{name}", (n_clips,), dt) for name, dt in _CLIP_ROW_COLUMNS.items()},
        }
        video = _create_dataset(out, "clips/video", (n_clips,), np.int64)
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
                video[start : start + len(values)] = values
    return n_clips
