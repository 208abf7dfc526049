"""The wheel carries every subpackage, the model cards and the recipes."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "vidfeat").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert {"vidfeat.model_cards", "vidfeat.recipes"} <= listed


def test_cards_and_recipes_are_found_as_package_data():
    from importlib import resources

    cards = {e.name for e in resources.files("vidfeat.model_cards").iterdir()}
    recipes = {e.name for e in resources.files("vidfeat.recipes").iterdir()}
    assert "timesformer_base_8x224.k400.toml" in cards and "kinetics400_classes.txt" in cards
    assert {"kinetics_finetune.toml", "synthetic_motion.toml"} <= recipes
