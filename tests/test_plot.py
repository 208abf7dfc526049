"""vidfeat plot: a PNG timeline of one video, with a similarity track for a query."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.cli import main
from vidfeat.store import open_features

from test_search import make_file

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    return make_file(tmp_path_factory.mktemp("plot") / "feats.h5", videos=5, clips=8)


def test_plot_writes_a_timeline_png_spanning_the_clips(feats, tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):  # keep the figure to inspect what was drawn
        saved.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    out = tmp_path / "timeline.png"
    result = CliRunner().invoke(main, ["plot", str(feats), "--video", "v0002.mp4", "-o", str(out), "--query", "v0001.mp4@3.5"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = saved[0]
    bars, probs, sims = fig.axes[:3]
    with open_features(feats) as f:
        clips = f.clips("v0002.mp4")
        assert bars.get_xlim() == (0.0, float(clips.end_sec[-1]))
        # one bar a clip, from its start to its end
        boxes = [c.get_paths()[0].get_extents() for c in bars.collections]
        spans = sorted((round(b.x0, 6), round(b.x1, 6)) for b in boxes)
        assert spans == [(round(float(a), 6), round(float(b), 6)) for a, b in zip(clips.start_sec, clips.end_sec)]
        # the similarity track: cosine of each clip to the query clip (v0001 at 3.5 s: its clip 1, 2-6 s, whose middle is nearest)
        row = f.clips("v0001.mp4").first_row + 1
        e = clips.embedding.astype(np.float32)
        qe = f.embeddings[row].astype(np.float32)
        want = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (qe / np.linalg.norm(qe))
        np.testing.assert_allclose(sims.lines[0].get_ydata(), want, rtol=1e-5)
        np.testing.assert_allclose(sims.lines[0].get_xdata(), (clips.start_sec + clips.end_sec) / 2)
        assert "v0001.mp4 2.0-6.0 s" in sims.get_title()


def test_plot_refuses_a_video_without_clips(feats, tmp_path):
    result = CliRunner().invoke(main, ["plot", str(feats), "--video", "v0003.mp4", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "has no clips" in result.output
    result = CliRunner().invoke(main, ["plot", str(feats), "--video", "v0001.mp4", "-o", str(tmp_path / "x.png"), "--query", "nope"])
    assert result.exit_code == 2 and "PATH@SECONDS" in result.output


def test_plotting_leaves_the_callers_matplotlib_alone(feats, tmp_path):
    """The timeline and the training curves draw on plain Figures: no backend is chosen and
    pyplot is never imported, so a program using vidfeat keeps its own matplotlib setup."""
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('pdf')\n"
        "from vidfeat.store import open_features\n"
        "from vidfeat.retrieval.plot import plot_timeline\n"
        "from vidfeat.training.loop import _plot_curves\n"
        f"with open_features({str(feats)!r}) as f:\n"
        f"    plot_timeline(f, 'v0002.mp4', {str(tmp_path / 't.png')!r}, query=3)\n"
        f"open({str(tmp_path / 'm.jsonl')!r}, 'w').write('{{\"kind\": \"step\", \"epoch_float\": 0.5, \"loss\": 1.0}}\\n')\n"
        f"assert _plot_curves(__import__('pathlib').Path({str(tmp_path / 'm.jsonl')!r}), __import__('pathlib').Path({str(tmp_path / 'c.png')!r}))\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pdf", "False"]
    assert (tmp_path / "t.png").read_bytes()[:4] == (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
