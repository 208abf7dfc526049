"""``make demo``: the main job end to end on the bundled model, in a few minutes on a laptop CPU.

1. generates a few long synthetic videos made of labelled motion segments (``vidfeat.synth``);
2. runs ``vidfeat extract`` on them with the bundled ``tiny-motion`` model;
3. prints the clips per video, each segment's predicted class against the truth, a retrieval
   example (the nearest clips to one query clip, from the other videos, with their times), and how
   often a clip's nearest clip from another video has its class.

    python -m vidfeat.tools.demo [--out demo_out] [--videos 3] [--seed 2026]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..model.cards import DEFAULT_MODEL, find_card
from ..pipeline.driver import ExtractOptions, extract, stored_root
from ..video.inputs import discover
from ..pipeline.progress import Progress
from ..store import open_features
from ..synth import generate_long_videos


def _inside(seg: dict, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which clips (start and end times) lie inside the segment."""
    return (starts >= seg["start_sec"] - 1e-6) & (ends <= seg["end_sec"] + 1e-6)


def segment_predictions(f, video: dict) -> list[tuple[dict, str, int]]:
    """For each ground-truth segment: (segment, predicted class, clips used). The prediction
    averages the logits of the clips lying inside the segment (the clip nearest its middle when
    none fits inside)."""
    clips = f.clips(video["path"])
    out = []
    for seg in video["segments"]:
        inside = _inside(seg, clips.start_sec, clips.end_sec)
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


def clip_labels(truth: dict[str, dict], paths, video_of_row, starts, ends) -> np.ndarray:
    """Each clip's class: that of the segment it lies inside, "" when it straddles two."""
    out = np.full(len(starts), "", dtype=object)
    for v, path in enumerate(paths):
        rows = np.flatnonzero(video_of_row == v)
        for seg in truth[str(path)]["segments"]:
            out[rows[_inside(seg, starts[rows], ends[rows])]] = seg["label"]
    return out


def nearest_from_other_videos(emb: np.ndarray, video_of_row: np.ndarray, row: int, k: int, among=None) -> np.ndarray:
    """Rows of the ``k`` clips most cosine-similar to clip ``row`` among the other videos' clips
    (only rows where ``among`` is true, if given; ``emb`` rows L2-normalised), most similar first."""
    candidates = video_of_row != video_of_row[row]
    if among is not None:
        candidates &= among
    others = np.flatnonzero(candidates)
    return others[np.argsort(-(emb[others] @ emb[row]), kind="stable")[:k]]


def retrieval_hits(emb: np.ndarray, labels: np.ndarray, video_of_row: np.ndarray) -> tuple[int, int]:
    """(hits, queries): every labelled clip whose class is also in another video is a query; a hit
    when its nearest labelled clip from another video has its class (cosine, rows L2-normalised)."""
    labelled = labels != ""
    hits = queries = 0
    for row in np.flatnonzero(labelled):
        same = labelled & (video_of_row != video_of_row[row]) & (labels == labels[row])
        if same.any():
            queries += 1
            hits += labels[nearest_from_other_videos(emb, video_of_row, row, 1, among=labelled)[0]] == labels[row]
    return int(hits), queries


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
    inputs = discover([videos_dir], root=stored_root(output))
    options = ExtractOptions(model=args.model, workers=args.workers, root=str(inputs.root))
    report = extract(inputs.videos, output, options, Progress())
    if report.exit_code not in (0, 3):
        return report.exit_code

    with open_features(output) as f:
        console.print(f"[bold]3. results[/] ({output}: {len(f)} clips, model {f.attrs['model']})")
        clip_sec = f.attrs["num_frames"] / f.attrs["fps"]
        correct = total = 0
        for name, video in sorted(truth.items()):  # one table a video: fits an 80-column terminal
            row = f.videos.index(name)
            table = Table(
                title=f"{name}: {f.videos.duration_sec[row]:.1f} s, {f.videos.clip_count[row]} clips "
                f"({clip_sec:g} s every {f.attrs['stride_sec']:g} s)"
            )
            for col in ("segment (s)", "truth", "predicted", "clips", ""):
                table.add_column(col, no_wrap=True)
            for seg, predicted, used in segment_predictions(f, video):
                ok = predicted == seg["label"]
                correct += ok
                total += 1
                span = f"{seg['start_sec']:.1f}-{seg['end_sec']:.1f}"
                table.add_row(span, seg["label"], predicted, str(used), "[green]ok" if ok else "[red]x")
            console.print(table)
        console.print(f"segment accuracy (clip logits averaged over each segment): [bold]{correct}/{total} = {correct / total:.0%}")

        emb = f.load_embeddings(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
        video_of_row, paths = f.h5["clips/video"][:], f.videos.path
        starts, ends = f.h5["clips/start_sec"][:], f.h5["clips/end_sec"][:]
        labels = clip_labels(truth, paths, video_of_row, starts, ends)
        names = sorted(truth)
        q_clips = f.clips(names[0])
        query = q_clips.first_row + len(q_clips) // 2  # a fixed rule: the middle clip of the first video
        q_label = label_at(truth[names[0]], (starts[query] + ends[query]) / 2)
        read_as = f.topk(query, k=1)[0][0]
        table = Table(
            title=f"retrieval: nearest clips to {names[0]} {starts[query]:.2f}-{ends[query]:.2f} s "
            f"({q_label}" + ("" if read_as == q_label else f", which the model reads as {read_as}")
            + "), from other videos"
        )  # fmt: skip
        for col in ("rank", "video", "time (s)", "cosine", "truth there"):
            table.add_column(col, no_wrap=True)
        for rank, r in enumerate(nearest_from_other_videos(emb, video_of_row, query, k=5), 1):
            there = label_at(truth[str(paths[video_of_row[r]])], (starts[r] + ends[r]) / 2)
            table.add_row(str(rank), str(paths[video_of_row[r]]), f"{starts[r]:.1f}-{ends[r]:.1f}",
                          f"{emb[r] @ emb[query]:.3f}", f"[green]{there}" if there == q_label else there)  # fmt: skip
        console.print(table)
        hits, queries = retrieval_hits(emb, labels, video_of_row)
        if queries:
            console.print(
                f"retrieval over the clips inside one segment: the nearest such clip from another video "
                f"has the query's class for [bold]{hits}/{queries} = {hits / queries:.0%}[/]"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
