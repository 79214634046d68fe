"""Work that spans commands, beside a plain command, on the embedded SQLite default: what scheduling a command
costs the command that schedules it, what firing one costs, and what a process manager's step costs.

Each figure is the median seconds per operation over ``repeats`` runs, and its ratio to the plain command in the
same run:

- ``plain``: a command that records one event (its transaction, its append, its commit);
- ``scheduling``: the same command, scheduling a command for later in its transaction;
- ``firing``: a due scheduled command dispatched by the engine (taken, deleted and its command run, one
  transaction), the command being the plain one;
- ``step``: a process manager's step that sends the plain command (the state read and written, the checkpoint
  moved, one transaction).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from mediator import Command, Event, Registry
from mediator.readmodels import EventTypes, ProcessManager, ReadModels, Step, UnitOfWork, on
from mediator.readmodels.sqlite import SqliteStorage
from mediator.testing import Clock

from ._harness import FULL, QUICK, Result, Settings
from .sync import quiet_logging

COUNTS = {QUICK: 2_000, FULL: 10_000}
"""Operations timed per repeat."""


@attrs.frozen(kw_only=True)
class Note(Command[None]):
    key: str


@attrs.frozen(kw_only=True)
class NoteLater(Command[None]):
    key: str


@attrs.frozen(kw_only=True)
class Noted(Event):
    key: str


@attrs.frozen(kw_only=True)
class Asked(Event):
    key: str


@attrs.frozen(kw_only=True)
class Ask(Command[None]):
    key: str


@attrs.frozen
class Seen:
    count: int


class Echo(ProcessManager[Seen]):
    """On each ``Asked``, send ``Note``: the least a step does besides the step itself."""

    name = "echo"
    state = Seen

    @on(Asked)
    def asked(self, event: Asked, state: Seen | None, step: Step) -> Seen | None:
        step.send(Note(key=f"{event.key}-echo"))
        return Seen((state.count if state else 0) + 1)


def _note(command: Note, uow: UnitOfWork) -> None:
    uow.record(Noted(key=command.key), key=command.key)


def _note_later(command: NoteLater, uow: UnitOfWork) -> None:
    uow.record(Noted(key=command.key), key=command.key)
    uow.schedule(Note(key=command.key), after=60.0)


def _ask(command: Ask, uow: UnitOfWork) -> None:
    uow.record(Asked(key=command.key), key=command.key)


class Bench:
    def __init__(self, folder: Path) -> None:
        types = EventTypes()
        for event_type in (Noted, Asked):
            types.register(event_type)
        self.clock = Clock(time.time())
        self.engine = ReadModels(SqliteStorage(folder / "workflows.db"), types, clock=self.clock)
        self.engine.schedulable(Note).add_process(Echo())
        registry = Registry()
        self.engine.install(registry)
        registry.handle(Note).by(_note)
        registry.handle(NoteLater).by(_note_later)
        registry.handle(Ask).by(_ask)
        self.mediator = registry.build()
        self.engine.dispatch_with(self.mediator)
        self.serial = 0

    def keys(self, count: int) -> list[str]:
        self.serial += 1
        return [f"k{self.serial}-{i}" for i in range(count)]

    def each(self, send: Callable[[Any], Any], commands: list[Any]) -> float:
        started = time.perf_counter()
        for command in commands:
            send(command)
        return (time.perf_counter() - started) / len(commands)

    def plain(self, count: int) -> float:
        return self.each(self.mediator.send, [Note(key=k) for k in self.keys(count)])

    def scheduling(self, count: int) -> float:
        return self.each(self.mediator.send, [NoteLater(key=k) for k in self.keys(count)])

    def firing(self, count: int) -> float:
        self.clock.advance(minutes=2)  # what ``scheduling`` scheduled fires first, untimed
        self.engine.schedules.look_again()
        self.engine.schedules.fire_due()
        for key in self.keys(count):
            self.mediator.send(NoteLater(key=key))
        self.clock.advance(minutes=2)
        self.engine.schedules.look_again()
        started = time.perf_counter()
        fired = self.engine.schedules.fire_due()
        spent = time.perf_counter() - started
        if fired != count:
            raise RuntimeError(f"{fired} scheduled commands fired, not {count}")
        return spent / count

    def steps(self, count: int) -> float:
        for key in self.keys(count):
            self.mediator.send(Ask(key=key))
        started = time.perf_counter()
        taken = self.engine.processes.run(limit=count)
        spent = time.perf_counter() - started
        if taken != count:
            raise RuntimeError(f"{taken} process steps taken, not {count}")
        return spent / count


def run(settings: Settings, *, with_peers: bool = True, progress: Callable[[str], None] = print) -> list[Result]:
    count = COUNTS.get(settings, 40)
    measured: dict[str, list[float]] = {"plain": [], "scheduling": [], "firing": [], "step": []}
    with quiet_logging(), tempfile.TemporaryDirectory(prefix="mediator-workflows-") as tmp:
        bench = Bench(Path(tmp))
        bench.plain(50)  # warm up
        for repeat in range(settings.repeats):
            progress(f"workflows: {count:,} of each, round {repeat + 1} of {settings.repeats}")
            for name, measure in (("plain", bench.plain), ("scheduling", bench.scheduling),
                                  ("firing", bench.firing), ("step", bench.steps)):
                measured[name].append(measure(count))
        bench.engine.storage.close()
    plain = statistics.median(measured["plain"])
    return [Result("workflows", name, "sqlite", "mediator", statistics.median(spent) * 1e9,
                   statistics.median(spent) / plain) for name, spent in measured.items()]


def summary(results: list[Result]) -> str:
    by = {r.scenario: r for r in results}
    lines = ["| operation | per operation | vs a plain command |", "|---|---:|---:|"]
    says = {"plain": "a plain command (records one event)",
            "scheduling": "a command that schedules another in its transaction",
            "firing": "a due scheduled command fired (taken, deleted, dispatched: one transaction)",
            "step": "a process manager's step sending one command (state, checkpoint: one transaction)"}
    for name, text in says.items():
        result = by[name]
        lines.append(f"| {text} | {result.median_ns / 1e3:,.0f} µs | {result.ratio:.2f}x |")
    return "\n".join(lines)
