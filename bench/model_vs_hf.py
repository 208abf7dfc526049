"""Forward throughput of vidfeat's TimeSformer divided by Hugging Face's, same weights and config.

Both models get identical random weights (HF's layout converted with vidfeat.model.weights.to_hf); the
script checks their outputs agree before timing. On a GPU it also prints model FLOP utilisation
(MFU) against the card's peak (``--peak-tflops``, default: H100 SXM dense bf16, 989).

    python bench/model_vs_hf.py                          # CPU: base 8x224, fp32, batch 1
    python bench/model_vs_hf.py --preset large --device cuda --dtype bf16 --batch 4
"""

from __future__ import annotations

import argparse
import time

import torch

from vidfeat.model.cards import find_card
from vidfeat.model.config import TimeSformerConfig
from vidfeat.model.timesformer import TimeSformer
from vidfeat.model.weights import to_hf


def flops_per_clip(config: TimeSformerConfig, frames: int, size: int) -> float:
    """Matmul FLOPs (2 x MACs) of one forward pass; LayerNorm, softmax and GELU are left out."""
    n, t, d = (size // config.patch_size) ** 2, frames, config.embed_dim
    hidden = d * config.mlp_ratio
    embed = n * t * d * config.in_chans * config.patch_size**2
    if config.attention_type == "divided_space_time":
        temporal = n * t * 5 * d * d + 2 * n * t * t * d  # qkv + proj + temporal_fc, QK^T + AV
        spatial = t * (n + 1) * 4 * d * d + 2 * t * (n + 1) ** 2 * d
        mlp = (n * t + 1) * 2 * d * hidden
        block = temporal + spatial + mlp
    elif config.attention_type == "joint_space_time":
        tokens = n * t + 1
        block = tokens * (4 * d * d + 2 * d * hidden) + 2 * tokens**2 * d
    else:
        tokens = t * (n + 1)
        block = tokens * (4 * d * d + 2 * d * hidden) + 2 * t * (n + 1) ** 2 * d
    return 2.0 * (embed + config.depth * block)


def hf_twin(model: TimeSformer):
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    c = model.config
    hf = TimesformerForVideoClassification(
        TimesformerConfig(
            image_size=c.img_size,
            patch_size=c.patch_size,
            num_frames=c.num_frames,
            hidden_size=c.embed_dim,
            num_hidden_layers=c.depth,
            num_attention_heads=c.num_heads,
            intermediate_size=int(c.embed_dim * c.mlp_ratio),
            num_labels=c.num_classes,
            attention_type=c.attention_type,
        )
    )
    hf.load_state_dict(to_hf(model.state_dict()), strict=True)
    return hf


def timed(fn, x, iters: int, device: torch.device) -> float:
    """Seconds per call (after one warm-up call)."""
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", help="card name or alias (architecture only; random weights)")
    parser.add_argument("--depth", type=int, help="override the number of blocks (quick CPU runs)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="time our model torch.compile'd too")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak for MFU (H100 SXM bf16 dense)")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = find_card(args.preset).config
    if args.depth:
        config.depth = args.depth
    torch.manual_seed(0)
    ours = TimeSformer(config).eval().to(device)
    hf = hf_twin(ours).eval().to(device)
    frames, size = config.num_frames, config.img_size
    x = torch.randn(args.batch, 3, frames, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def run_ours(v):
        with torch.inference_mode(), autocast:
            return ours(v)

    def run_hf(v):
        with torch.inference_mode(), autocast:
            return hf(pixel_values=v.transpose(1, 2)).logits

    diff = (run_ours(x).float() - run_hf(x).float()).abs().max().item()
    if args.compile:
        step = torch.compile(ours)

        def run_compiled(v):
            with torch.inference_mode(), autocast:
                return step(v)

        compiled_diff = (run_compiled(x).float() - run_ours(x).float()).abs().max().item()
        t_compiled = timed(run_compiled, x, args.iters, device)
    t_ours = timed(run_ours, x, args.iters, device)
    t_hf = timed(run_hf, x, args.iters, device)
    flops = flops_per_clip(config, frames, size) * args.batch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"model: {args.preset} depth {config.depth}, {frames}x{size}, {config.attention_type}, {args.dtype}, batch {args.batch}")
    print(f"max |logit difference| ours vs HF: {diff:.2e}")
    print(f"ours: {args.batch / t_ours:.3f} clips/s ({flops / t_ours / 1e12:.2f} TFLOP/s)")
    print(f"HF:   {args.batch / t_hf:.3f} clips/s ({flops / t_hf / 1e12:.2f} TFLOP/s)")
    print(f"throughput ratio ours/HF: {t_hf / t_ours:.2f}x")
    if args.compile:
        print(f"compiled: {args.batch / t_compiled:.3f} clips/s, {t_ours / t_compiled:.2f}x eager "
              f"(max |logit difference| to eager {compiled_diff:.2e})")  # fmt: skip
    if device.type == "cuda":
        print(f"MFU ours: {flops / t_ours / 1e12 / args.peak_tflops:.1%}  HF: {flops / t_hf / 1e12 / args.peak_tflops:.1%}")


if __name__ == "__main__":
    main()
