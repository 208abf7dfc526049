"""Reading a finished file: :func:`open_features` and :class:`FeatureFile` (plain h5py
underneath), with the /videos table (:class:`VideoTable`) and one video's clips (:class:`VideoClips`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .format import (
    _CLIP_COPY,
    VIDEO_COLUMNS,
    _canon,
    _missing_message,
    _open_h5,
    _read_table,
    check_format,
)
from .captions import caption_rows, has_captions
from .means import softmax, video_means
from .segments import check_segments


# reading


@dataclass(frozen=True)
class VideoTable:
    """The /videos table: one entry per video, arrays in file order (sorted by path; in a grown
    file, sorted within each segment)."""

    path: np.ndarray  # str objects
    status: np.ndarray  # str objects
    error: np.ndarray  # str objects
    warning: np.ndarray  # str objects ("" in version-1 files)
    meta: np.ndarray  # str objects: a shard sample's .json text ("" for other videos and older files)
    size_bytes: np.ndarray
    mtime: np.ndarray
    duration_sec: np.ndarray
    fps: np.ndarray
    width: np.ndarray
    height: np.ndarray
    first_frame_sec: np.ndarray  # NaN when unknown (files before version 3)
    clip_offset: np.ndarray
    clip_count: np.ndarray
    _by_path: tuple | None = field(default=None, repr=False, compare=False)  # (order or None, paths in order)

    def __len__(self) -> int:
        return len(self.path)

    def index(self, path: str) -> int:
        """Row of ``path`` in /videos; KeyError if absent (binary search over the rows in path
        order: a plain file's rows are sorted, a grown file's within each segment)."""
        if self._by_path is None:
            ordered = self.path[1:] > self.path[:-1] if len(self.path) > 1 else np.ones(0, bool)
            order = None if ordered.all() else np.argsort(self.path, kind="stable")
            object.__setattr__(self, "_by_path", (order, self.path if order is None else self.path[order]))
        order, paths = self._by_path
        i = int(np.searchsorted(paths, path))
        if i < len(paths) and paths[i] == path:
            return i if order is None else int(order[i])
        raise KeyError(f"no video {path!r} in this file")

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per video (JSON-friendly)."""
        names = list(VIDEO_COLUMNS)
        columns = [getattr(self, name).tolist() for name in names]
        return [dict(zip(names, values)) for values in zip(*columns)]


@dataclass(frozen=True)
class VideoClips:
    """The clips of one video (rows ``[first_row, first_row + len)`` of /clips)."""

    path: str
    first_row: int
    embedding: np.ndarray  # [n, D]
    logits: np.ndarray  # [n, C] float32
    start_sec: np.ndarray  # [n] float64
    end_sec: np.ndarray  # [n] float64
    valid_frames: np.ndarray  # [n] int32
    text: np.ndarray | None = None  # [n] str objects: the captions said during each clip; None without captions

    def __len__(self) -> int:
        return len(self.start_sec)


class FeatureFile:
    """A finished vidfeat file, read with plain h5py (``.h5`` is the open ``h5py.File``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(_missing_message(self.path))
        self.h5 = _open_h5(self.path, "feature file", "check the path")
        try:
            check_format(self.h5, self.path, "check the path")
            check_segments(self.h5, self.path)
        except BaseException:
            self.h5.close()
            raise
        self._videos: VideoTable | None = None
        self._classes: list[str] | None = None
        self._means: tuple[np.ndarray, np.ndarray] | None = None

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.h5.close()

    def __len__(self) -> int:
        """Number of clips (rows of /clips)."""
        return int(self.h5["clips/embedding"].shape[0])

    def __iter__(self) -> Iterator[VideoClips]:
        """The videos in file order, one :class:`VideoClips` at a time (read on demand)."""
        for path in self.videos.path:
            yield self.clips(str(path))

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attrs as plain Python values."""
        return {key: _canon(value) for key, value in self.h5.attrs.items()}

    @property
    def format_version(self) -> int:
        return int(_canon(self.h5.attrs.get("format_version", 0)))

    @property
    def embedding_mean(self) -> h5py.Dataset | None:
        """/videos/embedding_mean ``[V, D]`` float32 (None in version-1 files), lazy."""
        return self.h5.get("videos/embedding_mean")

    @property
    def scores_mean(self) -> h5py.Dataset | None:
        """/videos/scores_mean ``[V, C]``: mean class probabilities (None in version-1 files), lazy."""
        return self.h5.get("videos/scores_mean")

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            self._classes = list(self.h5["classes"].asstr()[()])
        return self._classes

    @property
    def embeddings(self) -> h5py.Dataset:
        """/clips/embedding ``[N, D]``, lazy: slice it, or use :meth:`load_embeddings`."""
        return self.h5["clips/embedding"]

    @property
    def logits(self) -> h5py.Dataset:
        """/clips/logits ``[N, C]``, lazy."""
        return self.h5["clips/logits"]

    def load_embeddings(self, dtype: Any = None) -> np.ndarray:
        """The whole ``[N, D]`` matrix in memory (optionally cast, e.g. ``np.float32``)."""
        data = self.embeddings[()]
        return data if dtype is None else data.astype(dtype, copy=False)

    @property
    def videos(self) -> VideoTable:
        if self._videos is None:
            self._videos = VideoTable(**_read_table(self.h5))
        return self._videos

    def clips(self, video_path: str) -> VideoClips:
        """The clips of one video, by its relative path; KeyError if it is not in the file."""
        v = self.videos.index(video_path)
        start = int(self.videos.clip_offset[v])
        rows = slice(start, start + int(self.videos.clip_count[v]))
        data = {name: self.h5[f"clips/{name}"][rows] for name in _CLIP_COPY}
        text = self.h5["clips/text"].asstr()[rows].astype(object) if self.has_captions else None
        return VideoClips(path=video_path, first_row=start, text=text, **data)

    @property
    def has_captions(self) -> bool:
        """Whether captions were added to the file (``vidfeat captions``, ``extract --captions``)."""
        return has_captions(self.h5)

    def captions(self, video_path: str) -> list[tuple[float, float, str]]:
        """The captions of one video: (start_sec, end_sec, text) on the player's clock, in time
        order; [] for a video without captions or a file without any; KeyError if the video is
        not in the file. Its rows are found by a binary search on /captions/video: memory holds
        the video's captions, whatever the table's size."""
        v = self.videos.index(video_path)
        if not self.has_captions:
            return []
        rows = caption_rows(self.h5, v, v + 1)
        g = self.h5["captions"]
        return list(zip(g["start_sec"][rows].tolist(), g["end_sec"][rows].tolist(), g["text"].asstr()[rows].tolist()))

    def video_of(self, row: int) -> str:
        """Path of the video that clip ``row`` belongs to."""
        return str(self.videos.path[int(self.h5["clips/video"][row])])

    def topk(self, row: int, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable classes of clip ``row``: softmax of its logits, best first."""
        p = softmax(self.h5["clips/logits"][row])
        best = np.argsort(-p, kind="stable")[: max(0, k)]
        return [(self.classes[i], float(p[i])) for i in best]

    def _video_means(self) -> tuple[np.ndarray, np.ndarray]:
        if self._means is None:
            self._means = video_means(self.h5)
        return self._means

    def video_embeddings(self) -> np.ndarray:
        """``[V, D]`` float32: the mean clip embedding of each video (NaN rows: no clips)."""
        return self._video_means()[0]

    def video_scores(self) -> np.ndarray:
        """``[V, C]`` float32: the mean softmax score of each video's clips (NaN rows: no clips)."""
        return self._video_means()[1]


def open_features(path: str | os.PathLike[str]) -> FeatureFile:
    """Open a finished vidfeat file for reading (use as a context manager)."""
    return FeatureFile(path)
