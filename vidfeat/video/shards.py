"""Videos inside webdataset tar shards, as video2dataset writes them, read in place.

A shard (``00000.tar``) holds samples of consecutive members ``<key>.json`` (video2dataset's
metadata: url, key, status, yt_meta_dict, clips...), ``<key>.mp4`` and ``<key>.txt`` (the
caption). As webdataset does, a member's key is its name up to the first ``.`` of its base name,
folder included, and a sample is a run of consecutive members with the same key.

:func:`expand_shards` turns a spec into shard paths or URLs; :func:`iter_samples` reads one
shard in order and yields a :class:`Sample` per key holding a video member. Nothing is
extracted to disk and no video is held in memory: a shard is read with random access (a local
file, or a URL through :func:`vidfeat.video.remote.open_video`, i.e. range requests), only its
member headers and the small ``.json`` / ``.txt`` members are read while iterating, and
:meth:`Sample.open_video` opens a seekable window over the video member's bytes in the tar for
``av.open``. A Sample is plain data (picklable): a decode worker in another process can open it.

The tar is read in order but with tarfile's random-access mode ("r:") over a seekable file, not
its stream mode ("r|"): a stream skips a member by reading its bytes, which for a remote shard
would fetch every video twice (once to pass it, once to decode it).

A truncated or damaged shard yields the samples whose video member is complete before the
damage, then raises :class:`ShardError`: the keys after the damage cannot be known.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import VidfeatError, VideoError, one_line
from .formats import VIDEO_EXTENSIONS
from . import remote

__all__ = ["LIST_BLOCK_SIZE", "REST", "Sample", "ShardError", "expand_shards", "iter_samples", "shard_name"]

LIST_BLOCK_SIZE = 64 * 2**10
"""Range-request size while iterating a remote shard: one request reads a member header and the
small members next to it, not the video data that follows."""

REST = "*"
"""The last part of the row name standing for a damaged shard's unread samples: ``<shard>/*``."""

_TEXT_EXTENSIONS = {".json": "json_text", ".txt": "txt_text"}


class ShardError(VideoError):
    """A shard cannot be read on: it is damaged or truncated at byte ``offset``, or it cannot
    be opened or fetched (``offset`` None): the samples after ``last_key`` are unknown.

    ``shard`` is the shard's path or URL (safe to print), ``name`` its name (see
    :func:`shard_name`), ``samples`` how many samples were yielded before the damage and
    ``last_key`` the key of the last one (None when none was). The message is one line.

    What the caller should record: the samples yielded before the error normally, then ONE
    failed row named :attr:`row_name` (``<shard name>/*``) with this message as its reason, so
    the run exits 3 and ``vidfeat info`` shows which shard is damaged and where; a rerun drops
    that row and reads the shard again (the samples already done are skipped by name).
    """

    def __init__(
        self, shard: str, name: str, reason: str, offset: int | None, samples: int, last_key: str | None
    ) -> None:
        after = f"after key {last_key}" if last_key is not None else "before its first sample"
        at = f" at byte {offset}" if offset is not None else ""
        super().__init__(
            f"shard {remote.safe_url(shard) if remote.is_url(shard) else shard} failed {after}{at}: "
            f"{reason}; its remaining samples were not read"
        )
        self.shard = shard
        self.name = name
        self.reason = reason
        self.offset = offset
        self.samples = samples
        self.last_key = last_key

    @property
    def row_name(self) -> str:
        return f"{self.name}/{REST}"


@dataclass(frozen=True)
class Sample:
    """One sample of a shard that holds a video.

    ``video_name`` (``<shard name>/<key><video_ext>``) is the video's key in the output;
    ``video_ext`` its member's extension (``.mp4``); ``offset`` and ``size`` locate the member's
    bytes in the tar of ``shard_size`` bytes. ``json_text`` and ``txt_text`` are the sample's ``.json`` and ``.txt``
    members (None when absent).
    """

    shard: str
    key: str
    video_name: str
    video_ext: str
    offset: int
    size: int
    json_text: str | None
    txt_text: str | None
    shard_size: int

    def open_video(self, *, sleep: Callable[[float], None] | None = None) -> BinaryIO:
        """A seekable binary file over the video member's bytes, read in place from the tar
        (nothing copied; a remote shard through range requests whose cache blocks start at the
        member): for ``av.open``. Raises VideoError when the shard cannot be opened."""
        if remote.is_url(self.shard):
            kwargs = {} if sleep is None else {"sleep": sleep}
            return remote.open_video(self.shard, size=self.shard_size, start=self.offset, length=self.size, **kwargs)
        try:
            base = _open_shard(self.shard, block_size=remote.BLOCK_SIZE, sleep=sleep)
        except VideoError as exc:
            raise VideoError(f"shard {self.shard}: {exc}") from exc
        return _Window(base, self.offset, self.size, f"{self.shard}:{self.key}{self.video_ext}")


class _Window(remote.RangeFile):
    """The bytes [offset, offset + size) of a seekable binary file, as a file of its own."""

    def __init__(self, base: BinaryIO, offset: int, size: int, name: str) -> None:
        super().__init__()
        self._base = base
        self._offset = offset
        self.size = size
        self._pos = 0
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def _read_at(self, pos: int, n: int) -> bytes:
        self._base.seek(self._offset + pos)
        return self._base.read(n)

    def close(self) -> None:
        if not self.closed:
            try:
                self._base.close()
            finally:
                super().close()


def shard_name(shard: str) -> str:
    """A shard's name: its file name (``00000.tar``), query string dropped for a URL."""
    path = remote.safe_url(shard) if remote.is_url(shard) else os.fspath(shard)
    return posixpath.basename(path.replace(os.sep, "/"))


def _open_shard(shard: str, *, block_size: int, sleep: Callable[[float], None] | None) -> BinaryIO:
    """The shard as a seekable binary file; VideoError (one line, without the shard's name for
    a local file) when it cannot be opened."""
    if remote.is_url(shard):
        kwargs = {} if sleep is None else {"sleep": sleep}
        return remote.open_video(shard, block_size=block_size, **kwargs)
    try:
        return open(shard, "rb")
    except OSError as exc:
        raise VideoError(f"cannot open it: {exc.strerror or one_line(exc)}") from exc


def _size(f: BinaryIO) -> int:
    size = getattr(f, "size", None)
    if isinstance(size, int):
        return size
    return os.fstat(f.fileno()).st_size


def _split(member_name: str) -> tuple[str, str]:
    """webdataset's (key, extension): the name up to the first '.' of its base name, folder
    included, and the rest with its dot (``a/b.c.mp4`` -> ``a/b``, ``.c.mp4``)."""
    folder, base = posixpath.split(member_name)
    stem, dot, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, dot + ext


def iter_samples(
    shard: str | os.PathLike[str],
    name: str | None = None,
    *,
    sleep: Callable[[float], None] | None = None,
) -> Iterator[Sample]:
    """The samples of ``shard`` (a path or URL) that hold a video, in the tar's order.

    ``name`` (default :func:`shard_name`) prefixes the videos' names: ``<name>/<key><ext>``; the
    video member is the first of the sample whose (last) extension is a video extension
    (:data:`vidfeat.video.formats.VIDEO_EXTENSIONS`, any case). Samples without one (video2dataset
    writes the ``.json`` / ``.txt`` of a failed download alone) are skipped. ``sleep``: the
    backoff wait of a remote shard's retries (tests pass one that does not sleep).

    Raises only :class:`ShardError` (a VideoError), after the last complete sample: when the tar
    is damaged or truncated (one cut exactly between two members too: a complete tar ends with
    the end-of-archive marker that tar writers put there), or cannot be opened or fetched (a
    remote shard's transient failures are retried first: :data:`vidfeat.video.remote.RETRY_NOTE`).
    A sample is yielded when its members read so far are complete: one cut right after its video
    member comes without its ``.txt``.
    """
    shard = os.fspath(shard)
    name = name if name is not None else shard_name(shard)
    yielded = 0
    last_key: str | None = None

    def damaged(reason: str, offset: int | None) -> ShardError:
        return ShardError(shard, name, reason, offset, yielded, last_key)

    try:
        f = _open_shard(shard, block_size=LIST_BLOCK_SIZE, sleep=sleep)
    except VideoError as exc:
        raise damaged(str(exc), None) from exc
    with f:
        total = _size(f)
        samples = _members(f, total, VIDEO_EXTENSIONS, damaged)
        while True:
            try:
                pending = next(samples)
            except StopIteration:
                return
            except ShardError:
                raise
            except (VideoError, tarfile.TarError, OSError) as exc:  # a network failure after retries
                raise damaged(one_line(exc), None) from exc
            if pending["video"] is None:
                continue
            ext, offset, size = pending["video"]
            yield Sample(
                shard=shard,
                key=pending["key"],
                video_name=f"{name}/{pending['key']}{ext}",
                video_ext=ext,
                offset=offset,
                size=size,
                json_text=pending.get("json_text"),
                txt_text=pending.get("txt_text"),
                shard_size=total,
            )
            yielded += 1
            last_key = pending["key"]


def _members(f: BinaryIO, total: int, video_extensions: frozenset[str], damaged) -> Iterator[dict]:
    """The samples of the tar ``f`` (``total`` bytes) as dicts: key, video (extension, offset,
    size) or None, json_text, txt_text. Raises ``damaged(reason, offset)`` where the tar is
    damaged, after yielding the sample in progress when its members seen so far are complete."""
    try:
        tar = tarfile.open(fileobj=f, mode="r:")  # random access: member data is skipped by seeking
    except tarfile.TarError as exc:
        raise damaged(one_line(exc), 0) from exc
    pending: dict | None = None
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as exc:
            if pending is not None:
                yield pending
            raise damaged(one_line(exc), tar.offset) from exc
        tar.members.clear()  # read once, in order: keep no list of every member
        if member is None:
            break
        if not member.isfile():
            continue
        key, ext = _split(member.name)
        if pending is not None and key != pending["key"]:
            yield pending
            pending = None
        if member.offset_data + member.size > total:
            if pending is not None:
                yield pending
            raise damaged(
                f"its member {member.name} is cut short ({max(0, total - member.offset_data)} of {member.size} bytes)",
                member.offset,
            )
        if pending is None:
            pending = {"key": key, "video": None}
        field = _TEXT_EXTENSIONS.get(ext.lower())
        if field is not None:
            f.seek(member.offset_data)
            pending[field] = f.read(member.size).decode("utf-8", "replace")
        elif "." + ext.rpartition(".")[2].lower() in video_extensions and pending["video"] is None:
            pending["video"] = (ext, member.offset_data, member.size)
    if pending is not None:
        yield pending
    # tarfile stops silently at a missing or unreadable header after the first member: only
    # the end-of-archive marker (zero blocks) ends a complete tar.
    f.seek(tar.offset)
    block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        raise damaged("it ends without the end-of-archive marker (truncated)", tar.offset)
    if block.count(0) != len(block):
        raise damaged("unreadable member header", tar.offset)


def expand_shards(spec: str | os.PathLike[str]) -> list[str]:
    """The shards a spec names, in order: a brace pattern (``shards/{00000..00999}.tar``,
    expanded with braceexpand), a folder (its ``.tar`` files, sorted; not recursive), or one tar;
    each local or a URL. A URL whose path ends in ``.tar`` is a shard (its existence is checked
    when it is read, not here: no request per shard); any other URL is a prefix, listed through
    :func:`vidfeat.video.remote.list_videos` (the ``.tar`` objects directly under it).

    Raises VidfeatError (one line) when a listed shard or folder does not exist, a folder holds
    no ``.tar``, or braceexpand is missing for a pattern (``pip install 'vidfeat[shards]'``).
    """
    spec = os.fspath(spec)
    if "{" in spec:
        try:
            from braceexpand import braceexpand
        except ImportError as exc:
            raise VidfeatError("brace patterns of shards need braceexpand: pip install 'vidfeat[shards]'") from exc
        items = list(braceexpand(spec))
    else:
        items = [spec]
    out: list[str] = []
    for item in items:
        if remote.is_url(item):
            if remote.safe_url(item).lower().endswith(".tar"):
                out.append(item)  # not checked here: a missing one fails in iter_samples
            else:
                out.extend(_list_remote_tars(item if item.endswith("/") else item + "/"))
            continue
        path = Path(item)
        if path.is_dir():
            tars = sorted(str(p) for p in path.iterdir() if p.suffix.lower() == ".tar" and p.is_file())
            if not tars:
                raise VidfeatError(f"no .tar shards in {item}")
            out.extend(tars)
        elif path.exists():
            out.append(item)
        else:
            raise VidfeatError(f"shard not found: {item}")
    return out


def _list_remote_tars(prefix: str) -> list[str]:
    """The ``.tar`` objects directly under a URL prefix, sorted."""
    found = remote.list_videos(prefix, extensions=frozenset({".tar"}), allow_empty=True)
    tars = [v.url for v in found if "/" not in v.name]
    if not tars:
        raise VidfeatError(f"no .tar shards under {remote.safe_url(prefix)}")
    return tars
