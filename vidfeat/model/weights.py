"""Checkpoint formats, conversion and ``load_model``.

Every format is mapped onto one state dict layout (the official ``vit.py`` names, which
``vidfeat.model.timesformer.TimeSformer`` uses) and loaded strictly:

* official ``.pyth``/``.pth`` from facebookresearch/TimeSformer: ``{epoch, model_state,
  optimizer_state, cfg}`` with ``model.``-prefixed keys. Such a file is matched to its bundled
  card (file name, tensor shapes, class count), which gives its heads, clip sampling and class
  names; a file no card fits gets its architecture from the tensor shapes (heads = width / 64
  unless given) and an assumed sampling, each announced by a ``SamplingWarning``;
* a Hugging Face ``TimesformerForVideoClassification`` directory (``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``), or a hub id downloaded with huggingface_hub;
* a timm ViT image checkpoint, inflated as in the paper: spatial attention copied into the
  temporal attention, ``temporal_fc`` zero (identity at start), zero time embeddings;
* ours: ``model.safetensors`` + ``card.toml`` (a run directory of ``vidfeat train`` is one too).

Pickled checkpoints are only ever read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes

from .cards import (
    OFFICIAL_MEAN,
    OFFICIAL_STD,
    ModelCard,
    Preprocess,
    WeightsInfo,
    bundled_cards,
    find_card,
    placeholder_classes,
    sha256_file,
    vidfeat_home,
)
from ..errors import ConfigError, WeightsError
from .config import TimeSformerConfig
from .timesformer import TimeSformer, resize_pos_embed, resize_time_embed

__all__ = ["load_model", "prepare_model", "PreparedModel", "load_checkpoint", "save_checkpoint", "convert", "to_hf", "SamplingWarning", "ClassCountError"]

StateDict = dict[str, torch.Tensor]

# An official file name's "{frames}x{step}" part: frames taken every step-th frame (of 30 fps video).
_OFFICIAL_STEP_RE = re.compile(r"_(\d+)x(\d+)_")
_OFFICIAL_SOURCE_FPS = 30.0
# Clip length assumed when nothing says how a checkpoint was sampled: the base model's 8 x 32 frames.
_FALLBACK_CLIP_SEC = 256 / 30

_FORMATS_READ = (
    "vidfeat reads .safetensors files, torch state dicts (.pth/.pt/.bin, official .pyth), "
    "Hugging Face directories and vidfeat checkpoint directories"
)


class ClassCountError(ConfigError):
    """Class names given for a model whose head has another number of classes."""


class SamplingWarning(UserWarning):
    """A checkpoint's clip sampling or head count was assumed, not read from a model card."""

# Hugging Face layer names -> official names (inside ``encoder.layer.{i}.`` / ``blocks.{i}.``).
_HF_LAYER = {
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "temporal_layernorm": "temporal_norm1",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
    "classifier": "head",
}
_HF_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


# ---------------------------------------------------------------------------------------------
# key mapping


def _strip_prefix(state: StateDict, prefix: str) -> StateDict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _from_hf(state: StateDict) -> StateDict:
    """Hugging Face Timesformer names -> official names."""
    out = {}
    for key, value in state.items():
        bare = key.removeprefix("timesformer.")
        match = _HF_LAYER_RE.match(bare)
        if match:
            index, name, kind = match.groups()
            if name in _HF_LAYER:
                out[f"blocks.{index}.{_HF_LAYER[name]}.{kind}"] = value
                continue
        stem, _, kind = bare.rpartition(".")
        if bare in _HF_TOP:  # parameters without .weight/.bias
            out[_HF_TOP[bare]] = value
        elif stem in _HF_TOP:
            out[f"{_HF_TOP[stem]}.{kind}"] = value
        else:
            out[key] = value  # left for the strict check to report
    return out


def to_hf(state: StateDict) -> StateDict:
    """Official names -> Hugging Face ``TimesformerForVideoClassification`` names."""
    layer = {v: k for k, v in _HF_LAYER.items()}
    top = {v: k for k, v in _HF_TOP.items()}
    out = {}
    for key, value in state.items():
        match = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        if match:
            index, name, kind = match.groups()
            out[f"timesformer.encoder.layer.{index}.{layer[name]}.{kind}"] = value
            continue
        stem, _, kind = key.rpartition(".")
        if key in top:
            out[f"timesformer.{top[key]}"] = value
        elif stem == "head":
            out[f"classifier.{kind}"] = value
        else:
            out[f"timesformer.{top[stem]}.{kind}"] = value
    return out


def _inflate_image_vit(state: StateDict) -> StateDict:
    """timm ViT image weights -> divided space-time TimeSformer weights (the paper's init).

    Each block's spatial attention and its norm are copied into the temporal attention and
    temporal norm; ``temporal_fc`` is zero so that every temporal branch starts as the identity.
    The time embedding is left to ``load_model`` (zeros, as in the official code).
    """
    out = {k: v for k, v in state.items() if not k.startswith("fc_norm.")}
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    dim = state["cls_token"].shape[-1]
    for i in blocks:
        for kind in ("weight", "bias"):
            for src, dst in (("attn.qkv", "temporal_attn.qkv"), ("attn.proj", "temporal_attn.proj"), ("norm1", "temporal_norm1")):
                if f"blocks.{i}.{src}.{kind}" in state:
                    out[f"blocks.{i}.{dst}.{kind}"] = state[f"blocks.{i}.{src}.{kind}"].clone()
        out[f"blocks.{i}.temporal_fc.weight"] = torch.zeros(dim, dim)
        out[f"blocks.{i}.temporal_fc.bias"] = torch.zeros(dim)
    out["time_embed"] = torch.zeros(1, 8, dim)  # resized to the frame count by load_model
    return out


def checkpoint_filter_fn(state: StateDict, *, inflate: bool = True) -> tuple[StateDict, str]:
    """Any supported state dict -> (official-named state dict, detected format).

    Formats: ``official`` (with or without the ``model.`` prefix), ``hf``, ``timm`` (an image
    ViT, inflated). ``module.`` prefixes from DDP wrappers are dropped. ``inflate=False``: a
    state without time embedding and temporal layers is taken as it is (a ``space_only``
    TimeSformer whose card says so), not as an image ViT to inflate.
    """
    state = _strip_prefix(state, "module.")
    if any(k.startswith(("timesformer.", "embeddings.patch_embeddings")) for k in state):
        return _from_hf(state), "hf"
    state = _strip_prefix(state, "model.")
    if "cls_token" not in state or "pos_embed" not in state:
        raise WeightsError(
            "not a TimeSformer or ViT checkpoint: no cls_token/pos_embed "
            f"(first keys: {', '.join(list(state)[:5]) or 'none'})"
        )
    has_temporal = any(".temporal_attn." in k for k in state)
    if "time_embed" not in state and not has_temporal and inflate:
        return _inflate_image_vit(state), "timm"
    return state, "official"


def infer_config(state: StateDict, **overrides) -> TimeSformerConfig:
    """Read the architecture from official-named tensors. The head count is not in the shapes:
    width / 64 (as in every official model) unless ``num_heads`` is given."""
    try:
        dim = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"].shape[-1]
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k)))
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"cannot read the architecture from the checkpoint: missing {exc}") from exc
    if any(".temporal_attn." in k for k in state):
        kind = "divided_space_time"
    elif "time_embed" in state:
        kind = "joint_space_time"
    else:
        kind = "space_only"
    values = dict(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=state["patch_embed.proj.weight"].shape[1],
        num_frames=state["time_embed"].shape[1] if "time_embed" in state else 8,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),
        mlp_ratio=hidden / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        attention_type=kind,
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TimeSformerConfig(**values)


def _hf_config(path: Path) -> tuple[TimeSformerConfig, list[str], Preprocess]:
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != "timesformer":
        raise WeightsError(f"{path}/config.json is a {cfg.get('model_type')!r} model, not timesformer")
    image_size = cfg.get("image_size", 224)
    labels = cfg.get("id2label") or {}
    classes = [labels[k] for k in sorted(labels, key=int)] if labels else []
    config = TimeSformerConfig(
        img_size=image_size if isinstance(image_size, int) else image_size[0],
        patch_size=cfg.get("patch_size", 16) if isinstance(cfg.get("patch_size", 16), int) else cfg["patch_size"][0],
        in_chans=cfg.get("num_channels", 3),
        num_frames=cfg.get("num_frames", 8),
        num_classes=len(classes),
        embed_dim=cfg.get("hidden_size", 768),
        depth=cfg.get("num_hidden_layers", 12),
        num_heads=cfg.get("num_attention_heads", 12),
        mlp_ratio=cfg.get("intermediate_size", 3072) / cfg.get("hidden_size", 768),
        qkv_bias=cfg.get("qkv_bias", True),
        attention_type=cfg.get("attention_type", "divided_space_time"),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
    )
    mean, std = OFFICIAL_MEAN, OFFICIAL_STD
    pre_path = path / "preprocessor_config.json"
    if pre_path.is_file():
        pre = json.loads(pre_path.read_text())
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    return config, classes, _hf_preprocess(config, path.name, mean=mean, std=std)


def _assumed_preprocess(config: TimeSformerConfig, name: str, **kwargs) -> tuple[Preprocess, str]:
    """Preprocessing for a checkpoint that no card describes, and the one-line reason for its fps:
    the file name's official ``{frames}x{step}`` part (every step-th frame of 30 fps video) when it
    names this frame count, else a clip as long as the base model's (256 frames of 30 fps)."""
    match = _OFFICIAL_STEP_RE.search(name)
    if match and int(match.group(1)) == config.num_frames and int(match.group(2)) > 0:
        step = int(match.group(2))
        fps = _OFFICIAL_SOURCE_FPS / step
        why = f"one frame in {step} of 30 fps video, from the file name's {match.group(1)}x{step}"
    else:
        fps = config.num_frames / _FALLBACK_CLIP_SEC
        why = f"no card and no {config.num_frames}xSTEP in the file name; clips of {_FALLBACK_CLIP_SEC:.2f} s as the base model's"
    pre = Preprocess(num_frames=config.num_frames, fps=fps, short_side=config.img_size, crop_size=config.img_size, **kwargs)
    return pre, f"{fps:g} fps ({why})"


def _hf_preprocess(config: TimeSformerConfig, name: str, **kwargs) -> Preprocess:
    """A Hugging Face model's sampling: that of the one bundled card with a hub copy whose
    architecture and class count it has, else an assumed one, announced."""
    fitting = [c for c in bundled_cards() if c.weights.hf_hub_id and c.config == replace(config, drop_rate=c.config.drop_rate,
               attn_drop_rate=c.config.attn_drop_rate, drop_path_rate=c.config.drop_path_rate)]  # fmt: skip
    if len(fitting) == 1:
        return replace(fitting[0].preprocess, **kwargs)
    pre, why = _assumed_preprocess(config, name, **kwargs)
    warnings.warn(f"{name}: no bundled model card fits it; clip sampling assumed: {why}", SamplingWarning, stacklevel=4)
    return pre


def _fits(card_config: TimeSformerConfig, config: TimeSformerConfig) -> bool:
    """Whether a card describes a checkpoint of this architecture (heads aside: shapes do not tell them)."""
    return replace(card_config, num_heads=config.num_heads) == replace(
        config, drop_rate=card_config.drop_rate, attn_drop_rate=card_config.attn_drop_rate,
        drop_path_rate=card_config.drop_path_rate, layer_norm_eps=card_config.layer_norm_eps,
    )  # fmt: skip


def _official_card(path: Path, config: TimeSformerConfig) -> tuple[ModelCard | None, str]:
    """The bundled card of an official checkpoint file: the card naming this file, if its shapes fit,
    else the only card whose architecture and class count fit. Returns (card, why not) ."""
    cards = [c for c in bundled_cards() if c.weights.format == "official"]
    named = [c for c in cards if c.weights.file == path.name]
    if named and _fits(named[0].config, config):
        return named[0], ""
    fitting = [c for c in cards if _fits(c.config, config)]
    if named:
        return None, f"named like the card {named[0].name!r} but its tensors do not fit that card"
    if len(fitting) == 1:
        return fitting[0], ""
    if fitting:
        return None, f"{len(fitting)} cards fit its shapes ({', '.join(c.name for c in fitting)})"
    return None, "no bundled model card fits its shapes and class count"


# ---------------------------------------------------------------------------------------------
# reading files


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` looks like something ``torch.save`` wrote: a zip archive holding a
    ``data.pkl``, or a legacy (pre-1.6) file, which starts with a pickle protocol mark."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    with open(path, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if not _is_torch_file(path):
        raise WeightsError(f"{path} is not a checkpoint vidfeat can read: {_FORMATS_READ}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # a real pickle holding more than tensors and plain containers
        raise WeightsError(
            f"{path} holds Python objects beyond tensors, which vidfeat does not unpickle (they can run code). "
            "Save a plain state dict from where the file comes from: torch.save(model.state_dict(), 'OUT.pth') "
            "in the code that trained it, or use its safetensors / Hugging Face release"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged archive: torch raises RuntimeError, EOFError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is a damaged or truncated torch file ({reason[:200]})") from exc


def _read_state(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except Exception as exc:  # noqa: BLE001
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{path} is not a safetensors file vidfeat can read ({reason[:200]})") from exc
    obj = _torch_load(path)
    if isinstance(obj, dict):
        for key in ("model_state", "state_dict", "model"):  # official wrapper, lightning, others
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return dict(obj)


def load_checkpoint(source: str | Path, *, num_heads: int | None = None) -> tuple[ModelCard, StateDict]:
    """Resolve ``source`` to (card, official-named state dict) without building a model.

    ``source``: a card name or alias (``base``, ``timesformer_base_8x224.k400``), a card ``.toml``,
    a directory (ours, a training run, or Hugging Face), a checkpoint file, or a hub id.
    ``num_heads``: the head count of a bare checkpoint file no card describes (its tensors do not
    tell it); for any other source it must agree with the source's own count.
    """
    card, state = _resolve(source, num_heads)
    if num_heads is not None and card.config.num_heads != num_heads:
        raise WeightsError(f"{source} is a model with {card.config.num_heads} heads (its {card.weights.format} config says so), not {num_heads}")
    return card, state


def _resolve(source: str | Path, num_heads: int | None) -> tuple[ModelCard, StateDict]:
    """``load_checkpoint`` without its ``num_heads`` check."""
    path = Path(source)
    if path.is_dir():
        if (path / "card.toml").is_file():
            return _load_ours(ModelCard.from_toml(path / "card.toml"))
        if (path / "config.json").is_file():
            return _load_hf_dir(path)
        raise WeightsError(f"{path} is a directory without card.toml (vidfeat) or config.json (Hugging Face)")
    if path.is_file():
        if path.suffix == ".toml":
            return _load_ours(ModelCard.from_toml(path))
        if path.suffix == ".safetensors":
            for card_path in (path.with_suffix(".toml"), path.parent / "card.toml"):
                if card_path.is_file():
                    card = ModelCard.from_toml(card_path)
                    card.weights = replace(card.weights, file=path.name)
                    return _load_ours(card)
        return _card_from_state(_read_state(path), path, num_heads)
    card = find_card(str(source))
    if card is not None:
        return _load_card(card)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        return _load_hf_dir(_hub_download(str(source)))
    raise WeightsError(
        f"unknown model {source!r}: not a file, a directory, a bundled model ({_card_names()}) or a hub id"
    )


def _card_names() -> str:
    return ", ".join(n for c in bundled_cards() for n in c.names())


def _card_from_state(state: StateDict, path: Path, num_heads: int | None = None) -> tuple[ModelCard, StateDict]:
    """The card of a bare checkpoint file: its bundled card when one fits, else one built from the
    tensor shapes with an assumed sampling (and head count unless ``num_heads``), announced."""
    state, fmt = checkpoint_filter_fn(state)
    config = infer_config(state, num_heads=num_heads)
    digest = sha256_file(path)
    card, why_not = _official_card(path, config) if fmt == "official" else (None, "")
    if card is not None:
        if num_heads is not None and num_heads != card.config.num_heads:
            raise WeightsError(
                f"{path} is the checkpoint of {card.name!r}, which has {card.config.num_heads} heads, not {num_heads}"
            )
        weights = replace(card.weights, file=path.name, sha256=digest)
        return replace(card, weights=weights, path=None, description=f"{card.description} Loaded from {path}."), state
    preprocess, sampling = _assumed_preprocess(config, path.name)
    meta = {"sampling_assumed": sampling}
    notes = [f"clip sampling assumed: {sampling}"]
    if num_heads is None:
        meta["num_heads_assumed"] = f"{config.num_heads} (width {config.embed_dim} / 64)"
        notes.append(f"heads assumed: {config.num_heads} = width / 64 (give the real count with --num-heads)")
    reason = f"{why_not}; " if why_not else ("not an official checkpoint; " if fmt != "official" else "")
    warnings.warn(f"{path.name}: {reason}{'; '.join(notes)}", SamplingWarning, stacklevel=4)
    card = ModelCard(
        name=path.stem,
        config=config,
        preprocess=preprocess,
        classes=placeholder_classes(config.num_classes),
        weights=WeightsInfo(file=path.name, format=fmt, sha256=digest),
        description=f"loaded from {path}",
        meta=meta,
    )
    return card, state


def _load_ours(card: ModelCard) -> tuple[ModelCard, StateDict]:
    path = card.weights_path()
    if path is None:
        raise WeightsError(f"model {card.name!r}: weights file {card.weights.file!r} not found beside {card.path}")
    _verify_sha256(card, path)
    state, _ = checkpoint_filter_fn(_read_state(path), inflate=card.config.attention_type != "space_only")
    return card, state


def _load_card(card: ModelCard) -> tuple[ModelCard, StateDict]:
    """A bundled card: its local weights file if present, else its Hugging Face copy."""
    path = card.weights_path()
    if path is not None:
        card, state = _load_ours(card)
        if not card.weights.sha256:  # a user-placed file the card has no digest for: record its own
            card = replace(card, weights=replace(card.weights, sha256=sha256_file(path)))
        return card, state
    if card.weights.hf_hub_id:
        try:
            hf_card, state = _load_hf_dir(_hub_download(card.weights.hf_hub_id))
        except WeightsError as exc:
            raise WeightsError(f"{exc}\nOr download {card.weights.url} to {vidfeat_home() / card.weights.file}") from exc
        return replace(card, classes=hf_card.classes or card.classes), state
    raise WeightsError(
        f"the weights of {card.name!r} are not on this machine. Download {card.weights.url or 'them'} "
        f"and put the file at {vidfeat_home() / card.weights.file} (or set VIDFEAT_HOME), or pass its path"
    )


def _verify_sha256(card: ModelCard, path: Path) -> None:
    if card.weights.sha256:
        digest = sha256_file(path)
        if digest != card.weights.sha256:
            raise WeightsError(
                f"sha256 mismatch for {path}: the card {card.name!r} expects {card.weights.sha256}, "
                f"the file has {digest}. The file is corrupt or not the one the card describes"
            )


def _load_hf_dir(path: Path) -> tuple[ModelCard, StateDict]:
    config, classes, preprocess = _hf_config(path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            state, weights_file = _read_state(path / name), path / name
            break
    else:
        raise WeightsError(f"{path} has config.json but no model.safetensors or pytorch_model.bin")
    state, _ = checkpoint_filter_fn(state)
    if "head.weight" not in state:
        config.num_classes = 0
    card = ModelCard(
        name=path.name,
        config=config,
        preprocess=preprocess,
        classes=classes if config.num_classes else [],
        weights=WeightsInfo(file=str(path), format="hf", sha256=sha256_file(weights_file)),
        description=f"Hugging Face Timesformer from {path}",
    )
    return card, state


def _hub_download(repo_id: str) -> Path:
    hint = (
        f"download the model files of {repo_id!r} (config.json and model.safetensors or pytorch_model.bin) "
        "on a machine with internet access and pass their directory instead of the hub id"
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise WeightsError(f"huggingface_hub is not installed (pip install 'vidfeat[hub]'); or {hint}") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as exc:  # noqa: BLE001 - offline, not found, auth: all end the same way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot download {repo_id!r} from the Hugging Face hub ({first}); {hint}") from exc


# ---------------------------------------------------------------------------------------------
# building the model


def _resize_embeddings(state: StateDict, *, num_frames: int | None, image_size: int | None, patch: int) -> StateDict:
    """Resize pos/time embeddings to a requested frame count / input size (nearest neighbour, as
    the official code and Hugging Face do at run time). Nothing else is resized: a checkpoint that
    does not fit its card is an error, not something to interpolate away."""
    state = dict(state)
    if image_size is not None and "pos_embed" in state:
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], (image_size // patch, image_size // patch))
    if num_frames is not None and "time_embed" in state:
        state["time_embed"] = resize_time_embed(state["time_embed"], num_frames)
    return state


def _check_fits(config: TimeSformerConfig, state: StateDict, name: str, fresh: tuple[str, ...] = ()) -> None:
    """Raise one WeightsError naming every missing, unexpected and mis-shaped key of ``state`` for a
    model of ``config`` (built on the meta device: no memory, so a misfit is told at once).
    ``fresh``: parameters the caller declared new (a replaced head)."""
    with torch.device("meta"):
        reference = TimeSformer(config).state_dict()
    expected = {k: v for k, v in reference.items() if k not in fresh}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"checkpoint {name!r} does not fit the model; " + "; ".join(problems))


@dataclass
class PreparedModel:
    """A checkpoint read and fitted to the model it will build (:func:`prepare_model`), not built
    yet: ``card`` (its config as the model will have it) says all a caller needs to plan work,
    :meth:`build` makes the model. ``new_head``: the head is new (random init), not loaded."""

    card: ModelCard
    state: StateDict
    new_head: bool = False

    @property
    def embedding_dim(self) -> int:
        return self.card.config.embed_dim

    def build(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> TimeSformer:
        """The model in eval mode (``model.card`` is :attr:`card`)."""
        model = TimeSformer(self.card.config, card=self.card)  # a new head keeps its random init
        model.load_state_dict(self.state, strict=not self.new_head)
        return model.to(device=device, dtype=dtype).eval()


def prepare_model(
    source: str | Path,
    *,
    num_frames: int | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    num_heads: int | None = None,
) -> PreparedModel:
    """Read and fit a checkpoint as :func:`load_model` does, without building the model (which
    costs seconds): a run that finds nothing to do plans from the card alone. Arguments are
    :func:`load_model`'s; a checkpoint that does not fit raises here."""
    card, state = load_checkpoint(source, num_heads=num_heads)
    card = copy.deepcopy(card)
    config = card.config
    if num_frames is not None:
        config.num_frames = num_frames
        card.preprocess.num_frames = num_frames
    if image_size is not None:
        ratio = card.preprocess.short_side / card.preprocess.crop_size
        config.img_size = image_size
        card.preprocess = replace(
            card.preprocess, crop_size=image_size, short_side=max(image_size, round(image_size * ratio))
        )
    config.__post_init__()
    state = _resize_embeddings(state, num_frames=num_frames, image_size=image_size, patch=config.patch_size)
    new_head = num_classes is not None and num_classes != config.num_classes
    if new_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        config.num_classes = num_classes
        card.classes = placeholder_classes(num_classes)
    _check_fits(config, state, card.name, ("head.weight", "head.bias") if new_head else ())
    return PreparedModel(card, state, new_head)


def load_model(
    source: str | Path,
    *,
    num_frames: int | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    num_heads: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> TimeSformer:
    """Build a TimeSformer from any supported checkpoint (see ``load_checkpoint``).

    ``num_frames`` / ``image_size`` run the model at another frame count or input size than its
    checkpoint: the time / position embeddings are resized once, here, exactly as the official
    code and Hugging Face resize them at run time, so outputs stay equal to theirs.
    ``num_classes`` replaces a head of another size by a new random one (fine-tuning; 0 removes it).
    ``num_heads``: the head count of a bare checkpoint file no card describes (see ``load_checkpoint``).
    The returned model is in eval mode; ``model.card`` holds its preprocessing and class names.
    """
    prepared = prepare_model(
        source, num_frames=num_frames, image_size=image_size, num_classes=num_classes, num_heads=num_heads
    )
    return prepared.build(device, dtype)


def save_checkpoint(model: TimeSformer, out_dir: Path, *, card: ModelCard | None = None, name: str | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` + ``out_dir/card.toml`` (+ classes.txt); returns out_dir.

    The card's sha256 is that of the written weights. ``card`` defaults to the model's.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = copy.deepcopy(card or model.card)
    card.config = copy.deepcopy(model.config)
    if name:
        card.name = name
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = out_dir / "model.safetensors"
    # written by Python, so that the file gets the usual permissions (the umask's), like the card
    weights.write_bytes(safetensors_bytes(state, metadata={"format": "vidfeat", "name": card.name}))
    card.weights = replace(card.weights, file=weights.name, sha256=sha256_file(weights), format="safetensors")
    card.to_toml(out_dir / "card.toml")
    return out_dir


def convert(
    source: str | Path,
    out_dir: Path,
    *,
    name: str | None = None,
    num_frames: int | None = None,
    image_size: int | None = None,
    num_heads: int | None = None,
    classes: list[str] | None = None,
) -> ModelCard:
    """Convert any supported checkpoint to ``out_dir/model.safetensors`` + ``card.toml``.

    The written model is loaded back and run on a random clip next to the source model; when
    their outputs differ the written files are removed and a ``WeightsError`` says so. Returns
    the written card (its sha256 is that of the written ``model.safetensors``).
    """
    model = load_model(source, num_frames=num_frames, image_size=image_size, num_heads=num_heads)
    card = model.card
    if classes is not None:
        if len(classes) != model.num_classes:
            raise ClassCountError(f"{len(classes)} class names for a head of {model.num_classes} classes")
        card = replace(card, classes=list(classes))
    out_dir = Path(out_dir)
    save_checkpoint(model, out_dir, card=card, name=name)
    try:
        _check_same_outputs(model, load_model(out_dir))
    except WeightsError:
        for file_name in ("model.safetensors", "card.toml", "classes.txt"):
            (out_dir / file_name).unlink(missing_ok=True)
        raise
    return ModelCard.from_toml(out_dir / "card.toml")


def _check_same_outputs(source: TimeSformer, converted: TimeSformer, seed: int = 0) -> None:
    """Both models on one random clip of the source's size: their logits (or embeddings) must be equal."""
    c = source.config
    clip = torch.randn(1, c.in_chans, c.num_frames, c.img_size, c.img_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, b = source(clip), converted(clip)
    if a.shape != b.shape or not torch.equal(a, b):
        worst = (a - b).abs().max().item() if a.shape == b.shape else float("nan")
        raise WeightsError(
            f"the converted model's outputs differ from the source's on a random clip (largest difference {worst:.3g}); "
            "nothing was written"
        )
