"""Progress of an extraction run: a rich live display on a terminal, plain periodic log lines
otherwise (cluster logs), and one line per failed or partial video either way.

Progress is counted in video-seconds as clips are computed, not in finished videos, so it moves
inside a long video: each video's duration is read up front from its container metadata
(:meth:`Progress.expect`, fed by a thread), each computed clip advances its video to the clip's
end time, and a finished video counts its whole duration. Shown: videos done / total, video
time done / total, clips/s, video-hours per wall-clock hour, an ETA from the video time left at
the rate so far (from the bytes left when no duration is known), failures so far, and how busy
the decoders and the model are (summed decode time over workers x wall time, model time over
wall time): whichever is near 100% is the bottleneck.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):  # NaN or unknown
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Receives the pipeline's events. ``enabled=False`` prints only failures and warnings
    (library use). Without a terminal, a log line is printed at least every ``log_every``
    seconds (0: at every event); ``clock`` is the time source (seconds, monotonic). ``notes``:
    print the run's notes (:meth:`note`: a decoder fallback, a lowered shared-memory plan);
    None: when ``enabled``."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        log_every: float = 30.0,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
        notes: bool | None = None,
    ):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.notes = enabled if notes is None else notes
        self.live_mode = enabled and self.console.is_terminal
        self.workers = 1  # decode processes, set by start()
        self.log_every = log_every
        self.clock = clock
        self.total = self.total_bytes = self.skipped = 0
        self.done = self.done_bytes = self.clips = self.failures = 0
        self.done_sec = self.decode_sec = self.model_sec = 0.0
        self._expected: dict[int, float | None] = {}  # video -> duration from its metadata
        self._known_sec, self._known = 0.0, 0  # sum and count of the known durations
        self._covered: dict[int, float] = {}  # unfinished video -> video time computed so far
        self._lock = threading.RLock()  # expect() comes from the probing thread, the ticker logs
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None
        self.started = self.last_log = clock()
        self._rate_from: tuple[float, float, int] | None = None  # (time, video-seconds, bytes) after the first clip
        self._live: Live | None = None

    # events -------------------------------------------------------------------------------------

    def start(self, *, total: int, total_bytes: int, skipped: int, workers: int) -> None:
        self.total, self.total_bytes, self.skipped = total, total_bytes, skipped
        self.workers = max(1, workers)
        self.started = self.last_log = self.clock()
        if skipped and self.enabled:
            self.console.print(f"resuming: {skipped} videos already done, {total} to go")
        if self.live_mode:
            # Live re-renders `self` (via __rich__) 4 times a second: elapsed and ETA keep moving.
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        elif self.enabled and self.log_every > 0 and total:
            # a line every log_every seconds even while one clip takes longer than that
            self._ticker = threading.Thread(target=self._tick, name="vidfeat-progress", daemon=True)
            self._ticker.start()

    def expect(self, video: int, duration_sec: float | None) -> None:
        """Video ``video`` (the run's index) lasts ``duration_sec`` (None: unknown)."""
        with self._lock:
            if video in self._expected:  # already finished, with its decoded duration
                return
            self._expected[video] = duration_sec
            if duration_sec is not None and math.isfinite(duration_sec):
                self._known_sec += duration_sec
                self._known += 1

    def clip_done(self, video: int, end_sec: float) -> None:
        """A clip of ``video`` ending at ``end_sec`` (video time) was computed."""
        with self._lock:
            self.clips += 1
            covered = self._covered.get(video, 0.0)
            if end_sec > covered:
                self.done_sec += end_sec - covered
                self._covered[video] = end_sec
            if self._rate_from is None:
                # The rate counts from the first clip, that clip included: start-up (model load,
                # first decode) is not work the rest of the run repeats, nor is the whole clip
                # of video the first clip covers at once.
                self._rate_from = (self.clock(), self.done_sec, self.done_bytes)
        self._maybe_log()

    def video_done(self, video: int, size_bytes: int, duration_sec: float, decode_sec: float, model_sec: float) -> None:
        with self._lock:
            self.done += 1
            self.done_bytes += size_bytes
            expected = self._expected.get(video)
            if expected is None or not math.isfinite(expected):  # unknown up front: the decoded one
                expected = duration_sec if math.isfinite(duration_sec) else self._covered.get(video, 0.0)
                self._expected[video] = None
                self._known_sec += expected
                self._known += 1
            self.done_sec += expected - self._covered.pop(video, 0.0)
            self.decode_sec += decode_sec
            self.model_sec = model_sec  # cumulative, from the runner
        self._maybe_log()

    def failure(self, name: str, status: str, reason: str) -> None:
        self.failures += status == "failed"
        line = Text(f"vidfeat: {status}: {name}: {reason}", style="yellow" if status == "partial" else "red")
        self.console.print(line, soft_wrap=True)

    def warning(self, name: str, text: str) -> None:
        self.console.print(Text(f"vidfeat: warning: {name}: {text}", style="yellow"), soft_wrap=True)

    def note(self, text: str) -> None:
        """One line about the run as a whole (shown when ``notes``)."""
        if self.notes:
            self.console.print(Text(text), soft_wrap=True)

    def close(self) -> None:
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
        elif self.enabled:
            self._log()

    def _tick(self) -> None:
        while not self._closed.wait(self.log_every / 4):
            self._maybe_log()

    def _maybe_log(self) -> None:
        if self._live is None and self.enabled and self.clock() - self.last_log >= self.log_every:
            self._log()

    def _log(self) -> None:
        with self._lock:
            self.last_log = self.clock()
            line = self.line()
        self.console.file.write(line + "\n")
        self.console.file.flush()

    # rendering ----------------------------------------------------------------------------------

    def total_sec(self) -> float:
        """Video time of the run: the known durations plus their mean for each unknown one."""
        if not self._known:
            return math.nan
        return self._known_sec / self._known * max(self.total, self._known)

    def fraction(self) -> float:
        total = self.total_sec()
        if math.isfinite(total) and total > 0:
            return min(1.0, self.done_sec / total)
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0

    def eta(self) -> float:
        """Seconds left at the rate since the first computed clip (NaN until work after it is done)."""
        if self._rate_from is None:
            return math.nan
        since, sec0, bytes0 = self._rate_from
        elapsed = self.clock() - since
        total = self.total_sec()
        if math.isfinite(total) and total > 0:
            done, left = self.done_sec - sec0, total - self.done_sec
        else:
            done, left = self.done_bytes - bytes0, self.total_bytes - self.done_bytes
        return elapsed * max(0.0, left) / done if done > 0 and elapsed > 0 else math.nan

    def line(self) -> str:
        elapsed = max(1e-9, self.clock() - self.started)
        decode_busy = self.decode_sec / (elapsed * self.workers)
        model_busy = self.model_sec / elapsed
        return (
            f"videos {self.done}/{self.total} | video {_duration(self.done_sec)} of {_duration(self.total_sec())} | "
            f"{self.clips / elapsed:.1f} clips/s | {self.done_sec / elapsed:.1f} video-h/h | "
            f"elapsed {_duration(elapsed)} ETA {_duration(self.eta())} | "
            f"failed {self.failures} | decode busy {decode_busy:.0%} model busy {model_busy:.0%}"
        )

    def __rich__(self) -> Text:
        with self._lock:
            frac, line = self.fraction(), self.line()
        width = 30
        bar = "█" * int(frac * width) + "░" * (width - int(frac * width))
        return Text(f"{bar} {frac:5.1%}  " + line)


class TrainProgress:
    """Progress of a training run (rank 0): a rich bar on a terminal, plain log lines otherwise
    (or nothing when ``enabled`` is False). ``note`` prints one line either way."""

    def __init__(self, *, total: int, done: int, enabled: bool, console: Console | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total, self.start_step, self.started = total, done, time.monotonic()
        self.bar: Bar | None = None
        if enabled and self.console.is_terminal:
            self.bar = Bar(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[rate]:.1f} clips/s"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task("train", total=total, completed=done, epoch="", loss=float("nan"), lr=0.0, rate=0.0)
            self.bar.start()

    def step(self, *, step: int, epoch: str, loss: float, lr: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=epoch, loss=loss, lr=lr, rate=rate)
        elif self.enabled:
            elapsed = time.monotonic() - self.started
            eta = elapsed / max(1, step - self.start_step) * (self.total - step)
            self.note(f"epoch {epoch} step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {rate:.1f} clips/s ETA {_duration(eta)}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
