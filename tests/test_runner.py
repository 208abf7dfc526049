"""The model side of extraction: normalisation held on the device, the batch runner, and the
fitted default batch size (vidfeat.video.transforms.Normalize, vidfeat.pipeline.runner.ModelRunner,
vidfeat.pipeline.batchsize). Everything here runs on the CPU; bench/gpu_check.py runs the CUDA paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from checkpoints import save_tiny_model
from vidfeat.pipeline import batchsize
from vidfeat.pipeline.batchsize import cache_key, find_batch_size, fit_batch
from vidfeat.pipeline.runner import ModelRunner
from vidfeat.video.transforms import Normalize, normalize
from vidfeat.model.weights import load_model

MEAN, STD = (0.45, 0.40, 0.35), (0.225, 0.25, 0.20)


def reference(clips: torch.Tensor) -> torch.Tensor:
    x = clips.permute(0, 4, 1, 2, 3).double() / 255
    return (x - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1, 1)) / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1, 1)


def test_normalize_matches_the_definition_per_channel():
    clips = torch.randint(0, 256, (2, 3, 5, 4, 3), dtype=torch.uint8)
    clips[0, 0, 0, 0] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    out = Normalize(MEAN, STD)(clips)
    assert out.shape == (2, 3, 3, 5, 4) and out.dtype == torch.float32 and out.is_contiguous()
    np.testing.assert_allclose(out.double().numpy(), reference(clips).numpy(), atol=1e-6, rtol=0)
    # the pixel set by hand: channel c is (v / 255 - mean[c]) / std[c]
    expect = [(0 / 255 - 0.45) / 0.225, (128 / 255 - 0.40) / 0.25, (255 / 255 - 0.35) / 0.20]
    np.testing.assert_allclose(out[0, :, 0, 0, 0].numpy(), expect, atol=1e-6)
    assert normalize(clips, MEAN, STD, torch.bfloat16).dtype == torch.bfloat16


def test_normalize_refuses_clips_on_another_device():
    norm = Normalize(MEAN, STD, "meta")
    with pytest.raises(ValueError, match="meta"):
        norm(torch.zeros(1, 1, 2, 2, 3, dtype=torch.uint8))


def test_runner_builds_no_tensor_from_host_values_per_batch(tmp_path, monkeypatch):
    """Mean and std are made once, when the runner is built: a per-batch ``torch.tensor(mean,
    device=cuda)`` is a blocking host-to-device copy on CUDA."""
    model = load_model(save_tiny_model(tmp_path / "m", num_frames=4, size=32))
    runner = ModelRunner(model.eval(), torch.device("cpu"), torch.float32, crops=1, batch_size=2)
    calls = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: calls.append(a) or real(*a, **k))
    crops = [torch.randint(0, 256, (1, 4, 32, 32, 3), dtype=torch.uint8) for _ in range(3)]
    feats, logits = runner.collect(runner.submit(crops))
    assert calls == []
    monkeypatch.undo()
    with torch.no_grad():
        x = normalize(torch.cat(crops), model.card.preprocess.mean, model.card.preprocess.std)
        want = model.forward_features(x)
    assert feats.shape == (3, 64) and logits.shape == (3, 6)
    np.testing.assert_allclose(feats, want.numpy(), atol=1e-5)


def test_fit_batch_takes_the_largest_batch_under_the_margin():
    seen = []

    def peak(b):  # 1000 bytes fixed, 100 a clip
        seen.append(b)
        return 1000 + 100 * b

    # (0.85 * 10000 - 1000) / 100 = 75 clips, rounded down to a multiple of 8
    assert fit_batch(peak, 10_000) == 72
    assert seen == [batchsize.PROBE, 2 * batchsize.PROBE]
    assert fit_batch(peak, 1_500) == 2  # (1275 - 1000) / 100: small batches are not rounded
    assert fit_batch(peak, 900) == 1  # does not fit: the first step will say so
    assert fit_batch(peak, 10**12) == batchsize.MAX_BATCH


def test_cpu_batch_and_cache_key(tmp_path):
    model = load_model(save_tiny_model(tmp_path / "m", num_frames=4, size=32))
    cpu = torch.device("cpu")
    assert find_batch_size(model, cpu, torch.float32, 1, cache=tmp_path / "c.json") == batchsize.CPU_BATCH
    key = cache_key(model, cpu, torch.bfloat16, 1)
    assert "4x32" in key and "bfloat16" in key
    assert len({key, cache_key(model, cpu, torch.float32, 1), cache_key(model, cpu, torch.bfloat16, 3),
                cache_key(model, cpu, torch.bfloat16, 1, compiled=True)}) == 4  # fmt: skip


def test_cache_file_round_trip_and_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDFEAT_HOME", str(tmp_path / "cache"))
    path = batchsize.cache_file()
    assert path == tmp_path / "cache" / "batch_sizes.json"
    batchsize._write(path, {"k": 24})
    assert json.loads(path.read_text()) == {"k": 24} and batchsize._read(path) == {"k": 24}
    path.write_text("{not json")
    assert batchsize._read(path) == {}


def test_spatial_crops_of_tensor_frames_equal_the_numpy_crops():
    from vidfeat.video.transforms import spatial_crops

    frames = [np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8) for i in range(3)]
    want = spatial_crops(frames, 32, 3)
    got = spatial_crops([torch.from_numpy(f) for f in frames], 32, 3)
    assert isinstance(got, torch.Tensor) and got.shape == (3, 3, 32, 32, 3)
    np.testing.assert_array_equal(got.numpy(), want)
