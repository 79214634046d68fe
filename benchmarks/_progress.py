"""A progress bar per phase, on standard error.

A suite reports a phase by calling the progress object with a line (the
signature every suite already takes, ``Callable[[str], None]``) and, where it
knows how many steps the phase has, passes ``total`` and calls :meth:`tick`
after each. On a terminal the bar redraws in place; elsewhere (CI, a pipe) each
phase prints one line when it ends, with its elapsed time, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 24


class Progress:
    """Draws one bar per phase; finishing a phase prints its elapsed time."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._phase: str | None = None
        self._total = 0
        self._done = 0
        self._started = 0.0

    def __call__(self, phase: str, total: int = 0) -> None:
        """End the current phase and start ``phase``, of ``total`` steps (0: unknown)."""
        self.finish()
        self._phase, self._total, self._done, self._started = phase, total, 0, time.perf_counter()
        self._draw()

    def tick(self, steps: int = 1) -> None:
        """Count ``steps`` more steps of the current phase done."""
        self._done += steps
        self._draw()

    def finish(self) -> None:
        """End the current phase, if any, with its elapsed time."""
        if self._phase is None:
            return
        self._done = max(self._done, self._total, 1)
        elapsed = time.perf_counter() - self._started
        start = "\r" if self.live else ""  # on a terminal, over the bar drawn so far
        self.stream.write(f"{start}{self._render()} {elapsed:6.1f} s\n")
        self.stream.flush()
        self._phase = None

    def _render(self) -> str:
        if self._total:
            filled = WIDTH * min(self._done, self._total) // self._total
            bar = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {self._done:>3}/{self._total:<3}"
        else:
            bar = f"[{'#' * WIDTH if self._done else '.' * WIDTH}]        "
        return f"{bar} {self._phase}"

    def _draw(self) -> None:
        if self.live and self._phase is not None:
            self.stream.write(f"\r{self._render()}")
            self.stream.flush()


def phase(progress: Callable[[str], None], line: str, total: int = 0) -> None:
    """Start a phase of ``total`` steps on ``progress``; a plain callable (``print``, a test's) gets the line."""
    if isinstance(progress, Progress):
        progress(line, total)
    else:
        progress(line)


def tick(progress: Callable[[str], None], steps: int = 1) -> None:
    """Count ``steps`` more steps done, if ``progress`` draws a bar."""
    if isinstance(progress, Progress):
        progress.tick(steps)
