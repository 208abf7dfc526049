"""Merging shard files (each an ordinary finished vidfeat file) into one final file.

Generic: every dataset under ``/videos`` and ``/clips`` that the shard files hold is copied, in
the final order (videos sorted by path, their clips grouped in that order), with
``/videos/clip_offset`` and ``/clips/video`` recomputed; the root attrs, ``/classes`` and any
other top-level dataset come from the first shard. Columns added to the format flow through.

Refused, with a one-line :class:`~vidfeat.errors.StoreError` naming the problem: shards made
with another model, weights, clip setting, classes or embedding size; a missing or unfinished
shard (shard files named ``IIIII-of-NNNNN.h5``: which of N); shards of different N; a video
present in two shards; shards with different columns.

Memory stays bounded whatever the number of videos, clips or shards: each shard's videos are
sorted by path, so the merged order is a k-way merge of the shards' paths, read a block at a time
and consumed as it is made; every column, of /videos and of /clips, is copied through one output
block of videos (and of their clips) and a small sequential read-ahead buffer per shard (each
shard's rows are consumed in its own order); shard files are read with no chunk cache and a 2 MiB
metadata cache each. Checks (a video in two shards, a shard out of order)
run as a first streaming pass, before anything is written.

The merged file is written by :func:`vidfeat.store.final.write_final`, as assembly writes the
final file of a single run: free-space check, reservation, no chunk cache, temporary name
(``feats.h5.merging.tmp``), fsync, rename, fsync of the folder. A kill leaves the shards and the
previous output as they were; rerunning the merge finishes it.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from ..errors import StoreError
from .captions import has_captions
from . import segments
from .final import create_dataset, estimate_bytes, is_vlen_string, write_final
from .format import (
    SHARD_FILE_RE,
    _missing_message,
    _open_h5,
    block_rows,
    check_format,
    check_same_settings,
    file_identity,
    shard_file_name,
)

__all__ = ["merge_shards", "shard_files"]

_READ_AHEAD_BYTES = 64 << 20  # read-ahead buffers of all shards together, per column
_MIN_AHEAD_ROWS = 256  # fewer rows a read would cost more in HDF5 calls than it saves in memory
_TMP_SUFFIX = ".merging.tmp"


def shard_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The shard files in ``folder`` (``IIIII-of-NNNNN.h5``), checked complete: all N of one N,
    each finished. StoreError naming the missing or unfinished ones."""
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
    return [folder / shard_file_name(i, n) for i in range(n)]


def _check_names(paths: Sequence[Path]) -> None:
    """Shard files named IIIII-of-NNNNN.h5 must be all N of one N."""
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
                         f"{shard_file_name(missing[0], n)})")


def _datasets(group: h5py.Group) -> list[str]:
    return sorted(k for k, v in group.items() if isinstance(v, h5py.Dataset))


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
            h5 = _open_shard(p)
            files.append(h5)
            check_format(h5, p, "rerun that shard (delete the file to redo it)")
            if has_captions(h5):
                raise StoreError(f"{p} has captions: merge shards without them, then add the captions to the "
                                 "merged file (vidfeat captions)")
            if segments.segment_names(h5):  # its paths are sorted per segment, not as a whole
                raise StoreError(f"{p} is a grown file, not a shard's: run `vidfeat compact {p}` first")
        ident = file_identity(files[0])
        layout = (_datasets(files[0]["videos"]), _datasets(files[0]["clips"]))
        for p, h5 in zip(paths[1:], files[1:]):
            check_same_settings(file_identity(h5), ident, where=str(p), this=paths[0].name, now=f"in {paths[0].name}",
                                fix="merge only shards of one run")  # fmt: skip
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


_SHARD_METADATA_CACHE = 2 << 20  # bytes of HDF5 metadata cache per shard file (HDF5's default grows to 32 MiB)


def _open_shard(path: Path) -> h5py.File:
    """A shard file opened for the merge's sequential reads: no chunk cache (every read spans
    whole chunks) and a small metadata cache, so that memory does not grow with the shards."""
    h5 = _open_h5(path, "shard", "rerun that shard (delete the file to redo it)", rdcc_nbytes=0)
    config = h5.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.min_size = _SHARD_METADATA_CACHE // 2
    config.max_size = _SHARD_METADATA_CACHE
    h5.id.set_mdc_config(config)
    return h5


def _check_replaceable(output: Path, ident: dict) -> None:
    fix = "merge with --overwrite to replace it, or choose another output"
    with _open_h5(output, "existing output", fix) as h5:
        check_format(h5, output, fix)
        old = file_identity(h5)
    check_same_settings(old, ident, where=str(output), this="the shards", now="in the shards", fix=fix)


def _shard_videos(path: Path, h5: h5py.File, step: int) -> Iterator[tuple[bytes, int]]:
    """(path as UTF-8 bytes, clip count) of a shard's videos in its order, read ``step`` rows at
    a time; StoreError if its paths are not sorted or its clips not stored in /videos order."""
    names, counts, offsets = h5["videos/path"], h5["videos/clip_count"], h5["videos/clip_offset"]
    n, previous, end = names.shape[0], None, 0
    for k in range(0, n, step):
        block = names[k : k + step].tolist()
        block = [p.encode() if isinstance(p, str) else p for p in block]
        c = counts[k : k + step].astype(np.int64)
        off = offsets[k : k + step].astype(np.int64)
        starts = np.cumsum(c) - c + end
        if np.any(off != starts):
            raise StoreError(f"{path}: its clips are not stored in /videos order: run `vidfeat verify` on it")
        end = int(starts[-1] + c[-1])
        for name in block:
            if previous is not None and name <= previous:
                raise StoreError(f"{path}: its videos are not sorted by path: run `vidfeat verify` on it")
            previous = name
        yield from zip(block, c.tolist())
    if end != h5["clips/embedding"].shape[0]:
        raise StoreError(f"{path}: its clips are not stored in /videos order: run `vidfeat verify` on it")


def _merged_order(paths: Sequence[Path], files: Sequence[h5py.File], step: int) -> Iterator[tuple[bytes, int, int]]:
    """(path, shard, clip count) of every video in the merged order: a k-way merge of the
    shards' sorted paths (linear in videos, read a block at a time)."""
    def stream(s: int) -> Iterator[tuple[bytes, int, int]]:
        for name, count in _shard_videos(paths[s], files[s], step):
            yield name, s, count

    return heapq.merge(*(stream(s) for s in range(len(files))))


def _check_order(paths: Sequence[Path], files: Sequence[h5py.File]) -> None:
    """StoreError before anything is written if a video is in two shards or a shard is out of order."""
    previous = None
    for name, s, _ in _merged_order(paths, files, block_rows(64)):
        if previous is not None and name == previous[0]:
            raise StoreError(f"the video {name.decode(errors='replace')!r} is in two shards ({paths[previous[1]]} "
                             f"and {paths[s]}): these shards come from different partitions; "
                             "merge the shards of one N")  # fmt: skip
        previous = (name, s)


def _write(output: Path, paths: Sequence[Path], files: Sequence[h5py.File], layout) -> dict[str, int]:
    video_names, clip_names = layout
    _check_order(paths, files)
    n_videos = sum(h5["videos/path"].shape[0] for h5 in files)
    n_clips = sum(h5["clips/embedding"].shape[0] for h5 in files)
    first = files[0]
    tops = _datasets(first)
    shapes = [((n_videos, *first[f"videos/{name}"].shape[1:]), first[f"videos/{name}"].dtype) for name in video_names]
    shapes += [((n_clips, *first[f"clips/{name}"].shape[1:]), first[f"clips/{name}"].dtype) for name in clip_names]
    shapes += [(first[key].shape or (1,), first[key].dtype) for key in tops]
    strings = [_strings(first[key]) for key in tops]
    strings += [_strings(h5[f"{group}/{name}"]) for group, names in (("videos", video_names), ("clips", clip_names))
                for name in names for h5 in files]  # fmt: skip
    needed = estimate_bytes(shapes, (text for column in strings for text in column))

    def fill(out: h5py.File) -> None:
        for key, value in first.attrs.items():
            out.attrs[key] = value
        out.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key in tops:
            out.create_dataset(key, data=first[key][()], dtype=first[key].dtype)
        videos = {name: create_dataset(out, f"videos/{name}", (n_videos, *first[f"videos/{name}"].shape[1:]),
                                       first[f"videos/{name}"].dtype) for name in video_names}  # fmt: skip
        clips = {name: create_dataset(out, f"clips/{name}", (n_clips, *first[f"clips/{name}"].shape[1:]),
                                      first[f"clips/{name}"].dtype) for name in clip_names}  # fmt: skip
        _fill(paths, files, videos, clips)

    write_final(output, output.with_name(output.name + _TMP_SUFFIX), needed, fill, action="merge",
                kept=f"the {len(paths)} shards are kept", rerun="rerun the same command")  # fmt: skip
    segments.drop(output)  # it replaced a grown file: the segments are no one's now
    return {"videos": n_videos, "clips": n_clips}


_STR_BYTES = 80  # memory of one variable-length string read into Python (object and text), not its pointer


def _row_bytes(ds: h5py.Dataset) -> int:
    """Memory of one row of ``ds`` once read (strings count as Python objects)."""
    item = _STR_BYTES if is_vlen_string(ds.dtype) else ds.dtype.itemsize
    return max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * item)


def _fill(paths: Sequence[Path], files: Sequence[h5py.File], videos: dict[str, h5py.Dataset],
          clips: dict[str, h5py.Dataset]) -> None:  # fmt: skip
    """Copy every column in the merged order, one block of videos (and of their clips) at a
    time: the merged order is made as it is consumed, so memory does not grow with the shards."""
    video_bytes = sum(_row_bytes(ds) for ds in videos.values()) + 64
    copied = [name for name in clips if name != "video"]
    clip_bytes = sum(_row_bytes(clips[name]) for name in copied) + 8
    videos_out, clips_out = block_rows(video_bytes), block_rows(clip_bytes)
    n_shards = len(files)
    video_ahead = max(_MIN_AHEAD_ROWS, _READ_AHEAD_BYTES // (video_bytes * n_shards))
    clip_ahead = max(_MIN_AHEAD_ROWS, _READ_AHEAD_BYTES // (clip_bytes * n_shards))
    video_readers = {name: [_Ahead(h5[f"videos/{name}"], video_ahead) for h5 in files]
                     for name in videos if name != "clip_offset"}  # fmt: skip
    clip_readers = {name: [_Ahead(h5[f"clips/{name}"], clip_ahead) for h5 in files] for name in copied}
    order = _merged_order(paths, files, min(videos_out, block_rows(64)))
    v = c = 0  # first video and clip row of the next block
    while True:
        shard, count, rows = [], [], 0
        for _, s, n in order:
            shard.append(s)
            count.append(n)
            rows += n
            if len(shard) >= videos_out or rows >= clips_out:
                break
        if not shard:
            return
        _copy_block(np.array(shard, dtype=np.int64), np.array(count, dtype=np.int64), v, c, videos, clips,
                    video_readers, clip_readers)  # fmt: skip
        v, c = v + len(shard), c + rows


def _copy_block(shard: np.ndarray, count: np.ndarray, v: int, c: int, videos: dict[str, h5py.Dataset],
                clips: dict[str, h5py.Dataset], video_readers: dict[str, list[_Ahead]],
                clip_readers: dict[str, list[_Ahead]]) -> None:  # fmt: skip
    """Write videos ``v``.. and clips ``c``.. of the merged file: ``shard`` and ``count`` are the
    block's videos' shard and clip count in the merged order. Each shard's rows are taken in its
    own order (a shard's videos keep their order in the merge) and put in place by one gather."""
    n_shards = len(next(iter(video_readers.values()))) if video_readers else 1 + int(shard.max())
    by_shard = np.argsort(shard, kind="stable")
    videos_of = np.bincount(shard, minlength=n_shards).tolist()
    clips_of = np.bincount(shard, weights=count, minlength=n_shards).astype(np.int64).tolist()
    for name, readers in video_readers.items():
        taken = np.concatenate([readers[s].take(k) for s, k in enumerate(videos_of) if k])
        values = np.empty_like(taken)
        values[by_shard] = taken
        videos[name][v : v + len(shard)] = values
    starts = np.cumsum(count) - count
    if "clip_offset" in videos:
        videos["clip_offset"][v : v + len(shard)] = c + starts
    total = int(count.sum())
    if not total:
        return
    # row of each output clip in the shard-ordered concatenation of the block's clips
    grouped = count[by_shard]
    start_in_taken = np.empty_like(starts)
    start_in_taken[by_shard] = np.cumsum(grouped) - grouped
    gather = np.repeat(start_in_taken - starts, count) + np.arange(total, dtype=np.int64)
    for name, readers in clip_readers.items():
        taken = np.concatenate([readers[s].take(k) for s, k in enumerate(clips_of) if k])
        clips[name][c : c + total] = taken[gather]
    if "video" in clips:
        clips["video"][c : c + total] = np.repeat(np.arange(v, v + len(shard), dtype=np.int64), count)


def _strings(ds: h5py.Dataset):
    """The strings of a variable-length string dataset (read a block at a time); none for others."""
    if not is_vlen_string(ds.dtype) or ds.ndim != 1:
        return
    step = block_rows(64)
    for k in range(0, ds.shape[0], step):
        yield from ds.asstr()[k : k + step].tolist()
