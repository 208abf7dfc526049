"""vidfeat.pipeline.progress.Progress: the ETA on an injected clock, and a short extraction that
shows progress lines while its video is being computed."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from checkpoints import save_tiny_model
from videos import make_video
from vidfeat.pipeline.progress import Progress


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _progress(clock: Clock, **kwargs) -> tuple[Progress, io.StringIO]:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False, width=300)
    return Progress(log_every=kwargs.pop("log_every", 3600.0), console=console, clock=clock, **kwargs), sink


def test_the_eta_is_the_time_left_at_the_rate_since_the_first_clip():
    """Two videos (10 and 5 minutes); start-up takes 40 s, then 2 s of video are computed each
    second: the ETA is the time really left, start-up not counted in the rate."""
    clock = Clock()
    progress, _ = _progress(clock)
    progress.expect(0, 600.0)
    progress.expect(1, 300.0)
    progress.start(total=2, total_bytes=9000, skipped=0, workers=1)
    assert math.isnan(progress.eta())  # no clip yet: no rate
    clock.now = 40.0
    progress.clip_done(0, 8.0)  # the first clip: the rate counts from here
    assert math.isnan(progress.eta())
    for k in range(1, 296):  # clips ending every 2 s of video, one a second
        clock.now = 40.0 + k
        progress.clip_done(0, 8.0 + 2 * k)
        assert progress.eta() == pytest.approx((900 - (8 + 2 * k)) / 2), k
    assert progress.done_sec == 598.0
    clock.now = 336.0
    progress.video_done(0, 6000, 600.0, decode_sec=100.0, model_sec=200.0)  # counts its whole duration
    assert progress.done_sec == 600.0 and progress.fraction() == pytest.approx(600 / 900)
    assert progress.eta() == pytest.approx(296 * 300 / 592)  # 592 s of video in 296 s since the first clip
    assert "videos 1/2 | video 10:00 of 15:00 |" in progress.line() and "ETA 2:30" in progress.line()


def test_a_video_of_unknown_length_counts_as_the_mean_of_the_known_ones():
    clock = Clock()
    progress, _ = _progress(clock)
    progress.expect(0, 100.0)
    progress.expect(1, None)
    progress.start(total=2, total_bytes=2000, skipped=0, workers=1)
    assert progress.total_sec() == 200.0
    clock.now = 5.0
    progress.clip_done(0, 10.0)
    clock.now = 15.0
    progress.clip_done(0, 30.0)  # 20 s of video in 10 s
    assert progress.eta() == pytest.approx((200 - 30) / 2)
    progress.video_done(0, 1000, 100.0, 0.0, 0.0)
    clock.now = 25.0
    progress.video_done(1, 1000, 50.0, 0.0, 0.0)  # its decoded length replaces the estimate
    assert progress.total_sec() == 150.0 and progress.done_sec == 150.0 and progress.eta() == 0.0


def test_without_any_duration_the_eta_comes_from_the_bytes():
    clock = Clock()
    progress, _ = _progress(clock)
    progress.start(total=3, total_bytes=3000, skipped=0, workers=1)
    progress.expect(0, None)
    clock.now = 2.0
    progress.clip_done(0, 4.0)  # the rate starts here, with 0 bytes done
    clock.now = 12.0
    progress.video_done(0, 1000, 30.0, 0.0, 0.0)  # 1000 bytes in 10 s
    # the finished video's length is known now: the run's total is estimated from it
    assert progress.total_sec() == 90.0
    assert progress.eta() == pytest.approx(10 * 60 / 26)  # (90 - 30) s left at 26 s of video per 10 s


def test_lines_are_logged_every_log_every_seconds_of_the_clock():
    clock = Clock()
    progress, sink = _progress(clock, log_every=30.0)
    progress.expect(0, 60.0)
    progress._closed.set()  # no ticker thread: this test moves the clock itself
    progress.start(total=1, total_bytes=100, skipped=0, workers=1)
    for t in range(1, 61):
        clock.now = float(t)
        progress.clip_done(0, float(t))
    lines = sink.getvalue().splitlines()
    assert [line.split(" | ")[1] for line in lines] == ["video 0:30 of 1:00", "video 1:00 of 1:00"]


def test_an_extraction_prints_progress_lines_while_its_video_is_computed(tmp_path):
    """End to end, short: lines come while the one video is unfinished, and the last says done."""
    from vidfeat.pipeline.driver import ExtractOptions, extract
    from vidfeat.video.inputs import discover

    model = save_tiny_model(tmp_path / "model")
    video = tmp_path / "long.mp4"
    make_video(video, seconds=30, fps=1, size=(32, 32))
    sink = io.StringIO()
    progress = Progress(log_every=0, console=Console(file=sink, force_terminal=False, width=300))
    options = ExtractOptions(model=str(model), fps=1.0, stride_sec=2.0, workers=0, batch_size=1, root=str(tmp_path))
    report = extract(discover([video]).videos, tmp_path / "f.h5", options, progress)
    assert report.exit_code == 0
    lines = sink.getvalue().splitlines()
    during = [line for line in lines if line.startswith("videos 0/1 | ")]
    assert len(during) >= report.clips - 1 and all("of 0:30" in line for line in during)
    assert lines[-1].startswith("videos 1/1 | video 0:30 of 0:30 |")
