"""Growth by segments: adding videos to a finished file costs the new videos, not the file.

A finished file is *plain* (format version 3: every dataset stored in it, /videos in one run
sorted by path) until a later run adds videos to it. Rewriting the whole file for each increment
(what assembly does) costs the file's size in writes and a second copy of it in free space; at
HowTo100M size that is hundreds of GB for a 1% increment. Instead the file *grows*::

    feats.h5                  the top file (format version 4): root attrs, /classes, and every
                              /videos and /clips dataset as an HDF5 virtual dataset (VDS) that
                              concatenates the same dataset of each segment, in order
    feats.h5.segments/
        000000.h5             the plain file as it was (a second name for the same bytes)
        000001.h5             the videos the next run added: the same layout, /videos sorted by
                              path, /videos/clip_offset and /clips/video counted in the whole file
        ...

So /videos is a run of sorted runs, one per segment (the root attr ``segment_videos`` holds the
first row of each), the clips of every video are contiguous and in /videos order, and no path
appears twice. Any HDF5 reader (1.10 or later) reads a grown file as one file, as long as the
segments folder lies beside it: copy both, or compact first. A growth writes the new videos'
data once and a top file of a few KB. Each step is crash-safe: the plain file's second name is
a hard link (atomic), the new segment is written durably under a temporary name
(:func:`vidfeat.store.final.write_final`), then the top file, which replaces ``feats.h5`` by a
rename; a kill between steps leaves the old ``feats.h5`` whole and files nothing refers to,
which the next writer removes (:func:`clean`).

A run whose videos replace some in the file (a changed video, a failed one retried), a file
with captions, a file of an older layout, or one of :data:`MAX_SEGMENTS` segments is assembled
into one plain file instead, as is the file ``vidfeat compact`` or ``vidfeat captions`` writes;
the segments folder is then removed (:func:`drop`). Compacting gives the same file, up to its
``created`` attribute, as one uninterrupted run over every video.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .assemble import assemble
from .captions import has_captions
from .final import estimate_bytes, fsync_dir, unlink_quiet, write_final
from .format import _CLIP_COPY, _MEAN_COLUMNS, _STR, VIDEO_COLUMNS, _canon, _open_h5

SUFFIX = ".segments"
GROWN_VERSION = 4
"""format_version of a grown file (a plain file is written as 3, readable by older vidfeat)."""
PLAIN_VERSION = 3
MAX_SEGMENTS = 32
"""Segments a file may have; the growth after that compacts it into one plain file instead (a
virtual dataset reads through one mapping per segment)."""
DATASETS = (
    *(f"videos/{name}" for name in VIDEO_COLUMNS),
    *(f"videos/{name}" for name in _MEAN_COLUMNS),
    *(f"clips/{name}" for name in (*_CLIP_COPY, "video")),
)
"""Every dataset of a grown file except /classes: each a virtual dataset over the segments."""
_FIRST = "000000.h5"


def segments_path(output: str | os.PathLike[str]) -> Path:
    """``feats.h5`` -> ``feats.h5.segments``: where a grown file's segments lie."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def segment_names(h5: h5py.File) -> list[str]:
    """The segment files of a grown file, in order ([] for a plain file)."""
    return [str(name) for name in _canon(h5.attrs.get("segments", []))]


def source_files(h5: h5py.File) -> list[str]:
    """The files a grown file's virtual datasets read, as stored (relative to its folder)."""
    ds = h5.get("videos/path")
    if not isinstance(ds, h5py.Dataset) or not ds.is_virtual:
        return []
    return list(dict.fromkeys(source.file_name for source in ds.virtual_sources()))


def missing_segments(h5: h5py.File, path: str | os.PathLike[str]) -> list[str]:
    """The segment files a grown file reads that are not where it reads them (beside it)."""
    folder = Path(path).parent
    return [name for name in source_files(h5) if not (folder / name).is_file()]


def check_segments(h5: h5py.File, path: str | os.PathLike[str]) -> None:
    """A one-line StoreError when a grown file's segments are not all where it reads them (a
    virtual dataset whose source is missing reads as fill values: NaN, -1 or "")."""
    missing = missing_segments(h5, path)
    if missing:
        folder = Path(missing[0]).parent
        raise StoreError(
            f"{path} is grown from {len(source_files(h5))} segment files in {folder}/ and {len(missing)} of them "
            f"({Path(missing[0]).name}{', ...' if len(missing) > 1 else ''}) are missing: keep {folder}/ beside the "
            f"file under this name (copy or move both, rename neither), or run `vidfeat compact` where both are "
            f"to make one file"
        )


def growable(output: Path, replaces: bool) -> str | None:
    """None when the videos of a run can be added to ``output`` as a new segment; else why not."""
    if replaces:
        return "the run replaces videos the file holds"
    with _open_h5(output, "output", "rerun with --overwrite to replace it") as h5:
        version = int(_canon(h5.attrs.get("format_version", 0)))
        if version not in (PLAIN_VERSION, GROWN_VERSION):
            return f"format version {version}"
        if has_captions(h5) or "clips/text" in h5:
            return "the file has captions"
        absent = [key for key in DATASETS if not isinstance(h5.get(key), h5py.Dataset)]
        if absent:
            return f"the file lacks {absent[0]}"
        if len(segment_names(h5)) >= MAX_SEGMENTS:
            return f"the file has {MAX_SEGMENTS} segments"
        if missing_segments(h5, output):
            return "segments are missing"
    return None


def grow(
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
) -> int | None:
    """Add the videos of ``sources`` (committed chunks, oldest first) to ``output`` as a new
    segment, then replace ``output`` by a top file over every segment (through ``tmp``, in
    the work directory). Returns the file's clip count, or None when a plain ``output`` cannot
    get a second name here (no hard links on this filesystem: assemble instead)."""
    folder = segments_path(output)
    with _open_h5(output, "output", "rerun with --overwrite to replace it") as h5:
        names = segment_names(h5)
        n_videos, n_clips = int(h5["videos/path"].shape[0]), int(h5["clips/embedding"].shape[0])
    try:
        folder.mkdir(exist_ok=True)
        if not names:
            first = folder / _FIRST
            unlink_quiet(first)  # a kill's leftover
            os.link(output, first)
            fsync_dir(folder)
            names = [_FIRST]
    except OSError as exc:
        if not names and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        if exc.errno in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):  # no link here
            return None
        raise StoreError(f"cannot write in {folder}: {exc.strerror or exc}; {kept}: fix the cause and {rerun}") from exc
    name = f"{int(names[-1].split('.')[0]) + 1:06d}.h5"
    segment_attrs = {**attrs, "format": "vidfeat-segment", "format_version": GROWN_VERSION,
                     "video_base": n_videos, "clip_base": n_clips}  # fmt: skip
    assemble(folder / name, folder / (name + ".tmp"), sources, attrs=segment_attrs, classes=classes,
             embedding_dim=embedding_dim, embedding_dtype=embedding_dtype, kept=kept, rerun=rerun,
             captions=None, bases=(n_videos, n_clips), contiguous=True)  # fmt: skip
    return write_top(output, tmp, [*names, name], attrs=attrs, classes=classes, kept=kept, rerun=rerun)


def write_top(
    output: Path, tmp: Path, names: Sequence[str], *, attrs: Mapping[str, Any], classes: Sequence[str], kept: str,
    rerun: str,
) -> int:
    """Write the top file of ``output`` over the segments ``names`` (durably, through ``tmp``)
    and return its clip count."""
    folder = segments_path(output)
    shapes: dict[str, list[tuple[int, ...]]] = {key: [] for key in DATASETS}
    dtypes: dict[str, Any] = {}
    starts = []
    videos = 0
    for name in names:
        with _open_h5(folder / name, "a segment", f"{kept}; run `vidfeat verify {output}`") as h5:
            starts.append(videos)
            videos += int(h5["videos/path"].shape[0])
            for key in DATASETS:
                shapes[key].append(h5[key].shape)
                dtypes[key] = h5[key].dtype
    needed = estimate_bytes([((len(classes),), _STR)], classes) + 2048 * len(DATASETS) * len(names)

    def fill(out: h5py.File) -> None:
        for key, value in attrs.items():
            out.attrs[key] = value
        out.attrs["format_version"] = GROWN_VERSION
        out.attrs["segments"] = np.array(list(names), dtype=object)
        out.attrs["segment_videos"] = np.array(starts, dtype=np.int64)
        out.create_dataset("classes", data=np.array(list(classes), dtype=object), dtype=_STR)
        for key in DATASETS:
            rows = sum(shape[0] for shape in shapes[key])
            layout = h5py.VirtualLayout(shape=(rows, *shapes[key][-1][1:]), dtype=dtypes[key])
            at = 0
            for name, shape in zip(names, shapes[key]):
                if shape[0]:
                    layout[at : at + shape[0]] = h5py.VirtualSource(f"{folder.name}/{name}", key, shape=shape)
                at += shape[0]
            kind = np.dtype(dtypes[key]).kind
            fill = np.nan if kind == "f" else -1 if kind in "iu" else None  # a missing segment reads as such
            out.create_virtual_dataset(key, layout, fillvalue=fill)

    write_final(output, tmp, needed, fill, action="grow", kept=kept, rerun=rerun)
    return sum(shape[0] for shape in shapes["clips/embedding"])


def clean(output: Path) -> None:
    """Remove what a kill left in the segments folder: every file the current ``output`` does
    not refer to (the whole folder when ``output`` is plain or absent). Call with the output's
    lock held."""
    folder = segments_path(output)
    if not folder.is_dir():
        return
    keep: set[str] = set()
    if output.exists():
        try:
            with h5py.File(output, "r") as h5:
                keep = set(segment_names(h5))
        except OSError:
            return  # not readable: the writer says so; nothing is removed meanwhile
    if not keep:
        drop(output)
        return
    for entry in folder.iterdir():
        if entry.name not in keep:
            unlink_quiet(entry)


def drop(output: Path) -> None:
    """Remove the segments folder of ``output`` (after a plain file replaced a grown one)."""
    folder = segments_path(output)
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        try:
            fsync_dir(output.parent)
        except OSError:
            pass
