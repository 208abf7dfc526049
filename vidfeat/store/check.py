"""Checking a finished file: :func:`summarize` (what ``vidfeat info`` shows) and :func:`verify`
(the format contract, streamed in blocks)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .format import (
    _CLIP_ROW_COLUMNS,
    _MEAN_COLUMNS,
    _STR,
    _V1_MISSING_COLUMNS,
    EMBEDDING_DTYPES,
    FORMAT,
    FORMAT_VERSION,
    REQUIRED_SETTINGS,
    STATUSES,
    VIDEO_COLUMNS,
    VOLATILE_ATTRS,
    WRITER_ATTRS,
    _block_rows,
    _canon,
    _missing_message,
    _open_h5,
    _read_table,
)
from .assemble import video_means
from .reader import open_features

TIME_TOLERANCE_SEC = 0.5
"""verify(): clip times may exceed a video's ``duration_sec`` by this much (container durations
are rounded and some containers state the end of the audio)."""

MEAN_TOLERANCE = 1e-5
"""verify(): /videos/embedding_mean and /videos/scores_mean may differ from the means recomputed
from /clips by this much (absolute, plus as much relative): float32 rounding."""

_FAULT_EXAMPLES = 5


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``vidfeat info`` shows: format version, settings, counts by status, clips,
    failed/partial reasons, and the videos with a warning (none in version-1 files)."""
    with open_features(path) as f:
        attrs = f.attrs
        videos = f.videos
        counts = videos.clip_count
        status = {s: int(np.count_nonzero(videos.status == s)) for s in STATUSES}
        problems = {
            s: [
                {"path": videos.path[i], "error": videos.error[i], "clips": int(counts[i])}
                for i in np.flatnonzero(videos.status == s)
            ]
            for s in ("failed", "partial")
        }
        warned = [{"path": videos.path[i], "warning": videos.warning[i]} for i in np.flatnonzero(videos.warning != "")]
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
            "videos": len(videos),
            "clips": len(f),
            "status": status,
            "failed": problems["failed"],
            "partial": problems["partial"],
            "warnings": len(warned),
            "warned": warned,
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

    def result(self) -> list[str]:
        out = list(self.lines)
        for kind, (count, shown) in self._rows.items():
            more = f", ... ({count} in all)" if count > len(shown) else ""
            out.append(f"{kind}: {', '.join(shown)}{more}")
        return out


def verify(path: str | os.PathLike[str]) -> list[str]:
    """Check a finished file against the format contract; return the faults (empty = valid).

    Raises StoreError only if the file cannot be opened at all. Streams /clips in blocks.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(_missing_message(path))
    faults = _Faults()
    with _open_h5(path, "feature file", "check the path") as h5:
        _verify(h5, faults)
    return faults.result()


def _verify(h5: h5py.File, faults: _Faults) -> None:
    attrs = {key: _canon(value) for key, value in h5.attrs.items()}
    if attrs.get("format") != FORMAT:
        faults.add(f"root attr format is {attrs.get('format')!r}, not {FORMAT!r}")
    for key in ("format_version", *REQUIRED_SETTINGS, *VOLATILE_ATTRS):
        if key not in attrs:
            faults.add(f"root attr {key} is missing")
    version = attrs.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        faults.add(f"root attr format_version is {version!r}, not 1 .. {FORMAT_VERSION}")
        version = FORMAT_VERSION
    # version 1 lacks the warning column and the means
    columns = {name: dtype for name, dtype in VIDEO_COLUMNS.items() if version >= 2 or name not in _V1_MISSING_COLUMNS}
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

    table = _read_table(h5)
    paths, counts, offsets = table["path"], table["clip_count"], table["clip_offset"]
    bad_status = ~np.isin(table["status"].astype(str), STATUSES)
    faults.rows("videos/status not ok|partial|failed", paths[bad_status], int(bad_status.sum()))
    for name in ("error", "warning"):
        multi = np.array(["\n" in e or "\r" in e for e in table[name]], dtype=bool)
        faults.rows(f"videos/{name} with more than one line", paths[multi], int(multi.sum()))
    if n_videos > 1:
        increasing = (paths[1:] > paths[:-1]).astype(bool)
        if not increasing.all():
            row = int(np.argmin(increasing)) + 1
            faults.add(f"videos/path not sorted and unique at row {row} ({paths[row]})")
    absolute = np.array([p.startswith("/") or not p for p in paths], dtype=bool)
    faults.rows("videos/path not relative", paths[absolute], int(absolute.sum()))
    failed_with_clips = (table["status"] == "failed") & (counts != 0)
    faults.rows("failed videos with clips", paths[failed_with_clips], int(failed_with_clips.sum()))
    ok_without = (table["status"] == "ok") & (counts <= 0)
    faults.rows("ok videos without clips", paths[ok_without], int(ok_without.sum()))
    mapping_ok = True
    if (counts < 0).any():
        faults.rows("videos/clip_count negative", paths[counts < 0], int((counts < 0).sum()))
        mapping_ok = False
    else:
        want = np.cumsum(counts) - counts
        wrong = offsets != want
        if wrong.any():
            faults.rows("videos/clip_offset not contiguous (video: found, expected)",
                        [f"{paths[i]}: {offsets[i]}, {want[i]}" for i in np.flatnonzero(wrong)[:_FAULT_EXAMPLES]],
                        int(wrong.sum()))
            mapping_ok = False
        if int(counts.sum()) != n_clips:
            faults.add(f"videos/clip_count sums to {int(counts.sum())}, but /clips has {n_clips} rows")
            mapping_ok = False

    num_frames = attrs.get("num_frames")
    block = _block_rows(emb.shape[1], n_classes)
    duration = table["duration_sec"]
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
                    (f"{r}: {paths[v]}, {e:.3f}, {d:.3f}" for r, v, e, d in
                     zip(rows[bad], video[bad], t1[bad], duration[video][bad])), int(bad.sum()))
    if version >= 2 and mapping_ok:
        _verify_means(h5, counts, paths, block, faults)


def _verify_means(h5: h5py.File, counts: np.ndarray, paths: np.ndarray, block: int, faults: _Faults) -> None:
    """/videos/embedding_mean and /videos/scores_mean against the means of the /clips rows."""
    stored = {name: h5[f"videos/{name}"] for name in _MEAN_COLUMNS}
    for v, emb_mean, scores_mean in video_means(h5["clips/embedding"], h5["clips/logits"], counts, block):
        for name, want in (("embedding_mean", emb_mean), ("scores_mean", scores_mean)):
            got = stored[name][v : v + len(want)]
            bad = ~np.isclose(got, want, rtol=MEAN_TOLERANCE, atol=MEAN_TOLERANCE, equal_nan=True).all(axis=1)
            faults.rows(f"videos/{name} differs from the mean of the video's clips", paths[v : v + len(want)][bad],
                        int(bad.sum()))
