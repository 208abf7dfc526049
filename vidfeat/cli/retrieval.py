"""``vidfeat search``, ``index``, ``export``, ``plot`` and ``view``: using a finished file."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from .group import main


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
@click.option("--text", "text", metavar="WORDS",
              help="Query: words the clips' captions say (full-text search; needs captions in the file).")
def search_cmd(feats, video, at, clip, query_video, k, exclude_same_video, level, exact, as_json, text) -> None:
    """Cosine nearest clips (or videos) of a query clip, exact search streaming the file.

    Exact search by default; at clip level a FAISS index built by `vidfeat index` beside the
    file (feats.faiss, same model and rows) is used instead unless --exact. A query clip never
    matches itself. Results: video, start-end time, cosine similarity and the
    top class with its probability.

    --text finds the clips whose captions hold every one of the words (any order and case,
    accents ignored, English endings stemmed; never search syntax): those with the words as one
    phrase first, each group ranked by BM25. Its index is cached beside the file
    (feats.h5.text.sqlite, rebuilt when the file changes). Results: video, start-end time,
    score and the clip's caption text with the matched words marked.

    \b
    Examples:
      vidfeat search feats.h5 --video a/x.mp4 --at 12.5
      vidfeat search feats.h5 --clip 40 -k 5 --exclude-same-video
      vidfeat search feats.h5 --video a/x.mp4 --level video
      vidfeat search feats.h5 --query-video query.mp4 --json
      vidfeat search feats.h5 --text "tie a knot" -k 5
    """
    if text is not None:
        if video is not None or at is not None or clip is not None or query_video is not None:
            raise click.UsageError("give one query: --text WORDS searches the captions alone")
        if exclude_same_video or level != "clip" or exact:
            raise click.UsageError("--text ranks clips by their captions: drop --exclude-same-video, --level "
                                   "and --exact")  # fmt: skip
        _search_text(feats, text, k, as_json)
        return
    if sum(x is not None for x in (video, clip, query_video)) != 1:
        raise click.UsageError("give one query: --video PATH --at SECONDS, --clip ROW or --query-video FILE")
    if at is not None and video is None:
        raise click.UsageError("--at needs --video")
    if video is not None and at is None and level == "clip":
        raise click.UsageError("--video needs --at SECONDS (or --level video for the whole video)")
    with _open(feats) as f:
        query = None
        if query_video is not None:
            from ..pipeline.query import embed_query_video

            query = embed_query_video(f, query_video)
        index = None
        if level == "clip" and not exact:
            from ..retrieval.index import index_path, open_index_for

            if index_path(feats).is_file():
                index, note = open_index_for(f)
                if note:
                    click.echo(f"vidfeat: {note}", err=True)
        from ..retrieval.search import search

        hits = search(f, query=query, clip=clip, video=video, at=at, k=k, level=level,
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


def _search_text(feats: str, text: str, k: int, as_json: bool) -> None:
    from ..retrieval.text import search_text

    with _open(feats) as f:
        hits = search_text(f, text, k=k, notify=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"clips whose captions say {text!r} in {feats}")
    for col in ("rank", "video", "time (s)", "score", "captions"):
        table.add_column(col, no_wrap=col not in ("video", "captions"),
                         overflow="fold" if col in ("video", "captions") else "ellipsis")  # fmt: skip
    console = Console()
    for rank, h in enumerate(hits, 1):
        if console.is_terminal:  # matched words highlighted
            said = Text(h.text)
            for a, b in h.matches:
                said.stylize("bold reverse", a, b)
        else:  # a pipe or file shows no styles: matched words in [brackets]
            said = Text(h.marked("[", "]"))
        table.add_row(str(rank), h.video, f"{h.start_sec:.2f}-{h.end_sec:.2f}", f"{h.score:.3f}", said)
    console.print(table)
    if not hits:
        click.echo(f"no clip's captions hold all of {text!r}", err=True)


@main.command(name="export")
@click.argument("feats", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder, or a URL prefix (s3://bucket/export/, gs://...; vidfeat[cloud]): written to a "
                   "temporary local folder first, then uploaded file by file.")  # fmt: skip
@click.option("--format", "fmt",
              type=click.Choice(["npy-parquet", "npy", "parquet", "per-video", "sharded", "captions"]),
              default="npy-parquet", show_default=True,
              help="npy-parquet: clip-retrieval / embedding-reader shards; npy: one matrix + a table; parquet: "
              "one table with an embedding list column; per-video: one .npy per video + videos.csv "
              "(HowTo100M, UniVL); sharded: fairseq MMPT ShardedTensor shards (VideoCLIP); captions: the file's "
              "speech captions as HowTo100M's caption.json and UniVL's caption.pickle.")  # fmt: skip
@click.option("--shard-rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Rows a shard (npy-parquet).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Embedding dtype of the .npy files [default: the file's].")
@click.option("--table", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="Metadata table of --format npy.")
@click.option("--id", "id_rule", type=click.Choice(["stem", "path"]), default="stem", show_default=True,
              help="Video ids (per-video, sharded, captions): the file name without extension, or the relative path "
              "without extension (subfolders kept under features/).")  # fmt: skip
@click.option("--suffix", default=".npy", show_default=True, metavar="TEXT",
              help="Feature file ending (per-video); .mp4.npy gives HowTo100M's S3D feature names.")
@click.option("--shard-videos", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Videos a shard (sharded).")
@click.option("--prefix", default="train", show_default=True, metavar="TEXT",
              help="Shard file prefix (sharded): <prefix>_<k>_data.npy; MMPT reads train and val.")
def export_cmd(feats, out_dir, fmt, shard_rows, dtype, table, id_rule, suffix, shard_videos, prefix) -> None:
    """Write the clips in a layout other tools read, with manifest.json and README.md.

    npy-parquet, npy and parquet need pyarrow (vidfeat[export]). Their metadata rows (aligned with
    the embedding rows): row, video, clip_index, start_sec, end_sec, top_class, score, and text
    when the file has per-clip captions. per-video and sharded leave out videos without clips;
    captions writes only the videos with captions (and needs captions in the file).

    \b
    Examples:
      vidfeat export feats.h5 -o out/
      vidfeat export feats.h5 -o out/ --shard-rows 50000 --dtype float32
      vidfeat export feats.h5 -o out/ --format npy --table csv
      vidfeat export feats.h5 -o out/ --format parquet
      vidfeat export feats.h5 -o howto/ --format per-video --suffix .mp4.npy
      vidfeat export feats.h5 -o mmpt/ --format sharded --shard-videos 4096 --prefix train
      vidfeat export feats.h5 -o howto/ --format captions
      vidfeat export feats.h5 -o s3://bucket/export/
    """
    import tempfile

    from ..retrieval.export import MANIFEST, export
    from ..video.remote import is_url, safe_url, upload_folder

    remote = is_url(out_dir)
    with tempfile.TemporaryDirectory(prefix="vidfeat-export-") if remote else contextlib.nullcontext(out_dir) as local:
        with _open(feats) as f:
            written = export(f, local, format=fmt, shard_rows=shard_rows, dtype=dtype, table=table, ids=id_rule,
                             suffix=suffix, shard_videos=shard_videos, prefix=prefix)  # fmt: skip
            layout = json.loads((Path(local) / MANIFEST).read_text(encoding="utf-8"))["layout"]
        if remote:
            written = upload_folder(local, out_dir)
            out_dir = safe_url(out_dir)
    unit = "captions" if fmt == "captions" else "clips"
    left_out = layout["videos_without_captions" if fmt == "captions" else "videos_without_clips"]
    note = ""
    if left_out and fmt in ("per-video", "sharded", "captions"):
        note = f"; {left_out} video{'' if left_out == 1 else 's'} without {unit} left out"
    click.echo(f"wrote {layout['rows']} {unit} of {layout['videos']} videos to {out_dir} "
               f"({len(written)} files){note}")  # fmt: skip


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
    from ..retrieval.search import clip_at

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
    from ..retrieval.plot import plot_timeline

    with _open(feats) as f:
        out = plot_timeline(f, video, output, query=_query_row(f, query), top=top)
    click.echo(f"wrote {out}")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _memory_size(ctx, param, value: str) -> int:
    """``4G``, ``512M``, ``1.5GiB`` or a byte count -> bytes."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{value!r} is not a memory size: give e.g. 4G, 512M or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


@main.command(name="index")
@click.argument("feats", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Index file [default: beside FEATS, feats.faiss, where search finds it].")
@click.option("--factory", default=None, metavar="STRING",
              help='FAISS index_factory string, e.g. "IVF4096,PQ64" [default: the one that fits --max-memory].')
@click.option("--max-memory", default="4G", show_default=True, metavar="SIZE", callback=_memory_size,
              help="Memory the index (and its training sample) may take, e.g. 16G: picks the factory and "
                   "caps the training rows.")  # fmt: skip
@click.option("--gpu/--no-gpu", default=None,
              help="Train the index's k-means on the GPUs (needs faiss-gpu) [default: when FAISS sees one].")
def index_cmd(feats, output, factory, max_memory, gpu) -> None:
    """Build a FAISS index of the clip embeddings (needs vidfeat[faiss]).

    The default factory fits --max-memory (FAISS's guidelines): Flat up to 50,000 clips,
    IVF{~8 sqrt(N)},Flat up to 1M, then IVF{~4 sqrt(N), at most 65536}[_HNSW32],PQ{m} with the
    largest m (bytes a vector: 64, 48, 32, 16, 8) that fits. Training reads a capped sample
    (30-256 rows a list, at most 1M rows), vectors are added in blocks, and search memory-maps
    the index. With faiss-gpu and a GPU, the training's k-means runs on the GPUs.

    \b
    Examples:
      vidfeat index feats.h5
      vidfeat index feats.h5 --max-memory 16G
      vidfeat index feats.h5 -o feats.faiss --factory "IVF4096,PQ64"
      vidfeat index feats.h5 --max-memory 16G --gpu
    """
    from ..retrieval.index import build_index

    with _open(feats) as f:
        out = build_index(f, output, factory=factory, max_memory=max_memory, gpu=gpu)
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
    from ..retrieval.view import serve

    serve(feats, videos, port=port, echo=lambda line, err: click.echo(line, err=err))
