"""TimeSformer: divided space-time attention for video.

Bertasius, Wang, Torresani, "Is Space-Time Attention All You Need for Video Understanding?",
ICML 2021, https://arxiv.org/abs/2102.05095. Official code: facebookresearch/TimeSformer.

The parameter names follow the official ``vit.py`` (``cls_token``, ``pos_embed``, ``time_embed``,
``blocks.{i}.temporal_attn`` ...), so an official state dict loads with only its ``model.`` prefix
removed (see ``vidfeat.model.weights``). The maths is the official one; the implementation differs:

* attention runs through ``F.scaled_dot_product_attention`` (fused flash / memory-efficient kernels
  on a GPU, bf16 autocast friendly);
* divided blocks run on one layout, ``(B, T, 1 + N, D)``: each frame carries a copy of the CLS
  token in slot 0 next to its N patches, so spatial attention reads each frame's 1 + N tokens as
  they lie (no per-block concatenation of CLS and patches), and temporal attention reads strided
  views of the same buffer (no transpose into ``(B N, T, D)``). Attention has no positional bias,
  so token order inside a sequence does not change the result.

Axis letters, used in every einops pattern and shape comment:
``b`` batch, ``t`` frames, ``n`` patches per frame, ``h`` heads, ``d`` channels.
Input layout: ``(B, C, T, H, W)``, normalised float (see ``vidfeat.video.transforms``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cards import ModelCard, placeholder_classes
from .config import TimeSformerConfig
from .init import official_init_

__all__ = ["TimeSformer", "resize_pos_embed", "resize_time_embed"]


# ---------------------------------------------------------------------------------------------
# embedding resizing (nearest neighbour, exactly as the official code and Hugging Face do at run time)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize ``(1, 1 + P*P, D)`` position embeddings to a ``grid = (gh, gw)`` patch grid.

    The CLS row is kept; the P x P patch rows are resized with nearest-neighbour interpolation.
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    side = math.isqrt(patch_pos.shape[1])
    if side * side != patch_pos.shape[1]:
        raise ValueError(f"pos_embed holds {patch_pos.shape[1]} patches, not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    patch_pos = rearrange(patch_pos, "1 (gh gw) d -> 1 d gh gw", gh=side, gw=side)
    patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="nearest")
    patch_pos = rearrange(patch_pos, "1 d gh gw -> 1 (gh gw) d")
    return torch.cat((cls_pos, patch_pos), dim=1)


def resize_time_embed(time_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize ``(1, T, D)`` time embeddings to ``num_frames`` rows (nearest neighbour)."""
    if time_embed.shape[1] == num_frames:
        return time_embed
    resized = F.interpolate(rearrange(time_embed, "1 t d -> 1 d t"), size=num_frames, mode="nearest")
    return rearrange(resized, "1 d t -> 1 t d")


# ---------------------------------------------------------------------------------------------
# attention and blocks


class Attention(nn.Module):
    """Multi-head self-attention over the second axis of ``(batch, tokens, D)``, fused via SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, n, d)
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = rearrange(x, "b h n d -> b n (h d)")  # (b, n, d)
        return self.proj_drop(self.proj(x))

    def forward_time(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over the frames of each token slot: ``(b, t, s, d)`` -> ``(b, t, s, d)``.

        q, k and v stay strided views of the ``(b, t, s, 3d)`` projection (no transpose copy).
        Their ``(b, s)`` batch axes cannot merge into one without a copy, and SDPA runs its fused
        kernels only on 4-D inputs, so it runs once per clip on ``(s, h, t, d)`` views."""
        q, k, v = rearrange(self.qkv(x), "b t s (three h d) -> three b s h t d", three=3, h=self.num_heads)
        p = self.attn_drop if self.training else 0.0
        out = torch.stack(
            [rearrange(F.scaled_dot_product_attention(q[i], k[i], v[i], dropout_p=p), "s h t d -> t s (h d)")
             for i in range(x.shape[0])]
        )  # (b, t, s, d)  # fmt: skip
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """One TimeSformer block.

    ``divided_space_time``: temporal attention over the T frames of each patch position (CLS
    excluded), projected by ``temporal_fc``; then spatial attention within each frame with the CLS
    token replicated into every frame and averaged back out; then the MLP.
    ``space_only`` / ``joint_space_time``: a plain pre-norm ViT block over whatever sequence it is
    given (per-frame sequences, or all frames' patches at once).
    """

    def __init__(self, config: TimeSformerConfig, drop_path: float) -> None:
        super().__init__()
        dim, eps = config.embed_dim, config.layer_norm_eps
        attn_args = dict(
            dim=dim,
            num_heads=config.num_heads,
            qkv_bias=config.qkv_bias,
            attn_drop=config.attn_drop_rate,
            proj_drop=config.drop_rate,
        )
        self.divided = config.attention_type == "divided_space_time"
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(**attn_args)
        if self.divided:
            self.temporal_norm1 = nn.LayerNorm(dim, eps=eps)
            self.temporal_attn = Attention(**attn_args)
            self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * config.mlp_ratio), drop=config.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """space_only / joint_space_time: ``x`` is ``(batch, 1 + tokens, D)``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_divided(self, x: torch.Tensor) -> torch.Tensor:
        """divided_space_time on one layout, ``(b, t, 1 + n, d)``: slot 0 of every frame holds the
        CLS token (the same in all frames), slots 1..n the frame's patches. No step copies the
        tokens into another layout.

        Temporal attention runs over every slot and its result is zeroed on the CLS slot (the CLS
        token is not in temporal attention: one slot in 1 + n of extra work instead of a copy of
        the patches); spatial attention runs over each frame's 1 + n slots as they lie, which is
        the CLS token replicated into every frame, and its t CLS results are averaged back into
        one; the MLP is token-wise (the CLS copies stay equal). Stochastic depth draws its masks
        as the official blocks do: per (clip, patch) in time, per (clip, frame) in space, per
        clip in the MLP."""
        b, t, s, d = x.shape

        # temporal attention: each slot attends over its t frames
        res = self.temporal_attn.forward_time(self.temporal_norm1(x))
        keep = self._keep_mask((b, 1, s - 1, 1), res)  # official: one mask per (clip, patch)
        if keep is not None:
            res = res * F.pad(keep, (0, 0, 1, 0), value=1.0)
        res = self.temporal_fc(res)
        res[:, :, 0] = 0.0  # the CLS slot keeps its value
        x = x + res

        # spatial attention: each frame's slots, CLS included (drop path per frame)
        res = self.drop_path(self.attn(self.norm1(x.view(b * t, s, d)))).view(b, t, s, d)
        cls = x[:, :1, :1] + res[:, :, :1].mean(dim=1, keepdim=True)  # (b, 1, 1, d)
        x = x + res
        x[:, :, :1] = cls  # the averaged CLS token, in every frame again

        # MLP, token-wise; stochastic depth drops a clip's whole MLP branch (one mask a clip)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _keep_mask(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        """Stochastic-depth mask of ``shape`` drawn as timm's ``DropPath`` draws it (one
        Bernoulli per element, kept ones scaled by 1 / keep), or None when nothing is dropped."""
        if not isinstance(self.drop_path, DropPath) or not self.training:
            return None
        keep_prob = 1.0 - self.drop_path.drop_prob
        mask = like.new_empty(shape).bernoulli_(keep_prob)
        return mask.div_(keep_prob) if keep_prob > 0.0 else mask


# ---------------------------------------------------------------------------------------------
# the model


class PatchEmbed(nn.Module):
    """Frames to patch tokens: ``(b, c, t, H, W)`` -> ``(b, t, n, d)`` and the patch grid."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        b, _, _, height, width = x.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"frame size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        x = self.proj(rearrange(x, "b c t h w -> (b t) c h w"))  # ((b t), d, gh, gw)
        grid = (x.shape[-2], x.shape[-1])
        return rearrange(x, "(b t) d gh gw -> b t (gh gw) d", b=b), grid


class TimeSformer(nn.Module):
    """TimeSformer video transformer.

    ``forward_features(x)`` returns the CLS embedding after the final norm ``(B, D)``;
    ``forward_head(features)`` the logits ``(B, num_classes)``; ``forward(x)`` chains the two.
    Inputs may have another frame count or frame size than the config's: the position and time
    embeddings are then resized at run time with nearest-neighbour interpolation (as the official
    code and Hugging Face do).

    The model keeps its own copy of ``config``; ``card`` (optional) gets a copy as well, so that
    neither the caller's objects nor the card change when the model does (``reset_classifier``
    updates the model's config and its card's classes together).
    """

    card: ModelCard | None
    """Preprocessing, class names and provenance of these weights (set by ``vidfeat.model.weights.load_model``
    and by training); None for a bare model."""

    def __init__(self, config: TimeSformerConfig, card: ModelCard | None = None) -> None:
        super().__init__()
        config = replace(config)  # re-validated, and not shared with the caller
        if card is not None and card.config != config:
            raise ValueError(f"model card {card.name!r} describes another architecture than the config")
        self.config = config
        self.card = None if card is None else _card_copy(card, config)
        dim = config.embed_dim
        self.num_features = dim
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, dim))
        if config.attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, config.num_frames, dim))
        self.pos_drop = nn.Dropout(config.drop_rate)
        # stochastic depth decay rule: 0 for the first block up to drop_path_rate for the last
        dpr = [config.drop_path_rate * i / max(1, config.depth - 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList([Block(config, drop_path=p) for p in dpr])
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes > 0 else nn.Identity()
        official_init_(self)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (long clips in less memory)."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, classes: list[str] | None = None) -> None:
        """Replace the head by a new random one (fine-tuning on another label set).

        The card, if any, gets ``classes`` (default ``class_0`` ... placeholders) with the new count.
        """
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for a head of {num_classes} classes")
        self.config = replace(self.config, num_classes=num_classes)
        if self.card is not None:
            names = list(classes) if classes is not None else placeholder_classes(num_classes)
            self.card = _card_copy(replace(self.card, config=self.config, classes=names), self.config)
        device = self.norm.weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "time_embed"}

    def _run(self, block: Block, *args: torch.Tensor):
        fn = block.forward_divided if block.divided else block.forward
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` normalised frames -> ``(B, D)`` CLS embedding after the final norm."""
        x, grid = self.patch_embed(x)  # (b, t, n, d)
        b, t = x.shape[:2]
        pos = resize_pos_embed(self.pos_embed, grid)
        cls = self.cls_token + pos[:, :1]  # (1, 1, d)
        x = x + pos[:, 1:].unsqueeze(1)
        kind = self.config.attention_type

        if kind == "space_only":
            # every frame is its own image: (b t) sequences of CLS + n patches, no time embedding
            tokens = torch.cat((cls.expand(b * t, -1, -1), rearrange(x, "b t n d -> (b t) n d")), dim=1)
            tokens = self.pos_drop(tokens)
            for block in self.blocks:
                tokens = self._run(block, tokens)
            cls = rearrange(tokens[:, 0], "(b t) d -> b t d", b=b).mean(dim=1)  # official: average over frames
            return self.norm(cls)

        x = x + resize_time_embed(self.time_embed, t).unsqueeze(2)
        cls = self.pos_drop(cls.expand(b, -1, -1))
        x = self.pos_drop(x)
        if kind == "joint_space_time":
            tokens = torch.cat((cls, rearrange(x, "b t n d -> b (t n) d")), dim=1)
            for block in self.blocks:
                tokens = self._run(block, tokens)
            return self.norm(tokens[:, 0])

        # one (b, t, 1 + n, d) buffer through every block: slot 0 of each frame is the CLS token
        x = torch.cat((cls.view(b, 1, 1, -1).expand(b, t, 1, -1), x), dim=2)
        for block in self.blocks:
            x = self._run(block, x)
        return self.norm(x[:, 0, 0])

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, D)`` features -> ``(B, num_classes)`` logits (or the features with ``pre_logits``)."""
        return features if pre_logits else self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _card_copy(card: ModelCard, config: TimeSformerConfig) -> ModelCard:
    """A copy of ``card`` sharing nothing mutable with it, holding its own copy of ``config``."""
    copied = copy.deepcopy(card)
    copied.config = replace(config)
    return copied
