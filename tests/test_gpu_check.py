"""bench/gpu_check.py runs end to end on the CPU with small sizes, so that the GPU check cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_prints_every_part(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--small", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    whats = [r["what"] for r in rows]
    for preset in ("base", "hr", "large"):
        assert any(w.startswith(preset) and "ours eager" in w for w in whats)
        hf = [r for r in rows if r["what"].startswith(preset) and " HF b" in r["what"]]
        assert hf and float(hf[0]["note"].split("max |logit diff| ")[1]) < 1e-4  # the twin is the same model
    assert any("compiled / eager" in w for w in whats)
    decode = [r for r in rows if r["section"] == "decode"]
    assert len(decode) == 2 and all(r["figure"] > 0 for r in decode)
    e2e = [r for r in rows if r["section"] == "end to end"]
    assert len(e2e) == 2
    for r in e2e:
        assert r["figure"] > 0 and r["ceiling"] > 0 and r["ratio"] == pytest.approx(r["figure"] / r["ceiling"])
        assert "2 ok" in r["what"]  # every generated video extracted
    assert "e2e/decode-only" in proc.stdout and "torchcodec:" in proc.stdout
