"""The TimeSformer module against Hugging Face transformers and the official formulation."""

from __future__ import annotations

import pytest
import timm
import torch

from checkpoints import hf_model, randomize_, save_hf, small_config
from official_reference import official_forward
from vidfeat.model.config import TimeSformerConfig
from vidfeat.model.timesformer import TimeSformer
from vidfeat.model.weights import load_model

torch.set_num_threads(2)
ATOL = 1e-5


def video(batch=2, frames=8, size=64, seed=1):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_matches_hugging_face(tmp_path, attention_type):
    hf = save_hf(tmp_path, attention_type)
    ours = load_model(tmp_path)
    x = video()
    with torch.no_grad():
        hf_logits = hf(pixel_values=x.transpose(1, 2)).logits
        hf_cls = hf.timesformer(pixel_values=x.transpose(1, 2)).last_hidden_state[:, 0]
        feats = ours.forward_features(x)
        logits = ours.forward_head(feats)
    assert feats.shape == (2, 128) and logits.shape == (2, 5)
    torch.testing.assert_close(feats, hf_cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, hf_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours(x), logits, atol=0, rtol=0)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
@pytest.mark.parametrize("frames,size", [(8, 64), (4, 48)])
def test_matches_official_formulation(attention_type, frames, size):
    """Including space_only, which averages over frames at the end (HF does not)."""
    model = randomize_(TimeSformer(small_config(attention_type=attention_type)), seed=3).eval()
    x = video(frames=frames, size=size)
    ref_feats, ref_logits = official_forward(model.state_dict(), x, kind=attention_type, depth=2, heads=2)
    with torch.no_grad():
        feats = model.forward_features(x)
    torch.testing.assert_close(feats, ref_feats, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.forward_head(feats), ref_logits, atol=ATOL, rtol=0)


def test_space_only_differs_from_hf_per_frame_output(tmp_path):
    """HF's space_only returns one prediction per frame; ours averages frames as the paper does."""
    hf = hf_model("space_only")
    x = video(batch=1)
    with torch.no_grad():
        per_frame = hf(pixel_values=x.transpose(1, 2)).logits
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    with torch.no_grad():
        logits = ours(x)
    assert per_frame.shape == (8, 5) and logits.shape == (1, 5)


@pytest.mark.parametrize("change", [{"num_frames": 16}, {"num_frames": 4}, {"image_size": 96}, {"image_size": 32}])
def test_other_frame_count_or_size_matches_hf_at_run_time(tmp_path, change):
    """HF resizes embeddings at run time; load_model resizes them once at load: same outputs."""
    hf = save_hf(tmp_path)
    frames, size = change.get("num_frames", 8), change.get("image_size", 64)
    hf.config.num_frames, hf.config.image_size = frames, size  # HF's layers read these at run time
    ours = load_model(tmp_path, **change)
    x = video(frames=frames, size=size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x.transpose(1, 2)).logits, atol=ATOL, rtol=0)
    assert ours.time_embed.shape[1] == frames
    assert ours.pos_embed.shape[1] == (size // 16) ** 2 + 1
    assert ours.card.preprocess.num_frames == frames and ours.card.preprocess.crop_size == size


def test_run_time_resize_equals_load_time_resize(tmp_path):
    save_hf(tmp_path)
    at_load = load_model(tmp_path, num_frames=16, image_size=96)
    at_run = load_model(tmp_path)
    x = video(frames=16, size=96)
    with torch.no_grad():
        torch.testing.assert_close(at_run(x), at_load(x), atol=ATOL, rtol=0)


def test_inflated_image_vit_equals_vit_on_a_still_video(tmp_path):
    """The paper's init: temporal attention copied from spatial, temporal_fc = 0. On a video of
    one repeated frame the TimeSformer then computes exactly the image ViT's embedding."""
    vit = randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=7), seed=5)
    vit.eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    model = load_model(tmp_path / "vit.pth", num_frames=4)
    assert model.config.attention_type == "divided_space_time" and model.config.num_heads == 3
    block = model.blocks[1]
    torch.testing.assert_close(block.temporal_attn.qkv.weight, vit.blocks[1].attn.qkv.weight)
    assert not block.temporal_fc.weight.any() and not model.time_embed.any()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = vit.forward_head(vit.forward_features(image), pre_logits=True)
        feats = model.forward_features(image.unsqueeze(2).expand(-1, -1, 4, -1, -1))
    torch.testing.assert_close(feats, expected, atol=ATOL, rtol=0)


def test_bf16_autocast_close_to_fp32():
    model = randomize_(TimeSformer(small_config()), seed=2, std=0.05).eval()
    x = video()
    with torch.no_grad():
        ref = model.forward_features(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_features(x)  # the final LayerNorm runs in fp32 under autocast
            logits = model.forward_head(low)
    assert logits.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(low.float(), ref, dim=-1)
    assert cos.min() > 0.99


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = randomize_(TimeSformer(small_config(drop_path_rate=0.0)), seed=4, std=0.05).train()
    x = video()
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_drop_path_only_in_training():
    model = randomize_(TimeSformer(small_config(drop_path_rate=0.5)), seed=4, std=0.05)
    x = video()
    with torch.no_grad():
        model.eval()
        a, b = model(x), model(x)
        model.train()
        torch.manual_seed(0)
        c = model(x)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_drop_path_in_training_matches_official_formulation(attention_type):
    """Stochastic depth on (train mode, same seed): each residual branch drops whole samples of the
    sequence it runs on, with one mask per sample for the divided block's MLP (CLS and patches
    together), as in the official block. Three blocks: the patches leaving the last block do not
    reach the output, so a wrong mask there would go unseen."""
    config = small_config(attention_type=attention_type, drop_path_rate=0.5, depth=3)
    model = randomize_(TimeSformer(config), seed=3).train()
    x = video(batch=6)
    torch.manual_seed(5)
    with torch.no_grad():
        feats = model.forward_features(x)
    torch.manual_seed(5)
    ref_feats, _ = official_forward(model.state_dict(), x, kind=attention_type, depth=3, heads=2, drop_path_rate=0.5)
    torch.testing.assert_close(feats, ref_feats, atol=ATOL, rtol=0)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model.forward_features(x), feats, atol=1e-3)  # some branch was dropped


def test_config_validation():
    with pytest.raises(ValueError, match="attention_type"):
        TimeSformerConfig(attention_type="divided")
    with pytest.raises(ValueError, match="divisible"):
        TimeSformerConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="multiple of the patch"):
        TimeSformer(small_config())(torch.randn(1, 3, 8, 60, 60))
