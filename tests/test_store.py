"""The output file: round trip, deterministic order, resume, settings checks, crash safety, verify."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidfeat import store
from vidfeat.errors import SettingsMismatch, StoreError
from vidfeat.store import FeatureWriter, VideoResult, open_features, parts_path, summarize, verify
from vidfeat.store.amend import compact
from vidfeat.store.segments import segments_path

D, C = 16, 5
CLASSES = [f"class {i}" for i in range(C - 1)] + ["ünïcode class"]
SETTINGS = {
    "model": "timesformer_base_8x224.k400",
    "weights_sha256": "ab12" * 16,
    "num_frames": 8,
    "fps": 0.9375,
    "stride_sec": 4.2666,
    "input_size": 224,
    "mean": [0.45, 0.45, 0.45],
    "std": [0.225, 0.225, 0.225],
    "decoder": "pyav",
    "crops": 1,
}
# Names chosen to exercise the sort order ('-' < '.' < '/' in code points) and UTF-8.
PATHS = [
    "a.mp4", "a-b.mp4", "a/b.mp4", "a/c/d.mkv", "b/1.mp4", "b/10.mp4", "b/2.mp4", "clips/x.webm",
    "été/vidéo.mp4", "日本/動画.mp4", "z.avi", "Z.avi", "nested/deep/er/v.mp4", "short.mp4",
]
FAILED = {"z.avi"}
PARTIAL = {"b/10.mp4"}


def make_result(path: str, version: int = 0, status: str | None = None) -> VideoResult:
    """A deterministic result for ``path``; ``version`` changes its mtime and values."""
    seed = zlib.crc32(path.encode())
    rng = np.random.default_rng(seed + 1000 * version)
    status = status or ("failed" if path in FAILED else "partial" if path in PARTIAL else "ok")
    n = 0 if status == "failed" else 1 + seed % 4
    start = np.arange(n) * 4.2666
    duration = float("nan") if path == "short.mp4" else n * 4.2666 + 4.0
    return VideoResult(
        path=path,
        status=status,
        error={"ok": "", "partial": "decoding stopped at 3.2 s: invalid data", "failed": "no video stream"}[status],
        size_bytes=1000 + seed % 1000,
        mtime=1.7e9 + seed % 1000 + version + 0.25,
        duration_sec=duration,
        fps=None if status == "failed" else 30.0,
        width=0 if status == "failed" else 320,
        height=0 if status == "failed" else 240,
        embedding=rng.standard_normal((n, D)).astype(np.float32),
        logits=(rng.standard_normal((n, C)) * 3).astype(np.float32),
        start_sec=start,
        end_sec=start + 7.5,
        valid_frames=np.full(n, 8, np.int32) if n < 2 else np.r_[np.full(n - 1, 8), 3].astype(np.int32),
    )


def open_writer(out: Path, **kwargs) -> FeatureWriter:
    kwargs.setdefault("settings", SETTINGS)
    kwargs.setdefault("classes", CLASSES)
    kwargs.setdefault("embedding_dim", D)
    kwargs.setdefault("flush_videos", 3)
    return FeatureWriter(out, **kwargs)


def write_all(out: Path, paths=PATHS, **kwargs) -> Path:
    with open_writer(out, **kwargs) as writer:
        for path in paths:
            writer.add(make_result(path))
        return writer.finalize()


def content(path: Path) -> dict:
    """Everything a file holds except the attrs that record when and with what it was made."""
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {
            k: json.dumps(store._canon(v)) for k, v in f.attrs.items() if k not in store.VOLATILE_ATTRS
        }

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj.asstr()[()].tolist() if h5py.check_string_dtype(obj.dtype) else obj[()]
                out[name] = (obj.dtype.str, obj.shape, data)

        f.visititems(visit)
    return out


def assert_same_content(a: Path, b: Path) -> None:
    ca, cb = content(a), content(b)
    assert ca.keys() == cb.keys()
    assert ca["attrs"] == cb["attrs"]
    for name in ca:
        if name == "attrs":
            continue
        (dta, sha, da), (dtb, shb, db) = ca[name], cb[name]
        assert (dta, sha) == (dtb, shb), name
        if isinstance(da, list):
            assert da == db, name
        else:
            assert np.array_equal(da, db, equal_nan=da.dtype.kind == "f"), name


def by_video(path: Path) -> dict:
    """What a file holds per video, whatever its row order (a grown file's /videos is sorted
    within each segment): path -> its /videos values but the offset, and its clips' columns."""
    out = {}
    with h5py.File(path, "r") as f:
        videos = {name: (f[f"videos/{name}"].asstr()[()] if h5py.check_string_dtype(f[f"videos/{name}"].dtype)
                         else f[f"videos/{name}"][()]) for name in f["videos"]}  # fmt: skip
        clips = {name: f[f"clips/{name}"][()] for name in f["clips"] if name != "video"}
        video_of = f["clips/video"][()]
        for v, name in enumerate(videos["path"].tolist()):
            lo, n = int(videos["clip_offset"][v]), int(videos["clip_count"][v])
            assert (video_of[lo : lo + n] == v).all(), name
            row = {key: column[v] for key, column in videos.items() if key != "clip_offset"}
            row.update({f"clips/{key}": column[lo : lo + n] for key, column in clips.items()})
            out[name] = row
    return out


def assert_same_videos(a: Path, b: Path) -> None:
    va, vb = by_video(a), by_video(b)
    assert sorted(va) == sorted(vb)
    for name in va:
        for key, value in va[name].items():
            assert np.array_equal(np.asarray(value), np.asarray(vb[name][key]),
                                  equal_nan=np.asarray(value).dtype.kind == "f"), (name, key)  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The file of one uninterrupted run, videos added in PATHS order."""
    return write_all(tmp_path_factory.mktemp("reference") / "feats.h5")


# round trip and format


def test_round_trip_keeps_every_value(reference):
    with open_features(reference) as f:
        attrs = f.attrs
        for key, value in SETTINGS.items():
            assert attrs[key] == value
        assert attrs["format"] == "vidfeat" and attrs["format_version"] == 3  # a plain file: version 4 is a grown one
        assert attrs["vidfeat_version"] and "created" in attrs and "torch_version" in attrs
        assert f.classes == CLASSES
        assert list(f.videos.path) == sorted(PATHS)
        assert len(f) == sum(make_result(p).num_clips for p in PATHS)
        for path in PATHS:
            want = make_result(path)
            got = f.clips(path)
            assert len(got) == want.num_clips
            np.testing.assert_array_equal(got.embedding, want.embedding.astype(np.float16))
            np.testing.assert_array_equal(got.logits, want.logits)
            np.testing.assert_array_equal(got.start_sec, want.start_sec)
            np.testing.assert_array_equal(got.end_sec, want.end_sec)
            np.testing.assert_array_equal(got.valid_frames, want.valid_frames)
            v = f.videos.index(path)
            assert f.videos.status[v] == want.status and f.videos.error[v] == want.error
            assert f.videos.size_bytes[v] == want.size_bytes and f.videos.mtime[v] == want.mtime
            assert np.array_equal(f.videos.duration_sec[v], want.duration_sec, equal_nan=True)
            assert np.array_equal(f.videos.fps[v], np.float64("nan") if want.fps is None else want.fps, equal_nan=True)
            assert (f.videos.width[v], f.videos.height[v]) == (want.width, want.height)
            if len(got):
                assert f.video_of(got.first_row) == path
        row = f.clips("a/b.mp4").first_row
        logits = make_result("a/b.mp4").logits[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = f.topk(row, k=3)
        assert [name for name, _ in top] == [CLASSES[i] for i in np.argsort(-p)[:3]]
        np.testing.assert_allclose([prob for _, prob in top], np.sort(p)[::-1][:3], rtol=1e-12)
        with pytest.raises(KeyError):
            f.clips("missing.mp4")
    assert verify(reference) == []


def test_file_follows_the_hdf5_contract_for_plain_h5py(reference):
    with h5py.File(reference, "r") as f:
        assert set(f) == {"videos", "clips", "classes"}
        for name in ("path", "status", "error"):
            info = h5py.check_string_dtype(f[f"videos/{name}"].dtype)
            assert info is not None and info.encoding == "utf-8" and info.length is None
        assert f["videos/size_bytes"].dtype == np.int64 and f["videos/mtime"].dtype == np.float64
        assert f["videos/clip_offset"].dtype == np.int64 and f["videos/clip_count"].dtype == np.int64
        assert f["clips/embedding"].dtype == np.float16 and f["clips/logits"].dtype == np.float32
        assert f["clips/video"].dtype == np.int64 and f["clips/valid_frames"].dtype == np.int32
        assert f["clips/start_sec"].dtype == np.float64
        assert f["clips/embedding"].chunks is not None and f["clips/embedding"].maxshape == (None, D)
        offsets, counts, video = f["videos/clip_offset"][()], f["videos/clip_count"][()], f["clips/video"][()]
        np.testing.assert_array_equal(video, np.repeat(np.arange(len(counts)), counts))
        np.testing.assert_array_equal(offsets, np.cumsum(counts) - counts)
        failed = f["videos/status"].asstr()[()] == "failed"
        assert (counts[failed] == 0).all() and failed.sum() == len(FAILED)


def test_float32_embeddings_on_request(tmp_path):
    out = write_all(tmp_path / "f32.h5", paths=PATHS[:3], embedding_dtype="float32")
    with open_features(out) as f:
        assert f.embeddings.dtype == np.float32
        np.testing.assert_array_equal(f.clips("a.mp4").embedding, make_result("a.mp4").embedding)
        assert f.load_embeddings(np.float64).dtype == np.float64


def test_empty_run_gives_a_valid_empty_file(tmp_path):
    out = write_all(tmp_path / "empty.h5", paths=[])
    with open_features(out) as f:
        assert len(f) == 0 and len(f.videos) == 0 and f.embeddings.shape == (0, D)
    assert verify(out) == []
    assert summarize(out)["status"] == {"ok": 0, "partial": 0, "failed": 0}


def test_summarize_counts_and_reasons(reference):
    info = summarize(reference)
    json.dumps(info)  # `vidfeat info --json`
    assert info["settings"]["model"] == SETTINGS["model"] and "created" not in info["settings"]
    assert info["status"] == {"ok": len(PATHS) - 2, "partial": 1, "failed": 1}
    assert info["videos"] == len(PATHS) and info["classes"] == C and info["embedding_dim"] == D
    assert info["clips"] == sum(make_result(p).num_clips for p in PATHS)
    assert info["failed"] == [{"path": "z.avi", "error": "no video stream", "clips": 0}]
    assert [p["path"] for p in info["partial"]] == ["b/10.mp4"]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(path="/abs/x.mp4"), "relative"),
        (dict(path="a/../x.mp4"), "relative"),
        (dict(status="done"), "status"),
        (dict(embedding=np.zeros((1, D + 1), np.float32)), "embedding has shape"),
        (dict(logits=np.zeros((1, C - 1), np.float32)), "logits has shape"),
        (dict(status="failed"), "no clips"),
        (dict(valid_frames=np.array([1.5])), "integers"),
    ],
)
def test_inconsistent_results_are_refused(tmp_path, change, message):
    base = dict(vars(make_result("a.mp4")))
    base.update(embedding=base["embedding"][:1], logits=base["logits"][:1], start_sec=base["start_sec"][:1],
                end_sec=base["end_sec"][:1], valid_frames=base["valid_frames"][:1])
    base.update(change)
    with open_writer(tmp_path / "f.h5") as writer:
        with pytest.raises(ValueError, match=message):
            writer.add(VideoResult(**base))


def test_multiline_errors_become_one_line(tmp_path):
    result = make_result("z.avi")
    result.error = "ffmpeg said:\nInvalid data\r\nfound"
    with open_writer(tmp_path / "f.h5") as writer:
        writer.add(result)
        out = writer.finalize()
    with open_features(out) as f:
        assert f.videos.error[0] == "ffmpeg said: Invalid data found"


# order and resume


@settings(max_examples=12, deadline=None)
@given(order=st.permutations(PATHS), flush=st.integers(1, 6), split=st.integers(0, len(PATHS)))
def test_file_is_the_same_whatever_the_order_and_resume_history(tmp_path_factory, reference, order, flush, split):
    out = tmp_path_factory.mktemp("order") / "feats.h5"
    with open_writer(out, flush_videos=flush) as writer:  # stopped after `split` videos
        for path in order[:split]:
            writer.add(make_result(path))
    with open_writer(out, flush_videos=flush) as writer:
        for path in order:
            if not writer.is_done(path, make_result(path).size_bytes, make_result(path).mtime):
                writer.add(make_result(path))
        writer.finalize()
    assert_same_content(out, reference)
    assert not parts_path(out).exists()


def test_resume_skips_done_videos_and_merges_with_the_final_file(tmp_path, reference):
    out = tmp_path / "feats.h5"
    write_all(out, paths=PATHS[:5])
    with open_writer(out) as writer:
        for path in PATHS:
            want = make_result(path)
            assert writer.is_done(path, want.size_bytes, want.mtime) == (path in PATHS[:5])
            assert not writer.is_done(path, want.size_bytes + 1, want.mtime)
            assert not writer.is_done(path, want.size_bytes, want.mtime + 1)
        for path in PATHS[5:9]:
            writer.add(make_result(path))
            assert writer.is_done(path, make_result(path).size_bytes, make_result(path).mtime)  # buffered counts
    # not finalized: the final file still holds 5 videos, the parts hold 4 more
    with open_features(out) as f:
        assert len(f.videos) == 5
    with open_writer(out) as writer:
        done = [p for p in PATHS if writer.is_done(p, make_result(p).size_bytes, make_result(p).mtime)]
        assert done == PATHS[:9]
        for path in PATHS[9:]:
            writer.add(make_result(path))
        writer.finalize()
    # the 9 new videos were added as a segment (vidfeat.store.segments): the same videos, and
    # after compaction the same file
    assert_same_videos(out, reference)
    assert verify(out) == []
    assert compact(out) is not None
    assert_same_content(out, reference)


def test_newer_result_for_a_path_replaces_the_older(tmp_path):
    out = write_all(tmp_path / "feats.h5", paths=PATHS[:4])
    newer = make_result("a/b.mp4", version=1)
    with open_writer(out) as writer:
        assert not writer.is_done(newer.path, newer.size_bytes, newer.mtime)
        writer.add(make_result("a/b.mp4", version=2))  # replaced again within the run
        writer.add(newer)
        writer.finalize()
    with open_features(out) as f:
        assert list(f.videos.path) == sorted(PATHS[:4])
        assert f.videos.mtime[f.videos.index("a/b.mp4")] == newer.mtime
        np.testing.assert_array_equal(f.clips("a/b.mp4").logits, newer.logits)
        np.testing.assert_array_equal(f.clips("a.mp4").logits, make_result("a.mp4").logits)
    assert verify(out) == []


def test_failed_videos_are_done_unless_retry_failed(tmp_path):
    out = write_all(tmp_path / "feats.h5", paths=["z.avi", "a.mp4"])
    failed = make_result("z.avi")
    with open_writer(out) as writer:
        assert writer.is_done("z.avi", failed.size_bytes, failed.mtime)
    with open_writer(out, retry_failed=True) as writer:
        assert not writer.is_done("z.avi", failed.size_bytes, failed.mtime)
        assert writer.is_done("a.mp4", make_result("a.mp4").size_bytes, make_result("a.mp4").mtime)
        writer.add(make_result("z.avi", status="ok"))
        writer.finalize()
    with open_features(out) as f:
        assert f.videos.status.tolist() == ["ok", "ok"] and len(f.clips("z.avi")) > 0


def test_finalize_after_an_interrupted_run_keeps_what_finished(tmp_path, reference):
    out = tmp_path / "feats.h5"
    with pytest.raises(KeyboardInterrupt):
        with open_writer(out, flush_videos=100) as writer:
            try:
                for i, path in enumerate(PATHS):
                    if i == 6:
                        raise KeyboardInterrupt  # Ctrl-C while the 7th video is in flight
                    writer.add(make_result(path))
            except KeyboardInterrupt:
                writer.finalize()
                raise
    with open_features(out) as f:
        assert list(f.videos.path) == sorted(PATHS[:6])
    assert verify(out) == [] and not parts_path(out).exists()
    write_all(out)  # the rerun adds the rest (and re-adds the first six: same values)
    assert_same_content(out, reference)


def test_leaving_the_block_on_an_error_commits_the_buffer(tmp_path):
    out = tmp_path / "feats.h5"
    with pytest.raises(RuntimeError):
        with open_writer(out, flush_videos=100) as writer:
            writer.add(make_result("a.mp4"))
            raise RuntimeError("decoder crashed")
    with open_writer(out) as writer:
        assert writer.is_done("a.mp4", make_result("a.mp4").size_bytes, make_result("a.mp4").mtime)
        with pytest.raises(StoreError, match="closed"):
            writer.close()
            writer.add(make_result("b/1.mp4"))


def test_assembly_in_small_blocks_gives_the_same_file(tmp_path, reference, monkeypatch):
    monkeypatch.setattr(store.format, "BLOCK_BYTES", 200)  # a few rows per copy step
    monkeypatch.setattr(store.final, "_DATASET_CHUNK_BYTES", 64)
    out = tmp_path / "feats.h5"
    write_all(out, paths=PATHS[::2])
    write_all(out, paths=PATHS[1::2], grow=False)  # merge: the previous final file plus new chunks
    assert_same_content(out, reference)
    assert verify(out) == []


# settings


def test_other_settings_are_refused_and_overwrite_replaces(tmp_path):
    out = write_all(tmp_path / "feats.h5", paths=PATHS[:3])
    other = {**SETTINGS, "model": "timesformer_large_96x224.k400", "weights_sha256": "cd34" * 16}
    with pytest.raises(SettingsMismatch) as err:
        open_writer(out, settings=other)
    message = str(err.value)
    assert "feats.h5 was made with model timesformer_base_8x224.k400 (weights sha256 ab12ab12ab12…)" in message
    assert "--overwrite" in message and "-o" in message and "\n" not in message
    with pytest.raises(SettingsMismatch, match="num_frames=8 there, 16 now"):
        open_writer(out, settings={**SETTINGS, "num_frames": 16})
    with pytest.raises(SettingsMismatch, match=r'/classes\[4\]="ünïcode class" there, "other" now'):
        open_writer(out, classes=CLASSES[:-1] + ["other"])
    with pytest.raises(SettingsMismatch, match=r"/classes=\[5 items\] there, \[6 items\] now"):
        open_writer(out, classes=CLASSES + ["other"])
    with pytest.raises(SettingsMismatch, match='/clips/embedding dtype="float16" there, "float32" now'):
        open_writer(out, embedding_dtype="float32")
    with pytest.raises(SettingsMismatch, match="/clips/embedding width=16 there, 32 now"):
        open_writer(out, embedding_dim=32)
    with pytest.raises(SettingsMismatch, match="crops"):
        open_writer(out, settings={k: v for k, v in SETTINGS.items() if k != "crops"})
    with open_writer(out, settings=other, overwrite=True) as writer:
        assert not writer.is_done("a.mp4", make_result("a.mp4").size_bytes, make_result("a.mp4").mtime)
        writer.add(make_result("b/1.mp4"))
        writer.finalize()
    with open_features(out) as f:
        assert f.attrs["model"] == other["model"] and list(f.videos.path) == ["b/1.mp4"]


def test_unfinished_parts_with_other_settings_are_refused(tmp_path):
    out = tmp_path / "feats.h5"
    with open_writer(out) as writer:
        writer.add(make_result("a.mp4"))
    with pytest.raises(SettingsMismatch, match="unfinished work .* resume"):
        open_writer(out, settings={**SETTINGS, "stride_sec": 2.0})
    with open_writer(out, settings={**SETTINGS, "stride_sec": 2.0}, overwrite=True) as writer:
        assert not writer.is_done("a.mp4", make_result("a.mp4").size_bytes, make_result("a.mp4").mtime)
        assert writer.committed_chunks == []


def test_settings_needs_the_contract_keys(tmp_path):
    with pytest.raises(ValueError, match="weights_sha256"):
        open_writer(tmp_path / "f.h5", settings={k: v for k, v in SETTINGS.items() if k != "weights_sha256"})
    with pytest.raises(ValueError, match="created"):
        open_writer(tmp_path / "f.h5", settings={**SETTINGS, "created": "yesterday"})


def test_a_foreign_file_is_not_overwritten_silently(tmp_path):
    out = tmp_path / "feats.h5"
    with h5py.File(out, "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a vidfeat file.*--overwrite"):
        open_writer(out)
    with pytest.raises(StoreError, match="not a vidfeat file"):
        open_features(out)
    out.write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="cannot read output"):
        open_writer(out)


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "feats.h5"
    with open_writer(out):
        with pytest.raises(StoreError, match="another vidfeat process"):
            open_writer(out)
    with open_writer(out):  # released
        pass


def test_a_forked_child_does_not_keep_the_output_locked(tmp_path):
    """Decode workers are forked while the writer is open and share its lock file description."""
    out = tmp_path / "feats.h5"
    writer = open_writer(out)
    assert not os.get_inheritable(writer._output_lock._fd)  # not passed on to programs started with exec
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child closes its copy of the writer, then lives until the parent closes the pipe
        os.close(write_end)
        writer._release()
        os.write(ready_write, b"x")
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        assert os.read(ready_read, 1) == b"x"
        writer.add(make_result("a.mp4"))
        with pytest.raises(StoreError) as err:  # the first writer is still open: refused
            open_writer(out)
        assert str(err.value) == (
            f"another vidfeat process is writing {out} (it holds {parts_path(out) / 'lock'}): "
            "wait for it to finish or choose another -o"
        )
        writer.close()
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # the child still lives
        with open_writer(out) as second:  # the same process runs again on the same output
            assert second.is_done("a.mp4", make_result("a.mp4").size_bytes, make_result("a.mp4").mtime)
            second.add(make_result("b/1.mp4"))
            second.finalize()
    finally:
        for fd in (write_end, ready_read, ready_write):
            os.close(fd)
        os.waitpid(pid, 0)
    with open_features(out) as f:
        assert f.videos.path.tolist() == ["a.mp4", "b/1.mp4"]


# crash safety


def test_leftover_temporary_files_are_removed(tmp_path, reference):
    out = tmp_path / "feats.h5"
    with open_writer(out) as writer:
        writer.add(make_result(PATHS[0]))
    parts = parts_path(out)
    (parts / "chunk-000002.h5.tmp").write_bytes(b"\x89HDF half written")
    (parts / "assembling.h5.tmp").write_bytes(b"half")
    with open_writer(out) as writer:
        assert sorted(p.name for p in parts.iterdir()) == ["chunk-000001.h5", "lock", "settings.json", "tables.jsonl"]
        for path in PATHS[1:]:
            writer.add(make_result(path))
        writer.finalize()
    assert_same_content(out, reference)


_FILE_OPS = ("fsync", "replace", "unlink", "rmdir", "link")


def _count_file_ops(patch, kill_at: int | None, when: str) -> list[int]:
    """Count the operations that commit work; SIGKILL this process at op number ``kill_at``.

    The ops: ``os.fsync/replace/unlink/rmdir`` (killed before or after the op, also one that
    raised) and, with
    ``when="before"``, closing an HDF5 file, so that kills also leave a chunk or the final file
    written but never closed. ``patch(obj, name, value)`` installs the wrappers.
    """
    count = [0]

    def counted(real):
        def wrapped(*args, **kwargs):
            count[0] += 1
            if count[0] == kill_at and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                return real(*args, **kwargs)
            finally:  # after the op, whether it returned or raised (an unlink of a missing file)
                if count[0] == kill_at and when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)

        return wrapped

    for name in _FILE_OPS:
        patch(os, name, counted(getattr(os, name)))
    if when == "before":
        patch(h5py.File, "close", counted(h5py.File.close))
    return count


def killed_at(kill_at: int, when: str, job) -> None:
    """Run ``job()`` in a forked child that SIGKILLs itself at file operation ``kill_at``
    (:func:`_count_file_ops`), and check that it died so."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            _count_file_ops(setattr, kill_at, when)  # dies with the child
            job()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, kill_at


_CRASH_START = PATHS[:4]  # in the final file before the job
_CRASH_ADDS = PATHS[7:11] + ["a/b.mp4"]  # four new videos and a newer result for a/b.mp4
_CRASH_GROWS = PATHS[7:11]  # new videos only: added as a segment (vidfeat.store.segments)


def _crash_result(path: str) -> VideoResult:
    return make_result(path, version=1 if path == "a/b.mp4" else 0)


def _crash_job(out: Path, resume: bool = False, adds=_CRASH_ADDS) -> None:
    """Add ``adds`` (skipping those done if ``resume``) to the file and finalize."""
    with open_writer(out, flush_videos=2) as writer:
        for path in adds:
            result = _crash_result(path)
            if not (resume and writer.is_done(path, result.size_bytes, result.mtime)):
                writer.add(result)
        writer.finalize()


@pytest.mark.slow
@pytest.mark.parametrize("job", ["replace", "grow"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_at_every_file_operation_then_resume_gives_the_same_file(tmp_path, monkeypatch, when, job):
    """``replace``: the job replaces a video, so the file is assembled again; ``grow``: it only
    adds videos, which become a segment. After a kill at any file operation the file is the old
    or the new one, and the rerun gives the file of an uninterrupted job (the same videos; the
    same file but where the kill came after the grown file was in place and before the work
    directory was gone: the rerun then assembles one plain file), and nothing is left over."""
    adds = _CRASH_ADDS if job == "replace" else _CRASH_GROWS
    start = tmp_path / "start.h5"
    write_all(start, paths=_CRASH_START)
    expected = tmp_path / "expected" / "feats.h5"
    expected.parent.mkdir()
    shutil.copy(start, expected)
    with monkeypatch.context() as m:
        count = _count_file_ops(m.setattr, None, when)
        _crash_job(expected, adds=adds)
    assert segments_path(expected).is_dir() == (job == "grow")
    total = count[0]
    assert total >= (30 if when == "before" else 15)
    for kill_at in range(1, total + 1):
        out = tmp_path / f"kill{kill_at}" / "feats.h5"
        out.parent.mkdir()
        shutil.copy(start, out)
        killed_at(kill_at, when, lambda: _crash_job(out, adds=adds))
        assert verify(out) == [], kill_at  # the old or the new final file, never a broken one
        _crash_job(out, resume=True, adds=adds)  # rerun the same command
        assert verify(out) == [], kill_at
        with h5py.File(out, "r") as h5:
            referred = sorted(str(n) for n in store._canon(h5.attrs.get("segments", [])))
        left = sorted(p.name for p in segments_path(out).iterdir()) if segments_path(out).exists() else []
        assert left == referred and not parts_path(out).exists(), kill_at
        if referred or job == "replace":
            assert_same_content(out, expected)
        else:
            assert_same_videos(out, expected)
        assert not parts_path(out).exists()


def test_disk_full_keeps_committed_chunks(tmp_path, reference, monkeypatch):
    out = tmp_path / "feats.h5"
    real_fsync = os.fsync
    full = [False]

    def fsync(fd):
        if full[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StoreError) as err:
        with open_writer(out, flush_videos=2) as writer:
            for path in PATHS[:4]:
                writer.add(make_result(path))
            full[0] = True
            for path in PATHS[4:]:
                writer.add(make_result(path))
    message = str(err.value)
    assert "No space left on device" in message and "4 videos committed before are kept" in message
    assert "\n" not in message
    parts = parts_path(out)
    assert sorted(p.name for p in parts.iterdir()) == ["chunk-000001.h5", "chunk-000002.h5", "lock", "settings.json", "tables.jsonl"]
    full[0] = False  # space freed: rerun
    with open_writer(out) as writer:
        done = [p for p in PATHS if writer.is_done(p, make_result(p).size_bytes, make_result(p).mtime)]
        assert done == PATHS[:4]
        for path in PATHS[4:]:
            writer.add(make_result(path))
        writer.flush()
        full[0] = True
        with pytest.raises(StoreError, match="cannot assemble .* No space left"):
            writer.finalize()
        assert not out.exists() and not (parts / "assembling.h5.tmp").exists()
        full[0] = False
        writer.finalize()
    assert_same_content(out, reference)


def test_a_real_write_error_from_hdf5_is_a_store_error(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 KiB fail (EFBIG) in a forked child: a real HDF5 error."""
    out = tmp_path / "feats.h5"
    report = tmp_path / "report.txt"
    big = make_result("big.mp4")
    n = 3000
    big.embedding, big.logits = np.ones((n, D), np.float32), np.zeros((n, C), np.float32)
    big.start_sec, big.end_sec, big.valid_frames = np.zeros(n), np.ones(n), np.ones(n, np.int32)
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
            with open_writer(out, flush_videos=1, embedding_dtype="float32") as writer:
                writer.add(make_result("a.mp4"))
                try:
                    writer.add(big)
                except StoreError as exc:
                    report.write_text(str(exc))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert report.read_text() == (
        f"cannot write chunk-000002.h5 in {parts_path(out)}: File too large; the 1 videos committed before are "
        "kept: free space (or fix the cause) and rerun the same command to resume"
    )  # one line: HDF5's own multi-line description of the failed write is left out
    with open_writer(out, embedding_dtype="float32") as writer:
        assert writer.is_done("a.mp4", make_result("a.mp4").size_bytes, make_result("a.mp4").mtime)
        assert not writer.is_done("big.mp4", big.size_bytes, big.mtime)
        assert [p.name for p in writer.committed_chunks] == ["chunk-000001.h5"]


def test_unwritable_output_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="file.txt is not a directory"):
        open_writer(blocker / "feats.h5")
    with pytest.raises(StoreError, match="does not exist"):
        open_writer(tmp_path / "missing" / "feats.h5")

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    with monkeypatch.context() as m:  # what a read-only directory does to a non-root user
        m.setattr(Path, "mkdir", refuse)
        with pytest.raises(StoreError, match=r"cannot write in .*: Permission denied; choose another -o"):
            open_writer(tmp_path / "feats.h5")


def test_read_only_directory_for_real(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:
            (locked / "probe").write_text("x")
        except PermissionError:
            pass
        else:
            pytest.skip("this user can write in a read-only directory (root)")
        with pytest.raises(StoreError, match="Permission denied"):
            open_writer(locked / "feats.h5")
    finally:
        locked.chmod(0o700)


def test_an_unfinished_output_is_named_so(tmp_path):
    out = tmp_path / "feats.h5"
    with open_writer(out) as writer:
        writer.add(make_result("a.mp4"))
    for read in (open_features, summarize, verify):
        with pytest.raises(StoreError, match="not finished yet .* 1 committed chunks.*resume"):
            read(out)


# verify


def _with(path: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "broken.h5"
    shutil.copy(path, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return copy


def _set(name: str, index, value):
    def edit(f):
        data = f[name][()]
        data[index] = value
        f[name][...] = data

    return edit


def _drop_class(f):
    names = f["classes"].asstr()[()][:-1]
    del f["classes"]
    f.create_dataset("classes", data=names.astype(object), dtype=h5py.string_dtype())


@pytest.mark.parametrize(
    "edit, fault",
    [
        (_set("clips/embedding", (3, 2), np.nan), "clips/embedding: rows with NaN or inf: 3"),
        (_set("clips/logits", (0, 0), np.inf), "clips/logits: rows with NaN or inf: 0"),
        (_set("videos/clip_offset", 2, 99), "clip_offset not contiguous"),
        (_set("videos/clip_count", 0, 9), "clip_count sums to"),
        (_set("clips/video", 4, 0), "clips/video does not match"),
        (_set("clips/end_sec", 1, 1e6), "times beyond the video's duration_sec"),
        (_set("clips/start_sec", 1, 1e3), "start_sec > end_sec"),
        (_set("clips/valid_frames", 2, 0), "valid_frames outside [1, 8]"),
        (_set("clips/valid_frames", 2, 9), "valid_frames outside [1, 8]"),
        (_set("videos/status", -2, "failed"), "failed videos with clips"),  # b/1.mp4 has clips
        (_set("videos/status", 0, "done"), "not ok|partial|failed"),
        (_set("videos/path", 1, "a"), "not sorted"),
        (_drop_class, "clips/logits has shape"),
        (lambda f: f.attrs.__delitem__("weights_sha256"), "weights_sha256 is missing"),
        (lambda f: f.__delitem__("clips/video"), "missing datasets: clips/video"),
    ],
)
def test_verify_catches_injected_faults(tmp_path, edit, fault):
    small = write_all(tmp_path / "small.h5", paths=["a-b.mp4", "a.mp4", "b/1.mp4", "z.avi"])
    assert verify(small) == []
    faults = verify(_with(small, tmp_path, edit))
    assert any(fault in line for line in faults), faults


# full disk


def _big_result(path: str, n: int = 300) -> VideoResult:
    """A result with ``n`` clips (about 35 KB in a chunk file)."""
    result = make_result(path, status="ok")
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    result.embedding = rng.standard_normal((n, D)).astype(np.float32)
    result.logits = rng.standard_normal((n, C)).astype(np.float32)
    result.start_sec = np.arange(n) * 0.5
    result.end_sec = result.start_sec + 0.4
    result.valid_frames = np.full(n, 8, np.int32)
    result.duration_sec = n * 0.5 + 1
    return result


_BIG_PATHS = [f"big/{i:02d}.mp4" for i in range(10)]


def _big_run(out: Path, finalize: bool = True) -> FeatureWriter:
    with open_writer(out, flush_videos=1, embedding_dtype="float32") as writer:
        for path in _BIG_PATHS:
            if not writer.is_done(path, _big_result(path).size_bytes, _big_result(path).mtime):
                writer.add(_big_result(path))
        if finalize:
            writer.finalize()
    return writer


@pytest.fixture(scope="module")
def big_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("big") / "feats.h5"
    _big_run(out)
    return out


def _assert_parts_intact(out: Path) -> None:
    parts = parts_path(out)
    names = sorted(p.name for p in parts.iterdir())
    assert names == [f"chunk-{i:06d}.h5" for i in range(1, 11)] + ["lock", "settings.json", "tables.jsonl"]
    assert not out.exists()
    with open_writer(out, embedding_dtype="float32") as writer:  # every committed video is still done
        assert all(writer.is_done(p, _big_result(p).size_bytes, _big_result(p).mtime) for p in _BIG_PATHS)


def test_too_little_free_space_is_one_line_before_assembly(tmp_path, monkeypatch, big_reference):
    out = tmp_path / "feats.h5"
    _big_run(out, finalize=False)
    real = shutil.disk_usage

    def little(path):
        usage = real(path)
        return usage._replace(free=200_000)

    monkeypatch.setattr(shutil, "disk_usage", little)
    with open_writer(out, embedding_dtype="float32") as writer:
        with pytest.raises(StoreError) as err:
            writer.finalize()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot assemble {out}: it needs about 0.5 MB in {parts_path(out)}, which has 0.2 MB free")
    assert (f"the 10 committed videos in {parts_path(out)} are kept: free at least 0.3 MB there and rerun the same "
            "command to finish") in message
    _assert_parts_intact(out)
    monkeypatch.setattr(shutil, "disk_usage", real)
    _big_run(out)
    assert_same_content(out, big_reference)


def test_free_space_estimate_covers_the_real_file(big_reference, reference):
    from vidfeat.store.assemble import _needed_bytes
    from vidfeat.store.format import _read_table

    for path in (big_reference, reference):
        with h5py.File(path, "r") as f:
            table = _read_table(f)
            needed = _needed_bytes(table, list(f["classes"].asstr()[()]), f["clips/embedding"].shape[1],
                                   f["clips/embedding"].dtype)
        size = path.stat().st_size
        assert size <= needed <= 2 * size + (1 << 20), (size, needed)


def _assemble_with_file_limit_main() -> None:
    """Run in a subprocess: commit the big run, then assemble with writes past 150 KB failing (EFBIG)."""
    out, limit = Path(sys.argv[1]), int(sys.argv[2])
    writer = _big_run(out, finalize=False)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    with open_writer(out, embedding_dtype="float32") as writer:
        try:
            writer.finalize()
        except StoreError as exc:
            print(str(exc), flush=True)
    # a normal interpreter exit: HDF5 shuts down here, where a half-closed file crashes it


def _run_child(main: str, *args: str) -> subprocess.CompletedProcess:
    tests = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {tests!r}); import test_store; test_store.{main}()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_a_write_error_during_assembly_is_one_line_and_no_crash(tmp_path, big_reference):
    """A real HDF5 write error in the middle of the assembled file (the free-space check passed)."""
    out = tmp_path / "feats.h5"
    child = _run_child("_assemble_with_file_limit_main", str(out), str(150_000))
    assert (child.returncode, child.stderr) == (0, "")  # no segfault, no traceback printed by h5py
    assert child.stdout.splitlines() == [
        f"cannot assemble {out}: File too large; the 10 committed videos in {parts_path(out)} are kept: "
        "free space (or fix the cause) and rerun the same command to finish"
    ]
    assert not (parts_path(out) / "assembling.h5.tmp").exists()
    _assert_parts_intact(out)
    _big_run(out)
    assert_same_content(out, big_reference)


def _small_disk_main() -> None:
    """Run in a subprocess on a small filesystem: the big run, finalize; print the error if any."""
    try:
        _big_run(Path(sys.argv[1]))
    except StoreError as exc:
        print(str(exc), flush=True)


@pytest.fixture
def small_fs(tmp_path):
    """A mount point for a small tmpfs (``mount(size)``; remount to resize); skips where mounting is refused."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        options = f"remount,size={size}" if mounted else f"size={size}"
        command = ["mount", "-o", options, str(mnt)] if mounted else ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        mounted.append(size)
        return mnt

    yield mount
    if mounted:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_a_really_full_filesystem_at_assembly(small_fs, big_reference):
    """A 600 KB tmpfs: the chunks fit, the final file beside them does not; then space is freed."""
    out = small_fs("600k") / "feats.h5"
    child = _run_child("_small_disk_main", str(out))
    assert (child.returncode, child.stderr) == (0, "")
    [line] = child.stdout.splitlines()
    assert line.startswith(f"cannot assemble {out}: it needs about 0.5 MB") and "rerun the same command" in line
    _assert_parts_intact(out)
    small_fs("2m")
    child = _run_child("_small_disk_main", str(out))
    assert (child.returncode, child.stdout, child.stderr) == (0, "", "")
    assert_same_content(out, big_reference)


def test_a_really_full_filesystem_while_committing(small_fs, big_reference):
    """A 200 KB tmpfs fills up while chunks are committed: one line, the earlier chunks kept."""
    out = small_fs("200k") / "feats.h5"
    child = _run_child("_small_disk_main", str(out))
    assert (child.returncode, child.stderr) == (0, "")
    [line] = child.stdout.splitlines()
    kept = sorted(p.name for p in parts_path(out).iterdir() if p.name.startswith("chunk-"))
    assert 1 <= len(kept) < len(_BIG_PATHS) and kept == [f"chunk-{i:06d}.h5" for i in range(1, len(kept) + 1)]
    assert line == (f"cannot write chunk-{len(kept) + 1:06d}.h5 in {parts_path(out)}: No space left on device; the "
                    f"{len(kept)} videos committed before are kept: free space (or fix the cause) and rerun the "
                    "same command to resume")
    small_fs("2m")
    child = _run_child("_small_disk_main", str(out))
    assert (child.returncode, child.stdout, child.stderr) == (0, "", "")
    assert_same_content(out, big_reference)


def _fill(directory: Path, leave: int = 0) -> None:
    """Fill the filesystem of ``directory`` to the last byte, as another process would, then free
    ``leave`` bytes."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, b"\1" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - leave)


def _without_fallocate() -> None:
    """This process's filesystem refuses fallocate (as some NFS mounts do): reservation falls back."""

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    os.posix_fallocate = unsupported


def _fill_after_the_check(directory: Path, leave: int) -> None:
    """Another "process" fills ``directory``'s filesystem (leaving ``leave`` bytes) right after
    this process's first free-space check."""
    real_usage, calls = shutil.disk_usage, []

    def disk_usage(path):
        usage = real_usage(path)
        if not calls:
            _fill(directory, leave)
        calls.append(path)
        return usage

    shutil.disk_usage = disk_usage


def _full_disk_main() -> None:
    """Run in a subprocess on a small filesystem: commit the big run, then finalize with the disk
    filled by another "process" right after the free-space check (``check``, leaving ``leave``
    bytes free) or once assembly has begun (``write``), or not at all (``none``);
    ``no-fallocate``: a filesystem without fallocate. Prints the error if any."""
    from vidfeat.store import assemble

    out, when, reserve, leave = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    _big_run(out, finalize=False)
    if reserve == "no-fallocate":
        _without_fallocate()
    if when == "check":
        _fill_after_the_check(out.parent, leave)
    elif when == "write":
        real_write = assemble._write

        def write(*args, **kwargs):
            _fill(out.parent, leave)
            real_write(*args, **kwargs)

        assemble._write = write
    try:
        _big_run(out)
    except StoreError as exc:
        print(str(exc), flush=True)


@pytest.mark.parametrize("reserve", ["fallocate", "no-fallocate"])
@pytest.mark.parametrize("leave", [0, 64 << 10])  # the file cannot be created / its space cannot be reserved
def test_a_disk_filled_by_another_process_after_the_check(small_fs, big_reference, reserve, leave):
    """The free-space check passes, then the disk fills up before anything is written."""
    from vidfeat.store.assemble import _needed_bytes
    from vidfeat.store.format import _read_table
    from vidfeat.store.final import mb as _mb

    with h5py.File(big_reference, "r") as f:
        needed = _needed_bytes(_read_table(f), CLASSES, D, np.dtype(np.float32))
    out = small_fs("2m") / "feats.h5"
    child = _run_child("_full_disk_main", str(out), "check", reserve, str(leave))
    assert (child.returncode, child.stderr) == (0, "")  # no segfault, nothing printed by h5py
    assert child.stdout.splitlines() == [
        f"cannot assemble {out}: it needs about {_mb(needed)} in {parts_path(out)}, which has {_mb(leave)} free; "
        f"the 10 committed videos in {parts_path(out)} are kept: free at least {_mb(needed - leave)} there and "
        "rerun the same command to finish"
    ]
    _assert_parts_intact(out)  # no output, no assembling.h5.tmp, every chunk there
    (out.parent / "filler").unlink()  # space freed: rerun the same command
    child = _run_child("_full_disk_main", str(out), "none", reserve, "0")
    assert (child.returncode, child.stdout, child.stderr) == (0, "", "")
    assert_same_content(out, big_reference)


@pytest.mark.parametrize("reserve", ["fallocate", "no-fallocate"])
def test_the_reserved_space_survives_a_disk_filled_during_assembly(small_fs, big_reference, reserve):
    """Once assembly has reserved the file's space, filling the disk cannot make it fail."""
    out = small_fs("2m") / "feats.h5"
    child = _run_child("_full_disk_main", str(out), "write", reserve, "0")
    assert (child.returncode, child.stdout, child.stderr) == (0, "", "")  # no segfault, no error
    assert_same_content(out, big_reference)
    assert not parts_path(out).exists()
    size = out.stat().st_size
    assert size == big_reference.stat().st_size  # the reserved tail was cut off
    assert out.stat().st_blocks * 512 <= size + 4096


# file size


def test_a_small_run_gives_a_small_file(tmp_path):
    """768-d embeddings, 400 classes, 3 videos with 8 clips: real sizes."""
    dim, classes = 768, [f"class {i}" for i in range(400)]
    out = tmp_path / "feats.h5"
    with FeatureWriter(out, settings=SETTINGS, classes=classes, embedding_dim=dim) as writer:
        for path, n in (("a.mp4", 2), ("b.mp4", 3), ("c.mp4", 3)):
            result = make_result(path, status="ok")
            result.embedding, result.logits = np.ones((n, dim), np.float32), np.zeros((n, 400), np.float32)
            result.start_sec, result.end_sec = np.arange(n) * 4.0, np.arange(n) * 4.0 + 7.5
            result.valid_frames, result.duration_sec = np.full(n, 8, np.int32), 4.0 * n + 4
            writer.add(result)
        writer.finalize()
    assert out.stat().st_size < 200_000
    with h5py.File(out, "r") as f:
        assert f["clips/embedding"].chunks == (8, dim) and f["videos/path"].chunks == (3,)
    assert verify(out) == []


def test_large_files_keep_1_mib_chunks():
    from vidfeat.store.final import dataset_chunks as _dataset_chunks

    assert _dataset_chunks((10**6, 768), np.float16) == (682, 768)
    assert _dataset_chunks((10**6,), np.float64) == (65536,)
    assert _dataset_chunks((100,), np.float64) == (100,)
    assert _dataset_chunks((0, 768), np.float16) == (1, 768)


# format version 2: per-video means, warnings


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_per_video_means(reference):
    with open_features(reference) as f:
        assert f.format_version == 3  # plain
        emb_mean, scores_mean = f.embedding_mean[()], f.scores_mean[()]
        assert emb_mean.dtype == scores_mean.dtype == np.float32
        assert emb_mean.shape == (len(PATHS), D) and scores_mean.shape == (len(PATHS), C)
        for v, path in enumerate(f.videos.path):
            want = make_result(path)
            if want.num_clips == 0:
                assert np.isnan(emb_mean[v]).all() and np.isnan(scores_mean[v]).all()
                continue
            np.testing.assert_allclose(emb_mean[v], want.embedding.astype(np.float16).astype(np.float64).mean(0),
                                       rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(scores_mean[v], _softmax(want.logits).mean(0), rtol=1e-6, atol=1e-7)
            assert abs(float(scores_mean[v].sum()) - 1) < 1e-5


def test_means_stream_in_blocks_and_match(tmp_path, reference, monkeypatch):
    monkeypatch.setattr(store.format, "BLOCK_BYTES", 150)  # 1 row per step: videos span several blocks
    out = write_all(tmp_path / "feats.h5")
    assert_same_content(out, reference)
    assert verify(out) == []


@pytest.mark.parametrize("name, row", [("embedding_mean", 1), ("scores_mean", 0)])
def test_verify_checks_the_means(tmp_path, reference, name, row):
    def edit(f):
        data = f[f"videos/{name}"][()]
        data[row, 1] += 0.01
        f[f"videos/{name}"][...] = data

    faults = verify(_with(reference, tmp_path, edit))
    path = sorted(PATHS)[row]
    assert faults == [f"videos/{name} differs from the mean of the video's clips: {path}"]


def test_warnings_are_stored_and_summarized(tmp_path):
    out = tmp_path / "feats.h5"
    with open_writer(out) as writer:
        for path in PATHS[:4]:
            result = make_result(path)
            if path == "a/b.mp4":
                result.warning = "sampling at 30 fps from a 10 fps video:\n66% repeated frames"
            writer.add(result)
        writer.finalize()
    with open_features(out) as f:
        assert f.videos.warning.tolist() == ["", "", "sampling at 30 fps from a 10 fps video: 66% repeated frames", ""]
    info = summarize(out)
    assert info["format_version"] == 3 and info["warnings"] == 1
    assert info["warned"] == [{"path": "a/b.mp4", "warning": "sampling at 30 fps from a 10 fps video: 66% repeated frames"}]
    from click.testing import CliRunner

    from vidfeat.cli import main

    shown = CliRunner().invoke(main, ["info", str(out)]).output.splitlines()
    assert "format_version: 3" in shown and "warnings: 1" in shown
    assert shown[shown.index("warned (1):") + 1] == "  a/b.mp4: sampling at 30 fps from a 10 fps video: 66% repeated frames"
    broken = _with(out, tmp_path, _set("videos/warning", 0, "two\nlines"))
    assert verify(broken) == ["videos/warning with more than one line: a-b.mp4"]


def _as_version_1(path: Path, tmp_path: Path) -> Path:
    """A version-1 file: the layout before /videos/warning and the means."""
    def edit(f):
        for name in ("videos/warning", "videos/embedding_mean", "videos/scores_mean"):
            del f[name]
        f.attrs["format_version"] = 1

    v1 = _with(path, tmp_path, edit)
    return v1.rename(tmp_path / "v1.h5")


def test_version_1_files_stay_readable(tmp_path, reference):
    v1 = _as_version_1(reference, tmp_path)
    assert verify(v1) == []
    with open_features(v1) as f:
        assert f.format_version == 1 and f.embedding_mean is None and f.scores_mean is None
        assert f.videos.warning.tolist() == [""] * len(PATHS)
        np.testing.assert_array_equal(f.clips("a/b.mp4").logits, make_result("a/b.mp4").logits)
    info = summarize(v1)
    assert info["format_version"] == 1 and info["warnings"] == 0 and info["warned"] == []
    from click.testing import CliRunner

    from vidfeat.cli import main

    shown = CliRunner().invoke(main, ["info", str(v1)])
    assert shown.exit_code == 0 and "format_version: 1" in shown.output.splitlines()
    # a version-1 file missing a dataset it does need is still a fault
    assert verify(_with(v1, tmp_path, lambda f: f.__delitem__("videos/error"))) == ["missing datasets: videos/error"]


def test_resuming_a_version_1_file_writes_version_2(tmp_path, reference):
    first = write_all(tmp_path / "first.h5", paths=PATHS[:5])
    out = _as_version_1(first, tmp_path)
    write_all(out)  # the rest, merged with the version-1 file
    assert_same_content(out, reference)
    assert verify(out) == []


def test_a_setting_new_to_this_version_is_a_mismatch_not_a_crash(tmp_path):
    out = write_all(tmp_path / "feats.h5", paths=PATHS[:2])
    with pytest.raises(SettingsMismatch) as err:
        open_writer(out, settings={**SETTINGS, "dtype": "bf16", "root": "/data/videos"})
    message = str(err.value)
    assert "\n" not in message
    assert message == ('feats.h5 was made with other settings (dtype not set there (now "bf16"); root not set there '
                       '(now "/data/videos")): rerun with --overwrite to replace it, or choose another -o')


def test_stored_settings_read_the_final_file_else_the_unfinished_work(tmp_path):
    from vidfeat.store import stored_settings

    out = tmp_path / "f.h5"
    assert stored_settings(out) == {}
    writer = open_writer(out)
    writer.add(make_result("a.mp4"))
    writer.flush()  # committed, not assembled: only the work directory's manifest knows the settings
    unfinished = stored_settings(out)
    assert not out.exists() and unfinished["model"] == SETTINGS["model"]
    writer.finalize()
    writer.close()
    final = stored_settings(out)
    assert final["model"] == SETTINGS["model"] and "format_version" not in final
    out.write_bytes(b"not hdf5")
    assert stored_settings(out) == {}


def _reopened_done(out: Path, monkeypatch) -> tuple[dict, list[str]]:
    """The writer's done table after reopening ``out``'s work directory, and the chunk files it
    opened to build it."""
    import vidfeat.store.writer as writer_module

    opened, real = [], writer_module._open_h5

    def counting(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(writer_module, "_open_h5", counting)
    with open_writer(out) as writer:
        done = dict(writer._done.items())
    monkeypatch.setattr(writer_module, "_open_h5", real)
    return done, [name for name in opened if name.startswith("chunk-")]


def test_a_resumed_run_reads_the_tables_log_not_every_chunk(tmp_path, monkeypatch):
    """Reopening a work directory reads one log of the chunks' tables; a chunk the log does not
    list (a kill before its line), lists with another size, or a torn last line, is read from
    the chunk itself, and what the writer knows is the same either way."""
    out = tmp_path / "feats.h5"
    with open_writer(out, flush_videos=1) as writer:
        for path in PATHS[:6]:
            writer.add(make_result(path))
    parts = parts_path(out)
    log = parts / "tables.jsonl"
    chunks = sorted(p.name for p in parts.glob("chunk-*.h5"))
    assert len(chunks) == 6 and len(log.read_text().splitlines()) == 6
    expected = {p: (make_result(p).size_bytes, make_result(p).mtime, make_result(p).status) for p in PATHS[:6]}

    done, opened = _reopened_done(out, monkeypatch)
    assert done == expected and opened == []

    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:4]) + lines[4][:-7])  # chunk 6 never listed, chunk 5's line torn
    done, opened = _reopened_done(out, monkeypatch)
    assert done == expected and opened == chunks[4:]
    assert log.read_bytes() == b"".join(lines[:4])  # the torn line is cut off

    with open_writer(out, flush_videos=1) as writer:  # the next append starts its own line
        writer.add(make_result(PATHS[6]))
    expected[PATHS[6]] = (make_result(PATHS[6]).size_bytes, make_result(PATHS[6]).mtime, "ok")
    done, opened = _reopened_done(out, monkeypatch)
    assert done == expected and opened == chunks[4:]

    entry = json.loads(log.read_text().splitlines()[0])  # a chunk that is not the one listed
    entry["bytes"] += 1
    log.write_text("\n".join([json.dumps(entry), *log.read_text().splitlines()[1:]]) + "\n")
    done, opened = _reopened_done(out, monkeypatch)
    assert done == expected and opened == [chunks[0], *chunks[4:]]

    with open_writer(out) as writer:
        writer.finalize()
    assert not parts.exists()
    with open_features(out) as f:
        assert sorted(f.videos.path) == sorted(PATHS[:7])


def test_a_failed_append_to_the_tables_log_loses_nothing(tmp_path, monkeypatch):
    out = tmp_path / "feats.h5"
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("tables.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    import builtins

    with open_writer(out, flush_videos=1) as writer:
        writer.add(make_result(PATHS[0]))
        monkeypatch.setattr(builtins, "open", failing_open)
        writer.add(make_result(PATHS[1]))
        monkeypatch.setattr(builtins, "open", real_open)
        writer.add(make_result(PATHS[2]))
    done, opened = _reopened_done(out, monkeypatch)
    assert set(done) == set(PATHS[:3]) and opened == ["chunk-000002.h5"]
