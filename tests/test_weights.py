"""Checkpoint formats, strict loading, cards and the models/convert commands."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from checkpoints import randomize_, save_hf, save_official, small_config
from vidfeat.cards import DEFAULT_MODEL, ModelCard, Preprocess, bundled_cards, find_card, sha256_file
from vidfeat.cli import main
from vidfeat.errors import WeightsError
from vidfeat.model import TimeSformer
from vidfeat.weights import load_model, save_checkpoint, to_hf

torch.set_num_threads(2)


def video(frames=8, size=64):
    return torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def small_model():
    return randomize_(TimeSformer(small_config()), seed=11).eval()


def same_outputs(a, b, frames=8, size=64):
    x = video(frames, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=0)


def test_official_pyth_round_trip_infers_architecture(tmp_path, small_model):
    path = save_official(tmp_path / "TimeSformer_divST_8x32_64_test.pyth", small_model)
    raw = torch.load(path, weights_only=True)  # what the official file looks like
    assert "model.blocks.0.temporal_attn.qkv.weight" in raw["model_state"]
    assert "model.blocks.1.temporal_fc.weight" in raw["model_state"] and isinstance(raw["cfg"], str)
    loaded = load_model(path)
    assert loaded.config == small_model.config  # depth, width, heads = width / 64, frames, grid, classes
    assert loaded.card.weights.sha256 == sha256_file(path)  # provenance recorded in every output
    same_outputs(loaded, small_model)


def test_official_names_match_the_official_vit_py(small_model):
    """The exact parameter names of facebookresearch/TimeSformer vit.py (VisionTransformer, Block)."""
    names = set(small_model.state_dict())
    expected_block = {
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "temporal_norm1.weight", "temporal_norm1.bias", "temporal_attn.qkv.weight", "temporal_attn.qkv.bias",
        "temporal_attn.proj.weight", "temporal_attn.proj.bias", "temporal_fc.weight", "temporal_fc.bias",
        "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    }  # fmt: skip
    top = {"cls_token", "pos_embed", "time_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
           "norm.weight", "norm.bias", "head.weight", "head.bias"}  # fmt: skip
    assert names == top | {f"blocks.{i}.{n}" for i in range(2) for n in expected_block}


def test_plain_state_dict_with_or_without_prefixes(tmp_path, small_model):
    state = small_model.state_dict()
    for name, sd in {"bare": state, "ddp": {f"module.model.{k}": v for k, v in state.items()}}.items():
        torch.save(sd, tmp_path / f"{name}.pth")
        same_outputs(load_model(tmp_path / f"{name}.pth"), small_model)


def test_hf_directory_and_safetensors_and_bin(tmp_path):
    save_hf(tmp_path / "st")
    model = load_model(tmp_path / "st")
    assert model.card.classes == [f"LABEL_{i}" for i in range(5)]
    # pytorch_model.bin variant of the same weights
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(load_file(str(tmp_path / "st" / "model.safetensors")), tmp_path / "bin" / "pytorch_model.bin")
    same_outputs(load_model(tmp_path / "bin"), model)
    # and our names -> HF names is the inverse mapping
    assert set(to_hf(model.state_dict())) == set(load_file(str(tmp_path / "st" / "model.safetensors")))


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, small_model):
    state = dict(small_model.state_dict())
    del state["blocks.1.temporal_fc.weight"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    state["blocks.0.mlp.fc2.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as err:
        load_model(tmp_path / "bad.pth")
    message = str(err.value)
    assert "missing: blocks.1.temporal_fc.weight" in message
    assert "unexpected: blocks.0.extra.weight" in message
    assert "wrong shape: blocks.0.mlp.fc2.bias (7,) (model: (128,))" in message


def test_not_a_checkpoint_and_unsafe_pickles_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_model(tmp_path / "junk.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model_state": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="never unpickles"):
        load_model(tmp_path / "evil.pth")
    torch.save({"cls": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not a TimeSformer"):
        load_model(tmp_path / "other.pth")


def test_save_checkpoint_round_trip_and_sha256(tmp_path, small_model):
    save_hf(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    out = save_checkpoint(model, tmp_path / "ours", name="small.test")
    card = ModelCard.from_toml(out / "card.toml")
    assert card.name == "small.test" and card.weights.sha256 == sha256_file(out / "model.safetensors")
    assert card.classes == model.card.classes and card.preprocess == model.card.preprocess
    same_outputs(load_model(out), model)
    same_outputs(load_model(out / "model.safetensors"), model)  # card found beside the weights
    # a corrupted weights file is caught by the card's sha256
    tensors = load_file(str(out / "model.safetensors"))
    tensors["norm.bias"] = tensors["norm.bias"] + 1
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_model(out)


def test_new_head_for_fine_tuning(tmp_path, small_model):
    path = save_official(tmp_path / "ckpt.pyth", small_model)
    model = load_model(path, num_classes=3)
    assert model.head.weight.shape == (3, 128) and len(model.card.classes) == 3
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, small_model.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(video()), small_model.forward_features(video()))


def test_bundled_cards_schema():
    cards = bundled_cards()
    assert {"base", "hr", "large"} <= {n for c in cards for n in c.names()}
    for card in cards:
        assert card.name.count(".") >= 1 or card.name == DEFAULT_MODEL, "names are arch.tag (the demo model aside)"
        assert card.preprocess.num_frames == card.config.num_frames
        assert card.preprocess.crop_size == card.config.img_size
        assert len(card.classes) == card.config.num_classes
        assert card.weights.url or card.weights.hf_hub_id or card.weights_path()
        with torch.device("meta"):
            params = sum(p.numel() for p in TimeSformer(card.config).parameters())
        if "num_params" in card.meta:
            assert params == card.meta["num_params"], card.name
    base = find_card("base")
    assert base.classes[0] == "abseiling" and base.preprocess.clip_sec == pytest.approx(8 * 32 / 30)
    assert find_card("large").preprocess.clip_sec == pytest.approx(12.8)


def test_missing_weights_offline_error_says_where_to_put_them(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("VIDFEAT_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError) as err:
        load_model("large")  # no hub copy: the message names the URL and the place
    assert str(tmp_path / "TimeSformer_divST_96x4_224_K400.pyth") in str(err.value)
    with pytest.raises(WeightsError, match="cannot download 'facebook/timesformer-base-finetuned-k400'"):
        load_model("base")
    with pytest.raises(WeightsError, match="unknown model 'nope'"):
        load_model("nope")


def test_user_placed_official_weights_for_a_card(tmp_path, monkeypatch):
    """A card's weights file dropped into VIDFEAT_HOME is found (here a tiny stand-in, shapes checked)."""
    monkeypatch.setenv("VIDFEAT_HOME", str(tmp_path))
    model = randomize_(TimeSformer(small_config()), seed=1)
    save_official(tmp_path / "TimeSformer_divST_8x32_224_K400.pyth", model)
    with pytest.raises(WeightsError, match="does not fit the model.*wrong shape: blocks.0.attn.proj.bias"):
        load_model("base")


def test_cli_models_and_convert(tmp_path, small_model):
    runner = CliRunner()
    result = runner.invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    assert "timesformer_large_96x224.k400" in {r["name"] for r in json.loads(result.output)}
    src = save_official(tmp_path / "m.pyth", small_model)
    result = runner.invoke(main, ["convert", str(src), str(tmp_path / "out"), "--name", "small.k5", "--num-frames", "16"])
    assert result.exit_code == 0, result.output
    converted = load_model(tmp_path / "out")
    assert converted.card.name == "small.k5" and converted.config.num_frames == 16
    same_outputs(converted, load_model(src, num_frames=16), frames=16)


def test_cli_convert_attaches_class_names(tmp_path, small_model):
    src = save_official(tmp_path / "m.pyth", small_model)
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\ne\n")
    result = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "out"), "--classes", str(tmp_path / "names.txt")])
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "out").card.classes == ["a", "b", "c", "d", "e"]
    (tmp_path / "short.txt").write_text("a\nb\n")
    result = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "o2"), "--classes", str(tmp_path / "short.txt")])
    assert result.exit_code == 2 and "2 names for a head of 5 classes" in result.output


def test_cli_bad_weights_one_line_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "junk.pth"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot read") and "Traceback" not in result.output


@pytest.mark.parametrize("attention_type", ["space_only", "joint_space_time", "divided_space_time"])
def test_every_attention_type_round_trips_through_our_format(tmp_path, attention_type):
    """A space_only checkpoint has no time embedding and no temporal layers, like an image ViT:
    with its card it must load as itself, not be inflated into a divided model."""
    model = randomize_(TimeSformer(small_config(attention_type=attention_type)), seed=3, std=0.05).eval()
    config = model.config
    card = ModelCard(
        name="roundtrip.test",
        config=config,
        preprocess=Preprocess(num_frames=config.num_frames, fps=4.0, short_side=config.img_size, crop_size=config.img_size),
        classes=[f"c{i}" for i in range(config.num_classes)],
    )
    loaded = load_model(save_checkpoint(model, tmp_path / "run", card=card))
    assert loaded.config.attention_type == attention_type
    video = torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))
