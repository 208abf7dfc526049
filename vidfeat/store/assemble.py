"""Assembly of the final file: merge the previous final file and the committed chunks (oldest
first) into one new file, streaming one row range at a time, then compute the per-video means.

Write errors (a full disk) must never reach HDF5 while it writes the file: HDF5 writes
metadata when datasets and the file are closed, and a failure there cannot be reported cleanly
(h5py prints it from a destructor and the library is left with a half-closed file that crashes
the process). So the free space is checked before anything is written, and the space of the
whole file is then reserved (:func:`_reserve`), so that another process filling the disk during
assembly cannot make a write of the file fail (on a copy-on-write filesystem such as btrfs or
ZFS a reservation may not cover the writes). The file is also opened without a chunk cache, so
that a write that fails anyway fails at the slice assignment that made it, and the datasets
live only inside :func:`_write`.
"""

from __future__ import annotations

import errno
import os
import shutil
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

_DATASET_CHUNK_BYTES = 1 << 20  # largest HDF5 chunk of the final file's datasets (about 1 MiB)
_MAX_CHUNK_ROWS = 1 << 16
# Free-space estimate: HDF5 metadata (superblock, object headers, chunk indexes, heaps) on top
# of the data. Generous: a refused run costs more than a few hundred KiB of margin.
_META_BYTES = 64 << 10
_META_BYTES_PER_DATASET = 4 << 10
_META_BYTES_PER_CHUNK = 64  # chunk index entries
_STRING_OVERHEAD = 32  # bytes per variable-length string: heap object header and reference
_ZERO_BLOCK = 1 << 20  # reserving by writing zeros: bytes per write


def _reserve(path: Path, size: int) -> None:
    """Allocate disk blocks for the first ``size`` bytes of ``path`` (which grows to ``size``).

    HDF5 then writes into blocks that are already the file's, so no write of it fails for want
    of space. posix_fallocate where the platform and filesystem have it, else zeros are written
    past the bytes HDF5 has written so far (HDF5 writes everything it later reads). OSError
    (ENOSPC) if the space is not there.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except AttributeError:  # pragma: no cover - macOS, Windows
            pass
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        offset = os.lseek(fd, 0, os.SEEK_END)
        zeros = bytes(min(_ZERO_BLOCK, max(0, size - offset)))
        while offset < size:
            offset += os.write(fd, zeros[: size - offset])
    finally:
        os.close(fd)


def _trim(path: Path) -> None:
    """Cut a reserved file back to the end of its HDF5 data.

    HDF5 does not know that the file was made longer, so it leaves the reserved tail when it
    closes; opening the file for writing and closing it again makes HDF5 truncate it to its end
    of allocated space (nothing else is written).
    """
    h5py.File(path, "r+").close()


class NoSpace(Exception):
    """Not enough free space for the assembled file (``needed`` and ``free`` in bytes)."""

    def __init__(self, needed: int, free: int) -> None:
        super().__init__(f"needs about {needed} bytes, {free} free")
        self.needed, self.free = needed, free


def _dataset_chunks(shape: tuple[int, ...], dtype: Any) -> tuple[int, ...]:
    """HDF5 chunk shape, whole rows: about 1 MiB, but no more rows than the data has.

    A chunk is allocated whole, so chunks larger than the data only cost disk space; large
    files keep 1 MiB chunks (fast sequential reads of /clips/embedding).
    """
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = max(1, min(_MAX_CHUNK_ROWS, _DATASET_CHUNK_BYTES // max(1, row_bytes), shape[0]))
    return (rows, *shape[1:])


def _allocated_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes the chunks of a dataset take on disk (whole chunks)."""
    chunk = _dataset_chunks(shape, dtype)
    n_chunks = -(-shape[0] // chunk[0])
    return n_chunks * (int(np.prod(chunk, dtype=np.int64)) * np.dtype(dtype).itemsize + _META_BYTES_PER_CHUNK)


def _needed_bytes(
    table: Mapping[str, np.ndarray], classes: Sequence[str], embedding_dim: int, embedding_dtype: np.dtype
) -> int:
    """An upper estimate of the size of the assembled file."""
    n_videos, n_clips, n_classes = len(table["path"]), int(table["clip_count"].sum()), len(classes)
    shapes = [((n_videos,), dtype) for dtype in VIDEO_COLUMNS.values()]
    shapes += [((n_videos, embedding_dim), np.float32), ((n_videos, n_classes), np.float32)]
    shapes += [((n_clips, embedding_dim), embedding_dtype), ((n_clips, n_classes), np.float32), ((n_clips,), np.int64)]
    shapes += [((n_clips,), dtype) for dtype in _CLIP_ROW_COLUMNS.values()]
    total = _META_BYTES + _META_BYTES_PER_DATASET * (len(shapes) + 1)
    for shape, dtype in shapes:
        total += _allocated_bytes(shape, np.dtype("O") if dtype is _STR else dtype)
    strings = [*classes, *(s for name in _STRING_COLUMNS for s in table[name].tolist())]
    total += sum(len(s.encode("utf-8")) + _STRING_OVERHEAD for s in strings)
    return int(total)


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
    needed = _needed_bytes(merged.table, classes, embedding_dim, embedding_dtype)
    free = shutil.disk_usage(dest.parent).free
    if needed > free:
        raise NoSpace(needed, free)
    try:
        out = h5py.File(dest, "w", rdcc_nbytes=0)  # no chunk cache: see the module docstring
        try:
            _reserve(dest, needed)
            _write(out, sources, merged, attrs=attrs, classes=classes, embedding_dim=embedding_dim,
                   embedding_dtype=embedding_dtype)
        except BaseException:
            try:  # closing writes metadata, which fails again on a full disk: the first error is the cause
                out.close()
            except (OSError, RuntimeError):
                pass
            raise
        out.close()  # nothing is cached, so closing writes only metadata
    except OSError as exc:  # the disk filled up after the check, before the space was reserved
        dest.unlink(missing_ok=True)  # what it took counts as free again
        free = shutil.disk_usage(dest.parent).free
        if exc.errno == errno.ENOSPC and needed > free:
            raise NoSpace(needed, free) from exc
        raise
    _trim(dest)
    return int(merged.table["clip_count"].sum())


def _write(
    out: h5py.File,
    sources: Sequence[Path],
    merged: _Merged,
    *,
    attrs: Mapping[str, Any],
    classes: Sequence[str],
    embedding_dim: int,
    embedding_dtype: np.dtype,
) -> None:
    table, num_classes = merged.table, len(classes)
    n_videos, n_clips = len(table["path"]), int(table["clip_count"].sum())
    block = _block_rows(embedding_dim, num_classes)
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
    means = {
        "embedding_mean": _create_dataset(out, "videos/embedding_mean", (n_videos, embedding_dim), np.float32),
        "scores_mean": _create_dataset(out, "videos/scores_mean", (n_videos, num_classes), np.float32),
    }
    for v, emb_mean, scores_mean in video_means(clips["embedding"], clips["logits"], table["clip_count"], block):
        means["embedding_mean"][v : v + len(emb_mean)] = emb_mean
        means["scores_mean"][v : v + len(scores_mean)] = scores_mean


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of each row of ``logits``, computed in float64."""
    z = logits.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # rows with inf/NaN give NaN (verify names them)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
    return z


def video_means(
    embedding: h5py.Dataset, logits: h5py.Dataset, counts: np.ndarray, block_rows: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per-video means of the clip rows, streamed: (first video, embedding means, score means).

    Embedding means average the stored embeddings; score means average ``softmax(logits)``
    (class probabilities). Both are computed in float64 and given as float32; videos without
    clips get NaN rows. Reads at most ``block_rows`` clip rows at a time.
    """
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
