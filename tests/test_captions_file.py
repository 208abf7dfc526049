"""Captions in a finished feature file (format 3): `vidfeat captions` from a HowTo100M caption.json,
SRT and rolling-VTT sidecars; each clip's text checked against the overlap rule computed here
independently; carried by later extractions; crash-safe; verified; refused by merge."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.captions.attach import add_captions
from vidfeat.cli import main
from vidfeat.errors import StoreError, VidfeatError
from vidfeat.store import FeatureWriter, VideoResult, open_features, summarize, verify
from vidfeat.store.amend import set_captions
from vidfeat.store.captions import CaptionTable
from vidfeat.store.merge import merge_shards

from test_search import CLASSES, SETTINGS
from test_captions import ROLLING_LINES, ROLLING_VTT
from test_store import _count_file_ops, killed_at

STRIDE = 1.5


def result(path: str, n: int, seed: int = 0, first_frame: float = 0.0) -> VideoResult:
    """A video of ``n`` clips of 1.75 s every 1.5 s (0: failed), first frame at ``first_frame``."""
    rng = np.random.default_rng(seed)
    start = np.arange(n) * STRIDE
    return VideoResult(
        path=path, status="ok" if n else "failed", error="" if n else "no video stream", size_bytes=100 + seed,
        mtime=1.7e9, duration_sec=n * STRIDE + 1.0, fps=30.0, width=64, height=64, first_frame_sec=first_frame,
        embedding=rng.standard_normal((n, 8)).astype(np.float32),
        logits=rng.standard_normal((n, len(CLASSES))).astype(np.float32),
        start_sec=start, end_sec=start + 1.75, valid_frames=np.full(n, 7, np.int32),
    )  # fmt: skip


def write(out: Path, videos: dict[str, int], first_frames: dict[str, float] | None = None, root: str = "") -> Path:
    settings = {**SETTINGS, "stride_sec": STRIDE, "fps": 4.0, "num_frames": 7, **({"root": root} if root else {})}
    with FeatureWriter(out, settings=settings, classes=CLASSES, embedding_dim=8, flush_videos=2) as writer:
        for i, (path, n) in enumerate(videos.items()):
            writer.add(result(path, n, seed=i, first_frame=(first_frames or {}).get(path, 0.0)))
        return writer.finalize()


def expected_texts(f, path: str, captions: list[tuple[float, float, str]], offset: float) -> list[str]:
    """The rule, brute force: captions overlapping the clip by more than 0 s, by (start, end), joined by spaces."""
    clips = f.clips(path)
    ordered = sorted(captions, key=lambda c: (c[0], c[1]))
    return [" ".join(t for s, e, t in ordered if s < b + offset and e > a + offset and t)
            for a, b in zip(clips.start_sec.tolist(), clips.end_sec.tolist())]  # fmt: skip


VIDEOS = {"a/nVbIUDjzWY4.mp4": 12, "a/-x3LkQ_9aZ0.mp4": 5, "b/_Ab12cd34Ef.webm": 3, "b/failed00000.mp4": 0,
          "c/nocaptions00.mp4": 4}  # fmt: skip
OFFSETS = {"a/-x3LkQ_9aZ0.mp4": 2.0}  # its first frame is 2 s into the player's clock
CAPTION_JSON = {
    "nVbIUDjzWY4": {"start": [0.0, 1.5, 3.2, 3.2, 9.0, 17.9], "end": [1.5, 3.0, 5.0, 4.0, 12.5, 30.0],
                    "text": ["hello there", "today we tie", "a knot", "a bowline", "pull it tight", "the end"]},
    "-x3LkQ_9aZ0": {"start": [2.0, 4.5], "end": [3.9, 6.0], "text": ["first frame line", "second line"]},
    "_Ab12cd34Ef": {"start": [0.5], "end": [0.6], "text": ["short"]},
    "notInTheFile": {"start": [1.0], "end": [2.0], "text": ["unknown video"]},
}  # fmt: skip


def as_tuples(entry: dict) -> list[tuple[float, float, str]]:
    return list(zip(entry["start"], entry["end"], entry["text"]))


@pytest.fixture
def captioned(tmp_path) -> tuple[Path, Path]:
    out = write(tmp_path / "feats.h5", VIDEOS, OFFSETS)
    source = tmp_path / "caption.json"
    source.write_text(json.dumps(CAPTION_JSON), encoding="utf-8")
    return out, source


def test_caption_json_gives_every_clip_the_text_of_the_captions_overlapping_it(captioned):
    out, source = captioned
    report = add_captions(out, source)
    assert (report.captioned_videos, report.captions) == (3, 9)
    assert report.counts["unknown_video"] == 1 and report.counts["no_captions"] == 2  # failed00000, nocaptions00
    assert all("\n" not in w for w in report.warnings)
    assert verify(out) == []
    with open_features(out) as f:
        assert f.format_version == 3 and f.has_captions
        for path in VIDEOS:
            vid = Path(path).stem
            want = expected_texts(f, path, as_tuples(CAPTION_JSON[vid]), OFFSETS.get(path, 0.0)) if vid in CAPTION_JSON \
                else [""] * VIDEOS[path]  # fmt: skip
            assert f.clips(path).text.tolist() == want, path
            assert f.captions(path) == (sorted(as_tuples(CAPTION_JSON[vid]), key=lambda c: (c[0], c[1]))
                                        if vid in CAPTION_JSON else [])  # fmt: skip
        text = f.clips("a/nVbIUDjzWY4.mp4").text.tolist()
        # touching is not overlapping: clip 1 is [1.5, 3.25] and "hello there" ends at 1.5; captions in
        # (start, end) order: "a bowline" [3.2, 4.0] before "a knot" [3.2, 5.0]
        assert text[0] == "hello there today we tie"
        assert text[1] == "today we tie a bowline a knot"
        assert text[2] == "a bowline a knot"  # [3.0, 4.75]: "today we tie" ends at 3.0
        # the offset video: clips 0-2 are player time [2.0, 3.75], [3.5, 5.25], [5.0, 6.75]
        assert f.clips("a/-x3LkQ_9aZ0.mp4").text.tolist()[:3] == [
            "first frame line", "first frame line second line", "second line"]
    info = summarize(out)["captions"]
    assert info == {"source": str(source), "captions": 9, "videos": 3, "clips": sum(1 for t in _all_texts(out) if t),
                    "warnings": {"no_captions": 2, "unknown_video": 1}}  # fmt: skip


def _all_texts(out: Path) -> list[str]:
    with h5py.File(out, "r") as h5:
        return h5["clips/text"].asstr()[()].tolist()


def test_adding_again_replaces_and_a_rerun_of_the_extraction_keeps_captions_and_aligns_new_clips(captioned):
    out, source = captioned
    add_captions(out, source)
    once = _all_texts(out)
    add_captions(out, source)  # again: replaces, never duplicates
    assert _all_texts(out) == once
    with open_features(out) as f:
        assert len(f.h5["captions/video"]) == 9
    # a later extraction adds a video and re-extracts one with more clips: captions are carried
    settings = {**SETTINGS, "stride_sec": STRIDE, "fps": 4.0, "num_frames": 7}
    with FeatureWriter(out, settings=settings, classes=CLASSES, embedding_dim=8) as writer:
        writer.add(result("a/nVbIUDjzWY4.mp4", 20, seed=9))  # newer result for the same path
        writer.add(result("d/new000000000.mp4", 2, seed=10))
        writer.finalize()
    assert verify(out) == []
    with open_features(out) as f:
        clips = f.clips("a/nVbIUDjzWY4.mp4")
        assert len(clips) == 20
        assert clips.text.tolist() == expected_texts(f, "a/nVbIUDjzWY4.mp4", as_tuples(CAPTION_JSON["nVbIUDjzWY4"]), 0)
        assert clips.text[13] == "the end"  # a clip that did not exist before has its text
        assert f.clips("d/new000000000.mp4").text.tolist() == ["", ""]
        assert len(f.h5["captions/video"]) == 9


SRT = """\
1
00:00:00,500 --> 00:00:02,000
Take the rope

2
00:00:02,000 --> 00:00:04,100
and make <i>a loop</i>
"""

def test_sidecars_srt_and_rolling_vtt_found_beside_the_videos(tmp_path):
    root = tmp_path / "videos"
    (root / "a").mkdir(parents=True)
    (root / "a" / "knot.srt").write_text(SRT, encoding="utf-8")
    (root / "a" / "fold.en.vtt").write_text(ROLLING_VTT, encoding="utf-8")
    out = write(tmp_path / "feats.h5", {"a/knot.mp4": 3, "a/fold.mp4": 9, "a/none.mp4": 2}, root=str(root))
    result_ = CliRunner().invoke(main, ["captions", str(out)])
    assert result_.exit_code == 0, result_.output + result_.stderr
    assert "2 of 3 videos" in result_.output
    assert "a/none.mp4" in result_.stderr  # no sidecar: a warning, not an error
    with open_features(out) as f:
        assert f.clips("a/knot.mp4").text.tolist() == ["Take the rope", "Take the rope and make a loop",
                                                       "and make a loop"]  # fmt: skip
        fold = f.clips("a/fold.mp4").text.tolist()
        for text in fold:  # no spoken line twice within a clip
            assert all(text.count(line[2]) <= 1 for line in ROLLING_LINES), text
        assert fold == expected_texts(f, "a/fold.mp4", ROLLING_LINES, 0.0)
        assert fold[0] == ROLLING_LINES[0][2]  # the first line, from the cue where it is spoken
        assert verify(out) == []


def test_bad_caption_input_is_warned_and_counted_never_fatal(tmp_path):
    out = write(tmp_path / "feats.h5", {"a/v1.mp4": 3, "a/v2.mp4": 3})
    source = tmp_path / "caption.json"
    source.write_text(json.dumps({"v1": {"start": [0.0, 5.0, -1.0], "end": [1.0, 4.0, 0.5], "text": ["ok", "rev", "neg"]},
                                  "v2": "not a dict"}), encoding="utf-8")  # fmt: skip
    run = CliRunner().invoke(main, ["captions", str(out), str(source)])
    assert run.exit_code == 0, run.stderr
    assert "bad time" in run.stderr and "bad entry" in run.stderr
    assert all(line.startswith("vidfeat:") for line in run.stderr.splitlines())
    with open_features(out) as f:
        assert f.captions("a/v1.mp4") == [(0.0, 1.0, "ok")]
        assert f.clips("a/v2.mp4").text.tolist() == ["", "", ""]
    missing = CliRunner().invoke(main, ["captions", str(out), str(tmp_path / "nope.json")])
    assert missing.exit_code == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "nope.json does not exist" in missing.stderr


def test_a_cut_or_odd_caption_json_keeps_what_it_can_read(tmp_path):
    """caption.json is read a video at a time (ijson): a file cut short keeps the videos before
    the cut with one warning; an id given twice keeps its first captions with a warning; a file
    that is not a JSON object is one warning."""
    out = write(tmp_path / "feats.h5", {"a/v1.mp4": 3, "a/v2.mp4": 3, "a/v3.mp4": 3})
    source = tmp_path / "caption.json"
    whole = ('{"v1": {"start": [0.0], "end": [1.0], "text": ["one"]}, '
             '"v2": {"start": [0.0], "end": [1.0], "text": ["two"]}, '
             '"v1": {"start": [2.0], "end": [3.0], "text": ["again"]}, '
             '"v3": {"start": [0.0], "end": [1.0], "text": ["three"]}}')  # fmt: skip
    source.write_text(whole, encoding="utf-8")
    report = add_captions(out, source)
    assert report.counts == {"duplicate": 1} and report.captioned_videos == 3
    with open_features(out) as f:
        assert f.captions("a/v1.mp4") == [(0.0, 1.0, "one")]
    source.write_text(whole[: whole.index('"v3"') + 20], encoding="utf-8")  # cut inside v3
    report = add_captions(out, source)
    assert report.counts["unreadable_file"] == 1 and report.captioned_videos == 2
    assert any("after 3 videos" in w for w in report.warnings)
    with open_features(out) as f:
        assert f.captions("a/v2.mp4") == [(0.0, 1.0, "two")] and f.captions("a/v3.mp4") == []
    source.write_text("[1, 2]", encoding="utf-8")
    report = add_captions(out, source)
    assert report.counts["unreadable_file"] == 1 and report.captions == 0


def test_two_videos_with_one_id_get_no_captions_and_one_warning(tmp_path):
    out = write(tmp_path / "feats.h5", {"a/same.mp4": 2, "b/same.mp4": 2})
    source = tmp_path / "caption.json"
    source.write_text(json.dumps({"same": {"start": [0.0], "end": [1.0], "text": ["x"]}}), encoding="utf-8")
    report = add_captions(out, source)
    assert report.counts["ambiguous_id"] == 1 and report.captions == 0
    assert any("a/same.mp4" in w and "b/same.mp4" in w for w in report.warnings)


def test_verify_finds_clip_text_that_differs_from_its_captions(captioned):
    out, source = captioned
    add_captions(out, source)
    with h5py.File(out, "r+") as h5:
        h5["clips/text"][0] = "tampered"
    faults = verify(out)
    assert len(faults) == 1 and "clips/text differs from its captions" in faults[0]


def test_merge_refuses_shards_with_captions(captioned, tmp_path):
    out, source = captioned
    add_captions(out, source)
    other = write(tmp_path / "other.h5", {"z/z.mp4": 1})
    with pytest.raises(StoreError, match="has captions: merge shards without them"):
        merge_shards(tmp_path / "merged.h5", [out, other])


def _content(path: Path) -> dict:
    """Every dataset (NaN as a string, so that equal files compare equal) and attr but ``created``."""
    out = {}

    def add(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = [repr(v) for v in np.asarray(obj[()]).reshape(-1).tolist()]

    with h5py.File(path, "r") as h5:
        h5.visititems(add)
        out["attrs"] = {k: str(v) for k, v in h5.attrs.items() if k != "created"}
    return out


@pytest.mark.slow
def test_sigkill_at_every_file_operation_of_adding_captions_leaves_the_old_file_and_the_rerun_completes(
        captioned, tmp_path, monkeypatch):  # fmt: skip
    out, source = captioned
    before = out.read_bytes()
    expected = tmp_path / "expected" / "feats.h5"
    expected.parent.mkdir()
    shutil.copy(out, expected)
    with monkeypatch.context() as m:
        count = _count_file_ops(m.setattr, None, "before")
        add_captions(expected, source)
    total = count[0]
    assert total >= 5
    for kill_at in range(1, total + 1):
        work = tmp_path / f"kill{kill_at}" / "feats.h5"
        work.parent.mkdir()
        shutil.copy(out, work)
        killed_at(kill_at, "before", lambda: add_captions(work, source))
        assert verify(work) == [], kill_at
        with h5py.File(work, "r") as h5:  # the old file, untouched, or the new one, whole
            assert work.read_bytes() == before or "captions" in h5, kill_at
        add_captions(work, source)  # rerun the same command
        assert _content(work) == _content(expected), kill_at
        assert sorted(p.name for p in work.parent.iterdir()) == ["feats.h5"], kill_at


def test_a_busy_output_is_refused_in_one_line(captioned):
    out, source = captioned
    with FeatureWriter(out, settings={**SETTINGS, "stride_sec": STRIDE, "fps": 4.0, "num_frames": 7},
                       classes=CLASSES, embedding_dim=8):  # an extraction holds the output  # fmt: skip
        with pytest.raises(StoreError, match="another vidfeat process is writing"):
            set_captions(out, None)


def test_captions_need_a_finished_file(tmp_path):
    with pytest.raises(VidfeatError, match="does not exist"):
        add_captions(tmp_path / "missing.h5", tmp_path)


# streamed passes over the caption table


def test_caption_blocks_hold_whole_videos(captioned, monkeypatch):
    from vidfeat.store import captions as store_captions
    from vidfeat.store.captions import iter_caption_blocks

    out, source = captioned
    add_captions(out, source)
    monkeypatch.setattr(store_captions, "caption_block_rows", lambda: 3)
    monkeypatch.setattr(store_captions, "_PIECE", 1)  # the end of a long video found by bisection
    with h5py.File(out, "r") as h5:
        blocks = [(row, block.video.tolist()) for row, block in iter_caption_blocks(h5)]
    # videos 0, 1 and 2 have 2, 6 and 1 captions: video 1, longer than a block, is one block
    assert blocks == [(0, [0, 0]), (2, [1] * 6), (8, [2])]


def _many_captions(out: Path, n_videos: int, clips: int, per_clip: int = 2, without: int = 0) -> Path:
    """``n_videos`` videos of ``clips`` clips each with ``per_clip`` one-second captions starting
    in every 1.5 s of clip stride; every ``without``-th video (counting from 1) has none."""
    write(out, {f"v/{i:05d}.mp4": clips for i in range(n_videos)})
    m = clips * per_clip
    start = np.arange(m) * (STRIDE / per_clip)
    videos = np.array([v for v in range(n_videos) if not without or v % without != 1], dtype=np.int64)
    table = CaptionTable(np.repeat(videos, m), np.tile(start, len(videos)), np.tile(start + 1.0, len(videos)),
                         np.array([f"line {j} of the video" for j in range(m)] * len(videos), dtype=object))
    set_captions(out, table)
    return out


def test_verify_and_info_memory_is_flat_in_the_captions(tmp_path, monkeypatch):
    """verify (and info) read /captions and /clips a block at a time: with blocks made small
    (256 KiB, so both files span many), 4x the captions (and clips, so a clip's text stays as
    long) over the same 200 videos hold about the same traced peak. verify reading the caption
    table whole held 3.5x."""
    import tracemalloc

    from vidfeat.store import format as store_format

    files = {m: _many_captions(tmp_path / f"{m}.h5", 200, m // 400) for m in (20_000, 80_000)}
    monkeypatch.setattr(store_format, "BLOCK_BYTES", 256 << 10)
    assert verify(files[20_000]) == []  # first use: imports and caches are not counted below
    summarize(files[20_000])
    peaks, info_peaks = {}, {}
    for m, out in files.items():
        tracemalloc.start()
        assert verify(out) == []
        peaks[m] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert summarize(out)["captions"]["captions"] == m  # info: the caption count, videos and clips with text
        info_peaks[m] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"verify peaks: {peaks}, info peaks: {info_peaks}")
    # Both hold one block of captions, one of clips and the same per-video numbers; the rest of
    # 1.5x is the last, partial block of each pass, whose size differs between the files.
    assert peaks[80_000] < 1.5 * peaks[20_000], peaks
    assert info_peaks[80_000] < 1.5 * info_peaks[20_000], info_peaks


def test_adding_and_carrying_captions_hold_flat_memory(tmp_path, monkeypatch):
    """`vidfeat captions` from a caption.json (read a video at a time, spooled to disk, written a
    block of videos at a time) and a rerun that carries the captions through assembly: with
    blocks made small, 4x the captions (and clips) over the same 200 videos hold about the same
    traced peak. Building the whole table in memory (as before) held about 4x."""
    import tracemalloc

    from vidfeat.store import format as store_format

    files, sources = {}, {}
    for m in (20_000, 80_000):
        clips, per_video = m // 400, m // 200
        files[m] = write(tmp_path / f"{m}.h5", {f"v/{i:05d}.mp4": clips for i in range(200)})
        start = (np.arange(per_video) * (STRIDE / 2)).tolist()
        sources[m] = tmp_path / f"{m}.json"
        sources[m].write_text(json.dumps({f"{i:05d}": {"start": start, "end": [t + 1.0 for t in start],
                                                       "text": [f"line {j} of the video" for j in range(per_video)]}
                                          for i in range(200)}))  # fmt: skip
    monkeypatch.setattr(store_format, "BLOCK_BYTES", 256 << 10)
    settings = {**SETTINGS, "stride_sec": STRIDE, "fps": 4.0, "num_frames": 7}
    peaks = {}
    for m, out in files.items():
        tracemalloc.start()
        report = add_captions(out, sources[m])
        adding = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with FeatureWriter(out, settings=settings, classes=CLASSES, embedding_dim=8) as writer:
            writer.add(result("v/00007.mp4", m // 400, seed=99))  # a newer result: the file is assembled again
            writer.finalize()
        peaks[m] = (adding, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report.captions == m and verify(out) == []
        with open_features(out) as f:
            assert len(f.h5["captions/video"]) == m and f.clips("v/00007.mp4").text[0] == (
                "line 0 of the video line 1 of the video line 2 of the video")  # clip [0, 1.75]: at 0, 0.75, 1.5
    print(f"peaks (adding, carrying): {peaks}")
    assert peaks[80_000][0] < 1.5 * peaks[20_000][0], peaks
    assert peaks[80_000][1] < 1.5 * peaks[20_000][1], peaks


def test_verify_finds_unsorted_captions_at_a_block_boundary(captioned, monkeypatch):
    """The rows are checked 4 at a time: a pair split by a block boundary is compared too."""
    from vidfeat.store import format as store_format
    from vidfeat.store.format import block_rows

    out, source = captioned
    add_captions(out, source)
    monkeypatch.setattr(store_format, "BLOCK_BYTES", 4 * 24)  # blocks of 4 rows of (video, start, end)
    assert block_rows(8 + 8 + 8) == 4
    assert verify(out) == []  # many blocks (and clip-text blocks of one row) find nothing on a valid file
    with h5py.File(out, "r+") as h5:
        g = h5["captions"]
        # rows 3 and 4 are both nVbIUDjzWY4's, (1.5, 3.0) then (3.2, 4.0): swapped across the boundary
        assert g["video"][3] == g["video"][4]
        for name in ("start_sec", "end_sec", "text"):
            g[name][3], g[name][4] = g[name][4], g[name][3]
    # grouped by video still: the clip texts (the rule orders captions itself) are right
    assert verify(out) == ["captions not sorted by (video, start_sec, end_sec) at rows: 4"]
    with h5py.File(out, "r+") as h5:
        g = h5["captions"]
        for name in ("start_sec", "end_sec", "text"):
            g[name][3], g[name][4] = g[name][4], g[name][3]
        # rows 7 (video 1) and 8 (video 2): a video row out of order across the next boundary
        assert (g["video"][7], g["video"][8]) == (1, 2)
        g["video"][7], g["video"][8] = 2, 1
    assert verify(out) == ["captions not sorted by (video, start_sec, end_sec) at rows: 8"]


def test_reader_captions_by_binary_search(tmp_path, monkeypatch):
    from vidfeat.store import captions as store_captions

    out = _many_captions(tmp_path / "f.h5", 30, 4, without=3)  # videos 1, 4, ..., 28 have none
    monkeypatch.setattr(store_captions, "_PIECE", 2)  # the search reads single values down to 2
    with h5py.File(out, "r") as h5:  # what the reader returned reading the whole column
        video = h5["captions/video"][()]
        g = h5["captions"]
        paths = h5["videos/path"].asstr()[()].tolist()
        whole = {p: list(zip(g["start_sec"][video == v].tolist(), g["end_sec"][video == v].tolist(),
                             g["text"].asstr()[()][video == v].tolist())) for v, p in enumerate(paths)}  # fmt: skip
    with open_features(out) as f:
        for v in (0, 15, 29, 1, 28):  # first, middle and last, and two without captions
            assert f.captions(paths[v]) == whole[paths[v]], v
            assert bool(whole[paths[v]]) == (v % 3 != 1), v
        assert [f.captions(p) for p in paths] == [whole[p] for p in paths]
        with pytest.raises(KeyError):
            f.captions("v/missing.mp4")
