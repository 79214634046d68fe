"""Messages, handlers and services shared by the mediator tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs

from mediator import Command, Event, Query, StreamQuery, sensitive


@attrs.frozen(kw_only=True)
class Add(Command[int]):
    value: int


@attrs.frozen(kw_only=True)
class Fail(Command[None]):
    reason: str = "boom"


@attrs.frozen(kw_only=True)
class GetName(Query[str]):
    id: int


@attrs.frozen(kw_only=True)
class Count(StreamQuery[int]):
    up_to: int


@attrs.frozen(kw_only=True)
class Happened(Event):
    what: str


@attrs.frozen(kw_only=True)
class SpecialHappened(Happened):
    detail: str = ""


@attrs.frozen(kw_only=True)
class Pay(Command[str]):
    amount: int
    card_number: str = sensitive()


class Offset:
    def __init__(self) -> None:
        self.value = 1


def add(command: Add) -> int:
    return command.value + 1


async def add_async(command: Add) -> int:
    return command.value + 1


def fail(command: Fail) -> None:
    raise RuntimeError(command.reason)


def count(query: Count) -> Iterator[int]:
    yield from range(query.up_to)


async def count_async(query: Count) -> AsyncIterator[int]:
    for i in range(query.up_to):
        yield i


class AddWithOffset:
    def __init__(self, offset: Offset) -> None:
        self.offset = offset

    def handle(self, command: Add) -> int:
        return command.value + self.offset.value


class UnitOfWork:
    """A scoped resource that records how its scope ended."""

    instances: list[UnitOfWork] = []

    def __init__(self) -> None:
        self.entered = False
        self.outcome: str | None = None
        self.error: BaseException | None = None
        UnitOfWork.instances.append(self)

    def __enter__(self) -> UnitOfWork:
        self.entered = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.outcome = "rollback" if exc_type is not None else "commit"
        self.error = exc


class Unreachable:
    """A scoped connection that cannot be opened: whatever depends on it cannot be made."""

    def __enter__(self) -> Unreachable:
        raise ConnectionError("database is down")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        raise AssertionError("a connection that was never opened is never closed")


class Trace:
    """Collects what behaviours and handlers did, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []


class Tag:
    """A behaviour that notes when it runs, so tests can see the order."""

    def __init__(self, name: str, trace: Trace) -> None:
        self.name = name
        self.trace = trace

    def handle(self, message: Any, next: Any) -> Any:
        self.trace.events.append(f"{self.name}>")
        result = next(message)
        self.trace.events.append(f"<{self.name}")
        return result

    async def handle_async(self, message: Any, next: Any) -> Any:
        self.trace.events.append(f"{self.name}>")
        result = await next(message)
        self.trace.events.append(f"<{self.name}")
        return result

    def handle_stream(self, message: Any, next: Any) -> Any:
        self.trace.events.append(f"{self.name}~")
        return next(message)
