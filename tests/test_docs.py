"""Generated docs stay in sync with the code, and every command has --help with examples."""

from __future__ import annotations

import click
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.gendocs import main as gendocs_main


def test_generated_docs_are_up_to_date():
    assert gendocs_main(["--check"]) == 0, "run: python -m vidfeat.gendocs"


def test_every_command_has_help_with_examples():
    for name in main.commands:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Examples:" in result.output and f"vidfeat {name}" in result.output, name


def test_the_extract_page_explains_every_extract_option():
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "extract.md").read_text(encoding="utf-8")
    for param in main.commands["extract"].params:
        if isinstance(param, click.Option) and param.name != "help":
            assert f"`{param.opts[-1]}" in page or f"`{param.opts[0]}" in page, param.opts
    for code in ("| 0 |", "| 3 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in page
