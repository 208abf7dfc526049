"""``vidfeat models`` and ``vidfeat convert``: the model cards and checkpoint conversion."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..cards import bundled_cards
from ..data import read_class_file
from ..weights import load_model, save_checkpoint
from . import main


@main.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def models_list(as_json: bool) -> None:
    """List the bundled model cards and whether their weights are on this machine.

    \b
    Examples:
      vidfeat models
      vidfeat models --json
    """
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
                "weights": str(local) if local else "",
                "hf_hub_id": card.weights.hf_hub_id,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="vidfeat models")
    table.add_column("name", no_wrap=True)
    for col in ("aliases", "frames x size", "fps", "classes", "weights"):
        table.add_column(col)
    for r in rows:
        where = r["weights"] or (f"hub: {r['hf_hub_id']}" if r["hf_hub_id"] else "not downloaded")
        table.add_row(
            r["name"], ", ".join(r["aliases"]), f"{r['frames']} x {r['size']}", f"{r['fps']:g}", str(r["classes"]), where
        )
    Console().print(table)


@main.command(name="convert")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Name written into the card (default: the source's).")
@click.option("--num-frames", type=click.IntRange(min=1), help="Resize the time embedding to this many frames.")
@click.option("--image-size", type=click.IntRange(min=1), help="Resize the position embedding to this input size.")
@click.option("--classes", "classes_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Class names, one per line, in head order (official .pyth files carry none).")  # fmt: skip
def convert(src: str, dst: Path, name: str | None, num_frames: int | None, image_size: int | None,
            classes_file: Path | None) -> None:  # fmt: skip
    """Convert any supported checkpoint SRC to DST/model.safetensors + DST/card.toml.

    SRC is anything `--model` takes: an official .pyth/.pth, a Hugging Face directory or hub id,
    a timm ViT checkpoint (inflated to TimeSformer), or a vidfeat checkpoint.

    \b
    Examples:
      vidfeat convert TimeSformer_divST_8x32_224_K400.pyth k400-base/
      vidfeat convert hf-timesformer-k400/ k400-base/ --num-frames 16
      vidfeat convert TimeSformer_divST_8_224_SSv2.pyth ssv2-base/ --classes ssv2_classes.txt
    """
    model = load_model(src, num_frames=num_frames, image_size=image_size)
    if classes_file is not None:
        names = read_class_file(classes_file)
        if len(names) != model.num_classes:
            raise click.BadParameter(f"{len(names)} names for a head of {model.num_classes} classes", param_hint="--classes")
        model.card.classes = names
    out = save_checkpoint(model, dst, name=name)
    click.echo(f"wrote {out / 'model.safetensors'} and {out / 'card.toml'} ({model.card.weights.sha256 or 'sha256 in card'})")
