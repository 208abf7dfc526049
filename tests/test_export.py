"""Exports read back equal the file's matrix and times, each read the way its downstream code reads
it: embedding-reader (npy-parquet), a HowTo100M / UniVL feature loader (per-video), fairseq MMPT's
ShardedTensor (sharded); every export's manifest names the source by its sha256."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import shutil
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import vidfeat
from vidfeat import __version__
from vidfeat.cli import main
from vidfeat.errors import VidfeatError
from vidfeat.retrieval import export as export_module
from vidfeat.retrieval.export import export, video_id
from vidfeat.retrieval.search import softmax
from vidfeat.store import FeatureWriter, VideoResult, open_features

from test_search import CLASSES, SETTINGS, make_file


@pytest.fixture
def pq():
    return pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    return make_file(tmp_path_factory.mktemp("export") / "feats.h5", videos=9, clips=5)


def expected(f) -> dict:
    p = softmax(f.logits[()])
    video = f.h5["clips/video"][:]
    return {
        "embedding": f.load_embeddings(),
        "video": [str(f.videos.path[v]) for v in video],
        "clip_index": (np.arange(len(f)) - f.videos.clip_offset[video]).tolist(),
        "start_sec": f.h5["clips/start_sec"][:],
        "end_sec": f.h5["clips/end_sec"][:],
        "top_class": [f.classes[i] for i in p.argmax(axis=1)],
        "score": p.max(axis=1),
    }


def check_table(table: dict, want: dict) -> None:
    assert list(table["video"]) == want["video"]
    assert list(table["clip_index"]) == want["clip_index"]
    np.testing.assert_array_equal(np.asarray(table["start_sec"], np.float64), want["start_sec"])
    np.testing.assert_array_equal(np.asarray(table["end_sec"], np.float64), want["end_sec"])
    assert list(table["top_class"]) == want["top_class"]
    np.testing.assert_allclose(np.asarray(table["score"], np.float64), want["score"], rtol=1e-6)


def test_npy_parquet_shards_are_read_back_equal_by_embedding_reader(feats, tmp_path, pq):
    er = pytest.importorskip("embedding_reader")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(feats), "-o", str(out), "--shard-rows", "7"])
    assert result.exit_code == 0, result.output
    with open_features(feats) as f:
        want = expected(f)
    n = len(want["video"])  # 40 clips in shards of 7: 6 shards, zero-padded names sort in order
    names = sorted(p.name for p in (out / "clip_emb").iterdir())
    assert names == [f"clip_emb_{i}.npy" for i in range(6)]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [f"metadata_{i}.parquet" for i in range(6)]
    assert np.load(out / "clip_emb" / "clip_emb_0.npy").shape == (7, want["embedding"].shape[1])
    reader = er.EmbeddingReader(embeddings_folder=str(out / "clip_emb"), metadata_folder=str(out / "metadata"),
                                file_format="parquet_npy",
                                meta_columns=["video", "clip_index", "start_sec", "end_sec", "top_class", "score"])  # fmt: skip
    assert reader.count == n
    embs, metas = [], []
    for emb, meta in reader(batch_size=10, start=0, end=n, show_progress=False, parallel_pieces=1):
        embs.append(emb)
        metas.append(meta)
    import pandas as pd

    meta = pd.concat(metas).sort_values("i")
    emb = np.concatenate(embs)[np.argsort(pd.concat(metas)["i"].to_numpy(), kind="stable")]
    assert np.load(out / "clip_emb" / "clip_emb_5.npy").dtype == np.float16  # the file's dtype
    np.testing.assert_array_equal(emb, want["embedding"].astype(np.float32))  # the reader gives float32
    check_table({c: meta[c].tolist() for c in meta.columns}, want)


def test_npy_with_csv_and_float32(feats, tmp_path):
    with open_features(feats) as f:
        want = expected(f)
        export(f, tmp_path, format="npy", dtype="float32", table="csv")
    emb = np.load(tmp_path / "embeddings.npy")
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, want["embedding"].astype(np.float32))
    with open(tmp_path / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = {c: [r[c] for r in rows] for c in rows[0]}
    table["clip_index"] = [int(x) for x in table["clip_index"]]
    check_table(table, want)


def test_parquet_with_an_embedding_list_column(feats, tmp_path, pq):
    with open_features(feats) as f:
        want = expected(f)
        export(f, tmp_path, format="parquet")
    table = pq.read_table(tmp_path / "clips.parquet").to_pydict()
    np.testing.assert_array_equal(np.asarray(table["embedding"], np.float32), want["embedding"].astype(np.float32))
    check_table(table, want)
    assert table["row"] == list(range(len(want["video"])))


def test_cli_search_prints_json_and_refuses_two_queries(feats):
    runner = CliRunner()
    result = runner.invoke(main, ["search", str(feats), "--clip", "3", "-k", "4", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    with open_features(feats) as f:
        assert hits == [h.to_dict() for h in vidfeat.search(f, clip=3, k=4)]
    result = runner.invoke(main, ["search", str(feats), "--clip", "3", "--video", "v0001.mp4", "--at", "1"])
    assert result.exit_code == 2 and "give one query" in result.output
    result = runner.invoke(main, ["search", str(feats), "--clip", "9999"])
    assert result.exit_code == 1 and "out of range" in result.output
    result = runner.invoke(main, ["search", str(feats), "--video", "v0001.mp4", "--at", "3.0", "-k", "2"])
    assert result.exit_code == 0, result.output
    with open_features(feats) as f:
        first = vidfeat.search(f, video="v0001.mp4", at=3.0, k=1)[0]
    assert first.video in result.output and f"{first.start_sec:.2f}-{first.end_sec:.2f}" in result.output


def test_cli_search_table_keeps_long_video_names_whole(tmp_path):
    folder = "a_long_folder_name_of_a_collection/with_a_long_subfolder_too/"
    feats = make_file(tmp_path / "long.h5", videos=6, folder=folder)
    result = CliRunner().invoke(main, ["search", str(feats), "--clip", "0", "-k", "3"])  # 80 columns, as in a pipe
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    cells = "".join(line.split("│")[2].strip() for line in result.output.splitlines() if line.count("│") == 6)
    assert cells.count(folder) == 3  # each name folded onto several lines, none cut


# --- per-video and sharded layouts ------------------------------------------------------------------


def make_named(out: Path, clips: dict[str, int], stride: float = 1.5, seed: int = 0, dim: int = 16) -> Path:
    """A file whose videos have the given paths and clip counts (0: failed). Clip ``i`` starts at
    the last frame of a 29.97 fps video shown at ``i * stride`` (at or before it, as the reader
    samples) and ends at its 8th frame sampled at 4 fps, like a real extraction."""
    rng = np.random.default_rng(seed)
    settings = {**SETTINGS, "stride_sec": stride, "fps": 4.0, "num_frames": 8}
    with FeatureWriter(out, settings=settings, classes=CLASSES, embedding_dim=dim, embedding_dtype="float16",
                       flush_videos=64) as writer:  # fmt: skip
        for path, n in clips.items():
            start = np.floor(np.arange(n) * stride * 29.97 + 1e-9) / 29.97
            writer.add(VideoResult(
                path=path, status="ok" if n else "failed", error="" if n else "no video stream", size_bytes=100,
                mtime=1.7e9, duration_sec=n * stride + 1.0, fps=29.97, width=64, height=64,
                embedding=rng.standard_normal((n, dim)).astype(np.float32),
                logits=rng.standard_normal((n, len(CLASSES))).astype(np.float32),
                start_sec=start, end_sec=np.floor((start + 7 / 4.0) * 29.97 + 1e-9) / 29.97,
                valid_frames=np.full(n, 8, np.int32),
            ))  # fmt: skip
        return writer.finalize()


# HowTo100M-style ids: YouTube ids may start with '-' or '_'; one failed video; subfolders
NAMED = {"a/nVbIUDjzWY4.mp4": 9, "a/-x3LkQ_9aZ0.mp4": 4, "b/_Ab12cd34Ef.webm": 1, "b/failed00000.mp4": 0,
         "c/d/zz0123456789.mkv": 13}  # fmt: skip


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> Path:
    return make_named(tmp_path_factory.mktemp("named") / "feats.h5", NAMED)


def read_videos_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_video_ids_are_stems_or_relative_paths_without_the_extension():
    assert video_id("a/nVbIUDjzWY4.mp4") == "nVbIUDjzWY4"
    assert video_id("-x3LkQ_9aZ0.mp4") == "-x3LkQ_9aZ0"
    assert video_id("a/b/_x.y.mkv", "path") == "a/b/_x.y"
    assert video_id("plain", "path") == "plain"
    with pytest.raises(VidfeatError, match="unknown video id rule 'name'"):
        video_id("a.mp4", "name")


def test_per_video_loader_finds_the_clip_of_each_second(named, tmp_path):
    """A loader written as HowTo100M's and UniVL's: for a caption starting at t seconds, row
    int(t * rate) of <video_id>.npy."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(named), "-o", str(out), "--format", "per-video"])
    assert result.exit_code == 0, result.output
    assert "wrote 27 clips of 4 videos" in result.output and "1 video without clips left out" in result.output
    listing = read_videos_csv(out / "videos.csv")
    assert [r["video_id"] for r in listing] == ["-x3LkQ_9aZ0", "nVbIUDjzWY4", "_Ab12cd34Ef", "zz0123456789"]
    assert sorted(p.name for p in (out / "features").iterdir()) == sorted(r["video_id"] + ".npy" for r in listing)
    checked = 0
    with open_features(named) as f:
        for r in listing:
            clips = f.clips(r["path"])
            feats = np.load(os.path.join(out, "features", r["video_id"] + ".npy"))
            assert r["feature_file"] == f"features/{r['video_id']}.npy"
            assert feats.dtype == np.float16 and int(r["num_clips"]) == len(feats) == len(clips)
            assert float(r["rate"]) == 1 / 1.5
            assert float(r["duration_sec"]) == f.videos.duration_sec[f.videos.index(r["path"])]
            np.testing.assert_array_equal(feats, clips.embedding)
            rate = float(r["rate"])
            for t in np.linspace(0, len(feats) / rate, 7 * len(feats), endpoint=False):
                row = int(t * rate)
                assert clips.start_sec[row] <= t < clips.end_sec[row], (r["path"], t, row)
                np.testing.assert_array_equal(feats[row], clips.embedding[row])
                checked += 1
    assert checked == 7 * 27


def test_per_video_suffix_mp4_npy_and_float32(named, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(named), "-o", str(out), "--format", "per-video",
                                       "--suffix", ".mp4.npy", "--dtype", "float32"])  # fmt: skip
    assert result.exit_code == 0, result.output
    listing = read_videos_csv(out / "videos.csv")
    assert sorted(p.name for p in (out / "features").iterdir()) == sorted(
        ["nVbIUDjzWY4.mp4.npy", "-x3LkQ_9aZ0.mp4.npy", "_Ab12cd34Ef.mp4.npy", "zz0123456789.mp4.npy"])
    with open_features(named) as f:
        for r in listing:
            assert r["feature_file"] == f"features/{r['video_id']}.mp4.npy"
            feats = np.load(out / "features" / f"{r['video_id']}.mp4.npy")  # HowTo100M's S3D naming
            assert feats.dtype == np.float32
            np.testing.assert_array_equal(feats, f.clips(r["path"]).embedding.astype(np.float32))


def test_duplicate_ids_are_refused_in_one_line_and_id_path_names_files_by_path(tmp_path):
    feats = make_named(tmp_path / "feats.h5", {"a/x.mp4": 3, "b/c/x.mkv": 2, "y.mp4": 1})
    for fmt in ("per-video", "sharded"):
        result = CliRunner().invoke(main, ["export", str(feats), "-o", str(tmp_path / fmt), "--format", fmt])
        assert result.exit_code == 1
        line = result.output.strip()
        assert "\n" not in line and "'a/x.mp4'" in line and "'b/c/x.mkv'" in line and "--id path" in line, line
        assert not (tmp_path / fmt / "videos.csv").exists()
    out = tmp_path / "by-path"
    result = CliRunner().invoke(main, ["export", str(feats), "-o", str(out), "--format", "per-video", "--id", "path"])
    assert result.exit_code == 0, result.output
    listing = read_videos_csv(out / "videos.csv")
    assert [(r["video_id"], r["feature_file"]) for r in listing] == [
        ("a/x", "features/a/x.npy"), ("b/c/x", "features/b/c/x.npy"), ("y", "features/y.npy")]
    with open_features(feats) as f:
        for r in listing:
            np.testing.assert_array_equal(np.load(out / r["feature_file"]), f.clips(r["path"]).embedding)
    with open_features(feats) as f:
        export(f, tmp_path / "sharded-by-path", format="sharded", ids="path")
    with open(tmp_path / "sharded-by-path" / "train_meta.pkl", "rb") as fh:
        assert pickle.load(fh) == {0: ["a/x", "b/c/x", "y"]}


def test_ids_that_leave_the_export_folder_are_refused(tmp_path):
    """The writer refuses such paths; a file edited by another tool is refused here too."""
    feats = make_named(tmp_path / "feats.h5", {"aa/up.mp4": 2, "ok.mp4": 1})
    with h5py.File(feats, "r+") as h5:
        h5["videos/path"][0] = "../up.mp4"  # still sorted first
    with open_features(feats) as f:
        with pytest.raises(VidfeatError, match=r"video '\.\./up\.mp4' gives the id '\.\./up'"):
            export(f, tmp_path / "out", format="per-video", ids="path")
        export(f, tmp_path / "out", format="per-video")  # the stem "up" stays inside
    assert sorted(p.name for p in (tmp_path / "out" / "features").iterdir()) == ["ok.npy", "up.npy"]


class ShardedTensor:
    """fairseq examples/MMPT/mmpt/utils/shardedtensor.py: load and index (copied as it is there)."""

    def __init__(self, data, starts):
        self.data = data
        self.starts = starts
        assert self.starts[0] == 0
        assert self.starts[-1] == len(self.data)
        assert (self.starts[1:] >= self.starts[:-1]).all()
        assert (self.starts > -1).all()

    def __getitem__(self, i):
        return self.data[self.starts[i] : self.starts[i + 1]]

    def __len__(self):
        return len(self.starts) - 1

    @staticmethod
    def load(path, mmap_mode=None):
        starts = np.load(path + "_starts.npy", mmap_mode)
        data = np.load(path + "_data.npy", mmap_mode)
        return ShardedTensor(data, starts)


@pytest.mark.parametrize("shard_videos, prefix", [(1, "train"), (2, "val"), (3, "train"), (4, "train"), (50, "val")])
def test_sharded_export_read_back_through_starts_equals_each_video(named, tmp_path, shard_videos, prefix):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(named), "-o", str(out), "--format", "sharded",
                                       "--shard-videos", str(shard_videos), "--prefix", prefix])  # fmt: skip
    assert result.exit_code == 0, result.output
    shards = -(-4 // shard_videos)  # 4 videos with clips
    names = {p.name for p in out.iterdir()}
    assert names == ({f"{prefix}_{k}_{part}.npy" for k in range(shards) for part in ("data", "starts")}
                     | {f"{prefix}_meta.pkl", "videos.csv", "manifest.json", "README.md"})  # fmt: skip
    # MMPT's MetaProcessor: video id -> (shard, index in the shard); ShardedVideoProcessor loads the shard
    with open(out / f"{prefix}_meta.pkl", "rb") as fh:
        meta = pickle.load(fh)
    assert sorted(meta) == list(range(shards)) and all(len(ids) <= shard_videos for ids in meta.values())
    video_id_to_shard = {vid: (k, i) for k in meta for i, vid in enumerate(meta[k])}
    listing = {r["video_id"]: r for r in read_videos_csv(out / "videos.csv")}
    assert set(video_id_to_shard) == set(listing) == {"nVbIUDjzWY4", "-x3LkQ_9aZ0", "_Ab12cd34Ef", "zz0123456789"}
    with open_features(named) as f:
        for vid, (k, i) in video_id_to_shard.items():
            shard = ShardedTensor.load(os.path.join(out, f"{prefix}_{k}"), "r")
            assert shard.starts.dtype == np.int64 and len(shard) == len(meta[k])
            r = listing[vid]
            assert (int(r["shard"]), int(r["index"])) == (k, i) and float(r["rate"]) == 1 / 1.5
            want = f.clips(r["path"]).embedding
            assert int(r["num_clips"]) == len(want)
            np.testing.assert_array_equal(np.asarray(shard[i]), want)
        total = sum(len(np.load(out / f"{prefix}_{k}_data.npy", mmap_mode="r")) for k in range(shards))
        assert total == len(f)


def _peak_export_memory(path: Path, out: Path, **kwargs) -> int:
    with open_features(path) as f:
        f.videos  # the /videos table: one row a video, the same in both files
        tracemalloc.start()
        export(f, out, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("kwargs", [{"format": "per-video"}, {"format": "sharded", "shard_videos": 7}],
                         ids=["per-video", "sharded"])  # fmt: skip
def test_per_video_and_sharded_memory_is_flat_in_the_file_size(tmp_path, monkeypatch, kwargs):
    monkeypatch.setattr(export_module, "_BLOCK_ROWS", 256)  # several blocks a video in both files
    small = make_file(tmp_path / "small.h5", videos=20, clips=100, dim=64)  # 1,900 rows
    large = make_file(tmp_path / "large.h5", videos=20, clips=1000, dim=64)  # 19,000 rows (10x)
    small_peak = _peak_export_memory(small, tmp_path / "small", dtype="float32", **kwargs)
    large_peak = _peak_export_memory(large, tmp_path / "large", dtype="float32", **kwargs)
    assert np.load(tmp_path / "large" / ("features/v0000.npy" if kwargs["format"] == "per-video"
                                         else "train_0_data.npy"), mmap_mode="r").shape[1] == 64  # fmt: skip
    matrix_bytes = 19_000 * 64 * 4
    assert large_peak < matrix_bytes / 4, (small_peak, large_peak)
    assert large_peak < 1.5 * small_peak + 100_000, (small_peak, large_peak)


# --- captions and the manifest -----------------------------------------------------------------------


@pytest.fixture
def captioned(feats, tmp_path) -> tuple[Path, list[str]]:
    path = tmp_path / "captioned.h5"
    shutil.copy(feats, path)
    with h5py.File(path, "r+") as h5:
        n = h5["clips/embedding"].shape[0]
        texts = [f"clip {i}: stir the pasta, ünïcode {'x' * (i % 5)}" if i % 3 else "" for i in range(n)]
        h5.create_dataset("clips/text", data=texts, dtype=h5py.string_dtype())
    return path, texts


def test_text_column_when_the_file_has_captions(captioned, tmp_path, pq):
    path, texts = captioned
    with open_features(path) as f:
        export(f, tmp_path / "np", format="npy-parquet", shard_rows=7)
        export(f, tmp_path / "pq", format="parquet")
        export(f, tmp_path / "csv", format="npy", table="csv")
    shards = sorted((tmp_path / "np" / "metadata").iterdir())
    assert [t for s in shards for t in pq.read_table(s).column("text").to_pylist()] == texts
    assert pq.read_table(tmp_path / "pq" / "clips.parquet").column("text").to_pylist() == texts
    assert [r["text"] for r in read_videos_csv(tmp_path / "csv" / "metadata.csv")] == texts
    assert json.loads((tmp_path / "pq" / "manifest.json").read_text())["layout"]["captions"] is True


def test_no_text_column_without_captions_and_wrong_length_refused(feats, tmp_path, pq):
    with open_features(feats) as f:
        export(f, tmp_path / "pq", format="parquet")
    assert "text" not in pq.read_table(tmp_path / "pq" / "clips.parquet").column_names
    path = tmp_path / "short.h5"
    shutil.copy(feats, path)
    with h5py.File(path, "r+") as h5:
        h5.create_dataset("clips/text", data=["one", "two"], dtype=h5py.string_dtype())
    result = CliRunner().invoke(main, ["export", str(path), "-o", str(tmp_path / "bad"), "--format", "parquet"])
    assert result.exit_code == 1 and "/clips/text has 2 rows for 40 clips" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", ["npy-parquet", "npy", "parquet", "per-video", "sharded"])
def test_every_export_writes_a_manifest_naming_its_source_by_sha256(feats, tmp_path, fmt):
    if fmt != "per-video" and fmt != "sharded":
        pytest.importorskip("pyarrow")
    when = datetime(2026, 3, 1, 12, 30, tzinfo=timezone.utc)
    with open_features(feats) as f:
        written = export(f, tmp_path, format=fmt, now=when)
        attrs = f.attrs
    assert [p.name for p in written[-2:]] == ["manifest.json", "README.md"]
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    data = feats.read_bytes()
    assert manifest["source"] == {"path": str(feats.resolve()), "size_bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest(), "format_version": 3}  # fmt: skip
    assert manifest["model"] == {"card": "test-model", "weights_sha256": "0" * 64}
    assert manifest["settings"]["stride_sec"] == 2.0 and manifest["settings"]["mean"] == [0.45] * 3
    assert manifest["settings"] == {k: v for k, v in attrs.items() if k not in ("format", "format_version")}
    assert manifest["vidfeat_version"] == __version__ and manifest["created"] == "2026-03-01T12:30:00+00:00"
    layout = manifest["layout"]
    assert layout["format"] == fmt and layout["rows"] == 40 and layout["videos"] == 8
    assert layout["videos_without_clips"] == 1 and layout["embedding_dim"] == 16 and layout["read"]
    assert layout["rate"] == (0.5 if fmt in ("per-video", "sharded") else None)
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert hashlib.sha256(data).hexdigest() in readme and layout["read"] in readme


def test_source_digest_streams_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "_HASH_BLOCK", 1000)
    data = np.random.default_rng(1).bytes(12_345)
    (tmp_path / "x").write_bytes(data)
    assert export_module.source_digest(tmp_path / "x") == (12_345, hashlib.sha256(data).hexdigest())


def test_bad_export_arguments_are_refused_in_one_line(feats, tmp_path):
    runner = CliRunner()
    for args, message in [
        (["--format", "per-video", "--suffix", "a/b.npy"], "feature file suffix 'a/b.npy' must be a file name ending"),
        (["--format", "sharded", "--prefix", "x/y"], "shard prefix 'x/y' must be a file name prefix"),
    ]:
        result = runner.invoke(main, ["export", str(feats), "-o", str(tmp_path / "o"), *args])
        assert result.exit_code == 1 and message in result.output, result.output
    result = runner.invoke(main, ["export", str(feats), "-o", str(tmp_path / "o"), "--shard-videos", "0"])
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output
