"""The format contract shared by the writer, the reader and the checks: constants, column
dtypes, attribute helpers and low-level HDF5 helpers (see the package docstring for the layout)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from ..errors import SettingsMismatch, StoreError
from ..errors import one_line as _one_line

FORMAT = "vidfeat"
FORMAT_VERSION = 4
"""The newest version this vidfeat reads. 2 adds /videos/warning, /videos/embedding_mean and
/videos/scores_mean; 3 adds /videos/first_frame_sec and the optional captions (/captions/*,
/clips/text); 4 is a grown file: virtual datasets over segment files, /videos sorted by path
within each segment (vidfeat.store.segments). A plain file is still written as version 3
(docs/format.md)."""

Status = Literal["ok", "partial", "failed"]
STATUSES: tuple[str, ...] = ("ok", "partial", "failed")

# Root attrs that say when and with which software a file was made, not what it holds: two runs
# over the same inputs differ only in these.
VOLATILE_ATTRS: tuple[str, ...] = ("created", "vidfeat_version", "torch_version")
# Root attrs the store sets itself; a caller's settings may not use these names. The caption attrs
# (files with captions only) say where the captions came from and what was wrong with that source:
# content, not settings.
CAPTION_ATTRS: tuple[str, ...] = ("captions_source", "captions_warnings")
SEGMENT_ATTRS: tuple[str, ...] = ("segments", "segment_videos")  # a grown file's (vidfeat.store.segments)
# A segment file of a grown file: its "format" attr, and the attrs that count its rows in the whole
# file (the videos and clips of the segments before it).
SEGMENT_FORMAT = "vidfeat-segment"
SEGMENT_BASE_ATTRS: tuple[str, ...] = ("video_base", "clip_base")
WRITER_ATTRS: tuple[str, ...] = ("format", "format_version", *VOLATILE_ATTRS, *CAPTION_ATTRS, *SEGMENT_ATTRS)
# Settings every file carries (docs/format.md, root attributes).
REQUIRED_SETTINGS: tuple[str, ...] = (
    "model",
    "weights_sha256",
    "num_frames",
    "fps",
    "stride_sec",
    "input_size",
    "mean",
    "std",
    "decoder",
)
# Settings that files written before them lack, read as this value (they decoded with PyAV).
SETTING_DEFAULTS: dict[str, Any] = {"decoder": "pyav"}

EMBEDDING_DTYPES = ("float16", "float32")

_STR = h5py.string_dtype()  # UTF-8, variable length

VIDEO_COLUMNS: dict[str, Any] = {
    "path": _STR,
    "status": _STR,
    "error": _STR,
    "warning": _STR,
    "meta": _STR,
    "size_bytes": np.dtype(np.int64),
    "mtime": np.dtype(np.float64),
    "duration_sec": np.dtype(np.float64),
    "fps": np.dtype(np.float64),
    "width": np.dtype(np.int32),
    "height": np.dtype(np.int32),
    "first_frame_sec": np.dtype(np.float64),
    "clip_offset": np.dtype(np.int64),
    "clip_count": np.dtype(np.int64),
}
"""/videos/<name> -> dtype, one row per video (the 1-D columns; the means are 2-D)."""

_STRING_COLUMNS = ("path", "status", "error", "warning", "meta")
# Columns added after version 1: the version that added each, and the value it reads as in older files.
_ADDED_COLUMNS: dict[str, tuple[int, Any]] = {"warning": (2, ""), "first_frame_sec": (3, math.nan), "meta": (3, "")}
# Columns a file of their version may still lack (written before they were added, with no
# format change): they read as their _ADDED_COLUMNS value and their absence is no fault.
_OPTIONAL_COLUMNS = frozenset({"meta"})
# Per-video means (version 2): /videos/<name> [V, width], float32, NaN rows for videos without clips.
_MEAN_COLUMNS = ("embedding_mean", "scores_mean")

# /clips columns copied row by row from the sources; /clips/video is recomputed on assembly.
_CLIP_ROW_COLUMNS: dict[str, Any] = {
    "start_sec": np.dtype(np.float64),
    "end_sec": np.dtype(np.float64),
    "valid_frames": np.dtype(np.int32),
}
_CLIP_COPY = ("embedding", "logits", *_CLIP_ROW_COLUMNS)

# Work directory entries (chunk file names; the other entries are the writer's).
_CHUNK_RE = re.compile(r"^chunk-(\d{6,})\.h5$")

BLOCK_BYTES = 16 << 20
"""Bytes of rows read, copied, checked or scored per step, here and in retrieval (bounded memory)."""

SHARD_FILE_RE = re.compile(r"^(\d{5,})-of-(\d{5,})\.h5$")
"""Name of a shard's output file: ``IIIII-of-NNNNN.h5`` (zero-padded index and count)."""


def shard_file_name(index: int, count: int) -> str:
    """Shard 3 of 8 -> ``00003-of-00008.h5`` (matches :data:`SHARD_FILE_RE`)."""
    return f"{index:05d}-of-{count:05d}.h5"


# helpers


def parts_path(output: str | os.PathLike[str]) -> Path:
    """The work directory of an output file: ``feats.h5`` -> ``feats.h5.parts``."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _reason(exc: BaseException) -> str:
    """A short reason for an OS or HDF5 error ("No space left on device").

    HDF5 errors carry a long multi-line description of the failed low-level call; the OS
    message inside it (``error message = '...'``) is what the user needs.
    """
    errno = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    text = _one_line(str(exc))
    found = re.search(r"error message = '([^']*)'", text)
    if found:
        return found.group(1)
    return text.split(" (", 1)[0] or type(exc).__name__


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


def block_rows(row_bytes: int) -> int:
    """Rows of ``row_bytes`` bytes each that make one step of :data:`BLOCK_BYTES` (at least 1)."""
    return max(1, BLOCK_BYTES // max(1, row_bytes))


def _block_rows(embedding_dim: int, num_classes: int) -> int:
    """Rows of /clips per copy/check step: bounded memory whatever the file size."""
    return block_rows(4 * (embedding_dim + num_classes) + 32)


def check_format(h5: h5py.File, path: str | os.PathLike[str], fix: str, *, datasets: bool = True) -> int:
    """Raise StoreError unless ``h5`` is a vidfeat file of a version this vidfeat reads: the
    ``format`` attr, a ``format_version`` from 1 to :data:`FORMAT_VERSION` and (``datasets``)
    the datasets every reader needs (/classes, /videos/path, /clips/embedding). Returns the
    version. ``fix`` says what to do with a file that is not one (e.g. "check the path").
    """
    fmt = _canon(h5.attrs.get("format"))
    if fmt != FORMAT:
        raise StoreError(f"{path} is not a vidfeat file (format attr {fmt!r}): {fix}")
    version = _canon(h5.attrs.get("format_version"))
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(f"{path} has format_version {version!r}, which no vidfeat writes: {fix}")
    if version > FORMAT_VERSION:
        raise StoreError(f"{path} has format_version {version}, newer than this vidfeat reads ({FORMAT_VERSION}): "
                         "upgrade vidfeat")
    needed = ("classes", "videos/path", "clips/embedding") if datasets else ()
    missing = [name for name in needed if not isinstance(h5.get(name), h5py.Dataset)]
    if missing:
        raise StoreError(f"{path} is not a finished vidfeat file (no /{', /'.join(missing)}): {fix}")
    return version


# what defines a file's results, and the one comparison of two of them


def settings_identity(settings: Mapping[str, Any], classes: Sequence[str], width: int, dtype: str) -> dict[str, Any]:
    """What defines a file's results: its settings (canonical values) plus /classes and the
    embedding width and dtype. The extra keys start with '/' (dataset names), so they cannot
    collide with a setting."""
    return {**{key: _canon(value) for key, value in settings.items()}, "/classes": [str(c) for c in classes],
            "/clips/embedding width": int(width), "/clips/embedding dtype": str(dtype)}  # fmt: skip


def file_identity(h5: h5py.File) -> dict[str, Any]:
    """:func:`settings_identity` of an open vidfeat file (its root attrs but the writer's own)."""
    emb = h5["clips/embedding"]
    settings = {key: value for key, value in h5.attrs.items() if key not in WRITER_ATTRS}
    return settings_identity(settings, list(h5["classes"].asstr()[()]), emb.shape[1], emb.dtype.name)


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


def _describe(ident: Mapping[str, Any]) -> str:
    sha = str(ident.get("weights_sha256", "?"))
    return f"model {ident.get('model', '?')} (weights sha256 {sha[:12]}{'…' if len(sha) > 12 else ''})"


def check_same_settings(old: Mapping[str, Any], new: Mapping[str, Any], *, where: str, this: str = "this run",
                        now: str = "now", fix: str) -> None:  # fmt: skip
    """Raise :class:`~vidfeat.errors.SettingsMismatch` unless the identities ``old`` (of
    ``where``, an existing file or work) and ``new`` (of ``this``, which has its values ``now``)
    are the same. One line: the model and weights when they differ, then up to four settings
    with both values ("num_frames=8 there, 16 now"), then ``fix``. A setting a side lacks that
    has a default (:data:`SETTING_DEFAULTS`: files made before it was stored) counts as that."""
    old, new = {**SETTING_DEFAULTS, **old}, {**SETTING_DEFAULTS, **new}
    diffs = {}
    for key in sorted(set(old) | set(new)):
        if key not in old:
            diffs[key] = f"{key} not set there ({now} {_fmt(new[key])})"
        elif key not in new:
            diffs[key] = f"{key}={_fmt(old[key])} there (not set {now})"
        elif not _same(old[key], new[key]):
            a, b = old[key], new[key]
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                i = next(i for i, (x, y) in enumerate(zip(a, b)) if not _same(x, y))
                diffs[key] = f"{key}[{i}]={_fmt(a[i])} there, {_fmt(b[i])} {now}"
            else:
                diffs[key] = f"{key}={_fmt(a)} there, {_fmt(b)} {now}"
    if not diffs:
        return
    then, ours = _describe(old), _describe(new)
    if then != ours:  # the model or weights differ: name them, then the other differences
        made = f"made with {then}, {this} uses {ours}"
        diffs.pop("model", None)
        diffs.pop("weights_sha256", None)
    else:
        made = "made with other settings"
    lines = list(diffs.values())
    shown = "; ".join(lines[:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
    raise SettingsMismatch(f"{where} was {made}{f' ({shown})' if shown else ''}: {fix}")


def _read_table(h5: h5py.Group) -> dict[str, np.ndarray]:
    """All /videos columns (strings as object arrays of str). Small: one row per video."""
    return {name: read_video_column(h5, name) for name in VIDEO_COLUMNS}


def read_video_column(h5: h5py.Group, name: str) -> np.ndarray:
    """One /videos column (strings as an object array of str; a column the file's version
    lacks as its default), without the others."""
    if name in _ADDED_COLUMNS and f"videos/{name}" not in h5:
        dtype = object if name in _STRING_COLUMNS else VIDEO_COLUMNS[name]
        return np.full(h5["videos/path"].shape[0], _ADDED_COLUMNS[name][1], dtype=dtype)
    ds = h5[f"videos/{name}"]
    return ds.asstr()[()] if name in _STRING_COLUMNS else ds[()]


def _open_h5(path: Path, what: str, fix: str, **options: Any) -> h5py.File:
    """``path`` opened for reading (``options``: h5py.File's, e.g. ``rdcc_nbytes``); a one-line
    StoreError naming ``what`` it is and the ``fix`` when it cannot be read."""
    try:
        return h5py.File(path, "r", **options)
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"cannot read {what} {path}: {_reason(exc)}; {fix}") from exc


def _missing_message(path: Path) -> str:
    parts = parts_path(path)
    if parts.is_dir():
        chunks = sum(1 for p in parts.iterdir() if _CHUNK_RE.match(p.name))
        return (f"{path} is not finished yet ({parts} holds {chunks} committed chunks): "
                "rerun the same extract command to resume and finish it")
    return f"{path} does not exist"


def segment_bases(h5: h5py.File) -> tuple[int, int]:
    """(videos, clips) of the segments before a segment file, by which its /videos/clip_offset,
    /clips/video and /captions/video count rows of the whole file; (0, 0) for any other file."""
    if _canon(h5.attrs.get("format", "")) != SEGMENT_FORMAT:
        return 0, 0
    return tuple(int(_canon(h5.attrs.get(key, 0))) for key in SEGMENT_BASE_ATTRS)  # type: ignore[return-value]
