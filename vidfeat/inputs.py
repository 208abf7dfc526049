"""Finding the videos of a run and naming them.

Each video is named by its path relative to the run's *input root*: the common folder of the
inputs (a folder input counts as itself, a file as its parent folder). One folder ``videos/``
gives ``a/x.mp4``; ``videos/a videos/b`` give ``a/x.mp4`` and ``b/x.mp4``, so same-named files in
different folders never collide. Names use ``/`` on every platform. The same command always
gives the same names, which is what resuming keys on (with the file's size and mtime).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import VidfeatError

__all__ = ["VIDEO_EXTENSIONS", "VideoFile", "discover", "read_list"]

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .mpg .mpeg .m2v .ts .mts .m2ts .flv .wmv .asf .3gp .3g2 .ogv .vob .mxf .dv .y4m".split()
)


@dataclass(frozen=True)
class VideoFile:
    path: Path  # as given or found (absolute or relative to the working directory)
    name: str  # relative to the input root, '/' separated: the video's key in the output


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


def discover(inputs: list[Path]) -> tuple[list[VideoFile], Path]:
    """Expand folders (recursively, video extensions in any case) and name every video.

    Files given explicitly are taken whatever their extension (they may be broken: that is
    reported per video later, not here). Returns the videos sorted by name, and the input root.
    Raises VidfeatError for an input that does not exist or when nothing is found.
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
    if not files:
        raise VidfeatError("no videos found in " + ", ".join(str(i) for i in inputs))
    root = Path(os.path.commonpath(anchors))
    videos: dict[str, VideoFile] = {}
    for f in files:
        name = Path(os.path.relpath(os.path.abspath(f), root)).as_posix()
        # Undecodable bytes in a file name (surrogate escapes) become \xNN so the name is UTF-8.
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        videos.setdefault(name, VideoFile(path=f, name=name))  # the same file given twice counts once
    return sorted(videos.values(), key=lambda v: v.name), root
