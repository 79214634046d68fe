"""What the command line shows a person: aligned tables, coloured on a terminal, and a progress line.

Written here rather than with ``rich``: the package takes no runtime dependency, and one renderer means the
coloured table and the plain one are the same text, cell for cell: colour codes wrap a cell's text and its
padding is added outside them, so the columns line up alike, and piped output (no colour) is exactly what
scripts have parsed so far. Colour only when the stream is a terminal and ``NO_COLOR`` is unset
(https://no-color.org); ``TERM=dumb`` gets none either.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

GREEN, YELLOW, RED, BOLD, DIM = "32", "33", "31", "1", "2"
"""SGR parameters (``ESC [ <p> m``) of the few styles the command line uses."""

_CLEAR_TO_END = "\x1b[K"


def wants_colour(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether to colour what goes to ``stream``: a terminal, with ``NO_COLOR`` unset and ``TERM`` not ``dumb``.

    >>> import io
    >>> wants_colour(io.StringIO())
    False
    """
    isatty = getattr(stream, "isatty", None)
    return (callable(isatty) and bool(isatty()) and not environ.get("NO_COLOR")
            and environ.get("TERM") != "dumb")


def paint(text: str, style: str | None, colour: bool) -> str:
    """``text`` in ``style`` (an SGR parameter such as :data:`GREEN`) when ``colour``, else as it is.

    >>> paint("ok", GREEN, True)
    '\\x1b[32mok\\x1b[0m'
    >>> paint("ok", GREEN, False)
    'ok'
    """
    return f"\x1b[{style}m{text}\x1b[0m" if colour and style and text else text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, colour: bool = False,
          style: Callable[[str, str], str | None] = lambda header, cell: None) -> str:
    """An aligned table: headers, a rule, one line per row; ``style(header, cell)`` colours a cell on a terminal.

    Without colour the lines end at their last cell's text, so each splits on whitespace into its cells.

    >>> print(table(("name", "health"), [("balances", "ok"), ("search", "parked")]))
    name      health
    --------  ------
    balances  ok
    search    parked
    """
    cells = [list(map(str, headers))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str], styles: Sequence[str | None]) -> str:
        padded = [paint(cell, s, colour) + " " * (width - len(cell))
                  for cell, s, width in zip(row, styles, widths, strict=True)]
        return "  ".join(padded).rstrip()

    lines = [line(cells[0], [BOLD] * len(widths)),
             paint("  ".join("-" * width for width in widths), DIM, colour)]
    lines += [line(row, [style(header, cell) for header, cell in zip(cells[0], row, strict=True)])
              for row in cells[1:]]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """A person's reading of ``seconds``: ``<1 s``, ``42 s``, ``3 min 5 s``, ``2 h 10 min``.

    >>> [duration(s) for s in (0.4, 42, 185, 7800)]
    ['<1 s', '42 s', '3 min 5 s', '2 h 10 min']
    """
    if seconds < 1:
        return "<1 s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


class StatusLine:
    """The last line of a terminal, redrawn in place; text written through it (log lines) goes above it.

    A file-like object: log output written here clears the status line, prints, and draws it again, so the two
    never share a line. Until a status line is shown, text passes straight through (as it does when stderr is not
    a terminal, where none is shown).
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self._partial = ""

    def show(self, text: str) -> None:
        """Draw ``text`` over the current status line."""
        self.text = text
        self.stream.write(f"\r{text}{_CLEAR_TO_END}")
        self.stream.flush()

    def end(self, text: str = "") -> None:
        """Leave ``text`` on the status line (or erase it, if empty) and go on below it."""
        if self.text or text:
            self.stream.write(f"\r{text}{_CLEAR_TO_END}" + ("\n" if text else ""))
            self.stream.flush()
        self.text = ""

    def write(self, data: str) -> int:
        self._partial += data
        if "\n" in self._partial:
            lines, _, self._partial = self._partial.rpartition("\n")
            if self.text:
                self.stream.write(f"\r{_CLEAR_TO_END}")
            self.stream.write(lines + "\n")
            if self.text:
                self.stream.write(self.text)
            self.stream.flush()
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """How far a long job (a rebuild, a catch-up) is: positions done and to go, events/s, time left.

    ``measure()`` says how many positions of the log the job has dealt with since it started, and how many are
    still to go to the head of the log (each position is one event). It is asked when the line is redrawn: at
    most every ``interval`` seconds however often :meth:`tick` is called (once per committed batch). The rate is
    what was done over the time since the start; the time left, what is to go at that rate.

    >>> now = [0.0]
    >>> progress = Progress("rebuild balances", lambda: (400, 600), clock=lambda: now[0])
    >>> now[0] = 2.0
    >>> progress.tick()
    >>> progress.text()
    'rebuild balances  [########............]  40%  400 done, 600 to go  200 events/s  about 3 s left'
    """

    def __init__(self, label: str, measure: Callable[[], tuple[int, int]], *, status: StatusLine | None = None,
                 colour: bool = False, then: str = "", clock: Callable[[], float] = time.monotonic,
                 interval: float = 0.1, bar: int = 20) -> None:
        self.label = label
        self.measure = measure
        self.status = status
        self.colour = colour
        self.then = then
        """Shown once nothing is left to go (what the job does next: ``swapping in``)."""
        self.clock = clock
        self.interval = interval
        self.bar = bar
        self.started = clock()
        self.done = 0
        self.left = 0
        self.elapsed = 0.0
        self._drawn = float("-inf")

    def tick(self) -> None:
        """Redraw if the last drawing is ``interval`` old."""
        if self.clock() - self._drawn >= self.interval:
            self.draw()

    def draw(self) -> None:
        """Measure and redraw the status line now."""
        self._drawn = self.clock()
        self.elapsed = self._drawn - self.started
        done, left = self.measure()
        self.done, self.left = max(0, done), max(0, left)
        if self.status is not None:
            self.status.show(self._fitted())

    def rate(self) -> float | None:
        """Events dealt with per second, as last measured (``None`` before any, or before the clock moved)."""
        return self.done / self.elapsed if self.done and self.elapsed > 0 else None

    def text(self, *, colour: bool = False) -> str:
        """The status line as last measured."""
        left = self.left
        total = self.done + left
        fraction = self.done / total if total else 1.0
        filled = round(fraction * self.bar)
        parts = [paint(self.label, BOLD, colour),
                 "[" + paint("#" * filled, GREEN, colour) + "." * (self.bar - filled) + "]",
                 f"{fraction:.0%}", f"{self.done:,} done, {left:,} to go"]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:,.0f} events/s")
        if left == 0 and self.then:
            parts.append(paint(self.then, DIM, colour))
        elif rate is not None and left:
            parts.append(paint(f"about {duration(left / rate)} left", DIM, colour))
        return "  ".join(parts)

    def finish(self, what: str) -> None:
        """Replace the status line with a summary: ``what``, how many events, how long, how fast."""
        if self.status is None:
            return
        self.draw()
        rate = self.rate()
        speed = f", {rate:,.0f} events/s" if rate is not None else ""
        self.status.end(f"{what}: {self.done:,} events in {duration(self.elapsed)}{speed}")

    def _fitted(self) -> str:
        # A line longer than the terminal wraps, and "\r" then redraws only its last part: cut it instead
        # (uncoloured, as a cut could split a colour code).
        plain = self.text()
        width = _columns(self.status.stream if self.status is not None else None) - 1
        return plain[:width] if len(plain) > width else self.text(colour=self.colour)


def _columns(stream: TextIO | None) -> int:
    """The width of the terminal ``stream`` writes to (80 when that cannot be told, or it says 0)."""
    try:
        return (os.get_terminal_size(stream.fileno()).columns if stream is not None else 0) or 80
    except (AttributeError, OSError, ValueError):
        return 80
