"""bench/gpu_check.py runs end to end on the CPU with small sizes, so that the GPU check cannot rot;
its budget, error rows and incremental JSON are what keep a short GPU lease from ending with nothing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_check(tmp_path, *args, timeout=300):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--small", "--json", str(out), *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_prints_every_part(tmp_path):
    proc, body = run_check(tmp_path, "--markdown", str(tmp_path / "table.md"))
    rows = body["rows"]
    assert body["meta"]["device"].startswith("cpu") and body["meta"]["total_sec"] > 0
    assert not [r for r in rows if r["what"].endswith(": error")], [r["note"] for r in rows]
    whats = [r["what"] for r in rows]
    for preset in ("base", "hr", "large"):
        assert any(w.startswith(preset) and "ours eager" in w for w in whats)
        hf = [r for r in rows if r["what"].startswith(preset) and " HF b" in r["what"]]
        assert hf and float(hf[0]["note"].split("max |logit diff| ")[1].split(";")[0]) < 1e-4  # the twin is the same model
    assert any("compiled / eager" in w for w in whats)
    decode = [r for r in rows if r["section"] == "decode"]
    assert len(decode) == 2 and all(r["figure"] > 0 for r in decode)
    e2e = [r for r in rows if r["section"] == "end to end"]
    assert len(e2e) == 2
    for r in e2e:
        assert r["figure"] > 0 and r["ceiling"] > 0 and r["ratio"] == pytest.approx(r["figure"] / r["ceiling"])
        assert "2 ok" in r["what"]  # every generated video extracted
    assert "e2e/decode-only" in proc.stdout and "torchcodec:" in proc.stdout
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == len(rows) + 2 and "bench/gpu_check.py --device cpu --small" in table


def test_a_spent_budget_skips_every_step_and_says_so(tmp_path):
    proc, body = run_check(tmp_path, "--budget-sec", "0", timeout=120)
    assert body["rows"] == []
    for what in ("large model part", "base model part", "hr model part", "test videos"):
        assert f"skipped the {what}" in proc.stdout
    assert "skipped base compiled" not in proc.stdout  # no eager figure: nothing to compile against


def test_a_failing_part_becomes_an_error_row_and_the_rows_stay_on_disk(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    table = gpu_check.Table(tmp_path / "rows.json", {"device": "test"})
    table.add(gpu_check.Row("model", "first", 2.0, "clips/s", 4.0))

    def broken():
        raise RuntimeError("no kernel image\nfor this device")

    assert gpu_check.guarded(table, "model", "large eager sweep", broken) is None
    body = json.loads((tmp_path / "rows.json").read_text())
    assert [r["what"] for r in body["rows"]] == ["first", "large eager sweep: error"]
    assert body["rows"][0]["ratio"] == 0.5
    error = body["rows"][1]
    assert math.isnan(error["figure"]) and error["note"] == "RuntimeError: no kernel image for this device"
    assert "large eager sweep failed: RuntimeError: no kernel image for this device" in capsys.readouterr().out
