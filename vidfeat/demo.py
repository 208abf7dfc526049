"""``make demo``: the main job end to end on the bundled model, in a few minutes on a laptop CPU.

1. generates a few long synthetic videos made of labelled motion segments (``vidfeat.synth``);
2. runs ``vidfeat extract`` on them with the bundled ``tiny-motion`` model;
3. prints the clips per video, each segment's predicted class against the truth, and a retrieval
   example: the nearest clips to one query clip, from the other videos, with their times.

    python -m vidfeat.demo [--out demo_out] [--videos 3] [--seed 2026]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .cards import find_card
from .extract import DEFAULT_MODEL, ExtractOptions, extract
from .inputs import discover
from .progress import Progress
from .store import open_features
from .synth import generate_long_videos


def segment_predictions(f, video: dict) -> list[tuple[dict, str, int]]:
    """For each ground-truth segment: (segment, predicted class, clips used). The prediction
    averages the logits of the clips lying inside the segment (the clip nearest its middle when
    none fits inside)."""
    clips = f.clips(video["path"])
    out = []
    for seg in video["segments"]:
        inside = (clips.start_sec >= seg["start_sec"] - 1e-6) & (clips.end_sec <= seg["end_sec"] + 1e-6)
        if not inside.any():
            middle = (seg["start_sec"] + seg["end_sec"]) / 2
            inside = np.zeros(len(clips.start_sec), bool)
            inside[np.argmin(np.abs((clips.start_sec + clips.end_sec) / 2 - middle))] = True
        scores = clips.logits[inside].mean(axis=0)
        out.append((seg, f.classes[int(scores.argmax())], int(inside.sum())))
    return out


def label_at(video: dict, t: float) -> str:
    for seg in video["segments"]:
        if seg["start_sec"] <= t < seg["end_sec"]:
            return seg["label"]
    return video["segments"][-1]["label"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="vidfeat demo")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    console = Console()
    if args.model == DEFAULT_MODEL:
        card = find_card(DEFAULT_MODEL)
        if card is not None:
            accuracy = card.meta.get("heldout_top1")
            console.print(
                f"[bold]model:[/] the bundled {DEFAULT_MODEL!r} demo model ({card.description}"
                + (f"; {accuracy:.1%} top-1 on held-out synthetic clips" if accuracy is not None else "")
                + "). Real videos need real weights: `vidfeat models`."
            )

    videos_dir = args.out / "videos"
    truth_path = videos_dir / "segments.json"
    if not truth_path.is_file():
        console.print(f"[bold]1. generating {args.videos} long videos of labelled motion segments in {videos_dir}")
        generate_long_videos(videos_dir, videos=args.videos, seed=args.seed)
    truth = {v["path"]: v for v in json.loads(truth_path.read_text())["videos"]}

    output = args.out / "feats.h5"
    console.print(f"[bold]2. vidfeat extract {videos_dir} -o {output} --model {args.model}")
    files, _ = discover([videos_dir])
    report = extract(files, output, ExtractOptions(model=args.model, workers=args.workers), Progress())
    if report.exit_code not in (0, 3):
        return report.exit_code

    with open_features(output) as f:
        console.print(f"[bold]3. results[/] ({output}: {len(f)} clips, model {f.attrs['model']})")
        correct = total = 0
        table = Table(title="per-segment prediction (logits of the clips inside each segment, averaged)")
        for col in ("video", "segment (s)", "truth", "predicted", "clips", ""):
            table.add_column(col, no_wrap=True)
        for name, video in sorted(truth.items()):
            for seg, predicted, used in segment_predictions(f, video):
                ok = predicted == seg["label"]
                correct += ok
                total += 1
                span = f"{seg['start_sec']:.1f}-{seg['end_sec']:.1f}"
                table.add_row(name, span, seg["label"], predicted, str(used), "[green]ok" if ok else "[red]x")
        console.print(table)
        console.print(f"segment accuracy: [bold]{correct}/{total} = {correct / total:.0%}")

        names = sorted(truth)
        query_video = truth[names[0]]
        q_clips = f.clips(names[0])
        q = len(q_clips.start_sec) // 2
        emb = f.load_embeddings(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
        sims = emb @ emb[q_clips.first_row + q]
        video_of_row, paths = f.h5["clips/video"][:], f.videos.path
        starts, ends = f.h5["clips/start_sec"][:], f.h5["clips/end_sec"][:]
        order = [r for r in np.argsort(-sims) if paths[video_of_row[r]] != names[0]][:5]
        q_label = label_at(query_video, (q_clips.start_sec[q] + q_clips.end_sec[q]) / 2)
        table = Table(
            title=f"retrieval: nearest clips to {names[0]} {q_clips.start_sec[q]:.2f}-{q_clips.end_sec[q]:.2f} s "
            f"({q_label}), from other videos"
        )
        for col in ("rank", "video", "time (s)", "cosine", "truth there"):
            table.add_column(col, no_wrap=True)
        for rank, r in enumerate(order, 1):
            path = str(paths[video_of_row[r]])
            start, end = float(starts[r]), float(ends[r])
            there = label_at(truth[path], (start + end) / 2)
            table.add_row(str(rank), path, f"{start:.1f}-{end:.1f}", f"{sims[r]:.3f}",
                          f"[green]{there}" if there == q_label else there)  # fmt: skip
        console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
