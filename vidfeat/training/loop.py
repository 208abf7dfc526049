"""Training and fine-tuning TimeSformer on labelled videos.

A recipe (``train/*.toml``) is read into one :class:`~vidfeat.training.recipe.TrainConfig` by
:mod:`vidfeat.training.recipe`; it is stored in every checkpoint. :func:`train` is one flat loop, nanoGPT
style: setup (torchrun env vars) -> model -> optimizer -> per epoch: optimizer steps, each a
visible gradient-accumulation inner loop under one autocast ``ctx``, gradient clipping and a pure
:func:`get_lr` -> validation -> a rank-0 checkpoint (weights, optimizer state and the epoch's
metrics record, committed together).

A run directory is a loadable model at every epoch::

    model.safetensors, card.toml, classes.txt   weights + card (preprocessing, class names):
                                                load_model(run_dir), vidfeat extract --model run_dir
    train_state.pt    {epoch, step, world_size, optimizer, scaler, config, skipped}: plain types
                      and tensors, read with torch.load(weights_only=True)
    metrics.jsonl     one line per logged step ("kind": "step") and per epoch ("kind": "epoch")
    curves.png        loss and accuracy (needs matplotlib, the ``plot`` extra)
    skipped.txt       videos that could not be decoded, with the reason

Checkpoints are committed atomically: written to ``.next/``, renamed to ``.commit/`` (the commit
point), then moved into place; a run killed in between is rolled forward on restart.

Determinism: the data order comes from ``DistributedSampler(seed)`` (``RepeatSampler`` when the
recipe weights classes), each clip's augmentation from ``(seed, epoch, index)`` (see
``vidfeat.training.data``) and the torch generator (dropout, stochastic depth) is re-seeded from
``(seed, epoch, rank)`` at the start of every epoch. So nothing random
is carried across epochs, and a run resumed from its epoch-``e`` checkpoint computes exactly
what the uninterrupted run computes (bit-exact on the CPU with a fixed ``run.threads``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..pipeline import shm
from ..model.cards import ModelCard, Preprocess
from .data import ClipDataset, Failed, RepeatSampler, collate, load_data
from ..errors import ConfigError, VidfeatError
from .evaluate import model_input, run_eval
from ..model.init import sincos_embeddings_, xavier_linears_
from ..model.timesformer import TimeSformer
from ..pipeline.progress import TrainProgress
from ..pipeline.shard import torchrun_env
from .recipe import DataSection, ModelSection, OptimSection, TrainConfig, bundled_recipes, check_resumable, load_config
from ..model.runtime import autocast_dtype, resolve_device
from ..video.transforms import LabelSwaps, Normalize, TrainAugment
from ..model.weights import load_model, save_checkpoint
from ..plotting import new_figure

__all__ = ["TrainConfig", "TrainResult", "load_config", "get_lr", "train", "bundled_recipes"]


# ---------------------------------------------------------------------------------------------
# learning rate


def get_lr(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based), a pure function of its arguments.

    Linear warm-up from ``warmup_start * lr`` over ``warmup_epochs``, then ``step``: ``lr`` times
    ``gamma`` per milestone reached (epoch ``e`` counts as reached from its first step), or
    ``cosine``: from ``lr`` down to ``min_lr`` at the end of the last epoch.
    """
    o, s = config.optim, config.schedule
    epoch = step / steps_per_epoch  # epochs done, fractional
    if epoch < s.warmup_epochs:
        return o.lr * (s.warmup_start + (1 - s.warmup_start) * epoch / s.warmup_epochs)
    if s.kind == "step":
        return o.lr * s.gamma ** sum(epoch >= m for m in s.milestones)
    progress = min(1.0, (epoch - s.warmup_epochs) / (o.epochs - s.warmup_epochs))
    return s.min_lr + 0.5 * (o.lr - s.min_lr) * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# model setup


def _build_model(config: TrainConfig, classes: list[str], run_dir: Path | None) -> tuple[TimeSformer, Preprocess]:
    """The model to train and the preprocessing its card starts from.

    ``run_dir``: resume from that checkpoint. Else ``model.init``: a new model (scratch) or a
    loaded one with its time/position embeddings resized to ``data.num_frames``/``crop_size`` and
    a new head unless its classes are the data's.
    """
    m, d = config.model, config.data
    torch.manual_seed(config.seed)
    if run_dir is not None:
        model = load_model(run_dir)
        if model.card.classes != classes:
            raise ConfigError(f"{run_dir} was trained on other classes than the data's ({len(classes)} classes)")
        return model, model.card.preprocess
    if m.init == "scratch":
        arch = replace(
            m.arch,
            num_classes=len(classes),
            num_frames=d.num_frames or m.arch.num_frames,
            img_size=d.crop_size or m.arch.img_size,
            drop_path_rate=m.drop_path_rate,
            drop_rate=m.dropout,
        )
        base = Preprocess(num_frames=arch.num_frames, fps=d.fps, short_side=arch.img_size, crop_size=arch.img_size)
        model = TimeSformer(arch)
        if m.linear_init == "xavier":
            xavier_linears_(model)
        if m.embed_init == "sincos":
            sincos_embeddings_(model)
        return model, base
    model = load_model(m.init, num_frames=d.num_frames or None, image_size=d.crop_size or None)
    base = model.card.preprocess
    if model.card.classes != classes or model.config.num_classes != len(classes):
        model.reset_classifier(len(classes))
    regularised = replace(model.config, drop_path_rate=m.drop_path_rate, drop_rate=m.dropout)
    if regularised != model.config:  # DropPath / Dropout modules are built by the constructor
        rebuilt = TimeSformer(regularised)
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return model, base


def _preprocess(d: DataSection, base: Preprocess) -> Preprocess:
    """The run's preprocessing: the data section's values, else the model's."""
    crop = d.crop_size or base.crop_size
    return Preprocess(
        num_frames=d.num_frames or base.num_frames,
        fps=d.fps or base.fps,
        short_side=d.short_side or max(base.short_side, crop),
        crop_size=crop,
        mean=tuple(d.mean) or base.mean,
        std=tuple(d.std) or base.std,
    )


def _freeze(model: TimeSformer, m: ModelSection) -> None:
    """Set ``requires_grad`` by the freezing options; ConfigError when nothing is left to train."""
    if m.freeze_blocks > model.config.depth:
        raise ConfigError(f"model.freeze_blocks is {m.freeze_blocks}, the model has {model.config.depth} blocks")
    embeddings = ("patch_embed.", "cls_token", "pos_embed", "time_embed")
    for name, param in model.named_parameters():
        block = int(name.split(".")[1]) if name.startswith("blocks.") else None
        frozen = (
            (m.head_only and not name.startswith("head."))
            or (m.freeze_embeddings and name.startswith(embeddings))
            or (block is not None and block < m.freeze_blocks)
        )
        param.requires_grad_(not frozen)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the freezing options leave nothing to train")


def _optimizer(model: TimeSformer, o: OptimSection) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; no weight decay on norms, biases and embeddings."""
    skip = model.no_weight_decay()
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if param.ndim < 2 or name in skip else decay).append(param)
    groups = [g for g in ({"params": decay, "weight_decay": o.weight_decay}, {"params": plain, "weight_decay": 0.0}) if g["params"]]
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# run directory


def _roll_forward(run_dir: Path) -> None:
    """Finish a checkpoint commit that a kill interrupted; drop an uncommitted one."""
    committed = run_dir / ".commit"
    if committed.is_dir():
        for item in sorted(committed.iterdir()):
            os.replace(item, run_dir / item.name)
        committed.rmdir()
    shutil.rmtree(run_dir / ".next", ignore_errors=True)


def _commit(run_dir: Path, write: Callable[[Path], None]) -> None:
    """Replace the run's checkpoint files atomically with what ``write(folder)`` writes."""
    staging = run_dir / ".next"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write(staging)
    for item in staging.iterdir():
        with open(item, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(staging, run_dir / ".commit")  # the commit point
    _roll_forward(run_dir)


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _keep_metrics(path: Path, epochs: int) -> None:
    """Keep the records of the first ``epochs`` epochs (those of the checkpoint being resumed)."""
    kept = [r for r in _read_metrics(path) if r["epoch"] < epochs]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _plot_curves(metrics: Path, out: Path) -> bool:
    """Draw loss and accuracy curves from metrics.jsonl; False when matplotlib is missing."""
    try:
        fig = new_figure(figsize=(11, 4))
    except VidfeatError:
        return False
    records = _read_metrics(metrics)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot([r["epoch_float"] for r in steps], [r["loss"] for r in steps], label="train (per log interval)", alpha=0.6)
    for key, label in (("train_loss", "train (epoch)"), ("val_loss", "val")):
        points = [(r["epoch"] + 1, r[key]) for r in epochs if r.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points), marker="o", label=label)
    for key, label in (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5")):
        points = [(r["epoch"] + 1, 100 * r[key]) for r in epochs if r.get(key) is not None]
        if points:
            ax_acc.plot(*zip(*points), marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="%", title="accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, out)
    return True

# ---------------------------------------------------------------------------------------------
# setup


@dataclass
class _Ranks:
    """This process's place under torchrun (one process without it)."""

    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:  # rank 0 alone writes and prints
        return self.rank == 0


def _setup(config: TrainConfig) -> _Ranks:
    """Read torchrun's env vars, pick the device and join the process group (gloo on the CPU,
    nccl on GPUs)."""
    env = torchrun_env()
    rank, local_rank, world = env.rank, env.local_rank, env.world_size
    ranks = _Ranks(rank, local_rank, world, resolve_device(config.run.device, local_rank))
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    if ranks.ddp:
        if ranks.device.type == "cuda":
            torch.cuda.set_device(ranks.device)
        dist.init_process_group(backend="nccl" if ranks.device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return ranks


def _load_state(config: TrainConfig, run_dir: Path, resume: bool, ranks: _Ranks) -> dict | None:
    """The checkpoint's train_state to resume from (None: a new run), checked against ``config``."""
    if ranks.master:
        run_dir.mkdir(parents=True, exist_ok=True)
        _roll_forward(run_dir)
    if ranks.ddp:
        dist.barrier()
    if not (run_dir / "train_state.pt").is_file():
        return None
    if not resume:
        raise ConfigError(f"{run_dir} holds a checkpoint: pass --resume to continue it, or choose another output directory")
    state = torch.load(run_dir / "train_state.pt", map_location="cpu", weights_only=True)
    check_resumable(config, state["config"], epochs_done=state["epoch"] + 1)
    return state


@dataclass
class _Loaders:
    """The training and validation data of a run, and its step arithmetic."""

    train_set: ClipDataset
    sampler: DistributedSampler | RepeatSampler
    train: DataLoader
    val: DataLoader | None
    accum: int  # micro-batches per optimizer step on each rank
    clips_per_step: int  # clips of one rank in one optimizer step (the loss is a mean over these)
    steps_per_epoch: int
    reversed_label: torch.Tensor | None  # data.reverse_pairs: the label of each class's time reversal


def _loaders(config: TrainConfig, data, preprocess: Preprocess, ranks: _Ranks) -> _Loaders:
    d, o, world = config.data, config.optim, ranks.world
    augment = TrainAugment(preprocess.crop_size, (d.scale[0], d.scale[1]), flip=d.flip, vflip=d.vflip, reverse=d.reverse)
    swaps = LabelSwaps(*(tuple(map(tuple, s)) for s in (d.flip_swaps, d.vflip_swaps, d.reverse_swaps)))
    train_set = ClipDataset(
        data.train, data.classes, preprocess, augment=augment, seed=config.seed, decode_threads=d.decode_threads, swaps=swaps
    )
    # minimal pairs: each clip and its time reversal in one batch, so the gradient sees only the direction
    reversed_label = torch.tensor(train_set.swap_tables["reverse"]) if d.reverse_pairs else None
    if d.class_weights:  # repeats per class (names checked with the data)
        weights = [d.class_weights.get(name, 1.0) for name in data.classes]
        try:
            sampler = RepeatSampler(train_set.labels, weights, num_replicas=world, rank=ranks.rank, seed=config.seed)
        except ValueError as exc:
            raise ConfigError(f"data.class_weights: {exc}") from None
    else:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=ranks.rank, shuffle=True, seed=config.seed, drop_last=True)
    accum, rest = divmod(o.batch_size, o.micro_batch * world)
    if rest or not accum:
        raise ConfigError(f"optim.batch_size {o.batch_size} is not a multiple of micro_batch {o.micro_batch} x {world} ranks")
    per_rank_batch = o.micro_batch * accum
    steps_per_epoch = len(sampler) // per_rank_batch
    if not steps_per_epoch:
        raise ConfigError(f"{len(train_set)} training videos are fewer than one batch of {o.batch_size}: lower optim.batch_size")
    batch_bytes = o.micro_batch * shm.clip_bytes(preprocess)  # uint8 clips
    loader_args = dict(collate_fn=collate, pin_memory=ranks.device.type == "cuda", **shm.loader_args(d.workers, batch_bytes))
    train_loader = DataLoader(train_set, batch_size=o.micro_batch, sampler=sampler, drop_last=True, **loader_args)
    val_loader = None
    if data.val:
        val_set = ClipDataset(data.val, data.classes, preprocess, decode_threads=d.decode_threads)
        val_loader = DataLoader(val_set, batch_size=o.micro_batch, sampler=range(ranks.rank, len(val_set), world), **loader_args)
    clips_per_step = per_rank_batch * (2 if d.reverse_pairs else 1)
    return _Loaders(train_set, sampler, train_loader, val_loader, accum, clips_per_step, steps_per_epoch, reversed_label)


# ---------------------------------------------------------------------------------------------
# one epoch


@dataclass
class _Run:
    """What the steps of a run share (nanoGPT keeps these as the script's globals)."""

    config: TrainConfig
    ranks: _Ranks
    model: TimeSformer  # the unwrapped model: validation and checkpoints
    net: torch.nn.Module  # the model DDP-wrapped under torchrun: training steps
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ctx: contextlib.AbstractContextManager  # autocast, or nothing for full precision
    preprocess: Preprocess
    normalize: Normalize  # the model input's mean and std, held on the device for the whole run
    loaders: _Loaders
    metrics_path: Path
    progress: TrainProgress


def _train_epoch(run: _Run, epoch: int, step: int) -> tuple[int, torch.Tensor, list[Failed], float]:
    """The optimizer steps of one epoch from global step ``step``.

    Returns the step reached, this rank's ``[loss sum, correct, clips]``, its undecodable videos
    and the seconds it took."""
    config, ranks, L, pre = run.config, run.ranks, run.loaders, run.preprocess
    device, accum, steps_per_epoch = ranks.device, L.accum, L.steps_per_epoch
    torch.manual_seed(_epoch_seed(config.seed, epoch, ranks.rank))
    L.sampler.set_epoch(epoch)
    L.train_set.set_epoch(epoch)
    run.net.train()
    batches = iter(L.train)
    started = time.monotonic()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, clips
    failed: list[Failed] = []
    clip_shape = (1, 1, pre.num_frames, pre.crop_size, pre.crop_size, 3)
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    window_loss, window_clips, window_started = 0.0, 0, time.monotonic()
    for _ in range(steps_per_epoch):
        lr = get_lr(step, config, steps_per_epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        step_totals = torch.zeros(3, dtype=torch.float64, device=device)
        for micro in range(accum):
            batch = next(batches)
            failed.extend(batch.failed)
            clips, labels, weight = batch.clips, batch.labels, 1.0
            if not len(labels):  # every video failed: a zero-weight stand-in keeps the ranks' all-reduce in step
                clips, labels, weight = torch.zeros(clip_shape, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64), 0.0
            elif L.reversed_label is not None:
                clips, labels = torch.cat((clips, clips.flip(2))), torch.cat((labels, L.reversed_label[labels]))
            labels = labels.to(device, non_blocking=True)
            sync = run.net.no_sync() if ranks.ddp and micro < accum - 1 else contextlib.nullcontext()
            with sync:
                with run.ctx:
                    logits = run.net(model_input(clips, run.normalize))
                    loss = F.cross_entropy(logits.float(), labels, reduction="sum") * weight
                # the sum over this rank's clips / its batch: DDP's gradient average makes it the global mean
                run.scaler.scale(loss / L.clips_per_step).backward()
            correct = (logits.detach().argmax(dim=-1) == labels).sum() * weight
            step_totals += torch.stack([loss.detach().double(), correct.double(), torch.tensor(len(labels) * weight, device=device, dtype=torch.float64)])
        if config.optim.grad_clip:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        step += 1
        totals += step_totals

        if ranks.master:
            loss_sum, _, clips_done = step_totals.tolist()
            window_loss += loss_sum
            window_clips += int(clips_done)
        if ranks.master and (step % config.run.log_every == 0 or step % steps_per_epoch == 0):
            rate = window_clips * ranks.world / max(1e-9, time.monotonic() - window_started)
            record = {
                "kind": "step",
                "epoch": epoch,
                "epoch_float": step / steps_per_epoch,
                "step": step,
                "loss": window_loss / max(1, window_clips),
                "lr": lr,
                "samples_per_sec": rate,
            }
            _append_metrics(run.metrics_path, record)
            run.progress.step(step=step, epoch=f"{epoch + 1}/{config.optim.epochs}", loss=record["loss"], lr=lr, rate=rate)
            window_loss, window_clips, window_started = 0.0, 0, time.monotonic()
    return step, totals, failed, time.monotonic() - started


def _epoch_record(run: _Run, epoch: int, step: int, totals: torch.Tensor, failed: list[Failed], seconds: float, classes: list[str]) -> tuple[dict, list[Failed]]:
    """The epoch's metrics record (totals of every rank, validation) and every rank's failures."""
    ranks = run.ranks
    if ranks.ddp:
        dist.all_reduce(totals)
        gathered: list[list[Failed]] = [[] for _ in range(ranks.world)]
        dist.all_gather_object(gathered, failed)
        failed = [f for part in gathered for f in part]
    loss_sum, correct, seen = totals.tolist()
    record = {
        "kind": "epoch",
        "epoch": epoch,
        "step": step,
        "lr": get_lr(step - 1, run.config, run.loaders.steps_per_epoch),
        "train_loss": loss_sum / seen if seen else None,
        "train_top1": correct / seen if seen else None,
        "samples_per_sec": seen / seconds,
        "seconds": seconds,
    }
    if run.loaders.val is not None:
        tally = run_eval(run.model, run.loaders.val, num_classes=len(classes), normalize=run.normalize, ctx=run.ctx)
        if ranks.ddp:
            tally.all_reduce()
        failed += tally.failed
        summary = tally.summary(classes)
        record.update(val_loss=summary["loss"], val_top1=summary["top1"], val_top5=summary["top5"])
    return record, failed


def _save_epoch(run: _Run, card: ModelCard, record: dict, skipped: dict[str, str]) -> None:
    """Rank 0: commit the epoch's checkpoint (weights, card, train_state, its metrics record)."""
    config, run_dir, metrics_path = run.config, run.metrics_path.parent, run.metrics_path
    card.meta = {
        "recipe": config.to_dict(),
        "epoch": record["epoch"] + 1,
        **{k: record[k] for k in ("train_loss", "val_loss", "val_top1", "val_top5") if record.get(k) is not None},
    }
    train_state = {
        "epoch": record["epoch"],
        "step": record["step"],
        "world_size": run.ranks.world,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "config": config.to_dict(),
        "skipped": skipped,
    }

    def write(folder: Path) -> None:
        save_checkpoint(run.model, folder, card=card)
        torch.save(train_state, folder / "train_state.pt")
        if skipped:
            (folder / "skipped.txt").write_text("".join(f"{p}\t{r}\n" for p, r in sorted(skipped.items())), encoding="utf-8")
        # the epoch's record is committed with its checkpoint: a kill in between cannot lose it
        if metrics_path.is_file():
            shutil.copyfile(metrics_path, folder / metrics_path.name)
        _append_metrics(folder / metrics_path.name, record)

    _commit(run_dir, write)
    plotted = _plot_curves(metrics_path, run_dir / "curves.png")
    val_text = (
        f" | val loss {record['val_loss']:.4f} top-1 {record['val_top1']:.1%} top-5 {record['val_top5']:.1%}"
        if record.get("val_top1") is not None
        else ""
    )
    run.progress.note(
        f"epoch {record['epoch'] + 1}/{config.optim.epochs}: train loss {record['train_loss']:.4f} top-1 {record['train_top1']:.1%}"
        f"{val_text} | {record['samples_per_sec']:.1f} clips/s | skipped videos {len(skipped)}"
        + ("" if plotted else " | no curves.png: matplotlib is missing (pip install 'vidfeat[plot]')")
    )


def _start_note(run: _Run, state: dict | None, start_epoch: int, data, dtype: torch.dtype | None) -> str:
    """The line that says what this session does."""
    config, L, world = run.config, run.loaders, run.ranks.world
    d, o = config.data, config.optim
    if start_epoch >= o.epochs:
        return f"{run.metrics_path.parent} has finished its {o.epochs} epochs: nothing to do"
    begun = state["config"]["optim"]["epochs"] if state else o.epochs
    head = f"resuming at epoch {start_epoch + 1}" if state else "training"
    if begun != o.epochs:
        head += f" (optim.epochs {begun} -> {o.epochs}: the learning-rate schedule is recomputed for {o.epochs} epochs)"
    return (
        f"{head}: {len(L.train_set)} train"
        f"{f' (by data.class_weights {len(L.sampler) * world} an epoch)' if d.class_weights else ''} / "
        f"{len(data.val)} val videos, {len(data.classes)} classes, {o.epochs} epochs x {L.steps_per_epoch} steps "
        f"of {o.batch_size} clips{' + their reversals' if d.reverse_pairs else ''} ({o.micro_batch} x {L.accum} accumulated x {world} ranks), "
        f"{run.ranks.device}, {dtype or torch.float32} -> {run.metrics_path.parent}"
    )


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    model: TimeSformer  # the trained model (unwrapped, eval mode, with its card)
    run_dir: Path
    history: list[dict]  # the epoch records of metrics.jsonl, this session's
    rank: int


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False) -> TrainResult:
    """Train per ``config`` into the run directory ``out_dir`` (see the module docstring).

    ``resume``: continue from the checkpoint in ``out_dir`` (with the same recipe), reaching the
    same final weights as an uninterrupted run; without a checkpoint the run starts afresh. A
    resumed run may raise ``optim.epochs`` (the schedule is recomputed for the new length), not
    lower it below the epochs done. Under ``torchrun`` every rank calls this; rank 0 alone writes.
    """
    config.validate()
    if not config.data.train:
        raise ConfigError("data.train is not set: --set data.train=PATH (a folder of class sub-folders or a CSV/TSV list)")
    run_dir = Path(out_dir)
    ranks = _setup(config)
    progress: TrainProgress | None = None
    try:
        # -- data (every label is checked before anything is built or written), run directory --
        d, o = config.data, config.optim
        data = load_data(d.train, val=d.val or None, val_fraction=d.val_fraction, classes=d.classes or None, seed=config.seed)
        unknown = sorted(set(d.class_weights) - set(data.classes))
        if unknown:
            raise ConfigError(f"data.class_weights names classes not in the class list: {', '.join(unknown)}")
        state = _load_state(config, run_dir, resume, ranks)

        # -- model, optimizer, precision --
        device = ranks.device
        model, base = _build_model(config, data.classes, run_dir if state else None)
        preprocess = _preprocess(d, base)
        _freeze(model, config.model)
        model.set_grad_checkpointing(config.model.grad_checkpointing)
        model.to(device)
        optimizer = _optimizer(model, o)
        dtype = autocast_dtype(config.run.precision, device)
        ctx = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        if state:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ranks.ddp else model
        card = ModelCard(
            name=config.name or run_dir.resolve().name,
            config=model.config,
            preprocess=preprocess,
            classes=data.classes,
            description=f"trained with vidfeat train from {config.model.init}",
        )
        loaders = _loaders(config, data, preprocess, ranks)

        # -- bookkeeping --
        start_epoch = state["epoch"] + 1 if state else 0
        step = start_epoch * loaders.steps_per_epoch
        skipped: dict[str, str] = dict(state["skipped"]) if state else {}
        metrics_path = run_dir / "metrics.jsonl"
        if ranks.master:
            _keep_metrics(metrics_path, start_epoch)
        progress = TrainProgress(total=o.epochs * loaders.steps_per_epoch, done=step, enabled=ranks.master)
        normalize = Normalize(preprocess.mean, preprocess.std, ranks.device)
        run = _Run(config, ranks, model, net, optimizer, scaler, ctx, preprocess, normalize, loaders, metrics_path, progress)
        if state and state["world_size"] != ranks.world:
            progress.note(
                f"note: this run started with {state['world_size']} ranks, it resumes with {ranks.world}: the data order "
                "differs from an uninterrupted run's"
            )
        progress.note(_start_note(run, state, start_epoch, data, dtype))

        history: list[dict] = []
        for epoch in range(start_epoch, o.epochs):
            step, totals, failed, seconds = _train_epoch(run, epoch, step)
            record, failed = _epoch_record(run, epoch, step, totals, failed, seconds, data.classes)
            skipped.update({f.path: f.reason for f in failed})
            record["skipped"] = len(skipped)
            history.append(record)
            if ranks.master:
                _save_epoch(run, card, record, skipped)
            if ranks.ddp:
                dist.barrier()  # every rank leaves the epoch with the checkpoint written
        model.eval()
        model.card = card
        return TrainResult(model=model, run_dir=run_dir, history=history, rank=ranks.rank)
    finally:
        if progress is not None:
            progress.close()
        if ranks.ddp:
            dist.destroy_process_group()
