"""Checkpoint formats, strict loading, cards and the models/convert commands."""

from __future__ import annotations

import json
import os
import stat
import warnings
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from checkpoints import randomize_, save_hf, save_official, small_config
from vidfeat.model.cards import (
    DEFAULT_MODEL,
    ModelCard,
    Preprocess,
    bundled_cards,
    find_card,
    placeholder_classes,
    read_class_file,
    sha256_file,
)
from vidfeat.cli import main
from vidfeat.errors import ConfigError, WeightsError
from vidfeat.model.timesformer import TimeSformer
from vidfeat.model.weights import SamplingWarning, load_checkpoint, load_model, prepare_model, save_checkpoint, to_hf

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
    with pytest.warns(SamplingWarning, match=r"0.9375 fps \(one frame in 32 of 30 fps video, from the file name's 8x32\)"):
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
    with pytest.raises(WeightsError, match="is not a checkpoint vidfeat can read: vidfeat reads .safetensors"):
        load_model(tmp_path / "junk.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model_state": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="holds Python objects beyond tensors") as err:
        load_model(tmp_path / "evil.pth")
    assert "weights_only=False" not in str(err.value) and "state_dict()" in str(err.value)
    torch.save({"cls": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not a TimeSformer"):
        load_model(tmp_path / "other.pth")
    good = (tmp_path / "other.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[: len(good) // 2])  # a torch zip cut short: not a zip any more
    with pytest.raises(WeightsError, match="cut.pth is not a checkpoint vidfeat can read"):
        load_model(tmp_path / "cut.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(WeightsError, match="is not a safetensors file vidfeat can read"):
        load_model(tmp_path / "bad.safetensors")


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "weights_only=False" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_random_bytes_are_not_a_checkpoint(tmp_path):
    """A file of random bytes given as --model: one line naming it as unreadable, no unsafe advice."""
    from videos import make_video

    random_bin = tmp_path / "random.bin"
    random_bin.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "a.mp4", num_frames=10)
    runner = CliRunner()
    line = _one_line_error(runner.invoke(main, ["convert", str(random_bin), str(tmp_path / "out")]))
    assert line == f"Error: {random_bin} is not a checkpoint vidfeat can read: vidfeat reads .safetensors files, " \
        "torch state dicts (.pth/.pt/.bin, official .pyth), Hugging Face directories and vidfeat checkpoint directories"
    assert not (tmp_path / "out" / "model.safetensors").exists()
    result = runner.invoke(main, ["extract", str(tmp_path / "in"), "-o", str(tmp_path / "f.h5"), "--model", str(random_bin),
                                  "--workers", "0", "--quiet"])  # fmt: skip
    assert _one_line_error(result) == line


def test_cli_pickle_with_objects_gets_plain_state_dict_advice(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model_state": Evil()}, tmp_path / "evil.pyth")
    line = _one_line_error(CliRunner().invoke(main, ["convert", str(tmp_path / "evil.pyth"), str(tmp_path / "out")]))
    assert "holds Python objects beyond tensors" in line and "torch.save(model.state_dict()" in line


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


def test_prepare_model_fits_the_checkpoint_without_building_it(tmp_path, small_model, monkeypatch):
    path = save_official(tmp_path / "ckpt.pyth", small_model)
    built = []
    real_init = TimeSformer.__init__
    monkeypatch.setattr(TimeSformer, "__init__", lambda self, *a, **k: built.append(k.get("card")) or real_init(self, *a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        prepared = prepare_model(path, num_frames=4, num_classes=3)
        assert built == [None]  # only the meta-device reference of the fit check
        assert prepared.card.config.num_frames == prepared.card.preprocess.num_frames == 4
        assert prepared.embedding_dim == 128 and prepared.new_head and len(prepared.card.classes) == 3
        assert prepared.state["time_embed"].shape[1] == 4
        model = prepared.build()
        loaded = load_model(path, num_frames=4, num_classes=3)
    assert model.card == prepared.card and model.num_features == prepared.embedding_dim
    assert not model.training and model.head.weight.shape == (3, 128)
    for key, value in loaded.state_dict().items():
        if not key.startswith("head."):  # the new heads are random
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(WeightsError, match="does not fit the model"):
        bad = dict(load_file(str(save_checkpoint(model, tmp_path / "ours") / "model.safetensors")))
        bad.pop("norm.bias")
        save_file(bad, str(tmp_path / "bad.safetensors"))
        prepare_model(tmp_path / "bad.safetensors")


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
    assert result.exit_code == 2 and "2 class names for a head of 5 classes" in result.output
    assert not (tmp_path / "o2").exists()


def test_one_class_list_reader_for_cards_convert_and_training(tmp_path, small_model):
    """Cards, ``vidfeat convert --classes`` and the training data read class lists alike:
    blank lines and surrounding spaces skipped, a repeated name or an empty file refused in one line."""
    names = tmp_path / "names.txt"
    names.write_text("a\n\n  b \nc\n\n")
    assert read_class_file(names) == ["a", "b", "c"]
    names.write_text("a\nb\na\nc\nb\n")
    repeats = f"the class list {names} repeats a, b: each class name must appear once"
    with pytest.raises(ConfigError, match=f"^{repeats}$"):
        read_class_file(names)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ConfigError, match="is empty: write one class name a line$"):
        read_class_file(tmp_path / "empty.txt")
    src = save_official(tmp_path / "m.pyth", small_model)
    result = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "out"), "--classes", str(names)])
    assert (result.exit_code, result.output) == (1, f"Error: {repeats}\n")
    card_path = tmp_path / "card" / "card.toml"
    card = ModelCard(name="c", config=small_model.config, preprocess=Preprocess(8, 8.0, 32, 32), classes=placeholder_classes(5))
    card.to_toml(card_path)
    assert ModelCard.from_toml(card_path).classes == ["class_0", "class_1", "class_2", "class_3", "class_4"]
    (card_path.parent / "classes.txt").write_text("a\nb\na\nc\nb\n")
    with pytest.raises(ConfigError, match=f"^the class list {card_path.parent / 'classes.txt'} repeats a, b"):
        ModelCard.from_toml(card_path)


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


def _official_like(path, card, *, num_classes=None):
    """An official-style .pyth with the full-size tensor shapes of ``card``'s model, each one
    element expanded (the file stays a few kB): enough for matching, not for running."""
    config = card.config if num_classes is None else replace(card.config, num_classes=num_classes)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in TimeSformer(config).state_dict().items()}
    state = {f"model.{k}": torch.zeros(1).expand(shape) for k, shape in shapes.items()}
    torch.save({"epoch": 15, "model_state": state, "cfg": ""}, path)
    return path


@pytest.mark.parametrize("card_name", [c.name for c in bundled_cards() if c.weights.format == "official"])
def test_official_file_gets_its_cards_sampling_heads_and_classes(tmp_path, card_name):
    """Matched by file name, and also when renamed (by shapes and class count): no warning either way."""
    card = find_card(card_name)
    for file_name in (card.weights.file, "renamed.pyth"):
        path = _official_like(tmp_path / file_name, card)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SamplingWarning)
            found, _ = load_checkpoint(path)
        assert found.name == card.name and found.preprocess == card.preprocess
        assert found.classes == card.classes and found.config == card.config
        assert found.weights.sha256 == sha256_file(path) and found.weights.file == file_name


def test_official_sampling_figures_come_from_the_cards():
    """The two the issue names: 8-frame SSv2 at 2 fps, 96-frame HowTo100M every 32nd frame."""
    assert find_card("timesformer_base_8x224.ssv2").preprocess.fps == 2.0
    assert find_card("howto100m").preprocess.fps == 0.9375


def test_official_file_no_card_fits_says_what_it_assumed(tmp_path):
    k400 = find_card("base")
    path = _official_like(tmp_path / "TimeSformer_divST_8x32_224_K600.pyth", k400, num_classes=600)
    with pytest.warns(SamplingWarning, match=r"no bundled model card fits .* 0.9375 fps \(one frame in 32 .* 8x32\).*heads assumed: 12"):
        card, _ = load_checkpoint(path)
    assert card.preprocess.fps == 0.9375 and "sampling_assumed" in card.meta and "num_heads_assumed" in card.meta
    # named like a card but not fitting it: not taken for that card
    path = _official_like(tmp_path / "TimeSformer_divST_8_224_SSv2.pyth", k400)
    with pytest.warns(SamplingWarning, match="named like the card 'timesformer_base_8x224.ssv2' but its tensors do not fit"):
        card, _ = load_checkpoint(path)
    assert card.name == "TimeSformer_divST_8_224_SSv2" and card.preprocess.fps == pytest.approx(8 * 30 / 256)
    with pytest.raises(WeightsError, match="has 12 heads, not 4"):
        load_checkpoint(_official_like(tmp_path / "renamed.pyth", k400), num_heads=4)


def test_model_declares_its_card_and_copies_its_config(tmp_path, small_model):
    assert "card" in TimeSformer.__annotations__ and TimeSformer(small_config()).card is None
    config = small_config()
    model = TimeSformer(config)
    model.reset_classifier(3)
    assert config.num_classes == 5 and model.config.num_classes == 3  # the caller's config is its own
    loaded = load_model(save_official(tmp_path / "m.pyth", small_model))
    assert loaded.card.config == loaded.config and loaded.card.config is not loaded.config
    loaded.reset_classifier(3, classes=["x", "y", "z"])
    assert loaded.card.classes == ["x", "y", "z"] and loaded.card.config.num_classes == 3
    loaded.reset_classifier(2)
    assert loaded.card.classes == ["class_0", "class_1"] and loaded.card.config == loaded.config
    with pytest.raises(ValueError, match="2 class names for a head of 4"):
        loaded.reset_classifier(4, classes=["a", "b"])


def test_cli_convert_writes_checked_model_with_its_own_sha256(tmp_path):
    """A 4-head model: the head count is not in the tensors. Without --num-heads the guess is said;
    with it the converted model equals the source. Written files get the umask's permissions."""
    four = randomize_(TimeSformer(small_config(num_heads=4)), seed=2).eval()
    src = save_official(tmp_path / "four.pth", four)
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(src), str(tmp_path / "guessed")])
    assert result.exit_code == 0, result.output
    assert "heads assumed: 2 = width / 64 (give the real count with --num-heads)" in result.stderr
    result = runner.invoke(main, ["convert", str(src), str(tmp_path / "out"), "--num-heads", "4"])
    assert result.exit_code == 0, result.output
    assert "heads assumed" not in result.stderr
    written = tmp_path / "out" / "model.safetensors"
    assert result.stdout.strip() == f"wrote {written} (sha256 {sha256_file(written)}) and {tmp_path / 'out' / 'card.toml'}"
    converted = load_model(tmp_path / "out")
    assert converted.config.num_heads == 4
    same_outputs(converted, four)
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "out").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_cli_convert_refuses_a_model_whose_outputs_differ(tmp_path, small_model, monkeypatch):
    import vidfeat.model.weights

    real = vidfeat.model.weights.safetensors_bytes

    def corrupt(state, metadata=None):  # what a broken conversion would write
        state = dict(state, **{"norm.bias": state["norm.bias"] + 1e-3})
        return real(state, metadata=metadata)

    monkeypatch.setattr(vidfeat.model.weights, "safetensors_bytes", corrupt)
    src = save_official(tmp_path / "m.pth", small_model)
    result = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "out"), "--num-heads", "2"])
    assert result.exit_code == 1 and "outputs differ from the source's" in result.output, result.output
    assert not any((tmp_path / "out").iterdir())


def test_cli_models_in_a_pipe_keeps_full_names_and_weight_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDFEAT_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["models"])  # CliRunner's stdout is not a terminal
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.output.splitlines()]
    assert lines[0] == ["name", "aliases", "frames x size", "fps", "classes", "status", "weights"]
    rows = {cells[0]: cells for cells in lines[1:]}
    assert set(rows) == {c.name for c in bundled_cards()}
    assert rows["timesformer_large_96x224.howto100m"][6] == str(tmp_path / "TimeSformer_divST_96x32_224_HowTo100M.pyth")
    assert rows["timesformer_base_8x224.k400"][5] == "hub: facebook/timesformer-base-finetuned-k400"
    assert rows[DEFAULT_MODEL][5] == "here" and rows[DEFAULT_MODEL][6] == str(find_card(DEFAULT_MODEL).weights_path())
    data = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert {r["name"]: r["weights_path"] for r in data} == {name: cells[6] for name, cells in rows.items()}
