"""What imports what: the light entry points stay light, and the package's module graph has no
cycle and points down (store, video and model import nothing above them; retrieval never the
pipeline, training or the CLI)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from test_search import make_file

PACKAGE = Path(__file__).resolve().parent.parent / "vidfeat"
HEAVY = ("torch", "timm", "torchvision")
DECODE = ("av",)


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    """A small feature file (written by the store alone: no model, no torch)."""
    return make_file(tmp_path_factory.mktemp("imports") / "feats.h5", videos=3, clips=4)


def _cli(*args: str) -> str:
    return f"from vidfeat.cli import main\nmain({list(args)!r}, prog_name='vidfeat')\n"


# (name, code run in a fresh interpreter (FEATS: the feature file), modules it must not import)
LIGHT = [
    ("vidfeat --help", _cli("--help"), HEAVY + DECODE),
    ("vidfeat extract --help", _cli("extract", "--help"), HEAVY + DECODE),
    ("vidfeat info", _cli("info", "FEATS"), HEAVY + DECODE),
    ("vidfeat verify", _cli("verify", "FEATS"), HEAVY + DECODE),
    ("vidfeat models", _cli("models", "--json"), HEAVY + DECODE + ("einops", "safetensors")),
    (
        "reading a recipe",
        "from vidfeat.training.recipe import bundled_recipes, load_config\n"
        "assert load_config('synthetic_motion', ['run.device=cpu']).run.device == 'cpu'\n",
        HEAVY + DECODE + ("vidfeat.training.data", "vidfeat.training.evaluate", "vidfeat.model.timesformer"),
    ),
    (
        "reading a card",
        "from vidfeat.model.cards import DEFAULT_MODEL, bundled_cards, find_card, read_class_file\n"
        "card = find_card(DEFAULT_MODEL)\n"
        "assert card.classes and len(bundled_cards()) > 1\n",
        HEAVY + DECODE + ("einops", "safetensors", "vidfeat.model.timesformer"),
    ),
    (
        "the retrieval modules",
        "import vidfeat.retrieval.search, vidfeat.retrieval.export, vidfeat.retrieval.plot\n"
        "import vidfeat.retrieval.view, vidfeat.retrieval.index\n",
        HEAVY + DECODE,
    ),
]


@pytest.mark.parametrize("code, forbidden", [case[1:] for case in LIGHT], ids=[case[0] for case in LIGHT])
def test_light_entry_points_do_not_import_torch(feats, code, forbidden):
    """Checked when the process exits (a command ends with sys.exit), over everything it imported."""
    script = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('IMPORTED', sorted(m for m in {forbidden!r} if m in sys.modules), file=sys.stderr))\n"
        + code.replace("FEATS", str(feats))
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.rsplit("IMPORTED", 1)[1].strip() == "[]"


# ---------------------------------------------------------------------------------------------
# the module graph


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The vidfeat modules ``name`` imports anywhere in its source (module level, functions,
    ``if TYPE_CHECKING``), each import resolved to the module it loads: ``import a.b.c`` and
    ``from a.b import c`` name module ``a.b.c`` when there is one, else the longest module
    prefix; relative imports count from the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def longest(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "vidfeat" or target.startswith("vidfeat."):
                module = longest(target)
                if module is not None and module != name:
                    found.add(module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# What each low layer may import besides itself.
ALLOWED = {
    "vidfeat.store": ("vidfeat.errors", "vidfeat.version"),
    "vidfeat.video": ("vidfeat.errors",),
    "vidfeat.model": ("vidfeat.errors", "vidfeat.video"),
}
# What a layer must never import.
FORBIDDEN = {"vidfeat.retrieval": ("vidfeat.pipeline", "vidfeat.training", "vidfeat.cli")}


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        for layer, allowed in ALLOWED.items():
            if _within(module, layer):
                wrong += [f"{module} -> {t}" for t in sorted(targets) if not _within(t, layer, *allowed)]
        for layer, forbidden in FORBIDDEN.items():
            if _within(module, layer):
                wrong += [f"{module} -> {t}" for t in sorted(targets) if _within(t, *forbidden)]
    return wrong


def test_the_graph_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The reader itself, on a made-up package: relative, absolute, function-level and
    TYPE_CHECKING imports are edges; ``from . import x`` is an edge to module x; the cycle and
    the upward import are found."""
    root = tmp_path / "vidfeat"
    for rel, text in {
        "__init__.py": "",
        "errors.py": "",
        "store/__init__.py": "from .reader import R\n",
        "store/reader.py": "from ..errors import E\ndef f():\n    from vidfeat.retrieval import search\n",
        "retrieval/__init__.py": "",
        "retrieval/search.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import vidfeat.store.reader\nfrom . import view\n",
        "retrieval/view.py": "import vidfeat.cli.main\n",
        "cli/__init__.py": "",
        "cli/main.py": "",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", root)
    graph = _graph()
    assert graph == {
        "vidfeat": set(),
        "vidfeat.errors": set(),
        "vidfeat.store": {"vidfeat.store.reader"},
        "vidfeat.store.reader": {"vidfeat.errors", "vidfeat.retrieval.search"},
        "vidfeat.retrieval": set(),
        "vidfeat.retrieval.search": {"vidfeat.store.reader", "vidfeat.retrieval.view"},
        "vidfeat.retrieval.view": {"vidfeat.cli.main"},
        "vidfeat.cli": set(),
        "vidfeat.cli.main": set(),
    }
    assert _cycles(graph) == [["vidfeat.retrieval.search", "vidfeat.store.reader"]]
    assert _layer_violations(graph) == [
        "vidfeat.retrieval.view -> vidfeat.cli.main",
        "vidfeat.store.reader -> vidfeat.retrieval.search",
    ]


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_layers_import_only_downwards():
    assert _layer_violations(_graph()) == []
