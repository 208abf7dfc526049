"""The format contract shared by the writer, the reader and the checks: constants, column
dtypes, attribute helpers and low-level HDF5 helpers (see the package docstring for the layout)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from ..errors import StoreError
from ..errors import one_line as _one_line

FORMAT = "vidfeat"
FORMAT_VERSION = 2
"""2 adds /videos/warning, /videos/embedding_mean and /videos/scores_mean (docs/format.md)."""

Status = Literal["ok", "partial", "failed"]
STATUSES: tuple[str, ...] = ("ok", "partial", "failed")

# Root attrs that say when and with which software a file was made, not what it holds: two runs
# over the same inputs differ only in these.
VOLATILE_ATTRS: tuple[str, ...] = ("created", "vidfeat_version", "torch_version")
# Root attrs the writer sets itself; a caller's settings may not use these names.
WRITER_ATTRS: tuple[str, ...] = ("format", "format_version", *VOLATILE_ATTRS)
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
)

EMBEDDING_DTYPES = ("float16", "float32")

_STR = h5py.string_dtype()  # UTF-8, variable length

VIDEO_COLUMNS: dict[str, Any] = {
    "path": _STR,
    "status": _STR,
    "error": _STR,
    "warning": _STR,
    "size_bytes": np.dtype(np.int64),
    "mtime": np.dtype(np.float64),
    "duration_sec": np.dtype(np.float64),
    "fps": np.dtype(np.float64),
    "width": np.dtype(np.int32),
    "height": np.dtype(np.int32),
    "clip_offset": np.dtype(np.int64),
    "clip_count": np.dtype(np.int64),
}
"""/videos/<name> -> dtype, one row per video (the 1-D columns; the means are 2-D)."""

_STRING_COLUMNS = ("path", "status", "error", "warning")
# Columns a version-1 file lacks, with the value they read as.
_V1_MISSING_COLUMNS: dict[str, str] = {"warning": ""}
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

_BLOCK_BYTES = 16 << 20  # rows copied or checked per step (bounded memory)


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


def _block_rows(embedding_dim: int, num_classes: int) -> int:
    """Rows per copy/check step: bounded memory whatever the file size."""
    return max(1, _BLOCK_BYTES // (4 * (embedding_dim + num_classes) + 32))


def _read_table(h5: h5py.Group) -> dict[str, np.ndarray]:
    """All /videos columns (strings as object arrays of str). Small: one row per video."""
    table = {}
    for name in VIDEO_COLUMNS:
        if name in _V1_MISSING_COLUMNS and f"videos/{name}" not in h5:
            table[name] = np.full(h5["videos/path"].shape[0], _V1_MISSING_COLUMNS[name], dtype=object)
            continue
        ds = h5[f"videos/{name}"]
        table[name] = ds.asstr()[()] if name in _STRING_COLUMNS else ds[()]
    return table


def _open_h5(path: Path, what: str, fix: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"cannot read {what} {path}: {_reason(exc)}; {fix}") from exc


def _missing_message(path: Path) -> str:
    parts = parts_path(path)
    if parts.is_dir():
        chunks = sum(1 for p in parts.iterdir() if _CHUNK_RE.match(p.name))
        return (f"{path} is not finished yet ({parts} holds {chunks} committed chunks): "
                "rerun the same extract command to resume and finish it")
    return f"{path} does not exist"
