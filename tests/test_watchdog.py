"""A decode worker that blocks for good (FFmpeg looping on a hostile file, a hung network read)
is stopped by the watchdog: its video fails as stalled, the others finish, the run ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from tests.videos import make_video
from vidfeat.pipeline import watchdog

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_stalled_decoder_fails_its_video_and_the_run_goes_on(tmp_path, workers):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.mp4", "stuck.mp4", "b.mp4", "c.mp4"):
        make_video(folder / name, seconds=6.0, fps=24, size=(48, 32))
    out = tmp_path / "f.h5"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "stall_run.py"), str(folder), str(out), "2", str(workers)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "counts {'ok': 3, 'partial': 0, 'failed': 1} exit 3" in proc.stdout
    with h5py.File(out) as f:
        rows = dict(zip((p.decode() for p in f["videos/path"][:]), (e.decode() for e in f["videos/error"][:])))
        status = dict(zip((p.decode() for p in f["videos/path"][:]), (s.decode() for s in f["videos/status"][:])))
    assert status == {"a.mp4": "ok", "b.mp4": "ok", "c.mp4": "ok", "stuck.mp4": "failed"}
    assert rows["stuck.mp4"].startswith("the decoder stalled: no clip after 2 s")


def test_the_board_counts_only_time_spent_on_a_clip():
    board = watchdog.Board(2)
    board.start(0, 7)
    assert board.busy_since[0] > 0 and board.videos() == {7}
    board.waiting(0)  # the clip is handed over: waiting for the main process is not a stall
    assert board.busy_since[0] == 0.0
    board.working(0)
    assert board.busy_since[0] > 0
    board.done(0)
    assert board.videos() == set() and board.busy_since[0] == 0.0


def test_the_watchdog_stops_a_worker_stuck_on_one_clip(monkeypatch):

    monkeypatch.setattr(watchdog, "STALL_SEC", 0.3)
    monkeypatch.setattr(watchdog, "CHECK_SEC", 0.05)
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        board = watchdog.Board(2)
        board.start(0, 4)
        board.pid[0] = stuck.pid
        board.start(1, 5)
        board.pid[1] = idle.pid
        board.waiting(1)  # waits for the main process however long: never stopped
        with watchdog.Watchdog(board, 2) as dog:
            assert stuck.wait(timeout=30) == -9
        assert list(dog.stalled) == [4] and dog.stalled[4] > 0.3
        assert idle.poll() is None
    finally:
        stuck.kill()
        idle.kill()
