"""Full-text search over clip captions (vidfeat.retrieval.text) and the captions export: files made
by the real writer, captions added with h5py in the layout of format version 3 (/captions/*,
/clips/text from vidfeat.store.captions.align)."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import shutil
import sqlite3
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.store.captions import align
from vidfeat.cli import main
from vidfeat.errors import VidfeatError
from vidfeat.retrieval import export as export_module
from vidfeat.retrieval import text as text_module
from vidfeat.retrieval.export import export
from vidfeat.retrieval.text import match_expression, search_text, text_index
from vidfeat.store import FeatureWriter, VideoResult, open_features

from test_search import CLASSES, SETTINGS

CLIP_SEC = 4.0  # clips of 4 s every 4 s: a time inside a clip belongs to that clip alone
FILLER = ["pan", "oil", "salt", "onion", "heat", "stir", "bowl", "lid", "water", "pepper"]  # Porter-stable
PLANT_VIDEO, PLANT_CLIP = 4, 3  # "How to Tie a Knot" lies in clip 3 (12-16 s) of v0004.mp4


def make_file(out: Path, videos: int, clips: int, folder: str = "") -> Path:
    """``videos`` videos ``{folder}v0000.mp4`` ... of ``clips`` clips each (video 2 failed: no clips)."""
    rng = np.random.default_rng(0)
    settings = dict(SETTINGS, stride_sec=CLIP_SEC)
    with FeatureWriter(out, settings=settings, classes=CLASSES, embedding_dim=8, embedding_dtype="float16") as w:
        for v in range(videos):
            n = 0 if v == 2 else clips
            start = np.arange(n) * CLIP_SEC
            w.add(VideoResult(
                path=f"{folder}v{v:04d}.mp4", status="failed" if n == 0 else "ok", error="" if n else "no video stream",
                size_bytes=100 + v, mtime=1.7e9, duration_sec=n * CLIP_SEC, fps=30.0, width=64, height=64,
                embedding=rng.standard_normal((n, 8)).astype(np.float32),
                logits=rng.standard_normal((n, len(CLASSES))).astype(np.float32),
                start_sec=start, end_sec=start + CLIP_SEC, valid_frames=np.full(n, 8, np.int32),
            ))  # fmt: skip
        return w.finalize()


def add_captions(path: Path, captions: dict[int, list[tuple[float, float, str]]]) -> None:
    """Write /captions (rows sorted by video, start, end) and /clips/text (align's rule) into ``path``."""
    with h5py.File(path, "r+") as h5:
        rows = sorted((v, s, e, t) for v, caps in captions.items() for s, e, t in caps)
        for name in ("captions", "clips/text"):
            if name in h5:
                del h5[name]
        h5.create_dataset("captions/video", data=np.array([r[0] for r in rows], np.int64))
        h5.create_dataset("captions/start_sec", data=np.array([r[1] for r in rows], np.float64))
        h5.create_dataset("captions/end_sec", data=np.array([r[2] for r in rows], np.float64))
        h5.create_dataset("captions/text", data=[r[3] for r in rows], dtype=h5py.string_dtype())
        video, start, end = h5["clips/video"][:], h5["clips/start_sec"][:], h5["clips/end_sec"][:]
        texts = [""] * len(video)
        for v, caps in captions.items():
            mine = np.flatnonzero(video == v)
            if mine.size and caps:
                got = align(start[mine], end[mine], [c[0] for c in caps], [c[1] for c in caps], [c[2] for c in caps])
                for row, t in zip(mine.tolist(), got):
                    texts[row] = t
        h5.create_dataset("clips/text", data=texts, dtype=h5py.string_dtype())


def filler_captions(videos: int, clips: int, seed: int = 1) -> dict[int, list[tuple[float, float, str]]]:
    """Two filler captions a clip, words from FILLER (video 2 has none: it failed)."""
    rng = np.random.default_rng(seed)
    out: dict[int, list[tuple[float, float, str]]] = {}
    for v in range(videos):
        if v == 2:
            continue
        out[v] = [(c * CLIP_SEC + half * 2.0 + 0.25, c * CLIP_SEC + half * 2.0 + 1.75,
                   " ".join(rng.choice(FILLER, size=3)))
                  for c in range(clips) for half in (0, 1)]  # fmt: skip
    return out


@pytest.fixture
def captioned(tmp_path) -> Path:
    """6 videos of 8 clips with filler captions; the planted phrase in one clip; its words apart
    (and more often) in two other clips; "knot" alone in a fourth."""
    path = make_file(tmp_path / "feats.h5", videos=6, clips=8)
    caps = filler_captions(6, 8)
    caps[PLANT_VIDEO].append((PLANT_CLIP * CLIP_SEC + 1.0, PLANT_CLIP * CLIP_SEC + 1.5, "How to Tie a Knot"))
    caps[1].append((5 * CLIP_SEC + 1.0, 5 * CLIP_SEC + 1.5, "knot the rope then tie it"))
    caps[5].append((0.5, 1.0, "a loose knot"))
    caps[3].append((CLIP_SEC + 1.0, CLIP_SEC + 1.5, "knot a tie, knot a tie, knot a tie"))
    caps[0].append((2 * CLIP_SEC + 0.5, 2 * CLIP_SEC + 1.0, "Crème brûlée, don't burn it"))
    add_captions(path, caps)
    return path


def clip_texts(path: Path) -> list[str]:
    with h5py.File(path, "r") as h5:
        return list(h5["clips/text"].asstr()[:])


def brute_force(texts: list[str], query: str) -> set[int]:
    """Rows whose text holds every whitespace piece of ``query`` (its words, consecutive), compared
    in lower case: the documented rule without stemming (FILLER and the planted words are stable)."""
    words = [re.findall(r"\w+", p.lower()) for p in query.split()]
    words = [w for w in words if w]
    out = set()
    for row, text in enumerate(texts):
        tokens = re.findall(r"\w+", text.lower())
        if all(any(tokens[i : i + len(w)] == w for i in range(len(tokens))) for w in words):
            out.add(row)
    return out


# --- search -----------------------------------------------------------------------------------------


def test_planted_phrase_is_found_first_in_its_clip_with_its_times(captioned):
    with open_features(captioned) as f:
        hits = search_text(f, "tie a knot", k=10)
        want_row = int(f.videos.clip_offset[PLANT_VIDEO]) + PLANT_CLIP
        thrice = int(f.videos.clip_offset[3]) + 1
    texts = clip_texts(captioned)
    top = hits[0]
    assert (top.row, top.video) == (want_row, "v0004.mp4")
    assert (top.start_sec, top.end_sec) == (12.0, 16.0)
    assert "How to Tie a Knot" in top.text and top.text == texts[want_row]
    assert "[Tie a Knot]" in top.marked()
    assert {h.row for h in hits} == brute_force(texts, "tie a knot") == {want_row, thrice}
    assert all(h.score > 0 for h in hits)


def test_words_in_another_order_and_case_match_the_same_clips(captioned):
    texts = clip_texts(captioned)
    with open_features(captioned) as f:
        plant = int(f.videos.clip_offset[PLANT_VIDEO]) + PLANT_CLIP
        apart = int(f.videos.clip_offset[1]) + 5
        hits = search_text(f, "KNOT Tie", k=10)
        assert {h.row for h in hits} == brute_force(texts, "knot tie")
        assert {plant, apart} < {h.row for h in hits}
        marked = {h.row: h.marked() for h in hits}
        assert "[Tie] a [Knot]" in marked[plant] and "[knot] the rope then [tie] it" in marked[apart]
        assert [h.row for h in search_text(f, "ROPE then", k=10)] == [apart]
        # accents and case folded, English endings stemmed
        crème = int(f.videos.clip_offset[0]) + 2
        assert [h.row for h in search_text(f, "CREME brulee")] == [crème]
        assert {h.row for h in search_text(f, "knots", k=10)} == brute_force(texts, "knot")


def test_phrase_ranks_above_the_same_words_apart(captioned):
    """The clip "knot a tie, knot a tie, knot a tie" holds each word three times, so BM25 alone
    ranks it first; the planted phrase still comes first, then it."""
    with open_features(captioned) as f:
        plant = int(f.videos.clip_offset[PLANT_VIDEO]) + PLANT_CLIP
        thrice = int(f.videos.clip_offset[3]) + 1
        hits = search_text(f, "tie a knot", k=10)
        assert [h.row for h in hits] == [plant, thrice] and hits[0].score < hits[1].score
        assert [h.row for h in search_text(f, "tie a knot", k=1)] == [plant]
        con, _ = text_module._connect(f, None)
        by_bm25 = con.execute("SELECT rowid FROM clips WHERE clips MATCH ? ORDER BY bm25(clips)",
                              (match_expression("tie a knot"),)).fetchall()  # fmt: skip
        con.close()
        assert [r for r, in by_bm25] == [thrice, plant]
        knot = search_text(f, "knot", k=10)  # one word: BM25 alone
    assert {h.row for h in knot} == brute_force(clip_texts(captioned), "knot") and len(knot) == 4
    assert [h.score for h in knot] == sorted((h.score for h in knot), reverse=True) and knot[0].row == thrice
    assert match_expression("tie knot") == '"tie knot" OR ("tie" AND "knot")'
    assert match_expression('say "hi"') == '"say ""hi""" OR ("say" AND """hi""")'
    assert match_expression("knot") == '"knot"' and match_expression("- knot *") == '"knot"'


@pytest.mark.parametrize("query, found", [
    ('"tie a knot"', 2), ("tie*", 3), ("-knot", 4), ("{tie}", 3), ("^tie", 3), ("don't", 1), ("tie + knot", 3),
    ("'knot'", 4), ("title: knot", 0), ("NEAR(tie, knot)", 0), ("NEAR tie knot", 0), ("knot:tie", 0),
    ("tie AND OR NOT knot", 0), ("knot )(", 4), ('kn"ot', 0),
])  # fmt: skip
def test_fts_syntax_in_the_query_is_plain_text(captioned, query, found):
    """Each piece is plain words: the clips found are those holding them (no error, no operator)."""
    texts = clip_texts(captioned)
    with open_features(captioned) as f:
        hits = search_text(f, query, k=100)
    assert {h.row for h in hits} == brute_force(texts, query)
    assert len(hits) == found


def test_a_query_without_words_is_a_one_line_error(captioned):
    with open_features(captioned) as f:
        for query in ("", "   ", '" * - :', "()"):
            with pytest.raises(VidfeatError, match="has no words"):
                search_text(f, query)
        with pytest.raises(VidfeatError, match="k must be at least 1"):
            search_text(f, "knot", k=0)


def test_a_sqlite_without_fts5_is_a_one_line_error(captioned, monkeypatch):
    real = text_module.sqlite3.connect

    class NoFts5:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            if "USING fts5" in sql:
                raise sqlite3.OperationalError("no such module: fts5")
            return self.con.execute(sql, *args)

        def close(self):
            self.con.close()

    monkeypatch.setattr(text_module.sqlite3, "connect", lambda *a, **k: NoFts5(real(*a, **k)))
    with open_features(captioned) as f, pytest.raises(VidfeatError, match="needs SQLite's FTS5.*no such module: fts5"):
        search_text(f, "knot")
    assert not text_module.index_path(captioned).exists()


def test_no_hits_is_an_empty_list(captioned):
    with open_features(captioned) as f:
        assert search_text(f, "spaceship") == []
        assert search_text(f, "tie spaceship") == []


# --- the cached index -------------------------------------------------------------------------------


@pytest.fixture
def builds(monkeypatch) -> list[Path]:
    """Every index build, by the path it writes."""
    done: list[Path] = []
    real = text_module.build_text_index

    def counting(f, out, identity=None):
        done.append(Path(out))
        return real(f, out, identity)

    monkeypatch.setattr(text_module, "build_text_index", counting)
    return done


def test_index_is_cached_beside_the_file_and_reused(captioned, builds):
    lines: list[str] = []
    with open_features(captioned) as f:
        first = search_text(f, "tie a knot", notify=lines.append)
        assert builds == [captioned.with_name("feats.h5.text.sqlite")]
        assert lines == [f"building the text index of {captioned} in {builds[0]}"]
        assert search_text(f, "tie a knot", notify=lines.append) == first
        assert text_index(f) == builds[0]
    with open_features(captioned) as f:
        assert search_text(f, "tie a knot") == first
    assert len(builds) == 1 and len(lines) == 1
    assert sorted(p.name for p in captioned.parent.iterdir()) == ["feats.h5", "feats.h5.text.sqlite"]
    # a folder moved with its timestamps keeps its index
    moved = captioned.parent / "moved"
    moved.mkdir()
    for name in ("feats.h5", "feats.h5.text.sqlite"):
        os.rename(captioned.parent / name, moved / name)
    with open_features(moved / "feats.h5") as f:
        assert [(h.row, h.score) for h in search_text(f, "tie a knot")] == [(h.row, h.score) for h in first]
    assert len(builds) == 1


def test_a_changed_file_rebuilds_the_index(captioned, builds):
    with open_features(captioned) as f:
        assert search_text(f, "spaceship") == []
    assert len(builds) == 1
    # New text in the file: a write within one clock tick could keep mtime_ns, so the test moves
    # it on by a second the way any later write does.
    before = os.stat(captioned).st_mtime_ns
    with h5py.File(captioned, "r+") as h5:
        texts = list(h5["clips/text"].asstr()[:])
        texts[7] = "the spaceship lands"
        del h5["clips/text"]
        h5.create_dataset("clips/text", data=texts, dtype=h5py.string_dtype())
    os.utime(captioned, ns=(before + 10**9, before + 10**9))
    with open_features(captioned) as f:
        assert [h.row for h in search_text(f, "spaceship")] == [7]
        assert [h.row for h in search_text(f, "spaceship")] == [7]
    assert len(builds) == 2
    # The cache is checked against each part of the file's identity on its own.
    with open_features(captioned) as f:
        identity = text_module._identity(f)
        path = text_module.index_path(captioned)
        fresh = text_module._open_fresh(path, identity)
        assert fresh is not None
        fresh.close()
        assert identity["created"] == f.attrs["created"] != ""
        for key, other in (("size", identity["size"] + 1), ("mtime_ns", identity["mtime_ns"] - 1),
                           ("created", "2000-01-01T00:00:00+00:00"), ("rows", identity["rows"] + 1)):  # fmt: skip
            assert text_module._open_fresh(path, dict(identity, **{key: other})) is None, key


def test_a_foreign_or_broken_cache_is_never_used(captioned, tmp_path, builds):
    (tmp_path / "other").mkdir()
    other = make_file(tmp_path / "other" / "feats.h5", videos=3, clips=2)
    add_captions(other, {0: [(0.5, 1.0, "spaceship")]})
    with open_features(other) as f:
        assert [h.row for h in search_text(f, "spaceship")] == [0]
    shutil.copy(text_module.index_path(other), text_module.index_path(captioned))
    with open_features(captioned) as f:
        assert search_text(f, "spaceship") == []
        assert search_text(f, "tie a knot")[0].video == "v0004.mp4"
    assert len(builds) == 2
    text_module.index_path(captioned).write_bytes(b"not a database")
    with open_features(captioned) as f:
        assert search_text(f, "tie a knot")[0].video == "v0004.mp4"
    assert len(builds) == 3


def test_an_unwritable_folder_caches_under_vidfeat_home_and_says_so(captioned, tmp_path, monkeypatch, builds):
    home = tmp_path / "home"
    monkeypatch.setenv("VIDFEAT_HOME", str(home))
    real_probe = text_module._probe

    def probe(folder: Path) -> None:
        if folder == captioned.parent:
            raise PermissionError(13, "Permission denied")
        real_probe(folder)

    monkeypatch.setattr(text_module, "_probe", probe)
    lines: list[str] = []
    with open_features(captioned) as f:
        assert search_text(f, "tie a knot", notify=lines.append)[0].video == "v0004.mp4"
        assert search_text(f, "tie a knot", notify=lines.append)[0].video == "v0004.mp4"
    assert len(builds) == 1 and builds[0].parent == home / "cache"
    assert builds[0].name.startswith("feats.h5-") and builds[0].name.endswith(".text.sqlite")
    assert lines == [f"building the text index of {captioned} in {builds[0]} "
                     f"(not writable: {captioned.parent}: Permission denied)"]  # fmt: skip
    assert not text_module.index_path(captioned).exists()


def _peak_build_memory(path: Path, out: Path) -> int:
    with open_features(path) as f:
        tracemalloc.start()
        try:
            text_module.build_text_index(f, out)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def test_building_the_index_streams_the_text(tmp_path, monkeypatch):
    """Python's memory while building (SQLite's own cache is outside tracemalloc and bounded by
    its page cache): flat from 1,900 to 19,000 clips."""
    monkeypatch.setattr(text_module, "_BLOCK_ROWS", 256)
    peaks, text_bytes = [], 0
    for name, clips in (("small", 100), ("large", 1000)):
        path = make_file(tmp_path / f"{name}.h5", videos=20, clips=clips)
        add_captions(path, filler_captions(20, clips))
        text_bytes = sum(len(t) + 49 for t in clip_texts(path))  # str objects as a list would hold them
        peaks.append(_peak_build_memory(path, tmp_path / f"{name}.text.sqlite"))
    small, large = peaks
    with open_features(path) as f:
        assert len(search_text(f, "salt pepper", k=5)) == 5
    assert large < text_bytes / 4, (small, large, text_bytes)
    assert large < 1.5 * small + 100_000, (small, large)


# --- the CLI ----------------------------------------------------------------------------------------


def test_cli_text_search_table_and_json(captioned):
    runner = CliRunner()
    result = runner.invoke(main, ["search", str(captioned), "--text", "tie a knot", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["video"] == "v0004.mp4" and (hits[0]["start_sec"], hits[0]["end_sec"]) == (12.0, 16.0)
    start = hits[0]["text"].index("Tie a Knot")
    assert hits[0]["matches"] == [[start, start + len("Tie a Knot")]]
    assert result.stderr.startswith("building the text index of")
    result = runner.invoke(main, ["search", str(captioned), "--text", "tie a knot", "-k", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "v0004.mp4" in result.stdout and "12.00-16.00" in result.stdout and "[Tie a Knot]" in result.stdout
    assert result.stderr == ""  # the cached index: nothing built


def test_cli_without_captions_is_one_line_exit_1(tmp_path):
    path = make_file(tmp_path / "plain.h5", videos=3, clips=2)
    result = CliRunner().invoke(main, ["search", str(path), "--text", "knot"])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {path} has no captions: add them with `vidfeat captions {path} SOURCE`"
    assert not text_module.index_path(path).exists()


def test_cli_text_with_another_query_is_a_usage_error(captioned):
    for extra in (["--clip", "3"], ["--at", "2"], ["--level", "video"], ["--exclude-same-video"], ["--exact"]):
        result = CliRunner().invoke(main, ["search", str(captioned), "--text", "knot", *extra])
        assert result.exit_code == 2 and "--text" in result.output


# --- the captions export ----------------------------------------------------------------------------


def expected_captions(path: Path, rule: str = "stem") -> dict:
    """{video_id: {"start", "end", "text"}} straight from the /captions datasets."""
    with h5py.File(path, "r") as h5:
        video = h5["captions/video"][:]
        start, end = h5["captions/start_sec"][:], h5["captions/end_sec"][:]
        text = list(h5["captions/text"].asstr()[:])
        paths = list(h5["videos/path"].asstr()[:])
    out: dict = {}
    for v in sorted(set(video.tolist())):
        rows = np.flatnonzero(video == v)
        vid = export_module.video_id(paths[v], rule)
        out[vid] = {"start": start[rows].tolist(), "end": end[rows].tolist(), "text": [text[i] for i in rows]}
    return out


def test_captions_export_reads_back_equal_as_json_and_pickle(tmp_path):
    path = make_file(tmp_path / "feats.h5", videos=6, clips=4, folder="cooking/")
    caps = filler_captions(6, 4)
    del caps[4]  # a video with clips but no captions
    caps[2] = [(3.0, 4.5, "said before it failed"), (0.5, 1.0, "Ünïcode «quotes» \"and\" \\ slashes")]
    caps[0].append((0.25, 9.0, "a long one from the start"))  # same start as a filler: sorted by end
    add_captions(path, caps)
    result = CliRunner().invoke(main, ["export", str(path), "-o", str(tmp_path / "out"), "--format", "captions"])
    assert result.exit_code == 0, result.output
    want = expected_captions(path)
    total = sum(len(c["text"]) for c in want.values())
    assert result.output.strip() == f"wrote {total} captions of 5 videos to {tmp_path / 'out'} (4 files); " \
                                    "1 video without captions left out"  # fmt: skip
    got_json = json.loads((tmp_path / "out" / "caption.json").read_text(encoding="utf-8"))
    with open(tmp_path / "out" / "caption.pickle", "rb") as fh:
        got_pickle = pickle.load(fh)
    pickletools.dis((tmp_path / "out" / "caption.pickle").read_bytes(), out=io.StringIO())  # a strict reader
    assert got_json == want and got_pickle == want
    assert list(got_json) == list(got_pickle) == ["v0000", "v0001", "v0002", "v0003", "v0005"]
    assert got_json["v0002"]["text"] == ["Ünïcode «quotes» \"and\" \\ slashes", "said before it failed"]
    for c in got_json.values():
        assert c["start"] == sorted(c["start"]) and len(c["start"]) == len(c["end"]) == len(c["text"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    layout = manifest["layout"]
    assert (layout["format"], layout["rows"], layout["videos"]) == ("captions", total, 5)
    assert (layout["videos_without_captions"], layout["videos_without_clips"], layout["captions"]) == (1, 1, True)
    assert layout["options"] == {"id": "stem"}
    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert f"{total} captions of 5 videos (1 video without captions left out)." in readme
    assert "caption.json" in readme
    with open_features(path) as f:
        export(f, tmp_path / "paths", format="captions", ids="path")
    by_path = json.loads((tmp_path / "paths" / "caption.json").read_text(encoding="utf-8"))
    assert by_path == expected_captions(path, "path") and "cooking/v0005" in by_path


def test_captions_export_streams_across_blocks(tmp_path, monkeypatch):
    """Blocks of 3 caption rows: videos split across blocks are joined back. Memory holds one
    video's captions: flat from 20 to 200 videos of the same length."""
    monkeypatch.setattr(export_module, "_BLOCK_ROWS", 3)
    path = make_file(tmp_path / "feats.h5", videos=5, clips=3)
    add_captions(path, filler_captions(5, 3))
    with open_features(path) as f:
        export(f, tmp_path / "out", format="captions")
    assert json.loads((tmp_path / "out" / "caption.json").read_text(encoding="utf-8")) == expected_captions(path)
    monkeypatch.setattr(export_module, "_BLOCK_ROWS", 256)
    peaks, json_bytes = [], []
    for name, videos in (("small", 20), ("large", 200)):
        path = make_file(tmp_path / f"{name}.h5", videos=videos, clips=50)
        add_captions(path, filler_captions(videos, 50))
        with open_features(path) as f:
            tracemalloc.start()
            try:
                export(f, tmp_path / name, format="captions")
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        json_bytes.append((tmp_path / name / "caption.json").stat().st_size)
    small, large = peaks
    assert large - small < (json_bytes[1] - json_bytes[0]) / 10, (small, large, json_bytes)
    assert large < 1.5 * small + 100_000, (small, large)


def test_captions_export_refuses_files_without_or_with_unsorted_captions(tmp_path):
    path = make_file(tmp_path / "plain.h5", videos=3, clips=2)
    result = CliRunner().invoke(main, ["export", str(path), "-o", str(tmp_path / "out"), "--format", "captions"])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {path} has no captions: add them with `vidfeat captions {path} SOURCE`"
    assert not (tmp_path / "out").exists()
    add_captions(path, {0: [(0.5, 1.0, "b"), (2.0, 3.0, "c")], 1: [(0.5, 1.0, "a")]})
    with h5py.File(path, "r+") as h5:
        h5["captions/start_sec"][0:2] = [2.0, 0.5]
    with open_features(path) as f, pytest.raises(VidfeatError, match="not sorted by start time"):
        export(f, tmp_path / "bad", format="captions")
    with h5py.File(path, "r+") as h5:
        h5["captions/start_sec"][0:2] = [0.5, 2.0]
        h5["captions/video"][:] = [1, 0, 0]
    with open_features(path) as f, pytest.raises(VidfeatError, match="not sorted by video"):
        export(f, tmp_path / "bad2", format="captions")
