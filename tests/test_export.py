"""Exports read back equal the file's matrix and times (embedding-reader reads npy-parquet)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.export import export
from vidfeat.search import softmax
from vidfeat.store import open_features

from test_search import make_file

pq = pytest.importorskip("pyarrow.parquet")


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


def test_npy_parquet_shards_are_read_back_equal_by_embedding_reader(feats, tmp_path):
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


def test_parquet_with_an_embedding_list_column(feats, tmp_path):
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
        assert hits == [h.to_dict() for h in f.search(clip=3, k=4)]
    result = runner.invoke(main, ["search", str(feats), "--clip", "3", "--video", "v0001.mp4", "--at", "1"])
    assert result.exit_code == 2 and "give one query" in result.output
    result = runner.invoke(main, ["search", str(feats), "--clip", "9999"])
    assert result.exit_code == 1 and "out of range" in result.output
    result = runner.invoke(main, ["search", str(feats), "--video", "v0001.mp4", "--at", "3.0", "-k", "2"])
    assert result.exit_code == 0, result.output
    with open_features(feats) as f:
        first = f.search(video="v0001.mp4", at=3.0, k=1)[0]
    assert first.video in result.output and f"{first.start_sec:.2f}-{first.end_sec:.2f}" in result.output


def test_cli_search_table_keeps_long_video_names_whole(tmp_path):
    folder = "a_long_folder_name_of_a_collection/with_a_long_subfolder_too/"
    feats = make_file(tmp_path / "long.h5", videos=6, folder=folder)
    result = CliRunner().invoke(main, ["search", str(feats), "--clip", "0", "-k", "3"])  # 80 columns, as in a pipe
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    cells = "".join(line.split("│")[2].strip() for line in result.output.splitlines() if line.count("│") == 6)
    assert cells.count(folder) == 3  # each name folded onto several lines, none cut
