"""The architecture of one TimeSformer, as a plain dataclass.

Kept apart from ``vidfeat.model.timesformer`` so that reading model cards (``vidfeat models``, the docs)
and recipes needs no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["TimeSformerConfig", "ATTENTION_TYPES"]

ATTENTION_TYPES: tuple[str, ...] = ("divided_space_time", "space_only", "joint_space_time")


@dataclass
class TimeSformerConfig:
    """Architecture of one TimeSformer. Every field is stored in model cards and checkpoints."""

    img_size: int = 224  # training input size (square); pos_embed holds (img_size / patch_size)^2 patches
    patch_size: int = 16  # square patches
    in_chans: int = 3
    num_frames: int = 8  # frames per clip; time_embed holds this many rows
    num_classes: int = 400  # 0: no head, forward() returns the embedding
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    attention_type: str = "divided_space_time"
    drop_rate: float = 0.0  # dropout after embeddings, in the MLP and after attention projections
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.0  # stochastic depth, linear over blocks (official training uses 0.1)
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if min(self.img_size, self.patch_size, self.num_frames, self.depth, self.embed_dim) <= 0:
            raise ValueError("img_size, patch_size, num_frames, depth and embed_dim must be positive")

    @property
    def grid_size(self) -> int:
        """Patches along each side of a frame at ``img_size``."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TimeSformerConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown TimeSformer config keys: {', '.join(unknown)}")
        return cls(**known)
