"""The bundled ``tiny-motion`` model: intact, the default everywhere, and as accurate as its card says."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from vidfeat.model.cards import DEFAULT_MODEL, find_card, sha256_file
from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.training.recipe import check_resumable, load_config
from vidfeat.synth import CLASSES, DEFAULT_SIZE, generate_dataset
from vidfeat.model.weights import load_model


@pytest.fixture(scope="module")
def card():
    found = find_card(DEFAULT_MODEL)
    assert found is not None, f"{DEFAULT_MODEL} is not bundled"
    return found


def test_bundled_weights_match_their_card(card):
    path = card.weights_path()
    assert path is not None and path.parent == card.path.parent  # shipped beside the card, no download
    assert sha256_file(path) == card.weights.sha256 and len(card.weights.sha256) == 64
    assert path.stat().st_size < 5_000_000
    model = load_model(DEFAULT_MODEL)  # also verifies the digest
    assert model.card.classes == list(CLASSES) and model.config.attention_type == "divided_space_time"
    assert model.config.num_frames == 96 and card.preprocess.crop_size == DEFAULT_SIZE  # the synth's frames, unresized


def wilson_ci95(correct: int, total: int) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion at 95%."""
    z = 1.959963984540054
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def test_card_states_a_fresh_heldout_set_with_its_confidence_interval(card):
    meta = card.meta
    assert meta["heldout_seed"] not in (meta["data_seed"], meta["tuning_seed"])  # never trained nor tuned on
    assert meta["heldout_videos"] >= 400
    assert meta["heldout_top1"] == meta["heldout_correct"] / meta["heldout_videos"]
    low, high = wilson_ci95(meta["heldout_correct"], meta["heldout_videos"])
    assert meta["heldout_top1_ci95"] == [round(low, 4), round(high, 4)]
    assert f"--seed {meta['heldout_seed']}" in meta["heldout_command"]
    assert f"--videos {meta['heldout_videos']}" in meta["heldout_command"]


@pytest.mark.slow
def test_bundled_model_reaches_its_claimed_heldout_accuracy(card, tmp_path):
    """Regenerates the card's held-out set (its seed and size) and evaluates the default model on it:
    the count of correct videos is the card's."""
    meta = card.meta
    data = tmp_path / "heldout"
    generate_dataset(data, videos=meta["heldout_videos"], seed=meta["heldout_seed"])
    result = CliRunner().invoke(main, ["eval", str(data), "--json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == DEFAULT_MODEL and summary["count"] == meta["heldout_videos"] and not summary["skipped"]
    assert round(summary["top1"] * summary["count"]) == meta["heldout_correct"]


def test_bundled_model_was_trained_by_its_recipe_as_it_stands(card):
    """The card keeps every setting of the run that made the weights; the recipe it names must still give
    them, so a recipe changed without retraining (and re-measuring) the bundled model fails here."""
    meta = card.meta
    config = load_config(Path(meta["recipe"]).stem, ["data.train=data/motion"])  # the card's command
    assert "--set data.train=data/motion" in meta["command"]
    check_resumable(config, meta["trained_with"])  # same comparison as --resume: later-added keys are defaults
    assert meta["epochs"] == config.optim.epochs
    arch = config.model.arch
    assert (arch.depth, arch.embed_dim, arch.num_heads, arch.patch_size, arch.img_size, arch.num_frames) == (
        card.config.depth, card.config.embed_dim, card.config.num_heads, card.config.patch_size,
        card.config.img_size, card.config.num_frames,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="optim.lr"):  # the check sees a changed setting
        check_resumable(load_config(Path(meta["recipe"]).stem, ["data.train=data/motion", "optim.lr=0.002"]), meta["trained_with"])
