"""Finding the videos of a run and naming them.

Each video is named by its path relative to the output's *input root*, ``/`` separated on every
platform: the video's key in the output file, which resuming (with the file's size and mtime)
and sharding (a hash of the name) rely on. The root is chosen once, when the output is created:
``--root`` or, by default, the common folder of that first run's inputs (a folder input counts
as itself, a file as its parent folder). It is stored in the file (the ``root`` attribute) and
every rerun names its videos against it, whichever other videos it lists, so names never depend
on the rest of the run. An input outside the stored root is refused. The file's row for a video
is therefore ``os.path.join(root, name)``.

One folder ``videos/`` gives ``a/x.mp4``; ``videos/a videos/b`` give ``a/x.mp4`` and ``b/x.mp4``,
so same-named files in different folders never collide.

Videos read in place (:mod:`vidfeat.video.remote`, :mod:`vidfeat.video.shards`):

* a URL (``s3://bucket/prefix/``, ``gs://...``, ``https://host/v.mp4``) names a prefix, listed
  recursively, or one object; its videos are named by their URL relative to the root, which is
  then a URL prefix (by default the input prefix, or an object's folder). Local videos and URLs
  cannot share a run (one root names them all).
* a webdataset shard spec: a path or URL ending in ``.tar``, a brace pattern
  (``shards/{00000..00999}.tar``) or a local folder holding ``.tar`` files (directly; such a
  folder is taken as shards, its videos are not searched). Every sample holding a video member
  is a video named ``<shard file>/<key><ext>`` whatever the root. The shards are listed here,
  reading each one's member headers (local tars and remote ones alike; remote shards are
  listed 8 at a time). A damaged shard gives its complete samples, then one placeholder
  :class:`VideoFile` named ``<shard file>/*`` whose ``error`` says where the shard breaks:
  extraction records it as failed.

Such a :class:`VideoFile` carries ``source``, plain picklable data (a :class:`~vidfeat.video.remote.RemoteVideo`
or a :class:`~vidfeat.video.shards.Sample`) whose ``open_video()`` gives a seekable file: the
decode worker opens it, never the process that lists.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import VidfeatError
from .formats import VIDEO_EXTENSIONS

__all__ = ["Inputs", "VideoFile", "discover", "identity_mtime", "is_shard_spec", "read_list"]

LIST_SHARDS_AT_ONCE = 8
"""Shards whose member headers are read at the same time while listing (threads: I/O bound)."""


@dataclass(frozen=True, slots=True)  # slots: a run holds one per input video (HowTo100M: 1.2M)
class VideoFile:
    path: Path | str  # as given or found (absolute or relative to the working directory); a URL or shard: printable
    name: str  # relative to the input root, '/' separated: the video's key in the output
    source: object = None  # None: a local file; else a RemoteVideo or shards.Sample (opened by its open_video())
    size: int = 0  # bytes, for a video with a source (a local file is stat'ed when the run is planned)
    identity: str = ""  # with ``size``, tells a changed object from the same one (see identity_mtime)
    group: str | None = None  # a shard's name: videos of one group are decoded by one worker, in one process
    meta: str = ""  # a shard sample's .json text, kept in the output (/videos/meta)
    caption: str | None = None  # a shard sample's .txt text: a caption spanning the whole video
    error: str = ""  # a placeholder for a damaged shard's unread samples: recorded as failed with this reason

    @property
    def local(self) -> bool:
        return self.source is None and not self.error


def identity_mtime(identity: str) -> float:
    """The resume key's ``mtime`` of a video read in place: a 52-bit hash of its identity (an
    ETag, a modification time, a tar member's place), exact as a float64; 0.0 for none."""
    if not identity:
        return 0.0
    return float(int.from_bytes(hashlib.sha1(identity.encode("utf-8")).digest()[:7], "big") >> 4)


class Inputs(NamedTuple):
    """The videos of a run, sorted by name, and the absolute root their names are relative to.
    A listed path that does not exist is kept (extraction records it as failed, 'not found')."""

    videos: list[VideoFile]
    root: Path | str  # a URL prefix for URL inputs


def read_list(list_file: str) -> list[Path | str]:
    """Paths from a list file, one per line (``-`` reads stdin); blank lines and ``#`` comments skipped.
    Relative paths are relative to the list file's folder (to the working directory for stdin);
    URLs are kept as they are (strings)."""
    if list_file == "-":
        lines, base = sys.stdin.read().splitlines(), Path(".")
    else:
        try:
            lines, base = Path(list_file).read_text(encoding="utf-8").splitlines(), Path(list_file).parent
        except OSError as exc:
            raise VidfeatError(f"cannot read the list file {list_file}: {exc.strerror or exc}") from exc
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            if _is_url(line):
                out.append(line)
                continue
            p = Path(line)
            out.append(p if p.is_absolute() else base / p)
    return out


def _walk(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=None):
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append(os.path.join(dirpath, name))
    return found


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _is_url(item: object) -> bool:
    from .remote import is_url

    return is_url(item)


def is_shard_spec(item: str | os.PathLike[str]) -> bool:
    """Whether an input names webdataset shards: a path or URL ending in ``.tar`` (any case), a
    brace pattern, or a local folder holding ``.tar`` files directly."""
    text = os.fspath(item)
    if _is_url(text):
        from .remote import safe_url

        return "{" in text or safe_url(text).lower().endswith(".tar")
    if "{" in text and not os.path.exists(text):
        return True
    if os.path.isdir(text):  # os.path: a --list of a million entries makes no Path objects
        try:
            return any(p.suffix.lower() == ".tar" and p.is_file() for p in Path(text).iterdir())
        except OSError:
            return False
    return text.lower().endswith(".tar")


def _shard_videos(specs: list[str]) -> list[VideoFile]:
    """The videos of every shard ``specs`` names (see the module docstring)."""
    from .shards import ShardError, expand_shards, iter_samples, shard_name

    shards = [shard for spec in specs for shard in expand_shards(spec)]
    owners: dict[str, str] = {}
    for shard in shards:
        name = shard_name(shard)
        other = owners.setdefault(name, shard)
        if other != shard:
            raise VidfeatError(
                f"two shards are named {name} ({other} and {shard}): videos are named <shard file>/<key>, "
                "so extract them into separate outputs"
            )

    def listed(shard: str) -> list[VideoFile]:
        name = shard_name(shard)
        out = []
        try:
            for s in iter_samples(shard, name):
                out.append(VideoFile(path=f"{s.shard}:{s.key}{s.video_ext}", name=s.video_name, source=s, size=s.size,
                                     identity=f"tar:{s.shard_size}:{s.offset}", group=name, meta=s.json_text or "",
                                     caption=s.txt_text))  # fmt: skip
        except ShardError as exc:
            out.append(VideoFile(path=shard, name=exc.row_name, group=name, error=str(exc), identity=str(exc)))
        return out

    if not shards:
        return []
    with ThreadPoolExecutor(min(LIST_SHARDS_AT_ONCE, len(shards)), thread_name_prefix="vidfeat-list") as pool:
        return [v for found in pool.map(listed, shards) for v in found]


def _remote_videos(urls: list[str], root: str | None) -> tuple[list[VideoFile], str]:
    """The videos at ``urls`` named against ``root`` (None: the common prefix of the inputs)."""
    from .remote import list_videos, safe_url

    if root is None:
        anchors = [u.rstrip("/") if u.endswith("/") else posixpath.dirname(safe_url(u)) for u in urls]
        if len(urls) == 1 and urls[0].endswith("/"):
            root = urls[0]
        else:
            root = _common_url(anchors)
    videos = []
    for url in urls:
        for v in list_videos(url, root=root):
            videos.append(VideoFile(path=v.safe_url, name=v.name, source=v, size=v.size or 0, identity=v.identity))
    return videos, root.rstrip("/") + "/"


def _common_url(anchors: list[str]) -> str:
    """The longest URL prefix (whole path segments) that every anchor lies under, with its ``/``."""
    parts = [a.rstrip("/").split("/") for a in anchors]
    common = []
    for segment in zip(*parts):
        if len(set(segment)) != 1:
            break
        common.append(segment[0])
    if len(common) < 3:  # scheme:, "", host
        raise VidfeatError(f"the URLs {anchors[0]} ... lie on different hosts or buckets: give each its own output")
    return "/".join(common) + "/"


def discover(inputs: list[Path | str], listed: list[Path | str] = (), root: str | os.PathLike[str] | None = None) -> Inputs:
    """Expand folders (recursively, video extensions in any case) and name every video.

    ``inputs`` are folders or files (one that does not exist is an error), URLs and shard specs
    (see the module docstring); ``listed`` are the entries of a ``--list`` (a path that does not
    exist is kept, to be recorded as failed; only when none exists is it an error; a URL or a
    ``.tar`` there is taken as an input). Files given explicitly are taken whatever their
    extension (they may be broken: that is reported per video later, not here). ``root``: the
    folder (or URL prefix) names are relative to (None: the common folder of the inputs); an
    input outside it is an error. Shard videos are named by their shard whatever the root.
    """
    shard_specs = [os.fspath(i) for i in [*inputs, *listed] if is_shard_spec(i)]
    urls = [os.fspath(i) for i in [*inputs, *listed] if _is_url(i) and not is_shard_spec(i)]
    inputs = [Path(i) for i in inputs if not _is_url(i) and not is_shard_spec(i)]
    listed = [os.fspath(i) for i in listed if not _is_url(i) and not is_shard_spec(i)]  # str: one per video
    if urls and (inputs or listed):
        raise VidfeatError("local videos and URLs cannot share an output (one root names them all): extract them into separate outputs")
    extra = _shard_videos(shard_specs)
    if urls:
        remote, url_root = _remote_videos(urls, None if root is None else os.fspath(root))
        extra += remote
    if not inputs and not listed:
        if urls:
            base: Path | str = url_root
        elif root is not None:
            base = os.fspath(root) if _is_url(os.fspath(root)) else Path(os.path.abspath(root))
        else:
            first = shard_specs[0]
            base = first.rsplit("/", 1)[0] + "/" if _is_url(first) else Path(os.path.dirname(os.path.abspath(first)))
        return Inputs(videos=_unique(extra), root=base)
    found = _discover_local(inputs, listed, root)
    return Inputs(videos=_unique([*found.videos, *extra]), root=found.root)


def _unique(videos: list[VideoFile]) -> list[VideoFile]:
    """``videos`` sorted by name, each name once (the same file given twice counts once)."""
    out: dict[str, VideoFile] = {}
    for v in videos:
        out.setdefault(v.name, v)
    return sorted(out.values(), key=lambda v: v.name)


def _discover_local(inputs: list[Path], listed: list[str], root: str | os.PathLike[str] | None) -> Inputs:
    files: list[str | Path] = []
    anchors: set[str] = set()  # the folders the videos lie in (few, however many videos)
    for item in inputs:
        if item.is_dir():
            files.extend(_walk(item))
            anchors.add(os.path.abspath(item))
        elif item.exists() or item.is_symlink():
            files.append(item)
            anchors.add(os.path.dirname(os.path.abspath(item)))
        else:
            raise VidfeatError(f"input not found: {item}")
    if listed and not any(os.path.lexists(p) for p in listed):
        raise VidfeatError(f"none of the {len(listed)} listed videos exists (the first: {listed[0]})")
    for item in listed:
        files.append(item)
        anchors.add(os.path.dirname(os.path.abspath(item)))
    if not files:
        raise VidfeatError("no videos found in " + ", ".join(str(i) for i in inputs))
    if root is None:
        base = os.path.commonpath(anchors)
    else:
        base = os.path.abspath(root)
        outside = next((f for f in files if not _inside(os.path.abspath(f), base)), None)
        if outside is not None:
            raise VidfeatError(
                f"{outside} lies outside the input root {base}, which names the videos of this output: "
                "give videos under it, or start another output (-o, or --overwrite) with --root set to a folder holding all"
            )
    videos: dict[str, VideoFile] = {}
    for f in files:
        # os.path, not pathlib: a Path interns every part of the name in a table that only grows
        name = os.path.relpath(os.path.abspath(f), base).replace(os.sep, "/")
        # Undecodable bytes in a file name (surrogate escapes) become \xNN so the name is UTF-8.
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        # the path as a str: a Path object costs about 300 bytes more a video
        videos.setdefault(name, VideoFile(path=os.fspath(f), name=name))  # the same file given twice counts once
    return Inputs(videos=sorted(videos.values(), key=lambda v: v.name), root=Path(base))
