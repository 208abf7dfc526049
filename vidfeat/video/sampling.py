"""The tiling contract: which clips a video gives and which times each clip samples.

Pure arithmetic on a video timeline measured in seconds from the first video frame (time 0).
The streaming reader (:mod:`vidfeat.video.reader`) and the tests share this one implementation.

For a :class:`ClipSampling` of ``T = num_frames`` frames at ``fps`` with ``stride_sec`` between
clip starts, and a video that ends at ``E`` seconds (last frame's time + its duration):

* clip ``i`` starts at ``s_i = offset_sec + i * stride_sec`` (``offset_sec`` is 0 for a tiling
  from the start) and samples the targets ``s_i + k / fps`` for
  ``k = 0 .. T-1``; the clip spans ``[s_i, s_i + clip_sec)`` with ``clip_sec = T / fps``;
* clip 0 always exists; clip ``i > 0`` exists iff ``i < max_clips`` (when given),  the previous clip did not reach the end,
  ``s_{i-1} + clip_sec < E - END_TOLERANCE``, and it starts before the end,
  ``s_i < E - REAL_TOLERANCE`` (automatic unless ``stride_sec > clip_sec`` leaves gaps);
* a target ``t`` is real iff ``t < E - REAL_TOLERANCE``; a clip's ``valid_frames`` is its number
  of real targets (at least 1 for clip 0, so a video shorter than one clip gives one clip). The
  remaining targets are padding: the reader repeats the clip's last real frame there.

With ``stride_sec <= clip_sec`` (the default stride is half a clip) the clips cover
``[offset_sec, E)`` and their number is the smallest that does. ``ClipSampling.at(t)`` is the
one-clip form: its clip 0 samples ``t + k / fps`` (a training or evaluation clip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from numbers import Integral, Real

END_TOLERANCE = 1e-6
"""Seconds: a clip ending within this of the video's end counts as reaching the end."""

REAL_TOLERANCE = 1e-9
"""Seconds: a target time ``t`` is real iff ``t < end - REAL_TOLERANCE``."""

SHOW_TOLERANCE = 1e-6
"""Seconds: a frame stamped at most this much after a target counts as shown at the target.

Absorbs the float rounding of target times (``i * stride + k / fps``) so that a frame stamped
exactly at a target is the one sampled there; real frame spacings are far larger (>= 10 us).
"""


def _positive_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return result


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video: ``num_frames`` frames sampled at ``fps``.

    ``stride_sec`` is the time between consecutive clip starts; ``None`` (the default) means half
    a clip. After construction ``stride_sec`` is always a float. ``offset_sec`` is the start of
    clip 0 and ``max_clips`` caps the number of clips (``None``: as many as cover the video).
    Raises ``ValueError`` for a non-positive or non-finite value (a negative ``offset_sec``) or
    a non-integer ``num_frames`` or ``max_clips``.
    """

    num_frames: int
    fps: float
    stride_sec: float | None = None
    offset_sec: float = 0.0
    max_clips: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, Integral):
            raise ValueError(f"num_frames must be an integer, got {self.num_frames!r}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")
        object.__setattr__(self, "num_frames", int(self.num_frames))
        object.__setattr__(self, "fps", _positive_finite("fps", self.fps))
        stride = self.clip_sec / 2 if self.stride_sec is None else self.stride_sec
        object.__setattr__(self, "stride_sec", _positive_finite("stride_sec", stride))
        offset = self.offset_sec
        if isinstance(offset, bool) or not isinstance(offset, Real) or not 0 <= offset < math.inf:
            raise ValueError(f"offset_sec must be a finite time >= 0, got {offset!r}")
        object.__setattr__(self, "offset_sec", float(offset))
        limit = self.max_clips
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, Integral) or limit < 1:
                raise ValueError(f"max_clips must be a positive integer or None, got {limit!r}")
            object.__setattr__(self, "max_clips", int(limit))

    def at(self, start_sec: float) -> ClipSampling:
        """The one clip starting at ``start_sec``: clip 0 samples ``start_sec + k / fps``."""
        return replace(self, offset_sec=start_sec, max_clips=1)

    @property
    def clip_sec(self) -> float:
        """Seconds covered by one clip: ``num_frames / fps``."""
        return self.num_frames / self.fps

    @property
    def _stride(self) -> float:
        assert self.stride_sec is not None  # set in __post_init__
        return self.stride_sec

    def clip_start(self, index: int) -> float:
        """Start time ``s_i`` of clip ``index`` (its first target time)."""
        if index < 0:
            raise ValueError(f"clip index must be >= 0, got {index}")
        return self.offset_sec + index * self._stride

    def clip_targets(self, index: int) -> tuple[float, ...]:
        """The ``num_frames`` target times of clip ``index``: ``s_i + k / fps``, increasing."""
        start = self.clip_start(index)
        return tuple(start + k / self.fps for k in range(self.num_frames))

    def clip_exists(self, index: int, end_sec: float) -> bool:
        """Whether clip ``index`` belongs to a video ending at ``end_sec``."""
        _check_end(end_sec)
        if index == 0:
            return True
        if self.max_clips is not None and index >= self.max_clips:
            return False
        previous_end = self.clip_start(index - 1) + self.clip_sec
        return (
            previous_end < end_sec - END_TOLERANCE
            and self.clip_start(index) < end_sec - REAL_TOLERANCE
        )

    def num_clips(self, end_sec: float) -> int:
        """Number of clips of a video ending at ``end_sec`` (>= 1; clips are 0 .. n-1)."""
        _check_end(end_sec)
        # Closed-form guess, then settle the float boundary with the exact predicate.
        guess = math.ceil((end_sec - END_TOLERANCE - self.clip_sec - self.offset_sec) / self._stride) + 1
        n = max(1, guess if self.max_clips is None else min(guess, self.max_clips))
        while n > 1 and not self.clip_exists(n - 1, end_sec):
            n -= 1
        while self.clip_exists(n, end_sec):
            n += 1
        return n

    def valid_frames(self, index: int, end_sec: float) -> int:
        """Number of real targets of clip ``index`` for a video ending at ``end_sec``.

        At least 1 for clip 0 (a video shorter than one frame still gives one frame).
        """
        _check_end(end_sec)
        limit = end_sec - REAL_TOLERANCE
        real = sum(1 for t in self.clip_targets(index) if t < limit)
        return max(real, 1) if index == 0 else real


def _check_end(end_sec: float) -> None:
    if not end_sec >= 0 or math.isinf(end_sec):
        raise ValueError(f"end_sec must be a finite time >= 0, got {end_sec!r}")
