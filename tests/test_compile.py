"""``--compile``: the torch.compile'd model step gives the eager step's outputs (CPU inductor)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoints import save_tiny_model
from vidfeat.pipeline.runner import ModelRunner
from vidfeat.model.weights import load_model


@pytest.mark.slow
def test_compiled_runner_equals_eager(tmp_path):
    crops = 3  # the views are combined after the compiled step
    model = load_model(save_tiny_model(tmp_path / "m", num_frames=4, size=32)).eval()
    clips = [torch.randint(0, 256, (crops, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
             for i in range(5)]  # fmt: skip
    eager = ModelRunner(model, torch.device("cpu"), torch.float32, crops, batch_size=2)
    compiled = ModelRunner(model, torch.device("cpu"), torch.float32, crops, batch_size=2, compile=True)
    assert compiled._step is not compiled._model_step  # the compiled path is the one measured
    for part in (clips[:2], clips[2:]):  # a full batch, then one that splits into 2 + 1
        want = eager.collect(eager.submit(part))
        got = compiled.collect(compiled.submit(part))
        for a, b in zip(got, want):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
