"""The ``vidfeat`` click group and what every command shares: one-line library errors, Ctrl-C
as one line and exit 130, one-line vidfeat warnings while a command runs. The command modules
register on :data:`main`; :mod:`vidfeat.cli` imports them all (this module imports none).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

import click

from ..errors import VidfeatError, one_line
from ..version import __version__

EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class VidfeatGroup(click.Group):
    """Maps library errors to one-line click errors (exit 1) and Ctrl-C to one line and exit 130
    (click's own handling prints "Aborted!" and exits 1); vidfeat's warnings are one line while
    the command runs."""

    def invoke(self, ctx: click.Context):
        try:
            with one_line_warnings():
                return super().invoke(ctx)
        except VidfeatError as exc:
            if os.environ.get("VIDFEAT_RAISE_ERRORS"):
                raise
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            if os.environ.get("VIDFEAT_RAISE_ERRORS"):
                raise
            interrupted()


@click.group(cls=VidfeatGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vidfeat")
def main() -> None:
    """vidfeat: long videos to per-clip TimeSformer embeddings and class scores.

    \b
    Examples:
      vidfeat extract videos/ -o feats.h5
      vidfeat info feats.h5
      vidfeat models
      vidfeat train train/kinetics_finetune.toml --set data.train=train.csv
    """


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Inside, vidfeat's own warnings (e.g. an assumed clip sampling) print as one line
    ``vidfeat: warning: ...``; others as the formatter in place before prints them. The previous
    formatter is back on leaving, so a program that calls the CLI keeps its own."""
    previous = warnings.formatwarning

    def one_line_warning(message, category, filename, lineno, line=None) -> str:
        if category.__module__.startswith("vidfeat"):
            return "vidfeat: warning: " + one_line(str(message)) + "\n"
        return previous(message, category, filename, lineno, line)

    warnings.formatwarning = one_line_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


def interrupted() -> None:
    click.echo("vidfeat: interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)
