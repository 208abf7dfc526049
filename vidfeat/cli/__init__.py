"""The ``vidfeat`` command line: one module per command group, each thin.

Commands parse and validate their arguments (``click.UsageError``), call one library function
and print. Library errors (``vidfeat.errors.VidfeatError``) are shown as one line without a
traceback; set ``VIDFEAT_RAISE_ERRORS=1`` to see the traceback. While a command runs, vidfeat's
own warnings print as one line too; importing this package changes nothing in the process.
Ctrl-C anywhere in a command (including while torch imports) exits 130 with one line. Command
modules import torch, timm and PyAV inside the commands that run a model, so `--help`, `info`
and `verify` start fast.

The group and its shared behaviour are in :mod:`vidfeat.cli.group`; each command module
registers on it, and this package imports them all, so ``vidfeat.cli.main`` is the whole CLI.
"""

from __future__ import annotations

import sys

from .group import interrupted, main

__all__ = ["main", "run"]


def run() -> None:  # pragma: no cover - console entry for `python -m vidfeat`
    main(prog_name="vidfeat")


# Command modules register themselves on `main`. A Ctrl-C while they import (some import torch)
# ends the program with one line, not a traceback.
try:
    from . import extract, models  # noqa: E402,F401
    from . import train  # noqa: E402,F401
    from . import scale  # noqa: E402,F401
    from . import retrieval  # noqa: E402,F401
    from . import captions  # noqa: E402,F401
except KeyboardInterrupt:
    interrupted()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
