"""A direct functional transcription of the official TimeSformer forward pass (facebookresearch/
TimeSformer ``timesformer/models/vit.py``: ``VisionTransformer.forward_features`` and
``Block.forward``), used as a test oracle.

It keeps the official token layout ``b (h w t) m`` with the CLS token in front, eager softmax
attention and the official run-time nearest-neighbour resizing of the position and time
embeddings, so that vidfeat's restructured implementation (separate CLS, ``(b, t, n, d)`` patch
tokens, SDPA) is checked against the original formulation, including ``space_only`` (which
Hugging Face implements without the final average over frames).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def _linear(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _norm(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _attention(x, sd, name, heads):
    b, n, c = x.shape
    qkv = _linear(x, sd, f"{name}.qkv").reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    return _linear((attn @ v).transpose(1, 2).reshape(b, n, c), sd, f"{name}.proj")


def _mlp(x, sd, name):
    return _linear(F.gelu(_linear(x, sd, f"{name}.fc1")), sd, f"{name}.fc2")


def _drop_path(x, prob):
    """Stochastic depth as the official ``DropPath``: one mask per sample (first axis), kept samples
    scaled by 1 / keep. The Bernoulli draw is timm's (``new_empty(shape).bernoulli_``), so that
    the same seed gives the same masks as a model built on timm's ``DropPath``."""
    if prob == 0.0:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * (mask / keep if keep > 0.0 else mask)


def _block(x, sd, i, kind, b, t, w, heads, eps, dp=0.0):
    p = f"blocks.{i}"
    if kind in ("space_only", "joint_space_time"):
        x = x + _drop_path(_attention(_norm(x, sd, f"{p}.norm1", eps), sd, f"{p}.attn", heads), dp)
        return x + _drop_path(_mlp(_norm(x, sd, f"{p}.norm2", eps), sd, f"{p}.mlp"), dp)
    h = ((x.size(1) - 1) // t) // w
    xt = rearrange(x[:, 1:, :], "b (h w t) m -> (b h w) t m", b=b, h=h, w=w, t=t)
    res_t = _drop_path(_attention(_norm(xt, sd, f"{p}.temporal_norm1", eps), sd, f"{p}.temporal_attn", heads), dp)
    res_t = _linear(rearrange(res_t, "(b h w) t m -> b (h w t) m", b=b, h=h, w=w, t=t), sd, f"{p}.temporal_fc")
    xt = x[:, 1:, :] + res_t
    init_cls = x[:, 0, :].unsqueeze(1)
    cls = rearrange(init_cls.repeat(1, t, 1), "b t m -> (b t) m", b=b, t=t).unsqueeze(1)
    xs = torch.cat((cls, rearrange(xt, "b (h w t) m -> (b t) (h w) m", b=b, h=h, w=w, t=t)), 1)
    res_s = _drop_path(_attention(_norm(xs, sd, f"{p}.norm1", eps), sd, f"{p}.attn", heads), dp)
    cls = torch.mean(rearrange(res_s[:, 0, :], "(b t) m -> b t m", b=b, t=t), 1, True)
    res = rearrange(res_s[:, 1:, :], "(b t) (h w) m -> b (h w t) m", b=b, h=h, w=w, t=t)
    x = torch.cat((init_cls, xt), 1) + torch.cat((cls, res), 1)
    return x + _drop_path(_mlp(_norm(x, sd, f"{p}.norm2", eps), sd, f"{p}.mlp"), dp)


@torch.no_grad()
def official_forward(
    sd: dict, x: torch.Tensor, *, kind: str, depth: int, heads: int, eps: float = 1e-6, drop_path_rate: float = 0.0
):
    """``sd``: official-named state dict (no ``model.`` prefix); ``x``: ``(B, C, T, H, W)``.
    ``drop_path_rate``: stochastic depth as in training, linear over the blocks (official rule).
    Returns (CLS features after the final norm, logits)."""
    b, _, t, _, _ = x.shape
    x = rearrange(x, "b c t h w -> (b t) c h w")
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=sd["patch_embed.proj.weight"].shape[-1])
    w = x.size(-1)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((sd["cls_token"].expand(x.size(0), -1, -1), x), dim=1)
    pos = sd["pos_embed"]
    if x.size(1) != pos.size(1):
        cls_pos = pos[0, 0, :].unsqueeze(0).unsqueeze(1)
        other = pos[0, 1:, :].unsqueeze(0).transpose(1, 2)
        p = int(other.size(2) ** 0.5)
        h = x.size(1) // w
        other = F.interpolate(other.reshape(1, x.size(2), p, p), size=(h, w), mode="nearest")
        pos = torch.cat((cls_pos, other.flatten(2).transpose(1, 2)), 1)
    x = x + pos
    if kind != "space_only":
        cls_tokens = x[:b, 0, :].unsqueeze(1)
        x = rearrange(x[:, 1:], "(b t) n m -> (b n) t m", b=b, t=t)
        te = sd["time_embed"]
        if t != te.size(1):
            te = F.interpolate(te.transpose(1, 2), size=t, mode="nearest").transpose(1, 2)
        x = rearrange(x + te, "(b n) t m -> b (n t) m", b=b, t=t)
        x = torch.cat((cls_tokens, x), dim=1)
    dpr = torch.linspace(0, drop_path_rate, depth).tolist()
    for i in range(depth):
        x = _block(x, sd, i, kind, b, t, w, heads, eps, dpr[i])
    if kind == "space_only":
        x = torch.mean(rearrange(x, "(b t) n m -> b t n m", b=b, t=t), 1)
    feats = _norm(x, sd, "norm", eps)[:, 0]
    return feats, _linear(feats, sd, "head")
