"""A FAISS index of a file's clip embeddings (optional: ``vidfeat[faiss]``, faiss-cpu).

``feats.faiss`` beside ``feats.h5`` holds the index (inner product over L2-normalised rows, so
scores are cosine similarities; FAISS ids are /clips rows) and ``feats.faiss.json`` what it was
built from: the model, its weights' sha256, the row count and the factory string. ``search``
uses the index only when all of these match the file (:func:`open_index_for`).

Default factory by collection size, after FAISS's guidelines ("Guidelines to choose an index"):
exact ``Flat`` up to 50,000 vectors; ``IVF{K},Flat`` with ``K`` about ``8 sqrt(N)`` (a power of
two, at least 30 training vectors a list) up to 1M; ``IVF65536_HNSW32,PQ{m}`` up to 10M and
``IVF262144_HNSW32,PQ{m}`` beyond, ``m`` = 64 sub-quantizers when they divide the dimension.
Training uses up to 256 vectors a list, rows spread evenly over the file, read in blocks.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from .errors import VidfeatError
from .search import DEFAULT_CHUNK_ROWS, _normalised

__all__ = ["default_factory", "build_index", "FaissIndex", "index_path", "open_index_for"]

FLAT_MAX = 50_000


def _faiss():
    try:
        import faiss
    except ImportError:
        raise VidfeatError("a FAISS index needs faiss-cpu: pip install 'vidfeat[faiss]'") from None
    return faiss


def index_path(feats: str | os.PathLike[str]) -> Path:
    """``feats.h5`` -> ``feats.faiss``: where ``search`` looks for an index."""
    return Path(feats).with_suffix(".faiss")


def _meta_path(index: Path) -> Path:
    return index.with_name(index.name + ".json")


def default_factory(n: int, dim: int) -> str:
    """The factory string for ``n`` vectors of width ``dim`` (see the module docstring)."""
    if n <= FLAT_MAX:
        return "Flat"
    if n <= 1_000_000:
        lists = 2 ** round(math.log2(8 * math.sqrt(n)))
        while lists > 1 and n < 30 * lists:
            lists //= 2
        return f"IVF{lists},Flat"
    m = 64 if dim % 64 == 0 else next((d for d in (48, 32, 16, 8) if dim % d == 0), 0)
    coarse = "IVF65536_HNSW32" if n <= 10_000_000 else "IVF262144_HNSW32"
    return f"{coarse},PQ{m}" if m else f"{coarse},SQ8"


def _read_rows(dataset, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Sorted ``rows`` of ``dataset``, normalised, read one block of the file at a time."""
    out = []
    for start in range(0, int(dataset.shape[0]), chunk_rows):
        take = rows[(rows >= start) & (rows < start + chunk_rows)]
        if len(take):
            out.append(_normalised(dataset[start : start + chunk_rows][take - start]))
    return np.concatenate(out) if out else np.zeros((0, dataset.shape[1]), np.float32)


def build_index(f, output: str | os.PathLike[str] | None = None, *, factory: str | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Path:  # fmt: skip
    """Build the index of an open file's clips, write it (default: beside the file) and its JSON."""
    faiss = _faiss()
    emb = f.embeddings
    n, dim = int(emb.shape[0]), int(emb.shape[1])
    if n == 0:
        raise VidfeatError(f"{f.path} has no clips to index")
    factory = factory or default_factory(n, dim)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise VidfeatError(f"FAISS cannot build {factory!r}: {str(exc).strip().splitlines()[-1]}") from exc
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index) if "IVF" in factory else None
        wanted = 256 * (ivf.nlist if ivf is not None else 1024)
        rows = np.unique(np.linspace(0, n - 1, min(n, wanted)).astype(np.int64))
        index.train(_read_rows(emb, rows, chunk_rows))
    index = faiss.IndexIDMap2(index) if not isinstance(index, faiss.IndexIDMap) else index
    for start in range(0, n, chunk_rows):
        block = _normalised(emb[start : start + chunk_rows])
        ok = ~np.isnan(block).any(axis=1)
        index.add_with_ids(block[ok], np.arange(start, start + len(block), dtype=np.int64)[ok])
    out = Path(output) if output is not None else index_path(f.path)
    try:
        faiss.write_index(index, str(out))
        meta = {"model": f.attrs.get("model"), "weights_sha256": f.attrs.get("weights_sha256"), "rows": n,
                "dim": dim, "factory": factory, "source": f.path.name}  # fmt: skip
        _meta_path(out).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except (OSError, RuntimeError) as exc:
        raise VidfeatError(f"cannot write the index {out}: {exc}") from exc
    return out


class FaissIndex:
    """A loaded index; :meth:`search` answers like :func:`vidfeat.search.exact_search`."""

    def __init__(self, path: str | os.PathLike[str], *, nprobe: int = 32) -> None:
        faiss = _faiss()
        self.path = Path(path)
        try:
            self.index = faiss.read_index(str(self.path))
        except RuntimeError as exc:
            raise VidfeatError(f"cannot read the FAISS index {self.path}: rebuild it with `vidfeat index`") from exc
        meta_file = _meta_path(self.path)
        self.meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        try:
            faiss.extract_index_ivf(self.index).nprobe = nprobe
        except (RuntimeError, AttributeError):
            pass  # not an IVF index

    def search(self, query: np.ndarray, *, k: int, exclude=None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows for one query; rows ``exclude(start, stop)`` marks are dropped (the
        index is asked for more results until ``k`` remain or it has none left)."""
        q = _normalised(np.atleast_2d(query))
        if np.isnan(q).any():
            raise VidfeatError("the query has no embedding (a zero vector)")
        want = k
        while True:
            sims, rows = self.index.search(q, min(want, n))
            keep = rows[0] >= 0
            if exclude is not None:
                keep &= ~exclude(0, n)[0][np.where(rows[0] >= 0, rows[0], 0)]
            if keep.sum() >= k or want >= n:
                return sims[:, keep][:, :k], rows[:, keep][:, :k]
            want *= 4


def open_index_for(f, path: str | os.PathLike[str] | None = None) -> FaissIndex | None:
    """The index beside the file (or at ``path``) when it exists, faiss is installed and it was
    built from this file's model and rows; None otherwise (a stale index is named on stderr)."""
    where = Path(path) if path is not None else index_path(f.path)
    if not where.is_file():
        return None
    try:
        index = FaissIndex(where)
    except VidfeatError as exc:
        print(f"vidfeat: not using {where}: {exc}", file=sys.stderr)
        return None
    meta = index.meta
    same = (meta.get("model") == f.attrs.get("model") and meta.get("weights_sha256") == f.attrs.get("weights_sha256")
            and meta.get("rows") == len(f))  # fmt: skip
    if not same:
        print(f"vidfeat: not using {where}: built from another model or file ({meta.get('rows')} rows of "
              f"{meta.get('model')!r}); rebuild it with `vidfeat index {f.path}`", file=sys.stderr)  # fmt: skip
        return None
    return index
