"""How fast does a small TimeSformer learn the synthetic motion classes? (a learning probe)

Renders ``vidfeat.synth`` clips straight into memory (no codec, no decoding: ~20 ms a clip at
32 px), trains a from-scratch TimeSformer for a fixed number of steps and prints validation
accuracy every ``--eval-every`` steps and the confusion matrix at the end. The matrix is the
point: it shows whether the model has learned the *axis* of the motion (horizontal, vertical,
rotation, scale) and not yet its *direction* (the time-reversed pairs), which is where every
configuration tried so far stalls (the status notes in train/synthetic_motion.toml).

The clips are never encoded, so the probe does not see codec damage; at 24 px that damage
once cost the real pipeline 26 points (train/synthetic_motion.toml's notes).

Synth constants can be changed for a run (``--set MAIN_SPEED=(0.25,0.4)``), so easier or harder
variants of the data are one flag away. Compare runs by steps, not seconds: the machine may be
shared.

    python bench/motion_probe.py --steps 450 --patch 16 --heads 4 --bs 16 --lr 2e-3 --init xavier
    python bench/motion_probe.py --steps 200 --classes grow,shrink --pairs \\
        --set "BACKGROUND_SPEED=(0.0,0.0)" --set "DISTRACTORS=(0,0)"
    python bench/motion_probe.py --steps 600 --train 960 --classes rotate_clockwise,rotate_anticlockwise \\
        --pairs --flips --init xavier --heads 4 --bs 16 --lr 2e-3 --eval-every 100 --threads 1 --rotation-pivot orbit
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from vidfeat import synth
from vidfeat.model.cards import OFFICIAL_MEAN, OFFICIAL_STD
from vidfeat.model.config import TimeSformerConfig
from vidfeat.model.timesformer import TimeSformer
from vidfeat.model.init import sincos_embeddings_, xavier_linears_
from vidfeat.video.transforms import LabelSwaps, Normalize

# Classes that trade labels when a clip is played backwards / flipped left-right / upside down.
SWAPS = LabelSwaps(
    flip=(("move_left", "move_right"), ("rotate_clockwise", "rotate_anticlockwise")),
    vflip=(("move_up", "move_down"), ("rotate_clockwise", "rotate_anticlockwise")),
    reverse=(("move_left", "move_right"), ("move_up", "move_down"), ("rotate_clockwise", "rotate_anticlockwise"), ("grow", "shrink")),
)


def swap_tables(classes: list[str]) -> dict[str, torch.Tensor]:
    """``SWAPS`` restricted to the pairs both of whose classes are trained, as index tensors."""
    kept = LabelSwaps(**{op: tuple(p for p in getattr(SWAPS, op) if set(p) <= set(classes)) for op in ("flip", "vflip", "reverse")})
    return {op: torch.tensor(table) for op, table in kept.tables(classes).items()}


def move_the_rotation_pivot(mode: str, orbit: tuple[float, float] = (0.15, 0.45)) -> None:
    """Patch ``synth`` so that rotation clips turn about another pivot (probe-only variants).

    The synth spins the shape in place at the frame centre. ``anywhere``: in place, at a uniform
    position (the synth before 2026-11-23). ``corner``: in place at a patch corner of the 3 x 3
    grid. ``orbit``: a rigid rotation about the frame centre (the shape turns and circles it); its
    centre is uniform over an annulus of ``orbit`` frame widths, a law that rotations keep, so
    single frames still hide the sense. ``roll``: ``orbit``, and the background turns with it.
    """
    sample_main = synth._sample_main

    def patched(label: str, rng: np.random.Generator, t: np.ndarray, duration: float, size: int) -> synth.Sprite:
        sprite = sample_main(label, rng, t, duration, size)
        if not label.startswith("rotate_"):
            return sprite
        centre, turn = size / 2, sprite.angle - sprite.angle[0]
        if mode == "anywhere":
            x, y = (np.full_like(t, rng.uniform(0, size)) for _ in range(2))
        elif mode == "corner":  # the shape's turn crosses patches
            x, y = np.full_like(t, size * 2 / 3), np.full_like(t, size * 2 / 3)
        else:
            distance = math.sqrt(rng.uniform(orbit[0] ** 2, orbit[1] ** 2)) * size
            bearing = rng.uniform(0, 2 * math.pi)
            x, y = centre + distance * np.cos(bearing + turn), centre + distance * np.sin(bearing + turn)
        return dataclasses.replace(sprite, x=x, y=y)

    synth._sample_main = patched
    if mode == "roll":
        roll_the_background()


def roll_the_background() -> None:
    """Probe-only: rotation clips also turn the background about the frame centre (a camera roll).

    The frame loop is ``synth._iter_frames`` with the background sampled at turned coordinates.
    """
    sample_scene, iter_frames = synth.sample_scene, synth._iter_frames

    def scene(label: str, **kwargs) -> synth.Scene:
        made = sample_scene(label, **kwargs)
        if label.startswith("rotate_"):
            object.__setattr__(made.background, "turn", made.main.angle - made.main.angle[0])
        return made

    def frames(scene: synth.Scene, chunk: int = synth.CHUNK_FRAMES):
        turn = getattr(scene.background, "turn", None)
        if turn is None:
            yield from iter_frames(scene, chunk)
            return
        size, bg = scene.size, scene.background
        grid = np.arange(size, dtype=np.float32) + np.float32(0.5) - size / 2
        for start in range(0, scene.frames, chunk):
            sl = slice(start, min(start + chunk, scene.frames))
            c, s = (np.cos(turn[sl]).astype(np.float32)[:, None, None], np.sin(turn[sl]).astype(np.float32)[:, None, None])
            px, py = grid[None, None, :], grid[None, :, None]
            u, v = c * px + s * py + size / 2, c * py - s * px + size / 2  # R(-turn) about the centre
            pattern = bg.texture.sample(u - bg.offset_x[sl].astype(np.float32)[:, None, None], v - bg.offset_y[sl].astype(np.float32)[:, None, None])
            canvas = np.stack([a + (b - a) * pattern for a, b in zip(bg.colour_a, bg.colour_b)])
            for sprite in (*scene.distractors, scene.main):
                synth._draw_sprite(canvas, sprite, sl, size, grid + size / 2)
            rgb = (np.clip(canvas, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
            yield np.ascontiguousarray(rgb.transpose(1, 2, 3, 0))

    synth.sample_scene, synth._iter_frames = scene, frames


def render(n: int, seed: int, classes: list[str], args) -> tuple[torch.Tensor, torch.Tensor]:
    frames = np.empty((n, args.frames, args.size, args.size, 3), np.uint8)
    labels = np.arange(n) % len(classes)
    for i in range(n):
        clip = synth.render_clip(classes[labels[i]], rng=synth.video_rng(seed, i), size=args.size)
        frames[i] = clip[: args.frames]
    return torch.from_numpy(frames), torch.from_numpy(labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--train", type=int, default=1440, help="training clips (rendered once, reused every epoch)")
    p.add_argument("--val", type=int, default=160, help="validation clips (seed 1)")
    p.add_argument("--classes", default=",".join(synth.CLASSES))
    p.add_argument("--size", type=int, default=synth.DEFAULT_SIZE)
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--attention", default="divided_space_time")
    p.add_argument("--init", choices=("official", "xavier"), default="official", help="linear layers: trunc normal 0.02 (temporal_fc 0) or Xavier")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--pairs", action="store_true", help="each batch: half its clips and their time reversals (labels swapped)")
    p.add_argument("--flips", action="store_true", help="random horizontal/vertical flips with the labels swapped")
    p.add_argument("--set", action="append", default=[], metavar="CONST=VALUE", help="override a vidfeat.synth constant")
    p.add_argument(
        "--rotation-pivot", choices=("synth", "anywhere", "corner", "orbit", "roll"), default="synth",
        help="rotation classes: spin at the frame centre (the synth), spin in place anywhere or at a patch corner, "
        "turn about the frame centre, or that with the background turning too (a camera roll)",
    )
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for item in args.set:
        name, value = item.split("=", 1)
        setattr(synth, name, ast.literal_eval(value))
    if args.rotation_pivot != "synth":
        move_the_rotation_pivot(args.rotation_pivot)
    classes = args.classes.split(",")
    started = time.perf_counter()
    train_x, train_y = render(args.train, 0, classes, args)
    val_x, val_y = render(args.val, 1, classes, args)
    print(f"rendered {args.train} + {args.val} clips in {time.perf_counter() - started:.0f} s", flush=True)

    config = TimeSformerConfig(
        img_size=args.size, patch_size=args.patch, num_frames=args.frames, num_classes=len(classes),
        embed_dim=args.dim, depth=args.depth, num_heads=args.heads, attention_type=args.attention,
    )
    torch.manual_seed(0)
    model = TimeSformer(config)
    if args.init == "xavier":
        xavier_linears_(model)
    sincos_embeddings_(model)
    decay = [w for n, w in model.named_parameters() if w.ndim > 1 and "embed" not in n]
    rest = [w for n, w in model.named_parameters() if not (w.ndim > 1 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    tables = swap_tables(classes)

    normalize = Normalize(OFFICIAL_MEAN, OFFICIAL_STD)  # CPU: the clips are made on the host

    def model_input(clips: torch.Tensor) -> torch.Tensor:
        return normalize(clips)

    def evaluate() -> np.ndarray:
        model.eval()
        confusion = np.zeros((len(classes),) * 2, int)
        with torch.no_grad():
            for i in range(0, len(val_x), 32):
                for truth, guess in zip(val_y[i : i + 32], model(model_input(val_x[i : i + 32])).argmax(1)):
                    confusion[truth, guess] += 1
        model.train()
        return confusion

    g = torch.Generator().manual_seed(0)
    losses, step, started = [], 0, time.perf_counter()
    while step < args.steps:
        order = torch.randperm(len(train_x), generator=g)
        for i in range(0, len(order) - args.bs + 1, args.bs):
            clips, labels = train_x[order[i : i + args.bs]].clone(), train_y[order[i : i + args.bs]].clone()
            if args.flips:
                for axis, swap in ((3, tables["flip"]), (2, tables["vflip"])):
                    chosen = torch.rand(len(labels), generator=g) < 0.5
                    clips[chosen], labels[chosen] = clips[chosen].flip(axis), swap[labels[chosen]]
            if args.pairs:
                half = len(labels) // 2
                clips, labels = torch.cat((clips[:half], clips[:half].flip(1))), torch.cat((labels[:half], tables["reverse"][labels[:half]]))
            lr = args.lr * min(1.0, (step + 1) / args.warmup)
            if step > args.warmup:
                lr *= 0.5 * (1 + math.cos(math.pi * step / args.steps))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(model_input(clips)), labels)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                confusion = evaluate()
                seconds = time.perf_counter() - started
                print(
                    f"step {step}  epoch {step * args.bs / len(train_x):.1f}  {step * args.bs / seconds:.1f} clips/s  "
                    f"train loss {np.mean(losses[-args.eval_every:]):.3f}  val top-1 {confusion.trace() / confusion.sum():.3f}",
                    flush=True,
                )
            if step == args.steps:
                break
    print("confusion (rows: truth, columns: prediction):", *classes, sep="\n  ")
    print(confusion)


if __name__ == "__main__":
    main()
