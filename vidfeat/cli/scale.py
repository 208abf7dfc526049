"""``vidfeat merge``, and the scale-out options of ``vidfeat extract`` (``--shard``, ``--gpus``, ``--ray``)."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main


def _parse_shard(ctx, param, value):
    if value is None:
        return None
    from ..pipeline.shard import parse_shard

    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def scale_options(f):
    """The extract command's scale-out options (parameters ``shard``, ``gpus``, ``ray_address``)."""
    f = click.option(
        "--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
        help="Hand the videos out to Ray actors, one per GPU (pip install 'vidfeat[ray]'); ADDRESS of a running "
             "cluster, or none for RAY_ADDRESS / a local one. Put it after the inputs or write --ray=ADDRESS.",
    )(f)  # fmt: skip
    f = click.option(
        "--gpus", type=click.IntRange(min=1),
        help="Run G ranks on this machine (torch.distributed.run), one GPU each; rank 0 writes the final file.",
    )(f)  # fmt: skip
    f = click.option(
        "--shard", callback=_parse_shard, metavar="I/N",
        help="Extract only shard I of N (by a hash of each video's name) into OUTPUT.shards/; "
             "default: from torchrun or SLURM variables. `vidfeat merge` joins the shards.",
    )(f)  # fmt: skip
    return f


@main.command(name="merge")
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("shards", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "folder", type=click.Path(file_okay=False, path_type=Path),
              help="Merge every shard in this folder (checked complete: all N shards present).")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT even if it was made with other settings.")
def merge_cmd(output: Path, shards: tuple[Path, ...], folder: Path | None, overwrite: bool) -> None:
    """Merge the shard files of a sharded extraction into one final file OUTPUT.

    Refuses shards made with another model, weights or clip setting, a missing shard, and a
    video present in two shards. Streams: memory stays small whatever the size.

    \b
    Examples:
      vidfeat merge feats.h5 --from feats.h5.shards/
      vidfeat merge feats.h5 feats.h5.shards/*.h5
    """
    from ..store.merge import merge_shards, shard_files

    paths = list(shards)
    if folder is not None:
        paths += shard_files(folder)
    if not paths:
        raise click.UsageError("give the shard files, or --from FOLDER")
    counts = merge_shards(output, paths, replace=overwrite)
    click.echo(f"{output}: {len(paths)} shards, {counts['videos']} videos, {counts['clips']} clips")
