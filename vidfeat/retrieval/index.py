"""A FAISS index of a file's clip embeddings (optional: ``vidfeat[faiss]``, faiss-cpu).

``feats.faiss`` beside ``feats.h5`` holds the index (inner product over L2-normalised rows, so
scores are cosine similarities; FAISS ids are /clips rows) and ``feats.faiss.json`` what it was
built from: the model, its weights' sha256, the row count and the factory string. ``search``
uses the index only when all of these match the file (:func:`open_index_for`).

The factory is chosen to fit a memory budget (``max_memory``, as autofaiss sizes its indexes;
:func:`plan_index`), after FAISS's guidelines ("Guidelines to choose an index"): exact ``Flat``
up to 50,000 vectors; ``IVF{K},Flat`` (vectors kept whole) up to 1M; beyond, or when whole
vectors do not fit, ``IVF{K},PQ{m}`` with ``m`` bytes a vector, the largest of 64, 48, 32, 16, 8
that divides the dimension into sub-vectors of 4 or more and fits (an HNSW coarse quantizer from 16,384 lists). ``K`` is a
power of two near ``8 sqrt(N)`` for ``Flat`` lists and ``4 sqrt(N)`` for PQ lists, at most
65,536 (262,144 lists would take a CPU hours to train) and at most N / 30.

Training reads a capped sample (:func:`training_rows`: 30 to 256 rows a list, at most 1M rows
unless 30 a list needs more, and at most half the budget), spread over the file in evenly spaced
runs of rows: it reads the sample, not the file. Vectors are then added in blocks of rows. A
search memory-maps the index (``faiss.IO_FLAG_MMAP``) where its type allows, and checks only the
rows the index returns against what it must exclude (no per-row arrays of the whole file).
With a faiss-gpu build and a GPU, the k-means of the training runs on the GPUs (FAISS's
``clustering_index``); the index written is a CPU index either way.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VidfeatError
from .search import chunk_rows_for, normalise

__all__ = ["default_factory", "plan_index", "training_rows", "build_index", "FaissIndex", "index_path",
           "open_index_for", "training_gpus", "DEFAULT_MAX_MEMORY"]  # fmt: skip

FLAT_MAX = 50_000
IVF_FLAT_MAX = 1_000_000
MAX_LISTS = 65_536
HNSW_FROM_LISTS = 16_384
MAX_TRAIN_ROWS = 1_000_000
DEFAULT_MAX_MEMORY = 4 << 30
"""``vidfeat index --max-memory``: the memory an index build and a search may take (4 GiB)."""
_PQ_BYTES = (64, 48, 32, 16, 8)
_HNSW_BYTES = 2 * 32 * 4 + 16  # an HNSW32 node's level-0 links and its share of the upper levels
_ID_BYTES = 8


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


def _pow2(x: float) -> int:
    return 2 ** max(0, round(math.log2(max(1.0, x))))


def _lists(n: int, per_sqrt: float) -> int:
    lists = min(MAX_LISTS, _pow2(per_sqrt * math.sqrt(n)))
    while lists > 1 and n < 30 * lists:
        lists //= 2
    return lists


def training_rows(n: int, lists: int, dim: int, max_memory: int = DEFAULT_MAX_MEMORY) -> int:
    """Rows to train ``lists`` inverted lists on: 256 a list, at most :data:`MAX_TRAIN_ROWS`
    (more only to reach 30 a list), at most half of ``max_memory`` as float32 rows, at most ``n``."""
    wanted = min(256 * lists, max(30 * lists, MAX_TRAIN_ROWS))
    return max(1, min(n, wanted, (max_memory // 2) // (4 * dim)))


@dataclass(frozen=True)
class IndexPlan:
    """What :func:`plan_index` chose: the factory, its training rows (0: none needed) and the
    estimated bytes of the built index."""

    factory: str
    train_rows: int
    index_bytes: int


def plan_index(n: int, dim: int, max_memory: int = DEFAULT_MAX_MEMORY) -> IndexPlan:
    """The index of ``n`` vectors of width ``dim`` that fits ``max_memory`` bytes (see the module
    docstring); VidfeatError naming the smallest size when none does."""
    flat = n * (4 * dim + _ID_BYTES)
    if n <= FLAT_MAX and flat <= max_memory:
        return IndexPlan("Flat", 0, flat)
    lists = _lists(n, 8)
    ivf_flat = flat + lists * 4 * dim
    if n <= IVF_FLAT_MAX and ivf_flat <= max_memory and 30 * lists * 4 * dim <= max_memory // 2:
        return IndexPlan(f"IVF{lists},Flat", training_rows(n, lists, dim, max_memory), ivf_flat)
    lists = _lists(n, 4)
    while lists > 1 and 30 * lists * 4 * dim > max_memory // 2:  # the training sample must fit
        lists //= 2
    hnsw = lists >= HNSW_FROM_LISTS
    coarse = f"IVF{lists}_HNSW32" if hnsw else f"IVF{lists}"
    quantizer = lists * (4 * dim + (_HNSW_BYTES if hnsw else 0))
    smallest = None
    for m in _PQ_BYTES:
        if dim % m or 4 * m > dim:  # sub-vectors of 4 dimensions or more
            continue
        size = n * (m + _ID_BYTES) + quantizer + 256 * dim * 4
        smallest = size
        if size <= max_memory:
            return IndexPlan(f"{coarse},PQ{m}", training_rows(n, lists, dim, max_memory), size)
    if smallest is None:  # no PQ size divides the dimension: 8-bit scalar quantization
        size = n * (dim + _ID_BYTES) + quantizer
        if size <= max_memory:
            return IndexPlan(f"{coarse},SQ8", training_rows(n, lists, dim, max_memory), size)
        smallest = size
    raise VidfeatError(f"an index of {n} vectors of width {dim} needs at least {_gib(smallest)} of memory, more than "
                       f"--max-memory {_gib(max_memory)}: raise --max-memory")  # fmt: skip


def _gib(n: int) -> str:
    if n >= 1 << 28:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / (1 << 10):.1f} KiB"


def default_factory(n: int, dim: int, max_memory: int = DEFAULT_MAX_MEMORY) -> str:
    """The factory string for ``n`` vectors of width ``dim`` within ``max_memory`` bytes."""
    return plan_index(n, dim, max_memory).factory


def _sample(dataset, rows: int, chunk_rows: int, runs: int = 65_536) -> np.ndarray:
    """About ``rows`` normalised rows of ``dataset`` spread over it: every row when that is
    most of it, else ``runs`` evenly spaced runs of consecutive rows (reads the sample only,
    one slice a run). NaN rows (no embedding) are left out."""
    n, dim = int(dataset.shape[0]), int(dataset.shape[1])
    if 2 * rows >= n:
        rows = min(rows, n)
        step = n / rows
        sample = np.empty((rows, dim), np.float32)
        filled = 0
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            # the rows floor(i * step) that fall in [start, stop)
            take = (np.arange(math.ceil(start / step), math.ceil(stop / step)) * step).astype(np.int64)
            take = take[(take >= start) & (take < stop)]
            if len(take):
                sample[filled : filled + len(take)] = normalise(dataset[start:stop][take - start])
                filled += len(take)
        sample = sample[:filled]
    else:
        runs = max(1, min(runs, rows))
        length = -(-rows // runs)
        sample = np.empty((runs * length, dim), np.float32)
        for i, start in enumerate(np.linspace(0, n - length, runs).astype(np.int64).tolist()):
            sample[i * length : (i + 1) * length] = normalise(dataset[start : start + length])
    bad = np.isnan(sample).any(axis=1)
    return sample[~bad] if bad.any() else sample


def training_gpus(faiss, gpu: bool | None) -> int:
    """How many GPUs the k-means of an index's training runs on: those FAISS sees (a faiss-gpu
    build and CUDA devices) unless ``gpu`` is False; ``gpu=True`` with none is an error."""
    found = int(faiss.get_num_gpus()) if gpu is not False and hasattr(faiss, "get_num_gpus") else 0
    if gpu and not found:
        raise VidfeatError("--gpu: FAISS sees no GPU (faiss-cpu has no GPU code; faiss-gpu comes from conda, "
                           "e.g. conda install -c pytorch faiss-gpu): drop --gpu to train on the CPU")  # fmt: skip
    return found


def build_index(f, output: str | os.PathLike[str] | None = None, *, factory: str | None = None,
                chunk_rows: int | None = None, max_memory: int = DEFAULT_MAX_MEMORY,
                timings: dict[str, float] | None = None, gpu: bool | None = None) -> Path:  # fmt: skip
    """Build the index of an open file's clips, write it (default: beside the file) and its JSON.
    ``factory``: a FAISS index_factory string (default: :func:`plan_index` within ``max_memory``
    bytes). ``chunk_rows``: rows read per step (default:
    :func:`vidfeat.retrieval.search.chunk_rows_for`). ``timings``, when given, receives the
    seconds of each phase: ``sample``, ``train``, ``add``, ``write``. ``gpu``: run the k-means
    of an IVF index's training (most of a large build's time) on the GPUs FAISS sees (None:
    when it sees any; see :func:`training_gpus`); the index itself stays a CPU index."""
    import time

    faiss = _faiss()
    timings = {} if timings is None else timings
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    emb = f.embeddings
    n, dim = int(emb.shape[0]), int(emb.shape[1])
    chunk_rows = chunk_rows or chunk_rows_for(dim)
    if n == 0:
        raise VidfeatError(f"{f.path} has no clips to index")
    if max_memory <= 0:
        raise VidfeatError(f"--max-memory must be positive, got {max_memory}")
    factory = factory or plan_index(n, dim, max_memory).factory
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise VidfeatError(f"FAISS cannot build {factory!r}: {str(exc).strip().splitlines()[-1]}") from exc
    if not index.is_trained:
        try:
            lists = faiss.extract_index_ivf(index).nlist
        except RuntimeError:  # not IVF (e.g. PQ alone): 1024 "lists" of 256 rows, as the PQ codebooks want
            lists = 1024
        sample = _sample(emb, training_rows(n, lists, dim, max_memory), chunk_rows)
        lap("sample")
        if len(sample) < lists:
            raise VidfeatError(f"{factory!r} needs at least {lists} rows with an embedding to train on, "
                               f"{f.path} has {len(sample)} in the sample: choose a smaller factory")  # fmt: skip
        gpus = training_gpus(faiss, gpu)
        if gpus:
            try:
                ivf = faiss.extract_index_ivf(index)
            except RuntimeError:
                ivf = None  # no coarse k-means to move
            if ivf is not None:  # FAISS's recipe: the k-means assigns with a flat index on the GPUs
                ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
        index.train(sample)
        del sample
        lap("train")
    try:
        faiss.extract_index_ivf(index)  # IVF indexes keep the ids in their lists
    except RuntimeError:
        index = faiss.IndexIDMap(index)  # the others get a plain id array (8 bytes a vector)
    for start in range(0, n, chunk_rows):
        block = normalise(emb[start : start + chunk_rows])
        ok = ~np.isnan(block).any(axis=1)
        index.add_with_ids(block[ok], np.arange(start, start + len(block), dtype=np.int64)[ok])
    lap("add")
    out = Path(output) if output is not None else index_path(f.path)
    try:
        faiss.write_index(index, str(out))
        meta = {"model": f.attrs.get("model"), "weights_sha256": f.attrs.get("weights_sha256"), "rows": n,
                "dim": dim, "factory": factory, "source": f.path.name}  # fmt: skip
        _meta_path(out).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except (OSError, RuntimeError) as exc:
        raise VidfeatError(f"cannot write the index {out}: {exc}") from exc
    lap("write")
    return out


def _read_index(faiss, path: Path):
    """The index at ``path``, memory-mapped where its type allows (IVF lists, flat codes)."""
    for flags in (faiss.IO_FLAG_MMAP, getattr(faiss, "IO_FLAG_MMAP_IFC", 0)):
        if flags:
            try:
                return faiss.read_index(str(path), flags)
            except RuntimeError:
                continue
    return faiss.read_index(str(path))


class FaissIndex:
    """A loaded index; :meth:`search` answers like :func:`vidfeat.retrieval.search.exact_search`."""

    def __init__(self, path: str | os.PathLike[str], *, nprobe: int = 32) -> None:
        faiss = _faiss()
        self.path = Path(path)
        try:
            self.index = _read_index(faiss, self.path)
        except RuntimeError as exc:
            raise VidfeatError(f"cannot read the FAISS index {self.path}: rebuild it with `vidfeat index`") from exc
        meta_file = _meta_path(self.path)
        self.meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        try:
            faiss.extract_index_ivf(self.index).nprobe = nprobe
        except (RuntimeError, AttributeError):
            pass  # not an IVF index

    def search(self, query: np.ndarray, *, k: int, exclude=None, n: int,
               excluded: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Top ``k`` rows for one query among ``n``; ``exclude(rows) -> bool array`` marks the
        returned rows that may not match, ``excluded`` says about how many rows it marks (the
        index is asked for ``k + excluded`` results, then for more until ``k`` remain or the
        index has no more to give). Memory: the results asked for, never ``n`` rows."""
        q = normalise(np.atleast_2d(query))
        if np.isnan(q).any():
            raise VidfeatError("the query has no embedding (a zero vector)")
        want = k + max(0, excluded)
        while True:
            asked = min(want, n)
            sims, rows = self.index.search(q, asked)
            found = rows[0] >= 0
            keep = found.copy()
            if exclude is not None:
                keep &= ~np.asarray(exclude(rows[0]), dtype=bool)
            # done with k rows, or when the index returned fewer than asked (an IVF index
            # gives only what its probed lists hold): asking for more would not add any
            if keep.sum() >= k or asked >= n or found.sum() < asked:
                return sims[:, keep][:, :k], rows[:, keep][:, :k]
            want *= 4



def open_index_for(f, path: str | os.PathLike[str] | None = None) -> tuple[FaissIndex | None, str]:
    """``(index, note)``: the index beside the file (or at ``path``) when it exists, faiss is
    installed and it was built from this file's model and rows, with note ""; else ``None`` and
    why it is not used ("" when there is no index file). The caller shows the note."""
    where = Path(path) if path is not None else index_path(f.path)
    if not where.is_file():
        return None, ""
    try:
        index = FaissIndex(where)
    except VidfeatError as exc:
        return None, f"not using {where}: {exc}"
    meta = index.meta
    same = (meta.get("model") == f.attrs.get("model") and meta.get("weights_sha256") == f.attrs.get("weights_sha256")
            and meta.get("rows") == len(f))  # fmt: skip
    if not same:
        return None, (f"not using {where}: built from another model or file ({meta.get('rows')} rows of "
                      f"{meta.get('model')!r}); rebuild it with `vidfeat index {f.path}`")  # fmt: skip
    return index, ""
