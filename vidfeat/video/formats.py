"""The file extensions taken for videos when a folder, a URL prefix or a tar shard is searched."""

from __future__ import annotations

__all__ = ["VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .webm .avi .mov .mpg .mpeg .m2v .ts .mts .m2ts .flv .wmv .asf .3gp .3g2 .ogv .vob .mxf .dv .y4m".split()
)
