"""Synthetic motion videos whose classes need temporal reasoning.

Every clip shows one *main* shape (square, triangle, Latin cross or ellipse; textured,
outlined, with a white marker dot so that no shape has rotational symmetry) over a
textured background (noise, stripes or checker) that drifts in a random direction at a
random speed, plus 1-2 smaller textured *distractor* shapes that wander on random walks
(Ornstein-Uhlenbeck velocity, angular velocity and size), so they follow no class rule.
The main shape is always drawn on top. The class is the main shape's motion:

============================  ==================================================
``move_left/right/up/down``   constant-velocity translation, 0.8-1.2 of the frame
                              per 4 s (0.2-0.3 frame widths per second)
``rotate_(anti)clockwise``    spin in that sense *as seen on screen*, 135-270
                              degrees per 4 s, centre fixed at the frame centre
``grow`` / ``shrink``         exponential scaling by 1.5-2x per 4 s, centre fixed (a
                              longer clip spans at most 75% of the log-size range)
============================  ==================================================

Why one frame cannot tell the classes apart:

* The world is a torus: shapes that leave one edge re-enter at the opposite one (they are
  drawn wrapped). Start positions are uniform over the frame, so the position of the main
  shape is uniform in *every* frame for every translating or scaling class; direction of
  travel is invisible.
* Rotating shapes sit at the frame centre, both senses alike, with start orientations
  uniform on the circle, so no frame reveals the sense of rotation (the position does hint
  at the *axis*: a shape at the centre may be rotating). Why the frame centre: on a
  wrap-around world with the pivot anywhere, the sense of a spin is motion relative to the
  shape's centre, a product of motion and position that the bundled model's recipe never
  learned on a CPU budget; about a pivot the model knows, it is the direction of motion at
  known places, like a translation (train/synthetic_motion.toml has the measurements).
* Sizes are bounded, so a strictly monotone size cannot have the same distribution at the
  first frame for grow and shrink (the grow clip must start smaller on average). The size
  ranges overlap, and all eight classes share the same size distribution at a *random*
  frame: a grow clip's log-radius is ``lo + k*t/T`` with ``lo`` uniform on
  ``[log r_min, log r_max - k]``; shrink is the mirror image; the other six classes use
  ``lo + k*U(0, 1)`` with the same ``k`` law, which is exactly that random-frame
  distribution. A random frame says nothing about grow vs shrink. The *first* frame does,
  with the current ranges: radius 0.2-0.4 of the frame is a log-range of ln 2, a clip scales
  by 1.5-2x, so grow clips start at most at 1.33 r_min and shrink clips at 1.5 r_min or more. A model
  that knows which frame comes first can read these two classes off it; one that does not
  (space-only attention, no time embedding) cannot. A wider size range (e.g. radius 0.08-0.4)
  would let the two ranges overlap, at the price of a retrained bundled model.
* Shape kind, texture, colours, background, its drift and the distractors are drawn
  independently of the class (every class makes the same random draws). Given the same
  generator, the four translation classes render the identical frame 0, and so do the two
  rotation classes; only the change between frames differs.

Randomness is a numpy :class:`~numpy.random.Generator`; :func:`video_rng` derives the
generator of video ``index`` from ``(seed, index)``, so a dataset is reproducible video by
video. Videos are written with PyAV (libx264, CRF 10, yuv444p, MB-tree off so that the
bytes are reproducible; mpeg4 at a high bit rate when the PyAV build has no libx264) at a
constant frame rate with frame ``i`` at ``pts = i / fps`` exactly. Quality is high because
the frames are tiny: at 24 px, CRF 20 in 4:2:0 left a mean error of ~3.8 levels a pixel,
as large as the change that 4 frames of motion make (~6), and the colour at 12 x 12 px.
"""

from __future__ import annotations

import colorsys
import csv
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

CLASSES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_clockwise",
    "rotate_anticlockwise",
    "grow",
    "shrink",
)

SHAPES: tuple[str, ...] = ("square", "triangle", "cross", "ellipse")
TEXTURES: tuple[str, ...] = ("noise", "stripes", "checker")

DEFAULT_SIZE = 24  # frame width and height in pixels; every length below is relative to it or in px

# Main-shape motion per second: 0.8-1.2 of the frame, 135-270 degrees and 1.5-2x per 4 s.
# The bundled tiny-motion model was trained on these values (docs/results.md says why
# they are what they are); changing them changes the task it is evaluated on.
MAIN_SPEED = (0.2, 0.3)  # frame widths per second
ROTATION_SPEED = (math.radians(135 / 4), math.radians(270 / 4))  # radians per second
SCALE_RATE = (math.log(1.5) / 4, math.log(2.0) / 4)  # log-radius per second
MAIN_RADIUS = (0.2, 0.4)  # circumradius range, fraction of the frame
MAX_SCALE_SPAN = 0.75  # a clip uses at most this fraction of the log-radius range
BACKGROUND_SPEED = (0.01, 0.03)  # frame widths per second
DISTRACTORS = (1, 2)  # inclusive
DISTRACTOR_RADIUS = (0.04, 0.07)  # fraction of the frame
DISTRACTOR_SPEED_STD = 0.06  # frame widths per second, per axis (stationary OU std)
DISTRACTOR_SPIN_STD = math.radians(60)  # radians per second
DISTRACTOR_SIZE_STD = 0.12  # log-radius
SHAPE_VALUE = (0.75, 1.0)  # HSV value of a shape's colour
SHAPE_SHADE = (0.3, 0.55)  # its texture's dark end: this fraction of the colour
BACKGROUND_VALUE = (0.25, 0.5)  # HSV value of the background's dark colour ...
BACKGROUND_CONTRAST = (0.1, 0.3)  # ... and how much brighter its light colour is
OUTLINE_PX = 1.2
OUTLINE_RGB = np.array([0.05, 0.05, 0.05], dtype=np.float32)
MARKER_RGB = np.array([1.0, 1.0, 1.0], dtype=np.float32)
MARKER_RADIUS = 0.2  # in shape units (circumradius 1)
CHUNK_FRAMES = 24  # frames drawn per vectorised step (bounds memory, stays cache friendly)
# x264's MB-tree rate control gave different bytes for the same input from run to run in
# this PyAV build (even single-threaded), so it is off; one thread is also faster at this size.
X264_OPTIONS = {"crf": "10", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
MPEG4_BIT_RATE = 2_000_000

_CLIP_STREAM = 0
_LONG_STREAM = 1

# Marker centre of each shape, in shape units; chosen off every symmetry axis.
_MARKERS: dict[str, tuple[float, float]] = {
    "square": (0.36, -0.36),
    "triangle": (0.2, 0.32),
    "cross": (0.55, -0.3),
    "ellipse": (0.5, 0.12),
}
# Isosceles triangle (not equilateral), apex up; vertices in shape units, y down.
_TRIANGLE = np.array([(0.0, -1.0), (0.72, 0.72), (-0.72, 0.72)], dtype=np.float32)


def _edge_planes(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normals and offsets of a convex polygon's edges (any winding)."""
    centre = vertices.mean(axis=0)
    normals, offsets = [], []
    for a, b in zip(vertices, np.roll(vertices, -1, axis=0)):
        edge = b - a
        normal = np.array([edge[1], -edge[0]], dtype=np.float64)
        normal /= np.linalg.norm(normal)
        if normal @ (centre - a) > 0:
            normal = -normal
        normals.append(normal)
        offsets.append(normal @ a)
    return np.array(normals, dtype=np.float32), np.array(offsets, dtype=np.float32)


_TRIANGLE_NORMALS, _TRIANGLE_OFFSETS = _edge_planes(_TRIANGLE)


@dataclass(frozen=True, eq=False)
class Texture:
    """A scalar pattern in [0, 1] over the plane.

    ``period`` is in the caller's units (pixels for the background, shape units for
    shapes); ``grid`` holds the cell values of ``noise`` and is ``None`` otherwise.
    """

    kind: str
    period: float
    angle: float
    phase: float
    grid: np.ndarray | None

    def sample(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Evaluate the pattern at coordinates ``u, v`` (broadcast together)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        a = (u * c + v * s) * (1.0 / self.period)
        if self.kind == "stripes":
            return 0.5 + 0.5 * np.sin(a * (2 * math.pi) + self.phase)
        b = (v * c - u * s) * (1.0 / self.period)
        if self.kind == "checker":
            wave = np.sin(a * math.pi + self.phase) * np.sin(b * math.pi)
            return 0.5 + 0.5 * np.clip(3.0 * wave, -1.0, 1.0)
        assert self.grid is not None
        n = self.grid.shape[0]
        return self.grid[np.floor(a).astype(np.int64) % n, np.floor(b).astype(np.int64) % n]


@dataclass(frozen=True, eq=False)
class Sprite:
    """A textured shape and its pose in every frame.

    ``x``, ``y`` are the centre in pixels, unwrapped (drawn modulo the frame size);
    ``angle`` is the clockwise-on-screen rotation in radians; ``radius`` the circumradius
    in pixels. All four are float arrays of length T.
    """

    shape: str
    texture: Texture
    colour: np.ndarray
    shade: np.ndarray
    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    radius: np.ndarray

    def marker_xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Unwrapped pixel position of the white marker dot in every frame."""
        mx, my = _MARKERS[self.shape]
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.x + self.radius * (c * mx - s * my), self.y + self.radius * (s * mx + c * my)


@dataclass(frozen=True, eq=False)
class Background:
    """A two-colour texture translated by ``(offset_x, offset_y)`` pixels in each frame."""

    texture: Texture
    colour_a: np.ndarray
    colour_b: np.ndarray
    offset_x: np.ndarray
    offset_y: np.ndarray


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything needed to draw one clip: ``frames`` frames of ``size`` x ``size``."""

    label: str
    fps: int
    size: int
    frames: int
    background: Background
    main: Sprite
    distractors: tuple[Sprite, ...]


def video_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that :func:`generate_dataset` uses for video ``index``.

    ``render_clip(label, rng=video_rng(seed, i), ...)`` reproduces the frames of video
    ``i`` of ``generate_dataset(..., seed=seed)`` before compression.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, _CLIP_STREAM, index]))


def _check_args(label: str | None, fps: int, size: int) -> None:
    if label is not None and label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {', '.join(CLASSES)}")
    if fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 16, got {size}")


def _frame_count(seconds: float, fps: int) -> int:
    frames = round(seconds * fps)
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got seconds={seconds} fps={fps}")
    return frames


def _saturated_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A vivid colour and a darker shade of it (the two ends of a shape's texture)."""
    colour = np.array(
        colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.55, 1.0), rng.uniform(*SHAPE_VALUE)),
        dtype=np.float32,
    )
    return colour, colour * np.float32(rng.uniform(*SHAPE_SHADE))


def _sample_texture(rng: np.random.Generator, *, pixels: bool) -> Texture:
    """A random texture; periods in pixels for backgrounds, shape units for shapes."""
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    ranges = {
        "noise": (3.0, 8.0) if pixels else (0.2, 0.4),
        "stripes": (6.0, 18.0) if pixels else (0.35, 0.8),
        "checker": (5.0, 14.0) if pixels else (0.25, 0.5),
    }
    period = float(rng.uniform(*ranges[kind]))
    angle = float(rng.uniform(0, 2 * math.pi))
    phase = float(rng.uniform(0, 2 * math.pi))
    grid = rng.uniform(size=(32, 32)).astype(np.float32) if kind == "noise" else None
    return Texture(kind, period, angle, phase, grid)


def _sample_background(rng: np.random.Generator, t: np.ndarray, size: int) -> Background:
    texture = _sample_texture(rng, pixels=True)
    hue, sat = rng.uniform(), rng.uniform(0.0, 0.35)
    value_a = rng.uniform(*BACKGROUND_VALUE)
    value_b = value_a + rng.uniform(*BACKGROUND_CONTRAST)
    colour_a = np.array(colorsys.hsv_to_rgb(hue, sat, value_a), dtype=np.float32)
    colour_b = np.array(
        colorsys.hsv_to_rgb((hue + rng.uniform(-0.1, 0.1)) % 1.0, sat, value_b), dtype=np.float32
    )
    direction = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(*BACKGROUND_SPEED) * size
    start = rng.uniform(0, 1000, size=2)
    return Background(
        texture,
        colour_a,
        colour_b,
        start[0] + speed * math.cos(direction) * t,
        start[1] + speed * math.sin(direction) * t,
    )


def _sample_main(
    label: str, rng: np.random.Generator, t: np.ndarray, duration: float, size: int
) -> Sprite:
    """The main shape; its motion is the class, everything else is independent of it."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    texture = _sample_texture(rng, pixels=False)
    colour, shade = _saturated_colours(rng)
    x0, y0 = rng.uniform(0, size, size=2)
    angle0 = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(*MAIN_SPEED) * size
    spin = rng.uniform(*ROTATION_SPEED)
    log_min, log_max = math.log(MAIN_RADIUS[0] * size), math.log(MAIN_RADIUS[1] * size)
    span = min(rng.uniform(*SCALE_RATE) * duration, MAX_SCALE_SPAN * (log_max - log_min))
    log_lo = rng.uniform(log_min, log_max - span)
    fraction = rng.uniform()

    ones = np.ones_like(t)
    x, y, angle = x0 * ones, y0 * ones, angle0 * ones
    log_radius = (log_lo + span * fraction) * ones
    if label == "move_left":
        x = x0 - speed * t
    elif label == "move_right":
        x = x0 + speed * t
    elif label == "move_up":
        y = y0 - speed * t
    elif label == "move_down":
        y = y0 + speed * t
    elif label.startswith("rotate_"):
        # Spin in place at the frame centre, the pivot every rotation clip shares. y points
        # down, so a growing angle is clockwise on screen.
        x, y = size / 2 * ones, size / 2 * ones
        angle = angle0 + (spin if label == "rotate_clockwise" else -spin) * t
    elif label == "grow":
        log_radius = log_lo + span * (t / duration)
    else:  # shrink
        log_radius = log_lo + span * (1.0 - t / duration)
    return Sprite(shape, texture, colour, shade, x, y, angle, np.exp(log_radius))


def _ornstein_uhlenbeck(
    rng: np.random.Generator, frames: int, fps: int, tau: float, std: float, channels: int
) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck paths, shape (frames, channels), time constant tau s."""
    decay = math.exp(-1.0 / (fps * tau))
    noise = rng.standard_normal((frames, channels)) * std
    noise[1:] *= math.sqrt(1.0 - decay * decay)
    path = np.empty_like(noise)
    path[0] = noise[0]
    for i in range(1, frames):
        path[i] = decay * path[i - 1] + noise[i]
    return path


def _sample_distractor(rng: np.random.Generator, frames: int, fps: int, size: int) -> Sprite:
    """A small shape on a random walk: no consistent direction, spin or growth."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    texture = _sample_texture(rng, pixels=False)
    colour, shade = _saturated_colours(rng)
    x0, y0 = rng.uniform(0, size, size=2)
    angle0 = rng.uniform(0, 2 * math.pi)
    log_radius0 = math.log(rng.uniform(*DISTRACTOR_RADIUS) * size)
    velocity = _ornstein_uhlenbeck(rng, frames, fps, 0.7, DISTRACTOR_SPEED_STD * size, 2)
    spin = _ornstein_uhlenbeck(rng, frames, fps, 1.0, DISTRACTOR_SPIN_STD, 1)[:, 0]
    wobble = _ornstein_uhlenbeck(rng, frames, fps, 1.5, DISTRACTOR_SIZE_STD, 1)[:, 0]
    step = np.cumsum(velocity, axis=0) / fps
    step -= step[0]
    turn = np.cumsum(spin) / fps
    return Sprite(
        shape,
        texture,
        colour,
        shade,
        x0 + step[:, 0],
        y0 + step[:, 1],
        angle0 + turn - turn[0],
        np.exp(log_radius0 + wobble - wobble[0]),
    )


def sample_scene(
    label: str, *, rng: np.random.Generator, seconds: float = 4.0, fps: int = 24, size: int = DEFAULT_SIZE
) -> Scene:
    """Draw the random content of one clip of class ``label`` (cheap: nothing is rendered).

    The clip has ``round(seconds * fps)`` frames; frame ``i`` is at time ``i / fps``.
    """
    _check_args(label, fps, size)
    frames = _frame_count(seconds, fps)
    t = np.arange(frames, dtype=np.float64) / fps
    background = _sample_background(rng, t, size)
    main = _sample_main(label, rng, t, frames / fps, size)
    count = int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))
    distractors = tuple(_sample_distractor(rng, frames, fps, size) for _ in range(count))
    return Scene(label, fps, size, frames, background, main, distractors)


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (approximate outside) to the unit shape, in shape units."""
    au, av_ = np.abs(u), np.abs(v)
    if shape == "square":
        return np.maximum(au, av_) - 0.72
    if shape == "cross":
        upright = np.maximum(au - 0.24, av_ - 0.95)
        bar = np.maximum(au - 0.8, np.abs(v + 0.3) - 0.22)
        return np.minimum(upright, bar)
    if shape == "triangle":
        (n0, n1, n2), (d0, d1, d2) = _TRIANGLE_NORMALS, _TRIANGLE_OFFSETS
        return np.maximum(
            np.maximum(u * n0[0] + v * n0[1] - d0, u * n1[0] + v * n1[1] - d1),
            u * n2[0] + v * n2[1] - d2,
        )
    a, b = 0.95, 0.55  # ellipse: first-order distance |q - 1| / |grad q|
    q = np.sqrt((u * (1 / a)) ** 2 + (v * (1 / b)) ** 2)
    gradient = np.sqrt((u * (1 / a**2)) ** 2 + (v * (1 / b**2)) ** 2)
    return (q - 1.0) * q / np.maximum(gradient, 1e-6)


def _coverage(distance_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (about one pixel of ramp) from a signed pixel distance."""
    return np.clip(0.5 - distance_px, 0.0, 1.0)


def _window(centres: np.ndarray, reach: float, size: int) -> np.ndarray | slice:
    """Pixel indices (modulo ``size``) within ``reach`` of any of ``centres``; a slice if all."""
    low, high = math.floor(centres.min() - reach), math.ceil(centres.max() + reach)
    if high - low >= size:
        return slice(None)
    return np.arange(low, high + 1) % size


def _draw_sprite(
    canvas: np.ndarray, sprite: Sprite, frames: slice, size: int, grid: np.ndarray
) -> None:
    """Composite ``sprite`` over the channel-first ``canvas`` (3, Tc, H, W) for ``frames``.

    Only the rows and columns the sprite can reach in these frames are computed. The
    sprite's colour is its texture (``shade`` to ``colour``), a white marker dot with a dark
    ring, and a dark outline; all layers are constant colours mixed by scalar maps, so the
    result is ``outline*a + marker*b + shade*m + (colour - shade)*m*texture``.
    """
    # Every shape lies within 1.02 circumradii; 3 px more covers the anti-aliased rim.
    reach = 1.02 * float(sprite.radius[frames].max()) + 3.0
    rows, cols = _window(sprite.y[frames], reach, size), _window(sprite.x[frames], reach, size)
    if isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray):
        index: tuple = (slice(None), slice(None), rows[:, None], cols[None, :])
    else:
        index = (slice(None), slice(None), rows, cols)
    region = canvas[index]

    half = size / 2
    cx = sprite.x[frames].astype(np.float32)[:, None, None]
    cy = sprite.y[frames].astype(np.float32)[:, None, None]
    radius = sprite.radius[frames].astype(np.float32)[:, None, None]
    cos = np.cos(sprite.angle[frames]).astype(np.float32)[:, None, None] / radius
    sin = np.sin(sprite.angle[frames]).astype(np.float32)[:, None, None] / radius
    dx = (grid[cols][None, None, :] - cx + half) % size - half  # nearest copy on the torus
    dy = (grid[rows][None, :, None] - cy + half) % size - half
    u = dx * cos + dy * sin  # shape units: undo the clockwise rotation, divide by radius
    v = dy * cos - dx * sin
    distance = _shape_distance(sprite.shape, u, v) * radius
    mx, my = _MARKERS[sprite.shape]
    marker = (np.sqrt((u - mx) ** 2 + (v - my) ** 2) - MARKER_RADIUS) * radius

    alpha = _coverage(distance)  # inside the shape
    edge = _coverage(distance + OUTLINE_PX)  # inside the outline
    dot = _coverage(marker)  # white marker
    ring = _coverage(marker - OUTLINE_PX)  # marker and its dark ring
    body = alpha * edge * (1.0 - dot) * (1.0 - ring)
    outline = alpha * (1.0 - edge + edge * (1.0 - dot) * ring)
    white = alpha * edge * dot
    textured = body * sprite.texture.sample(u, v)
    keep = 1.0 - alpha
    for c in range(3):
        region[c] = (
            region[c] * keep
            + OUTLINE_RGB[c] * outline
            + MARKER_RGB[c] * white
            + sprite.shade[c] * body
            + (sprite.colour[c] - sprite.shade[c]) * textured
        )
    canvas[index] = region


def _iter_frames(scene: Scene, chunk: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
    """Yield the scene as uint8 arrays of shape (n, H, W, 3), ``chunk`` frames at a time."""
    size = scene.size
    grid = np.arange(size, dtype=np.float32) + np.float32(0.5)  # pixel centres
    bg = scene.background
    for start in range(0, scene.frames, chunk):
        frames = slice(start, min(start + chunk, scene.frames))
        ox = bg.offset_x[frames].astype(np.float32)[:, None, None]
        oy = bg.offset_y[frames].astype(np.float32)[:, None, None]
        pattern = bg.texture.sample(grid[None, None, :] - ox, grid[None, :, None] - oy)
        canvas = np.stack([a + (b - a) * pattern for a, b in zip(bg.colour_a, bg.colour_b)])
        for sprite in (*scene.distractors, scene.main):
            _draw_sprite(canvas, sprite, frames, size, grid)
        rgb = (np.clip(canvas, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        yield np.ascontiguousarray(rgb.transpose(1, 2, 3, 0))


def draw_scene(scene: Scene) -> np.ndarray:
    """Render a scene to frames, shape (T, H, W, 3), dtype uint8, RGB."""
    return np.concatenate(list(_iter_frames(scene)))


def render_clip(
    label: str, *, rng: np.random.Generator, seconds: float = 4.0, fps: int = 24, size: int = DEFAULT_SIZE
) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 RGB of one random clip of class ``label``, T = round(seconds*fps)."""
    return draw_scene(sample_scene(label, rng=rng, seconds=seconds, fps=fps, size=size))


def _encoder() -> tuple[str, dict[str, str], int | None, str]:
    """Codec name, options, bit rate and pixel format: libx264 at CRF 10 in 4:4:4, else mpeg4
    in 4:2:0 (its only chroma layout) at a high rate."""
    import av  # PyAV only where videos are written: `vidfeat --help` imports this module for its defaults

    if "libx264" in av.codecs_available:
        return "libx264", X264_OPTIONS, None, "yuv444p"
    return "mpeg4", {}, MPEG4_BIT_RATE, "yuv420p"


def write_video(path: Path, frames: Iterable[np.ndarray], *, fps: int) -> int:
    """Encode RGB uint8 frames, given as chunks of shape (n, H, W, 3), to an mp4 file.

    Constant frame rate: frame ``i`` gets ``pts = i`` in a ``1/fps`` time base. The file is
    written next to ``path`` and renamed into place when complete (removed on error).
    Returns the number of frames written.
    """
    import av

    chunks = iter(frames)
    first = next(chunks, None)
    if first is None:
        raise ValueError(f"no frames to write to {path}")
    codec, options, bit_rate, pix_fmt = _encoder()
    partial = path.with_name(path.name + ".partial")
    time_base = Fraction(1, fps)
    count = 0
    try:
        with av.open(str(partial), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps, options=options)
            stream.height, stream.width = first.shape[1:3]
            stream.pix_fmt = pix_fmt
            stream.time_base = time_base
            stream.codec_context.gop_size = 2 * fps
            if bit_rate is not None:
                stream.bit_rate = bit_rate
            for chunk in itertools.chain([first], chunks):
                for rgb in chunk:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                    frame.pts = count
                    frame.time_base = time_base
                    container.mux(stream.encode(frame))
                    count += 1
            container.mux(stream.encode(None))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return count


def _check_classes(classes: Sequence[str], minimum: int) -> tuple[str, ...]:
    chosen = tuple(classes)
    unknown = [c for c in chosen if c not in CLASSES]
    if unknown or len(set(chosen)) != len(chosen) or len(chosen) < minimum:
        raise ValueError(
            f"classes must be at least {minimum} distinct names from {', '.join(CLASSES)}; got {chosen}"
        )
    return chosen


def generate_dataset(
    out: Path,
    *,
    videos: int,
    seed: int,
    seconds: float = 4.0,
    fps: int = 24,
    size: int = DEFAULT_SIZE,
    classes: Sequence[str] = CLASSES,
) -> list[tuple[str, str]]:
    """Write a labelled clip dataset in the class-folder layout and return (relpath, label).

    Video ``i`` has class ``classes[i % len(classes)]`` (round-robin, so class counts differ
    by at most one), the generator :func:`video_rng` ``(seed, i)``, and is written to
    ``out/<class>/<class>_<i:05d>.mp4`` with ``round(seconds * fps)`` frames. Also writes
    ``out/labels.csv`` (header ``path,label``; paths relative to ``out``, POSIX style) and
    ``out/classes.txt`` (one class per line, in ``classes`` order).
    """
    chosen = _check_classes(classes, 1)
    _check_args(None, fps, size)
    _frame_count(seconds, fps)
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    out = Path(out)
    for label in chosen:
        (out / label).mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for index in range(videos):
        label = chosen[index % len(chosen)]
        relpath = f"{label}/{label}_{index:05d}.mp4"
        scene = sample_scene(label, rng=video_rng(seed, index), seconds=seconds, fps=fps, size=size)
        write_video(out / relpath, _iter_frames(scene), fps=fps)
        rows.append((relpath, label))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("path", "label"))
        writer.writerows(rows)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in chosen), encoding="utf-8")
    return rows


def generate_long_videos(
    out: Path,
    *,
    videos: int,
    seed: int,
    segments: tuple[int, int] = (4, 7),
    segment_seconds: tuple[float, float] = (6.0, 10.0),
    fps: int = 24,
    size: int = DEFAULT_SIZE,
    classes: Sequence[str] = CLASSES,
) -> list[dict]:
    """Write long videos made of consecutive labelled segments, plus ``out/segments.json``.

    Each video ``out/long_<i:03d>.mp4`` has a segment count drawn uniformly from
    ``segments`` (inclusive) and segment durations uniform in ``segment_seconds``, rounded
    to whole frames. Consecutive segments have different classes; each segment is a fresh
    scene (hard cut). Segment ``[start_frame, end_frame)`` has ``start_sec = start_frame /
    fps`` and ``end_sec = end_frame / fps``, the exact times of the frames written.

    ``segments.json`` is ``{"fps", "size", "classes", "videos": [...]}`` where each video is
    ``{"path", "frames", "duration_sec", "segments": [{"start_sec", "end_sec", "label",
    "start_frame", "end_frame"}, ...]}``; the list of those video dicts is returned.
    """
    chosen = _check_classes(classes, 2)
    _check_args(None, fps, size)
    low, high = segments
    if not 1 <= low <= high:
        raise ValueError(f"segments must be (min, max) with 1 <= min <= max, got {segments}")
    if not 0 < segment_seconds[0] <= segment_seconds[1]:
        raise ValueError(f"segment_seconds must be (min, max) with 0 < min <= max, got {segment_seconds}")
    _frame_count(segment_seconds[0], fps)
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    listing: list[dict] = []
    for index in range(videos):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _LONG_STREAM, index]))
        scenes: list[Scene] = []
        for _ in range(int(rng.integers(low, high + 1))):
            options = [c for c in chosen if not scenes or c != scenes[-1].label]
            label = options[rng.integers(len(options))]
            frames = _frame_count(rng.uniform(*segment_seconds), fps)
            scenes.append(sample_scene(label, rng=rng, seconds=frames / fps, fps=fps, size=size))
        parts, start = [], 0
        for scene in scenes:
            end = start + scene.frames
            parts.append(
                {
                    "start_sec": start / fps,
                    "end_sec": end / fps,
                    "label": scene.label,
                    "start_frame": start,
                    "end_frame": end,
                }
            )
            start = end
        path = f"long_{index:03d}.mp4"
        write_video(out / path, (chunk for scene in scenes for chunk in _iter_frames(scene)), fps=fps)
        listing.append({"path": path, "frames": start, "duration_sec": start / fps, "segments": parts})
    document = {"fps": fps, "size": size, "classes": list(chosen), "videos": listing}
    (out / "segments.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return listing
