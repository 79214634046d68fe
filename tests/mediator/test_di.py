"""Dependencies are compiled into plain factories at build; a dispatch never asks punq for anything.

No ``from __future__ import annotations`` here, as in test_scopes: punq reads the
constructors' annotations eagerly.
"""

import asyncio
from collections.abc import Iterator
from typing import Any

import punq
import pytest

from mediator import DispatchContext, Lifetime, Registry, Validation

from .sample import Add, Count, GetName, Happened, SpecialHappened, UnitOfWork


class Clock:
    """A singleton."""

    def __init__(self) -> None:
        self.offset = 1


class Ids:
    """A transient, itself depending on the singleton."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock


class AddHandler:
    """A transient handler class with a singleton, a transient and a scoped dependency."""

    def __init__(self, clock: Clock, ids: Ids, uow: UnitOfWork) -> None:
        self.clock = clock
        self.uow = uow

    def handle(self, command: Add) -> int:
        assert self.uow.entered
        return command.value + self.clock.offset


class NameHandler:
    """A singleton handler class."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def handle(self, query: GetName) -> str:
        return f"name-{query.id}"


class ScopedListener:
    """A scoped event handler class."""

    def __init__(self, uow: UnitOfWork, context: DispatchContext) -> None:
        self.uow = uow

    def handle(self, event: Happened) -> None:
        assert self.uow.entered


def on_happened(event: Happened, clock: Clock, ids: Ids, uow: UnitOfWork) -> None:
    assert uow.entered


def count(query: Count, ids: Ids, uow: UnitOfWork) -> Iterator[int]:
    yield from range(query.up_to)


class Known:
    """A validator class with a dependency."""

    def __init__(self, ids: Ids) -> None:
        self.ids = ids

    def validate(self, command: Add) -> list[tuple[str, str]]:
        return []


class Audit:
    """A behaviour made per dispatch, with a transient and a scoped dependency."""

    def __init__(self, ids: Ids, uow: UnitOfWork) -> None:
        self.uow = uow

    def handle(self, message: Any, next: Any) -> Any:
        return next(message)

    async def handle_async(self, message: Any, next: Any) -> Any:
        return await next(message)


def wired() -> Registry:
    reg = Registry()
    reg.singleton(Clock)
    reg.transient(Ids)
    reg.scoped(UnitOfWork)
    reg.behaviour(Validation())
    reg.behaviour(Audit, lifetime=Lifetime.TRANSIENT)
    reg.validate(Add, Known)
    reg.handle(Add).by(AddHandler)
    reg.handle(GetName).by(NameHandler, lifetime=Lifetime.SINGLETON)
    reg.handle(Happened).by(on_happened)
    reg.handle(Happened).by(ScopedListener, lifetime=Lifetime.SCOPED)
    reg.handle(Count).by(count)
    return reg


def forbid_resolving(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every reflective lookup of punq's fail, and record it in case the failure is swallowed."""
    calls: list[str] = []
    for name in ("resolve", "resolve_all", "instantiate", "_resolve_impl", "_build_impl"):

        def forbidden(*args: Any, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            raise AssertionError(f"punq.Container.{_name} ran during a dispatch")

        monkeypatch.setattr(punq.Container, name, forbidden)
    return calls


@pytest.fixture(autouse=True)
def _fresh() -> None:
    UnitOfWork.instances.clear()


def test_a_sync_dispatch_after_build_never_resolves_through_punq(monkeypatch: pytest.MonkeyPatch) -> None:
    mediator = wired().build()
    calls = forbid_resolving(monkeypatch)
    assert mediator.send(Add(value=1)) == 2
    assert mediator.ask(GetName(id=7)) == "name-7"
    mediator.publish(Happened(what="x"))
    mediator.publish(SpecialHappened(what="not seen at build"))
    assert list(mediator.stream(Count(up_to=2))) == [0, 1]
    with mediator.scope():
        assert mediator.send(Add(value=2)) == 3
        mediator.publish(Happened(what="y"))
    assert calls == []
    assert [uow.outcome for uow in UnitOfWork.instances] == ["commit"] * 6


def test_an_async_dispatch_after_build_never_resolves_through_punq(monkeypatch: pytest.MonkeyPatch) -> None:
    mediator = wired().build_async()
    calls = forbid_resolving(monkeypatch)

    async def main() -> None:
        assert await mediator.send(Add(value=1)) == 2
        assert await mediator.ask(GetName(id=7)) == "name-7"
        await mediator.publish(Happened(what="x"))
        await mediator.publish(SpecialHappened(what="not seen at build"))
        assert [item async for item in mediator.stream(Count(up_to=2))] == [0, 1]
        async with mediator.scope():
            assert await mediator.send(Add(value=2)) == 3
            await mediator.publish(Happened(what="y"))

    asyncio.run(main())
    assert calls == []
    assert [uow.outcome for uow in UnitOfWork.instances] == ["commit"] * 6
