"""``vidfeat captions``: speech captions into a finished feature file."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main

SHOWN_WARNINGS = 20  # warning lines printed; the rest are counted


def echo_caption_report(report) -> None:
    """The summary of :func:`vidfeat.captions.attach.add_captions` on stdout, its first warnings
    and the counts of bad cases by kind on stderr."""
    for line in report.warnings[:SHOWN_WARNINGS]:
        click.echo(f"vidfeat: warning: {line}", err=True)
    more = len(report.warnings) - SHOWN_WARNINGS + report.warnings_left_out
    if more > 0:
        click.echo(f"vidfeat: warning: ... and {more} more", err=True)
    if report.counts:
        kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(report.counts.items()))
        click.echo(f"vidfeat: caption problems: {kinds}", err=True)
    which = "videos this run added" if report.new_only else "videos"
    click.echo(f"{report.output}: {report.captions} captions for {report.captioned_videos} of {report.videos} "
               f"{which}; {report.clips_with_text} {'of their ' if report.new_only else ''}clips have text")  # fmt: skip


@main.command(name="captions")
@click.argument("feats", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("source", required=False, type=click.Path(path_type=Path))
def captions_cmd(feats: Path, source: Path | None) -> None:
    """Add speech captions to a finished FEATS file: every clip gets the text said during it.

    SOURCE is HowTo100M's caption.json or raw_caption.json ({id: {start, end, text}}), a folder
    of <id>.csv files (start,end,text), or a .vtt/.srt file or folder of them; without SOURCE,
    the subtitle sidecars beside each video under the file's root (name.vtt, name.en.vtt,
    name.srt, as yt-dlp writes them). Videos are matched by id: the file name without its
    extension. YouTube's rolling auto-captions are collapsed so each line appears once.

    Rewrites FEATS crash-safely (a kill leaves the old file) and replaces any captions it had;
    no re-extraction. Bad caption input is a warning, never an error. Needs
    pip install 'vidfeat[captions]' for .vtt/.srt.

    \b
    Examples:
      vidfeat captions feats.h5 caption.json
      vidfeat captions feats.h5 howto100m_captions/
      vidfeat captions feats.h5            # name.vtt / name.en.vtt / name.srt beside the videos
    """
    from ..captions.attach import add_captions

    echo_caption_report(add_captions(feats, source))
