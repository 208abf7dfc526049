"""Decoded clips and a small /dev/shm: the loader fits the free shared memory, a full one is waited
out or named in one line, and no clip is dropped (a dropped clip made the run wait forever)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.videos import make_video
from vidfeat.pipeline import shm
from vidfeat.pipeline.shm import MARGIN, LoaderPlan, ShmFull

L_CLIP = 96 * 224 * 224 * 3  # TimeSformer-L, one crop, uint8


def test_plan_keeps_everything_when_the_clips_in_flight_fit():
    need = (15 * 4 + 64) * L_CLIP
    assert shm.plan(15, 4, 64, L_CLIP, free=int(need / MARGIN) + 1) == LoaderPlan(15, 4, 64)
    assert shm.plan(0, 4, 64, L_CLIP, free=0) == LoaderPlan(0, 4, 64)  # no workers, no shared memory


def test_plan_lowers_prefetch_then_workers_then_batch():
    fits = lambda clips: int(clips * L_CLIP / MARGIN) + 1  # noqa: E731 - free space for that many clips
    assert shm.plan(15, 4, 64, L_CLIP, free=fits(15 * 2 + 64))[:3] == (15, 2, 64)
    assert shm.plan(15, 4, 64, L_CLIP, free=fits(70))[:3] == (6, 1, 64)
    assert shm.plan(15, 4, 64, L_CLIP, free=fits(3))[:3] == (1, 1, 2)
    docker = shm.plan(15, 4, 64, L_CLIP, free=64 * 10**6)  # Docker's default /dev/shm
    assert (docker.workers, docker.prefetch, docker.batch) == (1, 1, 2)
    assert docker.note.startswith("shared memory (/dev/shm) has 64 MB free: running 1 decode workers, prefetch 1")
    assert "--shm-size=3g" in docker.note and "\n" not in docker.note
    for free in (fits(3), 64 * 10**6, fits(100), fits(200)):  # whatever it picks fits
        p = shm.plan(15, 4, 64, L_CLIP, free=free)
        assert (p.workers * p.prefetch + p.batch) * L_CLIP <= MARGIN * free


def test_plan_decodes_in_the_main_process_when_not_two_clips_fit():
    p = shm.plan(15, 4, 64, L_CLIP, free=int(1.5 * L_CLIP / MARGIN))
    assert p.workers == 0 and "decoding in the main process" in p.note


def test_loader_args_for_batches_say_what_they_lowered_to_echo_only(monkeypatch, capsys):
    batch = 8 * L_CLIP
    said = []
    monkeypatch.setattr(shm, "free_bytes", lambda path=shm.SHM_DIR: 64 * 10**9)
    assert shm.loader_args(4, batch, echo=said.append) == {"num_workers": 4, "prefetch_factor": 2}
    assert said == []
    monkeypatch.setattr(shm, "free_bytes", lambda path=shm.SHM_DIR: int(3 * batch / MARGIN) + 1)
    assert shm.loader_args(4, batch, echo=said.append) == {"num_workers": 2, "prefetch_factor": 1}
    assert said.pop().startswith("shared memory (/dev/shm) has 495 MB free: running 2 decode workers, prefetch 1 (asked 4, 2)")
    monkeypatch.setattr(shm, "free_bytes", lambda path=shm.SHM_DIR: batch)
    assert shm.loader_args(4, batch, echo=said.append) == {"num_workers": 0, "prefetch_factor": None}
    assert "decoding in the main process" in said.pop()
    assert shm.loader_args(4, batch) == {"num_workers": 0, "prefetch_factor": None}  # no echo: the library prints nothing
    assert capsys.readouterr().err == ""


def test_clip_bytes_are_the_uint8_crops_of_one_clip():
    from types import SimpleNamespace

    large = SimpleNamespace(num_frames=96, crop_size=224)  # a card's Preprocess
    assert shm.clip_bytes(large) == L_CLIP == 14_450_688
    assert shm.clip_bytes(large, crops=3) == 3 * L_CLIP


def test_ranks_of_one_machine_plan_for_their_share(monkeypatch):
    free = int(124 * L_CLIP / MARGIN) + 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert shm.plan(15, 4, 64, L_CLIP, free=free)[:3] != (15, 4, 64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert shm.plan(15, 4, 64, L_CLIP, free=free)[:3] == (15, 4, 64)


class _Flaky:
    """A tensor whose move into shared memory fails ``fails`` times as torch fails on a full /dev/shm."""

    nbytes = 10**6

    def __init__(self, fails: int) -> None:
        self.fails, self.calls = fails, 0

    def share_memory_(self):
        self.calls += 1
        if self.calls <= self.fails:
            raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2_3>: No space left on device (28)")
        return self


def test_share_waits_out_a_full_shm_then_names_it():
    t = _Flaky(fails=2)
    assert shm.share(t, wait_sec=30) is t and t.calls == 3
    with pytest.raises(ShmFull) as caught:
        shm.share(_Flaky(fails=10**9), wait_sec=0.3)
    message = str(caught.value)
    assert "shared memory (/dev/shm) stayed full" in message and "--shm-size" in message and "\n" not in message
    real = torch.zeros(4, dtype=torch.uint8)
    assert shm.share(real).is_shared()


def test_other_errors_are_not_taken_for_a_full_shm():
    class Broken(_Flaky):
        def share_memory_(self):
            raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        shm.share(Broken(0))


def _videos(folder: Path, count: int = 3, seconds: float = 12.0) -> Path:
    folder.mkdir()
    for i in range(count):
        make_video(folder / f"v{i}.mp4", seconds=seconds, fps=24, size=(48, 32))
    return folder


def _private_shm(size: str, command: list) -> subprocess.CompletedProcess:
    """``command`` run with a ``size`` tmpfs of its own as /dev/shm (skips where that is refused)."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (root) for a private /dev/shm")
    script = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec " + " ".join(map(str, command))
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_eval_on_a_quarter_megabyte_shm_decodes_in_the_main_process(tmp_path):
    vidfeat = Path(sys.executable).with_name("vidfeat")
    subprocess.run([vidfeat, "synth", tmp_path / "data", "--videos", "16", "--seed", "3"], check=True, capture_output=True)
    proc = _private_shm("256k", [vidfeat, "eval", tmp_path / "data", "--workers", "2"])  # a batch of 8 is 1.3 MB
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "too little for 2 x 1.33 MB in flight: decoding in the main process" in proc.stderr
    assert "Traceback" not in proc.stderr and "16 videos" in proc.stdout and "top-1" in proc.stdout


@pytest.mark.slow
def test_extract_on_a_half_megabyte_shm_finishes_and_says_why_it_is_slower(tmp_path):
    """The bundled model's clips are 166 KB: 2 workers x 4 queued + a batch of 4 need 2 MB."""
    videos = _videos(tmp_path / "v")
    out = tmp_path / "f.h5"
    proc = _private_shm("512k", [Path(sys.executable).with_name("vidfeat"), "extract", videos, "-o", out, "--workers", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [line for line in proc.stderr.splitlines() if line.startswith("shared memory (/dev/shm)")]
    assert len(notes) == 1 and "running 1 decode workers, prefetch 1, batch 1 (asked 2, 4, 4)" in notes[0]
    assert "Traceback" not in proc.stderr
    with h5py.File(out) as f:
        assert [s.decode() for s in f["videos/status"][:]] == ["ok"] * 3
        assert len(f["clips/embedding"]) == 3 * 5  # 12 s: 4-s clips (96 frames at 24 fps) every 2 s


def test_a_shm_that_stays_full_ends_the_run_in_one_line_and_keeps_finished_videos(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from vidfeat.cli import main

    videos = _videos(tmp_path / "v", seconds=8.0)
    out = tmp_path / "f.h5"
    real_share, sent = shm.share, []

    def share_then_full(tensor, wait_sec=shm.WAIT_SEC):  # runs in the forked worker
        sent.append(1)
        if len(sent) > 3:  # the first video's 3 clips go through, then /dev/shm is full
            raise ShmFull(shm.full_message(tensor.nbytes))
        return real_share(tensor)

    monkeypatch.setattr(shm, "share", share_then_full)
    result = CliRunner().invoke(main, ["extract", str(videos), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if "shared memory" in line]
    assert len(lines) == 1 and lines[0].startswith("Error: shared memory (/dev/shm) stayed full"), result.output
    assert "Traceback" not in result.output

    monkeypatch.setattr(shm, "share", real_share)
    again = CliRunner().invoke(main, ["extract", str(videos), "-o", str(out), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert "1 already done" in again.output  # the video finished before the error was kept
    with h5py.File(out) as f:
        assert sorted(s.decode() for s in f["videos/path"][:]) == ["v0.mp4", "v1.mp4", "v2.mp4"]
        assert np.all(f["videos/status"][:] == b"ok")
