"""vidfeat.model.runtime: device and precision resolution, the crop rule, one-line reasons."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from videos import make_video
from vidfeat.cli import main
from vidfeat.errors import ConfigError
from vidfeat.model.runtime import autocast_dtype, combine_views, device_name_problem, one_line, resolve_device
from vidfeat.training.recipe import load_config

CPU = torch.device("cpu")


def test_resolve_device_names():
    assert resolve_device("cpu") == CPU and resolve_device(" CPU ") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU and resolve_device(None) == CPU
    for name in ("gpu", "cpu:0", "cuda:x", "mps", ""):
        with pytest.raises(ConfigError) as info:
            resolve_device(name)
        assert str(info.value) == f"unknown device {name.strip()!r}: use auto, cpu, cuda or cuda:N"


@pytest.mark.parametrize("name", ["cpu:0", "gpu", "cuda:x", "mps", "cpu", " CPU ", "auto", "cuda", "cuda:1"])
def test_a_recipe_takes_the_device_names_the_resolver_takes(name):
    """One rule: run.device accepts exactly the names --device accepts, with the same reason."""
    problem = device_name_problem(name)
    assert (problem is None) == (name.strip().lower() in ("cpu", "auto", "cuda", "cuda:1"))
    if problem is None:
        assert load_config("synthetic_motion", [f"run.device={name}"]).run.device == name.strip()
        return
    assert problem == f"unknown device {name.strip().lower()!r}: use auto, cpu, cuda or cuda:N"
    with pytest.raises(ConfigError) as info:
        load_config("synthetic_motion", [f"run.device={name}"])
    assert str(info.value) == f"invalid recipe: run.device: {problem}"
    with pytest.raises(ConfigError, match=f"^{problem}$"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"^device '{name}' asked for, but CUDA is not available here: use cpu or auto$"):
            resolve_device(name)


def test_precisions():
    cuda = torch.device("cuda", 0)  # a device object needs no GPU
    assert autocast_dtype(None, CPU) is None and autocast_dtype(None, cuda) is torch.bfloat16
    assert autocast_dtype("auto", CPU) is None and autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16 and autocast_dtype("fp16", cuda) is torch.float16
    with pytest.raises(ConfigError, match="^precision must be one of auto, bf16, fp16, fp32, got 'half'$"):
        autocast_dtype("half", CPU)


def test_combine_views_averages_probabilities_and_embeddings():
    # clip 0: view 0 is sure of class 0, views 1 and 2 mildly prefer class 1. Averaged logits
    # say class 0 ((3 + 0 + 0) / 3 = 1 > (0 + 1 + 1) / 3); averaged probabilities say class 1.
    rows = [[3.0, 0.0], [0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    logits, embeddings = torch.tensor(rows), torch.arange(12, dtype=torch.float32).view(6, 2)
    scores, mean = combine_views(logits, 3, embeddings)
    p0 = [sum(1 / (1 + math.exp(b - a)) for a, b in rows[i : i + 3]) / 3 for i in (0, 3)]  # P(class 0)
    assert p0 == pytest.approx([0.4968, 0.6269], abs=1e-4)
    assert torch.allclose(scores.softmax(dim=-1), torch.tensor([[p, 1 - p] for p in p0]), atol=1e-6)
    assert scores.argmax(dim=-1).tolist() == [1, 0] and logits.view(2, 3, 2).mean(1).argmax(-1).tolist() == [0, 0]
    assert torch.equal(mean, torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    one, same = combine_views(logits, 1, embeddings)
    assert torch.equal(one, logits) and torch.equal(same, embeddings)  # one view: the logits themselves
    assert combine_views(logits, 2)[1] is None


def test_one_line():
    assert one_line(ValueError("bad\n  value\tthere ")) == "bad value there"
    assert one_line(KeyError()) == "KeyError"


def test_traceback_reason():
    from vidfeat.errors import traceback_reason

    remote = 'Traceback (most recent call last):\n  File "w.py", line 3, in f\n    raise E(x)\nvidfeat.shm.ShmFull: shared memory (/dev/shm) stayed full: give more\n'
    assert traceback_reason(remote) == "shared memory (/dev/shm) stayed full: give more"
    assert traceback_reason("E: torchcodec is not installed") == "torchcodec is not installed"
    assert traceback_reason("shared memory (/dev/shm) stayed full (12 MB free): rerun") == (
        "shared memory (/dev/shm) stayed full (12 MB free): rerun"
    )  # not a traceback: kept whole
    assert traceback_reason("") == ""


def test_extract_unknown_device_is_one_line(tmp_path):
    video = tmp_path / "v.mp4"
    make_video(video, seconds=1.0, fps=8, size=(32, 32))
    args = ["extract", str(video), "-o", str(tmp_path / "f.h5"), "--device", "gpu", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit
    assert result.output == "Error: unknown device 'gpu': use auto, cpu, cuda or cuda:N\n"
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.slow
def test_extract_unknown_device_in_a_process_is_one_line(tmp_path):
    video = tmp_path / "v.mp4"
    make_video(video, seconds=1.0, fps=8, size=(32, 32))
    args = ["extract", str(video), "-o", str(tmp_path / "f.h5"), "--device", "gpu", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "VIDFEAT_RAISE_ERRORS"}
    done = subprocess.run([sys.executable, "-m", "vidfeat", *args], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["Error: unknown device 'gpu': use auto, cpu, cuda or cuda:N"]
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.slow
def test_extract_and_eval_combine_three_crops_alike(tmp_path):
    """The same clips through `vidfeat extract --crops 3` and `evaluate(crops=3)`: same scores.

    The bundled tiny-motion model (one 4 s clip of 96 frames, 24 px crops) on wide test-pattern
    videos: its three crops see different things and disagree, so averaging logits instead of
    probabilities changes the scores (and here one video's top-1)."""
    import numpy as np

    from vidfeat.training.evaluate import evaluate
    from vidfeat.store import open_features
    from vidfeat.synth import CLASSES

    for i, name in enumerate(CLASSES):  # one 4 s video a class: one clip, 3 distinct crops
        (tmp_path / "data" / name).mkdir(parents=True)
        make_video(tmp_path / "data" / name / "v.mp4", seconds=4.0, fps=24, size=(72 + 8 * i, 24))
    out = tmp_path / "f.h5"
    args = ["extract", str(tmp_path / "data"), "-o", str(out), "--model", "tiny-motion", "--crops", "3", "--workers", "0", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with open_features(out) as f:
        assert sorted(f.videos.path) == sorted(f"{name}/v.mp4" for name in CLASSES)
        rows = {path: f.clips(path).logits for path in f.videos.path}
    assert all(len(r) == 1 for r in rows.values())
    logits = torch.tensor(np.stack([rows[f"{name}/v.mp4"][0] for name in CLASSES]), dtype=torch.float64)
    assert torch.allclose(logits.exp().sum(dim=-1), torch.ones(len(CLASSES), dtype=torch.float64), atol=1e-4)
    summary = evaluate("tiny-motion", tmp_path / "data", crops=3, workers=0, device="cpu")
    assert summary["count"] == len(CLASSES) and summary["classes"] == list(CLASSES)
    predicted = [row.index(1) for row in summary["confusion"]]  # one video a class: its top-1
    assert predicted == logits.argmax(dim=-1).tolist()
    nll = -logits.log_softmax(dim=-1).diagonal().mean()
    assert summary["loss"] == pytest.approx(float(nll), abs=1e-4)
