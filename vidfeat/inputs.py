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
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import VidfeatError

__all__ = ["VIDEO_EXTENSIONS", "Inputs", "VideoFile", "discover", "read_list"]

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .mpg .mpeg .m2v .ts .mts .m2ts .flv .wmv .asf .3gp .3g2 .ogv .vob .mxf .dv .y4m".split()
)


@dataclass(frozen=True)
class VideoFile:
    path: Path  # as given or found (absolute or relative to the working directory)
    name: str  # relative to the input root, '/' separated: the video's key in the output


class Inputs(NamedTuple):
    """The videos of a run, sorted by name, and the absolute root their names are relative to.
    A listed path that does not exist is kept (extraction records it as failed, 'not found')."""

    videos: list[VideoFile]
    root: Path


def read_list(list_file: str) -> list[Path]:
    """Paths from a list file, one per line (``-`` reads stdin); blank lines and ``#`` comments skipped.
    Relative paths are relative to the list file's folder (to the working directory for stdin)."""
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
            p = Path(line)
            out.append(p if p.is_absolute() else base / p)
    return out


def _walk(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=None):
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return found


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def discover(inputs: list[Path], listed: list[Path] = (), root: str | os.PathLike[str] | None = None) -> Inputs:
    """Expand folders (recursively, video extensions in any case) and name every video.

    ``inputs`` are folders or files (one that does not exist is an error); ``listed`` are the
    paths of a ``--list`` (one that does not exist is kept, to be recorded as failed; only when
    none exists is it an error). Files given explicitly are taken whatever their extension (they
    may be broken: that is reported per video later, not here). ``root``: the folder names are
    relative to (None: the common folder of the inputs); an input outside it is an error.
    """
    files: list[Path] = []
    anchors: list[str] = []
    for item in inputs:
        if item.is_dir():
            files.extend(_walk(item))
            anchors.append(os.path.abspath(item))
        elif item.exists() or item.is_symlink():
            files.append(item)
            anchors.append(os.path.dirname(os.path.abspath(item)))
        else:
            raise VidfeatError(f"input not found: {item}")
    if listed and not any(p.exists() or p.is_symlink() for p in listed):
        raise VidfeatError(f"none of the {len(listed)} listed videos exists (the first: {listed[0]})")
    for item in listed:
        files.append(item)
        anchors.append(os.path.dirname(os.path.abspath(item)))
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
        name = Path(os.path.relpath(os.path.abspath(f), base)).as_posix()
        # Undecodable bytes in a file name (surrogate escapes) become \xNN so the name is UTF-8.
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        videos.setdefault(name, VideoFile(path=f, name=name))  # the same file given twice counts once
    return Inputs(videos=sorted(videos.values(), key=lambda v: v.name), root=Path(base))
