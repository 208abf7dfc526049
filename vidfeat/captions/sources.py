"""Caption sources: reading speech captions into one ``video id -> sorted captions`` map.

Sources (:func:`read_source` tells them apart by what the path is):

* a HowTo100M ``caption.json`` / ``raw_caption.json``: ``{video_id: {"start": [...], "end":
  [...], "text": [...]}}``, seconds, parallel lists. Entries are read as they are: the
  overlapping entries of ``raw_caption.json`` stay overlapping (each keeps its own times);
* a folder of ``<video_id>.csv`` files with a ``start,end,text`` header (``howto100m_captions``,
  what MIL-NCE reads), or a single such file;
* a ``.vtt`` or ``.srt`` file, or a folder of them (subtitle sidecars, e.g. what yt-dlp writes:
  ``name.vtt``, ``name.en.vtt``, ``name.srt``). Read with webvtt-py (VTT) and pysubs2 (SRT).

Video ids (:func:`video_id`): a video's id is its file name without the last extension
(``a/b/nVbIUDjzWY4.mp4`` -> ``nVbIUDjzWY4``, ``x.en.mp4`` -> ``x.en``); the folder does not
count. A subtitle file ``name.<lang>.vtt`` (``<lang>`` a language tag: 2-3 letters, then
``-``-separated parts, e.g. ``en``, ``en-US``, ``en-orig``, ``zh-Hans``) belongs to video id
``name``; any other ``name.vtt`` to ``name``. When the video ids are known (``video_ids=`` or
:func:`sidecars`) the ambiguous case resolves by them: ``x.en.vtt`` is the plain sidecar of
``x.en.mp4`` if that video is among them, else the English sidecar of ``x.mp4``.

One file per video: where a folder holds several caption files for one id, the preferred one is
used: plain (``name.vtt``) first, then English (``en``, then ``en-*``), then the other
languages alphabetically; for one language ``.vtt`` before ``.srt`` before ``.csv``; then by
path. If it cannot be read or has no good caption, the next one is tried. Two files of the same
language and extension for one id (in different folders) are a ``duplicate`` warning.

Text: markup tags (``<c>``, ``<i>``, timestamps) are stripped from subtitles and entities
decoded (``&amp;`` -> ``&``); every text has its whitespace collapsed to single spaces, and
empty lines are dropped. JSON and CSV text is not tag-stripped (it is plain text).

Rolling captions: YouTube's auto-generated captions repeat each line in the next cue (the
rolling two-line display, with ``<c>`` word-timing tags and 10 ms "transition" cues that only
repeat; older files roll three lines). A VTT or SRT file is read as rolling when at least half
of its multi-line cues that follow another cue start with lines that end that cue. Its cues are then collapsed: the leading
lines a cue repeats from the previous cue are dropped, so each spoken line appears once, timed by
the cue where it first appears (that cue's start and end); a line spoken twice in a row is kept
twice. Other files give one caption per cue, its lines joined with spaces.

Times: a caption needs ``0 <= start <= end`` (zero-length captions are kept); captions are sorted
by start, then end, then source order.

Bad input never raises for one entry or file: each bad case is one warning line in
:attr:`Captions.warnings` and counted in :attr:`Captions.counts` by kind (:data:`WARNING_KINDS`).
A missing source path or a path that is no kind of source raises
:class:`~vidfeat.errors.VidfeatError`.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import VidfeatError, one_line

__all__ = [
    "Caption",
    "Captions",
    "WARNING_KINDS",
    "MAX_WARNINGS",
    "video_id",
    "read_source",
    "read_file",
    "sidecars",
    "has_sidecars",
    "read_sidecars",
    "as_arrays",
]

WARNING_KINDS = {
    "unreadable_file": "a caption file cannot be read or parsed",
    "bad_entry": "a video's JSON entry is not start, end and text lists of one length",
    "bad_time": "a caption time is not a number, is negative, or the caption ends before it starts",
    "empty_text": "a caption's text is empty (or not text)",
    "unknown_video": "captions for a video id that is not among the videos",
    "no_captions": "a video that ends up without captions (none usable in its entry or files, or none in the source)",
    "duplicate": "two caption files of the same kind for one video id (the first by path is used), or one id twice in a caption.json (the first is used)",
}
MAX_WARNINGS = 10_000  # warning lines kept; the counts always cover every case

_SUBTITLE_EXTS = {".vtt": 0, ".srt": 1}
_FOLDER_EXTS = {**_SUBTITLE_EXTS, ".csv": 2}  # value: preference within one language
_LANG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_SOURCE_KINDS = "a HowTo100M caption.json, a <video_id>.csv, a .vtt/.srt file, or a folder of .csv/.vtt/.srt files"


class Caption(NamedTuple):
    """One caption: player times in seconds (``0 <= start_sec <= end_sec``) and cleaned text."""

    start_sec: float
    end_sec: float
    text: str


@dataclass
class Captions:
    """Captions by video id, each list sorted by start, then end (then source order), plus what
    was wrong with the input.

    ``warnings`` holds one line per bad case (the first :data:`MAX_WARNINGS`; later ones are
    counted in ``warnings_left_out``); ``counts`` counts every case by kind (keys of
    :data:`WARNING_KINDS`).
    """

    by_video: dict[str, list[Caption]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    warnings_left_out: int = 0
    sink: Callable[[str, list[Caption]], None] | None = None
    """Where each video's captions go as they are read, instead of ``by_video`` (streaming:
    memory then holds one video's captions, not the source's)."""
    stored: set[str] = field(default_factory=set)  # ids that got captions
    stored_captions: int = 0

    def store(self, video_id: str, captions: list[Caption] | None) -> None:
        """Keep (or hand to ``sink``) the captions of one video; nothing for an empty list."""
        if not captions:
            return
        if video_id in self.stored:  # a JSON object with one key twice, read a video at a time
            self.warn("duplicate", f"video id {video_id} has captions twice in the source; the first are used")
            return
        self.stored.add(video_id)
        self.stored_captions += len(captions)
        if self.sink is not None:
            self.sink(video_id, captions)
        else:
            self.by_video[video_id] = captions

    def __getitem__(self, video_id: str) -> list[Caption]:
        return self.by_video[video_id]

    def get(self, video_id: str) -> list[Caption]:
        """The video's captions; ``[]`` for a video without any."""
        return self.by_video.get(video_id, [])

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.by_video

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_video)

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def num_captions(self) -> int:
        return self.stored_captions

    def warn(self, kind: str, message: str) -> None:
        """Record one bad case of ``kind`` (a key of :data:`WARNING_KINDS`) with its one-line message."""
        assert kind in WARNING_KINDS, kind
        self.counts[kind] += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(one_line(message))
        else:
            self.warnings_left_out += 1

    def summary(self) -> str:
        """One line: how many captions for how many videos, and the warnings by kind."""
        line = f"{self.num_captions} captions for {len(self)} videos"
        if self.counts:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
            line += f"; {sum(self.counts.values())} warnings ({kinds})"
        return line


def video_id(path: str | os.PathLike[str]) -> str:
    """The id captions are keyed by: the file name without its last extension
    (``a/b/nVbIUDjzWY4.mp4`` -> ``nVbIUDjzWY4``; ``x.en.mp4`` -> ``x.en``; ``-abc_1.mp4`` -> ``-abc_1``)."""
    return Path(path).stem


def as_arrays(captions: Sequence[Caption]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(start_sec [m] float64, end_sec [m] float64, texts)``: the arguments :func:`vidfeat.store.captions.align` takes."""
    starts = np.fromiter((c.start_sec for c in captions), dtype=np.float64, count=len(captions))
    ends = np.fromiter((c.end_sec for c in captions), dtype=np.float64, count=len(captions))
    return starts, ends, [c.text for c in captions]


# ---------------------------------------------------------------------------- sources


def read_source(
    source: str | os.PathLike[str],
    video_ids: Iterable[str] | None = None,
    skip_ids: Container[str] | Iterable[str] = (),
    sink: Callable[[str, list[Caption]], None] | None = None,
) -> Captions:
    """Read every caption of ``source`` (see the module docstring for the kinds of source).

    With ``video_ids`` (the videos the captions are for), captions of other ids are skipped with
    an ``unknown_video`` warning each (a folder's files for them are not even parsed), every
    listed video without captions gets a ``no_captions`` warning, and ambiguous subtitle names
    resolve by these ids. Captions of ``skip_ids`` (known videos that are not being captioned
    now) are skipped without a warning. With ``sink``, each video's captions go to
    ``sink(video_id, captions)`` as they are read instead of into the result's ``by_video``.

    Raises:
        VidfeatError: ``source`` does not exist, or is no kind of caption source.
    """
    path = Path(source)
    wanted = None if video_ids is None else set(video_ids)
    if not path.exists():
        raise VidfeatError(f"caption source {source} does not exist; pass {_SOURCE_KINDS}")
    if path.is_dir():
        entries = _folder_entries(path, wanted)
        if not entries:
            raise VidfeatError(f"no .csv, .vtt or .srt caption files in the folder {source}; pass {_SOURCE_KINDS}")
    else:
        ext = path.suffix.lower()
        if ext == ".json":
            entries = None
        elif ext in _FOLDER_EXTS:
            vid, lang = _subtitle_id(path.name, wanted) if ext in _SUBTITLE_EXTS else (path.stem, "")
            entries = {vid: [(_preference(lang, ext, path), path)]}
        else:
            raise VidfeatError(f"caption source {source} is not a known kind ({ext or 'no extension'}); pass {_SOURCE_KINDS}")

    out = Captions(sink=sink)
    seen: set[str] = set()  # ids present in the source (and wanted)
    skip = skip_ids if isinstance(skip_ids, Container) else set(skip_ids)

    def unread(vid: str, where: object) -> bool:
        """Whether the captions of ``vid`` are left unread (an unknown id is warned about)."""
        if wanted is None or vid in wanted:
            return wanted is None and vid in skip
        if vid not in skip:
            out.warn("unknown_video", f"{where}: video id {vid} is not among the videos; its captions are skipped")
        return True

    if entries is None:
        _read_howto_json(path, unread, out, seen)
    else:
        for vid in sorted(entries):
            if unread(vid, entries[vid][0][1]):
                continue
            seen.add(vid)
            out.store(vid, _first_readable(entries[vid], out))
    for vid in sorted(seen - out.stored):
        out.warn("no_captions", f"{source}: video {vid} has no usable captions")
    if wanted is not None:
        for vid in sorted(wanted - seen):
            out.warn("no_captions", f"{source}: no captions for video {vid}")
    return out


def read_file(path: str | os.PathLike[str], out: Captions) -> list[Caption] | None:
    """The captions of one ``.vtt``, ``.srt`` or ``.csv`` file, sorted (``[]`` for a file with no
    good caption); ``None`` if it cannot be read. Every bad case is warned in ``out``."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".csv":
        caps = _read_csv(path, out)
    elif ext in _SUBTITLE_EXTS:
        cues = _read_vtt(path, out) if ext == ".vtt" else _read_srt(path, out)
        caps = None if cues is None else _cues_to_captions(cues, str(path), out)
    else:
        raise VidfeatError(f"{path} is not a .vtt, .srt or .csv caption file")
    return caps


def sidecars(video_path: str | os.PathLike[str]) -> list[Path]:
    """The subtitle files beside a video, most preferred first: ``name.vtt``, ``name.srt``, then
    ``name.en.vtt``, ``name.en.srt``, ``name.en-*.vtt``..., then other ``name.<lang>.vtt/.srt``
    by language; ``name`` is the video's file name without its extension. ``[]`` if none."""
    video_path = Path(video_path)
    return [p for _, p in sorted(_subtitles_by_name(video_path.parent).get(video_path.stem, []))]


def has_sidecars(video_paths: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether any of the videos has a subtitle file beside it (:func:`sidecars`); each folder
    is listed once."""
    listings: dict[Path, dict[str, list[tuple[tuple, Path]]]] = {}
    for video in video_paths:
        video = Path(video)
        if video.parent not in listings:
            listings[video.parent] = _subtitles_by_name(video.parent)
        if listings[video.parent].get(video.stem):
            return True
    return False


def read_sidecars(videos: Mapping[str, str | os.PathLike[str]] | Iterable[str | os.PathLike[str]],
                  sink: Callable[[str, list[Caption]], None] | None = None) -> Captions:  # fmt: skip
    """The captions of each video from its preferred readable sidecar (:func:`sidecars`).

    ``videos`` maps the key to store the captions under (e.g. the video's name in the output) to
    its path, or is a list of paths keyed by :func:`video_id` (two videos with one id: the first
    is used, the other warned as ``duplicate``). A video without a readable sidecar gets a
    ``no_captions`` warning. Each folder is listed once, however many videos it holds.
    ``sink``: as :func:`read_source`'s.
    """
    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    if isinstance(videos, Mapping):
        items = [(str(key), Path(p)) for key, p in videos.items()]
    else:
        items = [(video_id(p), Path(p)) for p in videos]
    out = Captions(sink=sink)
    listings: dict[Path, dict[str, list[tuple[tuple, Path]]]] = {}
    seen: dict[str, Path] = {}
    for key, path in items:
        if key in seen:
            out.warn("duplicate", f"{path}: video id {key} is also {seen[key]}; only the first one's captions are used")
            continue
        seen[key] = path
        if path.parent not in listings:
            listings[path.parent] = _subtitles_by_name(path.parent)
        files = sorted(listings[path.parent].get(path.stem, []))
        caps = _first_readable(files, out)
        if caps:
            out.store(key, caps)
        else:
            tried = f" (tried {', '.join(f.name for _, f in files)})" if files else ""
            out.warn("no_captions", f"{path}: no sidecar with captions beside it{tried}")
    return out


# ---------------------------------------------------------------------------- naming


def _subtitle_id(filename: str, wanted: set[str] | None = None) -> tuple[str, str]:
    """``(video id, language)`` of a subtitle file name (language ``""``: plain); a name that is
    itself one of the ``wanted`` ids is that video's plain sidecar."""
    stem = filename[: -len(Path(filename).suffix)] if Path(filename).suffix else filename
    name, dot, lang = stem.rpartition(".")
    if dot and name and _LANG.fullmatch(lang) and not (wanted is not None and stem in wanted):
        return name, lang
    return stem, ""


def _preference(lang: str, ext: str, path: Path) -> tuple:
    lower = lang.lower()
    rank = 0 if not lang else 1 if lower == "en" or lower.startswith("en-") else 2
    return (rank, lower, _FOLDER_EXTS[ext], str(path))


def _subtitles_by_name(folder: Path) -> dict[str, list[tuple[tuple, Path]]]:
    """Subtitle files in ``folder`` by every video name they can belong to (``x.en.vtt`` under
    ``x.en`` as plain and under ``x`` as English), each with its preference key."""
    index: dict[str, list[tuple[tuple, Path]]] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return index
    for filename in names:
        ext = os.path.splitext(filename)[1].lower()
        if ext not in _SUBTITLE_EXTS:
            continue
        path = folder / filename
        stem = filename[: -len(ext)]
        index.setdefault(stem, []).append((_preference("", ext, path), path))
        name, dot, lang = stem.rpartition(".")
        if dot and name and _LANG.fullmatch(lang):
            index.setdefault(name, []).append((_preference(lang, ext, path), path))
    return index


def _folder_entries(folder: Path, wanted: set[str] | None) -> dict[str, list[tuple[tuple, Path]]]:
    """Caption files under ``folder`` (recursively) by video id, most preferred first."""
    found: dict[str, list[tuple[tuple, Path]]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in filenames:
            ext = os.path.splitext(filename)[1].lower()
            if ext not in _FOLDER_EXTS:
                continue
            path = Path(dirpath) / filename
            vid, lang = _subtitle_id(filename, wanted) if ext in _SUBTITLE_EXTS else (filename[: -len(ext)], "")
            found.setdefault(vid, []).append((_preference(lang, ext, path), path))
    return {vid: sorted(files) for vid, files in found.items()}


def _first_readable(files: list[tuple[tuple, Path]], out: Captions) -> list[Caption] | None:
    """The captions of the first file, in preference order, that has any. Two files of the same
    language and extension (in different folders) are a duplicate: the first by path is used."""
    if len(files) > 1 and files[0][0][:3] == files[1][0][:3]:
        out.warn("duplicate", f"{files[1][1]}: same kind of caption file as {files[0][1]} for one video; the first is used")
    for _, path in files:
        caps = read_file(path, out)
        if caps:
            return caps
    return None


# ---------------------------------------------------------------------------- checks


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _checked(start: object, end: object, text: str, where: str, out: Captions) -> Caption | None:
    """A caption if its times and text are good; else ``None`` and a warning."""
    s, e = _number(start), _number(end)
    if s is None or e is None or not (math.isfinite(s) and math.isfinite(e)):
        out.warn("bad_time", f"{where}: times {start!r} to {end!r} are not numbers of seconds; caption skipped")
        return None
    if s < 0 or e < 0:
        out.warn("bad_time", f"{where}: negative time ({s:g} to {e:g} s); caption skipped")
        return None
    if e < s:
        out.warn("bad_time", f"{where}: ends before it starts ({s:g} to {e:g} s); caption skipped")
        return None
    if not text:
        out.warn("empty_text", f"{where}: empty text ({s:g} to {e:g} s); caption skipped")
        return None
    return Caption(s, e, text)


def _sorted(caps: Iterable[Caption]) -> list[Caption]:
    return sorted(caps, key=lambda c: (c.start_sec, c.end_sec))


def _collapse(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------- HowTo100M JSON


def _read_howto_json(path: Path, unread: Callable[[str, object], bool], out: Captions, seen: set[str]) -> None:
    """The videos of a ``{video_id: {start, end, text}}`` file, in file order. With ijson (the
    ``captions`` extra) the file is read a video at a time (HowTo100M's is GBs); else whole."""
    done = 0
    try:
        with open(path, "rb") as f:
            if f.read(64).lstrip()[:1] != b"{":
                out.warn("unreadable_file", f"{path}: not a {{video_id: {{start, end, text}}}} object; skipped")
                return
            f.seek(0)
            for vid, entry in _json_items(f):
                done += 1
                if unread(vid, path):
                    continue
                seen.add(vid)
                out.store(vid, _json_video(entry, f"{path}: video {vid}", out))
    except (OSError, ValueError) as exc:  # ValueError: JSON errors (ijson's too), UnicodeDecodeError
        after = f" after {done} videos (the rest skipped)" if done else ""
        out.warn("unreadable_file", f"{path}: cannot read it as JSON{after} ({exc}); skipped")


def _json_items(f) -> Iterator[tuple[str, object]]:
    """(key, value) of the top-level object of the open binary file ``f``, in file order."""
    try:
        import ijson
    except ImportError:
        yield from json.load(f).items()
        return
    try:
        yield from ijson.kvitems(f, "", use_float=True)
    except ijson.JSONError as exc:  # its message spans lines: the first says what
        raise ValueError(str(exc).strip().splitlines()[0]) from exc


def _json_video(entry: object, where: str, out: Captions) -> list[Caption] | None:
    columns = [entry.get(key) if isinstance(entry, dict) else None for key in ("start", "end", "text")]
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:
        shape = {k: (len(c) if isinstance(c, list) else type(c).__name__) for k, c in zip(("start", "end", "text"), columns)}
        out.warn("bad_entry", f"{where}: expected start, end and text lists of one length, got {shape}; video skipped")
        return None
    caps = []
    for i, (start, end, text) in enumerate(zip(*columns)):
        cap = _checked(start, end, _collapse(text) if isinstance(text, str) else "", f"{where} caption {i}", out)
        if cap is not None:
            caps.append(cap)
    return _sorted(caps)


# ---------------------------------------------------------------------------- CSV


def _read_csv(path: Path, out: Captions) -> list[Caption] | None:
    caps = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"start", "end", "text"} <= set(reader.fieldnames or ()):
                out.warn("unreadable_file", f"{path}: no start,end,text header (found {reader.fieldnames}); skipped")
                return None
            for row in reader:
                where = f"{path}: line {reader.line_num}"
                start, end = _csv_number(row["start"]), _csv_number(row["end"])
                cap = _checked(start, end, _collapse(row["text"] or ""), where, out)
                if cap is not None:
                    caps.append(cap)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        out.warn("unreadable_file", f"{path}: cannot read it as CSV ({exc}); skipped")
        return None
    return _sorted(caps)


def _csv_number(value: str | None) -> float | str | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


# ---------------------------------------------------------------------------- subtitles

# A cue: (start_sec, end_sec, cleaned non-empty lines)
_Cue = tuple[float, float, list[str]]


def _clean_lines(text: str) -> list[str]:
    """Tag-free cue text to cleaned lines: entities decoded, whitespace collapsed, empty lines dropped."""
    lines = (_collapse(html.unescape(line)) for line in text.splitlines())
    return [line for line in lines if line]


def _import(module: str):
    """A subtitle library; missing, it is a bad setup, not a bad file: raise with the fix."""
    try:
        return __import__(module)
    except ImportError:
        raise VidfeatError(f"reading .vtt/.srt captions needs {module}: pip install 'vidfeat[captions]'") from None


def _read_vtt(path: Path, out: Captions) -> list[_Cue] | None:
    webvtt = _import("webvtt")
    try:
        cues = webvtt.read(str(path))
    except (OSError, ValueError, webvtt.errors.MalformedFileError, webvtt.errors.MalformedCaptionError) as exc:
        out.warn("unreadable_file", f"{path}: cannot read it as WebVTT ({exc}); skipped")
        return None

    def seconds(ts) -> float:
        h, m, s, ms = ts.to_tuple()
        return (((h * 60 + m) * 60 + s) * 1000 + ms) / 1000  # whole ms / 1000: the nearest float to the text

    if not len(cues) and "-->" in path.read_text(encoding="utf-8", errors="replace"):
        # webvtt-py skips malformed cue blocks: timings without a single cue is not WebVTT
        out.warn("unreadable_file", f"{path}: no well-formed WebVTT cue in it; skipped")
        return None
    # caption.text has the cue tags (<c>, <00:00:01.234>, <v ...>) stripped
    return [(seconds(c.start_time), seconds(c.end_time), _clean_lines(c.text)) for c in cues]


def _read_srt(path: Path, out: Captions) -> list[_Cue] | None:
    pysubs2 = _import("pysubs2")
    try:
        subs = pysubs2.load(str(path), encoding="utf-8", format_="srt")
    except (OSError, ValueError, pysubs2.Pysubs2Error) as exc:
        out.warn("unreadable_file", f"{path}: cannot read it as SRT ({exc}); skipped")
        return None
    cues = [(e.start / 1000, e.end / 1000, _clean_lines(e.plaintext)) for e in subs if not e.is_comment]
    if not cues and path.stat().st_size > 0 and path.read_bytes().strip():
        # pysubs2 skips what it cannot parse: text without a single cue is not SRT
        out.warn("unreadable_file", f"{path}: no SRT cues in it; skipped")
        return None
    # plaintext: SRT's <i>/<b>/<font> tags stripped, line breaks as "\n"
    return cues


def _repeated(prev: list[str], lines: list[str]) -> int:
    """How many leading ``lines`` repeat the end of ``prev``: the largest k with lines[:k] == prev[-k:]."""
    return next((k for k in range(min(len(prev), len(lines)), 0, -1) if lines[:k] == prev[-k:]), 0)


def _is_rolling(cues: Sequence[_Cue]) -> bool:
    """YouTube-style rolling captions: at least half the multi-line cues that follow another cue
    start with lines that end that cue (single-line cues say nothing: a repeated one-line cue is
    also how hand-made subtitles show a word said twice)."""
    multi = rolls = 0
    for (_, _, prev), (_, _, lines) in zip(cues, cues[1:]):
        if prev and len(lines) > 1:
            multi += 1
            rolls += _repeated(prev, lines) > 0
    return rolls > 0 and 2 * rolls >= multi


def _cues_to_captions(cues: list[_Cue], label: str, out: Captions) -> list[Caption]:
    caps = []
    if _is_rolling(cues):
        # Each cue shows the lines already on screen, then the newly spoken ones: drop the longest
        # run of leading lines that ends the previous cue. A cue that only repeats (the 10 ms
        # transition cues) adds nothing.
        prev: list[str] = []
        for i, (start, end, lines) in enumerate(cues):
            for line in lines[_repeated(prev, lines) :]:
                cap = _checked(start, end, line, f"{label}: cue {i + 1}", out)
                if cap is not None:
                    caps.append(cap)
            prev = lines
    else:
        for i, (start, end, lines) in enumerate(cues):
            cap = _checked(start, end, " ".join(lines), f"{label}: cue {i + 1}", out)
            if cap is not None:
                caps.append(cap)
    return _sorted(caps)

