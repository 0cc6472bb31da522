"""A one-line progress bar on stderr: files done / total, audio hours, errors, throughput, ETA.

Redrawn in place on a terminal; on a pipe or log file, one line every LOG_EVERY_S seconds.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_EVERY_S = 10.0  # seconds between progress lines when stderr is not a terminal
BAR_WIDTH = 30  # characters


class Progress:
    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None):
        self.total = total
        self.enabled = enabled and total > 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self.last_log = -LOG_EVERY_S
        self.line = ""

    def update(self, done: int, audio_s: float, errors: int) -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * BAR_WIDTH)
        eta = f"ETA {format_eta(elapsed / done * (self.total - done))}" if 0 < done < self.total else ""
        self.line = (
            f"[{bar:<{BAR_WIDTH}}] {done}/{self.total} files  {audio_s / 3600:.3f} h audio  "
            f"{errors} errors  {audio_s / elapsed:.1f} audio-s/s  {eta}"
        ).rstrip()
        if self.tty:
            self.stream.write("\r" + self.line)
            self.stream.flush()
        elif elapsed - self.last_log >= LOG_EVERY_S or done == self.total:
            self.stream.write(self.line + "\n")
            self.stream.flush()
            self.last_log = elapsed

    def close(self) -> None:
        if self.enabled and self.tty and self.line:
            self.stream.write("\n")
            self.stream.flush()


def format_eta(seconds: float) -> str:
    """12 s, 3 min 04 s, 2 h 05 min: files left at the rate so far."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
