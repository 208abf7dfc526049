"""Writing: :class:`FeatureWriter` commits finished videos as chunk files in the work directory,
resumes after a kill and assembles the final file atomically (see the package docstring)."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from ..version import __version__
from . import segments
from .assemble import assemble
from .final import fsync_dir, unlink_quiet
from .lock import LOCK_NAME, OutputLock
from .resume import ResumeKeys
from .format import (
    _CHUNK_RE,
    _CLIP_COPY,
    _STR,
    _STRING_COLUMNS,
    EMBEDDING_DTYPES,
    FORMAT,
    FORMAT_VERSION,
    REQUIRED_SETTINGS,
    STATUSES,
    VIDEO_COLUMNS,
    WRITER_ATTRS,
    Status,
    _canon,
    _one_line,
    _open_h5,
    _read_table,
    block_rows,
    _reason,
    check_format,
    check_same_settings,
    file_identity,
    parts_path,
    settings_identity,
)

# Work directory entries.
_MANIFEST = "settings.json"
_ASSEMBLING = "assembling.h5.tmp"
_TMP_SUFFIX = ".tmp"
_TABLES = "tables.jsonl"
"""One line per committed chunk: its number, its size in bytes and its videos' (path, size,
mtime, status). A resumed run reads this one file, not every chunk (a HowTo100M-size run commits
tens of thousands); a chunk it does not list (a kill between the chunk's rename and the line's
append) or lists with another size is read from the chunk itself."""


# helpers


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


# results


@dataclass(kw_only=True)
class VideoResult:
    """Everything extracted from one video: metadata plus ``n`` clips (``n = 0`` if failed).

    ``path`` is relative to the input root, '/' separated; with ``size_bytes`` and ``mtime`` it is
    the resume key. Unknown ``duration_sec``/``fps`` are NaN (``None`` is accepted), unknown
    ``width``/``height`` 0. ``embedding`` is ``[n, D]``, ``logits`` ``[n, C]``, ``start_sec``,
    ``end_sec`` and ``valid_frames`` ``[n]``; the writer casts them to the file's dtypes.
    ``warning`` is "" or one line about a usable but suspect result (e.g. "sampling at 30 fps
    from a 10 fps video: 66% repeated frames"), stored in /videos/warning.
    """

    path: str
    status: Status
    size_bytes: int
    mtime: float
    error: str = ""  # "" or a one-line reason (partial/failed)
    warning: str = ""  # "" or a one-line note on a result that is usable but suspect
    meta: str = ""  # "" or the video's metadata as JSON text (a webdataset sample's .json), stored as given
    duration_sec: float | None = math.nan
    fps: float | None = math.nan
    width: int | None = 0
    height: int | None = 0
    first_frame_sec: float | None = math.nan  # where clip time 0 lies on the player's clock
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
        warning=_one_line(result.warning),
        meta=str(result.meta or ""),
        size_bytes=size,
        mtime=float(result.mtime),
        duration_sec=math.nan if result.duration_sec is None else float(result.duration_sec),
        fps=math.nan if result.fps is None else float(result.fps),
        width=int(result.width or 0),
        height=int(result.height or 0),
        first_frame_sec=math.nan if result.first_frame_sec is None else float(result.first_frame_sec),
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


_CHUNK_HEAD = re.compile(rb'^\{"chunk": "(chunk-\d+\.h5)", "bytes": (\d+), ')
"""The start of a tables-log line as :meth:`FeatureWriter._append_tables_log` writes it."""


def _listed_rows(log, entry: tuple[int, int, int] | None, size: int) -> list | None:
    """The rows the tables log lists for a chunk of ``size`` bytes (``entry``: from
    :meth:`FeatureWriter._read_tables_log`), or None when it lists none that can be used (not
    listed, listed with another size, or not a valid line): then the chunk is read itself."""
    if log is None or entry is None or entry[0] != size:
        return None
    try:
        log.seek(entry[1])
        rows = json.loads(log.read(entry[2]))["rows"]
        return [(str(p), int(b), float(m), str(st)) for p, b, m, st in rows]
    except (OSError, ValueError, KeyError, TypeError):  # unreadable here: the chunk is read instead
        return None


def _chunk_image(records: Sequence[VideoResult]) -> bytes:
    """The bytes of a chunk file holding ``records``, built in memory.

    HDF5 never writes the chunk to disk itself: a write that fails inside HDF5 (a full disk)
    can surface while a file is being closed, where it cannot be reported cleanly and leaves
    the library in a state that crashes the process. Writing the image with plain Python file
    calls makes a full disk an ordinary OSError. A chunk holds at most ``flush_videos`` videos.
    """
    with h5py.File(f"chunk-{id(records)}.h5", "w", driver="core", backing_store=False) as h5:
        h5.attrs["format"] = "vidfeat-chunk"
        h5.attrs["format_version"] = FORMAT_VERSION
        table = _table_from_results(records)
        for name, dtype in VIDEO_COLUMNS.items():
            h5.create_dataset(f"videos/{name}", data=table[name], dtype=dtype)
        for name in _CLIP_COPY:
            h5.create_dataset(f"clips/{name}", data=np.concatenate([getattr(r, name) for r in records]))
        h5.flush()
        return h5.id.get_file_image()


# writing


def stored_settings(output: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings an earlier run recorded for ``output``: the final file's root attributes,
    else the unfinished work directory's manifest; ``{}`` for a new output or one that cannot be
    read (the writer then reports why)."""
    output = Path(output)
    if output.is_file():
        try:
            with h5py.File(output, "r") as h5:
                attrs = {key: _canon(value) for key, value in h5.attrs.items()}
        except OSError:
            return {}
        return {key: value for key, value in attrs.items() if key not in WRITER_ATTRS}
    try:
        identity = json.loads((parts_path(output) / _MANIFEST).read_text(encoding="utf-8"))["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return dict(identity) if isinstance(identity, dict) else {}


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
        grow: add the videos of a run to an existing output as a new segment
            (:mod:`vidfeat.store.segments`) where it can, instead of assembling the whole file
            again; False always assembles one plain file (shard files, which merge reads).

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
        grow: bool = True,
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
        self._identity = settings_identity(self._attrs, self._classes, self._embedding_dim, embedding_dtype)
        self._buffer: dict[str, VideoResult] = {}
        self._done = ResumeKeys()  # path -> (size_bytes, mtime, status), compact (1.2M videos: ~70 MB)
        self._chunks: list[Path] = []  # committed, oldest first
        self._next_seq = 1
        self.grow = grow
        self._replaces = False  # a committed or buffered video replaces one of those
        self._log_torn = False  # the last append to the tables log failed (it may end mid-line)
        self._output_lock: OutputLock | None = None
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
            segments.clean(self.output)
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
        listed = self._read_tables_log()
        log = open(self.parts / _TABLES, "rb") if listed else None
        try:
            for chunk in self._chunks:
                rows = _listed_rows(log, listed.get(chunk.name), chunk.stat().st_size)
                if rows is not None:
                    paths, sizes, mtimes, statuses = zip(*rows) if rows else ((), (), (), ())
                    self._replaces |= self._done.add_many(paths, sizes, mtimes, statuses)
                    continue
                with _open_h5(chunk, "committed results", "delete it to redo the videos it holds") as h5:
                    table = _read_table(h5)
                self._replaces |= self._remember(table)
        finally:
            if log is not None:
                log.close()
        if self._chunks:
            self._next_seq = int(_CHUNK_RE.match(self._chunks[-1].name).group(1)) + 1

    def _lock(self) -> None:
        self._output_lock = OutputLock(self.output, self.parts)
        self._output_lock.take()

    def _release(self) -> None:
        if self._output_lock is not None:
            self._output_lock.release()
        self._closed = True

    def _discard(self) -> None:
        """overwrite=True: remove the old output and parts (chunks before the manifest)."""
        unlink_quiet(self.output)
        segments.drop(self.output)
        for chunk in self._list_chunks():
            chunk.unlink()
        unlink_quiet(self.parts / _TABLES)
        unlink_quiet(self.parts / _MANIFEST)
        fsync_dir(self.parts)
        fsync_dir(self.output.parent)

    def _list_chunks(self) -> list[Path]:
        found = [(int(m.group(1)), p) for p in self.parts.iterdir() if (m := _CHUNK_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def _mismatch(self, where: str, old: Mapping[str, Any], fix: str) -> None:
        check_same_settings(old, self._identity, where=where, fix=fix)

    def _check_final_and_remember(self) -> None:
        """Refuse an existing output made otherwise; note the videos it holds as done."""
        fix = "rerun with --overwrite to replace it, or choose another -o"
        with _open_h5(self.output, "output", fix) as h5:
            check_format(h5, self.output, fix)
            segments.check_segments(h5, self.output)
            self._mismatch(self.output.name, file_identity(h5), fix)
            # the keys only, a block at a time: memory holds the keys, not the table's strings
            n, step = int(h5["videos/path"].shape[0]), block_rows(256)
            for k in range(0, n, step):
                block = {name: h5[f"videos/{name}"][k : k + step] for name in ("size_bytes", "mtime")}
                block["path"] = h5["videos/path"].asstr()[k : k + step]
                block["status"] = h5["videos/status"].asstr()[k : k + step]
                self._remember(block, final=True)

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
            fsync_dir(self.parts)
        except OSError as exc:
            unlink_quiet(tmp)
            raise StoreError(f"cannot write {manifest}: {_reason(exc)}; free space or choose another -o") from exc

    def _read_tables_log(self) -> dict[str, tuple[int, int, int]]:
        """{chunk name: (its size, where its line starts in the log, the line's length)}, read a
        line at a time (the rows are parsed later, a chunk at a time: :func:`_listed_rows`); a
        torn last line (a kill while appending) is cut off so that the next append starts a line
        of its own."""
        log = self.parts / _TABLES
        listed: dict[str, tuple[int, int, int]] = {}
        try:
            with open(log, "rb") as f:
                at = 0
                for line in f:
                    if not line.endswith(b"\n"):  # torn: cut it off
                        f.close()
                        with open(log, "r+b") as g:
                            g.truncate(at)
                        break
                    head = _CHUNK_HEAD.match(line)
                    if head:
                        listed[head.group(1).decode()] = (int(head.group(2)), at, len(line))
                    at += len(line)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"cannot read {log}: {_reason(exc)}; delete it (the chunks are read instead)") from exc
        return listed

    def _append_tables_log(self, chunk: Path, records: Sequence[VideoResult]) -> None:
        """Best effort: a line that could not be written only means that a resumed run reads
        that chunk itself. A failed append may leave a torn line: the next starts a new one."""
        line = json.dumps({"chunk": chunk.name, "bytes": chunk.stat().st_size,
                           "rows": [[r.path, int(r.size_bytes), float(r.mtime), str(r.status)] for r in records]},
                          ensure_ascii=False)  # fmt: skip
        try:
            with open(self.parts / _TABLES, "ab") as f:
                f.write((("\n" if self._log_torn else "") + line + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            self._log_torn = False
        except OSError:
            self._log_torn = True

    def _remember(self, table: Mapping[str, np.ndarray], final: bool = False) -> bool:
        """Note the videos of a table as done (``final``: the existing output's); whether any of
        them replaces a video of the output."""
        return self._done.add_many(list(table["path"]), table["size_bytes"], table["mtime"], list(table["status"]),
                                   final=final)  # fmt: skip

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

    def has(self, path: str) -> bool:
        """Whether ``path`` has a result of any status already, committed or buffered."""
        return path in self._done

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
        self._done.set(record.path, record.size_bytes, record.mtime, record.status)
        self._replaces |= self._done.in_final(record.path)
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
            image = _chunk_image(records)
            with open(tmp, "wb") as f:
                f.write(image)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, chunk)
        except BaseException as exc:  # Ctrl-C too: no temporary file left behind
            unlink_quiet(tmp)
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
            fsync_dir(self.parts)
        except OSError as exc:
            raise StoreError(f"cannot sync {self.parts}: {_reason(exc)}; rerun the same command to resume") from exc
        self._append_tables_log(chunk, records)

    def finalize(self) -> Path:
        """Commit what is buffered, assemble the final file (or grow it by a segment: see
        :mod:`vidfeat.store.segments`), rename it into place, drop the parts.

        Safe after a partial run (Ctrl-C): the file then holds the videos finished so far, and a
        rerun of the same command adds the rest. Closes the writer; returns the output path.
        """
        if self._finalized is not None:
            return self._finalized
        self.flush()
        if self._chunks or not self.output.exists():
            sources = ([self.output] if self.output.exists() else []) + self._chunks
            attrs = {
                "format": FORMAT,
                "format_version": segments.PLAIN_VERSION,
                **self._attrs,
                "vidfeat_version": __version__,
                "torch_version": _torch_version(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            how = dict(attrs=attrs, classes=self._classes, embedding_dim=self._embedding_dim,
                       embedding_dtype=self._embedding_dtype,
                       kept=f"the {self._committed_count()} committed videos in {self.parts} are kept",
                       rerun="rerun the same command to finish")  # fmt: skip
            grown = None
            if self.grow and self.output.exists() and segments.growable(self.output, self._replaces) is None:
                grown = segments.grow(self.output, self.parts / _ASSEMBLING, self._chunks, **how)
            if grown is None:
                assemble(self.output, self.parts / _ASSEMBLING, sources, **how)
                segments.drop(self.output)
        self._remove_parts()
        self._finalized = self.output
        return self.output

    def finalize_rewrites(self) -> bool:
        """Whether :meth:`finalize` would write an existing output again whole (the run
        replaces videos it holds, or the file cannot grow by a segment): a cost that grows with
        the file, not with the run, which an interrupted run leaves to its rerun."""
        if not self.output.exists() or not (self._chunks or self._buffer):
            return False
        return not self.grow or segments.growable(self.output, self._replaces) is not None

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
        return len(self._done) - len(self._buffer)  # every buffered path is among the done ones

    def _remove_parts(self) -> None:
        """Best effort: the final file holds everything, so leftovers only cost disk space."""
        try:
            for chunk in self._chunks:
                unlink_quiet(chunk)
            unlink_quiet(self.parts / _TABLES)
            unlink_quiet(self.parts / _MANIFEST)
            unlink_quiet(self.parts / LOCK_NAME)
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
