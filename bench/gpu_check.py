"""The GPU check: one command, one table, every figure beside its ceiling.

    python bench/gpu_check.py --json gpu_check.json   # on an H100/H200: at most --budget-sec (480)
    python bench/gpu_check.py --device cpu --small     # the same code paths on a CPU, ~1 minute
    OUT=out bash bench/gpu_session.sh                  # the device run: wheels, install, this check

It makes its own test videos (H.264 with film grain: 1280x720 and 640x360 at 30 fps), then
measures, with random weights (no download), in this order (the most wanted figures first, so
that a check cut short by its budget still has them):

1. model only, bf16 (fp32 on the CPU), ours eager and Hugging Face's
   TimesformerForVideoClassification with the same weights (checked equal first), for L 96x224,
   base 8x224 and HR 16x448: clips/s over a batch sweep (the fitted default batch included),
   TFLOP/s and MFU against the chip's dense bf16 peak; ratios: MFU (goal 0.5) and ours / HF
   (goal 2);
2. decode only, every core, PyAV (and NVDEC through torchcodec where it works): video hours
   decoded per hour with TimeSformer-L sampling (96 frames at 7.5 fps, short side 224);
3. end to end: `vidfeat.pipeline.driver.extract` with a random TimeSformer-L on the test videos: video
   hours per GPU hour, the GPU's busy fraction (model-only time the clips need / wall time) and
   the ratio to the decode-only ceiling (goal 0.8), plus host syncs flagged by
   ``torch.cuda.set_sync_debug_mode`` during the run;
4. ours compiled (torch.compile) against ours eager, per preset, while the budget lasts.

A part that cannot run here prints one line and the check goes on: no transformers -> no HF
column; no torchcodec or no NVDEC -> no NVDEC row; an exception in a part -> its traceback on
stderr, an "error" row, and the next part. Before each step the check looks at its budget and
skips what would start too late, saying so. ``--json FILE`` holds the rows and the run's
particulars, rewritten after every row (a run killed from outside still leaves what it
measured); ``--markdown FILE`` the table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from footage import film_grain_video  # noqa: E402  (bench/footage.py)
from model_vs_hf import flops_per_clip, hf_twin  # noqa: E402

from vidfeat.model.cards import find_card  # noqa: E402
from vidfeat.video.sampling import ClipSampling  # noqa: E402
from vidfeat.model.timesformer import TimeSformer  # noqa: E402

# Dense bf16 peak TFLOP/s by device name (substring, first match).
PEAKS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
         ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0))  # fmt: skip
MFU_GOAL = 0.5
HF_GOAL = 2.0
E2E_GOAL = 0.8
GOALS = {"model ratio (MFU)": f">= {MFU_GOAL}", "ours/HF": f">= {HF_GOAL}", "e2e/decode-only": f">= {E2E_GOAL}"}

# Seconds of budget a step needs left to start (rough costs on an H200; the CPU run is small).
NEEDS = {"preset": 25.0, "videos": 60.0, "decode": 30.0, "e2e": 45.0, "compile": 75.0}


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
        return self.figure / self.ceiling if self.ceiling and not math.isnan(self.figure) else None


def say(text: str) -> None:
    print(text, flush=True)


class Table:
    """The rows so far, kept on disk (``--json``) after every change."""

    def __init__(self, json_path: Path | None, meta: dict) -> None:
        self.rows: list[Row] = []
        self.path, self.meta = json_path, meta

    def add(self, *rows: Row) -> None:
        self.rows += rows
        for r in rows:
            say(f"  {r.section}: {r.what}: {r.figure:.4g} {r.unit}" + (f" (ratio {r.ratio:.2f})" if r.ratio else ""))
        self.save()

    def save(self) -> None:
        if self.path:
            body = {"meta": self.meta, "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows]}
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(body, indent=1))
            os.replace(tmp, self.path)

    def text(self) -> str:
        head = f"{'section':<11} {'what':<50} {'figure':>10} {'unit':<9} {'ceiling':>10}  {'ratio':>6}  {'ceiling is':<16} note"
        lines = ["", head, "-" * len(head)]
        for r in self.rows:
            ceiling = f"{r.ceiling:10.2f}" if r.ceiling else f"{'-':>10}"
            ratio = f"{r.ratio:6.2f}" if r.ratio is not None else f"{'-':>6}"
            lines.append(f"{r.section:<11} {r.what:<50} {r.figure:10.2f} {r.unit:<9} {ceiling}  {ratio}  {r.ceiling_name:<16} {r.note}")
        lines.append("goals: " + ", ".join(f"{k} {v}" for k, v in GOALS.items()))
        return "\n".join(lines)

    def markdown(self) -> str:
        m = self.meta
        lines = [f"{m['device']}; {m['cores']} cores; torch {m['torch']}; PyAV {m['pyav']}; {m['date']}; "
                 f"`{m['command']}`", "", "| section | what | figure | unit | ceiling | ratio | ceiling is | note |",
                 "| --- | --- | ---: | --- | ---: | ---: | --- | --- |"]  # fmt: skip
        for r in self.rows:
            ceiling = f"{r.ceiling:.2f}" if r.ceiling else "-"
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
            lines.append(f"| {r.section} | {r.what} | {r.figure:.2f} | {r.unit} | {ceiling} | {ratio} | {r.ceiling_name} | {r.note} |")
        return "\n".join(lines) + "\n"


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, step: str, what: str) -> bool:
        """Whether ``step`` (a key of NEEDS) may start; says so when it may not."""
        left = self.seconds - self.elapsed()
        if left >= NEEDS[step]:
            return True
        say(f"skipped {what}: {left:.0f} s of the {self.seconds:.0f} s budget left, it needs about {NEEDS[step]:.0f}")
        return False


def guarded(table: Table, section: str, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception becomes an "error" row and a traceback on stderr."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one part's failure must not lose the others
        traceback.print_exc()
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        say(f"{what} failed: {reason}")
        table.add(Row(section, f"{what}: error", math.nan, "", note=reason))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


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


class Preset:
    """One model size: our model on the device, its FLOPs a clip, and the best eager batch."""

    def __init__(self, name: str, check: Check) -> None:
        self.name, self.check = name, check
        self.config = preset_config(name, check.args.small)
        torch.manual_seed(0)
        self.model = TimeSformer(self.config).eval().to(check.device)
        self.model.card = _card_for(name, self.config)
        self.flops = flops_per_clip(self.config, self.config.num_frames, self.config.img_size)
        self.label = f"{name} {self.config.num_frames}x{self.config.img_size}" + (" (small)" if check.args.small else "")
        self.best = (0.0, 1)  # (clips/s, batch) of ours eager

    def input(self, batch: int) -> torch.Tensor:
        c = self.config
        return torch.randn(batch, 3, c.num_frames, c.img_size, c.img_size, device=self.check.device)

    def ours(self, v):
        with torch.inference_mode(), self.check.autocast():
            return self.model.forward_head(self.model.forward_features(v))

    def sweep(self) -> None:
        check = self.check
        batches = list(check.sweeps[self.name])
        if check.device.type == "cuda":
            from vidfeat.pipeline.batchsize import find_batch_size

            fitted = find_batch_size(self.model, check.device, check.dtype, 1)
            say(f"{self.label}: fitted default batch {fitted}")
            batches = sorted(set(batches + [fitted]))
        for batch in batches:
            try:
                sec = timed(self.ours, self.input(batch), check.device, check.args.min_sec)
            except torch.OutOfMemoryError:
                say(f"{self.label}: out of memory at batch {batch}")
                torch.cuda.empty_cache()
                break
            rate = batch / sec
            check.table.add(mfu_row(f"{self.label} ours eager b{batch}", rate, self.flops, check.peak))
            self.best = max(self.best, (rate, batch))

    def against_hf(self) -> None:
        check = self.check
        rate, batch = self.best
        hf = hf_twin(self.model).eval().to(check.device)

        def run_hf(v):
            with torch.inference_mode(), check.autocast():
                return hf(pixel_values=v.transpose(1, 2)).logits

        x = self.input(batch)
        diff = (self.ours(x[:1]).float() - run_hf(x[:1]).float()).abs().max().item()
        hf_batch = batch
        while True:  # HF's eager attention holds more memory: halve its batch until it fits
            try:
                hf_rate = hf_batch / timed(run_hf, x[:hf_batch], check.device, check.args.min_sec)
                break
            except torch.OutOfMemoryError:
                if hf_batch == 1:
                    raise
                hf_batch //= 2
                torch.cuda.empty_cache()
        note = f"max |logit diff| {diff:.1e}" + (f"; out of memory at b{batch}" if hf_batch != batch else "")
        check.table.add(mfu_row(f"{self.label} HF b{hf_batch}", hf_rate, self.flops, check.peak, note=note),
                        Row("model", f"{self.label} ours / HF b{batch}", rate / hf_rate, "x", None, f"goal >= {HF_GOAL}"))  # fmt: skip

    def compiled(self) -> None:
        check = self.check
        rate, batch = self.best
        x = self.input(batch)
        start = time.perf_counter()
        step = torch.compile(lambda v, model=self.model: model.forward_head(model.forward_features(v)), dynamic=False)

        def run(v):
            with torch.inference_mode(), check.autocast():
                return step(v)

        run(x)
        compile_sec = time.perf_counter() - start
        c_rate = batch / timed(run, x, check.device, check.args.min_sec)
        check.table.add(mfu_row(f"{self.label} ours compiled b{batch}", c_rate, self.flops, check.peak,
                                note=f"compile {compile_sec:.0f} s"),
                        Row("model", f"{self.label} compiled / eager b{batch}", c_rate / rate, "x", None, "goal > 1"))  # fmt: skip
        torch._dynamo.reset()

    def release(self) -> None:
        self.model.to("cpu")
        if self.check.device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# decode only


def _decode_one(job: tuple[str, str, float, int, int]) -> float:
    """Decode every clip of a video; returns its measured duration (seconds)."""
    from vidfeat.video.reader import ClipReader

    path, decoder, fps, frames, short_side = job
    with ClipReader(path, ClipSampling(frames, fps), short_side=short_side, threads=1, decoder=decoder) as reader:
        for _ in reader:
            pass
        return float(reader.duration_sec or 0.0)


def decode_rows(name: str, files: list[Path], sampling: tuple[float, int, int], cores: int, nvdec: bool,
                repeat: int) -> tuple[list[Row], float]:  # fmt: skip
    fps, frames, short_side = sampling
    jobs = [(str(p), "pyav", fps, frames, short_side) for p in files] * repeat
    with mp.get_context("fork").Pool(cores) as pool:
        pool.map(_decode_one, jobs[:cores])  # warm the page cache and the workers
        start = time.perf_counter()
        seconds = sum(pool.map(_decode_one, jobs, chunksize=1))
        wall = time.perf_counter() - start
    rate = seconds / wall
    rows = [Row("decode", f"PyAV {name}, {cores} processes", rate, "video-h/h", None, "",
                f"{len(jobs)} videos, {seconds / 60:.1f} min")]  # fmt: skip
    if nvdec:
        from concurrent.futures import ThreadPoolExecutor

        nv_jobs = [(str(p), "nvdec", fps, frames, short_side) for p in files] * repeat
        _decode_one(nv_jobs[0])
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            seconds = sum(pool.map(_decode_one, nv_jobs))
        nv = seconds / (time.perf_counter() - start)
        rows.append(Row("decode", f"NVDEC {name}, 4 threads", nv, "video-h/h", rate, "PyAV all cores"))
    return rows, rate


# ---------------------------------------------------------------------------------------------
# end to end


def e2e_row(check: Check, res: str, files: list[Path], decoder: str, model_dir: Path, model_rate: float,
            ceiling: float | None) -> Row:  # fmt: skip
    from vidfeat.pipeline.driver import ExtractOptions, extract
    from vidfeat.video.inputs import discover
    from vidfeat.store import open_features

    folder = check.tmp / f"e2e-{res}-{decoder}"
    folder.mkdir()
    for k in range(check.args.repeat if check.args.small else 4 * check.args.repeat):  # the files under several names
        for p in files:
            (folder / f"{k}-{p.name}").symlink_to(p)
    videos, _ = discover([folder])
    device, out = check.device, check.tmp / f"e2e-{res}-{decoder}.h5"
    options = ExtractOptions(model=str(model_dir), device=str(device), dtype="bf16" if check.dtype == torch.bfloat16 else "fp32",
                             workers=check.workers, commit_seconds=60, decoder=decoder)  # fmt: skip
    syncs = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            start = time.perf_counter()
            report = extract(videos, out, options)
            wall = time.perf_counter() - start
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    with open_features(out) as f:
        seconds = float(np.nansum(f.videos.duration_sec))
    rate = seconds / wall
    busy = report.clips / model_rate / wall if model_rate else math.nan
    what = f"L {res} {decoder}, {check.workers} workers ({report.clips} clips, {report.counts['ok']} ok)"
    card = find_card("large")
    clip_step = card.preprocess.num_frames / card.preprocess.fps / 2  # seconds of video a clip adds
    note = f"{'GPU' if device.type == 'cuda' else 'model'} busy {busy:.0%}; model-only ceiling {model_rate * clip_step:.0f} video-h/h"
    if device.type == "cuda":
        note += f"; host syncs flagged {syncs}"
    return Row("end to end", what, rate, "video-h/h", ceiling, f"PyAV decode-only {res}", note)


# ---------------------------------------------------------------------------------------------


class Check:
    def __init__(self, args, table: Table, device: torch.device, peak: float | None, cores: int, nvdec: bool) -> None:
        self.args, self.table, self.device, self.peak, self.cores, self.nvdec = args, table, device, peak, cores, nvdec
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.workers = args.workers or max(1, cores - 1)
        self.budget = Budget(args.budget_sec)
        self.sweeps = ({"base": (1, 2), "hr": (1,), "large": (1, 2)} if args.small
                       else {"base": (8, 32, 64), "hr": (2, 4, 8), "large": (2, 4, 8)})  # fmt: skip
        self.tmp = Path(".")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def run(self) -> None:
        try:
            import transformers  # noqa: F401

            have_hf = True
        except ImportError:
            have_hf = False
            say("transformers is not installed: no Hugging Face column")
        best: dict[str, tuple[float, int]] = {}
        if "model" not in self.args.skip:
            for name in self.args.presets:
                if not self.budget.allows("preset", f"the {name} model part"):
                    continue
                preset = guarded(self.table, "model", f"{name} setup", Preset, name, self)
                if preset is None:
                    continue
                guarded(self.table, "model", f"{preset.label} eager sweep", preset.sweep)
                if have_hf and preset.best[0] > 0:
                    guarded(self.table, "model", f"{preset.label} HF", preset.against_hf)
                best[name] = preset.best
                preset.release()
                say(f"{preset.label} done at {self.budget.elapsed():.0f} s")
        with tempfile.TemporaryDirectory() as tmp_name:
            self.tmp = Path(tmp_name)
            if not {"decode", "e2e"} <= set(self.args.skip) and self.budget.allows("videos", "the test videos"):
                sets = make_videos(self.tmp / "videos", self.args.small, self.cores)
                say(f"test videos made at {self.budget.elapsed():.0f} s")
                ceilings = self._decode(sets) if "decode" not in self.args.skip else {}
                if "e2e" not in self.args.skip:
                    self._e2e(sets, ceilings, best.get("large", (0.0, 1))[0])
        if self.args.compile_presets:
            for name in self.args.compile_presets:
                if name in best and best[name][0] > 0 and self.budget.allows("compile", f"{name} compiled"):
                    preset = guarded(self.table, "model", f"{name} setup", Preset, name, self)
                    if preset is not None:
                        preset.best = best[name]
                        guarded(self.table, "model", f"{preset.label} compiled", preset.compiled)
                        preset.release()
                        say(f"{preset.label} compiled done at {self.budget.elapsed():.0f} s")

    def _decode(self, sets) -> dict[str, float]:
        large = preset_config("large", self.args.small)
        sampling = (find_card("large").preprocess.fps, large.num_frames, large.img_size)
        ceilings = {}
        for res, files in sets.items():
            if not self.budget.allows("decode", f"decode {res}"):
                continue
            found = guarded(self.table, "decode", f"decode {res}", decode_rows, res, files, sampling, self.cores,
                            self.nvdec, self.args.repeat)  # fmt: skip
            if found:
                self.table.add(*found[0])
                ceilings[res] = found[1]
        say(f"decode part done at {self.budget.elapsed():.0f} s")
        return ceilings

    def _e2e(self, sets, ceilings: dict[str, float], model_rate: float) -> None:
        from vidfeat.model.weights import save_checkpoint

        config = preset_config("large", self.args.small)
        torch.manual_seed(0)
        model_dir = save_checkpoint(TimeSformer(config), self.tmp / "random-large", card=_card_for("large", config),
                                    name="random.large")  # fmt: skip
        for res, files in sets.items():
            for decoder in ("pyav", "nvdec") if self.nvdec else ("pyav",):
                if not self.budget.allows("e2e", f"end to end {res} {decoder}"):
                    continue
                row = guarded(self.table, "end to end", f"L {res} {decoder}", e2e_row, self, res, files, decoder,
                              model_dir, model_rate, ceilings.get(res))  # fmt: skip
                if row:
                    self.table.add(row)
        say(f"end-to-end part done at {self.budget.elapsed():.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny models and videos (the CPU test)")
    parser.add_argument("--peak-tflops", type=float, help="the chip's dense bf16 peak (default: from its name)")
    parser.add_argument("--presets", nargs="+", default=["large", "base", "hr"], choices=["base", "hr", "large"])
    parser.add_argument("--compile-presets", nargs="*", help="presets timed compiled too, last (default: all; --small: base)")
    parser.add_argument("--min-sec", type=float, help="seconds each timing runs (default 2; --small 0.2)")
    parser.add_argument("--repeat", type=int, help="each test video counts this many times (default 4; --small 1)")
    parser.add_argument("--workers", type=int, help="decode processes end to end (default: cores - 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["model", "decode", "e2e"])
    parser.add_argument("--budget-sec", type=float, default=480.0, help="start no step after this (default 480)")
    parser.add_argument("--json", type=Path, help="the rows and the run's particulars, kept up to date")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    args.min_sec = args.min_sec or (0.2 if args.small else 2.0)
    args.repeat = args.repeat or (1 if args.small else 4)
    if args.compile_presets is None:
        args.compile_presets = ["base"] if args.small else args.presets

    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or (next((p for key, p in PEAKS if key in name), None) if device.type == "cuda" else None)
    from vidfeat.video.decoders import nvdec_unavailable, torchcodec_unavailable

    tc = torchcodec_unavailable()
    nv = nvdec_unavailable(device.index or 0) if device.type == "cuda" else "not a CUDA run"
    meta = {"device": name, "cores": cores, "torch": torch.__version__, "cuda": torch.version.cuda, "pyav": av.__version__,
            "python": platform.python_version(), "peak_tflops": peak, "torchcodec": tc or "ok", "nvdec": nv or "ok",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python", "bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])}  # fmt: skip
    say(f"device: {name}; {cores} cores; torch {torch.__version__}; PyAV {av.__version__}; "
        f"peak {peak or '-'} TFLOP/s; {meta['date']}")  # fmt: skip
    say(f"torchcodec: {meta['torchcodec']}; NVDEC: {meta['nvdec']}")
    if device.type == "cuda" and peak is None:
        say("unknown GPU peak: no MFU (give --peak-tflops)")

    table = Table(args.json, meta)
    check = Check(args, table, device, peak, cores, nv is None)
    check.run()
    meta["total_sec"] = round(check.budget.elapsed(), 1)
    table.save()
    say(table.text())
    say(f"total {check.budget.elapsed():.0f} s")
    if args.markdown:
        args.markdown.write_text(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
