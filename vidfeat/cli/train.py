"""``vidfeat train``, ``vidfeat eval`` and ``vidfeat synth``: training, accuracy, synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..synth import DEFAULT_SIZE as SYNTH_SIZE
from .group import main


@main.command(name="train")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (repeatable), e.g. optim.lr=0.01.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory (default: runs/RECIPE_NAME).")
@click.option("--resume", is_flag=True, help="Continue the run in the output directory from its last checkpoint (optim.epochs may be raised to extend it).")
def train_command(recipe: str, overrides: tuple[str, ...], out: Path | None, resume: bool) -> None:
    """Train or fine-tune a TimeSformer with the recipe RECIPE (a TOML file or a bundled name).

    Every epoch writes a loadable checkpoint to the run directory (model.safetensors + card.toml,
    so `--model runs/NAME` works anywhere), train_state.pt, metrics.jsonl and curves.png. For
    several processes, GPUs or machines start it with torchrun; only rank 0 writes (docs/train.md).

    \b
    Examples:
      vidfeat synth data/motion --videos 2400 --seed 0
      vidfeat train synthetic_motion --set data.train=data/motion -o runs/tiny-motion
      vidfeat train train/kinetics_finetune.toml --set data.train=k400/train.csv --set data.val=k400/val.csv
      vidfeat train synthetic_motion --set data.train=data/motion -o runs/tiny-motion --resume
      vidfeat train synthetic_motion --set data.train=data/motion -o runs/tiny-motion --resume --set optim.epochs=12
      torchrun --nproc-per-node 8 -m vidfeat train train/kinetics_finetune.toml --set data.train=k400/train.csv
    """
    from ..training.recipe import load_config
    from ..training.loop import train

    config = load_config(recipe, overrides)
    run_dir = out or Path("runs") / (config.name or Path(recipe).stem)
    result = train(config, run_dir, resume=resume)
    if result.rank == 0:
        last = result.history[-1] if result.history else None
        top1 = f", val top-1 {last['val_top1']:.1%}" if last and last.get("val_top1") is not None else ""
        click.echo(f"run saved in {result.run_dir}{top1}; use it with --model {result.run_dir}")


@main.command(name="eval")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--weights", help="Model to evaluate: a run directory, card name or checkpoint (default: tiny-motion).")
@click.option("--crops", type=click.Choice(["1", "3"]), default="1", show_default=True, help="Spatial crops per clip.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="Decode processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def eval_command(data: Path, weights: str | None, crops: str, batch_size: int, workers: int, device: str, as_json: bool) -> None:
    """Accuracy of a model on labelled videos DATA: top-1, top-5, per class and confusion matrix.

    DATA is a folder of class sub-folders or a CSV/TSV list path,label[,start_sec,end_sec]. Each
    video is scored on its centre clip with the model card's preprocessing.

    \b
    Examples:
      vidfeat eval data/motion-test
      vidfeat eval --weights runs/tiny-motion data/motion-test --json
      vidfeat eval --weights base k400/val.csv --crops 3
    """
    from ..training.evaluate import evaluate

    result = evaluate(weights, data, crops=int(crops), batch_size=batch_size, workers=workers, device=device,
                      echo=lambda line: click.echo(line, err=True))  # fmt: skip
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    console = Console()
    classes = result["classes"]
    if result["count"]:
        console.print(f"{result['model']} on {data}: {result['count']} videos, top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%}")
    else:
        console.print(f"{result['model']} on {data}: no video could be decoded")
    if result["skipped"]:
        console.print(f"[yellow]{len(result['skipped'])} videos could not be decoded:[/]")
        for item in result["skipped"]:
            console.print(f"  {item['path']}: {item['reason']}", highlight=False)
    if len(classes) > 30:
        console.print(f"({len(classes)} classes: the confusion matrix is in --json)")
        return
    table = Table(title="confusion (rows: true class, columns: predicted)")
    table.add_column("class", no_wrap=True)
    table.add_column("acc", justify="right")
    for i in range(len(classes)):
        table.add_column(str(i), justify="right")
    for i, (name, row) in enumerate(zip(classes, result["confusion"])):
        acc = result["per_class"][name]
        cells = [f"[bold]{n}[/]" if j == i and n else (str(n) if n else "[dim]·[/]") for j, n in enumerate(row)]
        table.add_row(f"{i} {name}", "-" if acc is None else f"{acc:.0%}", *cells)
    console.print(table)


@main.command(name="synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--videos", type=click.IntRange(min=1), required=True, help="Number of labelled 4 s clips (classes round-robin).")
@click.option("--seed", type=int, required=True, help="Dataset seed: the same seed gives the same videos.")
@click.option("--long", "long_videos", type=click.IntRange(min=1), help="Also write this many long multi-segment videos to OUT/long.")
@click.option("--size", type=click.IntRange(min=16), default=SYNTH_SIZE, show_default=True,
              help="Frame width and height in pixels (even). Motion and shapes scale with it; background texture periods and outlines are in pixels.")
def synth_command(out: Path, videos: int, seed: int, long_videos: int | None, size: int) -> None:
    """Write a synthetic motion dataset to OUT: 8 classes that only motion tells apart.

    OUT/<class>/*.mp4 + OUT/labels.csv + OUT/classes.txt, directly usable as training or
    evaluation data. With --long, OUT/long/ holds long videos of labelled segments and
    OUT/long/segments.json their times.

    \b
    Examples:
      vidfeat synth data/motion --videos 2400 --seed 0
      vidfeat synth data/motion-test --videos 400 --seed 1 --long 4
    """
    from ..synth import generate_dataset, generate_long_videos

    if size % 2:
        raise click.BadParameter(f"{size} is odd; video frames need an even size", param_hint="'--size'")
    rows = generate_dataset(out, videos=videos, seed=seed, size=size)
    click.echo(f"wrote {len(rows)} videos, {out / 'labels.csv'} and {out / 'classes.txt'}")
    if long_videos:
        listing = generate_long_videos(out / "long", videos=long_videos, seed=seed, size=size)
        segments = sum(len(v["segments"]) for v in listing)
        click.echo(f"wrote {len(listing)} long videos ({segments} segments) and {out / 'long' / 'segments.json'}")
