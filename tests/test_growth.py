"""Growth by segments (vidfeat.store.segments): a run that adds videos to a finished file writes
the new videos and a small top file, needs free space for those only, and the file stays
readable by any HDF5 reader, with or without captions; replacing videos, `vidfeat captions`, too
many segments or `vidfeat compact` give one plain file again."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from test_store import assert_same_content, assert_same_videos, open_writer
from vidfeat.cli import main
from vidfeat.errors import StoreError
from vidfeat.store import FeatureWriter, VideoResult, open_features, summarize, verify
from vidfeat.store import segments as segments_module
from vidfeat.store.amend import compact, set_captions
from vidfeat.store.captions import CaptionTable
from vidfeat.store.segments import segments_path

SETTINGS = {"model": "m", "weights_sha256": "ab" * 32, "num_frames": 8, "fps": 1.0, "stride_sec": 4.0,
            "input_size": 224, "mean": [0.45] * 3, "std": [0.225] * 3, "crops": 1, "decoder": "pyav"}  # fmt: skip
WIDE = 256  # embedding width: a clip is ~0.6 KB, so the data dwarfs HDF5's metadata


def _video(i: int, version: int = 0) -> VideoResult:
    rng = np.random.default_rng(i + 1000 * version)
    n = 20
    start = np.arange(n) * 4.0
    return VideoResult(path=f"v{i:05d}.mp4", status="ok", error="", size_bytes=1000 + i, mtime=1.7e9 + version,
                       duration_sec=n * 4.0 + 4, fps=30.0, width=64, height=64,
                       embedding=rng.standard_normal((n, WIDE)).astype(np.float32),
                       logits=rng.standard_normal((n, 4)).astype(np.float32), start_sec=start, end_sec=start + 8,
                       valid_frames=np.full(n, 8, np.int32))  # fmt: skip


def _write(out: Path, ids, **kwargs) -> None:
    with FeatureWriter(out, settings=SETTINGS, classes=["a", "b", "c", "d"], embedding_dim=WIDE, **kwargs) as w:
        for i in ids:
            w.add(_video(*i) if isinstance(i, tuple) else _video(i))
        w.finalize()


def _written_bytes() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A plain file of 400 videos (8,000 clips, about 4.3 MB)."""
    out = tmp_path_factory.mktemp("base") / "feats.h5"
    _write(out, range(0, 800, 2))
    return out


def _copy(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "feats.h5"
    shutil.copy(base, out)
    return out


def test_growth_writes_the_new_videos_not_the_file(base, tmp_path):
    """Adding 1% (4 videos, interleaved with the others by name) writes about the new data, not
    the file; assembling the whole file again (grow=False) writes more than the file."""
    new = [1, 201, 401, 799]
    new_data = 4 * 20 * (WIDE * 2 + 4 * 4 + 28)  # float16 embeddings, float32 logits, the row columns
    size = base.stat().st_size
    (tmp_path / "g").mkdir()
    grown = _copy(base, tmp_path / "g")
    before = _written_bytes()
    _write(grown, new)
    grew = _written_bytes() - before
    whole = _copy(base, tmp_path)
    before = _written_bytes()
    _write(whole, new, grow=False)
    assembled = _written_bytes() - before
    assert assembled > size
    print(f"file {size} B, new data {new_data} B: growing wrote {grew} B, assembling {assembled} B")
    assert grew < 2 * new_data + 300_000, (grew, new_data)  # the segment, its chunks and a top file of a few KB
    assert grew < size / 5
    assert sorted(p.name for p in segments_path(grown).iterdir()) == ["000000.h5", "000001.h5"]
    assert verify(grown) == [] and not segments_path(whole).exists()
    assert_same_videos(grown, whole)
    with open_features(grown) as f:
        assert len(f.videos) == 404 and f.attrs["format_version"] == 4
        assert f.clips("v00201.mp4").embedding.shape == (20, WIDE)
        np.testing.assert_allclose(f.clips("v00201.mp4").embedding, _video(201).embedding.astype(np.float16))
        assert f.videos.path[-4:].tolist() == ["v00001.mp4", "v00201.mp4", "v00401.mp4", "v00799.mp4"]
    assert compact(grown) is not None and not segments_path(grown).exists()
    assert_same_content(grown, whole)  # compacted: one plain file, as one run over every video


def test_growth_needs_free_space_for_the_new_videos_only(base, tmp_path, monkeypatch):
    """With less free space than the file's size, growing works where assembling is refused."""
    real = shutil.disk_usage
    free = base.stat().st_size // 2

    def little(path):
        return real(path)._replace(free=free)

    grown = _copy(base, tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", little)
    _write(grown, [3, 5])
    whole = tmp_path / "whole.h5"
    shutil.copy(base, whole)
    with pytest.raises(StoreError, match=r"cannot assemble .* it needs about .* free at least"):
        _write(whole, [3, 5], grow=False)
    monkeypatch.setattr(shutil, "disk_usage", real)
    with open_features(grown) as f:
        assert len(f.videos) == 402


def test_any_hdf5_reader_reads_a_grown_file(base, tmp_path):
    grown = _copy(base, tmp_path)
    _write(grown, [7])
    with h5py.File(grown, "r") as h5:  # plain h5py, from another working directory too
        rows = h5["clips/video"][()]
        assert rows[-1] == 400 and h5["videos/path"].asstr()[400] == "v00007.mp4"
        emb = h5["clips/embedding"][-20:]
    np.testing.assert_allclose(emb, _video(7).embedding.astype(np.float16))
    if shutil.which("h5dump"):
        dumped = subprocess.run(["h5dump", "-d", "/videos/path", "-s", "400", "-c", "1", grown.name],
                                cwd=grown.parent, capture_output=True, text=True, check=True).stdout
        assert '"v00007.mp4"' in dumped
        elsewhere = subprocess.run(["h5dump", "-d", "/clips/video", "-s", "8000", "-c", "1", str(grown)],
                                   cwd="/", capture_output=True, text=True, check=True).stdout
        assert "(8000): 400" in elsewhere


def test_a_grown_file_without_its_segments_is_refused_in_one_line(base, tmp_path):
    grown = _copy(base, tmp_path)
    _write(grown, [9])
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(grown, moved / "feats.h5")  # the top file alone
    with pytest.raises(StoreError) as err:
        open_features(moved / "feats.h5")
    message = str(err.value)
    assert "\n" not in message and "2 of them (000000.h5, ...) are missing" in message
    assert "keep feats.h5.segments/ beside the file" in message and "vidfeat compact" in message
    assert any("are missing" in fault for fault in verify(moved / "feats.h5"))
    result = CliRunner().invoke(main, ["info", str(moved / "feats.h5")])
    assert result.exit_code == 1 and "are missing" in result.output
    with h5py.File(moved / "feats.h5", "r") as h5:  # what plain h5py reads there: fill values, not zeros
        assert np.isnan(h5["clips/embedding"][0]).all() and h5["clips/video"][0] == -1
    shutil.copytree(segments_path(grown), moved / "renamed.segments")  # a folder under another name: missing too
    with pytest.raises(StoreError, match="rename neither"):
        open_features(moved / "feats.h5")
    shutil.move(moved / "renamed.segments", segments_path(moved / "feats.h5"))  # the pair moved together
    assert verify(moved / "feats.h5") == []
    with open_features(moved / "feats.h5") as f:
        np.testing.assert_allclose(f.clips("v00009.mp4").embedding, _video(9).embedding.astype(np.float16))


def test_replacing_a_video_or_too_many_segments_assemble_one_plain_file(base, tmp_path, monkeypatch):
    grown = _copy(base, tmp_path)
    _write(grown, [11])
    _write(grown, [13])
    with h5py.File(grown, "r") as h5:
        assert len(h5.attrs["segments"]) == 3 and h5.attrs["segment_videos"].tolist() == [0, 400, 401]
    _write(grown, [(11, 1)])  # a newer result for v00011: the file is assembled again
    assert not segments_path(grown).exists()
    with open_features(grown) as f:
        assert f.attrs["format_version"] == 3 and len(f.videos) == 402
        assert f.videos.path.tolist() == sorted(f.videos.path.tolist())
        np.testing.assert_allclose(f.clips("v00011.mp4").embedding, _video(11, 1).embedding.astype(np.float16))
    monkeypatch.setattr(segments_module, "MAX_SEGMENTS", 3)
    for i in (15, 17):
        _write(grown, [i])
    assert len(list(segments_path(grown).iterdir())) == 3
    _write(grown, [19])  # the third growth would make a fourth segment: compacted instead
    assert not segments_path(grown).exists()
    with open_features(grown) as f:
        assert len(f.videos) == 405 and f.attrs["format_version"] == 3


def test_captions_and_compact_make_a_grown_file_plain(base, tmp_path):
    grown = _copy(base, tmp_path)
    _write(grown, [21])
    with open_features(grown) as f:
        row = f.videos.index("v00021.mp4")
    set_captions(grown, CaptionTable(np.array([row]), np.array([0.0]), np.array([5.0]), np.array(["hello"])))
    assert not segments_path(grown).exists()
    with open_features(grown) as f:
        assert f.attrs["format_version"] == 3 and f.clips("v00021.mp4").text[0] == "hello"

    (tmp_path / "c").mkdir()
    other = _copy(base, tmp_path / "c")
    _write(other, [25])
    assert summarize(other)["segments"] == 2
    shown = CliRunner().invoke(main, ["compact", str(other)])
    assert shown.exit_code == 0 and shown.output == f"{other}: compacted, 8020 clips\n"
    again = CliRunner().invoke(main, ["compact", str(other)])
    assert again.exit_code == 0 and again.output == f"{other}: one file already\n"
    assert summarize(other)["segments"] == 1 and not segments_path(other).exists()


def test_a_shard_file_is_never_grown(tmp_path, monkeypatch):
    """merge reads shard files in path order: the driver opens a shard's file (IIIII-of-NNNNN.h5)
    with grow=False, so its rerun that adds videos assembles it."""
    from types import SimpleNamespace

    from vidfeat.pipeline import driver

    made = []
    monkeypatch.setattr(driver, "FeatureWriter", lambda output, **kwargs: made.append((output.name, kwargs["grow"])))
    monkeypatch.setattr(driver, "_settings", lambda *args: {})
    options = SimpleNamespace(embedding_dtype="float16", overwrite=False, retry_failed=False, commit_seconds=10.0)
    card = SimpleNamespace(classes=["a"])
    for name in ("feats.h5", "00003-of-00008.h5"):
        driver.open_writer(tmp_path / name, card, None, options, 8)
    assert made == [("feats.h5", True), ("00003-of-00008.h5", False)]
    shard = tmp_path / "feats.h5.shards" / "00000-of-00002.h5"
    shard.parent.mkdir()
    _write(shard, [1, 3], grow=False)
    _write(shard, [2], grow=False)
    assert not segments_path(shard).exists()
    with open_features(shard) as f:
        assert f.videos.path.tolist() == ["v00001.mp4", "v00002.mp4", "v00003.mp4"]


def test_export_manifest_names_every_segment(base, tmp_path):
    from vidfeat.retrieval.export import export

    grown = _copy(base, tmp_path)
    _write(grown, [27])
    with open_features(grown) as f:
        export(f, tmp_path / "out", format="npy")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    names = [s["name"] for s in manifest["source"]["segments"]]
    assert names == ["000000.h5", "000001.h5"] and manifest["source"]["format_version"] == 4
    assert "segments" not in manifest["settings"] and "segment_videos" not in manifest["settings"]
    data = np.load(tmp_path / "out" / "embeddings.npy")
    assert data.shape == (8020, WIDE)
    np.testing.assert_allclose(data[-20:], _video(27).embedding.astype(np.float16))


def test_a_writer_removes_what_a_kill_left_in_the_segments_folder(base, tmp_path):
    grown = _copy(base, tmp_path)
    _write(grown, [29])
    folder = segments_path(grown)
    (folder / "000002.h5").write_bytes(b"a segment no top file refers to")
    (folder / "000002.h5.tmp").write_bytes(b"half written")
    with open_writer(grown, settings=SETTINGS, classes=["a", "b", "c", "d"], embedding_dim=WIDE):
        pass
    assert sorted(p.name for p in folder.iterdir()) == ["000000.h5", "000001.h5"]
    (tmp_path / "p").mkdir()
    plain = _copy(base, tmp_path / "p")
    segments_path(plain).mkdir()
    (segments_path(plain) / "000000.h5").write_bytes(b"a link a kill left")
    with open_writer(plain, settings=SETTINGS, classes=["a", "b", "c", "d"], embedding_dim=WIDE):
        pass
    assert not segments_path(plain).exists() and plain.exists()



def test_without_hard_links_the_file_is_assembled(base, tmp_path, monkeypatch):
    """A filesystem without hard links (some network and FUSE mounts): the plain file cannot
    get its second name, so the run assembles one file as before, and leaves no folder."""
    import errno
    import os

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    grown = _copy(base, tmp_path)
    monkeypatch.setattr(os, "link", no_links)
    _write(grown, [31])
    assert not segments_path(grown).exists()
    with open_features(grown) as f:
        assert f.attrs["format_version"] == 3 and len(f.videos) == 401 and "v00031.mp4" in set(f.videos.path)


@pytest.mark.parametrize("block", [7, 1 << 16])
def test_verify_checks_a_grown_file_segment_by_segment(base, tmp_path, monkeypatch, block):
    """Sorted within each segment (a block boundary or a segment start is no fault), unique
    across segments (a k-way merge of the segments' sorted runs)."""
    from vidfeat.store import check

    monkeypatch.setattr(check, "_VIDEO_BLOCK", block)
    grown = _copy(base, tmp_path)
    _write(grown, [33, 35, 37])
    assert verify(grown) == []
    segment = segments_path(grown) / "000001.h5"
    with h5py.File(segment, "r+") as h5:
        h5["videos/path"][0] = "v00002.mp4"  # still sorted within its segment; v00002.mp4 is in segment 0
    assert verify(grown) == ["videos/path not unique: v00002.mp4 is in more than one segment"]
    with h5py.File(segment, "r+") as h5:
        h5["videos/path"][0] = "v00033.mp4"
        h5["videos/path"][1] = "v00099.mp4"  # after v00037.mp4's place: unsorted within the segment
    assert verify(grown) == ["videos/path not sorted and unique within its segment at row 402 (v00037.mp4)"]



# a file with captions


def _captioned(base: Path, tmp_path: Path) -> Path:
    """A copy of ``base`` whose videos v00000 and v00400 have captions."""
    out = _copy(base, tmp_path)
    with open_features(out) as f:
        rows = [f.videos.index("v00000.mp4"), f.videos.index("v00400.mp4")]
    set_captions(out, CaptionTable(np.array([rows[0], rows[0], rows[1]]), np.array([0.0, 10.0, 30.0]),
                                   np.array([5.0, 12.0, 31.0]), np.array(["hello", "there", "later"], dtype=object)),
                 source="first.json", warnings={"no_captions": 398})  # fmt: skip
    return out


def _clip_texts(path: Path) -> dict[str, list[str]]:
    with open_features(path) as f:
        return {name: f.clips(name).text.tolist() for name in f.videos.path.astype(str)}


def test_a_file_with_captions_grows_by_a_segment_and_keeps_them(base, tmp_path):
    """Growth of a captioned file writes the new videos (their empty caption table and "" texts)
    and a top file that maps /captions and /clips/text too; the old captions stay, plain h5py
    reads /captions/video as rows of the whole file, and compacting gives the plain file an
    assembly of every video would."""
    (tmp_path / "g").mkdir()
    grown = _captioned(base, tmp_path / "g")
    texts = _clip_texts(grown)
    new_data = 4 * 20 * (WIDE * 2 + 4 * 4 + 28 + 16)  # as above, and an empty string a clip
    size = grown.stat().st_size
    before = _written_bytes()
    _write(grown, [1, 201, 401, 799])
    grew = _written_bytes() - before
    assert grew < 2 * new_data + 300_000 and grew < size / 5, (grew, size)
    assert sorted(p.name for p in segments_path(grown).iterdir()) == ["000000.h5", "000001.h5"]
    assert verify(grown) == []
    with open_features(grown) as f:
        assert f.attrs["format_version"] == 4 and f.attrs["captions_source"] == "first.json"
        assert f.captions("v00400.mp4") == [(30.0, 31.0, "later")] and f.captions("v00401.mp4") == []
        new_texts = {name: f.clips(name).text.tolist() for name in ("v00001.mp4", "v00799.mp4")}
    assert new_texts == {"v00001.mp4": [""] * 20, "v00799.mp4": [""] * 20}
    assert {k: v for k, v in _clip_texts(grown).items() if k in texts} == texts
    with h5py.File(grown, "r") as h5:  # no vidfeat: the virtual datasets
        video = h5["captions/video"][()]
        assert h5["captions/video"].is_virtual and h5["clips/text"].shape == (8080,)
        assert [h5["videos/path"].asstr()[v] for v in video] == ["v00000.mp4", "v00000.mp4", "v00400.mp4"]

    whole = _captioned(base, tmp_path)
    _write(whole, [1, 201, 401, 799], grow=False)
    assert not segments_path(whole).exists()
    assert compact(grown) is not None and not segments_path(grown).exists()
    assert_same_content(grown, whole)


def _caption_json(path: Path, ids: dict[str, list[tuple[float, float, str]]]) -> Path:
    path.write_text(json.dumps({vid: {"start": [c[0] for c in caps], "end": [c[1] for c in caps],
                                      "text": [c[2] for c in caps]} for vid, caps in ids.items()}))  # fmt: skip
    return path


def test_captions_of_a_growth_rewrite_its_segment_only(base, tmp_path):
    """add_captions(last_growth=True) (what `vidfeat extract --captions` does after a run that
    grew a captioned file) gives the new videos the source's captions by rewriting their segment
    alone: it writes about that segment, reads the source for the new videos only (the old ones'
    entries are neither warned about nor used), and the old captions stay as they were."""
    from vidfeat.captions.attach import add_captions

    grown = _captioned(base, tmp_path)
    texts = _clip_texts(grown)
    _write(grown, [1, 201, 401, 799])
    segment = segments_path(grown) / "000001.h5"
    source = _caption_json(tmp_path / "caption.json", {
        "v00000": [(0.0, 100.0, "changed")],  # an old video: left as it is
        "v00201": [(4.0, 9.0, "new one")],
        "v00799": [(0.0, 3.0, "a"), (2.0, 6.0, "b")],
        "elsewhere": [(0.0, 1.0, "x")],  # in no file
    })  # fmt: skip
    size = segment.stat().st_size
    before = _written_bytes()
    report = add_captions(grown, source, last_growth=True)
    written = _written_bytes() - before
    assert written < 2.5 * size + 300_000 and written < base.stat().st_size / 5, (written, size)
    assert (report.videos, report.captioned_videos, report.captions, report.new_only) == (4, 2, 3, True)
    # elsewhere; v00001 and v00401; these results record no first-frame time (taken as 0)
    assert report.counts == {"unknown_video": 1, "no_captions": 2, "first_frame_unknown": 2}
    assert report.clips_with_text == 5  # v00201: clips at 0 and 4 s; v00799: 0, 4, 8 (8 s clips every 4 s)
    assert sorted(p.name for p in segments_path(grown).iterdir()) == ["000000.h5", "000002.h5"]
    assert verify(grown) == []
    with open_features(grown) as f:
        assert f.captions("v00201.mp4") == [(4.0, 9.0, "new one")]
        assert f.clips("v00799.mp4").text[:4].tolist() == ["a b", "b", "", ""]
        assert f.attrs["captions_source"] == f"first.json; {source}"
        assert json.loads(f.attrs["captions_warnings"]) == {"first_frame_unknown": 2, "no_captions": 400,
                                                            "unknown_video": 1}  # fmt: skip
    assert {k: v for k, v in _clip_texts(grown).items() if k in texts} == texts


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_while_captioning_a_growth_leaves_the_old_or_the_new_file(base, tmp_path, when):
    """SIGKILL at every file operation of set_last_captions: the file verifies (the old one or
    the new one), and running it again gives the uninterrupted result with no file left over."""
    from test_store import _count_file_ops, killed_at
    from vidfeat.store.amend import set_last_captions

    start = _captioned(base, tmp_path)
    _write(start, [1, 201])
    table = CaptionTable(np.array([1]), np.array([4.0]), np.array([9.0]), np.array(["new"], dtype=object))
    job = dict(first_frame_sec=np.zeros(2), source="second.json")
    (tmp_path / "expected").mkdir()
    expected = tmp_path / "expected" / "feats.h5"
    shutil.copytree(segments_path(start), segments_path(expected))
    shutil.copy(start, expected)
    with pytest.MonkeyPatch.context() as m:
        count = _count_file_ops(m.setattr, None, when)
        set_last_captions(expected, table, **job)
    assert count[0] >= 8
    for kill_at in range(1, count[0] + 1):
        (tmp_path / f"k{kill_at}").mkdir()
        out = tmp_path / f"k{kill_at}" / "feats.h5"
        shutil.copytree(segments_path(start), segments_path(out))
        shutil.copy(start, out)
        killed_at(kill_at, when, lambda: set_last_captions(out, table, **job))
        assert verify(out) == [], kill_at
        set_last_captions(out, table, **job)
        assert verify(out) == [], kill_at
        with h5py.File(out, "r") as h5:
            referred = sorted(str(n) for n in h5.attrs["segments"])
        assert sorted(p.name for p in segments_path(out).iterdir()) == referred, kill_at
        assert _clip_texts(out) == _clip_texts(expected), kill_at
