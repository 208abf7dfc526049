"""The output file: one HDF5 file per run, written crash-safely and resumably, and read back.

Layout (DESIGN.md section 5, documented for other languages in docs/format.md)::

    /                  attrs: format="vidfeat", format_version, the run's settings (model,
                       weights_sha256, num_frames, fps, stride_sec, input_size, mean, std, ...),
                       vidfeat_version, torch_version, created
    /videos/<column>   [V]     one row per video, sorted by path (see ``VIDEO_COLUMNS``)
    /clips/<column>    [N...]  one row per clip, grouped per video in /videos order
    /classes           [C]     class names (UTF-8 strings)

Writing (DESIGN.md section 6). :class:`FeatureWriter` never writes the final file in place:

* finished videos are buffered and committed as small chunk files in the work directory beside
  the output (``feats.h5.parts/chunk-000001.h5``): written under a temporary name, fsynced,
  renamed into place with ``os.replace`` and the directory fsynced. A kill at any moment loses at
  most the videos not yet committed; temporary files left by a kill are deleted on the next open;
* ``settings.json`` in the work directory records what defines the results (settings, classes,
  embedding size and dtype). A rerun compares it, and the existing final file, with its own
  settings and refuses to mix results (:class:`~vidfeat.errors.SettingsMismatch`) unless told to
  overwrite;
* :meth:`FeatureWriter.finalize` assembles the previous final file (if any) plus every chunk
  into a new file under a temporary name, rows in a deterministic order, renames it into place
  and removes the work directory. It streams one row range at a time, so memory stays bounded
  whatever the size of the output. Chunks are applied oldest first, so a newer result for a path
  replaces an older one, and applying a chunk twice (a kill after the rename, before the work
  directory is gone) changes nothing.

Reading: :func:`open_features` (plain h5py underneath), :func:`summarize` and :func:`verify`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import h5py
import numpy as np

from . import __version__
from .errors import SettingsMismatch, StoreError

try:  # advisory lock against two writers on one output; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "VideoResult",
    "FeatureWriter",
    "FeatureFile",
    "VideoTable",
    "VideoClips",
    "open_features",
    "summarize",
    "verify",
    "parts_path",
]

FORMAT = "vidfeat"
FORMAT_VERSION = 1

Status = Literal["ok", "partial", "failed"]
STATUSES: tuple[str, ...] = ("ok", "partial", "failed")

# Root attrs that say when and with which software a file was made, not what it holds: two runs
# over the same inputs differ only in these.
VOLATILE_ATTRS: tuple[str, ...] = ("created", "vidfeat_version", "torch_version")
# Root attrs the writer sets itself; a caller's settings may not use these names.
WRITER_ATTRS: tuple[str, ...] = ("format", "format_version", *VOLATILE_ATTRS)
# Settings every file carries (DESIGN.md section 5).
REQUIRED_SETTINGS: tuple[str, ...] = (
    "model",
    "weights_sha256",
    "num_frames",
    "fps",
    "stride_sec",
    "input_size",
    "mean",
    "std",
)

TIME_TOLERANCE_SEC = 0.5
"""verify(): clip times may exceed a video's ``duration_sec`` by this much (container durations
are rounded and some containers state the end of the audio)."""

EMBEDDING_DTYPES = ("float16", "float32")

_STR = h5py.string_dtype()  # UTF-8, variable length

VIDEO_COLUMNS: dict[str, Any] = {
    "path": _STR,
    "status": _STR,
    "error": _STR,
    "size_bytes": np.dtype(np.int64),
    "mtime": np.dtype(np.float64),
    "duration_sec": np.dtype(np.float64),
    "fps": np.dtype(np.float64),
    "width": np.dtype(np.int32),
    "height": np.dtype(np.int32),
    "clip_offset": np.dtype(np.int64),
    "clip_count": np.dtype(np.int64),
}
"""/videos/<name> -> dtype, one row per video."""

_STRING_COLUMNS = ("path", "status", "error")

# /clips columns copied row by row from the sources; /clips/video is recomputed on assembly.
_CLIP_ROW_COLUMNS: dict[str, Any] = {
    "start_sec": np.dtype(np.float64),
    "end_sec": np.dtype(np.float64),
    "valid_frames": np.dtype(np.int32),
}
_CLIP_COPY = ("embedding", "logits", *_CLIP_ROW_COLUMNS)

# Work directory entries.
_MANIFEST = "settings.json"
_LOCK = "lock"
_ASSEMBLING = "assembling.h5.tmp"
_TMP_SUFFIX = ".tmp"
_CHUNK_RE = re.compile(r"^chunk-(\d{6,})\.h5$")

_DATASET_CHUNK_BYTES = 1 << 20  # HDF5 chunk size of the final file's datasets (about 1 MiB)
_BLOCK_BYTES = 16 << 20  # rows copied or checked per step (bounded memory)
_FAULT_EXAMPLES = 5


# helpers


def parts_path(output: str | os.PathLike[str]) -> Path:
    """The work directory of an output file: ``feats.h5`` -> ``feats.h5.parts``."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _one_line(text: str) -> str:
    """Collapse an exception message or reason to one line."""
    return " ".join(str(text).replace("\x00", " ").split())


def _reason(exc: BaseException) -> str:
    """A short reason for an OS or HDF5 error ("No space left on device")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(str(exc)) or type(exc).__name__


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make renames and unlinks in ``path`` durable (no-op where directories cannot be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (22, 9):  # EINVAL, EBADF: the filesystem does not sync directories
            raise
    finally:
        os.close(fd)


def _unlink_quiet(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _to_attr(name: str, value: Any) -> Any:
    """A setting as HDF5 can store it: str, bool, int, float, arrays of these; dicts as JSON."""
    if value is None:
        raise ValueError(f"setting {name!r} is None: HDF5 attributes cannot hold None; leave it out")
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (str, bool, int, float, np.generic)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        if items and all(isinstance(v, str) for v in items):
            return np.array(items, dtype=_STR)
        array = np.asarray(items)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"setting {name!r}: a list of numbers or of strings is needed, got {value!r}")
        return array
    raise ValueError(f"setting {name!r} has unsupported type {type(value).__name__}")


def _canon(value: Any) -> Any:
    """An attr or setting as plain Python (str, bool, int, float, lists), for comparing and JSON."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_canon(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality of canonical values, with NaN equal to NaN."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _fmt(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} items]"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 20 else value[:16] + "…", ensure_ascii=False)
    return str(value)


def _describe(identity: Mapping[str, Any]) -> str:
    sha = str(identity.get("weights_sha256", "?"))
    return f"model {identity.get('model', '?')} (weights sha256 {sha[:12]}{'…' if len(sha) > 12 else ''})"


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, str]:
    """Key -> how it differs ("num_frames=8 there, 16 now"), for the keys that differ."""
    out = {}
    for key in sorted(set(old) | set(new)):
        if key not in old:
            out[key] = f"{key} not set there (now {_fmt(new[key])})"
        elif key not in new:
            out[key] = f"{key}={_fmt(old[key])} there (not set now)"
        elif not _same(old[key], new[key]):
            a, b = old[key], new[key]
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                i = next(i for i, (x, y) in enumerate(zip(a, b)) if not _same(x, y))
                out[key] = f"{key}[{i}]={_fmt(a[i])} there, {_fmt(b[i])} now"
            else:
                out[key] = f"{key}={_fmt(a)} there, {_fmt(b)} now"
    return out


def _file_identity(settings: Mapping[str, Any], classes: list[str], embedding: h5py.Dataset | tuple[int, str]) -> dict:
    """What defines a file's results: its settings plus /classes and the embedding width/dtype.

    The extra keys start with '/' (dataset names), so they cannot collide with a setting.
    """
    width, dtype = (embedding.shape[1], embedding.dtype.name) if isinstance(embedding, h5py.Dataset) else embedding
    return {**settings, "/classes": classes, "/clips/embedding width": int(width), "/clips/embedding dtype": dtype}


def _dataset_chunks(shape: tuple[int, ...], dtype: Any) -> tuple[int, ...]:
    """HDF5 chunk shape of about 1 MiB, whole rows."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = max(1, min(1 << 16, _DATASET_CHUNK_BYTES // max(1, row_bytes)))
    return (rows, *shape[1:])


def _block_rows(embedding_dim: int, num_classes: int) -> int:
    """Rows per copy/check step: bounded memory whatever the file size."""
    return max(1, _BLOCK_BYTES // (4 * (embedding_dim + num_classes) + 32))


def _read_table(h5: h5py.Group) -> dict[str, np.ndarray]:
    """All /videos columns (strings as object arrays of str). Small: one row per video."""
    table = {}
    for name in VIDEO_COLUMNS:
        ds = h5[f"videos/{name}"]
        table[name] = ds.asstr()[()] if name in _STRING_COLUMNS else ds[()]
    return table


def _open_h5(path: Path, what: str, fix: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"cannot read {what} {path}: {_reason(exc)}; {fix}") from exc


# results


@dataclass(kw_only=True)
class VideoResult:
    """Everything extracted from one video: metadata plus ``n`` clips (``n = 0`` if failed).

    ``path`` is relative to the input root, '/' separated; with ``size_bytes`` and ``mtime`` it is
    the resume key. Unknown ``duration_sec``/``fps`` are NaN (``None`` is accepted), unknown
    ``width``/``height`` 0. ``embedding`` is ``[n, D]``, ``logits`` ``[n, C]``, ``start_sec``,
    ``end_sec`` and ``valid_frames`` ``[n]``; the writer casts them to the file's dtypes.
    """

    path: str
    status: Status
    size_bytes: int
    mtime: float
    error: str = ""  # "" or a one-line reason (partial/failed)
    duration_sec: float | None = math.nan
    fps: float | None = math.nan
    width: int | None = 0
    height: int | None = 0
    embedding: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    start_sec: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    end_sec: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    valid_frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    @property
    def num_clips(self) -> int:
        return int(np.shape(self.start_sec)[0])


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise ValueError(f"video path must be a non-empty str, got {path!r}")
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"video path {path!r} must be relative to the input root, '/' separated, without . or ..")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"video path {path!r} is not valid UTF-8; rename the file") from exc
    if "\x00" in path:
        raise ValueError(f"video path {path!r} contains a NUL character")
    return path


def _normalized(
    result: VideoResult, *, embedding_dim: int, num_classes: int, embedding_dtype: np.dtype
) -> VideoResult:
    """A copy of ``result`` with checked shapes and the file's dtypes; ValueError if inconsistent."""
    path = _check_path(result.path)
    if result.status not in STATUSES:
        raise ValueError(f"{path}: status must be one of {STATUSES}, got {result.status!r}")
    n = int(np.shape(result.start_sec)[0]) if np.ndim(result.start_sec) == 1 else -1
    if n < 0:
        raise ValueError(f"{path}: start_sec must be 1-D, got shape {np.shape(result.start_sec)}")
    if result.status == "failed" and n:
        raise ValueError(f"{path}: a failed video has no clips, got {n}")
    if result.status == "ok" and not n:
        raise ValueError(f"{path}: an ok video has at least one clip")
    arrays = {
        "embedding": (result.embedding, (n, embedding_dim), embedding_dtype),
        "logits": (result.logits, (n, num_classes), np.dtype(np.float32)),
        "start_sec": (result.start_sec, (n,), np.dtype(np.float64)),
        "end_sec": (result.end_sec, (n,), np.dtype(np.float64)),
        "valid_frames": (result.valid_frames, (n,), np.dtype(np.int32)),
    }
    cast = {}
    for name, (value, shape, dtype) in arrays.items():
        array = np.asarray(value)
        if n == 0 and array.size == 0:
            array = array.reshape(shape)
        if array.shape != shape:
            raise ValueError(f"{path}: {name} has shape {array.shape}, expected {shape}")
        if name == "valid_frames" and array.dtype.kind not in "iu":
            raise ValueError(f"{path}: valid_frames must be integers, got {array.dtype}")
        cast[name] = np.ascontiguousarray(array, dtype=dtype)
    size = int(result.size_bytes)
    if size < 0:
        raise ValueError(f"{path}: size_bytes must be >= 0, got {size}")
    return VideoResult(
        path=path,
        status=result.status,
        error=_one_line(result.error),
        size_bytes=size,
        mtime=float(result.mtime),
        duration_sec=math.nan if result.duration_sec is None else float(result.duration_sec),
        fps=math.nan if result.fps is None else float(result.fps),
        width=int(result.width or 0),
        height=int(result.height or 0),
        **cast,
    )


def _table_from_results(results: Sequence[VideoResult]) -> dict[str, np.ndarray]:
    counts = np.array([r.num_clips for r in results], dtype=np.int64)
    table: dict[str, np.ndarray] = {}
    for name, dtype in VIDEO_COLUMNS.items():
        if name in ("clip_offset", "clip_count"):
            continue
        values = [getattr(r, name) for r in results]
        table[name] = np.array(values, dtype=object) if name in _STRING_COLUMNS else np.array(values, dtype=dtype)
    table["clip_count"] = counts
    table["clip_offset"] = np.cumsum(counts) - counts
    return table


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


# writing


class FeatureWriter:
    """Writes per-clip results of many videos into one HDF5 file, crash-safely and resumably.

    Args:
        output: the final file (``feats.h5``); the work directory ``feats.h5.parts/`` goes beside
            it. Its directory must exist.
        settings: what defines the results (model, weights_sha256, num_frames, fps, stride_sec,
            input_size, mean, std, crops, ...); stored as root attrs. Values: str, bool, int,
            float, lists of numbers or of strings; dicts are stored as JSON strings.
        classes: class names, one per logit.
        embedding_dim: width ``D`` of ``/clips/embedding``.
        embedding_dtype: "float16" (default) or "float32".
        overwrite: discard an existing output and work directory made with other settings
            (or the same ones) and start from nothing.
        retry_failed: :meth:`is_done` answers False for videos that failed before.
        flush_videos: commit a chunk once this many finished videos are buffered ...
        flush_seconds: ... or when a video finishes this long after the last commit.

    Raises SettingsMismatch if an existing output or work directory was made with other
    settings, classes or embedding size/dtype (and ``overwrite`` is False), StoreError if the
    output cannot be written or another process is writing it. Use as a context manager::

        with FeatureWriter(out, settings=..., classes=..., embedding_dim=768) as writer:
            for video in videos:
                if not writer.is_done(rel, size, mtime):
                    writer.add(result)
            writer.finalize()

    Leaving the ``with`` block commits the buffered videos and releases the output but does not
    assemble the final file: call :meth:`finalize` (also after Ctrl-C, to keep what finished).
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        *,
        settings: Mapping[str, Any],
        classes: Sequence[str],
        embedding_dim: int,
        embedding_dtype: str = "float16",
        overwrite: bool = False,
        retry_failed: bool = False,
        flush_videos: int = 32,
        flush_seconds: float = 10.0,
    ) -> None:
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"embedding_dtype must be one of {EMBEDDING_DTYPES}, got {embedding_dtype!r}")
        if embedding_dim <= 0 or not classes:
            raise ValueError(f"need embedding_dim > 0 and at least one class, got {embedding_dim} and {len(classes)}")
        if flush_videos < 1 or flush_seconds < 0:
            raise ValueError(f"need flush_videos >= 1 and flush_seconds >= 0, got {flush_videos}, {flush_seconds}")
        reserved = sorted(set(settings) & set(WRITER_ATTRS))
        if reserved:
            raise ValueError(f"settings may not set {', '.join(reserved)}: the writer sets them")
        missing = [key for key in REQUIRED_SETTINGS if key not in settings]
        if missing:
            raise ValueError(f"settings lack {', '.join(missing)}")
        self.output = Path(output)
        self.parts = parts_path(self.output)
        self.retry_failed = retry_failed
        self.flush_videos = flush_videos
        self.flush_seconds = flush_seconds
        self._attrs = {key: _to_attr(key, value) for key, value in settings.items()}
        self._classes = [str(c) for c in classes]
        self._embedding_dim = int(embedding_dim)
        self._embedding_dtype = np.dtype(embedding_dtype)
        self._identity = _file_identity(
            {key: _canon(value) for key, value in self._attrs.items()},
            list(self._classes),
            (self._embedding_dim, embedding_dtype),
        )
        self._buffer: dict[str, VideoResult] = {}
        self._done: dict[str, tuple[int, float, str]] = {}  # path -> (size_bytes, mtime, status)
        self._chunks: list[Path] = []  # committed, oldest first
        self._next_seq = 1
        self._lock_fd: int | None = None
        self._closed = False
        self._finalized: Path | None = None
        self._last_commit = time.monotonic()
        try:
            self._open(overwrite)
        except BaseException:
            self._release()
            raise

    # opening

    def _open(self, overwrite: bool) -> None:
        parent = self.output.parent
        if not parent.is_dir():
            problem = "is not a directory" if parent.exists() else "does not exist"
            raise StoreError(f"{parent} {problem}: create the directory or choose another -o")
        if self.output.is_dir():
            raise StoreError(f"{self.output} is a directory: choose another -o")
        try:
            self.parts.mkdir(exist_ok=True)
            self._lock()
            for tmp in self.parts.glob("*" + _TMP_SUFFIX):  # left by a kill while writing
                tmp.unlink()
            if overwrite:
                self._discard()
        except OSError as exc:
            raise StoreError(
                f"cannot write in {parent}: {_reason(exc)}; choose another -o or fix the permissions"
            ) from exc
        if self.output.exists():
            self._check_final_and_remember()
        self._chunks = self._list_chunks()
        manifest = self.parts / _MANIFEST
        if manifest.exists():
            self._check_manifest(manifest)
        elif self._chunks:
            raise StoreError(
                f"{self.parts} holds chunks but no {_MANIFEST}: delete {self.parts} or rerun with --overwrite"
            )
        else:
            self._write_manifest(manifest)
        for chunk in self._chunks:
            with _open_h5(chunk, "committed results", "delete it to redo the videos it holds") as h5:
                self._remember(_read_table(h5))
        if self._chunks:
            self._next_seq = int(_CHUNK_RE.match(self._chunks[-1].name).group(1)) + 1

    def _lock(self) -> None:
        self._lock_fd = os.open(self.parts / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"another vidfeat process is writing {self.output} (it holds {self.parts / _LOCK}): "
                "wait for it to finish or choose another -o"
            ) from None

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        self._closed = True

    def _discard(self) -> None:
        """overwrite=True: remove the old output and parts (chunks before the manifest)."""
        _unlink_quiet(self.output)
        for chunk in self._list_chunks():
            chunk.unlink()
        _unlink_quiet(self.parts / _MANIFEST)
        _fsync_dir(self.parts)
        _fsync_dir(self.output.parent)

    def _list_chunks(self) -> list[Path]:
        found = [(int(m.group(1)), p) for p in self.parts.iterdir() if (m := _CHUNK_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def _mismatch(self, where: str, old: Mapping[str, Any], fix: str) -> None:
        diffs = _differences(old, self._identity)
        if not diffs:
            return
        then, now = _describe(old), _describe(self._identity)
        if then != now:  # the model or weights differ: name them, then the other differences
            made = f"made with {then}, this run uses {now}"
            diffs.pop("model", None)
            diffs.pop("weights_sha256", None)
        else:
            made = "made with other settings"
        lines = list(diffs.values())
        shown = "; ".join(lines[:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
        raise SettingsMismatch(f"{where} was {made}{f' ({shown})' if shown else ''}: {fix}")

    def _check_final_and_remember(self) -> None:
        """Refuse an existing output made otherwise; note the videos it holds as done."""
        fix = "rerun with --overwrite to replace it, or choose another -o"
        with _open_h5(self.output, "output", fix) as h5:
            attrs = {key: _canon(value) for key, value in h5.attrs.items()}
            if attrs.get("format") != FORMAT or "clips/embedding" not in h5 or "classes" not in h5:
                raise StoreError(f"{self.output} exists and is not a vidfeat file: {fix}")
            if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
                raise StoreError(f"{self.output} has format_version {attrs['format_version']}, newer than this "
                                 f"vidfeat reads ({FORMAT_VERSION}): upgrade vidfeat, or {fix}")
            old = _file_identity(
                {key: value for key, value in attrs.items() if key not in WRITER_ATTRS},
                list(h5["classes"].asstr()[()]),
                h5["clips/embedding"],
            )
            self._mismatch(self.output.name, old, fix)
            self._remember(_read_table(h5))

    def _check_manifest(self, manifest: Path) -> None:
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))["identity"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"cannot read {manifest}: {_reason(exc)}; delete {self.parts} or rerun with --overwrite"
            ) from exc
        self._mismatch(
            f"the unfinished work in {self.parts}",
            old,
            "rerun with the same settings to resume it, with --overwrite to discard it, or choose another -o",
        )

    def _write_manifest(self, manifest: Path) -> None:
        text = json.dumps({"format": "vidfeat-parts", "format_version": FORMAT_VERSION, "identity": self._identity},
                          indent=1, ensure_ascii=False)
        tmp = manifest.with_name(manifest.name + _TMP_SUFFIX)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, manifest)
            _fsync_dir(self.parts)
        except OSError as exc:
            _unlink_quiet(tmp)
            raise StoreError(f"cannot write {manifest}: {_reason(exc)}; free space or choose another -o") from exc

    def _remember(self, table: Mapping[str, np.ndarray]) -> None:
        for path, size, mtime, status in zip(
            table["path"].tolist(), table["size_bytes"].tolist(), table["mtime"].tolist(), table["status"].tolist()
        ):
            self._done[path] = (size, mtime, status)

    # the public API

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep what finished; the original exception matters more than a failed commit
            self.close()
        except StoreError:
            pass

    @property
    def committed_chunks(self) -> list[Path]:
        """Chunk files committed so far in the work directory, oldest first."""
        return list(self._chunks)

    def is_done(self, path: str, size_bytes: int, mtime: float) -> bool:
        """Whether ``path`` (same size and mtime) has a result already, committed or buffered.

        Failed videos count as done unless ``retry_failed``.
        """
        done = self._done.get(path)
        if done is None or done[0] != int(size_bytes) or done[1] != float(mtime):
            return False
        return not (self.retry_failed and done[2] == "failed")

    def add(self, result: VideoResult) -> None:
        """Buffer one finished video; commit a chunk when the buffer is full or old enough.

        A result for a path already present replaces it (in the final file too). Raises
        ValueError for an inconsistent result, StoreError if committing fails (the buffered
        videos are kept, so a later :meth:`flush` may still succeed).
        """
        self._check_open()
        record = _normalized(
            result,
            embedding_dim=self._embedding_dim,
            num_classes=len(self._classes),
            embedding_dtype=self._embedding_dtype,
        )
        self._buffer.pop(record.path, None)  # re-insert: the newest result is the last
        self._buffer[record.path] = record
        self._done[record.path] = (record.size_bytes, record.mtime, record.status)
        if len(self._buffer) >= self.flush_videos or time.monotonic() - self._last_commit >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Commit the buffered videos as one chunk file (atomic, durable). No-op if none."""
        self._check_open()
        if not self._buffer:
            self._last_commit = time.monotonic()
            return
        records = sorted(self._buffer.values(), key=lambda r: r.path)
        chunk = self.parts / f"chunk-{self._next_seq:06d}.h5"
        tmp = chunk.with_name(chunk.name + _TMP_SUFFIX)
        try:
            with h5py.File(tmp, "w") as h5:
                h5.attrs["format"] = "vidfeat-chunk"
                h5.attrs["format_version"] = FORMAT_VERSION
                table = _table_from_results(records)
                for name, dtype in VIDEO_COLUMNS.items():
                    h5.create_dataset(f"videos/{name}", data=table[name], dtype=dtype)
                for name in _CLIP_COPY:
                    h5.create_dataset(f"clips/{name}", data=np.concatenate([getattr(r, name) for r in records]))
            _fsync_file(tmp)
            os.replace(tmp, chunk)
        except BaseException as exc:  # Ctrl-C too: no temporary file left behind
            _unlink_quiet(tmp)
            if not isinstance(exc, (OSError, RuntimeError)):
                raise
            raise StoreError(
                f"cannot write {chunk.name} in {self.parts}: {_reason(exc)}; the {self._committed_count()} "
                f"videos committed before are kept: free space (or fix the cause) and rerun the same command to resume"
            ) from exc
        self._chunks.append(chunk)
        self._next_seq += 1
        self._buffer.clear()
        self._last_commit = time.monotonic()
        try:
            _fsync_dir(self.parts)
        except OSError as exc:
            raise StoreError(f"cannot sync {self.parts}: {_reason(exc)}; rerun the same command to resume") from exc

    def finalize(self) -> Path:
        """Commit what is buffered, assemble the final file, rename it into place, drop the parts.

        Safe after a partial run (Ctrl-C): the file then holds the videos finished so far, and a
        rerun of the same command adds the rest. Closes the writer; returns the output path.
        """
        if self._finalized is not None:
            return self._finalized
        self.flush()
        if self._chunks or not self.output.exists():
            sources = ([self.output] if self.output.exists() else []) + self._chunks
            tmp = self.parts / _ASSEMBLING
            attrs = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **self._attrs,
                "vidfeat_version": __version__,
                "torch_version": _torch_version(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            try:
                _assemble(
                    tmp,
                    sources,
                    attrs=attrs,
                    classes=self._classes,
                    embedding_dim=self._embedding_dim,
                    embedding_dtype=self._embedding_dtype,
                )
                _fsync_file(tmp)
                os.replace(tmp, self.output)
                _fsync_dir(self.output.parent)
            except BaseException as exc:
                _unlink_quiet(tmp)
                if not isinstance(exc, (OSError, RuntimeError)):
                    raise
                raise StoreError(
                    f"cannot assemble {self.output}: {_reason(exc)}; the committed videos in {self.parts} are kept: "
                    "free space (or fix the cause) and rerun the same command to finish"
                ) from exc
        self._remove_parts()
        self._finalized = self.output
        return self.output

    def close(self) -> None:
        """Commit the buffered videos and release the output (does not finalize)."""
        if self._closed:
            return
        try:
            if self._finalized is None:
                self.flush()
        finally:
            self._release()

    # internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(
                f"the writer of {self.output} is closed: open a new FeatureWriter with the same settings to resume"
            )

    def _committed_count(self) -> int:
        return len(set(self._done) - set(self._buffer))

    def _remove_parts(self) -> None:
        """Best effort: the final file holds everything, so leftovers only cost disk space."""
        try:
            for chunk in self._chunks:
                _unlink_quiet(chunk)
            _unlink_quiet(self.parts / _MANIFEST)
            _unlink_quiet(self.parts / _LOCK)
            self.parts.rmdir()
        except OSError:
            pass
        finally:
            self._release()


def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


# reading


@dataclass(frozen=True)
class VideoTable:
    """The /videos table: one entry per video, arrays in file order (sorted by path)."""

    path: np.ndarray  # str objects
    status: np.ndarray  # str objects
    error: np.ndarray  # str objects
    size_bytes: np.ndarray
    mtime: np.ndarray
    duration_sec: np.ndarray
    fps: np.ndarray
    width: np.ndarray
    height: np.ndarray
    clip_offset: np.ndarray
    clip_count: np.ndarray

    def __len__(self) -> int:
        return len(self.path)

    def index(self, path: str) -> int:
        """Row of ``path`` in /videos; KeyError if absent (binary search: rows are sorted)."""
        i = int(np.searchsorted(self.path, path))
        if i < len(self.path) and self.path[i] == path:
            return i
        raise KeyError(f"no video {path!r} in this file")

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per video (JSON-friendly)."""
        names = list(VIDEO_COLUMNS)
        columns = [getattr(self, name).tolist() for name in names]
        return [dict(zip(names, values)) for values in zip(*columns)]


@dataclass(frozen=True)
class VideoClips:
    """The clips of one video (rows ``[first_row, first_row + len)`` of /clips)."""

    path: str
    first_row: int
    embedding: np.ndarray  # [n, D]
    logits: np.ndarray  # [n, C] float32
    start_sec: np.ndarray  # [n] float64
    end_sec: np.ndarray  # [n] float64
    valid_frames: np.ndarray  # [n] int32

    def __len__(self) -> int:
        return len(self.start_sec)


class FeatureFile:
    """A finished vidfeat file, read with plain h5py (``.h5`` is the open ``h5py.File``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(_missing_message(self.path))
        self.h5 = _open_h5(self.path, "feature file", "check the path")
        try:
            fmt = _canon(self.h5.attrs.get("format"))
            if fmt != FORMAT:
                raise StoreError(f"{self.path} is not a vidfeat file (format attr {fmt!r})")
            version = int(_canon(self.h5.attrs.get("format_version", 0)))
            if version > FORMAT_VERSION:
                raise StoreError(f"{self.path} has format_version {version}; this vidfeat reads up to "
                                 f"{FORMAT_VERSION}: upgrade vidfeat")
        except BaseException:
            self.h5.close()
            raise
        self._videos: VideoTable | None = None
        self._classes: list[str] | None = None

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.h5.close()

    def __len__(self) -> int:
        """Number of clips (rows of /clips)."""
        return int(self.h5["clips/embedding"].shape[0])

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attrs as plain Python values."""
        return {key: _canon(value) for key, value in self.h5.attrs.items()}

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            self._classes = list(self.h5["classes"].asstr()[()])
        return self._classes

    @property
    def embeddings(self) -> h5py.Dataset:
        """/clips/embedding ``[N, D]``, lazy: slice it, or use :meth:`load_embeddings`."""
        return self.h5["clips/embedding"]

    @property
    def logits(self) -> h5py.Dataset:
        """/clips/logits ``[N, C]``, lazy."""
        return self.h5["clips/logits"]

    def load_embeddings(self, dtype: Any = None) -> np.ndarray:
        """The whole ``[N, D]`` matrix in memory (optionally cast, e.g. ``np.float32``)."""
        data = self.embeddings[()]
        return data if dtype is None else data.astype(dtype, copy=False)

    @property
    def videos(self) -> VideoTable:
        if self._videos is None:
            self._videos = VideoTable(**_read_table(self.h5))
        return self._videos

    def clips(self, video_path: str) -> VideoClips:
        """The clips of one video, by its relative path; KeyError if it is not in the file."""
        v = self.videos.index(video_path)
        start = int(self.videos.clip_offset[v])
        rows = slice(start, start + int(self.videos.clip_count[v]))
        data = {name: self.h5[f"clips/{name}"][rows] for name in _CLIP_COPY}
        return VideoClips(path=video_path, first_row=start, **data)

    def video_of(self, row: int) -> str:
        """Path of the video that clip ``row`` belongs to."""
        return str(self.videos.path[int(self.h5["clips/video"][row])])

    def topk(self, row: int, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable classes of clip ``row``: softmax of its logits, best first."""
        logits = self.h5["clips/logits"][row].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = np.argsort(-p, kind="stable")[: max(0, k)]
        return [(self.classes[i], float(p[i])) for i in best]


def open_features(path: str | os.PathLike[str]) -> FeatureFile:
    """Open a finished vidfeat file for reading (use as a context manager)."""
    return FeatureFile(path)


def _missing_message(path: Path) -> str:
    parts = parts_path(path)
    if parts.is_dir():
        chunks = sum(1 for p in parts.iterdir() if _CHUNK_RE.match(p.name))
        return (f"{path} is not finished yet ({parts} holds {chunks} committed chunks): "
                "rerun the same extract command to resume and finish it")
    return f"{path} does not exist"


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``vidfeat info`` shows: settings, counts by status, clips, failed/partial reasons."""
    with open_features(path) as f:
        attrs = f.attrs
        videos = f.videos
        counts = videos.clip_count
        status = {s: int(np.count_nonzero(videos.status == s)) for s in STATUSES}
        problems = {
            s: [
                {"path": videos.path[i], "error": videos.error[i], "clips": int(counts[i])}
                for i in np.flatnonzero(videos.status == s)
            ]
            for s in ("failed", "partial")
        }
        return {
            "path": str(path),
            "format_version": attrs.get("format_version"),
            "settings": {k: v for k, v in attrs.items() if k not in WRITER_ATTRS},
            "vidfeat_version": attrs.get("vidfeat_version"),
            "torch_version": attrs.get("torch_version"),
            "created": attrs.get("created"),
            "classes": len(f.classes),
            "embedding_dim": int(f.embeddings.shape[1]),
            "embedding_dtype": f.embeddings.dtype.name,
            "videos": len(videos),
            "clips": len(f),
            "status": status,
            "failed": problems["failed"],
            "partial": problems["partial"],
        }


# verifying


class _Faults:
    """Collects faults, one line per kind, with the first few examples and a count."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._rows: dict[str, tuple[int, list[str]]] = {}

    def add(self, line: str) -> None:
        self.lines.append(line)

    def rows(self, kind: str, examples: Iterable[Any], count: int) -> None:
        if count:
            total, shown = self._rows.get(kind, (0, []))
            shown = shown + [str(e) for e in islice(examples, max(0, _FAULT_EXAMPLES - len(shown)))]
            self._rows[kind] = (total + count, shown)

    def result(self) -> list[str]:
        out = list(self.lines)
        for kind, (count, shown) in self._rows.items():
            more = f", ... ({count} in all)" if count > len(shown) else ""
            out.append(f"{kind}: {', '.join(shown)}{more}")
        return out


def verify(path: str | os.PathLike[str]) -> list[str]:
    """Check a finished file against the format contract; return the faults (empty = valid).

    Raises StoreError only if the file cannot be opened at all. Streams /clips in blocks.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(_missing_message(path))
    faults = _Faults()
    with _open_h5(path, "feature file", "check the path") as h5:
        _verify(h5, faults)
    return faults.result()


def _verify(h5: h5py.File, faults: _Faults) -> None:
    attrs = {key: _canon(value) for key, value in h5.attrs.items()}
    if attrs.get("format") != FORMAT:
        faults.add(f"root attr format is {attrs.get('format')!r}, not {FORMAT!r}")
    for key in ("format_version", *REQUIRED_SETTINGS, *VOLATILE_ATTRS):
        if key not in attrs:
            faults.add(f"root attr {key} is missing")
    expected = {
        **{f"videos/{name}": dtype for name, dtype in VIDEO_COLUMNS.items()},
        "clips/embedding": None,
        "clips/logits": np.dtype(np.float32),
        "clips/video": np.dtype(np.int64),
        **{f"clips/{name}": dtype for name, dtype in _CLIP_ROW_COLUMNS.items()},
        "classes": _STR,
    }
    missing = [name for name in expected if not isinstance(h5.get(name), h5py.Dataset)]
    if missing:
        faults.add(f"missing datasets: {', '.join(missing)}")
        return
    layout_ok = True
    for name, dtype in expected.items():
        actual = h5[name].dtype
        if dtype is _STR:
            if h5py.check_string_dtype(actual) is None:
                faults.add(f"{name} has dtype {actual}, not a string type")
                layout_ok = False
        elif dtype is None:
            if actual.name not in EMBEDDING_DTYPES:
                faults.add(f"{name} has dtype {actual}, not float16 or float32")
        elif actual != dtype:
            faults.add(f"{name} has dtype {actual}, not {dtype}")
    n_videos = h5["videos/path"].shape[0] if h5["videos/path"].ndim == 1 else -1
    emb, logits = h5["clips/embedding"], h5["clips/logits"]
    n_clips = emb.shape[0] if emb.ndim == 2 else -1
    n_classes = h5["classes"].shape[0] if h5["classes"].ndim == 1 else -1
    layout_ok = layout_ok and n_videos >= 0 and n_clips >= 0 and n_classes >= 0
    for name in VIDEO_COLUMNS:
        if h5[f"videos/{name}"].shape != (n_videos,):
            faults.add(f"videos/{name} has shape {h5[f'videos/{name}'].shape}, expected ({n_videos},)")
            layout_ok = False
    for name in ("video", *_CLIP_ROW_COLUMNS):
        if h5[f"clips/{name}"].shape != (n_clips,):
            faults.add(f"clips/{name} has shape {h5[f'clips/{name}'].shape}, expected ({n_clips},)")
            layout_ok = False
    if logits.shape != (n_clips, n_classes):
        faults.add(f"clips/logits has shape {logits.shape}, expected ({n_clips}, {n_classes}): one column per class")
        layout_ok = False
    if not layout_ok:
        return  # the row checks below assume the layout is right

    table = _read_table(h5)
    paths, counts, offsets = table["path"], table["clip_count"], table["clip_offset"]
    bad_status = ~np.isin(table["status"].astype(str), STATUSES)
    faults.rows("videos/status not ok|partial|failed", paths[bad_status], int(bad_status.sum()))
    multi = np.array(["\n" in e or "\r" in e for e in table["error"]], dtype=bool)
    faults.rows("videos/error with more than one line", paths[multi], int(multi.sum()))
    if n_videos > 1:
        increasing = (paths[1:] > paths[:-1]).astype(bool)
        if not increasing.all():
            row = int(np.argmin(increasing)) + 1
            faults.add(f"videos/path not sorted and unique at row {row} ({paths[row]})")
    absolute = np.array([p.startswith("/") or not p for p in paths], dtype=bool)
    faults.rows("videos/path not relative", paths[absolute], int(absolute.sum()))
    failed_with_clips = (table["status"] == "failed") & (counts != 0)
    faults.rows("failed videos with clips", paths[failed_with_clips], int(failed_with_clips.sum()))
    ok_without = (table["status"] == "ok") & (counts <= 0)
    faults.rows("ok videos without clips", paths[ok_without], int(ok_without.sum()))
    mapping_ok = True
    if (counts < 0).any():
        faults.rows("videos/clip_count negative", paths[counts < 0], int((counts < 0).sum()))
        mapping_ok = False
    else:
        want = np.cumsum(counts) - counts
        wrong = offsets != want
        if wrong.any():
            faults.rows("videos/clip_offset not contiguous (video: found, expected)",
                        [f"{paths[i]}: {offsets[i]}, {want[i]}" for i in np.flatnonzero(wrong)[:_FAULT_EXAMPLES]],
                        int(wrong.sum()))
            mapping_ok = False
        if int(counts.sum()) != n_clips:
            faults.add(f"videos/clip_count sums to {int(counts.sum())}, but /clips has {n_clips} rows")
            mapping_ok = False

    num_frames = attrs.get("num_frames")
    block = _block_rows(emb.shape[1], n_classes)
    duration = table["duration_sec"]
    ends = np.cumsum(counts) if mapping_ok else None
    for start in range(0, n_clips, block):
        rows = np.arange(start, min(n_clips, start + block))
        sl = slice(rows[0], rows[-1] + 1)
        for name, ds in (("clips/embedding", emb), ("clips/logits", logits)):
            values = ds[sl]
            bad = ~np.isfinite(values).all(axis=1)
            faults.rows(f"{name}: rows with NaN or inf", rows[bad], int(bad.sum()))
        t0, t1 = h5["clips/start_sec"][sl], h5["clips/end_sec"][sl]
        bad = ~(t0 <= t1)
        faults.rows("clips: rows with start_sec > end_sec (or NaN)", rows[bad], int(bad.sum()))
        bad = t0 < -TIME_TOLERANCE_SEC
        faults.rows("clips: rows with start_sec < 0", rows[bad], int(bad.sum()))
        vf = h5["clips/valid_frames"][sl]
        if isinstance(num_frames, int):
            bad = (vf < 1) | (vf > num_frames)
            faults.rows(f"clips/valid_frames outside [1, {num_frames}]", rows[bad], int(bad.sum()))
        if ends is None:
            continue
        video = np.searchsorted(ends, rows, side="right")
        found = h5["clips/video"][sl]
        bad = found != video
        faults.rows("clips/video does not match videos/clip_offset (row: found, expected)",
                    (f"{r}: {f}, {v}" for r, f, v in zip(rows[bad], found[bad], video[bad])), int(bad.sum()))
        limit = duration[video] + TIME_TOLERANCE_SEC
        bad = np.isfinite(limit) & (duration[video] > 0) & ((t1 > limit) | (t0 > limit))
        faults.rows("clips: times beyond the video's duration_sec (row: video, end_sec, duration_sec)",
                    (f"{r}: {paths[v]}, {e:.3f}, {d:.3f}" for r, v, e, d in
                     zip(rows[bad], video[bad], t1[bad], duration[video][bad])), int(bad.sum()))
