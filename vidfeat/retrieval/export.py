"""Exports of a vidfeat file for tools that read neither HDF5 nor vidfeat.

Formats (every one streams: one block of rows in memory at a time, never the ``[N, D]`` matrix):

``npy-parquet``
    The clip-retrieval / embedding-reader layout, read by embedding-reader as ``parquet_npy``::

        out/clip_emb/clip_emb_{N}.npy         [n, D] float16 or float32 (plain .npy)
        out/metadata/metadata_{N}.parquet     n rows aligned with the .npy rows

    ``N`` zero-padded to the same width, ``shard_rows`` rows a shard.
``npy``
    One matrix ``out/embeddings.npy`` ``[N, D]`` and ``out/metadata.parquet`` (or ``.csv``).
``parquet``
    One ``out/clips.parquet`` with the metadata columns plus ``embedding`` (a list column).
``per-video``
    The HowTo100M / UniVL layout: one ``out/features/<video_id><suffix>`` ``[n, D]`` per video (row
    ``i`` is the video's clip ``i``, in time order) and ``out/videos.csv`` (``video_id``, ``path``,
    ``feature_file``, ``num_clips``, ``duration_sec``, ``rate``: rows per second, ``1 / stride_sec``).
``sharded``
    fairseq MMPT (VideoCLIP)'s ``ShardedTensor``: per shard ``k`` of ``shard_videos`` videos,
    ``out/<prefix>_<k>_data.npy`` (their clips, concatenated in video order) and
    ``out/<prefix>_<k>_starts.npy`` (``V + 1`` int64 offsets: video ``i``'s rows are
    ``starts[i]:starts[i + 1]``); ``out/<prefix>_meta.pkl`` is MMPT's ``{k: [video_id, ...]}``
    (a pickled dict), and ``out/videos.csv`` the same mapping as text (``shard``, ``index``).
``captions``
    HowTo100M's caption files from the file's speech captions (/captions, format version 3):
    ``out/caption.json`` ``{video_id: {"start": [...], "end": [...], "text": [...]}}`` (seconds on
    the player's clock, start sorted) and the same dict as ``out/caption.pickle`` (UniVL reads it).
    Only videos with captions appear, in /videos order. Both files are written one video at a time
    (the pickle as a stream of dict items), so memory holds one video's captions.

Metadata columns of the first three (one row a clip, in /clips order): ``row`` (the /clips row),
``video`` (path), ``clip_index`` (within the video), ``start_sec``, ``end_sec``, ``top_class``,
``score`` (its softmax probability), and ``text`` when the file has per-clip captions
(``/clips/text``). The per-video and sharded layouts leave out videos without clips (failed).
Video ids (per-video, sharded, captions) follow :func:`video_id`.

Every export also writes ``manifest.json`` (the source file's path, size and sha256, its format
version, model, settings, what was written and how to read it) and a short ``README.md``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from ..version import __version__
from ..errors import VidfeatError
from ..store.format import SEGMENT_ATTRS
from ..store.means import softmax
from ..store.segments import segments_path

__all__ = [
    "export",
    "video_id",
    "source_digest",
    "FORMATS",
    "ID_RULES",
    "DEFAULT_SHARD_ROWS",
    "DEFAULT_SHARD_VIDEOS",
    "MANIFEST",
]

FORMATS = ("npy-parquet", "npy", "parquet", "per-video", "sharded", "captions")
ID_RULES = ("stem", "path")
DEFAULT_SHARD_ROWS = 100_000
DEFAULT_SHARD_VIDEOS = 4096  # MMPT's shard_feature.py default
_BLOCK_ROWS = 16384  # rows read per step
_HASH_BLOCK = 256 * 1024  # bytes read per step while hashing the source
EMB_DIR, META_DIR = "clip_emb", "metadata"
FEATURES_DIR = "features"
MANIFEST = "manifest.json"
TEXT = "clips/text"
CAPTIONS = ("captions/video", "captions/start_sec", "captions/end_sec", "captions/text")
CAPTION_JSON, CAPTION_PICKLE = "caption.json", "caption.pickle"

Format = Literal["npy-parquet", "npy", "parquet", "per-video", "sharded", "captions"]

# How to read each layout, from inside the export folder; copied into manifest.json and README.md
# (``PREFIX`` is replaced by the shard prefix).
RECIPES = {
    "npy-parquet": """\
from embedding_reader import EmbeddingReader
reader = EmbeddingReader(embeddings_folder="clip_emb", metadata_folder="metadata",
                         file_format="parquet_npy", meta_columns=["video", "start_sec", "end_sec"])
for embeddings, meta in reader(batch_size=10**5): ...""",
    "npy": """\
emb = np.load("embeddings.npy", mmap_mode="r")   # [N, D]; row r = /clips row r
meta = pandas.read_parquet("metadata.parquet")    # or pandas.read_csv("metadata.csv"); row r = emb[r]""",
    "parquet": """\
table = pyarrow.parquet.read_table("clips.parquet")  # one row a clip; embedding is a list column""",
    "per-video": """\
videos = pandas.read_csv("videos.csv", dtype={"video_id": str})
feats = np.load(videos.feature_file[0])                # [num_clips, D]; row i = clip i of the video
row = min(int(t * videos.rate[0]), len(feats) - 1)     # the clip that holds second t""",
    "sharded": """\
meta = pickle.load(open("PREFIX_meta.pkl", "rb"))        # {shard k: [video_id, ...]}
starts = np.load(f"PREFIX_{k}_starts.npy")               # V + 1 row offsets, int64
data = np.load(f"PREFIX_{k}_data.npy", mmap_mode="r")
feats = data[starts[i]:starts[i + 1]]                     # video meta[k][i]: [num_clips, D]""",
    "captions": """\
captions = json.load(open("caption.json", encoding="utf-8"))  # or pickle.load(open("caption.pickle", "rb"))
c = captions[video_id]                # {"start": [...], "end": [...], "text": [...]}, start sorted""",
}


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise VidfeatError("parquet output needs pyarrow: pip install 'vidfeat[export]'") from None
    return pa, pq


def _metadata(f, start: int, stop: int) -> dict[str, np.ndarray]:
    """The metadata columns of rows ``[start, stop)`` (``text`` when the file has captions)."""
    h5 = f.h5
    video = h5["clips/video"][start:stop]
    p = softmax(h5["clips/logits"][start:stop])
    best = p.argmax(axis=1)
    classes = np.asarray(f.classes, dtype=object)
    # the block's videos are a contiguous range of /videos: read only that range
    first, last = (int(video.min()), int(video.max()) + 1) if len(video) else (0, 0)
    paths = np.asarray(h5["videos/path"].asstr()[first:last], dtype=object)
    offsets = h5["videos/clip_offset"][first:last]
    columns = {
        "row": np.arange(start, stop, dtype=np.int64),
        "video": paths[video - first],
        "clip_index": (np.arange(start, stop) - offsets[video - first]).astype(np.int64),
        "start_sec": h5["clips/start_sec"][start:stop],
        "end_sec": h5["clips/end_sec"][start:stop],
        "top_class": classes[best],
        "score": p[np.arange(len(best)), best].astype(np.float32),
    }
    if TEXT in h5:
        columns["text"] = np.asarray(h5[TEXT].asstr()[start:stop], dtype=object).reshape(-1)
    return columns


def _videos_with_and_without_clips(f) -> tuple[int, int]:
    """Counts of the videos with clips and without, read a block at a time."""
    counts, with_clips = f.h5["videos/clip_count"], 0
    for a, b in _blocks(0, counts.shape[0]):
        with_clips += int(np.count_nonzero(counts[a:b]))
    return with_clips, counts.shape[0] - with_clips


def _blocks(start: int, stop: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, _BLOCK_ROWS):
        yield a, min(stop, a + _BLOCK_ROWS)


def _write_npy(path: Path, f, start: int, stop: int, dtype: np.dtype) -> None:
    """Rows ``[start, stop)`` of /clips/embedding as one .npy: the header, then block by block."""
    emb = f.embeddings
    dtype = np.dtype(dtype).newbyteorder("<")
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (stop - start, int(emb.shape[1]))}  # fmt: skip
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for a, b in _blocks(start, stop):
            fh.write(np.ascontiguousarray(emb[a:b], dtype=dtype).data)


def _table(pa, columns: dict[str, np.ndarray]):
    return pa.table({name: pa.array(list(col) if col.dtype == object else col) for name, col in columns.items()})


def _write_metadata_parquet(path: Path, f, start: int, stop: int, embedding: bool = False) -> None:
    pa, pq = _pyarrow()
    writer = None
    try:
        for a, b in _blocks(start, stop):
            table = _table(pa, _metadata(f, a, b))
            if embedding:
                emb = f.embeddings[a:b].astype(np.float32)
                values = pa.array(emb.reshape(-1))
                table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, emb.shape[1]))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        if writer is None:  # no rows: an empty table with the schema
            table = _table(pa, _metadata(f, start, start))
            pq.write_table(table, path)
    finally:
        if writer is not None:
            writer.close()


def _write_metadata_csv(path: Path, f) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        names = None
        for a, b in _blocks(0, len(f)):
            cols = _metadata(f, a, b)
            if names is None:
                names = list(cols)
                out.writerow(names)
            out.writerows(zip(*(cols[n].tolist() for n in names)))
        if names is None:
            out.writerow(list(_metadata(f, 0, 0)))


# --- video ids (per-video and sharded) ------------------------------------------------------------


def video_id(path: str, rule: str = "stem") -> str:
    """The id a video's features are named by: its file name without the extension (``stem``,
    ``a/nVbIUDjzWY4.mp4`` -> ``nVbIUDjzWY4``, the YouTube id of HowTo100M's files), or its
    relative path without the extension (``path``, ``a/nVbIUDjzWY4``)."""
    p = PurePosixPath(path)
    if rule == "stem":
        return p.stem
    if rule == "path":
        return str(p.with_name(p.stem)) if p.name else str(p)
    raise VidfeatError(f"unknown video id rule {rule!r}: choose one of {', '.join(ID_RULES)}")


@dataclass
class _Videos:
    """The videos an export writes (those with clips), their ids, and how many were left out."""

    rows: list[int] = field(default_factory=list)  # /videos rows
    ids: list[str] = field(default_factory=list)
    skipped: int = 0


def _videos_with_ids(f, rule: str, rows: list[int] | None = None) -> _Videos:
    """Every video with clips (or the /videos ``rows`` given) and its id; refuses two videos
    with one id, and ids that would name a file outside the export folder."""
    table = f.videos
    chosen = _Videos()
    owner: dict[str, str] = {}
    for v in range(len(table)) if rows is None else rows:
        if rows is None and int(table.clip_count[v]) == 0:
            chosen.skipped += 1
            continue
        path = str(table.path[v])
        vid = video_id(path, rule)
        parts = PurePosixPath(vid).parts
        if not vid or vid.startswith("/") or any(part in (".", "..") for part in parts):
            raise VidfeatError(f"video {path!r} gives the id {vid!r}, which does not name a file inside the "
                               "export folder: rename the video or export another format")  # fmt: skip
        if vid in owner:
            hint = ("export with --id path (ids='path') to name the files by their relative paths" if rule == "stem"
                    else "rename one of them")  # fmt: skip
            raise VidfeatError(f"videos {owner[vid]!r} and {path!r} both have the id {vid!r}: {hint}")
        owner[vid] = path
        chosen.rows.append(v)
        chosen.ids.append(vid)
    return chosen


def _rate(f) -> float:
    """Feature rows per second of video: one clip every ``stride_sec``."""
    stride = f.attrs.get("stride_sec")
    if not isinstance(stride, (int, float)) or not stride > 0:
        raise VidfeatError(f"{f.path} has no positive stride_sec attribute ({stride!r}): it is not a finished "
                           "vidfeat file; re-extract it")  # fmt: skip
    return 1.0 / float(stride)


def _export_per_video(f, out: Path, dtype: np.dtype, rule: str, suffix: str) -> tuple[list[Path], int, _Videos]:
    chosen = _videos_with_ids(f, rule)
    rate = _rate(f)
    table = f.videos
    written: list[Path] = []
    rows = 0
    (out / FEATURES_DIR).mkdir(exist_ok=True)
    with open(out / "videos.csv", "w", newline="", encoding="utf-8") as fh:
        listing = csv.writer(fh)
        listing.writerow(["video_id", "path", "feature_file", "num_clips", "duration_sec", "rate"])
        for v, vid in zip(chosen.rows, chosen.ids):
            name = f"{FEATURES_DIR}/{vid}{suffix}"
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            first, count = int(table.clip_offset[v]), int(table.clip_count[v])
            _write_npy(target, f, first, first + count, dtype)
            listing.writerow([vid, str(table.path[v]), name, count, repr(float(table.duration_sec[v])), repr(rate)])
            written.append(target)
            rows += count
    written.append(out / "videos.csv")
    return written, rows, chosen


def _export_sharded(f, out: Path, dtype: np.dtype, rule: str, shard_videos: int,
                    prefix: str) -> tuple[list[Path], int, _Videos]:  # fmt: skip
    chosen = _videos_with_ids(f, rule)
    rate = _rate(f)
    table = f.videos
    written: list[Path] = []
    meta: dict[int, list[str]] = {}
    rows = 0
    with open(out / "videos.csv", "w", newline="", encoding="utf-8") as fh:
        listing = csv.writer(fh)
        listing.writerow(["video_id", "path", "shard", "index", "num_clips", "duration_sec", "rate"])
        for k, s in enumerate(range(0, len(chosen.rows), shard_videos)):
            members = chosen.rows[s : s + shard_videos]
            # Videos are stored in /videos order without gaps and skipped videos have no rows, so
            # a shard's clips are one row range of /clips.
            first = int(table.clip_offset[members[0]])
            starts = [0]
            for i, v in enumerate(members):
                count = int(table.clip_count[v])
                starts.append(starts[-1] + count)
                listing.writerow([chosen.ids[s + i], str(table.path[v]), k, i, count,
                                  repr(float(table.duration_sec[v])), repr(rate)])  # fmt: skip
            data, offsets = out / f"{prefix}_{k}_data.npy", out / f"{prefix}_{k}_starts.npy"
            _write_npy(data, f, first, first + starts[-1], dtype)
            np.save(offsets, np.asarray(starts, dtype="<i8"))
            written += [data, offsets]
            meta[k] = chosen.ids[s : s + shard_videos]
            rows += starts[-1]
    with open(out / f"{prefix}_meta.pkl", "wb") as fh:
        pickle.dump(meta, fh, pickle.HIGHEST_PROTOCOL)
    written += [out / f"{prefix}_meta.pkl", out / "videos.csv"]
    return written, rows, chosen


def _caption_runs(f) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[str]]]:
    """``(video row, start, end, text)`` of each video with captions, in /captions order,
    reading /captions in blocks; one video's captions in memory at a time. Refuses columns of
    different lengths and rows that are not sorted by video and start time."""
    h5 = f.h5
    video, start, end, text = (h5[name] for name in CAPTIONS)
    m = video.shape[0]
    if not start.shape[0] == end.shape[0] == text.shape[0] == m:
        lengths = f"{m}, {start.shape[0]}, {end.shape[0]}, {text.shape[0]}"
        raise VidfeatError(f"{f.path}: the /captions columns have different lengths ({lengths}): rewrite the captions")
    current, parts = -1, []  # the video being gathered and its blocks of (start, end, text)

    def run():
        s = np.concatenate([p[0] for p in parts])
        e = np.concatenate([p[1] for p in parts])
        return current, s, e, [t for p in parts for t in p[2]]

    last_start = -np.inf
    for a, b in _blocks(0, m):
        v, s, e = video[a:b].astype(np.int64), start[a:b].astype(np.float64), end[a:b].astype(np.float64)
        t = text.asstr()[a:b].tolist()
        # Split the block where the video changes; every piece must continue in sorted order.
        cuts = np.flatnonzero(np.diff(v)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(v)]):
            vid = int(v[lo])
            if vid != current:
                if vid < current:
                    raise VidfeatError(f"{f.path}: /captions rows are not sorted by video (row {a + lo}): "
                                       "rewrite the captions")  # fmt: skip
                if parts:
                    yield run()
                current, parts, last_start = vid, [], -np.inf
            piece = s[lo:hi]
            if piece[0] < last_start or (piece.size > 1 and (np.diff(piece) < 0).any()):
                raise VidfeatError(f"{f.path}: the captions of video row {vid} are not sorted by start time: "
                                   "rewrite the captions")  # fmt: skip
            last_start = float(piece[-1])
            parts.append((piece, e[lo:hi], t[lo:hi]))
    if parts:
        yield run()


def _pickled(obj: Any) -> bytes:
    """``obj`` as protocol-2 pickle opcodes without the header and the final STOP, and without
    memo opcodes (the pickler's fast mode: the data has no shared or recursive objects), so
    pieces pickled apart concatenate into one stream that never reuses a memo slot."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.fast = True
    pickler.dump(obj)
    return buf.getvalue()[2:-1]


def _export_captions(f, out: Path, rule: str) -> tuple[list[Path], int, _Videos]:
    # The ids of the videos that have captions (a first pass over /captions/video, in blocks).
    video = f.h5["captions/video"]
    with_captions: set[int] = set()
    for a, b in _blocks(0, video.shape[0]):
        with_captions.update(np.unique(video[a:b]).tolist())
    n_videos = len(f.videos)
    if with_captions and not (min(with_captions) >= 0 and max(with_captions) < n_videos):
        raise VidfeatError(f"{f.path}: /captions/video names rows outside /videos (0-{n_videos - 1}): "
                           "rewrite the captions")  # fmt: skip
    chosen = _videos_with_ids(f, rule, rows=sorted(with_captions))
    ids = dict(zip(chosen.rows, chosen.ids))
    chosen.skipped = len(f.videos) - len(chosen.rows)
    count = 0
    with open(out / CAPTION_JSON, "w", encoding="utf-8") as js, open(out / CAPTION_PICKLE, "wb") as pk:
        js.write("{")
        pk.write(b"\x80\x02}")  # PROTO 2, EMPTY_DICT; one SETITEM per video below
        for i, (v, start, end, text) in enumerate(_caption_runs(f)):
            entry = {"start": start.tolist(), "end": end.tolist(), "text": text}
            js.write(("\n" if i == 0 else ",\n") + json.dumps(ids[v], ensure_ascii=False) + ": "
                     + json.dumps(entry, ensure_ascii=False))  # fmt: skip
            pk.write(_pickled(ids[v]) + _pickled(entry) + b"s")
            count += len(text)
        js.write("\n}\n")
        pk.write(b".")
    return [out / CAPTION_JSON, out / CAPTION_PICKLE], count, chosen


# --- manifest ---------------------------------------------------------------------------------------


def source_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Size in bytes and SHA-256 (hex) of a file, read in blocks."""
    digest = hashlib.sha256()
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    size = 0
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return size, digest.hexdigest()


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _write_manifest(f, out: Path, layout: dict[str, Any], now: datetime) -> list[Path]:
    size, sha = source_digest(f.path)
    attrs = f.attrs
    manifest = {
        "source": {"path": str(Path(f.path).resolve()), "size_bytes": size, "sha256": sha,
                   "format_version": attrs.get("format_version")},  # fmt: skip
        "model": {"card": attrs.get("model"), "weights_sha256": attrs.get("weights_sha256")},
        "settings": {k: v for k, v in attrs.items() if k not in ("format", "format_version", *SEGMENT_ATTRS)},
        "layout": layout,
        "vidfeat_version": __version__,
        "created": now.astimezone(timezone.utc).isoformat(timespec="seconds"),
    }
    names = [str(name) for name in attrs.get("segments") or []]
    if names:  # a grown file: its data lies in its segments (vidfeat.store.segments)
        folder = segments_path(f.path)
        manifest["source"]["segments"] = [dict(zip(("name", "size_bytes", "sha256"), (name, *source_digest(folder / name))))
                                          for name in names]  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    unit = "captions" if layout["format"] == "captions" else "clips"
    left_out = layout["videos_without_captions" if unit == "captions" else "videos_without_clips"]
    lines = [
        f"# vidfeat export ({layout['format']})",
        "",
        f"Exported by vidfeat {__version__} on {manifest['created']} from `{manifest['source']['path']}`",
        f"({size} bytes, sha256 `{sha}`, format version {manifest['source']['format_version']}),",
        f"model `{manifest['model']['card']}`: {layout['rows']} {unit} of {layout['videos']} videos"
        + (f" ({_plural(left_out, 'video')} without {unit} left out)." if left_out else "."),
        "",
        layout["description"],
        "",
        "Read it (Python):",
        "",
        "```python",
        layout["read"],
        "```",
        "",
        f"Everything else (the extraction settings, the options of this export) is in {MANIFEST}.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return [out / MANIFEST, out / "README.md"]


def _description(format: str, f, options: dict[str, Any]) -> str:
    attrs = f.attrs
    times = (f"Clip i of a video starts about i * {attrs.get('stride_sec')} s into it (stride_sec) and spans "
             f"{attrs.get('num_frames')} frames at {attrs.get('fps')} fps; the exact start_sec and end_sec are "
             "in the source file's /clips.")  # fmt: skip
    if format == "per-video":
        return (f"One {FEATURES_DIR}/<video_id>{options['suffix']} [num_clips, D] per video, rows in time order; "
                f"videos.csv lists video_id, path, feature_file, num_clips, duration_sec and rate (rows per "
                f"second, 1 / stride_sec): the row of second t is int(t * rate). Video ids: {options['id']}. "
                + times)  # fmt: skip
    if format == "captions":
        return (f"HowTo100M's caption schema: {CAPTION_JSON} maps each video id to its captions, "
                '{"start": [...], "end": [...], "text": [...]} (seconds on the player\'s clock, start sorted); '
                f"{CAPTION_PICKLE} holds the same dict (UniVL's caption.pickle). Only videos with captions "
                f"appear. Video ids: {options['id']}.")  # fmt: skip
    if format == "sharded":
        return (f"fairseq MMPT ShardedTensor shards of {options['shard_videos']} videos: "
                f"{options['prefix']}_<k>_data.npy holds their clips concatenated in video order, "
                f"{options['prefix']}_<k>_starts.npy the V + 1 row offsets; {options['prefix']}_meta.pkl maps "
                "each shard to its video ids; videos.csv gives each video's shard, index and rate. " + times)
    return ("Rows in /clips order (videos sorted by path, each video's clips in time order); metadata columns "
            "row, video, clip_index, start_sec, end_sec, top_class, score (and text with captions). " + times)


# --- entry point ------------------------------------------------------------------------------------


def export(
    f,
    out_dir: str | os.PathLike[str],
    *,
    format: Format = "npy-parquet",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    dtype: str | None = None,
    table: Literal["parquet", "csv"] = "parquet",
    ids: Literal["stem", "path"] = "stem",
    suffix: str = ".npy",
    shard_videos: int = DEFAULT_SHARD_VIDEOS,
    prefix: str = "train",
    now: datetime | None = None,
) -> list[Path]:
    """Write the clips of an open :class:`~vidfeat.store.FeatureFile` to ``out_dir``.

    Args:
        format: see the module docstring.
        shard_rows: rows a shard (``npy-parquet``).
        dtype: "float16" or "float32" embeddings in the .npy files; None keeps the file's.
        table: the metadata table of ``npy``: parquet or csv.
        ids: video ids of ``per-video``, ``sharded`` and ``captions``: the file name's ``stem`` or the relative
            ``path``, both without the extension.
        suffix: ending of the ``per-video`` feature files (``.mp4.npy`` for HowTo100M's S3D naming).
        shard_videos: videos a shard (``sharded``); prefix: the shard files' prefix (MMPT reads
            ``train`` and ``val``).
        now: the export's date in the manifest (default: the current time).

    Returns the files written, ``manifest.json`` and ``README.md`` last.
    """
    if format not in FORMATS:
        raise VidfeatError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if shard_rows < 1:
        raise VidfeatError(f"shard size must be at least 1 row, got {shard_rows}")
    if shard_videos < 1:
        raise VidfeatError(f"shard size must be at least 1 video, got {shard_videos}")
    if ids not in ID_RULES:
        raise VidfeatError(f"unknown video id rule {ids!r}: choose one of {', '.join(ID_RULES)}")
    if not suffix or "/" in suffix or "\\" in suffix:
        raise VidfeatError(f"feature file suffix {suffix!r} must be a file name ending such as .npy, without '/'")
    if not prefix or "/" in prefix or "\\" in prefix or prefix in (".", ".."):
        raise VidfeatError(f"shard prefix {prefix!r} must be a file name prefix such as train, without '/'")
    np_dtype = np.dtype(dtype or f.embeddings.dtype)
    if np_dtype not in (np.float16, np.float32):
        raise VidfeatError(f"embedding dtype must be float16 or float32, got {dtype}")
    if format in ("npy-parquet", "parquet") or (format == "npy" and table == "parquet"):
        _pyarrow()
    n = len(f)
    if format == "captions" and any(name not in f.h5 for name in CAPTIONS):
        raise VidfeatError(f"{f.path} has no captions: add them with `vidfeat captions {f.path} SOURCE`")
    if format in ("npy-parquet", "npy", "parquet") and TEXT in f.h5 and f.h5[TEXT].shape[:1] != (n,):
        raise VidfeatError(f"{f.path}: /clips/text has {f.h5[TEXT].shape[0]} rows for {n} clips: "
                           "rewrite the captions, one per clip row")  # fmt: skip
    out = Path(out_dir)
    written: list[Path] = []
    options: dict[str, Any] = {"dtype": str(np_dtype)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        if format == "npy-parquet":
            (out / EMB_DIR).mkdir(exist_ok=True)
            (out / META_DIR).mkdir(exist_ok=True)
            shards = max(1, -(-n // shard_rows))
            width = max(1, len(str(shards - 1)))
            for s in range(shards):
                a, b = s * shard_rows, min(n, (s + 1) * shard_rows)
                emb_path = out / EMB_DIR / f"{EMB_DIR}_{s:0{width}d}.npy"
                meta_path = out / META_DIR / f"{META_DIR}_{s:0{width}d}.parquet"
                _write_npy(emb_path, f, a, b, np_dtype)
                _write_metadata_parquet(meta_path, f, a, b)
                written += [emb_path, meta_path]
            options["shard_rows"] = shard_rows
        elif format == "npy":
            _write_npy(out / "embeddings.npy", f, 0, n, np_dtype)
            written.append(out / "embeddings.npy")
            meta = out / f"metadata.{table}"
            if table == "csv":
                _write_metadata_csv(meta, f)
            else:
                _write_metadata_parquet(meta, f, 0, n)
            written.append(meta)
            options["table"] = table
        elif format == "parquet":
            _write_metadata_parquet(out / "clips.parquet", f, 0, n, embedding=True)
            written.append(out / "clips.parquet")
        if format in ("npy-parquet", "npy", "parquet"):
            videos, skipped = _videos_with_and_without_clips(f)
            rows = n
        elif format == "captions":
            options = {"id": ids}
            files, rows, chosen = _export_captions(f, out, ids)
            written += files
            counts = f.videos.clip_count
            videos, skipped = len(chosen.rows), int((counts == 0).sum())
        else:
            if format == "per-video":
                options.update(id=ids, suffix=suffix)
                files, rows, chosen = _export_per_video(f, out, np_dtype, ids, suffix)
            else:
                options.update(id=ids, shard_videos=shard_videos, prefix=prefix)
                files, rows, chosen = _export_sharded(f, out, np_dtype, ids, shard_videos, prefix)
            written += files
            videos, skipped = len(chosen.rows), chosen.skipped
        layout = {
            "format": format,
            "options": options,
            "rows": rows,
            "videos": videos,
            "videos_without_clips": skipped,
            **({"videos_without_captions": chosen.skipped} if format == "captions" else {}),
            "embedding_dim": int(f.embeddings.shape[1]),
            "rate": _rate(f) if format in ("per-video", "sharded") else None,
            "captions": format == "captions" or (format in ("npy-parquet", "npy", "parquet") and TEXT in f.h5),
            "description": _description(format, f, options),
            "read": RECIPES[format].replace("PREFIX", prefix),
        }
        written += _write_manifest(f, out, layout, now or datetime.now(timezone.utc))
    except OSError as exc:
        raise VidfeatError(f"cannot write the export to {out}: {exc.strerror or exc}") from exc
    return written
