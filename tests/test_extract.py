"""`vidfeat extract` end to end: outputs, exact times, bad inputs, resume after SIGKILL, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from checkpoints import save_tiny_model
from held import HANG_GUARD_SEC, held_command, kill_at_chunks, start_held, wait_held
from videos import (
    make_audio_only,
    make_corrupt_middle,
    make_empty,
    make_still_image,
    make_text,
    make_truncated_header,
    make_truncated_tail,
    make_video,
    make_zero_length_stream,
)
from vidfeat.cli import main
from vidfeat.errors import VidfeatError
from vidfeat.video.sampling import ClipSampling
from vidfeat.store import open_features, summarize, verify
from vidfeat.video.transforms import normalize, spatial_crops
from vidfeat.video.reader import ClipReader
from vidfeat.model.weights import load_model

torch.set_num_threads(2)
FPS = 4.0  # the tiny model samples 8 frames at 4 fps: 2 s clips, 1 s stride


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def good_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "a").mkdir()
    (root / "b").mkdir()
    make_video(root / "a" / "clip.mp4", seconds=3.0, fps=25)
    make_video(root / "b" / "clip.mp4", seconds=4.2, fps=30, size=(80, 48))  # same name, other folder
    make_video(root / "naïve name é.MP4", seconds=0.6, fps=24)  # sub-second, upper-case extension
    make_video(root / "vfr.mkv", frame_times=[0, 0.05, 0.3, 0.32, 1.0, 1.4, 1.45, 2.2, 2.9], size=(64, 64))
    (root / "notes.txt").write_text("not a video, not listed")
    return root


def run(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def extract_args(inputs, out, model_dir, *extra):
    return ["extract", *inputs, "-o", out, "--model", model_dir, "--workers", "0", "--quiet", *extra]


def assert_same_file(a: Path, b: Path, atol=0.0):
    """Identical content (float tolerance for embeddings), attrs except the creation stamp."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        ignore = {"created", "vidfeat_version", "torch_version"}
        assert {k: str(v) for k, v in fa.attrs.items() if k not in ignore} == {
            k: str(v) for k, v in fb.attrs.items() if k not in ignore
        }
        names = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        assert names and sorted(names) == sorted(
            n for n in _datasets(fb)
        ), "same datasets"
        for name in names:
            x, y = fa[name][()], fb[name][()]
            if x.dtype.kind in "fc" and atol:
                np.testing.assert_allclose(x.astype(np.float64), y.astype(np.float64), atol=atol, err_msg=name)
            else:
                np.testing.assert_array_equal(x, y, err_msg=name)


def _datasets(f):
    out = []
    f.visit(lambda n: out.append(n) if isinstance(f[n], h5py.Dataset) else None)
    return out


def test_extract_layout_times_and_values(tmp_path, good_videos, model_dir):
    out = tmp_path / "feats.h5"
    result = run(extract_args([good_videos], out, model_dir))
    assert result.exit_code == 0, result.output
    assert verify(out) == []
    model = load_model(model_dir)
    sampling = ClipSampling(8, FPS)
    with open_features(out) as f:
        assert list(f.videos.path) == ["a/clip.mp4", "b/clip.mp4", "naïve name é.MP4", "vfr.mkv"]
        assert set(f.videos.status) == {"ok"}
        assert f.classes == model.card.classes
        assert f.attrs["model"] == "random.tiny" and f.attrs["stride_sec"] == 1.0
        assert f.h5["clips/embedding"].dtype == np.float16 and f.embeddings.shape == (len(f), 64)
        # 3.0 s video, 2 s clips every 1 s: clips at 0 and 1 (clip 1 reaches the end)
        a = f.clips("a/clip.mp4")
        np.testing.assert_array_equal(a.start_sec, [0.0, 1.0])
        np.testing.assert_allclose(a.end_sec, [1.72, 2.72])  # frame shown at 0+7/4=1.75 s is frame 43 (1.72 s)
        np.testing.assert_array_equal(a.valid_frames, [8, 8])
        # 0.6 s video: one padded clip, 3 real frames (targets 0, 0.25, 0.5)
        short = f.clips("naïve name é.MP4")
        assert len(short) == 1 and short.valid_frames[0] == 3
        np.testing.assert_allclose(short.end_sec, [0.5])
        # variable frame rate: the frame shown at each target, by PTS
        vfr = f.clips("vfr.mkv")
        np.testing.assert_allclose(vfr.start_sec, [0.0, 1.0])
        # the last frame (2.9 s) lasts 0.04 s, so the video ends at 2.94 and clip 1 (1-3 s) reaches it;
        # targets 1.75 and 2.75 show the frames stamped 1.45 and 2.2
        np.testing.assert_allclose(vfr.end_sec, [1.45, 2.2])
        np.testing.assert_array_equal(vfr.valid_frames, [8, 8])
        # embeddings and logits equal the model run directly on the decoded clips
        with ClipReader(good_videos / "b" / "clip.mp4", sampling, short_side=32) as reader:
            frames = [c.frames for c in reader]
        crops = torch.from_numpy(np.stack([spatial_crops(fr, 32, 1)[0] for fr in frames]))
        with torch.no_grad():
            feats = model.forward_features(normalize(crops, model.card.preprocess.mean, model.card.preprocess.std))
            logits = model.forward_head(feats)
        b = f.clips("b/clip.mp4")
        np.testing.assert_allclose(b.embedding.astype(np.float32), feats.numpy(), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(b.logits, logits.numpy(), atol=1e-5, rtol=1e-5)
        top = f.topk(b.first_row, k=2)
        assert top[0][0] == model.card.classes[int(logits[0].argmax())] and top[0][1] >= top[1][1]


def test_workers_and_batch_size_do_not_change_the_file(tmp_path, good_videos, model_dir):
    run(extract_args([good_videos], tmp_path / "one.h5", model_dir, "--batch-size", "1"))
    result = run(["extract", good_videos, "-o", tmp_path / "two.h5", "--model", model_dir, "--workers", "2",
                  "--batch-size", "5", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_same_file(tmp_path / "one.h5", tmp_path / "two.h5", atol=1e-3)


def test_three_crops_and_float32(tmp_path, good_videos, model_dir):
    out = tmp_path / "f.h5"
    result = run(extract_args([good_videos / "b"], out, model_dir, "--crops", "3", "--embedding-dtype", "float32"))
    assert result.exit_code == 0, result.output
    with open_features(out) as f:
        assert f.attrs["crops"] == 3 and f.embeddings.dtype == np.float32
        assert list(f.videos.path) == ["clip.mp4"]


BAD = {
    "empty.mp4": (make_empty, "failed", "empty"),
    "text.mp4": (make_text, "failed", "not a readable video"),
    "header.mp4": (make_truncated_header, "failed", "not a readable video"),
    "audio.mp4": (make_audio_only, "failed", "audio"),
    "still.mp4": (lambda p: make_still_image(p, codec="png"), "failed", "image"),
    "zero.mkv": (make_zero_length_stream, "failed", ""),
}


def test_bad_inputs_each_get_a_status_and_reason_and_the_run_goes_on(tmp_path, model_dir):
    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "good.mp4", seconds=2.5)
    for name, (maker, _, _) in BAD.items():
        maker(root / name)
    tail = root / "tail.mp4"
    make_video(tail, seconds=8.0, faststart=True)
    make_truncated_tail(tail, keep_fraction=0.4)
    mid = root / "middle.mp4"
    make_video(mid, seconds=6.0, faststart=True)
    make_corrupt_middle(mid)
    out = tmp_path / "feats.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "vidfeat", *map(str, extract_args([root], out, model_dir))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    with open_features(out) as f:
        table = {r["path"]: r for r in f.videos.records()}
    assert table["good.mp4"]["status"] == "ok" and table["good.mp4"]["clip_count"] == 2
    for name, (_, status, reason) in BAD.items():
        row = table[name]
        assert row["status"] == status and row["clip_count"] == 0, row
        assert reason in row["error"].lower() and row["error"], row
        assert "\n" not in row["error"]
        assert f"vidfeat: failed: {name}: {row['error']}" in proc.stderr
    assert table["tail.mp4"]["status"] == "partial" and 0 < table["tail.mp4"]["clip_count"] < 7
    assert table["middle.mp4"]["status"] in {"ok", "partial"}  # FFmpeg may conceal the damage
    assert verify(out) == []
    # a rerun skips everything; --retry-failed tries the failed ones again (and only those)
    cli = [sys.executable, "-m", "vidfeat", *map(str, extract_args([root], out, model_dir))]
    again = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert again.returncode == 3 and f"{len(table)} already done" in again.stderr  # the file still holds failures
    retry = subprocess.run([*cli, "--retry-failed"], capture_output=True, text=True, timeout=300)
    failed = sum(r["status"] == "failed" for r in table.values())
    assert retry.returncode == 3 and f"{failed} failed this run, {len(table) - failed} already done" in retry.stderr


def test_settings_mismatch_refused_unless_overwrite(tmp_path, good_videos, model_dir):
    out = tmp_path / "f.h5"
    assert run(extract_args([good_videos / "a"], out, model_dir)).exit_code == 0
    result = run(extract_args([good_videos / "a"], out, model_dir, "--stride", "0.5"))
    assert result.exit_code == 1 and "--overwrite" in result.output and "Traceback" not in result.output
    result = run(extract_args([good_videos / "a"], out, model_dir, "--stride", "0.5", "--overwrite"))
    assert result.exit_code == 0, result.output
    # same card name and settings, other weights: refused too (weights_sha256 differs)
    other = save_tiny_model(tmp_path / "other", seed=1)
    result = run(extract_args([good_videos / "a"], out, other, "--stride", "0.5"))
    assert result.exit_code == 1 and "weights sha256" in result.output
    with open_features(out) as f:
        assert f.attrs["stride_sec"] == 0.5
        np.testing.assert_allclose(f.clips("clip.mp4").start_sec, [0.0, 0.48, 1.0])  # frames shown at 0, 0.5, 1


def test_rerun_skips_done_videos_and_adds_new_ones(tmp_path, good_videos, model_dir):
    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "one.mp4", seconds=2.0)
    out = tmp_path / "f.h5"
    assert run(extract_args([root], out, model_dir)).exit_code == 0
    make_video(root / "two.mp4", seconds=2.0)
    proc = subprocess.run([sys.executable, "-m", "vidfeat", *map(str, extract_args([root], out, model_dir))],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 already done" in proc.stderr and "1 ok" in proc.stderr
    with open_features(out) as f:
        assert list(f.videos.path) == ["one.mp4", "two.mp4"]


def test_captions_of_a_rerun_that_grows_a_captioned_file_go_to_the_new_videos_only(tmp_path, model_dir):
    """`extract --captions` on a rerun that adds videos to a file with captions: the file grows by
    a segment and only the new videos get captions from the source (their segment is rewritten);
    the old video keeps the captions it had, though the source now says otherwise."""
    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "one.mp4", seconds=3.0)
    out = tmp_path / "f.h5"
    source = tmp_path / "caption.json"
    source.write_text(json.dumps({"one": {"start": [0.0], "end": [1.0], "text": ["first"]}}))
    assert run(extract_args([root], out, model_dir, "--captions", source)).exit_code == 0
    make_video(root / "two.mp4", seconds=3.0)
    source.write_text(json.dumps({"one": {"start": [0.0], "end": [1.0], "text": ["changed"]},
                                  "two": {"start": [0.5], "end": [1.5], "text": ["second"]}}))  # fmt: skip
    result = run(extract_args([root], out, model_dir, "--captions", source))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}: 1 captions for 1 of 1 videos this run added; 2 of their clips have text\n"
    assert summarize(out)["segments"] == 2 and verify(out) == []
    with open_features(out) as f:
        assert f.captions("one.mp4") == [(0.0, 1.0, "first")] and f.captions("two.mp4") == [(0.5, 1.5, "second")]
        assert f.clips("two.mp4").text.tolist() == ["second", "second"]  # clips at 0 and 1 s, 2 s long


def test_a_rerun_with_nothing_left_to_do_never_builds_the_model(tmp_path, model_dir, monkeypatch):
    from vidfeat.model.weights import PreparedModel

    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "one.mp4", seconds=2.0)
    out = tmp_path / "f.h5"
    built = []
    real_build = PreparedModel.build
    monkeypatch.setattr(PreparedModel, "build", lambda self, *a, **k: built.append(1) or real_build(self, *a, **k))
    assert run(extract_args([root], out, model_dir)).exit_code == 0
    assert built == [1]
    before = out.read_bytes()
    result = run(extract_args([root], out, model_dir))
    assert result.exit_code == 0 and "1 already done" in result.output
    assert built == [1], "the rerun built the model"
    assert out.read_bytes() == before


def test_list_from_stdin_and_bad_arguments(tmp_path, good_videos, model_dir):
    out = tmp_path / "f.h5"
    listing = f"{good_videos / 'a' / 'clip.mp4'}\n# a comment\n{good_videos / 'vfr.mkv'}\n"
    result = run(["extract", "--list", "-", "-o", out, "--model", model_dir, "--workers", "0", "--quiet"], input=listing)
    assert result.exit_code == 0, result.output
    with open_features(out) as f:
        assert list(f.videos.path) == ["a/clip.mp4", "vfr.mkv"]
    assert run(["extract", "-o", out]).exit_code == 2  # no input: usage error
    result = run(["extract", tmp_path / "nope", "-o", out, "--model", model_dir])
    assert result.exit_code == 1 and "input not found" in result.output
    result = run(["extract", good_videos, "-o", out, "--model", tmp_path / "nope.pth"])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_without_model_the_bundled_demo_model_is_used_and_said(tmp_path, good_videos, monkeypatch):
    out = tmp_path / "f.h5"
    result = run(["extract", good_videos / "a", "-o", out, "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "bundled demo model 'tiny-motion'" in result.output and "--model base" in result.output
    with open_features(out) as f:
        assert f.attrs["model"] == "tiny-motion" and len(f) > 0
    monkeypatch.setattr("vidfeat.model.cards.find_card", lambda name: None)  # an install without it
    result = run(["extract", good_videos / "a", "-o", tmp_path / "g.h5"])
    assert result.exit_code == 2 and "not bundled" in result.output and "--model" in result.output


def test_unwritable_output_is_a_clear_error(tmp_path, good_videos, model_dir):
    result = run(extract_args([good_videos / "a"], tmp_path / "missing-dir" / "f.h5", model_dir))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "missing-dir" in result.output


def test_info_and_verify(tmp_path, good_videos, model_dir):
    out = tmp_path / "f.h5"
    run(extract_args([good_videos], out, model_dir))
    result = run(["info", out, "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert (info["videos"], info["status"], info["failed"]) == (4, {"ok": 4, "partial": 0, "failed": 0}, [])
    assert info["settings"]["root"] == str(good_videos) and info["settings"]["model"] == "random.tiny"
    result = run(["verify", out])
    assert result.exit_code == 0 and "ok" in result.output
    with h5py.File(out, "r+") as f:
        f["clips/end_sec"][0] = 1e6  # a time far outside the video
    result = run(["verify", out])
    assert result.exit_code == 1 and "fault" in result.output


def _cli(out, model_dir, root):
    return [sys.executable, "-m", "vidfeat", *map(str, extract_args([root], out, model_dir, "--commit-every", "0"))]


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i in range(14):
        make_video(root / f"v{i:02d}.mp4", seconds=2.0 + (i % 4), fps=25)
    return root


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path, many_videos, model_dir):
    """SIGKILL at deterministic points: once 1, 4 and 9 chunks (one finished video each) are
    committed in the work directory; the final rerun equals an uninterrupted run. The last
    video is held in the killed runs (see tests/held.py), so none can finish before its point;
    batches of one clip let every video before the one in flight be committed meanwhile."""
    reference = tmp_path / "reference.h5"
    one = ["--batch-size", "1"]
    assert subprocess.run([*_cli(reference, model_dir, many_videos), *one], capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "killed.h5"
    parts = Path(str(out) + ".parts")
    for committed in (1, 4, 9):
        proc = start_held(tmp_path / "never", "v13.mp4", [*_cli(out, model_dir, many_videos)[3:], *one],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        kill_at_chunks(proc, parts, committed)
    final = subprocess.run([*_cli(out, model_dir, many_videos), *one], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert_same_file(reference, out, atol=1e-3)
    assert not parts.exists()


@pytest.mark.parametrize("to_group", [False, True], ids=["main-process", "terminal-group"])
def test_ctrl_c_leaves_a_valid_file_of_what_finished(tmp_path, many_videos, model_dir, to_group):
    """Ctrl-C in a terminal reaches the decode workers too (the process group); `kill -INT`
    reaches the main process only. Either way: exit 130, no traceback, and a valid file of the
    videos that finished. The last video is held until the signal was sent (the run cannot
    finish first); the interrupt is then taken at the next clip."""
    out, release = tmp_path / "f.h5", tmp_path / "release"
    workers = ["--workers", "2"] if to_group else []  # the group case with decode worker processes
    command = held_command(release, "v13.mp4", [*_cli(out, model_dir, many_videos)[3:], *workers])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    parts = Path(str(out) + ".parts")
    deadline = time.monotonic() + 600  # a hang guard only: the run is held until the signal
    while time.monotonic() < deadline and not any(parts.glob("*.h5")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    if to_group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    release.touch()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert verify(out) == []
    with open_features(out) as f:
        done = len(f.videos)
        assert "v13.mp4" not in set(f.videos.path)
    assert 1 <= done <= 13


class _InterruptAfterOne:
    """An executor that finishes the first video left to do (a made-up result) and is then
    interrupted, as a Ctrl-C during the second would."""

    def setup(self, options, progress):
        return options

    def workers(self, todo):
        return 0

    def run(self, job):
        from vidfeat.store import VideoResult

        video, st = job.todo[0]
        self.made_up = video.name
        dim, classes = job.writer._embedding_dim, len(job.writer._classes)
        job.record(0, VideoResult(path=video.name, status="ok", error="", size_bytes=st.st_size, mtime=st.st_mtime,
                                  duration_sec=2.0, fps=25.0, width=64, height=64,
                                  embedding=np.zeros((1, dim), np.float32), logits=np.zeros((1, classes), np.float32),
                                  start_sec=np.zeros(1), end_sec=np.full(1, 2.0), valid_frames=np.full(1, 8, np.int32)),
                   0.0, 0.0)  # fmt: skip
        raise KeyboardInterrupt


@pytest.mark.parametrize("change", ["replace", "add"])
def test_ctrl_c_finishes_the_file_only_when_that_does_not_rewrite_it(tmp_path, model_dir, change):
    """Interrupted (Ctrl-C) after one video: a run that only adds videos grows the file by them
    at once (cheap); a run whose videos replace some the file holds would rewrite the whole file,
    so it commits what finished and leaves the file as it was, for the rerun (exit 130 either
    way); the rerun finishes the rest, keeping the committed video (its made-up result)."""
    from vidfeat.pipeline.driver import ExtractOptions, extract
    from vidfeat.video.inputs import discover

    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.mp4", "b.mp4"):
        make_video(root / name, seconds=2.0)
    out = tmp_path / "f.h5"
    assert run(extract_args([root], out, model_dir)).exit_code == 0
    before = out.read_bytes()
    if change == "replace":
        os.utime(root / "a.mp4", (1.7e9, 1.7e9))  # a changed file: its result is replaced
    make_video(root / "c.mp4", seconds=2.0)
    found = discover([root], root=root)
    options = ExtractOptions(model=str(model_dir), root=str(found.root), workers=0)
    executor = _InterruptAfterOne()
    report = extract(found.videos, out, options, executor=executor)
    assert report.interrupted and report.exit_code == 130
    parts = Path(str(out) + ".parts")
    if change == "replace":
        assert report.deferred and out.read_bytes() == before
        assert len(list(parts.glob("chunk-*.h5"))) == 1
    else:
        assert not report.deferred and not parts.exists()
        with open_features(out) as f:
            assert sorted(f.videos.path) == ["a.mp4", "b.mp4", "c.mp4"]
    assert run(extract_args([root], out, model_dir)).exit_code == 0
    reference = tmp_path / "reference.h5"
    assert run(extract_args([root], reference, model_dir)).exit_code == 0
    assert verify(out) == [] and not parts.exists()
    with open_features(out) as f, open_features(reference) as g:
        assert sorted(f.videos.path) == sorted(g.videos.path) == ["a.mp4", "b.mp4", "c.mp4"]
        assert executor.made_up == ("a.mp4" if change == "replace" else "c.mp4")
        assert not f.clips(executor.made_up).embedding.any()  # committed before the interrupt: kept
        for name in {"a.mp4", "b.mp4", "c.mp4"} - {executor.made_up}:
            np.testing.assert_allclose(f.clips(name).embedding, g.clips(name).embedding, atol=1e-3)


@pytest.mark.slow
def test_sigterm_commits_what_finished_within_seconds_without_assembling(tmp_path, many_videos, model_dir):
    """A scheduler's SIGTERM (SLURM's time limit): the run stops at the next clip, commits every
    video that finished (here all of them were only buffered: --commit-every 3600), does not
    assemble the file (that takes as long as the file is big), exits 143; the rerun finishes.
    Decoding in the main process (--workers 0) with batches of one clip, the run is held in the
    last video's decode with every video before the one in flight finished: 12 of 14."""
    out, release = tmp_path / "f.h5", tmp_path / "release"
    args = [*_cli(out, model_dir, many_videos)[3:], "--workers", "0", "--batch-size", "1", "--commit-every", "3600"]
    proc = start_held(release, "v13.mp4", args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_held(proc, release)
    parts = Path(str(out) + ".parts")
    assert not list(parts.glob("chunk-*.h5"))  # nothing committed yet: 12 finished videos in the buffer
    proc.send_signal(signal.SIGTERM)
    release.touch()
    _, stderr = proc.communicate(timeout=HANG_GUARD_SEC)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(parts.glob("*.tmp"))
    committed = []
    for chunk in parts.glob("chunk-*.h5"):
        with h5py.File(chunk, "r") as h5:
            committed += h5["videos/path"].asstr()[()].tolist()
    assert sorted(committed) == [f"v{i:02d}.mp4" for i in range(12)]
    final = subprocess.run(_cli(out, model_dir, many_videos), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0 and "12 already done" in final.stderr, final.stderr
    assert verify(out) == []
    with open_features(out) as f:
        assert sorted(f.videos.path) == [f"v{i:02d}.mp4" for i in range(14)] and set(f.videos.status) == {"ok"}


def test_the_first_ctrl_c_is_deferred_to_a_safe_point_and_a_second_interrupts_at_once():
    from vidfeat.pipeline.driver import StopOnSignal

    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        stop.check()  # nothing requested yet
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next bytecode: it must not raise
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            stop.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_crashing_decode_worker_fails_its_video_and_the_run_goes_on(tmp_path, monkeypatch, model_dir):
    """A segfault inside FFmpeg kills a worker process; simulated by os._exit in the worker
    (DataLoader workers are forked, so they inherit this monkeypatch)."""
    import vidfeat.pipeline.workers as workers_module
    from vidfeat.pipeline.driver import ExtractOptions, extract
    from vidfeat.video.inputs import discover

    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.mp4", "b.mp4", "crash.mp4", "d.mp4", "e.mp4"):
        make_video(root / name, seconds=2.0)
    real = workers_module.decode_video

    def crashing(video, path, *args):
        if Path(path).name == "crash.mp4":
            os._exit(139)
        yield from real(video, path, *args)

    monkeypatch.setattr(workers_module, "decode_video", crashing)
    found = discover([root])
    options = ExtractOptions(model=str(model_dir), workers=2, commit_seconds=0, root=str(found.root))
    report = extract(found.videos, tmp_path / "f.h5", options)
    assert report.exit_code == 3
    with open_features(tmp_path / "f.h5") as f:
        table = {r["path"]: r for r in f.videos.records()}
    assert set(table) == {"a.mp4", "b.mp4", "crash.mp4", "d.mp4", "e.mp4"}
    assert table["crash.mp4"]["status"] == "failed" and "decoder crashed on this video" in table["crash.mp4"]["error"]
    assert all(table[n]["status"] == "ok" for n in ("a.mp4", "b.mp4", "d.mp4", "e.mp4"))  # no innocent victims
    assert verify(tmp_path / "f.h5") == []


def test_a_batch_lost_with_its_dying_worker_is_handled_as_the_crash(tmp_path, monkeypatch, model_dir):
    """A worker that dies right after sending a batch takes the batch's shared-memory descriptor
    with it: receiving it fails with EOFError (seen in CI). Simulated here by failing the first
    descriptor hand-over in the main process; the videos in flight are retried alone and succeed."""
    import torch.multiprocessing.reductions as reductions
    from vidfeat.pipeline.driver import ExtractOptions, extract
    from vidfeat.video.inputs import discover

    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        make_video(root / name, seconds=2.0)
    real, calls = reductions.rebuild_storage_fd, []

    def first_hand_over_fails(*args):
        calls.append(1)
        if len(calls) == 1:
            raise EOFError
        return real(*args)

    # workers (forked) pickle the rebuild function by its module and name: keep the real ones
    first_hand_over_fails.__module__, first_hand_over_fails.__qualname__ = real.__module__, real.__qualname__
    monkeypatch.setattr(reductions, "rebuild_storage_fd", first_hand_over_fails)
    found = discover([root])
    options = ExtractOptions(model=str(model_dir), workers=2, commit_seconds=0, root=str(found.root))
    report = extract(found.videos, tmp_path / "f.h5", options)
    assert len(calls) > 1 and report.exit_code == 0
    with open_features(tmp_path / "f.h5") as f:
        assert {r["path"]: r["status"] for r in f.videos.records()} == {"a.mp4": "ok", "b.mp4": "ok", "c.mp4": "ok"}
    assert verify(tmp_path / "f.h5") == []


def test_info_text_lists_failed_videos_with_reasons(tmp_path, model_dir):
    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "good.mp4", seconds=2.0)
    make_text(root / "bad.mp4")
    out = tmp_path / "f.h5"
    assert run(extract_args([root], out, model_dir)).exit_code == 3
    result = run(["info", out])
    assert result.exit_code == 0
    assert "failed (1):\n  bad.mp4: not a readable video file" in result.output
    assert "  ok: 1" in result.output and "model: random.tiny" in result.output


# names, --root, --list ------------------------------------------------------------------------


def _list_run(out, model_dir, paths, *extra):
    listing = "".join(f"{p}\n" for p in paths)
    return run(["extract", "--list", "-", "-o", out, "--model", model_dir, "--workers", "0", "--quiet", *extra],
               input=listing)  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """videos/b.mp4, videos/city.mp4, videos/sub/a.mp4, videos/sub/c.mp4 (1.2 s each: one clip)."""
    root = tmp_path_factory.mktemp("tree") / "videos"
    for name in ("b.mp4", "city.mp4", "sub/a.mp4", "sub/c.mp4"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        make_video(root / name, seconds=1.2, size=(32, 32))
    return root


def _paths(out):
    with open_features(out) as f:
        return list(f.videos.path), f.attrs["root"]


def test_names_keep_the_first_runs_root_whatever_else_a_rerun_lists(tmp_path, tree, model_dir):
    out = tmp_path / "f.h5"
    assert _list_run(out, model_dir, [tree / "sub/a.mp4", tree / "b.mp4"]).exit_code == 0
    assert _paths(out) == (["b.mp4", "sub/a.mp4"], str(tree))
    # this list's own common folder is videos/sub: the names stay relative to videos/
    result = _list_run(out, model_dir, [tree / "sub/a.mp4", tree / "sub/c.mp4"])
    assert result.exit_code == 0, result.output
    assert _paths(out) == (["b.mp4", "sub/a.mp4", "sub/c.mp4"], str(tree))  # one row per video


def test_root_option_lets_a_growing_list_reach_outside_the_first_inputs(tmp_path, tree, model_dir):
    out = tmp_path / "f.h5"
    assert _list_run(out, model_dir, [tree / "sub/a.mp4"], "--root", tree).exit_code == 0
    assert _list_run(out, model_dir, [tree / "sub/a.mp4", tree / "city.mp4"]).exit_code == 0
    assert _paths(out) == (["sub/a.mp4", "city.mp4"], str(tree))  # city.mp4 added as a segment


def test_a_rerun_with_an_input_outside_the_stored_root_is_refused(tmp_path, tree, model_dir):
    out = tmp_path / "f.h5"
    assert _list_run(out, model_dir, [tree / "sub/a.mp4"]).exit_code == 0
    result = _list_run(out, model_dir, [tree / "sub/a.mp4", tree / "city.mp4"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip()
    assert "\n" not in line and str(tree / "city.mp4") in line and f"input root {tree / 'sub'}," in line
    assert _paths(out) == (["a.mp4"], str(tree / "sub"))
    # another --root than the stored one is a settings mismatch (names would change)
    result = _list_run(out, model_dir, [tree / "sub/a.mp4"], "--root", tree)
    assert result.exit_code == 1 and "root" in result.output and "--overwrite" in result.output


def test_stale_list_entries_fail_as_not_found_and_the_run_goes_on(tmp_path, tree, model_dir):
    out = tmp_path / "f.h5"
    listing = tree / "todo.txt"  # relative entries are relative to the list file's folder
    listing.write_text(f"b.mp4\ngone/x.mp4\n{tree / 'sub/a.mp4'}\nsub/gone.mp4\n")
    result = run(["extract", "--list", listing, "-o", out, "--model", model_dir, "--workers", "0", "--quiet"])
    assert result.exit_code == 3, result.output
    assert f"vidfeat: failed: sub/gone.mp4: not found" in result.output
    with open_features(out) as f:
        table = {r["path"]: (r["status"], r["error"]) for r in f.videos.records()}
    assert table == {"b.mp4": ("ok", ""), "sub/a.mp4": ("ok", ""), "sub/gone.mp4": ("failed", "not found"),
                     "gone/x.mp4": ("failed", "not found")}  # fmt: skip
    listing = tmp_path / "stale.txt"
    listing.write_text("gone/x.mp4\nalso-gone.mp4\n")
    result = run(["extract", "--list", listing, "-o", tmp_path / "g.h5", "--model", model_dir, "--quiet"])
    assert result.exit_code == 1 and "none of the 2 listed videos exists" in result.output


def test_a_video_gone_since_an_earlier_run_keeps_its_result(tmp_path, model_dir):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.mp4", "b.mp4"):
        make_video(root / name, seconds=1.2, size=(32, 32))
    out = tmp_path / "f.h5"
    listing = [root / "a.mp4", root / "b.mp4"]
    assert _list_run(out, model_dir, listing).exit_code == 0
    with open_features(out) as f:
        before = f.clips("b.mp4").embedding.copy()
    (root / "b.mp4").unlink()  # the list is stale now: b.mp4's row must not become "not found"
    result = _list_run(out, model_dir, listing)
    assert result.exit_code == 0, result.output
    assert "0 failed this run, 2 already done" in result.output
    with open_features(out) as f:
        assert {r["path"]: r["status"] for r in f.videos.records()} == {"a.mp4": "ok", "b.mp4": "ok"}
        np.testing.assert_array_equal(f.clips("b.mp4").embedding, before)


def test_a_rerun_over_a_file_with_failed_videos_exits_3(tmp_path, model_dir):
    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "good.mp4", seconds=1.2, size=(32, 32))
    make_text(root / "bad.mp4")
    out = tmp_path / "f.h5"
    assert run(extract_args([root], out, model_dir)).exit_code == 3
    result = run(extract_args([root], out, model_dir))
    assert result.exit_code == 3, result.output
    assert "0 failed this run, 2 already done" in result.output and "the file holds 1 failed, 0 partial" in result.output


def test_model_precision_is_a_setting_a_rerun_must_match(tmp_path, tree, model_dir):
    out = tmp_path / "f.h5"
    assert run(extract_args([tree / "sub"], out, model_dir, "--dtype", "fp32")).exit_code == 0
    with open_features(out) as f:
        assert f.attrs["dtype"] == "float32"
    result = run(extract_args([tree / "sub"], out, model_dir, "--dtype", "bf16"))
    assert result.exit_code == 1 and "dtype" in result.output and "--overwrite" in result.output


# start-up and Ctrl-C --------------------------------------------------------------------------


def test_ctrl_c_while_torch_imports_exits_130_with_one_line(tmp_path):
    """A stand-in `torch` package first on the path sends SIGINT to its own process while it is
    being imported: the interrupt arrives during the import, every time, with no timing."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nimport time\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")])}
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    proc = subprocess.run([sys.executable, "-m", "vidfeat", "extract", str(video), "-o", str(tmp_path / "f.h5")],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (130, "vidfeat: interrupted\n")


def test_ctrl_c_inside_a_command_exits_130_with_one_line(tmp_path, monkeypatch):
    def interrupted(_):
        raise KeyboardInterrupt

    monkeypatch.setattr("vidfeat.cli.extract.read_list", interrupted)
    result = CliRunner().invoke(main, ["extract", "--list", "-", "-o", str(tmp_path / "f.h5")], input="a.mp4\n")
    assert (result.exit_code, result.output) == (130, "vidfeat: interrupted\n")


# progress: the ETA is checked on an injected clock in tests/test_progress.py


def test_sampling_faster_than_the_video_warns_once_per_video(tmp_path, model_dir):
    root = tmp_path / "in"
    root.mkdir()
    make_video(root / "slow.mp4", seconds=4.0, fps=1, size=(32, 32))  # the model samples 4 fps
    make_video(root / "fine.mp4", seconds=2.0, fps=25, size=(32, 32))
    out = tmp_path / "f.h5"
    result = run(extract_args([root], out, model_dir))
    assert result.exit_code == 0, result.output
    with open_features(out) as f:
        assert dict(zip(f.videos.path, f.videos.warning)) == {
            "fine.mp4": "", "slow.mp4": "sampling at 4 fps from a 1.0 fps video: 75% of sampled frames repeat the previous one"
        }  # fmt: skip
    warnings = [line for line in result.output.splitlines() if line.startswith("vidfeat: warning:")]
    assert warnings == [
        "vidfeat: warning: slow.mp4: sampling at 4 fps from a 1.0 fps video: 75% of sampled frames repeat the previous one"
    ]


def test_the_duration_probe_never_runs_while_the_pipeline_forks(tmp_path):
    """A fork while the probe thread holds a lock (an import inside PyAV) hangs the decode
    worker for ever: the pipeline forks only inside probe.forking(), which waits for the file
    being probed and holds the probe until the workers are started."""
    import threading

    from vidfeat.pipeline.local import _DurationProbe
    from vidfeat.pipeline.progress import Progress

    inside, release, forked, all_probed = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    events = []

    def slow_probe(path):  # stands for probe_duration on a slow file system
        events.append(f"probe {path}")
        inside.set()
        assert release.wait(30)
        events.append(f"probed {path}")
        if str(path) == "v1":
            all_probed.set()
        return 1.0

    def fork():
        with probe.forking():
            events.append("fork")
            forked.set()

    class WatchedLock:  # the probe's lock, saying when the forking thread asks for it
        def __init__(self) -> None:
            self.lock, self.asked = threading.Lock(), threading.Event()

        def __enter__(self):
            if threading.current_thread() is forker:
                self.asked.set()
            self.lock.acquire()

        def __exit__(self, *exc) -> None:
            self.lock.release()

    from vidfeat.video.inputs import VideoFile

    todo = [(VideoFile(path=f"v{i}", name=f"v{i}"), None) for i in range(2)]
    probe = _DurationProbe(todo, Progress(enabled=False), probe=slow_probe)
    probe._busy = lock = WatchedLock()
    forker = threading.Thread(target=fork)
    with probe:
        assert inside.wait(30)  # the probe is inside v0 and stays there until released
        forker.start()
        assert lock.asked.wait(30)  # forking() asks for the probe's lock ...
        assert not forked.is_set()  # ... and cannot have it while v0 is being probed
        release.set()
        forker.join(30)
        assert all_probed.wait(30)  # the probe goes on after the fork (waited for: not a race with leaving)
    before = events[: events.index("fork")]
    assert before.count("probe v0") == 1 and len(before) % 2 == 0, events  # never inside a file being probed
    assert sorted(events) == ["fork", "probe v0", "probe v1", "probed v0", "probed v1"], events


def test_an_empty_list_is_named_as_such(tmp_path, model_dir):
    result = run(["extract", "--list", "-", "-o", tmp_path / "f.h5", "--model", model_dir], input="# nothing\n\n")
    assert result.exit_code == 2 and "--list -: standard input holds no paths" in result.output


def test_the_decoder_is_a_stored_setting_a_rerun_must_match(tmp_path, good_videos, model_dir):
    """torchcodec and PyAV give slightly other pixels: the file records what decoded and a rerun
    with another decoder is refused in one line, leaving the file as it was."""
    out = tmp_path / "f.h5"
    assert run(extract_args([good_videos / "a"], out, model_dir)).exit_code == 0
    with open_features(out) as f:
        assert f.attrs["decoder"] == "pyav"
    before = out.read_bytes()
    result = CliRunner().invoke(main, [str(a) for a in extract_args([good_videos / "a"], out, model_dir, "--decoder", "torchcodec")])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "decoder" in lines[0] and "torchcodec" in lines[0] and "pyav" in lines[0], result.output
    assert out.read_bytes() == before


def test_a_file_from_before_the_decoder_setting_reads_verifies_and_resumes_as_pyav(tmp_path, good_videos, model_dir):
    out = tmp_path / "f.h5"
    assert run(extract_args([good_videos / "a"], out, model_dir, "--root", good_videos)).exit_code == 0
    with h5py.File(out, "r+") as h5:  # as written before vidfeat stored the decoder
        del h5.attrs["decoder"]
    assert verify(out) == []
    result = run(extract_args([good_videos], out, model_dir))  # resumes: a's video is kept, the others added
    assert result.exit_code == 0, result.output
    assert "1 already done" in result.output
    with open_features(out) as f:
        assert f.attrs["decoder"] == "pyav" and len(f.videos) == 4
    refused = CliRunner().invoke(main, [str(a) for a in extract_args([good_videos], out, model_dir, "--decoder", "torchcodec")])
    assert refused.exit_code == 1 and "decoder" in refused.output


def test_shards_decoded_differently_do_not_merge(tmp_path, good_videos, model_dir):
    from vidfeat.store.merge import merge_shards

    out = tmp_path / "f.h5"
    for shard, decoder in (("0/2", "pyav"), ("1/2", "torchcodec")):
        result = run(extract_args([good_videos], out, model_dir, "--shard", shard, "--decoder", decoder))
        assert result.exit_code == 0, result.output
    shards = sorted((tmp_path / "f.h5.shards").glob("*.h5"))
    with pytest.raises(VidfeatError, match=r'other settings \(decoder="torchcodec" there, "pyav" in 00000-of-00002.h5\)' ):
        merge_shards(out, shards)
    assert not out.exists()
