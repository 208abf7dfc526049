"""The captions an assembly writes, streamed: read from disk a block of videos at a time, so
that adding captions to a file, or carrying them through a rerun or a compaction, holds one
block of captions in memory whatever the size of the caption table (HowTo100M: ~136M rows).

A :class:`CaptionSource` gives the captions of each video of the assembly's first source (the
previous final file), by its row there:

- a file's own /captions table (:meth:`CaptionSource.of_file`: carried through assembly);
- a *spool*, the captions of a source (caption.json, a folder of csv files) written to a scratch
  HDF5 file a video at a time in the order the source gives them (:class:`CaptionSpool`);
- a :class:`~vidfeat.store.captions.CaptionTable` in memory (:meth:`CaptionSource.of_table`).

Each holds four numbers a video (where its rows start, how many, and two byte counts that
bound the size of what is written); :func:`write_captions` then writes /captions and
/clips/text of the new file in blocks of its videos, reading each block's caption rows as a
few contiguous spans.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from ..errors import StoreError
from .captions import CAPTION_COLUMNS, CaptionTable, align
from .final import STRING_OVERHEAD, create_dataset, estimate_bytes
from .format import _STR, block_rows

__all__ = ["CaptionSource", "CaptionSpool", "caption_bytes", "write_captions"]

_ROW_BYTES = 8 + 8 + 8 + 64  # a caption: video row, two times and about 64 bytes of text
_CLIP_BYTES = 16 + 64  # a clip: two times and about 64 bytes of text
_GAP = 1024  # caption rows read past rather than starting another read
_SPOOL_CHUNK = 8192  # rows of a spool's HDF5 chunk: a few captions do not allocate megabytes


class CaptionSource:
    """The captions of each video of an assembly's first source, by its row there: the rows of
    video ``r`` are ``first[r] .. first[r] + count[r]`` of the caption columns, sorted by
    (start_sec, end_sec). ``text_bytes[r]`` is the UTF-8 size of its texts and
    ``timed_bytes[r]`` the sum over its captions of text size x duration (the bound of the
    clip texts in :func:`caption_bytes`). The columns are the ``captions`` group of the HDF5
    file ``path``, or ``table``."""

    def __init__(self, first: np.ndarray, count: np.ndarray, text_bytes: np.ndarray, timed_bytes: np.ndarray, *,
                 path: Path | None = None, table: CaptionTable | None = None) -> None:  # fmt: skip
        self.first, self.count = first, count
        self.text_bytes, self.timed_bytes = text_bytes, timed_bytes
        self.path, self.table = path, table

    def __len__(self) -> int:
        return int(self.count.sum())

    @classmethod
    def of_table(cls, table: CaptionTable, n_videos: int) -> CaptionSource:
        """From a table in memory (in any order: sorted here as the file stores it)."""
        video = np.asarray(table.video, dtype=np.int64)
        if len(video) and (video.min() < 0 or video.max() >= n_videos):
            raise ValueError(f"caption video rows must lie in [0, {n_videos})")
        order = np.lexsort((np.arange(len(video)), table.end_sec, table.start_sec, video))
        table = CaptionTable(video[order], np.asarray(table.start_sec, np.float64)[order],
                             np.asarray(table.end_sec, np.float64)[order], np.asarray(table.text, object)[order])
        count, text_bytes, timed_bytes = _tally(table.video, table.text, table.start_sec, table.end_sec, n_videos)
        return cls(np.cumsum(count) - count, count, text_bytes, timed_bytes, table=table)

    @classmethod
    def of_file(cls, path: Path, n_videos: int, video_base: int = 0) -> CaptionSource:
        """From the /captions table of the file at ``path`` (its /videos has ``n_videos`` rows;
        ``video_base``: a segment's /captions/video counts rows of its whole file), scanned a
        block at a time."""
        count = np.zeros(n_videos, np.int64)
        text_bytes, timed_bytes = np.zeros(n_videos), np.zeros(n_videos)
        with h5py.File(path, "r") as h5:
            g = h5["captions"]
            m, step = int(g["video"].shape[0]), block_rows(_ROW_BYTES)
            last = -1
            for k in range(0, m, step):
                video = g["video"][k : k + step].astype(np.int64) - video_base
                if len(video) and (video[0] < last or np.any(np.diff(video) < 0) or video.min() < 0
                                   or video.max() >= n_videos):  # fmt: skip
                    raise StoreError(f"{path}: /captions/video is not sorted rows of /videos; run `vidfeat verify "
                                     f"{path}`, then add the captions again with `vidfeat captions`")  # fmt: skip
                last = int(video[-1]) if len(video) else last
                block = _tally(video, g["text"][k : k + step], g["start_sec"][k : k + step], g["end_sec"][k : k + step],
                               n_videos)  # fmt: skip
                count += block[0]
                text_bytes += block[1]
                timed_bytes += block[2]
        return cls(np.cumsum(count) - count, count, text_bytes, timed_bytes, path=Path(path))

    @contextlib.contextmanager
    def reading(self) -> Iterator[Callable[[np.ndarray], CaptionTable]]:
        """A function ``rows -> CaptionTable``: the captions of the videos ``rows`` (rows of the
        first source; -1: none), in that order, each table row's ``video`` its video's position
        in ``rows``. The columns are read as a few contiguous spans."""
        if self.path is None:
            yield self._gather_table
            return
        with h5py.File(self.path, "r") as h5:
            group = h5["captions"]
            yield lambda rows: self._gather(rows, group)

    def _where(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(caption rows to read, the position in ``rows`` of each one's video)."""
        rows = np.asarray(rows, dtype=np.int64)
        position = np.flatnonzero(rows >= 0)
        counts = self.count[rows[position]]
        total = int(counts.sum())
        starts = np.repeat(self.first[rows[position]] - (np.cumsum(counts) - counts), counts)
        return starts + np.arange(total, dtype=np.int64), np.repeat(position, counts)

    def _gather_table(self, rows: np.ndarray) -> CaptionTable:
        index, video = self._where(rows)
        t = self.table
        return CaptionTable(video, t.start_sec[index], t.end_sec[index], t.text[index])

    def _gather(self, rows: np.ndarray, group: h5py.Group) -> CaptionTable:
        index, video = self._where(rows)
        order = np.argsort(index, kind="stable")
        wanted = index[order]
        start, end = np.empty(len(wanted)), np.empty(len(wanted))
        text = np.empty(len(wanted), dtype=object)
        cuts = np.flatnonzero(np.diff(wanted) > _GAP) + 1
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(wanted)]):
            if a == b:
                continue
            lo, hi = int(wanted[a]), int(wanted[b - 1]) + 1
            pick = wanted[a:b] - lo
            start[a:b] = group["start_sec"][lo:hi][pick]
            end[a:b] = group["end_sec"][lo:hi][pick]
            text[a:b] = group["text"].asstr()[lo:hi][pick]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return CaptionTable(video, start[back], end[back], text[back])


class CaptionSpool:
    """Captions written to a scratch HDF5 file a video at a time, in any order of the videos,
    then read back as a :class:`CaptionSource` (:meth:`finish`). Memory holds one block of
    captions and four numbers a video. Each video is added at most once."""

    def __init__(self, path: Path, n_videos: int) -> None:
        self.path = Path(path)
        self._h5 = h5py.File(self.path, "w")
        self._columns = {name: self._h5.create_dataset(f"captions/{name}", shape=(0,), dtype=dtype, maxshape=(None,),
                                                        chunks=(_SPOOL_CHUNK,))
                         for name, dtype in CAPTION_COLUMNS.items()}  # fmt: skip
        self.count = np.zeros(n_videos, np.int64)
        self.first = np.zeros(n_videos, np.int64)
        self.text_bytes, self.timed_bytes = np.zeros(n_videos), np.zeros(n_videos)
        self._added = np.zeros(n_videos, bool)
        self._buffer: list[tuple[int, np.ndarray, np.ndarray, list[str]]] = []
        self._buffered = 0
        self._rows = 0

    def add(self, video: int, start_sec: np.ndarray, end_sec: np.ndarray, texts: list[str]) -> None:
        """The captions of the video at row ``video``, in any order (sorted here by start, then
        end, then the order given, as the file stores them)."""
        if self._added[video]:
            raise ValueError(f"the captions of video row {video} were added already")
        self._added[video] = True
        start = np.asarray(start_sec, dtype=np.float64)
        end = np.asarray(end_sec, dtype=np.float64)
        order = np.lexsort((np.arange(len(start)), end, start))
        start, end = start[order], end[order]
        texts = [texts[i] for i in order.tolist()]
        sizes = _sizes(texts)
        self.first[video] = self._rows + self._buffered
        self.count[video] = len(start)
        self.text_bytes[video] = sizes.sum()
        self.timed_bytes[video] = sizes @ np.maximum(end - start, 0.0)
        self._buffer.append((video, start, end, texts))
        self._buffered += len(start)
        if self._buffered >= block_rows(_ROW_BYTES):
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        n = self._rows + self._buffered
        columns = {
            "video": np.concatenate([np.full(len(s), v, np.int64) for v, s, _, _ in self._buffer]),
            "start_sec": np.concatenate([s for _, s, _, _ in self._buffer]),
            "end_sec": np.concatenate([e for _, _, e, _ in self._buffer]),
            "text": np.array([t for _, _, _, texts in self._buffer for t in texts], dtype=object),
        }
        for name, ds in self._columns.items():
            ds.resize((n,))
            ds[self._rows : n] = columns[name]
        self._rows, self._buffer, self._buffered = n, [], 0

    def finish(self) -> CaptionSource:
        """Close the spool; its captions as a source (the file stays until the caller removes it)."""
        self._flush()
        self._h5.close()
        return CaptionSource(self.first, self.count, self.text_bytes, self.timed_bytes, path=self.path)

    def close(self) -> None:
        """Close without finishing (after an error)."""
        with contextlib.suppress(Exception):
            self._h5.close()


def _tally(video: np.ndarray, texts, start_sec: np.ndarray, end_sec: np.ndarray,
           n_videos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Per video of ``n_videos``: its captions among these rows, their text bytes, and their
    text bytes x duration (:class:`CaptionSource`'s count, text_bytes and timed_bytes)."""
    sizes = _sizes(texts)
    spans = np.maximum(np.asarray(end_sec, np.float64) - np.asarray(start_sec, np.float64), 0.0)
    return (np.bincount(video, minlength=n_videos).astype(np.int64), np.bincount(video, sizes, n_videos),
            np.bincount(video, sizes * spans, n_videos))  # fmt: skip


def _sizes(texts) -> np.ndarray:
    """UTF-8 bytes of each text (str or bytes, as h5py reads a string dataset without asstr)."""
    return np.fromiter((len(t.encode("utf-8") if isinstance(t, str) else t) for t in texts), dtype=np.float64,
                       count=len(texts))  # fmt: skip


def caption_bytes(source: CaptionSource, rows: np.ndarray, counts: np.ndarray, *, clip_sec: float,
                  stride_sec: float) -> int:  # fmt: skip
    """An upper estimate of the bytes :func:`write_captions` adds to a file whose videos are the
    first source's ``rows`` (-1: none) with ``counts`` clips of ``clip_sec`` seconds every
    ``stride_sec``: the caption table and the clip texts. A caption of length d is in at most
    (d + clip_sec) / stride_sec + 2 clips (when the sampling is unknown: every clip of its
    video), so a video's clip texts are at most min(clips x text bytes, timed bytes / stride +
    (clip_sec / stride + 2) x text bytes)."""
    rows = np.asarray(rows, dtype=np.int64)
    kept = rows >= 0
    picked = rows[kept]
    n_captions = int(source.count[picked].sum())
    n_clips = int(np.asarray(counts).sum())
    text = source.text_bytes[picked]
    clip_text = np.asarray(counts, dtype=np.float64)[kept] * text
    if stride_sec > 0 and clip_sec > 0:
        clip_text = np.minimum(clip_text, source.timed_bytes[picked] / stride_sec + (clip_sec / stride_sec + 2) * text)
    shapes = [((n_captions,), dtype) for dtype in CAPTION_COLUMNS.values()] + [((n_clips,), _STR)]
    strings = float(text.sum()) + float(clip_text.sum()) + (n_captions + n_clips) * STRING_OVERHEAD
    return estimate_bytes(shapes, []) + int(strings) + 1


def write_captions(
    out: h5py.File,
    source: CaptionSource,
    rows: np.ndarray,
    *,
    counts: np.ndarray,
    first_frame_sec: np.ndarray,
    video_base: int = 0,
) -> int:
    """Write /captions/* and /clips/text into ``out``, whose /videos are the first source's
    ``rows`` (-1: a video without captions there) with ``counts`` clips each and whose
    /clips/start_sec and end_sec are written, a block of videos at a time; return the number
    of clips that got text. ``video_base``: /captions/video counts the rows of a whole grown
    file (a segment's videos start at that row), as /clips/video does."""
    rows = np.asarray(rows, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    per_video = np.zeros(len(rows), np.int64)
    per_video[rows >= 0] = source.count[rows[rows >= 0]]
    caption_ends, clip_ends = np.cumsum(per_video), np.cumsum(counts)
    n_captions, n_clips = int(caption_ends[-1]) if len(rows) else 0, int(counts.sum())
    columns = {name: create_dataset(out, f"captions/{name}", (n_captions,), dtype)
               for name, dtype in CAPTION_COLUMNS.items()}  # fmt: skip
    text_out = create_dataset(out, "clips/text", (n_clips,), _STR)
    step_captions, step_clips = block_rows(_ROW_BYTES), block_rows(_CLIP_BYTES)
    with_text = 0
    with source.reading() as gather:
        v, n = 0, len(rows)
        while v < n:
            cap_lo = int(caption_ends[v] - per_video[v])
            clip_lo = int(clip_ends[v] - counts[v])
            w = max(v + 1, min(int(np.searchsorted(caption_ends, cap_lo + step_captions, side="right")),
                               int(np.searchsorted(clip_ends, clip_lo + step_clips, side="right"))))  # fmt: skip
            block = gather(rows[v:w])
            cap_hi, clip_hi = int(caption_ends[w - 1]), int(clip_ends[w - 1])
            if cap_hi > cap_lo:
                columns["video"][cap_lo:cap_hi] = block.video + (v + video_base)
                columns["start_sec"][cap_lo:cap_hi] = block.start_sec
                columns["end_sec"][cap_lo:cap_hi] = block.end_sec
                columns["text"][cap_lo:cap_hi] = block.text
            if clip_hi > clip_lo:
                texts = _clip_texts(block, out, v, counts[v:w], clip_lo, clip_hi, first_frame_sec[v:w])
                text_out[clip_lo:clip_hi] = texts
                with_text += int(np.count_nonzero(texts != ""))
            v = w
    return with_text


def _clip_texts(block: CaptionTable, out: h5py.File, v: int, counts: np.ndarray, clip_lo: int, clip_hi: int,
                first_frame_sec: np.ndarray) -> np.ndarray:  # fmt: skip
    """The texts of the clips ``clip_lo:clip_hi`` of the videos ``v, v + 1, ...`` (``counts``
    clips each), from ``block`` (their captions, ``video`` = position from ``v``)."""
    texts = np.full(clip_hi - clip_lo, "", dtype=object)
    if not len(block):
        return texts
    starts, stops = out["clips/start_sec"][clip_lo:clip_hi], out["clips/end_sec"][clip_lo:clip_hi]
    ends = np.cumsum(counts)
    bounds = np.flatnonzero(np.diff(block.video)) + 1
    for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(block)]):
        i = int(block.video[lo])
        a, b = int(ends[i] - counts[i]), int(ends[i])
        if a == b:
            continue
        offset = float(first_frame_sec[i]) if np.isfinite(first_frame_sec[i]) else 0.0
        texts[a:b] = align(starts[a:b], stops[a:b], block.start_sec[lo:hi], block.end_sec[lo:hi],
                           block.text[lo:hi].tolist(), offset_sec=offset)  # fmt: skip
    return texts
