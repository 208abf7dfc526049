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
                              path, /videos/clip_offset, /clips/video and /captions/video
                              counting rows of the whole file
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

A file with captions grows too: every segment holds the captions of its own videos (a new
segment has none until ``vidfeat extract --captions`` gives them theirs by rewriting that
segment alone: :func:`replace_last`), and the top file maps /captions and /clips/text as well.

A run whose videos replace some in the file (a changed video, a failed one retried), a file of
an older layout, or one of :data:`MAX_SEGMENTS` segments is assembled into one plain file
instead, as is the file ``vidfeat compact`` or ``vidfeat captions`` writes; the segments folder
is then removed (:func:`drop`). Compacting gives the same file, up to its
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
from .caption_source import CaptionSource
from .captions import CAPTION_COLUMNS, CaptionTable, has_captions
from .final import estimate_bytes, fsync_dir, unlink_quiet, write_final
from .format import (
    _CLIP_COPY,
    _MEAN_COLUMNS,
    _STR,
    CAPTION_ATTRS,
    SEGMENT_ATTRS,
    SEGMENT_BASE_ATTRS,
    SEGMENT_FORMAT,
    VIDEO_COLUMNS,
    _canon,
    _open_h5,
    segment_bases,
)

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
"""Every dataset of a grown file except /classes and the captions: each a virtual dataset over
the segments."""
CAPTION_DATASETS = (*(f"captions/{name}" for name in CAPTION_COLUMNS), "clips/text")
"""The datasets a grown file with captions maps too: every segment has them (a segment whose
videos have no captions has an empty /captions table and "" texts), /captions/video counting
rows of the whole file, so the concatenated table stays sorted by (video, start, end)."""
_FIRST = "000000.h5"


def segments_path(output: str | os.PathLike[str]) -> Path:
    """``feats.h5`` -> ``feats.h5.segments``: where a grown file's segments lie."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def datasets(h5: h5py.File) -> tuple[str, ...]:
    """The datasets of ``h5`` (a plain file, a segment or a top file) a grown file maps."""
    return (*DATASETS, *CAPTION_DATASETS) if has_captions(h5) else DATASETS


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


def state(path: str | os.PathLike[str]) -> tuple[int, bool]:
    """(segments, has captions) of the file at ``path``; (0, False) when there is none or it
    cannot be read. Taken before and after a run, it tells whether the run grew a file with
    captions (then only the new videos need theirs: :func:`replace_last`)."""
    try:
        with h5py.File(path, "r") as h5:
            return len(segment_names(h5)), has_captions(h5)
    except (OSError, ValueError):
        return 0, False


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
        if "clips/text" in h5 and not has_captions(h5):
            return "the file has /clips/text without /captions"
        absent = [key for key in datasets(h5) if not isinstance(h5.get(key), h5py.Dataset)]
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
        # the captions of the videos already in the file stay as they are; the new videos have none
        # yet (`vidfeat extract --captions` adds theirs: :func:`replace_last`)
        captions = CaptionTable.empty() if has_captions(h5) else None
        attrs = {**attrs, **{key: h5.attrs[key] for key in CAPTION_ATTRS if key in h5.attrs and captions is not None}}
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
    segment_attrs = {**attrs, "format": SEGMENT_FORMAT, "format_version": GROWN_VERSION,
                     **dict(zip(SEGMENT_BASE_ATTRS, (n_videos, n_clips)))}  # fmt: skip
    assemble(folder / name, folder / (name + ".tmp"), sources, attrs=segment_attrs, classes=classes,
             embedding_dim=embedding_dim, embedding_dtype=embedding_dtype, kept=kept, rerun=rerun,
             captions=captions, bases=(n_videos, n_clips), contiguous=True)  # fmt: skip
    return write_top(output, tmp, [*names, name], attrs=attrs, classes=classes, kept=kept, rerun=rerun)


def last_rows(h5: h5py.File) -> slice:
    """The /videos rows of a grown file's last segment (the videos its last growth added)."""
    starts = np.asarray(_canon(h5.attrs.get("segment_videos", [0])), dtype=np.int64).reshape(-1)
    return slice(int(starts[-1]) if starts.size else 0, int(h5["videos/path"].shape[0]))


def replace_last(
    output: Path,
    tmp: Path,
    captions: CaptionTable | CaptionSource,
    *,
    first_frame_sec: np.ndarray,
    attrs: Mapping[str, Any],
    kept: str,
    rerun: str,
) -> int:
    """Give the last segment of the grown file ``output`` the captions ``captions`` (video rows
    counted from the segment's first video) and its videos' ``first_frame_sec``, and ``attrs``
    (the caption attrs) to the segment and the top file. The other segments are not touched: the
    cost is the last segment's size. The segment is rewritten under the next name, a new top file
    replaces ``output`` (through ``tmp``), then the old segment goes; a kill before the rename
    leaves ``output`` as it was. Returns the file's clip count."""
    folder = segments_path(output)
    with _open_h5(output, "output", "give a file written by vidfeat extract") as h5:
        names = segment_names(h5)
        if not names:
            raise ValueError(f"{output} is not a grown file")
        top_attrs = {key: value for key, value in h5.attrs.items() if key not in SEGMENT_ATTRS}
        classes = h5["classes"].asstr()[()].tolist()
    last = folder / names[-1]
    with _open_h5(last, "a segment", f"{kept}; run `vidfeat verify {output}`") as h5:
        segment_attrs = dict(h5.attrs.items())
        emb = h5["clips/embedding"]
        how = dict(classes=classes, embedding_dim=int(emb.shape[1]), embedding_dtype=emb.dtype, kept=kept, rerun=rerun)
        bases = segment_bases(h5)
    name = f"{int(names[-1].split('.')[0]) + 1:06d}.h5"
    assemble(folder / name, folder / (name + ".tmp"), [last], attrs={**segment_attrs, **attrs}, captions=captions,
             first_frame_sec=first_frame_sec, bases=bases, contiguous=True, **how)  # fmt: skip
    clips = write_top(output, tmp, [*names[:-1], name], attrs={**top_attrs, **attrs}, classes=classes, kept=kept,
                      rerun=rerun)  # fmt: skip
    unlink_quiet(last)
    fsync_dir(folder)
    return clips


def write_top(
    output: Path, tmp: Path, names: Sequence[str], *, attrs: Mapping[str, Any], classes: Sequence[str], kept: str,
    rerun: str,
) -> int:
    """Write the top file of ``output`` over the segments ``names`` (durably, through ``tmp``)
    and return its clip count."""
    folder = segments_path(output)
    shapes: dict[str, list[tuple[int, ...]]] = {}
    dtypes: dict[str, Any] = {}
    starts = []
    videos = 0
    for name in names:
        with _open_h5(folder / name, "a segment", f"{kept}; run `vidfeat verify {output}`") as h5:
            keys = datasets(h5)
            if shapes and set(keys) != set(shapes):  # captions in some segments only: nothing to map
                raise StoreError(f"{folder / name} {'has' if has_captions(h5) else 'lacks'} captions and the "
                                 f"segments before it do not; {kept}: run `vidfeat compact {output}`")  # fmt: skip
            starts.append(videos)
            videos += int(h5["videos/path"].shape[0])
            for key in keys:
                shapes.setdefault(key, []).append(h5[key].shape)
                dtypes[key] = h5[key].dtype
    needed = estimate_bytes([((len(classes),), _STR)], classes) + 2048 * len(shapes) * len(names)

    def fill(out: h5py.File) -> None:
        for key, value in attrs.items():
            out.attrs[key] = value
        out.attrs["format_version"] = GROWN_VERSION
        out.attrs["segments"] = np.array(list(names), dtype=object)
        out.attrs["segment_videos"] = np.array(starts, dtype=np.int64)
        out.create_dataset("classes", data=np.array(list(classes), dtype=object), dtype=_STR)
        for key in shapes:
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
