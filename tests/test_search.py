"""Exact cosine search over a vidfeat file: streaming, chunk-size independent, video-level means."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from vidfeat.errors import VidfeatError
import vidfeat
from vidfeat.retrieval.search import exact_search
from vidfeat.store import FeatureWriter, VideoResult, open_features
from vidfeat.store.means import softmax, video_means

D, C = 16, 5
CLASSES = [f"class_{i}" for i in range(C)]
SETTINGS = {"model": "test-model", "weights_sha256": "0" * 64, "num_frames": 8, "fps": 2.0, "stride_sec": 2.0,
            "input_size": 32, "mean": [0.45] * 3, "std": [0.225] * 3, "decoder": "pyav"}  # fmt: skip


def make_file(out: Path, videos: int, clips: int = 6, seed: int = 0, dtype: str = "float16", dim: int = D,
              folder: str = "") -> Path:  # fmt: skip
    """``videos`` videos ``{folder}v0000.mp4`` ... of ``clips`` clips each (video 3 failed: no clips),
    random embeddings."""
    rng = np.random.default_rng(seed)
    with FeatureWriter(out, settings=SETTINGS, classes=CLASSES, embedding_dim=dim, embedding_dtype=dtype,
                       flush_videos=64) as writer:  # fmt: skip
        for v in range(videos):
            n = 0 if v == 3 else clips
            start = np.arange(n) * 2.0
            writer.add(VideoResult(
                path=f"{folder}v{v:04d}.mp4", status="failed" if n == 0 else "ok", error="no video stream" if n == 0 else "",
                size_bytes=100 + v, mtime=1.7e9, duration_sec=n * 2.0 + 2.0, fps=30.0, width=64, height=64,
                embedding=rng.standard_normal((n, dim)).astype(np.float32),
                logits=(rng.standard_normal((n, C)) * 3).astype(np.float32),
                start_sec=start, end_sec=start + 4.0, valid_frames=np.full(n, 8, np.int32),
            ))  # fmt: skip
        return writer.finalize()


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    return make_file(tmp_path_factory.mktemp("search") / "feats.h5", videos=12)


def brute_force(matrix: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray):
    m = matrix.astype(np.float64)
    m /= np.linalg.norm(m, axis=1, keepdims=True) + 1e-300
    q = query.astype(np.float64) / np.linalg.norm(query)
    sims = m @ q
    sims[~allowed] = -np.inf
    rows = np.argsort(-sims, kind="stable")[:k]
    return sims[rows], rows


def test_exact_search_matches_brute_force_for_every_chunk_size(feats):
    with open_features(feats) as f:
        matrix = f.load_embeddings(np.float32)
        video = f.h5["clips/video"][:]
        for query_row in (0, 17, len(f) - 1):
            allowed = video != video[query_row]
            want_s, want_r = brute_force(matrix, matrix[query_row], 7, allowed)
            results = []
            for chunk in (1, 5, 16, 1000):
                s, r = exact_search(f.embeddings, matrix[query_row], k=7, chunk_rows=chunk,
                                    exclude=lambda a, b: (video[a:b] == video[query_row])[None])  # fmt: skip
                results.append((s[0], r[0]))
                assert r[0].tolist() == want_r.tolist()
                np.testing.assert_allclose(s[0], want_s, rtol=1e-5, atol=1e-6)
            for s, r in results[1:]:
                assert r.tolist() == results[0][1].tolist()
                np.testing.assert_allclose(s, results[0][0], rtol=1e-6, atol=1e-6)


def test_open_features_search_equals_exact_search(feats):
    with open_features(feats) as f:
        video = f.h5["clips/video"][:]
        row = 20
        hits = vidfeat.search(f, clip=row, k=5, exclude_same_video=True)
        s, r = exact_search(f.load_embeddings(), f.embeddings[row], k=5, chunk_rows=3,
                            exclude=lambda a, b: (video[a:b] == video[row])[None])  # fmt: skip
        assert [h.row for h in hits] == r[0].tolist()
        np.testing.assert_allclose([h.similarity for h in hits], s[0], rtol=1e-6)
        assert all(h.video != f.video_of(row) for h in hits)
        # each hit carries its clip's times and top class
        h = hits[0]
        assert (h.start_sec, h.end_sec) == (f.h5["clips/start_sec"][h.row], f.h5["clips/end_sec"][h.row])
        assert h.top_class == f.topk(h.row, 1)[0][0]
        assert h.score == pytest.approx(f.topk(h.row, 1)[0][1], rel=1e-6)


def test_a_clip_query_never_returns_itself_but_may_return_its_video(feats):
    with open_features(feats) as f:
        hits = vidfeat.search(f, clip=7, k=len(f))
        rows = [h.row for h in hits]
        assert 7 not in rows and len(rows) == len(f) - 1
        assert f.video_of(7) in {h.video for h in hits}


def test_video_and_time_pick_the_clip_there(feats):
    with open_features(feats) as f:
        clips = f.clips("v0005.mp4")
        # clips start every 2 s and last 4 s: t=5.1 lies in clips 1 (2-6) and 2 (4-8); 2's middle (6) is nearer
        a = vidfeat.search(f, video="v0005.mp4", at=5.1, k=3)
        b = vidfeat.search(f, clip=clips.first_row + 2, k=3)
        assert a == b
        with pytest.raises(VidfeatError, match="no video"):
            vidfeat.search(f, video="nope.mp4", at=1.0)
        with pytest.raises(VidfeatError, match="no clips"):
            vidfeat.search(f, video="v0003.mp4", at=1.0)
        with pytest.raises(VidfeatError, match="out of range"):
            vidfeat.search(f, clip=len(f))


def test_video_means_equal_the_means_of_each_videos_rows(feats, tmp_path):
    v1 = tmp_path / "no-means.h5"  # without the stored means: computed from /clips, 5 rows a step
    shutil.copy(feats, v1)
    with h5py.File(v1, "r+") as h5:
        del h5["videos/embedding_mean"], h5["videos/scores_mean"]
    with open_features(v1) as f:
        emb, scores = video_means(f.h5, block_rows=5)
        for v, clips in enumerate(f):
            if len(clips) == 0:
                assert np.isnan(emb[v]).all() and np.isnan(scores[v]).all()
                continue
            np.testing.assert_allclose(emb[v], clips.embedding.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(scores[v], softmax(clips.logits).mean(axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(f.video_embeddings(), emb)


def test_stored_video_means_are_used_when_present(tmp_path):
    out = make_file(tmp_path / "v2.h5", videos=5)
    with open_features(out) as f:
        emb, scores = video_means(f.h5)
    with h5py.File(out, "r+") as h5:  # the version-2 writer stored them: replace them by a marker
        assert "videos/embedding_mean" in h5
        h5["videos/embedding_mean"][...] = emb * 0 + 1.0
    with open_features(out) as f:
        got, _ = video_means(f.h5)
        assert np.nanmax(np.abs(got - 1.0)) == 0


def test_video_level_search_ranks_the_mean_vectors(feats):
    with open_features(feats) as f:
        means = f.video_embeddings()
        q = f.videos.index("v0002.mp4")
        hits = vidfeat.search(f, video="v0002.mp4", level="video", k=20)
        allowed = ~np.isnan(means).any(axis=1)
        allowed[q] = False
        want_s, want_r = brute_force(np.nan_to_num(means), means[q], allowed.sum(), allowed)
        assert [h.row for h in hits] == want_r.tolist()
        assert "v0003.mp4" not in {h.video for h in hits}  # no clips: never matches
        assert hits[0].top_class == CLASSES[int(np.argmax(f.video_scores()[hits[0].row]))]


def _peak_search_memory(path: Path) -> int:
    with open_features(path) as f:
        query = f.embeddings[0]
        tracemalloc.start()
        exact_search(f.embeddings, query, k=10, chunk_rows=256)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_exact_search_memory_is_flat_in_the_file_size(tmp_path):
    small = make_file(tmp_path / "small.h5", videos=20, clips=50, dim=64)  # 1,000 rows
    large = make_file(tmp_path / "large.h5", videos=20, clips=1000, dim=64)  # 20,000 rows (20x)
    small_peak, large_peak = _peak_search_memory(small), _peak_search_memory(large)
    matrix_bytes = 20_000 * 64 * 4
    assert large_peak < matrix_bytes / 4, (small_peak, large_peak)
    assert large_peak < 2 * small_peak + 200_000, (small_peak, large_peak)


# FAISS (optional extra)


def _recall_at_10(f, index, queries) -> float:
    found = 0
    for row in queries:
        exact = set(exact_search(f.embeddings, f.embeddings[row], k=10)[1][0].tolist())
        approx = set(index.search(f.embeddings[row], k=10, n=len(f))[1][0].tolist())
        found += len(exact & approx)
    return found / (10 * len(queries))


def test_flat_faiss_index_agrees_with_exact_search(feats, tmp_path):
    pytest.importorskip("faiss")
    from vidfeat.retrieval.index import FaissIndex, build_index, open_index_for

    with open_features(feats) as f:
        out = build_index(f, tmp_path / "feats.faiss")
        assert json.loads((tmp_path / "feats.faiss.json").read_text())["factory"] == "Flat"
        index = FaissIndex(out)
        for row in range(0, len(f), 7):
            exact = vidfeat.search(f, clip=row, k=5, exclude_same_video=True)
            approx = vidfeat.search(f, clip=row, k=5, exclude_same_video=True, index=index)
            assert approx[0].row == exact[0].row
            assert approx[0].similarity == pytest.approx(exact[0].similarity, abs=1e-5)
            assert len(approx) == 5 and all(h.video != f.video_of(row) for h in approx)
        assert _recall_at_10(f, index, range(0, len(f), 5)) == 1.0
        found, note = open_index_for(f, out)
        assert isinstance(found, FaissIndex) and found.path == out and note == ""


def test_ivf_index_recall_and_stale_index_is_ignored(tmp_path):
    pytest.importorskip("faiss")
    from vidfeat.retrieval.index import FaissIndex, build_index, open_index_for

    feats = make_file(tmp_path / "big.h5", videos=40, clips=100, dim=32)  # 3,900 clips
    with open_features(feats) as f:
        # random Gaussian vectors (no clusters) are the hardest case for IVF: 0.96 with nprobe 32
        index = FaissIndex(build_index(f, factory="IVF64,Flat"))
        assert _recall_at_10(f, index, range(0, len(f), 97)) >= 0.9
        found, note = open_index_for(f)  # beside the file: feats.faiss
        assert isinstance(found, FaissIndex) and found.path == tmp_path / "big.faiss" and note == ""
    other = make_file(tmp_path / "other.h5", videos=40, clips=99, dim=32)
    (tmp_path / "big.faiss").rename(tmp_path / "other.faiss")
    (tmp_path / "big.faiss.json").rename(tmp_path / "other.faiss.json")
    stale = tmp_path / "other.faiss"
    with open_features(other) as f:
        assert open_index_for(f) == (None, f"not using {stale}: built from another model or file (3900 rows of "
                                           f"'test-model'); rebuild it with `vidfeat index {other}`")
    # the library returns the note; the CLI prints it on stderr and searches exactly
    from click.testing import CliRunner

    from vidfeat.cli import main

    result = CliRunner().invoke(main, ["search", str(other), "--clip", "0", "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"vidfeat: not using {stale}: built from another model or file")
    with open_features(other) as f:
        assert [h["row"] for h in json.loads(result.stdout)] == [h.row for h in vidfeat.search(f, clip=0, k=3)]


# the bundled model on the synthetic demo videos


@pytest.mark.slow
def test_nearest_clips_share_the_ground_truth_motion_class(tmp_path):
    """Precision@5 of exact search on long synthetic videos (labelled segments) with the bundled
    tiny-motion model: the 5 nearest clips from other videos, among clips lying inside one
    segment, mostly have the query's class (the card states the figure; chance is about 1/8)."""
    from vidfeat.model.cards import find_card
    from vidfeat.tools.demo import clip_labels
    from vidfeat.model.cards import DEFAULT_MODEL
    from vidfeat.pipeline.driver import ExtractOptions, extract
    from vidfeat.video.inputs import discover
    from vidfeat.retrieval.search import precision_at_k
    from vidfeat.synth import generate_long_videos

    videos = tmp_path / "videos"
    truth = {v["path"]: v for v in generate_long_videos(videos, videos=4, seed=2026)}
    files, _ = discover([videos])
    out = tmp_path / "feats.h5"
    report = extract(files, out, ExtractOptions(model=DEFAULT_MODEL, workers=0))
    assert report.exit_code == 0
    with open_features(out) as f:
        labels = clip_labels(truth, f.videos.path, f.h5["clips/video"][:], f.h5["clips/start_sec"][:],
                             f.h5["clips/end_sec"][:])  # fmt: skip
        precision, queries = precision_at_k(f, labels, k=5)
    meta = find_card(DEFAULT_MODEL).meta  # the figure docs/models.md shows
    assert queries == meta["retrieval_queries"]
    assert precision >= 0.7 and abs(precision - meta["retrieval_precision_at_5"]) <= 0.05, precision


def test_query_video_is_refused_naming_the_model_when_it_is_not_here(feats, tmp_path):
    from click.testing import CliRunner

    from vidfeat.cli import main

    video = tmp_path / "q.mp4"
    video.write_bytes(b"not used: the model is checked first")
    result = CliRunner().invoke(main, ["search", str(feats), "--query-video", str(video)])
    assert result.exit_code == 1
    assert "--query-video needs the model 'test-model' (weights sha256 000000000000...)" in result.output


@pytest.mark.slow
def test_query_video_embeds_with_the_files_model(tmp_path):
    """A video already in the file, given as --query-video, gives its own mean clip embedding."""
    from vidfeat.model.cards import DEFAULT_MODEL
    from vidfeat.pipeline.driver import ExtractOptions, extract
    from vidfeat.video.inputs import discover
    from vidfeat.pipeline.query import embed_query_video
    from vidfeat.synth import generate_long_videos

    videos = tmp_path / "videos"
    generate_long_videos(videos, videos=2, seed=7, segments=(1, 2), segment_seconds=(6.0, 8.0))
    files, _ = discover([videos])
    extract(files, tmp_path / "feats.h5", ExtractOptions(model=DEFAULT_MODEL, workers=0))
    with open_features(tmp_path / "feats.h5") as f:
        query = embed_query_video(f, videos / "long_001.mp4")
        want = f.video_embeddings()[f.videos.index("long_001.mp4")]
        np.testing.assert_allclose(query, want, atol=2e-3)  # the file stores float16
        hits = vidfeat.search(f, query=query, level="video", k=1)
        assert hits[0].video == "long_001.mp4" and hits[0].similarity > 0.999


