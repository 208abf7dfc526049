"""Where ClipDataset takes its clip (vidfeat.training.data): centred (evaluation) or random (training)
in the video's measured end, as extract's tiling measures it, never its declared duration."""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import pytest

from videos import declare_mkv_duration, frame_index_of, make_video, make_video_without_duration
from vidfeat.model.cards import Preprocess
from vidfeat.video.sampling import SHOW_TOLERANCE, ClipSampling
from vidfeat.training.data import ClipDataset, Entry, Item
from vidfeat.video.transforms import TrainAugment
from vidfeat.video.reader import ClipReader

SIZE = 96  # square frames, cropped whole: every view still shows its frame index
PRE = Preprocess(num_frames=4, fps=4.0, short_side=SIZE, crop_size=SIZE)  # 1 s clips
SECONDS, FPS = 6, 25


def undeclared(path: Path) -> None:
    make_video_without_duration(path, seconds=SECONDS, fps=FPS, size=(SIZE, SIZE), gop=10)


def declared_too_long(path: Path) -> None:
    make_video(path, seconds=SECONDS, fps=FPS, size=(SIZE, SIZE), gop=10)
    declare_mkv_duration(path, 20.0)


def raw_stream(path: Path) -> None:  # no duration, no timestamps: cannot seek
    make_video(path, seconds=SECONDS, fps=FPS, size=(SIZE, SIZE), container_format="h264")


VIDEOS = {"undeclared.mkv": undeclared, "claims20s.mkv": declared_too_long, "raw.h264": raw_stream}


def shown(item: Item) -> list[int]:
    return [frame_index_of(frame) for frame in item.clip[0].numpy()]


def frames_at(start: float) -> list[int]:
    times = [i / FPS for i in range(SECONDS * FPS)]
    return [bisect.bisect_right(times, start + k / PRE.fps + SHOW_TOLERANCE) - 1 for k in range(PRE.num_frames)]


@pytest.mark.parametrize("name", list(VIDEOS))
def test_evaluation_takes_the_centre_clip_of_the_measured_video(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    VIDEOS[name](path)
    with ClipReader(path, ClipSampling(4, 4)) as reader:
        tiled = list(reader)
    assert reader.duration_sec == pytest.approx(SECONDS)  # what extract measures
    assert len(tiled) == 11
    item = ClipDataset([Entry(path, "a")], ["a"], PRE)[0]
    assert isinstance(item, Item)
    assert shown(item) == frames_at((SECONDS - 1.0) / 2) == [62, 68, 75, 81]


@pytest.mark.parametrize("name", ["undeclared.mkv", "claims20s.mkv"])
def test_training_clips_spread_over_the_measured_video(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    VIDEOS[name](path)
    augment = TrainAugment(SIZE, (1.0, 1.0), flip=False)  # the crop is the whole frame
    dataset = ClipDataset([Entry(path, "a")], ["a"], PRE, augment=augment, seed=3)
    firsts = []
    for repeat in range(12):  # index i + k * len: video i with its own random clip
        item = dataset[repeat]
        assert isinstance(item, Item)
        firsts.append(shown(item)[0])
    starts = np.asarray(firsts) / FPS
    assert starts.max() <= SECONDS - 1.0  # the clip fits before the real end...
    assert starts.max() > 2.5 and starts.min() < 2.5  # ...and the draws use the range
    assert len(set(firsts)) > 6
