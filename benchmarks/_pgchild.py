"""The PostgreSQL suite's other processes: writers and the eventsourcing projector, and how the suite drives them.

A writer (``python -m benchmarks._pgchild writer this|eventsourcing``) builds its
app from ``BENCH_PG_*`` (see :mod:`benchmarks._pgapp`), sends a few warm-up
commands, says ``ready``, then for each ``go START END RATE`` line on stdin waits
until the wall-clock time START, sends commands until END (back to back, or RATE
per second), and answers ``done COUNT FINISHED``; ``quit`` or EOF ends it. Several
writers given the same START and END run in the same window.

``python -m benchmarks._pgchild projector`` runs the eventsourcing projection
(:func:`benchmarks._pges.project`), logging to ``BENCH_PG_LAG_LOG``, until SIGTERM.
Our worker is the framework's own command line, ``python -m mediator.readmodels``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 20
"""Commands each writer sends before it says ``ready`` (connections, prepared caches)."""


# -- in the child ------------------------------------------------------------------------------------------


def window(send: Callable[[], None], start: float, end: float, rate: float) -> tuple[int, float]:
    """Send from ``start`` until ``end`` (wall clock), ``rate`` per second or flat out (0); (count, finish time)."""
    time.sleep(max(0.0, start - time.time()))
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at, count = start, 0
    while time.time() < end:
        send()
        count += 1
        if interval:
            next_at += interval
            pause = next_at - time.time()
            if pause > 0:
                time.sleep(pause)
    return count, time.time()


def writer(kind: str) -> None:
    if kind == "this":
        from . import _pgapp

        send = _pgapp.sender()
    else:
        from . import _pges

        send = _pges.sender()
    for _ in range(WARMUP):
        send()
    print("ready", flush=True)
    for line in sys.stdin:
        word, *args = line.split()
        if word == "quit":
            break
        start, end, rate = map(float, args)
        count, finished = window(send, start, end, rate)
        print(f"done {count} {finished!r}", flush=True)


def projector() -> None:
    from . import _pges

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with open(os.environ["BENCH_PG_LAG_LOG"], "a", encoding="utf-8") as log:
        _pges.project(stop, log, ready=lambda: print("ready", flush=True))


# -- in the suite ------------------------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    """A benchmark process exited, or did not answer in time; its error output is above."""


class Child:
    """A benchmark process with its stdout read line by line on a thread, so waits can time out."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env={**os.environ, **env, "PYTHONPATH": path})
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        """The next line starting with ``prefix`` (other lines, such as log lines, are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ChildFailed(f"{self.name} did not say {prefix!r} within {timeout:g} s.") from None
            if line is None:
                code = self.process.wait()
                raise ChildFailed(f"{self.name} exited (code {code}) before saying {prefix!r}; see its error above.")
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        self._close_stdin()

    def _close_stdin(self) -> None:
        """Once it has exited: close our end of its stdin, and let the reader close its stdout."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        self._reader.join(5)

    def stop(self, timeout: float = 15.0) -> None:
        """Ask it to end (``quit`` on stdin, then SIGTERM); SIGKILL it if it has not within ``timeout``."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("quit")
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_stdin()


def run_window(writers: Sequence[Child], seconds: float, rate: float = 0.0) -> tuple[float, float, int]:
    """All ``writers`` send in the same window; (start, last finish, commands) once every one has answered."""
    start = time.time() + 0.1  # time for every writer to read the line before the window opens
    for child in writers:
        child.send(f"go {start!r} {start + seconds!r} {rate!r}")
    counts, finished = 0, start
    for child in writers:
        _word, count, at = child.expect("done", timeout=seconds + 120).split()
        counts += int(count)
        finished = max(finished, float(at))
    return start, finished, counts


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        writer(sys.argv[2])
    elif sys.argv[1] == "projector":
        projector()
