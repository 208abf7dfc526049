"""The weight initialisations of a new TimeSformer, one public function each.

:func:`official_init_` is what the constructor does (the official code's init).
:func:`xavier_linears_` and :func:`sincos_embeddings_` are the alternatives a recipe chooses for
a model trained from scratch (``model.linear_init``, ``model.embed_init``); the bench scripts use
them too. Each changes the model in place. The model's module is not imported here (it imports
this one): each function takes a TimeSformer as a plain ``nn.Module`` and reads its parameters,
modules and config.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

__all__ = ["official_init_", "sincos_embeddings_", "sincos_table", "xavier_linears_"]

def official_init_(model: nn.Module) -> None:
    """Random init as in the official code: truncated normal (std 0.02) for linear layers and
    embeddings, unit LayerNorms, and zero ``temporal_fc`` so each temporal branch starts as the
    identity (the paper's recipe for starting from an image model)."""
    trunc_normal_(model.pos_embed, std=0.02)
    trunc_normal_(model.cls_token, std=0.02)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for block in model.blocks:
        if block.divided:
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)


def sincos_table(positions: int, dim: int) -> torch.Tensor:
    """``(positions, dim)`` sine-cosine table (Transformer frequencies): sines, then cosines."""
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * 10000.0 ** (
        -torch.arange(dim // 2, dtype=torch.float64) / (dim // 2)
    )
    return torch.cat((angles.sin(), angles.cos()), dim=1).float()


def xavier_linears_(model: nn.Module) -> None:
    """Re-initialise every linear layer (attention, ``temporal_fc``, MLPs, head) Xavier-uniform with
    zero biases, instead of the official truncated normal (std 0.02) with a zero ``temporal_fc``.

    A small model trained from scratch starts with its temporal attention switched off under the
    official init; with Xavier every path carries signal from the first step (measurements:
    docs/results.md).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def sincos_embeddings_(model: nn.Module) -> None:
    """Initialise a new model's patch positions with a 2-D sine-cosine table (half the channels
    for the row, half for the column; the CLS row is kept) and its time embedding with a 1-D one.

    The official near-zero init gives a model trained from scratch almost no position and order
    signal for hundreds of steps (Adam moves each value by about lr per step), and frame order is
    all that tells time-reversed classes (left/right, grow/shrink) apart.
    """
    dim, grid = model.config.embed_dim, model.config.grid_size
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    half = sincos_table(grid, dim // 2)
    with torch.no_grad():
        model.pos_embed[0, 1:] = torch.cat((half[rows.flatten()], half[cols.flatten()]), dim=1)
        if hasattr(model, "time_embed"):  # space_only models have none
            model.time_embed[0] = sincos_table(model.config.num_frames, dim)
