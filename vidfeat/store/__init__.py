"""The output file: one HDF5 file per run, written crash-safely and resumably, and read back.

Layout (documented for other languages in docs/format.md)::

    /                  attrs: format="vidfeat", format_version, the run's settings (model,
                       weights_sha256, num_frames, fps, stride_sec, input_size, mean, std, ...),
                       vidfeat_version, torch_version, created
    /videos/<column>   [V]     one row per video, sorted by path (see ``VIDEO_COLUMNS``)
    /videos/embedding_mean, /videos/scores_mean  [V, D], [V, C]  per-video means (version 2)
    /clips/<column>    [N...]  one row per clip, grouped per video in /videos order
    /classes           [C]     class names (UTF-8 strings)

Writing (crash safety: docs/format.md). :class:`FeatureWriter` never writes the final file in place:

* finished videos are buffered and committed as small chunk files in the work directory beside
  the output (``feats.h5.parts/chunk-000001.h5``): written under a temporary name, fsynced,
  renamed into place with ``os.replace`` and the directory fsynced (the chunk is built in
  memory and written with plain file calls, so a full disk is an ordinary error). A kill at any moment loses at
  most the videos not yet committed; temporary files left by a kill are deleted on the next open;
* ``settings.json`` in the work directory records what defines the results (settings, classes,
  embedding size and dtype). A rerun compares it, and the existing final file, with its own
  settings and refuses to mix results (:class:`~vidfeat.errors.SettingsMismatch`) unless told to
  overwrite;
* ``tables.jsonl`` in the work directory lists each committed chunk's rows (path, size, mtime,
  status): a resumed run reads it instead of every chunk, and reads a chunk it does not list;
* :meth:`FeatureWriter.finalize` assembles the previous final file (if any) plus every chunk
  into a new file, rows in a deterministic order, and removes the work directory. It streams one
  row range at a time, so memory stays bounded whatever the size of the output. Chunks are
  applied oldest first, so a newer result for a path replaces an older one, and applying a chunk
  twice (a kill after the rename, before the work directory is gone) changes nothing.
* a run that only adds videos to an existing final file writes them as a new segment beside it
  (``feats.h5.segments/``) and replaces the file by a small top file whose datasets are HDF5
  virtual datasets over the segments (``segments``; format version 4): the cost is the new
  videos, not the file. ``amend.compact`` makes one plain file again;
* every final file, assembled or merged from shards (``merge``), is written by one writer
  (``final.write_final``): it checks that the file fits in the free space, reserves that space
  (so that a disk another process fills meanwhile cannot fail HDF5's writes), writes under a
  temporary name with HDF5's chunk cache off, fsyncs, renames into place and fsyncs the folder.

Reading: :func:`open_features` (plain h5py underneath), :func:`summarize` and :func:`verify`.

Modules: ``format`` (constants, dtypes, the format and settings checks, shared helpers),
``writer`` (:class:`FeatureWriter`, :class:`VideoResult`), ``final`` (the durable final-file
writer), ``assemble`` (building the final file of a run), ``merge`` (building it from shards),
``means`` (softmax and per-video means), ``segments`` (growth by segments), ``amend`` (captions
and compaction of a finished file), ``lock`` (the output lock), ``captions``, ``reader`` (:class:`FeatureFile` and co), ``check``
(:func:`summarize`, :func:`verify`).
"""

from __future__ import annotations

from .check import TIME_TOLERANCE_SEC, summarize, verify
from .format import (
    EMBEDDING_DTYPES,
    FORMAT,
    FORMAT_VERSION,
    REQUIRED_SETTINGS,
    STATUSES,
    VIDEO_COLUMNS,
    VOLATILE_ATTRS,
    WRITER_ATTRS,
    Status,
    _canon,  # not public; tests compare attrs with it
    parts_path,
)
from .reader import FeatureFile, VideoClips, VideoTable, open_features
from .writer import FeatureWriter, VideoResult, stored_settings

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "VideoResult",
    "FeatureWriter",
    "stored_settings",
    "FeatureFile",
    "VideoTable",
    "VideoClips",
    "open_features",
    "summarize",
    "verify",
    "parts_path",
]
