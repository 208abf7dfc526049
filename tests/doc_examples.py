"""Find the examples in README.md and docs/*.md and check them against the real CLI.

An example is

* a shell command in a fenced block that calls ``vidfeat`` (directly, ``python -m vidfeat``,
  ``torchrun ... -m vidfeat``, after a pipe or ``&&``, or inside a quoted ``--wrap "vidfeat ..."``),
  ``make`` or one of the HDF5 tools (``h5ls``, ``h5dump``). Backslash continuations are joined;
  in a block that uses ``$ `` prompts only the prompted lines are commands (the rest is output);
* a fenced ``python`` block;
* an inline code span in prose that starts with ``vidfeat `` (checked for its command and option
  names only: prose uses placeholders such as ``N`` for values).

:func:`check_vidfeat_args` parses a command line with click itself (``make_context``, resilient
parsing off), so an unknown command or option, a bad choice or a value that does not convert
fails; paths need not exist (the examples name the user's files). tests/test_doc_examples.py
runs the examples that can run here in a small workspace and lists the rest with the reason.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import re
import shlex
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
# The pages whose examples are checked. docs/cli.md is the --help text (vidfeat.tools.gendocs): its
# examples are parsed like the others and run in the topic pages.
GENERATED = ("docs/cli.md", "docs/models.md")
SHELL_LANGS = {"", "sh", "bash", "shell", "console", "zsh"}
TOOLS = {"make", "h5ls", "h5dump"}
SEPARATORS = {"|", "||", "&&", ";", "&", "|&"}
LAUNCHER_FLAG = "-m"


class ExampleError(AssertionError):
    """A doc example that does not match the CLI or the library."""


@dataclass(frozen=True)
class Call:
    """One program invocation inside a command line."""

    program: str  # "vidfeat", "make", "h5ls", "h5dump"
    args: tuple[str, ...]  # for vidfeat: the arguments after the program (subcommand first)


@dataclass(frozen=True)
class Example:
    source: str  # path relative to the repository, e.g. "docs/format.md"
    line: int  # 1-based line of the example's first line
    kind: str  # "shell" | "python" | "inline"
    text: str  # the command (continuations joined, comment stripped) or the code
    block: int = 0  # index of the fenced block in its file (examples of a block run together)
    calls: tuple[Call, ...] = field(default=())

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


# --- finding examples ---------------------------------------------------------------------------


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def fenced_blocks(text: str) -> Iterator[tuple[str, int, list[str]]]:
    """(language, 1-based line of the first body line, body lines) of each fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).lower()
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        yield lang, start, body


def logical_lines(body: list[str], first_line: int) -> Iterator[tuple[int, str]]:
    """Shell lines with backslash continuations joined, ``$`` prompts honoured."""
    prompted = any(line.lstrip().startswith("$ ") for line in body)
    pending, start = "", first_line
    for number, raw in enumerate(body, first_line):
        line = raw.strip()
        if not pending:
            start = number
            if prompted:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def strip_comment(line: str) -> str:
    """The command without a trailing ``# comment``, whitespace normalised (the example's key)."""
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return " ".join("".join(out).split())


def calls_in(line: str) -> tuple[Call, ...]:
    """The vidfeat / make / HDF5-tool invocations of one shell command line."""
    try:
        tokens = _tokens(line)
    except ValueError:  # unbalanced quotes: not a command line
        return ()
    segments, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    found: list[Call] = []
    for segment in segments:
        while segment and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", segment[0]):  # VAR=value prefix
            segment = segment[1:]
        if not segment:
            continue
        program = segment[0].rsplit("/", 1)[-1]
        if program == "vidfeat":
            found.append(Call("vidfeat", tuple(segment[1:])))
        elif program in TOOLS:
            found.append(Call(program, tuple(segment[1:])))
        else:
            for i in range(len(segment) - 1):
                if segment[i] == LAUNCHER_FLAG and segment[i + 1] == "vidfeat":
                    found.append(Call("vidfeat", tuple(segment[i + 2 :])))
                    break
        for token in segment[1:]:  # sbatch --wrap "vidfeat merge ...", bash -c "vidfeat ..."
            if token.startswith("vidfeat ") or " vidfeat " in token:
                found.extend(calls_in(token))
    return tuple(found)


INLINE = re.compile(r"(?<!`)`(vidfeat [^`]+)`(?!`)")


def collect(root: Path = REPO) -> list[Example]:
    examples: list[Example] = []
    for path in doc_files(root):
        source = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        fenced_lines: set[int] = set()
        for block, (lang, first, body) in enumerate(fenced_blocks(text)):
            fenced_lines.update(range(first - 1, first + len(body) + 1))
            if lang == "python":
                code = textwrap.dedent("\n".join(body)) + "\n"  # blocks inside list items are indented
                examples.append(Example(source, first, "python", code, block))
            elif lang in SHELL_LANGS:
                for number, line in logical_lines(body, first):
                    calls = calls_in(line)
                    if calls:
                        examples.append(Example(source, number, "shell", strip_comment(line), block, calls))
        for number, line in enumerate(text.splitlines(), 1):
            if number in fenced_lines:
                continue
            for m in INLINE.finditer(line):
                examples.append(Example(source, number, "inline", m.group(1).strip(), -1, calls_in(m.group(1))))
    return examples


# --- checking against the CLI -------------------------------------------------------------------


def _walk(command: click.Command) -> Iterator[click.Command]:
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from _walk(sub)


@contextlib.contextmanager
def _paths_need_not_exist(root: click.Command) -> Iterator[None]:
    """Examples name the reader's files: parse them as if every path existed."""
    changed = []
    for command in _walk(root):
        for param in command.params:
            if isinstance(param.type, click.Path) and param.type.exists:
                changed.append(param.type)
                param.type.exists = False
    try:
        yield
    finally:
        for kind in changed:
            kind.exists = True


def _rest(ctx: click.Context) -> list[str]:
    protected = getattr(ctx, "_protected_args", None)
    if protected is None:
        protected = ctx.protected_args
    return [*protected, *ctx.args]


def check_vidfeat_args(args: list[str] | tuple[str, ...], cli: click.Group | None = None) -> click.Command:
    """Parse ``vidfeat ARGS`` with the real click CLI; raise ExampleError naming the fault.

    Returns the leaf command. Values are converted (choices, numbers, callbacks), paths need not
    exist and nothing is run.
    """
    if cli is None:
        from vidfeat.cli import main as cli
    args = list(args)
    with _paths_need_not_exist(cli):
        try:
            ctx = cli.make_context("vidfeat", list(args), resilient_parsing=False)
            command: click.Command = cli
            while isinstance(command, click.Group):
                rest = _rest(ctx)
                if not rest:
                    break
                name, sub, rest = command.resolve_command(ctx, rest)
                if sub is None:
                    raise ExampleError(f"no such command: {name}")
                ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=False)
                command = sub
            return command
        except click.exceptions.Exit as exc:  # --help, --version
            if exc.exit_code != 0:
                raise ExampleError(f"exits {exc.exit_code}") from None
            return cli
        except click.ClickException as exc:
            raise ExampleError(exc.format_message()) from None


def check_option_names(args: list[str] | tuple[str, ...], cli: click.Group | None = None) -> None:
    """For prose (``vidfeat synth OUT --videos N``): the command and every option name exist."""
    if cli is None:
        from vidfeat.cli import main as cli
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        if sub is None:
            raise ExampleError(f"no such command: {rest[0]}")
        command, rest = sub, rest[1:]
    names = {opt for p in command.params if isinstance(p, click.Option) for opt in [*p.opts, *p.secondary_opts]}
    names |= {"--help", "-h"}
    for token in rest:
        if token.startswith("-") and token != "-" and not re.match(r"^-\d", token):
            name = token.split("=", 1)[0]
            if name not in names:
                raise ExampleError(f"no such option: {name} (vidfeat {command.name})")


def check_make_target(args: tuple[str, ...], root: Path = REPO) -> None:
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:", makefile, flags=re.M))
    for target in (a for a in args if not a.startswith("-") and "=" not in a):
        if target not in targets:
            raise ExampleError(f"the Makefile has no target {target!r}")


def check_calls(example: Example) -> None:
    """Every vidfeat call of the example parses (inline spans: its names exist); make targets exist."""
    for call in example.calls:
        try:
            if call.program == "vidfeat":
                if example.kind == "inline":
                    check_option_names(call.args)
                else:
                    check_vidfeat_args(call.args)
            elif call.program == "make":
                check_make_target(call.args)
        except ExampleError as exc:
            raise ExampleError(f"{example.where}: {example.text}: {exc}") from None


def check_python_names(example: Example) -> None:
    """A python example compiles, every ``vidfeat`` name it imports or reads exists, and a
    ``["vidfeat", ...]`` argument list parses like a shell example."""
    try:
        tree = ast.parse(example.text, filename=example.where)
    except SyntaxError as exc:
        raise ExampleError(f"{example.where}: does not compile: {exc}") from None
    aliases: dict[str, str] = {}  # local name -> dotted vidfeat path

    def resolve(dotted: str) -> None:
        parts = dotted.split(".")
        try:
            obj = importlib.import_module(parts[0])
        except ImportError as exc:
            raise ExampleError(f"{example.where}: {exc}") from None
        for i, part in enumerate(parts[1:], 1):
            if hasattr(obj, part):
                obj = getattr(obj, part)
                continue
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ImportError:
                raise ExampleError(f"{example.where}: {'.'.join(parts[:i])} has no {part!r}") from None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "vidfeat":
                    resolve(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases["vidfeat"] = "vidfeat"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vidfeat":
            for a in node.names:
                resolve(f"{node.module}.{a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):  # subprocess.run(["vidfeat", "extract", ...]): the command line it runs
        if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant) \
                and node.elts[0].value == "vidfeat":
            args = [e.value if isinstance(e, ast.Constant) else None for e in node.elts[1:]]
            try:
                if None in args:  # a computed value: its option name is still checked
                    check_option_names([a if a is not None else "VALUE" for a in args])
                else:
                    check_vidfeat_args(args)
            except ExampleError as exc:
                raise ExampleError(f"{example.where}: {['vidfeat', *args]}: {exc}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                resolve(".".join([aliases[inner.id], *reversed(chain)]))
