"""``vidfeat search``, ``index``, ``export``, ``plot`` and ``view``: using a finished file."""

from __future__ import annotations

import json

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
@click.option("--exact", is_flag=True, help="Exact search even when a FAISS index (feats.faiss) is beside the file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def search_cmd(feats, video, at, clip, query_video, k, exclude_same_video, level, exact, as_json) -> None:
    """Cosine nearest clips (or videos) of a query clip, exact search streaming the file.

    Exact search by default; at clip level a FAISS index built by `vidfeat index` beside the
    file (feats.faiss, same model and rows) is used instead unless --exact. A query clip never
    matches itself. Results: video, start-end time, cosine similarity and the
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
        index = None
        if level == "clip" and not exact:
            from ..index import index_path, open_index_for

            if index_path(feats).is_file():
                index = open_index_for(f)
        hits = f.search(query=query, clip=clip, video=video, at=at, k=k, level=level,
                        exclude_same_video=exclude_same_video, index=index)  # fmt: skip
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"nearest {'clips' if level == 'clip' else 'videos'} in {feats}")
    for col in ("rank", "video", "time (s)", "cosine", "top class"):
        # a long path folds onto more lines instead of being cut (a pipe gets 80 columns)
        table.add_column(col, no_wrap=col != "video", overflow="fold" if col == "video" else "ellipsis")
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


def _query_row(f, query: str | None) -> int | None:
    """``--query``: a /clips row, or ``PATH@SECONDS`` (the clip of that video at that time)."""
    if query is None:
        return None
    if query.lstrip("-").isdigit():
        return int(query)
    path, sep, at = query.rpartition("@")
    try:
        seconds = float(at)
    except ValueError:
        seconds = None
    if not sep or seconds is None:
        raise click.UsageError(f"--query {query!r}: give a clip row or PATH@SECONDS")
    from ..search import clip_at

    return clip_at(f, path, seconds)


@main.command(name="plot")
@click.argument("feats", type=click.Path(dir_okay=False))
@click.option("--video", required=True, metavar="PATH", help="The video (its path as stored in the file).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Image file (.png, .svg, .pdf).")
@click.option("--query", metavar="ROW|PATH@SECONDS", help="Add the similarity of each clip to this clip.")
@click.option("--top", type=click.IntRange(min=1), default=4, show_default=True, help="Classes drawn over time.")
def plot_cmd(feats, video, output, query, top) -> None:
    """Plot a video's top classes over time (clip spans on the x axis; needs vidfeat[plot]).

    \b
    Examples:
      vidfeat plot feats.h5 --video a/x.mp4 -o timeline.png
      vidfeat plot feats.h5 --video a/x.mp4 -o timeline.png --query b/y.mp4@30
      vidfeat plot feats.h5 --video a/x.mp4 -o timeline.svg --query 120 --top 6
    """
    from ..plot import plot_timeline

    with _open(feats) as f:
        out = plot_timeline(f, video, output, query=_query_row(f, query), top=top)
    click.echo(f"wrote {out}")


@main.command(name="index")
@click.argument("feats", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Index file [default: beside FEATS, feats.faiss, where search finds it].")
@click.option("--factory", default=None, metavar="STRING",
              help='FAISS index_factory string, e.g. "IVF4096,PQ64" [default: by collection size].')
def index_cmd(feats, output, factory) -> None:
    """Build a FAISS index of the clip embeddings (needs vidfeat[faiss]).

    Default by size (FAISS's guidelines): Flat up to 50,000 clips, IVF{~8 sqrt(N)},Flat up to 1M,
    IVF65536_HNSW32,PQ64 up to 10M, IVF262144_HNSW32,PQ64 beyond.

    \b
    Examples:
      vidfeat index feats.h5
      vidfeat index feats.h5 -o feats.faiss --factory "IVF4096,PQ64"
    """
    from ..index import build_index

    with _open(feats) as f:
        out = build_index(f, output, factory=factory)
        factory = json.loads(out.with_name(out.name + ".json").read_text())["factory"]
    click.echo(f"wrote {out} ({factory})")


@main.command(name="view")
@click.argument("feats", type=click.Path(dir_okay=False))
@click.option("--videos", type=click.Path(file_okay=False), default=None,
              help="Folder the file's video paths are relative to [default: FEATS's folder].")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port on 127.0.0.1.")
def view_cmd(feats, videos, port) -> None:
    """Browse nearest clips in a local web page (127.0.0.1): pick a clip, see its nearest clips
    as thumbnails, play any of them from its start time, with each video's timeline plot.

    \b
    Examples:
      vidfeat view feats.h5 --videos videos/
      vidfeat view demo_out/feats.h5 --videos demo_out/videos --port 9000
    """
    from ..view import serve

    serve(feats, videos, port=port)
