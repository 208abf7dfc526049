"""``vidfeat models`` and ``vidfeat convert``: the model cards and checkpoint conversion.

Only the card reader is imported here: ``vidfeat models`` needs no torch, and ``convert``
imports the weights code when it runs.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

from ..model.cards import bundled_cards, read_class_file, vidfeat_home
from .group import main


def _rows() -> list[dict]:
    rows = []
    for card in bundled_cards():
        local = card.weights_path()
        rows.append(
            {
                "name": card.name,
                "aliases": card.aliases,
                "attention": card.config.attention_type,
                "frames": card.preprocess.num_frames,
                "fps": card.preprocess.fps,
                "size": card.preprocess.crop_size,
                "classes": card.config.num_classes,
                "present": local is not None,
                "weights_path": str(local or vidfeat_home() / card.weights.file),
                "url": card.weights.url,
                "hf_hub_id": card.weights.hf_hub_id,
            }
        )
    return rows


def _status(row: dict) -> str:
    if row["present"]:
        return "here"
    return f"hub: {row['hf_hub_id']}" if row["hf_hub_id"] else "download to the path"


@main.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def models_list(as_json: bool) -> None:
    """List the bundled model cards and where their weights are (or go, once downloaded).

    A card's weights are looked up beside the card, then in $VIDFEAT_HOME (default
    ~/.cache/vidfeat); the `weights` column is that file. In a pipe the table is plain
    tab-separated text with full values.

    \b
    Examples:
      vidfeat models
      vidfeat models --json
      vidfeat models | cut -f1,7
    """
    rows = _rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "aliases", "frames x size", "fps", "classes", "status", "weights")
    cells = [
        (r["name"], ", ".join(r["aliases"]), f"{r['frames']} x {r['size']}", f"{r['fps']:g}", str(r["classes"]),
         _status(r), r["weights_path"])
        for r in rows
    ]  # fmt: skip
    if not sys.stdout.isatty():
        for line in (header, *cells):
            click.echo("\t".join(line))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vidfeat models")
    for col in header:  # wrapped inside its cell when the terminal is narrow, never cut
        table.add_column(col, overflow="fold")
    for line in cells:
        table.add_row(*line)
    Console().print(table)


@main.command(name="convert")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Name written into the card (default: the source's).")
@click.option("--num-frames", type=click.IntRange(min=1), help="Resize the time embedding to this many frames.")
@click.option("--image-size", type=click.IntRange(min=1), help="Resize the position embedding to this input size.")
@click.option("--num-heads", type=click.IntRange(min=1),
              help="Attention heads of a checkpoint file no bundled card describes (its tensors do not tell; "
                   "default width / 64, announced).")  # fmt: skip
@click.option("--classes", "classes_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Class names, one per line, in head order (official .pyth files carry none).")  # fmt: skip
def convert(src: str, dst: Path, name: str | None, num_frames: int | None, image_size: int | None,
            num_heads: int | None, classes_file: Path | None) -> None:  # fmt: skip
    """Convert any supported checkpoint SRC to DST/model.safetensors + DST/card.toml.

    SRC is anything `--model` takes: an official .pyth/.pth, a Hugging Face directory or hub id,
    a timm ViT checkpoint (inflated to TimeSformer), or a vidfeat checkpoint. An official file is
    matched to its bundled card (file name, shapes, class count), which gives its clip sampling,
    heads and class names; anything assumed instead is said on stderr and kept in the card. The
    converted model is checked to give the source's outputs on a random clip before it is kept.

    \b
    Examples:
      vidfeat convert TimeSformer_divST_8x32_224_K400.pyth k400-base/
      vidfeat convert hf-timesformer-k400/ k400-base/ --num-frames 16
      vidfeat convert my_finetuned.pth mine/ --num-heads 12 --classes my_classes.txt
    """
    from ..model.weights import ClassCountError, SamplingWarning, convert as convert_checkpoint

    names = read_class_file(classes_file) if classes_file is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SamplingWarning)
        try:
            card = convert_checkpoint(
                src, dst, name=name, num_frames=num_frames, image_size=image_size, num_heads=num_heads, classes=names
            )
        except ClassCountError as exc:
            raise click.BadParameter(str(exc), param_hint="--classes") from exc
        finally:
            for warning in caught:
                if issubclass(warning.category, SamplingWarning):
                    click.echo(f"note: {warning.message}", err=True)
                else:
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    click.echo(f"wrote {dst / 'model.safetensors'} (sha256 {card.weights.sha256}) and {dst / 'card.toml'}")
