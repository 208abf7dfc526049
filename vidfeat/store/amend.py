"""Changing a finished file without re-extracting it: adding, replacing or removing its
captions, giving the videos a grown file's last growth added their captions, and compacting a
grown file (:mod:`vidfeat.store.segments`) into one plain file.

The file is rebuilt by assembly (:func:`vidfeat.store.assemble.assemble` with the file as its
only source; for the last growth's captions, that segment alone), so it is written as durably
as every final file (free-space check, reservation, temporary name, fsync, rename): a kill at
any moment leaves the old file intact. Each change holds the output lock from start to end
(:func:`amending`: reading a caption source into a spool, then rewriting), so an extraction
cannot write the same output at the same time.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..version import __version__
from . import segments
from .assemble import KEEP, assemble
from .caption_source import CaptionSource, CaptionSpool
from .captions import CaptionTable, has_captions
from .final import unlink_quiet
from .format import CAPTION_ATTRS, SEGMENT_ATTRS, _missing_message, _open_h5, check_format, parts_path
from .lock import LOCK_NAME, OutputLock

_TMP_SUFFIX = ".captions.tmp"
_SPOOL_GLOB = "captions-*.spool.tmp"


class Amend:
    """Changes to a finished file, made while :func:`amending` holds its lock."""

    def __init__(self, output: Path, parts: Path) -> None:
        self.output, self.parts = output, parts
        self._spool: CaptionSpool | None = None

    def spool(self, n_videos: int) -> CaptionSpool:
        """A scratch file in the work directory to write captions into a video at a time, for
        :meth:`set_captions` or :meth:`set_last_captions` (``spool.finish()``); removed when
        :func:`amending` ends (a kill's leftover: by the next change or extraction)."""
        self._spool = CaptionSpool(self.parts / f"captions-{os.getpid()}.spool.tmp", n_videos)
        return self._spool

    def set_captions(
        self,
        captions: CaptionTable | CaptionSource | None,
        *,
        first_frame_sec: np.ndarray | None = None,
        source: str = "",
        warnings: Mapping[str, int] | None = None,
    ) -> int:
        """See :func:`set_captions`."""

        def update(attrs: dict, n_videos: int) -> None:
            if first_frame_sec is not None and np.shape(first_frame_sec) != (n_videos,):
                raise ValueError(f"first_frame_sec has shape {np.shape(first_frame_sec)}, the file has {n_videos} videos")
            for key in CAPTION_ATTRS:
                attrs.pop(key, None)
            if captions is not None:
                attrs["captions_source"] = source
                attrs["captions_warnings"] = json.dumps({k: int(n) for k, n in sorted((warnings or {}).items()) if n})

        return self._rewrite(update, captions=captions, first_frame_sec=first_frame_sec)

    def set_last_captions(
        self,
        captions: CaptionTable | CaptionSource,
        *,
        first_frame_sec: np.ndarray,
        source: str = "",
        warnings: Mapping[str, int] | None = None,
    ) -> int:
        """See :func:`set_last_captions`."""
        fix = "give a file written by vidfeat extract"
        with _open_h5(self.output, "feature file", fix) as h5:
            check_format(h5, self.output, fix)
            segments.check_segments(h5, self.output)
            if not segments.segment_names(h5) or not has_captions(h5):
                raise ValueError(f"{self.output} is not a grown file with captions")
            sources = [s for s in str(h5.attrs.get("captions_source", "")).split("; ") if s]
            counts = Counter({k: int(n) for k, n in json.loads(h5.attrs.get("captions_warnings") or "{}").items()})
        if source and source not in sources:
            sources.append(source)
        counts.update({k: int(n) for k, n in (warnings or {}).items() if n})
        attrs = {"captions_source": "; ".join(sources), "captions_warnings": json.dumps(dict(sorted(counts.items())))}
        segments.clean(self.output)  # what a kill of an earlier try left
        return segments.replace_last(self.output, self.parts / (self.output.name + _TMP_SUFFIX), captions,
                                     first_frame_sec=first_frame_sec, attrs=attrs, kept=f"{self.output} is unchanged",
                                     rerun="rerun the same command")  # fmt: skip

    def compact(self) -> int:
        """See :func:`compact` (here the file is known to be grown)."""
        return self._rewrite(lambda attrs, n_videos: None, captions=KEEP)

    def _rewrite(self, update: Callable[[dict, int], None], **how: Any) -> int:
        """Assemble the output from itself as one plain file, its attrs changed by
        ``update(attrs, n_videos)``; ``how``: assemble's captions and first_frame_sec."""
        output, fix = self.output, "give a file written by vidfeat extract"
        with _open_h5(output, "feature file", fix) as h5:
            check_format(h5, output, fix)
            segments.check_segments(h5, output)
            attrs = {key: value for key, value in h5.attrs.items() if key not in SEGMENT_ATTRS}
            classes = h5["classes"].asstr()[()].tolist()
            emb = h5["clips/embedding"]
            embedding_dim, embedding_dtype = int(emb.shape[1]), emb.dtype
            n_videos = int(h5["videos/path"].shape[0])
        update(attrs, n_videos)
        attrs["format_version"] = segments.PLAIN_VERSION
        attrs["vidfeat_version"] = __version__
        attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        clips = assemble(
            output,
            self.parts / (output.name + _TMP_SUFFIX),
            [output],
            attrs=attrs,
            classes=classes,
            embedding_dim=embedding_dim,
            embedding_dtype=embedding_dtype,
            kept=f"{output} is unchanged",
            rerun="rerun the same command",
            **how,
        )
        segments.drop(output)
        return clips

    def _close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            unlink_quiet(self._spool.path)


@contextlib.contextmanager
def amending(output: str | os.PathLike[str]) -> Iterator[Amend]:
    """``output``'s lock, held while the changes of the :class:`Amend` it gives are made (a
    one-line StoreError when another process writes it, or when there is no such file). What
    a kill of an earlier change left in the work directory goes first; the work directory
    goes at the end when nothing else is in it (an unfinished extraction's chunks stay for its
    rerun)."""
    output = Path(output)
    if not output.exists():
        raise StoreError(_missing_message(output))
    parts = parts_path(output)
    parts.mkdir(exist_ok=True)
    try:
        with OutputLock(output, parts):
            for stale in parts.glob(_SPOOL_GLOB):
                unlink_quiet(stale)
            work = Amend(output, parts)
            try:
                yield work
            finally:
                work._close()
    finally:
        _drop_lock_only(parts)


def set_captions(
    output: str | os.PathLike[str],
    captions: CaptionTable | CaptionSource | None,
    *,
    first_frame_sec: np.ndarray | None = None,
    source: str = "",
    warnings: Mapping[str, int] | None = None,
) -> int:
    """Rewrite ``output`` with ``captions`` (by video row of the file, in memory or streamed
    from disk: :class:`~vidfeat.store.caption_source.CaptionSource`; None removes the captions)
    and, if given, its videos' ``first_frame_sec`` ([V]). ``source`` is recorded in the
    ``captions_source`` attribute (a description, never a credential), ``warnings`` (bad cases
    of the source by kind) in ``captions_warnings`` as JSON. Returns the clip count. A grown
    file (:mod:`vidfeat.store.segments`) becomes one plain file."""
    with amending(output) as work:
        return work.set_captions(captions, first_frame_sec=first_frame_sec, source=source, warnings=warnings)


def set_last_captions(
    output: str | os.PathLike[str],
    captions: CaptionTable | CaptionSource,
    *,
    first_frame_sec: np.ndarray,
    source: str = "",
    warnings: Mapping[str, int] | None = None,
) -> int:
    """Give the videos of a grown file's last segment (the videos its last growth added) the
    ``captions`` (video rows counted from the segment's first row, ``segments.last_rows``) and
    ``first_frame_sec`` ([videos of the segment]), rewriting that segment alone; the other
    videos keep theirs. ``source`` is added to ``captions_source`` (sources joined by "; ") and
    ``warnings`` to the counts of ``captions_warnings``. Returns the file's clip count."""
    with amending(output) as work:
        return work.set_last_captions(captions, first_frame_sec=first_frame_sec, source=source, warnings=warnings)


def compact(output: str | os.PathLike[str]) -> int | None:
    """Rewrite a grown file as one plain file, its rows sorted by path, and remove its segments
    folder; returns the clip count, or None (nothing written) when ``output`` is plain."""
    output = Path(output)
    if output.exists():
        with _open_h5(output, "feature file", "give a file written by vidfeat extract") as h5:
            if not segments.segment_names(h5):
                return None
    with amending(output) as work:
        return work.compact()


def _drop_lock_only(parts: Path) -> None:
    """Remove a work directory that holds nothing or only the lock (ours, or one a kill left);
    an unfinished extraction's (chunks, settings) stays for its rerun."""
    try:
        if [p.name for p in parts.iterdir()] in ([], [LOCK_NAME]):
            unlink_quiet(parts / LOCK_NAME)
            parts.rmdir()
    except OSError:
        pass
