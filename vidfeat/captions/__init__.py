"""Speech captions aligned to clips, for training and evaluating clip/text retrieval models
(MIL-NCE, VideoCLIP, UniVL) on a feature file.

Imports only :mod:`vidfeat.errors`, numpy and the subtitle libraries (webvtt-py, pysubs2: the
``captions`` extra, imported only when a subtitle file is read); nothing else of vidfeat, and
no torch or h5py.

Reading (``sources``)::

    caps = read_source("caption.json", video_ids=["nVbIUDjzWY4", ...])   # or a folder of
    caps["nVbIUDjzWY4"]      # [Caption(start_sec, end_sec, text), ...]  # <id>.csv, a .vtt/.srt,
    caps.warnings, caps.counts, caps.summary()                           # a folder of sidecars
    caps = read_sidecars(["videos/a.mp4", ...])    # name.vtt / name.en.vtt / name.srt beside each

* :class:`Caption` ``(start_sec, end_sec, text)``: a NamedTuple; times are the player's clock.
* :class:`Captions`: ``by_video`` (video id -> captions sorted by start, then end), ``get``,
  ``warnings`` (one line per bad case), ``counts`` (cases by kind, :data:`WARNING_KINDS`),
  ``summary()``.
* :func:`video_id` (``a/b/nVbIUDjzWY4.mp4`` -> ``nVbIUDjzWY4``: the file name without its last
  extension), :func:`read_source`, :func:`read_file`, :func:`sidecars`, :func:`read_sidecars`,
  :func:`as_arrays` (a caption list as arrays).

Aligning captions to clips is the store's rule (:func:`vidfeat.store.captions.align`: every
clip gets the text of the captions overlapping it by more than zero seconds, in time order);
:mod:`vidfeat.captions.attach` reads a source and writes it into a finished file.

Bad caption input is warned and counted, never raised, one entry or file at a time; a missing
source path or a path that is no kind of source raises :class:`~vidfeat.errors.VidfeatError`.
The rules for ids, preferred sidecars, text cleaning and YouTube's rolling auto-captions are in
the ``sources`` module docstring.
"""

from __future__ import annotations

from .sources import (
    MAX_WARNINGS,
    WARNING_KINDS,
    Caption,
    Captions,
    as_arrays,
    has_sidecars,
    read_file,
    read_sidecars,
    read_source,
    sidecars,
    video_id,
)

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
