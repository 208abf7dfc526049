"""Model cards: one TOML file per model, the single source of its architecture, preprocessing,
class names and weights (source, sha256, licence).

A card travels with every checkpoint vidfeat writes, so a checkpoint always carries its
preprocessing. The bundled cards live in ``models/`` (installed as the ``vidfeat.model_cards``
package). Schema::

    name = "timesformer_base_8x224.k400"      # arch.tag
    aliases = ["base"]
    description = "..."
    [model]        # TimeSformerConfig fields
    [preprocess]   # num_frames, fps, short_side, crop_size, mean, std
    [classes]      # file (one name per line, beside the card), count
    [weights]      # file, url, hf_hub_id, sha256, license, format
    [meta]         # free-form: recipe, metrics, command, ...
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import tomli_w

from ..errors import ConfigError
from .config import TimeSformerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Preprocess", "WeightsInfo", "ModelCard", "bundled_cards", "find_card", "vidfeat_home",
    "sha256_file", "read_class_file", "placeholder_classes", "DEFAULT_MODEL",
]

DEFAULT_MODEL = "tiny-motion"
"""The bundled synthetic-motion model: what ``vidfeat extract``, ``vidfeat eval`` and the demo use
without ``--model`` / ``--weights``."""

# Input normalisation of the official and Hugging Face TimeSformer checkpoints (on [0, 1] RGB).
OFFICIAL_MEAN = (0.45, 0.45, 0.45)
OFFICIAL_STD = (0.225, 0.225, 0.225)


@dataclass
class Preprocess:
    """How clips are sampled and normalised for a model (shared by extract, train and eval)."""

    num_frames: int  # frames per clip
    fps: float  # frames sampled per second of video time (official base: every 32nd frame of 30 fps)
    short_side: int  # frames are resized so that their short side has this many pixels ...
    crop_size: int  # ... then cropped to crop_size x crop_size (1 centre crop, or 3 along the long side)
    mean: tuple[float, float, float] = OFFICIAL_MEAN
    std: tuple[float, float, float] = OFFICIAL_STD

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.num_frames <= 0 or self.fps <= 0 or self.crop_size <= 0 or self.short_side < self.crop_size:
            raise ConfigError(
                f"invalid preprocessing: num_frames={self.num_frames}, fps={self.fps}, "
                f"short_side={self.short_side}, crop_size={self.crop_size} (short_side must be >= crop_size)"
            )

    @property
    def clip_sec(self) -> float:
        return self.num_frames / self.fps


@dataclass
class WeightsInfo:
    """Where a card's weights come from."""

    file: str = ""  # file name, looked up beside the card, then in vidfeat_home()
    url: str = ""
    hf_hub_id: str = ""
    sha256: str = ""  # full hex digest; empty when not known
    license: str = ""
    format: str = "safetensors"  # safetensors | official | hf | timm


@dataclass
class ModelCard:
    name: str
    config: TimeSformerConfig
    preprocess: Preprocess
    classes: list[str]
    weights: WeightsInfo = field(default_factory=WeightsInfo)
    description: str = ""
    aliases: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    path: Path | None = None  # where the card was read from

    def __post_init__(self) -> None:
        if self.config.num_classes and len(self.classes) != self.config.num_classes:
            raise ConfigError(
                f"card {self.name!r}: {len(self.classes)} class names for a head of {self.config.num_classes} classes"
            )

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def from_toml(cls, path: Path) -> "ModelCard":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read model card {path}: {exc}") from exc
        try:
            config = TimeSformerConfig.from_dict(data["model"])
            preprocess = Preprocess(**data["preprocess"])
            weights = WeightsInfo(**data.get("weights", {}))
            classes = _read_classes(path.parent, data.get("classes", {}), config.num_classes)
            return cls(
                name=data["name"],
                config=config,
                preprocess=preprocess,
                classes=classes,
                weights=weights,
                description=data.get("description", ""),
                aliases=list(data.get("aliases", [])),
                meta=dict(data.get("meta", {})),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid model card {path}: {exc}") from exc

    def to_toml(self, path: Path, *, classes_file: str = "classes.txt") -> None:
        """Write the card and its class names (``classes_file`` beside it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "name": self.name,
            "aliases": self.aliases,
            "description": self.description,
            "model": self.config.to_dict(),
            "preprocess": asdict(self.preprocess),
            "classes": {"file": classes_file, "count": len(self.classes)},
            "weights": asdict(self.weights),
            "meta": self.meta,
        }
        data["preprocess"]["mean"] = list(self.preprocess.mean)
        data["preprocess"]["std"] = list(self.preprocess.std)
        (path.parent / classes_file).write_text("".join(f"{c}\n" for c in self.classes), encoding="utf-8")
        path.write_text(tomli_w.dumps(data), encoding="utf-8")

    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def weights_path(self) -> Path | None:
        """The local weights file if it exists (beside the card, then in ``vidfeat_home()``)."""
        if not self.weights.file:
            return None
        for folder in (self.path.parent if self.path else None, vidfeat_home()):
            if folder is not None and (folder / self.weights.file).is_file():
                return folder / self.weights.file
        return None


def placeholder_classes(num_classes: int) -> list[str]:
    """The class names of a head whose names are unknown (a checkpoint or card without a class
    list, a new head): ``class_0``, ``class_1``, ..."""
    return [f"class_{i}" for i in range(num_classes)]


def read_class_file(path: str | Path) -> list[str]:
    """Class names, one a line, surrounding spaces and blank lines skipped. A file that cannot be
    read, is empty or repeats a name is a one-line :class:`ConfigError` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the class list {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read the class list {path}: not UTF-8 text") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConfigError(f"the class list {path} repeats {', '.join(duplicates)}: each class name must appear once")
    if not names:
        raise ConfigError(f"the class list {path} is empty: write one class name a line")
    return names


def _read_classes(folder: Path, spec: dict, num_classes: int) -> list[str]:
    """A card's class names: its ``[classes]`` file (checked against ``count``), else placeholders."""
    if not spec.get("file"):
        return placeholder_classes(num_classes)
    names = read_class_file(folder / spec["file"])
    if "count" in spec and spec["count"] != len(names):
        raise ValueError(f"{spec['file']} holds {len(names)} class names, the card says {spec['count']}")
    return names


def vidfeat_home() -> Path:
    """vidfeat's one directory for what it keeps between runs: ``$VIDFEAT_HOME``, else
    ``~/.cache/vidfeat``. Downloaded or user-placed weights files live in it (a card's weights
    are looked up beside the card, then here), and so does the remembered batch size of each
    model and GPU (``batch_sizes.json``)."""
    return Path(os.environ.get("VIDFEAT_HOME") or Path.home() / ".cache" / "vidfeat")


def bundled_cards() -> list[ModelCard]:
    """Every card shipped in ``models/`` (the ``vidfeat.model_cards`` package), sorted by name."""
    root = resources.files("vidfeat.model_cards")
    cards = []
    for entry in root.iterdir():
        if entry.is_dir() and (entry / "card.toml").is_file():
            cards.append(ModelCard.from_toml(Path(str(entry / "card.toml"))))
        elif entry.name.endswith(".toml"):
            cards.append(ModelCard.from_toml(Path(str(entry))))
    return sorted(cards, key=lambda c: c.name)


def find_card(name: str) -> ModelCard | None:
    """The bundled card called ``name`` (its full ``arch.tag`` name or an alias), else None."""
    for card in bundled_cards():
        if name in card.names():
            return card
    return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
