"""Captions in the file (format version 3): the caption table, each clip's text, and the rule
that joins them.

Layout (docs/format.md)::

    /captions/video      [M] int64    row of the caption's video in /videos
    /captions/start_sec  [M] float64  start, seconds on the player's clock
    /captions/end_sec    [M] float64  end
    /captions/text       [M] string   the spoken line
    /clips/text          [N] string   the clip's text (below); "" for a clip without captions
    /videos/first_frame_sec [V] float64  where clip time 0 lies on the player's clock

Caption rows are sorted by (video, start_sec, end_sec). Both groups are absent from a file
without captions. Assembly (every rerun of an extraction) carries the captions of the videos it
keeps and recomputes /clips/text, so new or re-extracted clips get their text.

The rule: a caption belongs to a clip when they overlap by more than zero seconds::

    cap.start < clip.end + offset_sec  and  cap.end > clip.start + offset_sec

Captions that only touch a clip (one ends exactly where the other starts) do not belong to it.
Caption times are the player's clock; clip times count from the video's first frame, so clip
``[a, b]`` covers player time ``[a + offset_sec, b + offset_sec]``, ``offset_sec`` being the
video's ``first_frame_sec`` (0 when unknown). A clip's text is the text of its captions in time
order (by start, then end, then input order), joined with single spaces; a clip without
captions gets ``""``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import VidfeatError
from .format import _STR, block_rows

__all__ = ["CAPTION_COLUMNS", "CaptionTable", "align", "has_captions", "read_captions", "caption_rows",
           "read_caption_rows", "iter_caption_blocks", "caption_block_rows", "iter_clip_texts", "clips_with_text"]

CAPTION_COLUMNS = {
    "video": np.dtype(np.int64),
    "start_sec": np.dtype(np.float64),
    "end_sec": np.dtype(np.float64),
    "text": _STR,
}
"""/captions/<name> -> dtype, one row per caption."""

_CAPTION_ROW_BYTES = 8 + 8 + 8 + 64  # video, two times and about 64 bytes of text
_PIECE = 4096  # /captions/video values a binary search reads at once, once it has narrowed to them


def align(
    clip_start: np.ndarray | Sequence[float],
    clip_end: np.ndarray | Sequence[float],
    cap_start: np.ndarray | Sequence[float],
    cap_end: np.ndarray | Sequence[float],
    cap_text: Sequence[str],
    *,
    offset_sec: float = 0.0,
) -> list[str]:
    """The caption text of every clip (see the module docstring for the rule).

    Args:
        clip_start, clip_end: [n] clip times in seconds from the first frame, in any order.
        cap_start, cap_end, cap_text: [m] caption times in player seconds and their texts, in
            any order (``sources.as_arrays`` turns a caption list into these).
        offset_sec: the player time of the video's first frame.

    Returns:
        [n] strings, one per clip in the order given.

    Cost: O((n + m) log n + k) time and memory, k the number of (clip, caption) pairs examined.
    k is the number of overlapping pairs when clip ends rise with clip starts (fixed-length
    clips); otherwise it also counts clips nested inside earlier longer clips, which are
    examined and dropped.
    """
    cs = np.asarray(clip_start, dtype=np.float64).reshape(-1) + float(offset_sec)
    ce = np.asarray(clip_end, dtype=np.float64).reshape(-1) + float(offset_sec)
    ks = np.asarray(cap_start, dtype=np.float64).reshape(-1)
    ke = np.asarray(cap_end, dtype=np.float64).reshape(-1)
    if cs.shape != ce.shape:
        raise VidfeatError(f"align: {cs.size} clip starts but {ce.size} clip ends; pass one of each per clip")
    if not (ks.shape == ke.shape and ks.size == len(cap_text)):
        raise VidfeatError(
            f"align: {ks.size} caption starts, {ke.size} ends and {len(cap_text)} texts; pass one of each per caption"
        )
    for name, values in (("clip", cs), ("clip", ce), ("caption", ks), ("caption", ke)):
        if not np.isfinite(values).all():
            raise VidfeatError(f"align: a {name} time is not a finite number; drop or fix it before aligning")
    n = cs.size
    if n == 0 or ks.size == 0:
        return [""] * n

    # Captions in time order: the pairs are generated caption by caption in this order, so a
    # stable sort by clip later keeps each clip's captions in time order.
    cap_order = np.lexsort((np.arange(ks.size), ke, ks))
    ks, ke = ks[cap_order], ke[cap_order]

    # Clips by start. Clips that can overlap caption j are a prefix by start (start < cap end)
    # and, within it, those whose end > cap start: all of them lie at or after the first clip
    # where the running maximum of the ends exceeds cap start.
    clip_order = np.argsort(cs, kind="stable")
    cs_sorted, ce_sorted = cs[clip_order], ce[clip_order]
    reach = np.maximum.accumulate(ce_sorted)
    first = np.searchsorted(reach, ks, side="right")  # first clip with reach > cap start
    stop = np.searchsorted(cs_sorted, ke, side="left")  # clips with start < cap end
    count = np.maximum(stop - first, 0)
    total = int(count.sum())
    if total == 0:
        return [""] * n

    # Expand every caption's candidate range into (clip position, caption) pairs.
    cap_idx = np.repeat(np.arange(ks.size), count)
    run_start = np.cumsum(count) - count
    clip_pos = first[cap_idx] + (np.arange(total) - run_start[cap_idx])
    # Exact test: the prefix already gives clip start < cap end; nested clips fail this one.
    keep = ce_sorted[clip_pos] > ks[cap_idx]
    cap_idx, clip_pos = cap_idx[keep], clip_pos[keep]

    if clip_pos.size == 0:
        return [""] * n
    clip_idx = clip_order[clip_pos]
    by_clip = np.argsort(clip_idx, kind="stable")
    clip_idx, cap_idx = clip_idx[by_clip], cap_order[cap_idx[by_clip]]

    out = [""] * n
    bounds = np.flatnonzero(np.diff(clip_idx)) + 1
    for lo, hi in zip(np.concatenate(([0], bounds)).tolist(), np.concatenate((bounds, [clip_idx.size])).tolist()):
        out[int(clip_idx[lo])] = " ".join(t for t in (cap_text[j] for j in cap_idx[lo:hi].tolist()) if t)
    return out


# the caption table in a file


@dataclass(frozen=True)
class CaptionTable:
    """The /captions table: ``video`` (row in /videos), ``start_sec``, ``end_sec`` (player
    seconds) and ``text``, sorted by (video, start_sec, end_sec)."""

    video: np.ndarray  # int64 [M]
    start_sec: np.ndarray  # float64 [M]
    end_sec: np.ndarray  # float64 [M]
    text: np.ndarray  # str objects [M]

    def __len__(self) -> int:
        return len(self.video)

    @classmethod
    def empty(cls) -> CaptionTable:
        """A table without captions (a file whose videos have none yet keeps the layout)."""
        return cls(np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float64), np.empty(0, object))

    @classmethod
    def build(cls, rows: Mapping[int, Sequence[tuple[float, float, str]]]) -> CaptionTable:
        """From ``{video row: [(start_sec, end_sec, text), ...]}``, sorted as the file stores it."""
        items = [(v, float(a), float(b), str(t)) for v, caps in rows.items() for a, b, t in caps]
        video = np.array([i[0] for i in items], dtype=np.int64)
        start = np.array([i[1] for i in items], dtype=np.float64)
        end = np.array([i[2] for i in items], dtype=np.float64)
        text = np.array([i[3] for i in items], dtype=object)
        order = np.lexsort((np.arange(len(items)), end, start, video))
        return cls(video[order], start[order], end[order], text[order])

    def rows_of(self, video: int) -> slice:
        """The rows of one video (an empty slice when it has no captions)."""
        lo = int(np.searchsorted(self.video, video, side="left"))
        hi = int(np.searchsorted(self.video, video, side="right"))
        return slice(lo, hi)

    def part(self, rows: slice) -> CaptionTable:
        """The rows ``rows`` of the table (views, no copy)."""
        return CaptionTable(self.video[rows], self.start_sec[rows], self.end_sec[rows], self.text[rows])

    def videos(self) -> np.ndarray:
        """The video rows that have at least one caption."""
        return np.unique(self.video)


def has_captions(h5: h5py.Group) -> bool:
    return isinstance(h5.get("captions"), h5py.Group)


def clips_with_text(h5: h5py.Group, start: int = 0) -> int:
    """How many clips from row ``start`` on have text (/clips/text not ""), read a block at a
    time; 0 without captions."""
    if "clips/text" not in h5:
        return 0
    text, step = h5["clips/text"], block_rows(64)
    return sum(int(np.count_nonzero(text.asstr()[k : k + step] != "")) for k in range(start, text.shape[0], step))


def read_captions(h5: h5py.Group) -> CaptionTable | None:
    """The file's whole caption table, or None for a file without captions. Its memory grows
    with the table (every text a Python string): passes over a file's captions read them with
    :func:`iter_caption_blocks` or :func:`caption_rows` instead."""
    if not has_captions(h5):
        return None
    return read_caption_rows(h5, slice(0, h5["captions/video"].shape[0]))


def read_caption_rows(h5: h5py.Group, rows: slice) -> CaptionTable:
    """The rows ``rows`` (a slice of row numbers) of the file's caption table."""
    g = h5["captions"]
    return CaptionTable(g["video"][rows].astype(np.int64), g["start_sec"][rows].astype(np.float64),
                        g["end_sec"][rows].astype(np.float64), g["text"].asstr()[rows].astype(object))  # fmt: skip


def caption_block_rows() -> int:
    """Caption rows a streamed pass over the caption table reads a step."""
    return block_rows(_CAPTION_ROW_BYTES)


def _search_sorted(ds: h5py.Dataset, value: int, side: str, lo: int, hi: int) -> int:
    """``np.searchsorted`` of ``value`` among the sorted rows ``[lo, hi)`` of the 1-D dataset
    ``ds``: single values are read until the range is one piece of :data:`_PIECE` values, so a
    search reads O(log n) values and holds one piece, whatever the dataset's length."""
    while hi - lo > _PIECE:
        mid = (lo + hi) // 2
        x = ds[mid]
        if x < value or (side == "right" and x == value):
            lo = mid + 1
        else:
            hi = mid
    return lo + int(np.searchsorted(ds[lo:hi], value, side=side))


def caption_rows(h5: h5py.Group, v_lo: int, v_hi: int) -> slice:
    """The /captions rows of the videos ``[v_lo, v_hi)`` (an empty slice when none of them has
    captions): a binary search on /captions/video, which is sorted; the column is never read whole."""
    ds = h5["captions/video"]
    n = int(ds.shape[0])
    lo = _search_sorted(ds, v_lo, "left", 0, n)
    return slice(lo, _search_sorted(ds, v_hi, "left", lo, n) if v_hi > v_lo else lo)


def iter_caption_blocks(h5: h5py.Group) -> Iterator[tuple[int, CaptionTable]]:
    """(first row, rows) of the file's caption table in file order, a block of about
    :func:`caption_block_rows` rows at a time, each block holding whole videos (a video with
    more captions than a block is a block of its own): memory holds one block whatever the
    table's size. The rows must be sorted by video (:func:`vidfeat.store.verify` checks); on
    rows that are not, the blocks still cover every row once."""
    ds = h5["captions/video"]
    n, step = int(ds.shape[0]), caption_block_rows()
    lo = 0
    while lo < n:
        hi = min(n, lo + step)
        if hi < n:
            # end the block before its last video, whose captions may go on past it
            video = ds[lo:hi]
            cut = int(np.searchsorted(video, video[-1], side="left"))
            hi = lo + cut if cut > 0 else _search_sorted(ds, int(video[-1]), "right", hi, n)
        yield lo, read_caption_rows(h5, slice(lo, hi))
        lo = hi


def iter_clip_texts(
    captions: CaptionTable | Iterable[tuple[int, CaptionTable]],
    clip_start: h5py.Dataset | np.ndarray,
    clip_end: h5py.Dataset | np.ndarray,
    counts: np.ndarray,
    first_frame_sec: np.ndarray,
) -> Iterator[tuple[int, list[str]]]:
    """(first clip row, texts) of every clip, in blocks of whole videos of about one block of
    rows, so that memory stays bounded whatever the file's size. ``counts`` and
    ``first_frame_sec`` are the /videos columns; clip times are read a block at a time.

    ``captions`` is the whole caption table, or its blocks of whole videos in video order as
    (first row, rows) pairs, e.g. :func:`iter_caption_blocks` reading the file a block at a
    time: memory then holds one block of captions and one of clips."""
    blocks = iter([(0, captions)]) if isinstance(captions, CaptionTable) else iter(captions)
    held = CaptionTable.build({})  # the captions read and not yet used: of videos from v on
    more = True  # whether ``blocks`` may hold more captions
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    step = block_rows(16 + 64)  # two float64 times and about 64 bytes of text a clip
    v, n = 0, len(counts)
    while v < n:
        while more and (not len(held) or held.video[-1] < v):
            block = next(blocks, None)
            if block is None:
                more = False
            else:
                held = block[1]
        lo = int(ends[v] - counts[v])
        w = max(v + 1, int(np.searchsorted(ends, lo + step, side="right")))
        if more:
            # the held rows end with a whole video (>= v); later videos' captions are in blocks not read yet
            w = min(w, int(held.video[-1]) + 1)
        hi = int(ends[w - 1])
        starts, stops = np.asarray(clip_start[lo:hi]), np.asarray(clip_end[lo:hi])
        texts: list[str] = []
        for video in range(v, w):
            a, b = int(ends[video] - counts[video]) - lo, int(ends[video]) - lo
            rows = held.rows_of(video)
            if rows.start == rows.stop or a == b:
                texts.extend([""] * (b - a))
                continue
            offset = float(first_frame_sec[video]) if np.isfinite(first_frame_sec[video]) else 0.0
            texts.extend(align(starts[a:b], stops[a:b], held.start_sec[rows], held.end_sec[rows],
                               held.text[rows].tolist(), offset_sec=offset))  # fmt: skip
        yield lo, texts
        held = held.part(slice(int(np.searchsorted(held.video, w, side="left")), None))
        v = w
