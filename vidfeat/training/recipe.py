"""Training recipes: ``train/*.toml`` read into one typed :class:`TrainConfig`.

A recipe is a TOML file (or the name of one shipped in ``train/``, the ``vidfeat.recipes``
package); ``--set section.key=value`` overrides any field, parsed by the field's type. Unknown
keys, wrong types and values that cannot work together are :class:`~vidfeat.errors.ConfigError`s
that name the key. The config is stored in every checkpoint, and a resumed run must use the one it
started with (:func:`check_resumable`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from ..errors import ConfigError
from ..model.config import TimeSformerConfig
from ..model.runtime import PRECISIONS, device_name_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig", "ModelSection", "DataSection", "OptimSection", "ScheduleSection", "RunSection", "load_config", "bundled_recipes", "check_resumable"]

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class ModelSection:
    """[model]: where the weights start from and what is trained."""

    init: str = "scratch"  # "scratch" (built from [model.arch]) or any load_model source: card name, .pyth, HF dir, timm ViT
    arch: TimeSformerConfig = field(default_factory=TimeSformerConfig)  # scratch only; num_classes comes from the data
    embed_init: str = "sincos"  # scratch only: sincos (sine-cosine position/time embeddings) | official (near zero)
    linear_init: str = "official"  # scratch only: official (trunc normal 0.02, temporal_fc zero) | xavier (uniform, zero biases)
    drop_path_rate: float = 0.0  # stochastic depth, linear over blocks (official fine-tuning: 0.1)
    dropout: float = 0.0  # dropout after embeddings, attention projections and in the MLPs
    freeze_embeddings: bool = False  # patch embedding, cls token, position and time embeddings
    freeze_blocks: int = 0  # freeze the first N blocks
    head_only: bool = False  # train the classifier only (a linear probe)
    grad_checkpointing: bool = False  # recompute block activations in backward: long clips in less memory


@dataclass
class DataSection:
    """[data]: labelled videos and clip preprocessing. 0 / "" / [] mean: the init model's card."""

    train: str = ""  # folder of class sub-folders, or a CSV/TSV list path,label[,start_sec,end_sec]
    val: str = ""  # separate validation data; "" splits val_fraction off the training data
    val_fraction: float = 0.1  # stratified by class, fixed by the seed
    classes: str = ""  # class list file, one a line; "": classes.txt beside the data, else the sorted labels
    num_frames: int = 0  # frames per clip (a loaded model's time embedding is resized to it)
    fps: float = 0.0  # frames sampled per second of video (required for init = "scratch")
    crop_size: int = 0  # model input size (a loaded model's position embedding is resized to it)
    short_side: int = 0  # evaluation: short side before the centre crop
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=lambda: [256 / 224, 320 / 224])  # training short side / crop size range
    flip: bool = True  # random horizontal flip (disable when left/right matters, or swap labels)
    vflip: bool = False  # random vertical flip
    reverse: bool = False  # random time reversal
    flip_swaps: list[list[str]] = field(default_factory=list)  # [[a, b], ...]: labels swapped in flipped clips
    vflip_swaps: list[list[str]] = field(default_factory=list)  # ... in vertically flipped clips
    reverse_swaps: list[list[str]] = field(default_factory=list)  # ... in clips played backwards
    reverse_pairs: bool = False  # every training clip also played backwards in the same batch (labels per reverse_swaps)
    class_weights: dict[str, float] = field(default_factory=dict)  # {class = w}: its videos w times an epoch (others 1)
    workers: int = 2  # DataLoader decode processes per rank
    decode_threads: int = 1  # FFmpeg threads per decode process


@dataclass
class OptimSection:
    """[optim]: optimizer and batch."""

    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.005  # peak learning rate (after warm-up)
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 1e-4  # not applied to norms, biases and the cls/position/time embeddings
    grad_clip: float = 0.0  # max global gradient norm; 0: no clipping
    batch_size: int = 64  # clips per optimizer step, all ranks together
    micro_batch: int = 8  # clips per forward pass and rank; batch_size / (micro_batch * ranks) steps are accumulated
    epochs: int = 15


@dataclass
class ScheduleSection:
    """[schedule]: learning rate over the run (see get_lr)."""

    kind: str = "step"  # step | cosine
    milestones: list[int] = field(default_factory=lambda: [11, 14])  # step: epochs (0-based) where lr *= gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up, may be fractional
    warmup_start: float = 0.1  # warm-up starts at this fraction of lr
    min_lr: float = 0.0  # cosine: final learning rate


@dataclass
class RunSection:
    """[run]: where and how the loop runs (none of these change the result, except precision)."""

    device: str = "auto"  # auto (cuda:LOCAL_RANK if available, else cpu) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    threads: int = 0  # torch CPU threads; 0: torch's default. Fix it for bit-exact CPU resumes
    log_every: int = 10  # optimizer steps between log lines


@dataclass
class TrainConfig:
    """One training recipe."""

    name: str = ""  # model name written into the card; "": the run directory's name
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from nested dicts (a parsed recipe); unknown keys and wrong types are ConfigErrors."""
        config = _build(cls, values, "")
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work together."""
        m, d, o, s, r = self.model, self.data, self.optim, self.schedule, self.run
        checks = [
            (bool(m.init.strip()), "model.init must be 'scratch' or a model source"),
            (m.freeze_blocks >= 0, "model.freeze_blocks must be >= 0"),
            (m.embed_init in ("sincos", "official"), f"model.embed_init must be sincos or official, got {m.embed_init!r}"),
            (m.embed_init != "sincos" or m.arch.embed_dim % 4 == 0, "model.embed_init = sincos needs model.arch.embed_dim % 4 == 0"),
            (m.linear_init in ("official", "xavier"), f"model.linear_init must be official or xavier, got {m.linear_init!r}"),
            (0 <= m.drop_path_rate < 1 and 0 <= m.dropout < 1, "model.drop_path_rate and model.dropout must be in [0, 1)"),
            (0 <= d.val_fraction < 1, "data.val_fraction must be in [0, 1)"),
            (min(d.num_frames, d.crop_size, d.short_side, d.workers) >= 0 and d.fps >= 0, "data sizes, fps and workers must be >= 0"),
            (not (d.short_side and d.crop_size) or d.short_side >= d.crop_size, "data.short_side must be >= data.crop_size"),
            (len(d.mean) in (0, 3) and len(d.std) in (0, 3), "data.mean and data.std need 3 values (or none)"),
            (all(v > 0 for v in d.std), "data.std values must be positive"),
            (len(d.scale) == 2 and 1 <= d.scale[0] <= d.scale[1], "data.scale must be [low, high] with 1 <= low <= high"),
            (d.decode_threads >= 0, "data.decode_threads must be >= 0"),
            (all(w >= 0 for w in d.class_weights.values()), "data.class_weights must be >= 0"),
            (all(len(p) == 2 for p in d.flip_swaps + d.vflip_swaps + d.reverse_swaps), "data.*_swaps must be lists of [class, class] pairs"),
            (not d.flip_swaps or d.flip, "data.flip_swaps needs data.flip = true"),
            (not d.vflip_swaps or d.vflip, "data.vflip_swaps needs data.vflip = true"),
            (not d.reverse_swaps or d.reverse or d.reverse_pairs, "data.reverse_swaps needs data.reverse or data.reverse_pairs = true"),
            (not d.reverse_pairs or d.reverse_swaps, "data.reverse_pairs needs data.reverse_swaps (a reversal that changes no label teaches nothing)"),
            (m.init != "scratch" or d.fps > 0, "data.fps must be set when model.init = 'scratch'"),
            (o.optimizer in ("sgd", "adamw"), f"optim.optimizer must be sgd or adamw, got {o.optimizer!r}"),
            (o.lr > 0 and o.weight_decay >= 0 and o.grad_clip >= 0, "optim.lr must be > 0, weight_decay and grad_clip >= 0"),
            (0 <= o.momentum < 1, "optim.momentum must be in [0, 1)"),
            (not o.nesterov or (o.optimizer == "sgd" and o.momentum > 0), "optim.nesterov needs sgd with momentum > 0"),
            (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas must be two values in [0, 1)"),
            (o.batch_size >= 1 and o.micro_batch >= 1 and o.epochs >= 1, "optim.batch_size, micro_batch and epochs must be >= 1"),
            (o.batch_size % o.micro_batch == 0, f"optim.batch_size {o.batch_size} is not a multiple of micro_batch {o.micro_batch}"),
            (s.kind in ("step", "cosine"), f"schedule.kind must be step or cosine, got {s.kind!r}"),
            (list(s.milestones) == sorted(set(s.milestones)) and all(m_ > 0 for m_ in s.milestones), "schedule.milestones must be increasing epochs > 0"),
            (0 < s.gamma <= 1, "schedule.gamma must be in (0, 1]"),
            (0 <= s.warmup_epochs < o.epochs, "schedule.warmup_epochs must be in [0, optim.epochs)"),
            (0 <= s.warmup_start <= 1, "schedule.warmup_start must be in [0, 1]"),
            (0 <= s.min_lr <= o.lr, "schedule.min_lr must be in [0, optim.lr]"),
            (r.precision in PRECISIONS, f"run.precision must be one of {', '.join(PRECISIONS)}, got {r.precision!r}"),
            (device_name_problem(r.device) is None, f"run.device: {device_name_problem(r.device)}"),
            (r.threads >= 0 and r.log_every >= 1, "run.threads must be >= 0 and run.log_every >= 1"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("invalid recipe: " + "; ".join(problems))


# Settings that may differ when a run is resumed: they do not change what is computed.
_RESUMABLE_CHANGES = {"data.workers", "data.decode_threads", "run.log_every", "run.device"}


def _type_name(kind: Any) -> str:
    if get_origin(kind) is list:
        return f"a list of {_type_name(get_args(kind)[0])}"
    if get_origin(kind) is dict:
        return f"a table of name = value, each {_type_name(get_args(kind)[1])} (e.g. {{name = 2.0}})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def _check(kind: Any, value: Any, key: str) -> Any:
    """``value`` as the field type ``kind`` (ints are accepted for floats), or a ConfigError."""
    if get_origin(kind) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_type_name(kind)}, got {value!r}")
        return [_check(get_args(kind)[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if get_origin(kind) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be {_type_name(kind)}, got {value!r}")
        return {k: _check(get_args(kind)[1], v, f"{key}.{k}") for k, v in value.items()}
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (bool, str) and isinstance(value, kind):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{key} must be {_type_name(kind)}, got {value!r}")


def _build(cls: type, values: Any, prefix: str) -> Any:
    """A dataclass from nested dicts, checking every key and type against the dataclass."""
    section = prefix.rstrip(".") or "the recipe"
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a table, got {values!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}; "
            f"{section} has: {', '.join(names)}"
        )
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        kwargs[name] = _build(kind, value, f"{prefix}{name}.") if is_dataclass(kind) else _check(kind, value, prefix + name)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from exc


def _parse_override(kind: Any, raw: str, key: str) -> Any:
    """A ``--set`` value typed by its field: strings as given, the rest parsed as TOML values
    (lists and tables may omit the brackets: ``schedule.milestones=11,14``, ``data.class_weights=a=2,b=0.5``)."""
    text = raw.strip()
    if kind is str and not (len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"):
        return text
    if kind is bool:
        text = text.lower()
    if get_origin(kind) is list and not text.startswith("["):
        text = f"[{text}]"
    if get_origin(kind) is dict and not text.startswith("{"):
        text = f"{{{text}}}"
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"--set {key}={raw}: {key} must be {_type_name(kind)}") from None
    return _check(kind, value, key)


def _apply_override(values: dict, item: str) -> None:
    """Apply one ``dotted.key=value`` to the parsed recipe ``values`` (in place)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.01")
    cls: type = TrainConfig
    node = values
    parts = key.split(".")
    for depth, part in enumerate(parts):
        hints = get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:depth]) or "the recipe"
            raise ConfigError(f"--set {key}: unknown key {part!r}; {where} has: {', '.join(f.name for f in fields(cls))}")
        kind = hints[part]
        if depth == len(parts) - 1:
            if is_dataclass(kind):
                raise ConfigError(f"--set {key}: {key} is a section; set one of {', '.join(f.name for f in fields(kind))}")
            node[part] = _parse_override(kind, raw, key)
        elif not is_dataclass(kind):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
        else:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} must be a table")
            node, cls = child, kind


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped in ``train/`` (the ``vidfeat.recipes`` package)."""
    return sorted(p.name[:-5] for p in resources.files("vidfeat.recipes").iterdir() if p.name.endswith(".toml"))


def load_config(recipe: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a recipe TOML file (or a bundled recipe by name) and apply ``key=value`` overrides."""
    path = Path(recipe)
    if not path.is_file() and str(recipe) in bundled_recipes():
        path = Path(str(resources.files("vidfeat.recipes") / f"{recipe}.toml"))
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe not found: {recipe} (bundled recipes: {', '.join(bundled_recipes())})") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the recipe {path}: {exc}") from exc
    for item in overrides:
        _apply_override(values, item)
    return TrainConfig.from_dict(values)


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def check_resumable(config: TrainConfig, stored: dict, *, epochs_done: int | None = None) -> None:
    """A resumed run must use the recipe it started with (except settings that change nothing).

    Settings added to vidfeat after the run started count as their defaults. ``epochs_done``:
    the epochs the run has finished; given, ``optim.epochs`` may change to any number not below
    it (a finished run can be extended; its schedule is then recomputed)."""
    given, before = _flat(config.to_dict()), {**_flat(TrainConfig().to_dict()), **_flat(stored)}
    free = _RESUMABLE_CHANGES | ({"optim.epochs"} if epochs_done is not None else set())
    changed = [k for k in sorted(set(given) | set(before)) if given.get(k) != before.get(k) and k not in free]
    if changed:
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {given.get(k)!r}" for k in changed[:8])
        raise ConfigError(
            f"the recipe differs from the one this run was started with ({shown}). Resume with the same "
            "recipe and --set values, or start a new run in another directory"
        )
    if epochs_done is not None and config.optim.epochs < epochs_done:
        raise ConfigError(
            f"optim.epochs is {config.optim.epochs}, but this run has already done {epochs_done} epochs: "
            f"resume with optim.epochs >= {epochs_done}"
        )
