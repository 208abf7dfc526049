"""`make demo` end to end, small: long synthetic videos -> extract -> per-segment table and retrieval."""

from __future__ import annotations

import json

import numpy as np
from checkpoints import save_tiny_model
from vidfeat.tools.demo import clip_labels, main as demo_main, retrieval_hits
from vidfeat.store import open_features, verify


def test_demo_runs_end_to_end(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model", num_frames=8, fps=4.0, size=32)
    out = tmp_path / "demo"
    code = demo_main(["--out", str(out), "--videos", "2", "--seed", "3", "--model", str(model), "--workers", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "segment accuracy" in printed and "retrieval: nearest clips" in printed
    assert "retrieval over the clips inside one segment" in printed  # both videos share a class (seed 3)
    truth = json.loads((out / "videos" / "segments.json").read_text())["videos"]
    assert verify(out / "feats.h5") == []
    with open_features(out / "feats.h5") as f:
        assert sorted(f.videos.path) == sorted(v["path"] for v in truth)
        for video in truth:  # clips cover each whole video
            clips = f.clips(video["path"])
            assert f"{video['path']}: {f.videos.duration_sec[f.videos.index(video['path'])]:.1f} s, {len(clips)} clips" in printed
            assert clips.start_sec[0] == 0.0 and clips.end_sec[-1] >= video["duration_sec"] - 0.5


def test_clip_labels_name_the_one_segment_a_clip_lies_inside():
    truth = {"v.mp4": {"segments": [{"start_sec": 0.0, "end_sec": 5.0, "label": "a"}, {"start_sec": 5.0, "end_sec": 10.0, "label": "b"}]}}
    starts, ends = np.array([0.0, 2.0, 5.0, 6.0]), np.array([3.96, 5.96, 8.96, 9.96])
    assert list(clip_labels(truth, np.array(["v.mp4"], dtype=object), np.zeros(4, int), starts, ends)) == ["a", "", "b", "b"]


def test_retrieval_hits_count_nearest_labelled_clips_from_other_videos():
    emb = np.array([[1, 0], [0, 1], [0, 1], [0.1, 1], [0.1, 1], [1, 0]], float)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    video = np.array([0, 0, 1, 1, 2, 2])
    labels = np.array(["a", "b", "a", "b", "", "c"], dtype=object)
    # queries: rows 0-3 (row 5's class is in no other video); hits: row 3 only (its nearest labelled clip
    # elsewhere is row 1; row 4 is nearer but straddles segments, so it is not in the gallery)
    assert retrieval_hits(emb, labels, video) == (1, 4)
    labels[4] = "x"  # were row 4 labelled, row 3's nearest would be it: a miss
    assert retrieval_hits(emb, labels, video) == (0, 4)
