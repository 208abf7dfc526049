"""Progress of an extraction run: a rich live display on a terminal, plain periodic log lines
otherwise (cluster logs), and one line per failed or partial video either way.

Shown: videos done / total, clips/s, video-hours processed per wall-clock hour, ETA (from the
bytes left, since long and short videos mix), failures so far, and how busy the decoders and the
model are (summed decode time over workers x wall time, model time over wall time): whichever
is near 100% is the bottleneck.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or unknown
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Receives the pipeline's events. ``enabled=False`` prints only failures (library use)."""

    def __init__(self, *, enabled: bool = True, log_every: float = 30.0, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.live_mode = enabled and self.console.is_terminal
        self.workers = 1  # decode processes, set by start()
        self.log_every = log_every
        self.total = self.total_bytes = self.skipped = 0
        self.done = self.done_bytes = self.clips = self.failures = 0
        self.video_sec = self.decode_sec = self.model_sec = 0.0
        self.started = self.last_log = time.monotonic()
        self._live: Live | None = None

    # events -------------------------------------------------------------------------------------

    def start(self, *, total: int, total_bytes: int, skipped: int, workers: int) -> None:
        self.total, self.total_bytes, self.skipped = total, total_bytes, skipped
        self.workers = max(1, workers)
        self.started = self.last_log = time.monotonic()
        if skipped and self.enabled:
            self.console.print(f"resuming: {skipped} videos already done, {total} to go")
        if self.live_mode:
            # Live re-renders `self` (via __rich__) 4 times a second: elapsed and ETA keep moving.
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def failure(self, name: str, status: str, reason: str) -> None:
        self.failures += status == "failed"
        line = Text(f"vidfeat: {status}: {name}: {reason}", style="yellow" if status == "partial" else "red")
        self.console.print(line, soft_wrap=True)

    def video_done(self, size_bytes: int, duration_sec: float, clips: int, decode_sec: float, model_sec: float) -> None:
        self.done += 1
        self.done_bytes += size_bytes
        self.clips += clips
        self.video_sec += duration_sec if duration_sec == duration_sec else 0.0
        self.decode_sec += decode_sec
        self.model_sec = model_sec  # cumulative, from the runner
        if self._live is None and self.enabled and time.monotonic() - self.last_log >= self.log_every:
            self.last_log = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None
        elif self.enabled:
            print(self.line(), file=sys.stderr, flush=True)

    # rendering ----------------------------------------------------------------------------------

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate_bytes = self.done_bytes / elapsed
        eta = (self.total_bytes - self.done_bytes) / rate_bytes if rate_bytes > 0 else float("nan")
        decode_busy = self.decode_sec / (elapsed * self.workers)
        model_busy = self.model_sec / elapsed
        return (
            f"videos {self.done}/{self.total} | {self.clips / elapsed:.1f} clips/s | "
            f"{self.video_sec / elapsed:.1f} video-h/h | elapsed {_duration(elapsed)} ETA {_duration(eta)} | "
            f"failed {self.failures} | decode busy {decode_busy:.0%} model busy {model_busy:.0%}"
        )

    def __rich__(self) -> Text:
        frac = self.done_bytes / self.total_bytes if self.total_bytes else 1.0
        width = 30
        bar = "█" * int(frac * width) + "░" * (width - int(frac * width))
        return Text(f"{bar} {frac:5.1%}  " + self.line())


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
