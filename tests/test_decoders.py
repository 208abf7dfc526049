"""torchcodec behind ClipReader (vidfeat.video.decoders) against the PyAV reader: the same clips, the
same clip times and valid frames, the same statuses and failure reasons, frames equal within
rounding. Runs on torchcodec's CPU decoder; NVDEC (the same code with device "cuda") is run
by bench/gpu_check.py on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest

from vidfeat.video.sampling import ClipSampling
from vidfeat.video.decoders import DECODERS, nvdec_unavailable, open_source, torchcodec_unavailable
from vidfeat.errors import VideoError
from vidfeat.video.reader import ClipReader
from videos import (
    frame_index_of,
    make_audio_only,
    make_corrupt_middle,
    make_empty,
    make_text,
    make_truncated_tail,
    make_video,
    make_video_without_duration,
)

pytestmark = pytest.mark.skipif(torchcodec_unavailable() is not None, reason=str(torchcodec_unavailable()))


def read(path, decoder, sampling, short_side=32):
    with ClipReader(path, sampling, short_side=short_side, decoder=decoder) as reader:
        clips = list(reader)
        return clips, reader.status, reader.error, reader.duration_sec, reader.info


def assert_same_clips(path, sampling, short_side=32):
    """Same clips, times and statuses. Pixels: equal within rounding at the native size; resized,
    torchcodec's plain bilinear differs from swscale's FAST_BILINEAR at sharp edges, so the
    values within 2 levels must be at least 90% and each target must show the same decoded frame."""
    ours, status, error, end, info = read(path, "pyav", sampling, short_side)
    theirs, status_tc, error_tc, end_tc, info_tc = read(path, "torchcodec", sampling, short_side)
    assert len(ours) == len(theirs) > 0
    assert status_tc == status and bool(error_tc) == bool(error)
    assert end_tc == pytest.approx(end, abs=1e-6)
    assert (info_tc.width, info_tc.height, info_tc.rotation, info_tc.fps, info_tc.codec, info_tc.duration_sec) == (
        info.width, info.height, info.rotation, info.fps, info.codec, info.duration_sec)  # fmt: skip
    for a, b in zip(ours, theirs):
        assert (a.index, a.valid_frames) == (b.index, b.valid_frames)
        assert b.start_sec == pytest.approx(a.start_sec, abs=1e-6) and b.end_sec == pytest.approx(a.end_sec, abs=1e-6)
        fa, fb = a.frames, b.frames
        assert fa.shape == fb.shape and fb.dtype == np.uint8
        diff = np.abs(fa.astype(np.int16) - fb.astype(np.int16))
        assert (diff <= 2).mean() >= 0.9 if short_side else diff.max() <= 1
        # the frame shown at each target is the same decoded frame
        assert [frame_index_of(f) for f in fb] == [frame_index_of(f) for f in fa]
    return ours, theirs, status


def test_constant_rate_mp4_gives_the_same_clips(tmp_path):
    path = tmp_path / "cfr.mp4"
    make_video(path, seconds=3.0, fps=25, size=(96, 64))
    ours, _, status = assert_same_clips(path, ClipSampling(8, 4.0))
    assert status == "ok" and [c.index for c in ours] == [0, 1]  # 2 s clips every 1 s in 3 s
    assert_same_clips(path, ClipSampling(8, 4.0), short_side=None)  # colour conversion alone


def test_variable_rate_and_rotation_give_the_same_clips(tmp_path):
    vfr = tmp_path / "vfr.mkv"
    make_video(vfr, frame_times=[0, 0.1, 0.15, 0.5, 0.9, 1.0, 1.45, 2.2, 2.9], size=(64, 48))
    assert_same_clips(vfr, ClipSampling(8, 4.0))
    turned = tmp_path / "turned.mp4"
    make_video(turned, seconds=2.0, size=(64, 96), rotation=90)
    ours, theirs, _ = assert_same_clips(turned, ClipSampling(4, 4.0))
    assert ours[0].frames.shape[1:] == (48, 32, 3)  # display 64x96 -> short side 32, upright


def test_undeclared_duration_and_read_at_match(tmp_path):
    path = tmp_path / "live.mkv"
    make_video_without_duration(path, seconds=4.0, fps=25, gop=10)
    assert_same_clips(path, ClipSampling(4, 4.0))
    for decoder in ("pyav", "torchcodec"):
        with ClipReader(path, ClipSampling(4, 4.0), short_side=32, decoder=decoder) as reader:
            clip = reader.read_at(2.3)
        if decoder == "pyav":
            want = clip
        else:
            assert clip.start_sec == pytest.approx(want.start_sec) and clip.valid_frames == want.valid_frames
            assert [frame_index_of(f) for f in clip.frames] == [frame_index_of(f) for f in want.frames]


def test_damaged_files_get_the_same_statuses(tmp_path):
    cut = tmp_path / "cut.mp4"
    make_truncated_tail(cut, seconds=4.0)
    _, _, status = assert_same_clips(cut, ClipSampling(4, 4.0))
    assert status == "partial"
    corrupt = tmp_path / "corrupt.mp4"
    make_corrupt_middle(corrupt, seconds=4.0)
    ours, *_ = read(corrupt, "pyav", ClipSampling(4, 4.0))
    theirs, status_tc, *_ = read(corrupt, "torchcodec", ClipSampling(4, 4.0))
    assert status_tc in ("ok", "partial") and abs(len(theirs) - len(ours)) <= 1


@pytest.mark.parametrize("maker", [make_empty, make_text, make_audio_only])
def test_unreadable_files_fail_with_the_pyav_reason(tmp_path, maker):
    path = tmp_path / f"{maker.__name__}.mp4"
    maker(path)
    reasons = []
    for decoder in ("pyav", "torchcodec"):
        with pytest.raises(VideoError) as info:
            ClipReader(path, ClipSampling(4, 4.0), decoder=decoder)
        reasons.append(str(info.value))
    assert reasons[0] == reasons[1]
    assert (tmp_path / "missing.mp4").exists() is False
    with pytest.raises(VideoError, match="file not found"):
        ClipReader(tmp_path / "missing.mp4", ClipSampling(4, 4.0), decoder="torchcodec")


def test_unknown_decoder_and_nvdec_without_a_gpu(tmp_path):
    path = tmp_path / "v.mp4"
    make_video(path, seconds=1.0)
    with pytest.raises(ValueError, match="decoder must be one of"):
        open_source("vaapi", path)
    assert DECODERS == ("pyav", "torchcodec", "nvdec")
    import torch

    if not torch.cuda.is_available():
        assert nvdec_unavailable() == "no CUDA device"


@pytest.mark.slow
def test_extract_with_torchcodec_writes_the_pyav_file_and_nvdec_falls_back(tmp_path, capfd):
    from checkpoints import save_tiny_model
    from vidfeat.pipeline.driver import ExtractOptions, extract
    from vidfeat.pipeline.progress import Progress
    from vidfeat.video.inputs import discover
    from vidfeat.store import open_features

    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "a.mp4", seconds=3.0, fps=25, size=(64, 48))
    make_video(folder / "b.mkv", frame_times=[0, 0.1, 0.15, 0.5, 0.9, 1.0, 1.45, 2.2, 2.9], size=(64, 48))
    model = save_tiny_model(tmp_path / "m", num_frames=8, fps=4.0, size=32)
    videos, _ = discover([folder])
    files = {}
    for decoder in ("pyav", "torchcodec", "nvdec"):
        out = tmp_path / f"{decoder}.h5"
        notes = Progress(enabled=False, notes=True)  # the library says the fallback only when asked
        report = extract(videos, out, ExtractOptions(model=str(model), device="cpu", workers=1, decoder=decoder), notes)
        assert report.counts["ok"] == 2
        with open_features(out) as f:
            files[decoder] = {v: f.clips(v) for v in f.videos.path}
            assert f.attrs["decoder"] == ("pyav" if decoder == "nvdec" else decoder)  # what decoded
    assert "NVDEC is not available (the model runs on the CPU): decoding on the CPU with PyAV" in capfd.readouterr().err
    for decoder in ("torchcodec", "nvdec"):
        for name, want in files["pyav"].items():
            got = files[decoder][name]
            np.testing.assert_allclose(got.start_sec, want.start_sec, atol=1e-6)
            np.testing.assert_allclose(got.end_sec, want.end_sec, atol=1e-6)
            np.testing.assert_array_equal(got.valid_frames, want.valid_frames)
            # bilinear vs swscale rounding at the tiny test size moves the embeddings a little
            np.testing.assert_allclose(got.embedding.astype(np.float32), want.embedding.astype(np.float32), atol=0.1)


def test_cli_decoder_nvdec_without_a_gpu_says_so_and_extracts(tmp_path):
    from click.testing import CliRunner

    from checkpoints import save_tiny_model
    from vidfeat.cli import main

    (tmp_path / "v").mkdir()
    make_video(tmp_path / "v" / "a.mp4", seconds=2.0)
    model = save_tiny_model(tmp_path / "m", num_frames=4, fps=4.0, size=32)
    args = ["extract", str(tmp_path / "v"), "-o", str(tmp_path / "f.h5"), "--model", str(model), "--device", "cpu",
            "--workers", "0", "--decoder", "nvdec", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "NVDEC is not available (the model runs on the CPU): decoding on the CPU with PyAV" in result.output
    bad = CliRunner().invoke(main, [*args[:-3], "--decoder", "vaapi"])
    assert bad.exit_code == 2 and "vaapi" in bad.output
