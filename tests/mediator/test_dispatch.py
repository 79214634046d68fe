"""send / ask / stream / publish on both twins, and what happens with bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import attrs
import pytest

from mediator import (
    AsyncMediator,
    Command,
    HandlerNotFoundError,
    Lifetime,
    MediatorError,
    NotAMessageError,
    Registry,
    RegistryFrozenError,
)

from .sample import Add, AddWithOffset, Count, Fail, GetName, Happened, Offset, add, add_async, count, count_async, fail


def registry() -> Registry:
    reg = Registry()
    reg.handle(Add).by(add)
    reg.handle(GetName).by(lambda query: f"name-{query.id}")
    reg.handle(Count).by(count)
    reg.handle(Fail).by(fail)
    return reg


def test_send_returns_the_handler_result() -> None:
    assert registry().build().send(Add(value=41)) == 42


def test_ask_returns_the_query_answer() -> None:
    assert registry().build().ask(GetName(id=7)) == "name-7"


def test_stream_yields_the_handler_items() -> None:
    assert list(registry().build().stream(Count(up_to=3))) == [0, 1, 2]


def test_async_send_awaits_to_the_result() -> None:
    reg = Registry()
    reg.handle(Add).by(add_async)
    mediator = reg.build_async()
    assert asyncio.run(mediator.send(Add(value=1))) == 2


def test_async_mediator_runs_sync_handlers_inline_in_the_loop_thread() -> None:
    import threading

    seen: list[int] = []

    def handler(command: Add) -> int:
        seen.append(threading.get_ident())
        return command.value

    reg = Registry()
    reg.handle(Add).by(handler)
    mediator = reg.build_async()

    async def main() -> int:
        seen.append(threading.get_ident())
        return await mediator.send(Add(value=5))

    assert asyncio.run(main()) == 5
    assert seen[0] == seen[1]


def test_async_stream_yields_from_async_and_sync_generators() -> None:
    for handler in (count, count_async):
        reg = Registry()
        reg.handle(Count).by(handler)
        mediator = reg.build_async()

        async def collect(mediator: AsyncMediator) -> list[int]:
            return [i async for i in mediator.stream(Count(up_to=3))]

        assert asyncio.run(collect(mediator)) == [0, 1, 2]


def test_class_handler_gets_its_dependency_from_the_container() -> None:
    reg = Registry()
    reg.singleton(Offset)
    reg.handle(Add).by(AddWithOffset)
    assert reg.build().send(Add(value=1)) == 2


def test_function_handler_gets_dependencies_after_the_message() -> None:
    def handler(command: Add, offset: Offset) -> int:
        return command.value + offset.value * 10

    reg = Registry()
    reg.singleton(Offset)
    reg.handle(Add).by(handler)
    assert reg.build().send(Add(value=1)) == 11


def test_sending_something_that_is_not_a_message_is_a_type_error() -> None:
    mediator = registry().build()
    with pytest.raises(NotAMessageError, match=r"int is not a Command") as info:
        mediator.send(42)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, MediatorError)
    assert info.value.obj == 42


def test_sending_a_query_says_to_use_ask() -> None:
    mediator = registry().build()
    with pytest.raises(NotAMessageError, match=r"GetName is not a Command.*use ask\(\)"):
        mediator.send(GetName(id=1))  # type: ignore[arg-type]


def test_a_message_with_no_handler_names_its_type_and_the_fix() -> None:
    @attrs.frozen
    class Orphan(Command[int]):
        pass

    mediator = registry().build()
    with pytest.raises(HandlerNotFoundError, match=r"test_dispatch\..*Orphan.*registry\.handle\(Orphan\)") as info:
        mediator.send(Orphan())
    assert isinstance(info.value, LookupError)
    assert info.value.message_type is Orphan


def test_a_subclass_of_a_handled_message_is_not_dispatched_to_the_base_handler() -> None:
    @attrs.frozen(kw_only=True)
    class AddMore(Add):
        pass

    with pytest.raises(HandlerNotFoundError):
        registry().build().send(AddMore(value=1))


def test_a_handler_error_propagates_unchanged() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        registry().build().send(Fail())


def test_a_key_error_inside_a_handler_is_not_mistaken_for_a_missing_handler() -> None:
    def handler(command: Add) -> int:
        empty: dict[int, int] = {}
        return empty[command.value]

    reg = Registry()
    reg.handle(Add).by(handler)
    with pytest.raises(KeyError):
        reg.build().send(Add(value=1))


def test_registering_after_build_is_refused() -> None:
    reg = registry()
    reg.build()
    with pytest.raises(RegistryFrozenError, match="already built"):
        reg.handle(Happened).by(lambda event: None)


def test_registering_a_non_message_type_is_refused_at_once() -> None:
    with pytest.raises(NotAMessageError):
        Registry().handle(int).by(lambda x: x)  # type: ignore[type-var,misc]


def test_singleton_handler_is_built_once_transient_per_dispatch() -> None:
    built: list[object] = []

    class Handler:
        def __init__(self) -> None:
            built.append(self)

        def handle(self, command: Add) -> int:
            return command.value

    for lifetime, expected in ((Lifetime.SINGLETON, 1), (Lifetime.TRANSIENT, 3)):
        built.clear()
        reg = Registry()
        reg.handle(Add).by(Handler, lifetime=lifetime)
        mediator = reg.build()
        for _ in range(3):
            mediator.send(Add(value=1))
        assert len(built) == expected


def test_two_mediators_from_one_registry_are_independent() -> None:
    reg = registry()
    sync, async_ = reg.build(), reg.build_async()
    assert sync.send(Add(value=1)) == 2
    assert asyncio.run(async_.send(Add(value=1))) == 2


def test_stream_closes_the_handler_generator_when_the_consumer_stops_early() -> None:
    closed: list[bool] = []

    def handler(query: Count) -> Iterator[int]:
        try:
            yield from range(query.up_to)
        finally:
            closed.append(True)

    reg = Registry()
    reg.handle(Count).by(handler)
    items = reg.build().stream(Count(up_to=100))
    assert next(items) == 0
    items.close()  # type: ignore[attr-defined]
    assert closed == [True]


def test_sending_the_class_instead_of_an_instance_says_so() -> None:
    with pytest.raises(NotAMessageError, match=r"Add was passed as a class; pass an instance: Add\(\.\.\.\)"):
        registry().build().send(Add)  # type: ignore[arg-type]
