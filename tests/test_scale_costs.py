"""Costs that must not grow above linear with the size of a collection (issue #24): counted
operations and traced memory at two sizes, never wall-clock time."""

from __future__ import annotations

import types

import numpy as np
import pytest

from vidfeat.store import assemble
from vidfeat.store.format import _STRING_COLUMNS, VIDEO_COLUMNS


def _table(paths: list[str], counts: np.ndarray) -> dict[str, np.ndarray]:
    n = len(paths)
    table = {name: (np.full(n, "", dtype=object) if name in _STRING_COLUMNS else np.zeros(n, dtype=dtype))
             for name, dtype in VIDEO_COLUMNS.items()}  # fmt: skip
    table["path"] = np.array(paths, dtype=object)
    table["status"] = np.full(n, "ok", dtype=object)
    table["clip_count"] = counts.astype(np.int64)
    table["clip_offset"] = np.cumsum(counts) - counts
    table["size_bytes"] = np.arange(n, dtype=np.int64)
    return table


def _chunk_tables(n_videos: int, n_chunks: int) -> list[dict[str, np.ndarray]]:
    """A previous final file of half the videos, then ``n_chunks`` chunks of the others (one
    chunk also redoes videos of the final file, which must win)."""
    rng = np.random.default_rng(0)
    names = [f"v/{i:07d}.mp4" for i in range(n_videos)]
    old = sorted(names[0::2])
    tables = [_table(old, rng.integers(0, 5, len(old)))]
    new = names[1::2]
    for part in np.array_split(np.arange(len(new)), n_chunks):
        tables.append(_table(sorted(new[i] for i in part), rng.integers(0, 5, len(part))))
    tables[-1] = _table(sorted([*tables[-1]["path"].tolist(), *old[:3]]), rng.integers(1, 5, len(tables[-1]["path"]) + 3))
    return tables


class _CountingNumpy(types.ModuleType):
    """numpy, counting the elements of the arrays passed to its functions."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.elements = 0

    def __getattr__(self, name):
        value = getattr(np, name)
        if not callable(value) or isinstance(value, type):
            return value

        def counted(*args, **kwargs):
            self.elements += sum(a.size for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray))
            return value(*args, **kwargs)

        return counted


def _merge_elements(monkeypatch, n_videos: int, n_chunks: int) -> int:
    tables = _chunk_tables(n_videos, n_chunks)
    counting = _CountingNumpy()
    monkeypatch.setattr(assemble, "np", counting)
    try:
        assemble._merge(tables)
    finally:
        monkeypatch.setattr(assemble, "np", np)
    return counting.elements


def test_finalize_merge_does_not_scan_all_rows_per_chunk(monkeypatch):
    few = _merge_elements(monkeypatch, 4000, 10)
    many = _merge_elements(monkeypatch, 4000, 160)
    assert few > 4000  # the count sees the work done on the rows
    # 16x the chunks over the same videos: the work stays that of the rows (a scan of the V
    # rows per chunk would make it ~16x)
    assert many < 1.3 * few, (few, many)


def test_finalize_merge_keeps_the_latest_row_per_path_in_path_order():
    tables = _chunk_tables(200, 7)
    merged = assemble._merge(tables)
    paths = merged.table["path"].tolist()
    assert paths == sorted({p for t in tables for p in t["path"].tolist()})
    latest = {}
    for source, table in enumerate(tables):
        for row, path in enumerate(table["path"].tolist()):
            latest[path] = (source, row)
    for v, path in enumerate(paths):
        source, row = latest[path]
        for name in VIDEO_COLUMNS:
            if name not in ("clip_offset",):
                assert merged.table[name][v] == tables[source][name][row], (path, name)
    counts = merged.table["clip_count"]
    assert merged.table["clip_offset"].tolist() == (np.cumsum(counts) - counts).tolist()
    # every clip of the new file is copied once, from the source of its video, in row order
    dest = np.zeros(int(counts.sum()), dtype=np.int64)
    for source, runs in enumerate(merged.runs):
        assert [s for s, _, _ in runs] == sorted(s for s, _, _ in runs)
        for s, d, c in runs:
            dest[d : d + c] += 1
            owners = {latest[paths[v]][0] for v in np.searchsorted(merged.table["clip_offset"], np.arange(d, d + c), "right") - 1}
            assert owners == {source}
    assert dest.tolist() == [1] * len(dest)


# merge: memory flat in the number of videos and clips

D_SMALL, CLASSES_SMALL = 4, ["a", "b"]
SETTINGS_SMALL = {"model": "test-model", "weights_sha256": "ab12" * 16, "num_frames": 8, "fps": 4.0,
                  "stride_sec": 2.0, "input_size": 32, "mean": [0.45] * 3, "std": [0.225] * 3, "crops": 1,
                  "decoder": "pyav"}  # fmt: skip


def _result(path: str, n: int):
    from vidfeat.store import VideoResult

    rng = np.random.default_rng(len(path) + n)
    start = np.arange(n) * 2.0
    return VideoResult(
        path=path, status="ok" if n else "failed", error="" if n else f"cannot decode {path}: no video stream",
        size_bytes=1000, mtime=1.7e9, duration_sec=2.0 * n + 6.0, fps=25.0, width=64, height=48,
        embedding=rng.standard_normal((n, D_SMALL)).astype(np.float32),
        logits=rng.standard_normal((n, len(CLASSES_SMALL))).astype(np.float32),
        start_sec=start, end_sec=start + 8.0, valid_frames=np.full(n, 8, np.int32),
    )  # fmt: skip


def write_small(out, paths: list[str], clips=lambda i: 1 + i % 3):
    """A finished file of ``paths`` (``clips(i)`` clips for the i-th; 0 is a failed video)."""
    from vidfeat.store import FeatureWriter

    with FeatureWriter(out, settings=SETTINGS_SMALL, classes=CLASSES_SMALL, embedding_dim=D_SMALL,
                       embedding_dtype="float32", flush_videos=10**6) as writer:  # fmt: skip
        for i, path in enumerate(paths):
            writer.add(_result(path, clips(i)))
        writer.finalize()
    return out


def _traced_peak(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _shards(folder, n_videos: int, n_shards: int = 3) -> list:
    from vidfeat.store.format import shard_file_name

    folder.mkdir()
    names = [f"{i * 7919 % n_videos:06d}-{'x' * (i % 9)}.mp4" for i in range(n_videos)]
    return [write_small(folder / shard_file_name(s, n_shards), sorted(names[s::n_shards])) for s in range(n_shards)]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few hundred rows, so that a test's files span many blocks."""
    from vidfeat.store import merge

    monkeypatch.setattr(merge, "block_rows", lambda row_bytes: max(1, (32 << 10) // row_bytes))
    monkeypatch.setattr(merge, "_READ_AHEAD_BYTES", 32 << 10)
    monkeypatch.setattr(merge, "_MIN_AHEAD_ROWS", 16)


def test_merge_memory_does_not_grow_with_the_videos(tmp_path, small_blocks):
    from vidfeat.store import open_features
    from vidfeat.store.merge import merge_shards

    peaks = {}
    for n in (1500, 6000):
        shards = _shards(tmp_path / f"s{n}", n)
        out = tmp_path / f"m{n}.h5"
        peaks[n] = _traced_peak(lambda: merge_shards(out, shards))
        with open_features(out) as f:
            assert f.videos.path.tolist() == sorted(f.videos.path.tolist()) and len(f.videos.path) == n
    # 4x the videos and clips: the peak stays that of the blocks (the whole /videos table of
    # 6000 videos alone is over 500 kB)
    assert peaks[6000] < 1.25 * peaks[1500] + (64 << 10), peaks


# info: failures by reason, the first few listed, memory flat


def _with_failures(out, n_videos: int):
    """Every 10th video failed (two reasons naming the file), every 25th but every 50th partial."""
    from vidfeat.store import FeatureWriter

    with FeatureWriter(out, settings=SETTINGS_SMALL, classes=CLASSES_SMALL, embedding_dim=D_SMALL,
                       embedding_dtype="float32", flush_videos=10**6) as writer:  # fmt: skip
        for i in range(n_videos):
            path = f"c{i // 100:03d}/{i:06d}.mp4"
            result = _result(path, 0 if i % 10 == 0 else 2)
            if i % 10 == 0:
                result.error = f"cannot decode {path}: no video stream" if i % 20 else f"{path}: timed out after {i} s"
            elif i % 25 == 0:
                result.status, result.error = "partial", f"decoding stopped at frame {i}"
            writer.add(result)
        writer.finalize()
    return out


def test_info_counts_failures_by_reason_and_lists_the_first_few(tmp_path):
    import json

    from click.testing import CliRunner

    from vidfeat.cli import main
    from vidfeat.store import summarize

    out = _with_failures(tmp_path / "f.h5", 400)
    info = summarize(out)
    assert info["status"] == {"ok": 352, "partial": 8, "failed": 40}
    assert info["reasons"]["failed"] == [{"reason": "<video>: timed out after N s", "count": 20},
                                         {"reason": "cannot decode <video>: no video stream", "count": 20}]  # fmt: skip
    assert info["reasons"]["partial"] == [{"reason": "decoding stopped at frame N", "count": 8}]
    assert [row["path"] for row in info["failed"]] == [f"c000/{i:06d}.mp4" for i in (0, 10, 20, 30, 40)]
    assert info["failed"][1] == {"path": "c000/000010.mp4", "error": "cannot decode c000/000010.mp4: no video stream",
                                 "clips": 0}  # fmt: skip
    assert len(info["partial"]) == 5 and info["listed"] == "first 5"
    everything = summarize(out, failures=True)
    assert len(everything["failed"]) == 40 and len(everything["partial"]) == 8 and everything["listed"] == "all"

    text = CliRunner().invoke(main, ["info", str(out)]).output
    assert "failed (40):\n  c000/000000.mp4: c000/000000.mp4: timed out after 0 s\n" in text
    assert "  ... and 35 more (vidfeat info --failures lists them all)\n" in text
    assert "  failed by reason:\n    20  <video>: timed out after N s\n    20  cannot decode <video>: no video stream\n" in text
    assert len(text.splitlines()) < 60
    full = CliRunner().invoke(main, ["info", str(out), "--failures"]).output
    assert "c003/000390.mp4: cannot decode c003/000390.mp4: no video stream" in full and "more (vidfeat" not in full
    as_json = json.loads(CliRunner().invoke(main, ["info", str(out), "--json"]).output)
    assert len(as_json["failed"]) == 5 and as_json["reasons"] == info["reasons"]
    assert len(json.loads(CliRunner().invoke(main, ["info", str(out), "--json", "--failures"]).output)["failed"]) == 40


def test_info_memory_does_not_grow_with_the_videos(tmp_path, monkeypatch):
    from vidfeat.store import check, summarize

    monkeypatch.setattr(check, "block_rows", lambda row_bytes: max(1, (32 << 10) // row_bytes))
    files = {n: _with_failures(tmp_path / f"{n}.h5", n) for n in (1000, 4000)}
    peaks = {n: _traced_peak(lambda: summarize(out)) for n, out in files.items()}
    assert peaks[4000] < 1.25 * peaks[1000] + (32 << 10), peaks


def test_verify_memory_holds_numbers_a_video_not_its_strings(tmp_path, monkeypatch):
    """verify reads the /videos strings a block at a time: from 2,000 to 8,000 videos (with long
    error texts) its traced peak grows by about the four numbers it keeps a video, not by the
    strings' Python objects."""
    import tracemalloc

    from test_growth import SETTINGS
    from vidfeat.store import FeatureWriter, VideoResult, check, verify

    monkeypatch.setattr(check, "_VIDEO_BLOCK", 256)
    monkeypatch.setattr(check, "_block_rows", lambda width, classes: 256)  # clip rows a step
    peaks = {}
    for n in (2000, 8000):
        out = tmp_path / f"{n}.h5"
        with FeatureWriter(out, settings=SETTINGS, classes=["a", "b", "c", "d"], embedding_dim=8) as w:
            for i in range(n):
                w.add(VideoResult(path=f"some/long/folder/name/video-{i:07d}.mp4", status="failed",
                                  error="cannot decode: " + "x" * 200, size_bytes=1, mtime=1.0, duration_sec=1.0,
                                  fps=30.0, width=0, height=0, embedding=np.zeros((0, 8), np.float32),
                                  logits=np.zeros((0, 4), np.float32), start_sec=np.zeros(0), end_sec=np.zeros(0),
                                  valid_frames=np.zeros(0, np.int32)))  # fmt: skip
            w.finalize()
        tracemalloc.start()
        assert verify(out) == []
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    per_video = (peaks[8000] - peaks[2000]) / 6000
    print(f"verify: {per_video:.0f} bytes a video more")
    assert per_video < 80, peaks  # 4 numbers (32 bytes) and their temporaries; a string object is 250+


def test_a_writer_over_a_finished_file_holds_its_resume_keys_not_its_table(tmp_path, monkeypatch):
    """Reopening a finished file (a rerun) reads the videos' resume keys a block at a time into
    packed arrays: from 2,000 to 8,000 videos (39-byte paths, 214-byte error texts) the memory
    the writer keeps grows by the path's bytes and about 40 more a video, and its peak by about
    twice that (the arrays are copied when a block is folded in); the dict of strings and tuples
    it kept before, beside the whole table, took over 500 bytes a video."""
    import tracemalloc

    from test_growth import SETTINGS
    from vidfeat.store import FeatureWriter, VideoResult
    from vidfeat.store import format as store_format

    def failed(i: int) -> VideoResult:
        return VideoResult(path=f"some/long/folder/name/video-{i:07d}.mp4", status="failed",
                           error="cannot decode: " + "x" * 200, size_bytes=1, mtime=1.0, duration_sec=1.0,
                           fps=30.0, width=0, height=0, embedding=np.zeros((0, 8), np.float32),
                           logits=np.zeros((0, 4), np.float32), start_sec=np.zeros(0), end_sec=np.zeros(0),
                           valid_frames=np.zeros(0, np.int32))  # fmt: skip

    opened = {}
    for n in (2000, 8000):
        out = tmp_path / f"{n}.h5"
        with FeatureWriter(out, settings=SETTINGS, classes=["a", "b", "c", "d"], embedding_dim=8) as w:
            for i in range(n):
                w.add(failed(i))
            w.finalize()
        monkeypatch.setattr(store_format, "BLOCK_BYTES", 64 << 10)  # 256 videos a block
        tracemalloc.start()
        writer = FeatureWriter(out, settings=SETTINGS, classes=["a", "b", "c", "d"], embedding_dim=8)
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert writer.is_done(failed(n - 1).path, 1, 1.0) and not writer.is_done("other.mp4", 1, 1.0)
        writer.close()
        monkeypatch.undo()
        opened[n] = (kept, peak)
    kept = (opened[8000][0] - opened[2000][0]) / 6000
    peak = (opened[8000][1] - opened[2000][1]) / 6000
    print(f"writer over a finished file: keeps {kept:.0f} bytes a video more, peak {peak:.0f}")
    assert kept < 39 + 60, opened
    assert peak < 2 * (39 + 60), opened


# export --format npy: memory flat


@pytest.mark.parametrize("table", ["csv", "parquet"])
def test_export_npy_memory_does_not_grow_with_the_clips(tmp_path, monkeypatch, table):
    if table == "parquet":
        pytest.importorskip("pyarrow")
    from vidfeat.retrieval import export as export_module
    from vidfeat.store import open_features

    monkeypatch.setattr(export_module, "_BLOCK_ROWS", 256)
    peaks = {}
    for n in (1000, 4000):
        source = write_small(tmp_path / f"{n}.h5", [f"v/{i:06d}.mp4" for i in range(n)], clips=lambda i: 1 + i % 5)
        out = tmp_path / f"out{n}"

        def run():
            with open_features(source) as f:
                export_module.export(f, out, format="npy", table=table)

        peaks[n] = _traced_peak(run)
        emb = np.load(out / "embeddings.npy")
        with open_features(source) as f:
            np.testing.assert_array_equal(emb, f.embeddings[:])
            if table == "csv":
                lines = (out / "metadata.csv").read_text().splitlines()
                assert len(lines) == len(f) + 1 and lines[-1].startswith(f"{len(f) - 1},v/{n - 1:06d}.mp4,4,")
    assert peaks[4000] < 1.25 * peaks[1000] + (32 << 10), peaks


# vidfeat index: a factory and a training sample within --max-memory; search reads no N-long arrays


def test_plan_index_fits_the_memory_budget():
    from vidfeat.errors import VidfeatError
    from vidfeat.retrieval.index import DEFAULT_MAX_MEMORY, plan_index

    assert plan_index(40_000, 768).factory == "Flat"
    assert plan_index(40_000, 768, max_memory=100 << 20).factory.endswith(",PQ64")  # 123 MB of floats do not fit
    assert plan_index(500_000, 32).factory == "IVF4096,Flat"
    # HowTo100M at default sampling: 72M clips of 768-d Base embeddings, in 4 GiB and in 16 GiB
    small, large = plan_index(72_000_000, 768), plan_index(72_000_000, 768, max_memory=16 << 30)
    assert small.factory == "IVF16384_HNSW32,PQ48" and small.index_bytes <= DEFAULT_MAX_MEMORY
    assert large.factory == "IVF32768_HNSW32,PQ64" and large.index_bytes <= 16 << 30
    # 30 to 256 training rows a list, at most 1M rows and half the budget
    assert 30 * 16384 <= small.train_rows <= 256 * 16384 and small.train_rows * 768 * 4 <= DEFAULT_MAX_MEMORY // 2
    assert large.train_rows == 1_000_000
    with pytest.raises(VidfeatError, match=r"needs at least .* more than --max-memory .*: raise --max-memory"):
        plan_index(100_000_000, 768, max_memory=512 << 20)


class _CountingRows:
    """A [N, D] matrix that counts the rows read from it."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix, self.rows_read, self.shape, self.dtype = matrix, 0, matrix.shape, matrix.dtype

    def __getitem__(self, key):
        out = self.matrix[key]
        self.rows_read += len(out)
        return out


def test_the_training_sample_reads_the_sample_not_the_file():
    from vidfeat.retrieval.index import _sample

    matrix = np.random.default_rng(0).standard_normal((200_000, 8)).astype(np.float32)
    matrix[1000:3000] = 0  # rows without an embedding are left out
    counting = _CountingRows(matrix)
    sample = _sample(counting, 5_000, chunk_rows=4096, runs=500)
    assert counting.rows_read == 5_000 and 4_900 <= len(sample) <= 5_000
    assert not np.isnan(sample).any() and np.allclose(np.linalg.norm(sample, axis=1), 1, atol=1e-5)
    # spread over the file: rows from the first and last tenth
    # every sampled row is a row of the file, and they come from all over it
    kept = np.r_[0:1000, 3000:len(matrix)]
    unit = matrix[kept] / np.linalg.norm(matrix[kept], axis=1, keepdims=True)
    row_of = {tuple(r): int(i) for i, r in zip(kept, unit.round(5).tolist())}
    where = sorted(row_of[tuple(r)] for r in sample.round(5).tolist())
    assert where[0] < 1000 and where[-1] > 199_000 and len(set(where)) == len(where)
    dense = _CountingRows(matrix[:6000])
    assert len(_sample(dense, 5_000, chunk_rows=1024)) == 5_000 - 1_666  # every 1.2th row; 1666 zero rows fall out
    assert dense.rows_read == 6000


def test_index_search_never_asks_for_n_rows(tmp_path, monkeypatch):
    faiss = pytest.importorskip("faiss")
    import vidfeat
    from test_search import make_file
    from vidfeat.retrieval import index as index_module
    from vidfeat.store import open_features

    feats = make_file(tmp_path / "f.h5", videos=40, clips=50, dim=16)  # 1,950 clips
    asked = []
    with open_features(feats) as f:
        out = index_module.build_index(f, factory="IVF16,Flat", max_memory=1 << 30)
        index = index_module.FaissIndex(out)
        real = index.index.search

        class Recording:
            def search(self, q, k):
                asked.append(k)
                return real(q, k)

        index.index = Recording()
        for row in (0, 777, 1900):
            hits = vidfeat.search(f, clip=row, k=5, exclude_same_video=True, index=index)
            exact = vidfeat.search(f, clip=row, k=5, exclude_same_video=True)
            assert len(hits) == 5 and all(h.video != f.video_of(row) for h in hits)
            assert len({h.row for h in hits} & {h.row for h in exact}) >= 4
    assert asked and max(asked) <= 5 + 51  # k + the query video's clips + the query itself, not N
    assert isinstance(faiss.read_index(str(out), faiss.IO_FLAG_MMAP), faiss.IndexIVFFlat)


def test_index_cli_max_memory(tmp_path):
    pytest.importorskip("faiss")
    import json

    from click.testing import CliRunner
    from test_search import make_file
    from vidfeat.cli import main

    feats = make_file(tmp_path / "f.h5", videos=30, clips=40, dim=64)  # 1,160 clips of 64-d: 300 kB as floats
    result = CliRunner().invoke(main, ["index", str(feats), "--max-memory", "1M"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "f.faiss.json").read_text())["factory"] == "Flat"
    assert result.output == f"wrote {tmp_path / 'f.faiss'} (Flat)\n"
    small = CliRunner().invoke(main, ["index", str(feats), "--max-memory", "10K"])
    assert small.exit_code == 1
    assert small.output.strip().endswith("more than --max-memory 10.0 KiB: raise --max-memory")
    bad = CliRunner().invoke(main, ["index", str(feats), "--max-memory", "lots"])
    assert bad.exit_code == 2 and "'lots' is not a memory size: give e.g. 4G, 512M or 1.5GiB" in bad.output


def test_index_training_k_means_goes_to_the_gpus_faiss_sees(tmp_path, monkeypatch):
    """No GPU here: FAISS is made to report one, and its cpu-to-GPU copy returns the CPU index it
    is given (a flat index serves the k-means the same way), so that what is sent where is
    checked; --gpu without a GPU is one line, --no-gpu leaves the training on the CPU."""
    faiss = pytest.importorskip("faiss")
    from click.testing import CliRunner
    from test_search import make_file
    from vidfeat.cli import main
    from vidfeat.retrieval import index as index_module
    from vidfeat.store import open_features

    feats = make_file(tmp_path / "f.h5", videos=40, clips=50, dim=16)  # 1,950 clips
    refused = CliRunner().invoke(main, ["index", str(feats), "--factory", "IVF16,Flat", "--gpu"])
    assert refused.exit_code == 1 and "FAISS sees no GPU" in refused.output and "drop --gpu" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    sent = []

    def to_gpus(index):
        sent.append((type(index).__name__, index.d))
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    with open_features(feats) as f:
        for factory in ("IVF16,Flat", "IVF16_HNSW8,PQ4"):
            out = index_module.build_index(f, tmp_path / "i.faiss", factory=factory, max_memory=1 << 30)
            _, rows = index_module.FaissIndex(out, nprobe=16).search(f.embeddings[100:101].astype(np.float32), k=3,
                                                                     n=len(f.embeddings))  # fmt: skip
            assert rows.shape == (1, 3) and (factory.endswith("PQ4") or rows[0, 0] == 100)
        assert sent == [("IndexFlatIP", 16), ("IndexFlatIP", 16)]
        index_module.build_index(f, tmp_path / "i.faiss", factory="Flat", max_memory=1 << 30)  # no k-means
        index_module.build_index(f, tmp_path / "i.faiss", factory="IVF16,Flat", max_memory=1 << 30, gpu=False)
    assert len(sent) == 2
    result = CliRunner().invoke(main, ["index", str(feats), "--factory", "IVF16,Flat"])
    assert result.exit_code == 0 and len(sent) == 3


# bench/store_scale.py runs end to end at a small size


@pytest.mark.slow
def test_store_scale_bench_runs(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(root / "bench" / "store_scale.py"), "--videos", "150", "300",
                           "--shards", "2", "--queries", "2", "--json", str(tmp_path / "out.json")],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads((tmp_path / "out.json").read_text())
    steps = ["write", "merge", "grow", "info", "verify", "search", "export", "index", "view", "captions", "capgrow",
             "capverify"]
    for n in ("150", "300"):
        assert [row["step"] for row in figures[n]] == steps
        assert all(row["seconds"] > 0 and row["peak_rss"] > 0 for row in figures[n])
        merge, grow = figures[n][1], figures[n][2]
        assert merge["note"].startswith(f"{n} videos, ") and merge["size"] > 0 and merge["written"] >= merge["size"] // 2
        assert grow["note"].startswith(f"{int(n) // 100} videos, ")
        captions, capgrow = figures[n][9], figures[n][10]
        assert captions["note"].startswith(f"{_caption_count(figures[n])} captions for {int(n) + int(n) // 100} videos")
        assert capgrow["note"].startswith(f"{int(n) // 100} videos: finalize ") and capgrow["note"].endswith(" s")
    assert "ratio 300 / 150 videos (2.0x)" in proc.stdout
    assert figures["300"][7]["note"].startswith("Flat, recall@10 1.00")


def _caption_count(rows: list[dict]) -> int:
    """The captions the bench's caption.json has for the videos in the file when `captions`
    runs (the collection and the grown 1%): two a clip, at least two a video."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("store_scale", Path(__file__).resolve().parents[1] / "bench" / "store_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    n = int(rows[1]["note"].split(" ")[0])  # merge: "N videos, ..."
    counts = [bench.collection(n, 0)[1], bench.collection(max(1, n // 100), 7)[1]]
    return int(sum((2 * np.maximum(c, 1)).sum() for c in counts))


def test_merge_refuses_a_shard_out_of_order_before_writing(tmp_path):
    import h5py

    from vidfeat.errors import StoreError
    from vidfeat.store.merge import merge_shards

    shards = _shards(tmp_path / "s", 60)
    with h5py.File(shards[1], "r+") as h5:
        names = h5["videos/path"].asstr()[()]
        names[[0, 1]] = names[[1, 0]]
        h5["videos/path"][...] = names
    with pytest.raises(StoreError, match=r"00001-of-00003.h5: its videos are not sorted by path: run `vidfeat verify`"):
        merge_shards(tmp_path / "m.h5", shards)
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "m.h5.merging.tmp").exists()
