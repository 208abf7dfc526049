"""Labelled videos for training and evaluation: reading the labels, splitting, making clips.

A data source is either

* a folder of class sub-folders, ``root/<class>/**/<video>`` (extensions of
  ``vidfeat.video.formats.VIDEO_EXTENSIONS``; files directly in ``root`` are ignored), unless the
  folder holds a ``labels.csv`` list (as ``vidfeat synth`` writes), which is then read instead, or
* a CSV or TSV list (tab-separated when the name ends in ``.tsv`` or the first line has a tab),
  one video a row: ``path,label[,start_sec,end_sec]``. A header row is optional (it is
  recognised by a first cell ``path``, ``video``, ``file`` or ``filename``); blank lines and
  ``#`` comments are skipped; relative paths are relative to the list file's folder. An empty
  ``start_sec``/``end_sec`` means the start/end of the video.

The class order (the model's output index) is the given class list, else the ``classes.txt``
beside the data (in the folder, or beside the list file), else the sorted labels. A label that
is not in a given class list is an error raised here, before anything is trained.

Clips are decoded by ``vidfeat.video.reader`` and cropped by ``vidfeat.video.transforms`` (the same code as
``vidfeat extract``). Item ``i`` of epoch ``e`` draws all its randomness from a generator seeded
by ``(seed, e, i)``, so a run and its resumed copy see the same clips whatever the worker count:

* training (``augment`` given): a random temporal position (inside the row's
  ``[start_sec, end_sec]``), decoded at the random short side of ``TrainAugment``, one random
  crop, flipped with p=0.5 unless the augmentation disables it (and, where the recipe enables
  them, flipped vertically and reversed in time), the label swapped as ``LabelSwaps`` says;
* evaluation: the centre clip at the preprocessing's short side, 1 centre crop or 3 crops.

Index ``i + k * len(dataset)`` is the ``k``-th repeat of video ``i`` in an epoch (what
:class:`RepeatSampler` yields for classes weighted above 1): the same video, its own random draws.

Items are ``(views, t, s, s, c)`` uint8 (one view in training, the crops in evaluation). A video
that cannot be decoded gives a :class:`Failed` marker instead of an item: :func:`collate` drops it
and lists it in ``Batch.failed``, so a corrupt file is counted, never a crash.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from ..pipeline import shm
from ..model.cards import Preprocess, read_class_file
from ..video.sampling import ClipSampling
from ..errors import ConfigError, VideoError
from ..video.formats import VIDEO_EXTENSIONS
from ..video.transforms import LabelSwaps, TrainAugment, spatial_crops
from ..video.reader import ClipReader

__all__ = [
    "Batch",
    "ClipDataset",
    "Entry",
    "Failed",
    "Item",
    "LabelledData",
    "RepeatSampler",
    "check_labels",
    "collate",
    "load_data",
    "read_entries",
    "split_entries",
]

_HEADER_CELLS = {"path", "video", "file", "filename"}


@dataclass(frozen=True)
class Entry:
    """One labelled video (or a labelled segment of one, between ``start_sec`` and ``end_sec``)."""

    path: Path
    label: str
    start_sec: float | None = None
    end_sec: float | None = None


@dataclass
class LabelledData:
    """The training and validation entries and the class list (model output order)."""

    train: list[Entry]
    val: list[Entry]
    classes: list[str]


# ---------------------------------------------------------------------------------------------
# reading labels


def read_entries(source: str | Path) -> list[Entry]:
    """The labelled videos of a class-folder tree or a CSV/TSV list (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        listed = source / "labels.csv"
        return _read_table(listed) if listed.is_file() else _scan_folder(source)
    if source.is_file():
        return _read_table(source)
    raise ConfigError(f"data not found: {source} (a folder of class sub-folders or a CSV/TSV list)")


def _scan_folder(root: Path) -> list[Entry]:
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                    entries.append(Entry(Path(dirpath) / name, folder.name))
    if not entries:
        raise ConfigError(f"no videos in class sub-folders of {root}")
    return entries


def _seconds(cell: str, where: str) -> float | None:
    if not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        raise ConfigError(f"{where}: {cell!r} is not a time in seconds") from None


def _read_table(path: Path) -> list[Entry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the list {path}: {exc}") from exc
    lines = text.splitlines()
    tab = path.suffix.lower() in (".tsv", ".tab") or (bool(lines) and "\t" in lines[0])
    entries = []
    first = True
    for number, row in enumerate(csv.reader(lines, delimiter="\t" if tab else ","), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        if first and row[0].strip().lower() in _HEADER_CELLS:
            first = False
            continue
        first = False
        if not 2 <= len(row) <= 4:
            raise ConfigError(f"{where}: expected path,label[,start_sec,end_sec], got {len(row)} columns")
        cells = [c.strip() for c in row] + [""] * (4 - len(row))
        if not cells[0] or not cells[1]:
            raise ConfigError(f"{where}: empty path or label")
        start, end = _seconds(cells[2], where), _seconds(cells[3], where)
        if start is not None and end is not None and end <= start:
            raise ConfigError(f"{where}: end_sec {end} is not after start_sec {start}")
        video = Path(cells[0])
        entries.append(Entry(video if video.is_absolute() else path.parent / video, cells[1], start, end))
    if not entries:
        raise ConfigError(f"the list {path} has no rows")
    return entries


def _classes_beside(source: Path) -> Path | None:
    candidate = (source if source.is_dir() else source.parent) / "classes.txt"
    return candidate if candidate.is_file() else None


def check_labels(entries: Sequence[Entry], classes: Sequence[str], *, source: str) -> None:
    """Raise ConfigError naming every label of ``entries`` missing from ``classes`` (with counts)."""
    known = set(classes)
    missing = Counter(e.label for e in entries if e.label not in known)
    if missing:
        shown = ", ".join(f"{label!r} ({n} video{'s' if n > 1 else ''})" for label, n in sorted(missing.items()))
        raise ConfigError(
            f"labels of {source} missing from the class list ({len(classes)} classes from {', '.join(classes[:5])}"
            f"{', ...' if len(classes) > 5 else ''}): {shown}. Add them to the class list or remove those rows"
        )


def split_entries(entries: Sequence[Entry], fraction: float, seed: int) -> tuple[list[Entry], list[Entry]]:
    """Stratified random split: about ``fraction`` of each label's videos (at least one of a label
    with two or more, never all of them) go to validation. Same seed, same split."""
    if fraction <= 0:
        return list(entries), []
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        by_label.setdefault(entry.label, []).append(i)
    val: set[int] = set()
    for label in sorted(by_label):
        members = by_label[label]
        count = len(members)
        take = min(count - 1, max(1, round(fraction * count))) if count > 1 else 0
        val.update(members[j] for j in rng.permutation(count)[:take])
    return [e for i, e in enumerate(entries) if i not in val], [e for i, e in enumerate(entries) if i in val]


def load_data(
    train: str | Path,
    *,
    val: str | Path | None = None,
    val_fraction: float = 0.0,
    classes: str | Path | Sequence[str] | None = None,
    seed: int = 0,
) -> LabelledData:
    """Read the training data and the validation data (a separate source, else a ``val_fraction``
    split of the training data) and settle the class list; every label must be in it."""
    train_entries = read_entries(train)
    val_entries = read_entries(val) if val else []
    if isinstance(classes, (str, Path)) and str(classes):
        names = read_class_file(classes)
    elif classes is not None and not isinstance(classes, (str, Path)):
        names = list(classes)
    elif (beside := _classes_beside(Path(train))) is not None:
        names = read_class_file(beside)
    else:
        names = sorted({e.label for e in train_entries + val_entries})
    check_labels(train_entries, names, source=str(train))
    if val:
        check_labels(val_entries, names, source=str(val))
    else:
        train_entries, val_entries = split_entries(train_entries, val_fraction, seed)
    return LabelledData(train=train_entries, val=val_entries, classes=names)


# ---------------------------------------------------------------------------------------------
# clips


class Item(NamedTuple):
    clip: torch.Tensor  # (views, t, s, s, c) uint8
    label: int
    index: int


class Failed(NamedTuple):
    """Marker for a video that could not be decoded."""

    index: int
    path: str
    reason: str


class Batch(NamedTuple):
    clips: torch.Tensor  # (b, views, t, s, s, c) uint8; b may be 0 when every video failed
    labels: torch.Tensor  # (b,) int64
    indices: torch.Tensor  # (b,) int64, dataset indices
    failed: list[Failed]


def collate(items: Sequence[Item | Failed]) -> Batch:
    """Stack the decoded items; drop the :class:`Failed` markers into ``Batch.failed``."""
    good = [item for item in items if isinstance(item, Item)]
    failed = [item for item in items if isinstance(item, Failed)]
    if not good:
        empty = torch.zeros(0, dtype=torch.int64)
        return Batch(torch.zeros((0, 0, 0, 0, 0, 3), dtype=torch.uint8), empty, empty, failed)
    clips = torch.stack([item.clip for item in good])
    if get_worker_info() is not None:  # a full /dev/shm is waited out or named here, not dropped (vidfeat.pipeline.shm)
        shm.share(clips)
    return Batch(
        clips=clips,
        labels=torch.tensor([item.label for item in good], dtype=torch.int64),
        indices=torch.tensor([item.index for item in good], dtype=torch.int64),
        failed=failed,
    )


class ClipDataset(Dataset):
    """Clips of labelled videos (see the module docstring).

    ``augment``: training clips (random position, scale, crop, flip); ``None``: evaluation clips
    (centre clip, ``crops`` = 1 or 3 crops). Call ``set_epoch`` before each epoch's iteration.
    """

    def __init__(
        self,
        entries: Sequence[Entry],
        classes: Sequence[str],
        preprocess: Preprocess,
        *,
        augment: TrainAugment | None = None,
        seed: int = 0,
        crops: int = 1,
        decode_threads: int = 1,
        swaps: LabelSwaps = LabelSwaps(),
    ) -> None:
        check_labels(entries, classes, source="the dataset")
        try:
            self.swap_tables = swaps.tables(classes)
        except ValueError as exc:
            raise ConfigError(f"data swaps: {exc}") from None
        if augment is not None and augment.crop_size != preprocess.crop_size:
            raise ValueError(f"augment crops {augment.crop_size} px, the preprocessing {preprocess.crop_size} px")
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 or 3, got {crops}")
        index = {name: i for i, name in enumerate(classes)}
        self.entries = list(entries)
        self.labels = [index[e.label] for e in self.entries]
        self.preprocess = preprocess
        self.sampling = ClipSampling(preprocess.num_frames, preprocess.fps)
        self.augment = augment
        self.seed = seed
        self.crops = crops
        self.decode_threads = decode_threads
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def _start(self, entry: Entry, reader: ClipReader, rng: np.random.Generator) -> float:
        """Clip start: random (training) or centred (evaluation) in the entry's time range.

        Without an end in the entry the range ends at the video's measured end (the end the
        tiling of ``extract`` uses), which ``reader.measure_end()`` finds by decoding the last
        keyframe interval; the declared duration plays no part.
        """
        low = entry.start_sec or 0.0
        high = entry.end_sec if entry.end_sec is not None else reader.measure_end()
        span = max(0.0, high - low - self.sampling.clip_sec)
        return low + (rng.uniform(0.0, span) if self.augment is not None else span / 2)

    def __getitem__(self, index: int) -> Item | Failed:
        rng = np.random.default_rng([self.seed, self.epoch, index])  # a repeat (index >= len) draws its own clip
        index %= len(self.entries)
        entry = self.entries[index]
        short_side = self.augment.short_side(rng) if self.augment is not None else self.preprocess.short_side
        try:
            with ClipReader(entry.path, self.sampling, short_side=short_side, threads=self.decode_threads) as reader:
                clip = reader.read_at(self._start(entry, reader, rng))
        except VideoError as exc:
            return Failed(index, str(entry.path), str(exc))
        if self.augment is not None:
            frames, applied = self.augment(clip.frames, rng)
            label = self.labels[index]
            for op in applied:
                label = self.swap_tables[op][label]
            return Item(torch.from_numpy(frames[None]), label, index)
        views = spatial_crops(clip.frame_list, self.preprocess.crop_size, self.crops)
        return Item(torch.from_numpy(np.ascontiguousarray(views)), self.labels[index], index)


class RepeatSampler(Sampler[int]):
    """A training order in which the videos of class ``c`` appear ``weights[c]`` times an epoch
    (oversampling a hard or rare class, or balancing classes; a weight below 1 undersamples).

    The whole part of a weight is repeats, the fractional part a seeded draw: exactly
    ``round(sum of the fractions)`` extra videos, chosen in proportion to them without
    replacement, so every epoch has the same length. Repeat ``k`` of video ``i`` is yielded as
    ``i + k * len(labels)``, which :class:`ClipDataset` reads as video ``i`` with its own
    random clip. The order is a permutation seeded by ``(seed, epoch)`` (call ``set_epoch``);
    under DDP every rank takes every ``num_replicas``-th index of it, the tail dropped.
    """

    def __init__(self, labels: Sequence[int], weights: Sequence[float], *, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        per_video = np.asarray([weights[label] for label in labels], dtype=np.float64)
        if per_video.size == 0 or (per_video < 0).any() or not per_video.any():
            raise ValueError("class weights must be >= 0, and some video must have a weight above 0")
        self.size = len(per_video)
        self.whole = np.floor(per_video).astype(np.int64)
        self.fraction = per_video - self.whole
        self.extra = int(round(self.fraction.sum()))
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = (int(self.whole.sum()) + self.extra) // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        videos = np.repeat(np.arange(self.size), self.whole)
        repeat = np.arange(len(videos)) - np.repeat(np.cumsum(self.whole) - self.whole, self.whole)
        if self.extra:
            drawn = rng.choice(self.size, self.extra, replace=False, p=self.fraction / self.fraction.sum())
            videos, repeat = np.concatenate([videos, drawn]), np.concatenate([repeat, self.whole[drawn]])
        order = rng.permutation(len(videos))[: self.num_samples * self.num_replicas]
        return iter((videos[order] + repeat[order] * self.size)[self.rank :: self.num_replicas].tolist())
