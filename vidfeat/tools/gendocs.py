"""Generate docs/models.md (from the model cards) and docs/cli.md (from every command's --help).

    python -m vidfeat.tools.gendocs          # rewrite both files
    python -m vidfeat.tools.gendocs --check  # exit 1 if either is out of date (run by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..model.cards import bundled_cards

DOCS = Path(__file__).resolve().parents[2] / "docs"


def models_md() -> str:
    out = [
        "# Models",
        "",
        "Generated from the model cards in `models/` by `python -m vidfeat.tools.gendocs`; do not edit by hand.",
        "",
        "A card's weights file is looked up beside the card, then in `$VIDFEAT_HOME` (default "
        "`~/.cache/vidfeat`): put a downloaded file there under the name the card gives "
        "(`vidfeat models` prints each full path).",
        "",
        "| name | aliases | attention | frames x size | fps (clip s) | classes | params | weights |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for card in bundled_cards():
        pre, w = card.preprocess, card.weights
        source = w.hf_hub_id or w.url or w.file
        params = f"{card.meta['num_params'] / 1e6:.1f}M" if "num_params" in card.meta else "?"
        out.append(
            f"| `{card.name}` | {', '.join(card.aliases)} | {card.config.attention_type} | "
            f"{pre.num_frames} x {pre.crop_size} | {pre.fps:g} ({pre.clip_sec:.1f}) | {card.config.num_classes} | "
            f"{params} | {source} |"
        )
    out.append("")
    for card in bundled_cards():
        out += [f"## {card.name}", "", card.description, ""]
        pre = card.preprocess
        out.append(
            f"- preprocessing: {pre.num_frames} frames at {pre.fps:g} fps, short side {pre.short_side}, "
            f"crop {pre.crop_size}, mean {list(pre.mean)}, std {list(pre.std)}"
        )
        out.append(f"- weights: `{card.weights.file}` ({card.weights.format}), license {card.weights.license or '?'}, "
                   f"sha256 {card.weights.sha256 or 'not published'}")  # fmt: skip
        for key, value in card.meta.items():
            if isinstance(value, dict):  # a whole table, e.g. every setting of the training run
                out.append(f"- {key}: the card's `[meta.{key}]` table ({', '.join(value)})")
            else:
                out.append(f"- {key}: {value}")
        out.append("")
    return "\n".join(out)


def cli_md() -> str:
    from ..cli import main

    out = ["# Command line", "", "Generated from `--help` by `python -m vidfeat.tools.gendocs`; do not edit by hand.", ""]

    # the root group's context settings (``-h``) apply to every subcommand, as on the command line;
    # without them the text would depend on whether a command had already run in this process
    help_names = main.context_settings.get("help_option_names", ["--help"])

    def walk(command: click.Command, path: list[str]) -> None:
        with click.Context(command, info_name=" ".join(path), terminal_width=100, help_option_names=help_names) as ctx:
            out.extend([f"## {' '.join(path)}", "", "```", command.get_help(ctx), "```", ""])
        if isinstance(command, click.Group):
            for name in sorted(command.commands):
                walk(command.commands[name], [*path, name])

    walk(main, ["vidfeat"])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stale = []
    for name, text in (("models.md", models_md()), ("cli.md", cli_md())):
        path = DOCS / name
        if "--check" in argv:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m vidfeat.tools.gendocs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
