"""``vidfeat search``, ``vidfeat export`` and ``vidfeat plot``: using a finished file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import main


def _open(path: str):
    from ..store import open_features

    return open_features(path)


@main.command(name="search")
@click.argument("feats", type=click.Path(dir_okay=False))
@click.option("--video", "video", metavar="PATH", help="Query: a video of the file (its path as stored) ...")
@click.option("--at", "at", type=float, metavar="SECONDS", help="... and the time of the query clip in it.")
@click.option("--clip", "clip", type=int, metavar="ROW", help="Query: a row of /clips.")
@click.option("--query-video", "query_video", type=click.Path(dir_okay=False), metavar="FILE",
              help="Query: a video file, extracted with the file's own model and settings (needs torch).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results.")
@click.option("--exclude-same-video", is_flag=True, help="Drop the clips of the query's own video.")
@click.option("--level", type=click.Choice(["clip", "video"]), default="clip", show_default=True,
              help="Rank clips, or videos by their mean embedding.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def search_cmd(feats, video, at, clip, query_video, k, exclude_same_video, level, as_json) -> None:
    """Cosine nearest clips (or videos) of a query clip, exact search streaming the file.

    A query clip never matches itself. Results: video, start-end time, cosine similarity and the
    top class with its probability.

    \b
    Examples:
      vidfeat search feats.h5 --video a/x.mp4 --at 12.5
      vidfeat search feats.h5 --clip 40 -k 5 --exclude-same-video
      vidfeat search feats.h5 --video a/x.mp4 --level video
      vidfeat search feats.h5 --query-video query.mp4 --json
    """
    if sum(x is not None for x in (video, clip, query_video)) != 1:
        raise click.UsageError("give one query: --video PATH --at SECONDS, --clip ROW or --query-video FILE")
    if at is not None and video is None:
        raise click.UsageError("--at needs --video")
    if video is not None and at is None and level == "clip":
        raise click.UsageError("--video needs --at SECONDS (or --level video for the whole video)")
    with _open(feats) as f:
        query = None
        if query_video is not None:
            from ..search import embed_query_video

            query = embed_query_video(f, query_video)
        hits = f.search(query=query, clip=clip, video=video, at=at, k=k, level=level,
                        exclude_same_video=exclude_same_video)  # fmt: skip
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"nearest {'clips' if level == 'clip' else 'videos'} in {feats}")
    for col in ("rank", "video", "time (s)", "cosine", "top class"):
        table.add_column(col, no_wrap=col != "video")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), h.video, f"{h.start_sec:.2f}-{h.end_sec:.2f}", f"{h.similarity:.3f}",
                      f"{h.top_class} ({h.score:.0%})")  # fmt: skip
    Console().print(table)


@main.command(name="export")
@click.argument("feats", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "fmt", type=click.Choice(["npy-parquet", "npy", "parquet"]), default="npy-parquet",
              show_default=True, help="npy-parquet: clip-retrieval / embedding-reader shards; npy: one matrix + "
              "a table; parquet: one table with an embedding list column.")  # fmt: skip
@click.option("--shard-rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Rows a shard (npy-parquet).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Embedding dtype of the .npy files [default: the file's].")
@click.option("--table", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="Metadata table of --format npy.")
def export_cmd(feats, out_dir, fmt, shard_rows, dtype, table) -> None:
    """Write the clips in a layout other tools read (needs pyarrow: vidfeat[export]).

    Metadata rows (aligned with the embedding rows): row, video, clip_index, start_sec, end_sec,
    top_class, score.

    \b
    Examples:
      vidfeat export feats.h5 -o out/
      vidfeat export feats.h5 -o out/ --shard-rows 50000 --dtype float32
      vidfeat export feats.h5 -o out/ --format npy --table csv
      vidfeat export feats.h5 -o out/ --format parquet
    """
    from ..export import export

    with _open(feats) as f:
        written = export(f, out_dir, format=fmt, shard_rows=shard_rows, dtype=dtype, table=table)
        n = len(f)
    click.echo(f"wrote {n} clips to {out_dir} ({len(written)} files)")
