"""The ``vidfeat`` command line: one module per command group, each thin.

Commands parse and validate their arguments (``click.UsageError``), call one library function
and print. Library errors (``vidfeat.errors.VidfeatError``) are shown as one line without a
traceback; set ``VIDFEAT_RAISE_ERRORS=1`` to see the traceback. Ctrl-C anywhere in a command
(including while torch imports) exits 130 with one line. Command modules import torch, timm
and PyAV inside the commands that run a model, so `--help`, `info` and `verify` start fast.
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from .. import __version__
from ..errors import VidfeatError, one_line

EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class VidfeatGroup(click.Group):
    """Maps library errors to one-line click errors (exit 1) and Ctrl-C to one line and exit 130
    (click's own handling prints "Aborted!" and exits 1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VidfeatError as exc:
            if os.environ.get("VIDFEAT_RAISE_ERRORS"):
                raise
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            if os.environ.get("VIDFEAT_RAISE_ERRORS"):
                raise
            _interrupted()


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


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """vidfeat's own warnings (e.g. an assumed clip sampling) as one line; others as Python prints them."""
    if category.__module__.startswith("vidfeat"):
        return "vidfeat: warning: " + one_line(str(message)) + "\n"
    return _python_formatwarning(message, category, filename, lineno, line)


_python_formatwarning = warnings.formatwarning
warnings.formatwarning = _one_line_warning


def run() -> None:  # pragma: no cover - console entry for `python -m vidfeat`
    main(prog_name="vidfeat")


def _interrupted() -> None:
    click.echo("vidfeat: interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


# Command modules register themselves on `main`. A Ctrl-C while they import (some import torch)
# ends the program with one line, not a traceback.
try:
    from . import extract, models  # noqa: E402,F401
    from . import train  # noqa: E402,F401
    from . import scale  # noqa: E402,F401
    from . import retrieval  # noqa: E402,F401
except KeyboardInterrupt:
    _interrupted()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
