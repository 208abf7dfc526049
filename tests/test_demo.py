"""`make demo` end to end, small: long synthetic videos -> extract -> per-segment table and retrieval."""

from __future__ import annotations

import json

from checkpoints import save_tiny_model
from vidfeat.demo import main as demo_main
from vidfeat.store import open_features, verify


def test_demo_runs_end_to_end(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model", num_frames=8, fps=4.0, size=32)
    out = tmp_path / "demo"
    code = demo_main(["--out", str(out), "--videos", "2", "--seed", "3", "--model", str(model), "--workers", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "segment accuracy:" in printed and "retrieval: nearest clips" in printed
    truth = json.loads((out / "videos" / "segments.json").read_text())["videos"]
    assert verify(out / "feats.h5") == []
    with open_features(out / "feats.h5") as f:
        assert sorted(f.videos.path) == sorted(v["path"] for v in truth)
        for video in truth:  # clips cover each whole video
            clips = f.clips(video["path"])
            assert clips.start_sec[0] == 0.0 and clips.end_sec[-1] >= video["duration_sec"] - 0.5

