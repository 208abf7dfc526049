"""Exports of a vidfeat file for tools that read neither HDF5 nor vidfeat (pyarrow: ``vidfeat[export]``).

Formats (every one streams: one shard, or one block of rows, in memory at a time):

``npy-parquet``
    The clip-retrieval / embedding-reader layout, read by embedding-reader as ``parquet_npy``::

        out/clip_emb/clip_emb_{N}.npy         [n, D] float16 or float32 (plain .npy)
        out/metadata/metadata_{N}.parquet     n rows aligned with the .npy rows

    ``N`` zero-padded to the same width, ``shard_rows`` rows a shard.
``npy``
    One matrix ``out/embeddings.npy`` ``[N, D]`` and ``out/metadata.parquet`` (or ``.csv``).
``parquet``
    One ``out/clips.parquet`` with the metadata columns plus ``embedding`` (a list column).

Metadata columns (one row a clip, in /clips order): ``row`` (the /clips row), ``video`` (path),
``clip_index`` (within the video), ``start_sec``, ``end_sec``, ``top_class``, ``score`` (its softmax
probability).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import VidfeatError
from .search import softmax

__all__ = ["export", "FORMATS", "DEFAULT_SHARD_ROWS"]

FORMATS = ("npy-parquet", "npy", "parquet")
DEFAULT_SHARD_ROWS = 100_000
_BLOCK_ROWS = 16384  # rows read per step inside a shard
EMB_DIR, META_DIR = "clip_emb", "metadata"

Format = Literal["npy-parquet", "npy", "parquet"]


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise VidfeatError("parquet output needs pyarrow: pip install 'vidfeat[export]'") from None
    return pa, pq


def _metadata(f, start: int, stop: int) -> dict[str, np.ndarray]:
    """The metadata columns of rows ``[start, stop)``."""
    h5 = f.h5
    video = h5["clips/video"][start:stop]
    p = softmax(h5["clips/logits"][start:stop])
    best = p.argmax(axis=1)
    classes = np.asarray(f.classes, dtype=object)
    return {
        "row": np.arange(start, stop, dtype=np.int64),
        "video": np.asarray(f.videos.path, dtype=object)[video],
        "clip_index": (np.arange(start, stop) - f.videos.clip_offset[video]).astype(np.int64),
        "start_sec": h5["clips/start_sec"][start:stop],
        "end_sec": h5["clips/end_sec"][start:stop],
        "top_class": classes[best],
        "score": p[np.arange(len(best)), best].astype(np.float32),
    }


def _blocks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, _BLOCK_ROWS):
        yield a, min(stop, a + _BLOCK_ROWS)


def _write_npy(path: Path, f, start: int, stop: int, dtype: np.dtype) -> None:
    """Rows ``[start, stop)`` of /clips/embedding as one .npy, written block by block."""
    emb = f.h5["clips/embedding"]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(stop - start, emb.shape[1]))
    for a, b in _blocks(start, stop):
        out[a - start : b - start] = emb[a:b]
    out.flush()
    del out


def _table(pa, columns: dict[str, np.ndarray]):
    return pa.table({name: pa.array(list(col) if col.dtype == object else col) for name, col in columns.items()})


def _write_metadata_parquet(path: Path, f, start: int, stop: int, embedding: bool = False) -> None:
    pa, pq = _pyarrow()
    writer = None
    try:
        for a, b in _blocks(start, stop):
            table = _table(pa, _metadata(f, a, b))
            if embedding:
                emb = f.h5["clips/embedding"][a:b].astype(np.float32)
                values = pa.array(emb.reshape(-1))
                table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, emb.shape[1]))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        if writer is None:  # no rows: an empty table with the schema
            table = _table(pa, _metadata(f, start, start))
            pq.write_table(table, path)
    finally:
        if writer is not None:
            writer.close()


def _write_metadata_csv(path: Path, f) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        names = None
        for a, b in _blocks(0, len(f)):
            cols = _metadata(f, a, b)
            if names is None:
                names = list(cols)
                out.writerow(names)
            out.writerows(zip(*(cols[n].tolist() for n in names)))
        if names is None:
            out.writerow(list(_metadata(f, 0, 0)))


def export(
    f,
    out_dir: str | os.PathLike[str],
    *,
    format: Format = "npy-parquet",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    dtype: str | None = None,
    table: Literal["parquet", "csv"] = "parquet",
) -> list[Path]:
    """Write the clips of an open :class:`~vidfeat.store.FeatureFile` to ``out_dir``.

    Args:
        format: see the module docstring.
        shard_rows: rows a shard (``npy-parquet``).
        dtype: "float16" or "float32" embeddings in the .npy files; None keeps the file's.
        table: the metadata table of ``npy``: parquet or csv.

    Returns the files written.
    """
    if format not in FORMATS:
        raise VidfeatError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if shard_rows < 1:
        raise VidfeatError(f"shard size must be at least 1 row, got {shard_rows}")
    np_dtype = np.dtype(dtype or f.h5["clips/embedding"].dtype)
    if np_dtype not in (np.float16, np.float32):
        raise VidfeatError(f"embedding dtype must be float16 or float32, got {dtype}")
    if format != "npy" or table == "parquet":
        _pyarrow()
    out = Path(out_dir)
    n = len(f)
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        if format == "npy-parquet":
            (out / EMB_DIR).mkdir(exist_ok=True)
            (out / META_DIR).mkdir(exist_ok=True)
            shards = max(1, -(-n // shard_rows))
            width = max(1, len(str(shards - 1)))
            for s in range(shards):
                a, b = s * shard_rows, min(n, (s + 1) * shard_rows)
                emb_path = out / EMB_DIR / f"{EMB_DIR}_{s:0{width}d}.npy"
                meta_path = out / META_DIR / f"{META_DIR}_{s:0{width}d}.parquet"
                _write_npy(emb_path, f, a, b, np_dtype)
                _write_metadata_parquet(meta_path, f, a, b)
                written += [emb_path, meta_path]
        elif format == "npy":
            _write_npy(out / "embeddings.npy", f, 0, n, np_dtype)
            written.append(out / "embeddings.npy")
            meta = out / f"metadata.{table}"
            if table == "csv":
                _write_metadata_csv(meta, f)
            else:
                _write_metadata_parquet(meta, f, 0, n)
            written.append(meta)
        else:
            _write_metadata_parquet(out / "clips.parquet", f, 0, n, embedding=True)
            written.append(out / "clips.parquet")
    except OSError as exc:
        raise VidfeatError(f"cannot write the export to {out}: {exc.strerror or exc}") from exc
    return written
