"""A one-line progress bar on stderr for the ``turbogen`` command's slow steps (no dependency)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional, TextIO


class ProgressBar:
    """Shows ``label [#####-----] 3/6  2.1 s`` on stderr while a slow step runs.

    Use it as a context manager and call :meth:`advance` as work completes. ``total=None`` is for a
    single step of unknown length (loading a model): the bar then shows the elapsed time only.

    On a terminal the line is redrawn in place, and a background thread refreshes it a few times a
    second so that one long step still shows the clock moving; the final state is left as a line.
    Anywhere else (a pipe, a file, CI logs) only that final line is written, so logs do not fill with
    carriage returns. If the step fails, the bar is erased and nothing is left behind (the error message
    says what happened). Standard output is flushed before each redraw so interleaved text stays in order.
    """

    def __init__(self, label: str, total: Optional[int] = None, stream: Optional[TextIO] = None,
                 width: int = 24, refresh_seconds: float = 0.2):
        if total is not None and total < 0:
            raise ValueError(f"total must be None or >= 0, got {total}")
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.refresh_seconds = refresh_seconds
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self._start = 0.0
        self._drawn_width = 0

    def __enter__(self) -> "ProgressBar":
        self._start = time.perf_counter()
        if self._interactive:
            self._draw()
            self._ticker = threading.Thread(target=self._tick, name="turbogen-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if exc_type is None:
                self._write(self._line(), end="\n")
            elif self._interactive:
                # The error message that follows says what went wrong; a half-drawn bar would only clutter it.
                self._write("", end="\r")

    def advance(self, steps: int = 1) -> None:
        """Marks ``steps`` more units of work as done."""
        with self._lock:
            self.done += steps
        if self._interactive:
            self._draw()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def _tick(self) -> None:
        while not self._stopped.wait(self.refresh_seconds):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            if not self._stopped.is_set():
                self._write(self._line(), end="")

    def _line(self) -> str:
        parts = [self.label]
        if self.total:
            filled = min(self.width, self.width * self.done // self.total)
            parts.append(f"[{'#' * filled}{'-' * (self.width - filled)}] {self.done}/{self.total}")
        parts.append(f"{self.elapsed:.1f} s")
        return "  ".join(parts)

    def _write(self, line: str, end: str) -> None:
        sys.stdout.flush()
        if self._interactive:
            # Overwrite the previous drawing, padding with spaces if it was longer.
            self.stream.write("\r" + line.ljust(self._drawn_width) + end)
            self._drawn_width = 0 if end else len(line)
        else:
            self.stream.write(line + end)
        self.stream.flush()
