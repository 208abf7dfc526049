"""The command-line layer itself (vidfeat.cli.group): every command has --help with examples,
library errors and Ctrl-C become one line and an exit status, vidfeat's warnings print as one
line while a command runs. What each command does is tested beside its subsystem
(test_extract.py, test_export.py, test_search.py, ...)."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.errors import StoreError


def test_every_command_has_help_with_examples():
    for name in main.commands:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Examples:" in result.output and f"vidfeat {name}" in result.output, name


def test_library_errors_are_one_line_and_ctrl_c_is_exit_130(monkeypatch):
    @click.command()
    def fails():
        raise StoreError("cannot write feats.h5: No space left on device; free 2 GB and rerun")

    @click.command()
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setitem(main.commands, "fails", fails)
    monkeypatch.setitem(main.commands, "interrupted", interrupted)
    monkeypatch.delenv("VIDFEAT_RAISE_ERRORS", raising=False)
    result = CliRunner().invoke(main, ["fails"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == "Error: cannot write feats.h5: No space left on device; free 2 GB and rerun\n"
    result = CliRunner().invoke(main, ["interrupted"])
    assert result.exit_code == 130 and result.output == "vidfeat: interrupted\n"


def test_cli_prints_vidfeat_warnings_as_one_line_and_only_while_a_command_runs():
    """Importing vidfeat.cli leaves the process's warning formatter alone; a command prints
    vidfeat's warnings as one line (others as before) and puts the formatter back when it ends."""
    code = (
        "import warnings\n"
        "before = warnings.formatwarning\n"
        "from vidfeat.cli import main\n"
        "from vidfeat.model.weights import SamplingWarning\n"
        "assert warnings.formatwarning is before, 'import'\n"
        "@main.command(name='warn-twice')\n"
        "def warn_twice():\n"
        "    warnings.warn('heads assumed:\\n  3 = width / 64', SamplingWarning)\n"
        "    warnings.warn('other', UserWarning)\n"
        "main(['warn-twice'], standalone_mode=False)\n"
        "assert warnings.formatwarning is before, 'after the command'\n"
    )
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "vidfeat: warning: heads assumed: 3 = width / 64"
    assert lines[1].endswith(": UserWarning: other") and len(lines) == 2, done.stderr  # not ours: as Python prints it

