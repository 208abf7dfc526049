"""Tests for vidfeat.synth: layout, encoding, determinism, and that the label is in the motion."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidfeat import synth
from vidfeat.synth import CLASSES


def decode(path: Path) -> tuple[np.ndarray, list[Fraction], Fraction, str]:
    """Frames (T, H, W, 3), exact frame times, average rate and codec name of a video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        rate, codec = stream.average_rate, stream.codec_context.name
    times = [frame.pts * frame.time_base for frame in frames]
    return np.stack([frame.to_ndarray(format="rgb24") for frame in frames]), times, rate, codec


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the empirical CDFs of a and b."""
    points = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def scenes(label: str, count: int, seed: int, **kwargs: float) -> list[synth.Scene]:
    """Scenes of videos 0..count-1 for ``seed``, all of class ``label``."""
    return [synth.sample_scene(label, rng=synth.video_rng(seed, i), **kwargs) for i in range(count)]


def main_footprint(scene: synth.Scene) -> tuple[np.ndarray, np.ndarray]:
    """Rendered frames and the pixels (T, H, W) where the main shape shows.

    The footprint is where the frames change when the main shape is shrunk to nothing.
    """
    frames = synth.draw_scene(scene)
    hidden = replace(scene, main=replace(scene.main, radius=np.full(scene.frames, 1e-3)))
    return frames, (frames != synth.draw_scene(hidden)).any(axis=-1)


def torus_centroid(mask: np.ndarray, x_ref: np.ndarray, y_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame centroid of a (T, H, W) mask, unwrapped around per-frame reference points."""
    size = mask.shape[-1]
    xs, ys = [], []
    for t, frame in enumerate(mask):
        rows, cols = np.nonzero(frame)
        dx = (cols + 0.5 - x_ref[t] + size / 2) % size - size / 2
        dy = (rows + 0.5 - y_ref[t] + size / 2) % size - size / 2
        xs.append(x_ref[t] + dx.mean())
        ys.append(y_ref[t] + dy.mean())
    return np.array(xs), np.array(ys)


def test_render_clip_shape_and_determinism() -> None:
    a = synth.render_clip("move_left", rng=synth.video_rng(7, 0))
    b = synth.render_clip("move_left", rng=synth.video_rng(7, 0))
    c = synth.render_clip("move_left", rng=synth.video_rng(8, 0))
    assert a.shape == (96, synth.DEFAULT_SIZE, synth.DEFAULT_SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    small = synth.render_clip("grow", rng=synth.video_rng(7, 0), seconds=1.5, fps=10, size=48)
    assert small.shape == (15, 48, 48, 3)


@pytest.mark.parametrize("label", CLASSES)
def test_motion_carries_the_label(label: str) -> None:
    """Measured from pixels: the main shape moves, turns or scales as its class says."""
    for index in range(2):
        scene = synth.sample_scene(label, rng=synth.video_rng(11, index), size=112)  # fine enough to measure
        main, size, seconds = scene.main, scene.size, scene.frames / scene.fps
        frames, footprint = main_footprint(scene)
        assert footprint.any(axis=(1, 2)).all(), "the main shape is visible in every frame"
        cx, cy = torus_centroid(footprint, main.x, main.y)
        area = footprint.sum(axis=(1, 2))
        if label.startswith("move_"):
            horizontal = label in ("move_left", "move_right")
            shift, other = (cx, cy) if horizontal else (cy, cx)
            state = main.x if horizontal else main.y
            sign = -1 if label in ("move_left", "move_up") else 1
            travelled = shift[-1] - shift[0]
            assert np.abs((shift - shift[0]) - (state - state[0])).max() < 1.0
            assert sign * travelled > 0
            low, high = synth.MAIN_SPEED  # frame widths per second
            assert low * size <= abs(travelled) / seconds <= high * size
            assert np.ptp(other) < 1.0, "no motion across the class direction"
            assert np.ptp(area) <= 0.05 * area.mean()
        elif label.startswith("rotate_"):
            white = footprint & (frames >= 250).all(axis=-1)  # the marker dot's core
            mx, my = torus_centroid(white, *main.marker_xy())
            assert np.hypot(mx - main.marker_xy()[0], my - main.marker_xy()[1]).max() < 1.0
            turn = np.unwrap(np.arctan2(my - main.y, mx - main.x))  # y points down: + is clockwise
            sign = 1 if label == "rotate_clockwise" else -1
            assert (sign * np.diff(turn) > -1e-9).all(), "never turns back (pixel steps may be 0)"
            assert math.radians(130) <= abs(turn[-1] - turn[0]) * 4.0 / seconds <= math.radians(275)
            # an asymmetric shape's area centroid circles its pivot, the frame centre
            assert max(np.ptp(cx), np.ptp(cy)) < 0.5 * main.radius.max(), "the centroid only wobbles about the pivot"
            assert np.hypot(cx - size / 2, cy - size / 2).max() < 0.5 * main.radius.max()
            assert (main.x == size / 2).all() and (main.y == size / 2).all()
        else:
            ratio = area[-1] / area[0]
            scale = (main.radius[-1] / main.radius[0]) ** 2
            assert abs(ratio / scale - 1) < 0.1
            assert (ratio > 1.5) if label == "grow" else (ratio < 1 / 1.5)
            assert max(np.ptp(cx), np.ptp(cy)) < 0.15 * main.radius.max(), "scales about a fixed centre"


@pytest.mark.parametrize("label", CLASSES)
def test_consecutive_frames_differ(label: str) -> None:
    scene = synth.sample_scene(label, rng=synth.video_rng(5, 0), seconds=2.0, fps=12, size=64)
    frames, footprint = main_footprint(scene)
    change = np.abs(np.diff(frames.astype(np.int16), axis=0)).max(axis=-1)
    assert (change.mean(axis=(1, 2)) > 0.5).all(), "every frame differs from the previous one"
    moved = footprint[1:] | footprint[:-1]
    assert ((change * moved).sum(axis=(1, 2)) > 0).all(), "the main shape changes in every frame"


def test_single_frame_position_and_angle_are_uninformative() -> None:
    """The world wraps and starts are uniform: every frame's pose has one law for both senses."""
    n = 300
    left, right = scenes("move_left", n, 1), scenes("move_right", n, 2)
    up, down = scenes("move_up", n, 3), scenes("move_down", n, 4)
    size = left[0].size
    for t in (0, left[0].frames // 2, left[0].frames - 1):
        assert ks_statistic(
            np.array([s.main.x[t] % size for s in left]), np.array([s.main.x[t] % size for s in right])
        ) < 0.12
        assert ks_statistic(
            np.array([s.main.y[t] % size for s in up]), np.array([s.main.y[t] % size for s in down])
        ) < 0.12
    clockwise, anticlockwise = scenes("rotate_clockwise", n, 5), scenes("rotate_anticlockwise", n, 6)
    for t in (0, clockwise[0].frames - 1):
        assert ks_statistic(
            np.array([s.main.angle[t] % (2 * math.pi) for s in clockwise]),
            np.array([s.main.angle[t] % (2 * math.pi) for s in anticlockwise]),
        ) < 0.12


def test_sizes_overlap_and_match_at_a_random_frame() -> None:
    n = 400
    rng = np.random.default_rng(0)
    by_class = {label: scenes(label, n, 20 + k) for k, label in enumerate(("grow", "shrink", "move_left"))}
    frames = by_class["grow"][0].frames
    random_frame = {
        label: np.array([s.main.radius[rng.integers(frames)] for s in group])
        for label, group in by_class.items()
    }
    assert ks_statistic(random_frame["grow"], random_frame["shrink"]) < 0.1
    assert ks_statistic(random_frame["grow"], random_frame["move_left"]) < 0.1
    # The *first* frames of grow and shrink clips no longer overlap in size with the current size
    # range (see the synth docstring): that property is not asserted until the range is widened.


@pytest.mark.parametrize("group", [CLASSES[:4], CLASSES[4:6]])
def test_first_frame_is_shared_by_the_translation_and_by_the_rotation_classes(group: tuple[str, ...]) -> None:
    """From one generator, the classes of a group draw the same frame 0; only motion differs."""
    clips = [synth.render_clip(label, rng=synth.video_rng(12, 0), seconds=1.0, fps=8) for label in group]
    assert all(np.array_equal(clip[0], clips[0][0]) for clip in clips)
    last = [clip[-1].tobytes() for clip in clips]
    assert len(set(last)) == len(last)


@pytest.mark.parametrize("pair", [("move_left", "move_right"), ("grow", "shrink")])
def test_first_frame_pixels_do_not_predict_the_class(pair: tuple[str, str]) -> None:
    """A ridge classifier on raw first-frame pixels stays near chance on held-out clips."""
    n = 64
    features, targets = [], []
    for k, label in enumerate(pair):
        for scene in scenes(label, n, 40 + k, seconds=1.0, fps=8, size=32):
            features.append(synth.draw_scene(scene)[0].ravel() / 255.0)
            targets.append(2 * k - 1)
    x, y = np.array(features), np.array(targets, dtype=np.float64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[: len(y) // 2], order[len(y) // 2 :]
    mean = x[train].mean(axis=0)
    xt, xs = x[train] - mean, x[test] - mean
    weights = xt.T @ np.linalg.solve(xt @ xt.T + 1.0 * np.eye(len(train)), y[train])
    accuracy = float((np.sign(xs @ weights) == y[test]).mean())
    assert accuracy <= 0.7


def test_generate_dataset_layout_and_encoding(tmp_path: Path) -> None:
    out = tmp_path / "data"
    rows = synth.generate_dataset(out, videos=18, seed=3, seconds=1.0)
    assert [label for _, label in rows] == [CLASSES[i % 8] for i in range(18)]
    assert [path for path, _ in rows] == [f"{label}/{label}_{i:05d}.mp4" for i, (_, label) in enumerate(rows)]
    counts = Counter(label for _, label in rows)
    assert max(counts.values()) - min(counts.values()) <= 1 and set(counts) == set(CLASSES)
    with open(out / "labels.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["path", "label"] and [tuple(r) for r in table[1:]] == rows
    assert (out / "classes.txt").read_text().splitlines() == list(CLASSES)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == sorted(p for p, _ in rows)
    assert not list(out.rglob("*.partial"))

    for index in (0, 17):
        frames, times, rate, codec = decode(out / rows[index][0])
        assert codec == "h264" and rate == 24
        assert frames.shape == (24, synth.DEFAULT_SIZE, synth.DEFAULT_SIZE, 3)
        assert times == [Fraction(i, 24) for i in range(24)]
        original = synth.render_clip(rows[index][1], rng=synth.video_rng(3, index), seconds=1.0)
        assert np.abs(frames.astype(np.int16) - original).mean() < 3, "the file holds the rendered clip, closely"


def test_generate_dataset_is_deterministic(tmp_path: Path) -> None:
    kwargs = dict(videos=3, seconds=1.0, fps=12, size=64, classes=("grow", "move_up"))
    first = synth.generate_dataset(tmp_path / "a", seed=9, **kwargs)
    again = synth.generate_dataset(tmp_path / "b", seed=9, **kwargs)
    other = synth.generate_dataset(tmp_path / "c", seed=10, **kwargs)
    assert first == again == other
    assert (tmp_path / "a" / "classes.txt").read_text() == "grow\nmove_up\n"
    for path, _ in first:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
        a, b, c = (decode(tmp_path / d / path)[0] for d in "abc")
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_long_videos_segments_match_the_frames(tmp_path: Path) -> None:
    fps = 12
    listing = synth.generate_long_videos(
        tmp_path, videos=2, seed=4, segments=(2, 3), segment_seconds=(1.0, 1.5), fps=fps, size=64
    )
    document = json.loads((tmp_path / "segments.json").read_text())
    assert document == {"fps": fps, "size": 64, "classes": list(CLASSES), "videos": listing}
    for index, video in enumerate(listing):
        assert video["path"] == f"long_{index:03d}.mp4"
        frames, times, rate, _ = decode(tmp_path / video["path"])
        assert rate == fps and len(frames) == video["frames"]
        assert times == [Fraction(i, fps) for i in range(len(frames))]
        parts = video["segments"]
        assert 2 <= len(parts) <= 3
        assert parts[0]["start_sec"] == 0
        assert parts[-1]["end_sec"] == len(frames) / fps == video["duration_sec"]
        for part, following in zip(parts, parts[1:]):
            assert part["end_sec"] == following["start_sec"] and part["label"] != following["label"]
        for part in parts:
            assert part["label"] in CLASSES
            assert part["start_sec"] == part["start_frame"] / fps
            assert part["end_sec"] == part["end_frame"] / fps
            assert 1.0 - 0.5 / fps <= part["end_sec"] - part["start_sec"] <= 1.5 + 0.5 / fps
        # Each segment is a new scene: the hard cuts in the file are exactly at the listed starts.
        change = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
        cuts = [part["start_frame"] - 1 for part in parts[1:]]
        assert change[cuts].min() > 2 * np.delete(change, cuts).max()


def test_mpeg4_fallback_without_libx264(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    clip = synth.render_clip("shrink", rng=synth.video_rng(0, 0), seconds=1.0, fps=10, size=48)
    assert synth.write_video(tmp_path / "clip.mp4", [clip], fps=10) == 10
    frames, times, rate, codec = decode(tmp_path / "clip.mp4")
    assert codec == "mpeg4" and rate == 10 and times == [Fraction(i, 10) for i in range(10)]
    assert np.abs(frames.astype(np.int16) - clip).mean() < 10


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    rng = synth.video_rng(0, 0)
    with pytest.raises(ValueError, match="unknown class"):
        synth.render_clip("jump", rng=rng)
    with pytest.raises(ValueError, match="even"):
        synth.render_clip("grow", rng=rng, size=33)
    with pytest.raises(ValueError, match="at least 2 frames"):
        synth.render_clip("grow", rng=rng, seconds=0.01)
    with pytest.raises(ValueError, match="distinct"):
        synth.generate_dataset(tmp_path, videos=2, seed=0, classes=("grow", "grow"))
    with pytest.raises(ValueError, match="at least 2"):
        synth.generate_long_videos(tmp_path, videos=1, seed=0, classes=("grow",))
