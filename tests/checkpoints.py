"""Small random checkpoints in every supported format, for tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from vidfeat.model.config import TimeSformerConfig
from vidfeat.model.timesformer import TimeSformer


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Overwrite every parameter with N(0, std) noise, so that zero inits (temporal_fc, biases,
    time embeddings) cannot hide a mapping bug."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def small_config(**overrides) -> TimeSformerConfig:
    """2 blocks, width 128 with 64-wide heads (the official heads = width / 64 rule), 8 x 64 px."""
    values = dict(img_size=64, patch_size=16, num_frames=8, num_classes=5, embed_dim=128, depth=2, num_heads=2)
    values.update(overrides)
    return TimeSformerConfig(**values)


def hf_model(attention_type: str = "divided_space_time", seed: int = 0, **overrides):
    """A random ``TimesformerForVideoClassification`` matching ``small_config``."""
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    values = dict(
        image_size=64,
        patch_size=16,
        num_frames=8,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        num_labels=5,
        attention_type=attention_type,
    )
    values.update(overrides)
    model = TimesformerForVideoClassification(TimesformerConfig(**values)).eval()
    return randomize_(model, seed)


def save_hf(path: Path, attention_type: str = "divided_space_time", seed: int = 0, **overrides):
    model = hf_model(attention_type, seed, **overrides)
    model.save_pretrained(path)
    return model


def save_official(path: Path, model: TimeSformer, epoch: int = 15) -> Path:
    """An official-style ``.pyth``: the training wrapper with ``model.``-prefixed keys and YAML cfg."""
    checkpoint = {
        "epoch": epoch,
        "model_state": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.005, "momentum": 0.9, "params": [0, 1]}]},
        "cfg": "TRAIN:\n  ENABLE: true\nDATA:\n  NUM_FRAMES: 8\nTIMESFORMER:\n  ATTENTION_TYPE: divided_space_time\n",
    }
    torch.save(checkpoint, path)
    return path


def save_tiny_model(path: Path, *, num_frames: int = 8, fps: float = 4.0, size: int = 32, seed: int = 0) -> Path:
    """A random vidfeat checkpoint directory (card + safetensors) small enough for pipeline tests."""
    from vidfeat.model.cards import ModelCard, Preprocess
    from vidfeat.model.weights import save_checkpoint

    config = TimeSformerConfig(
        img_size=size, patch_size=8, num_frames=num_frames, num_classes=6, embed_dim=64, depth=2, num_heads=2
    )
    model = randomize_(TimeSformer(config), seed=seed, std=0.05)
    card = ModelCard(
        name="random.tiny",
        config=config,
        preprocess=Preprocess(num_frames=num_frames, fps=fps, short_side=size, crop_size=size),
        classes=[f"class {chr(97 + i)}" for i in range(6)],
    )
    return save_checkpoint(model, path, card=card)
