"""Merging shard files (each an ordinary finished vidfeat file) into one final file.

Generic: every dataset under ``/videos`` and ``/clips`` that the shard files hold is copied, in
the final order (videos sorted by path, their clips grouped in that order), with
``/videos/clip_offset`` and ``/clips/video`` recomputed; the root attrs, ``/classes`` and any
other top-level dataset come from the first shard. Columns added to the format flow through.

Refused, with a one-line :class:`~vidfeat.errors.StoreError` naming the problem: shards made
with another model, weights, clip setting, classes or embedding size; a missing or unfinished
shard (shard files named ``IIIII-of-NNNNN.h5``: which of N); shards of different N; a video
present in two shards; shards with different columns.

Memory stays bounded: the /videos tables (one row per video) are read whole, clips are copied
one column at a time through one output block and a small sequential read-ahead buffer per
shard (each shard's clips are consumed in its own order, since both are sorted by path).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .assemble import _create_dataset
from .format import FORMAT, FORMAT_VERSION, WRITER_ATTRS, _canon, _missing_message, _open_h5

__all__ = ["merge_shards", "shard_files"]

_BLOCK_BYTES = 16 << 20  # output block per column
_READ_AHEAD_BYTES = 64 << 20  # read-ahead buffers of all shards together, per column
_MIN_AHEAD_ROWS = 256  # fewer rows a read would cost more in HDF5 calls than it saves in memory
_TMP_SUFFIX = ".merging.tmp"


def shard_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The shard files in ``folder`` (``IIIII-of-NNNNN.h5``), checked complete: all N of one N,
    each finished. StoreError naming the missing or unfinished ones."""
    from ..shard import SHARD_FILE_RE

    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder} is not a folder of shard files")
    found: dict[int, set[int]] = {}
    unfinished: dict[int, set[int]] = {}
    for entry in folder.iterdir():
        name = entry.name[: -len(".parts")] if entry.name.endswith(".parts") else entry.name
        match = SHARD_FILE_RE.match(name)
        if not match:
            continue
        index, count = int(match.group(1)), int(match.group(2))
        (unfinished if entry.name.endswith(".parts") else found).setdefault(count, set()).add(index)
    counts = sorted(set(found) | set(unfinished))
    if not counts:
        raise StoreError(f"{folder} holds no shard files (IIIII-of-NNNNN.h5)")
    if len(counts) > 1:
        raise StoreError(f"{folder} holds shards of different runs (N = {', '.join(map(str, counts))}): "
                         "keep the shards of one N")
    n = counts[0]
    done = found.get(n, set())
    missing = [i for i in range(n) if i not in done]
    if missing:
        pending = [i for i in missing if i in unfinished.get(n, set())]
        shown = ", ".join(map(str, missing[:8])) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        what = f"{len(pending)} of them unfinished (rerun those shards to finish them)" if pending else "rerun them"
        raise StoreError(f"{folder}: shard {shown} of {n} missing ({what})")
    return [folder / f"{i:05d}-of-{n:05d}.h5" for i in range(n)]


def _check_names(paths: Sequence[Path]) -> None:
    """Shard files named IIIII-of-NNNNN.h5 must be all N of one N."""
    from ..shard import SHARD_FILE_RE

    named = [(p, SHARD_FILE_RE.match(p.name)) for p in paths]
    named = [(p, int(m.group(1)), int(m.group(2))) for p, m in named if m]
    if not named:
        return
    counts = sorted({n for _, _, n in named})
    if len(counts) > 1:
        raise StoreError(f"the shards come from runs with different N ({', '.join(map(str, counts))})")
    n = counts[0]
    have = {i for _, i, _ in named}
    missing = [i for i in range(n) if i not in have]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise StoreError(f"shard {shown} of {n} missing (expected {named[0][0].parent}/"
                         f"{missing[0]:05d}-of-{n:05d}.h5)")


def _datasets(group: h5py.Group) -> list[str]:
    return sorted(k for k, v in group.items() if isinstance(v, h5py.Dataset))


def _identity(h5: h5py.File) -> dict[str, Any]:
    ident = {k: _canon(v) for k, v in h5.attrs.items() if k not in WRITER_ATTRS}
    ident["classes"] = list(h5["classes"].asstr()[()]) if "classes" in h5 else None
    emb = h5["clips/embedding"]
    ident["embedding"] = f"{emb.dtype} of size {emb.shape[1]}"
    return ident


def _fmt(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} items]"
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "…"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _compare(first: Path, a: dict, other: Path, b: dict) -> None:
    diffs = [k for k in sorted(set(a) | set(b)) if not _same(a.get(k), b.get(k))]
    if not diffs:
        return
    shown = "; ".join(f"{k}={_fmt(b.get(k))} there, {_fmt(a.get(k))} in {first.name}" for k in diffs[:3])
    more = f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    raise StoreError(f"{other} was made with other settings than {first} ({shown}{more}): "
                     "merge only shards of one run")


class _Ahead:
    """Sequential reader of one dataset: ``take(n)`` returns the next n rows, reading ahead."""

    def __init__(self, ds: h5py.Dataset, rows: int) -> None:
        self.ds, self.rows = ds, max(1, rows)
        self.pos = 0  # next row of the file to read
        self.buf = ds[0:0]
        self.at = 0  # next row of buf to hand out

    def take(self, n: int) -> np.ndarray:
        if self.at + n > len(self.buf):
            rest = self.buf[self.at :]
            end = min(len(self.ds), self.pos + max(n - len(rest), self.rows))
            self.buf = np.concatenate([rest, self.ds[self.pos : end]]) if len(rest) else self.ds[self.pos : end]
            self.pos, self.at = end, 0
            if len(self.buf) < n:
                raise StoreError(f"{self.ds.file.filename}: {self.ds.name} has fewer rows than its /videos "
                                 "clip counts say: run `vidfeat verify` on it")
        out = self.buf[self.at : self.at + n]
        self.at += n
        return out


def merge_shards(output: str | os.PathLike[str], shards: Sequence[str | os.PathLike[str]], *,
                 replace: bool = False) -> dict[str, int]:  # fmt: skip
    """Build ``output`` from the finished shard files ``shards``; returns counts (videos, clips).

    Written under a temporary name and renamed into place. An existing ``output`` is replaced
    only if ``replace`` or it was made with the shards' settings (a rerun of the merge after
    more videos were added); anything else is refused.
    """
    output = Path(output)
    paths = [Path(p) for p in shards]
    if not paths:
        raise StoreError("no shard files given")
    if len(set(map(os.path.abspath, paths))) != len(paths):
        raise StoreError("a shard file is given twice")
    _check_names(paths)
    files: list[h5py.File] = []
    try:
        for p in paths:
            if not p.exists():
                raise StoreError(_missing_message(p))
            h5 = _open_h5(p, "shard", "rerun that shard (delete the file to redo it)")
            files.append(h5)
            if _canon(h5.attrs.get("format")) != FORMAT or "clips/embedding" not in h5 or "videos/path" not in h5:
                raise StoreError(f"{p} is not a finished vidfeat file")
            if int(_canon(h5.attrs.get("format_version", 0))) > FORMAT_VERSION:
                raise StoreError(f"{p} has format_version {_canon(h5.attrs['format_version'])}, newer than this "
                                 f"vidfeat reads ({FORMAT_VERSION}): upgrade vidfeat")
        ident = _identity(files[0])
        layout = (_datasets(files[0]["videos"]), _datasets(files[0]["clips"]))
        for p, h5 in zip(paths[1:], files[1:]):
            _compare(paths[0], ident, p, _identity(h5))
            other = (_datasets(h5["videos"]), _datasets(h5["clips"]))
            if other != layout:
                raise StoreError(f"{p} and {paths[0]} have different columns (made by other vidfeat versions?): "
                                 "rerun the shards with one vidfeat version")
        if output.exists() and not replace:
            _check_replaceable(output, ident)
        counts = _write(output, paths, files, layout)
    finally:
        for h5 in files:
            h5.close()
    return counts


def _check_replaceable(output: Path, ident: dict) -> None:
    fix = "delete it or choose another output"
    try:
        with h5py.File(output, "r") as h5:
            if _canon(h5.attrs.get("format")) != FORMAT or "clips/embedding" not in h5:
                raise StoreError(f"{output} exists and is not a vidfeat file: {fix}")
            old = _identity(h5)
    except OSError as exc:
        raise StoreError(f"{output} exists and cannot be read ({exc}): {fix}") from exc
    diffs = [k for k in sorted(set(old) | set(ident)) if not _same(old.get(k), ident.get(k))]
    if diffs:
        raise StoreError(f"{output} exists and was made with other settings ({', '.join(diffs[:4])}): {fix}")


def _write(output: Path, paths: Sequence[Path], files: Sequence[h5py.File], layout) -> dict[str, int]:
    video_names, clip_names = layout
    # the merged /videos order: all paths sorted (code point order, as the writer sorts)
    names = [h5["videos/path"].asstr()[()] for h5 in files]
    all_names = np.concatenate(names) if names else np.array([], dtype=object)
    source = np.concatenate([np.full(len(n), s, dtype=np.int64) for s, n in enumerate(names)])
    order = np.argsort(all_names.astype(str), kind="stable")
    sorted_names = all_names[order]
    if len(sorted_names) > 1:
        dup = np.flatnonzero(sorted_names[1:] == sorted_names[:-1])
        if len(dup):
            name = sorted_names[dup[0]]
            where = [str(paths[s]) for s, n in zip(source[order], sorted_names) if n == name]
            raise StoreError(f"the video {name!r} is in two shards ({where[0]} and {where[1]}): "
                             "these shards come from different partitions; merge the shards of one N")
    counts_by_shard = [h5["videos/clip_count"][()].astype(np.int64) for h5 in files]
    for p, h5, c in zip(paths, files, counts_by_shard):
        off = h5["videos/clip_offset"][()].astype(np.int64)
        if len(c) and (off[0] != 0 or np.any(off[1:] != (off + c)[:-1]) or off[-1] + c[-1] != h5["clips/embedding"].shape[0]):
            raise StoreError(f"{p}: its clips are not stored in /videos order: run `vidfeat verify` on it")
    counts = np.concatenate(counts_by_shard)[order]
    n_videos, n_clips = len(order), int(counts.sum())
    shard_seq = source[order]
    # runs of consecutive videos (in the merged order) from one shard: (shard, clip rows)
    if n_videos:
        starts = np.flatnonzero(np.r_[True, shard_seq[1:] != shard_seq[:-1]])
        run_shard = shard_seq[starts].tolist()
        run_rows = np.add.reduceat(counts, starts).tolist()
    else:
        run_shard, run_rows = [], []

    tmp = output.with_name(output.name + _TMP_SUFFIX)
    try:
        with h5py.File(tmp, "w") as out:
            first = files[0]
            for key, value in first.attrs.items():
                out.attrs[key] = value
            out.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            for key in _datasets(first):
                out.create_dataset(key, data=first[key][()], dtype=first[key].dtype)
            for name in video_names:
                ds0 = first[f"videos/{name}"]
                ds = _create_dataset(out, f"videos/{name}", (n_videos, *ds0.shape[1:]), ds0.dtype)
                if name == "clip_offset":
                    values = np.cumsum(counts) - counts
                else:
                    values = np.concatenate([h5[f"videos/{name}"][()] for h5 in files])[order]
                if n_videos:
                    ds[...] = values
            for name in clip_names:
                ds0 = first[f"clips/{name}"]
                ds = _create_dataset(out, f"clips/{name}", (n_clips, *ds0.shape[1:]), ds0.dtype)
                if name == "video":
                    values = np.repeat(np.arange(n_videos, dtype=np.int64), counts)
                    for k in range(0, n_clips, 1 << 20):
                        ds[k : k + (1 << 20)] = values[k : k + (1 << 20)]
                    continue
                _copy_column(ds, [h5[f"clips/{name}"] for h5 in files], run_shard, run_rows)
        os.replace(tmp, output)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write {output}: {exc.strerror or exc}; free space or choose another output") from exc
        raise
    return {"videos": n_videos, "clips": n_clips}


def _copy_column(dest: h5py.Dataset, sources: Sequence[h5py.Dataset], run_shard: list, run_rows: list) -> None:
    """Fill ``dest`` from the per-shard columns ``sources`` run by run, one output block at a time."""
    row_bytes = max(1, int(np.prod(dest.shape[1:], dtype=np.int64)) * dest.dtype.itemsize)
    block_rows = max(1, _BLOCK_BYTES // row_bytes)
    ahead_rows = max(_MIN_AHEAD_ROWS, _READ_AHEAD_BYTES // (row_bytes * max(1, len(sources))))
    readers = [_Ahead(ds, ahead_rows) for ds in sources]
    pending: list[np.ndarray] = []
    pending_rows, written = 0, 0
    for s, rows in zip(run_shard, run_rows):
        if not rows:
            continue
        pending.append(readers[s].take(rows))
        pending_rows += rows
        if pending_rows >= block_rows:
            dest[written : written + pending_rows] = np.concatenate(pending)
            written += pending_rows
            pending, pending_rows = [], 0
    if pending_rows:
        dest[written : written + pending_rows] = np.concatenate(pending)
