"""Subscription queries on the embedded SQLite default: how long after a command commits its subscriber has the
new answer, beside a read-your-writes query (``consistent(token)``) asked at the same moment for the same answer.

For each command (one event, applied by a background projection to a counter per key): the time from ``send``
returning (the command committed) until

- ``subscription``: ``subscribe(GetCount(key))`` yields the answer that counts it (the hub learns the projection
  moved, reads what it moved over, marks the subscription, which asks again);
- ``read_your_writes``: ``ask(GetCount(key))`` inside ``consistent(token)`` returns it (the reference: the
  engine's own way to wait for a write to reach a read model).

The two take turns, command by command, in one run. ``in_process``: this process's runner applies the projection
(it wakes both at once). ``across_processes``: a worker process applies it; this process sees its progress by
looking at the checkpoints (the hub every ``live_interval``, 10 ms by default; a read-your-writes wait every
0.25 ms at first, backing off to 5 ms).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from mediator import Command, Event, Mediator, Query, Registry
from mediator.readmodels import (
    Delivery,
    EventTypes,
    Projection,
    ProjectionSession,
    ReadModels,
    Table,
    UnitOfWork,
    consistent,
    last_token,
    on,
)
from mediator.readmodels.sqlite import SqliteStorage

from ._harness import FULL, QUICK, Result, Settings
from .sync import quiet_logging

COUNTS = {QUICK: 300, FULL: 2_000}
"""Commands per mode and setting (each measured once by each reader, in turn)."""
MODES = ("in_process", "across_processes")


@attrs.frozen(kw_only=True)
class Note(Command[None]):
    key: str


@attrs.frozen(kw_only=True)
class Noted(Event):
    key: str


@attrs.frozen(kw_only=True)
class GetCount(Query[int]):
    reads = ("counts",)
    key: str

    def depends_on(self) -> tuple[str, ...]:
        return (self.key,)


@attrs.frozen
class Count:
    key: str
    count: int


class Counts(Projection):
    name = "counts"
    counts = Table(Count, key="key")

    @on(Noted)
    def noted(self, event: Noted, session: ProjectionSession) -> None:
        session.put(self.counts, Count(event.key, 1), add=("count",))


def _note(command: Note, uow: UnitOfWork) -> None:
    uow.record(Noted(key=command.key), key=command.key)


def wire(path: Path, delivery: Delivery) -> tuple[ReadModels, Mediator]:
    types = EventTypes()
    types.register(Noted, name="bench.noted")
    engine = ReadModels(SqliteStorage(path), types)
    engine.add(Counts(), delivery=delivery)
    registry = Registry()
    engine.install(registry)
    registry.handle(Note).by(_note)

    def count(query: GetCount) -> int:
        row = engine.get(Counts.counts, query.key)
        return row.count if row else 0

    registry.handle(GetCount).by(count)
    return engine, registry.build()


@contextlib.contextmanager
def _worker(path: Path) -> Iterator[None]:
    """A worker process applying the projection until this one closes its stdin."""
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.live", "worker", str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the worker process did not start")
        yield
    finally:
        child.communicate(timeout=30)  # (closes its stdin: the worker stops)


def measure(mode: str, count: int, folder: Path, progress: Callable[[str], None]) -> dict[str, list[float]]:
    """Seconds from commit to the new answer, per command, for each reader."""
    path = folder / f"{mode}.db"
    delivery = Delivery.BACKGROUND if mode == "in_process" else Delivery.WORKER
    engine, mediator = wire(path, delivery)
    found: dict[str, list[float]] = {"subscription": [], "read_your_writes": []}
    with contextlib.ExitStack() as stack:
        if mode == "in_process":
            engine.start()
            stack.callback(engine.stop)
        else:
            stack.enter_context(_worker(path))
        stack.callback(engine.live.close)
        live = stack.enter_context(mediator.subscribe(GetCount(key="s")))
        first = live.next(10)
        if first is None or first.value != 0:
            raise RuntimeError(f"the first answer was {first}")
        for number in range(1, count + 1):
            if number % 100 == 0:
                progress(f"live: {mode}, {number:,} of {count:,}")
            mediator.send(Note(key="s"))
            committed = time.perf_counter()
            answer = live.next(10)
            found["subscription"].append(time.perf_counter() - committed)
            if answer is None or answer.value != number:
                raise RuntimeError(f"the subscription answered {answer}, not {number}")
            mediator.send(Note(key="r"))
            committed = time.perf_counter()
            with consistent(last_token(), timeout=10):
                seen = mediator.ask(GetCount(key="r"))
            found["read_your_writes"].append(time.perf_counter() - committed)
            if seen != number:
                raise RuntimeError(f"read-your-writes answered {seen}, not {number}")
    engine.storage.close()
    return found


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(settings: Settings, *, with_peers: bool = True, progress: Callable[[str], None] = print) -> list[Result]:
    count = COUNTS.get(settings, 20)
    results = []
    with quiet_logging(), tempfile.TemporaryDirectory(prefix="mediator-live-") as tmp:
        for mode in MODES:
            progress(f"live: {mode}, {count:,} commands")
            found = measure(mode, count, Path(tmp), progress)
            for statistic, fraction in (("p50", 0.5), ("p99", 0.99)):
                reference = _percentile(found["read_your_writes"], fraction)
                for reader, values in found.items():
                    value = _percentile(values, fraction)
                    results.append(Result("live", f"{mode}:{statistic}", "sqlite", reader, value * 1e9,
                                          value / reference))
    return results


def summary(results: list[Result]) -> str:
    by = {(r.scenario, r.implementation): r for r in results}
    lines = ["| from a command's commit to its new answer | subscription | read-your-writes query | ratio |",
             "|---|---:|---:|---:|"]
    for mode in MODES:
        for statistic in ("p50", "p99"):
            scenario = f"{mode}:{statistic}"
            live, reference = by[(scenario, "subscription")], by[(scenario, "read_your_writes")]
            lines.append(f"| {mode.replace('_', ' ')}, {statistic} | {live.median_ns / 1e6:.2f} ms | "
                         f"{reference.median_ns / 1e6:.2f} ms | {live.ratio:.2f}x |")
    return "\n".join(lines)


def _serve_worker(path: str) -> None:
    engine, _ = wire(Path(path), Delivery.WORKER)
    engine.start(Delivery.WORKER)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
    engine.stop()
    engine.storage.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        with quiet_logging():
            _serve_worker(sys.argv[2])
