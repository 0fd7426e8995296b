"""Progress output of a push on its `log_output` stream: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import threading
import time
from typing import TextIO

__all__ = ["LineProgress", "Progress", "TerminalProgress", "format_bytes", "open_progress"]

_BAR_WIDTH = 30
# A terminal bar is redrawn at most this often, in seconds.
_REDRAW_INTERVAL = 0.1


def format_bytes(count: float) -> str:
    """Format a byte count with a binary unit: `512 B`, `1.5 KiB`, `12.0 MiB`."""
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            break
    return f"{count:.1f} {unit}"


class Progress:
    """Silent progress, and the interface of the others. Methods may be called from any thread."""

    def start(self, total_bytes: int) -> None:
        """Begin counting towards `total_bytes` bytes to send."""

    def advance(self, sent_bytes: int) -> None:
        """Count `sent_bytes` more bytes as sent."""

    def message(self, text: str) -> None:
        """Show one line of text."""

    def finish(self) -> None:
        """End the output; no call follows."""


class LineProgress(Progress):
    """One plain line per event, for logs and pipes."""

    def __init__(self, output: TextIO) -> None:
        self._output = output
        self._lock = threading.Lock()

    def message(self, text: str) -> None:
        with self._lock:
            self._output.write(text + "\n")
            self._output.flush()


class TerminalProgress(Progress):
    """A bar with bytes sent, total and rate, redrawn in place; event lines scroll above it."""

    def __init__(self, output: TextIO) -> None:
        self._output = output
        self._lock = threading.Lock()
        self._total = 0
        self._sent = 0
        self._started = time.monotonic()
        self._last_drawn = 0.0
        self._bar_shown = False

    def start(self, total_bytes: int) -> None:
        with self._lock:
            self._total = total_bytes
            self._sent = 0
            self._started = time.monotonic()
            self._draw()

    def advance(self, sent_bytes: int) -> None:
        with self._lock:
            self._sent += sent_bytes
            if time.monotonic() - self._last_drawn >= _REDRAW_INTERVAL:
                self._draw()

    def message(self, text: str) -> None:
        with self._lock:
            self._output.write("\r\x1b[K" + text + "\n")
            if self._bar_shown:
                self._draw()
            else:
                self._output.flush()

    def finish(self) -> None:
        with self._lock:
            if self._bar_shown:
                self._draw()
                self._output.write("\n")
                self._output.flush()
                self._bar_shown = False

    def _draw(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._started, 1e-6)
        fraction = min(self._sent / self._total, 1.0) if self._total else 1.0
        filled = int(fraction * _BAR_WIDTH)
        bar = "=" * filled + (">" if filled < _BAR_WIDTH else "") + " " * max(_BAR_WIDTH - filled - 1, 0)
        line = (
            f"[{bar}] {format_bytes(self._sent)} / {format_bytes(self._total)}"
            f"  {format_bytes(self._sent / elapsed)}/s"
        )
        self._output.write("\r\x1b[K" + line)
        self._output.flush()
        self._last_drawn = now
        self._bar_shown = True


def open_progress(output: TextIO | None) -> Progress:
    """Return a bar for a terminal, plain lines for any other stream, and silence for None."""
    if output is None:
        return Progress()
    isatty = getattr(output, "isatty", None)
    if callable(isatty) and isatty():
        return TerminalProgress(output)
    return LineProgress(output)
