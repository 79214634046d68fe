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


class Greeting:
    """Registered on a punq container directly, not through the registry."""

    def __init__(self, clock: Clock, uow: UnitOfWork) -> None:
        self.clock = clock
        self.uow = uow
        self.text = "hello"


def test_services_registered_on_the_punq_container_directly_share_the_registrys_lifetimes() -> None:
    container = punq.Container()
    container.register(Greeting)  # punq's transient, depending on a singleton and a scoped service of the registry
    registry = Registry(container)
    registry.singleton(Clock)
    registry.scoped(UnitOfWork)
    seen: list[Greeting] = []

    def add(command: Add, greeting: Greeting, uow: UnitOfWork, clock: Clock) -> int:
        assert greeting.uow is uow  # the scope's, not one punq made
        assert greeting.clock is clock  # the registry's singleton, not punq's own
        seen.append(greeting)
        return command.value + len(greeting.text)

    registry.handle(Add).by(add)
    mediator = registry.build()
    assert mediator.send(Add(value=1)) == 6
    assert mediator.send(Add(value=1)) == 6
    assert seen[0] is not seen[1]  # transient, as punq registered it
    assert "Greeting (transient)" in str(mediator.explain(Add))


def test_an_instance_registered_on_the_punq_container_is_a_singleton() -> None:
    clock = Clock()
    container = punq.Container()
    container.register(Clock, instance=clock)
    registry = Registry(container)

    def add(command: Add, given: Clock) -> int:
        assert given is clock
        return command.value + given.offset

    registry.handle(Add).by(add)
    assert registry.build().send(Add(value=1)) == 2


def test_the_punq_versions_pinned_keep_their_registrations_where_the_build_reads_them() -> None:
    # punq has no public accessor for its registrations; a punq that moved them fails here, not in production.
    from mediator._di import Lifetime as Lifetimes
    from mediator._di import punq_registration

    container = punq.Container()
    container.register(Ids, scope=punq.Scope.transient)
    container.register(Clock, scope=punq.Scope.singleton)
    found = punq_registration(container, Ids)
    assert found is not None
    assert (found.builder, found.lifetime) == (Ids, Lifetimes.TRANSIENT)
    assert punq_registration(container, Clock).lifetime is Lifetimes.SINGLETON  # type: ignore[union-attr]
    assert punq_registration(container, NameHandler) is None


def test_services_registered_through_the_registry_are_also_in_its_punq_container() -> None:
    registry = Registry()
    registry.singleton(Clock)
    assert isinstance(registry.container.resolve(Clock), Clock)
