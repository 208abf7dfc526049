"""Adding captions to a finished feature file, without re-extracting it.

:func:`add_captions` reads a source (HowTo100M's ``caption.json``, a folder of ``<id>.csv``, a
subtitle file or a folder of them: :func:`~vidfeat.captions.sources.read_source`), or, without
a source, the subtitle sidecars beside each video under the file's ``root``
(:func:`~vidfeat.captions.sources.read_sidecars`), and writes them into the file
(:func:`vidfeat.store.amend.set_captions`: crash-safe, it replaces any captions the file had).
Every clip then holds the text of the captions said during it (the rule is
:func:`vidfeat.store.captions.align`).

Captions are matched to videos by video id, the file name without its extension
(``a/nVbIUDjzWY4.mp4`` -> ``nVbIUDjzWY4``), except sidecars, which belong to the video beside
them. An id that names two videos of the file matches neither (one warning). Caption times are
the player's clock: a video whose first frame is not at 0 on that clock (``first_frame_sec``,
recorded by extraction; for older files read from the video under ``root`` when it is there,
else taken as 0 with a warning) has its clips aligned by it.

Bad caption input is never fatal: each case is one warning line and a count in the report.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import VideoError, VidfeatError
from ..store import open_features, segments
from ..store.amend import amending
from ..store.captions import CaptionTable, clips_with_text
from ..store.format import read_video_column
from .sources import Caption, Captions, as_arrays, read_sidecars, read_source, video_id

__all__ = ["AttachReport", "add_captions", "add_whole_video_captions"]


@dataclass
class AttachReport:
    """What :func:`add_captions` did: counts, and one line per bad case (``warnings``)."""

    output: Path
    source: str
    videos: int = 0  # videos in the file (with new_only: those its last growth added)
    new_only: bool = False  # only the videos of the file's last growth got captions
    captioned_videos: int = 0  # videos that got at least one caption
    captions: int = 0  # captions written
    clips_with_text: int = 0
    warnings: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # bad cases by kind
    warnings_left_out: int = 0


def add_captions(
    output: str | os.PathLike[str], source: str | os.PathLike[str] | None = None, *, last_growth: bool = False
) -> AttachReport:
    """Write the captions of ``source`` (None: the sidecars beside the videos) into ``output``;
    see the module docstring.

    ``last_growth``: ``output`` is a grown file with captions (:mod:`vidfeat.store.segments`);
    give the videos its last growth added their captions, rewriting only their segment, and
    leave every other video's captions as they are (``vidfeat extract --captions`` on a run that
    grew the file). The source is read for those videos only."""
    output = Path(output)
    with amending(output) as work:  # the output's lock, from reading the file to its rewrite
        with open_features(output) as f:  # the columns it needs, not the whole /videos table
            paths = read_video_column(f.h5, "path")
            first_frame = read_video_column(f.h5, "first_frame_sec").astype(np.float64)
            root = f.attrs.get("root") or ""
            rows = segments.last_rows(f.h5) if last_growth else slice(0, len(paths))
        report = AttachReport(output=output, source=_describe(source, root), videos=rows.stop - rows.start,
                              new_only=last_growth)  # fmt: skip
        wanted, known = _wanted(paths, source, rows, report)
        captioned: list[int] = []
        spool = work.spool(rows.stop - rows.start)

        def keep(key: str, found: list[Caption]) -> None:  # a video's captions, as the source gives them
            row = wanted.get(key)  # None: an id that names two videos
            if row is None:
                return
            spool.add(row - rows.start, *as_arrays(found))
            captioned.append(row)

        caps = _read(source, root, report, wanted, known, keep)
        _fill_first_frames(first_frame, sorted(captioned), paths, root, report)
        report.counts.update(caps.counts)
        captions = spool.finish()
        if last_growth:
            work.set_last_captions(captions, first_frame_sec=first_frame[rows], source=report.source,
                                   warnings=report.counts)  # fmt: skip
        else:
            work.set_captions(captions, first_frame_sec=first_frame, source=report.source, warnings=report.counts)
    report.clips_with_text = _clips_with_text(output, rows)
    report.captioned_videos, report.captions = len(captioned), len(captions)
    report.warnings = caps.warnings + report.warnings
    report.warnings_left_out += caps.warnings_left_out
    return report


def add_whole_video_captions(output: str | os.PathLike[str], texts: dict[str, str],
                             source: str = "the .txt members of the tar shards", *,
                             last_growth: bool = False) -> AttachReport:  # fmt: skip
    """Write ``texts`` (video name -> caption text: a webdataset sample's ``.txt``) into
    ``output`` as one caption per video spanning the whole video, from its first frame to its
    measured end; videos without a known duration (failed ones) and empty texts get none. It
    replaces any captions the file had (with ``last_growth``, as :func:`add_captions`: those of
    the videos the file's last growth added). ``source`` is recorded as ``captions_source``."""
    output = Path(output)
    with amending(output) as work:  # the output's lock, from reading the file to its rewrite
        with open_features(output) as f:
            paths = read_video_column(f.h5, "path")
            first_frame = read_video_column(f.h5, "first_frame_sec").astype(np.float64)
            duration = read_video_column(f.h5, "duration_sec").astype(np.float64)
            rows = segments.last_rows(f.h5) if last_growth else slice(0, len(paths))
        report = AttachReport(output=output, source=source, videos=rows.stop - rows.start, new_only=last_growth)
        by_row: dict[int, list[tuple[float, float, str]]] = {}
        for row in range(rows.start, rows.stop):
            text = " ".join((texts.get(paths[row]) or "").split())
            if text and math.isfinite(duration[row]):
                start = float(first_frame[row]) if math.isfinite(first_frame[row]) else 0.0
                by_row[row - rows.start] = [(start, start + float(duration[row]), text)]
        table = CaptionTable.build(by_row)
        if last_growth:
            work.set_last_captions(table, first_frame_sec=first_frame[rows], source=source)
        else:
            work.set_captions(table, first_frame_sec=first_frame, source=source)
    report.clips_with_text = _clips_with_text(output, rows)
    report.captioned_videos, report.captions = len(by_row), len(table)
    return report


def _clips_with_text(output: Path, rows: slice) -> int:
    """How many clips of the videos ``rows`` have text (their clips are contiguous)."""
    with open_features(output) as f:
        offsets = f.h5["videos/clip_offset"]
        first = int(offsets[rows.start]) if rows.start < offsets.shape[0] else f.h5["clips/text"].shape[0]
        return clips_with_text(f.h5, first)


def _describe(source: str | os.PathLike[str] | None, root: str) -> str:
    """The ``captions_source`` attribute: the source as given (a local path, made absolute), or
    where the sidecars were looked for."""
    if source is None:
        return f"sidecars under {root}" if root else "sidecars"
    return os.path.abspath(source)


def _wanted(paths: np.ndarray, source, rows: slice, report: AttachReport) -> tuple[dict[str, int], _Ids]:
    """(caption key -> row of the file, for the videos of ``rows``; the keys of every video of
    the file, so that the source's captions of the others are skipped without a warning). Keys
    are video ids; for sidecars (no ``source``), the videos' names. An id that names two videos
    of the file is left out with one warning."""
    if source is None:
        return {str(p): rows.start + i for i, p in enumerate(paths[rows])}, _Ids(np.empty(0, dtype=object))
    ids = _Ids(np.array([video_id(p) for p in paths], dtype=object))
    wanted: dict[str, int] = {}
    for row in range(rows.start, rows.stop):
        vid = ids.of[row]
        found = ids.rows(vid)
        if len(found) == 1:
            wanted[vid] = row
        elif row == next(r for r in found if r >= rows.start):  # one warning an id
            report.counts["ambiguous_id"] += 1
            report.warnings.append(f"video id {vid} names {len(found)} videos ({paths[found[0]]}, {paths[found[1]]}"
                                   f"{', ...' if len(found) > 2 else ''}): their captions are left out")  # fmt: skip
    return wanted, ids


class _Ids:
    """The video ids of a file's rows (``of[row]``), sorted once: ``id in ids`` and the rows of
    an id by binary search, in about 80 bytes a video (a dict of lists took three times that)."""

    def __init__(self, of: np.ndarray) -> None:
        self.of = of
        self._order = np.argsort(of, kind="stable")
        self._sorted = of[self._order]

    def rows(self, vid: str) -> list[int]:
        lo = int(np.searchsorted(self._sorted, vid, side="left"))
        hi = int(np.searchsorted(self._sorted, vid, side="right"))
        return sorted(self._order[lo:hi].tolist())

    def __contains__(self, vid: object) -> bool:
        i = int(np.searchsorted(self._sorted, vid))
        return i < len(self._sorted) and self._sorted[i] == vid


def _read(source, root: str, report: AttachReport, wanted: dict[str, int], known: _Ids, sink) -> Captions:
    """Read the captions of the ``wanted`` videos from ``source`` (None: their sidecars under
    ``root``), handing each video's to ``sink(key, captions)`` as it is read; ids ``known`` to
    the file and not wanted are skipped without a warning."""
    if source is None:
        if not root or not Path(root).is_dir():
            raise VidfeatError(
                f"{report.output} records no readable videos folder (root {root!r}), so no sidecars can be "
                "found: give the captions source (caption.json, a folder of <id>.csv, .vtt or .srt files)"
            )
        return read_sidecars({p: Path(root) / p for p in wanted}, sink=sink)
    if not Path(source).exists():
        raise VidfeatError(f"{source} does not exist: give a caption.json, a folder of <id>.csv, .vtt or .srt files")
    return read_source(source, video_ids=wanted, skip_ids=known, sink=sink)


def _fill_first_frames(first_frame: np.ndarray, rows: list[int], paths: np.ndarray, root: str,
                       report: AttachReport) -> None:  # fmt: skip
    """Where a captioned video's first-frame time is unknown (files made before it was
    recorded), read it from the video under ``root``; else take 0 with a warning."""
    unknown = [r for r in rows if not math.isfinite(first_frame[r])]
    if not unknown:
        return
    from ..video.reader import probe  # PyAV: only for files made before first_frame_sec was recorded

    for r in unknown:
        try:
            found = probe(Path(root) / paths[r]).first_frame_sec if root else None
        except VideoError:
            found = None
        if found is None:
            report.counts["first_frame_unknown"] += 1
            report.warnings.append(f"{paths[r]}: the time of its first frame is unknown (the video is not at "
                                   f"{Path(root) / paths[r] if root else 'its root'}): captions aligned as if it is 0")  # fmt: skip
            found = 0.0
        first_frame[r] = found
