"""The GPU check: one command, one table, every figure beside its ceiling.

    python bench/gpu_check.py                        # on an H100/H200: at most ~8 minutes
    python bench/gpu_check.py --device cpu --small   # the same code paths on a CPU, ~1 minute

It makes its own test videos (H.264 with film grain: 1280x720 and 640x360 at 30 fps), then
measures, with random weights (no download):

1. model only, bf16 (fp32 on the CPU), ours eager and compiled, and Hugging Face's
   TimesformerForVideoClassification with the same weights (checked equal first), for base 8x224,
   HR 16x448 and L 96x224: clips/s over a batch sweep (the fitted default batch included), TFLOP/s
   and MFU against the chip's dense bf16 peak; ratios: MFU / 0.5 and ours / HF (goal 2x);
2. decode only, every core, PyAV (and NVDEC through torchcodec where it works): video hours
   decoded per hour with TimeSformer-L sampling (96 frames at 7.5 fps, short side 224);
3. end to end: `vidfeat.extract.extract` with a random TimeSformer-L on the test videos: video
   hours per GPU hour, the GPU's busy fraction (model-only time the clips need / wall time) and
   the ratio to the decode-only ceiling (goal 0.8), plus host syncs flagged by
   ``torch.cuda.set_sync_debug_mode`` during the run.

A part that cannot run here prints one line and the check goes on: no transformers -> no HF
column; no torchcodec or no NVDEC -> no NVDEC row. ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import torch
from footage import film_grain_video  # bench/footage.py (this folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_vs_hf import flops_per_clip, hf_twin  # noqa: E402

from vidfeat.cards import find_card  # noqa: E402
from vidfeat.clips import ClipSampling  # noqa: E402
from vidfeat.model import TimeSformer  # noqa: E402

# Dense bf16 peak TFLOP/s by device name (substring, first match).
PEAKS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
         ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0))  # fmt: skip
MFU_GOAL = 0.5
HF_GOAL = 2.0
E2E_GOAL = 0.8


@dataclass
class Row:
    section: str
    what: str
    figure: float
    unit: str
    ceiling: float | None = None
    ceiling_name: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.figure / self.ceiling if self.ceiling else None


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# test videos


def make_videos(folder: Path, small: bool, cores: int) -> dict[str, list[Path]]:
    """{resolution name: files}, encoded in parallel."""
    if small:
        plan = {"180p": (320, 180, 6.0, 2), "90p": (160, 90, 6.0, 2)}
    else:
        plan = {"720p": (1280, 720, 60.0, 4), "360p": (640, 360, 60.0, 4)}
    jobs, sets = [], {}
    for name, (w, h, seconds, count) in plan.items():
        sub = folder / name
        sub.mkdir(parents=True)
        sets[name] = [sub / f"v{i}.mp4" for i in range(count)]
        jobs += [(p, seconds, (w, h), 30, 1) for p in sets[name]]
    with mp.get_context("spawn").Pool(min(cores, len(jobs))) as pool:
        pool.starmap(film_grain_video, jobs)
    return sets


# ---------------------------------------------------------------------------------------------
# model only


def timed(fn, x, device: torch.device, min_sec: float) -> float:
    """Seconds a call: one warm-up call, then calls until ``min_sec`` have passed (at least 2)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn(x)
    sync()
    start, n = time.perf_counter(), 0
    while n < 2 or time.perf_counter() - start < min_sec:
        fn(x)
        n += 1
        if device.type == "cuda" and n % 4:
            continue
        sync()
    sync()
    return (time.perf_counter() - start) / n


def preset_config(name: str, small: bool):
    config = find_card(name).config
    if small:  # the same shapes' relations, a CPU's size
        config.embed_dim, config.num_heads, config.depth = 64, 2, 2
        config.num_frames = max(2, config.num_frames // 4)
        config.img_size = max(32, config.img_size // 7 // config.patch_size * config.patch_size)
    return config


def model_rows(args, device: torch.device, dtype: torch.dtype, peak: float | None) -> tuple[list[Row], dict]:
    rows, fastest = [], {}
    try:
        import transformers  # noqa: F401

        have_hf = True
    except ImportError:
        have_hf = False
        say("transformers is not installed: no Hugging Face column")
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    sweeps = {"base": (8, 32, 64), "hr": (2, 4, 8), "large": (2, 4, 8)} if not args.small else {"base": (1, 2), "hr": (1,), "large": (1, 2)}
    for name in args.presets:
        config = preset_config(name, args.small)
        torch.manual_seed(0)
        ours = TimeSformer(config).eval().to(device)
        ours.card = find_card(name)
        frames, size = config.num_frames, config.img_size
        flops = flops_per_clip(config, frames, size)
        label = f"{name} {frames}x{size}" + (" (small)" if args.small else "")

        def run_ours(v, model=ours):
            with torch.inference_mode(), autocast:
                return model.forward_head(model.forward_features(v))

        batches = list(sweeps[name])
        if device.type == "cuda":
            from vidfeat.batchsize import find_batch_size

            ours.card = _card_for(name, config)
            fitted = find_batch_size(ours, device, dtype, 1)
            say(f"{label}: fitted default batch {fitted}")
            batches = sorted(set(batches + [fitted]))
        best = (0.0, 0)
        for batch in batches:
            x = torch.randn(batch, 3, frames, size, size, device=device)
            sec = timed(run_ours, x, device, args.min_sec)
            rate = batch / sec
            rows.append(mfu_row(f"{label} ours eager b{batch}", rate, flops, peak))
            best = max(best, (rate, batch))
            del x
        rate, batch = best
        fastest[name] = rate
        x = torch.randn(batch, 3, frames, size, size, device=device)
        if have_hf:
            hf = hf_twin(ours).eval().to(device)

            def run_hf(v):
                with torch.inference_mode(), autocast:
                    return hf(pixel_values=v.transpose(1, 2)).logits

            diff = (run_ours(x[:1]).float() - run_hf(x[:1]).float()).abs().max().item()
            hf_batch = batch
            while True:  # HF's eager attention holds more memory: halve its batch until it fits
                try:
                    hf_rate = hf_batch / timed(run_hf, x[:hf_batch], device, args.min_sec)
                    break
                except torch.OutOfMemoryError:
                    if hf_batch == 1:
                        raise
                    hf_batch //= 2
                    torch.cuda.empty_cache()
            if hf_batch != batch:
                say(f"{label}: HF out of memory at batch {batch}, timed at {hf_batch}")
            rows.append(mfu_row(f"{label} HF b{batch}", hf_rate, flops, peak, note=f"max |logit diff| {diff:.1e}"))
            rows.append(Row("model", f"{label} ours / HF b{batch}", rate / hf_rate, "x", None, f"goal >= {HF_GOAL}"))
            del hf
        if name in args.compile_presets:
            start = time.perf_counter()
            step = torch.compile(lambda v, model=ours: model.forward_head(model.forward_features(v)), dynamic=False)

            def compiled(v):
                with torch.inference_mode(), autocast:
                    return step(v)

            compiled(x)
            compile_sec = time.perf_counter() - start
            c_rate = batch / timed(compiled, x, device, args.min_sec)
            rows.append(mfu_row(f"{label} ours compiled b{batch}", c_rate, flops, peak, note=f"compile {compile_sec:.0f} s"))
            rows.append(Row("model", f"{label} compiled / eager b{batch}", c_rate / rate, "x", None, "goal > 1"))
            fastest[name] = max(rate, c_rate)
            del compiled, step
            torch._dynamo.reset()
        del ours, x
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, fastest


def _card_for(name: str, config):
    import copy

    card = copy.deepcopy(find_card(name))
    card.config = config
    card.preprocess = replace(card.preprocess, num_frames=config.num_frames, crop_size=config.img_size,
                              short_side=config.img_size)  # fmt: skip
    return card


def mfu_row(what: str, rate: float, flops: float, peak: float | None, note: str = "") -> Row:
    """clips/s beside the clips/s at the chip's peak: the ratio is the MFU (goal 0.5)."""
    tflops = rate * flops / 1e12
    text = f"{tflops:.3g} TFLOP/s" + (f"; {note}" if note else "")
    if peak:
        return Row("model", what, rate, "clips/s", peak * 1e12 / flops, "100% MFU", text)
    return Row("model", what, rate, "clips/s", None, "", text)


# ---------------------------------------------------------------------------------------------
# decode only


def _decode_one(job: tuple[str, str, float, int, int]) -> float:
    """Decode every clip of a video; returns its measured duration (seconds)."""
    from vidfeat.video import ClipReader

    path, decoder, fps, frames, short_side = job
    with ClipReader(path, ClipSampling(frames, fps), short_side=short_side, threads=1, decoder=decoder) as reader:
        for _ in reader:
            pass
        return float(reader.duration_sec or 0.0)


def decode_rows(sets: dict[str, list[Path]], sampling: tuple[float, int, int], cores: int, nvdec: bool, repeat: int):
    rows, ceilings = [], {}
    fps, frames, short_side = sampling
    for name, files in sets.items():
        jobs = [(str(p), "pyav", fps, frames, short_side) for p in files] * repeat
        with mp.get_context("fork").Pool(cores) as pool:
            pool.map(_decode_one, jobs[:cores])  # warm the page cache and the workers
            start = time.perf_counter()
            seconds = sum(pool.map(_decode_one, jobs, chunksize=1))
            wall = time.perf_counter() - start
        rate = seconds / wall
        ceilings[name] = rate
        rows.append(Row("decode", f"PyAV {name}, {cores} processes", rate, "video-h/h", None, "",
                        f"{len(jobs)} videos, {seconds / 60:.1f} min"))  # fmt: skip
        if nvdec:
            from concurrent.futures import ThreadPoolExecutor

            nv_jobs = [(str(p), "nvdec", fps, frames, short_side) for p in files] * repeat
            _decode_one(nv_jobs[0])
            start = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                seconds = sum(pool.map(_decode_one, nv_jobs))
            nv = seconds / (time.perf_counter() - start)
            rows.append(Row("decode", f"NVDEC {name}, 4 threads", nv, "video-h/h", rate, "PyAV all cores"))
    return rows, ceilings


# ---------------------------------------------------------------------------------------------
# end to end


def e2e_rows(args, sets, device, dtype, tmp: Path, model_rate: float, ceilings: dict, workers: int, nvdec: bool) -> list[Row]:
    from vidfeat.inputs import discover
    from vidfeat.weights import save_checkpoint

    name = "large"
    config = preset_config(name, args.small)
    torch.manual_seed(0)
    model = TimeSformer(config)
    card = _card_for(name, config)
    model_dir = save_checkpoint(model, tmp / "random-large", card=card, name="random.large")
    del model
    rows = []
    for res, files in sets.items():
        folder = tmp / f"e2e-{res}"
        folder.mkdir()
        for k in range(args.repeat if args.small else 4 * args.repeat):  # the same files under several names
            for p in files:
                (folder / f"{k}-{p.name}").symlink_to(p)
        videos, _ = discover([folder])
        for decoder in ("pyav", "nvdec") if nvdec else ("pyav",):
            rows.append(_e2e_row(videos, tmp / f"e2e-{res}-{decoder}.h5", model_dir, device, dtype, workers, decoder,
                                 res, card, model_rate, ceilings))  # fmt: skip
    return rows


def _e2e_row(videos, out: Path, model_dir, device, dtype, workers, decoder, res, card, model_rate, ceilings) -> Row:
    from vidfeat.extract import ExtractOptions, extract
    from vidfeat.store import open_features

    options = ExtractOptions(model=str(model_dir), device=str(device), dtype="bf16" if dtype == torch.bfloat16 else "fp32",
                             workers=workers, commit_seconds=60, decoder=decoder)  # fmt: skip
    syncs = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        start = time.perf_counter()
        report = extract(videos, out, options)
        wall = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in caught)
    with open_features(out) as f:
        seconds = float(np.nansum(f.videos.duration_sec))
    rate = seconds / wall
    busy = report.clips / model_rate / wall if model_rate else math.nan
    what = f"L {res} {decoder}, {workers} workers ({report.clips} clips, {report.counts['ok']} ok)"
    clip_step = card.preprocess.num_frames / card.preprocess.fps / 2  # seconds of video a clip adds
    note = f"{'GPU' if device.type == 'cuda' else 'model'} busy {busy:.0%}; model-only ceiling {model_rate * clip_step:.0f} video-h/h"
    if device.type == "cuda":
        note += f"; host syncs flagged {syncs}"
    return Row("end to end", what, rate, "video-h/h", ceilings.get(res), f"PyAV decode-only {res}", note)


# ---------------------------------------------------------------------------------------------


def print_table(rows: list[Row], goals: dict[str, float]) -> None:
    head = f"{'section':<11} {'what':<48} {'figure':>10} {'unit':<9} {'ceiling':>10}  {'ratio':>6}  {'ceiling is':<16} note"
    say("\n" + head)
    say("-" * len(head))
    for r in rows:
        ceiling = f"{r.ceiling:10.2f}" if r.ceiling else f"{'-':>10}"
        ratio = f"{r.ratio:6.2f}" if r.ratio is not None else f"{'-':>6}"
        say(f"{r.section:<11} {r.what:<48} {r.figure:10.2f} {r.unit:<9} {ceiling}  {ratio}  {r.ceiling_name:<16} {r.note}")
    say("goals: " + ", ".join(f"{k} {v}" for k, v in goals.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny models and videos (the CPU test)")
    parser.add_argument("--peak-tflops", type=float, help="the chip's dense bf16 peak (default: from its name)")
    parser.add_argument("--presets", nargs="+", default=["base", "hr", "large"], choices=["base", "hr", "large"])
    parser.add_argument("--compile-presets", nargs="*", help="presets timed compiled too (default: all; --small: base)")
    parser.add_argument("--min-sec", type=float, help="seconds each timing runs (default 2; --small 0.2)")
    parser.add_argument("--repeat", type=int, help="each test video counts this many times (default 4; --small 1)")
    parser.add_argument("--workers", type=int, help="decode processes end to end (default: cores - 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["model", "decode", "e2e"])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.min_sec = args.min_sec or (0.2 if args.small else 2.0)
    args.repeat = args.repeat or (1 if args.small else 4)
    if args.compile_presets is None:
        args.compile_presets = ["base"] if args.small else args.presets

    started = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = args.workers or max(1, cores - 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or (next((p for key, p in PEAKS if key in name), None) if device.type == "cuda" else None)
    from vidfeat.decoders import nvdec_unavailable, torchcodec_unavailable

    tc = torchcodec_unavailable()
    nv = nvdec_unavailable(device.index or 0) if device.type == "cuda" else "not a CUDA run"
    say(f"device: {name}; {cores} cores; torch {torch.__version__}; PyAV {av.__version__}; "
        f"peak {peak or '-'} TFLOP/s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    say(f"torchcodec: {'ok' if tc is None else tc}; NVDEC: {'ok' if nv is None else nv}")
    if device.type == "cuda" and peak is None:
        say("unknown GPU peak: no MFU (give --peak-tflops)")

    rows: list[Row] = []
    fastest: dict[str, float] = {}
    if "model" not in args.skip:
        model_rows_, fastest = model_rows(args, device, dtype, peak)
        rows += model_rows_
        say(f"model part done at {time.perf_counter() - started:.0f} s")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ceilings: dict[str, float] = {}
        if not ({"decode", "e2e"} <= set(args.skip)):
            sets = make_videos(tmp / "videos", args.small, cores)
            say(f"test videos made at {time.perf_counter() - started:.0f} s")
            large = preset_config("large", args.small)
            sampling = (find_card("large").preprocess.fps, large.num_frames, large.img_size)
            decode, ceilings = decode_rows(sets, sampling, cores, nv is None, args.repeat)
            rows += decode
            say(f"decode part done at {time.perf_counter() - started:.0f} s")
        if "e2e" not in args.skip:
            model_rate = fastest.get("large") or 0.0
            rows += e2e_rows(args, sets, device, dtype, tmp, model_rate, ceilings, workers, nv is None)
            say(f"end-to-end part done at {time.perf_counter() - started:.0f} s")
    goals = {"model ratio (MFU)": f">= {MFU_GOAL}", "ours/HF": f">= {HF_GOAL}", "e2e/decode-only": f">= {E2E_GOAL}"}
    print_table(rows, goals)
    say(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "ratio": r.ratio} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
