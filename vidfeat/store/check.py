"""Checking a finished file: :func:`summarize` (what ``vidfeat info`` shows) and :func:`verify`
(the format contract, streamed in blocks)."""

from __future__ import annotations

import heapq
import json
import os
import re
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .segments import check_segments
from .format import (
    SETTING_DEFAULTS,
    _CLIP_ROW_COLUMNS,
    _MEAN_COLUMNS,
    _STR,
    _ADDED_COLUMNS,
    _OPTIONAL_COLUMNS,
    EMBEDDING_DTYPES,
    FORMAT_VERSION,
    REQUIRED_SETTINGS,
    STATUSES,
    VIDEO_COLUMNS,
    VOLATILE_ATTRS,
    WRITER_ATTRS,
    _block_rows,
    block_rows,
    _canon,
    _missing_message,
    _open_h5,
    check_format,
)
from .captions import CAPTION_COLUMNS, clips_with_text, has_captions, iter_caption_blocks, iter_clip_texts
from .means import iter_video_means
from .reader import open_features

TIME_TOLERANCE_SEC = 0.5
"""verify(): clip times may exceed a video's ``duration_sec`` by this much (container durations
are rounded and some containers state the end of the audio)."""

MEAN_TOLERANCE = 1e-5
"""verify(): /videos/embedding_mean and /videos/scores_mean may differ from the means recomputed
from /clips by this much (absolute, plus as much relative): float32 rounding."""

_FAULT_EXAMPLES = 5


SHOWN_PER_STATUS = 5
"""summarize(): videos listed per status (failed, partial, warned) unless ``failures``."""

_MAX_REASONS = 1000  # distinct reasons counted per status; the rest count as one "other reasons"
_OTHER_REASONS = "(other reasons)"
_DIGITS = re.compile(r"\d+")


def failure_reason(message: str, path: str) -> str:
    """``message`` (a video's error or warning) with its file-specific parts replaced, so that
    the same failure of many videos reads the same: the video's path (and file name) becomes
    ``<video>`` and every number ``N``."""
    if path:
        message = message.replace(path, "<video>")
        name = path.rsplit("/", 1)[-1]
        if name and name != path:
            message = message.replace(name, "<video>")
    return _DIGITS.sub("N", message)


class _Listing:
    """The videos of one status: their count, the first ``limit`` (None: all) and the count
    per reason."""

    def __init__(self, limit: int | None) -> None:
        self.count, self.limit = 0, limit
        self.rows: list[dict[str, Any]] = []
        self.reasons: dict[str, int] = {}

    def add(self, row: dict[str, Any], message: str) -> None:
        self.count += 1
        if self.limit is None or len(self.rows) < self.limit:
            self.rows.append(row)
        reason = failure_reason(message, row["path"])
        if reason not in self.reasons and len(self.reasons) >= _MAX_REASONS:
            reason = _OTHER_REASONS
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def by_reason(self) -> list[dict[str, Any]]:
        ranked = sorted(self.reasons.items(), key=lambda item: (-item[1], item[0]))
        return [{"reason": reason, "count": count} for reason, count in ranked]


def _distinct_sorted(ds: h5py.Dataset) -> int:
    """How many distinct values a sorted 1-D dataset holds, read a block at a time."""
    distinct, last, step = 0, None, block_rows(8)
    for k in range(0, ds.shape[0], step):
        block = ds[k : k + step]
        distinct += int(np.count_nonzero(block[1:] != block[:-1])) + int(last is None or block[0] != last)
        last = block[-1]
    return distinct


def summarize(path: str | os.PathLike[str], *, failures: bool = False) -> dict[str, Any]:
    """What ``vidfeat info`` shows: format version, settings, counts by status, clips, and for
    the failed, partial and warned videos (none warned in version-1 files) their counts by
    reason (:func:`failure_reason`) and the first :data:`SHOWN_PER_STATUS` of each (every one
    with ``failures``). Reads /videos a block at a time: memory does not grow with the file
    (but for ``failures``' lists)."""
    limit = None if failures else SHOWN_PER_STATUS
    listings = {key: _Listing(limit) for key in ("failed", "partial", "warned")}
    with open_features(path) as f:
        attrs, h5 = f.attrs, f.h5
        n_videos = int(h5["videos/path"].shape[0])
        status = dict.fromkeys(STATUSES, 0)
        step = block_rows(256)
        has_warning = "videos/warning" in h5
        for k in range(0, n_videos, step):
            states = h5["videos/status"].asstr()[k : k + step]
            warnings = h5["videos/warning"].asstr()[k : k + step] if has_warning else np.full(len(states), "", object)
            for s in STATUSES:
                status[s] += int(np.count_nonzero(states == s))
            rows = np.flatnonzero((states == "failed") | (states == "partial") | (warnings != ""))
            if not len(rows):
                continue
            names = h5["videos/path"].asstr()[k : k + step]
            errors = h5["videos/error"].asstr()[k : k + step]
            counts = h5["videos/clip_count"][k : k + step]
            for i in rows.tolist():
                if states[i] in ("failed", "partial"):
                    row = {"path": names[i], "error": errors[i], "clips": int(counts[i])}
                    listings[states[i]].add(row, errors[i])
                if warnings[i]:
                    listings["warned"].add({"path": names[i], "warning": warnings[i]}, warnings[i])
        captions = None
        if f.has_captions:
            captioned = _distinct_sorted(h5["captions/video"])
            captions = {
                "source": attrs.get("captions_source", ""),
                "warnings": json.loads(attrs.get("captions_warnings") or "{}"),  # bad cases of the source by kind
                "captions": int(h5["captions/video"].shape[0]),
                "videos": captioned,
                "clips": clips_with_text(h5),
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
            "videos": n_videos,
            "clips": len(f),
            "segments": len(attrs.get("segments") or []) or 1,  # more than 1: a grown file (vidfeat compact)
            "status": status,
            "warnings": listings["warned"].count,
            "failed": listings["failed"].rows,
            "partial": listings["partial"].rows,
            "warned": listings["warned"].rows,
            "reasons": {key: listing.by_reason() for key, listing in listings.items()},
            "listed": "all" if failures else f"first {SHOWN_PER_STATUS}",
            "captions": captions,
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

    def count(self, kind: str) -> int:
        """How many rows of ``kind`` were found."""
        return self._rows.get(kind, (0, []))[0]

    def take(self, other: _Faults, kind: str) -> None:
        """Add the rows of ``kind`` that ``other`` found (a pass whose faults are reported only
        once it is over)."""
        if kind in other._rows:
            count, shown = other._rows[kind]
            self.rows(kind, shown, count)

    def result(self) -> list[str]:
        out = list(self.lines)
        for kind, (count, shown) in self._rows.items():
            more = f", ... ({count} in all)" if count > len(shown) else ""
            out.append(f"{kind}: {', '.join(shown)}{more}")
        return out


class _PathReader:
    """``path_of(row)``: one /videos path, read when a fault names it."""

    def __init__(self, ds: h5py.Dataset) -> None:
        self.ds = ds

    def __call__(self, row: int) -> str:
        return str(self.ds.asstr()[int(row)])


_VIDEO_BLOCK = 1 << 16  # /videos rows of strings read per step


def _verify_video_rows(h5: h5py.File, counts: np.ndarray, starts: np.ndarray, path_of: _PathReader,
                       faults: _Faults) -> None:  # fmt: skip
    """The /videos string columns, a block of rows at a time: statuses, one-line errors and
    warnings, relative paths sorted (within each segment of a grown file: ``starts``, its first
    rows) and, across segments, unique."""
    n = len(counts)
    columns = {name: h5[f"videos/{name}"] for name in ("path", "status", "error", "warning") if f"videos/{name}" in h5}
    new_run = np.zeros(n + 1, dtype=bool)
    new_run[starts[(starts >= 0) & (starts <= n)]] = True
    previous, unsorted = None, None
    for lo in range(0, n, _VIDEO_BLOCK):
        hi = min(n, lo + _VIDEO_BLOCK)
        block = {name: np.asarray(ds.asstr()[lo:hi], dtype=object) for name, ds in columns.items()}
        paths, status, c = block["path"], block["status"], counts[lo:hi]
        bad_status = ~np.isin(status.astype(str), STATUSES)
        faults.rows("videos/status not ok|partial|failed", paths[bad_status], int(bad_status.sum()))
        for name in ("error", "warning"):
            if name in block:
                multi = np.array(["\n" in e or "\r" in e for e in block[name]], dtype=bool)
                faults.rows(f"videos/{name} with more than one line", paths[multi], int(multi.sum()))
        if unsorted is None:
            before = np.r_[[previous if previous is not None else ""], paths[:-1]].astype(object)
            increasing = (paths > before).astype(bool) | new_run[lo:hi]
            if lo == 0:
                increasing[0] = True
            if not increasing.all():
                unsorted = lo + int(np.argmin(increasing))
        previous = paths[-1]
        absolute = np.array([p.startswith("/") or not p for p in paths], dtype=bool)
        faults.rows("videos/path not relative", paths[absolute], int(absolute.sum()))
        failed_with_clips = (status == "failed") & (c != 0)
        faults.rows("failed videos with clips", paths[failed_with_clips], int(failed_with_clips.sum()))
        ok_without = (status == "ok") & (c <= 0)
        faults.rows("ok videos without clips", paths[ok_without], int(ok_without.sum()))
    if unsorted is not None:
        where = " within its segment" if len(starts) > 1 else ""
        faults.add(f"videos/path not sorted and unique{where} at row {unsorted} ({path_of(unsorted)})")
    elif len(starts) > 1:
        twice = _in_two_segments(columns["path"], [*starts.tolist(), n])
        if twice is not None:
            faults.add(f"videos/path not unique: {twice} is in more than one segment")


def _in_two_segments(paths: h5py.Dataset, bounds: list[int]) -> str | None:
    """A path found in two of the sorted runs ``paths[bounds[k]:bounds[k + 1]]``, or None: a
    k-way merge of the runs, read a block at a time."""

    def run(lo: int, hi: int) -> Iterator[str]:
        for a in range(lo, hi, _VIDEO_BLOCK):
            yield from paths.asstr()[a : min(hi, a + _VIDEO_BLOCK)].tolist()

    previous = None
    for name in heapq.merge(*(run(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]))):
        if name == previous:
            return name
        previous = name
    return None


def verify(path: str | os.PathLike[str]) -> list[str]:
    """Check a finished file against the format contract; return the faults (empty = valid).

    Raises StoreError only if the file cannot be opened at all. Streams /clips, /captions and
    the /videos strings in blocks: memory holds four numbers a video and one block of rows.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(_missing_message(path))
    faults = _Faults()
    with _open_h5(path, "feature file", "check the path") as h5:
        try:
            check_segments(h5, path)
        except StoreError as exc:  # its virtual datasets would read as fill values
            faults.add(str(exc))
            return faults.result()
        _verify(h5, faults)
    return faults.result()


def _verify(h5: h5py.File, faults: _Faults) -> None:
    attrs = {key: _canon(value) for key, value in h5.attrs.items()}
    try:  # the datasets are checked below, in more detail
        version = check_format(h5, h5.filename, "verify checks files vidfeat wrote", datasets=False)
    except StoreError as exc:
        faults.add(str(exc))
        version = FORMAT_VERSION  # check the layout of the newest version
    for key in (*REQUIRED_SETTINGS, *VOLATILE_ATTRS):
        if key not in attrs and key not in SETTING_DEFAULTS:
            faults.add(f"root attr {key} is missing")
    # older versions lack the columns added since (and version 1 the means)
    columns = {name: dtype for name, dtype in VIDEO_COLUMNS.items()
               if (name not in _ADDED_COLUMNS or version >= _ADDED_COLUMNS[name][0])
               and not (name in _OPTIONAL_COLUMNS and f"videos/{name}" not in h5)}  # fmt: skip
    expected = {
        **{f"videos/{name}": dtype for name, dtype in columns.items()},
        **({f"videos/{name}": np.dtype(np.float32) for name in _MEAN_COLUMNS} if version >= 2 else {}),
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
    for name in columns:
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
    widths = {"embedding_mean": emb.shape[1] if emb.ndim == 2 else -1, "scores_mean": n_classes}
    for name, width in widths.items() if version >= 2 else ():
        if h5[f"videos/{name}"].shape != (n_videos, width):
            faults.add(f"videos/{name} has shape {h5[f'videos/{name}'].shape}, expected ({n_videos}, {width})")
            layout_ok = False
    if not layout_ok:
        return  # the row checks below assume the layout is right

    # Per video, only four numbers are held (32 bytes a video); the string columns are read a
    # block of rows at a time, and a path only when a fault names it.
    counts = h5["videos/clip_count"][()].astype(np.int64)
    offsets = h5["videos/clip_offset"][()].astype(np.int64)
    duration = h5["videos/duration_sec"][()].astype(np.float64)
    path_of = _PathReader(h5["videos/path"])
    starts = np.asarray(_canon(h5.attrs.get("segment_videos", [0])), dtype=np.int64).reshape(-1)
    _verify_video_rows(h5, counts, starts, path_of, faults)
    mapping_ok = True
    if (counts < 0).any():
        faults.rows("videos/clip_count negative", (path_of(i) for i in np.flatnonzero(counts < 0)),
                    int((counts < 0).sum()))  # fmt: skip
        mapping_ok = False
    else:
        want = np.cumsum(counts) - counts
        wrong = offsets != want
        if wrong.any():
            faults.rows("videos/clip_offset not contiguous (video: found, expected)",
                        [f"{path_of(i)}: {offsets[i]}, {want[i]}" for i in np.flatnonzero(wrong)[:_FAULT_EXAMPLES]],
                        int(wrong.sum()))
            mapping_ok = False
        if int(counts.sum()) != n_clips:
            faults.add(f"videos/clip_count sums to {int(counts.sum())}, but /clips has {n_clips} rows")
            mapping_ok = False
    del offsets

    num_frames = attrs.get("num_frames")
    block = _block_rows(emb.shape[1], n_classes)
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
                    (f"{r}: {path_of(v)}, {e:.3f}, {d:.3f}" for r, v, e, d in
                     zip(rows[bad], video[bad], t1[bad], duration[video][bad])), int(bad.sum()))
    if version >= 2 and mapping_ok:
        _verify_means(h5, counts, path_of, block, faults)
    if mapping_ok:
        _verify_captions(h5, counts, n_clips, faults)


def _verify_captions(h5: h5py.File, counts: np.ndarray, n_clips: int, faults: _Faults) -> None:
    """/captions/* (sorted, valid times, existing videos) and /clips/text against the rule,
    both read a block of rows at a time: memory does not grow with the caption table."""
    if not has_captions(h5):
        if "clips/text" in h5:
            faults.add("clips/text without /captions")
        return
    g = h5["captions"]
    missing = [f"captions/{name}" for name in CAPTION_COLUMNS if not isinstance(g.get(name), h5py.Dataset)]
    if "clips/text" not in h5:
        missing.append("clips/text")
    if missing:
        faults.add(f"missing datasets: {', '.join(missing)}")
        return
    lengths = {g[name].shape for name in CAPTION_COLUMNS}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        faults.add(f"captions/* have different shapes: {sorted(lengths)}")
        return
    if h5["clips/text"].shape != (n_clips,) or h5py.check_string_dtype(h5["clips/text"].dtype) is None:
        faults.add(f"clips/text has shape {h5['clips/text'].shape}, expected ({n_clips},) strings")
        return
    rows = _CaptionRowFaults(len(counts))
    m, step = int(g["video"].shape[0]), block_rows(8 + 8 + 8)
    for k in range(0, m, step):
        rows.check(k, g["video"][k : k + step], g["start_sec"][k : k + step], g["end_sec"][k : k + step])
    if rows.found.count(rows.OUTSIDE):
        faults.take(rows.found, rows.OUTSIDE)
        return
    faults.take(rows.found, rows.TIMES)
    faults.take(rows.found, rows.UNSORTED)
    if rows.found.count(rows.TIMES) or not rows.by_video:
        return  # texts are matched to captions by video: only a table grouped by video has them
    stored = h5["clips/text"]
    first_frame = (h5["videos/first_frame_sec"][()] if "videos/first_frame_sec" in h5
                   else np.full(len(counts), np.nan))  # fmt: skip
    blocks = iter_caption_blocks(h5)
    for row, texts in iter_clip_texts(blocks, h5["clips/start_sec"], h5["clips/end_sec"], counts, first_frame):
        got = stored.asstr()[row : row + len(texts)]
        wrong = np.flatnonzero(got.astype(object) != np.array(texts, dtype=object))
        faults.rows("clips/text differs from its captions (row)", wrong + row, len(wrong))


class _CaptionRowFaults:
    """The /captions rows, checked a block at a time: video rows inside /videos, valid times,
    and rows sorted by (video, start_sec, end_sec), each block also against the previous one's
    last row. What is found is reported once every block is checked (``found``): which kinds
    are reported depends on the counts of the others."""

    OUTSIDE = "captions/video outside /videos (row)"
    TIMES = "captions: rows with start_sec < 0, start_sec > end_sec or NaN"
    UNSORTED = "captions not sorted by (video, start_sec, end_sec) at rows"

    def __init__(self, n_videos: int) -> None:
        self.n_videos = n_videos
        self.found = _Faults()
        self.by_video = True  # the video column alone is sorted
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the previous block's last row

    def check(self, first: int, v: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> None:
        """Rows ``first, first + 1, ...``: their video rows and times."""
        outside = np.flatnonzero((v < 0) | (v >= self.n_videos)) + first
        self.found.rows(self.OUTSIDE, outside[:_FAULT_EXAMPLES].tolist(), len(outside))
        times = np.flatnonzero(~(np.isfinite(t0) & np.isfinite(t1) & (t0 >= 0) & (t0 <= t1))) + first
        self.found.rows(self.TIMES, times[:_FAULT_EXAMPLES].tolist(), len(times))
        if self._last is not None:  # the block's first row against the previous block's last
            self._order(first, *self._last, v[:1], t0[:1], t1[:1])
        self._order(first + 1, v[:-1], t0[:-1], t1[:-1], v[1:], t0[1:], t1[1:])
        self._last = (v[-1:].copy(), t0[-1:].copy(), t1[-1:].copy())  # copies: the block is not kept

    def _order(self, first: int, v: np.ndarray, t0: np.ndarray, t1: np.ndarray,
               next_v: np.ndarray, next_t0: np.ndarray, next_t1: np.ndarray) -> None:  # fmt: skip
        """Rows ``first, first + 1, ...`` (``next_*``) against the rows just before them."""
        later, same = next_v > v, next_v == v
        ok = later | (same & ((next_t0 > t0) | ((next_t0 == t0) & (next_t1 >= t1))))
        unsorted = np.flatnonzero(~ok) + first
        self.found.rows(self.UNSORTED, unsorted[:_FAULT_EXAMPLES].tolist(), len(unsorted))
        self.by_video = self.by_video and bool((later | same).all())


def _verify_means(h5: h5py.File, counts: np.ndarray, path_of: _PathReader, block: int, faults: _Faults) -> None:
    """/videos/embedding_mean and /videos/scores_mean against the means of the /clips rows."""
    stored = {name: h5[f"videos/{name}"] for name in _MEAN_COLUMNS}
    for v, emb_mean, scores_mean in iter_video_means(h5["clips/embedding"], h5["clips/logits"], counts, block):
        for name, want in (("embedding_mean", emb_mean), ("scores_mean", scores_mean)):
            got = stored[name][v : v + len(want)]
            bad = ~np.isclose(got, want, rtol=MEAN_TOLERANCE, atol=MEAN_TOLERANCE, equal_nan=True).all(axis=1)
            faults.rows(f"videos/{name} differs from the mean of the video's clips",
                        (path_of(v + i) for i in np.flatnonzero(bad)), int(bad.sum()))  # fmt: skip
