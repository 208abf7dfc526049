"""Training: recipes and overrides, the loop, checkpoints, kill-and-resume, fine-tuning from
other formats, torchrun, data errors; evaluation and the train/eval/synth commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from checkpoints import randomize_, save_hf, save_official, small_config
from vidfeat.cli import main
from vidfeat.video.sampling import ClipSampling
from vidfeat.training.data import ClipDataset, Entry, RepeatSampler, collate, load_data, read_entries
from vidfeat.errors import ConfigError
from vidfeat.training.evaluate import evaluate, model_input
from vidfeat.model.timesformer import TimeSformer
from vidfeat.synth import CLASSES, generate_dataset
from vidfeat.training.recipe import load_config
from vidfeat.training.loop import _optimizer, get_lr, train
from vidfeat.video.transforms import Normalize, TrainAugment
from vidfeat.video.reader import ClipReader, probe
from vidfeat.model.weights import load_model

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A 1-block model on 8 frames of 16 px: a few seconds per run on one core.
TINY = """
seed = 0
[model]
init = "scratch"
[model.arch]
img_size = 16
patch_size = 8
embed_dim = 32
depth = 1
num_heads = 2
[data]
num_frames = 8
fps = 8.0
crop_size = 16
val_fraction = 0.0
flip = false
workers = 0
scale = [1.0, 1.25]
[optim]
optimizer = "adamw"
lr = 0.003
weight_decay = 0.01
batch_size = 4
micro_batch = 2
epochs = 2
[schedule]
kind = "cosine"
warmup_epochs = 0.5
[run]
threads = 1
log_every = 2
"""


@pytest.fixture(scope="session")
def motion(tmp_path_factory) -> Path:
    """16 synthetic videos (2 per class), 2 s at 8 fps, 32 px: clips of 1 s at a random time."""
    root = tmp_path_factory.mktemp("motion")
    generate_dataset(root, videos=16, seed=0, seconds=2.0, fps=8, size=32)
    return root


@pytest.fixture(scope="session")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(TINY)
    return path


def tiny(recipe: Path, data: Path, *overrides: str):
    return load_config(recipe, [f"data.train={data}", *overrides])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def clip_batch(model, data: Path, n: int = 4) -> torch.Tensor:
    card = model.card
    dataset = ClipDataset(read_entries(data)[:n], card.classes, card.preprocess)
    batch = collate([dataset[i] for i in range(n)])
    return model_input(batch.clips, Normalize(card.preprocess.mean, card.preprocess.std))


# ---------------------------------------------------------------------------------------------
# recipes


def test_overrides_are_typed_by_the_config():
    config = load_config(
        "synthetic_motion",
        [
            "optim.lr=0.01",
            "optim.epochs=3",
            "schedule.milestones=1,2",
            "data.flip=true",
            "data.train=some dir/x.csv",
            "model.arch.depth=2",
            "data.scale=[1, 2]",
        ],
    )
    assert config.optim.lr == 0.01 and isinstance(config.optim.lr, float)
    assert config.optim.epochs == 3 and config.schedule.milestones == [1, 2]
    assert config.data.flip is True and config.data.train == "some dir/x.csv"
    assert config.model.arch.depth == 2 and config.data.scale == [1.0, 2.0]
    weighted = load_config("synthetic_motion", ["data.class_weights=grow=2,shrink=0.5"]).data.class_weights
    assert weighted == {"grow": 2.0, "shrink": 0.5} and isinstance(weighted["grow"], float)
    assert load_config("synthetic_motion", ["data.class_weights={grow = 3}"]).data.class_weights == {"grow": 3.0}


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "unknown key 'lrr'; optim has: optimizer, lr"),
        ("optimizer.lr=0.1", "unknown key 'optimizer'"),
        ("optim.epochs=ten", "optim.epochs must be an integer"),
        ("optim.epochs=2.5", "optim.epochs must be an integer"),
        ("data.flip=maybe", "data.flip must be true or false"),
        ("optim=1", "optim is a section"),
        ("optim.lr", "expected key=value"),
        ("optim.micro_batch=5", "not a multiple of micro_batch 5"),
        ("optim.optimizer=lamb", "optim.optimizer must be sgd or adamw"),
        ("model.arch.embed_dim=63", "not divisible by num_heads"),
        ("model.linear_init=kaiming", "model.linear_init must be official or xavier, got 'kaiming'"),
        ("data.class_weights=grow=many", "data.class_weights must be a table of name = value, each a number"),
        ("data.class_weights=grow=-1", "data.class_weights must be >= 0"),
    ],
)
def test_bad_overrides_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config("synthetic_motion", [override])


def test_unknown_recipe_key_is_an_error(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[optim]\nlr = 0.1\nmomentun = 0.9\n")
    with pytest.raises(ConfigError, match="unknown key optim.momentun"):
        load_config(path)


def test_bundled_recipes():
    official = load_config("kinetics_finetune")
    o, s, d = official.optim, official.schedule, official.data
    assert (o.optimizer, o.lr, o.momentum, o.weight_decay, o.epochs, o.batch_size) == ("sgd", 0.005, 0.9, 1e-4, 15, 64)
    assert (s.kind, s.milestones, s.gamma) == ("step", [11, 14], 0.1)
    assert (d.crop_size, round(d.scale[0] * 224), round(d.scale[1] * 224), d.flip) == (224, 256, 320, True)
    assert official.model.init == "base" and official.run.precision == "auto"
    motion_recipe = load_config("synthetic_motion")
    d = motion_recipe.data
    assert d.num_frames == 96 and d.fps == 24 and d.reverse_pairs and d.flip and d.vflip
    assert ["move_left", "move_right"] in d.flip_swaps and ["grow", "shrink"] in d.reverse_swaps  # flips swap labels
    assert ["grow", "shrink"] not in d.flip_swaps + d.vflip_swaps
    assert motion_recipe.model.arch.depth == 4 and motion_recipe.data.crop_size <= 48


def test_resume_check_reads_settings_added_later_as_their_defaults():
    from vidfeat.training.recipe import check_resumable

    plain = ["data.reverse_pairs=false", "data.reverse_swaps=[]"]  # the defaults of the keys added later
    config = load_config("synthetic_motion", plain)
    stored = config.to_dict()
    del stored["data"]["reverse"], stored["data"]["reverse_swaps"]  # a run started before they existed
    check_resumable(config, stored)
    with pytest.raises(ConfigError, match=r"data.reverse: False -> True"):
        check_resumable(load_config("synthetic_motion", [*plain, "data.reverse=true"]), stored)
    check_resumable(load_config("synthetic_motion", [*plain, "data.workers=3"]), stored)  # changes nothing computed
    with pytest.raises(ConfigError, match="data.reverse_swaps needs data.reverse or data.reverse_pairs = true"):
        load_config("synthetic_motion", ["data.reverse_pairs=false", 'data.reverse_swaps=[["grow", "shrink"]]'])
    with pytest.raises(ConfigError, match="data.reverse_pairs needs data.reverse_swaps"):
        load_config("synthetic_motion", ["data.reverse_swaps=[]"])


def test_resume_may_change_epochs_not_below_those_done():
    from vidfeat.training.recipe import check_resumable

    stored = load_config("synthetic_motion", ["optim.epochs=3"]).to_dict()
    longer, shorter = load_config("synthetic_motion", ["optim.epochs=5"]), load_config("synthetic_motion", ["optim.epochs=2"])
    check_resumable(longer, stored, epochs_done=3)  # extend a finished run
    check_resumable(shorter, stored, epochs_done=2)
    with pytest.raises(ConfigError) as info:
        check_resumable(shorter, stored, epochs_done=3)
    assert str(info.value) == "optim.epochs is 2, but this run has already done 3 epochs: resume with optim.epochs >= 3"
    with pytest.raises(ConfigError, match=r"optim.epochs: 3 -> 5"):  # a card's trained_with: every setting counts
        check_resumable(longer, stored)


def test_get_lr_official_steps_warmup_and_cosine():
    config = load_config("kinetics_finetune")
    per_epoch = 10
    lrs = [get_lr(e * per_epoch, config, per_epoch) for e in range(15)]
    assert lrs[:11] == [0.005] * 11
    assert lrs[11:14] == pytest.approx([0.0005] * 3) and lrs[14] == pytest.approx(0.00005)
    assert get_lr(11 * per_epoch - 1, config, per_epoch) == 0.005
    cosine = load_config(
        "kinetics_finetune",
        ["schedule.kind=cosine", "schedule.warmup_epochs=2", "schedule.warmup_start=0", "schedule.min_lr=0.0001"],
    )
    assert get_lr(0, cosine, per_epoch) == 0.0
    assert get_lr(per_epoch, cosine, per_epoch) == pytest.approx(0.0025)
    assert get_lr(2 * per_epoch, cosine, per_epoch) == pytest.approx(0.005)
    assert get_lr(15 * per_epoch, cosine, per_epoch) == pytest.approx(0.0001)
    values = [get_lr(i, cosine, per_epoch) for i in range(2 * per_epoch, 15 * per_epoch)]
    assert values == sorted(values, reverse=True)


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = TimeSformer(small_config())
    config = load_config("kinetics_finetune")
    decay, plain = _optimizer(model, config.optim).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    assert {names[id(p)] for p in plain["params"]} >= {"cls_token", "pos_embed", "time_embed", "norm.weight", "head.bias"}
    assert all(names[id(p)].endswith(".weight") and p.ndim > 1 for p in decay["params"])
    assert len(decay["params"]) + len(plain["params"]) == len(names)


# ---------------------------------------------------------------------------------------------
# data


def test_lists_with_header_times_and_relative_paths(tmp_path, motion):
    (tmp_path / "lists").mkdir()
    rel = os.path.relpath(motion / "grow" / "grow_00006.mp4", tmp_path / "lists")
    (tmp_path / "lists" / "train.tsv").write_text(
        f"path\tlabel\tstart_sec\tend_sec\n# a comment\n{rel}\tgrow\t0.5\t1.75\n{rel}\tshrink\t\t\n"
    )
    entries = read_entries(tmp_path / "lists" / "train.tsv")
    assert [(e.label, e.start_sec, e.end_sec) for e in entries] == [("grow", 0.5, 1.75), ("shrink", None, None)]
    assert entries[0].path.resolve() == (motion / "grow" / "grow_00006.mp4").resolve()
    data = load_data(motion, val_fraction=0.5, seed=3)
    assert data.classes == list(CLASSES)  # the order of classes.txt, not sorted
    assert sorted(e.label for e in data.val) == sorted(CLASSES)  # one of each label's two videos
    assert load_data(motion, val_fraction=0.5, seed=3).val == data.val


def test_training_clips_depend_only_on_seed_epoch_and_index(motion):
    entries = read_entries(motion)
    from vidfeat.model.cards import Preprocess

    pre = Preprocess(num_frames=8, fps=8.0, short_side=16, crop_size=16)
    make = lambda seed: ClipDataset(entries, CLASSES, pre, augment=TrainAugment(16, (1.0, 1.5), flip=True), seed=seed)  # noqa: E731
    a, b = make(0), make(0)
    b.set_epoch(0)
    assert torch.equal(a[3].clip, b[3].clip)  # same (seed, epoch, index), another dataset object
    b.set_epoch(1)
    assert not torch.equal(a[3].clip, b[3].clip) and a[3].clip.shape == (1, 8, 16, 16, 3)
    assert not torch.equal(make(1)[3].clip, a[3].clip)


def test_repeat_sampler_repeats_classes_by_weight_in_a_seeded_order():
    labels = [0, 0, 1, 1, 2, 2]
    sampler = RepeatSampler(labels, [1.0, 2.5, 0.0], seed=3)
    order = list(sampler)
    # class 0 once, class 1 twice and one of its two videos a third time (round(0.5 + 0.5)), class 2 never
    assert len(sampler) == len(order) == 7 and len(set(order)) == 7
    counts = lambda order: [sum(i % 6 == v for i in order) for v in range(6)]  # noqa: E731
    assert counts(order) in ([1, 1, 3, 2, 0, 0], [1, 1, 2, 3, 0, 0])
    assert sorted(i // 6 for i in order if i % 6 in (2, 3)) == [0, 0, 1, 1, 2]  # repeat k of video i is i + 6k
    assert list(RepeatSampler(labels, [1.0, 2.5, 0.0], seed=3)) == order  # same seed and epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != order and counts(sampler) in ([1, 1, 3, 2, 0, 0], [1, 1, 2, 3, 0, 0])
    ranks = [list(RepeatSampler(labels, [1.0, 2.5, 0.0], num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [3, 3] and ranks[0] + ranks[1] != order
    assert sorted(ranks[0] + ranks[1]) == sorted(order[:6]) and ranks[0] == order[0:6:2]
    with pytest.raises(ValueError, match="weight above 0"):
        RepeatSampler(labels, [0.0, 0.0, 0.0])


def test_a_repeated_video_is_the_same_video_with_its_own_clip(motion):
    from vidfeat.model.cards import Preprocess

    entries = read_entries(motion)
    pre = Preprocess(num_frames=8, fps=8.0, short_side=16, crop_size=16)
    dataset = ClipDataset(entries, CLASSES, pre, augment=TrainAugment(16, (1.0, 1.5), flip=False), seed=0)
    first, repeat = dataset[3], dataset[3 + len(entries)]
    assert repeat.index == first.index == 3 and repeat.label == first.label
    assert not torch.equal(repeat.clip, first.clip)


def test_flips_and_time_reversal_swap_the_paired_labels(motion):
    """Each operation TrainAugment reports is really applied to the crop, and the label follows
    the recipe's swap pairs; classes in no pair keep their label."""
    from vidfeat.model.cards import Preprocess
    from vidfeat.video.transforms import LabelSwaps

    entries = read_entries(motion)
    pre = Preprocess(num_frames=8, fps=8.0, short_side=16, crop_size=16)
    swaps = LabelSwaps(
        flip=(("move_left", "move_right"), ("rotate_clockwise", "rotate_anticlockwise")),
        vflip=(("move_up", "move_down"), ("rotate_clockwise", "rotate_anticlockwise")),
        reverse=(("move_left", "move_right"), ("move_up", "move_down"), ("grow", "shrink")),
    )
    every = TrainAugment(16, (1.0, 1.0), flip=True, vflip=True, reverse=True)
    plain = ClipDataset(entries, CLASSES, pre, augment=TrainAugment(16, (1.0, 1.0), flip=False), seed=5)
    augmented = ClipDataset(entries, CLASSES, pre, augment=every, seed=5, swaps=swaps)
    tables = swaps.tables(CLASSES)
    seen = set()
    for index in range(len(entries)):
        rng = np.random.default_rng([5, 0, index])  # the dataset's draws for this item, replayed
        every.short_side(rng), rng.uniform()  # short side, clip start
        _, applied = every(np.zeros((8, 16, 16, 3), np.uint8), rng)
        expected_clip, expected_label = plain[index].clip.numpy()[0], plain[index].label
        for op, axis in (("flip", 2), ("vflip", 1), ("reverse", 0)):
            if op in applied:
                expected_clip = np.flip(expected_clip, axis=axis)
                expected_label = tables[op][expected_label]
        item = augmented[index]
        assert np.array_equal(item.clip.numpy()[0], expected_clip), (index, applied)
        assert item.label == expected_label
        seen.add(applied)
    assert len(seen) >= 4  # several combinations were exercised
    label = CLASSES.index
    assert tables["reverse"][label("grow")] == label("shrink") and tables["flip"][label("grow")] == label("grow")
    assert tables["vflip"][label("rotate_anticlockwise")] == label("rotate_clockwise")
    for bad, message in (
        (LabelSwaps(flip=(("move_left", "sideways"),)), "unknown class 'sideways'"),
        (LabelSwaps(reverse=(("grow", "grow"),)), "not two different classes"),
        (LabelSwaps(flip=(("move_left", "move_right"), ("move_right", "grow"))), "'move_right' is already in another pair"),
    ):
        with pytest.raises(ConfigError, match=message):
            ClipDataset(entries, CLASSES, pre, augment=every, swaps=bad)


def test_read_at_matches_the_tiled_clips(motion):
    video = motion / "rotate_clockwise" / "rotate_clockwise_00004.mp4"
    sampling = ClipSampling(8, 8.0, stride_sec=0.375)
    with ClipReader(video, sampling, short_side=24) as reader:
        tiled = list(reader)
    assert len(tiled) > 2 and tiled[-1].valid_frames < 8  # the last clip is padded
    for clip in tiled:
        with ClipReader(video, sampling, short_side=24) as reader:
            one = reader.read_at(clip.index * 0.375)
        assert np.array_equal(one.frames, clip.frames)
        assert (one.start_sec, one.end_sec, one.valid_frames) == (clip.start_sec, clip.end_sec, clip.valid_frames)
    with ClipReader(video, sampling, short_side=24) as reader:
        past = reader.read_at(5.0)
    assert past.valid_frames == 1 and np.array_equal(past.frames[0], tiled[-1].frames[-1])
    assert reader.status == "ok" and reader.duration_sec == pytest.approx(2.0)


def test_missing_label_is_an_error_before_training(tmp_path, recipe, motion):
    (tmp_path / "classes.txt").write_text("move_left\nmove_right\n")
    (tmp_path / "list.csv").write_text(
        f"{motion}/move_left/move_left_00000.mp4,move_left\n{motion}/grow/grow_00006.mp4,grow\n"
        f"{motion}/grow/grow_00014.mp4,grow\n{motion}/shrink/shrink_00007.mp4,shrink\n"
    )
    args = ["train", str(recipe), "--set", f"data.train={tmp_path / 'list.csv'}", "--set", f"data.classes={tmp_path / 'classes.txt'}"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "missing from the class list" in result.output and "'grow' (2 videos), 'shrink' (1 video)" in result.output
    assert not (tmp_path / "run").exists()


def test_class_weights_repeat_videos_in_each_epoch(tmp_path, recipe, motion):
    with pytest.raises(ConfigError, match="data.class_weights names classes not in the class list: spin"):
        train(tiny(recipe, motion, "data.class_weights=spin=2"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # 16 training videos, 2 a class: grow 7 times (14), shrink never: 26 an epoch, 6 steps of 4 (16 unweighted: 4)
    run = tmp_path / "run"
    result = train(tiny(recipe, motion, "optim.epochs=1", "data.class_weights=grow=7,shrink=0"), run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "epoch" and records[-1]["step"] == 6
    assert np.isfinite(result.history[-1]["train_loss"])


def test_unreadable_videos_are_skipped_and_counted(tmp_path, recipe, motion):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    rows = [f"{motion / p},{label}" for p, label in (line.split(",") for line in (motion / "labels.csv").read_text().splitlines()[1:9])]
    rows += ["broken.mp4,move_left", "missing.mp4,move_right"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    # micro-batches of one clip: some hold only a failed video (a zero-weight stand-in is used)
    config = tiny(recipe, tmp_path / "list.csv", "optim.epochs=1", "optim.micro_batch=1", "optim.batch_size=2")
    result = train(config, tmp_path / "run")
    assert result.history[0]["skipped"] == 2 and np.isfinite(result.history[0]["train_loss"])
    listed = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [str(tmp_path / "broken.mp4"), str(tmp_path / "missing.mp4")]
    assert "file not found" in listed[1]
    report = evaluate(tmp_path / "run", tmp_path / "list.csv", workers=0)
    assert report["count"] == 8 and len(report["skipped"]) == 2


# ---------------------------------------------------------------------------------------------
# training


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path, recipe, motion):
    config = tiny(recipe, motion, "optim.epochs=6")
    result = train(config, tmp_path / "run")
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1

    run = tmp_path / "run"
    loaded = load_model(run)
    assert loaded.card.classes == list(CLASSES) and loaded.card.preprocess.num_frames == 8
    assert loaded.card.meta["recipe"]["optim"]["epochs"] == 6 and loaded.card.meta["epoch"] == 6
    x = clip_batch(loaded, motion)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["epoch"] == 5 and state["step"] == 6 * 4 and state["config"] == config.to_dict()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(6))
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"

    cli = CliRunner().invoke(main, ["eval", "--weights", str(run), str(motion), "--workers", "0", "--json"])
    assert cli.exit_code == 0, cli.output
    report = json.loads(cli.output)
    direct = evaluate(result.model, motion, workers=0, device="cpu")  # the model in memory, not the saved run
    assert report["count"] == 16 and report["confusion"] == direct["confusion"] and sum(map(sum, report["confusion"])) == 16
    assert report["top1"] == direct["top1"] and report["loss"] == pytest.approx(direct["loss"], abs=1e-5)
    table = CliRunner().invoke(main, ["eval", "--weights", str(run), str(motion), "--workers", "0"])
    assert table.exit_code == 0 and "top-1" in table.output and "move_left" in table.output

    again = CliRunner().invoke(main, ["train", str(recipe), "--set", f"data.train={motion}", "-o", str(run)])
    assert again.exit_code == 1 and "pass --resume" in again.output


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path, recipe, motion):
    epochs = 8  # with dropout: the random stream must be reproduced too
    straight = train(tiny(recipe, motion, f"optim.epochs={epochs}", "model.dropout=0.1", "data.workers=1"), tmp_path / "straight")

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "vidfeat", "train", str(recipe), "--set", f"data.train={motion}"]
    command += ["--set", f"optim.epochs={epochs}", "--set", "model.dropout=0.1", "-o", str(run)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600  # a hang guard only: the point is the first saved state
        while not (run / "train_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    killed_at = torch.load(run / "train_state.pt", weights_only=True)["epoch"]
    assert killed_at < epochs - 1
    print(f"killed after epoch {killed_at}")

    resumed = train(tiny(recipe, motion, f"optim.epochs={epochs}", "model.dropout=0.1"), run, resume=True)
    assert [h["epoch"] for h in resumed.history] == list(range(killed_at + 1, epochs))
    final, expected = weights(run), weights(tmp_path / "straight")
    assert final.keys() == expected.keys()
    for name in final:
        torch.testing.assert_close(final[name], expected[name], rtol=0, atol=1e-6, msg=name)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(epochs))
    assert straight.history[-1]["train_loss"] == pytest.approx(resumed.history[-1]["train_loss"], abs=1e-6)

    with pytest.raises(ConfigError, match=r"optim.lr: 0.003 -> 0.004"):
        train(tiny(recipe, motion, f"optim.epochs={epochs}", "model.dropout=0.1", "optim.lr=0.004"), run, resume=True)


@pytest.mark.slow
def test_resume_with_more_epochs_extends_a_finished_run(tmp_path, recipe, motion, capsys):
    step = ["schedule.kind=step", "schedule.milestones=[2]", "schedule.gamma=0.5"]  # lr of a step independent of the length
    straight = train(tiny(recipe, motion, "optim.epochs=3", *step), tmp_path / "straight")
    run = tmp_path / "run"
    train(tiny(recipe, motion, "optim.epochs=2", *step), run)
    capsys.readouterr()
    extended = train(tiny(recipe, motion, "optim.epochs=3", *step), run, resume=True)
    assert "resuming at epoch 3 (optim.epochs 2 -> 3: the learning-rate schedule is recomputed for 3 epochs)" in capsys.readouterr().err
    assert [h["epoch"] for h in extended.history] == [2] and extended.history[0]["lr"] == pytest.approx(0.0015)
    final, expected = weights(run), weights(tmp_path / "straight")
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert extended.history[0]["train_loss"] == pytest.approx(straight.history[2]["train_loss"], abs=1e-6)
    assert load_model(run).card.meta["epoch"] == 3

    lower = CliRunner().invoke(main, ["train", str(recipe), "--set", f"data.train={motion}", "--set", "optim.epochs=2", *sum((["--set", s] for s in step), []), "-o", str(run), "--resume"])
    assert lower.exit_code == 1 and lower.exception.__class__ is SystemExit
    assert lower.output.strip().splitlines()[-1] == "Error: optim.epochs is 2, but this run has already done 3 epochs: resume with optim.epochs >= 3"


def test_reverse_pairs_put_each_clip_and_its_reversal_in_one_batch(recipe, motion, tmp_path, monkeypatch):
    import types

    import vidfeat.training.loop as training

    seen = []
    real_input, real_loss = training.model_input, training.F.cross_entropy

    def recording_input(clips, *args):
        seen.append([clips.clone()])
        return real_input(clips, *args)

    def recording_loss(logits, labels, **kwargs):
        seen[-1].append(labels.clone())
        return real_loss(logits, labels, **kwargs)

    monkeypatch.setattr(training, "model_input", recording_input)
    monkeypatch.setattr(training, "F", types.SimpleNamespace(cross_entropy=recording_loss))
    pairs = '[["move_left", "move_right"], ["move_up", "move_down"], ["grow", "shrink"]]'
    result = train(tiny(recipe, motion, "optim.epochs=1", "data.reverse_pairs=true", f"data.reverse_swaps={pairs}"), tmp_path / "run")
    reverse = [CLASSES.index(c) for c in ("move_right", "move_left", "move_down", "move_up", "rotate_clockwise", "rotate_anticlockwise", "shrink", "grow")]
    training_batches = [(c, y) for c, y in seen if len(y) == 2 * 2]  # micro_batch 2, doubled (validation batches are separate)
    assert training_batches and len(training_batches) == len(result.history) * 4 * 2  # 4 steps x 2 accumulated
    for clips, labels in training_batches:
        assert torch.equal(clips[2:], clips[:2].flip(2))
        assert labels[2:].tolist() == [reverse[i] for i in labels[:2].tolist()]
    assert np.isfinite(result.history[-1]["train_loss"])


def test_a_run_and_an_evaluation_build_the_normalisation_once(recipe, motion, tmp_path, monkeypatch):
    """Mean and std go to the device once per run, as in extraction: a per-batch
    ``torch.tensor(mean, device=cuda)`` is a blocking host-to-device copy on CUDA."""
    import vidfeat.training.loop as training

    built, used = [], []
    real_init, real_input, real_eval = Normalize.__init__, training.model_input, training.run_eval

    def counting_init(self, *args, **kwargs):
        built.append(args)
        real_init(self, *args, **kwargs)

    def counting_input(clips, normalize):
        used.append(normalize)
        return real_input(clips, normalize)

    def counting_eval(*args, normalize, **kwargs):
        used.append(normalize)
        return real_eval(*args, normalize=normalize, **kwargs)

    monkeypatch.setattr(Normalize, "__init__", counting_init)
    monkeypatch.setattr(training, "model_input", counting_input)
    monkeypatch.setattr(training, "run_eval", counting_eval)
    result = train(tiny(recipe, motion, "optim.epochs=2"), tmp_path / "run")
    assert len(result.history) == 2 and len(used) > 4  # training micro-batches and two validations
    assert len(built) == 1 and all(n is used[0] for n in used)
    pre = result.model.card.preprocess
    assert built[0][:2] == (pre.mean, pre.std)
    built.clear()
    evaluate(result.model, motion, workers=0, device="cpu", batch_size=2)
    assert len(built) == 1


def test_a_kill_at_the_commit_point_keeps_the_epochs_metrics(tmp_path, recipe, motion, monkeypatch):
    """Killed right after a checkpoint's commit point (before it is moved into place): the resumed
    run rolls the commit forward, and the epoch's metrics record came with it."""
    import vidfeat.training.loop as training

    class Killed(Exception):
        pass

    real = training._roll_forward

    def killed_at_the_commit_point(run_dir):
        if (run_dir / ".commit").is_dir():
            raise Killed
        real(run_dir)

    run = tmp_path / "run"
    monkeypatch.setattr(training, "_roll_forward", killed_at_the_commit_point)
    with pytest.raises(Killed):
        train(tiny(recipe, motion, "optim.epochs=2"), run)
    monkeypatch.setattr(training, "_roll_forward", real)
    assert (run / ".commit" / "train_state.pt").is_file() and not (run / "train_state.pt").exists()
    resumed = train(tiny(recipe, motion, "optim.epochs=2"), run, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1]  # epoch 0 was committed
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]


@pytest.mark.parametrize("source", ["hf", "official"])
def test_finetune_from_hf_and_official_checkpoints(tmp_path, recipe, motion, source):
    if source == "hf":
        save_hf(tmp_path / "hf", seed=1)  # random TimesformerForVideoClassification, 5 labels, 8 x 64 px
        init, freeze = tmp_path / "hf", ["model.freeze_blocks=1"]
    else:
        model = randomize_(TimeSformer(small_config()), seed=2)
        init, freeze = save_official(tmp_path / "TimeSformer_small.pyth", model), ["model.head_only=true"]
    original = load_model(init).state_dict()
    config = tiny(recipe, motion, f"model.init={init}", "data.crop_size=32", "optim.epochs=1", "model.drop_path_rate=0.1", *freeze)
    result = train(config, tmp_path / "run")
    assert np.isfinite(result.history[0]["train_loss"])

    tuned = load_model(tmp_path / "run")
    assert tuned.config.num_classes == 8 and tuned.config.img_size == 32 and tuned.config.embed_dim == 128
    state = tuned.state_dict()
    assert torch.equal(state["blocks.0.attn.qkv.weight"], original["blocks.0.attn.qkv.weight"])  # frozen
    trained = not torch.equal(state["blocks.1.attn.qkv.weight"], original["blocks.1.attn.qkv.weight"])
    assert trained == (source == "hf")  # freeze_blocks=1 trains block 1; head_only does not
    assert state["head.weight"].shape == (8, 128)


def test_options_sgd_step_clip_checkpointing_bf16_and_frozen_embeddings(tmp_path, recipe, motion):
    overrides = [
        "optim.optimizer=sgd", "optim.nesterov=true", "optim.lr=0.05", "optim.grad_clip=0.5",
        "schedule.kind=step", "schedule.milestones=1", "schedule.warmup_epochs=0",
        "model.grad_checkpointing=true", "model.freeze_embeddings=true", "run.precision=bf16", "data.flip=true",
        "model.embed_init=official",
    ]  # fmt: skip
    result = train(tiny(recipe, motion, *overrides), tmp_path / "run")
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    assert [h["lr"] for h in result.history] == pytest.approx([0.05, 0.005])
    torch.manual_seed(0)  # the scratch init of the same recipe
    initial = TimeSformer(result.model.config)
    for name in ("pos_embed", "cls_token", "time_embed", "patch_embed.proj.weight"):
        assert torch.equal(result.model.state_dict()[name], initial.state_dict()[name])
    assert not torch.equal(result.model.state_dict()["head.weight"], initial.state_dict()["head.weight"])


# `vidfeat train` under torchrun, each rank logging the training clips it reads (workers = 0:
# __getitem__ runs in the rank's own process).
LOGGED_TRAIN = """
import os
from vidfeat.training import data
from vidfeat.cli import main

read = data.ClipDataset.__getitem__

def logged(self, index):
    if self.augment is not None:  # the training set
        with open(os.environ["SEEN_LOG"] + "." + os.environ["RANK"], "a") as fh:
            fh.write(f"{self.epoch} {index}\\n")
    return read(self, index)

data.ClipDataset.__getitem__ = logged
main(prog_name="vidfeat")
"""


def torchrun_train(tmp_path: Path, recipe: Path, motion: Path, run: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``vidfeat train`` on 2 CPU ranks (gloo); returns the run and {rank: [(epoch, index), ...]}."""
    script = tmp_path / "logged_train.py"
    script.write_text(LOGGED_TRAIN)
    log = tmp_path / f"seen-{run.name}-{len(list(tmp_path.glob(f'seen-{run.name}-*')))}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), "train", str(recipe)]
    command += ["--set", f"data.train={motion}", "--set", "data.val_fraction=0.25", "--set", "schedule.kind=step", "-o", str(run), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEEN_LOG": str(log)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = {}
    for rank in (0, 1):
        lines = Path(f"{log}.{rank}").read_text().split()
        seen[rank] = [(int(e), int(i)) for e, i in zip(lines[::2], lines[1::2])]
    return done, seen


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_sample_apart_write_once_and_resume(tmp_path, recipe, motion):
    run = tmp_path / "run"
    done, seen = torchrun_train(tmp_path, recipe, motion, run)
    assert done.stdout.count("run saved in") == 1 and done.stderr.count("training:") == 1  # rank 0 alone prints
    assert "8 train / 8 val videos" in done.stderr and "2 x 1 accumulated x 2 ranks" in done.stderr
    for epoch in (0, 1):  # 8 training videos, 2 steps of 2 ranks x 2 clips: each video once an epoch
        mine = {rank: [i for e, i in seen[rank] if e == epoch] for rank in (0, 1)}
        assert len(mine[0]) == len(mine[1]) == 4 and sorted(mine[0] + mine[1]) == list(range(8))
    assert [i for e, i in seen[0] if e == 0] != [i for e, i in seen[0] if e == 1]  # reshuffled each epoch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and [r["step"] for r in epochs] == [2, 4]
    assert sorted(p.name for p in run.iterdir()) == [
        "card.toml", "classes.txt", "curves.png", "metrics.jsonl", "model.safetensors", "train_state.pt",
    ]  # fmt: skip
    assert load_model(run).card.classes == list(CLASSES)

    # the same run in two sessions: 1 epoch, then --resume to 2 (the step schedule's lr does not
    # depend on the length): same clips and the same weights as the uninterrupted run
    parts = tmp_path / "parts"
    _, first = torchrun_train(tmp_path, recipe, motion, parts, "--set", "optim.epochs=1")
    resumed, second = torchrun_train(tmp_path, recipe, motion, parts, "--resume")
    assert "resuming at epoch 2 (optim.epochs 1 -> 2" in resumed.stderr and resumed.stdout.count("run saved in") == 1
    assert {r: first[r] + second[r] for r in (0, 1)} == seen
    final, expected = weights(parts), weights(run)
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert torch.load(parts / "train_state.pt", weights_only=True)["world_size"] == 2
    again = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss", "val_top1", "val_top5"):  # validation is all-reduced over the ranks
        assert [r[key] for r in again if r["kind"] == "epoch"] == pytest.approx([r[key] for r in epochs], abs=1e-6)
    assert epochs[1]["val_loss"] > 0 and epochs[1]["val_top1"] * 8 == round(epochs[1]["val_top1"] * 8)


def test_scratch_models_start_from_sine_cosine_embeddings(recipe, motion):
    from vidfeat.training.loop import _build_model

    config = tiny(recipe, motion, "model.arch.embed_dim=8", "model.arch.img_size=24", "data.crop_size=24")
    model, _ = _build_model(config, list(CLASSES), None)
    pos, time_embed = model.pos_embed[0, 1:], model.time_embed[0]  # 3 x 3 patches, 8 frames, 8 channels
    assert torch.allclose(pos[4], torch.tensor([0.8415, 0.01, 0.5403, 1.0] * 2), atol=1e-4)  # row 1, column 1
    assert torch.allclose(pos[5, 4:], torch.tensor([0.9093, 0.02, -0.4161, 0.9998]), atol=1e-4)  # column 2
    assert torch.allclose(time_embed[1], torch.tensor([0.8415, 0.1, 0.0100, 0.001, 0.5403, 0.995, 1.0, 1.0]), atol=1e-3)
    official, _ = _build_model(tiny(recipe, motion, "model.embed_init=official"), list(CLASSES), None)
    assert not official.time_embed.any() and official.pos_embed.abs().max() < 0.1


def test_scratch_linear_layers_official_or_xavier(recipe, motion):
    from vidfeat.training.loop import _build_model

    official, _ = _build_model(tiny(recipe, motion, "model.linear_init=official"), list(CLASSES), None)
    xavier, _ = _build_model(tiny(recipe, motion, "model.linear_init=xavier"), list(CLASSES), None)
    block, xblock = official.blocks[0], xavier.blocks[0]
    assert not block.temporal_fc.weight.any() and 0.015 < block.mlp.fc1.weight.std() < 0.025  # trunc normal, std 0.02
    for layer in (xblock.temporal_fc, xblock.temporal_attn.qkv, xblock.mlp.fc2, xavier.head):
        fan_out, fan_in = layer.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform: U(-bound, bound), std bound / sqrt(3)
        assert layer.weight.abs().max() <= bound and layer.weight.std() > 0.8 * bound / 3**0.5
        assert not layer.bias.any()
    assert torch.equal(xavier.time_embed, official.time_embed)  # the embeddings are initialised alike


# ---------------------------------------------------------------------------------------------
# commands


def test_eval_without_weights_needs_the_default_model(monkeypatch, motion):
    monkeypatch.setattr("vidfeat.training.evaluate.find_card", lambda name: None)
    result = CliRunner().invoke(main, ["eval", str(motion)])
    assert result.exit_code == 1 and "default model 'tiny-motion'" in result.output and "--weights" in result.output


def test_synth_command_writes_a_usable_dataset(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--videos", "8", "--seed", "3", "--long", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 8 videos" in result.output and "wrote 1 long videos" in result.output
    entries = read_entries(tmp_path / "s")  # labels.csv: the long videos are not a class
    assert sorted(e.label for e in entries) == sorted(CLASSES)
    segments = json.loads((tmp_path / "s" / "long" / "segments.json").read_text())["videos"][0]["segments"]
    assert 4 <= len(segments) <= 7 and f"wrote 1 long videos ({len(segments)} segments)" in result.output
    assert Entry(tmp_path / "s" / "grow" / "grow_00006.mp4", "grow") in entries


def test_synth_command_size(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--videos", "1", "--seed", "0", "--size", "24", "--long", "1"])
    assert result.exit_code == 0, result.output
    for video in (tmp_path / "s" / "move_left" / "move_left_00000.mp4", next((tmp_path / "s" / "long").glob("*.mp4"))):
        assert (probe(video).width, probe(video).height) == (24, 24)
    assert json.loads((tmp_path / "s" / "long" / "segments.json").read_text())["size"] == 24
    odd = CliRunner().invoke(main, ["synth", str(tmp_path / "t"), "--videos", "1", "--seed", "0", "--size", "25"])
    assert odd.exit_code == 2 and "'--size': 25 is odd" in odd.output and not (tmp_path / "t").exists()
