"""Full-text search over the clips' caption text (``/clips/text``) with SQLite FTS5.

Matching rule: the query is plain words, never FTS5 syntax. It is split at whitespace and
every piece is quoted, so quotes, ``*``, ``-``, ``:``, ``NEAR``, ``AND``, ``OR`` and brackets
are ordinary text; a piece without letters or digits (``-``, ``*``) is dropped. A clip matches
when its text contains every piece of the query, in any order; a piece holding punctuation
between letters is a short phrase (``don't``, ``e-mail``, ``3:30`` match those words in a row).
Words are compared after SQLite's ``unicode61`` tokenizer (case-insensitive, accents removed:
``Crème`` matches ``creme``; punctuation separates words) and the Porter stemmer (English
endings: ``knots`` matches ``knot``, ``cooking`` matches ``cook``). Clips holding the whole
query as one phrase come first, then those holding its words apart; within each group clips
are ranked by BM25 (SQLite's ``bm25()`` of the query, reported negated so a higher score is
better), equal scores going to the lower row.

The index holds one entry per clip with text (rowid = /clips row, contentless: the text stays
in the feature file). It is built on the first search, streaming /clips/text in blocks of
rows (memory does not grow with the file), written to a temporary name and renamed, and
cached beside the file as ``feats.h5.text.sqlite``. When that folder is not writable it goes to
``$VIDFEAT_HOME/cache`` (default ``~/.cache/vidfeat/cache``), then to the system's temporary
folder, and the search says where. A cached index records the file's identity (size,
``mtime_ns``, the ``created`` attribute) and the index layout; one that does not match the file
now is never used: the search builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VidfeatError

__all__ = [
    "TextHit",
    "search_text",
    "text_index",
    "build_text_index",
    "match_expression",
    "phrase_expression",
    "has_text",
    "index_path",
    "cache_dirs",
    "TOKENIZE",
]

TEXT = "clips/text"
SUFFIX = ".text.sqlite"
TOKENIZE = "porter unicode61 remove_diacritics 2"
LAYOUT = 1  # version of the index's tables; a cache with another one is rebuilt
_BLOCK_ROWS = 16384  # /clips/text rows read per step while building
_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"  # highlight() markers, stripped into match spans

Notify = Callable[[str], None]


@dataclass(frozen=True)
class TextHit:
    """One clip whose caption text matches the query."""

    row: int  # row in /clips
    video: str  # the video's relative path
    start_sec: float
    end_sec: float
    score: float  # BM25 relevance, higher is better
    text: str  # the clip's whole caption text
    matches: tuple[tuple[int, int], ...]  # [start, end) character spans of the matched words in text

    def marked(self, open: str = "[", close: str = "]") -> str:
        """The text with every matched span wrapped in ``open`` ... ``close``."""
        parts, last = [], 0
        for a, b in self.matches:
            parts += [self.text[last:a], open, self.text[a:b], close]
            last = b
        return "".join(parts) + self.text[last:]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["matches"] = [list(span) for span in self.matches]
        return out


# --- the query ------------------------------------------------------------------------------------


def _has_token_chars(piece: str) -> bool:
    """Whether unicode61 finds a word in ``piece``: letters, digits and private-use characters
    are word characters, everything else separates words."""
    return any(unicodedata.category(ch)[0] in "LN" or unicodedata.category(ch) == "Co" for ch in piece)


def _pieces(query: str) -> list[str]:
    """The query's whitespace-separated pieces that hold a word, each quoted for FTS5 (``"``
    doubled inside). Raises VidfeatError when there are none."""
    pieces = ['"' + p.replace('"', '""') + '"' for p in query.split() if _has_token_chars(p)]
    if not pieces:
        raise VidfeatError(f"the text query {query!r} has no words: search for words the captions say")
    return pieces


def phrase_expression(query: str) -> str:
    """The FTS5 MATCH expression of the whole query as one phrase."""
    return '"' + " ".join(p[1:-1] for p in _pieces(query)) + '"'


def match_expression(query: str) -> str:
    """The FTS5 MATCH expression of a plain-words query: every piece quoted, all required; with
    two or more pieces the whole query as a phrase is an alternative (a phrase match implies
    all pieces, so the matching clips are the same), which adds its weight to the BM25 score.
    Raises VidfeatError when the query has no words."""
    pieces = _pieces(query)
    words = " AND ".join(pieces)
    return words if len(pieces) == 1 else f"{phrase_expression(query)} OR ({words})"


# --- the cached index -------------------------------------------------------------------------------


def has_text(f) -> bool:
    """Whether the open feature file has per-clip caption text (/clips/text)."""
    return TEXT in f.h5


def _require_fts5() -> None:
    """Raises VidfeatError when this Python's SQLite was built without FTS5."""
    con = sqlite3.connect(":memory:")
    try:
        con.execute(f"CREATE VIRTUAL TABLE probe USING fts5(text, tokenize='{TOKENIZE}')")
    except sqlite3.OperationalError as exc:
        raise VidfeatError(f"text search needs SQLite's FTS5, which this Python's sqlite3 (SQLite "
                           f"{sqlite3.sqlite_version}) lacks ({exc}): use a Python whose SQLite has it "
                           "(python.org and conda builds do)") from None  # fmt: skip
    finally:
        con.close()


def _require_text(f) -> None:
    if not has_text(f):
        raise VidfeatError(f"{f.path} has no captions: add them with `vidfeat captions {f.path} SOURCE`")
    rows, n = f.h5[TEXT].shape[0], len(f)
    if rows != n:
        raise VidfeatError(f"{f.path}: /clips/text has {rows} rows for {n} clips: rewrite the captions, "
                           "one per clip row")  # fmt: skip


def _identity(f) -> dict[str, Any]:
    """What a cached index must have been built from: the file (size, mtime_ns, its ``created``
    attribute), its row count and the index layout. Not its path: a folder moved with its
    timestamps kept (``mv``, ``rsync -a``) keeps its index."""
    st = os.stat(f.path)
    created = f.h5.attrs.get("created", "")
    if isinstance(created, (bytes, np.bytes_)):
        created = created.decode("utf-8", "replace")
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "created": str(created),
            "rows": int(f.h5[TEXT].shape[0]), "layout": LAYOUT, "tokenize": TOKENIZE}


def index_path(feats: str | os.PathLike[str]) -> Path:
    """Where the text index of ``feats`` is cached first: beside it, ``feats.h5.text.sqlite``."""
    p = Path(feats)
    return p.with_name(p.name + SUFFIX)


def cache_dirs() -> list[Path]:
    """The folders tried when the file's own folder is not writable, in order:
    ``$VIDFEAT_HOME/cache`` (default ``~/.cache/vidfeat/cache``) and ``<tmp>/vidfeat-cache``."""
    home = Path(os.environ.get("VIDFEAT_HOME") or Path.home() / ".cache" / "vidfeat")
    return [home / "cache", Path(tempfile.gettempdir()) / "vidfeat-cache"]


def _candidates(feats: str | os.PathLike[str]) -> list[Path]:
    """Every place the index of ``feats`` may be cached, in the order they are tried. Outside
    the file's folder the name carries a hash of its absolute path, so files of the same name
    in different folders do not share a cache."""
    source = Path(feats).resolve()
    tag = hashlib.sha256(str(source).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return [index_path(feats)] + [d / f"{source.name}-{tag}{SUFFIX}" for d in cache_dirs()]


def _open_fresh(path: Path, identity: dict[str, Any]) -> sqlite3.Connection | None:
    """A read-only connection to the index at ``path`` when it exists and was built from
    ``identity``; None otherwise (missing, another file's, stale, or not an index at all)."""
    if not path.is_file():
        return None
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = con.execute("SELECT value FROM meta WHERE name = 'identity'").fetchone()
        if row is not None and json.loads(row[0]) == identity:
            return con
    except (sqlite3.Error, ValueError):
        pass
    con.close()
    return None


def _text_blocks(f) -> Iterator[tuple[int, list[str]]]:
    text = f.h5[TEXT]
    for a in range(0, text.shape[0], _BLOCK_ROWS):
        b = min(text.shape[0], a + _BLOCK_ROWS)
        yield a, text.asstr()[a:b].tolist()


def build_text_index(f, out: str | os.PathLike[str], identity: dict[str, Any] | None = None) -> Path:
    """Build the FTS5 index of /clips/text at ``out``: written to a temporary file in the same
    folder, then renamed over ``out``. ``identity`` (default: the file's now) is recorded for
    the freshness check. Raises OSError when the folder cannot be written."""
    _require_text(f)
    identity = identity or _identity(f)
    out = Path(out)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode = OFF")  # a failed build is deleted, never recovered
            con.execute("PRAGMA synchronous = OFF")
            con.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.execute(f"CREATE VIRTUAL TABLE clips USING fts5(text, content='', tokenize='{TOKENIZE}')")
            with con:
                for start, texts in _text_blocks(f):
                    con.executemany("INSERT INTO clips(rowid, text) VALUES (?, ?)",
                                    ((start + i, t) for i, t in enumerate(texts) if t))  # fmt: skip
            with con:
                con.execute("INSERT INTO clips(clips) VALUES ('optimize')")  # one segment: faster queries
                con.execute("INSERT INTO meta VALUES ('identity', ?)", (json.dumps(identity, sort_keys=True),))
        finally:
            con.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _probe(folder: Path) -> None:
    """Raises OSError when a file cannot be created in ``folder``."""
    tempfile.TemporaryFile(dir=folder).close()


def _connect(f, notify: Notify | None) -> tuple[sqlite3.Connection, Path]:
    """A read-only connection to a fresh index of ``f`` and its path: the first fresh cache
    found, else one built in the first writable place (saying so when that is not beside the file)."""
    _require_text(f)
    _require_fts5()
    identity = _identity(f)
    places = _candidates(f.path)
    for path in places:
        con = _open_fresh(path, identity)
        if con is not None:
            return con, path
    failures: list[str] = []
    for path in places:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _probe(path.parent)
        except OSError as exc:
            failures.append(f"{path.parent}: {exc.strerror or exc}")
            continue
        if notify is not None:
            notify(f"building the text index of {f.path} in {path}"
                   + (f" (not writable: {'; '.join(failures)})" if failures else ""))  # fmt: skip
        try:
            build_text_index(f, path, identity)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise VidfeatError(f"cannot build the text index of {f.path} in {path}: {reason}") from exc
        con = _open_fresh(path, identity)
        if con is None:  # replaced meanwhile by a build from another state of the file
            raise VidfeatError(f"the text index {path} changed while it was built: {f.path} is being "
                               "rewritten; search again when it is finished")  # fmt: skip
        return con, path
    raise VidfeatError(f"cannot write the text index of {f.path} anywhere ({'; '.join(failures)}): "
                       "make one of these folders writable or set VIDFEAT_HOME to a writable folder")  # fmt: skip


def text_index(f, *, notify: Notify | None = None) -> Path:
    """The path of a fresh text index of the open feature file ``f``, built if needed.
    ``notify`` receives a line when an index is built (and where)."""
    con, path = _connect(f, notify)
    con.close()
    return path


# --- search -----------------------------------------------------------------------------------------


def _spans(texts: dict[int, str], expr: str) -> dict[int, tuple[tuple[int, int], ...]]:
    """The character spans of the matched words in each text, from FTS5's highlight() over a
    small in-memory index of these texts built with the same tokenizer and query."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.execute(f"CREATE VIRTUAL TABLE hits USING fts5(text, tokenize='{TOKENIZE}')")
        mem.executemany("INSERT INTO hits(rowid, text) VALUES (?, ?)", texts.items())
        marked = mem.execute("SELECT rowid, highlight(hits, 0, ?, ?) FROM hits WHERE hits MATCH ?",
                             (_MARK_OPEN, _MARK_CLOSE, expr)).fetchall()  # fmt: skip
    finally:
        mem.close()
    out: dict[int, tuple[tuple[int, int], ...]] = {}
    for row, text in marked:
        if _MARK_OPEN in texts[row] or _MARK_CLOSE in texts[row]:
            continue  # the text holds the markers itself: no spans rather than wrong ones
        spans, pos, start = [], 0, 0
        for ch in text:
            if ch == _MARK_OPEN:
                start = pos
            elif ch == _MARK_CLOSE:
                spans.append((start, pos))
            else:
                pos += 1
        out[row] = tuple(spans)
    return out


def search_text(f, query: str, k: int = 10, *, notify: Notify | None = None) -> list[TextHit]:
    """The ``k`` clips of the open feature file ``f`` whose caption text best matches ``query``
    (plain words; the rule is in the module docstring), best first. Builds and caches the index
    on first use (``notify`` receives a line saying so). Raises VidfeatError when the file has
    no captions or the query no words."""
    if k < 1:
        raise VidfeatError(f"k must be at least 1, got {k}")
    expr = match_expression(query)
    con, path = _connect(f, notify)
    try:
        if len(_pieces(query)) == 1:
            found = con.execute("SELECT rowid, bm25(clips) FROM clips WHERE clips MATCH ? "
                                "ORDER BY bm25(clips), rowid LIMIT ?", (expr, k)).fetchall()  # fmt: skip
        else:  # phrase matches first
            found = con.execute(
                "WITH phrase(rowid) AS (SELECT rowid FROM clips WHERE clips MATCH :phrase) "
                "SELECT rowid, bm25(clips) FROM clips WHERE clips MATCH :expr "
                "ORDER BY rowid IN phrase DESC, bm25(clips), rowid LIMIT :k",
                {"phrase": phrase_expression(query), "expr": expr, "k": k},
            ).fetchall()
    except sqlite3.Error as exc:
        raise VidfeatError(f"text search in {path} failed: {exc}; delete that file to rebuild it") from exc
    finally:
        con.close()
    h5 = f.h5
    text = h5[TEXT].asstr()
    texts = {int(row): str(text[row]) for row, _ in found}
    spans = _spans(texts, expr) if texts else {}
    return [TextHit(row=int(row), video=f.video_of(int(row)), start_sec=float(h5["clips/start_sec"][row]),
                    end_sec=float(h5["clips/end_sec"][row]), score=-float(bm25), text=texts[int(row)],
                    matches=spans.get(int(row), ()))
            for row, bm25 in found]  # fmt: skip
